//! Exponential backoff: the one rule behind every retry and every growing penalty in
//! fluxgate — the pipeline roles' store and bus retries, the supervisor's restart pause,
//! the store's own retries, a blocked client's block and a failed login's delay. It lives
//! in the model because every crate depends on the model and on nothing else in common.
//!
//! A delay starts at `initial`, doubles at each step, and never exceeds `max`. Settings
//! that would make it meaningless (zero, or a maximum below the start) are refused by
//! [`Backoff::check_ms`] when a configuration is loaded, naming the key.

use std::time::Duration;

/// An exponential backoff. [`Backoff::next_delay`] gives the delays one after another;
/// [`Backoff::nth`] the delay of a given step, for penalties counted elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `initial`, at most `max` (a `max` below `initial` counts as `initial`).
    pub fn new(initial: Duration, max: Duration) -> Self {
        let max = max.max(initial);
        Backoff {
            initial,
            max,
            next: initial,
        }
    }

    /// [`Backoff::new`] from milliseconds, as configurations give it.
    pub fn from_ms(initial_ms: u64, max_ms: u64) -> Self {
        Backoff::new(
            Duration::from_millis(initial_ms),
            Duration::from_millis(max_ms),
        )
    }

    /// Whether `initial_ms`/`max_ms` make a usable backoff for the settings named
    /// `initial_key`/`max_key`; the error names the key.
    pub fn check_ms(
        initial_key: &str,
        initial_ms: u64,
        max_key: &str,
        max_ms: u64,
    ) -> Result<(), String> {
        if initial_ms == 0 {
            return Err(format!(
                "{initial_key}: must be at least 1 (a zero delay retries in a busy loop)"
            ));
        }
        if max_ms < initial_ms {
            return Err(format!(
                "{max_key}: must be at least {initial_key} ({max_ms} < {initial_ms})"
            ));
        }
        Ok(())
    }

    /// The delay to wait now; the next one is twice as long (at most `max`).
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        d
    }

    /// Back to `initial` (after a success, or a long healthy run).
    pub fn reset(&mut self) {
        self.next = self.initial;
    }

    /// The delay of step `n` (0: `initial`): `initial × 2ⁿ`, at most `max`.
    pub fn nth(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_maximum_and_reset() {
        let mut b = Backoff::from_ms(100, 450);
        let got: Vec<u64> = (0..5).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(got, [100, 200, 400, 450, 450]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
        assert_eq!(b.nth(0), Duration::from_millis(100));
        assert_eq!(b.nth(2), Duration::from_millis(400));
        assert_eq!(b.nth(40), Duration::from_millis(450));
        // A maximum below the start is the start.
        assert_eq!(Backoff::from_ms(300, 10).nth(3), Duration::from_millis(300));
    }

    #[test]
    fn unusable_settings_name_their_key() {
        assert!(Backoff::check_ms("a", 1, "b", 1).is_ok());
        let e = Backoff::check_ms("x.retry_initial_ms", 0, "x.retry_max_ms", 5).unwrap_err();
        assert!(e.starts_with("x.retry_initial_ms:"), "{e}");
        let e = Backoff::check_ms("x.retry_initial_ms", 9, "x.retry_max_ms", 5).unwrap_err();
        assert!(e.starts_with("x.retry_max_ms:"), "{e}");
    }
}
