//! The endpoints over real HTTP on 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use fluxgate_observability::{CounterDef, CounterSet, Health, catalogue, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[actix_rt::test]
async fn metrics_health_and_readiness_over_http() {
    let points = Arc::new(AtomicU64::new(41));
    let valid = Arc::new(AtomicU64::new(2));
    let rejected = Arc::new(AtomicU64::new(3));
    let lag = Arc::new(AtomicU64::new(9));
    let set = CounterSet::new(vec![
        CounterDef {
            metric: &catalogue::WRITER_POINTS,
            labels: vec![],
            value: points.clone(),
        },
        CounterDef {
            metric: &catalogue::VALIDATOR_OUTPUTS,
            labels: vec![("kind", "valid")],
            value: valid,
        },
        CounterDef {
            metric: &catalogue::VALIDATOR_OUTPUTS,
            labels: vec![("kind", "rejected")],
            value: rejected,
        },
    ])
    .unwrap()
    .with_gauges(vec![CounterDef {
        metric: &catalogue::DISPATCH_TIMERS,
        labels: vec![],
        value: lag.clone(),
    }])
    .unwrap();
    let registry = prometheus::Registry::new();
    registry.register(Box::new(set)).unwrap();
    let health = Health::new();
    let (addr, server) = serve("127.0.0.1:0", registry, health.clone()).unwrap();
    let handle = server.handle();
    actix_rt::spawn(server);

    assert_eq!(get(addr, "/healthz").await.0, 200);
    assert_eq!(
        get(addr, "/readyz").await.0,
        503,
        "not ready before the role says so"
    );
    health.set_ready(true);
    assert_eq!(get(addr, "/readyz").await.0, 200);

    points.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("# TYPE fluxgate_ts_writer_points_written_total counter"),
        "{body}"
    );
    assert!(
        body.contains("fluxgate_ts_writer_points_written_total 42"),
        "read at scrape time: {body}"
    );
    lag.store(5, std::sync::atomic::Ordering::Relaxed);
    let body = get(addr, "/metrics").await.1;
    assert!(
        body.contains("# TYPE fluxgate_command_dispatch_timers gauge"),
        "{body}"
    );
    assert!(
        body.contains("fluxgate_command_dispatch_timers 5"),
        "{body}"
    );
    assert!(
        body.contains("fluxgate_validator_outputs_total{kind=\"valid\"} 2"),
        "{body}"
    );
    assert!(
        body.contains("fluxgate_validator_outputs_total{kind=\"rejected\"} 3"),
        "{body}"
    );
    handle.stop(true).await;
}

/// A probe passing while `up` is set, failing with `why` while it is not.
fn switch(health: &Health, name: &'static str, up: &Arc<AtomicBool>, why: &'static str) {
    let up = up.clone();
    health.probe(name, move || {
        let up = up.clone();
        async move {
            match up.load(std::sync::atomic::Ordering::SeqCst) {
                true => Ok(()),
                false => Err(why.to_string()),
            }
        }
    });
}

#[actix_rt::test]
async fn readiness_follows_its_probes_and_names_the_failing_one() {
    let up = Arc::new(AtomicBool::new(true));
    let health = Health::new();
    switch(&health, "store", &up, "connection refused");
    health.probe("bus", std::future::pending);
    let (addr, server) = serve("127.0.0.1:0", prometheus::Registry::new(), health.clone()).unwrap();
    let handle = server.handle();
    actix_rt::spawn(server);
    health.set_ready(true);

    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 503, "probes not checked yet: {body}");
    assert!(body.contains("store: not checked yet"), "{body}");

    let timeout = std::time::Duration::from_millis(50);
    health.check(timeout).await;
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 503, "the bus probe never answers: {body}");
    assert!(body.contains("bus: no answer within 50ms"), "{body}");
    assert!(!body.contains("store"), "the store passed: {body}");

    up.store(false, std::sync::atomic::Ordering::SeqCst);
    health.check(timeout).await;
    let body = get(addr, "/readyz").await.1;
    assert!(body.contains("store: connection refused"), "{body}");
    handle.stop(true).await;
}

#[actix_rt::test]
async fn watched_probes_turn_a_role_unready_and_back() {
    let up = Arc::new(AtomicBool::new(true));
    let health = Health::new();
    switch(&health, "store", &up, "away");
    health.set_ready(true);
    health.watch(std::time::Duration::from_millis(20)).unwrap();
    let until = |want: bool| {
        let health = health.clone();
        async move {
            for _ in 0..250 {
                if health.is_ready() == want {
                    return true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            false
        }
    };
    assert!(until(true).await, "first check passes: {health:?}");
    up.store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(until(false).await, "store away: {health:?}");
    up.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(until(true).await, "store back: {health:?}");
    health.set_ready(false);
    assert!(
        !health.is_ready(),
        "draining is unready whatever the probes say"
    );
}

#[actix_rt::test]
async fn a_process_is_ready_when_each_included_part_is() {
    let process = Health::new();
    let front = Health::new();
    process.include("front", front.clone());
    let (addr, server) =
        serve("127.0.0.1:0", prometheus::Registry::new(), process.clone()).unwrap();
    let handle = server.handle();
    actix_rt::spawn(server);
    process.set_ready(true);

    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 503, "the front has not started: {body}");
    assert!(body.contains("front: starting or draining"), "{body}");
    // Read when asked, not on a period: no check() between the change and the answer.
    front.set_ready(true);
    assert_eq!(get(addr, "/readyz").await.0, 200);
    front.probe("bus", std::future::pending);
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("front: bus: not checked yet"), "{body}");
    handle.stop(true).await;
}

/// `/metrics` carries the readiness `/readyz` answers, read at each scrape: 0 while a
/// probe fails, 1 once it passes, 0 again while draining.
#[actix_rt::test]
async fn metrics_carry_the_process_readiness() {
    let up = Arc::new(AtomicBool::new(false));
    let health = Health::new();
    switch(&health, "store", &up, "connection refused");
    let (addr, server) = serve("127.0.0.1:0", prometheus::Registry::new(), health.clone()).unwrap();
    let handle = server.handle();
    actix_rt::spawn(server);
    let ready = |body: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix("fluxgate_process_ready "))
            .map(str::to_owned)
    };
    health.set_ready(true);
    let timeout = std::time::Duration::from_millis(50);
    health.check(timeout).await;
    let body = get(addr, "/metrics").await.1;
    assert_eq!(
        ready(&body).as_deref(),
        Some("0"),
        "the store probe fails: {body}"
    );
    assert!(
        body.contains("# TYPE fluxgate_process_ready gauge"),
        "{body}"
    );

    up.store(true, std::sync::atomic::Ordering::SeqCst);
    health.check(timeout).await;
    let body = get(addr, "/metrics").await.1;
    assert_eq!(ready(&body).as_deref(), Some("1"), "{body}");
    assert_eq!(get(addr, "/readyz").await.0, 200);

    health.set_ready(false);
    let body = get(addr, "/metrics").await.1;
    assert_eq!(ready(&body).as_deref(), Some("0"), "draining: {body}");
    handle.stop(true).await;
}
