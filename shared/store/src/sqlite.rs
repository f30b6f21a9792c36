//! The SQLite adapter: standalone mode and the embedded default.
//!
//! Bundled SQLite in WAL mode with `synchronous=FULL` by default: a committed write
//! survives a power loss, which is what lets a standalone PUBACK mean "stored". One
//! connection serves every call, on tokio's blocking pool; each call is one transaction.
//! TTL is an `expires_at` column: reads skip expired rows and [`SqliteStore::purge_expired`]
//! deletes them.

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
        let conn = Connection::open(path.as_ref()).map_err(|e| {
            StoreError::Config(format!("cannot open {}: {e}", path.as_ref().display()))
        })?;
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

    fn put_application(&self, app: Application) -> BoxFuture<'_, Result<()>> {
        self.run(move |c, _| {
            c.execute(
                "INSERT OR REPLACE INTO applications (id, name, ttl_secs, created_ms) VALUES (?1, ?2, ?3, ?4)",
                params![app.id.as_str(), app.name, app.ttl_secs, app.created_ms],
            )
            .map_err(sql_err)?;
            Ok(())
        })
    }

    fn application(&self, tenant: TenantId) -> BoxFuture<'_, Result<Option<Application>>> {
        self.run(move |c, _| {
            let row: Option<(String, String, Option<u32>, i64)> = c
                .query_row(
                    "SELECT id, name, ttl_secs, created_ms FROM applications WHERE id = ?1",
                    [tenant.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()
                .map_err(sql_err)?;
            row.map(|(i, name, ttl_secs, created_ms)| {
                Ok(Application {
                    id: id(i, TenantId::new)?,
                    name,
                    ttl_secs,
                    created_ms,
                })
            })
            .transpose()
        })
    }

    fn put_device(&self, device: Device) -> BoxFuture<'_, Result<()>> {
        self.run(move |c, _| {
            let tx = c.transaction().map_err(sql_err)?;
            insert_device(&tx, &device)?;
            tx.execute(
                "INSERT OR REPLACE INTO device_names (tenant, name, device) VALUES (?1, ?2, ?3)",
                params![device.tenant.as_str(), device.name, device.id.as_str()],
            )
            .map_err(sql_err)?;
            tx.commit().map_err(sql_err)
        })
    }

    fn device(&self, tenant: TenantId, device: DeviceId) -> BoxFuture<'_, Result<Option<Device>>> {
        self.run(move |c, _| load_device(c, tenant.as_str(), device.as_str()))
    }

    fn delete_device(&self, tenant: TenantId, device: DeviceId) -> BoxFuture<'_, Result<bool>> {
        self.run(move |c, _| {
            let tx = c.transaction().map_err(sql_err)?;
            let (t, d) = (tenant.as_str(), device.as_str());
            // The `series` ids stay: they are only names for (tenant, device, key), cached
            // by writers, and a device made again reuses them.
            let n = tx
                .execute("DELETE FROM devices WHERE tenant = ?1 AND id = ?2", [t, d])
                .map_err(sql_err)?;
            for sql in [
                "DELETE FROM device_names WHERE tenant = ?1 AND device = ?2",
                "DELETE FROM device_tokens WHERE tenant = ?1 AND device = ?2",
                "DELETE FROM attribute_defs WHERE tenant = ?1 AND device = ?2",
                "DELETE FROM attributes WHERE tenant = ?1 AND device = ?2",
                "DELETE FROM ts_kv WHERE series IN \
                   (SELECT id FROM series WHERE tenant = ?1 AND device = ?2)",
                "DELETE FROM ts_latest WHERE series IN \
                   (SELECT id FROM series WHERE tenant = ?1 AND device = ?2)",
                "DELETE FROM command_history WHERE id IN \
                   (SELECT id FROM commands WHERE tenant = ?1 AND device = ?2)",
                "DELETE FROM commands WHERE tenant = ?1 AND device = ?2",
                "DELETE FROM connection_log WHERE tenant = ?1 AND device = ?2",
                "DELETE FROM device_claims WHERE tenant = ?1 AND device = ?2",
                "DELETE FROM client_rpcs WHERE tenant = ?1 AND device = ?2",
            ] {
                tx.execute(sql, [t, d]).map_err(sql_err)?;
            }
            tx.commit().map_err(sql_err)?;
            Ok(n > 0)
        })
    }

    fn devices(
        &self,
        tenant: TenantId,
        after: Option<DeviceId>,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<Device>>> {
        self.run(move |c, _| {
            let after = after.as_ref().map_or("", DeviceId::as_str).to_owned();
            let mut s = c
                .prepare_cached(&format!(
                    "SELECT {DEVICE_COLS} FROM devices WHERE tenant = ?1 AND id > ?2 ORDER BY id LIMIT ?3"
                ))
                .map_err(sql_err)?;
            let rows = s
                .query_map(params![tenant.as_str(), after, limit], read_device)
                .map_err(sql_err)?;
            rows.map(|r| r.map_err(sql_err).and_then(rows::device)).collect()
        })
    }

    fn device_named(
        &self,
        tenant: TenantId,
        name: DeviceName,
    ) -> BoxFuture<'_, Result<Option<Device>>> {
        self.run(move |c, _| {
            let id: Option<String> = c
                .prepare_cached("SELECT device FROM device_names WHERE tenant = ?1 AND name = ?2")
                .and_then(|mut s| {
                    s.query_row([tenant.as_str(), name.as_str()], |r| r.get(0))
                        .optional()
                })
                .map_err(sql_err)?;
            match id {
                Some(id) => load_device(c, tenant.as_str(), &id),
                None => Ok(None),
            }
        })
    }

    fn device_by_name(
        &self,
        tenant: TenantId,
        name: DeviceName,
        profile: String,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<NamedDevice>> {
        self.run(move |c, _| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql_err)?;
            let fresh = new_device_id(now_ms, name.as_str())?;
            // First writer of the name wins; everyone reads the winner.
            let created = tx
                .execute(
                    "INSERT OR IGNORE INTO device_names (tenant, name, device) VALUES (?1, ?2, ?3)",
                    params![tenant.as_str(), name.as_str(), fresh.as_str()],
                )
                .map_err(sql_err)?
                == 1;
            if created {
                insert_device(
                    &tx,
                    &Device {
                        tenant: tenant.clone(),
                        id: fresh,
                        name: name.as_str().to_owned(),
                        kind: DeviceKind::Standalone,
                        peripheral_policy: None,
                        tags: Vec::new(),
                        profile: Some(profile),
                        created_ms: now_ms,
                        updated_ms: now_ms,
                    },
                )?;
            }
            let did: String = tx
                .query_row(
                    "SELECT device FROM device_names WHERE tenant = ?1 AND name = ?2",
                    [tenant.as_str(), name.as_str()],
                    |r| r.get(0),
                )
                .map_err(sql_err)?;
            let device = load_device(&tx, tenant.as_str(), &did)?.ok_or_else(|| {
                StoreError::Corrupt(format!("name {name} maps to missing device {did}"))
            })?;
            tx.commit().map_err(sql_err)?;
            Ok(NamedDevice { device, created })
        })
    }

    fn put_access_key(&self, key: AccessKey) -> BoxFuture<'_, Result<()>> {
        self.run(move |c, _| {
            c.execute(
                "INSERT OR REPLACE INTO access_keys (key, tenant, secret_hash, scope, custom_topics, active, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    key.key,
                    key.tenant.as_str(),
                    key.secret_hash,
                    to_json(&key.scope),
                    key.custom_topics,
                    key.active,
                    key.created_ms
                ],
            )
            .map_err(sql_err)?;
            Ok(())
        })
    }

    fn access_key(&self, key: String) -> BoxFuture<'_, Result<Option<AccessKey>>> {
        self.run(move |c, _| {
            let row: Option<(String, String, String, String, bool, bool, i64)> = c
                .prepare_cached(
                    "SELECT key, tenant, secret_hash, scope, custom_topics, active, created_ms FROM access_keys WHERE key = ?1",
                )
                .and_then(|mut s| {
                    s.query_row([&key], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?))
                    })
                    .optional()
                })
                .map_err(sql_err)?;
            row.map(rows::access_key)
            .transpose()
        })
    }

    fn put_device_token(&self, token: DeviceToken) -> BoxFuture<'_, Result<()>> {
        self.run(move |c, _| {
            c.execute(
                "INSERT OR REPLACE INTO device_tokens (token_hash, tenant, device) VALUES (?1, ?2, ?3)",
                params![token.token_hash, token.tenant.as_str(), token.device.as_str()],
            )
            .map_err(sql_err)?;
            Ok(())
        })
    }

    fn device_token(&self, token_hash: String) -> BoxFuture<'_, Result<Option<DeviceToken>>> {
        self.run(move |c, _| {
            let row: Option<(String, String, String)> = c
                .prepare_cached(
                    "SELECT token_hash, tenant, device FROM device_tokens WHERE token_hash = ?1",
                )
                .and_then(|mut s| {
                    s.query_row([&token_hash], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                        .optional()
                })
                .map_err(sql_err)?;
            row.map(rows::device_token).transpose()
        })
    }

    fn put_api_token(&self, token: ApiToken) -> BoxFuture<'_, Result<()>> {
        self.run(move |c, _| {
            c.execute(
                "INSERT OR REPLACE INTO api_tokens (token_hash, tenant, scope, name, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    token.token_hash,
                    token.tenant.as_str(),
                    token.scope.as_str(),
                    token.name,
                    token.created_ms
                ],
            )
            .map_err(sql_err)?;
            Ok(())
        })
    }

    fn api_token(&self, token_hash: String) -> BoxFuture<'_, Result<Option<ApiToken>>> {
        self.run(move |c, _| {
            let row: Option<rows::ApiTokenRow> = c
                .prepare_cached(
                    "SELECT token_hash, tenant, scope, name, created_ms FROM api_tokens WHERE token_hash = ?1",
                )
                .and_then(|mut s| {
                    s.query_row([&token_hash], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                    })
                    .optional()
                })
                .map_err(sql_err)?;
            row.map(rows::api_token).transpose()
        })
    }

    fn delete_api_token(&self, token_hash: String) -> BoxFuture<'_, Result<bool>> {
        self.run(move |c, _| {
            let n = c
                .execute(
                    "DELETE FROM api_tokens WHERE token_hash = ?1",
                    [&token_hash],
                )
                .map_err(sql_err)?;
            Ok(n > 0)
        })
    }

    fn put_attribute_defs(
        &self,
        tenant: TenantId,
        device: DeviceId,
        defs: Vec<AttributeDef>,
    ) -> BoxFuture<'_, Result<()>> {
        self.run(move |c, _| {
            let tx = c.transaction().map_err(sql_err)?;
            tx.execute(
                "DELETE FROM attribute_defs WHERE tenant = ?1 AND device = ?2",
                [tenant.as_str(), device.as_str()],
            )
            .map_err(sql_err)?;
            for d in &defs {
                tx.execute(
                    "INSERT OR REPLACE INTO attribute_defs (tenant, device, name, kind) VALUES (?1, ?2, ?3, ?4)",
                    params![tenant.as_str(), device.as_str(), d.name, d.kind.as_str()],
                )
                .map_err(sql_err)?;
            }
            tx.commit().map_err(sql_err)
        })
    }

    fn attribute_defs(
        &self,
        tenant: TenantId,
        device: DeviceId,
    ) -> BoxFuture<'_, Result<Vec<AttributeDef>>> {
        self.run(move |c, _| {
            let mut s = c
                .prepare_cached("SELECT name, kind FROM attribute_defs WHERE tenant = ?1 AND device = ?2 ORDER BY name")
                .map_err(sql_err)?;
            let rows = s
                .query_map([tenant.as_str(), device.as_str()], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                .map_err(sql_err)?;
            rows.map(|r| {
                let (name, kind) = r.map_err(sql_err)?;
                Ok(AttributeDef {
                    name,
                    kind: AttributeType::parse(&kind).ok_or_else(|| StoreError::Corrupt(format!("attribute type {kind}")))?,
                })
            })
            .collect()
        })
    }

    fn put_attributes(
        &self,
        tenant: TenantId,
        device: DeviceId,
        scope: AttributeScope,
        values: Values,
        ts_ms: i64,
    ) -> BoxFuture<'_, Result<()>> {
        self.run(move |c, _| {
            let tx = c.transaction().map_err(sql_err)?;
            {
                let mut s = tx
                    .prepare_cached(
                        "INSERT INTO attributes (tenant, device, scope, key, ts, vtype, v) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                         ON CONFLICT (tenant, device, scope, key) DO UPDATE SET ts = excluded.ts, vtype = excluded.vtype, v = excluded.v
                         WHERE excluded.ts >= attributes.ts",
                    )
                    .map_err(sql_err)?;
                for (k, v) in &values {
                    let (vtype, v) = value_to_sql(v);
                    s.execute(params![tenant.as_str(), device.as_str(), scope.as_str(), k, ts_ms, vtype, v])
                        .map_err(sql_err)?;
                }
            }
            tx.commit().map_err(sql_err)
        })
    }

    fn attributes(
        &self,
        tenant: TenantId,
        device: DeviceId,
        scope: AttributeScope,
        keys: Option<Vec<String>>,
    ) -> BoxFuture<'_, Result<Values>> {
        self.run(move |c, _| {
            let rows = attribute_rows(c, &tenant, &device, scope, i64::MIN)?;
            Ok(rows
                .into_iter()
                .filter(|(key, _)| keys.as_ref().is_none_or(|ks| ks.contains(key)))
                .collect())
        })
    }

    fn attributes_since(
        &self,
        tenant: TenantId,
        device: DeviceId,
        scope: AttributeScope,
        since_ms: i64,
    ) -> BoxFuture<'_, Result<Values>> {
        self.run(move |c, _| {
            let rows = attribute_rows(c, &tenant, &device, scope, since_ms)?;
            Ok(rows.into_iter().collect())
        })
    }

    fn write_samples(&self, batches: Vec<SampleBatch>) -> BoxFuture<'_, Result<usize>> {
        let cache = self.series.clone();
        self.run(move |c, now| {
            let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
            let result = write_points(c, &mut cache, &batches, now);
            if result.is_err() {
                // Series created in the failed transaction are gone with it.
                *cache = SeriesCache::default();
            }
            result
        })
    }

    fn latest(
        &self,
        tenant: TenantId,
        device: DeviceId,
        keys: Option<Vec<String>>,
    ) -> BoxFuture<'_, Result<Vec<Point>>> {
        self.run(move |c, now| {
            let mut s = c
                .prepare_cached(
                    "SELECT s.key, l.ts, l.vtype, l.v FROM series s JOIN ts_latest l ON l.series = s.id
                     WHERE s.tenant = ?1 AND s.device = ?2
                     AND (l.expires_at IS NULL OR l.expires_at > ?3) ORDER BY s.key",
                )
                .map_err(sql_err)?;
            let mut rows = s
                .query(params![tenant.as_str(), device.as_str(), now])
                .map_err(sql_err)?;
            let mut out = Vec::new();
            while let Some(r) = rows.next().map_err(sql_err)? {
                let key: String = r.get(0).map_err(sql_err)?;
                if keys.as_ref().is_some_and(|ks| !ks.contains(&key)) {
                    continue;
                }
                out.push(Point {
                    device: device.clone(),
                    ts_ms: r.get(1).map_err(sql_err)?,
                    value: value_from_sql(
                        r.get(2).map_err(sql_err)?,
                        r.get_ref(3).map_err(sql_err)?,
                    )?,
                    key,
                });
            }
            Ok(out)
        })
    }

    fn query(&self, q: RangeQuery) -> BoxFuture<'_, Result<PointPage>> {
        self.run(move |c, now| {
            if q.limit == 0 {
                return Ok(PointPage {
                    points: Vec::new(),
                    next: None,
                });
            }
            let after = q.page_token.as_deref().map(parse_token).transpose()?;
            let (cmp, dir) = match q.order {
                Order::Asc => (">", "ASC"),
                Order::Desc => ("<", "DESC"),
            };
            let n = q.keys.len();
            let mut sql = format!(
                "SELECT s.key, k.ts, k.vtype, k.v FROM series s JOIN ts_kv k ON k.series = s.id
                 WHERE s.tenant = ?1 AND s.device = ?2 AND k.ts >= ?3 AND k.ts < ?4
                 AND (k.expires_at IS NULL OR k.expires_at > ?5){}",
                if n == 0 {
                    String::new() // every key
                } else {
                    format!(" AND s.key IN ({})", keys_clause(6, n))
                }
            );
            let mut p: Vec<SqlValue> = vec![
                SqlValue::Text(q.tenant.as_str().to_owned()),
                SqlValue::Text(q.device.as_str().to_owned()),
                SqlValue::Integer(q.from_ms),
                SqlValue::Integer(q.to_ms),
                SqlValue::Integer(now),
            ];
            p.extend(q.keys.iter().map(|k| SqlValue::Text(k.clone())));
            if let Some((ts, key)) = &after {
                sql.push_str(&format!(
                    " AND (k.ts, s.key) {cmp} (?{}, ?{})",
                    6 + n,
                    7 + n
                ));
                p.push(SqlValue::Integer(*ts));
                p.push(SqlValue::Text(key.clone()));
            }
            sql.push_str(&format!(
                " ORDER BY k.ts {dir}, s.key {dir} LIMIT {}",
                u64::from(q.limit) + 1
            ));
            let mut s = c.prepare_cached(&sql).map_err(sql_err)?;
            let mut rows = s.query(params_from_iter(p)).map_err(sql_err)?;
            let mut points = Vec::new();
            while let Some(r) = rows.next().map_err(sql_err)? {
                points.push(Point {
                    device: q.device.clone(),
                    key: r.get(0).map_err(sql_err)?,
                    ts_ms: r.get(1).map_err(sql_err)?,
                    value: value_from_sql(
                        r.get(2).map_err(sql_err)?,
                        r.get_ref(3).map_err(sql_err)?,
                    )?,
                });
            }
            let next = if points.len() > q.limit as usize {
                points.truncate(q.limit as usize);
                points.last().map(|p| format!("{}:{}", p.ts_ms, p.key))
            } else {
                None
            };
            Ok(PointPage { points, next })
        })
    }

    fn put_command(&self, r: CommandRecord) -> BoxFuture<'_, Result<()>> {
        self.run(move |c, _| {
            let tx = c.transaction().map_err(sql_err)?;
            let cid = r.id.to_string();
            tx.execute(
                &format!("INSERT OR REPLACE INTO commands ({COMMAND_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"),
                params![
                    cid,
                    r.tenant.as_str(),
                    r.device.as_str(),
                    to_json(&r.command),
                    r.status.as_str(),
                    r.created_ms,
                    r.updated_ms,
                    r.reply.as_ref().map(to_json)
                ],
            )
            .map_err(sql_err)?;
            tx.execute("DELETE FROM command_history WHERE id = ?1", [&cid]).map_err(sql_err)?;
            tx.execute(
                "INSERT INTO command_history (id, seq, status, at_ms, detail) VALUES (?1, 0, ?2, ?3, NULL)",
                params![cid, r.status.as_str(), r.created_ms],
            )
            .map_err(sql_err)?;
            tx.commit().map_err(sql_err)
        })
    }

    fn command(&self, cid: MessageId) -> BoxFuture<'_, Result<Option<CommandRecord>>> {
        self.run(move |c, _| load_command(c, &cid.to_string()))
    }

    fn set_command_status(
        &self,
        cid: MessageId,
        to: CommandStatus,
        at_ms: i64,
        detail: Option<String>,
        reply: Option<serde_json::Value>,
    ) -> BoxFuture<'_, Result<CommandRecord>> {
        self.run(move |c, _| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql_err)?;
            let key = cid.to_string();
            let current = load_command(&tx, &key)?.ok_or_else(|| StoreError::NotFound(format!("command {cid}")))?;
            if !current.status.can_become(to) {
                return Err(StoreError::InvalidTransition {
                    id: cid,
                    from: current.status.as_str(),
                    to: to.as_str(),
                });
            }
            let reply_json = reply.as_ref().map(to_json);
            // Conditional on the status read (the immediate transaction already holds the
            // write lock; the condition keeps the rule in the statement, as on Cassandra).
            let changed = tx
                .execute(
                    "UPDATE commands SET status = ?2, updated_ms = ?3, reply = coalesce(?4, reply)
                     WHERE id = ?1 AND status = ?5",
                    params![key, to.as_str(), at_ms, reply_json, current.status.as_str()],
                )
                .map_err(sql_err)?;
            if changed != 1 {
                return Err(StoreError::InvalidTransition {
                    id: cid,
                    from: current.status.as_str(),
                    to: to.as_str(),
                });
            }
            let seq = next_seq(&tx, "SELECT max(seq) FROM command_history WHERE id = ?1", &[&key])?;
            tx.execute(
                "INSERT INTO command_history (id, seq, status, at_ms, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![key, seq, to.as_str(), at_ms, detail],
            )
            .map_err(sql_err)?;
            let updated = load_command(&tx, &key)?.ok_or_else(|| StoreError::NotFound(format!("command {cid}")))?;
            tx.commit().map_err(sql_err)?;
            Ok(updated)
        })
    }

    fn command_history(&self, cid: MessageId) -> BoxFuture<'_, Result<Vec<StatusChange>>> {
        self.run(move |c, _| {
            let mut s = c
                .prepare_cached(
                    "SELECT status, at_ms, detail FROM command_history WHERE id = ?1 ORDER BY seq",
                )
                .map_err(sql_err)?;
            let rows = s
                .query_map([cid.to_string()], |r| {
                    Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?))
                })
                .map_err(sql_err)?;
            rows.map(|r| {
                let (status, at_ms, detail) = r.map_err(sql_err)?;
                Ok(StatusChange {
                    status: rows::status(&status)?,
                    at_ms,
                    detail,
                })
            })
            .collect()
        })
    }

    fn commands(
        &self,
        tenant: TenantId,
        device: DeviceId,
        status: Option<CommandStatus>,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<CommandRecord>>> {
        self.run(move |c, _| {
            let mut s = c
                .prepare_cached(&format!(
                    "SELECT {COMMAND_COLS} FROM commands WHERE tenant = ?1 AND device = ?2 AND (?3 IS NULL OR status = ?3)
                     ORDER BY created_ms DESC, id DESC LIMIT ?4"
                ))
                .map_err(sql_err)?;
            let rows = s
                .query_map(
                    params![tenant.as_str(), device.as_str(), status.map(CommandStatus::as_str), limit],
                    command_from_row,
                )
                .map_err(sql_err)?;
            rows.map(|r| r.map_err(sql_err).and_then(rows::command)).collect()
        })
    }

    fn in_flight_commands(&self, limit: u32) -> BoxFuture<'_, Result<Vec<CommandRecord>>> {
        self.run(move |c, _| {
            let mut s = c
                .prepare_cached(&format!(
                    "SELECT {COMMAND_COLS} FROM commands
                     WHERE status = 'sent'
                        OR (status = 'delivered' AND json_extract(command, '$.two_way') = 1)
                     ORDER BY updated_ms LIMIT ?1"
                ))
                .map_err(sql_err)?;
            let rows = s
                .query_map(params![limit], command_from_row)
                .map_err(sql_err)?;
            rows.map(|r| r.map_err(sql_err).and_then(rows::command))
                .collect()
        })
    }

    fn put_client_rpc(&self, rpc: ClientRpc) -> BoxFuture<'_, Result<bool>> {
        self.run(move |c, _| {
            let n = c
                .execute(
                    &format!(
                        "INSERT OR IGNORE INTO client_rpcs ({CLIENT_RPC_COLS})
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
                    ),
                    params![
                        rpc.id.to_string(),
                        rpc.tenant.as_str(),
                        rpc.device.as_str(),
                        to_json(&rpc.request_id),
                        rpc.method,
                        to_json(&rpc.params),
                        rpc.status.as_str(),
                        rpc.created_ms,
                        rpc.deadline_ms,
                        rpc.updated_ms,
                        rpc.answer.as_ref().map(to_json),
                    ],
                )
                .map_err(sql_err)?;
            Ok(n == 1)
        })
    }

    fn client_rpc(
        &self,
        tenant: TenantId,
        device: DeviceId,
        rid: MessageId,
    ) -> BoxFuture<'_, Result<Option<ClientRpc>>> {
        self.run(move |c, _| load_client_rpc(c, tenant.as_str(), device.as_str(), &rid.to_string()))
    }

    fn client_rpcs(
        &self,
        tenant: TenantId,
        device: DeviceId,
        status: Option<ClientRpcStatus>,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<ClientRpc>>> {
        self.run(move |c, _| {
            let mut s = c
                .prepare_cached(&format!(
                    "SELECT {CLIENT_RPC_COLS} FROM client_rpcs
                     WHERE tenant = ?1 AND device = ?2 AND (?3 IS NULL OR status = ?3)
                     ORDER BY id DESC LIMIT ?4"
                ))
                .map_err(sql_err)?;
            let st = status.map(ClientRpcStatus::as_str);
            let rows = s
                .query_map(
                    params![tenant.as_str(), device.as_str(), st, limit.min(1000)],
                    client_rpc_from_row,
                )
                .map_err(sql_err)?;
            rows.map(|r| r.map_err(sql_err).and_then(rows::client_rpc))
                .collect()
        })
    }

    fn end_client_rpc(
        &self,
        tenant: TenantId,
        device: DeviceId,
        rid: MessageId,
        to: ClientRpcStatus,
        answer: Option<serde_json::Value>,
        at_ms: i64,
    ) -> BoxFuture<'_, Result<Option<ClientRpc>>> {
        self.run(move |c, _| {
            let (t, d, key) = (tenant.as_str(), device.as_str(), rid.to_string());
            let n = c
                .execute(
                    "UPDATE client_rpcs SET status = ?4, answer = ?5, updated_ms = ?6
                     WHERE tenant = ?1 AND device = ?2 AND id = ?3 AND status = 'pending'",
                    params![t, d, key, to.as_str(), answer.as_ref().map(to_json), at_ms],
                )
                .map_err(sql_err)?;
            if n == 1 {
                load_client_rpc(c, t, d, &key)
            } else {
                Ok(None)
            }
        })
    }

    fn pending_client_rpcs(&self, limit: u32) -> BoxFuture<'_, Result<Vec<ClientRpc>>> {
        self.run(move |c, _| {
            let mut s = c
                .prepare_cached(&format!(
                    "SELECT {CLIENT_RPC_COLS} FROM client_rpcs WHERE status = 'pending'
                     ORDER BY created_ms LIMIT ?1"
                ))
                .map_err(sql_err)?;
            let rows = s.query_map([limit], client_rpc_from_row).map_err(sql_err)?;
            rows.map(|r| r.map_err(sql_err).and_then(rows::client_rpc))
                .collect()
        })
    }

    fn device_claim(
        &self,
        tenant: TenantId,
        device: DeviceId,
    ) -> BoxFuture<'_, Result<Option<DeviceClaim>>> {
        self.run(move |c, _| {
            c.query_row(
                "SELECT secret_hash, window_until_ms, owner, claimed_ms FROM device_claims
                 WHERE tenant = ?1 AND device = ?2",
                [tenant.as_str(), device.as_str()],
                |r| {
                    Ok(DeviceClaim {
                        tenant: tenant.clone(),
                        device: device.clone(),
                        secret_hash: r.get(0)?,
                        window_until_ms: r.get(1)?,
                        owner: r.get(2)?,
                        claimed_ms: r.get(3)?,
                    })
                },
            )
            .optional()
            .map_err(sql_err)
        })
    }

    fn open_claim_window(
        &self,
        tenant: TenantId,
        device: DeviceId,
        secret_hash: String,
        until_ms: i64,
    ) -> BoxFuture<'_, Result<()>> {
        self.run(move |c, _| {
            c.execute(
                "INSERT INTO device_claims (tenant, device, secret_hash, window_until_ms)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (tenant, device) DO UPDATE
                 SET secret_hash = excluded.secret_hash, window_until_ms = excluded.window_until_ms",
                params![tenant.as_str(), device.as_str(), secret_hash, until_ms],
            )
            .map_err(sql_err)?;
            Ok(())
        })
    }

    fn set_claim_owner(
        &self,
        tenant: TenantId,
        device: DeviceId,
        seen_until_ms: i64,
        owner: String,
        at_ms: i64,
    ) -> BoxFuture<'_, Result<bool>> {
        self.run(move |c, _| {
            let n = c
                .execute(
                    "UPDATE device_claims SET owner = ?4, claimed_ms = ?5, window_until_ms = 0
                     WHERE tenant = ?1 AND device = ?2 AND window_until_ms = ?3 AND owner IS NULL",
                    params![
                        tenant.as_str(),
                        device.as_str(),
                        seen_until_ms,
                        owner,
                        at_ms
                    ],
                )
                .map_err(sql_err)?;
            Ok(n == 1)
        })
    }

    fn clear_claim(&self, tenant: TenantId, device: DeviceId) -> BoxFuture<'_, Result<bool>> {
        self.run(move |c, _| {
            let n = c
                .execute(
                    "DELETE FROM device_claims WHERE tenant = ?1 AND device = ?2 AND owner IS NOT NULL",
                    [tenant.as_str(), device.as_str()],
                )
                .map_err(sql_err)?;
            Ok(n == 1)
        })
    }

    fn log_connection(&self, e: ConnectionEvent) -> BoxFuture<'_, Result<()>> {
        self.run(move |c, now| {
            let exp = ttl_expiry(c, &e.tenant, now)?;
            let seq = next_seq(
                c,
                "SELECT max(seq) FROM connection_log WHERE tenant = ?1 AND device = ?2 AND at_ms = ?3",
                &[&e.tenant.as_str(), &e.device.as_str(), &e.at_ms],
            )?;
            c.execute(
                "INSERT INTO connection_log (tenant, device, at_ms, seq, connected, front, remote_addr, reason, via, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    e.tenant.as_str(),
                    e.device.as_str(),
                    e.at_ms,
                    seq,
                    e.connected,
                    e.front,
                    e.remote_addr,
                    e.reason,
                    e.via.as_ref().map(DeviceId::as_str),
                    exp
                ],
            )
            .map_err(sql_err)?;
            Ok(())
        })
    }

    fn connection_log(
        &self,
        tenant: TenantId,
        device: DeviceId,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<ConnectionEvent>>> {
        self.run(move |c, now| {
            let mut s = c
                .prepare_cached(
                    "SELECT at_ms, connected, front, remote_addr, reason, via FROM connection_log
                     WHERE tenant = ?1 AND device = ?2 AND (expires_at IS NULL OR expires_at > ?3)
                     ORDER BY at_ms DESC, seq DESC LIMIT ?4",
                )
                .map_err(sql_err)?;
            let rows = s
                .query_map(params![tenant.as_str(), device.as_str(), now, limit], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, bool>(1)?,
                        r.get::<_, Option<String>>(2)?,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, Option<String>>(4)?,
                        r.get::<_, Option<String>>(5)?,
                    ))
                })
                .map_err(sql_err)?;
            rows.map(|r| {
                let (at_ms, connected, front, remote_addr, reason, via) = r.map_err(sql_err)?;
                Ok(ConnectionEvent {
                    tenant: tenant.clone(),
                    device: device.clone(),
                    at_ms,
                    connected,
                    front,
                    remote_addr,
                    reason,
                    via: via.map(|v| id(v, DeviceId::new)).transpose()?,
                })
            })
            .collect()
        })
    }

    fn log_rejected(&self, e: RejectedEntry) -> BoxFuture<'_, Result<()>> {
        self.run(move |c, now| {
            let exp = ttl_expiry(c, &e.tenant, now)?;
            let seq = next_seq(
                c,
                "SELECT max(seq) FROM rejected_log WHERE tenant = ?1 AND at_ms = ?2",
                &[&e.tenant.as_str(), &e.at_ms],
            )?;
            c.execute(
                "INSERT INTO rejected_log (tenant, device, at_ms, seq, code, message, excerpt, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![e.tenant.as_str(), e.device, e.at_ms, seq, e.code.as_str(), e.message, e.excerpt, exp],
            )
            .map_err(sql_err)?;
            Ok(())
        })
    }

    fn rejected_log(
        &self,
        tenant: TenantId,
        device: Option<String>,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<RejectedEntry>>> {
        self.run(move |c, now| {
            let mut s = c
                .prepare_cached(
                    "SELECT device, at_ms, code, message, excerpt FROM rejected_log
                     WHERE tenant = ?1 AND (?2 IS NULL OR device = ?2) AND (expires_at IS NULL OR expires_at > ?3)
                     ORDER BY at_ms DESC, seq DESC LIMIT ?4",
                )
                .map_err(sql_err)?;
            let rows = s
                .query_map(params![tenant.as_str(), device, now, limit], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                    ))
                })
                .map_err(sql_err)?;
            rows.map(|r| {
                let (device, at_ms, code, message, excerpt) = r.map_err(sql_err)?;
                Ok(RejectedEntry {
                    tenant: tenant.clone(),
                    device,
                    at_ms,
                    code: rows::reason(&code)?,
                    message,
                    excerpt,
                })
            })
            .collect()
        })
    }
}
