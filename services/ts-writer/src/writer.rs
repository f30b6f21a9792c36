//! The writer actor.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix::AsyncContext;
use fluxgate_bus::{
    Bus, BusError, Consumer, ConsumerSpec, OutRecord, Position, Producer, Record, Topic,
    TopicsConfig,
};
use fluxgate_model::{Body, DeviceId, DeviceRef, Envelope, Rejection, TenantId, Values};
use fluxgate_pipeline::{Ctx, Parts, PipelineStats, Source, Stage};
use fluxgate_store::{AttributeScope, LogStore, RejectedEntry, SampleBatch, Store, TelemetryStore};

use tracing::Instrument;

use crate::WriterConfig;

/// Counters and histograms of one writer (for metrics and tests).
#[derive(Debug)]
pub struct WriterStats {
    /// Records read, retried store writes, undecodable records kept, restarts and lag.
    pub pipeline: PipelineStats,
    /// Points written to the store.
    pub points: Arc<AtomicU64>,
    /// Batches flushed.
    pub batches: Arc<AtomicU64>,
    /// Time a successful batch write took in the store, in seconds.
    pub write_seconds: Option<prometheus::Histogram>,
    /// Points per written batch.
    pub batch_points: Option<prometheus::Histogram>,
}

impl Default for WriterStats {
    fn default() -> Self {
        use fluxgate_observability::catalogue::{
            LATENCY_BUCKETS, WRITER_BATCH_POINTS, WRITER_WRITE_SECONDS,
        };
        let write_seconds = WRITER_WRITE_SECONDS
            .histogram(LATENCY_BUCKETS.to_vec())
            .ok();
        let batch_points = WRITER_BATCH_POINTS
            .histogram(vec![
                1.0, 10.0, 50.0, 100.0, 500.0, 1_000.0, 5_000.0, 10_000.0, 50_000.0,
            ])
            .ok();
        WriterStats {
            pipeline: PipelineStats::default(),
            points: Arc::default(),
            batches: Arc::default(),
            write_seconds,
            batch_points,
        }
    }
}

impl WriterStats {
    /// These counters and histograms as Prometheus collectors (register each in the
    /// role's registry).
    pub fn collectors(&self) -> prometheus::Result<Vec<Box<dyn prometheus::core::Collector>>> {
        use fluxgate_observability::CounterDef;
        use fluxgate_observability::catalogue::{WRITER_BATCHES, WRITER_POINTS};
        let def = |metric, value: &Arc<AtomicU64>| CounterDef {
            metric,
            labels: Vec::new(),
            value: value.clone(),
        };
        let counters = fluxgate_observability::CounterSet::new(vec![
            def(&WRITER_POINTS, &self.points),
            def(&WRITER_BATCHES, &self.batches),
        ])?;
        let mut all: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(counters),
            Box::new(self.pipeline.collector(TsWriter::ROLE)?),
        ];
        for h in [&self.write_seconds, &self.batch_points]
            .into_iter()
            .flatten()
        {
            all.push(Box::new(h.clone()));
        }
        Ok(all)
    }
}

/// What a batch holds, with the records it came from.
#[derive(Debug, Default)]
struct Batch {
    samples: Vec<SampleBatch>,
    attributes: Vec<(TenantId, DeviceId, Values, i64)>,
    rejected: Vec<RejectedEntry>,
    /// Dead-letter copies of undecodable records, produced before the batch is acked.
    dead_letters: Vec<OutRecord>,
    positions: Vec<Position>,
    points: usize,
    /// The spans of its records (`writer.receive`), linked from the batch's `store.write`.
    links: Vec<fluxgate_observability::telemetry::SpanContext>,
    /// When its first record came, on tokio's clock (paused in the tests about age).
    opened: Option<tokio::time::Instant>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }
}

/// Which topic a record came from.
#[derive(Debug, Clone)]
struct Topics {
    config: TopicsConfig,
    dead_letter: String,
}

/// What the writer consumes, decoded once where it is read: one variant per topic.
enum Input {
    /// `fluxgate.ingest.valid`: validated telemetry and attributes.
    Valid(Envelope),
    /// `fluxgate.ingest.rejected`: a refused message, for the rejected log.
    Rejected(Rejection),
}

