//! Validator + writer on a real Kafka-protocol broker (`KAFKA_BROKERS`; Apache Kafka in CI) with
//! the ScyllaDB adapter on a real CQL database (`SCYLLA_URI`; Cassandra in CI): raw state
//! in, stored values and rejected log out.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use fluxgate_pipeline::{Parts, Stage};
use std::sync::Arc;
use std::time::Duration;

use fluxgate_bus::{ConsumerSpec, OutRecord, Topic};
use fluxgate_model::{
    Body, Channel, DeviceId, DeviceRef, Dialect, ENVELOPE_VERSION, Envelope, MessageId, ReasonCode,
    Sample, TenantId, Value, Values,
};
use fluxgate_store::scylla::{ScyllaConfig, ScyllaStore};
use fluxgate_store::{AttributeDef, AttributeType, Device, DeviceKind, Store};
use fluxgate_testkit::Stoppable;
use fluxgate_ts_writer::{TsWriter, WriterConfig, WriterStats, WriterStore};
use fluxgate_validator::{Validator, ValidatorConfig, ValidatorStats};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A device of the test's tenant.
fn registered(
    name: &str,
    kind: DeviceKind,
    policy: Option<fluxgate_store::PeripheralPolicy>,
) -> Device {
    Device {
        tenant: TenantId::new("app").unwrap(),
        id: DeviceId::new(name).unwrap(),
        name: name.into(),
        kind,
        peripheral_policy: policy,
        tags: vec![],
        profile: None,
        created_ms: 0,
        updated_ms: 0,
    }
}

/// The ScyllaDB adapter on the test's CQL node (real Cassandra at `SCYLLA_URI`), with
/// device d1 whose one defined attribute is the number `temp`; `None` without one.
async fn store_with_d1(test: &str) -> Option<Arc<dyn Store>> {
    let (node, keyspace) = fluxgate_testkit::cql::node(test)?;
    let store: Arc<dyn Store> = Arc::new(
        ScyllaStore::connect(ScyllaConfig::single_node(node, &keyspace))
            .await
            .unwrap(),
    );
    store
        .put_device(registered("d1", DeviceKind::Standalone, None))
        .await
        .unwrap();
    let temp = AttributeDef {
        name: "temp".into(),
        kind: AttributeType::Number,
    };
    store
        .put_attribute_defs(
            TenantId::new("app").unwrap(),
            DeviceId::new("d1").unwrap(),
            vec![temp],
        )
        .await
        .unwrap();
    Some(store)
}

