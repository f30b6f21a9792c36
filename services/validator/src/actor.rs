//! The validator stage: one consumer of `fluxgate.ingest.raw`, records handled in order
//! (on the [`fluxgate_pipeline`] skeleton).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fluxgate_bus::{AckFuture, Consumer, OutRecord, Producer, Record, Topic, TopicsConfig, now_ms};
use fluxgate_model::{Envelope, ReasonCode, Rejection};
use fluxgate_pipeline::{Ctx, Parts, PipelineStats, Source, Stage};
use fluxgate_store::RegistryStore;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use crate::{Output, Quotas, ValidatorConfig, validate};

/// Counters of one validator (for metrics and tests).
#[derive(Debug)]
pub struct ValidatorStats {
    /// Records read, retries, undecodable records kept, restarts and lag.
    pub pipeline: PipelineStats,
    /// Envelopes sent on as valid.
    pub valid: Arc<AtomicU64>,
    /// Envelopes sent on as events.
    pub events: Arc<AtomicU64>,
    /// Rejections produced.
    pub rejected: Arc<AtomicU64>,
    /// Rejections produced, by reason (every [`ReasonCode`], in [`ReasonCode::ALL`] order).
    pub reasons: Vec<(ReasonCode, Arc<AtomicU64>)>,
}

impl Default for ValidatorStats {
    fn default() -> Self {
        ValidatorStats {
            pipeline: PipelineStats::default(),
            valid: Arc::default(),
            events: Arc::default(),
            rejected: Arc::default(),
            reasons: ReasonCode::ALL
                .iter()
                .map(|c| (*c, Arc::default()))
                .collect(),
        }
    }
}

impl ValidatorStats {
    /// These counters as Prometheus collectors (register each in the role's registry).
    pub fn collectors(&self) -> prometheus::Result<Vec<Box<dyn prometheus::core::Collector>>> {
        use fluxgate_observability::CounterDef;
        use fluxgate_observability::catalogue::{VALIDATOR_OUTPUTS, VALIDATOR_REJECTIONS};
        let def = |metric, label, value: &Arc<AtomicU64>| CounterDef {
            metric,
            labels: vec![label],
            value: value.clone(),
        };
        let mut defs = vec![
            def(&VALIDATOR_OUTPUTS, ("kind", "valid"), &self.valid),
            def(&VALIDATOR_OUTPUTS, ("kind", "event"), &self.events),
            def(&VALIDATOR_OUTPUTS, ("kind", "rejected"), &self.rejected),
        ];
        defs.extend(
            self.reasons
                .iter()
                .map(|(code, value)| def(&VALIDATOR_REJECTIONS, ("reason", code.as_str()), value)),
        );
        Ok(vec![
            Box::new(fluxgate_observability::CounterSet::new(defs)?),
            Box::new(self.pipeline.collector(Validator::ROLE)?),
        ])
    }
}

#[derive(Debug)]
struct Names {
    valid: String,
    events: String,
    rejected: String,
    dead_letter: String,
}

/// The validator.
pub struct Validator {
    parts: Parts<ValidatorConfig, ValidatorStats, dyn RegistryStore>,
    /// What each record's work needs, shared by the records in flight.
    work: Arc<Work>,
}

/// What a record's work needs ([`process`]): built once per stage.
struct Work {
    store: Arc<dyn RegistryStore>,
    producer: Arc<dyn Producer>,
    in_flight: Arc<Semaphore>,
    names: Names,
    cfg: ValidatorConfig,
    /// Auto-create quotas and their counts (kept across restarts of the stage).
    quotas: Arc<Quotas>,
    stats: Arc<ValidatorStats>,
}

/// Most records whose outputs are awaiting acknowledgement at once.
pub const MAX_IN_FLIGHT: usize = 1024;

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validator")
            .field("cfg", &self.parts.cfg)
            .finish()
    }
}

impl Validator {
    /// A validator reading `parts.consumer` (subscribed to the raw topic).
    pub fn new(parts: Parts<ValidatorConfig, ValidatorStats, dyn RegistryStore>) -> Self {
        let quotas = Arc::new(parts.cfg.quotas());
        Validator::with_quotas(parts, quotas)
    }

    /// [`Validator::new`] counting its auto-create quotas in `quotas`.
    fn with_quotas(
        parts: Parts<ValidatorConfig, ValidatorStats, dyn RegistryStore>,
        quotas: Arc<Quotas>,
    ) -> Self {
        let work = Arc::new(Work {
            store: parts.store.clone(),
            producer: parts.producer.clone(),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            names: Names {
                valid: parts.topics.name(Topic::IngestValid),
                events: parts.topics.name(Topic::DeviceEvents),
                rejected: parts.topics.name(Topic::IngestRejected),
                dead_letter: parts.topics.name(Topic::DeadLetter),
            },
            cfg: parts.cfg.clone(),
            quotas,
            stats: parts.stats.clone(),
        });
        Validator { parts, work }
    }
}

impl Stage for Validator {
    const ROLE: &'static str = "validator";

