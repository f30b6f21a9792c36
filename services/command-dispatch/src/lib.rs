//! `fluxgate-command-dispatch`: commands and RPC to devices, and their lifecycle.
//!
//! ```text
//! fluxgate.commands ──────┐                     ┌─> fluxgate.deliveries (every front; the one
//! fluxgate.device.events ─┴─> Dispatcher ───────┤     holding the connection delivers)
//!   connect/disconnect, RPC replies,            └─> store: command status + history
//!   attribute requests, delivery outcomes
//! ```
//!
//! Presence (which devices are connected, directly or behind which gateway, in which
//! dialect) is learned from connect/disconnect events. A command arriving for an online
//! device is delivered at once (`sent`); for an offline one it fails fast unless it is
//! persistent, in which case it waits (`queued`) and is sent when the device or its gateway
//! connects, unless it expired first. The front's delivery outcome moves it to `delivered`
//! (or back to `queued` / `failed`); a two-way RPC's reply moves it to `replied`, matched
//! by its RPC id; a timer moves an unanswered two-way RPC to `timed_out`. Attribute
//! requests are answered from the store.
//!
//! Commands live in the store from the moment they arrive, so a restarted dispatcher
//! loses none: queued commands are read back when their device connects. Shared attributes
//! changed through the API arrive on `fluxgate.commands` and are pushed to online devices.
//! Not yet here: timers of two-way RPCs that were in flight across a restart (they stay
//! `sent`).

mod config;
mod dispatcher;

pub use config::DispatchConfig;
pub use dispatcher::{DispatchStats, Dispatcher, Drain, rpc_id, run, run_with};
