//! Issue 22's isolation matrix: every attempt a device, gateway or application should not
//! be able to make across tenants, devices, wildcards, gateway policies and revoked
//! credentials, made over MQTT (raw packets, so the reason codes are seen as sent) and
//! REST against the real binary in standalone. Prints `isolation matrix: refused N of N`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Standalone, application, data_dir};
use fluxgate_testkit::raw::{self, Got, V, Wire};
use serde_json::{Value, json};

/// The attempts made, and those refused.
#[derive(Default)]
struct Matrix {
    rows: Vec<(String, bool, String)>,
}

impl Matrix {
    fn row(&mut self, what: &str, refused: bool, seen: impl std::fmt::Debug) {
        self.rows
            .push((what.to_owned(), refused, format!("{seen:?}")));
    }
}

/// CONNECT as `client` with `user`/`pass` (MQTT 5); the CONNACK code.
async fn connack(fg: &Standalone, client: &str, user: &str, pass: &str) -> Result<Got, String> {
    let mut w = Wire::connect(fg.mqtt, V::V5, client, user, pass).await?;
    w.next_within(Duration::from_secs(5)).await
}

/// A QoS 1 publish on an open v5 session: `Ok(code)` of its PUBACK, `Err` if the
/// connection closed (or said DISCONNECT) instead.
async fn publish(w: &mut Wire, topic: &str, id: u16, body: &[u8]) -> Result<u8, String> {
    w.send(&raw::publish(V::V5, topic, Some(id), body)).await?;
    loop {
        match w.next_within(Duration::from_secs(5)).await? {
            Got::PubAck(got, code) if got == id => return Ok(code),
            Got::Disconnect(c) => return Err(format!("DISCONNECT {c:#x}")),
            _ => {}
        }
    }
}

/// SUBSCRIBE on an open v5 session; the SUBACK's code.
async fn subscribe(w: &mut Wire, filter: &str, id: u16) -> Result<u8, String> {
    w.send(&raw::subscribe(V::V5, id, filter)).await?;
    loop {
        match w.next_within(Duration::from_secs(5)).await? {
            Got::SubAck(got, code) if got == id => return Ok(code),
            Got::Disconnect(c) => return Err(format!("DISCONNECT {c:#x}")),
            _ => {}
        }
    }
}

/// Whether the server ends `w` within 5 s (a DISCONNECT, then the close).
async fn ended(w: &mut Wire) -> bool {
    loop {
        match w.next_within(Duration::from_secs(5)).await {
            Ok(Got::Disconnect(_) | Got::Other(_)) | Ok(_) => {}
            Err(e) => return e == "closed" || e.contains("reset"),
        }
    }
}

fn refused_connect(got: &Result<Got, String>) -> bool {
    match got {
        Ok(Got::ConnAck(code)) => *code >= 0x80,
        Ok(_) => false,
        Err(_) => true,
    }
}

