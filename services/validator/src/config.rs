//! Validator settings.

use fluxgate_model::{Limits, TimeWindow};
use serde::{Deserialize, Serialize};

/// Validator settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ValidatorConfig {
    /// Consumer group of the validators.
    pub group: String,
    /// Accepted sample timestamps around the receive time.
    pub time_window: TimeWindow,
    /// Attribute-count, key and value-size limits, checked again here: the raw topic is
    /// open to every producer, and these may be set tighter than the fronts' parsers.
    pub limits: Limits,
    /// First retry delay after a store or bus failure, in milliseconds (doubles per retry).
    pub retry_initial_ms: u64,
    /// Longest retry delay, in milliseconds.
    pub retry_max_ms: u64,
    /// How long registry reads (devices, attribute definitions, names) are cached, in
    /// seconds; registry changes drop entries sooner.
    pub registry_cache_ttl_secs: u64,
    /// A gateway's message naming a new device creates it only while the application has
    /// fewer devices than this (0: no quota); over it the message is rejected
    /// (`quota_exceeded`).
    pub max_devices_per_application: u64,
    /// ... and while the gateway has fewer devices bound to it than this (0: no quota).
    pub max_devices_per_gateway: u64,
}

impl Default for ValidatorConfig {
    fn default() -> Self {
        ValidatorConfig {
            group: "fluxgate-validator".into(),
            time_window: TimeWindow::default(),
            limits: Limits::default(),
            retry_initial_ms: 100,
            retry_max_ms: 5_000,
            registry_cache_ttl_secs: 60,
            max_devices_per_application: 100_000,
            max_devices_per_gateway: 2_000,
        }
    }
}

impl ValidatorConfig {
    /// The auto-create quotas of these settings.
    pub fn quotas(&self) -> crate::Quotas {
        crate::Quotas::new(
            self.max_devices_per_application,
            self.max_devices_per_gateway,
        )
    }

    /// The retry backoff of store and bus failures (`retry_initial_ms`, doubling, at most
    /// `retry_max_ms`; checked when the configuration is loaded).
    pub fn backoff(&self) -> fluxgate_model::Backoff {
        fluxgate_model::Backoff::from_ms(self.retry_initial_ms, self.retry_max_ms)
    }
}
