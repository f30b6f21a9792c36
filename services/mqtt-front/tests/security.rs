//! Issue 22: what no client may do to the front, over real sockets (raw MQTT packets, so
//! the reason codes the front sends are seen as sent).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use fluxgate_bus::{OutRecord, Topic};
use fluxgate_model::RegistryChange;
use fluxgate_testkit::raw::{self, Got, V, Wire};

fn unlimited() -> fluxgate_mqtt_front::FrontConfig {
    let mut cfg = Rig::config();
    cfg.rate_limits.per_topic.messages = 0;
    cfg.rate_limits.per_connection.messages = 0;
    cfg
}

/// Announces `change` as the API does after writing the registry.
async fn announce(rig: &Rig, change: &RegistryChange) {
    let rec = OutRecord::of(rig.topics.name(Topic::RegistryChanges), change);
    rig.bus.producer().produce(rec).await.unwrap();
}

/// QoS 1 publish of a Losant state (or ThingsBoard telemetry) and its PUBACK code.
async fn publish(w: &mut Wire, v: V, topic: &str, id: u16) -> Result<u8, String> {
    w.send(&raw::publish(v, topic, Some(id), br#"{"data":{"n":1}}"#))
        .await?;
    loop {
        match w.next_within(Duration::from_secs(5)).await? {
            Got::PubAck(got, code) if got == id => return Ok(code),
            Got::PubAck(..) | Got::SubAck(..) | Got::Publish(..) => {}
            other => return Err(format!("{other:?}")),
        }
    }
}

/// What the front does to `w` within 5 s: the DISCONNECT code it sends (v5), then the
/// close; `Ok(None)` when it closes without a DISCONNECT, `Err` when it does neither.
async fn closed_with(w: &mut Wire) -> Result<Option<u8>, String> {
    let mut code = None;
    loop {
        match w.next_within(Duration::from_secs(5)).await {
            Ok(Got::Disconnect(c)) => code = Some(c),
            Ok(_) => {}
            Err(e) if e == "closed" || e.contains("reset") => return Ok(code),
            Err(e) => return Err(format!("still open: {e}")),
        }
    }
}

/// Finding 3: a key deactivated, a token revoked, a device deleted end the live sessions
/// they opened, on the front that holds them (MQTT 5: DISCONNECT 0x87 "not authorized");
/// a change that does not touch a session's credential leaves it alone.
#[ntex::test]
async fn a_revoked_credential_ends_the_session_it_opened() {
    let rig = Rig::memory(unlimited()).await;
    let _events = rig.tap(Topic::DeviceEvents);
    let _raw = rig.tap(Topic::IngestRaw);

    // A Losant device on key-dev1 (v5), another on key-all (v3), a ThingsBoard device (v3).
    let mut d1 = Wire::open(rig.addr, V::V5, "dev1", "key-dev1", SECRET)
        .await
        .unwrap();
    let mut d2 = Wire::open(rig.addr, V::V3, "dev2", "key-all", SECRET)
        .await
        .unwrap();
    let mut tb = Wire::open(rig.addr, V::V3, "tb1", "tok-tb1", "")
        .await
        .unwrap();
    assert_eq!(publish(&mut d1, V::V5, "losant/dev1/state", 1).await, Ok(0));

    // key-dev1 deactivated: dev1's session ends with 0x87; dev2 (another key) stays.
    let mut k = rig
        .store
        .access_key("key-dev1".into())
        .await
        .unwrap()
        .unwrap();
    k.active = false;
    rig.store.put_access_key(k).await.unwrap();
    announce(
        &rig,
        &RegistryChange::AccessKey {
            key: "key-dev1".into(),
        },
    )
    .await;
    assert_eq!(
        closed_with(&mut d1).await,
        Ok(Some(0x87)),
        "dev1 after key-dev1 deactivated"
    );
    assert_eq!(
        publish(&mut d2, V::V3, "losant/dev2/state", 2).await,
        Ok(0),
        "dev2 (key-all) untouched"
    );

    // tb1's tokens revoked: its v3 session is closed.
    let revoked = rig
        .store
        .revoke_device_tokens(tenant(), dev("tb1"))
        .await
        .unwrap();
    assert_eq!(revoked.len(), 1);
    for token_hash in revoked {
        announce(&rig, &RegistryChange::DeviceToken { token_hash }).await;
    }
    assert_eq!(
        closed_with(&mut tb).await,
        Ok(None),
        "tb1 after its token was revoked"
    );

    // dev2 deleted: its session (opened by key-all, still valid) ends too.
    assert!(
        rig.store
            .delete_device(tenant(), dev("dev2"))
            .await
            .unwrap()
    );
    announce(
        &rig,
        &RegistryChange::Device {
            tenant: tenant(),
            device: dev("dev2"),
        },
    )
    .await;
    assert_eq!(
        closed_with(&mut d2).await,
        Ok(None),
        "dev2 after it was deleted"
    );

    // Nor can they come back.
    let mut again = Wire::connect(rig.addr, V::V5, "dev1", "key-dev1", SECRET)
        .await
        .unwrap();
    assert_eq!(again.next().await, Ok(Got::ConnAck(0x87)));
    let metrics = rig.metrics().await;
    assert!(
        metrics.contains("fluxgate_mqtt_front_sessions_revoked_total 3"),
        "{metrics}"
    );
}

/// Reads from `s` until the server closes it; `false` if it is still open after `ms`.
async fn closed_within(s: &mut tokio::net::TcpStream, ms: u64) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

/// Finding 5: a full front refuses a CONNECT at once (MQTT 5 CONNACK 0x97, 3.1.1 CONNACK
/// 3) instead of leaving it hanging, and sockets that never send CONNECT neither count
/// toward `max_connections` nor make the front stop accepting: they are bounded apart,
/// and one past that bound is closed as soon as it is accepted.
#[ntex::test]
async fn a_full_front_refuses_at_once_and_idle_sockets_are_bounded_apart() {
    let mut cfg = unlimited();
    cfg.max_connections = 2;
    cfg.max_pending_connections = 3;
    let rig = Rig::memory(cfg).await;
    let _events = rig.tap(Topic::DeviceEvents);
    let idle = || tokio::net::TcpStream::connect(rig.addr);
    // Two sockets that never send CONNECT.
    let (mut idle1, mut idle2) = (idle().await.unwrap(), idle().await.unwrap());
    // Two sessions fill the front all the same.
    let _a = Wire::open(rig.addr, V::V5, "dev1", "key-all", SECRET)
        .await
        .unwrap();
    let _b = Wire::open(rig.addr, V::V3, "dev2", "key-all", SECRET)
        .await
        .unwrap();
    // A third CONNECT is answered at once, in either version, then closed.
    for (v, code) in [(V::V5, 0x97), (V::V3, 3)] {
        let mut c = Wire::connect(rig.addr, v, "tagged", "key-all", SECRET)
            .await
            .unwrap();
        assert_eq!(
            c.next_within(Duration::from_secs(2)).await,
            Ok(Got::ConnAck(code)),
            "{v:?} CONNECT to a full front"
        );
        assert_eq!(closed_with(&mut c).await, Ok(None));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Idle sockets: a third fits the bound of 3, a fourth is closed at accept.
    let mut idle3 = idle().await.unwrap();
    let mut idle4 = idle().await.unwrap();
    assert!(
        closed_within(&mut idle4, 2_000).await,
        "the 4th idle socket is closed"
    );
    for (n, s) in [(1, &mut idle1), (2, &mut idle2), (3, &mut idle3)] {
        assert!(
            !closed_within(s, 200).await,
            "idle socket {n} stays (CONNECT timeout)"
        );
    }
    let metrics = rig.metrics().await;
    for line in [
        "fluxgate_mqtt_front_sockets_refused_total 1",
        "fluxgate_mqtt_front_connects_total{outcome=\"server_full\"} 2",
        "fluxgate_mqtt_front_sockets 5",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
}

/// Finding 1: a client subscribed at QoS 0 that never reads holds what fits its socket
/// and nothing more: further QoS 0 messages are dropped and counted (memory no longer
/// grows with every message); a command written to it at QoS 0 is reported written at
/// most once (`sent`, never `delivered`), and one dropped is reported not delivered.
#[ntex::test]
async fn a_subscriber_that_never_reads_holds_a_bounded_backlog() {
    use fluxgate_model::{
        Body, CorrelationId, Delivery, Dialect, ENVELOPE_VERSION, MessageId, Outbound,
    };
    let rig = Rig::memory(unlimited()).await;
    let mut events = rig.tap(Topic::DeviceEvents);
    let mut w = Wire::open(rig.addr, V::V3, "dev1", "key-all", SECRET)
        .await
        .unwrap();
    events.next_envelope().await; // connect
    for (id, filter) in [(7, "plant/#"), (8, "losant/dev1/command")] {
        w.send(&raw::subscribe_at(V::V3, id, filter, 0))
            .await
            .unwrap();
        assert_eq!(w.next().await, Ok(Got::SubAck(id, 0)));
    }
    events.next_envelope().await; // subscribed
    let command = |n: i64| Delivery {
        v: ENVELOPE_VERSION,
        id: MessageId::from_parts(1_700_000_000_000 + n as u64, 1),
        tenant: tenant(),
        device: dev("dev1"),
        device_name: None,
        via: None,
        dialect: Dialect::Losant,
        body: Outbound::Command {
            request_id: CorrelationId::Int(n),
            name: "nudge".into(),
            payload: serde_json::json!({"n": n}),
            time_ms: 1_700_000_000_000,
        },
    };
    let outcome = |env: fluxgate_model::Envelope| match env.body {
        Body::DeliveryOutcome {
            delivered,
            at_most_once,
            reason,
            ..
        } => (delivered, at_most_once, reason),
        other => panic!("{other:?}"),
    };
    // While it reads nothing yet, its socket takes a command: written, at most once.
    rig.produce(Topic::Deliveries, "app1/dev1", command(1).to_bytes())
        .await;
    assert_eq!(outcome(events.next_envelope().await), (true, true, None));

    // 3,000 custom-topic messages of 8 KiB (24 MiB) from another front, for the client
    // that never reads.
    const N: usize = 3_000;
    const SIZE: usize = 8 * 1024;
    let payload = vec![b'x'; SIZE];
    for _ in 0..N {
        let mut rec = OutRecord::new(rig.topics.name(Topic::MqttCustom), APP, payload.clone());
        rec.headers.insert("mqtt-topic", "plant/7/alarms");
        rig.bus.producer().produce(rec).await.unwrap();
    }
    let count = |metrics: &str, outcome: &str| -> usize {
        let series = format!("fluxgate_mqtt_front_deliveries_total{{outcome=\"{outcome}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .map_or(0, |v| v.trim().parse().unwrap())
    };
    let (mut sent, mut dropped) = (0, 0);
    for _ in 0..200 {
        let m = rig.metrics().await;
        (sent, dropped) = (count(&m, "sent"), count(&m, "dropped_slow_client"));
        if sent + dropped > N {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "never-reading subscriber: {} written ({} KiB), {dropped} dropped",
        sent - 1,
        (sent - 1) * SIZE / 1024
    );
    assert_eq!(sent + dropped, N + 1, "every message written or dropped");
    assert!(dropped > N / 2, "{dropped} of {N} dropped");
    // What it holds is what the sockets' buffers take (Linux loopback: a few MiB at most).
    assert!((sent - 1) * SIZE <= 16 << 20, "{sent} written");

    // A command now is dropped too, and reported not delivered, with why.
    rig.produce(Topic::Deliveries, "app1/dev1", command(2).to_bytes())
        .await;
    let (delivered, at_most_once, reason) = outcome(events.next_envelope().await);
    assert_eq!((delivered, at_most_once), (false, false));
    assert_eq!(
        reason.as_deref(),
        Some("the client does not read what it is sent")
    );
}

/// Finding 1, `slow_client = "close"`: the session of a client that does not read is
/// closed instead.
#[ntex::test]
async fn a_subscriber_that_never_reads_is_closed_when_so_configured() {
    let mut cfg = unlimited();
    cfg.slow_client = fluxgate_mqtt_front::SlowClient::Close;
    let rig = Rig::memory(cfg).await;
    let _events = rig.tap(Topic::DeviceEvents);
    let mut w = Wire::open(rig.addr, V::V3, "dev1", "key-all", SECRET)
        .await
        .unwrap();
    w.send(&raw::subscribe_at(V::V3, 7, "plant/#", 0))
        .await
        .unwrap();
    assert_eq!(w.next().await, Ok(Got::SubAck(7, 0)));
    let payload = vec![b'x'; 8 * 1024];
    for _ in 0..3_000 {
        let mut rec = OutRecord::new(rig.topics.name(Topic::MqttCustom), APP, payload.clone());
        rec.headers.insert("mqtt-topic", "plant/7/alarms");
        rig.bus.producer().produce(rec).await.unwrap();
    }
    let gone = "fluxgate_mqtt_front_connections{dialect=\"losant\"} 0";
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = rig.metrics().await;
        if metrics.contains(gone) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(metrics.contains(gone), "the session is closed:\n{metrics}");
}

/// Finding 6: a session asking for no keep-alive (0), or for one longer than
/// `max_keepalive_secs`, gets that maximum: silent for 1.5 times it, it is closed
/// (before, a keep-alive of 0 was closed after ntex's 30 s, and 65,535 s kept a silent
/// session for 27 hours).
#[ntex::test]
async fn a_silent_session_is_closed_within_the_longest_keepalive() {
    let mut cfg = unlimited();
    cfg.max_keepalive_secs = 2;
    let rig = Rig::memory(cfg).await;
    let _events = rig.tap(Topic::DeviceEvents);
    let mut open = Vec::new();
    for (v, client, keepalive) in [
        (V::V3, "dev1", 0),
        (V::V3, "dev2", 65_535),
        (V::V5, "tagged", 0),
    ] {
        let connect = raw::connect_keepalive(v, client, "key-all", SECRET, keepalive);
        let mut w = Wire::connect_with(rig.addr, &connect).await.unwrap();
        assert_eq!(w.next().await, Ok(Got::ConnAck(0)), "{client}");
        open.push((client, w));
    }
    let started = std::time::Instant::now();
    for (client, mut w) in open {
        assert_eq!(
            closed_with(&mut w).await.map(|_| ()),
            Ok(()),
            "{client} closed"
        );
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(2_500) && took < Duration::from_secs(5),
        "closed after {took:?} of silence (3 s expected)"
    );
}
