//! The validator actor: one consumer of `fluxgate.ingest.raw`, records handled in order.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix::prelude::*;
use fluxgate_bus::{ConsumeError, Consumer, OutRecord, Producer, Record, Topic, TopicsConfig};
use fluxgate_model::Envelope;

use crate::{Output, ValidatorConfig, validate};

/// Counters of one validator (for metrics and tests).
#[derive(Debug, Default)]
pub struct ValidatorStats {
    /// Raw records read.
    pub records: AtomicU64,
    /// Envelopes sent on as valid.
    pub valid: AtomicU64,
    /// Envelopes sent on as events.
    pub events: AtomicU64,
    /// Rejections produced.
    pub rejected: AtomicU64,
    /// Store or bus failures retried.
    pub retries: AtomicU64,
    /// Records that were not envelopes (logged and skipped).
    pub undecodable: AtomicU64,
}

#[derive(Debug, Clone)]
struct Names {
    valid: String,
    events: String,
    rejected: String,
}

/// The validator.
pub struct Validator {
    consumer: Arc<dyn Consumer>,
    producer: Arc<dyn Producer>,
    store: Arc<dyn fluxgate_store::Store>,
    names: Names,
    cfg: ValidatorConfig,
    stats: Arc<ValidatorStats>,
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validator").field("cfg", &self.cfg).finish()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

impl Validator {
    /// A validator reading `consumer` (subscribed to the raw topic) and producing with
    /// `producer`.
    pub fn new(
        consumer: Arc<dyn Consumer>,
        producer: Arc<dyn Producer>,
        store: Arc<dyn fluxgate_store::Store>,
        topics: &TopicsConfig,
        cfg: ValidatorConfig,
        stats: Arc<ValidatorStats>,
    ) -> Self {
        Validator {
            consumer,
            producer,
            store,
            names: Names {
                valid: topics.name(Topic::IngestValid),
                events: topics.name(Topic::DeviceEvents),
                rejected: topics.name(Topic::IngestRejected),
            },
            cfg,
            stats,
        }
    }

    fn fetch(&mut self, ctx: &mut Context<Self>) {
        let c = self.consumer.clone();
        ctx.spawn(
            async move { c.recv().await }
                .into_actor(self)
                .map(|res, act, ctx| match res {
                    Ok(rec) => {
                        act.stats.records.fetch_add(1, Ordering::Relaxed);
                        let work = handle(
                            rec,
                            act.store.clone(),
                            act.producer.clone(),
                            act.consumer.clone(),
                            act.names.clone(),
                            act.cfg.clone(),
                            act.stats.clone(),
                        );
                        // One record at a time: its outputs are acked before the next is read.
                        ctx.wait(work.into_actor(act).map(|(), act, ctx| act.fetch(ctx)));
                    }
                    Err(ConsumeError::Closed) => ctx.stop(),
                    Err(e) => {
                        tracing::warn!(error = %e, "validator: consume error; retrying");
                        ctx.run_later(Duration::from_millis(100), |act, ctx| act.fetch(ctx));
                    }
                }),
        );
    }
}

/// Validates one record, produces its outputs, waits for their acks, then acks the record.
/// Store and bus failures are retried with backoff; nothing is acked before its outputs.
async fn handle(
    rec: Record,
    store: Arc<dyn fluxgate_store::Store>,
    producer: Arc<dyn Producer>,
    consumer: Arc<dyn Consumer>,
    names: Names,
    cfg: ValidatorConfig,
    stats: Arc<ValidatorStats>,
) {
    let env = match Envelope::from_bytes(&rec.payload) {
        Ok(env) => env,
        Err(e) => {
            stats.undecodable.fetch_add(1, Ordering::Relaxed);
            tracing::error!(offset = rec.position.offset, error = %e, "validator: not an envelope; skipping it");
            consumer.ack(&rec.position);
            return;
        }
    };
    let mut delay = Duration::from_millis(cfg.retry_initial_ms.max(1));
    loop {
        match attempt(&env, &*store, &*producer, &names, &cfg, &stats).await {
            Ok(()) => break,
            Err(e) => {
                stats.retries.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "validator: retrying a record");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(cfg.retry_max_ms.max(1)));
            }
        }
    }
    consumer.ack(&rec.position);
}

async fn attempt(
    env: &Envelope,
    store: &dyn fluxgate_store::Store,
    producer: &dyn Producer,
    names: &Names,
    cfg: &ValidatorConfig,
    stats: &ValidatorStats,
) -> Result<(), String> {
    let outputs = validate(store, cfg, env.clone(), now_ms())
        .await
        .map_err(|e| e.to_string())?;
    let mut acks = Vec::with_capacity(outputs.len());
    for o in outputs {
        let rec = match &o {
            Output::Valid(e) => OutRecord::new(&names.valid, e.key(), e.to_bytes()),
            Output::Event(e) => OutRecord::new(&names.events, e.key(), e.to_bytes()),
            Output::Rejected(r) => OutRecord::new(
                &names.rejected,
                format!("{}/{}", r.tenant, r.device),
                r.to_bytes(),
            ),
        };
        acks.push((o, producer.send(rec).await.map_err(|e| e.to_string())?));
    }
    for (o, ack) in acks {
        ack.await.map_err(|e| e.to_string())?;
        let counter = match o {
            Output::Valid(_) => &stats.valid,
            Output::Event(_) => &stats.events,
            Output::Rejected(_) => &stats.rejected,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

impl Actor for Validator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(16);
        self.fetch(ctx);
    }
}
