//! The validator on the in-process bus with SQLite: raw envelopes in, valid / events /
//! rejected out, through real topics.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use fluxgate_pipeline::{Parts, Stage};
use std::sync::Arc;
use std::time::Duration;

use fluxgate_bus::{Bus, Consumer, ConsumerSpec, MemoryBus, OutRecord, Topic, TopicsConfig};
use fluxgate_model::{
    Body, Channel, DeviceId, DeviceName, DeviceRef, Dialect, ENVELOPE_VERSION, Envelope, MessageId,
    ReasonCode, Rejection, Sample, TenantId, Value, Values,
};
use fluxgate_store::sqlite::SqliteStore;
use fluxgate_store::{AttributeDef, AttributeType, Device, DeviceKind, PeripheralPolicy, Store};
use fluxgate_testkit::Stoppable;
use fluxgate_validator::{Validator, ValidatorConfig, ValidatorStats};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn tenant() -> TenantId {
    TenantId::new("app").unwrap()
}

fn dev(s: &str) -> DeviceId {
    DeviceId::new(s).unwrap()
}

fn device(id: &str, kind: DeviceKind, policy: Option<PeripheralPolicy>) -> Device {
    Device {
        tenant: tenant(),
        id: dev(id),
        name: id.into(),
        kind,
        peripheral_policy: policy,
        tags: vec![],
        profile: None,
        created_ms: 0,
        updated_ms: 0,
    }
}

fn state(
    device: DeviceRef,
    via: Option<&str>,
    dialect: Dialect,
    ts: i64,
    pairs: &[(&str, Value)],
) -> Envelope {
    let values: Values = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    Envelope {
        v: ENVELOPE_VERSION,
        id: MessageId::from_parts(ts as u64, 1),
        part: 0,
        tenant: tenant(),
        device,
        via: via.map(dev),
        dialect,
        channel: Channel::Mqtt,
        received_ms: now_ms(),
        body: Body::Telemetry {
            samples: vec![Sample { ts_ms: ts, values }],
            flow_version: None,
        },
    }
}

struct Rig {
    bus: MemoryBus,
    store: Arc<dyn Store>,
    topics: TopicsConfig,
    valid: Arc<dyn Consumer>,
    events: Arc<dyn Consumer>,
    rejected: Arc<dyn Consumer>,
}

impl Rig {
    async fn new() -> Rig {
        let bus = MemoryBus::default();
        let topics = TopicsConfig::default();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
        let sub = |t: Topic| {
            bus.consumer(ConsumerSpec::group(
                format!("reader-{}", t.suffix()),
                &[&topics.name(t)],
            ))
            .unwrap()
        };
        let (valid, events, rejected) = (
            sub(Topic::IngestValid),
            sub(Topic::DeviceEvents),
            sub(Topic::IngestRejected),
        );
        Rig {
            bus,
            store,
            topics,
            valid,
            events,
            rejected,
        }
    }

    fn validator(&self) -> Arc<ValidatorStats> {
        self.validator_with(ValidatorConfig::default())
    }

    fn validator_with(&self, cfg: ValidatorConfig) -> Arc<ValidatorStats> {
        let consumer = self
            .bus
            .consumer(ConsumerSpec::group(
                "validators",
                &[&self.topics.name(Topic::IngestRaw)],
            ))
            .unwrap();
        let stats = Arc::new(ValidatorStats::default());
        Validator::new(Parts {
            consumer,
            producer: self.bus.producer(),
            store: self.store.clone(),
            topics: self.topics.clone(),
            cfg,
            stats: stats.clone(),
        })
        .start();
        stats
    }

    /// `fluxgate_validator::run` on this rig's bus and store, until it is stopped.
    fn run(&self) -> Stoppable<Arc<ValidatorStats>> {
        self.run_on(Arc::new(self.bus.clone()))
    }

    /// [`Rig::run`] on `bus` (this rig's bus, wrapped).
    fn run_on(&self, bus: Arc<dyn Bus>) -> Stoppable<Arc<ValidatorStats>> {
        // Subscribed before anything is produced (prepare's first phase).
        let cfg = ValidatorConfig::default();
        let prepared = fluxgate_validator::prepare(
            &bus,
            self.store.clone(),
            &self.topics,
            cfg,
            Arc::default(),
        )
        .unwrap();
        Stoppable::spawn_local(|shutdown| async move { prepared.run(shutdown).await })
    }