    fn source(&self) -> Source<'_> {
        Source::new(&self.parts.consumer, &self.parts.stats.pipeline)
    }

    fn accept(&mut self, rec: Record, ctx: &mut Ctx<Self>) {
        // Validate and enqueue the outputs in record order (one record at a time); wait
        // for their acks concurrently, so one slow downstream commit does not hold up the
        // next record. The permit bounds records awaiting acks.
        let position = rec.position.clone();
        // A consumer span per record, child of the span that produced it (the front's
        // publish): the validator's part of the trace.
        let span = tracing::info_span!(
        target: fluxgate_observability::telemetry::SPANS,
            "validator.process",
            otel.kind = "consumer",
            tenant = tracing::field::Empty,
            device = tracing::field::Empty,
            message.kind = tracing::field::Empty,
            outcome = tracing::field::Empty,
            reason = tracing::field::Empty,
        );
        fluxgate_observability::telemetry::parent(&span, &rec.headers);
        let work = process(rec, self.work.clone()).instrument(span);
        fluxgate_pipeline::wait(ctx, work, move |v, handed, _| {
            let (consumer, stats) = (v.parts.consumer.clone(), v.parts.stats.clone());
            let Some((acks, permit)) = handed else {
                // The permits are never closed; were they, the record comes again.
                return consumer.nack(&position);
            };
            // On a task of its own, not on the actor: the next record may wait for this
            // permit inside the actor's `wait`, and actix polls none of the actor's own
            // futures while it waits (they once did: past MAX_IN_FLIGHT records awaiting
            // acks, the validator stalled for good).
            actix::spawn(async move {
                let mut ok = true;
                for (kind, ack) in acks {
                    match ack.await {
                        Ok(_) => kind.count(&stats),
                        Err(e) => {
                            ok = false;
                            tracing::warn!(error = %e, "validator: an output was not acknowledged; redelivering");
                        }
                    }
                }
                if ok {
                    consumer.ack(&position);
                } else {
                    stats.pipeline.retries.fetch_add(1, Ordering::Relaxed);
                    consumer.nack(&position);
                }
                drop(permit);
            });
        });
    }

    /// Every record in flight has its outputs acknowledged (and is acked).
    fn drain(&mut self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> {
        let in_flight = self.work.in_flight.clone();
        Box::pin(async move {
            let _all = in_flight.acquire_many(MAX_IN_FLIGHT as u32).await;
        })
    }
}

/// Which counter an output moves once acknowledged.
#[derive(Debug, Clone, Copy)]
enum OutputKind {
    Valid,
    Event,
    Rejected(ReasonCode),
    DeadLetter,
}