impl Input {
    /// The topics the writer subscribes to.
    const TOPICS: [Topic; 2] = [Topic::IngestValid, Topic::IngestRejected];

    fn decode(topics: &TopicsConfig, rec: &Record) -> Result<Input, String> {
        match topics.topic_of(&rec.position.topic) {
            Some(Topic::IngestValid) => Envelope::from_bytes(&rec.payload)
                .map(Input::Valid)
                .map_err(|e| e.to_string()),
            Some(Topic::IngestRejected) => Rejection::from_bytes(&rec.payload)
                .map(Input::Rejected)
                .map_err(|e| e.to_string()),
            Some(other) => Err(format!(
                "a record of {}, not the writer's topic",
                other.label()
            )),
            None => Err(format!(
                "a record of {}, not a fluxgate topic",
                rec.position.topic
            )),
        }
    }
}

/// The parts of the store the writer uses: device data (time series and client
/// attributes) and the rejected log. It cannot reach the registry or the commands.
#[derive(Debug, Clone)]
pub struct WriterStore {
    /// Where points and client attributes go.
    pub data: Arc<dyn TelemetryStore>,
    /// Where undecodable records are noted.
    pub logs: Arc<dyn LogStore>,
}

impl WriterStore {
    /// Both parts from one store.
    pub fn of(store: Arc<dyn Store>) -> Self {
        WriterStore {
            data: store.clone(),
            logs: store,
        }
    }
}

/// The writer: one consumer, one batch, flushes that block reading until written.
pub struct TsWriter {
    parts: Parts<WriterConfig, WriterStats, WriterStore>,
    topics: Topics,
    batch: Batch,
}

impl std::fmt::Debug for TsWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TsWriter")
            .field("cfg", &self.parts.cfg)
            .finish()
    }
}

impl TsWriter {
    /// A writer over `parts.consumer` (subscribed to the valid and rejected topics);
    /// its producer keeps undecodable records on the dead-letter topic.
    pub fn new(parts: Parts<WriterConfig, WriterStats, WriterStore>) -> Self {
        TsWriter {
            topics: Topics {
                config: parts.topics.clone(),
                dead_letter: parts.topics.name(Topic::DeadLetter),
            },
            parts,
            batch: Batch::default(),
        }
    }

    /// Adds a record's effect to the batch.
    fn add(&mut self, rec: Record) {
        // The record's part of its trace: a consumer span, child of the validator's; the
        // batch's write links back to it.
        let span = tracing::info_span!(
        target: fluxgate_observability::telemetry::SPANS,
            "writer.receive",
            otel.kind = "consumer",
            tenant = tracing::field::Empty,
            device = tracing::field::Empty,
        );
        fluxgate_observability::telemetry::parent(&span, &rec.headers);
        let _in = span.enter();
        let b = &mut self.batch;
        b.links
            .extend(fluxgate_observability::telemetry::span_context(&span));
        b.opened.get_or_insert_with(tokio::time::Instant::now);
        b.positions.push(rec.position.clone());
        let env = match Input::decode(&self.topics.config, &rec) {
            Ok(Input::Rejected(r)) => return b.rejected.push(rejected_entry(r)),
            Ok(Input::Valid(env)) => env,
            Err(e) => return self.undecodable(&rec, &e),
        };
        span.record("tenant", env.tenant.as_str());
        span.record("device", env.device.as_str());
        let DeviceRef::Id(device) = env.device.clone() else {
            // Names are resolved by the validator; a name here has nothing to be stored under.
            return;
        };
        let b = &mut self.batch;
        match env.body {
            Body::Telemetry { samples, .. } => {
                b.points += samples.iter().map(|s| s.values.len()).sum::<usize>();
                b.samples.push(SampleBatch {
                    tenant: env.tenant,
                    device,
                    samples,
                });
            }
            Body::Attributes { values } => {
                b.points += values.len();
                b.attributes
                    .push((env.tenant, device, values, env.received_ms));
            }
            // Nothing else is on the valid topic (the validator sends the rest to the
            // dispatcher).
            Body::Connect { .. }
            | Body::Disconnect { .. }
            | Body::Subscribed
            | Body::SubscribedAttributes
            | Body::AttributeRequest { .. }
            | Body::RpcRequest { .. }
            | Body::RpcResponse { .. }
            | Body::Claim { .. }
            | Body::RpcAnswer { .. }
            | Body::Command(_)
            | Body::DeliveryOutcome { .. } => {}
        }
    }

