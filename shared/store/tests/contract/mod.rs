//! The store contract, written once for every adapter (`sqlite.rs`; the ScyllaDB adapter
//! and its CQL test double come next).

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use fluxgate_model::{
    Command, DeviceId, DeviceName, MessageId, ReasonCode, Sample, TenantId, Value, Values,
};
use fluxgate_store::*;
use fluxgate_testkit::unique_name;

pub struct Harness {
    pub store: Arc<dyn Store>,
    /// Every text value stored anywhere, for the "no secret in any table" check (`None`
    /// against a real ScyllaDB, where the suite cannot list every cell).
    pub dump: Option<Box<dyn Fn() -> String + Send + Sync>>,
}

const NOW: i64 = 1_700_000_000_000;

fn tenant() -> TenantId {
    TenantId::new(unique_name("app")).unwrap()
}
fn dev(s: &str) -> DeviceId {
    DeviceId::new(s).unwrap()
}
fn vals(pairs: &[(&str, Value)]) -> Values {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}
fn batch(t: &TenantId, d: &str, samples: Vec<(i64, Values)>) -> SampleBatch {
    SampleBatch {
        tenant: t.clone(),
        device: dev(d),
        samples: samples
            .into_iter()
            .map(|(ts_ms, values)| Sample { ts_ms, values })
            .collect(),
    }
}
fn q(t: &TenantId, d: &str, keys: &[&str], limit: u32, order: Order) -> RangeQuery {
    RangeQuery {
        tenant: t.clone(),
        device: dev(d),
        keys: keys.iter().map(|k| k.to_string()).collect(),
        from_ms: 0,
        to_ms: i64::MAX,
        limit,
        order,
        page_token: None,
    }
}

async fn all_pages(s: &dyn Store, mut query: RangeQuery) -> Vec<Point> {
    let mut out = Vec::new();
    loop {
        let page = s.query(query.clone()).await.unwrap();
        assert!(page.points.len() <= query.limit as usize);
        out.extend(page.points);
        match page.next {
            Some(t) => query.page_token = Some(t),
            None => return out,
        }
    }
}

/// A reachable store answers the readiness ping.
pub async fn ping_answers(h: &Harness) {
    h.store.ping().await.unwrap();
}

/// Writing the same point twice overwrites it; nothing is duplicated.
pub async fn idempotent_overwrite(h: &Harness) {
    let s = &*h.store;
    let t = tenant();
    let b = batch(
        &t,
        "d1",
        vec![(
            1000,
            vals(&[("temp", Value::Float(20.5)), ("on", Value::Bool(true))]),
        )],
    );
    assert_eq!(s.write_samples(vec![b.clone()]).await.unwrap(), 2);
    assert_eq!(
        s.write_samples(vec![b]).await.unwrap(),
        2,
        "a redelivered batch"
    );
    s.write_samples(vec![batch(
        &t,
        "d1",
        vec![(1000, vals(&[("temp", Value::Float(21.0))]))],
    )])
    .await
    .unwrap();
    let points = all_pages(s, q(&t, "d1", &["temp", "on"], 100, Order::Asc)).await;
    assert_eq!(points.len(), 2, "{points:?}");
    let temp = points.iter().find(|p| p.key == "temp").unwrap();
    assert_eq!((temp.ts_ms, &temp.value), (1000, &Value::Float(21.0)));
}

/// Every value type comes back as it went in.
pub async fn value_types_round_trip(h: &Harness) {
    let s = &*h.store;
    let t = tenant();
    let values = vals(&[
        ("i", Value::Integer(-7)),
        ("f", Value::Float(2.0)),
        ("s", Value::String("72".into())),
        ("b", Value::Bool(false)),
        ("j", Value::Json(serde_json::json!({"a": [1, "x", null]}))),
    ]);
    s.write_samples(vec![batch(&t, "d", vec![(5, values.clone())])])
        .await
        .unwrap();
    let latest = s.latest(t.clone(), dev("d"), None).await.unwrap();
    let back: Values = latest.into_iter().map(|p| (p.key, p.value)).collect();
    assert_eq!(back, values);
}

/// The latest value never moves back in time, whatever order writes come in.
pub async fn latest_never_goes_back(h: &Harness) {
    let s = &*h.store;
    let t = tenant();
    s.write_samples(vec![batch(
        &t,
        "d",
        vec![(200, vals(&[("k", Value::Integer(2))]))],
    )])
    .await
    .unwrap();
    s.write_samples(vec![batch(
        &t,
        "d",
        vec![(100, vals(&[("k", Value::Integer(1))]))],
    )])
    .await
    .unwrap();
    let l = s
        .latest(t.clone(), dev("d"), Some(vec!["k".into()]))
        .await
        .unwrap();
    assert_eq!((l[0].ts_ms, &l[0].value), (200, &Value::Integer(2)));
    s.write_samples(vec![batch(
        &t,
        "d",
        vec![(300, vals(&[("k", Value::Integer(3))]))],
    )])
    .await
    .unwrap();
    let l = s.latest(t.clone(), dev("d"), None).await.unwrap();
    assert_eq!((l[0].ts_ms, &l[0].value), (300, &Value::Integer(3)));
    // Out of order inside one batch too.
    let two = vec![
        (500, vals(&[("k", Value::Integer(5))])),
        (400, vals(&[("k", Value::Integer(4))])),
    ];
    s.write_samples(vec![batch(&t, "d", two)]).await.unwrap();
    let l = s.latest(t.clone(), dev("d"), None).await.unwrap();
    assert_eq!((l[0].ts_ms, &l[0].value), (500, &Value::Integer(5)));
    // Every point is still in the series.
    assert_eq!(
        all_pages(s, q(&t, "d", &["k"], 10, Order::Asc)).await.len(),
        5
    );
}

