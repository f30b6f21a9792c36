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

use crate::Consumer;

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

/// Starts a handler with `start` and restarts it each time it dies, until `shutdown`
/// resolves. Returns the live handler at shutdown, for the caller to drain; `None` when
/// the handler finished on its own or shutdown came while none was running.
///
/// `restarts` counts the restarts (export it as a metric). `role` names the handler in the
/// log.
pub async fn supervise<H>(
    role: &str,
    consumer: &Arc<dyn Consumer>,
    restarts: &AtomicU64,
    mut start: impl FnMut(Lifeline) -> H,
    shutdown: impl Future<Output = ()>,
) -> Option<H> {
    let mut shutdown = std::pin::pin!(shutdown);
    let mut backoff = FIRST_BACKOFF;
    loop {
        let (tx, rx) = oneshot::channel();
        let born = Instant::now();
        let handler = start(Lifeline(Some(tx)));
        tokio::select! {
            () = &mut shutdown => return Some(handler),
            r = rx => if r.is_ok() {
                return None;
            },
        }
        drop(handler);
        let partitions = consumer.rewind();
        restarts.fetch_add(1, Ordering::Relaxed);
        if born.elapsed() >= HEALTHY_AFTER {
            backoff = FIRST_BACKOFF;
        }
        tracing::error!(
            role,
            partitions,
            backoff_ms = backoff.as_millis() as u64,
            "handler died; its unfinished records will be redelivered to a new one"
        );
        tokio::select! {
            () = &mut shutdown => return None,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
