//! The writer on the in-process bus with SQLite, and on the ScyllaDB adapter over the CQL
//! test double for store faults. Produce acks on the in-process bus resolve only when the
//! writer has committed, so every awaited ack below proves "written, then committed".

#![allow(clippy::unwrap_used, clippy::expect_used)]

use fluxgate_pipeline::{Parts, Stage};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use actix::prelude::*;
use fluxgate_bus::{AckFuture, Bus, ConsumerSpec, MemoryBus, OutRecord, Topic, TopicsConfig};
use fluxgate_model::{
    Body, Channel, DeviceId, DeviceRef, Dialect, ENVELOPE_VERSION, Envelope, MessageId, ReasonCode,
    Reject, Rejection, Sample, TenantId, Value, Values,
};
use fluxgate_store::sqlite::SqliteStore;
use fluxgate_store::{AttributeScope, Order, RangeQuery, Store};
use fluxgate_testkit::Stoppable;
use fluxgate_ts_writer::{TsWriter, WriterConfig, WriterStats, WriterStore};

const NOW: i64 = 1_700_000_000_000;

fn tenant() -> TenantId {
    TenantId::new("app").unwrap()
}

fn envelope(device: &str, part: u32, body: Body) -> Envelope {
    Envelope {
        v: ENVELOPE_VERSION,
        id: MessageId::from_parts(NOW as u64, u128::from(part)),
        part,
        tenant: tenant(),
        device: DeviceRef::Id(DeviceId::new(device).unwrap()),
        via: None,
        dialect: Dialect::ThingsBoard,
        channel: Channel::Mqtt,
        received_ms: NOW,
        body,
    }
}

fn telemetry(device: &str, ts: i64, v: i64) -> Envelope {
    let mut values = Values::new();
    values.insert("temp", Value::Integer(v));
    envelope(
        device,
        ts as u32,
        Body::Telemetry {
            samples: vec![Sample { ts_ms: ts, values }],
            flow_version: None,
        },
    )
}

fn record(topics: &TopicsConfig, topic: Topic, key: &str, payload: Vec<u8>) -> OutRecord {
    OutRecord::new(topics.name(topic), key.to_string(), payload)
}

fn start(
    bus: &MemoryBus,
    store: Arc<dyn Store>,
    cfg: WriterConfig,
    arbiter: Option<&Arbiter>,
) -> (
    Addr<fluxgate_pipeline::Pipeline<TsWriter>>,
    Arc<WriterStats>,
) {
    let topics = TopicsConfig::default();
    let names: Vec<String> = [Topic::IngestValid, Topic::IngestRejected]
        .iter()
        .map(|t| topics.name(*t))
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let consumer = bus
        .consumer(ConsumerSpec::group(&cfg.group, &names))
        .unwrap();
    let stats = Arc::new(WriterStats::default());
    let writer = TsWriter::new(Parts {
        consumer,
        producer: bus.producer(),
        store: Arc::new(WriterStore::of(store)),
        topics: topics.clone(),
        cfg,
        stats: stats.clone(),
    });
    let addr = match arbiter {
        Some(a) => fluxgate_pipeline::Pipeline::start_in_arbiter(&a.handle(), |_| {
            fluxgate_pipeline::Pipeline::new(writer)
        }),
        None => writer.start(),
    };
    (addr, stats)
}

/// A writer on `bus`, subscribed on return (the in-process bus keeps records only for
/// the groups it knows), running until it is stopped.
fn run(
    bus: Arc<dyn Bus>,
    store: Arc<dyn Store>,
    cfg: WriterConfig,
) -> (Arc<WriterStats>, Stoppable<()>) {
    let topics = TopicsConfig::default();
    let stats = Arc::new(WriterStats::default());
    let prepared =
        fluxgate_ts_writer::prepare(&bus, WriterStore::of(store), &topics, cfg, stats.clone())
            .unwrap();
    let running = Stoppable::spawn_local(|shutdown| async move {
        prepared.run(shutdown).await;
    });
    (stats, running)
}

/// The writer's metrics as an operator scrapes them.
fn scrape(stats: &WriterStats) -> String {
    let registry = prometheus::Registry::new();
    for c in stats.collectors().unwrap() {
        registry.register(c).unwrap();
    }
    fluxgate_observability::render(&registry)
}

