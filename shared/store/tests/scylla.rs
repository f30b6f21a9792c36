//! The store contract on the ScyllaDB adapter, through the real `scylla` driver: against a
//! real CQL database at `SCYLLA_URI=host:port` (CI: Apache Cassandra 5.0 from
//! `scripts/services/cassandra`; each test uses its own keyspace); without it they say they
//! are ignored (under `CI` they fail). Plus fault tests on the CQL test double, for the
//! faults only it can inject.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod contract;

use std::sync::Arc;
use std::time::Duration;

use contract::Harness;
use fluxgate_model::{DeviceId, Sample, TenantId, Value, Values};
use fluxgate_store::TelemetryStore;
use fluxgate_store::scylla::{ScyllaConfig, ScyllaStore};
use fluxgate_store::{SampleBatch, StoreError};
use fluxgate_testkit::cql::{CqlDouble, Fault};

fn config(node: String) -> ScyllaConfig {
    let keyspace = fluxgate_testkit::unique_name("fg").replace('-', "_");
    ScyllaConfig {
        backoff_ms: 5,
        request_timeout_ms: 2_000,
        ..ScyllaConfig::single_node(node, &keyspace)
    }
}

/// A store on the real CQL database at `SCYLLA_URI` (its own keyspace); `None` without
/// one, after saying the test is ignored (under `CI` that fails instead).
async fn harness(test: &str) -> Option<Harness> {
    let (uri, _) = fluxgate_testkit::cql::node(test)?;
    let store = ScyllaStore::connect(config(uri)).await.unwrap();
    Some(Harness {
        store: Arc::new(store),
        dump: None,
    })
}

macro_rules! contract_test {
    ($name:ident, $f:path) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            if let Some(h) = harness(stringify!($name)).await {
                $f(&h).await;
            }
        }
    };
}

contract_test!(scylla_idempotent_overwrite, contract::idempotent_overwrite);
contract_test!(scylla_ping_answers, contract::ping_answers);
contract_test!(
    scylla_value_types_round_trip,
    contract::value_types_round_trip
);
contract_test!(
    scylla_latest_never_goes_back,
    contract::latest_never_goes_back
);
contract_test!(scylla_range_query_pages, contract::range_query_pages);
contract_test!(scylla_ttl_expiry, contract::ttl_expiry);
contract_test!(scylla_auto_create_race, contract::auto_create_race);
contract_test!(
    scylla_secrets_are_only_hashed,
    contract::secrets_are_only_hashed
);
contract_test!(scylla_registry_round_trips, contract::registry_round_trips);
contract_test!(scylla_command_transitions, contract::command_transitions);
contract_test!(scylla_logs, contract::logs);
contract_test!(
    scylla_delete_then_recreate_starts_empty,
    contract::delete_then_recreate_starts_empty
);

fn one_point(tenant: &TenantId, ts: i64) -> Vec<SampleBatch> {
    let mut values = Values::new();
    values.insert("k", Value::Integer(ts));
    vec![SampleBatch {
        tenant: tenant.clone(),
        device: DeviceId::new("d").unwrap(),
        samples: vec![Sample { ts_ms: ts, values }],
    }]
}

/// Timeouts and overload are retried with backoff (and counted); the write lands once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scylla_retries_transient_faults() {
    let double = CqlDouble::start().await.unwrap();
    let store = ScyllaStore::connect(config(double.addr().to_string()))
        .await
        .unwrap();
    let t = TenantId::new("t").unwrap();
    double.inject(Fault::WriteTimeout, 1);
    double.inject(Fault::Overloaded, 1);
    double.inject(Fault::Unavailable, 1);
    store.write_samples(one_point(&t, 5)).await.unwrap();
    assert_eq!(store.retries(), 3);
    assert_eq!(double.pending_faults(), 0);
    let latest = store
        .latest(t.clone(), DeviceId::new("d").unwrap(), None)
        .await
        .unwrap();
    assert_eq!(latest.len(), 1);
}

