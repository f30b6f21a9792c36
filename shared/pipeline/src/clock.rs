//! The time a role's timers read and wait on. In production it is the system clock
//! (wall-clock milliseconds, as the store's records carry them, and tokio's timer);
//! tests of time logic (with the `testing` feature) use a [`ManualClock`] they move
//! forward themselves, so a test about a deadline neither sleeps nor races one.

use std::future::Future;
use std::time::Duration;

#[cfg(any(test, feature = "testing"))]
pub use manual::ManualClock;

/// Where a role's timers read the time and wait.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// The wall clock and tokio's timer.
    #[default]
    System,
    /// A clock a test moves by hand.
    #[cfg(any(test, feature = "testing"))]
    Manual(std::sync::Arc<ManualClock>),
}

impl Clock {
    /// Milliseconds since the Unix epoch, as the store's records carry them.
    pub fn now_ms(&self) -> i64 {
        match self {
            Clock::System => fluxgate_bus::now_ms(),
            #[cfg(any(test, feature = "testing"))]
            Clock::Manual(m) => m.now_ms(),
        }
    }

    /// Resolves once `d` has passed on this clock.
    pub fn sleep(&self, d: Duration) -> impl Future<Output = ()> + Send + 'static {
        let clock = self.clone();
        async move {
            match clock {
                Clock::System => tokio::time::sleep(d).await,
                #[cfg(any(test, feature = "testing"))]
                Clock::Manual(m) => m.sleep(d).await,
            }
        }
    }

    /// How long from now until `at_ms` on this clock (zero if it has passed).
    pub fn until(&self, at_ms: i64) -> Duration {
        Duration::from_millis(u64::try_from(at_ms.saturating_sub(self.now_ms())).unwrap_or(0))
    }
}

#[cfg(any(test, feature = "testing"))]
mod manual {
    use std::sync::Mutex;
    use std::time::Duration;

    use tokio::sync::oneshot;

    /// A clock that stands still until [`ManualClock::advance`] moves it, which wakes
    /// every sleep that has come due.
    #[derive(Debug)]
    pub struct ManualClock {
        state: Mutex<State>,
    }

    #[derive(Debug)]
    struct State {
        now_ms: i64,
        /// Each sleep in progress: when it is due, and how to wake it.
        sleeps: Vec<(i64, oneshot::Sender<()>)>,
    }

    impl ManualClock {
        /// A clock standing at `now_ms`.
        pub fn at(now_ms: i64) -> Self {
            ManualClock {
                state: Mutex::new(State {
                    now_ms,
                    sleeps: Vec::new(),
                }),
            }
        }

        /// A clock standing at the wall clock's now (so records the test makes with
        /// wall-clock times are close to it).
        pub fn starting_now() -> Self {
            ManualClock::at(fluxgate_bus::now_ms())
        }

        /// Where the clock stands.
        pub fn now_ms(&self) -> i64 {
            self.lock().now_ms
        }

        /// Moves the clock forward by `d` and wakes every sleep due by then.
        pub fn advance(&self, d: Duration) {
            let mut s = self.lock();
            s.now_ms = s
                .now_ms
                .saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
            let now = s.now_ms;
            let (due, waiting) = std::mem::take(&mut s.sleeps)
                .into_iter()
                .partition::<Vec<_>, _>(|(at, _)| *at <= now);
            s.sleeps = waiting;
            drop(s);
            for (_, wake) in due {
                let _ = wake.send(()); // a sleep given up on is gone
            }
        }

        /// How many sleeps are waiting for the clock to move (a test waits for the
        /// timers it expects to be parked before it advances).
        pub fn sleeping(&self) -> usize {
            self.lock()
                .sleeps
                .iter()
                .filter(|(_, wake)| !wake.is_closed())
                .count()
        }

        pub(super) async fn sleep(&self, d: Duration) {
            let woken = {
                let mut s = self.lock();
                let at = s
                    .now_ms
                    .saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
                if at <= s.now_ms {
                    return;
                }
                let (wake, woken) = oneshot::channel();
                s.sleeps.push((at, wake));
                woken
            };
            let _ = woken.await; // woken, or the clock is gone: either way, done
        }

        fn lock(&self) -> std::sync::MutexGuard<'_, State> {
            self.state.lock().unwrap_or_else(|e| e.into_inner())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_manual_sleep_ends_when_the_clock_passes_it_and_not_before() {
        let m = Arc::new(ManualClock::at(1_000));
        let clock = Clock::Manual(m.clone());
        let sleep = tokio::spawn(clock.sleep(Duration::from_millis(500)));
        while m.sleeping() == 0 {
            tokio::task::yield_now().await;
        }
        m.advance(Duration::from_millis(499));
        tokio::task::yield_now().await;
        assert!(!sleep.is_finished(), "woke 1 ms early");
        assert_eq!(m.sleeping(), 1);
        m.advance(Duration::from_millis(1));
        tokio::time::timeout(Duration::from_secs(5), sleep)
            .await
            .expect("woken at its time")
            .unwrap();
        assert_eq!((clock.now_ms(), m.sleeping()), (1_500, 0));
        assert_eq!(clock.until(1_400), Duration::ZERO);
        assert_eq!(clock.until(1_600), Duration::from_millis(100));
    }
}