async fn points(store: &dyn Store, device: &str) -> Vec<(i64, Value)> {
    store
        .query(RangeQuery {
            tenant: tenant(),
            device: DeviceId::new(device).unwrap(),
            keys: vec!["temp".into()],
            from_ms: 0,
            to_ms: i64::MAX,
            limit: 1000,
            order: Order::Asc,
            page_token: None,
        })
        .await
        .unwrap()
        .points
        .into_iter()
        .map(|p| (p.ts_ms, p.value))
        .collect()
}

#[actix_rt::test]
async fn writes_every_kind_and_commits_only_after_the_write() {
    let bus = MemoryBus::default();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
    let (_writer, stats) = start(&bus, store.clone(), WriterConfig::default(), None);
    let topics = TopicsConfig::default();
    let p = bus.producer();
    let dlq_name = topics.name(Topic::DeadLetter);
    let dlq = bus
        .consumer(ConsumerSpec::group("dlq-reader", &[&dlq_name]))
        .unwrap();

    let mut attrs = Values::new();
    attrs.insert("fw", Value::from("1.2"));
    let records = vec![
        record(
            &topics,
            Topic::IngestValid,
            "app/d1",
            telemetry("d1", 1000, 1).to_bytes(),
        ),
        record(
            &topics,
            Topic::IngestValid,
            "app/d1",
            telemetry("d1", 2000, 2).to_bytes(),
        ),
        record(
            &topics,
            Topic::IngestValid,
            "app/d1",
            envelope("d1", 9, Body::Attributes { values: attrs }).to_bytes(),
        ),
        record(
            &topics,
            Topic::IngestRejected,
            "app/d1",
            Rejection::new(
                tenant(),
                "d1",
                NOW,
                &Reject::MalformedJson { detail: "x".into() },
                b"{oops",
            )
            .to_bytes(),
        ),
        record(
            &topics,
            Topic::IngestValid,
            "app/d1",
            b"not an envelope".to_vec(),
        ),
    ];
    let mut acks = Vec::new();
    for r in records {
        acks.push(p.send(r).await.unwrap());
    }
    // The in-process bus acks the writer's dead letter once its reader here commits it.
    let dead = tokio::time::timeout(Duration::from_secs(5), dlq.recv())
        .await
        .expect("dead letter in time")
        .unwrap();
    dlq.ack(&dead.position);
    for a in acks {
        tokio::time::timeout(Duration::from_secs(10), a)
            .await
            .expect("committed in time")
            .unwrap();
    }
    assert_eq!(
        points(&*store, "d1").await,
        vec![(1000, Value::Integer(1)), (2000, Value::Integer(2))]
    );
    let client = store
        .attributes(
            tenant(),
            DeviceId::new("d1").unwrap(),
            AttributeScope::Client,
            None,
        )
        .await
        .unwrap();
    assert_eq!(client["fw"], Value::from("1.2"));
    let rejected = store.rejected_log(tenant(), None, 10).await.unwrap();
    let by_code = |c: ReasonCode| rejected.iter().find(|r| r.code == c).unwrap();
    assert_eq!(by_code(ReasonCode::MalformedJson).excerpt, "{oops");
    // The undecodable record was acked only once kept: whole on the dead-letter topic, and
    // noted in the rejected log (which the API serves).
    let kept = by_code(ReasonCode::Undecodable);
    assert_eq!(kept.excerpt, "not an envelope");
    assert_eq!(kept.device, "d1");
    assert_eq!(&dead.payload[..], b"not an envelope");
    assert_eq!(&dead.key[..], b"app/d1");
    let header = |k| {
        std::str::from_utf8(dead.headers.get(k).unwrap())
            .unwrap()
            .to_owned()
    };
    use fluxgate_bus::dead_letter_headers as h;
    assert_eq!(header(h::TOPIC), topics.name(Topic::IngestValid));
    assert_eq!(header(h::ROLE), "ts-writer");
    assert!(!header(h::ERROR).is_empty());
    assert_eq!(stats.pipeline.undecodable.load(Ordering::Relaxed), 1);
    assert_eq!(stats.points.load(Ordering::Relaxed), 3);
    // The same counters, as an operator scrapes them.
    let text = scrape(&stats);
    assert!(
        text.contains("fluxgate_ts_writer_points_written_total 3"),
        "{text}"
    );
    assert!(
        text.contains("fluxgate_pipeline_undecodable_total{role=\"writer\"} 1"),
        "{text}"
    );
}

