//! The bus contract on the in-process bus, plus what only it promises: a produce
//! resolves when every subscribed group has committed the record.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod contract;

use std::sync::Arc;
use std::time::Duration;

use contract::{Collector, Harness};
use fluxgate_bus::{Bus, ConsumerSpec, MemoryBus, MemoryConfig, OutRecord, ProduceError};

fn harness() -> Harness {
    Harness {
        bus: Arc::new(MemoryBus::new(MemoryConfig {
            partitions: 4,
            max_retained_per_partition: 1000,
        })),
    }
}

#[tokio::test]
async fn memory_ordering_per_key() {
    contract::ordering_per_key(&harness()).await;
}

#[tokio::test]
async fn memory_acks_name_the_stored_position() {
    contract::acks_name_the_stored_position(&harness()).await;
}

#[tokio::test]
async fn memory_at_least_once_across_a_crash() {
    contract::at_least_once_across_a_crash(&harness()).await;
}

#[tokio::test]
async fn memory_nack_redelivers() {
    contract::nack_redelivers(&harness()).await;
}

#[tokio::test]
async fn memory_rewind_redelivers_everything_unfinished() {
    contract::rewind_redelivers_everything_unfinished(&harness()).await;
}

#[tokio::test]
async fn memory_lag_counts_unfinished_records() {
    contract::lag_counts_unfinished_records(&harness()).await;
}

#[tokio::test]
async fn memory_lag_counts_records_behind_a_paused_consumer() {
    contract::lag_counts_records_behind_a_paused_consumer(&harness()).await;
}

#[tokio::test]
async fn memory_rebalance_two_members() {
    contract::rebalance_two_members(&harness()).await;
}

#[tokio::test]
async fn memory_holds_names_the_member_a_key_goes_to() {
    contract::holds_names_the_member_a_key_goes_to(&harness()).await;
}

#[tokio::test]
async fn memory_rebalance_with_records_in_flight() {
    contract::rebalance_with_records_in_flight(&harness()).await;
}

#[tokio::test]
async fn memory_broadcast_reaches_every_instance() {
    contract::broadcast_reaches_every_instance(&harness()).await;
}

#[tokio::test]
async fn memory_broadcast_holds_every_topic_it_consumes() {
    contract::broadcast_holds_every_topic_it_consumes(&harness()).await;
}

#[tokio::test]
async fn memory_pause_and_resume() {
    contract::pause_and_resume(&harness()).await;
}

async fn pending<F: std::future::Future>(f: &mut std::pin::Pin<&mut F>) -> bool {
    tokio::time::timeout(Duration::from_millis(200), f.as_mut())
        .await
        .is_err()
}

#[tokio::test]
async fn memory_produce_resolves_when_every_group_has_committed() {
    let bus = MemoryBus::default();
    let writer = bus
        .consumer(ConsumerSpec::group("writer", &["raw"]))
        .unwrap();
    let front = bus
        .consumer(ConsumerSpec::broadcast("front", &["raw"]))
        .unwrap();
    let p = bus.producer();
    let ack = p.send(OutRecord::new("raw", "dev1", "x")).await.unwrap();
    let mut ack = std::pin::pin!(ack);
    assert!(pending(&mut ack).await, "nobody committed yet");

    let r = writer.recv().await.unwrap();
    assert!(pending(&mut ack).await, "received is not committed");
    writer.ack(&r.position);
    assert!(
        pending(&mut ack).await,
        "the broadcast group has not committed"
    );

    let r = front.recv().await.unwrap();
    front.ack(&r.position);
    let d = tokio::time::timeout(Duration::from_secs(1), ack)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.offset, r.position.offset);
}

#[tokio::test]
async fn memory_topic_without_groups_acks_at_once() {
    let bus = MemoryBus::default();
    let p = bus.producer();
    let d = tokio::time::timeout(
        Duration::from_secs(1),
        p.produce(OutRecord::new("nobody", "k", "v")),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(d.offset, 0);
}

#[tokio::test]
async fn memory_group_without_members_keeps_records_until_one_returns() {
    let bus = MemoryBus::default();
    let c = bus
        .consumer(ConsumerSpec::group("writer", &["raw"]))
        .unwrap();
    drop(c); // the writer crashed; its group's position stays
    let p = bus.producer();
    let ack = p.send(OutRecord::new("raw", "k", "v")).await.unwrap();
    let mut ack = std::pin::pin!(ack);
    assert!(pending(&mut ack).await, "kept for the group");
    let c = bus
        .consumer(ConsumerSpec::group("writer", &["raw"]))
        .unwrap();
    let r = c.recv().await.unwrap();
    c.ack(&r.position);
    tokio::time::timeout(Duration::from_secs(1), ack)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn memory_full_partition_makes_producers_wait() {
    let bus = MemoryBus::new(MemoryConfig {
        partitions: 1,
        max_retained_per_partition: 3,
    });
    let mut col = Collector::new(bus.consumer(ConsumerSpec::group("g", &["t"])).unwrap());
    col.consumer.pause();
    let p = bus.producer();
    for i in 0..3 {
        let _ack = p
            .send(OutRecord::new("t", "k", format!("{i}")))
            .await
            .unwrap();
    }
    let fourth = p.send(OutRecord::new("t", "k", "3"));
    let mut fourth = std::pin::pin!(fourth);
    assert!(pending(&mut fourth).await, "no room: the producer waits");
    col.consumer.resume();
    let r = col.next().await;
    col.consumer.ack(&r.position);
    tokio::time::timeout(Duration::from_secs(1), fourth)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn memory_close_fails_waiting_acks() {
    let bus = MemoryBus::default();
    let _c = bus.consumer(ConsumerSpec::group("g", &["t"])).unwrap();
    let ack = bus
        .producer()
        .send(OutRecord::new("t", "k", "v"))
        .await
        .unwrap();
    bus.close();
    assert_eq!(ack.await, Err(ProduceError::Closed));
    assert!(matches!(
        bus.producer().send(OutRecord::new("t", "k", "v")).await,
        Err(ProduceError::Closed)
    ));
}
