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
    for statement in [
        "TRUNCATE fg.t",
        "DROP TABLE fg.t",
        "SELECT a FROM fg.t WHERE a IN (1, 2)",
        "SELECT a FROM t",
    ] {
        let err = session
            .query_unpaged(statement, &[])
            .await
            .expect_err(statement);
        let text = err.to_string();
        assert!(text.contains("does not understand"), "{statement}: {text}");
        assert!(
            text.to_lowercase().contains("syntax"),
            "{statement}: {text}"
        );
    }
    let err = session
        .prepare("INSERT INTO ks.t (a) VALUES (?)")
        .await
        .expect_err("no such table");
    assert!(err.to_string().contains("unconfigured table ks.t"), "{err}");
}

async fn session(double: &CqlDouble) -> scylla::client::session::Session {
    use scylla::client::execution_profile::ExecutionProfile;
    use scylla::policies::retry::FallthroughRetryPolicy;
    let profile = ExecutionProfile::builder()
        .request_timeout(Some(Duration::from_secs(2)))
        .retry_policy(std::sync::Arc::new(FallthroughRetryPolicy::new()))
        .build()
        .into_handle();
    SessionBuilder::new()
        .known_node(double.addr().to_string())
        .default_execution_profile_handle(profile)
        .build()
        .await
        .unwrap()
}