#[actix_rt::test]
async fn a_store_outage_pauses_intake_and_loses_nothing() {
    use fluxgate_store::scylla::{ScyllaConfig, ScyllaStore};
    use fluxgate_testkit::cql::{CqlDouble, Fault};
    let double = CqlDouble::start().await.unwrap();
    let store: Arc<dyn Store> = Arc::new(
        ScyllaStore::connect(ScyllaConfig {
            retries: 0,
            ..ScyllaConfig::single_node(double.addr(), "fg_writer")
        })
        .await
        .unwrap(),
    );
    let cfg = WriterConfig {
        retry_initial_ms: 10,
        retry_max_ms: 40,
        ..WriterConfig::default()
    };
    let bus = MemoryBus::default();
    let topics = TopicsConfig::default();
    let (stats, running) = run(Arc::new(bus.clone()), store.clone(), cfg);
    // An outage of about 100 write attempts (10-40 ms apart: seconds).
    double.inject(Fault::WriteTimeout, 100);
    let p = bus.producer();
    let mut acks = Vec::new();
    for i in 0..5 {
        let env = telemetry("d2", 5000 + i, i);
        let rec = record(&topics, Topic::IngestValid, "app/d2", env.to_bytes());
        acks.push(p.send(rec).await.unwrap());
    }
    // The lag shows the records waiting behind the outage.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while stats.pipeline.lag.load(Ordering::Relaxed) < 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "lag {} during the outage",
            stats.pipeline.lag.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        double.pending_faults() > 0,
        "the lag was seen during the outage"
    );
    for a in acks {
        tokio::time::timeout(Duration::from_secs(30), a)
            .await
            .expect("written once the store is back")
            .unwrap();
    }
    assert_eq!(double.pending_faults(), 0);
    assert!(
        stats.pipeline.retries.load(Ordering::Relaxed) >= 100,
        "every failed attempt was retried"
    );
    let got: Vec<i64> = points(&*store, "d2").await.iter().map(|p| p.0).collect();
    assert_eq!(got, (5000..5005).collect::<Vec<_>>(), "exactly once");
    // Caught up: the lag falls back to zero, and the metrics say all of it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while stats.pipeline.lag.load(Ordering::Relaxed) != 0 {
        assert!(tokio::time::Instant::now() < deadline, "lag back to 0");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = scrape(&stats);
    assert!(
        text.contains("# TYPE fluxgate_pipeline_consumer_lag_records gauge"),
        "{text}"
    );
    assert!(
        text.contains("fluxgate_ts_writer_points_written_total 5"),
        "{text}"
    );
    running.stop(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn a_writer_killed_before_its_flush_is_made_good_by_the_next() {
    let bus = MemoryBus::default();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
    let topics = TopicsConfig::default();
    // A batch that would flush only after a minute: the first writer dies holding it.
    let slow = WriterConfig {
        batch_max_age_ms: 60_000,
        batch_max_points: 1_000_000,
        ..WriterConfig::default()
    };
    let arbiter = Arbiter::new();
    let (_first, first_stats) = start(&bus, store.clone(), slow, Some(&arbiter));
    let p = bus.producer();
    let mut acks = Vec::new();
    for i in 0..20 {
        let key = format!("app/d{}", i % 3);
        let env = telemetry(&format!("d{}", i % 3), 1000 + i, i);
        acks.push(
            p.send(record(&topics, Topic::IngestValid, &key, env.to_bytes()))
                .await
                .unwrap(),
        );
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while first_stats.pipeline.records.load(Ordering::Relaxed) < 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first writer read everything"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        first_stats.points.load(Ordering::Relaxed),
        0,
        "nothing written yet"
    );
    // Kill it: its event loop stops, the batch is lost, nothing was committed.
    arbiter.stop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_second, second_stats) = start(&bus, store.clone(), WriterConfig::default(), None);
    for a in acks {
        tokio::time::timeout(Duration::from_secs(10), a)
            .await
            .expect("committed by the second writer")
            .unwrap();
    }
    assert_eq!(
        second_stats.pipeline.records.load(Ordering::Relaxed),
        20,
        "everything redelivered"
    );
    let total: usize = [
        points(&*store, "d0").await.len(),
        points(&*store, "d1").await.len(),
        points(&*store, "d2").await.len(),
    ]
    .iter()
    .sum();
    assert_eq!(total, 20, "every point stored exactly once");
}

