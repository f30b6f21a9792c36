//! Traces of the real binary, read by an OTLP/gRPC receiver over a socket: a device's MQTT 5
//! `traceparent` is the parent of the front's `client.publish`, and the trace goes on
//! through the bus to the validator and the writer, whose batch write links to it; an API
//! command's trace goes through the dispatcher to the front's `client.deliver`, and the
//! device receives it as a `traceparent` user property. Once in standalone (one process,
//! in-process bus), once as separate role processes on Kafka and Cassandra.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use fluxgate_testkit::cluster::{Cluster, Role, Spec};
use fluxgate_testkit::http::ok;
use fluxgate_testkit::mqtt::v5;
use fluxgate_testkit::otlp::{Collector, Span};
use ntex_mqtt::v5::codec::PublishAckReason;
use serde_json::{Value, json};

/// The environment that turns tracing on and points it at `c`: the standard variables,
/// as an operator would set them.
fn tracing_env(c: &Collector) -> Vec<(String, String)> {
    vec![
        ("FLUXGATE_TELEMETRY__ENABLED".into(), "true".into()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), c.endpoint()),
        ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
    ]
}

/// A trace id of the device's own, and the span id it says it publishes from.
fn device_trace() -> (String, String) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let trace = format!("{:032x}", nanos ^ (u128::from(std::process::id()) << 96));
    (trace, "00f067aa0ba902b7".to_owned())
}

/// Application `traced` with device `d1` (a number `n`); returns its admin token, and an
/// access key and secret.
async fn provision(api: SocketAddr, root: &str) -> (String, String, String) {
    ok(api, "POST", "/applications", root, json!({"id": "traced"})).await;
    let t = ok(
        api,
        "POST",
        "/applications/traced/tokens",
        root,
        json!({"name": "traces", "scope": "admin"}),
    )
    .await;
    let admin = t["secret"].as_str().unwrap().to_owned();
    ok(
        api,
        "POST",
        "/applications/traced/devices",
        &admin,
        json!({"id": "d1", "attributes": [{"name": "n", "kind": "number"}]}),
    )
    .await;
    let k = ok(api, "POST", "/applications/traced/keys", &admin, json!({})).await;
    let (key, secret) = (k["key"].as_str().unwrap(), k["secret"].as_str().unwrap());
    (admin, key.to_owned(), secret.to_owned())
}

fn find<'a>(spans: &'a [Span], name: &str, trace: &str) -> Option<&'a Span> {
    spans.iter().find(|s| s.name == name && s.trace_id == trace)
}

/// Which service each role's spans come from.
type ServiceOf = dyn Fn(Role) -> &'static str;

