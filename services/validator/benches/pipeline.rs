//! Samples per second through validator + writer: raw ThingsBoard telemetry envelopes
//! (10 samples x 2 keys each) are produced to `fluxgate.ingest.raw`; an iteration ends when
//! the writer has stored every point. In-process bus + SQLite always; side by side in the
//! same run, Apache Kafka (`KAFKA_BROKERS`, e.g. scripts/services/kafka) + SQLite, and a
//! real CQL store (`SCYLLA_URI`, e.g. scripts/services/cassandra) behind either bus.
//!
//! Run: `KAFKA_BROKERS=127.0.0.1:19092 SCYLLA_URI=127.0.0.1:19042 cargo bench -p
//! fluxgate-validator --bench pipeline`.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fluxgate_bus::{Bus, KafkaBus, KafkaConfig, MemoryBus, OutRecord, Topic, TopicsConfig};
use fluxgate_model::{
    Body, Channel, DeviceId, DeviceRef, Dialect, ENVELOPE_VERSION, Envelope, MessageId, Sample,
    TenantId, Value, Values,
};
use fluxgate_store::sqlite::{SqliteConfig, SqliteStore};
use fluxgate_store::{Device, DeviceKind, Store};
use fluxgate_ts_writer::{WriterConfig, WriterStats};
use fluxgate_validator::{ValidatorConfig, ValidatorStats};

const ENVELOPES: u64 = 500;
const SAMPLES: i64 = 10;
const POINTS: u64 = ENVELOPES * SAMPLES as u64 * 2;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

struct Pipeline {
    bus: Arc<dyn Bus>,
    topics: TopicsConfig,
    writer: Arc<WriterStats>,
    round: i64,
}

impl Pipeline {
    async fn start(bus: Arc<dyn Bus>, store: Arc<dyn Store>, topics: TopicsConfig) -> Pipeline {
        bus.ensure_topics(&topics.specs()).await.unwrap();
        for d in 0..10 {
            store
                .put_device(Device {
                    tenant: TenantId::new("bench").unwrap(),
                    id: DeviceId::new(format!("dev-{d}")).unwrap(),
                    name: format!("dev-{d}"),
                    kind: DeviceKind::Standalone,
                    peripheral_policy: None,
                    tags: vec![],
                    profile: None,
                    created_ms: 0,
                    updated_ms: 0,
                })
                .await
                .unwrap();
        }
        // The roles as deployed: supervised, the validator's registry reads cached. The
        // groups exist before anything is produced (the in-process bus keeps records only
        // for groups it knows).
        let vcfg = ValidatorConfig {
            group: format!("{}bench-validators", topics.prefix),
            ..ValidatorConfig::default()
        };
        let wcfg = WriterConfig {
            group: format!("{}bench-writers", topics.prefix),
            ..WriterConfig::default()
        };
        // Both subscribed before anything is produced.
        let writer = Arc::new(WriterStats::default());
        let stats = Arc::new(ValidatorStats::default());
        let v = fluxgate_validator::prepare(&bus, store.clone(), &topics, vcfg, stats).unwrap();
        let w = fluxgate_ts_writer::prepare(
            &bus,
            fluxgate_ts_writer::WriterStore::of(store),
            &topics,
            wcfg,
            writer.clone(),
        )
        .unwrap();
        actix::spawn(v.run(std::future::pending()));
        actix::spawn(w.run(std::future::pending()));
        Pipeline {
            bus,
            topics,
            writer,
            round: 0,
        }
    }

