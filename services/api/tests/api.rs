//! The API over real sockets, on the in-process bus and SQLite.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fluxgate_api::{ApiConfig, ApiState};
use fluxgate_bus::{Bus, ConsumerSpec, MemoryBus, Topic, TopicsConfig};
use fluxgate_model::{Body, DeviceRef, Envelope};
use fluxgate_store::Store;
use fluxgate_testkit::http::call;
use serde_json::{Value, json};

const BOOT: &str = "boot-token";

struct Rig {
    addr: SocketAddr,
    bus: Arc<dyn Bus>,
    topics: TopicsConfig,
    store: Arc<dyn Store>,
}

async fn rig() -> Rig {
    rig_with(|_| {}).await
}

/// [`rig`] with settings of the test's own.
async fn rig_with(settings: impl FnOnce(&mut ApiConfig)) -> Rig {
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::default());
    let store: Arc<dyn Store> = Arc::new(fluxgate_store::sqlite::SqliteStore::in_memory().unwrap());
    store.migrate().await.unwrap();
    let topics = TopicsConfig::default();
    let mut cfg = ApiConfig {
        http_addr: "127.0.0.1:0".into(),
        bootstrap_token: BOOT.into(),
        rpc_timeout_ms: 300,
        workers: 1,
        ..ApiConfig::default()
    };
    settings(&mut cfg);
    let registry = prometheus::Registry::new();
    let state = ApiState::new(cfg, bus.as_ref(), store.clone(), &topics, &registry).unwrap();
    let running =
        fluxgate_api::start(state, registry, fluxgate_observability::Health::new()).unwrap();
    let addr = running.addr;
    actix_rt::spawn(running.server);
    Rig {
        addr,
        bus,
        topics,
        store,
    }
}

impl Rig {
    /// `POST /auth/device` (Losant's device authentication).
    async fn auth_device(&self, device: &str, key: &str, secret: &str) -> (u16, Value) {
        let body = json!({"deviceId": device, "key": key, "secret": secret});
        self.call("POST", "/auth/device", None, Some(body)).await
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        call(self.addr, method, path, token, body).await.unwrap()
    }

    /// Creates application `app` with an admin API token; returns the token.
    async fn app(&self, app: &str) -> String {
        let (s, _) = self
            .call(
                "POST",
                "/applications",
                Some(BOOT),
                Some(json!({"id": app})),
            )
            .await;
        assert_eq!(s, 201);
        let (s, t) = self
            .call(
                "POST",
                &format!("/applications/{app}/tokens"),
                Some(BOOT),
                Some(json!({"name": "ops", "scope": "admin"})),
            )
            .await;
        assert_eq!(s, 201, "{t}");
        t["secret"].as_str().unwrap().to_owned()
    }

    /// Creates device `id` in application `app`.
    async fn device(&self, admin: &str, app: &str, id: &str) {
        let path = format!("/applications/{app}/devices");
        let (s, out) = self
            .call("POST", &path, Some(admin), Some(json!({ "id": id })))
            .await;
        assert_eq!(s, 201, "{out}");
    }

    /// Reads `topic` in a group of its own, acking and committing (so produces resolve).
    fn tap(&self, topic: Topic) -> tokio::sync::mpsc::UnboundedReceiver<Envelope> {
        let c = self
            .bus
            .consumer(ConsumerSpec::group(
                fluxgate_testkit::unique_name("tap"),
                &[&self.topics.name(topic)],
            ))
            .unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        actix_rt::spawn(async move {
            while let Ok(r) = c.recv().await {
                c.ack(&r.position);
                c.commit().await.unwrap();
                let _ = tx.send(Envelope::from_bytes(&r.payload).unwrap());
            }
        });
        rx
    }
}

async fn next(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Envelope>) -> Envelope {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap()
}