/// Drives both traces through a running fluxgate and checks every span, parent, link,
/// kind and service.
async fn both_traces(
    collector: &Collector,
    mqtt: SocketAddr,
    api: SocketAddr,
    root: &str,
    service: &ServiceOf,
) {
    let (admin, key, secret) = provision(api, root).await;
    let mut dev = v5(mqtt, "d1", Some(&key), Some(&secret)).await.unwrap();
    dev.subscribe("losant/d1/command").await;

    // The ingest path, under the device's own trace.
    let (trace, parent) = device_trace();
    let traceparent = format!("00-{trace}-{parent}-01");
    let ack = dev
        .publish_with(
            "losant/d1/state",
            br#"{"data":{"n":7}}"#,
            &[("traceparent", &traceparent)],
        )
        .await
        .unwrap();
    assert_eq!(ack, PublishAckReason::Success);
    let spans = collector
        .wait_until(Duration::from_secs(60), |s| {
            // Each span is exported when it ends, in whatever order the roles finish.
            find(s, "client.publish", &trace).is_some()
                && find(s, "validator.process", &trace).is_some()
                && find(s, "writer.receive", &trace).is_some_and(|w| {
                    s.iter().any(|b| {
                        b.name == "store.write"
                            && b.links.contains(&(trace.clone(), w.span_id.clone()))
                    })
                })
        })
        .await
        .unwrap_or_else(|got| panic!("the ingest trace did not reach the store write: {got:#?}"));
    let publish = find(&spans, "client.publish", &trace).expect("client.publish");
    assert_eq!(
        publish.parent_span_id, parent,
        "the device's span is the parent"
    );
    assert_eq!(publish.kind, "SPAN_KIND_PRODUCER");
    assert_eq!(publish.service, service(Role::Front));
    for (k, v) in [
        ("tenant", "traced"),
        ("device", "d1"),
        ("dialect", "losant"),
        ("topic.kind", "state"),
        ("outcome", "accepted"),
    ] {
        assert_eq!(publish.attr(k), Some(v), "{k} of {publish:#?}");
    }
    let validate = find(&spans, "validator.process", &trace).expect("validator.process");
    assert_eq!(validate.parent_span_id, publish.span_id);
    assert_eq!(validate.kind, "SPAN_KIND_CONSUMER");
    assert_eq!(validate.service, service(Role::Validator));
    assert_eq!(validate.attr("outcome"), Some("valid"), "{validate:#?}");
    let receive = find(&spans, "writer.receive", &trace).expect("writer.receive");
    assert_eq!(receive.parent_span_id, validate.span_id);
    assert_eq!(receive.kind, "SPAN_KIND_CONSUMER");
    assert_eq!(receive.service, service(Role::Writer));
    let write = spans
        .iter()
        .find(|b| {
            b.name == "store.write" && b.links.contains(&(trace.clone(), receive.span_id.clone()))
        })
        .unwrap();
    assert_eq!(write.kind, "SPAN_KIND_CLIENT");
    assert_eq!(write.service, service(Role::Writer));
    assert_eq!(write.attr("outcome"), Some("written"), "{write:#?}");
    assert_ne!(
        write.trace_id, trace,
        "a batch span links, it does not join"
    );

    // The control path: the API's span starts the trace, the device receives it.
    let mut online = Value::Null;
    for _ in 0..200 {
        online = ok(
            api,
            "GET",
            "/applications/traced/devices/d1/connection",
            &admin,
            Value::Null,
        )
        .await;
        if online["connected"] == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(online["connected"], true, "{online}");
    ok(
        api,
        "POST",
        "/applications/traced/devices/d1/command",
        &admin,
        json!({"name": "blink", "payload": {"times": 2}}),
    )
    .await;
    let (topic, _) = tokio::time::timeout(
        Duration::from_secs(30),
        fluxgate_testkit::mqtt::recv(&mut dev.inbox),
    )
    .await
    .expect("the command reaches the device");
    assert_eq!(topic, "losant/d1/command");
    let props = dev.props.recv().await.unwrap();
    let got = props
        .iter()
        .find(|(k, _)| k == "traceparent")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("no traceparent user property: {props:?}"));
    let parts: Vec<&str> = got.split('-').collect();
    assert_eq!(parts.len(), 4, "{got}");
    let (command_trace, deliver_span) = (parts[1].to_owned(), parts[2].to_owned());
    let spans = collector
        .wait_until(Duration::from_secs(30), |s| {
            find(s, "client.deliver", &command_trace).is_some_and(|d| d.attr("outcome").is_some())
                && find(s, "dispatcher.process", &command_trace).is_some()
                && s.iter()
                    .any(|h| h.trace_id == command_trace && h.kind == "SPAN_KIND_SERVER")
        })
        .await
        .unwrap_or_else(|got| panic!("the command's trace is incomplete: {got:#?}"));
    let request = spans
        .iter()
        .find(|h| h.trace_id == command_trace && h.kind == "SPAN_KIND_SERVER")
        .unwrap();
    assert_eq!(request.parent_span_id, "", "the API call starts the trace");
    assert!(
        request.name.starts_with("POST ") && request.name.ends_with("/command"),
        "{request:#?}"
    );
    assert_eq!(request.attr("http.response.status_code"), Some("200"));
    assert_eq!(request.service, service(Role::Api));
    let dispatch = find(&spans, "dispatcher.process", &command_trace).expect("dispatcher.process");
    assert_eq!(dispatch.parent_span_id, request.span_id);
    assert_eq!(dispatch.kind, "SPAN_KIND_CONSUMER");
    assert_eq!(dispatch.service, service(Role::Dispatcher));
    let deliver = find(&spans, "client.deliver", &command_trace).unwrap();
    assert_eq!(deliver.parent_span_id, dispatch.span_id);
    assert_eq!(
        deliver.span_id, deliver_span,
        "the device's traceparent names client.deliver"
    );
    assert_eq!(deliver.kind, "SPAN_KIND_PRODUCER");
    assert_eq!(deliver.service, service(Role::Front));
    assert_eq!(deliver.attr("outcome"), Some("delivered"), "{deliver:#?}");
}

