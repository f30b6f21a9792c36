//! The SQLite adapter: standalone mode and the embedded default.
//!
//! Bundled SQLite in WAL mode with `synchronous=FULL` by default: a committed write
//! survives a power loss, which is what lets a standalone PUBACK mean "stored". One
//! connection serves every call, on tokio's blocking pool; each call is one transaction.
//! TTL is an `expires_at` column: reads skip expired rows and [`SqliteStore::purge_expired`]
//! deletes them.

mod commands;
mod logs;
mod registry;
mod telemetry;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use fluxgate_model::{DeviceId, DeviceName, MessageId, TenantId, Value, Values};
use rusqlite::types::{Value as SqlValue, ValueRef};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params, params_from_iter};

use crate::rows::{
    self, CLIENT_RPC_COLS, COMMAND_COLS, ClientRpcRow, CommandRow, DEVICE_COLS, DeviceRow,
    new_device_id, stored_id as id, to_json,
};
use crate::types::*;
use crate::{BoxFuture, Result, Store, StoreError};

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = 4;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS applications (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, ttl_secs INTEGER, created_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS devices (
  tenant TEXT NOT NULL, id TEXT NOT NULL, name TEXT NOT NULL, kind TEXT NOT NULL,
  peripheral_policy TEXT, tags TEXT NOT NULL, profile TEXT,
  created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL,
  PRIMARY KEY (tenant, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS device_names (
  tenant TEXT NOT NULL, name TEXT NOT NULL, device TEXT NOT NULL, PRIMARY KEY (tenant, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS access_keys (
  key TEXT PRIMARY KEY, tenant TEXT NOT NULL, secret_hash TEXT NOT NULL, scope TEXT NOT NULL,
  custom_topics INTEGER NOT NULL, active INTEGER NOT NULL, created_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS device_tokens (
  token_hash TEXT PRIMARY KEY, tenant TEXT NOT NULL, device TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS device_tokens_by_device ON device_tokens (tenant, device);
CREATE TABLE IF NOT EXISTS api_tokens (
  token_hash TEXT PRIMARY KEY, tenant TEXT NOT NULL, scope TEXT NOT NULL, name TEXT NOT NULL,
  created_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS attribute_defs (
  tenant TEXT NOT NULL, device TEXT NOT NULL, name TEXT NOT NULL, kind TEXT NOT NULL,
  PRIMARY KEY (tenant, device, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS attributes (
  tenant TEXT NOT NULL, device TEXT NOT NULL, scope TEXT NOT NULL, key TEXT NOT NULL,
  ts INTEGER NOT NULL, vtype INTEGER NOT NULL, v,
  PRIMARY KEY (tenant, device, scope, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS series (
  id INTEGER PRIMARY KEY, tenant TEXT NOT NULL, device TEXT NOT NULL, key TEXT NOT NULL,
  UNIQUE (tenant, device, key)
);
CREATE TABLE IF NOT EXISTS ts_kv (
  series INTEGER NOT NULL, ts INTEGER NOT NULL, vtype INTEGER NOT NULL, v, expires_at INTEGER,
  PRIMARY KEY (series, ts)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ts_latest (
  series INTEGER PRIMARY KEY, ts INTEGER NOT NULL, vtype INTEGER NOT NULL, v, expires_at INTEGER
);
CREATE TABLE IF NOT EXISTS commands (
  id TEXT PRIMARY KEY, tenant TEXT NOT NULL, device TEXT NOT NULL, command TEXT NOT NULL,
  status TEXT NOT NULL, created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL, reply TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS commands_by_device ON commands (tenant, device, created_ms);
CREATE INDEX IF NOT EXISTS commands_awaiting_reply ON commands (updated_ms)
  WHERE status IN ('sent', 'delivered') AND json_extract(command, '$.two_way') = 1;
CREATE TABLE IF NOT EXISTS command_history (
  id TEXT NOT NULL, seq INTEGER NOT NULL, status TEXT NOT NULL, at_ms INTEGER NOT NULL,
  detail TEXT, PRIMARY KEY (id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS client_rpcs (
  id TEXT NOT NULL, tenant TEXT NOT NULL, device TEXT NOT NULL, request_id TEXT NOT NULL,
  method TEXT NOT NULL, params TEXT NOT NULL, status TEXT NOT NULL, created_ms INTEGER NOT NULL,
  deadline_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL, answer TEXT,
  PRIMARY KEY (tenant, device, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS client_rpcs_pending ON client_rpcs (created_ms) WHERE status = 'pending';
CREATE TABLE IF NOT EXISTS device_claims (
  tenant TEXT NOT NULL, device TEXT NOT NULL, secret_hash TEXT NOT NULL,
  window_until_ms INTEGER NOT NULL, owner TEXT, claimed_ms INTEGER,
  PRIMARY KEY (tenant, device)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS connection_log (
  tenant TEXT NOT NULL, device TEXT NOT NULL, at_ms INTEGER NOT NULL, seq INTEGER NOT NULL,
  connected INTEGER NOT NULL, front TEXT, remote_addr TEXT, reason TEXT, via TEXT,
  expires_at INTEGER, PRIMARY KEY (tenant, device, at_ms, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rejected_log (
  tenant TEXT NOT NULL, device TEXT NOT NULL, at_ms INTEGER NOT NULL, seq INTEGER NOT NULL,
  code TEXT NOT NULL, message TEXT NOT NULL, excerpt TEXT NOT NULL, expires_at INTEGER,
  PRIMARY KEY (tenant, at_ms, seq)
) WITHOUT ROWID;
"#;

/// SQLite settings.
#[derive(
    Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields, default)]
pub struct SqliteConfig {
    /// `PRAGMA synchronous`: `FULL` (default; survives power loss) or `NORMAL` (survives
    /// process crashes only).
    pub synchronous: String,
}

impl Default for SqliteConfig {
    fn default() -> Self {
        SqliteConfig {
            synchronous: "FULL".into(),
        }
    }
}

/// The SQLite store. Clones share one connection.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    now: Arc<dyn Fn() -> i64 + Send + Sync>,
    series: Arc<Mutex<SeriesCache>>,
}

/// Series ids by (tenant, device, key). Points are keyed by a small integer series id
/// instead of three strings: half the B-tree work per write. Series are never deleted,
/// so cached ids stay valid; the cache is dropped whole when it grows past its bound.
#[derive(Default)]
struct SeriesCache {
    ids: HashMap<TenantId, HashMap<DeviceId, HashMap<String, i64>>>,
    len: usize,
}

const SERIES_CACHE_MAX: usize = 1_000_000;

impl SeriesCache {
    fn get(&self, t: &TenantId, d: &DeviceId, k: &str) -> Option<i64> {
        self.ids.get(t)?.get(d)?.get(k).copied()
    }

    fn insert(&mut self, t: &TenantId, d: &DeviceId, k: &str, id: i64) {
        if self.len >= SERIES_CACHE_MAX {
            self.ids.clear();
            self.len = 0;
        }
        self.ids
            .entry(t.clone())
            .or_default()
            .entry(d.clone())
            .or_default()
            .insert(k.to_owned(), id);
        self.len += 1;
    }
}

/// The series id of (tenant, device, key), created on first use.
fn series_id(
    c: &Connection,
    cache: &mut SeriesCache,
    t: &TenantId,
    d: &DeviceId,
    k: &str,
) -> Result<i64> {
    if let Some(id) = cache.get(t, d, k) {
        return Ok(id);
    }
    c.prepare_cached("INSERT OR IGNORE INTO series (tenant, device, key) VALUES (?1, ?2, ?3)")
        .and_then(|mut st| st.execute(params![t.as_str(), d.as_str(), k]))
        .map_err(sql_err)?;
    let id: i64 = c
        .prepare_cached("SELECT id FROM series WHERE tenant = ?1 AND device = ?2 AND key = ?3")
        .and_then(|mut st| st.query_row(params![t.as_str(), d.as_str(), k], |r| r.get(0)))
        .map_err(sql_err)?;
    cache.insert(t, d, k, id);
    Ok(id)
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteStore")
    }
}

fn sql_err(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode as C;
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(
                f.code,
                C::DatabaseBusy
                    | C::DatabaseLocked
                    | C::SystemIoFailure
                    | C::DiskFull
                    | C::OutOfMemory
            ) =>
        {
            StoreError::Unavailable(e.to_string())
        }
        _ => StoreError::Corrupt(e.to_string()),
    }
}

fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies the schema.
    pub fn open(path: impl AsRef<Path>, cfg: &SqliteConfig) -> Result<Self> {
        let cannot = |e: &dyn std::fmt::Display| {
            StoreError::Config(format!("cannot open {}: {e}", path.as_ref().display()))
        };
        owner_only(path.as_ref()).map_err(|e| cannot(&e))?;
        let conn = Connection::open(path.as_ref()).map_err(|e| cannot(&e))?;
        Self::setup(conn, cfg)
    }

    /// A private in-memory database (tests).
    pub fn in_memory() -> Result<Self> {
        let conn = Connection::open_in_memory().map_err(sql_err)?;
        Self::setup(conn, &SqliteConfig::default())
    }

    fn setup(conn: Connection, cfg: &SqliteConfig) -> Result<Self> {
        let sync = match cfg.synchronous.to_ascii_uppercase().as_str() {
            s @ ("FULL" | "NORMAL" | "EXTRA") => s.to_owned(),
            other => {
                return Err(StoreError::Config(format!(
                    "store.sqlite.synchronous must be FULL, NORMAL or EXTRA, not {other:?}"
                )));
            }
        };
        conn.execute_batch(&format!(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous={sync}; PRAGMA busy_timeout=5000; PRAGMA foreign_keys=OFF; PRAGMA cache_size=-65536; PRAGMA temp_store=MEMORY;"
        ))
        .map_err(sql_err)?;
        conn.set_prepared_statement_cache_capacity(64);
        let store = SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            now: Arc::new(wall_clock_ms),
            series: Arc::new(Mutex::new(SeriesCache::default())),
        };
        store.migrate_now()?;
        Ok(store)
    }

    /// Uses `now` instead of the wall clock for TTL (tests).
    pub fn with_clock(mut self, now: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        self.now = Arc::new(now);
        self
    }

    fn migrate_now(&self) -> Result<u32> {
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let tx = conn.transaction().map_err(sql_err)?;
        tx.execute_batch(SCHEMA).map_err(sql_err)?;
        let current: Option<u32> = tx
            .query_row("SELECT max(version) FROM schema_version", [], |r| r.get(0))
            .map_err(sql_err)?;
        if current.is_none_or(|v| v < SCHEMA_VERSION) {
            tx.execute("DELETE FROM schema_version", [])
                .map_err(sql_err)?;
            tx.execute(
                "INSERT INTO schema_version (version) VALUES (?1)",
                [SCHEMA_VERSION],
            )
            .map_err(sql_err)?;
        }
        tx.commit().map_err(sql_err)?;
        Ok(SCHEMA_VERSION)
    }

    /// Runs `f` on the connection on the blocking pool.
    fn run<T, F>(&self, f: F) -> BoxFuture<'_, Result<T>>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection, i64) -> Result<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        let now = (self.now)();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut c = conn.lock().unwrap_or_else(|e| e.into_inner());
                f(&mut c, now)
            })
            .await
            .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
        })
    }

    /// Deletes rows whose TTL has passed; returns how many.
    pub fn purge_expired(&self) -> BoxFuture<'_, Result<usize>> {
        self.run(|c, now| {
            let mut n = 0;
            for table in ["ts_kv", "ts_latest", "connection_log", "rejected_log"] {
                n += c
                    .execute(
                        &format!(
                            "DELETE FROM {table} WHERE expires_at IS NOT NULL AND expires_at <= ?1"
                        ),
                        [now],
                    )
                    .map_err(sql_err)?;
            }
            Ok(n)
        })
    }
}

fn value_to_sql(v: &Value) -> (i64, SqlValue) {
    match v {
        Value::Integer(i) => (0, SqlValue::Integer(*i)),
        Value::Float(f) => (1, SqlValue::Real(*f)),
        Value::String(s) => (2, SqlValue::Text(s.clone())),
        Value::Bool(b) => (3, SqlValue::Integer(i64::from(*b))),
        Value::Json(j) => (4, SqlValue::Text(j.to_string())),
    }
}

/// A device's attributes of one scope written after `since_ms`.
fn attribute_rows(
    c: &rusqlite::Connection,
    tenant: &TenantId,
    device: &DeviceId,
    scope: AttributeScope,
    since_ms: i64,
) -> Result<Vec<(String, Value)>> {
    let mut s = c
        .prepare_cached("SELECT key, vtype, v FROM attributes WHERE tenant = ?1 AND device = ?2 AND scope = ?3 AND ts > ?4")
        .map_err(sql_err)?;
    let mut rows = s
        .query(rusqlite::params![
            tenant.as_str(),
            device.as_str(),
            scope.as_str(),
            since_ms
        ])
        .map_err(sql_err)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(sql_err)? {
        let key: String = r.get(0).map_err(sql_err)?;
        let v = value_from_sql(r.get(1).map_err(sql_err)?, r.get_ref(2).map_err(sql_err)?)?;
        out.push((key, v));
    }
    Ok(out)
}

fn value_from_sql(vtype: i64, v: ValueRef<'_>) -> Result<Value> {
    let bad = || StoreError::Corrupt(format!("value of type {vtype} unreadable"));
    Ok(match (vtype, v) {
        (0, ValueRef::Integer(i)) => Value::Integer(i),
        (1, ValueRef::Real(f)) => Value::Float(f),
        (1, ValueRef::Integer(i)) => Value::Float(i as f64),
        (2, ValueRef::Text(t)) => Value::String(String::from_utf8_lossy(t).into_owned()),
        (3, ValueRef::Integer(i)) => Value::Bool(i != 0),
        (4, ValueRef::Text(t)) => Value::from_json(serde_json::from_slice(t).map_err(|_| bad())?),
        _ => return Err(bad()),
    })
}

fn ttl_expiry(c: &Connection, tenant: &TenantId, now: i64) -> Result<Option<i64>> {
    let ttl: Option<Option<i64>> = c
        .prepare_cached("SELECT ttl_secs FROM applications WHERE id = ?1")
        .and_then(|mut s| s.query_row([tenant.as_str()], |r| r.get(0)).optional())
        .map_err(sql_err)?;
    Ok(ttl.flatten().map(|t| now + t * 1000))
}

fn read_device(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeviceRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
    ))
}

fn load_device(c: &Connection, tenant: &str, device: &str) -> Result<Option<Device>> {
    let row = c
        .prepare_cached(&format!(
            "SELECT {DEVICE_COLS} FROM devices WHERE tenant = ?1 AND id = ?2"
        ))
        .and_then(|mut s| s.query_row([tenant, device], read_device).optional())
        .map_err(sql_err)?;
    row.map(rows::device).transpose()
}

fn insert_device(c: &Connection, d: &Device) -> Result<()> {
    c.prepare_cached(&format!(
        "INSERT OR REPLACE INTO devices ({DEVICE_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
    ))
    .and_then(|mut s| {
        s.execute(params![
            d.tenant.as_str(),
            d.id.as_str(),
            d.name,
            d.kind.as_str(),
            d.peripheral_policy.as_ref().map(to_json),
            to_json(&d.tags),
            d.profile,
            d.created_ms,
            d.updated_ms
        ])
    })
    .map_err(sql_err)?;
    Ok(())
}

fn command_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CommandRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
    ))
}

fn load_command(c: &Connection, cid: &str) -> Result<Option<CommandRecord>> {
    let row = c
        .prepare_cached(&format!(
            "SELECT {COMMAND_COLS} FROM commands WHERE id = ?1"
        ))
        .and_then(|mut s| s.query_row([cid], command_from_row).optional())
        .map_err(sql_err)?;
    row.map(rows::command).transpose()
}

fn client_rpc_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ClientRpcRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
    ))
}

