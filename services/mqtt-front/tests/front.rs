//! The front over real sockets: MQTT 3.1.1 and 5 clients against a front on the in-process
//! bus and SQLite.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use fluxgate_bus::Topic;
use fluxgate_model::{
    Body, CorrelationId, Delivery, DeviceRef, Dialect, ENVELOPE_VERSION, MessageId, Outbound,
    Rejection, Value,
};
use ntex_mqtt::{v3, v5};

fn state(v: i64) -> String {
    format!(r#"{{"data":{{"temp":{v}}},"time":1700000000000}}"#)
}

#[ntex::test]
async fn losant_state_over_v3_is_produced_before_the_puback() {
    let rig = Rig::memory(Rig::config()).await;
    let mut raw = rig.tap(Topic::IngestRaw);
    let mut events = rig.tap(Topic::DeviceEvents);
    let c = v3(rig.addr, "dev1", Some("key-dev1"), Some(SECRET))
        .await
        .unwrap();

    let connect = events.next_envelope().await;
    assert!(
        matches!(connect.body, Body::Connect { session: Some(ref s), .. } if s.front == "front-test")
    );
    assert_eq!(connect.device, DeviceRef::Id(dev("dev1")));

    c.publish("losant/dev1/state", &state(21)).await.unwrap();
    let (key, value) = raw.next().await;
    assert_eq!(key, b"app1/dev1");
    let env = fluxgate_model::Envelope::from_bytes(&value).unwrap();
    let Body::Telemetry { samples, .. } = env.body else {
        panic!("not telemetry: {env:?}")
    };
    assert_eq!(samples[0].ts_ms, 1_700_000_000_000);
    assert_eq!(samples[0].values.get("temp"), Some(&Value::Integer(21)));

    c.sink.close();
    let gone = events.next_envelope().await;
    assert!(
        matches!(gone.body, Body::Disconnect { reason: Some(ref r), .. } if r == "client disconnect"),
        "{gone:?}"
    );
    let m = rig.metrics().await;
    assert!(m.contains(r#"fluxgate_mqtt_front_messages_total{dialect="losant",kind="state",outcome="accepted"} 1"#), "{m}");
}

#[ntex::test]
async fn connack_codes_for_every_refusal() {
    let rig = Rig::memory(Rig::config()).await;
    let _events = rig.tap(Topic::DeviceEvents);
    use v3::codec::ConnectAckReason as C3;
    use v5::codec::ConnectAckReason as C5;
    let a = rig.addr;
    // Wrong secret, unknown key: bad user name or password.
    assert_eq!(
        v3(a, "dev1", Some("key-dev1"), Some("nope")).await.err(),
        Some(C3::BadUserNameOrPassword)
    );
    assert_eq!(
        v3(a, "dev1", Some("no-key"), Some(SECRET)).await.err(),
        Some(C3::BadUserNameOrPassword)
    );
    assert_eq!(
        v5(a, "dev1", Some("key-dev1"), Some("nope")).await.err(),
        Some(C5::BadUserNameOrPassword)
    );
    // Valid key that does not open the device, or is deactivated: not authorized.
    assert_eq!(
        v3(a, "dev2", Some("key-dev1"), Some(SECRET)).await.err(),
        Some(C3::NotAuthorized)
    );
    assert_eq!(
        v3(a, "dev1", Some("key-blue"), Some(SECRET)).await.err(),
        Some(C3::NotAuthorized)
    );
    assert_eq!(
        v3(a, "dev1", Some("key-off"), Some(SECRET)).await.err(),
        Some(C3::NotAuthorized)
    );
    assert_eq!(
        v5(a, "nosuch", Some("key-all"), Some(SECRET)).await.err(),
        Some(C5::NotAuthorized)
    );
    // Tag scope opens tagged devices.
    assert!(
        v3(a, "tagged", Some("key-blue"), Some(SECRET))
            .await
            .is_ok()
    );
    // ThingsBoard tokens.
    assert_eq!(
        v3(a, "x", Some("tok-wrong"), None).await.err(),
        Some(C3::BadUserNameOrPassword)
    );
    assert_eq!(
        v5(a, "x", None, None).await.err(),
        Some(C5::BadUserNameOrPassword)
    );
    assert!(v5(a, "x", Some("tok-tb1"), None).await.is_ok());
    // Persistent sessions are not supported.
    assert_eq!(
        v3_with(a, "dev1", Some("key-dev1"), Some(SECRET), false)
            .await
            .err(),
        Some(C3::IdentifierRejected)
    );
    let m = rig.metrics().await;
    assert!(
        m.contains(r#"fluxgate_mqtt_front_connects_total{outcome="bad_credentials"} 5"#),
        "{m}"
    );
    assert!(
        m.contains(r#"fluxgate_mqtt_front_connects_total{outcome="not_authorized"} 4"#),
        "{m}"
    );
    assert!(
        m.contains(
            r#"fluxgate_mqtt_front_connects_total{outcome="persistent_session_unsupported"} 1"#
        ),
        "the metric says why, not just 'refused': {m}"
    );
}

/// The failed-login delay grows for the credential that keeps failing from an address, not
/// for every device behind that address (a NAT): a misconfigured device does not slow its
/// fleet.
#[ntex::test]
async fn failed_logins_slow_down_that_credential_not_the_address() {
    let mut cfg = Rig::config();
    cfg.auth_failure_delay_ms = 400;
    cfg.auth_failure_delay_max_ms = 400;
    let rig = Rig::memory(cfg).await;
    let _events = rig.tap(Topic::DeviceEvents);
    let a = rig.addr;
    use v3::codec::ConnectAckReason as C3;
    let timed = |client: &'static str| async move {
        let t = std::time::Instant::now();
        let r = v3(a, client, Some("key-dev1"), Some("wrong")).await.err();
        assert_eq!(r, Some(C3::BadUserNameOrPassword));
        t.elapsed()
    };
    timed("dev1").await;
    // The second failure of the same credential waits for the delay.
    assert!(timed("dev1").await >= std::time::Duration::from_millis(400));
    // Another device's first failure, from the same address, is answered at once.
    assert!(timed("dev2").await < std::time::Duration::from_millis(400));
}

#[ntex::test]
async fn v5_puback_reasons_and_the_connection_survives_them() {
    let rig = Rig::memory(Rig::config()).await;
    let mut raw = rig.tap(Topic::IngestRaw);
    let mut rejected = rig.tap(Topic::IngestRejected);
    let _events = rig.tap(Topic::DeviceEvents);
    let c = v5(rig.addr, "dev1", Some("key-dev1"), Some(SECRET))
        .await
        .unwrap();
    use v5::codec::PublishAckReason as R;

    // Another device's topic.
    assert_eq!(
        c.publish("losant/dev2/state", state(1).as_bytes()).await,
        Ok(R::NotAuthorized)
    );
    // Not JSON.
    assert_eq!(
        c.publish("losant/dev1/state", b"{not json").await,
        Ok(R::PayloadFormatInvalid)
    );
    // The other dialect's namespace.
    assert_eq!(
        c.publish("v1/devices/me/telemetry", b"{}").await,
        Ok(R::NotAuthorized)
    );
    // Custom topics need a key that allows them.
    assert_eq!(c.publish("plain/topic", b"x").await, Ok(R::NotAuthorized));
    // Still connected: a good one goes through.
    assert_eq!(
        c.publish("losant/dev1/state", state(5).as_bytes()).await,
        Ok(R::Success)
    );
    let env = raw.next_envelope().await;
    assert!(matches!(env.body, Body::Telemetry { .. }));
    assert!(
        raw.quiet(200).await,
        "refused publishes reached the raw topic"
    );

    // Every refusal is in the rejected log, with its reason.
    let mut reasons = Vec::new();
    for _ in 0..4 {
        let (_, v) = rejected.next().await;
        reasons.push(
            Rejection::from_bytes(&v)
                .unwrap()
                .reason
                .code
                .as_str()
                .to_owned(),
        );
    }
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "malformed_json",
            "topic_not_allowed",
            "topic_not_allowed",
            "topic_not_allowed"
        ]
    );
}

#[ntex::test]
async fn v3_refused_publish_closes_the_connection() {
    let rig = Rig::memory(Rig::config()).await;
    let _events = rig.tap(Topic::DeviceEvents);
    let _rejected = rig.tap(Topic::IngestRejected);
    let c = v3(rig.addr, "dev1", Some("key-dev1"), Some(SECRET))
        .await
        .unwrap();
    assert!(c.publish("losant/dev2/state", &state(1)).await.is_err());
    assert!(c.closed().await);

    // Configured to drop instead: acked, counted, connection kept.
    let mut cfg = Rig::config();
    cfg.v3_on_malformed = fluxgate_mqtt_front::V3Refusal::Drop;
    let rig = Rig::memory(cfg).await;
    let _events = rig.tap(Topic::DeviceEvents);
    let _rejected = rig.tap(Topic::IngestRejected);
    let mut raw = rig.tap(Topic::IngestRaw);
    let c = v3(rig.addr, "dev1", Some("key-dev1"), Some(SECRET))
        .await
        .unwrap();
    c.publish("losant/dev1/state", "[1,2").await.unwrap();
    c.publish("losant/dev1/state", &state(2)).await.unwrap();
    assert!(matches!(
        raw.next_envelope().await.body,
        Body::Telemetry { .. }
    ));
    let m = rig.metrics().await;
    assert!(m.contains(r#"fluxgate_mqtt_front_messages_total{dialect="losant",kind="state",outcome="malformed"} 1"#), "{m}");
}

#[ntex::test]
async fn gateways_act_only_for_peripherals_that_allow_them() {
    let rig = Rig::memory(Rig::config()).await;
    let _events = rig.tap(Topic::DeviceEvents);
    let _rejected = rig.tap(Topic::IngestRejected);
    let mut raw = rig.tap(Topic::IngestRaw);
    use v5::codec::PublishAckReason as R;
    use v5::codec::SubscribeAckReason as S;
    let gw1 = v5(rig.addr, "gw1", Some("key-all"), Some(SECRET))
        .await
        .unwrap();
    assert_eq!(
        gw1.publish("losant/p-gw2/state", state(1).as_bytes()).await,
        Ok(R::NotAuthorized)
    );
    assert_eq!(
        gw1.subscribe("losant/p-gw2/command").await,
        vec![S::NotAuthorized]
    );
    // A standalone device is not a peripheral.
    assert_eq!(
        gw1.publish("losant/dev1/state", state(1).as_bytes()).await,
        Ok(R::NotAuthorized)
    );
    assert_eq!(
        gw1.publish("losant/p-any/state", state(2).as_bytes()).await,
        Ok(R::Success)
    );
    assert_eq!(
        gw1.subscribe("losant/p-any/command").await,
        vec![S::GrantedQos1]
    );
    // The gateway's first message about the peripheral connects it through the gateway
    // (the subscription that follows has no connect left to announce, only itself).
    for want in ["connect", "telemetry", "subscribed"] {
        let env = raw.next_envelope().await;
        assert_eq!(env.body.kind().as_str(), want);
        assert_eq!(env.device, DeviceRef::Id(dev("p-any")));
        assert_eq!(env.via, Some(dev("gw1")));
    }

    // A subscription to a peripheral's commands connects it too (seed 000).
    let gw2 = v3(rig.addr, "gw2", Some("key-all"), Some(SECRET))
        .await
        .unwrap();
    assert_eq!(
        gw2.subscribe("losant/p-gw2/command").await,
        vec![v3::codec::SubscribeReturnCode::Success(
            v3::codec::QoS::AtLeastOnce
        )]
    );
    gw2.publish("losant/p-gw2/state", &state(3)).await.unwrap();
    for want in ["connect", "subscribed", "telemetry"] {
        let env = raw.next_envelope().await;
        assert_eq!(env.body.kind().as_str(), want);
        assert_eq!(
            (env.device, env.via),
            (DeviceRef::Id(dev("p-gw2")), Some(dev("gw2")))
        );
    }
    // Its session ends: the peripherals it reached are disconnected with it.
    gw2.sink.close();
    let env = raw.next_envelope().await;
    assert_eq!(env.body.kind().as_str(), "disconnect");
    assert_eq!(
        (env.device, env.via),
        (DeviceRef::Id(dev("p-gw2")), Some(dev("gw2")))
    );
    let fluxgate_model::Body::Disconnect { reason, .. } = env.body else {
        unreachable!()
    };
    assert_eq!(
        reason.as_deref(),
        Some("gateway session ended: client disconnect")
    );
    // A plain device may not subscribe to another device's commands.
    let d = v3(rig.addr, "dev1", Some("key-dev1"), Some(SECRET))
        .await
        .unwrap();
    assert_eq!(
        d.subscribe("losant/dev2/command").await,
        vec![v3::codec::SubscribeReturnCode::Failure]
    );
}

#[ntex::test]
async fn thingsboard_device_and_gateway_topics() {
    let rig = Rig::memory(Rig::config()).await;
    let _events = rig.tap(Topic::DeviceEvents);
    let mut raw = rig.tap(Topic::IngestRaw);
    let tb = v3(rig.addr, "any-client-id", Some("tok-tb1"), None)
        .await
        .unwrap();
    tb.publish(
        "v1/devices/me/telemetry",
        r#"{"ts":1700000000000,"values":{"t":1.5}}"#,
    )
    .await
    .unwrap();
    let env = raw.next_envelope().await;
    assert_eq!(env.dialect, Dialect::ThingsBoard);
    assert_eq!(env.device, DeviceRef::Id(dev("tb1")));
    tb.publish("v1/devices/me/attributes", r#"{"fw":"1.0"}"#)
        .await
        .unwrap();
    assert!(matches!(
        raw.next_envelope().await.body,
        Body::Attributes { .. }
    ));
    tb.publish("v1/devices/me/rpc/response/7", r#"{"ok":true}"#)
        .await
        .unwrap();
    assert!(matches!(
        raw.next_envelope().await.body,
        Body::RpcResponse {
            request_id: CorrelationId::Int(7),
            ..
        }
    ));
    // A device may not use the gateway API.
    assert!(tb.publish("v1/gateway/telemetry", "{}").await.is_err());

    let gw = v5(rig.addr, "gw", Some("tok-gw"), None).await.unwrap();
    use v5::codec::PublishAckReason as R;
    assert_eq!(
        gw.publish(
            "v1/gateway/connect",
            br#"{"device":"Sensor A","type":"thermo"}"#
        )
        .await,
        Ok(R::Success)
    );
    let env = raw.next_envelope().await;
    assert!(matches!(env.body, Body::Connect { profile: Some(ref p), .. } if p == "thermo"));
    assert_eq!(env.via, Some(dev("tbgw")));
    let body = br#"{"Sensor A":[{"ts":1700000000000,"values":{"t":1}}],"Sensor B":{"ts":1700000000001,"values":{"t":2}}}"#;
    assert_eq!(
        gw.publish("v1/gateway/telemetry", body).await,
        Ok(R::Success)
    );
    let a = raw.next_envelope().await;
    let b = raw.next_envelope().await;
    let mut names: Vec<String> = [a, b]
        .iter()
        .map(|e| match &e.device {
            DeviceRef::Name(n) => n.as_str().to_owned(),
            other => panic!("{other:?}"),
        })
        .collect();
    names.sort();
    assert_eq!(names, ["Sensor A", "Sensor B"]);
}

#[ntex::test]
async fn get_session_limits_is_answered_by_the_front() {
    let rig = Rig::memory(Rig::config()).await;
    let _events = rig.tap(Topic::DeviceEvents);
    let mut raw = rig.tap(Topic::IngestRaw);
    let mut tb = v5(rig.addr, "c", Some("tok-tb1"), None).await.unwrap();
    tb.subscribe("v1/devices/me/rpc/response/+").await;
    let ack = tb
        .publish(
            "v1/devices/me/rpc/request/1",
            br#"{"method":"getSessionLimits","params":{}}"#,
        )
        .await;
    assert_eq!(ack, Ok(v5::codec::PublishAckReason::Success));
    let (topic, payload) = recv(&mut tb.inbox).await;
    assert_eq!(topic, "v1/devices/me/rpc/response/1");
    let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(v["maxPayloadSize"], 256 * 1024);
    assert_eq!(v["rateLimits"]["messages"], "300:15");
    assert!(raw.quiet(200).await, "answered locally, not sent on");
}

fn delivery(device: &str, via: Option<&str>, dialect: Dialect, body: Outbound) -> Delivery {
    Delivery {
        v: ENVELOPE_VERSION,
        id: MessageId::from_parts(1_700_000_000_000, u128::from(fastrand_u64())),
        tenant: tenant(),
        device: dev(device),
        device_name: via.map(|_| fluxgate_model::DeviceName::new(device).unwrap()),
        via: via.map(dev),
        dialect,
        body,
    }
}

fn fastrand_u64() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        .into()
}

fn command(name: &str) -> Outbound {
    Outbound::Command {
        request_id: CorrelationId::Int(3),
        name: name.into(),
        payload: serde_json::json!({"level": 2}),
        time_ms: 1_700_000_000_000,
    }
}

#[ntex::test]
async fn deliveries_reach_subscribed_sessions_and_report_outcomes() {
    let rig = Rig::memory(Rig::config()).await;
    let mut events = rig.tap(Topic::DeviceEvents);
    let mut d = v3(rig.addr, "dev1", Some("key-dev1"), Some(SECRET))
        .await
        .unwrap();
    events.next_envelope().await; // connect

    // Not subscribed yet: reported as not delivered.
    let first = delivery("dev1", None, Dialect::Losant, command("early"));
    rig.produce(Topic::Deliveries, "app1/dev1", first.to_bytes())
        .await;
    let out = events.next_envelope().await;
    assert!(
        matches!(out.body, Body::DeliveryOutcome { delivered: false, delivery, reason: Some(ref r), .. } if delivery == first.id && r == "not subscribed"),
        "{out:?}"
    );

    assert_eq!(
        d.subscribe("losant/dev1/command").await,
        vec![v3::codec::SubscribeReturnCode::Success(
            v3::codec::QoS::AtLeastOnce
        )]
    );
    // The subscription is announced on the device's key, so queued commands follow it.
    let subscribed = events.next_envelope().await;
    assert!(
        matches!(subscribed.body, Body::Subscribed),
        "{subscribed:?}"
    );
    assert_eq!(
        (subscribed.device, subscribed.via),
        (DeviceRef::Id(dev("dev1")), None)
    );
    let cmd = delivery("dev1", None, Dialect::Losant, command("reboot"));
    rig.produce(Topic::Deliveries, "app1/dev1", cmd.to_bytes())
        .await;
    let (topic, payload) = recv(&mut d.inbox).await;
    assert_eq!(topic, "losant/dev1/command");
    let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(v["name"], "reboot");
    assert_eq!(v["payload"]["level"], 2);
    let out = events.next_envelope().await;
    assert!(
        matches!(out.body, Body::DeliveryOutcome { delivered: true, delivery, .. } if delivery == cmd.id),
        "{out:?}"
    );

    // A delivery for a device this front does not hold is left to other fronts.
    rig.produce(
        Topic::Deliveries,
        "app1/dev2",
        delivery("dev2", None, Dialect::Losant, command("x")).to_bytes(),
    )
    .await;
    assert!(events.quiet(200).await);

    // ThingsBoard gateway: RPC for a device behind it arrives on v1/gateway/rpc.
    let mut gw = v5(rig.addr, "gw", Some("tok-gw"), None).await.unwrap();
    events.next_envelope().await; // connect
    gw.subscribe("v1/gateway/rpc").await;
    let rpc = delivery(
        "sensor-a",
        Some("tbgw"),
        Dialect::ThingsBoard,
        command("setLevel"),
    );
    rig.produce(Topic::Deliveries, "app1/sensor-a", rpc.to_bytes())
        .await;
    let (topic, payload) = recv(&mut gw.inbox).await;
    assert_eq!(topic, "v1/gateway/rpc");
    let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(v["device"], "sensor-a");
    assert_eq!(v["data"]["method"], "setLevel");
    assert_eq!(v["data"]["id"], 3);

    // A delivery naming another dialect (a dispatcher that rebuilt presence from the store
    // knows where a device is, not how it speaks) is rendered in the connection's.
    let unsure = delivery(
        "sensor-a",
        Some("tbgw"),
        Dialect::Losant,
        command("setLevel"),
    );
    rig.produce(Topic::Deliveries, "app1/sensor-a", unsure.to_bytes())
        .await;
    let (topic, payload) = recv(&mut gw.inbox).await;
    assert_eq!(topic, "v1/gateway/rpc");
    let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(v["data"]["method"], "setLevel");
}

#[ntex::test]
async fn a_second_connection_takes_over_the_first() {
    let rig = Rig::memory(Rig::config()).await;
    let mut events = rig.tap(Topic::DeviceEvents);
    let first = v5(rig.addr, "dev1", Some("key-dev1"), Some(SECRET))
        .await
        .unwrap();
    assert!(matches!(
        events.next_envelope().await.body,
        Body::Connect { .. }
    ));
    let second = v3(rig.addr, "dev1", Some("key-dev1"), Some(SECRET))
        .await
        .unwrap();
    let ev = events.next_envelope().await;
    assert!(
        matches!(ev.body, Body::Disconnect { reason: Some(ref r), .. } if r == "takeover"),
        "{ev:?}"
    );
    assert!(matches!(
        events.next_envelope().await.body,
        Body::Connect { .. }
    ));
    assert!(first.closed().await);
    // The old socket closing announces nothing more: the device is still online.
    assert!(events.quiet(300).await);
    assert!(second.sink.is_open());
    second
        .publish("losant/dev1/state", &state(1))
        .await
        .unwrap();
}

#[ntex::test]
async fn custom_topics_are_a_broker_for_keys_that_allow_them() {
    let rig = Rig::memory(Rig::config()).await;
    let _events = rig.tap(Topic::DeviceEvents);
    let mut sub = v5(rig.addr, "dev2", Some("key-all"), Some(SECRET))
        .await
        .unwrap();
    assert_eq!(
        sub.subscribe("plant/+/temp").await,
        vec![v5::codec::SubscribeAckReason::GrantedQos1]
    );
    let publisher = v3(rig.addr, "dev1", Some("key-all"), Some(SECRET))
        .await
        .unwrap();
    publisher.publish("plant/7/temp", "21.5").await.unwrap();
    let (topic, payload) = recv(&mut sub.inbox).await;
    assert_eq!(
        (topic.as_str(), &payload[..]),
        ("plant/7/temp", &b"21.5"[..])
    );
    publisher.publish("plant/7/humidity", "40").await.unwrap();
    let extra = tokio::time::timeout(Duration::from_millis(300), sub.inbox.recv()).await;
    assert!(extra.is_err(), "{extra:?}");
    // A key without custom topics may not subscribe.
    let other = v3(rig.addr, "dev1", Some("key-dev1"), Some(SECRET))
        .await
        .unwrap();
    assert_eq!(
        other.subscribe("plant/#").await,
        vec![v3::codec::SubscribeReturnCode::Failure]
    );
}

#[ntex::test]
async fn puback_waits_for_the_bus_ack_and_the_record_is_stored_once() {
    let rig = Rig::memory(Rig::config()).await;
    // A consumer group that holds the raw topic: on the in-process bus a produce resolves
    // only when every group committed it.
    let held = rig
        .bus
        .consumer(fluxgate_bus::ConsumerSpec::group(
            "held",
            &[&rig.topics.name(Topic::IngestRaw)],
        ))
        .unwrap();
    let c = v3(rig.addr, "dev1", Some("key-dev1"), Some(SECRET))
        .await
        .unwrap();
    let sink = c.sink.clone();
    let (done_tx, mut done) = tokio::sync::oneshot::channel();
    ntex::rt::spawn(async move {
        let r = sink
            .publish(ntex::util::ByteString::from("losant/dev1/state"))
            .send_at_least_once(ntex::util::Bytes::from(state(7)))
            .await;
        let _ = done_tx.send(r.is_ok());
    });
    let rec = tokio::time::timeout(Duration::from_secs(5), held.recv())
        .await
        .unwrap()
        .unwrap();
    // The record is on the topic, not yet committed: no PUBACK.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        done.try_recv().is_err(),
        "PUBACK before the bus acknowledged"
    );
    held.ack(&rec.position);
    held.commit().await.unwrap();
    let acked = tokio::time::timeout(Duration::from_secs(5), &mut done)
        .await
        .unwrap()
        .unwrap();
    assert!(acked);
    // Exactly once.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), held.recv())
            .await
            .is_err()
    );
    let m = rig.metrics().await;
    assert!(
        m.contains("fluxgate_mqtt_front_publish_ack_seconds_count 1"),
        "{m}"
    );
}

#[ntex::test]
async fn over_a_rate_limit_the_connection_closes_and_the_client_is_blocked() {
    let mut cfg = Rig::config();
    cfg.rate_limits.per_topic = fluxgate_mqtt_front::Rate {
        messages: 3,
        window_secs: 15,
    };
    cfg.rate_limits.new_connections_per_application = fluxgate_mqtt_front::Rate {
        messages: 4,
        window_secs: 60,
    };
    let rig = Rig::memory(cfg).await;
    let _events = rig.tap(Topic::DeviceEvents);
    let _raw = rig.tap(Topic::IngestRaw);
    let c = v5(rig.addr, "dev1", Some("key-dev1"), Some(SECRET))
        .await
        .unwrap();
    for i in 0..3 {
        assert_eq!(
            c.publish("losant/dev1/state", state(i).as_bytes()).await,
            Ok(v5::codec::PublishAckReason::Success)
        );
    }
    assert!(
        c.publish("losant/dev1/state", state(4).as_bytes())
            .await
            .is_err()
    );
    assert!(c.closed().await);
    use v5::codec::ConnectAckReason as C;
    assert_eq!(
        v5(rig.addr, "dev1", Some("key-dev1"), Some(SECRET))
            .await
            .err(),
        Some(C::QuotaExceeded),
        "blocked after the offence"
    );
    // Other devices are not blocked, until the application's connection rate runs out.
    assert!(
        v5(rig.addr, "dev2", Some("key-all"), Some(SECRET))
            .await
            .is_ok()
    );
    assert!(
        v5(rig.addr, "gw1", Some("key-all"), Some(SECRET))
            .await
            .is_ok()
    );
    assert!(
        v5(rig.addr, "gw2", Some("key-all"), Some(SECRET))
            .await
            .is_ok()
    );
    assert_eq!(
        v5(rig.addr, "tagged", Some("key-all"), Some(SECRET))
            .await
            .err(),
        Some(C::ConnectionRateExceeded)
    );
    let m = rig.metrics().await;
    assert!(
        m.contains(r#"fluxgate_mqtt_front_rate_limited_total{limit="topic"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"fluxgate_mqtt_front_rate_limited_total{limit="new_connections"} 1"#),
        "{m}"
    );
}

/// ThingsBoard limits are per device: a gateway's 40 devices sending one sample each
/// through the one gateway topic are 40 devices' first message, not 40 messages of one
/// topic over Losant's 30 (which disconnected real gateways); one device behind the gateway
/// over its own limit is counted as that device, and `getSessionLimits` reports both.
#[ntex::test]
async fn thingsboard_gateways_are_limited_per_device_behind_them() {
    let mut cfg = Rig::config();
    cfg.rate_limits.thingsboard_per_device = fluxgate_mqtt_front::Rate {
        messages: 5,
        window_secs: 15,
    };
    let rig = Rig::memory(cfg).await;
    let _events = rig.tap(Topic::DeviceEvents);
    let mut raw = rig.tap(Topic::IngestRaw);
    let mut gw = v5(rig.addr, "gw", Some("tok-gw"), None).await.unwrap();
    use v5::codec::PublishAckReason as R;
    for i in 0..40 {
        let body = format!(r#"{{"Sensor {i}":[{{"ts":1700000000000,"values":{{"t":{i}}}}}]}}"#);
        assert_eq!(
            gw.publish("v1/gateway/telemetry", body.as_bytes()).await,
            Ok(R::Success),
            "device {i}"
        );
    }
    for _ in 0..40 {
        raw.next_envelope().await;
    }
    gw.subscribe("v1/devices/me/rpc/response/+").await;
    let ask = br#"{"method":"getSessionLimits","params":{}}"#;
    assert_eq!(
        gw.publish("v1/devices/me/rpc/request/9", ask).await,
        Ok(R::Success)
    );
    let (_, payload) = recv(&mut gw.inbox).await;
    let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(v["rateLimits"]["messages"], "5:15", "{v}");
    assert_eq!(v["gatewayRateLimits"]["messages"], "3000:15", "{v}");
    // Sensor 0 has sent 1; four more pass, the sixth is over its limit.
    let one = br#"{"Sensor 0":{"ts":1700000000001,"values":{"t":1}}}"#;
    for _ in 0..4 {
        assert_eq!(
            gw.publish("v1/gateway/telemetry", one).await,
            Ok(R::Success)
        );
    }
    assert!(gw.publish("v1/gateway/telemetry", one).await.is_err());
    assert!(gw.closed().await);
    let m = rig.metrics().await;
    assert!(
        m.contains(r#"fluxgate_mqtt_front_rate_limited_total{limit="device"} 1"#),
        "{m}"
    );
}

#[ntex::test]
async fn oversize_retained_and_qos2_publishes_close_the_connection() {
    let mut cfg = Rig::config();
    cfg.limits.max_payload_bytes = 1024;
    let rig = Rig::memory(cfg).await;
    let _events = rig.tap(Topic::DeviceEvents);
    let mut raw = rig.tap(Topic::IngestRaw);

    let big = format!(r#"{{"data":{{"s":"{}"}}}}"#, "x".repeat(20_000));
    // A v5 client learns the limit from the CONNACK and does not send.
    let c = v5(rig.addr, "dev1", Some("key-dev1"), Some(SECRET))
        .await
        .unwrap();
    assert!(
        c.publish("losant/dev1/state", big.as_bytes())
            .await
            .is_err()
    );
    // A v3 client cannot know: the front closes the connection.
    let c = v3(rig.addr, "dev1", Some("key-dev1"), Some(SECRET))
        .await
        .unwrap();
    assert!(c.publish("losant/dev1/state", &big).await.is_err());
    assert!(c.closed().await);

    let c = v3(rig.addr, "dev1", Some("key-dev1"), Some(SECRET))
        .await
        .unwrap();
    let r = c
        .sink
        .publish(ntex::util::ByteString::from("losant/dev1/state"))
        .retain()
        .send_at_least_once(ntex::util::Bytes::from(state(1)))
        .await;
    assert!(r.is_err());
    assert!(c.closed().await);

    let c = v3(rig.addr, "dev1", Some("key-dev1"), Some(SECRET))
        .await
        .unwrap();
    let _ = c
        .sink
        .publish(ntex::util::ByteString::from("losant/dev1/state"))
        .send_exactly_once(ntex::util::Bytes::from(state(2)))
        .await;
    assert!(c.closed().await);
    assert!(raw.quiet(300).await, "nothing refused reached the bus");
    let m = rig.metrics().await;
    assert!(
        m.contains("fluxgate_mqtt_front_protocol_errors_total 2"),
        "{m}"
    );
    assert!(m.contains(r#"outcome="retain_refused"} 1"#), "{m}");
}

#[ntex::test]
async fn drain_finishes_in_flight_acks_then_closes_sessions() {
    let mut rig = Rig::memory(Rig::config()).await;
    let mut events = rig.tap(Topic::DeviceEvents);
    let held = rig
        .bus
        .consumer(fluxgate_bus::ConsumerSpec::group(
            "held",
            &[&rig.topics.name(Topic::IngestRaw)],
        ))
        .unwrap();
    let c = v5(rig.addr, "dev1", Some("key-dev1"), Some(SECRET))
        .await
        .unwrap();
    events.next_envelope().await; // connect
    let sink = c.sink.clone();
    let (done_tx, done) = tokio::sync::oneshot::channel();
    ntex::rt::spawn(async move {
        let r = sink
            .publish(ntex::util::ByteString::from("losant/dev1/state"))
            .send_at_least_once(ntex::util::Bytes::from(state(9)))
            .await
            .map(|a| a.reason_code);
        let _ = done_tx.send(r);
    });
    let rec = tokio::time::timeout(Duration::from_secs(5), held.recv())
        .await
        .unwrap()
        .unwrap();
    let front = rig.front.take().unwrap();
    let health = front.health.clone();
    let stopped = ntex::rt::spawn(async move { front.shutdown().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        c.sink.is_open(),
        "closed before its publish was acknowledged"
    );
    held.ack(&rec.position);
    held.commit().await.unwrap();
    let ack = tokio::time::timeout(Duration::from_secs(5), done)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ack, Ok(v5::codec::PublishAckReason::Success));
    assert!(c.closed().await);
    let ev = events.next_envelope().await;
    assert!(
        matches!(ev.body, Body::Disconnect { reason: Some(ref r), .. } if r == "server shutting down"),
        "{ev:?}"
    );
    tokio::time::timeout(Duration::from_secs(15), stopped)
        .await
        .unwrap()
        .unwrap();
    assert!(!health.is_ready());
    // The listener is gone.
    assert!(tokio::net::TcpStream::connect(rig.addr).await.is_err());
}

/// A draining front closes its sessions at `drain_closes_per_sec`, so their clients
/// reconnect elsewhere spread out rather than all in the same instant.
#[ntex::test]
async fn drain_paces_the_closes() {
    let mut cfg = Rig::config();
    cfg.drain_closes_per_sec = 10;
    let mut rig = Rig::memory(cfg).await;
    let _events = rig.tap(Topic::DeviceEvents);
    let mut clients = Vec::new();
    for d in ["dev1", "dev2", "gw1", "gw2", "tagged"] {
        clients.push(
            v5(rig.addr, d, Some("key-all"), Some(SECRET))
                .await
                .unwrap(),
        );
    }
    let front = rig.front.take().unwrap();
    let started = std::time::Instant::now();
    let stopped = ntex::rt::spawn(async move { front.shutdown().await });
    // Each client watched on its own, so each close is timed when it happens.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for c in &clients {
        let (sink, tx) = (c.sink.clone(), tx.clone());
        ntex::rt::spawn(async move {
            while sink.is_open() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let _ = tx.send(started.elapsed());
        });
    }
    let mut closed_at = Vec::new();
    for _ in &clients {
        let t = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
        closed_at.push(t.unwrap().unwrap());
    }
    tokio::time::timeout(Duration::from_secs(15), stopped)
        .await
        .unwrap()
        .unwrap();
    closed_at.sort();
    let spread = closed_at[4] - closed_at[0];
    // Five closes at 10 per second: 0.4 s from the first to the last.
    assert!(spread >= Duration::from_millis(300), "{closed_at:?}");
}

#[ntex::test]
async fn health_and_metrics_are_served_over_http() {
    let rig = Rig::memory(Rig::config()).await;
    let http = rig.front.as_ref().unwrap().listening.http.unwrap();
    assert!(http_get(http, "/healthz").await.starts_with("HTTP/1.0 200"));
    assert!(http_get(http, "/readyz").await.starts_with("HTTP/1.0 200"));
    let m = rig.metrics().await;
    for name in [
        "fluxgate_mqtt_front_in_flight",
        "fluxgate_mqtt_front_publish_ack_seconds",
        "fluxgate_mqtt_front_protocol_errors_total",
    ] {
        assert!(m.contains(name), "{name} missing from {m}");
    }
}

#[ntex::test]
async fn registry_changes_drop_cached_credentials() {
    let rig = Rig::memory(Rig::config()).await;
    let _events = rig.tap(Topic::DeviceEvents);
    let c = v3(rig.addr, "dev1", Some("key-dev1"), Some(SECRET))
        .await
        .unwrap();
    c.sink.close();
    // Deactivate the key in the store: the cached key still opens the device...
    let mut key = rig
        .store
        .access_key("key-dev1".into())
        .await
        .unwrap()
        .unwrap();
    key.active = false;
    rig.store.put_access_key(key).await.unwrap();
    assert!(
        v3(rig.addr, "dev1", Some("key-dev1"), Some(SECRET))
            .await
            .is_ok()
    );
    // ...until the change is announced.
    let change = fluxgate_model::RegistryChange::AccessKey {
        key: "key-dev1".into(),
    };
    rig.produce(Topic::RegistryChanges, &change.key(), change.to_bytes())
        .await;
    let mut refused = None;
    for _ in 0..100 {
        refused = v3(rig.addr, "dev1", Some("key-dev1"), Some(SECRET))
            .await
            .err();
        if refused.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(refused, Some(v3::codec::ConnectAckReason::NotAuthorized));
}

/// Every remaining ThingsBoard topic, device API and gateway API, at QoS 0 and 1: each
/// produces the envelope kind it should.
#[ntex::test]
async fn every_thingsboard_topic_reaches_the_bus_at_qos_0_and_1() {
    let rig = Rig::memory(Rig::config()).await;
    let _events = rig.tap(Topic::DeviceEvents);
    let mut raw = rig.tap(Topic::IngestRaw);
    let kind = |e: &fluxgate_model::Envelope| e.body.kind().as_str();

    let tb = v3(rig.addr, "c", Some("tok-tb1"), None).await.unwrap();
    let device_api = [
        (
            "v1/devices/me/telemetry",
            r#"[{"ts":1700000000000,"values":{"a":1}},{"b":2}]"#,
            "telemetry",
        ),
        (
            "v1/devices/me/attributes/request/5",
            r#"{"clientKeys":"a,b","sharedKeys":"c"}"#,
            "attribute_request",
        ),
        (
            "v1/devices/me/rpc/request/6",
            r#"{"method":"getTime","params":{}}"#,
            "rpc_request",
        ),
        (
            "v1/devices/me/claim",
            r#"{"secretKey":"k","durationMs":60000}"#,
            "claim",
        ),
    ];
    for (topic, body, want) in device_api {
        // QoS 0: no PUBACK, the record still arrives.
        tb.sink
            .publish(ntex::util::ByteString::from(topic))
            .send_at_most_once(ntex::util::Bytes::from(body.to_owned()))
            .unwrap();
        assert_eq!(kind(&raw.next_envelope().await), want, "{topic} at QoS 0");
        tb.publish(topic, body).await.unwrap();
        assert_eq!(kind(&raw.next_envelope().await), want, "{topic} at QoS 1");
    }

    let gw = v3(rig.addr, "g", Some("tok-gw"), None).await.unwrap();
    let gateway_api = [
        (
            "v1/gateway/disconnect",
            r#"{"device":"A"}"#,
            vec!["disconnect"],
        ),
        // A and B were not announced: each is connected just before its first message.
        (
            "v1/gateway/attributes",
            r#"{"A":{"fw":"1"},"B":{"fw":"2"}}"#,
            vec!["connect", "connect", "attributes", "attributes"],
        ),
        (
            "v1/gateway/attributes/request",
            r#"{"id":1,"device":"A","client":true,"key":"fw"}"#,
            vec!["attribute_request"],
        ),
        (
            "v1/gateway/attributes/request",
            r#"{"id":2,"device":"A","client":["fw"],"shared":["x"]}"#,
            vec!["attribute_request"],
        ),
        (
            "v1/gateway/rpc",
            r#"{"device":"A","id":1,"data":{"ok":true}}"#,
            vec!["rpc_response"],
        ),
        (
            "v1/gateway/claim",
            r#"{"A":{"secretKey":"s"}}"#,
            vec!["claim"],
        ),
    ];
    for (topic, body, want) in gateway_api {
        gw.publish(topic, body).await.unwrap();
        for w in want {
            let env = raw.next_envelope().await;
            assert_eq!(kind(&env), w, "{topic}");
            assert_eq!(env.via, Some(dev("tbgw")), "{topic}");
        }
    }
    // And the gateway's own data through the device API.
    gw.publish("v1/devices/me/telemetry", r#"{"uptime":5}"#)
        .await
        .unwrap();
    let env = raw.next_envelope().await;
    assert_eq!(
        (kind(&env), env.device, env.via),
        ("telemetry", DeviceRef::Id(dev("tbgw")), None)
    );
}

#[ntex::test]
async fn an_application_can_have_its_own_rate_limits() {
    let mut cfg = Rig::config();
    let app = fluxgate_mqtt_front::RateLimits {
        per_connection: fluxgate_mqtt_front::Rate {
            messages: 2,
            window_secs: 60,
        },
        ..Default::default()
    };
    cfg.application_rate_limits.insert(APP.into(), app);
    let rig = Rig::memory(cfg).await;
    let _events = rig.tap(Topic::DeviceEvents);
    let _raw = rig.tap(Topic::IngestRaw);
    let c = v3(rig.addr, "dev1", Some("key-dev1"), Some(SECRET))
        .await
        .unwrap();
    c.publish("losant/dev1/state", &state(1)).await.unwrap();
    c.publish("losant/dev1", &state(2)).await.unwrap();
    assert!(c.publish("losant/dev1/state", &state(3)).await.is_err());
    assert!(c.closed().await);
    let m = rig.metrics().await;
    assert!(
        m.contains(r#"fluxgate_mqtt_front_rate_limited_total{limit="connection"} 1"#),
        "{m}"
    );
}

/// Broadcast records a front cannot read (a delivery that is not one, a custom-topic
/// message without its MQTT topic) are counted by topic and skipped; the good records
/// around them still arrive.
#[ntex::test]
async fn unreadable_broadcast_records_are_counted_and_skipped() {
    let rig = Rig::memory(Rig::config()).await;
    let _events = rig.tap(Topic::DeviceEvents);
    let mut sub = v5(rig.addr, "dev2", Some("key-all"), Some(SECRET))
        .await
        .unwrap();
    assert_eq!(
        sub.subscribe("plant/+/temp").await,
        vec![v5::codec::SubscribeAckReason::GrantedQos1]
    );
    rig.produce(Topic::Deliveries, "app1/dev2", b"not a delivery".to_vec())
        .await;
    rig.produce(Topic::MqttCustom, "app1", b"21.5".to_vec())
        .await;
    let publisher = v3(rig.addr, "dev1", Some("key-all"), Some(SECRET))
        .await
        .unwrap();
    publisher.publish("plant/8/temp", "22").await.unwrap();
    let (topic, payload) = recv(&mut sub.inbox).await;
    assert_eq!((topic.as_str(), &payload[..]), ("plant/8/temp", &b"22"[..]));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let m = rig.metrics().await;
        let counted = ["deliveries", "mqtt_custom"].iter().all(|t| {
            m.contains(&format!(
                "fluxgate_mqtt_front_undecodable_total{{topic=\"{t}\"}} 1"
            ))
        });
        if counted {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
