//! Writer settings.

use serde::{Deserialize, Serialize};

/// Time-series writer settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct WriterConfig {
    /// Consumer group of the writers.
    pub group: String,
    /// Flush when the batch holds this many points.
    pub batch_max_points: usize,
    /// Flush when the oldest record of the batch is this old, in milliseconds.
    pub batch_max_age_ms: u64,
    /// First retry delay after a failed store write, in milliseconds (doubles per retry).
    pub retry_initial_ms: u64,
    /// Longest retry delay, in milliseconds.
    pub retry_max_ms: u64,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            group: "fluxgate-ts-writer".into(),
            batch_max_points: 1000,
            batch_max_age_ms: 50,
            retry_initial_ms: 100,
            retry_max_ms: 5_000,
        }
    }
}

impl WriterConfig {
    /// The retry backoff of store and bus failures (`retry_initial_ms`, doubling, at most
    /// `retry_max_ms`; checked when the configuration is loaded).
    pub fn backoff(&self) -> fluxgate_model::Backoff {
        fluxgate_model::Backoff::from_ms(self.retry_initial_ms, self.retry_max_ms)
    }
}
