//! The checks behind fluxgate's fuzz targets: each `fuzz_targets/<name>.rs` hands its input
//! to the function of the same name here.
//!
//! A check panics only on a finding: a parser that panicked, or a property that did not
//! hold. Besides "never panics", the properties are the ones the rest of the system relies
//! on:
//! - what a parser accepts keeps the [`Limits`] it was given (the validator enforces the
//!   same limits again; a message the front acknowledged must not be refused for them);
//! - what a parser accepts, encoded again the way a client sends it, parses back equal (so
//!   the encoders the load generator, the tests and the deliveries use speak the dialect
//!   the parsers read);
//! - every bus message decoded from bytes encodes to bytes that decode back equal;
//! - [`front_accepts_pipeline_decodes`]: anything the MQTT front accepts becomes envelopes
//!   the validator (and every other consumer) decodes back equal, and anything it refuses
//!   becomes a rejected-log entry the writer decodes.
//!
//! The functions are plain code, so `cargo test` here replays the committed corpus
//! (`fuzz/corpus/<target>/`) through them without libFuzzer.

pub mod config;
// `crate::Quotas`, as the validator's config.rs names it (see `config::Quotas`).
use config::Quotas;
#[cfg(test)]
mod seeds;

use fluxgate_model::thingsboard::{device, gateway};
use fluxgate_model::{
    AttributeReplyShape, Body, Channel, Check, CommandEnded, CorrelationId, Delivery, DeviceId,
    DeviceName, Dialect, Envelope, Ingress, Keyed, Limits, MessageId, Outbound as Out, Principal,
    PublishOp, PublishTarget, ReasonCode, RegistryChange, Reject, Rejection, Sample,
    SubscribeTarget, Subscription, TenantId, Value, Values, classify_publish, classify_subscribe,
    losant, normalize,
};