#[actix_rt::test]
async fn registry_with_tokens_scopes_and_named_errors() {
    let r = rig().await;
    assert_eq!(r.call("GET", "/applications/a1", None, None).await.0, 401);
    assert_eq!(
        r.call("GET", "/applications/a1", Some("nope"), None)
            .await
            .0,
        401
    );
    let admin = r.app("a1").await;
    let other = r.app("a2").await;

    let (s, d) = r
        .call(
            "POST",
            "/applications/a1/devices",
            Some(&admin),
            Some(json!({"id": "dev1", "tags": ["blue"], "attributes": [{"name": "temp", "kind": "number"}]})),
        )
        .await;
    assert_eq!(s, 201, "{d}");
    assert_eq!(d["kind"], "standalone");
    let (s, defs) = r
        .call(
            "GET",
            "/applications/a1/devices/dev1/attributes",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(
        (s, defs),
        (200, json!([{"name": "temp", "kind": "number"}]))
    );
    // Another application's token: 403; unknown device: 404.
    assert_eq!(
        r.call("GET", "/applications/a1/devices/dev1", Some(&other), None)
            .await
            .0,
        403
    );
    assert_eq!(
        r.call("GET", "/applications/a1/devices/nope", Some(&admin), None)
            .await
            .0,
        404
    );
    // A read token cannot create.
    let (_, read) = r
        .call(
            "POST",
            "/applications/a1/tokens",
            Some(&admin),
            Some(json!({"name": "ro", "scope": "read"})),
        )
        .await;
    let read = read["secret"].as_str().unwrap().to_owned();
    assert_eq!(
        r.call("GET", "/applications/a1/devices/dev1", Some(&read), None)
            .await
            .0,
        200
    );
    let (s, e) = r
        .call(
            "POST",
            "/applications/a1/devices",
            Some(&read),
            Some(json!({"id": "x"})),
        )
        .await;
    assert_eq!((s, e["error"]["code"].clone()), (403, json!("forbidden")));
    // Errors name the field.
    let (s, e) = r
        .call(
            "POST",
            "/applications/a1/devices",
            Some(&admin),
            Some(json!({"id": "bad id/with#"})),
        )
        .await;
    assert_eq!((s, e["error"]["field"].clone()), (400, json!("id")), "{e}");
    let (s, e) = r
        .call(
            "POST",
            "/applications/a1/devices",
            Some(&admin),
            Some(json!({"idd": "x"})),
        )
        .await;
    assert_eq!(s, 400);
    assert!(
        e["error"]["message"].as_str().unwrap().contains("idd"),
        "{e}"
    );
    let (s, e) = r
        .call(
            "POST",
            "/applications/a1/devices",
            Some(&admin),
            Some(json!({"id": "p", "kind": "peripheral"})),
        )
        .await;
    assert_eq!(
        (s, e["error"]["field"].clone()),
        (400, json!("peripheral_policy"))
    );
    // Keys: the secret is shown once, never its hash.
    let (s, k) = r
        .call(
            "POST",
            "/applications/a1/keys",
            Some(&admin),
            Some(json!({"tags": ["blue"]})),
        )
        .await;
    assert_eq!(s, 201);
    assert!(k["secret"].as_str().unwrap().len() >= 24);
    assert!(k.get("secret_hash").is_none());
    let key = k["key"].as_str().unwrap();
    let (s, k2) = r
        .call(
            "GET",
            &format!("/applications/a1/keys/{key}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert!(k2.get("secret").is_none() && k2.get("secret_hash").is_none());
    // Only the bootstrap token creates applications.
    assert_eq!(
        r.call(
            "POST",
            "/applications",
            Some(&admin),
            Some(json!({"id": "a3"}))
        )
        .await
        .0,
        403
    );
    let (s, _) = r.call("GET", "/nowhere", Some(&admin), None).await;
    assert_eq!(s, 404);
}

#[actix_rt::test]
async fn losant_device_rest_state_enters_the_pipeline() {
    let r = rig().await;
    let admin = r.app("a1").await;
    let mut raw = r.tap(Topic::IngestRaw);
    for body in [
        json!({"id": "gw", "kind": "gateway"}),
        json!({"id": "p-any", "kind": "peripheral", "peripheral_policy": {"policy": "any_gateway"}}),
        json!({"id": "p-other", "kind": "peripheral", "peripheral_policy": {"policy": "specific_gateway", "gateway": "gw9"}}),
        json!({"id": "dev1"}),
    ] {
        assert_eq!(
            r.call("POST", "/applications/a1/devices", Some(&admin), Some(body))
                .await
                .0,
            201
        );
    }
    let (_, k) = r
        .call(
            "POST",
            "/applications/a1/keys",
            Some(&admin),
            Some(json!({})),
        )
        .await;
    let (key, secret) = (k["key"].as_str().unwrap(), k["secret"].as_str().unwrap());

    let (s, _) = r.auth_device("gw", key, "wrong").await;
    assert_eq!(s, 401);
    let (s, auth) = r.auth_device("gw", key, secret).await;
    assert_eq!(s, 200, "{auth}");
    assert_eq!(auth["applicationId"], "a1");
    let gw = auth["token"].as_str().unwrap().to_owned();

    // One state, then an array; each reaches the raw topic.
    let (s, _) = r
        .call(
            "POST",
            "/applications/a1/devices/gw/state",
            Some(&gw),
            Some(json!({"data": {"t": 1}, "time": 1700000000000i64})),
        )
        .await;
    assert_eq!(s, 200);
    let e = next(&mut raw).await;
    assert_eq!(
        e.device,
        DeviceRef::Id(fluxgate_model::DeviceId::new("gw").unwrap())
    );
    assert!(
        matches!(e.body, Body::Telemetry { ref samples, .. } if samples[0].ts_ms == 1_700_000_000_000)
    );
    let (s, _) = r
        .call(
            "POST",
            "/applications/a1/devices/p-any/state",
            Some(&gw),
            Some(json!([{"data": {"t": 2}}, {"data": {"t": 3}}])),
        )
        .await;
    assert_eq!(s, 200);
    for _ in 0..2 {
        let e = next(&mut raw).await;
        assert_eq!(e.via.as_ref().map(|v| v.as_str()), Some("gw"));
    }
    // A peripheral that allows another gateway, and a plain device: refused.
    for target in ["p-other", "dev1"] {
        let (s, e) = r
            .call(
                "POST",
                &format!("/applications/a1/devices/{target}/state"),
                Some(&gw),
                Some(json!({"data": {"t": 4}})),
            )
            .await;
        assert_eq!(s, 403, "{target}: {e}");
    }
    // Bad state: refused with the model's reason code.
    let (s, e) = r
        .call(
            "POST",
            "/applications/a1/devices/gw/state",
            Some(&gw),
            Some(json!({"nodata": 1})),
        )
        .await;
    assert_eq!(s, 422, "{e}");
    assert_eq!(e["error"]["code"], "missing_field");
    // Device tokens reach nothing else.
    assert_eq!(
        r.call("GET", "/applications/a1/devices/gw", Some(&gw), None)
            .await
            .0,
        403
    );
    // Deactivating the key ends its device tokens.
    assert_eq!(
        r.call(
            "PATCH",
            &format!("/applications/a1/keys/{key}"),
            Some(&admin),
            Some(json!({"active": false}))
        )
        .await
        .0,
        200
    );
    let (s, _) = r
        .call(
            "POST",
            "/applications/a1/devices/gw/state",
            Some(&gw),
            Some(json!({"data": {"t": 5}})),
        )
        .await;
    assert_eq!(s, 401);
    // ...and the key itself: refused as deactivated, as the MQTT front refuses it (the
    // same check), while a wrong secret stays a plain bad credential.
    let (s, e) = r.auth_device("gw", key, secret).await;
    assert_eq!(s, 401, "{e}");
    assert_eq!(e["error"]["message"], "access key is deactivated", "{e}");
    let (s, e) = r.auth_device("gw", key, "wrong").await;
    assert_eq!(s, 401, "{e}");
    assert_eq!(e["error"]["message"], "bad device id, key or secret", "{e}");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), raw.recv())
            .await
            .is_err(),
        "refused states reached the bus"
    );
}

