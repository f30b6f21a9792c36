//! Property tests: the parsers are total (no panic on any bytes or any JSON), the limits
//! hold for every input, and encoders round-trip with their parsers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use fluxgate_model::thingsboard::{device, gateway};
use fluxgate_model::{
    Channel, DeviceId, DeviceName, Envelope, Ingress, Limits, MessageId, Principal, PublishOp,
    PublishTarget, ReasonCode, Sample, TenantId, Value, Values, classify_publish,
    classify_subscribe, losant, normalize,
};
use proptest::prelude::*;

const NOW: i64 = 1_700_000_000_000;

fn principals() -> Vec<Principal> {
    let id = DeviceId::new("dev").unwrap();
    vec![
        Principal::Losant {
            device: id.clone(),
            gateway: false,
        },
        Principal::Losant {
            device: id.clone(),
            gateway: true,
        },
        Principal::ThingsBoard {
            device: id.clone(),
            gateway: false,
        },
        Principal::ThingsBoard {
            device: id,
            gateway: true,
        },
    ]
}

/// Every platform operation, with the principal that may perform it.
fn ops() -> Vec<(Principal, PublishOp)> {
    let topics = [
        "losant/dev/state",
        "losant/peripheral/state",
        "v1/devices/me/telemetry",
        "v1/devices/me/attributes",
        "v1/devices/me/attributes/request/1",
        "v1/devices/me/rpc/request/1",
        "v1/devices/me/rpc/response/1",
        "v1/devices/me/claim",
        "v1/gateway/connect",
        "v1/gateway/disconnect",
        "v1/gateway/attributes",
        "v1/gateway/attributes/request",
        "v1/gateway/telemetry",
        "v1/gateway/rpc",
        "v1/gateway/claim",
    ];
    let mut out = Vec::new();
    for p in principals() {
        for t in topics {
            if let Ok(c) = classify_publish(&p, t)
                && let PublishTarget::Platform(op) = c.target
            {
                out.push((p.clone(), op));
            }
        }
    }
    out
}

fn run_all(payload: &[u8], limits: &Limits) {
    let tenant = TenantId::new("t").unwrap();
    for (p, op) in ops() {
        let ing = Ingress {
            tenant: &tenant,
            principal: &p,
            channel: Channel::Mqtt,
            id: MessageId::from_parts(1, 1),
            received_ms: NOW,
            limits,
        };
        if let Ok(envs) = normalize(&ing, &op, payload) {
            for e in envs {
                // Whatever was accepted survives the bus exactly.
                assert_eq!(Envelope::from_bytes(&e.to_bytes()).unwrap(), e);
            }
        }
    }
}

fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| n.into()),
        any::<u64>().prop_map(|n| n.into()),
        (-1e12f64..1e12).prop_map(|f| f.into()),
        "[a-zA-Z0-9 _$.:/-]{0,12}".prop_map(serde_json::Value::String),
        Just(serde_json::Value::String("2016-11-04T19:42:06.710Z".into())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("data".to_string()),
                    Just("time".to_string()),
                    Just("ts".to_string()),
                    Just("values".to_string()),
                    Just("device".to_string()),
                    Just("id".to_string()),
                    Just("client".to_string()),
                    Just("key".to_string()),
                    Just("keys".to_string()),
                    Just("method".to_string()),
                    Just("$date".to_string()),
                    "[a-zA-Z ]{0,8}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn arb_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::Integer),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::Float),
        ".{0,20}".prop_map(Value::String),
        any::<bool>().prop_map(Value::Bool),
        arb_json()
            .prop_filter("object or array", |j| j.is_object() || j.is_array())
            .prop_map(Value::Json),
    ]
}

