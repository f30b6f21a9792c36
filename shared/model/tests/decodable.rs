//! Property: whatever the front or the API accepts, every role downstream can decode.
//!
//! Accepted input (any JSON value up to the configured nesting limit, inside every
//! publish shape of both dialects, and as a command payload) becomes envelopes or
//! deliveries whose bytes decode again. Input deeper than the limit is refused, never
//! accepted: before the limit existed, 123-125 levels were acknowledged and then could not
//! be decoded, so they were lost.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use fluxgate_model::{
    Body, Channel, Command, Delivery, DeviceId, Dialect, ENVELOPE_VERSION, Envelope, Limits,
    MessageId, Outbound, Principal, PublishTarget, ReasonCode, TenantId, classify_publish,
    normalize,
};
use proptest::prelude::*;
use serde_json::{Value, json};

const NOW: i64 = 1_700_000_000_000;

/// A small JSON leaf.
fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[a-z\"\\\\\\[\\]{}é]{0,12}".prop_map(Value::from),
    ]
}

/// A value `depth` levels deep: `leaf` wrapped in arrays or objects (`kinds` picks which),
/// with a sibling beside each level so the document is not a bare spine.
fn deep(depth: usize, kinds: &[bool], leaf: Value) -> Value {
    (0..depth).fold(leaf, |inner, i| {
        if kinds[i % kinds.len()] {
            json!([inner, i])
        } else {
            json!({"k": inner, "s": "]}\"["})
        }
    })
}

/// Every platform publish a device or gateway can make with `v` in it, as (principal,
/// topic, payload).
fn publishes(v: &Value) -> Vec<(Principal, &'static str, Vec<u8>)> {
    let id = |s: &str| DeviceId::new(s).unwrap();
    let losant = Principal::Losant {
        device: id("d1"),
        gateway: false,
    };
    let tb = Principal::ThingsBoard {
        device: id("d1"),
        gateway: false,
    };
    let tbgw = Principal::ThingsBoard {
        device: id("gw"),
        gateway: true,
    };
    let b = |j: Value| serde_json::to_vec(&j).unwrap();
    vec![
        (
            losant.clone(),
            "losant/d1/state",
            b(json!({"data": {"a": v}})),
        ),
        (tb.clone(), "v1/devices/me/telemetry", b(json!({"a": v}))),
        (
            tb.clone(),
            "v1/devices/me/telemetry",
            b(json!([{"ts": NOW, "values": {"a": v}}])),
        ),
        (tb.clone(), "v1/devices/me/attributes", b(json!({"a": v}))),
        (tb.clone(), "v1/devices/me/rpc/response/7", b(v.clone())),
        (
            tb.clone(),
            "v1/devices/me/rpc/request/8",
            b(json!({"method": "m", "params": v})),
        ),
        (
            tbgw.clone(),
            "v1/gateway/telemetry",
            b(json!({"Dev A": [{"ts": NOW, "values": {"a": v}}]})),
        ),
        (
            tbgw.clone(),
            "v1/gateway/attributes",
            b(json!({"Dev A": {"a": v}})),
        ),
        (
            tbgw,
            "v1/gateway/rpc",
            b(json!({"device": "Dev A", "id": 1, "data": v})),
        ),
    ]
}

/// What the front does with a publish on a platform topic.
fn normalized(
    principal: &Principal,
    topic: &str,
    payload: &[u8],
    limits: &Limits,
) -> Result<Vec<Envelope>, fluxgate_model::Reject> {
    let tenant = TenantId::new("app").unwrap();
    let class = classify_publish(principal, topic).unwrap();
    let PublishTarget::Platform(op) = class.target else {
        panic!("{topic} is a platform topic")
    };
    let ing = fluxgate_model::Ingress {
        tenant: &tenant,
        principal,
        channel: Channel::Mqtt,
        id: MessageId::from_parts(NOW as u64, 1),
        received_ms: NOW,
        limits,
    };
    normalize(&ing, &op, payload)
}