    async fn run_once(&mut self) -> Duration {
        self.round += 1;
        let base = now_ms() - 60_000 + self.round * 1000;
        let start = Instant::now();
        let target = self.writer.points.load(Ordering::Relaxed) + POINTS;
        let p = self.bus.producer();
        for i in 0..ENVELOPES {
            let samples = (0..SAMPLES)
                .map(|s| {
                    let mut values = Values::new();
                    values.insert("temp", Value::Float(20.0 + s as f64));
                    values.insert("hum", Value::Integer(40 + s));
                    Sample {
                        ts_ms: base + s,
                        values,
                    }
                })
                .collect();
            let env = Envelope {
                v: ENVELOPE_VERSION,
                id: MessageId::from_parts(i, u128::from(i)),
                part: 0,
                tenant: TenantId::new("bench").unwrap(),
                device: DeviceRef::Id(DeviceId::new(format!("dev-{}", i % 10)).unwrap()),
                via: None,
                dialect: Dialect::ThingsBoard,
                channel: Channel::Mqtt,
                received_ms: now_ms(),
                body: Body::Telemetry {
                    samples,
                    flow_version: None,
                },
            };
            // Acks are not awaited: on the in-process bus they resolve only when the
            // writer commits, which is what the loop below waits for anyway.
            let _ack = p
                .send(OutRecord::of(self.topics.name(Topic::IngestRaw), &env))
                .await
                .unwrap();
        }
        while self.writer.points.load(Ordering::Relaxed) < target {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        start.elapsed()
    }
}

/// A Kafka bus with `librdkafka` settings, and topics of this run's own.
fn kafka(
    brokers: &str,
    librdkafka: std::collections::BTreeMap<String, String>,
) -> (Arc<dyn Bus>, TopicsConfig) {
    let bus: Arc<dyn Bus> = Arc::new(
        KafkaBus::new(KafkaConfig {
            brokers: brokers.to_owned(),
            librdkafka,
            ..KafkaConfig::default()
        })
        .unwrap(),
    );
    let topics = TopicsConfig {
        prefix: format!("{}.", fluxgate_testkit::unique_name("bench")),
        partitions: 4,
        replication_factor: 1,
        ..TopicsConfig::default()
    };
    (bus, topics)
}

fn bench(c: &mut Criterion) {
    let system = actix_rt::System::new();
    let mut runs: Vec<(&str, Pipeline)> = Vec::new();
    let dir = std::env::temp_dir().join(fluxgate_testkit::unique_name("pipeline-bench"));
    std::fs::create_dir_all(&dir).unwrap();
    let sqlite = |name: &str| -> Arc<dyn Store> {
        Arc::new(SqliteStore::open(dir.join(name), &SqliteConfig::default()).unwrap())
    };
    runs.push((
        "in_process_bus+sqlite",
        system.block_on(Pipeline::start(
            Arc::new(MemoryBus::default()),
            sqlite("mem.db"),
            TopicsConfig::default(),
        )),
    ));
    // A store on the CQL database, connected on the bench's own runtime (the driver's
    // tasks live there).
    let cql = std::env::var("SCYLLA_URI").ok().map(|uri| {
        let system = &system;
        move || -> Arc<dyn Store> {
            use fluxgate_store::scylla::{ScyllaConfig, ScyllaStore};
            let keyspace = fluxgate_testkit::unique_name("bench").replace('-', "_");
            let cfg = ScyllaConfig::single_node(uri.clone(), &keyspace);
            Arc::new(system.block_on(ScyllaStore::connect(cfg)).unwrap())
        }
    });
    if let Some(cql) = &cql {
        runs.push((
            "in_process_bus+cassandra",
            system.block_on(Pipeline::start(
                Arc::new(MemoryBus::default()),
                cql(),
                TopicsConfig::default(),
            )),
        ));
    }
    if let Ok(brokers) = std::env::var("KAFKA_BROKERS") {
        // librdkafka's default fetch wait (500 ms) against one cut to 10 ms: the first is
        // the throughput setting, the second the latency one.
        for (name, fetch_wait) in [
            ("kafka+sqlite", None),
            ("kafka_fetch_wait_10ms+sqlite", Some("10")),
        ] {
            let mut librdkafka = std::collections::BTreeMap::new();
            if let Some(ms) = fetch_wait {
                librdkafka.insert("fetch.wait.max.ms".to_string(), ms.to_string());
            }
            let (bus, topics) = kafka(&brokers, librdkafka);
            let db = sqlite(&format!("{name}.db"));
            runs.push((name, system.block_on(Pipeline::start(bus, db, topics))));
        }
        if let Some(cql) = &cql {
            let (bus, topics) = kafka(&brokers, Default::default());
            runs.push((
                "kafka+cassandra",
                system.block_on(Pipeline::start(bus, cql(), topics)),
            ));
        }
    }
    let mut group = c.benchmark_group("validator+writer");
    group.throughput(Throughput::Elements(POINTS));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(15));
    for (name, p) in &mut runs {
        group.bench_function(*name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += system.block_on(p.run_once());
                }
                total
            })
        });
    }
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
