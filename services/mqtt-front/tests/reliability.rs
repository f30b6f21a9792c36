//! What the front promises about acknowledgements, checked with raw MQTT bytes over real
//! sockets (the behaviour is about the wire): a publish the server has read is handled
//! even when the client's DISCONNECT rides in the same segment; a refused publish never
//! takes the connection (or the acks behind it) down with it; and when the server closes a
//! connection that is still pipelining, what it stored is exactly what it acknowledged.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use fluxgate_bus::Topic;
use fluxgate_model::{Body, Envelope, Value};
use fluxgate_mqtt_front::{FrontConfig, Rate};
use ntex_mqtt::v5;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use fluxgate_testkit::raw;
use raw::{Got, V};

/// The front's config for these tests: no rate limits unless a test sets them.
fn unlimited() -> FrontConfig {
    let mut cfg = Rig::config();
    let off = Rate {
        messages: 0,
        window_secs: 1,
    };
    cfg.rate_limits.per_topic = off;
    cfg.rate_limits.per_connection = off;
    cfg.rate_limits.new_connections_per_application = off;
    cfg
}

fn state_n(n: u64) -> Vec<u8> {
    format!(r#"{{"data":{{"n":{n}}}}}"#).into_bytes()
}

/// The `n` of every state the tap has (until it is quiet for 700 ms).
async fn stored_ns(tap: &mut Tap) -> Vec<u64> {
    let mut ns = Vec::new();
    while let Some((_, payload)) = tap.next_within(700).await {
        let env = Envelope::from_bytes(&payload).unwrap();
        let Body::Telemetry { samples, .. } = env.body else {
            panic!("not telemetry: {env:?}")
        };
        match samples[0].values.get("n") {
            Some(Value::Integer(n)) => ns.push(*n as u64),
            other => panic!("no n: {other:?}"),
        }
    }
    ns
}

/// Reads packets until the server closes the socket (or 10 s pass); `on_ack` is called for
/// every PUBACK as it arrives.
async fn read_to_end_with(
    s: &mut tokio::net::tcp::OwnedReadHalf,
    on_ack: impl Fn(),
) -> (Vec<Got>, bool) {
    let mut buf = Vec::new();
    let mut got = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => return (got, false),
            Ok(Ok(0)) => return (got, true),
            Ok(Ok(n)) => {
                buf.extend_from_slice(&chunk[..n]);
                for g in raw::parse(&mut buf) {
                    if matches!(g, Got::PubAck(..)) {
                        on_ack();
                    }
                    got.push(g);
                }
            }
            // A reset: what was read so far is what the client got.
            Ok(Err(_)) => return (got, true),
        }
    }
}

async fn read_to_end(s: &mut tokio::net::tcp::OwnedReadHalf) -> (Vec<Got>, bool) {
    read_to_end_with(s, || {}).await
}

fn acked(got: &[Got]) -> BTreeSet<u16> {
    got.iter()
        .filter_map(|g| match g {
            Got::PubAck(id, 0) => Some(*id),
            _ => None,
        })
        .collect()
}