/// Normalizes each publish; asserts that everything accepted decodes, and that nothing
/// deeper than the limit is accepted. Returns how many were accepted.
fn check_publishes(v: &Value, limits: &Limits) -> usize {
    let mut accepted = 0;
    for (principal, topic, payload) in publishes(v) {
        let too_deep = fluxgate_model::limits::json_text_depth(&payload) > limits.max_json_depth;
        match normalized(&principal, topic, &payload, limits) {
            Ok(envs) => {
                assert!(
                    !too_deep,
                    "{topic}: accepted a payload over the depth limit"
                );
                for e in envs {
                    let back = Envelope::from_bytes(&e.to_bytes());
                    assert!(back.is_ok(), "{topic}: accepted but undecodable: {back:?}");
                }
                accepted += 1;
            }
            Err(r) if too_deep => assert_eq!(r.code(), ReasonCode::TooDeep, "{topic}"),
            Err(_) => {} // refused for another reason (a shape the topic does not take)
        }
    }
    accepted
}

/// A command as the API produces it and the delivery the dispatcher makes of it.
fn check_command(v: &Value, limits: &Limits) {
    if limits.check_json(v).is_err() {
        return; // the API answers 400 too_deep
    }
    let tenant = TenantId::new("app").unwrap();
    let device = DeviceId::new("d1").unwrap();
    let command = Command {
        name: "c".into(),
        payload: v.clone(),
        time_ms: None,
        two_way: true,
        persistent: false,
        expires_ms: None,
    };
    let env = Envelope {
        v: ENVELOPE_VERSION,
        id: MessageId::from_parts(NOW as u64, 2),
        part: 0,
        tenant: tenant.clone(),
        device: fluxgate_model::DeviceRef::Id(device.clone()),
        via: None,
        dialect: Dialect::Losant,
        channel: Channel::Http,
        received_ms: NOW,
        body: Body::Command(command.clone()),
    };
    assert!(Envelope::from_bytes(&env.to_bytes()).is_ok(), "command");
    for dialect in [Dialect::Losant, Dialect::ThingsBoard] {
        let d = Delivery {
            v: ENVELOPE_VERSION,
            id: env.id,
            tenant: tenant.clone(),
            device: device.clone(),
            device_name: None,
            via: None,
            dialect,
            body: Outbound::Command {
                request_id: fluxgate_model::CorrelationId::Int(7),
                name: command.name.clone(),
                payload: command.payload.clone(),
                time_ms: NOW,
            },
        };
        assert!(Delivery::from_bytes(&d.to_bytes()).is_ok(), "delivery");
        assert!(d.render().is_ok(), "rendered for the device");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// At the highest limit a configuration may set, and at the default.
    #[test]
    fn whatever_is_accepted_decodes(
        depth in 0usize..=104,
        kinds in proptest::collection::vec(any::<bool>(), 1..8),
        leaf in leaf(),
    ) {
        let v = deep(depth, &kinds, leaf);
        for max_json_depth in [Limits::MAX_JSON_DEPTH, Limits::default().max_json_depth] {
            let limits = Limits { max_json_depth, ..Limits::default() };
            check_publishes(&v, &limits);
            check_command(&v, &limits);
        }
    }
}

#[test]
fn the_generator_reaches_both_sides_of_the_limit() {
    // Not a tautology guard: at the limit most shapes are accepted, just past it none.
    let limits = Limits::default();
    let at = deep(limits.max_json_depth - 4, &[true, false], json!(1));
    assert!(check_publishes(&at, &limits) >= 5);
    let over = deep(limits.max_json_depth + 1, &[true], json!(1));
    assert_eq!(check_publishes(&over, &limits), 0);
}

#[test]
fn without_the_limit_accepted_input_would_be_undecodable() {
    // What the front did before the limit: 124 levels parse, the envelope does not.
    let unbounded = Limits {
        max_json_depth: 10_000,
        ..Limits::default()
    };
    let v = deep(124, &[true], json!(1));
    let (principal, topic, payload) = publishes(&v).remove(1);
    let envs =
        normalized(&principal, topic, &payload, &unbounded).expect("accepted without a limit");
    assert!(Envelope::from_bytes(&envs[0].to_bytes()).is_err());
    assert!(unbounded.validate().is_err(), "and such a limit is refused");
}