fn load_client_rpc(c: &Connection, t: &str, d: &str, rid: &str) -> Result<Option<ClientRpc>> {
    let row = c
        .prepare_cached(&format!(
            "SELECT {CLIENT_RPC_COLS} FROM client_rpcs WHERE tenant = ?1 AND device = ?2 AND id = ?3"
        ))
        .and_then(|mut s| s.query_row([t, d, rid], client_rpc_from_row).optional())
        .map_err(sql_err)?;
    row.map(rows::client_rpc).transpose()
}

fn next_seq(c: &Connection, sql: &str, p: &[&dyn rusqlite::ToSql]) -> Result<i64> {
    c.prepare_cached(sql)
        .and_then(|mut s| s.query_row(p, |r| r.get::<_, Option<i64>>(0)))
        .map(|m| m.map_or(0, |m| m + 1))
        .map_err(sql_err)
}

fn keys_clause(first_param: usize, n: usize) -> String {
    (0..n)
        .map(|i| format!("?{}", first_param + i))
        .collect::<Vec<_>>()
        .join(", ")
}

fn parse_token(t: &str) -> Result<(i64, String)> {
    let (ts, key) = t.split_once(':').ok_or(StoreError::BadPageToken)?;
    Ok((
        ts.parse().map_err(|_| StoreError::BadPageToken)?,
        key.to_owned(),
    ))
}