async fn schema(s: &scylla::client::session::Session) {
    s.query_unpaged(
        "CREATE KEYSPACE IF NOT EXISTS fg WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
        &[],
    )
    .await
    .unwrap();
    s.query_unpaged(
        "CREATE TABLE IF NOT EXISTS fg.ts (dev text, key text, ts bigint, v double, s text, b boolean, n int,
         PRIMARY KEY ((dev, key), ts)) WITH CLUSTERING ORDER BY (ts ASC)",
        &[],
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_writes_and_range_reads_through_the_driver() {
    let double = CqlDouble::start().await.unwrap();
    let s = session(&double).await;
    schema(&s).await;
    let insert = s
        .prepare("INSERT INTO fg.ts (dev, key, ts, v, s, b, n) VALUES (?, ?, ?, ?, ?, ?, ?)")
        .await
        .unwrap();
    for ts in 0..10i64 {
        s.execute_unpaged(
            &insert,
            (
                "d1",
                "temp",
                ts,
                ts as f64 / 2.0,
                format!("s{ts}"),
                ts % 2 == 0,
                ts as i32,
            ),
        )
        .await
        .unwrap();
    }
    // Same primary key again: an overwrite, not a second row.
    s.execute_unpaged(&insert, ("d1", "temp", 3i64, 99.0f64, "again", true, 3i32))
        .await
        .unwrap();
    let select = s
        .prepare("SELECT ts, v, s FROM fg.ts WHERE dev = ? AND key = ? AND ts >= ? AND ts < ? ORDER BY ts DESC LIMIT ?")
        .await
        .unwrap();
    let rows: Vec<(i64, f64, String)> = s
        .execute_unpaged(&select, ("d1", "temp", 2i64, 8i64, 4i32))
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows::<(i64, f64, String)>()
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        rows,
        vec![
            (7, 3.5, "s7".into()),
            (6, 3.0, "s6".into()),
            (5, 2.5, "s5".into()),
            (4, 2.0, "s4".into())
        ]
    );
    let three: Vec<(i64, f64, String)> = s
        .execute_unpaged(&select, ("d1", "temp", 3i64, 4i64, 10i32))
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows::<(i64, f64, String)>()
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(three, vec![(3, 99.0, "again".into())]);
    // Another partition is separate.
    let other: Vec<(i64, f64, String)> = s
        .execute_unpaged(&select, ("d2", "temp", 0i64, 100i64, 10i32))
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows::<(i64, f64, String)>()
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(other.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_lwt_ttl_timestamps_and_batches() {
    use scylla::response::PagingState;
    use scylla::statement::batch::{Batch, BatchType};
    let double = CqlDouble::start().await.unwrap();
    let s = session(&double).await;
    schema(&s).await;
    let insert = s
        .prepare("INSERT INTO fg.ts (dev, key, ts, v) VALUES (?, ?, ?, ?)")
        .await
        .unwrap();
    let mut batch = Batch::new(BatchType::Unlogged);
    for _ in 0..5 {
        batch.append_statement(insert.clone());
    }
    let values: Vec<(&str, &str, i64, f64)> =
        (0..5).map(|i| ("d", "k", i as i64, i as f64)).collect();
    s.batch(&batch, values).await.unwrap();

    let mut select = s
        .prepare("SELECT ts FROM fg.ts WHERE dev = ? AND key = ?")
        .await
        .unwrap();
    select.set_page_size(2);
    let mut state = PagingState::start();
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let (res, next) = s
            .execute_single_page(&select, ("d", "k"), state)
            .await
            .unwrap();
        pages += 1;
        seen.extend(
            res.into_rows_result()
                .unwrap()
                .rows::<(i64,)>()
                .unwrap()
                .map(|r| r.unwrap().0),
        );
        match next.into_paging_control_flow() {
            std::ops::ControlFlow::Break(()) => break,
            std::ops::ControlFlow::Continue(s) => state = s,
        }
    }
    assert_eq!((seen, pages), (vec![0, 1, 2, 3, 4], 3));

    // IF NOT EXISTS: the first wins.
    let lwt = s
        .prepare("INSERT INTO fg.ts (dev, key, ts, s) VALUES (?, ?, ?, ?) IF NOT EXISTS")
        .await
        .unwrap();
    let applied = |r: scylla::response::query_result::QueryResult| {
        r.into_rows_result()
            .unwrap()
            .first_row::<(bool,)>()
            .unwrap()
            .0
    };
    assert!(applied(
        s.execute_unpaged(&lwt, ("n", "k", 1i64, "first"))
            .await
            .unwrap()
    ));
    assert!(!applied(
        s.execute_unpaged(&lwt, ("n", "k", 1i64, "second"))
            .await
            .unwrap()
    ));

    // UPDATE ... IF: applied only while every condition holds; a missing cell is null.
    let cas = s
        .prepare(
            "UPDATE fg.ts SET s = ?, n = ? WHERE dev = ? AND key = ? AND ts = ? IF s = ? AND n = ?",
        )
        .await
        .unwrap();
    let step = |to: &'static str, n: i32, from: &'static str, seen: Option<i32>| {
        s.execute_unpaged(&cas, (to, n, "n", "k", 1i64, from, seen))
    };
    assert!(applied(step("second", 1, "first", None).await.unwrap()));
    assert!(
        !applied(step("third", 2, "first", Some(1)).await.unwrap()),
        "s changed"
    );
    assert!(
        !applied(step("third", 2, "second", None).await.unwrap()),
        "n changed"
    );
    assert!(applied(step("third", 2, "second", Some(1)).await.unwrap()));

    // USING TIMESTAMP: the later timestamp wins whatever the arrival order.
    let stamped = s
        .prepare("UPDATE fg.ts USING TIMESTAMP ? SET s = ? WHERE dev = ? AND key = ? AND ts = ?")
        .await
        .unwrap();
    s.execute_unpaged(&stamped, (2000i64, "newer", "t", "k", 1i64))
        .await
        .unwrap();
    s.execute_unpaged(&stamped, (1000i64, "older", "t", "k", 1i64))
        .await
        .unwrap();
    let read = s
        .prepare("SELECT s FROM fg.ts WHERE dev = ? AND key = ? AND ts = ?")
        .await
        .unwrap();
    let (v,): (String,) = s
        .execute_unpaged(&read, ("t", "k", 1i64))
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .first_row()
        .unwrap();
    assert_eq!(v, "newer");

    // TTL: gone after it passes.
    let ttl = s
        .prepare("INSERT INTO fg.ts (dev, key, ts, s) VALUES (?, ?, ?, ?) USING TTL ?")
        .await
        .unwrap();
    s.execute_unpaged(&ttl, ("x", "k", 1i64, "short-lived", 1i32))
        .await
        .unwrap();
    let count =
        |r: scylla::response::query_result::QueryResult| r.into_rows_result().unwrap().rows_num();
    assert_eq!(
        count(s.execute_unpaged(&read, ("x", "k", 1i64)).await.unwrap()),
        1
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        count(s.execute_unpaged(&read, ("x", "k", 1i64)).await.unwrap()),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_faults_reach_the_driver_typed() {
    use fluxgate_testkit::cql::Fault;
    use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
    let double = CqlDouble::start().await.unwrap();
    let s = session(&double).await;
    schema(&s).await;
    let insert = s
        .prepare("INSERT INTO fg.ts (dev, key, ts, v) VALUES (?, ?, ?, ?)")
        .await
        .unwrap();
    for (fault, check) in [
        (
            Fault::WriteTimeout,
            (|e: &DbError| matches!(e, DbError::WriteTimeout { .. })) as fn(&DbError) -> bool,
        ),
        (Fault::Unavailable, |e| {
            matches!(e, DbError::Unavailable { .. })
        }),
        (Fault::Overloaded, |e| matches!(e, DbError::Overloaded)),
    ] {
        double.inject(fault, 1);
        let err = s
            .execute_unpaged(&insert, ("d", "k", 1i64, 1.0f64))
            .await
            .unwrap_err();
        match &err {
            ExecutionError::LastAttemptError(RequestAttemptError::DbError(e, _)) => {
                assert!(check(e), "{fault:?}: {e:?}")
            }
            other => panic!("{fault:?}: {other:?}"),
        }
    }
    assert_eq!(double.pending_faults(), 0);
    // After the faults, writes go through again.
    s.execute_unpaged(&insert, ("d", "k", 1i64, 1.0f64))
        .await
        .unwrap();
    // Latency delays answers.
    double.set_latency(Duration::from_millis(300));
    let started = std::time::Instant::now();
    s.execute_unpaged(&insert, ("d", "k", 2i64, 1.0f64))
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
}
