//! Normalization throughput on one core: classify the topic, parse the payload, build the
//! envelopes — what the MQTT front does per PUBLISH before producing — and the same plus
//! serializing the envelopes to the bytes put on the bus.
//!
//! Run: `cargo bench -p fluxgate-model --bench normalize`. Results and method:
//! `loadtests/RESULTS.md`.

#![allow(missing_docs, clippy::expect_used)]

use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};
use fluxgate_model::{
    Channel, DeviceId, Ingress, Limits, MessageId, Principal, PublishTarget, TenantId,
    classify_publish, normalize,
};

/// ~100 bytes, 3 attributes, explicit epoch-ms time.
const LOSANT_STATE: &[u8] = br#"{"data":{"temperature":21.53,"humidity":40.2,"status":"running"},"time":1700000000000,"flowVersion":"v1"}"#;

/// 10 devices x 1 sample, ~600 bytes, as ThingsBoard's gateway sends it.
fn gateway_payload() -> Vec<u8> {
    let devices: Vec<String> = (0..10)
        .map(|i| {
            format!(
                r#""dev-{i:02}":[{{"ts":1700000000{i:03},"values":{{"temp":2{i}.5,"hum":4{i}}}}}]"#
            )
        })
        .collect();
    format!("{{{}}}", devices.join(",")).into_bytes()
}

fn run(c: &mut Criterion, name: &str, principal: Principal, topic: &str, payload: &[u8]) {
    let tenant = TenantId::new("5f0e1b2c3d4e5f6a7b8c9d0e").expect("valid tenant");
    let limits = Limits::default();
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(1));
    let normalize_one = |payload: &[u8]| {
        let class = classify_publish(&principal, black_box(topic)).expect("allowed topic");
        let PublishTarget::Platform(op) = class.target else {
            unreachable!("platform topic")
        };
        let ing = Ingress {
            tenant: &tenant,
            principal: &principal,
            channel: Channel::Mqtt,
            id: MessageId::from_parts(1_700_000_000_000, 7),
            received_ms: 1_700_000_000_000,
            limits: &limits,
        };
        normalize(&ing, &op, black_box(payload)).expect("valid payload")
    };
    group.bench_function("normalize", |b| b.iter(|| normalize_one(payload)));
    group.bench_function("normalize+serialize", |b| {
        b.iter(|| {
            normalize_one(payload)
                .iter()
                .map(|e| e.to_bytes().len())
                .sum::<usize>()
        })
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    let losant = Principal::Losant {
        device: DeviceId::new("5f0e1b2c3d4e5f6a7b8c9d0f").expect("valid id"),
        gateway: false,
    };
    eprintln!("losant state payload: {} bytes", LOSANT_STATE.len());
    run(
        c,
        "losant_state",
        losant,
        "losant/5f0e1b2c3d4e5f6a7b8c9d0f/state",
        LOSANT_STATE,
    );

    let gw = Principal::ThingsBoard {
        device: DeviceId::new("gw-0001").expect("valid id"),
        gateway: true,
    };
    let payload = gateway_payload();
    eprintln!("gateway telemetry payload: {} bytes", payload.len());
    run(
        c,
        "tb_gateway_telemetry_10x1",
        gw,
        "v1/gateway/telemetry",
        &payload,
    );
}

criterion_group!(normalize_benches, benches);
criterion_main!(normalize_benches);
