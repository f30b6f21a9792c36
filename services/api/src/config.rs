//! API settings.

use serde::{Deserialize, Serialize};

/// API settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Listen address of the API (also serves `/metrics`, `/healthz`, `/readyz`).
    pub http_addr: String,
    /// The bootstrap admin token (all applications, all operations). Set it from the
    /// environment (`FLUXGATE_API__BOOTSTRAP_TOKEN`) rather than a file. Empty: none.
    pub bootstrap_token: String,
    /// Key of the HMAC that signs Losant device tokens (`POST /auth/device`); every API
    /// instance must share it. Empty: a random key per process (tokens do not survive a
    /// restart).
    pub device_token_secret: String,
    /// Lifetime of a device token, in seconds.
    pub device_token_ttl_secs: u64,
    /// Default wait of a two-way RPC, in milliseconds (ThingsBoard: 10 s).
    pub rpc_timeout_ms: u64,
    /// Longest wait of a two-way RPC a caller may ask for, in milliseconds.
    pub rpc_timeout_max_ms: u64,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Deepest nesting of a JSON state, command payload or attribute value (1 to 100;
    /// see `fluxgate_model::Limits::max_json_depth`): deeper bodies get 400 `too_deep`.
    pub max_json_depth: usize,
    /// HTTP worker threads.
    pub workers: usize,
}

impl ApiConfig {
    /// The payload limits the API enforces.
    pub fn limits(&self) -> fluxgate_model::Limits {
        fluxgate_model::Limits {
            max_payload_bytes: self.max_body_bytes,
            max_json_depth: self.max_json_depth,
            ..fluxgate_model::Limits::default()
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            http_addr: "0.0.0.0:8080".into(),
            bootstrap_token: String::new(),
            device_token_secret: String::new(),
            device_token_ttl_secs: 86_400,
            rpc_timeout_ms: 10_000,
            rpc_timeout_max_ms: 60_000,
            max_body_bytes: 256 * 1024,
            max_json_depth: fluxgate_model::Limits::default().max_json_depth,
            workers: 2,
        }
    }
}
