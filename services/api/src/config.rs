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
    /// HTTP worker threads (at least 1).
    pub workers: usize,
    /// How long a client may take to send a request, in milliseconds: its head, counted
    /// from when the connection opens (or the previous request ends), then as long again
    /// for its whole body, counted from when the head arrived. A slower request is answered
    /// 408 and its connection closed, so a half-sent request cannot hold a connection. At
    /// least 1.
    pub request_timeout_ms: u64,
    /// Delay added to the answer of the n-th failed `POST /auth/device` of one device id
    /// and access key from one address: this many milliseconds times 2^(n-1), capped by
    /// `auth_failure_delay_max_ms`; the first failure is answered at once (as the MQTT
    /// front's `auth_failure_delay_ms`). 0: no delay.
    pub auth_failure_delay_ms: u64,
    /// Longest delay of a failed `POST /auth/device`, in milliseconds (at least
    /// `auth_failure_delay_ms`).
    pub auth_failure_delay_max_ms: u64,
}

/// A setting the API cannot start with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("api.{field}: {problem}")]
pub struct ConfigError {
    /// The setting, as named in the config file (under `[api]`).
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

impl ApiConfig {
    /// Checks what serde cannot; the error names the field that is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field: &str, problem: String| {
            Err(ConfigError {
                field: field.to_owned(),
                problem,
            })
        };
        if self.workers == 0 {
            return bad("workers", "must be at least 1".into());
        }
        if self.request_timeout_ms == 0 {
            return bad(
                "request_timeout_ms",
                "must be at least 1 (0 would let a half-sent request hold its connection forever)"
                    .into(),
            );
        }
        if self.auth_failure_delay_max_ms < self.auth_failure_delay_ms {
            return bad(
                "auth_failure_delay_max_ms",
                format!(
                    "must be at least auth_failure_delay_ms ({} < {})",
                    self.auth_failure_delay_max_ms, self.auth_failure_delay_ms
                ),
            );
        }
        // The API's payload limits are flat settings of its own section:
        // "limits.max_json_depth = 500: must be ..." names `max_json_depth` here.
        if let Err(e) = self.limits().validate() {
            let e = e.trim_start_matches("limits.");
            let (setting, problem) = e.split_once(": ").unwrap_or((e, "is not valid"));
            let field = setting.split(' ').next().unwrap_or(setting);
            return bad(field, format!("{problem} ({setting})"));
        }
        Ok(())
    }

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
            request_timeout_ms: 5_000,
            auth_failure_delay_ms: 250,
            auth_failure_delay_max_ms: 5_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_errors_name_the_field() {
        ApiConfig::default().validate().unwrap();
        let e = ApiConfig {
            request_timeout_ms: 0,
            ..ApiConfig::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.field, "request_timeout_ms");
        assert!(e.to_string().starts_with("api.request_timeout_ms: "), "{e}");
        let e = ApiConfig {
            auth_failure_delay_ms: 500,
            auth_failure_delay_max_ms: 100,
            ..ApiConfig::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.field, "auth_failure_delay_max_ms");
        let e = ApiConfig {
            max_json_depth: 500,
            ..ApiConfig::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "api.max_json_depth: must be between 1 and 100 (max_json_depth = 500)"
        );
        let e = ApiConfig {
            workers: 0,
            ..ApiConfig::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.field, "workers");
        let unknown: Result<ApiConfig, _> = serde_json::from_str(r#"{"request_timeout":1}"#);
        assert!(unknown.unwrap_err().to_string().contains("request_timeout"));
    }
}
