//! Waiting for a command's end: the dispatcher announces every command that reaches its
//! end on `fluxgate.command.outcomes`, which every API instance reads (broadcast), so the
//! replica holding a two-way RPC's HTTP request is woken whichever dispatcher handled the
//! reply. The announcement only wakes the waiter; what it answers is read from the store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fluxgate_bus::{ConsumeError, Consumer};
use fluxgate_model::{CommandEnded, MessageId};
use tokio::sync::Notify;

/// The waiters of one API instance, and the consumer that wakes them.
#[derive(Debug)]
pub(crate) struct Outcomes {
    consumer: Arc<dyn Consumer>,
    waiters: Mutex<HashMap<MessageId, Arc<Notify>>>,
}

/// A registered wait for one command; unregisters when dropped.
pub(crate) struct Waiter<'a> {
    outcomes: &'a Outcomes,
    id: MessageId,
    notify: Arc<Notify>,
}

impl Outcomes {
    pub(crate) fn new(consumer: Arc<dyn Consumer>) -> Self {
        Outcomes {
            consumer,
            waiters: Mutex::new(HashMap::new()),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<MessageId, Arc<Notify>>> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a wait for `id`: call before the command is sent, so its end cannot be
    /// announced in between.
    pub(crate) fn wait_for(&self, id: MessageId) -> Waiter<'_> {
        let notify = self.map().entry(id).or_default().clone();
        Waiter {
            outcomes: self,
            id,
            notify,
        }
    }

    /// Reads the announcements until the consumer closes, waking whoever waits.
    pub(crate) async fn run(self: Arc<Self>) {
        loop {
            match self.consumer.recv().await {
                Ok(rec) => {
                    self.consumer.ack(&rec.position);
                    match CommandEnded::from_key(&rec.key) {
                        Some(CommandEnded(id)) => {
                            if let Some(n) = self.map().get(&id) {
                                n.notify_one();
                            }
                        }
                        None => tracing::warn!(
                            offset = rec.position.offset,
                            "api: a command outcome without a command id as its key; skipped"
                        ),
                    }
                }
                Err(ConsumeError::Closed) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "api: command outcomes not read; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

impl Waiter<'_> {
    /// Returns when the command's end is announced, or after `at_most`.
    pub(crate) async fn woken(&self, at_most: Duration) {
        let _ = tokio::time::timeout(at_most, self.notify.notified()).await;
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.outcomes.map().remove(&self.id);
    }
}