#[ntex::test]
async fn standalone_traces_a_publish_to_the_store_and_a_command_to_the_device() {
    let collector = Collector::start().unwrap();
    let env = tracing_env(&collector);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let fg = common::Standalone::start_with(&common::data_dir(), &[], &env).await;
    both_traces(
        &collector,
        fg.mqtt,
        fg.api,
        &fg.token,
        &|_| "fluxgate-standalone",
    )
    .await;
    fg.terminate().await;
}

#[ntex::test]
async fn each_role_process_continues_the_trace_across_kafka() {
    const TEST: &str = "each_role_process_continues_the_trace_across_kafka";
    let Some(kafka) = fluxgate_testkit::kafka_brokers(TEST) else {
        return;
    };
    let Some((cql, _)) = fluxgate_testkit::cql::node(TEST) else {
        return;
    };
    let collector = Collector::start().unwrap();
    let spec = Spec {
        fronts: 1,
        apis: 1,
        validators: 1,
        writers: 1,
        dispatchers: 1,
        front_config: "",
    };
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_fluxgate"));
    let c = Cluster::start_with(bin, &kafka, &cql, spec, tracing_env(&collector))
        .await
        .unwrap();
    let service = |r: Role| match r {
        Role::Front => "fluxgate-front",
        Role::Api => "fluxgate-api",
        Role::Validator => "fluxgate-validator",
        Role::Writer => "fluxgate-writer",
        Role::Dispatcher => "fluxgate-dispatcher",
    };
    both_traces(&collector, c.front(0), c.api(0), &c.token, &service).await;
}

/// The HTTP/protobuf exporter, chosen by the standard variable: the same publish span
/// reaches a receiver that speaks only OTLP/HTTP.
#[ntex::test]
async fn otlp_over_http_carries_the_same_spans() {
    let collector = Collector::start_http().unwrap();
    let mut env = tracing_env(&collector);
    env.push(("OTEL_EXPORTER_OTLP_PROTOCOL".into(), "http/protobuf".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let fg = common::Standalone::start_with(&common::data_dir(), &[], &env).await;
    let (_, key, secret) = provision(fg.api, &fg.token).await;
    let dev = v5(fg.mqtt, "d1", Some(&key), Some(&secret)).await.unwrap();
    let (trace, parent) = device_trace();
    let traceparent = format!("00-{trace}-{parent}-01");
    let ack = dev
        .publish_with(
            "losant/d1/state",
            br#"{"data":{"n":1}}"#,
            &[("traceparent", &traceparent)],
        )
        .await
        .unwrap();
    assert_eq!(ack, PublishAckReason::Success);
    let spans = collector
        .wait_until(Duration::from_secs(30), |s| {
            find(s, "validator.process", &trace).is_some()
                && find(s, "client.publish", &trace).is_some()
        })
        .await
        .unwrap_or_else(|got| panic!("nothing of the trace over OTLP/HTTP: {got:#?}"));
    let publish = find(&spans, "client.publish", &trace).expect("client.publish");
    assert_eq!(publish.parent_span_id, parent);
    assert_eq!(publish.service, "fluxgate-standalone");
    fg.terminate().await;
}