    /// A record that can never be written as data: it is kept whole on the dead-letter
    /// topic and noted in the rejected log, both before its batch is acked.
    fn undecodable(&mut self, rec: &Record, why: &str) {
        self.parts
            .stats
            .pipeline
            .undecodable
            .fetch_add(1, Ordering::Relaxed);
        tracing::error!(topic = %rec.position.topic, partition = rec.position.partition,
            offset = rec.position.offset, error = why,
            "ts-writer: record cannot be decoded; keeping it on the dead-letter topic");
        let b = &mut self.batch;
        b.dead_letters.push(fluxgate_bus::dead_letter(
            &self.topics.dead_letter,
            rec,
            DEAD_LETTER_ROLE,
            why,
        ));
        if let Some(r) = Rejection::undecodable(
            &rec.key,
            fluxgate_bus::now_ms(),
            DEAD_LETTER_ROLE,
            why,
            &rec.payload,
        ) {
            b.rejected.push(rejected_entry(r));
        }
    }

    /// Writes the batch (blocking the actor until it is written), then acks its records.
    fn flush(&mut self, ctx: &mut Ctx<Self>) {
        if self.batch.is_empty() {
            return;
        }
        fluxgate_pipeline::wait(ctx, self.write_open_batch(), |_, (), _| {});
    }

    /// Takes the open batch; the returned future writes it and then acks its records.
    fn write_open_batch(&mut self) -> impl Future<Output = ()> + 'static {
        let consumer = self.parts.consumer.clone();
        let mut batch = std::mem::take(&mut self.batch);
        // One span for the batch's write, linked (not parented) to each record's span:
        // the records belong to many traces.
        let span = tracing::info_span!(
        target: fluxgate_observability::telemetry::SPANS,
            "store.write",
            otel.kind = "client",
            db.operation.name = "write_batch",
            db.operation.batch.size = batch.positions.len(),
            points = batch.points,
            retries = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        for to in batch.links.drain(..) {
            fluxgate_observability::telemetry::add_link(&span, to);
        }
        let work = write_batch(
            self.parts.store.clone(),
            self.parts.producer.clone(),
            consumer.clone(),
            self.parts.cfg.clone(),
            self.parts.stats.clone(),
            batch,
        )
        .instrument(span);
        async move {
            for p in &work.await {
                consumer.ack(p);
            }
        }
    }
}

/// The name the writer gives itself in dead letters and the rejected log.
const DEAD_LETTER_ROLE: &str = "ts-writer";

/// A rejection as the rejected log keeps it.
fn rejected_entry(r: Rejection) -> RejectedEntry {
    RejectedEntry {
        tenant: r.tenant,
        device: r.device,
        at_ms: r.received_ms,
        code: r.reason.code,
        message: r.reason.message,
        excerpt: r.excerpt,
    }
}

