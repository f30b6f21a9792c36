//! The user's specification, executed: the examples in `../shared/seeds/` go through the
//! same classify + normalize path the MQTT front uses.
//!
//! Seed 001's `mosquitto_pub` commands are read from the seed file itself, so the test
//! follows the specification text rather than a copy of it. Seeds 000 and 002 show their
//! examples as JavaScript and as JSON with braces lost in extraction; those are restored
//! here by hand and cited.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use fluxgate_model::{
    Body, Channel, Check, DeviceId, DeviceRef, Envelope, Ingress, Kind, Limits, MessageId,
    Principal, PublishTarget, Reject, TenantId, Value, classify_publish, normalize,
};

const NOW: i64 = 1_700_000_000_000;

fn seeds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/seeds")
}

fn seed(prefix: &str) -> String {
    let dir = seeds_dir();
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "the seeds must sit beside the repository at {}: {e}",
            dir.display()
        )
    });
    for entry in entries {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(prefix)
        {
            return std::fs::read_to_string(path).unwrap();
        }
    }
    panic!("no seed {prefix}* in {}", dir.display());
}

fn publish(
    principal: &Principal,
    topic: &str,
    payload: &[u8],
) -> Result<(Check, Vec<Envelope>), Reject> {
    let tenant = TenantId::new("app").unwrap();
    let limits = Limits::default();
    let class = classify_publish(principal, topic)?;
    let PublishTarget::Platform(op) = class.target else {
        panic!("{topic} is a platform topic");
    };
    let ing = Ingress {
        tenant: &tenant,
        principal,
        channel: Channel::Mqtt,
        id: MessageId::from_parts(NOW as u64, 0),
        received_ms: NOW,
        limits: &limits,
    };
    Ok((class.check, normalize(&ing, &op, payload)?))
}