#[actix_rt::test]
async fn commands_and_rpc_go_on_the_device_key_of_the_events_topic() {
    let r = rig().await;
    let admin = r.app("a1").await;
    let mut commands = r.tap(Topic::DeviceEvents);
    r.device(&admin, "a1", "dev1").await;
    let (s, out) = r
        .call(
            "POST",
            "/applications/a1/devices/dev1/command",
            Some(&admin),
            Some(json!({"name": "reboot", "payload": {"delay": 5}, "time": {"$date": "2023-11-14T22:13:20Z"}})),
        )
        .await;
    assert_eq!(s, 200, "{out}");
    let e = next(&mut commands).await;
    // The key of the device's connects and disconnects: the command comes after them.
    assert_eq!(e.key(), "a1/dev1");
    let Body::Command(c) = e.body else {
        panic!("{e:?}")
    };
    assert_eq!(
        (c.name.as_str(), c.time_ms, c.two_way),
        ("reboot", Some(1_700_000_000_000), false)
    );
    assert_eq!(out["commandId"], json!(e.id));

    // One-way RPC: accepted with its id; two-way with nobody answering: 504 after the wait.
    let (s, out) = r
        .call(
            "POST",
            "/api/rpc/oneway/dev1",
            Some(&admin),
            Some(json!({"method": "blink", "params": {}})),
        )
        .await;
    assert_eq!(s, 200);
    assert!(out["rpcId"].is_string());
    let e = next(&mut commands).await;
    assert!(matches!(e.body, Body::Command(ref c) if c.name == "blink" && !c.two_way));
    let started = std::time::Instant::now();
    let (s, out) = r
        .call(
            "POST",
            "/api/rpc/twoway/dev1",
            Some(&admin),
            Some(json!({"method": "getTime", "timeout": 400})),
        )
        .await;
    assert_eq!(s, 504, "{out}");
    assert!(started.elapsed() >= Duration::from_millis(350));
    let e = next(&mut commands).await;
    assert!(matches!(e.body, Body::Command(ref c) if c.two_way && c.expires_ms.is_some()));
    // The bootstrap token must name the application for ThingsBoard's paths.
    let (s, e) = r
        .call(
            "POST",
            "/api/rpc/oneway/dev1",
            Some(BOOT),
            Some(json!({"method": "x"})),
        )
        .await;
    assert_eq!(
        (s, e["error"]["field"].clone()),
        (400, json!("application"))
    );
    // Shared attributes: stored, and announced for the dispatcher to push.
    let (s, _) = r
        .call(
            "POST",
            "/api/plugins/telemetry/DEVICE/dev1/SHARED_SCOPE",
            Some(&admin),
            Some(json!({"level": 3})),
        )
        .await;
    assert_eq!(s, 200);
    assert!(matches!(
        next(&mut commands).await.body,
        Body::Attributes { .. }
    ));
    let (s, v) = r
        .call(
            "GET",
            "/applications/a1/devices/dev1/attributes/shared",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!((s, v), (200, json!({"level": 3})));
    let (s, list) = r
        .call(
            "GET",
            "/applications/a1/devices/dev1/commands",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert!(list["items"].is_array());
}

#[actix_rt::test]
async fn every_documented_operation_is_routed() {
    let r = rig().await;
    let (s, doc) = r.call("GET", "/openapi.json", None, None).await;
    assert_eq!(s, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    let mut n = 0;
    for (path, ops) in paths {
        let concrete = path
            .replace("{app}", "a1")
            .replace("{id}", "d1")
            .replace("{token}", "t")
            .replace("{key}", "k")
            .replace("{scope}", "client")
            .replace("{command}", "c")
            .replace("{deviceName}", "D1")
            .replace("{rpc}", "0");
        for method in ops.as_object().unwrap().keys() {
            let m = method.to_uppercase();
            // With a token, so that the request passes the gate and reaches the router.
            let (status, body) = r.call(&m, &concrete, Some(BOOT), Some(json!({}))).await;
            assert_ne!(
                body["error"]["code"], "no_route",
                "{m} {path} is documented but not routed ({status})"
            );
            n += 1;
        }
    }
    assert_eq!(n, fluxgate_api::openapi::OPERATIONS.len());
    let (_, m) = r.call("GET", "/metrics", None, None).await;
    assert!(
        m.as_str().unwrap().contains("fluxgate_api_requests_total"),
        "{m}"
    );
}

/// The API's source files, its module folders included.
fn sources(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `.route("path", web::method()` the API's sources register, as (method, path).
fn registered_routes() -> Vec<(String, String)> {
    let mut files = Vec::new();
    sources(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).unwrap();
        for (i, _) in text.match_indices(".route(") {
            let rest = text[i + ".route(".len()..].trim_start();
            let Some(rest) = rest.strip_prefix('"') else {
                continue;
            };
            let Some((path, rest)) = rest.split_once('"') else {
                continue;
            };
            let rest = rest.trim_start().trim_start_matches(',').trim_start();
            let Some(rest) = rest.strip_prefix("web::") else {
                continue;
            };
            let method: String = rest.chars().take_while(char::is_ascii_alphabetic).collect();
            out.push((method, path.to_string()));
        }
    }
    out
}

#[test]
fn every_route_is_documented() {
    let routes = registered_routes();
    // Served beside the API, not part of it.
    let outside = ["/openapi.json", "/metrics", "/healthz", "/readyz"];
    let routes: Vec<_> = routes
        .into_iter()
        .filter(|(_, p)| !outside.contains(&p.as_str()))
        .collect();
    assert!(routes.len() > 20, "the scan found the routes: {routes:?}");
    for (method, path) in &routes {
        assert!(
            fluxgate_api::openapi::OPERATIONS
                .iter()
                .any(|op| op.method == method && op.path == path),
            "{method} {path} is routed but not in openapi::OPERATIONS"
        );
    }
    assert_eq!(
        routes.len(),
        fluxgate_api::openapi::OPERATIONS.len(),
        "one route per documented operation"
    );
}

/// JSON nested `depth` levels: `{"d": [[...[1]...]]}`.
fn nested(depth: usize) -> Value {
    let text = format!(
        r#"{{"d":{}1{}}}"#,
        "[".repeat(depth - 1),
        "]".repeat(depth - 1)
    );
    serde_json::from_str(&text).unwrap()
}

#[actix_rt::test]
async fn too_deep_bodies_are_refused_before_anything_is_produced() {
    let r = rig().await;
    let admin = r.app("a1").await;
    let mut commands = r.tap(Topic::DeviceEvents);
    let mut raw = r.tap(Topic::IngestRaw);
    r.device(&admin, "a1", "dev1").await;
    // 126 levels parse (serde_json stops at 128) but the envelope around them would not.
    let deep = nested(126);
    let refused = [
        (
            "/applications/a1/devices/dev1/command",
            json!({"name": "x", "payload": deep}),
        ),
        (
            "/api/rpc/oneway/dev1",
            json!({"method": "x", "params": deep}),
        ),
        ("/applications/a1/devices/dev1/state", json!({"data": deep})),
        (
            "/applications/a1/devices/dev1/attributes/shared",
            deep.clone(),
        ),
    ];
    for (path, body) in refused {
        let (s, e) = r.call("POST", path, Some(&admin), Some(body)).await;
        assert_eq!(s, 400, "{path}: {e}");
        assert_eq!(e["error"]["code"], "too_deep", "{path}: {e}");
        assert!(e["error"]["message"].as_str().unwrap().len() < 600);
    }
    // Within the limit (32 by default), accepted.
    let (s, e) = r
        .call(
            "POST",
            "/applications/a1/devices/dev1/command",
            Some(&admin),
            Some(json!({"name": "x", "payload": nested(31)})),
        )
        .await;
    assert_eq!(s, 200, "{e}");
    let env = next(&mut commands).await;
    assert_eq!(json!(env.id), e["commandId"], "only the accepted one");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), raw.recv())
            .await
            .is_err(),
        "no state was produced"
    );
}

