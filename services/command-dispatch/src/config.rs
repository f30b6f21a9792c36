//! Dispatcher settings.

use serde::{Deserialize, Serialize};

/// Command dispatcher settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DispatchConfig {
    /// Consumer group of the dispatchers.
    pub group: String,
    /// How long a two-way RPC waits for its reply when the caller gave no expiry, in ms.
    pub rpc_timeout_ms: u64,
    /// How long a sent command waits for its front's delivery outcome, in ms; then a
    /// persistent one is queued again for the device's next connect and a lightweight
    /// one fails (no front held the session any more, or it closed with the delivery
    /// queued).
    pub delivery_timeout_ms: u64,
    /// How long a device's client-side RPC waits for an application's answer, in ms;
    /// then the device gets an error reply (ThingsBoard's default: 60 s).
    pub client_rpc_timeout_ms: u64,
    /// How long a device's claiming window stays open when the device gave no
    /// `durationMs`, in ms (ThingsBoard's default: one day).
    pub claim_duration_ms: u64,
    /// First retry delay after a store or bus failure, in milliseconds.
    pub retry_initial_ms: u64,
    /// Longest retry delay, in milliseconds.
    pub retry_max_ms: u64,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            group: "fluxgate-command-dispatch".into(),
            rpc_timeout_ms: 10_000,
            delivery_timeout_ms: 10_000,
            client_rpc_timeout_ms: 60_000,
            claim_duration_ms: 86_400_000,
            retry_initial_ms: 100,
            retry_max_ms: 5_000,
        }
    }
}

impl DispatchConfig {
    /// The retry backoff of store and bus failures (`retry_initial_ms`, doubling, at most
    /// `retry_max_ms`; checked when the configuration is loaded).
    pub fn backoff(&self) -> fluxgate_model::Backoff {
        fluxgate_model::Backoff::from_ms(self.retry_initial_ms, self.retry_max_ms)
    }
}