    async fn raw(&self, env: &Envelope) {
        // The ack of the raw record waits for the validator to ack it, which waits for its
        // outputs, which wait for the test's readers: don't await it here.
        let rec = OutRecord::of(self.topics.name(Topic::IngestRaw), &env);
        let _ack = self.bus.producer().send(rec).await.unwrap();
    }
}

async fn next(c: &Arc<dyn Consumer>) -> Vec<u8> {
    let r = tokio::time::timeout(Duration::from_secs(10), c.recv())
        .await
        .expect("an output")
        .unwrap();
    c.ack(&r.position);
    r.payload.to_vec()
}

async fn nothing(c: &Arc<dyn Consumer>) -> bool {
    tokio::time::timeout(Duration::from_millis(300), c.recv())
        .await
        .is_err()
}

#[actix_rt::test]
async fn losant_state_is_checked_against_attribute_definitions() {
    let rig = Rig::new().await;
    rig.store
        .put_device(device("d1", DeviceKind::Standalone, None))
        .await
        .unwrap();
    let defs = vec![
        AttributeDef {
            name: "temp".into(),
            kind: AttributeType::Number,
        },
        AttributeDef {
            name: "on".into(),
            kind: AttributeType::Boolean,
        },
        AttributeDef {
            name: "loc".into(),
            kind: AttributeType::Gps,
        },
    ];
    rig.store
        .put_attribute_defs(tenant(), dev("d1"), defs)
        .await
        .unwrap();
    rig.validator();
    let ts = now_ms() - 1000;
    let env = state(
        DeviceRef::Id(dev("d1")),
        None,
        Dialect::Losant,
        ts,
        &[
            ("temp", Value::from("72")),
            ("on", Value::from("true")),
            ("loc", Value::from("37.1,-122.4")),
            ("extra", Value::Integer(5)),
        ],
    );
    rig.raw(&env).await;
    let valid = Envelope::from_bytes(&next(&rig.valid).await).unwrap();
    let Body::Telemetry { samples, .. } = &valid.body else {
        panic!()
    };
    assert_eq!(samples[0].values["temp"], Value::Integer(72));
    assert_eq!(samples[0].values["on"], Value::Bool(true));
    assert!(!samples[0].values.contains_key("extra"));
    let rej = Rejection::from_bytes(&next(&rig.rejected).await).unwrap();
    assert_eq!(rej.reason.code, ReasonCode::UndefinedAttribute);
    assert!(rej.reason.message.contains("extra"));
    // The rejected log shows what was refused, as the front's entries do.
    assert_eq!(rej.excerpt, r#"{"extra":5}"#);

    // A value of the wrong type: its key and value are the excerpt.
    rig.raw(&state(
        DeviceRef::Id(dev("d1")),
        None,
        Dialect::Losant,
        ts,
        &[("temp", Value::from("hot")), ("on", Value::Bool(false))],
    ))
    .await;
    next(&rig.valid).await;
    let rej = Rejection::from_bytes(&next(&rig.rejected).await).unwrap();
    assert_eq!(rej.reason.code, ReasonCode::TypeMismatch);
    assert_eq!(rej.excerpt, r#"{"temp":"hot"}"#);

    // A state that is only undefined keys is refused whole; nothing goes to valid.
    rig.raw(&state(
        DeviceRef::Id(dev("d1")),
        None,
        Dialect::Losant,
        ts,
        &[("nope", Value::Integer(1))],
    ))
    .await;
    let rej = Rejection::from_bytes(&next(&rig.rejected).await).unwrap();
    assert_eq!(rej.reason.code, ReasonCode::UndefinedAttribute);
    assert!(nothing(&rig.valid).await);
}

#[actix_rt::test]
async fn a_gateway_may_post_only_for_peripherals_that_allow_it() {
    let rig = Rig::new().await;
    rig.store
        .put_device(device("gw1", DeviceKind::Gateway, None))
        .await
        .unwrap();
    rig.store
        .put_device(device(
            "p-other",
            DeviceKind::Peripheral,
            Some(PeripheralPolicy::SpecificGateway(dev("gw2"))),
        ))
        .await
        .unwrap();
    rig.store
        .put_device(device(
            "p-any",
            DeviceKind::Peripheral,
            Some(PeripheralPolicy::AnyGateway),
        ))
        .await
        .unwrap();
    for p in ["p-other", "p-any"] {
        rig.store
            .put_attribute_defs(
                tenant(),
                dev(p),
                vec![AttributeDef {
                    name: "t".into(),
                    kind: AttributeType::Number,
                }],
            )
            .await
            .unwrap();
    }
    rig.validator();
    let ts = now_ms();
    rig.raw(&state(
        DeviceRef::Id(dev("p-other")),
        Some("gw1"),
        Dialect::Losant,
        ts,
        &[("t", Value::Integer(1))],
    ))
    .await;
    let rej = Rejection::from_bytes(&next(&rig.rejected).await).unwrap();
    assert_eq!(rej.reason.code, ReasonCode::PeripheralNotAllowed);
    rig.raw(&state(
        DeviceRef::Id(dev("p-any")),
        Some("gw1"),
        Dialect::Losant,
        ts,
        &[("t", Value::Integer(2))],
    ))
    .await;
    let valid = Envelope::from_bytes(&next(&rig.valid).await).unwrap();
    assert_eq!(valid.device, DeviceRef::Id(dev("p-any")));
}

/// Issue 22, finding 2: a ThingsBoard gateway reports only for devices bound to it — the
/// ones it created by naming them, and peripherals that allow it — never for a
/// peripheral restricted to another gateway or a standalone device, even by name.
#[actix_rt::test]
async fn a_thingsboard_gateway_may_report_only_for_devices_bound_to_it() {
    let rig = Rig::new().await;
    for (id, kind, policy) in [
        ("gw1", DeviceKind::Gateway, None),
        ("gw2", DeviceKind::Gateway, None),
        (
            "p-gw2",
            DeviceKind::Peripheral,
            Some(PeripheralPolicy::SpecificGateway(dev("gw2"))),
        ),
        (
            "p-any",
            DeviceKind::Peripheral,
            Some(PeripheralPolicy::AnyGateway),
        ),
        ("solo", DeviceKind::Standalone, None),
    ] {
        rig.store
            .put_device(device(id, kind, policy))
            .await
            .unwrap();
    }
    rig.validator();
    let ts = now_ms();
    let tb = |name: &str, gw: &'static str, x: i64| {
        state(
            DeviceRef::Name(DeviceName::new(name).unwrap()),
            Some(gw),
            Dialect::ThingsBoard,
            ts - x,
            &[("x", Value::Integer(x))],
        )
    };
    // Refused: restricted to another gateway; standalone.
    for (i, name) in ["p-gw2", "solo"].into_iter().enumerate() {
        rig.raw(&tb(name, "gw1", i as i64)).await;
        let rej = Rejection::from_bytes(&next(&rig.rejected).await).unwrap();
        assert_eq!(rej.reason.code, ReasonCode::PeripheralNotAllowed, "{name}");
    }
    // Accepted: a peripheral of any gateway; the gateway it is restricted to.
    rig.raw(&tb("p-any", "gw1", 2)).await;
    let valid = Envelope::from_bytes(&next(&rig.valid).await).unwrap();
    assert_eq!(valid.device, DeviceRef::Id(dev("p-any")));
    rig.raw(&tb("p-gw2", "gw2", 3)).await;
    let valid = Envelope::from_bytes(&next(&rig.valid).await).unwrap();
    assert_eq!(valid.device, DeviceRef::Id(dev("p-gw2")));
    // A new name: created, bound to gw1; gw2 may not report for it afterwards.
    rig.raw(&tb("Pump 9", "gw1", 4)).await;
    let valid = Envelope::from_bytes(&next(&rig.valid).await).unwrap();
    let DeviceRef::Id(pump) = valid.device else {
        panic!("resolved to an id");
    };
    let made = rig.store.device(tenant(), pump).await.unwrap().unwrap();
    assert_eq!(made.kind, DeviceKind::Peripheral);
    assert_eq!(
        made.peripheral_policy,
        Some(PeripheralPolicy::SpecificGateway(dev("gw1")))
    );
    rig.raw(&tb("Pump 9", "gw2", 5)).await;
    let rej = Rejection::from_bytes(&next(&rig.rejected).await).unwrap();
    assert_eq!(rej.reason.code, ReasonCode::PeripheralNotAllowed);
    assert!(nothing(&rig.valid).await);
}

/// Issue 22, finding 4: devices a gateway creates by naming them stop at the quotas, per
/// gateway and per application; over quota the message is rejected with the reason.
#[actix_rt::test]
async fn auto_created_devices_stop_at_their_quotas() {
    let rig = Rig::new().await;
    for gw in ["gw1", "gw2"] {
        rig.store
            .put_device(device(gw, DeviceKind::Gateway, None))
            .await
            .unwrap();
    }
    // 2 gateways + 4 created = 6 devices in the application at most; 3 per gateway.
    let stats = rig.validator_with(ValidatorConfig {
        max_devices_per_application: 6,
        max_devices_per_gateway: 3,
        ..ValidatorConfig::default()
    });
    let ts = now_ms();
    let mut x = 0;
    let mut tb = |name: &str, gw: &'static str| {
        x += 1;
        state(
            DeviceRef::Name(DeviceName::new(name).unwrap()),
            Some(gw),
            Dialect::ThingsBoard,
            ts - x,
            &[("x", Value::Integer(x))],
        )
    };
    for name in ["a1", "a2", "a3"] {
        rig.raw(&tb(name, "gw1")).await;
        next(&rig.valid).await;
    }
    // gw1 is at its quota; a known device of it still reports.
    rig.raw(&tb("a4", "gw1")).await;
    let rej = Rejection::from_bytes(&next(&rig.rejected).await).unwrap();
    assert_eq!(rej.reason.code, ReasonCode::QuotaExceeded);
    assert!(
        rej.reason.message.contains("gateway gw1"),
        "{}",
        rej.reason.message
    );
    rig.raw(&tb("a1", "gw1")).await;
    next(&rig.valid).await;
    // gw2 may create one more before the application (6 devices) is full.
    rig.raw(&tb("b1", "gw2")).await;
    next(&rig.valid).await;
    rig.raw(&tb("b2", "gw2")).await;
    let rej = Rejection::from_bytes(&next(&rig.rejected).await).unwrap();
    assert_eq!(rej.reason.code, ReasonCode::QuotaExceeded);
    assert!(
        rej.reason.message.contains("application app"),
        "{}",
        rej.reason.message
    );
    assert_eq!(
        rig.store.devices(tenant(), None, 100).await.unwrap().len(),
        6
    );
    // Counted by reason once acknowledged.
    let over = || {
        stats
            .reasons
            .iter()
            .find(|(c, _)| *c == ReasonCode::QuotaExceeded)
            .map_or(0, |(_, n)| n.load(std::sync::atomic::Ordering::Relaxed))
    };
    for _ in 0..100 {
        if over() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(over(), 2);
}

#[actix_rt::test]
async fn thingsboard_names_become_one_device_even_with_two_validators() {
    let rig = Rig::new().await;
    let a = rig.validator();
    let b = rig.validator();
    let name = DeviceName::new("Device A").unwrap();
    let ts = now_ms();
    // Through two gateways, so the records land on different partitions / validators.
    for (i, gw) in ["gw1", "gw2", "gw3", "gw4"].iter().enumerate() {
        let env = state(
            DeviceRef::Name(name.clone()),
            Some(gw),
            Dialect::ThingsBoard,
            ts + i as i64,
            &[("x", Value::Integer(i as i64))],
        );
        rig.raw(&env).await;
    }
    // One gateway creates the device and it is bound to that one: its message passes,
    // the three others are refused.
    let env = Envelope::from_bytes(&next(&rig.valid).await).unwrap();
    let DeviceRef::Id(id) = &env.device else {
        panic!("resolved")
    };
    assert_eq!(
        env.key(),
        format!("app/{id}"),
        "re-keyed by the resolved id"
    );
    for _ in 0..3 {
        let rej = Rejection::from_bytes(&next(&rig.rejected).await).unwrap();
        assert_eq!(rej.reason.code, ReasonCode::PeripheralNotAllowed);
    }
    assert!(nothing(&rig.valid).await);
    let all = rig.store.devices(tenant(), None, 10).await.unwrap();
    assert_eq!(all.len(), 1, "one device for one name");
    assert_eq!(&all[0].id, id);
    assert_eq!(all[0].profile.as_deref(), Some("default"));
    assert_eq!(
        all[0].peripheral_policy,
        env.via.clone().map(PeripheralPolicy::SpecificGateway),
        "bound to the gateway whose message passed"
    );
    let handled = a
        .pipeline
        .records
        .load(std::sync::atomic::Ordering::Relaxed)
        + b.pipeline
            .records
            .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(handled, 4);
}

#[actix_rt::test]
async fn seconds_sent_as_milliseconds_are_refused_and_events_pass_resolved() {
    let rig = Rig::new().await;
    rig.store
        .put_device(device("t1", DeviceKind::Standalone, None))
        .await
        .unwrap();
    rig.validator();
    // ThingsBoard `ts` in seconds: January 1970 as milliseconds.
    rig.raw(&state(
        DeviceRef::Id(dev("t1")),
        None,
        Dialect::ThingsBoard,
        1_700_000_000,
        &[("x", Value::Integer(1))],
    ))
    .await;
    let rej = Rejection::from_bytes(&next(&rig.rejected).await).unwrap();
    assert_eq!(rej.reason.code, ReasonCode::TimestampOutOfWindow);
    assert!(nothing(&rig.valid).await);

    // A gateway's connect for a named device reaches the events topic with its id.
    let mut connect = state(
        DeviceRef::Name(DeviceName::new("Pump 7").unwrap()),
        Some("gw"),
        Dialect::ThingsBoard,
        0,
        &[],
    );
    connect.body = Body::Connect {
        profile: Some("Pumps".into()),
        session: None,
    };
    rig.raw(&connect).await;
    let ev = Envelope::from_bytes(&next(&rig.events).await).unwrap();
    assert!(matches!(ev.device, DeviceRef::Id(_)));
    let created = rig.store.devices(tenant(), None, 10).await.unwrap();
    assert!(
        created
            .iter()
            .any(|d| d.name == "Pump 7" && d.profile.as_deref() == Some("Pumps"))
    );

    // Seed 001: a gateway's disconnect of a name it never connected is ignored, not
    // created; a known one passes resolved.
    for name in ["Never Seen", "Pump 7"] {
        let mut disconnect = connect.clone();
        disconnect.device = DeviceRef::Name(DeviceName::new(name).unwrap());
        disconnect.body = Body::Disconnect {
            reason: None,
            session: None,
        };
        rig.raw(&disconnect).await;
    }
    let ev = Envelope::from_bytes(&next(&rig.events).await).unwrap();
    assert!(matches!(ev.body, Body::Disconnect { .. }));
    let pump = created.iter().find(|d| d.name == "Pump 7").unwrap();
    assert_eq!(ev.device, DeviceRef::Id(pump.id.clone()), "only Pump 7's");
    let now = rig.store.devices(tenant(), None, 10).await.unwrap();
    assert!(now.iter().all(|d| d.name != "Never Seen"), "{now:?}");
    assert_eq!(now.len(), created.len());

    // An unknown device id is refused.
    rig.raw(&state(
        DeviceRef::Id(dev("ghost")),
        None,
        Dialect::ThingsBoard,
        now_ms(),
        &[("x", Value::Integer(1))],
    ))
    .await;
    let rej = Rejection::from_bytes(&next(&rig.rejected).await).unwrap();
    assert_eq!(rej.reason.code, ReasonCode::UnknownDevice);
}

#[actix_rt::test]
async fn run_drains_on_shutdown_and_reads_no_further() {
    let rig = Rig::new().await;
    rig.store
        .put_device(device("t1", DeviceKind::Standalone, None))
        .await
        .unwrap();
    let running = rig.run();
    for i in 0..3 {
        rig.raw(&state(
            DeviceRef::Id(dev("t1")),
            None,
            Dialect::ThingsBoard,
            now_ms() - i,
            &[("x", Value::Integer(i))],
        ))
        .await;
    }
    for _ in 0..3 {
        next(&rig.valid).await;
    }
    let stats = running.stop(Duration::from_secs(5)).await;
    assert_eq!(
        stats
            .pipeline
            .records
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );
    assert_eq!(
        stats.valid.load(std::sync::atomic::Ordering::Relaxed),
        3,
        "every output acknowledged before stopping"
    );
    // Stopped: a new raw record is not handled.
    rig.raw(&state(
        DeviceRef::Id(dev("t1")),
        None,
        Dialect::ThingsBoard,
        now_ms(),
        &[("x", Value::Integer(9))],
    ))
    .await;
    assert!(nothing(&rig.valid).await);
}

/// More records waiting for their outputs' acks than the validator lets be in flight: it
/// must wait for acks, not for itself. (It once awaited its in-flight permit inside the
/// actor's `wait`, which keeps the actor from polling the futures that free permits: the
/// stall seen after a Kafka and a Cassandra restart, lag growing, nothing fetched.)
#[actix_rt::test]
async fn more_records_than_its_in_flight_bound_wait_for_acks_and_all_pass() {
    use std::sync::atomic::Ordering::Relaxed;
    let rig = Rig::new().await;
    rig.store
        .put_device(device("t1", DeviceKind::Standalone, None))
        .await
        .unwrap();
    let stats = rig.validator();
    let n = fluxgate_validator::MAX_IN_FLIGHT + 100;
    let base = now_ms();
    for i in 0..n {
        rig.raw(&state(
            DeviceRef::Id(dev("t1")),
            None,
            Dialect::ThingsBoard,
            base - i as i64,
            &[("x", Value::Integer(i as i64))],
        ))
        .await;
    }
    // Nobody reads the valid topic yet, so no output is acknowledged (the in-process bus
    // acks once every group committed): the validator fills its in-flight bound and stops.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while stats.pipeline.records.load(Relaxed) <= fluxgate_validator::MAX_IN_FLIGHT as u64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the validator read {} records",
            stats.pipeline.records.load(Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Now the reader acknowledges: every record must come through.
    for i in 0..n {
        let r = tokio::time::timeout(Duration::from_secs(10), rig.valid.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "output {i} of {n} never came; the validator read {} records",
                    stats.pipeline.records.load(Relaxed)
                )
            })
            .unwrap();
        rig.valid.ack(&r.position);
    }
    assert_eq!(stats.pipeline.records.load(Relaxed), n as u64);
}