/// A two-way RPC's request is woken by the announcement of its end on
/// `fluxgate.command.outcomes` (which any API replica reads) and answers from the store,
/// instead of waiting for its next read of the store (every second).
#[actix_rt::test]
async fn a_two_way_rpc_is_answered_when_its_end_is_announced() {
    let r = rig().await;
    let admin = r.app("a1").await;
    let mut commands = r.tap(Topic::DeviceEvents);
    r.device(&admin, "a1", "dev1").await;
    let (addr, token) = (r.addr, admin.clone());
    let pending = actix_rt::spawn(async move {
        let body = json!({"method": "getTime", "params": {}, "timeout": 5000});
        call(
            addr,
            "POST",
            "/api/rpc/twoway/dev1",
            Some(&token),
            Some(body),
        )
        .await
        .unwrap()
    });
    let e = next(&mut commands).await;
    let Body::Command(command) = e.body.clone() else {
        panic!("{e:?}")
    };
    // What the dispatcher does when the device answers: the store, then the announcement.
    let s = &r.store;
    s.put_command(fluxgate_store::CommandRecord {
        id: e.id,
        tenant: e.tenant.clone(),
        device: fluxgate_model::DeviceId::new("dev1").unwrap(),
        command,
        status: fluxgate_store::CommandStatus::Queued,
        created_ms: e.received_ms,
        updated_ms: e.received_ms,
        reply: None,
    })
    .await
    .unwrap();
    use fluxgate_store::CommandStatus as S;
    s.set_command_status(e.id, S::Sent, e.received_ms + 1, None, None)
        .await
        .unwrap();
    let reply = json!({"time": 1700000000000i64});
    s.set_command_status(
        e.id,
        S::Replied,
        e.received_ms + 2,
        None,
        Some(reply.clone()),
    )
    .await
    .unwrap();
    let announced = std::time::Instant::now();
    let id = e.id.to_string();
    let rec = fluxgate_bus::OutRecord::new(
        r.topics.name(Topic::CommandOutcomes),
        id.clone(),
        id.into_bytes(),
    );
    let _ack = r.bus.producer().send(rec).await.unwrap();
    let (status, out) = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((status, out), (200, reply));
    // Woken: well before the next read of the store, a second after the first.
    assert!(
        announced.elapsed() < Duration::from_millis(800),
        "answered {:?} after the announcement",
        announced.elapsed()
    );
}