/// A writer whose batch is written only at 60 s (or at a drain), holding one record of
/// `device` in its open batch: the record's ack, the store, the writer and its counters.
async fn one_record_in_an_open_batch(
    device: &str,
) -> (
    AckFuture,
    Arc<dyn Store>,
    Addr<fluxgate_pipeline::Pipeline<TsWriter>>,
    Arc<WriterStats>,
) {
    let bus = MemoryBus::default();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
    let slow = WriterConfig {
        batch_max_age_ms: 60_000,
        ..WriterConfig::default()
    };
    let (writer, stats) = start(&bus, store.clone(), slow, None);
    let topics = TopicsConfig::default();
    let ack = bus
        .producer()
        .send(record(
            &topics,
            Topic::IngestValid,
            &format!("app/{device}"),
            telemetry(device, 9, 9).to_bytes(),
        ))
        .await
        .unwrap();
    while stats.pipeline.records.load(Ordering::Relaxed) < 1 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    (ack, store, writer, stats)
}

#[actix_rt::test]
async fn drain_writes_the_open_batch_and_stops() {
    let (ack, store, writer, _) = one_record_in_an_open_batch("d9").await;
    writer.send(fluxgate_pipeline::Drain).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), ack)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(points(&*store, "d9").await.len(), 1);
    assert!(!writer.connected(), "stopped after the drain");
}

/// The batch age on a paused clock: the test moves time itself, so it is exact and
/// waits for nothing (a minute of batch age takes no wall time).
#[actix_rt::test]
async fn an_open_batch_is_written_when_it_is_batch_max_age_old_and_not_before() {
    tokio::time::pause();
    let (ack, store, _writer, stats) = one_record_in_an_open_batch("d7").await;
    // 59 s after the batch opened (the writer looks every 30 s): still open. A write the
    // writer started would finish before the paused clock moves on by itself (a blocking
    // store call holds it), so let it move 1 ms and look.
    tokio::time::advance(Duration::from_millis(59_000)).await;
    let _ = tokio::time::timeout(Duration::from_millis(1), std::future::pending::<()>()).await;
    assert_eq!(stats.batches.load(Ordering::Relaxed), 0, "written early");
    assert!(points(&*store, "d7").await.is_empty());
    // Past 60 s: the next look writes it, and only then is the record acked.
    tokio::time::advance(Duration::from_millis(31_000)).await;
    tokio::time::timeout(Duration::from_secs(5), ack)
        .await
        .expect("acked once its batch is written")
        .unwrap();
    assert_eq!(stats.batches.load(Ordering::Relaxed), 1);
    assert_eq!(points(&*store, "d7").await.len(), 1);
}

#[actix_rt::test]
async fn a_writer_that_panics_is_restarted_and_stores_every_record_once() {
    use fluxgate_bus::testing::FaultyBus;
    let memory = MemoryBus::default();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
    let topics = TopicsConfig::default();
    let cfg = WriterConfig {
        batch_max_points: 8,
        ..WriterConfig::default()
    };
    let bus = Arc::new(FaultyBus::new(Arc::new(memory.clone())));
    // First death: mid-batch, after reading its 5th record (the batch is lost unwritten).
    // Second death: after a batch was written, before its first record is acked (the
    // batch is written again: idempotent).
    bus.faults().recv.store(5, Ordering::SeqCst);
    bus.faults().ack.store(1, Ordering::SeqCst);
    let (stats, running) = run(bus, store.clone(), cfg);
    let p = memory.producer();
    let mut acks = Vec::new();
    for i in 0..30 {
        let key = format!("app/d{}", i % 3);
        let env = telemetry(&format!("d{}", i % 3), 1000 + i, i);
        acks.push(
            p.send(record(&topics, Topic::IngestValid, &key, env.to_bytes()))
                .await
                .unwrap(),
        );
    }
    for a in acks {
        tokio::time::timeout(Duration::from_secs(20), a)
            .await
            .expect("every record committed in the end")
            .unwrap();
    }
    assert_eq!(
        stats.pipeline.restarts.load(Ordering::Relaxed),
        2,
        "two deaths, two restarts"
    );
    assert!(
        stats.pipeline.records.load(Ordering::Relaxed) > 30,
        "the lost records were read again"
    );
    let mut all = Vec::new();
    for d in ["d0", "d1", "d2"] {
        all.extend(points(&*store, d).await.into_iter().map(|(ts, _)| ts));
    }
    all.sort_unstable();
    assert_eq!(all, (1000..1030).collect::<Vec<i64>>(), "every point once");
    let text = scrape(&stats);
    assert!(
        text.contains("fluxgate_pipeline_restarts_total{role=\"writer\"} 2"),
        "{text}"
    );
    running.stop(Duration::from_secs(5)).await;
}