fn arb_values() -> impl Strategy<Value = Values> {
    prop::collection::btree_map("[a-zA-Z_][a-zA-Z0-9_]{0,15}", arb_value(), 1..8)
        .prop_map(|m| m.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn parsers_never_panic_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        run_all(&bytes, &Limits::default());
    }

    #[test]
    fn parsers_never_panic_on_json(json in arb_json()) {
        run_all(&serde_json::to_vec(&json).unwrap(), &Limits::default());
    }

    #[test]
    fn parsers_never_panic_on_wrapped_json(json in arb_json()) {
        // Put arbitrary JSON where each format expects its parts.
        for wrapped in [
            serde_json::json!({"data": json}),
            serde_json::json!({"data": {"a": 1}, "time": json}),
            serde_json::json!({"A": json}),
            serde_json::json!({"A": [{"ts": json, "values": {"a": 1}}]}),
            serde_json::json!({"id": json, "device": "A", "client": true, "key": "k"}),
            serde_json::json!({"device": json}),
            serde_json::json!({"method": "m", "params": json}),
        ] {
            run_all(&serde_json::to_vec(&wrapped).unwrap(), &Limits::default());
        }
    }

    #[test]
    fn classifier_never_panics(topic in "[a-z0-9/+#$ ]{0,40}|(losant|v1)/[a-z0-9/+#]{0,30}") {
        for p in principals() {
            let _ = classify_publish(&p, &topic);
            let _ = classify_subscribe(&p, &topic);
        }
    }

    #[test]
    fn attribute_count_limit_holds(n in 1usize..40, max in 1usize..40) {
        let limits = Limits { max_attributes: max, ..Limits::default() };
        let data: serde_json::Map<String, serde_json::Value> =
            (0..n).map(|i| (format!("k{i}"), i.into())).collect();
        let payload = serde_json::to_vec(&serde_json::json!({"data": data})).unwrap();
        let r = losant::parse_state(&payload, NOW, &limits);
        if n <= max {
            prop_assert_eq!(r.unwrap().sample.values.len(), n);
        } else {
            prop_assert_eq!(r.unwrap_err().code(), ReasonCode::TooManyAttributes);
        }
        let tb = device::parse_telemetry(&serde_json::to_vec(&data).unwrap(), NOW, &limits);
        prop_assert_eq!(tb.is_ok(), n <= max);
    }

    #[test]
    fn string_and_payload_limits_hold(len in 0usize..2000, max_value in 1usize..1000, max_payload in 50usize..2000) {
        let limits = Limits { max_value_bytes: max_value, max_payload_bytes: max_payload, ..Limits::default() };
        let payload = serde_json::to_vec(&serde_json::json!({"data": {"s": "x".repeat(len)}})).unwrap();
        let r = losant::parse_state(&payload, NOW, &limits);
        match r {
            Ok(s) => {
                prop_assert!(payload.len() <= max_payload && len <= max_value);
                prop_assert_eq!(s.sample.values["s"].size_bytes(), len);
            }
            Err(e) if payload.len() > max_payload => prop_assert_eq!(e.code(), ReasonCode::PayloadTooLarge),
            Err(e) => {
                prop_assert!(len > max_value);
                prop_assert_eq!(e.code(), ReasonCode::ValueTooLarge);
            }
        }
    }

    #[test]
    fn losant_state_round_trips(values in arb_values(), ts in 1_000_000_000_000i64..4_000_000_000_000) {
        let bytes = losant::encode_state(&values, Some(ts));
        let s = losant::parse_state(&bytes, NOW, &Limits::default()).unwrap();
        prop_assert_eq!(s.sample.values, values);
        prop_assert_eq!(s.sample.ts_ms, ts);
    }

    #[test]
    fn thingsboard_telemetry_round_trips(samples in prop::collection::vec((any::<i64>(), arb_values()), 1..5)) {
        let samples: Vec<Sample> = samples.into_iter().map(|(ts_ms, values)| Sample { ts_ms, values }).collect();
        let bytes = device::encode_telemetry(&samples);
        prop_assert_eq!(device::parse_telemetry(&bytes, NOW, &Limits::default()).unwrap(), samples.clone());
        let per_device = vec![(DeviceName::new("Device A").unwrap(), samples)];
        let bytes = gateway::encode_telemetry(&per_device);
        prop_assert_eq!(gateway::parse_telemetry(&bytes, NOW, &Limits::default()).unwrap(), per_device);
    }

    #[test]
    fn losant_commands_round_trip(name in ".{1,20}", payload in arb_json(), ts in 0i64..253_402_300_799_999) {
        let bytes = losant::encode_command(&name, &payload, ts);
        let c = losant::parse_command(&bytes).unwrap();
        prop_assert_eq!(c.name, name);
        prop_assert_eq!(c.payload, payload);
        prop_assert_eq!(c.time_ms, Some(ts));
    }
}
