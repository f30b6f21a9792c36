//! The dispatcher on a real Kafka-protocol broker (`KAFKA_BROKERS`; Tansu in CI) with the
//! ScyllaDB adapter on the CQL test double: a persistent command queued while the device
//! is offline reaches a front's broadcast consumer when the device connects.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use fluxgate_bus::{Bus, ConsumerSpec, KafkaBus, KafkaConfig, OutRecord, Topic, TopicsConfig};
use fluxgate_command_dispatch::{DispatchConfig, DispatchStats, Dispatcher};
use fluxgate_model::{
    Body, Channel, Command, Delivery, DeviceId, DeviceRef, Dialect, ENVELOPE_VERSION, Envelope,
    MessageId, TenantId,
};
use fluxgate_store::scylla::{ScyllaConfig, ScyllaStore};
use fluxgate_store::{CommandStatus, Store};
use fluxgate_testkit::cql::CqlDouble;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn envelope(id: MessageId, body: Body) -> Envelope {
    Envelope {
        v: ENVELOPE_VERSION,
        id,
        part: 0,
        tenant: TenantId::new("app").unwrap(),
        device: DeviceRef::Id(DeviceId::new("d1").unwrap()),
        via: None,
        dialect: Dialect::Losant,
        channel: Channel::Internal,
        received_ms: now_ms(),
        body,
    }
}

#[actix_rt::test]
async fn kafka_persistent_command_is_delivered_when_the_device_connects() {
    let Some(brokers) = fluxgate_testkit::kafka_brokers(
        "kafka_persistent_command_is_delivered_when_the_device_connects",
    ) else {
        return;
    };
    let bus: Arc<dyn Bus> = Arc::new(
        KafkaBus::new(KafkaConfig {
            brokers,
            session_timeout_ms: 6_000,
            commit_interval_ms: 200,
            ..KafkaConfig::default()
        })
        .unwrap(),
    );
    let topics = TopicsConfig {
        prefix: format!("{}.", fluxgate_testkit::unique_name("disp")),
        partitions: 2,
        replication_factor: 1,
        ..TopicsConfig::default()
    };
    bus.ensure_topics(&topics.specs()).await.unwrap();
    let double = CqlDouble::start().await.unwrap();
    let store: Arc<dyn Store> = Arc::new(
        ScyllaStore::connect(ScyllaConfig {
            nodes: vec![double.addr().to_string()],
            keyspace: "fg_dispatch".into(),
            replication: "{'class': 'SimpleStrategy', 'replication_factor': 1}".into(),
            ..ScyllaConfig::default()
        })
        .await
        .unwrap(),
    );
    let (commands, events) = (
        topics.name(Topic::Commands),
        topics.name(Topic::DeviceEvents),
    );
    let group = fluxgate_testkit::unique_name("dispatchers");
    let consumer = bus
        .consumer(ConsumerSpec::group(group, &[&commands, &events]))
        .unwrap();
    Dispatcher::new(
        consumer,
        bus.producer(),
        store.clone(),
        &topics,
        DispatchConfig::default(),
        Arc::new(DispatchStats::default()),
    )
    .start();
    // A front: a broadcast consumer of deliveries, polling (and so joining) from now on.
    let front = bus
        .consumer(ConsumerSpec::broadcast(
            "front",
            &[&topics.name(Topic::Deliveries)],
        ))
        .unwrap();
    let reader = front.clone();
    let deliveries = actix_rt::spawn(async move {
        loop {
            if let Ok(r) = reader.recv().await {
                reader.ack(&r.position);
                if let Ok(d) = Delivery::from_bytes(&r.payload) {
                    return d;
                }
            }
        }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while front.assigned() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "front never joined");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the broadcast consumer resolve its start position before anything is sent.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let id = MessageId::from_parts(now_ms() as u64, 77);
    let cmd = Command {
        name: "reboot".into(),
        payload: serde_json::json!({}),
        time_ms: None,
        two_way: false,
        persistent: true,
        expires_ms: Some(now_ms() + 120_000),
    };
    let p = bus.producer();
    let c = envelope(id, Body::Command(cmd));
    p.produce(OutRecord::new(&commands, c.key(), c.to_bytes()))
        .await
        .unwrap();
    loop {
        if store.command(id).await.unwrap().map(|c| c.status) == Some(CommandStatus::Queued) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "command never queued"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connect = envelope(
        MessageId::from_parts(now_ms() as u64, 78),
        Body::Connect {
            profile: None,
            session: None,
        },
    );
    p.produce(OutRecord::new(&events, connect.key(), connect.to_bytes()))
        .await
        .unwrap();
    let d = tokio::time::timeout(Duration::from_secs(60), deliveries)
        .await
        .expect("delivered")
        .unwrap();
    assert_eq!(d.id, id);
    assert_eq!(d.render().unwrap().topic, "losant/d1/command");
    loop {
        if store.command(id).await.unwrap().map(|c| c.status) == Some(CommandStatus::Sent) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "command never marked sent"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