/// Claiming over HTTP: 409 before the device opened a window, 403 with the wrong secret,
/// then the owner is recorded (SUCCESS, then CLAIMED for the same owner, 409 for another),
/// ThingsBoard's by-name route agrees, and DELETE unclaims.
#[actix_rt::test]
async fn a_device_is_claimed_within_its_window_with_its_secret() {
    let r = rig().await;
    let app = "claims";
    let write = r.app(app).await;
    let write = write.as_str();
    let (s, out) = r
        .call(
            "POST",
            &format!("/applications/{app}/devices"),
            Some(write),
            Some(json!({"id": "c1", "name": "Claimable 1"})),
        )
        .await;
    assert_eq!(s, 201, "{out}");
    let path = format!("/applications/{app}/devices/c1/claim");
    let (s, b) = r
        .call("POST", &path, Some(write), Some(json!({"secretKey": "k"})))
        .await;
    assert_eq!(
        (s, &b["error"]["code"]),
        (409, &json!("claim_window_closed")),
        "{b}"
    );

    let until = fluxgate_bus::now_ms() + 60_000;
    r.store
        .open_claim_window(
            fluxgate_model::TenantId::new(app).unwrap(),
            fluxgate_model::DeviceId::new("c1").unwrap(),
            fluxgate_store::hash_secret("k"),
            until,
        )
        .await
        .unwrap();
    let (s, b) = r.call("GET", &path, Some(write), None).await;
    assert_eq!(
        (s, &b["windowOpen"], &b["claimed"]),
        (200, &json!(true), &json!(false)),
        "{b}"
    );
    let (s, b) = r
        .call("POST", &path, Some(write), Some(json!({"secretKey": "x"})))
        .await;
    assert_eq!(
        (s, &b["error"]["code"]),
        (403, &json!("claim_secret_mismatch")),
        "{b}"
    );
    let body = json!({"secretKey": "k", "owner": "customer-a"});
    let (s, b) = r.call("POST", &path, Some(write), Some(body.clone())).await;
    assert_eq!(
        (s, &b["response"], &b["owner"]),
        (200, &json!("SUCCESS"), &json!("customer-a")),
        "{b}"
    );
    let tb = "/api/customer/device/Claimable%201/claim";
    let (s, b) = r.call("POST", tb, Some(write), Some(body)).await;
    assert_eq!((s, &b["response"]), (200, &json!("CLAIMED")), "{b}");
    let other = json!({"secretKey": "k", "owner": "customer-b"});
    let (s, b) = r
        .call("POST", &path, Some(write), Some(other.clone()))
        .await;
    assert_eq!(
        (s, &b["error"]["code"]),
        (409, &json!("claimed_by_another")),
        "{b}"
    );
    let (s, b) = r.call("GET", &path, Some(write), None).await;
    assert_eq!(
        (s, &b["claimed"], &b["owner"]),
        (200, &json!(true), &json!("customer-a")),
        "{b}"
    );

    let (s, _) = r.call("DELETE", tb, Some(write), None).await;
    assert_eq!(s, 200);
    let (s, _) = r.call("DELETE", &path, Some(write), None).await;
    assert_eq!(s, 404, "nothing left to unclaim");
    let (s, b) = r.call("POST", &path, Some(write), Some(other)).await;
    assert_eq!(
        (s, &b["error"]["code"]),
        (409, &json!("claim_window_closed")),
        "{b}"
    );
    let (_, m) = r.call("GET", "/metrics", None, None).await;
    assert!(
        m.as_str()
            .unwrap()
            .contains("fluxgate_api_claims_total{outcome=\"wrong_secret\"} 1"),
        "{m}"
    );
}

