//! Spans reach a real OTLP/gRPC receiver (in process, over a socket) with their
//! parent/child and link relations, across a carrier as the bus carries them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use fake_opentelemetry_collector::FakeCollectorServer;
use fluxgate_observability::telemetry::{
    self, LogSettings, Service, TelemetryConfig, inject, link, parent,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_crosses_a_carrier_with_parent_child_and_link() {
    let mut collector = FakeCollectorServer::start().await.unwrap();
    let cfg = TelemetryConfig {
        enabled: true,
        endpoint: collector.endpoint(),
        ..TelemetryConfig::default()
    };
    let t = telemetry::init(
        &Service {
            role: "test",
            instance: "test-0",
        },
        &LogSettings {
            filter: "info",
            json: true,
        },
        &cfg,
    )
    .unwrap();
    assert!(t.exporting());

    // The front: a publish span whose context goes into the record's headers.
    let mut record: HashMap<String, String> = HashMap::new();
    let publish = tracing::info_span!("client.publish", otel.kind = "producer", tenant = "t1");
    publish.in_scope(|| inject(&mut record));
    assert!(record.contains_key("traceparent"), "{record:?}");
    let publish_trace = telemetry::trace_id(&publish).unwrap();
    drop(publish);

    // A consumer: its span's parent is the record's.
    let process = tracing::info_span!("validator.process", otel.kind = "consumer");
    parent(&process, &record);
    let mut next: HashMap<String, String> = HashMap::new();
    process.in_scope(|| inject(&mut next));
    drop(process);

    // A batch: linked, not parented.
    let write = tracing::info_span!("store.write", otel.kind = "client");
    link(&write, &next);
    drop(write);

    t.shutdown(Duration::from_secs(5));
    let spans = collector.exported_spans(3, Duration::from_secs(10)).await;
    let by_name = |n: &str| {
        spans
            .iter()
            .find(|s| s.name == n)
            .unwrap_or_else(|| panic!("no {n} in {spans:#?}"))
    };
    let (p, v, w) = (
        by_name("client.publish"),
        by_name("validator.process"),
        by_name("store.write"),
    );
    assert_eq!(p.trace_id, publish_trace);
    assert_eq!(p.kind, "SPAN_KIND_PRODUCER");
    // The fake collector renders attribute values with Debug: `Some(AnyValue { .. "t1" .. })`.
    assert!(
        p.attributes["tenant"].contains("StringValue(\"t1\")"),
        "{p:?}"
    );
    assert_eq!(v.trace_id, p.trace_id);
    assert_eq!(v.parent_span_id, p.span_id);
    assert_eq!(v.kind, "SPAN_KIND_CONSUMER");
    assert_ne!(w.trace_id, p.trace_id, "a batch span starts its own trace");
    assert_eq!(w.kind, "SPAN_KIND_CLIENT");
    assert_eq!(w.links.len(), 1);
    assert_eq!(w.links[0].trace_id, p.trace_id);
    assert_eq!(w.links[0].span_id, v.span_id);
    assert!(telemetry::exported() >= 3);
    assert_eq!(telemetry::dropped(), (0, 0));
}
