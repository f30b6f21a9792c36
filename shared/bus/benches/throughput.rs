//! Produce + consume throughput of both bus implementations, side by side in one run:
//! 20,000 records of 200 bytes (100 keys) per iteration are sent, consumed by one group
//! member and acked; an iteration ends when every produce ack has resolved.
//!
//! Run: `cargo bench -p fluxgate-bus --bench throughput` (the Kafka half runs when
//! `KAFKA_BROKERS` is set). Results: `loadtests/RESULTS.md`.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fluxgate_bus::{Bus, ConsumerSpec, KafkaBus, KafkaConfig, MemoryBus, OutRecord, TopicSpec};

const N: u64 = 20_000;

async fn round(
    bus: &Arc<dyn Bus>,
    topic: &str,
    consumer: &Arc<dyn fluxgate_bus::Consumer>,
) -> Duration {
    let payload = bytes::Bytes::from(vec![b'x'; 200]);
    let start = Instant::now();
    let c = consumer.clone();
    let reader = tokio::spawn(async move {
        for _ in 0..N {
            let r = c.recv().await.unwrap();
            c.ack(&r.position);
        }
    });
    let p = bus.producer();
    let mut acks = Vec::with_capacity(N as usize);
    for i in 0..N {
        let rec = OutRecord::new(
            topic,
            format!("key-{}", i % 100).into_bytes(),
            payload.clone(),
        );
        acks.push(p.send(rec).await.unwrap());
    }
    for a in acks {
        a.await.unwrap();
    }
    reader.await.unwrap();
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut buses: Vec<(&str, Arc<dyn Bus>)> = vec![("memory", Arc::new(MemoryBus::default()))];
    if let Ok(brokers) = std::env::var("KAFKA_BROKERS") {
        let cfg = KafkaConfig {
            brokers,
            ..KafkaConfig::default()
        };
        buses.push(("kafka", Arc::new(KafkaBus::new(cfg).unwrap())));
    } else {
        eprintln!("KAFKA_BROKERS not set: benchmarking the in-process bus only");
    }
    let mut group = c.benchmark_group("bus_produce_consume_200B");
    group.throughput(Throughput::Elements(N));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    for (name, bus) in buses {
        let topic = format!("bench-{}", fluxgate_testkit::unique_name(name));
        let consumer = rt.block_on(async {
            bus.ensure_topics(&[TopicSpec::new(&topic, 4)])
                .await
                .unwrap();
            let consumer = bus
                .consumer(ConsumerSpec::group(
                    fluxgate_testkit::unique_name("bench"),
                    &[&topic],
                ))
                .unwrap();
            // Join the group before measuring.
            let c = consumer.clone();
            let warm = tokio::spawn(async move { c.recv().await });
            while consumer.assigned() == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            warm.abort();
            consumer
        });
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += round(&bus, &topic, &consumer).await;
                    }
                    total
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
