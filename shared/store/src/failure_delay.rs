//! [`FailureDelay`]: what a failed credential check costs. The MQTT front (a refused
//! CONNECT) and the API (a refused `POST /auth/device`) both answer repeated failures of one
//! credential from one address later each time, so guessing a secret is slow while other
//! devices behind the same address are not slowed down.

use std::net::IpAddr;
use std::time::Duration;

use fluxgate_model::Backoff;
use moka::future::Cache;

/// Slows down repeated failures of one credential from one address.
#[derive(Debug, Clone)]
pub struct FailureDelay {
    /// By address and a hash of (client id, username).
    failures: Cache<(IpAddr, u64), u32>,
    seed: std::hash::RandomState,
    delay: Backoff,
}

impl FailureDelay {
    /// `base_ms × 2^(n-1)` for the n-th failure after the first, at most `max_ms`; counts
    /// are forgotten after ten minutes without failures.
    pub fn new(base_ms: u64, max_ms: u64) -> Self {
        FailureDelay {
            failures: Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(600))
                .build(),
            seed: std::hash::RandomState::new(),
            delay: Backoff::from_ms(base_ms, max_ms),
        }
    }

    /// Records a failure of `client_id` + `username` (MQTT: client id and username;
    /// Losant REST: device id and access key) from `ip`, and returns how long to wait
    /// before answering it.
    pub async fn failed(&self, ip: IpAddr, client_id: &str, username: Option<&str>) -> Duration {
        use std::hash::BuildHasher;
        let who = self.seed.hash_one((client_id, username));
        let n = self
            .failures
            .entry((ip, who))
            .and_upsert_with(|e| async move { e.map_or(1, |e| e.into_value().saturating_add(1)) })
            .await
            .into_value();
        if n <= 1 {
            return Duration::ZERO;
        }
        self.delay.nth(n - 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn failures_of_one_credential_from_one_address_grow_slower() {
        let d = FailureDelay::new(100, 1000);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(d.failed(a, "c", Some("k")).await, Duration::ZERO);
        assert_eq!(
            d.failed(a, "c", Some("k")).await,
            Duration::from_millis(100)
        );
        assert_eq!(
            d.failed(a, "c", Some("k")).await,
            Duration::from_millis(200)
        );
        assert_eq!(
            d.failed(a, "c", Some("k")).await,
            Duration::from_millis(400)
        );
        for _ in 0..10 {
            d.failed(a, "c", Some("k")).await;
        }
        assert_eq!(
            d.failed(a, "c", Some("k")).await,
            Duration::from_millis(1000)
        );
        assert_eq!(d.failed(b, "c", Some("k")).await, Duration::ZERO);
        // Another device behind the same address is not slowed by that one's failures.
        assert_eq!(d.failed(a, "other", Some("k")).await, Duration::ZERO);
        assert_eq!(d.failed(a, "c", Some("k2")).await, Duration::ZERO);
    }
}