#[ntex::test]
async fn a_publish_followed_by_disconnect_in_one_write_is_stored_every_time() {
    let rig = Rig::memory(unlimited()).await;
    let mut events = rig.tap(Topic::DeviceEvents);
    let mut raw_tap = rig.tap(Topic::IngestRaw);
    const TIMES: u64 = 100;
    for v in [V::V3, V::V5] {
        for n in 0..TIMES {
            // Even rounds: CONNECT + PUBLISH (QoS 0) + DISCONNECT in one write. Odd rounds:
            // CONNECT, wait for the CONNACK, then PUBLISH and close the socket without a
            // DISCONNECT, as a client that just exits does.
            let publish = raw::publish(v, "losant/dev1/state", None, &state_n(n));
            let connect = raw::connect(v, "dev1", "key-dev1", SECRET);
            let (mut rd, mut wr) = TcpStream::connect(rig.addr).await.unwrap().into_split();
            let mut got = Vec::new();
            if n % 2 == 0 {
                wr.write_all(&[connect, publish, raw::disconnect()].concat())
                    .await
                    .unwrap();
            } else {
                wr.write_all(&connect).await.unwrap();
                let mut buf = vec![0u8; 64];
                let k = rd.read(&mut buf).await.unwrap();
                buf.truncate(k);
                got.extend(raw::parse(&mut buf));
                wr.write_all(&publish).await.unwrap();
                wr.shutdown().await.unwrap();
            }
            let (rest, closed) = read_to_end(&mut rd).await;
            got.extend(rest);
            assert!(closed, "{v:?} round {n}: the server did not close: {got:?}");
            assert_eq!(got.first(), Some(&Got::ConnAck(0)), "{v:?} round {n}");
            // The DISCONNECT read right behind the publish is the client's; a socket
            // closed without one is a lost connection.
            let reason = loop {
                let e = events.next_envelope().await;
                if let Body::Disconnect { reason, .. } = e.body {
                    break reason.unwrap_or_default();
                }
            };
            let expected = if n % 2 == 0 {
                "client disconnect"
            } else {
                "connection lost"
            };
            assert_eq!(reason, expected, "{v:?} round {n}: the disconnect's reason");
        }
        let mut ns = stored_ns(&mut raw_tap).await;
        ns.sort_unstable();
        eprintln!("one-shot QoS 0, {v:?}: {} of {TIMES} stored", ns.len());
        assert_eq!(
            ns,
            (0..TIMES).collect::<Vec<_>>(),
            "{v:?}: every publish read before the DISCONNECT is stored, once"
        );
    }
}