impl OutputKind {
    fn count(self, stats: &ValidatorStats) {
        let c = match self {
            OutputKind::DeadLetter => &stats.pipeline.undecodable,
            OutputKind::Valid => &stats.valid,
            OutputKind::Event => &stats.events,
            OutputKind::Rejected(code) => {
                if let Some((_, c)) = stats.reasons.iter().find(|(k, _)| *k == code) {
                    c.fetch_add(1, Ordering::Relaxed);
                }
                &stats.rejected
            }
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// A record's outputs handed to the producer, and its in-flight permit.
type Handed = (Vec<(OutputKind, AckFuture)>, OwnedSemaphorePermit);

/// Validates one record and hands its outputs to the producer, retrying store and bus
/// failures with backoff. A record that is not an envelope is kept: whole on the
/// dead-letter topic, and in the rejected log.
async fn process(rec: Record, work: Arc<Work>) -> Option<Handed> {
    let Work {
        store,
        producer,
        in_flight,
        names,
        cfg,
        quotas,
        stats,
    } = &*work;
    let env = Envelope::from_bytes(&rec.payload).map_err(|e| e.to_string());
    let span = tracing::Span::current();
    match &env {
        Ok(env) => {
            span.record("tenant", env.tenant.as_str());
            span.record("device", env.device.as_str());
            span.record("message.kind", env.body.kind().as_str());
        }
        Err(_) => {
            span.record("outcome", "undecodable");
        }
    }
    if let Err(e) = &env {
        tracing::error!(offset = rec.position.offset, error = %e,
            "validator: not an envelope; keeping it on the dead-letter topic");
    }
    let permit = in_flight.clone().acquire_owned().await.ok()?;
    let mut backoff = cfg.backoff();
    loop {
        let outputs = match &env {
            Ok(env) => attempt(env, &**store, names, cfg, quotas).await,
            Err(e) => Ok(undecodable(&rec, names, e)),
        };
        let sent = match outputs {
            Ok(o) => send(&**producer, o).await,
            Err(e) => Err(e),
        };
        match sent {
            Ok(acks) => return Some((acks, permit)),
            Err(e) => {
                stats.pipeline.retries.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "validator: retrying a record");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// The outputs of a record that cannot be decoded: its dead-letter copy and its entry in
/// the rejected log.
fn undecodable(rec: &Record, names: &Names, error: &str) -> Vec<(OutputKind, OutRecord)> {
    let mut out = vec![(
        OutputKind::DeadLetter,
        fluxgate_bus::dead_letter(&names.dead_letter, rec, Validator::ROLE, error),
    )];
    if let Some(r) =
        Rejection::undecodable(&rec.key, now_ms(), Validator::ROLE, error, &rec.payload)
    {
        out.push((
            OutputKind::Rejected(r.reason.code),
            OutRecord::of(&names.rejected, &r),
        ));
    }
    out
}

async fn attempt(
    env: &Envelope,
    store: &dyn RegistryStore,
    names: &Names,
    cfg: &ValidatorConfig,
    quotas: &Quotas,
) -> Result<Vec<(OutputKind, OutRecord)>, String> {
    let outputs = validate(store, cfg, quotas, env.clone(), now_ms())
        .await
        .map_err(|e| e.to_string())?;
    let span = tracing::Span::current();
    match outputs.iter().find_map(|o| match o {
        Output::Rejected(r) => Some(r.reason.code),
        _ => None,
    }) {
        Some(code) => {
            span.record("outcome", "rejected");
            span.record("reason", code.as_str());
        }
        None => {
            span.record("outcome", "valid");
        }
    }
    Ok(outputs
        .iter()
        .map(|o| match o {
            Output::Valid(e) => (OutputKind::Valid, OutRecord::of(&names.valid, &e)),
            Output::Event(e) => (OutputKind::Event, OutRecord::of(&names.events, &e)),
            Output::Rejected(r) => (
                OutputKind::Rejected(r.reason.code),
                OutRecord::of(&names.rejected, &r),
            ),
        })
        .collect())
}

/// Hands `outputs` to the producer in order; their acks are awaited by the caller.
async fn send(
    producer: &dyn Producer,
    outputs: Vec<(OutputKind, OutRecord)>,
) -> Result<Vec<(OutputKind, AckFuture)>, String> {
    let mut acks = Vec::with_capacity(outputs.len());
    for (kind, mut rec) in outputs {
        // The outputs continue this record's trace.
        fluxgate_observability::telemetry::inject(&mut rec.headers);
        acks.push((kind, producer.send(rec).await.map_err(|e| e.to_string())?));
    }
    Ok(acks)
}

/// The first phase of a validator: its consumers are subscribed, so every record
/// produced from now on reaches it. [`Prepared::run`] is the second.
pub fn prepare(
    bus: &Arc<dyn fluxgate_bus::Bus>,
    store: Arc<dyn RegistryStore>,
    topics: &TopicsConfig,
    cfg: ValidatorConfig,
    stats: Arc<ValidatorStats>,
) -> Result<Prepared, fluxgate_bus::BusError> {
    let raw = fluxgate_bus::ConsumerSpec::group(&cfg.group, &[&topics.name(Topic::IngestRaw)]);
    let changes = bus.consumer(fluxgate_bus::ConsumerSpec::broadcast(
        format!("{}-registry", cfg.group),
        &[&topics.name(Topic::RegistryChanges)],
    ))?;
    Ok(Prepared {
        parts: Parts::subscribe(bus, raw, store, topics, cfg, stats)?,
        changes,
    })
}

/// A validator subscribed to its topics and not yet running ([`prepare`]).
#[derive(Debug)]
pub struct Prepared {
    parts: Parts<ValidatorConfig, ValidatorStats, dyn RegistryStore>,
    changes: Arc<dyn Consumer>,
}

impl Prepared {
    /// Runs the validator until `shutdown` resolves, then drains it. Must run inside an
    /// actix system. Returns its counters.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> Arc<ValidatorStats> {
        let Prepared { parts, changes } = self;
        // Registry reads are cached; the API's registry changes drop stale entries.
        let cache = fluxgate_store::CachedStore::new(
            parts.store.clone(),
            Duration::from_secs(parts.cfg.registry_cache_ttl_secs),
            100_000,
        );
        let follow = actix::spawn(follow_changes(cache.clone(), changes));
        let store: Arc<dyn RegistryStore> = Arc::new(cache);
        let parts = Parts { store, ..parts };
        // A validator that dies (a panic) is restarted; its unfinished records come again.
        let quotas = Arc::new(parts.cfg.quotas());
        let make = || Validator::with_quotas(parts.clone(), quotas.clone());
        fluxgate_pipeline::run(&parts.consumer, &parts.stats.pipeline, make, shutdown).await;
        follow.abort();
        parts.stats
    }
}

/// Applies registry changes to the cache until the consumer closes.
async fn follow_changes(
    cache: fluxgate_store::CachedStore,
    changes: Arc<dyn fluxgate_bus::Consumer>,
) {
    loop {
        let rec = match changes.recv().await {
            Ok(r) => r,
            Err(fluxgate_bus::ConsumeError::Closed) => return,
            Err(e) => {
                tracing::warn!(error = %e, "registry changes: consumer error; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        match fluxgate_model::RegistryChange::from_bytes(&rec.payload) {
            Ok(c) => cache.invalidate(&c).await,
            Err(e) => tracing::warn!(error = %e, "unreadable registry change dropped"),
        }
        changes.ack(&rec.position);
        let _ = changes.commit().await;
    }
}
