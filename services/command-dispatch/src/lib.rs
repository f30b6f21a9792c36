//! `fluxgate-command-dispatch`: commands and RPC to devices, and their lifecycle.
//!
//! ```text
//!                          one key per device (tenant/device): its order holds
//! fluxgate.device.events ────> Dispatcher ──┬─> fluxgate.deliveries (every front; the one
//!   front:     (dis)connect, subscribed,    │     holding the connection delivers)
//!              delivery outcomes            ├─> store: connection log (presence)
//!   validator: a gateway's devices' connect/├─> store: command status + history
//!              disconnect, RPC replies,     ├─> store: client-side RPC requests, claim
//!              attribute requests, client-  │          windows
//!              side RPC requests, claims    └─> fluxgate.command.outcomes (every API)
//!   API:       commands, RPC, shared-attribute pushes, client-side RPC answers
//! ```
//!
//! The dispatcher owns presence: which devices are connected, directly or behind which
//! gateway, in which dialect. It learns it from the connects and disconnects on a
//! device's key and writes each to the connection log before the event is acked, so the
//! instance that takes the partition over reads exact presence back from the store. A
//! device behind a gateway is connected by the gateway's `connect`, by any other gateway
//! message about it, or (Losant) by the gateway's subscription to its command topic; the
//! end of the gateway's session disconnects each of them, on their own keys (the front
//! sends those).
//!
//! A command comes after every connect and disconnect of its device on the same key, so
//! "offline" means offline when the command was made: a lightweight command fails at
//! once, a persistent one waits (`queued`) and is sent when the device is ready for it,
//! unless it expired first: when its connection subscribes to its commands (the front's
//! `subscribed` event, after the connect on the same key), or, behind a ThingsBoard
//! gateway whose `v1/gateway/rpc` is subscribed already, at its connect. The front's delivery outcome moves it to
//! `delivered` (or back to `queued` / `failed`); without an outcome within
//! `delivery_timeout_ms` (no front held the session any more, or it closed with the
//! delivery queued) it goes back to `queued` if persistent and fails if not, so nothing
//! stays `sent`. A two-way RPC's reply moves it to
//! `replied`, matched by its RPC id; a timer moves an unanswered two-way RPC to
//! `timed_out`. Attribute requests are answered over the connection they came on, from
//! the store; shared attributes changed through the API are pushed to online devices,
//! and a device that was away gets those written since its last disconnect when it
//! subscribes to its attribute updates again (the front's `subscribed_attributes`; behind
//! a ThingsBoard gateway, at its connect).
//!
//! A device's client-side RPC (ThingsBoard `v1/devices/me/rpc/request/{id}`, other than
//! `getSessionLimits`, which the front answers) is stored `pending` for an application to
//! answer through the API; the API ends it `answered` (one conditional write) and sends
//! the answer on the device's key, and the dispatcher delivers it on
//! `.../rpc/response/{id}` if the device is online. Unanswered within
//! `client_rpc_timeout_ms`, it ends `timed_out` and the device gets `{"error": ...}`. A
//! claim message opens the device's claiming window in the store, for the API's claim.
//!
//! Commands live in the store from the moment they arrive, so a restarted dispatcher
//! loses none: queued commands are read back when their device connects. Timers (RPC
//! replies, delivery deadlines, client-side RPC timeouts) belong to the dispatcher that
//! holds the device's partition of `fluxgate.device.events`: whenever its assignment
//! changes ([`fluxgate_bus::Consumer::generation`]) it re-arms, from the store, the
//! timers of the devices it holds now ([`fluxgate_bus::Consumer::holds`]), and a timer
//! that fires after its partition moved away does nothing. Each timer's transition is one
//! conditional write, so a reply and a timeout at the same instant leave one terminal
//! status, even while two holders overlap during a rebalance.

mod config;
mod dispatcher;

pub use config::DispatchConfig;
pub use dispatcher::{DispatchStats, Dispatcher, Prepared, prepare, rpc_id};