/// Pages cover the window exactly once, in order, both directions.
pub async fn range_query_pages(h: &Harness) {
    let s = &*h.store;
    let t = tenant();
    let samples: Vec<(i64, Values)> = (0..25)
        .map(|i| {
            (
                1000 + i * 10,
                vals(&[("a", Value::Integer(i)), ("b", Value::Integer(-i))]),
            )
        })
        .collect();
    s.write_samples(vec![
        batch(&t, "d", samples),
        batch(&t, "other", vec![(1000, vals(&[("a", Value::Integer(9))]))]),
    ])
    .await
    .unwrap();
    let asc = all_pages(s, q(&t, "d", &["a", "b"], 7, Order::Asc)).await;
    assert_eq!(asc.len(), 50);
    assert!(
        asc.windows(2)
            .all(|w| (w[0].ts_ms, &w[0].key) < (w[1].ts_ms, &w[1].key))
    );
    let desc = all_pages(s, q(&t, "d", &["a", "b"], 4, Order::Desc)).await;
    let mut rev = asc.clone();
    rev.reverse();
    assert_eq!(desc, rev);
    // No keys named: every key of the device (and none of another device's).
    assert_eq!(all_pages(s, q(&t, "d", &[], 7, Order::Asc)).await, asc);
    let other = all_pages(s, q(&t, "other", &[], 7, Order::Asc)).await;
    assert_eq!(other.len(), 1);
    // Window [1050, 1100) of key a only.
    let mut w = q(&t, "d", &["a"], 100, Order::Asc);
    w.from_ms = 1050;
    w.to_ms = 1100;
    let got: Vec<i64> = all_pages(s, w).await.iter().map(|p| p.ts_ms).collect();
    assert_eq!(got, vec![1050, 1060, 1070, 1080, 1090]);
    let mut bad = q(&t, "d", &["a"], 5, Order::Asc);
    bad.page_token = Some("not-a-token".into());
    assert_eq!(s.query(bad).await.unwrap_err(), StoreError::BadPageToken);
}

/// An application's TTL removes its time series and logs; others are kept.
/// The application TTL of [`ttl_expiry`]: long enough for a loaded real database to take
/// the writes, short enough for a test.
const TTL_SECS: u32 = 3;