/// Past its retry budget the adapter reports a typed, retriable error — and a write it
/// reported failed is not there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scylla_gives_up_typed_after_its_budget_and_reports_nothing_unwritten() {
    let double = CqlDouble::start().await.unwrap();
    let cfg = ScyllaConfig {
        retries: 2,
        ..config(double.addr().to_string())
    };
    let store = ScyllaStore::connect(cfg).await.unwrap();
    let t = TenantId::new("t").unwrap();
    // The first statement of the write is the application TTL lookup, then the batch.
    double.inject(Fault::WriteTimeout, 10);
    let err = store.write_samples(one_point(&t, 7)).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    assert!(err.is_retriable());
    assert_eq!(store.retries(), 2);
    // Clear the remaining faults, then check nothing was written.
    while double.pending_faults() > 0 {
        let _ = store
            .latest(t.clone(), DeviceId::new("d").unwrap(), None)
            .await;
    }
    let latest = store
        .latest(t.clone(), DeviceId::new("d").unwrap(), None)
        .await
        .unwrap();
    assert!(latest.is_empty(), "{latest:?}");
}

/// A slow store is slow, not failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scylla_slow_store_still_writes() {
    let double = CqlDouble::start().await.unwrap();
    let store = ScyllaStore::connect(config(double.addr().to_string()))
        .await
        .unwrap();
    double.set_latency(Duration::from_millis(100));
    let t = TenantId::new("t").unwrap();
    let started = std::time::Instant::now();
    store.write_samples(one_point(&t, 9)).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert_eq!(store.retries(), 0);
}
contract_test!(
    scylla_racing_transitions_leave_one_terminal_status,
    contract::racing_transitions_leave_one_terminal_status
);
contract_test!(scylla_claims, contract::claims);
contract_test!(scylla_client_rpcs, contract::client_rpcs);

/// Points and latest values of every type are written without tombstones: the columns of
/// the other types are left unset, not null. Read back with CQL tracing, the database
/// itself counts what it read ("Read N live rows and M tombstone cells").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scylla_points_leave_no_tombstones() {
    let Some((uri, _)) = fluxgate_testkit::cql::node("scylla_points_leave_no_tombstones") else {
        return;
    };
    let cfg = config(uri.clone());
    let keyspace = cfg.keyspace.clone();
    let store = ScyllaStore::connect(cfg).await.unwrap();
    let t = TenantId::new("t").unwrap();
    let kinds = [
        Value::Integer(1),
        Value::Float(1.5),
        Value::String("s".into()),
        Value::Bool(true),
    ];
    let samples = (0..40i64)
        .map(|i| {
            let mut values = Values::new();
            values.insert("k", kinds[(i % 4) as usize].clone());
            Sample {
                ts_ms: 1_700_000_000_000 + i,
                values,
            }
        })
        .collect();
    store
        .write_samples(vec![SampleBatch {
            tenant: t,
            device: DeviceId::new("d").unwrap(),
            samples,
        }])
        .await
        .unwrap();

    let session = scylla::client::session_builder::SessionBuilder::new()
        .known_node(&uri)
        .build()
        .await
        .unwrap();
    for table in ["ts_kv", "ts_latest"] {
        let mut q = scylla::statement::unprepared::Statement::new(format!(
            "SELECT * FROM {keyspace}.{table}"
        ));
        q.set_tracing(true);
        let r = session.query_unpaged(q, ()).await.unwrap();
        let id = r.tracing_id().expect("a traced query has a tracing id");
        let info = session.get_tracing_info(&id).await.unwrap();
        let reads: Vec<(u64, u64)> = info
            .events
            .iter()
            .filter_map(|e| {
                let a = e.activity.as_deref()?;
                let rest = a.strip_prefix("Read ")?;
                let (live, rest) = rest.split_once(" live rows and ")?;
                let tombstones = rest.split_whitespace().next()?;
                Some((live.parse().ok()?, tombstones.parse().ok()?))
            })
            .collect();
        let live: u64 = reads.iter().map(|r| r.0).sum();
        let tombstones: u64 = reads.iter().map(|r| r.1).sum();
        assert!(
            live >= 1,
            "{table}: the trace counts the rows read: {reads:?}"
        );
        assert_eq!(tombstones, 0, "{table}: {reads:?}");
    }
}
