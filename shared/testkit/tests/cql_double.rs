//! The real `scylla` driver against the CQL test double, over TCP.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use fluxgate_testkit::cql::CqlDouble;
use scylla::client::session_builder::SessionBuilder;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_driver_connects_and_sees_one_node() {
    let double = CqlDouble::start().await.unwrap();
    let session = tokio::time::timeout(
        Duration::from_secs(20),
        SessionBuilder::new()
            .known_node(double.addr().to_string())
            .connection_timeout(Duration::from_secs(2))
            .build(),
    )
    .await
    .expect("connects in time")
    .expect("session built");
    let state = session.get_cluster_state();
    let nodes = state.get_nodes_info();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].address.ip(), double.addr().ip());
    // Read from the double's system.local (the driver's fallback metadata has no data center).
    assert_eq!(nodes[0].datacenter.as_deref(), Some("datacenter1"));
    assert_eq!(nodes[0].rack.as_deref(), Some("rack1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_statements_get_a_syntax_error_never_a_silent_success() {
    let double = CqlDouble::start().await.unwrap();
    let session = SessionBuilder::new()
        .known_node(double.addr().to_string())
        .build()
        .await
        .unwrap();
    let err = session
        .query_unpaged("SELECT nothing FROM nowhere.at_all", &[])
        .await
        .expect_err("refused");
    let text = err.to_string();
    assert!(text.contains("does not understand"), "{text}");
    assert!(text.to_lowercase().contains("syntax"), "{text}");
    let err = session
        .prepare("INSERT INTO ks.t (a) VALUES (?)")
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("does not understand"), "{err}");
}