pub async fn ttl_expiry(h: &Harness) {
    let s = &*h.store;
    let short = tenant();
    let forever = tenant();
    s.put_application(Application {
        id: short.clone(),
        name: "short".into(),
        ttl_secs: Some(TTL_SECS),
        created_ms: NOW,
    })
    .await
    .unwrap();
    s.put_application(Application {
        id: forever.clone(),
        name: "forever".into(),
        ttl_secs: None,
        created_ms: NOW,
    })
    .await
    .unwrap();
    // A real database under load may take a while to take the writes: the clock starts
    // before them, and the data is checked to be there only while it cannot have expired.
    let written = tokio::time::Instant::now();
    for t in [&short, &forever] {
        s.write_samples(vec![batch(
            t,
            "d",
            vec![(NOW, vals(&[("k", Value::Integer(1))]))],
        )])
        .await
        .unwrap();
        s.log_connection(ConnectionEvent {
            tenant: t.clone(),
            device: dev("d"),
            at_ms: NOW,
            connected: true,
            front: None,
            remote_addr: None,
            reason: None,
            via: None,
        })
        .await
        .unwrap();
    }
    let before = s.latest(short.clone(), dev("d"), None).await.unwrap();
    let ttl = Duration::from_secs(u64::from(TTL_SECS));
    if written.elapsed() < ttl {
        assert_eq!(before.len(), 1, "expired before its TTL");
    } else {
        eprintln!("ttl_expiry: the writes took longer than the TTL; presence not checked");
    }
    tokio::time::sleep_until(written + ttl + Duration::from_millis(1300)).await;
    assert!(
        s.latest(short.clone(), dev("d"), None)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        all_pages(s, q(&short, "d", &["k"], 10, Order::Asc))
            .await
            .is_empty()
    );
    assert!(
        s.connection_log(short.clone(), dev("d"), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.latest(forever.clone(), dev("d"), None)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        s.connection_log(forever.clone(), dev("d"), 10)
            .await
            .unwrap()
            .len(),
        1
    );
}

/// Two validators seeing a new ThingsBoard device at once create exactly one.
pub async fn auto_create_race(h: &Harness) {
    let t = tenant();
    let name = DeviceName::new("Device A").unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (s, t, name) = (h.store.clone(), t.clone(), name.clone());
        tasks.push(tokio::spawn(async move {
            let how = AutoCreate {
                profile: "Sensor".into(),
                gateway: Some(dev("gw1")),
                now_ms: NOW,
            };
            s.device_by_name(t, name, how).await.unwrap()
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    assert_eq!(results.iter().filter(|r| r.created).count(), 1);
    let first = &results[0].device;
    assert!(results.iter().all(|r| r.device.id == first.id));
    assert_eq!(first.profile.as_deref(), Some("Sensor"));
    assert_eq!(first.name, "Device A");
    // Bound to the gateway that named it.
    assert_eq!(first.kind, DeviceKind::Peripheral);
    assert_eq!(
        first.peripheral_policy,
        Some(PeripheralPolicy::SpecificGateway(dev("gw1")))
    );
    let listed = h.store.devices(t.clone(), None, 100).await.unwrap();
    assert_eq!(listed.len(), 1);
    // A rename keeps the id; the new name maps to it.
    let mut renamed = first.clone();
    renamed.name = "Device A2".into();
    h.store.put_device(renamed).await.unwrap();
    let again = h
        .store
        .device_by_name(
            t.clone(),
            DeviceName::new("Device A2").unwrap(),
            AutoCreate {
                profile: "x".into(),
                gateway: None,
                now_ms: NOW,
            },
        )
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.device.id, first.id);
}

/// Credentials are stored and found by hash; the secret itself is nowhere.
pub async fn secrets_are_only_hashed(h: &Harness) {
    let s = &*h.store;
    let t = tenant();
    let secret = format!("secret-{}", unique_name("s"));
    let token = format!("token-{}", unique_name("t"));
    s.put_access_key(AccessKey {
        key: unique_name("key"),
        tenant: t.clone(),
        secret_hash: hash_secret(&secret),
        scope: KeyScope::Tags(vec!["floor-1".into()]),
        custom_topics: true,
        active: true,
        created_ms: NOW,
    })
    .await
    .unwrap();
    s.put_device_token(DeviceToken {
        token_hash: hash_secret(&token),
        tenant: t.clone(),
        device: dev("tb1"),
    })
    .await
    .unwrap();
    let found = s.device_token(hash_secret(&token)).await.unwrap().unwrap();
    assert_eq!(found.device, dev("tb1"));
    let api = format!("api-{}", unique_name("t"));
    let api_token = ApiToken {
        token_hash: hash_secret(&api),
        tenant: t.clone(),
        scope: ApiScope::Write,
        name: "ci".into(),
        created_ms: NOW,
    };
    s.put_api_token(api_token.clone()).await.unwrap();
    assert_eq!(
        s.api_token(hash_secret(&api)).await.unwrap(),
        Some(api_token)
    );
    assert!(s.delete_api_token(hash_secret(&api)).await.unwrap());
    assert!(!s.delete_api_token(hash_secret(&api)).await.unwrap());
    assert_eq!(s.api_token(hash_secret(&api)).await.unwrap(), None);
    assert!(
        s.device_token(hash_secret("wrong"))
            .await
            .unwrap()
            .is_none()
    );
    if let Some(dump) = &h.dump {
        let everything = dump();
        assert!(
            everything.contains(&hash_secret(&secret)),
            "the dump sees the tables"
        );
        assert!(!everything.contains(&secret) && !everything.contains(&token));
    }
    // Revoking a device's tokens: each is gone, and their hashes come back to announce.
    let second = format!("tok2-{}", unique_name("t"));
    s.put_device_token(DeviceToken {
        token_hash: hash_secret(&second),
        tenant: t.clone(),
        device: dev("tb1"),
    })
    .await
    .unwrap();
    let mut revoked = s.revoke_device_tokens(t.clone(), dev("tb1")).await.unwrap();
    revoked.sort();
    let mut want = vec![hash_secret(&token), hash_secret(&second)];
    want.sort();
    assert_eq!(revoked, want);
    assert!(s.device_token(hash_secret(&token)).await.unwrap().is_none());
    assert!(
        s.device_token(hash_secret(&second))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        s.revoke_device_tokens(t.clone(), dev("tb1"))
            .await
            .unwrap()
            .is_empty()
    );
}

/// Registry records round-trip; deleting a device removes what hangs off it.
pub async fn registry_round_trips(h: &Harness) {
    let s = &*h.store;
    let t = tenant();
    s.put_application(Application {
        id: t.clone(),
        name: "App".into(),
        ttl_secs: Some(3600),
        created_ms: NOW,
    })
    .await
    .unwrap();
    assert_eq!(
        s.application(t.clone()).await.unwrap().unwrap().ttl_secs,
        Some(3600)
    );
    let gw = Device {
        tenant: t.clone(),
        id: dev("gw"),
        name: "Gateway".into(),
        kind: DeviceKind::Gateway,
        peripheral_policy: None,
        tags: vec!["floor-1".into()],
        profile: None,
        created_ms: NOW,
        updated_ms: NOW,
    };
    let p = Device {
        id: dev("p1"),
        name: "Peripheral".into(),
        kind: DeviceKind::Peripheral,
        peripheral_policy: Some(PeripheralPolicy::SpecificGateway(dev("gw"))),
        tags: vec![],
        ..gw.clone()
    };
    s.put_device(gw.clone()).await.unwrap();
    s.put_device(p.clone()).await.unwrap();
    assert_eq!(
        s.device(t.clone(), dev("p1")).await.unwrap(),
        Some(p.clone())
    );
    assert!(p.peripheral_policy.as_ref().unwrap().allows(&dev("gw")));
    assert!(!p.peripheral_policy.as_ref().unwrap().allows(&dev("other")));
    let page1 = s.devices(t.clone(), None, 1).await.unwrap();
    let page2 = s
        .devices(t.clone(), Some(page1[0].id.clone()), 1)
        .await
        .unwrap();
    assert_eq!((page1[0].id.as_str(), page2[0].id.as_str()), ("gw", "p1"));

    let key = unique_name("key");
    s.put_access_key(AccessKey {
        key: key.clone(),
        tenant: t.clone(),
        secret_hash: hash_secret("x"),
        scope: KeyScope::Devices(vec![dev("gw")]),
        custom_topics: false,
        active: false,
        created_ms: NOW,
    })
    .await
    .unwrap();
    let k = s.access_key(key).await.unwrap().unwrap();
    assert!(!k.active);
    assert_eq!(k.scope, KeyScope::Devices(vec![dev("gw")]));

    let defs = vec![
        AttributeDef {
            name: "temp".into(),
            kind: AttributeType::Number,
        },
        AttributeDef {
            name: "loc".into(),
            kind: AttributeType::Gps,
        },
    ];
    s.put_attribute_defs(t.clone(), dev("p1"), defs)
        .await
        .unwrap();
    let got = s.attribute_defs(t.clone(), dev("p1")).await.unwrap();
    assert_eq!(
        got.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
        ["loc", "temp"]
    );

    s.put_attributes(
        t.clone(),
        dev("p1"),
        AttributeScope::Client,
        vals(&[("fw", "1.0".into()), ("n", Value::Integer(1))]),
        10,
    )
    .await
    .unwrap();
    s.put_attributes(
        t.clone(),
        dev("p1"),
        AttributeScope::Client,
        vals(&[("fw", "0.9".into())]),
        5,
    )
    .await
    .unwrap();
    s.put_attributes(
        t.clone(),
        dev("p1"),
        AttributeScope::Shared,
        vals(&[("target", Value::Float(21.5))]),
        10,
    )
    .await
    .unwrap();
    let client = s
        .attributes(t.clone(), dev("p1"), AttributeScope::Client, None)
        .await
        .unwrap();
    assert_eq!(
        client["fw"],
        Value::String("1.0".into()),
        "an older write does not win"
    );
    let only = s
        .attributes(
            t.clone(),
            dev("p1"),
            AttributeScope::Shared,
            Some(vec!["target".into(), "none".into()]),
        )
        .await
        .unwrap();
    assert_eq!(only.len(), 1);
    // What changed after a moment: written later than it, by its own timestamp.
    s.put_attributes(
        t.clone(),
        dev("p1"),
        AttributeScope::Shared,
        vals(&[("mode", "eco".into())]),
        20,
    )
    .await
    .unwrap();
    let since = |at| s.attributes_since(t.clone(), dev("p1"), AttributeScope::Shared, at);
    let later = since(10).await.unwrap();
    assert_eq!(later.keys().collect::<Vec<_>>(), ["mode"]);
    assert_eq!(later["mode"], Value::String("eco".into()));
    assert_eq!(since(9).await.unwrap().len(), 2);
    assert!(since(20).await.unwrap().is_empty());
    let client_since = s
        .attributes_since(t.clone(), dev("p1"), AttributeScope::Client, 0)
        .await
        .unwrap();
    assert_eq!(client_since.len(), 2, "one scope only: {client_since:?}");

    assert!(s.delete_device(t.clone(), dev("p1")).await.unwrap());
    assert!(!s.delete_device(t.clone(), dev("p1")).await.unwrap());
    assert!(s.device(t.clone(), dev("p1")).await.unwrap().is_none());
    assert!(
        s.attributes(t.clone(), dev("p1"), AttributeScope::Client, None)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        s.attribute_defs(t.clone(), dev("p1"))
            .await
            .unwrap()
            .is_empty()
    );
}

/// Commands move only along their lifecycle, and every move is in the history.
pub async fn command_transitions(h: &Harness) {
    let s = &*h.store;
    let t = tenant();
    let id = MessageId::from_parts(NOW as u64, 99);
    let record = CommandRecord {
        id,
        tenant: t.clone(),
        device: dev("d"),
        command: Command {
            name: "setGpio".into(),
            payload: serde_json::json!({"pin": 4}),
            time_ms: None,
            two_way: true,
            persistent: true,
            expires_ms: Some(NOW + 60_000),
        },
        status: CommandStatus::Queued,
        created_ms: NOW,
        updated_ms: NOW,
        reply: None,
    };
    s.put_command(record.clone()).await.unwrap();
    assert_eq!(s.command(id).await.unwrap(), Some(record.clone()));
    s.set_command_status(
        id,
        CommandStatus::Sent,
        NOW + 1,
        Some("front-0".into()),
        None,
    )
    .await
    .unwrap();
    assert_eq!(awaiting(s).await, vec![id], "sent, awaiting its reply");
    s.set_command_status(id, CommandStatus::Delivered, NOW + 2, None, None)
        .await
        .unwrap();
    assert_eq!(awaiting(s).await, vec![id], "delivered, still awaiting");
    let done = s
        .set_command_status(
            id,
            CommandStatus::Replied,
            NOW + 3,
            None,
            Some(serde_json::json!({"ok": true})),
        )
        .await
        .unwrap();
    assert_eq!(done.status, CommandStatus::Replied);
    assert!(awaiting(s).await.is_empty(), "replied: no longer awaiting");
    assert_eq!(done.reply, Some(serde_json::json!({"ok": true})));
    let err = s
        .set_command_status(id, CommandStatus::Failed, NOW + 4, None, None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::InvalidTransition {
                from: "replied",
                to: "failed",
                ..
            }
        ),
        "{err}"
    );
    let history = s.command_history(id).await.unwrap();
    assert_eq!(
        history.iter().map(|c| c.status).collect::<Vec<_>>(),
        [
            CommandStatus::Queued,
            CommandStatus::Sent,
            CommandStatus::Delivered,
            CommandStatus::Replied
        ]
    );
    assert_eq!(history[1].detail.as_deref(), Some("front-0"));
    assert!(matches!(
        s.set_command_status(
            MessageId::from_parts(1, 1),
            CommandStatus::Sent,
            NOW,
            None,
            None
        )
        .await,
        Err(StoreError::NotFound(_))
    ));
    let other = MessageId::from_parts(NOW as u64 + 5, 1);
    s.put_command(CommandRecord {
        id: other,
        created_ms: NOW + 5,
        ..s.command(id).await.unwrap().unwrap()
    })
    .await
    .unwrap();
    let _ = s
        .set_command_status(other, CommandStatus::Queued, NOW + 6, None, None)
        .await;
    let replied = s
        .commands(t.clone(), dev("d"), Some(CommandStatus::Replied), 10)
        .await
        .unwrap();
    assert_eq!(replied.len(), 2, "the copy was stored with status replied");
    let all = s.commands(t.clone(), dev("d"), None, 10).await.unwrap();
    assert_eq!(all[0].id, other, "newest first");

    // A one-way command is in flight while sent, until its delivery.
    let one_way = MessageId::from_parts(NOW as u64 + 7, 1);
    let mut cmd = record.command.clone();
    cmd.two_way = false;
    s.put_command(CommandRecord {
        id: one_way,
        command: cmd,
        status: CommandStatus::Queued,
        created_ms: NOW + 7,
        updated_ms: NOW + 7,
        ..record
    })
    .await
    .unwrap();
    assert!(
        !awaiting(s).await.contains(&one_way),
        "queued: not in flight"
    );
    s.set_command_status(one_way, CommandStatus::Sent, NOW + 8, None, None)
        .await
        .unwrap();
    assert!(awaiting(s).await.contains(&one_way), "sent: in flight");
    s.set_command_status(one_way, CommandStatus::Delivered, NOW + 9, None, None)
        .await
        .unwrap();
    assert!(!awaiting(s).await.contains(&one_way), "delivered: done");
}

/// A two-way command `name` for `device`, queued at `NOW`, no expiry.
fn queued_rpc(
    id: MessageId,
    t: &TenantId,
    device: &str,
    name: &str,
    persistent: bool,
) -> CommandRecord {
    CommandRecord {
        id,
        tenant: t.clone(),
        device: dev(device),
        command: Command {
            name: name.into(),
            payload: serde_json::json!({}),
            time_ms: None,
            two_way: true,
            persistent,
            expires_ms: None,
        },
        status: CommandStatus::Queued,
        created_ms: NOW,
        updated_ms: NOW,
        reply: None,
    }
}

/// The ids of the commands in flight.
async fn awaiting(s: &dyn fluxgate_store::Store) -> Vec<MessageId> {
    s.in_flight_commands(100)
        .await
        .unwrap()
        .iter()
        .map(|c| c.id)
        .collect()
}

/// Connection and rejected logs keep events newest first.
pub async fn logs(h: &Harness) {
    let s = &*h.store;
    let t = tenant();
    for (i, connected) in [true, false, true].into_iter().enumerate() {
        s.log_connection(ConnectionEvent {
            tenant: t.clone(),
            device: dev("d"),
            at_ms: NOW + i as i64,
            connected,
            front: Some("front-0".into()),
            remote_addr: Some("127.0.0.1:5000".into()),
            reason: (!connected).then(|| "keepalive".to_string()),
            via: None,
        })
        .await
        .unwrap();
    }
    let log = s.connection_log(t.clone(), dev("d"), 2).await.unwrap();
    assert_eq!(log.len(), 2);
    assert!(log[0].connected && !log[1].connected);
    assert_eq!(log[1].reason.as_deref(), Some("keepalive"));
    for (i, code) in [ReasonCode::MalformedJson, ReasonCode::UndefinedAttribute]
        .into_iter()
        .enumerate()
    {
        s.log_rejected(RejectedEntry {
            tenant: t.clone(),
            device: format!("d{i}"),
            at_ms: NOW,
            code,
            message: "why".into(),
            excerpt: "{oops".into(),
        })
        .await
        .unwrap();
    }
    let all = s.rejected_log(t.clone(), None, 10).await.unwrap();
    assert_eq!(all.len(), 2);
    let one = s
        .rejected_log(t.clone(), Some("d1".into()), 10)
        .await
        .unwrap();
    assert_eq!(one[0].code, ReasonCode::UndefinedAttribute);
}

/// Deleting a device deletes its data: the device made again under the same id shows
/// nothing of the old one, and what the new one writes is all there, even values whose
/// time is older than the delete (on Cassandra a wall-clock tombstone would hide those).
pub async fn delete_then_recreate_starts_empty(h: &Harness) {
    let s = &*h.store;
    let t = tenant();
    let device = Device {
        tenant: t.clone(),
        id: dev("d"),
        name: "Again".into(),
        kind: DeviceKind::Standalone,
        peripheral_policy: None,
        tags: vec![],
        profile: None,
        created_ms: NOW,
        updated_ms: NOW,
    };
    s.put_device(device.clone()).await.unwrap();
    let old = vec![
        (
            NOW,
            vals(&[("temp", Value::Float(1.0)), ("hum", Value::Integer(40))]),
        ),
        (NOW + 1_000, vals(&[("temp", Value::Float(2.0))])),
    ];
    s.write_samples(vec![batch(&t, "d", old)]).await.unwrap();
    s.put_attributes(
        t.clone(),
        dev("d"),
        AttributeScope::Client,
        vals(&[("fw", Value::String("1.0".into()))]),
        NOW + 5_000,
    )
    .await
    .unwrap();
    s.log_connection(ConnectionEvent {
        tenant: t.clone(),
        device: dev("d"),
        at_ms: NOW,
        connected: true,
        front: Some("front-0".into()),
        remote_addr: None,
        reason: None,
        via: None,
    })
    .await
    .unwrap();
    let cmd = MessageId::from_parts(NOW as u64, 7);
    s.put_command(queued_rpc(cmd, &t, "d", "reboot", true))
        .await
        .unwrap();
    s.set_command_status(cmd, CommandStatus::Sent, NOW + 1, None, None)
        .await
        .unwrap();

    assert!(s.delete_device(t.clone(), dev("d")).await.unwrap());
    s.put_device(device).await.unwrap();

    let keys = ["temp", "hum"];
    assert!(
        s.latest(t.clone(), dev("d"), None)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        all_pages(s, q(&t, "d", &keys, 10, Order::Asc))
            .await
            .is_empty()
    );
    let client = s.attributes(t.clone(), dev("d"), AttributeScope::Client, None);
    assert!(client.await.unwrap().is_empty());
    assert!(
        s.connection_log(t.clone(), dev("d"), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        s.commands(t.clone(), dev("d"), None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.command(cmd).await.unwrap(), None);
    assert!(
        awaiting(s).await.iter().all(|id| *id != cmd),
        "the deleted device's RPC timer is gone"
    );

    // The new device: a point older than the old device's, and newer values.
    let new = vec![
        (NOW - 1_000, vals(&[("temp", Value::Float(9.0))])),
        (NOW + 2_000, vals(&[("temp", Value::Float(3.0))])),
    ];
    s.write_samples(vec![batch(&t, "d", new)]).await.unwrap();
    s.put_attributes(
        t.clone(),
        dev("d"),
        AttributeScope::Client,
        vals(&[("fw", Value::String("2.0".into()))]),
        NOW + 6_000,
    )
    .await
    .unwrap();
    let points = all_pages(s, q(&t, "d", &keys, 10, Order::Asc)).await;
    let seen: Vec<i64> = points.iter().map(|p| p.ts_ms).collect();
    assert_eq!(seen, vec![NOW - 1_000, NOW + 2_000], "only the new points");
    let latest = s.latest(t.clone(), dev("d"), None).await.unwrap();
    assert_eq!(latest.len(), 1, "no `hum` from the old device: {latest:?}");
    assert_eq!(
        (latest[0].ts_ms, &latest[0].value),
        (NOW + 2_000, &Value::Float(3.0))
    );
    let client = s.attributes(t.clone(), dev("d"), AttributeScope::Client, None);
    assert_eq!(
        client.await.unwrap()["fw"],
        Value::String("2.0".into()),
        "an attribute set after the recreate, with a time before the delete, is seen"
    );
}

/// A reply and a timeout at the same instant, many times over: each command ends with
/// exactly one terminal status, the one whose write succeeded, and its history shows one
/// terminal entry, last (every transition is one conditional write).
pub async fn racing_transitions_leave_one_terminal_status(h: &Harness) {
    let s = &*h.store;
    let t = tenant();
    for i in 0..20u128 {
        let id = MessageId::from_parts(NOW as u64 + 100, 1000 + i);
        s.put_command(queued_rpc(id, &t, "race", "rpc", false))
            .await
            .unwrap();
        s.set_command_status(id, CommandStatus::Sent, NOW + 1, None, None)
            .await
            .unwrap();
        let reply = Some(serde_json::json!({"ok": true}));
        let (replied, timed_out) = tokio::join!(
            s.set_command_status(id, CommandStatus::Replied, NOW + 2, None, reply),
            s.set_command_status(id, CommandStatus::TimedOut, NOW + 2, None, None),
        );
        let won = match (&replied, &timed_out) {
            (Ok(_), Err(StoreError::InvalidTransition { .. })) => CommandStatus::Replied,
            (Err(StoreError::InvalidTransition { .. }), Ok(_)) => CommandStatus::TimedOut,
            other => panic!("round {i}: both or neither applied: {other:?}"),
        };
        assert_eq!(s.command(id).await.unwrap().unwrap().status, won);
        let history: Vec<CommandStatus> = s
            .command_history(id)
            .await
            .unwrap()
            .iter()
            .map(|c| c.status)
            .collect();
        assert_eq!(
            history,
            [CommandStatus::Queued, CommandStatus::Sent, won],
            "round {i}"
        );
    }
}

/// Claiming: within the window the device opened, with its secret, by one owner, even
/// when two claims race; unclaiming ends it; a deleted device's claim is gone.
pub async fn claims(h: &Harness) {
    let s = &*h.store;
    let t = tenant();
    let secret = "s3cret-of-the-claim";
    let claim = |d: &'static str, secret: &'static str, owner: &'static str, at: i64| {
        claim_device(s, t.clone(), dev(d), secret, owner.to_owned(), at)
    };
    assert_eq!(
        claim("c", secret, "alice", NOW).await.unwrap(),
        ClaimOutcome::NoWindow
    );
    s.open_claim_window(t.clone(), dev("c"), hash_secret(secret), NOW + 60_000)
        .await
        .unwrap();
    assert_eq!(
        claim("c", "guess", "alice", NOW).await.unwrap(),
        ClaimOutcome::WrongSecret
    );
    assert_eq!(
        claim("c", secret, "alice", NOW + 60_000).await.unwrap(),
        ClaimOutcome::NoWindow,
        "the window has closed"
    );
    let ClaimOutcome::Claimed(c) = claim("c", secret, "alice", NOW + 1).await.unwrap() else {
        panic!("the right secret within the window claims");
    };
    assert_eq!(
        (c.owner.as_deref(), c.claimed_ms),
        (Some("alice"), Some(NOW + 1))
    );
    let stored = s.device_claim(t.clone(), dev("c")).await.unwrap().unwrap();
    assert_eq!(stored, c, "what the claim returned is what is stored");
    assert!(matches!(
        claim("c", secret, "alice", NOW + 2).await.unwrap(),
        ClaimOutcome::AlreadyYours(_)
    ));
    assert_eq!(
        claim("c", secret, "bob", NOW + 2).await.unwrap(),
        ClaimOutcome::Owned
    );
    if let Some(dump) = &h.dump {
        assert!(
            !dump().contains(secret),
            "a claim secret is stored only hashed"
        );
    }

    // Unclaimed, the device must open a new window to be claimed again.
    assert!(s.clear_claim(t.clone(), dev("c")).await.unwrap());
    assert!(!s.clear_claim(t.clone(), dev("c")).await.unwrap());
    assert_eq!(
        claim("c", secret, "bob", NOW + 3).await.unwrap(),
        ClaimOutcome::NoWindow
    );

    // Two owners at once, many times over: exactly one wins.
    for i in 0..10 {
        let d = dev(&format!("race-{i}"));
        s.open_claim_window(t.clone(), d.clone(), hash_secret(""), NOW + 60_000)
            .await
            .unwrap();
        let (a, b) = tokio::join!(
            claim_device(s, t.clone(), d.clone(), "", "alice".into(), NOW + 5),
            claim_device(s, t.clone(), d.clone(), "", "bob".into(), NOW + 5),
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        let winner = match (&a, &b) {
            (ClaimOutcome::Claimed(_), ClaimOutcome::Owned) => "alice",
            (ClaimOutcome::Owned, ClaimOutcome::Claimed(_)) => "bob",
            other => panic!("round {i}: not exactly one owner: {other:?}"),
        };
        let stored = s.device_claim(t.clone(), d).await.unwrap().unwrap();
        assert_eq!(stored.owner.as_deref(), Some(winner), "round {i}");
    }

    // A deleted device takes its claim with it.
    s.put_device(Device {
        tenant: t.clone(),
        id: dev("race-0"),
        name: "Claimed".into(),
        kind: DeviceKind::Standalone,
        peripheral_policy: None,
        tags: vec![],
        profile: None,
        created_ms: NOW,
        updated_ms: NOW,
    })
    .await
    .unwrap();
    assert!(s.delete_device(t.clone(), dev("race-0")).await.unwrap());
    assert_eq!(
        s.device_claim(t.clone(), dev("race-0")).await.unwrap(),
        None
    );
}

async fn pending_of(s: &dyn Store, t: &TenantId) -> Vec<MessageId> {
    let all = s.pending_client_rpcs(1000).await.unwrap();
    all.into_iter()
        .filter(|r| r.tenant == *t)
        .map(|r| r.id)
        .collect()
}

fn client_rpc(t: &TenantId, d: &str, n: u128, method: &str) -> ClientRpc {
    ClientRpc {
        id: MessageId::from_parts(NOW as u64 + n as u64, n),
        tenant: t.clone(),
        device: dev(d),
        request_id: fluxgate_model::CorrelationId::Int(n as i64),
        method: method.into(),
        params: serde_json::json!({"n": n as u64}),
        status: ClientRpcStatus::Pending,
        created_ms: NOW + n as i64,
        deadline_ms: NOW + 10_000,
        updated_ms: NOW + n as i64,
        answer: None,
    }
}

/// Client-side RPC: stored once (a redelivery changes nothing), listed newest first and
/// by status, pending ones found for their timers, and ended exactly once even when an
/// answer and a timeout race; a deleted device's requests are gone.
pub async fn client_rpcs(h: &Harness) {
    let s = &*h.store;
    let t = tenant();
    let (a, b) = (
        client_rpc(&t, "d", 1, "getTime"),
        client_rpc(&t, "d", 2, "getFw"),
    );
    assert!(s.put_client_rpc(a.clone()).await.unwrap());
    assert!(s.put_client_rpc(b.clone()).await.unwrap());
    let mut again = a.clone();
    again.method = "changed".into();
    assert!(
        !s.put_client_rpc(again).await.unwrap(),
        "a redelivery is not new"
    );
    assert_eq!(
        s.client_rpc(t.clone(), dev("d"), a.id).await.unwrap(),
        Some(a.clone())
    );
    let listed = s.client_rpcs(t.clone(), dev("d"), None, 10).await.unwrap();
    assert_eq!(listed, vec![b.clone(), a.clone()], "newest first");
    assert_eq!(pending_of(s, &t).await, vec![a.id, b.id], "oldest first");

    let answer = serde_json::json!({"time": 42});
    let ended = s
        .end_client_rpc(
            t.clone(),
            dev("d"),
            a.id,
            ClientRpcStatus::Answered,
            Some(answer.clone()),
            NOW + 50,
        )
        .await
        .unwrap()
        .expect("a pending request ends");
    assert_eq!(
        (ended.status, ended.answer.as_ref(), ended.updated_ms),
        (ClientRpcStatus::Answered, Some(&answer), NOW + 50)
    );
    let late = s.end_client_rpc(
        t.clone(),
        dev("d"),
        a.id,
        ClientRpcStatus::TimedOut,
        None,
        NOW + 60,
    );
    assert_eq!(late.await.unwrap(), None, "ended once");
    assert_eq!(
        s.client_rpc(t.clone(), dev("d"), a.id)
            .await
            .unwrap()
            .unwrap()
            .status,
        ClientRpcStatus::Answered
    );
    let only = s.client_rpcs(t.clone(), dev("d"), Some(ClientRpcStatus::Pending), 10);
    assert_eq!(only.await.unwrap(), vec![b.clone()]);
    assert_eq!(pending_of(s, &t).await, vec![b.id]);

    // An answer and a timeout at the same instant, many times over: one of them.
    for i in 10..20u128 {
        let r = client_rpc(&t, "race", i, "m");
        s.put_client_rpc(r.clone()).await.unwrap();
        let (x, y) = tokio::join!(
            s.end_client_rpc(
                t.clone(),
                dev("race"),
                r.id,
                ClientRpcStatus::Answered,
                Some(answer.clone()),
                NOW
            ),
            s.end_client_rpc(
                t.clone(),
                dev("race"),
                r.id,
                ClientRpcStatus::TimedOut,
                None,
                NOW
            ),
        );
        let won = match (x.unwrap(), y.unwrap()) {
            (Some(e), None) | (None, Some(e)) => e.status,
            other => panic!("round {i}: not exactly one end: {other:?}"),
        };
        let stored = s
            .client_rpc(t.clone(), dev("race"), r.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.status, won, "round {i}");
    }

    s.put_device(Device {
        tenant: t.clone(),
        id: dev("d"),
        name: "Asker".into(),
        kind: DeviceKind::Standalone,
        peripheral_policy: None,
        tags: vec![],
        profile: None,
        created_ms: NOW,
        updated_ms: NOW,
    })
    .await
    .unwrap();
    assert!(s.delete_device(t.clone(), dev("d")).await.unwrap());
    assert!(
        s.client_rpcs(t.clone(), dev("d"), None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(pending_of(s, &t).await, Vec::<MessageId>::new());
}