/// Writes points in one transaction: each point upserted into its series, and the newest
/// point of each series in the batch upserted into the latest values (only it can become
/// the latest: one upsert per series instead of one per point).
fn write_points(
    c: &mut Connection,
    cache: &mut SeriesCache,
    batches: &[SampleBatch],
    now: i64,
) -> Result<usize> {
    let tx = c.transaction().map_err(sql_err)?;
    let mut written = 0;
    {
        let mut kv = tx
            .prepare_cached(
                "INSERT INTO ts_kv (series, ts, vtype, v, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (series, ts) DO UPDATE SET vtype = excluded.vtype, v = excluded.v, expires_at = excluded.expires_at",
            )
            .map_err(sql_err)?;
        let mut latest = tx
            .prepare_cached(
                "INSERT INTO ts_latest (series, ts, vtype, v, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (series) DO UPDATE SET ts = excluded.ts, vtype = excluded.vtype, v = excluded.v, expires_at = excluded.expires_at
                 WHERE excluded.ts >= ts_latest.ts",
            )
            .map_err(sql_err)?;
        let mut expiry: HashMap<&TenantId, Option<i64>> = HashMap::new();
        let mut newest: HashMap<i64, (i64, &Value, Option<i64>)> = HashMap::new();
        for b in batches {
            let exp = match expiry.get(&b.tenant) {
                Some(e) => *e,
                None => {
                    let e = ttl_expiry(&tx, &b.tenant, now)?;
                    expiry.insert(&b.tenant, e);
                    e
                }
            };
            for sample in &b.samples {
                for (k, v) in &sample.values {
                    let series = series_id(&tx, cache, &b.tenant, &b.device, k)?;
                    let (vtype, sv) = value_to_sql(v);
                    kv.execute(params![series, sample.ts_ms, vtype, sv, exp])
                        .map_err(sql_err)?;
                    written += 1;
                    let slot = newest.entry(series).or_insert((sample.ts_ms, v, exp));
                    // A tie goes to the later entry, as it would for later writes.
                    if sample.ts_ms >= slot.0 {
                        *slot = (sample.ts_ms, v, exp);
                    }
                }
            }
        }
        for (series, (ts, v, exp)) in newest {
            let (vtype, sv) = value_to_sql(v);
            latest
                .execute(params![series, ts, vtype, sv, exp])
                .map_err(sql_err)?;
        }
    }
    tx.commit().map_err(sql_err)?;
    Ok(written)
}

impl Store for SqliteStore {
    fn migrate(&self) -> BoxFuture<'_, Result<u32>> {
        let me = self.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || me.migrate_now())
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))?
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<()>> {
        self.run(|c, _| {
            c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
                .map(|_| ())
                .map_err(sql_err)
        })
    }
}

/// Makes the database file at `path` readable by its owner only (0600), creating it so
/// when it does not exist: SQLite creates its `-wal` and `-shm` files with the database
/// file's permissions, so no file of the store is ever readable by others.
fn owner_only(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        // One made by an earlier version with the default mode.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}
