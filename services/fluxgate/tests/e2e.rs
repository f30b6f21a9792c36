//! End to end: the real `fluxgate standalone` process, used only through MQTT over TCP and
//! HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Standalone, access_key, application, data_dir};
use fluxgate_testkit::mqtt::{recv, v3, v5};
use ntex_mqtt::v5::codec::PublishAckReason;
use serde_json::{Value, json};

/// Application `app` with device `d1` (one number attribute `n`) and an access key for
/// it; returns the admin token, key and secret.
async fn counter_device(fg: &Standalone, app: &str) -> (String, String, String) {
    let admin = application(fg, app).await;
    fg.ok(
        "POST",
        &format!("/applications/{app}/devices"),
        &admin,
        Some(json!({"id": "d1", "attributes": [{"name": "n", "kind": "number"}]})),
        201,
    )
    .await;
    let (key, secret) = access_key(fg, app, &admin).await;
    (admin, key, secret)
}

/// The values of `d1`'s `n` stored for times `from..=to`, in time order.
async fn series_n(fg: &Standalone, app: &str, admin: &str, from: i64, to: i64) -> Vec<i64> {
    let path = format!("/applications/{app}/devices/d1/data?keys=n&from={from}&to={to}&limit=1000");
    let series = fg.ok("GET", &path, admin, None, 200).await;
    series["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["value"].as_i64().unwrap())
        .collect()
}

fn latest(points: &Value, key: &str) -> Option<(i64, Value)> {
    points["points"]
        .as_array()?
        .iter()
        .find(|p| p["key"] == key)
        .map(|p| (p["ts_ms"].as_i64().unwrap(), p["value"].clone()))
}

#[ntex::test]
async fn losant_devices_gateways_commands_and_access_rules() {
    let fg = Standalone::start(&data_dir(), &[]).await;
    let admin = application(&fg, "plant").await;
    let dev = |body: Value| {
        fg.ok(
            "POST",
            "/applications/plant/devices",
            &admin,
            Some(body),
            201,
        )
    };
    dev(json!({"id": "dev1", "attributes": [{"name": "temp", "kind": "number"}, {"name": "label", "kind": "string"}]})).await;
    dev(json!({"id": "gw", "kind": "gateway"})).await;
    dev(
        json!({"id": "p1", "kind": "peripheral", "peripheral_policy": {"policy": "any_gateway"},
               "attributes": [{"name": "level", "kind": "number"}]}),
    )
    .await;
    let (key, secret) = access_key(&fg, "plant", &admin).await;

    // A QoS 1 PUBACK from standalone means the sample is stored: read it back at once.
    let mut d = v3(fg.mqtt, "dev1", Some(&key), Some(&secret))
        .await
        .unwrap();
    d.publish(
        "losant/dev1/state",
        r#"{"data":{"temp":"21.5","label":"ok"},"time":{"$date":"2023-11-14T22:13:20.000Z"}}"#,
    )
    .await
    .unwrap();
    let state = fg
        .ok(
            "GET",
            "/applications/plant/devices/dev1/state",
            &admin,
            None,
            200,
        )
        .await;
    assert_eq!(
        latest(&state, "temp"),
        Some((1_700_000_000_000, json!(21.5))),
        "{state}"
    );
    assert_eq!(
        latest(&state, "label"),
        Some((1_700_000_000_000, json!("ok")))
    );

    // A gateway posts for its peripheral over MQTT, and over REST with a device token.
    let g = v5(fg.mqtt, "gw", Some(&key), Some(&secret)).await.unwrap();
    assert_eq!(
        g.publish(
            "losant/p1/state",
            br#"{"data":{"level":3},"time":1700000001000}"#
        )
        .await,
        Ok(PublishAckReason::Success)
    );
    let auth = fg
        .call(
            "POST",
            "/auth/device",
            None,
            Some(json!({"deviceId": "gw", "key": key, "secret": secret})),
        )
        .await;
    assert_eq!(auth.0, 200, "{}", auth.1);
    let gw_token = auth.1["token"].as_str().unwrap().to_owned();
    fg.ok(
        "POST",
        "/applications/plant/devices/p1/state",
        &gw_token,
        Some(json!([{"data": {"level": 4}, "time": 1700000002000i64}])),
        200,
    )
    .await;
    let series = fg
        .ok(
            "GET",
            "/applications/plant/devices/p1/data?keys=level&from=1700000000000&to=1700000003000",
            &admin,
            None,
            200,
        )
        .await;
    let levels: Vec<(i64, i64)> = series["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["ts_ms"].as_i64().unwrap(), p["value"].as_i64().unwrap()))
        .collect();
    assert_eq!(levels, [(1_700_000_001_000, 3), (1_700_000_002_000, 4)]);
    // Without `keys`: every key (the first query a new user runs).
    let all = fg
        .ok(
            "GET",
            "/applications/plant/devices/p1/data?from=1700000000000&to=1700000003000",
            &admin,
            None,
            200,
        )
        .await;
    assert_eq!(
        all["points"], series["points"],
        "all keys = the one key p1 has"
    );

    // A command sent over HTTP reaches the subscribed device.
    d.subscribe("losant/dev1/command").await;
    let out = fg
        .ok(
            "POST",
            "/applications/plant/devices/dev1/command",
            &admin,
            Some(json!({"name": "blink", "payload": {"times": 2}})),
            200,
        )
        .await;
    let (topic, payload) = recv(&mut d.inbox).await;
    assert_eq!(topic, "losant/dev1/command");
    let cmd: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(
        (cmd["name"].clone(), cmd["payload"]["times"].clone()),
        (json!("blink"), json!(2))
    );
    assert!(cmd["time"]["$date"].is_string());
    let id = out["commandId"].as_str().unwrap();
    let mut status = Value::Null;
    for _ in 0..100 {
        status = fg
            .ok(
                "GET",
                &format!("/applications/plant/commands/{id}"),
                &admin,
                None,
                200,
            )
            .await;
        if status["command"]["status"] == "delivered" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status["command"]["status"], "delivered", "{status}");
    let conn = fg
        .ok(
            "GET",
            "/applications/plant/devices/dev1/connection",
            &admin,
            None,
            200,
        )
        .await;
    assert_eq!(conn["connected"], true, "{conn}");

    // Access rules.
    assert_eq!(
        fg.call(
            "GET",
            "/applications/plant/devices/dev1",
            Some("bad-token"),
            None
        )
        .await
        .0,
        401
    );
    assert_eq!(
        fg.call("GET", "/applications/plant/devices/dev1", None, None)
            .await
            .0,
        401
    );
    let other = application(&fg, "other").await;
    assert_eq!(
        fg.call(
            "GET",
            "/applications/plant/devices/dev1",
            Some(&other),
            None
        )
        .await
        .0,
        403
    );
    assert_eq!(
        fg.call(
            "GET",
            "/applications/other/devices/dev1",
            Some(&other),
            None
        )
        .await
        .0,
        404
    );
    assert_eq!(
        fg.call(
            "GET",
            "/applications/plant/devices/dev1",
            Some(&gw_token),
            None
        )
        .await
        .0,
        403
    );
    assert_eq!(
        v3(fg.mqtt, "dev1", Some(&key), Some("wrong")).await.err(),
        Some(ntex_mqtt::v3::codec::ConnectAckReason::BadUserNameOrPassword)
    );
    // One /readyz for the process: the front's readiness is part of it.
    let (status, body) = fg.call("GET", "/readyz", None, None).await;
    assert_eq!(status, 200, "standalone ready, the front included: {body}");
    // One /metrics for every role of the process, the front's included.
    let (_, m) = fg.call("GET", "/metrics", None, None).await;
    let m = m.as_str().unwrap().to_owned();
    for name in [
        "fluxgate_api_requests_total",
        "fluxgate_mqtt_front_connects_total{outcome=\"bad_credentials\"}",
        "fluxgate_mqtt_front_publish_ack_seconds_count",
        "fluxgate_validator_",
        "fluxgate_ts_writer_points_written_total",
        "fluxgate_ts_writer_write_seconds_bucket",
        "fluxgate_ts_writer_batch_points_count",
        "fluxgate_command_dispatch_",
        // The counters every pipeline role has, one series per role in one family.
        "fluxgate_pipeline_records_total{role=\"validator\"}",
        "fluxgate_pipeline_records_total{role=\"writer\"}",
        "fluxgate_pipeline_records_total{role=\"dispatcher\"}",
        "fluxgate_pipeline_consumer_lag_records{role=\"dispatcher\"}",
    ] {
        assert!(m.contains(name), "{name} missing from /metrics");
    }
    // Every role's metrics, as the catalogue lists them (docs/metrics.md), and each one
    // it lists exported: standalone runs every role.
    let roles = [
        "front",
        "api",
        "validator",
        "writer",
        "dispatcher",
        "pipeline",
    ];
    let problems = fluxgate_observability::catalogue::disagreements(&m, &roles);
    assert!(
        problems.is_empty(),
        "/metrics against the catalogue: {problems:#?}"
    );
    fg.terminate().await;
}

#[ntex::test]
async fn a_thingsboard_gateway_with_two_devices_and_a_two_way_rpc() {
    let fg = Standalone::start(&data_dir(), &[]).await;
    let admin = application(&fg, "tb").await;
    fg.ok(
        "POST",
        "/applications/tb/devices",
        &admin,
        Some(json!({"id": "tbgw", "kind": "gateway"})),
        201,
    )
    .await;
    let t = fg
        .ok(
            "POST",
            "/applications/tb/devices/tbgw/tokens",
            &admin,
            None,
            201,
        )
        .await;
    let token = t["secret"].as_str().unwrap().to_owned();

    let mut gw = v5(fg.mqtt, "any-id", Some(&token), None).await.unwrap();
    for feed in [
        "v1/gateway/rpc",
        "v1/gateway/attributes",
        "v1/gateway/attributes/response",
    ] {
        gw.subscribe(feed).await;
    }
    let ok = Ok(PublishAckReason::Success);
    assert_eq!(
        gw.publish(
            "v1/gateway/connect",
            br#"{"device":"Sensor A","type":"thermo"}"#
        )
        .await,
        ok
    );
    assert_eq!(
        gw.publish("v1/gateway/connect", br#"{"device":"Sensor B"}"#)
            .await,
        ok
    );
    let telemetry = br#"{"Sensor A":[{"ts":1700000000000,"values":{"temp":20.5}}],"Sensor B":{"ts":1700000000000,"values":{"temp":18}}}"#;
    assert_eq!(gw.publish("v1/gateway/telemetry", telemetry).await, ok);
    assert_eq!(
        gw.publish("v1/gateway/attributes", br#"{"Sensor A":{"fw":"1.0"}}"#)
            .await,
        ok
    );

    // Both devices exist (created on first sight) with stable ids.
    let list = fg
        .ok("GET", "/applications/tb/devices", &admin, None, 200)
        .await;
    let id_of = |name: &str| -> String {
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == name)
            .unwrap_or_else(|| panic!("{name} not created: {list}"))["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (a, b) = (id_of("Sensor A"), id_of("Sensor B"));
    assert_eq!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["profile"] == "thermo")
            .count(),
        1
    );
    for (id, want) in [(&a, json!(20.5)), (&b, json!(18))] {
        let s = fg
            .ok(
                "GET",
                &format!("/applications/tb/devices/{id}/state"),
                &admin,
                None,
                200,
            )
            .await;
        assert_eq!(latest(&s, "temp"), Some((1_700_000_000_000, want)), "{s}");
    }

    // Attribute request, ThingsBoard SDK shape.
    assert_eq!(
        gw.publish(
            "v1/gateway/attributes/request",
            br#"{"id":7,"device":"Sensor A","client":true,"key":"fw"}"#
        )
        .await,
        ok
    );
    let (topic, payload) = recv(&mut gw.inbox).await;
    assert_eq!(topic, "v1/gateway/attributes/response");
    let v: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(
        (v["id"].clone(), v["device"].clone(), v["value"].clone()),
        (json!(7), json!("Sensor A"), json!("1.0")),
        "{v}"
    );

    // A two-way RPC called over HTTP, answered by the gateway for Sensor A.
    let addr = fg.api;
    let admin2 = admin.clone();
    let path = format!("/api/rpc/twoway/{a}");
    let call = tokio::spawn(async move {
        fluxgate_testkit::http::request(
            addr,
            "POST",
            &path,
            Some(&admin2),
            Some(r#"{"method":"setLevel","params":{"level":2},"timeout":10000}"#),
        )
        .await
        .unwrap()
    });
    let (topic, payload) = recv(&mut gw.inbox).await;
    assert_eq!(topic, "v1/gateway/rpc");
    let req: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(
        (req["device"].clone(), req["data"]["method"].clone()),
        (json!("Sensor A"), json!("setLevel")),
        "{req}"
    );
    let rpc_id = req["data"]["id"].clone();
    let reply = json!({"device": "Sensor A", "id": rpc_id, "data": {"done": true}});
    assert_eq!(
        gw.publish("v1/gateway/rpc", reply.to_string().as_bytes())
            .await,
        ok
    );
    let answer = tokio::time::timeout(Duration::from_secs(15), call)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        serde_json::from_str::<Value>(&answer.body).unwrap(),
        json!({"done": true})
    );

    // Shared attributes set over HTTP are pushed through the gateway.
    fg.ok(
        "POST",
        &format!("/api/plugins/telemetry/DEVICE/{b}/SHARED_SCOPE"),
        &admin,
        Some(json!({"interval": 30})),
        200,
    )
    .await;
    let (topic, payload) = recv(&mut gw.inbox).await;
    assert_eq!(topic, "v1/gateway/attributes");
    let v: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(v, json!({"device": "Sensor B", "data": {"interval": 30}}));
    fg.terminate().await;
}

#[ntex::test]
async fn every_acknowledged_sample_survives_kill_9() {
    let dir = data_dir();
    // Losant's 30 messages / 15 s per topic would stop the burst: lift it.
    let env = [("FLUXGATE_FRONT__RATE_LIMITS__PER_TOPIC__MESSAGES", "0")];
    let fg = Standalone::start_with(&dir, &[], &env).await;
    let (admin, key, secret) = counter_device(&fg, "crash").await;
    let c = v5(fg.mqtt, "d1", Some(&key), Some(&secret)).await.unwrap();
    const N: i64 = 300;
    const T0: i64 = 1_700_000_000_000;
    // A burst with 16 publishes in flight at a time (the front's receive maximum, which an
    // MQTT 5 client must respect); kill -9 right after the last PUBACK.
    let streams: Vec<_> = (0..16)
        .map(|w| {
            let sink = c.sink.clone();
            ntex::rt::spawn(async move {
                for i in (w..N).step_by(16) {
                    let body = format!(r#"{{"data":{{"n":{i}}},"time":{}}}"#, T0 + i);
                    let ack = sink
                        .publish(ntex::util::ByteString::from("losant/d1/state"))
                        .send_at_least_once(ntex::util::Bytes::from(body))
                        .await
                        .map(|a| a.reason_code);
                    if ack != Ok(PublishAckReason::Success) {
                        return Err(format!("publish {i}: {ack:?}"));
                    }
                }
                Ok(())
            })
        })
        .collect();
    for s in streams {
        if let Err(e) = s.await.unwrap() {
            let log = fg
                .ok(
                    "GET",
                    "/applications/crash/devices/d1/connection",
                    &admin,
                    None,
                    200,
                )
                .await;
            let rej = fg
                .ok("GET", "/applications/crash/rejected", &admin, None, 200)
                .await;
            panic!("{e}; connection log: {log}; rejected: {rej}");
        }
    }
    fg.kill().await;

    let fg = Standalone::start_with(&dir, &[], &env).await;
    let got = series_n(&fg, "crash", &admin, T0, T0 + N).await;
    assert_eq!(
        got,
        (0..N).collect::<Vec<_>>(),
        "every acknowledged sample, once, after kill -9"
    );
    fg.terminate().await;
}

/// The seed documents' own example, run as users run it: `mosquitto_pub` at its default
/// QoS 0, one process per message (connect, publish, disconnect at once). Every one of
/// them must be stored.
#[ntex::test]
async fn one_shot_mosquitto_pub_at_qos_0_loses_nothing() {
    let have = std::process::Command::new("sh")
        .args(["-c", "command -v mosquitto_pub"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        assert!(
            std::env::var_os("CI").is_none(),
            "mosquitto_pub is missing; CI must install mosquitto-clients (scripts/prereqs.sh)"
        );
        eprintln!("one_shot_mosquitto_pub_at_qos_0_loses_nothing: ignored: needs mosquitto_pub");
        return;
    }
    let dir = data_dir();
    let fg = Standalone::start(&dir, &[]).await;
    let (admin, key, secret) = counter_device(&fg, "oneshot").await;
    const N: i64 = 100;
    const T0: i64 = 1_700_000_000_000;
    for i in 0..N {
        let out = tokio::process::Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &fg.mqtt.port().to_string()])
            .args([
                "-i",
                "d1",
                "-u",
                &key,
                "-P",
                &secret,
                "-t",
                "losant/d1/state",
            ])
            .args([
                "-m",
                &format!(r#"{{"data":{{"n":{i}}},"time":{}}}"#, T0 + i),
            ])
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "mosquitto_pub {i}: {out:?}");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let got = loop {
        let got = series_n(&fg, "oneshot", &admin, T0, T0 + N).await;
        if got.len() as i64 == N || tokio::time::Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("one-shot mosquitto_pub -q 0: {} of {N} stored", got.len());
    assert_eq!(
        got,
        (0..N).collect::<Vec<_>>(),
        "every one-shot publish stored"
    );
    fg.terminate().await;
}

/// `fluxgate probe mqtt://…` (the Helm chart's `helm test`): a CONNACK from the front
/// passes, whatever its code; an HTTP port and a closed port fail, each saying why.
#[ntex::test]
async fn the_mqtt_probe_passes_on_the_front_only() {
    let dir = data_dir();
    let fg = Standalone::start(&dir, &[]).await;
    let probe = |url: String| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_fluxgate"))
            .args(["probe", &url, "--timeout-secs", "5"])
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (ok, text) = probe(format!("mqtt://{}", fg.mqtt));
    assert!(ok, "{text}");
    // No credentials: the front refuses the session, which still proves it speaks MQTT.
    assert!(text.contains("CONNACK, return code"), "{text}");
    assert!(!text.contains("return code 0"), "{text}");
    let (ok, text) = probe(format!("mqtt://{}", fg.api));
    assert!(!ok && text.contains("did not answer MQTT"), "{text}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (ok, text) = probe(format!("mqtt://{closed}"));
    assert!(!ok && text.contains("connecting to"), "{text}");
    fg.terminate().await;
}

/// Issue 22, finding 6: the data folder and every file of the store and its secrets are
/// readable by their owner only (an existing folder is made so), and the bootstrap admin
/// token is printed once, when it is made; later starts say which file keeps it.
#[cfg(unix)]
#[ntex::test]
async fn the_data_folder_is_private_and_the_admin_token_is_shown_once() {
    use std::os::unix::fs::PermissionsExt;
    let dir = data_dir(); // made 0755 (the test's umask), as an operator might
    let mode = |p: &std::path::Path| {
        std::fs::metadata(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .permissions()
            .mode()
            & 0o777
    };
    let first = Standalone::start(&dir, &[]).await;
    assert!(first.banner.contains(&first.token), "{}", first.banner);
    let token = first.token.clone();
    assert_eq!(mode(&dir), 0o700, "data folder");
    for f in [
        "fluxgate.db",
        "fluxgate.db-wal",
        "fluxgate.db-shm",
        "bootstrap-token",
        "device-token-secret",
    ] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }
    first.terminate().await;
    let again = Standalone::start(&dir, &[]).await;
    assert!(
        !again.banner.contains(&token),
        "the token is not shown again:\n{}",
        again.banner
    );
    assert!(
        again.banner.contains("bootstrap admin token file: "),
        "{}",
        again.banner
    );
    assert_eq!(again.token, token, "the same token, read from its file");
    let body = serde_json::json!({"id": "after-restart"});
    let (status, v) = again
        .call("POST", "/applications", Some(&again.token), Some(body))
        .await;
    assert!((200..300).contains(&status), "{status} {v}");
    again.terminate().await;
}
