//! The side channel: records the front produces on a best-effort basis, after the client
//! already has its answer — the rejected log (`fluxgate.ingest.rejected`) and the outcome
//! of a delivery that never reached a session (backlog full). One bounded queue and one
//! task per front replace a task spawned per record: when the bus is slow, at most
//! `CAPACITY` records wait and at most `IN_FLIGHT` wait for their ack; what does not fit
//! is dropped and counted (`fluxgate_mqtt_front_side_dropped_total`), never waited for on
//! the publish path.

use std::sync::Arc;

use fluxgate_bus::{OutRecord, Producer};
use prometheus::IntCounterVec;
use tokio::sync::{Semaphore, mpsc};

/// Records queued for the side task.
const CAPACITY: usize = 1024;
/// Records sent and waiting for their ack.
const IN_FLIGHT: usize = 256;

/// What a side record is, for the log and the `kind` label.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Side {
    /// A refused publish, for the rejected log.
    Rejection,
    /// The outcome of a delivery that no session took.
    DeliveryOutcome,
}

impl Side {
    fn label(self) -> &'static str {
        match self {
            Side::Rejection => "rejection",
            Side::DeliveryOutcome => "delivery_outcome",
        }
    }
}

/// The sending half, shared by every worker of the front.
#[derive(Debug)]
pub(crate) struct SideChannel {
    tx: mpsc::Sender<(Side, OutRecord)>,
    rx: std::sync::Mutex<Option<mpsc::Receiver<(Side, OutRecord)>>>,
    dropped: IntCounterVec,
}

impl SideChannel {
    pub(crate) fn new(dropped: IntCounterVec) -> Self {
        let (tx, rx) = mpsc::channel(CAPACITY);
        SideChannel {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
            dropped,
        }
    }

    /// Queues `rec`; drops and counts it when the queue is full (or the task is gone).
    pub(crate) fn send(&self, kind: Side, rec: OutRecord) {
        if self.tx.try_send((kind, rec)).is_err() {
            self.dropped.with_label_values(&[kind.label()]).inc();
            tracing::debug!(kind = kind.label(), "side record dropped: queue full");
        }
    }

    /// The task that produces the queued records, until `stop` resolves; then what is
    /// already queued is sent and its acks waited for. Only the first call gets the queue.
    pub(crate) async fn run(&self, producer: Arc<dyn Producer>, stop: impl Future<Output = ()>) {
        let Some(mut rx) = self.rx.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let acks = Arc::new(Semaphore::new(IN_FLIGHT));
        let mut stop = std::pin::pin!(stop);
        let mut stopping = false;
        loop {
            let (kind, rec) = tokio::select! {
                biased;
                m = rx.recv() => match m {
                    Some(m) => m,
                    None => break,
                },
                () = &mut stop, if !stopping => {
                    stopping = true;
                    rx.close();
                    continue;
                }
            };
            let Ok(permit) = acks.clone().acquire_owned().await else {
                break;
            };
            match producer.send(rec).await {
                Ok(ack) => {
                    ntex::rt::spawn(async move {
                        if let Err(e) = ack.await {
                            tracing::warn!(kind = kind.label(), error = %e, "side record not acknowledged");
                        }
                        drop(permit);
                    });
                }
                Err(e) => {
                    tracing::warn!(kind = kind.label(), error = %e, "side record not produced")
                }
            }
        }
        // Every permit back: every ack came (or failed).
        let _ = acks.acquire_many(IN_FLIGHT as u32).await;
    }
}
