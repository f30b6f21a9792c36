//! The front on a real Kafka-protocol broker (`KAFKA_BROKERS`; Apache Kafka in CI): PUBACK after
//! the broker's ack, presence events, deliveries, and custom topics between two fronts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use fluxgate_bus::Topic;
use fluxgate_model::{
    Body, CorrelationId, Delivery, DeviceRef, Dialect, ENVELOPE_VERSION, MessageId, Outbound,
};
use ntex_mqtt::v5::codec::PublishAckReason;

#[ntex::test]
async fn kafka_front_end_to_end() {
    let Some(brokers) = fluxgate_testkit::kafka_brokers("kafka_front_end_to_end") else {
        return;
    };
    let (bus, topics) = fluxgate_bus::testing::kafka_with_fresh_topics(brokers, "front", 2)
        .await
        .unwrap();
    let rig = Rig::on(bus.clone(), topics.clone(), Rig::config()).await;
    let mut raw = rig.tap(Topic::IngestRaw);
    let mut events = rig.tap(Topic::DeviceEvents);

    let mut c = v5(rig.addr, "dev1", Some("key-all"), Some(SECRET))
        .await
        .unwrap();
    let ev = events.next_envelope().await;
    assert!(matches!(ev.body, Body::Connect { .. }), "{ev:?}");
    assert_eq!(
        c.publish("losant/dev1/state", br#"{"data":{"t":1}}"#).await,
        Ok(PublishAckReason::Success)
    );
    let (key, _) = raw.next().await;
    assert_eq!(key, b"app1/dev1");

    // A command through fluxgate.deliveries reaches the subscribed device.
    c.subscribe("losant/dev1/command").await;
    let ev = events.next_envelope().await;
    assert!(matches!(ev.body, Body::Subscribed), "{ev:?}");
    let d = Delivery {
        v: ENVELOPE_VERSION,
        id: MessageId::from_parts(1_700_000_000_000, 99),
        tenant: tenant(),
        device: dev("dev1"),
        device_name: None,
        via: None,
        dialect: Dialect::Losant,
        body: Outbound::Command {
            request_id: CorrelationId::Int(1),
            name: "blink".into(),
            payload: serde_json::json!(null),
            time_ms: 1_700_000_000_000,
        },
    };
    rig.produce(Topic::Deliveries, "app1/dev1", d.to_bytes())
        .await;
    let (topic, _) = recv(&mut c.inbox).await;
    assert_eq!(topic, "losant/dev1/command");
    let out = events.next_envelope().await;
    assert!(
        matches!(
            out.body,
            Body::DeliveryOutcome {
                delivered: true,
                ..
            }
        ),
        "{out:?}"
    );
    assert_eq!(out.device, DeviceRef::Id(dev("dev1")));

    // Custom topics travel between fronts over the bus.
    let mut cfg = Rig::config();
    cfg.instance_id = "front-b".into();
    let other = start_ready(cfg, &bus, &rig.store, &topics).await;
    let publisher = v3(
        other.listening.tcp.unwrap(),
        "dev2",
        Some("key-all"),
        Some(SECRET),
    )
    .await
    .unwrap();
    c.subscribe("site/+/alarm").await;
    publisher.publish("site/3/alarm", "on").await.unwrap();
    let (topic, payload) = recv(&mut c.inbox).await;
    assert_eq!((topic.as_str(), &payload[..]), ("site/3/alarm", &b"on"[..]));
    other.shutdown().await;
}