#[actix_rt::test]
async fn kafka_raw_state_reaches_the_store_through_validator_and_writer() {
    let Some(brokers) = fluxgate_testkit::kafka_brokers(
        "kafka_raw_state_reaches_the_store_through_validator_and_writer",
    ) else {
        return;
    };
    let (bus, topics) = fluxgate_bus::testing::kafka_with_fresh_topics(brokers, "pipe", 2)
        .await
        .unwrap();
    let Some(store) =
        store_with_d1("kafka_raw_state_reaches_the_store_through_validator_and_writer").await
    else {
        return;
    };
    let tenant = TenantId::new("app").unwrap();
    let device = DeviceId::new("d1").unwrap();

    let group = fluxgate_testkit::unique_name("g");
    let raw = bus
        .consumer(ConsumerSpec::group(
            format!("{group}-v"),
            &[&topics.name(Topic::IngestRaw)],
        ))
        .unwrap();
    Validator::new(Parts {
        consumer: raw,
        producer: bus.producer(),
        store: store.clone(),
        topics: topics.clone(),
        cfg: ValidatorConfig::default(),
        stats: Arc::new(ValidatorStats::default()),
    })
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
    TsWriter::new(Parts {
        consumer: wc,
        producer: bus.producer(),
        store: Arc::new(WriterStore::of(store.clone())),
        topics: topics.clone(),
        cfg: WriterConfig::default(),
        stats: writer.clone(),
    })
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
        .produce(OutRecord::of(topics.name(Topic::IngestRaw), &env))
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

/// A raw envelope for the test's tenant.
fn raw(device: DeviceRef, via: Option<&str>, dialect: Dialect, body: Body, n: u128) -> Envelope {
    Envelope {
        v: ENVELOPE_VERSION,
        id: MessageId::from_parts(now_ms() as u64, n),
        part: 0,
        tenant: TenantId::new("app").unwrap(),
        device,
        via: via.map(|v| DeviceId::new(v).unwrap()),
        dialect,
        channel: Channel::Mqtt,
        received_ms: now_ms(),
        body,
    }
}

fn telemetry(ts: i64, pairs: &[(&str, Value)]) -> Body {
    let values: Values = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    Body::Telemetry {
        samples: vec![Sample { ts_ms: ts, values }],
        flow_version: None,
    }
}

/// Two validators (one group, through the supervised `run`) and a writer on Apache Kafka and
/// Cassandra: every kind of message ends in its table or in the rejected log with
/// its reason, and a name posted through four gateways at once becomes one device.
#[actix_rt::test]
async fn kafka_every_kind_ends_in_its_table_and_a_raced_name_becomes_one_device() {
    use fluxgate_store::{AttributeScope, PeripheralPolicy};
    let Some(brokers) = fluxgate_testkit::kafka_brokers(
        "kafka_every_kind_ends_in_its_table_and_a_raced_name_becomes_one_device",
    ) else {
        return;
    };
    let (bus, topics) = fluxgate_bus::testing::kafka_with_fresh_topics(brokers, "kinds", 4)
        .await
        .unwrap();
    let Some(store) =
        store_with_d1("kafka_every_kind_ends_in_its_table_and_a_raced_name_becomes_one_device")
            .await
    else {
        return;
    };
    let tenant = TenantId::new("app").unwrap();
    let id = |s: &str| DeviceId::new(s).unwrap();
    store
        .put_device(registered("gw1", DeviceKind::Gateway, None))
        .await
        .unwrap();
    let only_other = PeripheralPolicy::SpecificGateway(id("gw-other"));
    store
        .put_device(registered("p1", DeviceKind::Peripheral, Some(only_other)))
        .await
        .unwrap();

    let group = fluxgate_testkit::unique_name("g");
    let mut roles = Vec::new();
    let mut validators = Vec::new();
    for _ in 0..2 {
        let stats = Arc::new(ValidatorStats::default());
        validators.push(stats.clone());
        let cfg = ValidatorConfig {
            group: format!("{group}-v"),
            ..ValidatorConfig::default()
        };
        let p = fluxgate_validator::prepare(&bus, store.clone(), &topics, cfg, stats).unwrap();
        roles.push(Stoppable::spawn_local(|done| async move {
            p.run(done).await;
        }));
    }
    {
        let cfg = WriterConfig {
            group: format!("{group}-w"),
            ..WriterConfig::default()
        };
        let p = fluxgate_ts_writer::prepare(
            &bus,
            WriterStore::of(store.clone()),
            &topics,
            cfg,
            Arc::default(),
        )
        .unwrap();
        roles.push(Stoppable::spawn_local(|done| async move {
            p.run(done).await;
        }));
    }
    {
        // The connection log is the dispatcher's (it owns presence).
        let cfg = fluxgate_command_dispatch::DispatchConfig {
            group: format!("{group}-d"),
            ..Default::default()
        };
        let p =
            fluxgate_command_dispatch::prepare(&bus, store.clone(), &topics, cfg, Arc::default())
                .unwrap();
        roles.push(Stoppable::spawn_local(|done| async move {
            p.run(done).await;
        }));
    }
    // Both validators must hold partitions before the race is produced: warm up with
    // records for unknown devices (refused) under many keys until each has handled one.
    let count = |v: &Arc<ValidatorStats>| {
        v.pipeline
            .records
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut warmups = 0u64;
    while !validators.iter().all(|v| count(v) > 0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "both validators never got partitions"
        );
        let env = raw(
            DeviceRef::Id(DeviceId::new(format!("warm-{warmups}")).unwrap()),
            None,
            Dialect::ThingsBoard,
            telemetry(now_ms(), &[("x", Value::Integer(0))]),
            1000 + u128::from(warmups),
        );
        let rec = OutRecord::of(topics.name(Topic::IngestRaw), &env);
        bus.producer().produce(rec).await.unwrap();
        warmups += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    while validators.iter().map(count).sum::<u64>() < warmups {
        assert!(tokio::time::Instant::now() < deadline, "warm-up handled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // More than `warmups` if the second validator's join revoked a partition while a
    // warm-up record was still in flight on the first: Kafka then gives it again
    // (at-least-once). From here on both hold their partitions.
    let warm_handled: u64 = validators.iter().map(count).sum();

    let ts = now_ms() - 5_000;
    let d1 = || DeviceRef::Id(id("d1"));
    let mut attrs = Values::new();
    attrs.insert("fw", Value::from("1.2"));
    let mut inputs = vec![
        // Losant state: the defined key converted, the undefined one refused.
        raw(
            d1(),
            None,
            Dialect::Losant,
            telemetry(
                ts,
                &[("temp", Value::from("21")), ("nope", Value::Integer(1))],
            ),
            1,
        ),
        // A gateway posting for a peripheral that allows a different gateway.
        raw(
            DeviceRef::Id(id("p1")),
            Some("gw1"),
            Dialect::Losant,
            telemetry(ts, &[("temp", Value::Integer(3))]),
            2,
        ),
        // Client attributes.
        raw(
            d1(),
            None,
            Dialect::ThingsBoard,
            Body::Attributes { values: attrs },
            3,
        ),
        // A connect, for the connection log.
        raw(
            d1(),
            None,
            Dialect::ThingsBoard,
            Body::Connect {
                profile: None,
                session: None,
            },
            4,
        ),
        // An unknown device.
        raw(
            DeviceRef::Id(id("ghost")),
            None,
            Dialect::ThingsBoard,
            telemetry(ts, &[("x", Value::Integer(1))]),
            5,
        ),
        // Seconds sent where milliseconds belong.
        raw(
            d1(),
            None,
            Dialect::ThingsBoard,
            telemetry(ts / 1000, &[("x", Value::Integer(1))]),
            6,
        ),
    ];
    // One ThingsBoard name through four gateways: four keys, so both validators race.
    // The device is created once, bound to the gateway whose message won; the three
    // others are refused (peripheral_not_allowed).
    let name = fluxgate_model::DeviceName::new("Sensor X").unwrap();
    for (i, gw) in ["gw-a", "gw-b", "gw-c", "gw-d"].iter().enumerate() {
        inputs.push(raw(
            DeviceRef::Name(name.clone()),
            Some(gw),
            Dialect::ThingsBoard,
            telemetry(ts + i as i64, &[("x", Value::Integer(i as i64))]),
            10 + i as u128,
        ));
    }
    let producer = bus.producer();
    for env in &inputs {
        producer
            .produce(OutRecord::of(topics.name(Topic::IngestRaw), &env))
            .await
            .unwrap();
    }

    let want_reasons = [
        ReasonCode::UndefinedAttribute,
        ReasonCode::PeripheralNotAllowed,
        ReasonCode::UnknownDevice,
        ReasonCode::TimestampOutOfWindow,
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let latest = store.latest(tenant.clone(), id("d1"), None).await.unwrap();
        let client = store
            .attributes(tenant.clone(), id("d1"), AttributeScope::Client, None)
            .await
            .unwrap();
        let log = store
            .connection_log(tenant.clone(), id("d1"), 10)
            .await
            .unwrap();
        let reasons: Vec<ReasonCode> = store
            .rejected_log(tenant.clone(), None, 50)
            .await
            .unwrap()
            .iter()
            .map(|r| r.code)
            .collect();
        let named: Vec<Device> = store
            .devices(tenant.clone(), None, 100)
            .await
            .unwrap()
            .into_iter()
            .filter(|d| d.name == "Sensor X")
            .collect();
        let sensor_points = match named.first() {
            Some(d) => store
                .query(fluxgate_store::RangeQuery {
                    tenant: tenant.clone(),
                    device: d.id.clone(),
                    keys: vec!["x".into()],
                    from_ms: ts - 1,
                    to_ms: ts + 10,
                    limit: 100,
                    order: fluxgate_store::Order::Asc,
                    page_token: None,
                })
                .await
                .unwrap()
                .points
                .len(),
            None => 0,
        };
        let done = !latest.is_empty()
            && client.contains_key("fw")
            && !log.is_empty()
            && want_reasons.iter().all(|r| reasons.contains(r))
            && sensor_points == 1;
        if done {
            assert_eq!(latest.len(), 1, "only the defined key: {latest:?}");
            assert_eq!(
                (latest[0].key.as_str(), &latest[0].value),
                ("temp", &Value::Integer(21))
            );
            assert_eq!(client["fw"], Value::from("1.2"));
            assert!(log[0].connected);
            assert_eq!(named.len(), 1, "one device for one name: {named:?}");
            assert!(
                matches!(&named[0].peripheral_policy,
                    Some(fluxgate_store::PeripheralPolicy::SpecificGateway(g))
                        if ["gw-a", "gw-b", "gw-c", "gw-d"].contains(&g.as_str())),
                "bound to one of the gateways: {named:?}"
            );
            assert!(
                store
                    .latest(tenant.clone(), id("p1"), None)
                    .await
                    .unwrap()
                    .is_empty(),
                "nothing stored for the refused peripheral"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not everything arrived: latest {latest:?}, client {client:?}, log {log:?}, \
             reasons {reasons:?}, named {named:?}, sensor points {sensor_points}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let handled: u64 = validators.iter().map(count).sum();
    assert_eq!(
        handled - warm_handled,
        inputs.len() as u64,
        "each raw record handled once after both validators hold partitions \
         ({warmups} warm-ups, handled {warm_handled} times)"
    );
    for r in roles {
        r.stop(Duration::from_secs(30)).await;
    }
}

/// A record on the raw topic that is not an envelope, on a real Kafka-protocol broker: the
/// validator keeps it whole on the dead-letter topic, notes it in the rejected log, and
/// only then acks it; the valid record behind it goes through.
#[actix_rt::test]
async fn kafka_an_undecodable_record_is_dead_lettered_before_it_is_acked() {
    use fluxgate_bus::dead_letter_headers as h;
    let Some(brokers) = fluxgate_testkit::kafka_brokers(
        "kafka_an_undecodable_record_is_dead_lettered_before_it_is_acked",
    ) else {
        return;
    };
    let (bus, topics) = fluxgate_bus::testing::kafka_with_fresh_topics(brokers, "dlq", 1)
        .await
        .unwrap();
    let Some(store) =
        store_with_d1("kafka_an_undecodable_record_is_dead_lettered_before_it_is_acked").await
    else {
        return;
    };
    let group = fluxgate_testkit::unique_name("g");
    let read = |name: Topic, g: &str| {
        bus.consumer(ConsumerSpec::group(
            format!("{group}-{g}"),
            &[&topics.name(name)],
        ))
        .unwrap()
    };
    let (dlq, rejected, valid) = (
        read(Topic::DeadLetter, "dlq"),
        read(Topic::IngestRejected, "rej"),
        read(Topic::IngestValid, "valid"),
    );
    let stats = Arc::new(ValidatorStats::default());
    Validator::new(Parts {
        consumer: read(Topic::IngestRaw, "v"),
        producer: bus.producer(),
        store: store.clone(),
        topics: topics.clone(),
        cfg: ValidatorConfig::default(),
        stats: stats.clone(),
    })
    .start();
    let p = bus.producer();
    let garbage = b"{\"v\":1, this is not an envelope".to_vec();
    p.produce(OutRecord::new(
        topics.name(Topic::IngestRaw),
        "app/d1",
        garbage.clone(),
    ))
    .await
    .unwrap();
    let ts = now_ms() - 1_000;
    let env = raw(
        DeviceRef::Id(DeviceId::new("d1").unwrap()),
        None,
        Dialect::Losant,
        telemetry(ts, &[("temp", Value::Integer(3))]),
        9,
    );
    p.produce(OutRecord::of(topics.name(Topic::IngestRaw), &env))
        .await
        .unwrap();

    let within = |c: Arc<dyn fluxgate_bus::Consumer>| async move {
        tokio::time::timeout(Duration::from_secs(30), c.recv())
            .await
            .expect("a record in time")
            .unwrap()
    };
    let dead = within(dlq).await;
    assert_eq!(&dead.payload[..], &garbage[..], "kept whole");
    assert_eq!(&dead.key[..], b"app/d1");
    let header = |k| String::from_utf8(dead.headers.get(k).unwrap().to_vec()).unwrap();
    assert_eq!(header(h::TOPIC), topics.name(Topic::IngestRaw));
    assert_eq!(header(h::ROLE), "validator");
    assert_eq!(header(h::OFFSET), "0");
    let r = fluxgate_model::Rejection::from_bytes(&within(rejected).await.payload).unwrap();
    assert_eq!(r.reason.code, ReasonCode::Undecodable);
    assert_eq!(r.device, "d1");
    let ok = Envelope::from_bytes(&within(valid).await.payload).unwrap();
    assert_eq!(ok.id, env.id, "the record behind it is unaffected");
    // Counted once its dead letter was acknowledged.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while stats
        .pipeline
        .undecodable
        .load(std::sync::atomic::Ordering::Relaxed)
        != 1
    {
        assert!(tokio::time::Instant::now() < deadline, "not counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
