//! Supervision of a consumer's handler: when the handler dies (a panic in an actor, say),
//! the records it held are redelivered to a fresh one — nothing is lost, nothing skipped.
//!
//! The handler holds a [`Lifeline`] for as long as it lives. Dropping it without calling
//! [`Lifeline::finished`] (which is what unwinding does) tells [`supervise`] that the
//! handler died: the consumer is rewound to each partition's first unfinished record
//! ([`Consumer::rewind`]) and a new handler is started, after a growing pause.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use fluxgate_bus::Consumer;

/// Held by a supervised handler while it lives.
#[derive(Debug)]
pub struct Lifeline(Option<oneshot::Sender<()>>);

impl Lifeline {
    /// The handler stopped on purpose (its consumer closed, or it drained): no restart.
    /// Called while a panic unwinds (actix runs an actor's `stopped` when its dropped
    /// context is torn down), it is not a finish: the handler died.
    pub fn finished(mut self) {
        if std::thread::panicking() {
            return;
        }
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// First pause before a restart; it doubles for each quick repeat, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause before a restart.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A handler that lived this long resets the pause to [`FIRST_BACKOFF`].
const HEALTHY_AFTER: Duration = Duration::from_secs(30);

/// How often the consumer's lag is copied into [`Watch::lag`].
const LAG_EVERY: Duration = Duration::from_secs(1);

/// What [`supervise`] reports about the consumer it watches (export both as metrics).
#[derive(Debug, Clone, Copy)]
pub struct Watch<'a> {
    /// Restarts of the handler.
    pub restarts: &'a AtomicU64,
    /// The consumer's lag ([`Consumer::lag`]), refreshed every second.
    pub lag: &'a AtomicU64,
}

/// Starts a handler with `start` and restarts it each time it dies, until `shutdown`
/// resolves or the handler finishes on its own. At shutdown, asks the live handler to
/// `drain` and waits until it has finished (or died). Then commits the consumer's acked
/// positions.
///
/// `role` names the handler in the log; `watch` receives the restarts and the lag.
pub async fn supervise<H>(
    role: &str,
    consumer: &Arc<dyn Consumer>,
    watch: Watch<'_>,
    start: impl FnMut(Lifeline) -> H,
    drain: impl FnOnce(&H),
    shutdown: impl Future<Output = ()>,
) {
    run(role, consumer, watch, start, drain, shutdown).await;
    if let Err(e) = consumer.commit().await {
        tracing::warn!(role, error = %e, "final commit failed; the group redelivers what it covered");
    }
}

async fn run<H>(
    role: &str,
    consumer: &Arc<dyn Consumer>,
    watch: Watch<'_>,
    mut start: impl FnMut(Lifeline) -> H,
    drain: impl FnOnce(&H),
    shutdown: impl Future<Output = ()>,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    let mut backoff = fluxgate_model::Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
    let mut lag_tick = tokio::time::interval(LAG_EVERY);
    lag_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (tx, mut rx) = oneshot::channel();
        let born = Instant::now();
        let handler = start(Lifeline(Some(tx)));
        loop {
            tokio::select! {
                () = &mut shutdown => {
                    drain(&handler);
                    // Finished or died while draining: either way, nothing more to wait for.
                    let _ = rx.await;
                    return;
                }
                r = &mut rx => if r.is_ok() {
                    return;
                } else {
                    break;
                },
                _ = lag_tick.tick() => watch.lag.store(consumer.lag(), Ordering::Relaxed),
            }
        }
        drop(handler);
        let partitions = consumer.rewind();
        watch.restarts.fetch_add(1, Ordering::Relaxed);
        if born.elapsed() >= HEALTHY_AFTER {
            backoff.reset();
        }
        let pause = backoff.next_delay();
        tracing::error!(
            role,
            partitions,
            backoff_ms = pause.as_millis() as u64,
            "handler died; its unfinished records will be redelivered to a new one"
        );
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}