/// Client-side RPC over HTTP: a device's pending request is listed, answered once (the
/// answer goes to the dispatcher on the device's key), and a second answer gets 409.
#[actix_rt::test]
async fn a_client_side_rpc_is_listed_and_answered_once() {
    let r = rig().await;
    let app = "asks";
    let admin = r.app(app).await;
    r.device(&admin, app, "t1").await;
    let mut events = r.tap(Topic::DeviceEvents);
    let tenant = fluxgate_model::TenantId::new(app).unwrap();
    let now = fluxgate_bus::now_ms();
    let id = fluxgate_model::MessageId::from_parts(now as u64, 77);
    let rpc = fluxgate_store::ClientRpc {
        id,
        tenant: tenant.clone(),
        device: fluxgate_model::DeviceId::new("t1").unwrap(),
        request_id: fluxgate_model::CorrelationId::Int(5),
        method: "getTime".into(),
        params: json!({}),
        status: fluxgate_store::ClientRpcStatus::Pending,
        created_ms: now,
        deadline_ms: now + 60_000,
        updated_ms: now,
        answer: None,
    };
    assert!(r.store.put_client_rpc(rpc).await.unwrap());
    let base = format!("/applications/{app}/devices/t1/rpc/requests");
    let (s, b) = r
        .call("GET", &format!("{base}?status=pending"), Some(&admin), None)
        .await;
    assert_eq!(
        (s, b["items"][0]["method"].as_str()),
        (200, Some("getTime")),
        "{b}"
    );
    let answer_path = format!("{base}/{id}/answer");
    let (s, b) = r
        .call(
            "POST",
            &answer_path,
            Some(&admin),
            Some(json!({"time": 42})),
        )
        .await;
    assert_eq!((s, b["status"].as_str()), (200, Some("answered")), "{b}");
    let env = next(&mut events).await;
    assert_eq!(env.key(), format!("{app}/t1"));
    match env.body {
        Body::RpcAnswer {
            request,
            request_id,
            data,
        } => {
            assert_eq!(request, id);
            assert_eq!(request_id, fluxgate_model::CorrelationId::Int(5));
            assert_eq!(data, json!({"time": 42}));
        }
        other => panic!("{other:?}"),
    }
    let (s, b) = r
        .call("POST", &answer_path, Some(&admin), Some(json!({})))
        .await;
    assert_eq!(s, 409, "{b}");
    let (s, b) = r
        .call("GET", &format!("{base}/{id}"), Some(&admin), None)
        .await;
    assert_eq!((s, &b["answer"]), (200, &json!({"time": 42})), "{b}");
    let unknown = fluxgate_model::MessageId::from_parts(now as u64, 78);
    let (s, _) = r
        .call(
            "POST",
            &format!("{base}/{unknown}/answer"),
            Some(&admin),
            Some(json!({})),
        )
        .await;
    assert_eq!(s, 404);
    let (s, b) = r
        .call("GET", &format!("{base}?status=pending"), Some(&admin), None)
        .await;
    assert_eq!(
        (s, b["items"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{b}"
    );
}

/// What a connection got: the answer (head and body), when its first byte came and when
/// the server closed the connection, both counted from when the request was written.
struct Closed {
    answer: String,
    answered: Duration,
    closed: Duration,
}

/// Writes `sent` on a new connection, leaves it open, and reads until the server closes
/// it; panics if that takes longer than `within`.
async fn until_closed(addr: SocketAddr, sent: &[u8], within: Duration) -> Closed {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(sent).await.unwrap();
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    let mut answered = None;
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) => return,
                Ok(n) => {
                    answered.get_or_insert_with(|| started.elapsed());
                    got.extend_from_slice(&buf[..n]);
                }
                // A reset after the answer is a close too.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
                Err(e) => panic!("{e}"),
            }
        }
    };
    if tokio::time::timeout(within, read).await.is_err() {
        panic!(
            "the connection was still open after {within:?}; got so far: {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    let closed = started.elapsed();
    Closed {
        answer: String::from_utf8_lossy(&got).into_owned(),
        answered: answered.unwrap_or(closed),
        closed,
    }
}

/// The status of an HTTP answer's first line.
fn status_of(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Without a token, or with a bad one, every operation that needs one answers 401 before
/// it looks at the path, the query or the body (no 400, 413 or 422 to an unknown caller).
#[actix_rt::test]
async fn a_caller_without_a_good_token_gets_401_before_anything_about_its_request() {
    let r = rig_with(|c| c.max_body_bytes = 64).await;
    let admin = r.app("a1").await;
    r.device(&admin, "a1", "dev1").await;
    let big = format!(r#"{{"data": {{"t": "{}"}}}}"#, "x".repeat(200));
    let cases: [(&str, &str, &str); 8] = [
        // (method, path, body) each of which is refused with a good token.
        ("POST", "/applications", r#"{"idd": 1}"#),
        ("POST", "/applications/a1/devices", "{not json"),
        (
            "POST",
            "/applications/a1/devices/dev1/state",
            r#"{"nodata": 1}"#,
        ),
        ("POST", "/applications/a1/devices/dev1/state", &big),
        ("GET", "/applications/a%23b", ""),
        ("GET", "/applications/a1/devices?limit=many", ""),
        ("GET", "/applications/a1/devices/dev1/data?to=soon", ""),
        ("POST", "/api/rpc/oneway/dev1", r#"{"params": 1}"#),
    ];
    for (method, path, body) in cases {
        let body = (!body.is_empty()).then_some(body);
        let good = fluxgate_testkit::http::request(r.addr, method, path, Some(&admin), body)
            .await
            .unwrap();
        assert!(
            [400, 413, 422].contains(&good.status),
            "{method} {path} with a good token: {good:?}"
        );
        for token in [None, Some("not-a-token")] {
            let got = fluxgate_testkit::http::request(r.addr, method, path, token, body)
                .await
                .unwrap();
            assert_eq!(got.status, 401, "{method} {path} with {token:?}: {got:?}");
            assert!(got.body.contains("\"unauthorized\""), "{}", got.body);
        }
    }
    // An operation that takes no token still answers about its body.
    let got = fluxgate_testkit::http::request(r.addr, "POST", "/auth/device", None, Some("{"))
        .await
        .unwrap();
    assert_eq!(got.status, 400, "{got:?}");
}

/// A method a known path does not have is answered 405 with `Allow` (and a JSON error),
/// whoever asks; an unknown path is still 404.
#[actix_rt::test]
async fn an_unknown_method_on_a_known_path_gets_405_with_allow() {
    let r = rig().await;
    let cases = [
        ("PATCH", "/applications/a1", "GET"),
        ("DELETE", "/applications", "POST"),
        ("POST", "/applications/a1/devices/d1", "DELETE, GET, PUT"),
        (
            "PUT",
            "/applications/a1/devices/d1/attributes/shared",
            "GET, POST",
        ),
        ("GET", "/auth/device", "POST"),
        ("HEAD", "/applications/a1/devices/d1/data", "GET"),
    ];
    for (method, path, allow) in cases {
        for token in ["", "Authorization: Bearer boot-token\r\n"] {
            let req = format!(
                "{method} {path} HTTP/1.1\r\nHost: x\r\n{token}Content-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let answer = until_closed(r.addr, req.as_bytes(), Duration::from_secs(5))
                .await
                .answer;
            assert_eq!(status_of(&answer), 405, "{method} {path}: {answer}");
            let head = answer.to_ascii_lowercase();
            assert!(
                head.contains(&format!("\r\nallow: {}\r\n", allow.to_ascii_lowercase())),
                "{method} {path}: {answer}"
            );
            if method != "HEAD" {
                assert!(answer.contains("\"method_not_allowed\""), "{answer}");
            }
        }
    }
    let (s, e) = r
        .call("GET", "/applications/a1/nothing", Some(BOOT), None)
        .await;
    assert_eq!((s, &e["error"]["code"]), (404, &json!("no_route")), "{e}");
}

/// A client that sends part of a request and then nothing loses its connection after
/// `request_timeout_ms`: a half-sent body gets 408, a half-sent head is closed.
#[actix_rt::test]
async fn a_half_sent_request_is_cut_off_after_the_request_timeout() {
    let r = rig_with(|c| c.request_timeout_ms = 1_000).await;
    let admin = r.app("a1").await;
    r.device(&admin, "a1", "dev1").await;
    let bound = Duration::from_secs(4);
    let head = |token: &str| {
        format!(
            "POST /applications/a1/devices/dev1/command HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"name\": \"x\","
        )
    };
    // A half-sent body: 408 once the timeout passed, and the connection closed.
    let c = until_closed(r.addr, head(&admin).as_bytes(), bound).await;
    assert_eq!(status_of(&c.answer), 408, "{}", c.answer);
    assert!(c.answer.contains("\"request_timeout\""), "{}", c.answer);
    assert!(c.answered >= Duration::from_millis(900), "{:?}", c.answered);
    // The same from a caller without a good token: 401 at once, and closed (after
    // actix-web's second for a closing connection).
    let c = until_closed(r.addr, head("nope").as_bytes(), bound).await;
    assert_eq!(status_of(&c.answer), 401, "{}", c.answer);
    assert!(c.answered < Duration::from_millis(900), "{:?}", c.answered);
    // A half-sent chunked body.
    let chunked = format!(
        "POST /applications/a1/devices/dev1/command HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{{\"nam\r\n"
    );
    let c = until_closed(r.addr, chunked.as_bytes(), bound).await;
    assert_eq!(status_of(&c.answer), 408, "{}", c.answer);
    // A half-sent head: closed once the timeout passed (actix-web answers it 408).
    let c = until_closed(r.addr, b"GET /applications/a1 HTTP/1.1\r\nHost:", bound).await;
    assert!(c.closed < Duration::from_millis(3_000), "{:?}", c.closed);
    // The server still answers.
    let (s, _) = r.call("GET", "/applications/a1", Some(&admin), None).await;
    assert_eq!(s, 200);
}

/// A failed `POST /auth/device` is answered later each time the same device id and key
/// fail again from the same address, as a failed MQTT CONNECT is; other devices and
/// successes are not slowed.
#[actix_rt::test]
async fn failed_device_auth_is_answered_later_each_time_it_repeats() {
    let r = rig_with(|c| {
        c.auth_failure_delay_ms = 400;
        c.auth_failure_delay_max_ms = 800;
    })
    .await;
    let admin = r.app("a1").await;
    r.device(&admin, "a1", "dev1").await;
    r.device(&admin, "a1", "dev2").await;
    let (_, k) = r
        .call(
            "POST",
            "/applications/a1/keys",
            Some(&admin),
            Some(json!({})),
        )
        .await;
    let (key, secret) = (k["key"].as_str().unwrap(), k["secret"].as_str().unwrap());
    let timed = |device: &'static str, secret: String| {
        let key = key.to_owned();
        let r = &r;
        async move {
            let started = std::time::Instant::now();
            let (s, _) = r.auth_device(device, &key, &secret).await;
            (s, started.elapsed())
        }
    };
    let (s, first) = timed("dev1", "wrong".into()).await;
    assert_eq!(s, 401);
    assert!(
        first < Duration::from_millis(300),
        "first failure: {first:?}"
    );
    let (s, second) = timed("dev1", "wrong".into()).await;
    assert_eq!(s, 401);
    assert!(
        second >= Duration::from_millis(400),
        "second failure: {second:?}"
    );
    let (s, third) = timed("dev1", "wrong".into()).await;
    assert_eq!(s, 401);
    assert!(
        third >= Duration::from_millis(800),
        "third failure: {third:?}"
    );
    // Another device's first failure, and a success: answered at once.
    let (s, other) = timed("dev2", "wrong".into()).await;
    assert_eq!(
        (s, other < Duration::from_millis(300)),
        (401, true),
        "{other:?}"
    );
    let (s, ok) = timed("dev1", secret.to_owned()).await;
    assert_eq!((s, ok < Duration::from_millis(300)), (200, true), "{ok:?}");
}

/// A setting the API cannot run with is refused at start, naming it.
#[test]
fn bad_settings_are_refused_naming_the_field() {
    for (cfg, field) in [
        (
            ApiConfig {
                request_timeout_ms: 0,
                ..ApiConfig::default()
            },
            "api.request_timeout_ms",
        ),
        (
            ApiConfig {
                workers: 0,
                ..ApiConfig::default()
            },
            "api.workers",
        ),
        (
            ApiConfig {
                auth_failure_delay_ms: 10,
                auth_failure_delay_max_ms: 1,
                ..ApiConfig::default()
            },
            "api.auth_failure_delay_max_ms",
        ),
    ] {
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.starts_with(&format!("{field}: ")), "{e}");
        let bus = MemoryBus::default();
        let store: Arc<dyn Store> =
            Arc::new(fluxgate_store::sqlite::SqliteStore::in_memory().unwrap());
        let e = ApiState::new(
            cfg,
            &bus,
            store,
            &TopicsConfig::default(),
            &prometheus::Registry::new(),
        )
        .unwrap_err();
        assert!(e.message.contains(field), "{e}");
    }
}

/// The document says what the API does: query parameters with types, every status, the
/// id rules, and that the data query's `to` is exclusive.
#[actix_rt::test]
async fn the_document_has_parameters_statuses_and_id_rules() {
    let r = rig().await;
    let (_, doc) = r.call("GET", "/openapi.json", None, None).await;
    let op = |path: &str, method: &str| doc["paths"][path][method].clone();
    let statuses = |path: &str, method: &str| -> Vec<String> {
        op(path, method)["responses"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    for (path, method, status) in [
        ("/applications", "post", "201"),
        ("/applications", "post", "409"),
        ("/applications/{app}/devices/{id}", "delete", "204"),
        ("/applications/{app}/devices/{id}/state", "post", "422"),
        ("/applications/{app}/devices", "post", "401"),
        ("/api/rpc/twoway/{id}", "post", "504"),
    ] {
        assert!(
            statuses(path, method).contains(&status.to_owned()),
            "{method} {path}: {:?}",
            statuses(path, method)
        );
    }
    let data = op("/applications/{app}/devices/{id}/data", "get");
    let param = |name: &str| {
        data["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no {name}: {data}"))
            .clone()
    };
    assert_eq!(param("to")["in"], "query");
    assert_eq!(param("to")["schema"]["type"], "integer");
    assert!(
        param("to")["description"]
            .as_str()
            .unwrap()
            .contains("exclusive")
    );
    assert_eq!(param("order")["schema"]["enum"], json!(["asc", "desc"]));
    assert_eq!(param("limit")["schema"]["type"], "integer");
    assert_eq!(param("app")["schema"]["maxLength"], 128);
    assert!(param("id")["schema"]["pattern"].is_string());
}

/// Edges of the registry and the data query: at most 256 attribute definitions whichever
/// route sets them, and any `to` (an i64) is a window, the smallest one included.
#[actix_rt::test]
async fn attribute_definitions_are_capped_and_any_window_end_is_taken() {
    let r = rig().await;
    let admin = r.app("a1").await;
    let defs: Vec<Value> = (0..257)
        .map(|i| json!({"name": format!("k{i}"), "kind": "number"}))
        .collect();
    let (s, e) = r
        .call(
            "POST",
            "/applications/a1/devices",
            Some(&admin),
            Some(json!({"id": "many", "attributes": defs})),
        )
        .await;
    assert_eq!(
        (s, &e["error"]["field"]),
        (400, &json!("attributes")),
        "{e}"
    );
    r.device(&admin, "a1", "dev1").await;
    for to in [i64::MIN, i64::MAX, 0] {
        let (s, b) = r
            .call(
                "GET",
                &format!("/applications/a1/devices/dev1/data?to={to}"),
                Some(&admin),
                None,
            )
            .await;
        assert_eq!((s, &b["points"]), (200, &json!([])), "to={to}: {b}");
    }
}

/// Found by schemathesis (`compat/schemathesis.sh`): a deleted device's attribute
/// definitions are gone (404, as the device is), and `GET .../attributes/shared` is an
/// operation of its own path in the document, as `Allow` on that path says.
#[actix_rt::test]
async fn a_deleted_devices_definitions_are_gone_and_shared_attributes_have_their_path() {
    let r = rig().await;
    let admin = r.app("a1").await;
    r.device(&admin, "a1", "dev1").await;
    let defs = "/applications/a1/devices/dev1/attributes";
    assert_eq!(r.call("GET", defs, Some(&admin), None).await.0, 200);
    let (s, _) = r
        .call(
            "DELETE",
            "/applications/a1/devices/dev1",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, 204);
    let (s, e) = r.call("GET", defs, Some(&admin), None).await;
    assert_eq!((s, &e["error"]["code"]), (404, &json!("not_found")), "{e}");

    let (_, doc) = r.call("GET", "/openapi.json", None, None).await;
    let shared = &doc["paths"]["/applications/{app}/devices/{id}/attributes/shared"];
    assert!(
        shared["get"].is_object() && shared["post"].is_object(),
        "{shared}"
    );
    let scope = &doc["paths"]["/applications/{app}/devices/{id}/attributes/{scope}"]["get"];
    assert_eq!(scope["parameters"][2]["schema"]["enum"], json!(["client"]));
}