/// Writes everything in `batch`, retrying with backoff until the store takes it (the
/// consumer is paused meanwhile). Parts already written are not written again. Returns the
/// positions to ack.
async fn write_batch(
    store: Arc<WriterStore>,
    producer: Arc<dyn Producer>,
    consumer: Arc<dyn Consumer>,
    cfg: WriterConfig,
    stats: Arc<WriterStats>,
    mut batch: Batch,
) -> Vec<Position> {
    let mut backoff = cfg.backoff();
    let mut paused = false;
    let mut retries = 0u64;
    loop {
        let started = Instant::now();
        match write_once(&store, &*producer, &mut batch).await {
            Ok(points) => {
                let span = tracing::Span::current();
                span.record("outcome", "written");
                span.record("retries", retries);
                stats.points.fetch_add(points as u64, Ordering::Relaxed);
                stats.batches.fetch_add(1, Ordering::Relaxed);
                if let Some(h) = &stats.write_seconds {
                    h.observe(started.elapsed().as_secs_f64());
                }
                if let Some(h) = &stats.batch_points {
                    h.observe(points as f64);
                }
                if paused {
                    consumer.resume();
                }
                return batch.positions;
            }
            Err(e) => {
                stats.pipeline.retries.fetch_add(1, Ordering::Relaxed);
                retries += 1;
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, delay_ms = delay.as_millis() as u64,
                    "ts-writer: store write failed; pausing intake and retrying");
                if !paused {
                    consumer.pause();
                    paused = true;
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// One attempt; what succeeds is removed from the batch so a retry does not repeat it.
async fn write_once(
    store: &WriterStore,
    producer: &dyn Producer,
    b: &mut Batch,
) -> Result<usize, String> {
    let points = write_store(store, b).await.map_err(|e| e.to_string())?;
    while let Some(rec) = b.dead_letters.first().cloned() {
        let ack = producer.send(rec).await.map_err(|e| e.to_string())?;
        ack.await.map_err(|e| e.to_string())?;
        b.dead_letters.remove(0);
    }
    Ok(points)
}

/// The store part of [`write_once`].
async fn write_store(store: &WriterStore, b: &mut Batch) -> fluxgate_store::Result<usize> {
    let mut points = 0;
    if !b.samples.is_empty() {
        points += store.data.write_samples(b.samples.clone()).await?;
        b.samples.clear();
    }
    while let Some((tenant, device, values, ts)) = b.attributes.first().cloned() {
        points += values.len();
        store
            .data
            .put_attributes(tenant, device, AttributeScope::Client, values, ts)
            .await?;
        b.attributes.remove(0);
    }
    while let Some(e) = b.rejected.first().cloned() {
        store.logs.log_rejected(e).await?;
        b.rejected.remove(0);
    }
    Ok(points)
}

impl Stage for TsWriter {
    const ROLE: &'static str = "writer";

    fn source(&self) -> Source<'_> {
        Source::new(&self.parts.consumer, &self.parts.stats.pipeline)
    }

    fn started(&mut self, ctx: &mut Ctx<Self>) {
        let tick = Duration::from_millis((self.parts.cfg.batch_max_age_ms / 2).max(1));
        ctx.run_interval(tick, |act, ctx| {
            let w = act.stage();
            let due = w.batch.opened.is_some_and(|t| {
                t.elapsed() >= Duration::from_millis(w.parts.cfg.batch_max_age_ms)
            });
            if due {
                w.flush(ctx);
            }
        });
    }

    fn accept(&mut self, rec: Record, ctx: &mut Ctx<Self>) {
        self.add(rec);
        if self.batch.points >= self.parts.cfg.batch_max_points {
            self.flush(ctx);
        }
    }

    /// Writes what is batched (graceful drain).
    fn drain(&mut self) -> std::pin::Pin<Box<dyn Future<Output = ()>>> {
        Box::pin(self.write_open_batch())
    }
}

/// The first phase of a writer: its consumer is subscribed, so every record produced
/// from now on reaches it. [`Prepared::run`] is the second.
pub fn prepare(
    bus: &Arc<dyn Bus>,
    store: WriterStore,
    topics: &TopicsConfig,
    cfg: WriterConfig,
    stats: Arc<WriterStats>,
) -> Result<Prepared, BusError> {
    let names = Input::TOPICS.map(|t| topics.name(t));
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let spec = ConsumerSpec::group(&cfg.group, &names);
    Parts::subscribe(bus, spec, Arc::new(store), topics, cfg, stats).map(Prepared)
}

/// A writer subscribed to its topics and not yet running ([`prepare`]).
#[derive(Debug)]
pub struct Prepared(Parts<WriterConfig, WriterStats, WriterStore>);

impl Prepared {
    /// Runs the writer until `shutdown` resolves, then drains it. Must run inside an
    /// actix system. Returns its counters.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Arc<WriterStats> {
        let parts = self.0;
        // A writer that dies (a panic) is restarted; the records of its lost batch come
        // again.
        let make = || TsWriter::new(parts.clone());
        fluxgate_pipeline::run(&parts.consumer, &parts.stats.pipeline, make, shutdown).await;
        parts.stats
    }
}
