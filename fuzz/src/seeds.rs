//! The committed seed corpus (`fuzz/corpus/<target>/`), written by
//! `cargo test --manifest-path fuzz/Cargo.toml -- --ignored write_seed_corpus`: the seeds'
//! examples (`../shared/seeds/*.txt`, braces restored where the page lost them), the
//! shapes `PROTOCOLS.md` names, the edge cases the parsers document, and real bus messages
//! made by the model's own code (envelopes from `normalize`, every body kind; deliveries of
//! every kind to every kind of client; rejections; registry changes).
//!
//! Kept small on purpose (tens of files per target): libFuzzer grows its own corpus from
//! these in a temporary copy (`fuzz/run.sh`).

use std::path::Path;

use fluxgate_model::{
    AttributeReplyShape, Body, Channel, Command, CorrelationId, Delivery, DeviceName, DeviceRef,
    Dialect, ENVELOPE_VERSION, Envelope, Ingress, KeySelection, Limits, MessageId, Outbound,
    PublishTarget, RegistryChange, Reject, Rejection, Sample, SessionInfo, TenantId, Value, Values,
    classify_publish, normalize,
};

use crate::{NOW, id};

/// Losant state (seed 000, seed 002, PROTOCOLS.md's time forms) and commands.
const LOSANT: &[(&str, &str)] = &[
    (
        "seed002-state",
        r#"{"data": {"temperature": 72}, "time": { "$date": "2016-11-04T19:42:06.710Z" }}"#,
    ),
    (
        "seed002-state-form",
        r#"{"data": {"an_attribute_name": "an_attribute_value", "another_attribute_name": "another_attribute_value"}, "time": 1478288526710, "flowVersion": "production"}"#,
    ),
    ("seed000-peripheral", r#"{ "data": { "temperature": 72 }}"#),
    (
        "time-seconds",
        r#"{"data": {"t": 1.5}, "time": 1478288526}"#,
    ),
    ("time-ms-ago", r#"{"data": {"t": -3}, "time": -5000}"#),
    (
        "time-iso",
        r#"{"data": {"on": true}, "time": "2016-11-04T19:42:06.710+02:00"}"#,
    ),
    (
        "time-date-only",
        r#"{"data": {"s": "x"}, "time": "2016-11-04"}"#,
    ),
    (
        "time-date-ms",
        r#"{"data": {"n": null}, "time": {"$date": 1478288526710}}"#,
    ),
    (
        "time-garbage",
        r#"{"data": {"a": 1}, "time": [1, {"x": 2}]}"#,
    ),
    (
        "values-every-type",
        r#"{"data": {"i": -9223372036854775808, "u": 18446744073709551615, "f": 1e5, "z": -0, "s": "é\u0000\ud83d\ude00", "b": false, "o": {"k": [1, {"d": null}]}, "a": [], "n": null}}"#,
    ),
    (
        "rest-array",
        r#"[{"data": {"a": 1}}, {"data": {"b": "x"}, "time": -1000}]"#,
    ),
    (
        "duplicate-keys",
        r#"{"data": {"b": 1, "a": 2, "b": 3}, "data": {"c": 4}}"#,
    ),
    ("empty-data", r#"{"data": {}}"#),
    ("no-data", r#"{"time": 1478288526710}"#),
    ("data-not-object", r#"{"data": [1, 2]}"#),
    ("not-object", r#"[["data"]]"#),
    ("truncated", r#"{"data": {"temperature": 7"#),
    (
        "deep",
        r#"{"data": {"d": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}}"#,
    ),
    (
        "brackets-in-strings",
        r#"{"data": {"s": "[[[[{{{{\"]]]]"}, "flowVersion": "v\\"}"#,
    ),
    (
        "seed002-command",
        r#"{"name": "set-temperature", "payload": {"temperature": 72}, "time": {"$date": "2016-11-04T19:42:06.710Z"}}"#,
    ),
    ("command-form", r#"{"name": "command-name", "payload": {}}"#),
    ("command-no-name", r#"{"payload": 5, "time": 1}"#),
    ("empty", ""),
    ("whitespace", " \n\t"),
];

/// ThingsBoard device API (PROTOCOLS.md) and what a device reads.
const TB_DEVICE: &[(&str, &str)] = &[
    ("telemetry-flat", r#"{"temperature": 42, "humidity": 80}"#),
    (
        "telemetry-ts",
        r#"{"ts": 1483228800000, "values": {"temperature": 42, "humidity": 80}}"#,
    ),
    (
        "telemetry-array",
        r#"[{"ts": 1483228800000, "values": {"temperature": 42}}, {"ts": 1483228801000, "values": {"temperature": 43}}]"#,
    ),
    (
        "telemetry-mixed",
        r#"[{"ts": 1, "values": {"a": 1}}, {"b": 2}]"#,
    ),
    ("values-without-ts", r#"{"values": {"a": 1, "b": "x"}}"#),
    ("ts-beside-flat", r#"{"ts": 1.7e12, "a": 1, "values": 3}"#),
    (
        "ts-not-number",
        r#"{"ts": "yesterday", "values": {"a": 1}}"#,
    ),
    (
        "values-twice",
        r#"{"values": {"a": 1}, "values": {"b": [2]}}"#,
    ),
    ("empty-items", r#"[{}, {"values": {}}]"#),
    (
        "attributes",
        r#"{"fw_version": "1.0", "battery": 87, "o": {"x": [true]}}"#,
    ),
    (
        "attribute-request",
        r#"{"clientKeys": "attribute1,attribute2", "sharedKeys": "shared1,shared2"}"#,
    ),
    (
        "attribute-request-arrays",
        r#"{"clientKeys": ["a", " b "], "sharedKeys": null}"#,
    ),
    ("attribute-request-wrong", r#"{"clientKeys": 5}"#),
    (
        "rpc-request",
        r#"{"method": "getSessionLimits", "params": {}}"#,
    ),
    (
        "rpc-request-params",
        r#"{"method": "toggle_gpio", "params": {"pin": 1}}"#,
    ),
    ("rpc-response", r#"{"result": "ok"}"#),
    ("rpc-response-text", "done, thanks"),
    ("rpc-response-number", "42"),
    ("claim", r#"{"secretKey": "value_A", "durationMs": 60000}"#),
    ("claim-negative", r#"{"secretKey": 5, "durationMs": -1}"#),
    (
        "attribute-response",
        r#"{"client": {"a": 1}, "shared": {"b": 2.5}}"#,
    ),
    ("empty", ""),
    ("object", "{}"),
    ("truncated", r#"[{"ts": 1, "values": {"a""#),
];

/// ThingsBoard gateway API (seed 001, PROTOCOLS.md) and what a gateway reads.
const TB_GATEWAY: &[(&str, &str)] = &[
    (
        "seed001-connect",
        r#"{"device": "Device A", "type": "Sensor A"}"#,
    ),
    ("seed001-disconnect", r#"{"device": "Device A"}"#),
    (
        "seed001-attributes",
        r#"{"Device A": {"attribute1": "value1", "attribute2": 42}, "Device B": {"attribute1": "value1", "attribute2": 42}}"#,
    ),
    (
        "seed001-attribute-request",
        r#"{"id": 1, "device": "Device A", "client": ["key1", "key2"], "shared": ["key3", "key4"]}"#,
    ),
    (
        "sdk-attribute-request-key",
        r#"{"id": 1, "device": "Device A", "client": true, "key": "fw"}"#,
    ),
    (
        "sdk-attribute-request-keys",
        r#"{"id": "r-9", "device": "Device A", "client": false, "keys": ["k1", "k2"]}"#,
    ),
    (
        "seed001-shared-update",
        r#"{"device": "Device A", "data": {"attribute1": "value1", "attribute2": 42}}"#,
    ),
    (
        "seed001-telemetry",
        r#"{"Device A": [{"ts": 1483228800000, "values": {"temperature": 42, "humidity": 80}}, {"ts": 1483228801000, "values": {"temperature": 43, "humidity": 82}}], "Device B": [{"ts": 1483228800000, "values": {"temperature": 42, "humidity": 80}}]}"#,
    ),
    (
        "telemetry-single-object",
        r#"{"Device A": {"ts": 1700000000000, "values": {"temperature": 23.5, "humidity": 61}}}"#,
    ),
    (
        "telemetry-no-ts",
        r#"{"Device A": [{"values": {"t": 1}}], "B/with slash": {"t": 2}}"#,
    ),
    (
        "telemetry-same-device-twice",
        r#"{"A": {"t": 1}, "A": [{"t": 2}]}"#,
    ),
    (
        "telemetry-bad-name",
        r#"{"": {"t": 1}, "a\u0000b": {"t": 2}}"#,
    ),
    (
        "seed001-rpc-request",
        r#"{"device": "Device A", "data": {"id": 1, "method": "toggle_gpio", "params": {"pin": 1}}}"#,
    ),
    (
        "seed001-rpc-reply",
        r#"{"device": "Device A", "id": 1, "data": {"success": true}}"#,
    ),
    ("rpc-reply-string-id", r#"{"device": "A", "id": "abc"}"#),
    (
        "seed001-claim",
        r#"{"Device A": {"secretKey": "value_A", "durationMs": 60000}, "Device B": {"secretKey": "value_B", "durationMs": 60000}}"#,
    ),
    ("claim-empty", r#"{"Device A": {}}"#),
    (
        "attribute-response-value",
        r#"{"id": 1, "device": "Device A", "value": 5}"#,
    ),
    (
        "attribute-response-values",
        r#"{"id": 1, "device": "Device A", "values": {"a": 1, "b": "x"}}"#,
    ),
    ("id-float", r#"{"device": "A", "id": 1.5, "client": ["a"]}"#),
    ("not-object", r#"[{"device": "A"}]"#),
    ("empty", ""),
    ("truncated", r#"{"Device A": [{"ts": 1, "#),
];

/// Topics of both dialects: every platform topic, custom topics, and refused ones.
const TOPICS: &[&str] = &[
    "losant/d1/state",
    "losant/d1",
    "losant/d1/command",
    "losant/my-peripheral-id",
    "losant/575ecf887ae143cd83dc4aa2/state",
    "losant/p1/command",
    "losant//state",
    "losant/+/command",
    "losant/#",
    "losantx",
    "losant/d1/state/extra",
    "v1/devices/me/telemetry",
    "v1/devices/me/attributes",
    "v1/devices/me/attributes/request/1",
    "v1/devices/me/attributes/response/+",
    "v1/devices/me/rpc/request/42",
    "v1/devices/me/rpc/request/+",
    "v1/devices/me/rpc/request/#",
    "v1/devices/me/rpc/response/abc",
    "v1/devices/me/rpc/response/007",
    "v1/devices/me/rpc/response/-0",
    "v1/devices/me/claim",
    "v1/devices/other/telemetry",
    "v1/gateway/connect",
    "v1/gateway/disconnect",
    "v1/gateway/attributes",
    "v1/gateway/attributes/request",
    "v1/gateway/attributes/response",
    "v1/gateway/telemetry",
    "v1/gateway/rpc",
    "v1/gateway/claim",
    "v1/gateway/+",
    "v1/gateway/unknown",
    "v1",
    "v1/#",
    "factory/line1/temp",
    "factory/+/temp",
    "#",
    "$SYS/broker/load",
    "a/+",
    "",
    "/",
    "a\u{0}b",
    "sensors/é/\u{202e}",
];

/// `fluxgate.toml` documents: the sections this build has, edge values, errors.
const CONFIGS: &[(&str, &str)] = &[
    ("empty", ""),
    (
        "front-listeners",
        "[front]\ntcp_addr = \"\"\nws_addr = \"0.0.0.0:8083\"\nws_paths = [\"/mqtt\"]\nhttp_addr = \"\"\n",
    ),
    (
        "front-tls",
        "[front]\ntls_addr = \"0.0.0.0:8883\"\n[front.tls]\ncert_path = \"/etc/c.pem\"\nkey_path = \"/etc/k.pem\"\nreload_check_secs = 0\n",
    ),
    (
        "front-rate-limits",
        "[front.rate_limits]\nblock_secs = 1\nblock_max_secs = 18446744073709551615\nper_topic = { messages = 0, window_secs = 0 }\n[front.application_rate_limits.app1.per_connection]\nmessages = 5\nwindow_secs = 0\n",
    ),
    (
        "limits",
        "[front.limits]\nmax_json_depth = 100\nmax_payload_bytes = 1\n[validator.limits]\nmax_json_depth = 500\n",
    ),
    (
        "validator",
        "[validator]\nretry_initial_ms = 1\nretry_max_ms = 9223372036854775807\nregistry_cache_ttl_secs = 0\n[validator.time_window]\nmax_past_ms = -9223372036854775808\nmax_future_ms = 9223372036854775807\n",
    ),
    (
        "writer-dispatcher",
        "[writer]\nbatch_max_points = 0\nbatch_max_age_ms = 0\n[dispatcher]\nretry_initial_ms = 10\nretry_max_ms = 5\n",
    ),
    (
        "api",
        "[api]\nmax_json_depth = 0\nmax_body_bytes = 0\nrpc_timeout_ms = 9223372036854775807\n",
    ),
    ("wrong-type", "[front]\nconnect_timeout_secs = \"soon\"\n"),
    ("unknown-key", "[front]\ntcp_adr = \"x\"\n"),
    ("not-toml", "[front\ntcp_addr = "),
    (
        "inline-tables",
        "front = { workers = 0, max_in_flight = 65535, v3_on_denied = \"drop\", v3_on_malformed = \"close\" }\n",
    ),
];

/// Publishes for the property target: every platform topic with its own payloads, as the
/// principal that may send it, with the default and the tight limits and the deepest
/// configurable nesting.
fn publishes() -> Vec<(String, Vec<u8>)> {
    let payloads = |set: &[(&str, &'static str)]| -> Vec<&'static str> {
        set.iter().map(|(_, p)| *p).collect()
    };
    // (principal byte, topic, payloads)
    let plan: Vec<(u8, &str, Vec<&str>)> = vec![
        (0, "losant/d1/state", payloads(LOSANT)),
        (1, "losant/p1/state", payloads(LOSANT)),
        (1, "losant/p1", vec![LOSANT[2].1]),
        (2, "v1/devices/me/telemetry", payloads(TB_DEVICE)),
        (2, "v1/devices/me/attributes", vec![TB_DEVICE[9].1]),
        (
            2,
            "v1/devices/me/attributes/request/1",
            vec![TB_DEVICE[10].1],
        ),
        (2, "v1/devices/me/rpc/request/7", vec![TB_DEVICE[13].1]),
        (2, "v1/devices/me/rpc/response/abc", vec![TB_DEVICE[16].1]),
        (2, "v1/devices/me/claim", vec![TB_DEVICE[18].1, ""]),
        (3, "v1/gateway/connect", vec![TB_GATEWAY[0].1]),
        (3, "v1/gateway/disconnect", vec![TB_GATEWAY[1].1]),
        (3, "v1/gateway/attributes", vec![TB_GATEWAY[2].1]),
        (
            3,
            "v1/gateway/attributes/request",
            vec![TB_GATEWAY[3].1, TB_GATEWAY[4].1, TB_GATEWAY[5].1],
        ),
        (3, "v1/gateway/telemetry", payloads(&TB_GATEWAY[7..12])),
        (3, "v1/gateway/rpc", vec![TB_GATEWAY[13].1]),
        (3, "v1/gateway/claim", vec![TB_GATEWAY[15].1]),
    ];
    let mut out = Vec::new();
    for (p, topic, payloads) in plan {
        // The full payload sets only once each; tens of files in all.
        let many = payloads.len() > 3;
        for (i, payload) in payloads.iter().enumerate() {
            if many && i % 4 != 0 {
                continue;
            }
            let mut bytes = vec![p, 0, 0];
            bytes.extend_from_slice(topic.as_bytes());
            bytes.push(0);
            bytes.extend_from_slice(payload.as_bytes());
            out.push((format!("{}-{i}", topic.replace('/', "_")), bytes));
        }
    }
    // The deepest nesting a configuration allows (depth byte 99: 1 + 99 % 100 = 100), in
    // every place a payload can nest.
    let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
    for (p, topic, payload) in [
        (
            0,
            "losant/d1/state",
            format!(r#"{{"data":{{"a":{}}}}}"#, deep(98)),
        ),
        (
            2,
            "v1/devices/me/telemetry",
            format!(r#"[{{"ts":1,"values":{{"a":{}}}}}]"#, deep(97)),
        ),
        (
            2,
            "v1/devices/me/rpc/request/1",
            format!(r#"{{"method":"m","params":{}}}"#, deep(99)),
        ),
        (2, "v1/devices/me/rpc/response/1", deep(100)),
        (
            3,
            "v1/gateway/telemetry",
            format!(r#"{{"A":[{{"values":{{"a":{}}}}}]}}"#, deep(96)),
        ),
        (
            3,
            "v1/gateway/rpc",
            format!(r#"{{"device":"A","id":1,"data":{}}}"#, deep(99)),
        ),
    ] {
        let mut bytes = vec![p, 99, 0];
        bytes.extend_from_slice(topic.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(payload.as_bytes());
        out.push((format!("deep-{}", topic.replace('/', "_")), bytes));
    }
    // The tight limits, and a refused topic (rejected-log path).
    for (p, topic, payload) in [
        (3, "v1/gateway/telemetry", TB_GATEWAY[7].1),
        (0, "losant/d1/state", LOSANT[9].1),
        (0, "losant/d2/state", LOSANT[0].1),
        (2, "v1/gateway/telemetry", TB_GATEWAY[7].1),
    ] {
        let mut bytes = vec![p, 0, 1];
        bytes.extend_from_slice(topic.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(payload.as_bytes());
        out.push((format!("tight-{}-{p}", topic.replace('/', "_")), bytes));
    }
    out
}

/// Real envelopes: what `normalize` makes of the property corpus, and every body kind.
fn envelopes() -> Vec<Envelope> {
    let tenant = TenantId::new("app1").unwrap_or_else(|e| panic!("{e}"));
    let mut out = Vec::new();
    for (_, bytes) in publishes() {
        let Some(input) = crate::PublishInput::parse(&bytes) else {
            continue;
        };
        let Ok(class) = classify_publish(&input.principal, input.topic) else {
            continue;
        };
        let PublishTarget::Platform(op) = class.target else {
            continue;
        };
        let ing = Ingress {
            tenant: &tenant,
            principal: &input.principal,
            channel: Channel::Mqtt,
            id: MessageId::from_parts(NOW as u64, 42),
            received_ms: NOW,
            limits: &Limits::default(),
        };
        if let Ok(envs) = normalize(&ing, &op, input.payload) {
            // One of each topic is enough.
            if !out
                .iter()
                .any(|e: &Envelope| e.body.kind() == envs[0].body.kind())
            {
                out.extend(envs);
            }
        }
    }
    let mut values = Values::new();
    values.insert("temp", Value::Float(21.5));
    values.insert("n", Value::Integer(3));
    let base = |body: Body| Envelope {
        v: ENVELOPE_VERSION,
        id: MessageId::from_parts(NOW as u64, 7),
        part: 0,
        tenant: tenant.clone(),
        device: DeviceRef::Id(id("dev1")),
        via: None,
        dialect: Dialect::ThingsBoard,
        channel: Channel::Internal,
        received_ms: NOW,
        body,
    };
    let session = SessionInfo {
        front: "front-0".into(),
        remote_addr: Some("127.0.0.1:5555".into()),
    };
    for body in [
        Body::Connect {
            profile: None,
            session: Some(session.clone()),
        },
        Body::Disconnect {
            reason: Some("keepalive timeout".into()),
            session: Some(session),
        },
        Body::Subscribed,
        Body::SubscribedAttributes,
        Body::RpcAnswer {
            request: MessageId::from_parts(3, 4),
            request_id: CorrelationId::Str("x".into()),
            data: serde_json::json!({"time": 1}),
        },
        Body::Command(Command {
            name: "set-temperature".into(),
            payload: serde_json::json!({"temperature": 72}),
            time_ms: Some(5),
            two_way: true,
            persistent: true,
            expires_ms: Some(NOW + 1000),
        }),
        Body::DeliveryOutcome {
            delivery: MessageId::from_parts(1, 2),
            delivered: false,
            at_most_once: false,
            reason: Some("no subscription".into()),
        },
        Body::DeliveryOutcome {
            delivery: MessageId::from_parts(1, 3),
            delivered: true,
            at_most_once: true,
            reason: None,
        },
        Body::AttributeRequest {
            request_id: CorrelationId::Int(1),
            client: KeySelection::All,
            shared: KeySelection::Nothing,
            reply: AttributeReplyShape::Device,
        },
    ] {
        out.push(base(body));
    }
    let mut named = base(Body::Telemetry {
        samples: vec![Sample { ts_ms: -1, values }],
        flow_version: Some("v2".into()),
    });
    named.device = DeviceRef::Name(DeviceName::new("Device A/1").unwrap_or_else(|e| panic!("{e}")));
    named.via = Some(id("gw1"));
    named.part = 3;
    out.push(named);
    out
}

/// Deliveries of every kind, to devices and through gateways, in both dialects.
fn deliveries() -> Vec<Delivery> {
    let mut values = Values::new();
    values.insert("fw", Value::from("1.2"));
    values.insert("o", Value::Json(serde_json::json!({"a": [1]})));
    let bodies = [
        Outbound::Command {
            request_id: CorrelationId::Int(7),
            name: "set".into(),
            payload: serde_json::json!({"x": 1}),
            time_ms: 1_478_288_526_710,
        },
        Outbound::RpcResponse {
            request_id: CorrelationId::Str("abc".into()),
            data: serde_json::json!({"ok": true}),
        },
        Outbound::AttributeResponse {
            request_id: CorrelationId::Int(1),
            reply: AttributeReplyShape::GatewayValue,
            client: values.clone(),
            shared: Values::new(),
        },
        Outbound::AttributeResponse {
            request_id: CorrelationId::Int(2),
            reply: AttributeReplyShape::Device,
            client: values.clone(),
            shared: values.clone(),
        },
        Outbound::SharedAttributes { values },
    ];
    let mut out = Vec::new();
    for dialect in [Dialect::Losant, Dialect::ThingsBoard] {
        for via in [None, Some(id("gw1"))] {
            for body in &bodies {
                out.push(Delivery {
                    v: ENVELOPE_VERSION,
                    id: MessageId::from_parts(NOW as u64, 9),
                    tenant: TenantId::new("app1").unwrap_or_else(|e| panic!("{e}")),
                    device: id("dev1"),
                    device_name: Some(
                        DeviceName::new("Device A").unwrap_or_else(|e| panic!("{e}")),
                    ),
                    via: via.clone(),
                    dialect,
                    body: body.clone(),
                });
            }
        }
    }
    out
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{dir:?}: {e}"));
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{path:?}: {e}"));
}

#[test]
#[ignore = "writes fuzz/corpus/: run by hand when the seeds change"]
fn write_seed_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let _ = std::fs::remove_dir_all(&root);
    for (target, set) in [
        ("losant", LOSANT),
        ("tb_device", TB_DEVICE),
        ("tb_gateway", TB_GATEWAY),
    ] {
        for (name, payload) in set {
            write(&root.join(target), name, payload.as_bytes());
        }
    }
    for (i, t) in TOPICS.iter().enumerate() {
        write(&root.join("topic"), &format!("{i:02}"), t.as_bytes());
    }
    for (name, bytes) in publishes() {
        write(&root.join("front_accepts_pipeline_decodes"), &name, &bytes);
    }
    let dir = root.join("envelope");
    for (i, e) in envelopes().iter().enumerate() {
        write(
            &dir,
            &format!("{i:02}-{}", e.body.kind().as_str()),
            &e.to_bytes(),
        );
    }
    write(&dir, "version-2", br#"{"v":2}"#);
    let dir = root.join("delivery");
    for (i, d) in deliveries().iter().enumerate() {
        write(&dir, &format!("{i:02}"), &d.to_bytes());
    }
    let dir = root.join("rejection");
    let tenant = TenantId::new("app1").unwrap_or_else(|e| panic!("{e}"));
    let rejects = [
        Reject::MalformedJson {
            detail: "EOF while parsing an object at line 1 column 7".into(),
        },
        Reject::TopicNotAllowed {
            topic: "losant/d2/state".into(),
        },
        Reject::TooDeep { limit: 32 },
        Reject::EmptyData,
    ];
    for (i, r) in rejects.iter().enumerate() {
        let rej = Rejection::new(tenant.clone(), "d1", NOW, r, b"{\"data\": {\xff");
        write(&dir, &format!("{i:02}"), &rej.to_bytes());
    }
    // Record keys (undecodable records) and command-outcome keys.
    write(&dir, "key-tenant-device", b"app1/dev-9");
    write(&dir, "key-tenant-only", b"app1");
    write(
        &dir,
        "key-message-id",
        b"018bcfe5-6800-7000-8000-00000000002a",
    );
    let dir = root.join("registry_change");
    let changes = [
        RegistryChange::Device {
            tenant: tenant.clone(),
            device: id("d1"),
        },
        RegistryChange::AccessKey { key: "k1".into() },
        RegistryChange::DeviceToken {
            token_hash: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
        },
        RegistryChange::AttributeDefs {
            tenant: tenant.clone(),
            device: id("d1"),
        },
        RegistryChange::Application { tenant },
    ];
    for (i, c) in changes.iter().enumerate() {
        write(&dir, &format!("{i:02}"), &c.to_bytes());
    }
    write(&dir, "unknown-kind", br#"{"kind":"nope"}"#);
    let dir = root.join("config");
    for (name, text) in CONFIGS {
        write(&dir, name, text.as_bytes());
    }
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/fluxgate.toml");
    write(
        &dir,
        "deploy-fluxgate.toml",
        &std::fs::read(&deploy).unwrap_or_else(|e| panic!("{deploy:?}: {e}")),
    );
    let defaults = toml::to_string_pretty(&crate::config::defaults())
        .unwrap_or_else(|e| panic!("defaults as TOML: {e}"));
    write(&dir, "defaults", defaults.as_bytes());
}
