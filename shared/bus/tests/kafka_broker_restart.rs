//! A real Apache Kafka broker killed with SIGKILL while a producer awaits acks, then
//! started again on the same data: the pending acks resolve once the broker is back, and
//! every acked record is consumed exactly once (after dedup by partition and offset; the
//! idempotent producer leaves no duplicates of its own).
//!
//! The test runs its own broker (`fluxgate_testkit::services`: `scripts/services/kafka` with
//! a private folder and ports), so killing it disturbs no other test. It runs where the Kafka tests run (`KAFKA_BROKERS`
//! set: the machine has Java, Maven and the broker's jars) and fails in CI when they
//! cannot.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use fluxgate_bus::{
    Bus, ConsumerSpec, KafkaBus, KafkaConfig, OutRecord, Topic, TopicSpec, TopicsConfig,
};
use fluxgate_testkit::services::{Kind, Private};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_acks_pending_across_a_broker_kill_resolve_and_nothing_is_lost_or_doubled() {
    if fluxgate_testkit::kafka_brokers(
        "kafka_acks_pending_across_a_broker_kill_resolve_and_nothing_is_lost_or_doubled",
    )
    .is_none()
    {
        return;
    }
    // The scripts block until the broker serves (seconds): off the async workers.
    let broker = tokio::task::block_in_place(|| Private::start(Kind::Kafka)).unwrap();

    let bus: Arc<dyn Bus> = Arc::new(
        KafkaBus::new(KafkaConfig {
            brokers: broker.addr(),
            // Long enough to outlive the broker's absence.
            produce_timeout_ms: 120_000,
            session_timeout_ms: 6_000,
            commit_interval_ms: 200,
            ..KafkaConfig::default()
        })
        .unwrap(),
    );
    let topics = TopicsConfig {
        prefix: format!("restart-{}.", fluxgate_testkit::unique_name("t")),
        ..TopicsConfig::default()
    };
    let topic = topics.name(Topic::IngestRaw);
    bus.ensure_topics(&[TopicSpec {
        name: topic.clone(),
        partitions: 3,
        replication_factor: 1,
        retention_ms: None,
        compacted: false,
    }])
    .await
    .unwrap();

    const BEFORE: u32 = 300;
    const DURING: u32 = 300;
    let p = bus.producer();
    let send = |i: u32| OutRecord::new(&topic, format!("k{}", i % 7), i.to_string());
    // Acked before the kill.
    let mut acks = Vec::new();
    for i in 0..BEFORE {
        acks.push(p.send(send(i)).await.unwrap());
    }
    for a in acks.drain(..) {
        tokio::time::timeout(Duration::from_secs(30), a)
            .await
            .unwrap()
            .unwrap();
    }
    // Sent while the broker is killed: their acks are pending.
    broker.kill_9().unwrap();
    for i in BEFORE..BEFORE + DURING {
        acks.push(p.send(send(i)).await.unwrap());
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::block_in_place(|| broker.restart()).unwrap();
    let mut acked = BTreeSet::new();
    for (i, a) in acks.into_iter().enumerate() {
        let r = tokio::time::timeout(Duration::from_secs(120), a)
            .await
            .expect("the ack resolved after the broker came back");
        assert!(r.is_ok(), "record {} failed: {r:?}", BEFORE as usize + i);
        acked.insert(BEFORE + i as u32);
    }
    acked.extend(0..BEFORE);

    // Read everything back in a new group.
    let c = bus
        .consumer(ConsumerSpec::group(
            fluxgate_testkit::unique_name("restart-g"),
            &[&topic],
        ))
        .unwrap();
    let mut by_place = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while by_place.len() < acked.len() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let r = tokio::time::timeout(left, c.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "only {} of {} acked records read back",
                    by_place.len(),
                    acked.len()
                )
            })
            .unwrap();
        c.ack(&r.position);
        let seq: u32 = std::str::from_utf8(&r.payload).unwrap().parse().unwrap();
        by_place.insert((r.position.partition, r.position.offset), seq);
    }
    let mut count = BTreeMap::new();
    for seq in by_place.values() {
        *count.entry(*seq).or_insert(0u32) += 1;
    }
    let read: BTreeSet<u32> = count.keys().copied().collect();
    assert_eq!(read, acked, "every acked record, and nothing else");
    let doubled: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "stored twice: {doubled:?}");
    eprintln!(
        "broker kill -9: {} acked before, {} pending acks resolved after the restart, {} read back once each",
        BEFORE,
        DURING,
        read.len()
    );
}