/// Every `mosquitto_pub ... -t "TOPIC" ... -m 'PAYLOAD'` in a text, line continuations joined.
fn mosquitto_pubs(text: &str) -> Vec<(String, String)> {
    let joined = text.replace("\\\n", " ");
    joined
        .lines()
        .filter(|l| l.trim_start().starts_with("mosquitto_pub"))
        .map(|l| {
            let topic = l
                .split("-t \"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .expect("-t");
            let payload = l
                .split("-m '")
                .nth(1)
                .and_then(|r| r.split('\'').next())
                .expect("-m");
            (topic.to_owned(), payload.to_owned())
        })
        .collect()
}

#[test]
fn seed_001_every_mosquitto_pub_example_normalizes() {
    let gw = Principal::ThingsBoard {
        device: DeviceId::new("gateway").unwrap(),
        gateway: true,
    };
    let examples = mosquitto_pubs(&seed("001_"));
    let mut kinds = Vec::new();
    for (topic, payload) in &examples {
        let (check, envs) = publish(&gw, topic, payload.as_bytes())
            .unwrap_or_else(|r| panic!("{topic} {payload}: {r} ({})", r.code()));
        assert_eq!(check, Check::None);
        assert!(!envs.is_empty());
        for e in &envs {
            assert_eq!(
                e.via.as_ref().map(DeviceId::as_str),
                Some("gateway"),
                "{topic}"
            );
            assert!(matches!(e.device, DeviceRef::Name(_)), "{topic}");
            assert_eq!(Envelope::from_bytes(&e.to_bytes()).unwrap(), *e);
        }
        kinds.push(envs[0].body.kind());
    }
    assert_eq!(
        kinds,
        [
            Kind::Connect,
            Kind::Connect,
            Kind::Disconnect,
            Kind::Attributes,
            Kind::Telemetry,
            Kind::Claim
        ],
        "the six examples of seed 001, in order"
    );
    // Example 2 names a profile; example 1 gets the default.
    let profile = |i: usize| {
        let (_, envs) = publish(&gw, &examples[i].0, examples[i].1.as_bytes()).unwrap();
        match &envs[0].body {
            Body::Connect { profile, .. } => profile.clone(),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(profile(0).as_deref(), Some("default"));
    assert_eq!(profile(1).as_deref(), Some("Sensor A"));
    // The telemetry example keeps its timestamp and types.
    let (_, envs) = publish(&gw, &examples[4].0, examples[4].1.as_bytes()).unwrap();
    let Body::Telemetry { samples, .. } = &envs[0].body else {
        panic!()
    };
    assert_eq!(samples[0].ts_ms, 1_700_000_000_000);
    assert_eq!(samples[0].values["temperature"], Value::Float(23.5));
    assert_eq!(samples[0].values["humidity"], Value::Integer(61));
}

#[test]
fn seed_001_payload_blocks_normalize() {
    // The multi-line "Payload:" blocks of seed 001 (verbatim but for whitespace).
    let text = seed("001_");
    let gw = Principal::ThingsBoard {
        device: DeviceId::new("gateway").unwrap(),
        gateway: true,
    };
    for (topic, block_start, devices) in [
        (
            "v1/gateway/attributes",
            "{\n\"Device A\": {\"attribute1\"",
            2,
        ),
        ("v1/gateway/attributes/request", "{\n\"id\": 1,", 1),
        ("v1/gateway/telemetry", "{\n\"Device A\": [", 2),
        ("v1/gateway/claim", "{\n\"Device A\": {\"secretKey\"", 2),
    ] {
        let start = text
            .find(block_start)
            .unwrap_or_else(|| panic!("{block_start:?} in seed 001"));
        let end = start + text[start..].find("\n}").unwrap() + 2;
        let block = &text[start..end];
        let (_, envs) =
            publish(&gw, topic, block.as_bytes()).unwrap_or_else(|r| panic!("{topic}: {r}"));
        assert_eq!(envs.len(), devices, "{topic}");
    }
    // The RPC reply line.
    let reply = r#"{"device": "Device A", "id": 1, "data": {"success": true}}"#;
    assert!(text.contains(reply));
    let (_, envs) = publish(&gw, "v1/gateway/rpc", reply.as_bytes()).unwrap();
    assert_eq!(envs[0].body.kind(), Kind::RpcResponse);
}

#[test]
fn seed_000_gateway_publishes_for_a_peripheral() {
    let text = seed("000_");
    assert!(
        text.contains("client.publish('losant/my-peripheral-id', JSON.stringify(peripheralState))")
    );
    let gw = Principal::Losant {
        device: DeviceId::new("my-gateway-id").unwrap(),
        gateway: true,
    };
    // `JSON.stringify({ data: { temperature: 72 }})`, to the topic the seed uses and to
    // the documented state topic.
    for topic in ["losant/my-peripheral-id", "losant/my-peripheral-id/state"] {
        let (check, envs) = publish(&gw, topic, br#"{"data":{"temperature":72}}"#).unwrap();
        assert_eq!(
            check,
            Check::Peripheral {
                gateway: DeviceId::new("my-gateway-id").unwrap(),
                peripheral: DeviceId::new("my-peripheral-id").unwrap(),
            }
        );
        assert_eq!(
            envs[0].device,
            DeviceRef::Id(DeviceId::new("my-peripheral-id").unwrap())
        );
        assert_eq!(envs[0].via, Some(DeviceId::new("my-gateway-id").unwrap()));
    }
    // Its own state needs no check.
    let (check, _) = publish(&gw, "losant/my-gateway-id/state", br#"{"data":{"t":1}}"#).unwrap();
    assert_eq!(check, Check::None);
    // A plain device may not do the same.
    let dev = Principal::Losant {
        device: DeviceId::new("my-device-id").unwrap(),
        gateway: false,
    };
    assert!(
        publish(
            &dev,
            "losant/my-peripheral-id/state",
            br#"{"data":{"t":1}}"#
        )
        .is_err()
    );
}

#[test]
fn seed_002_state_example() {
    let text = seed("002_");
    assert!(text.contains(r#""time": { "$date": "2016-11-04T19:42:06.710Z" }"#));
    let dev = Principal::Losant {
        device: DeviceId::new("575ecf887ae143cd83dc4aa2").unwrap(),
        gateway: false,
    };
    let payload = br#"{
  "data": {
    "temperature": 72
  },
  "time": { "$date": "2016-11-04T19:42:06.710Z" }
}"#;
    let (_, envs) = publish(&dev, "losant/575ecf887ae143cd83dc4aa2/state", payload).unwrap();
    let Body::Telemetry {
        samples,
        flow_version,
    } = &envs[0].body
    else {
        panic!()
    };
    assert_eq!(samples[0].ts_ms, 1_478_288_526_710);
    assert_eq!(samples[0].values["temperature"], Value::Integer(72));
    assert_eq!(*flow_version, None);
}

#[test]
fn seed_002_command_example_round_trips() {
    let cmd = fluxgate_model::losant::encode_command(
        "set-temperature",
        &serde_json::json!({"temperature": 72}),
        1_478_288_526_710,
    );
    let parsed = fluxgate_model::losant::parse_command(&cmd).unwrap();
    assert_eq!(parsed.name, "set-temperature");
    assert_eq!(parsed.payload, serde_json::json!({"temperature": 72}));
}
