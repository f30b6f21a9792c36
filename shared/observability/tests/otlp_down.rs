//! With the collector away, making spans never waits on it: the queue stays bounded,
//! what does not fit is dropped and counted, and so are the batches that failed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use fluxgate_observability::telemetry::{self, LogSettings, Service, TelemetryConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_collector_costs_spans_not_work() {
    // A port nobody listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = TelemetryConfig {
        enabled: true,
        endpoint: format!("http://127.0.0.1:{port}"),
        queue_size: 16,
        export_timeout_secs: 1,
        ..TelemetryConfig::default()
    };
    let t = telemetry::init(
        &Service {
            role: "test",
            instance: "test-0",
        },
        &LogSettings {
            filter: "warn",
            json: false,
        },
        &cfg,
    )
    .unwrap();
    for i in 0..2_000 {
        let s = tracing::info_span!("client.publish", i);
        drop(s.entered());
    }
    let (full, _) = telemetry::dropped();
    assert!(full >= 2_000 - 16 - 512, "queue_full drops: {full}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while telemetry::dropped().1 == 0 {
        assert!(
            Instant::now() < deadline,
            "no failed export counted in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(telemetry::exported(), 0);
    let text = fluxgate_observability::exposition(
        &prometheus::Registry::new(),
        &fluxgate_observability::Health::default(),
    );
    let line = text
        .lines()
        .find(|l| l.starts_with("fluxgate_telemetry_spans_dropped_total{reason=\"queue_full\"}"))
        .unwrap_or_else(|| panic!("{text}"));
    let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(value >= full as f64, "{line}");
    t.shutdown(Duration::from_secs(2));
}