/// A fuzz target: its name (`fuzz_targets/<name>.rs`, `corpus/<name>/`) and its check.
pub type Target = (&'static str, fn(&[u8]));

/// Every target.
pub const TARGETS: [Target; 10] = [
    ("losant", losant),
    ("tb_device", tb_device),
    ("tb_gateway", tb_gateway),
    ("topic", topic),
    ("envelope", envelope),
    ("delivery", delivery),
    ("rejection", rejection),
    ("registry_change", registry_change),
    ("config", config::config),
    (
        "front_accepts_pipeline_decodes",
        front_accepts_pipeline_decodes,
    ),
];

/// The receive time every parse is given (November 2023).
pub const NOW: i64 = 1_700_000_000_000;

/// The limits every parser is run with: the defaults, and a tight set that makes every
/// limit reachable by small inputs.
pub fn limit_sets() -> [Limits; 2] {
    [Limits::default(), tight_limits()]
}

/// Small limits: 3 attributes, 8-byte keys, 24-byte values, 3 items, depth 4, 2 KB.
pub fn tight_limits() -> Limits {
    Limits {
        max_payload_bytes: 2048,
        max_attributes: 3,
        max_key_bytes: 8,
        max_value_bytes: 24,
        max_items: 3,
        max_json_depth: 4,
    }
}

/// `limits` for reading back what a parser accepted, encoded again: without the payload
/// size bound (`1e5` is written `100000.0`) and two levels deeper (the encoders write the
/// long form: a flat `{"k": v}` item becomes `[{"ts": .., "values": {"k": v}}]`). The limits
/// on the values themselves stay.
fn for_reencoded(limits: &Limits) -> Limits {
    Limits {
        max_payload_bytes: usize::MAX,
        max_json_depth: limits.max_json_depth + 2,
        ..limits.clone()
    }
}

/// What a client-side reader of server output is given: nothing it could be refused for
/// but real JSON errors.
fn permissive() -> Limits {
    Limits {
        max_payload_bytes: usize::MAX,
        max_attributes: usize::MAX,
        max_key_bytes: usize::MAX,
        max_value_bytes: usize::MAX,
        max_items: usize::MAX,
        max_json_depth: usize::MAX,
    }
}

/// A parser accepted `samples` under `limits`: they must keep them.
fn check_samples(samples: &[Sample], limits: &Limits, what: &str) {
    assert!(
        samples.len() <= limits.max_items,
        "{what}: {} samples accepted, limit {}",
        samples.len(),
        limits.max_items
    );
    for s in samples {
        check_values(&s.values, limits, what);
    }
}

/// A parser accepted `values` under `limits`: not empty, and within them.
fn check_values(values: &Values, limits: &Limits, what: &str) {
    assert!(!values.is_empty(), "{what}: empty values accepted");
    if let Err(r) = limits.check_values(values) {
        panic!("{what}: accepted values the same limits refuse: {r} ({values:?})");
    }
}

/// A parser accepted a payload: it cannot have been over the size limit.
fn check_size(payload: &[u8], limits: &Limits, what: &str) {
    assert!(
        payload.len() <= limits.max_payload_bytes,
        "{what}: {} bytes accepted, limit {}",
        payload.len(),
        limits.max_payload_bytes
    );
}

/// A refusal's message is bounded whatever the input (it goes into MQTT 5 reason strings
/// and the rejected log).
fn check_reject(r: &Reject) {
    let m = r.message();
    assert!(
        m.len() <= Reject::MESSAGE_BYTES,
        "reject message of {} bytes: {m}",
        m.len()
    );
    let _ = r.code();
    let _ = r.is_payload_format();
}

/// Losant: state (MQTT and REST forms) and commands as a device reads them.
pub fn losant(data: &[u8]) {
    for limits in limit_sets() {
        match losant::parse_state(data, NOW, &limits) {
            Ok(s) => {
                check_size(data, &limits, "losant state");
                check_samples(std::slice::from_ref(&s.sample), &limits, "losant state");
                // A device sending the same values (`losant-mqtt`'s form) is read the same.
                let again = losant::encode_state(&s.sample.values, None);
                let back = losant::parse_state(&again, NOW, &for_reencoded(&limits))
                    .unwrap_or_else(|r| panic!("re-encoded state refused: {r}"));
                assert_eq!(
                    back.sample.values, s.sample.values,
                    "state values round trip"
                );
                assert_eq!(back.sample.ts_ms, NOW);
                // A millisecond time (not taken for seconds, exact in an f64) survives too.
                let ts = s.sample.ts_ms;
                if (100_000_000_000..=(1_i64 << 53)).contains(&ts) {
                    let again = losant::encode_state(&s.sample.values, Some(ts));
                    let back = losant::parse_state(&again, NOW, &for_reencoded(&limits))
                        .unwrap_or_else(|r| panic!("re-encoded state refused: {r}"));
                    assert_eq!(back.sample.ts_ms, ts, "state time round trip");
                }
            }
            Err(r) => check_reject(&r),
        }
        match losant::parse_states(data, NOW, &limits) {
            Ok(states) => {
                check_size(data, &limits, "losant states");
                assert!(!states.is_empty(), "no states accepted as states");
                assert!(states.len() <= limits.max_items, "losant states: too many");
                for s in &states {
                    check_samples(std::slice::from_ref(&s.sample), &limits, "losant states");
                }
            }
            Err(r) => check_reject(&r),
        }
    }
    if let Ok(c) = losant::parse_command(data) {
        // The server's encoder and the device's reader agree.
        let t = c.time_ms.unwrap_or(NOW);
        let again = losant::encode_command(&c.name, &c.payload, t);
        let back = losant::parse_command(&again)
            .unwrap_or_else(|r| panic!("re-encoded command refused: {r}"));
        assert_eq!((&back.name, &back.payload), (&c.name, &c.payload));
        if (0..=253_402_300_799_999).contains(&t) {
            assert_eq!(back.time_ms, Some(t), "command time round trip");
        }
    }
}

/// ThingsBoard device API: everything a device publishes, and what it reads.
pub fn tb_device(data: &[u8]) {
    for limits in limit_sets() {
        let relaxed = for_reencoded(&limits);
        match device::parse_telemetry(data, NOW, &limits) {
            Ok(samples) => {
                check_size(data, &limits, "tb telemetry");
                assert!(!samples.is_empty(), "tb telemetry: no samples accepted");
                check_samples(&samples, &limits, "tb telemetry");
                let again = device::encode_telemetry(&samples);
                let back = device::parse_telemetry(&again, NOW, &relaxed)
                    .unwrap_or_else(|r| panic!("re-encoded telemetry refused: {r}"));
                assert_eq!(back, samples, "tb telemetry round trip");
            }
            Err(r) => check_reject(&r),
        }
        match device::parse_attributes(data, &limits) {
            Ok(values) => {
                check_size(data, &limits, "tb attributes");
                check_values(&values, &limits, "tb attributes");
                let again = device::encode_attributes(&values);
                let back = device::parse_attributes(&again, &relaxed)
                    .unwrap_or_else(|r| panic!("re-encoded attributes refused: {r}"));
                assert_eq!(back, values, "tb attributes round trip");
            }
            Err(r) => check_reject(&r),
        }
        match device::parse_attribute_request(data, &limits) {
            Ok(_) => check_size(data, &limits, "tb attribute request"),
            Err(r) => check_reject(&r),
        }
        match device::parse_rpc_request(data, &limits) {
            Ok(rpc) => {
                check_size(data, &limits, "tb rpc request");
                let again = device::encode_rpc_request(&rpc.method, &rpc.params);
                let back = device::parse_rpc_request(&again, &relaxed)
                    .unwrap_or_else(|r| panic!("re-encoded rpc request refused: {r}"));
                assert_eq!(back, rpc, "tb rpc request round trip");
            }
            Err(r) => check_reject(&r),
        }
        match device::parse_rpc_response(data, &limits) {
            Ok(v) => {
                check_size(data, &limits, "tb rpc response");
                let again = device::encode_rpc_response(&v);
                let back = device::parse_rpc_response(&again, &relaxed)
                    .unwrap_or_else(|r| panic!("re-encoded rpc response refused: {r}"));
                assert_eq!(back, v, "tb rpc response round trip");
            }
            Err(r) => check_reject(&r),
        }
        match device::parse_claim(data, &limits) {
            Ok(c) => {
                check_size(data, &limits, "tb claim");
                let back = device::parse_claim(&device::encode_claim(&c), &relaxed)
                    .unwrap_or_else(|r| panic!("re-encoded claim refused: {r}"));
                assert_eq!(back, c, "tb claim round trip");
            }
            Err(r) => check_reject(&r),
        }
    }
    let _ = device::parse_attribute_response(data);
}

fn unique_names<T>(items: &[(DeviceName, T)]) -> bool {
    let mut names: Vec<&str> = items.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    names.windows(2).all(|w| w[0] != w[1])
}

/// ThingsBoard gateway API: all its publishes, and what a gateway reads.
pub fn tb_gateway(data: &[u8]) {
    for limits in limit_sets() {
        let relaxed = for_reencoded(&limits);
        match gateway::parse_connect(data, &limits) {
            Ok(c) => {
                check_size(data, &limits, "gateway connect");
                let again = gateway::encode_connect(&c.device, Some(&c.profile));
                let back = gateway::parse_connect(&again, &relaxed)
                    .unwrap_or_else(|r| panic!("re-encoded connect refused: {r}"));
                assert_eq!(back, c, "gateway connect round trip");
            }
            Err(r) => check_reject(&r),
        }
        match gateway::parse_disconnect(data, &limits) {
            Ok(d) => {
                check_size(data, &limits, "gateway disconnect");
                let back = gateway::parse_disconnect(&gateway::encode_disconnect(&d), &relaxed)
                    .unwrap_or_else(|r| panic!("re-encoded disconnect refused: {r}"));
                assert_eq!(back, d, "gateway disconnect round trip");
            }
            Err(r) => check_reject(&r),
        }
        match gateway::parse_attributes(data, &limits) {
            Ok(devices) => {
                check_size(data, &limits, "gateway attributes");
                assert!(!devices.is_empty() && devices.len() <= limits.max_items);
                for (_, v) in &devices {
                    check_values(v, &limits, "gateway attributes");
                }
                // A JSON object cannot say the same device twice once encoded.
                if unique_names(&devices) {
                    let again = gateway::encode_attributes(&devices);
                    let mut back = gateway::parse_attributes(&again, &relaxed)
                        .unwrap_or_else(|r| panic!("re-encoded attributes refused: {r}"));
                    let mut devices = devices;
                    devices.sort_by(|a, b| a.0.cmp(&b.0));
                    back.sort_by(|a, b| a.0.cmp(&b.0));
                    assert_eq!(back, devices, "gateway attributes round trip");
                }
            }
            Err(r) => check_reject(&r),
        }
        match gateway::parse_attribute_request(data, &limits) {
            Ok(_) => check_size(data, &limits, "gateway attribute request"),
            Err(r) => check_reject(&r),
        }
        match gateway::parse_telemetry(data, NOW, &limits) {
            Ok(devices) => {
                check_size(data, &limits, "gateway telemetry");
                assert!(!devices.is_empty() && devices.len() <= limits.max_items);
                let total: usize = devices.iter().map(|(_, s)| s.len()).sum();
                assert!(
                    total <= limits.max_items,
                    "gateway telemetry: {total} samples"
                );
                for (_, s) in &devices {
                    assert!(!s.is_empty(), "gateway telemetry: a device without samples");
                    check_samples(s, &limits, "gateway telemetry");
                }
                if unique_names(&devices) {
                    let again = gateway::encode_telemetry(&devices);
                    let mut back = gateway::parse_telemetry(&again, NOW, &relaxed)
                        .unwrap_or_else(|r| panic!("re-encoded telemetry refused: {r}"));
                    let mut devices = devices;
                    devices.sort_by(|a, b| a.0.cmp(&b.0));
                    back.sort_by(|a, b| a.0.cmp(&b.0));
                    assert_eq!(back, devices, "gateway telemetry round trip");
                }
            }
            Err(r) => check_reject(&r),
        }
        match gateway::parse_rpc_reply(data, &limits) {
            Ok(r) => {
                check_size(data, &limits, "gateway rpc reply");
                let again = gateway::encode_rpc_reply(&r.device, &r.id, &r.data);
                let back = gateway::parse_rpc_reply(&again, &relaxed)
                    .unwrap_or_else(|e| panic!("re-encoded rpc reply refused: {e}"));
                assert_eq!(back, r, "gateway rpc reply round trip");
            }
            Err(r) => check_reject(&r),
        }
        match gateway::parse_claim(data, &limits) {
            Ok(claims) => {
                check_size(data, &limits, "gateway claim");
                assert!(!claims.is_empty() && claims.len() <= limits.max_items);
                let back = gateway::parse_claim(&gateway::encode_claim(&claims), &relaxed)
                    .unwrap_or_else(|r| panic!("re-encoded claim refused: {r}"));
                assert_eq!(back, claims, "gateway claim round trip");
            }
            Err(r) => check_reject(&r),
        }
    }
    // What a gateway reads.
    let _ = gateway::parse_attribute_response(data);
    let _ = gateway::parse_shared_attributes(data);
    let _ = gateway::parse_rpc_request(data);
}

fn id(s: &str) -> DeviceId {
    DeviceId::new(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// The principals a topic is classified for: each dialect's device and gateway, with a
/// fixed id and with the id the topic names (so that "its own topic" is reachable).
fn principals(topic: &str) -> Vec<Principal> {
    let mut ids = vec![id("d1")];
    if let Some(named) = topic.split('/').nth(1).and_then(|l| DeviceId::new(l).ok()) {
        ids.push(named);
    }
    let mut out = Vec::new();
    for device in ids {
        for gateway in [false, true] {
            out.push(Principal::Losant {
                device: device.clone(),
                gateway,
            });
            out.push(Principal::ThingsBoard {
                device: device.clone(),
                gateway,
            });
        }
    }
    out
}

fn in_losant_namespace(topic: &str) -> bool {
    topic.starts_with("losant")
}

fn in_tb_namespace(topic: &str) -> bool {
    topic == "v1" || topic.starts_with("v1/")
}

/// A request id taken from a topic is echoed in the answer topic: it must read back as
/// the very level the client used.
fn check_topic_id(topic: &str, request_id: &CorrelationId) {
    let last = topic.rsplit('/').next().unwrap_or_default();
    assert_eq!(request_id.to_string(), last, "request id of {topic:?}");
}

/// A gateway acting for another device needs the registry check, on its own id none.
fn check_device_target(p: &Principal, device: &DeviceId, check: &Check, what: &str) {
    if device == p.device() {
        assert_eq!(check, &Check::None, "{what}: own device");
    } else {
        assert!(p.is_gateway(), "{what}: a device acts for {device}");
        assert_eq!(
            check,
            &Check::Peripheral {
                gateway: p.device().clone(),
                peripheral: device.clone()
            },
            "{what}"
        );
    }
}

/// The topic classifier: never panics, and its answers keep the ACL rules: a dialect's
/// namespace is its own, the gateway API is for gateways, acting for another device needs
/// the peripheral check, custom topics need the custom-topics check and are outside both
/// namespaces.
pub fn topic(data: &[u8]) {
    let Ok(topic) = std::str::from_utf8(data) else {
        return; // MQTT topics are UTF-8; the MQTT codec refuses anything else.
    };
    for p in principals(topic) {
        let tb = matches!(p, Principal::ThingsBoard { .. });
        match classify_publish(&p, topic) {
            Ok(c) => {
                assert!(!topic.contains(['+', '#']), "wildcard publish {topic:?}");
                match c.target {
                    PublishTarget::Custom => {
                        assert_eq!(c.check, Check::CustomTopics);
                        assert!(!in_losant_namespace(topic) && !in_tb_namespace(topic));
                        assert!(!topic.is_empty() && !topic.starts_with('$'));
                        assert!(!topic.contains('\0'));
                    }
                    PublishTarget::Platform(op) => {
                        if let PublishOp::LosantState { device } = &op {
                            assert!(!tb && in_losant_namespace(topic), "{p:?} {topic:?}");
                            assert!(
                                topic == losant::state_topic(device)
                                    || topic == format!("losant/{device}"),
                                "{topic:?} is the state of {device}"
                            );
                            check_device_target(&p, device, &c.check, topic);
                        } else {
                            assert!(tb && in_tb_namespace(topic), "{p:?} {topic:?}");
                            assert_eq!(c.check, Check::None);
                        }
                        match &op {
                            PublishOp::TbAttributeRequest { request_id }
                            | PublishOp::TbRpcRequest { request_id }
                            | PublishOp::TbRpcResponse { request_id } => {
                                check_topic_id(topic, request_id)
                            }
                            PublishOp::GatewayConnect
                            | PublishOp::GatewayDisconnect
                            | PublishOp::GatewayAttributes
                            | PublishOp::GatewayAttributeRequest
                            | PublishOp::GatewayTelemetry
                            | PublishOp::GatewayRpc
                            | PublishOp::GatewayClaim => {
                                assert!(p.is_gateway(), "gateway API for {p:?}");
                                assert!(topic.starts_with("v1/gateway/"));
                            }
                            _ => {}
                        }
                    }
                }
            }
            Err(r) => {
                check_reject(&r);
                assert!(
                    matches!(
                        r.code(),
                        ReasonCode::TopicNotAllowed | ReasonCode::UnknownTopic
                    ),
                    "{r:?}"
                );
            }
        }
        match classify_subscribe(&p, topic) {
            Ok(c) => match c.target {
                SubscribeTarget::Custom => {
                    assert_eq!(c.check, Check::CustomTopics);
                    assert!(!in_losant_namespace(topic) && !in_tb_namespace(topic));
                    assert!(!topic.is_empty() && !topic.starts_with('$'));
                }
                SubscribeTarget::Platform(Subscription::LosantCommands { device }) => {
                    assert!(!tb && topic == losant::command_topic(&device), "{topic:?}");
                    check_device_target(&p, &device, &c.check, topic);
                }
                SubscribeTarget::Platform(s) => {
                    assert!(tb && in_tb_namespace(topic), "{p:?} {topic:?}");
                    assert_eq!(c.check, Check::None);
                    if matches!(
                        s,
                        Subscription::GatewayRpc
                            | Subscription::GatewayAttributeUpdates
                            | Subscription::GatewayAttributeResponses
                    ) {
                        assert!(p.is_gateway(), "gateway feed for {p:?}");
                    }
                }
            },
            Err(r) => check_reject(&r),
        }
    }
}

/// The canonical envelope, as every consumer of `fluxgate.ingest.*` and
/// `fluxgate.device.events` decodes it.
pub fn envelope(data: &[u8]) {
    let Ok(env) = Envelope::from_bytes(data) else {
        return;
    };
    let bytes = env.to_bytes();
    let back = Envelope::from_bytes(&bytes)
        .unwrap_or_else(|e| panic!("re-encoded envelope does not decode: {e}"));
    assert_eq!(back, env, "envelope round trip");
    assert_eq!(env.record_value(), bytes);
    let key = env.record_key();
    assert!(key.starts_with(&format!("{}/", env.tenant)), "{key}");
    let _ = env.body.kind().as_str();
}

fn topic_safe(id: &CorrelationId) -> bool {
    let s = id.to_string();
    !s.is_empty() && !s.contains(['/', '+', '#', '\0'])
}

/// A delivery (`fluxgate.deliveries`), as every front decodes and renders it; what it
/// renders, the target client's reader reads back.
pub fn delivery(data: &[u8]) {
    let Ok(d) = Delivery::from_bytes(data) else {
        return;
    };
    let back = Delivery::from_bytes(&d.to_bytes())
        .unwrap_or_else(|e| panic!("re-encoded delivery does not decode: {e}"));
    assert_eq!(back, d, "delivery round trip");
    let _ = d.record_key();
    let Ok(r) = d.render() else {
        return;
    };
    let lim = permissive();
    // Readers that hold to default limits (as a client does) may refuse a deep or huge
    // payload; anything else is an encoder bug.
    let refused_for_size =
        |e: &Reject| matches!(e.code(), ReasonCode::TooDeep | ReasonCode::PayloadTooLarge);
    match (d.dialect, &d.via, &d.body) {
        (
            Dialect::Losant,
            _,
            Out::Command {
                name,
                payload,
                time_ms,
                ..
            },
        ) => {
            let c = losant::parse_command(&r.payload)
                .unwrap_or_else(|e| panic!("rendered command unreadable: {e}"));
            assert_eq!((&c.name, &c.payload), (name, payload));
            if (0..=253_402_300_799_999).contains(time_ms) {
                assert_eq!(c.time_ms, Some(*time_ms));
            }
            // The topic is the feed's, which the connection subscribes to.
            let p = Principal::Losant {
                device: d.connection().clone(),
                gateway: d.via.is_some(),
            };
            let sub =
                classify_subscribe(&p, &r.topic).unwrap_or_else(|e| panic!("{}: {e}", r.topic));
            assert_eq!(sub.target, SubscribeTarget::Platform(r.feed.clone()));
        }
        (Dialect::ThingsBoard, None, body) => {
            let p = Principal::ThingsBoard {
                device: d.device.clone(),
                gateway: false,
            };
            match body {
                Out::Command {
                    request_id,
                    name,
                    payload,
                    ..
                } => {
                    let rpc = device::parse_rpc_request(&r.payload, &lim)
                        .unwrap_or_else(|e| panic!("rendered rpc unreadable: {e}"));
                    assert_eq!((&rpc.method, &rpc.params), (name, payload));
                    if topic_safe(request_id) {
                        check_topic_id(&r.topic, request_id);
                        let filter = "v1/devices/me/rpc/request/+";
                        assert_eq!(
                            classify_subscribe(&p, filter).map(|c| c.target).ok(),
                            Some(SubscribeTarget::Platform(r.feed.clone()))
                        );
                    }
                }
                Out::RpcResponse { request_id, data } => {
                    let v = device::parse_rpc_response(&r.payload, &lim)
                        .unwrap_or_else(|e| panic!("rendered rpc answer unreadable: {e}"));
                    assert_eq!(&v, data);
                    if topic_safe(request_id) {
                        check_topic_id(&r.topic, request_id);
                    }
                }
                Out::AttributeResponse {
                    request_id,
                    client,
                    shared,
                    ..
                } => {
                    let (c, s) = device::parse_attribute_response(&r.payload)
                        .unwrap_or_else(|e| panic!("rendered attributes unreadable: {e}"));
                    assert_eq!((&c, &s), (client, shared));
                    if topic_safe(request_id) {
                        check_topic_id(&r.topic, request_id);
                    }
                }
                Out::SharedAttributes { values } => {
                    let back = serde_json::from_slice::<Values>(&r.payload)
                        .unwrap_or_else(|e| panic!("rendered update unreadable: {e}"));
                    assert_eq!(&back, values);
                }
            }
        }
        (Dialect::ThingsBoard, Some(_), body) => {
            let name = d.device_name.as_ref().map(|n| n.as_str().to_owned());
            match body {
                Out::Command {
                    request_id,
                    name: method,
                    payload,
                    ..
                } => match gateway::parse_rpc_request(&r.payload) {
                    Ok(rpc) => {
                        assert_eq!(Some(rpc.device), name);
                        assert_eq!(
                            (&rpc.id, &rpc.method, &rpc.params),
                            (request_id, method, payload)
                        );
                    }
                    Err(e) if refused_for_size(&e) => {}
                    Err(e) => panic!("rendered gateway rpc unreadable: {e}"),
                },
                Out::AttributeResponse {
                    request_id,
                    reply,
                    client,
                    shared,
                } => match gateway::parse_attribute_response(&r.payload) {
                    Ok(a) => {
                        assert_eq!((Some(a.device), &a.id), (name, request_id));
                        let mut all = client.clone();
                        all.extend(shared.clone());
                        match reply {
                            AttributeReplyShape::GatewayValue => {
                                let first = all.values().next().map(Value::to_json);
                                assert_eq!(a.value, first);
                            }
                            _ => assert_eq!(a.values, Some(all)),
                        }
                    }
                    Err(e) if refused_for_size(&e) => {}
                    Err(e) => panic!("rendered gateway attributes unreadable: {e}"),
                },
                Out::SharedAttributes { values } => {
                    match gateway::parse_shared_attributes(&r.payload) {
                        Ok((device, v)) => {
                            assert_eq!((Some(device), &v), (name, values));
                        }
                        Err(e) if refused_for_size(&e) => {}
                        Err(e) => panic!("rendered gateway update unreadable: {e}"),
                    }
                }
                Out::RpcResponse { .. } => panic!("rendered what cannot be rendered: {d:?}"),
            }
        }
        (Dialect::Losant, _, _) => panic!("rendered what Losant has no way to send: {d:?}"),
    }
}

/// The rejected log (`fluxgate.ingest.rejected`), the rejection a role writes for a record
/// it cannot decode (its key is these bytes), and the command-outcome key.
pub fn rejection(data: &[u8]) {
    if let Ok(r) = Rejection::from_bytes(data) {
        let back = Rejection::from_bytes(&r.to_bytes())
            .unwrap_or_else(|e| panic!("re-encoded rejection does not decode: {e}"));
        assert_eq!(back, r, "rejection round trip");
        let _ = r.record_key();
    }
    if let Some(r) = Rejection::undecodable(data, NOW, "validator", "not JSON", data) {
        assert!(r.device.len() <= Rejection::EXCERPT_BYTES);
        assert!(r.reason.message.len() <= Reject::MESSAGE_BYTES);
        let back = Rejection::from_bytes(&r.to_bytes())
            .unwrap_or_else(|e| panic!("undecodable-record rejection does not decode: {e}"));
        assert_eq!(back, r);
    }
    if let Some(c) = CommandEnded::from_key(data) {
        let key = c.record_key();
        assert_eq!(CommandEnded::from_key(key.as_bytes()), Some(c));
    }
}

/// Registry change announcements (`fluxgate.registry.changes`), as fronts and validators
/// decode them.
pub fn registry_change(data: &[u8]) {
    let Ok(c) = RegistryChange::from_bytes(data) else {
        return;
    };
    let back = RegistryChange::from_bytes(&c.to_bytes())
        .unwrap_or_else(|e| panic!("re-encoded change does not decode: {e}"));
    assert_eq!(back, c, "registry change round trip");
    let _ = c.record_key();
}

/// The input of [`front_accepts_pipeline_decodes`], read from its bytes:
/// `[principal][depth][limits] topic \0 payload`.
#[derive(Debug)]
pub struct PublishInput<'a> {
    /// Who publishes.
    pub principal: Principal,
    /// The front's limits.
    pub limits: Limits,
    /// The topic (UTF-8, as the MQTT codec guarantees).
    pub topic: &'a str,
    /// The payload.
    pub payload: &'a [u8],
}

impl<'a> PublishInput<'a> {
    /// - principal byte: bit 0 gateway, bit 1 ThingsBoard, bit 2 "the id the topic's second
    ///   level names" (else `d1`);
    /// - depth byte: 0 the default `max_json_depth`, else `1 + b % 100` (the whole range a
    ///   configuration may set);
    /// - limits byte: 0 the defaults, else [`tight_limits`] (depth from the depth byte).
    pub fn parse(data: &'a [u8]) -> Option<Self> {
        let [p, depth, lim, rest @ ..] = data else {
            return None;
        };
        let cut = rest.iter().position(|&b| b == 0)?;
        let topic = std::str::from_utf8(&rest[..cut]).ok()?;
        let payload = &rest[cut + 1..];
        let mut limits = if *lim == 0 {
            Limits::default()
        } else {
            tight_limits()
        };
        if *depth != 0 {
            limits.max_json_depth = 1 + usize::from(*depth) % Limits::MAX_JSON_DEPTH;
        }
        if limits.validate().is_err() {
            return None; // A configuration the front refuses to start with.
        }
        let named = topic.split('/').nth(1).and_then(|l| DeviceId::new(l).ok());
        let device = match named {
            Some(d) if p & 4 != 0 => d,
            _ => id("d1"),
        };
        let gateway = p & 1 != 0;
        let principal = if p & 2 == 0 {
            Principal::Losant { device, gateway }
        } else {
            Principal::ThingsBoard { device, gateway }
        };
        Some(PublishInput {
            principal,
            limits,
            topic,
            payload,
        })
    }
}

/// The property: for any publish, what the front makes of it (the same calls as
/// `services/mqtt-front/src/front/publish.rs`: `classify_publish`, then `normalize`) is
/// readable downstream. Accepted: every envelope goes to bytes (`Keyed::record_value`, what
/// the front produces) and `Envelope::from_bytes` (what the validator, the writer and the
/// dispatcher call) gives it back equal, and the validator's limit checks, with the same
/// limits, pass. Refused: the rejected-log entry the front writes decodes back equal.
pub fn front_accepts_pipeline_decodes(data: &[u8]) {
    let Some(input) = PublishInput::parse(data) else {
        return;
    };
    let tenant = TenantId::new("app1").unwrap_or_else(|e| panic!("{e}"));
    let refused = |r: &Reject| {
        check_reject(r);
        let rej = Rejection::new(
            tenant.clone(),
            input.principal.device().as_str(),
            NOW,
            r,
            input.payload,
        );
        let back = Rejection::from_bytes(&rej.record_value())
            .unwrap_or_else(|e| panic!("the front's rejection does not decode: {e}"));
        assert_eq!(back, rej, "rejection round trip");
    };
    let class = match classify_publish(&input.principal, input.topic) {
        Ok(c) => c,
        Err(r) => return refused(&r),
    };
    let PublishTarget::Platform(op) = class.target else {
        return; // Custom topics are passed on as they are, not decoded.
    };
    let ing = Ingress {
        tenant: &tenant,
        principal: &input.principal,
        channel: Channel::Mqtt,
        id: MessageId::from_parts(NOW as u64, 0x5eed),
        received_ms: NOW,
        limits: &input.limits,
    };
    let envs = match normalize(&ing, &op, input.payload) {
        Ok(e) => e,
        Err(r) => return refused(&r),
    };
    assert!(!envs.is_empty(), "accepted with no envelope");
    check_size(input.payload, &input.limits, "front");
    for (i, env) in envs.iter().enumerate() {
        assert_eq!(env.part as usize, i);
        assert_eq!(env.dialect, input.principal.dialect());
        let bytes = env.record_value();
        let back = Envelope::from_bytes(&bytes).unwrap_or_else(|e| {
            panic!(
                "the front accepted a publish the validator cannot decode: {e}\n{}",
                String::from_utf8_lossy(&bytes)
            )
        });
        assert_eq!(&back, env, "envelope round trip");
        // The validator's checks of the same limits.
        match &env.body {
            Body::Telemetry { samples, .. } => {
                assert!(!samples.is_empty());
                if let Err(r) = input.limits.check_items("samples", samples.len()) {
                    panic!("the front accepted what the validator refuses: {r}");
                }
                check_samples(samples, &input.limits, "front telemetry");
            }
            Body::Attributes { values } => check_values(values, &input.limits, "front attributes"),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Every committed corpus file through its target's check (what `cargo fuzz run` does
    /// first, without libFuzzer).
    #[test]
    fn the_committed_corpus_passes_every_check() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
        for (name, check) in super::TARGETS {
            let dir = root.join(name);
            let mut n = 0;
            for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}")) {
                let path = entry.unwrap().path();
                check(&std::fs::read(&path).unwrap());
                n += 1;
            }
            assert!(n > 0, "{name}: empty corpus");
            eprintln!("{name}: {n} corpus files pass");
        }
    }
}