#[actix_rt::test]
async fn registry_reads_are_cached_until_a_registry_change() {
    let rig = Rig::new().await;
    let running = rig.run();
    tokio::time::sleep(Duration::from_millis(100)).await; // run() subscribes
    let data = |x| {
        state(
            DeviceRef::Id(dev("late")),
            None,
            Dialect::ThingsBoard,
            now_ms(),
            &[("x", Value::Integer(x))],
        )
    };
    rig.raw(&data(1)).await;
    let rej = Rejection::from_bytes(&next(&rig.rejected).await).unwrap();
    assert_eq!(rej.reason.code, ReasonCode::UnknownDevice);
    // Created behind the cache's back: still unknown to the validator...
    rig.store
        .put_device(device("late", DeviceKind::Standalone, None))
        .await
        .unwrap();
    rig.raw(&data(2)).await;
    let rej = Rejection::from_bytes(&next(&rig.rejected).await).unwrap();
    assert_eq!(rej.reason.code, ReasonCode::UnknownDevice);
    // ...until the registry change is announced.
    let change = fluxgate_model::RegistryChange::Device {
        tenant: tenant(),
        device: dev("late"),
    };
    let rec = OutRecord::of(rig.topics.name(Topic::RegistryChanges), &change);
    let _ack = rig.bus.producer().send(rec).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    rig.raw(&data(3)).await;
    let valid = Envelope::from_bytes(&next(&rig.valid).await).unwrap();
    assert_eq!(valid.device, DeviceRef::Id(dev("late")));
    running.stop(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn a_validator_that_panics_is_restarted_and_loses_no_record() {
    use fluxgate_bus::testing::FaultyBus;
    let rig = Rig::new().await;
    rig.store
        .put_device(device("t1", DeviceKind::Standalone, None))
        .await
        .unwrap();
    // The validator dies while producing the output of its third record.
    let faulty = Arc::new(FaultyBus::new(Arc::new(rig.bus.clone())));
    faulty
        .faults()
        .send
        .store(3, std::sync::atomic::Ordering::SeqCst);
    let running = rig.run_on(faulty);
    let base = now_ms();
    for i in 0..6 {
        rig.raw(&state(
            DeviceRef::Id(dev("t1")),
            None,
            Dialect::ThingsBoard,
            base - i,
            &[("x", Value::Integer(i))],
        ))
        .await;
    }
    // At least once: records in flight when it died come again; every one comes.
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 6 {
        let env = Envelope::from_bytes(&next(&rig.valid).await).unwrap();
        let Body::Telemetry { samples, .. } = env.body else {
            panic!("telemetry expected");
        };
        seen.insert(samples[0].ts_ms);
    }
    assert_eq!(seen, (0..6).map(|i| base - i).collect());
    let stats = running.stop(Duration::from_secs(5)).await;
    assert_eq!(
        stats
            .pipeline
            .restarts
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert!(
        stats
            .pipeline
            .records
            .load(std::sync::atomic::Ordering::Relaxed)
            > 6
    );
}

#[actix_rt::test]
async fn limits_are_checked_again_and_rejections_are_counted_by_reason() {
    use std::sync::atomic::Ordering;
    let rig = Rig::new().await;
    rig.store
        .put_device(device("l1", DeviceKind::Standalone, None))
        .await
        .unwrap();
    let cfg = ValidatorConfig {
        limits: fluxgate_model::Limits {
            max_attributes: 2,
            max_value_bytes: 8,
            ..fluxgate_model::Limits::default()
        },
        ..ValidatorConfig::default()
    };
    let stats = rig.validator_with(cfg);
    let ts = now_ms() - 1000;
    let one = |ts, pairs: &[(&str, Value)]| {
        state(
            DeviceRef::Id(dev("l1")),
            None,
            Dialect::ThingsBoard,
            ts,
            pairs,
        )
    };
    // Three attributes in one sample: over the count limit.
    let (a, b, c) = (Value::Integer(1), Value::Integer(2), Value::Integer(3));
    rig.raw(&one(ts, &[("a", a.clone()), ("b", b), ("c", c)]))
        .await;
    // A value over the size limit.
    rig.raw(&one(ts + 1, &[("s", Value::from("far too long"))]))
        .await;
    // Within the limits.
    rig.raw(&one(ts + 2, &[("a", a)])).await;
    let codes: Vec<ReasonCode> = vec![
        Rejection::from_bytes(&next(&rig.rejected).await)
            .unwrap()
            .reason
            .code,
        Rejection::from_bytes(&next(&rig.rejected).await)
            .unwrap()
            .reason
            .code,
    ];
    assert_eq!(
        codes,
        vec![ReasonCode::TooManyAttributes, ReasonCode::ValueTooLarge]
    );
    let valid = Envelope::from_bytes(&next(&rig.valid).await).unwrap();
    let Body::Telemetry { samples, .. } = valid.body else {
        panic!("telemetry expected");
    };
    assert_eq!(
        samples[0].ts_ms,
        ts + 2,
        "only the sample within the limits"
    );
    assert!(nothing(&rig.valid).await);
    // Counted once their output is acknowledged (the readers above acked them).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while stats.rejected.load(Ordering::Relaxed) < 2 {
        assert!(tokio::time::Instant::now() < deadline, "rejections counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let registry = prometheus::Registry::new();
    for c in stats.collectors().unwrap() {
        registry.register(c).unwrap();
    }
    let text = fluxgate_observability::render(&registry);
    for (reason, n) in [
        ("too_many_attributes", 1),
        ("value_too_large", 1),
        ("undefined_attribute", 0),
    ] {
        let line = format!("fluxgate_validator_rejections_total{{reason=\"{reason}\"}} {n}");
        assert!(text.contains(&line), "{line} in\n{text}");
    }
}
