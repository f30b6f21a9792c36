//! The store contract on SQLite (a fresh database file per test), plus SQLite specifics.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod contract;

use std::sync::Arc;

use contract::Harness;
use fluxgate_store::Store;
use fluxgate_store::sqlite::{SqliteConfig, SqliteStore};
use fluxgate_store::{RegistryStore, TelemetryStore};

fn harness() -> (Harness, tempdir::Dir) {
    let dir = tempdir::Dir::new();
    let path = dir.path.join("fluxgate.db");
    let store = SqliteStore::open(&path, &SqliteConfig::default()).unwrap();
    let dump_path = path.clone();
    let h = Harness {
        store: Arc::new(store),
        dump: Some(Box::new(move || dump_all_text(&dump_path))),
    };
    (h, dir)
}

/// Every text cell of every table, through a separate connection.
fn dump_all_text(path: &std::path::Path) -> String {
    let c = rusqlite::Connection::open(path).unwrap();
    let tables: Vec<String> = c
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut out = String::new();
    for t in tables {
        let mut s = c.prepare(&format!("SELECT * FROM {t}")).unwrap();
        let n = s.column_count();
        let mut rows = s.query([]).unwrap();
        while let Some(r) = rows.next().unwrap() {
            for i in 0..n {
                if let rusqlite::types::ValueRef::Text(t) = r.get_ref(i).unwrap() {
                    out.push_str(&String::from_utf8_lossy(t));
                    out.push('\n');
                }
            }
        }
    }
    out
}

mod tempdir {
    /// A directory removed when dropped.
    pub(crate) struct Dir {
        pub(crate) path: std::path::PathBuf,
    }
    impl Dir {
        pub(crate) fn new() -> Self {
            let path = std::env::temp_dir().join(fluxgate_testkit::unique_name("fluxgate-store"));
            std::fs::create_dir_all(&path).unwrap();
            Dir { path }
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

macro_rules! contract_test {
    ($name:ident, $f:path) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let (h, _dir) = harness();
            $f(&h).await;
        }
    };
}

contract_test!(sqlite_idempotent_overwrite, contract::idempotent_overwrite);
contract_test!(sqlite_ping_answers, contract::ping_answers);
contract_test!(
    sqlite_value_types_round_trip,
    contract::value_types_round_trip
);
contract_test!(
    sqlite_latest_never_goes_back,
    contract::latest_never_goes_back
);
contract_test!(sqlite_range_query_pages, contract::range_query_pages);
contract_test!(sqlite_ttl_expiry, contract::ttl_expiry);
contract_test!(sqlite_auto_create_race, contract::auto_create_race);
contract_test!(
    sqlite_secrets_are_only_hashed,
    contract::secrets_are_only_hashed
);
contract_test!(sqlite_registry_round_trips, contract::registry_round_trips);
contract_test!(sqlite_command_transitions, contract::command_transitions);
contract_test!(sqlite_logs, contract::logs);
contract_test!(
    sqlite_delete_then_recreate_starts_empty,
    contract::delete_then_recreate_starts_empty
);

/// Data survives closing and reopening the file, and migrate is idempotent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_reopen_keeps_data_and_migrate_is_idempotent() {
    let dir = tempdir::Dir::new();
    let path = dir.path.join("db");
    {
        let s = SqliteStore::open(&path, &SqliteConfig::default()).unwrap();
        assert_eq!(
            s.migrate().await.unwrap(),
            fluxgate_store::sqlite::SCHEMA_VERSION
        );
        s.put_device_token(fluxgate_store::DeviceToken {
            token_hash: "h".into(),
            tenant: fluxgate_model::TenantId::new("t").unwrap(),
            device: fluxgate_model::DeviceId::new("d").unwrap(),
        })
        .await
        .unwrap();
    }
    let s = SqliteStore::open(&path, &SqliteConfig::default()).unwrap();
    assert_eq!(
        s.migrate().await.unwrap(),
        fluxgate_store::sqlite::SCHEMA_VERSION
    );
    assert!(s.device_token("h".into()).await.unwrap().is_some());
}

/// Expired rows are deleted by the purge, not only hidden.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_purge_deletes_expired_rows() {
    let now = Arc::new(std::sync::atomic::AtomicI64::new(1_000_000));
    let clock = now.clone();
    let s = SqliteStore::in_memory()
        .unwrap()
        .with_clock(move || clock.load(std::sync::atomic::Ordering::SeqCst));
    let t = fluxgate_model::TenantId::new("t").unwrap();
    s.put_application(fluxgate_store::Application {
        id: t.clone(),
        name: "a".into(),
        ttl_secs: Some(10),
        created_ms: 0,
    })
    .await
    .unwrap();
    let mut values = fluxgate_model::Values::new();
    values.insert("k", fluxgate_model::Value::Integer(1));
    s.write_samples(vec![fluxgate_store::SampleBatch {
        tenant: t.clone(),
        device: fluxgate_model::DeviceId::new("d").unwrap(),
        samples: vec![fluxgate_model::Sample { ts_ms: 5, values }],
    }])
    .await
    .unwrap();
    assert_eq!(s.purge_expired().await.unwrap(), 0);
    now.store(1_000_000 + 10_001, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        s.purge_expired().await.unwrap(),
        2,
        "the point and its latest value"
    );
}

#[test]
fn sqlite_bad_config_names_the_field() {
    let err = SqliteStore::open(
        std::env::temp_dir().join(fluxgate_testkit::unique_name("x")),
        &SqliteConfig {
            synchronous: "SOMETIMES".into(),
        },
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("store.sqlite.synchronous"),
        "{err}"
    );
}
contract_test!(
    sqlite_racing_transitions_leave_one_terminal_status,
    contract::racing_transitions_leave_one_terminal_status
);
contract_test!(sqlite_claims, contract::claims);
contract_test!(sqlite_client_rpcs, contract::client_rpcs);
