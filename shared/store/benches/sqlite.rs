//! SQLite store: batch write throughput and range-query latency over 1M stored points,
//! through the async `Store` API (blocking pool included), on a file in WAL mode with
//! `synchronous=FULL` (the default: a commit survives power loss).
//!
//! Run: `cargo bench -p fluxgate-store --bench sqlite`. Results: `loadtests/RESULTS.md`.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fluxgate_model::{DeviceId, Sample, TenantId, Value, Values};
use fluxgate_store::TelemetryStore;
use fluxgate_store::sqlite::{SqliteConfig, SqliteStore};
use fluxgate_store::{Order, RangeQuery, SampleBatch};

/// Points per `write_samples` call: 100 devices x 5 samples x 2 keys.
const BATCH_POINTS: u64 = 1000;

fn batch(tenant: &TenantId, round: i64) -> Vec<SampleBatch> {
    (0..100)
        .map(|d| SampleBatch {
            tenant: tenant.clone(),
            device: DeviceId::new(format!("dev-{d:03}")).unwrap(),
            samples: (0..5)
                .map(|i| {
                    let mut values = Values::new();
                    values.insert("temperature", Value::Float(20.0 + (i as f64) / 10.0));
                    values.insert("humidity", Value::Integer(40 + i));
                    Sample {
                        ts_ms: 1_700_000_000_000 + round * 5 + i,
                        values,
                    }
                })
                .collect(),
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(fluxgate_testkit::unique_name("store-bench"));
    std::fs::create_dir_all(&dir).unwrap();
    let tenant = TenantId::new("bench").unwrap();

    // Writes.
    for sync in ["FULL", "NORMAL"] {
        let store = SqliteStore::open(
            dir.join(format!("write-{sync}.db")),
            &SqliteConfig {
                synchronous: sync.into(),
            },
        )
        .unwrap();
        let mut group = c.benchmark_group("sqlite_write");
        group.throughput(Throughput::Elements(BATCH_POINTS));
        let mut round = 0i64;
        group.bench_function(BenchmarkId::new("batch_1000_points", sync), |b| {
            b.iter(|| {
                round += 1;
                rt.block_on(store.write_samples(batch(&tenant, round)))
                    .unwrap()
            })
        });
        group.finish();
    }

    // Queries over 1M stored points: one device, one key, one point per second.
    let store = SqliteStore::open(dir.join("query.db"), &SqliteConfig::default()).unwrap();
    let device = DeviceId::new("sensor").unwrap();
    let base = 1_700_000_000_000i64;
    rt.block_on(async {
        for chunk in 0..100 {
            let samples = (0..10_000)
                .map(|i| {
                    let mut values = Values::new();
                    values.insert("temperature", Value::Float(i as f64));
                    Sample {
                        ts_ms: base + (chunk * 10_000 + i) * 1000,
                        values,
                    }
                })
                .collect();
            store
                .write_samples(vec![SampleBatch {
                    tenant: tenant.clone(),
                    device: device.clone(),
                    samples,
                }])
                .await
                .unwrap();
        }
    });
    let mut group = c.benchmark_group("sqlite_query_1M_points");
    group.measurement_time(Duration::from_secs(5));
    let mut hour = 0i64;
    group.bench_function("one_hour_window_limit_1000", |b| {
        b.iter(|| {
            hour = (hour + 7) % 270;
            let q = RangeQuery {
                tenant: tenant.clone(),
                device: device.clone(),
                keys: vec!["temperature".into()],
                from_ms: base + hour * 3_600_000,
                to_ms: base + (hour + 1) * 3_600_000,
                limit: 1000,
                order: Order::Desc,
                page_token: None,
            };
            let page = rt.block_on(store.query(q)).unwrap();
            assert_eq!(page.points.len(), 1000);
        })
    });
    group.bench_function("latest", |b| {
        b.iter(|| {
            rt.block_on(store.latest(tenant.clone(), device.clone(), None))
                .unwrap()
        })
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