#[ntex::test]
async fn a_refused_100_kb_string_does_not_close_a_v5_connection() {
    let rig = Rig::memory(unlimited()).await;
    let _events = rig.tap(Topic::DeviceEvents);
    let _rejected = rig.tap(Topic::IngestRejected);
    let mut raw_tap = rig.tap(Topic::IngestRaw);
    let c = v5(rig.addr, "dev1", Some("key-dev1"), Some(SECRET))
        .await
        .unwrap();
    // `data` must be an object: the JSON reader's error quotes the 100 KB string.
    let long = format!(r#"{{"data":"{}"}}"#, "x".repeat(100 * 1024));
    assert_eq!(
        c.publish("losant/dev1/state", long.as_bytes()).await,
        Ok(v5::codec::PublishAckReason::PayloadFormatInvalid)
    );
    assert_eq!(
        c.publish("losant/dev1/state", &state_n(7)).await,
        Ok(v5::codec::PublishAckReason::Success),
        "the next publish on the same connection is acknowledged"
    );
    assert_eq!(stored_ns(&mut raw_tap).await, vec![7]);
    let m = rig.metrics().await;
    assert!(
        m.contains(r#"kind="state",outcome="malformed"} 1"#),
        "refused and counted: {m}"
    );
}

/// A JSON document `depth` levels deep (arrays inside an object).
fn nested(depth: usize) -> String {
    format!(
        r#"{{"deep":{}1{}}}"#,
        "[".repeat(depth - 1),
        "]".repeat(depth - 1)
    )
}

#[ntex::test]
async fn too_deep_json_is_refused_and_never_acknowledged() {
    let rig = Rig::memory(unlimited()).await;
    let _events = rig.tap(Topic::DeviceEvents);
    let _rejected = rig.tap(Topic::IngestRejected);
    let mut raw_tap = rig.tap(Topic::IngestRaw);
    let deep = nested(125);
    // v5, ThingsBoard telemetry and a Losant state: PUBACK 0x99, connection kept.
    let tb = v5(rig.addr, "tb1", Some("tok-tb1"), None).await.unwrap();
    assert_eq!(
        tb.publish("v1/devices/me/telemetry", deep.as_bytes()).await,
        Ok(v5::codec::PublishAckReason::PayloadFormatInvalid)
    );
    let c = v5(rig.addr, "dev1", Some("key-dev1"), Some(SECRET))
        .await
        .unwrap();
    let state = format!(r#"{{"data":{deep}}}"#);
    assert_eq!(
        c.publish("losant/dev1/state", state.as_bytes()).await,
        Ok(v5::codec::PublishAckReason::PayloadFormatInvalid)
    );
    // At the limit (32 levels by default), accepted.
    let ok = format!(r#"{{"data":{}}}"#, nested(31));
    assert_eq!(
        c.publish("losant/dev1/state", ok.as_bytes()).await,
        Ok(v5::codec::PublishAckReason::Success)
    );
    // v3 with the default `v3_on_malformed = close`: no PUBACK, the connection closes.
    let v3c = v3(rig.addr, "dev2", Some("key-all"), Some(SECRET))
        .await
        .unwrap();
    assert!(v3c.publish("losant/dev2/state", &state).await.is_err());
    assert!(v3c.closed().await);
    // Only the one within the limit reached the bus, and it decodes.
    let env = raw_tap.next_envelope().await;
    assert!(matches!(env.body, Body::Telemetry { .. }));
    assert!(raw_tap.quiet(500).await);
    let m = rig.metrics().await;
    assert!(m.contains(r#"outcome="malformed"} "#), "{m}");
}

/// Pipelines QoS 1 states `1..=count` on one connection, with at most 10 unacknowledged
/// (under the front's receive maximum, as paho's and MQTT.js's in-flight windows keep),
/// until the server closes it; returns what the client got. `around(id)` may replace a
/// publish with other bytes.
async fn pipeline(
    rig: &Rig,
    v: V,
    count: u16,
    around: impl Fn(u16) -> Option<Vec<u8>>,
) -> (
    tokio::task::JoinHandle<(Vec<Got>, bool)>,
    tokio::task::JoinHandle<()>,
) {
    let (mut rd, mut wr) = TcpStream::connect(rig.addr).await.unwrap().into_split();
    wr.write_all(&raw::connect(v, "dev1", "key-dev1", SECRET))
        .await
        .unwrap();
    let packets: Vec<Vec<u8>> = (1..=count)
        .map(|id| {
            around(id).unwrap_or_else(|| {
                raw::publish(v, "losant/dev1/state", Some(id), &state_n(u64::from(id)))
            })
        })
        .collect();
    let window = std::sync::Arc::new(tokio::sync::Semaphore::new(10));
    let w = window.clone();
    let reader = tokio::spawn(async move { read_to_end_with(&mut rd, || w.add_permits(1)).await });
    let writer = tokio::spawn(async move {
        for p in packets {
            window.acquire().await.unwrap().forget();
            if wr.write_all(&p).await.is_err() {
                return; // the server closed
            }
        }
        // Keep the socket open: the server is the one to close.
        tokio::time::sleep(Duration::from_secs(10)).await;
    });
    (reader, writer)
}

fn as_ids(ns: &[u64]) -> BTreeSet<u16> {
    ns.iter().map(|n| *n as u16).collect()
}

#[ntex::test]
async fn shutdown_under_a_pipelining_client_acks_exactly_what_it_stored() {
    let mut rig = Rig::memory(unlimited()).await;
    let _events = rig.tap(Topic::DeviceEvents);
    // A slow bus: acks come 5 ms after each record, so some are always outstanding.
    let mut raw_tap = rig.slow_tap(Topic::IngestRaw, 5);
    let (reader, writer) = pipeline(&rig, V::V5, 20_000, |_| None).await;
    // Let some go through, then stop the front while the client is still sending.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let front = rig.front.take().unwrap();
    tokio::time::timeout(Duration::from_secs(30), front.shutdown())
        .await
        .expect("front stopped");
    let (got, closed) = reader.await.unwrap();
    writer.abort();
    assert!(closed);
    let stored = as_ids(&stored_ns(&mut raw_tap).await);
    let acks = acked(&got);
    eprintln!(
        "shutdown under pipelining: {} stored, {} acked, last packet {:?}",
        stored.len(),
        acks.len(),
        got.last()
    );
    assert!(!acks.is_empty(), "nothing went through: {got:?}");
    assert_eq!(
        acks.len(),
        stored.len(),
        "acked {} but stored {}",
        acks.len(),
        stored.len()
    );
    assert_eq!(acks, stored);
    assert_eq!(
        got.last(),
        Some(&Got::Disconnect(0x8B)),
        "DISCONNECT 0x8B (server shutting down) after the acks"
    );
}

#[ntex::test]
async fn a_rate_limit_trip_acks_what_it_stored() {
    let mut cfg = unlimited();
    cfg.rate_limits.per_topic = Rate {
        messages: 10,
        window_secs: 60,
    };
    let rig = Rig::memory(cfg).await;
    let _events = rig.tap(Topic::DeviceEvents);
    // A slow bus: the publishes before the trip are still awaiting their acks.
    let mut raw_tap = rig.slow_tap(Topic::IngestRaw, 20);
    let (reader, writer) = pipeline(&rig, V::V5, 50, |_| None).await;
    let (got, closed) = reader.await.unwrap();
    writer.abort();
    assert!(closed);
    let stored = as_ids(&stored_ns(&mut raw_tap).await);
    eprintln!(
        "rate-limit trip: {} stored, {} acked, last packet {:?}",
        stored.len(),
        acked(&got).len(),
        got.last()
    );
    assert_eq!(stored, (1..=10).collect::<BTreeSet<u16>>());
    assert_eq!(acked(&got), stored, "every stored publish acked: {got:?}");
    assert_eq!(
        got.last(),
        Some(&Got::Disconnect(0x96)),
        "message rate too high"
    );
}

#[ntex::test]
async fn a_refused_v3_publish_closes_only_after_the_acks_of_the_valid_ones() {
    let rig = Rig::memory(unlimited()).await;
    let _events = rig.tap(Topic::DeviceEvents);
    let _rejected = rig.tap(Topic::IngestRejected);
    let mut raw_tap = rig.tap(Topic::IngestRaw);
    // 7 valid, one malformed (id 8), 7 valid, all in flight at once.
    let bad = raw::publish(V::V3, "losant/dev1/state", Some(8), b"[1,2");
    let (reader, writer) = pipeline(&rig, V::V3, 15, |id| (id == 8).then(|| bad.clone())).await;
    let (got, closed) = reader.await.unwrap();
    writer.abort();
    assert!(closed, "v3_on_malformed = close");
    let stored = as_ids(&stored_ns(&mut raw_tap).await);
    let acks = acked(&got);
    eprintln!("refused v3 publish: stored {stored:?}, acked {acks:?}, closed {closed}");
    assert!(
        (1..=7).all(|id| stored.contains(&id)),
        "the publishes before the refused one are stored: {stored:?}"
    );
    assert!(
        !acks.contains(&8),
        "the refused publish is not acknowledged"
    );
    assert_eq!(acks, stored, "acked = stored");
}

/// An MQTT 5 client that pipelines more QoS 1 publishes than a small Receive Maximum (as
/// MQTT.js, which keeps no limit, and paho 2, which keeps 20, do when they flush readings
/// buffered offline) gets every one acknowledged and stored: the front slows its socket
/// down instead of answering DISCONNECT 0x93 and dropping what was in flight.
#[ntex::test]
async fn a_v5_burst_past_a_small_receive_maximum_is_all_acked_and_stored() {
    let rig = Rig::memory(unlimited()).await;
    let _events = rig.tap(Topic::DeviceEvents);
    let mut raw_tap = rig.tap(Topic::IngestRaw);
    const N: u16 = 200;
    let (mut rd, mut wr) = TcpStream::connect(rig.addr).await.unwrap().into_split();
    let mut burst = raw::connect(V::V5, "dev1", "key-dev1", SECRET);
    for id in 1..=N {
        let p = raw::publish(
            V::V5,
            "losant/dev1/state",
            Some(id),
            &state_n(u64::from(id)),
        );
        burst.extend(p);
    }
    wr.write_all(&burst).await.unwrap();
    let mut buf = Vec::new();
    let mut got = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while acked(&got).len() < usize::from(N) {
        match tokio::time::timeout_at(deadline, rd.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => {
                buf.extend_from_slice(&chunk[..n]);
                got.extend(raw::parse(&mut buf));
            }
            other => panic!("closed or timed out ({other:?}) after {got:?}"),
        }
    }
    assert!(
        !got.iter().any(|g| matches!(g, Got::Disconnect(_))),
        "{got:?}"
    );
    wr.write_all(&raw::disconnect()).await.unwrap();
    let mut ns = stored_ns(&mut raw_tap).await;
    ns.sort_unstable();
    assert_eq!(ns, (1..=u64::from(N)).collect::<Vec<_>>());
}
