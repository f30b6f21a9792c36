//! Validator + writer on a real Kafka-protocol broker (`KAFKA_BROKERS`; Tansu in CI) with
//! the ScyllaDB adapter on the CQL test double: raw state in, stored values and rejected
//! log out.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use fluxgate_bus::{Bus, ConsumerSpec, KafkaBus, KafkaConfig, OutRecord, Topic, TopicsConfig};
use fluxgate_model::{
    Body, Channel, DeviceId, DeviceRef, Dialect, ENVELOPE_VERSION, Envelope, MessageId, ReasonCode,
    Sample, TenantId, Value, Values,
};
use fluxgate_store::scylla::{ScyllaConfig, ScyllaStore};
use fluxgate_store::{AttributeDef, AttributeType, Device, DeviceKind, Store};
use fluxgate_testkit::cql::CqlDouble;
use fluxgate_ts_writer::{TsWriter, WriterConfig, WriterStats};
use fluxgate_validator::{Validator, ValidatorConfig, ValidatorStats};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[actix_rt::test]
async fn kafka_raw_state_reaches_the_store_through_validator_and_writer() {
    let Some(brokers) = fluxgate_testkit::kafka_brokers(
        "kafka_raw_state_reaches_the_store_through_validator_and_writer",
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
        prefix: format!("{}.", fluxgate_testkit::unique_name("pipe")),
        partitions: 2,
        replication_factor: 1,
        ..TopicsConfig::default()
    };
    bus.ensure_topics(&topics.specs()).await.unwrap();
    let double = CqlDouble::start().await.unwrap();
    let store: Arc<dyn Store> = Arc::new(
        ScyllaStore::connect(ScyllaConfig {
            nodes: vec![double.addr().to_string()],
            keyspace: "fg_pipeline".into(),
            replication: "{'class': 'SimpleStrategy', 'replication_factor': 1}".into(),
            ..ScyllaConfig::default()
        })
        .await
        .unwrap(),
    );
    let tenant = TenantId::new("app").unwrap();
    let device = DeviceId::new("d1").unwrap();
    store
        .put_device(Device {
            tenant: tenant.clone(),
            id: device.clone(),
            name: "d1".into(),
            kind: DeviceKind::Standalone,
            peripheral_policy: None,
            tags: vec![],
            profile: None,
            created_ms: 0,
            updated_ms: 0,
        })
        .await
        .unwrap();
    store
        .put_attribute_defs(
            tenant.clone(),
            device.clone(),
            vec![AttributeDef {
                name: "temp".into(),
                kind: AttributeType::Number,
            }],
        )
        .await
        .unwrap();

    let group = fluxgate_testkit::unique_name("g");
    let raw = bus
        .consumer(ConsumerSpec::group(
            format!("{group}-v"),
            &[&topics.name(Topic::IngestRaw)],
        ))
        .unwrap();
    Validator::new(
        raw,
        bus.producer(),
        store.clone(),
        &topics,
        ValidatorConfig::default(),
        Arc::new(ValidatorStats::default()),
    )
    .start();
    let names = [
        Topic::IngestValid,
        Topic::DeviceEvents,
        Topic::IngestRejected,
    ]
    .map(|t| topics.name(t));
    let wc = bus
        .consumer(ConsumerSpec::group(
            format!("{group}-w"),
            &[&names[0], &names[1], &names[2]],
        ))
        .unwrap();
    let writer = Arc::new(WriterStats::default());
    TsWriter::new(
        wc,
        store.clone(),
        &topics,
        WriterConfig::default(),
        writer.clone(),
    )
    .start();

    let ts = now_ms() - 5_000;
    let mut values = Values::new();
    values.insert("temp", Value::from("21"));
    values.insert("undefined", Value::Integer(1));
    let env = Envelope {
        v: ENVELOPE_VERSION,
        id: MessageId::from_parts(ts as u64, 1),
        part: 0,
        tenant: tenant.clone(),
        device: DeviceRef::Id(device.clone()),
        via: None,
        dialect: Dialect::Losant,
        channel: Channel::Mqtt,
        received_ms: now_ms(),
        body: Body::Telemetry {
            samples: vec![Sample { ts_ms: ts, values }],
            flow_version: None,
        },
    };
    bus.producer()
        .produce(OutRecord::new(
            topics.name(Topic::IngestRaw),
            env.key(),
            env.to_bytes(),
        ))
        .await
        .unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let latest = store
            .latest(tenant.clone(), device.clone(), None)
            .await
            .unwrap();
        let rejected = store.rejected_log(tenant.clone(), None, 10).await.unwrap();
        if !latest.is_empty() && !rejected.is_empty() {
            assert_eq!(latest.len(), 1);
            assert_eq!(
                (latest[0].key.as_str(), latest[0].ts_ms, &latest[0].value),
                ("temp", ts, &Value::Integer(21))
            );
            assert_eq!(rejected[0].code, ReasonCode::UndefinedAttribute);
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pipeline did not deliver: {latest:?} {rejected:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