/// REST status of a call.
async fn status(
    fg: &Standalone,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> u16 {
    fg.call(method, path, token, body).await.0
}

/// A new access key of `app` (`body`: its scope); (key, secret).
async fn key(fg: &Standalone, app: &str, admin: &str, body: Value) -> (String, String) {
    let k = fg
        .ok(
            "POST",
            &format!("/applications/{app}/keys"),
            admin,
            Some(body),
            201,
        )
        .await;
    (
        k["key"].as_str().unwrap().to_owned(),
        k["secret"].as_str().unwrap().to_owned(),
    )
}

/// A new ThingsBoard token of `app`'s device `id`.
async fn token(fg: &Standalone, app: &str, id: &str, admin: &str) -> String {
    let path = format!("/applications/{app}/devices/{id}/tokens");
    let t = fg.ok("POST", &path, admin, None, 201).await;
    t["secret"].as_str().unwrap().to_owned()
}

#[ntex::test]
async fn isolation_matrix_refuses_every_cross_boundary_attempt() {
    let fg = Standalone::start(&data_dir(), &[]).await;
    let (a, b) = ("iso-a", "iso-b");
    let a_admin = application(&fg, a).await;
    let b_admin = application(&fg, b).await;
    let dev = |app: &str, body: Value| (format!("/applications/{app}/devices"), body);
    for (path, body) in [
        dev(
            a,
            json!({"id": "d1", "attributes": [{"name": "n", "kind": "number"}]}),
        ),
        dev(
            a,
            json!({"id": "d2", "attributes": [{"name": "n", "kind": "number"}]}),
        ),
        dev(a, json!({"id": "gw1", "kind": "gateway"})),
        dev(a, json!({"id": "gw2", "kind": "gateway"})),
        dev(
            a,
            json!({"id": "p-gw2", "kind": "peripheral",
            "peripheral_policy": {"policy": "specific_gateway", "gateway": "gw2"},
            "attributes": [{"name": "n", "kind": "number"}]}),
        ),
        dev(a, json!({"id": "tbgw", "kind": "gateway"})),
        dev(a, json!({"id": "tbdev"})),
        dev(
            b,
            json!({"id": "b1", "attributes": [{"name": "n", "kind": "number"}]}),
        ),
    ] {
        let admin = if path.contains(b) { &b_admin } else { &a_admin };
        fg.ok("POST", &path, admin, Some(body), 201).await;
    }
    let key_all = key(&fg, a, &a_admin, json!({})).await;
    let key_d1 = key(&fg, a, &a_admin, json!({"devices": ["d1"]})).await;
    let key_off = key(&fg, a, &a_admin, json!({})).await;
    let key_b = key(&fg, b, &b_admin, json!({})).await;
    let tbgw = token(&fg, a, "tbgw", &a_admin).await;
    let tbdev = token(&fg, a, "tbdev", &a_admin).await;
    let a_read = fg
        .ok(
            "POST",
            &format!("/applications/{a}/tokens"),
            &a_admin,
            Some(json!({"name": "reader", "scope": "read"})),
            201,
        )
        .await["secret"]
        .as_str()
        .unwrap()
        .to_owned();

    let mut m = Matrix::default();

    // --- MQTT: who may connect as whom.
    let got = connack(&fg, "b1", &key_all.0, &key_all.1).await;
    m.row(
        "a key of application A connects as a device of B",
        refused_connect(&got),
        &got,
    );
    let got = connack(&fg, "d1", &key_b.0, &key_b.1).await;
    m.row(
        "a key of application B connects as a device of A",
        refused_connect(&got),
        &got,
    );
    let got = connack(&fg, "d2", &key_d1.0, &key_d1.1).await;
    m.row(
        "a key limited to d1 connects as d2",
        refused_connect(&got),
        &got,
    );
    let got = connack(&fg, "d1", &key_all.0, "wrong-secret").await;
    m.row(
        "the right key with a wrong secret",
        refused_connect(&got),
        &got,
    );
    let got = connack(&fg, "tbdev", "not-a-token", "").await;
    m.row("an unknown ThingsBoard token", refused_connect(&got), &got);

    // --- MQTT: what a device may publish and subscribe to.
    let mut d1 = Wire::open(fg.mqtt, V::V5, "d1", &key_d1.0, &key_d1.1)
        .await
        .unwrap();
    let got = publish(&mut d1, "losant/d2/state", 1, br#"{"data":{"n":1}}"#).await;
    m.row(
        "d1 publishes d2's state",
        !matches!(got, Ok(c) if c < 0x80),
        &got,
    );
    let mut d1 = Wire::open(fg.mqtt, V::V5, "d1", &key_d1.0, &key_d1.1)
        .await
        .unwrap();
    for (i, filter) in [
        "losant/d2/command",
        "#",
        "losant/+/command",
        "losant/#",
        "v1/#",
        "+/+/state",
    ]
    .into_iter()
    .enumerate()
    {
        let got = subscribe(&mut d1, filter, 10 + i as u16).await;
        m.row(
            &format!("d1 subscribes to {filter}"),
            !matches!(got, Ok(c) if c < 0x80),
            &got,
        );
        if got.is_err() {
            d1 = Wire::open(fg.mqtt, V::V5, "d1", &key_d1.0, &key_d1.1)
                .await
                .unwrap();
        }
    }

    // --- MQTT: gateways act only for the devices that allow them.
    let mut gw1 = Wire::open(fg.mqtt, V::V5, "gw1", &key_all.0, &key_all.1)
        .await
        .unwrap();
    let got = publish(&mut gw1, "losant/p-gw2/state", 2, br#"{"data":{"n":2}}"#).await;
    m.row(
        "gateway gw1 publishes for a peripheral of gw2",
        !matches!(got, Ok(c) if c < 0x80),
        &got,
    );
    let mut gw1 = Wire::open(fg.mqtt, V::V5, "gw1", &key_all.0, &key_all.1)
        .await
        .unwrap();
    let got = subscribe(&mut gw1, "losant/p-gw2/command", 3).await;
    m.row(
        "gateway gw1 subscribes to a peripheral of gw2's commands",
        !matches!(got, Ok(c) if c < 0x80),
        &got,
    );
    let got = publish(&mut gw1, "losant/d2/state", 4, br#"{"data":{"n":4}}"#).await;
    m.row(
        "gateway gw1 publishes for a standalone device",
        !matches!(got, Ok(c) if c < 0x80),
        &got,
    );
    // A ThingsBoard gateway names devices: one restricted to another gateway, a
    // standalone one, and one of another application by its id. Acknowledged by the
    // front (it cannot know), refused downstream: nothing stored.
    let mut tb = Wire::open(fg.mqtt, V::V5, "tbgw", &tbgw, "").await.unwrap();
    let t = 1_700_000_000_000i64;
    for (i, name) in ["p-gw2", "d2", "b1"].into_iter().enumerate() {
        let body = json!({name: [{"ts": t + i as i64, "values": {"n": 100 + i}}]});
        let _ = publish(
            &mut tb,
            "v1/gateway/telemetry",
            5 + i as u16,
            body.to_string().as_bytes(),
        )
        .await;
    }
    // Standalone acknowledges a publish once the pipeline is done with it (stored, or
    // rejected): read back now.
    for (app, id, admin) in [
        (a, "p-gw2", &a_admin),
        (a, "d2", &a_admin),
        (b, "b1", &b_admin),
    ] {
        let path = format!("/applications/{app}/devices/{id}/data?keys=n&from=0&limit=100");
        let v = fg.ok("GET", &path, admin, None, 200).await;
        let stored: Vec<i64> = v["points"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["value"].as_i64())
            .filter(|n| *n >= 100)
            .collect();
        m.row(
            &format!("a ThingsBoard gateway reports for {app}/{id} by name"),
            stored.is_empty(),
            &stored,
        );
    }

    // --- Credentials that end: a deactivated key, revoked tokens.
    let mut off = Wire::open(fg.mqtt, V::V5, "d2", &key_off.0, &key_off.1)
        .await
        .unwrap();
    let mut tbd = Wire::open(fg.mqtt, V::V3, "tbdev", &tbdev, "")
        .await
        .unwrap();
    fg.ok(
        "PATCH",
        &format!("/applications/{a}/keys/{}", key_off.0),
        &a_admin,
        Some(json!({"active": false})),
        200,
    )
    .await;
    m.row(
        "a live session on a key then deactivated",
        ended(&mut off).await,
        "",
    );
    let got = connack(&fg, "d2", &key_off.0, &key_off.1).await;
    m.row(
        "a new session on the deactivated key",
        refused_connect(&got),
        &got,
    );
    fg.ok(
        "DELETE",
        &format!("/applications/{a}/devices/tbdev/tokens"),
        &a_admin,
        None,
        204,
    )
    .await;
    m.row(
        "a live session on a token then revoked",
        ended(&mut tbd).await,
        "",
    );
    let got = connack(&fg, "tbdev", &tbdev, "").await;
    m.row(
        "a new session on the revoked token",
        refused_connect(&got),
        &got,
    );

    // --- REST: across applications, below a token's scope, without a token.
    let cross = [
        ("GET", format!("/applications/{b}"), None),
        ("GET", format!("/applications/{b}/devices"), None),
        ("GET", format!("/applications/{b}/devices/b1"), None),
        (
            "GET",
            format!("/applications/{b}/devices/b1/data?keys=n&from=0"),
            None,
        ),
        ("GET", format!("/applications/{b}/devices/b1/state"), None),
        (
            "POST",
            format!("/applications/{b}/devices/b1/command"),
            Some(json!({"name": "x"})),
        ),
        (
            "POST",
            format!("/applications/{b}/devices"),
            Some(json!({"id": "evil"})),
        ),
        ("POST", format!("/applications/{b}/keys"), Some(json!({}))),
        (
            "POST",
            format!("/applications/{b}/tokens"),
            Some(json!({"name": "x", "scope": "admin"})),
        ),
        ("DELETE", format!("/applications/{b}/devices/b1"), None),
        (
            "POST",
            "/api/rpc/twoway/b1".to_owned(),
            Some(json!({"method": "m", "params": {}})),
        ),
    ];
    for (method, path, body) in cross {
        let s = status(&fg, method, &path, Some(&a_admin), body).await;
        m.row(
            &format!("A's admin token: {method} {path}"),
            matches!(s, 401 | 403 | 404),
            s,
        );
    }
    let below = [
        (
            "POST",
            format!("/applications/{a}/devices/d1/command"),
            Some(json!({"name": "x"})),
        ),
        (
            "POST",
            format!("/applications/{a}/devices"),
            Some(json!({"id": "made-by-reader"})),
        ),
        ("POST", format!("/applications/{a}/keys"), Some(json!({}))),
        ("DELETE", format!("/applications/{a}/devices/d1"), None),
    ];
    for (method, path, body) in below {
        let s = status(&fg, method, &path, Some(&a_read), body).await;
        m.row(&format!("a read-only token: {method} {path}"), s == 403, s);
    }
    let bad_bearers: [(&str, Option<&str>); 4] = [
        ("no token", None),
        ("a ThingsBoard device token", Some(&tbgw)),
        ("a Losant access key's secret", Some(&key_all.1)),
        ("a made-up token", Some("fg_not_a_token")),
    ];
    for (what, bearer) in bad_bearers {
        let s = status(
            &fg,
            "GET",
            &format!("/applications/{a}/devices"),
            bearer,
            None,
        )
        .await;
        m.row(&format!("{what} as an API bearer"), s == 401, s);
    }

    let refused = m.rows.iter().filter(|(_, r, _)| *r).count();
    for (what, r, seen) in &m.rows {
        eprintln!(
            "{} {what}: {seen}",
            if *r { "refused " } else { "ALLOWED " }
        );
    }
    eprintln!("isolation matrix: refused {refused} of {}", m.rows.len());
    assert_eq!(
        refused,
        m.rows.len(),
        "some attempts were allowed (see ALLOWED above)"
    );
    fg.terminate().await;
}
