//! The ScyllaDB adapter (`scylla` 1.x), for deployments.
//!
//! Schema (keyspace configurable), shaped for ScyllaDB's partitioning:
//! - time series `ts_kv ((tenant, device, key, bucket), ts)`, with typed value columns and
//!   a bucket of [`ScyllaConfig::bucket_ms`] (30 days by default); `ts_partitions` lists the
//!   buckets a series has, so a range query reads only those;
//! - latest values `ts_latest ((tenant, device), key)` written `USING TIMESTAMP` = the
//!   sample time, so last-write-wins by sample time keeps them from going back;
//! - registry tables keyed by what they are looked up by; `device_names` takes the first
//!   writer with `INSERT ... IF NOT EXISTS` (race-safe auto-creation);
//! - commands with a per-device index and a history partition; connection log per device,
//!   rejected log per tenant and day;
//! - deleting a device deletes its rows, the latest values and attributes at their own
//!   write timestamps rather than the wall clock (`purge_device_data` says why).
//!
//! Practice: every statement is prepared once at connect; a semaphore caps requests in
//! flight; time-outs, unavailable and overload answers are retried with exponential
//! backoff up to [`ScyllaConfig::retries`] times, then surface as
//! [`StoreError::Unavailable`]; unlogged batches are used only within one partition.
//! A command's status change is one lightweight transaction (`UPDATE ... IF status = ?
//! AND hist_seq = ?`): the dispatcher's record handling, its timers and a late delivery
//! outcome can race on one command, and exactly one of two racing changes applies; the
//! other is judged again against what did. The history entry's seq comes from the same
//! transaction, so two changes never share one.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fluxgate_model::{Backoff, DeviceId, DeviceName, MessageId, TenantId, Value, Values};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
use scylla::response::query_result::QueryResult;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::MaybeUnset;
use tokio::sync::Semaphore;

use crate::rows::{
    self as codec, ClientRpcRow, CommandRow, DeviceRow, new_device_id, stored_id as id, to_json,
};
use crate::types::*;
use crate::{BoxFuture, Result, Store, StoreError};

/// ScyllaDB settings.
#[derive(
    Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields, default)]
pub struct ScyllaConfig {
    /// Contact points, `host:port`.
    pub nodes: Vec<String>,
    /// Keyspace.
    pub keyspace: String,
    /// Replication used when `migrate` creates the keyspace, as CQL map text, e.g.
    /// `{'class': 'NetworkTopologyStrategy', 'replication_factor': 3}`.
    pub replication: String,
    /// Time-series bucket width in milliseconds (30 days by default; 1 day for busy series).
    pub bucket_ms: i64,
    /// Most requests in flight per store.
    pub max_in_flight: usize,
    /// Retries of a timed-out, unavailable or overloaded request before giving up.
    pub retries: u32,
    /// First backoff, doubled per retry.
    pub backoff_ms: u64,
    /// Per-request timeout.
    pub request_timeout_ms: u64,
}

impl Default for ScyllaConfig {
    fn default() -> Self {
        ScyllaConfig {
            nodes: vec!["127.0.0.1:9042".into()],
            keyspace: "fluxgate".into(),
            replication: "{'class': 'NetworkTopologyStrategy', 'replication_factor': 3}".into(),
            bucket_ms: 30 * 86_400_000,
            max_in_flight: 256,
            retries: 4,
            backoff_ms: 50,
            request_timeout_ms: 5_000,
        }
    }
}

impl ScyllaConfig {
    /// One node at `addr` and a keyspace replicated once (SimpleStrategy): a development
    /// machine, or a test on the CQL double.
    pub fn single_node(addr: impl std::fmt::Display, keyspace: &str) -> Self {
        ScyllaConfig {
            nodes: vec![addr.to_string()],
            keyspace: keyspace.into(),
            replication: "{'class': 'SimpleStrategy', 'replication_factor': 1}".into(),
            ..ScyllaConfig::default()
        }
    }
}

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = 5;

/// Columns added in schema version 3: `(table, column, type)`, added to a keyspace an
/// older build made.
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[("commands", "hist_seq", "int")];

const TABLES: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS {ks}.schema_version (id int PRIMARY KEY, version int)",
    "CREATE TABLE IF NOT EXISTS {ks}.applications (id text PRIMARY KEY, name text, ttl_secs int, created_ms bigint)",
    "CREATE TABLE IF NOT EXISTS {ks}.devices (tenant text, id text, name text, kind text, peripheral_policy text,
       tags text, profile text, created_ms bigint, updated_ms bigint, PRIMARY KEY ((tenant), id))",
    "CREATE TABLE IF NOT EXISTS {ks}.device_names (tenant text, name text, device text, PRIMARY KEY ((tenant, name)))",
    "CREATE TABLE IF NOT EXISTS {ks}.access_keys (key text PRIMARY KEY, tenant text, secret_hash text, scope text,
       custom_topics boolean, active boolean, created_ms bigint)",
    "CREATE TABLE IF NOT EXISTS {ks}.device_tokens (token_hash text PRIMARY KEY, tenant text, device text)",
    "CREATE TABLE IF NOT EXISTS {ks}.device_tokens_by_device (tenant text, device text, token_hash text,
       PRIMARY KEY ((tenant, device), token_hash))",
    "CREATE TABLE IF NOT EXISTS {ks}.api_tokens (token_hash text PRIMARY KEY, tenant text, scope text, name text,
       created_ms bigint)",
    "CREATE TABLE IF NOT EXISTS {ks}.attribute_defs (tenant text, device text, name text, kind text,
       PRIMARY KEY ((tenant, device), name))",
    "CREATE TABLE IF NOT EXISTS {ks}.attributes (tenant text, device text, scope text, key text, ts bigint, vtype int,
       v_long bigint, v_double double, v_text text, v_bool boolean, PRIMARY KEY ((tenant, device, scope), key))",
    "CREATE TABLE IF NOT EXISTS {ks}.ts_kv (tenant text, device text, key text, bucket bigint, ts bigint, vtype int,
       v_long bigint, v_double double, v_text text, v_bool boolean, PRIMARY KEY ((tenant, device, key, bucket), ts))
       WITH CLUSTERING ORDER BY (ts ASC)",
    "CREATE TABLE IF NOT EXISTS {ks}.ts_partitions (tenant text, device text, key text, bucket bigint,
       PRIMARY KEY ((tenant, device, key), bucket))",
    "CREATE TABLE IF NOT EXISTS {ks}.ts_latest (tenant text, device text, key text, ts bigint, vtype int,
       v_long bigint, v_double double, v_text text, v_bool boolean, PRIMARY KEY ((tenant, device), key))",
    // `hist_seq`: the seq of the command's last history entry; every status change is
    // one lightweight transaction conditional on it and on the status.
    "CREATE TABLE IF NOT EXISTS {ks}.commands (id text PRIMARY KEY, tenant text, device text, command text,
       status text, created_ms bigint, updated_ms bigint, reply text, hist_seq int)",
    "CREATE TABLE IF NOT EXISTS {ks}.commands_by_device (tenant text, device text, created_ms bigint, id text,
       status text, PRIMARY KEY ((tenant, device), created_ms, id)) WITH CLUSTERING ORDER BY (created_ms DESC, id DESC)",
    // Commands in flight: sent and not delivered, or two-way and not answered (one
    // partition: commands in flight are few).
    "CREATE TABLE IF NOT EXISTS {ks}.commands_in_flight (shard int, id text, PRIMARY KEY ((shard), id))",
    "CREATE TABLE IF NOT EXISTS {ks}.command_history (id text, seq int, status text, at_ms bigint, detail text,
       PRIMARY KEY ((id), seq))",
    "CREATE TABLE IF NOT EXISTS {ks}.client_rpcs (tenant text, device text, id text, request_id text,
       method text, params text, status text, created_ms bigint, deadline_ms bigint, updated_ms bigint,
       answer text, PRIMARY KEY ((tenant, device), id)) WITH CLUSTERING ORDER BY (id DESC)",
    "CREATE TABLE IF NOT EXISTS {ks}.client_rpcs_pending (shard int, id text, tenant text, device text,
       PRIMARY KEY ((shard), id))",
    "CREATE TABLE IF NOT EXISTS {ks}.device_claims (tenant text, device text, secret_hash text,
       window_until_ms bigint, owner text, claimed_ms bigint, PRIMARY KEY ((tenant, device)))",
    "CREATE TABLE IF NOT EXISTS {ks}.connection_log (tenant text, device text, at_ms bigint, uid text, connected boolean,
       front text, remote_addr text, reason text, via text, PRIMARY KEY ((tenant, device), at_ms, uid))",
    "CREATE TABLE IF NOT EXISTS {ks}.rejected_log (tenant text, day bigint, at_ms bigint, uid text, device text,
       code text, message text, excerpt text, PRIMARY KEY ((tenant, day), at_ms, uid))",
    "CREATE TABLE IF NOT EXISTS {ks}.rejected_days (tenant text, day bigint, PRIMARY KEY ((tenant), day))",
];

/// Every prepared statement, by name.
struct Stmts(HashMap<&'static str, PreparedStatement>);

const STATEMENTS: &[(&str, &str)] = &[
    (
        "put_app",
        "INSERT INTO {ks}.applications (id, name, ttl_secs, created_ms) VALUES (?, ?, ?, ?)",
    ),
    (
        "get_app",
        "SELECT id, name, ttl_secs, created_ms FROM {ks}.applications WHERE id = ?",
    ),
    (
        "put_device",
        "INSERT INTO {ks}.devices (tenant, id, name, kind, peripheral_policy, tags, profile, created_ms, updated_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    ),
    (
        "get_device",
        "SELECT tenant, id, name, kind, peripheral_policy, tags, profile, created_ms, updated_ms FROM {ks}.devices WHERE tenant = ? AND id = ?",
    ),
    (
        "list_devices",
        "SELECT tenant, id, name, kind, peripheral_policy, tags, profile, created_ms, updated_ms FROM {ks}.devices WHERE tenant = ? AND id > ? LIMIT ?",
    ),
    (
        "del_device",
        "DELETE FROM {ks}.devices WHERE tenant = ? AND id = ?",
    ),
    (
        "put_name",
        "INSERT INTO {ks}.device_names (tenant, name, device) VALUES (?, ?, ?)",
    ),
    (
        "claim_name",
        "INSERT INTO {ks}.device_names (tenant, name, device) VALUES (?, ?, ?) IF NOT EXISTS",
    ),
    (
        "get_name",
        "SELECT device FROM {ks}.device_names WHERE tenant = ? AND name = ?",
    ),
    (
        "del_name",
        "DELETE FROM {ks}.device_names WHERE tenant = ? AND name = ?",
    ),
    (
        "put_key",
        "INSERT INTO {ks}.access_keys (key, tenant, secret_hash, scope, custom_topics, active, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
    ),
    (
        "get_key",
        "SELECT key, tenant, secret_hash, scope, custom_topics, active, created_ms FROM {ks}.access_keys WHERE key = ?",
    ),
    (
        "put_token",
        "INSERT INTO {ks}.device_tokens (token_hash, tenant, device) VALUES (?, ?, ?)",
    ),
    (
        "put_token_idx",
        "INSERT INTO {ks}.device_tokens_by_device (tenant, device, token_hash) VALUES (?, ?, ?)",
    ),
    (
        "get_token",
        "SELECT token_hash, tenant, device FROM {ks}.device_tokens WHERE token_hash = ?",
    ),
    (
        "tokens_of",
        "SELECT token_hash FROM {ks}.device_tokens_by_device WHERE tenant = ? AND device = ?",
    ),
    (
        "del_token",
        "DELETE FROM {ks}.device_tokens WHERE token_hash = ?",
    ),
    (
        "del_token_idx",
        "DELETE FROM {ks}.device_tokens_by_device WHERE tenant = ? AND device = ?",
    ),
    (
        "put_api_token",
        "INSERT INTO {ks}.api_tokens (token_hash, tenant, scope, name, created_ms) VALUES (?, ?, ?, ?, ?)",
    ),
    (
        "get_api_token",
        "SELECT token_hash, tenant, scope, name, created_ms FROM {ks}.api_tokens WHERE token_hash = ?",
    ),
    (
        "del_api_token",
        "DELETE FROM {ks}.api_tokens WHERE token_hash = ?",
    ),
    (
        "put_def",
        "INSERT INTO {ks}.attribute_defs (tenant, device, name, kind) VALUES (?, ?, ?, ?)",
    ),
    (
        "get_defs",
        "SELECT name, kind FROM {ks}.attribute_defs WHERE tenant = ? AND device = ?",
    ),
    (
        "del_defs",
        "DELETE FROM {ks}.attribute_defs WHERE tenant = ? AND device = ?",
    ),
    (
        "put_attr",
        "INSERT INTO {ks}.attributes (tenant, device, scope, key, ts, vtype, v_long, v_double, v_text, v_bool) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?",
    ),
    (
        "get_attrs_ts",
        "SELECT key, ts, vtype, v_long, v_double, v_text, v_bool FROM {ks}.attributes WHERE tenant = ? AND device = ? AND scope = ?",
    ),
    (
        "attr_keys",
        "SELECT key, ts FROM {ks}.attributes WHERE tenant = ? AND device = ? AND scope = ?",
    ),
    (
        "del_attr_at",
        "DELETE FROM {ks}.attributes USING TIMESTAMP ? WHERE tenant = ? AND device = ? AND scope = ? AND key = ?",
    ),
    (
        "latest_keys",
        "SELECT key, ts FROM {ks}.ts_latest WHERE tenant = ? AND device = ?",
    ),
    (
        "del_latest_at",
        "DELETE FROM {ks}.ts_latest USING TIMESTAMP ? WHERE tenant = ? AND device = ? AND key = ?",
    ),
    (
        "del_points",
        "DELETE FROM {ks}.ts_kv WHERE tenant = ? AND device = ? AND key = ? AND bucket = ?",
    ),
    (
        "del_buckets",
        "DELETE FROM {ks}.ts_partitions WHERE tenant = ? AND device = ? AND key = ?",
    ),
    (
        "put_point",
        "INSERT INTO {ks}.ts_kv (tenant, device, key, bucket, ts, vtype, v_long, v_double, v_text, v_bool) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?",
    ),
    (
        "put_bucket",
        "INSERT INTO {ks}.ts_partitions (tenant, device, key, bucket) VALUES (?, ?, ?, ?) USING TTL ?",
    ),
    (
        "put_latest",
        "INSERT INTO {ks}.ts_latest (tenant, device, key, ts, vtype, v_long, v_double, v_text, v_bool) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ? AND TIMESTAMP ?",
    ),
    (
        "get_latest",
        "SELECT key, ts, vtype, v_long, v_double, v_text, v_bool FROM {ks}.ts_latest WHERE tenant = ? AND device = ?",
    ),
    (
        "buckets",
        "SELECT bucket FROM {ks}.ts_partitions WHERE tenant = ? AND device = ? AND key = ? AND bucket >= ? AND bucket <= ?",
    ),
    (
        "range_asc",
        "SELECT ts, vtype, v_long, v_double, v_text, v_bool FROM {ks}.ts_kv WHERE tenant = ? AND device = ? AND key = ? AND bucket = ? AND ts >= ? AND ts < ? LIMIT ?",
    ),
    (
        "range_desc",
        "SELECT ts, vtype, v_long, v_double, v_text, v_bool FROM {ks}.ts_kv WHERE tenant = ? AND device = ? AND key = ? AND bucket = ? AND ts >= ? AND ts < ? ORDER BY ts DESC LIMIT ?",
    ),
    (
        "put_cmd",
        "INSERT INTO {ks}.commands (id, tenant, device, command, status, created_ms, updated_ms, reply, hist_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0)",
    ),
    (
        "get_cmd",
        "SELECT id, tenant, device, command, status, created_ms, updated_ms, reply FROM {ks}.commands WHERE id = ?",
    ),
    (
        "set_cmd",
        "UPDATE {ks}.commands SET status = ?, updated_ms = ?, reply = ?, hist_seq = ? WHERE id = ? IF status = ? AND hist_seq = ?",
    ),
    (
        "get_cmd_seq",
        "SELECT id, tenant, device, command, status, created_ms, updated_ms, reply, hist_seq FROM {ks}.commands WHERE id = ?",
    ),
    (
        "put_cmd_idx",
        "INSERT INTO {ks}.commands_by_device (tenant, device, created_ms, id, status) VALUES (?, ?, ?, ?, ?)",
    ),
    (
        "cmds_of",
        "SELECT id, status FROM {ks}.commands_by_device WHERE tenant = ? AND device = ? ORDER BY created_ms DESC",
    ),
    (
        "put_hist",
        "INSERT INTO {ks}.command_history (id, seq, status, at_ms, detail) VALUES (?, ?, ?, ?, ?)",
    ),
    (
        "get_hist",
        "SELECT seq, status, at_ms, detail FROM {ks}.command_history WHERE id = ?",
    ),
    ("del_hist", "DELETE FROM {ks}.command_history WHERE id = ?"),
    ("del_cmd", "DELETE FROM {ks}.commands WHERE id = ?"),
    (
        "del_cmd_idx",
        "DELETE FROM {ks}.commands_by_device WHERE tenant = ? AND device = ?",
    ),
    (
        "put_awaiting",
        "INSERT INTO {ks}.commands_in_flight (shard, id) VALUES (0, ?)",
    ),
    (
        "del_awaiting",
        "DELETE FROM {ks}.commands_in_flight WHERE shard = 0 AND id = ?",
    ),
    (
        "get_awaiting",
        "SELECT id FROM {ks}.commands_in_flight WHERE shard = 0 LIMIT ?",
    ),
    (
        "put_crpc",
        "INSERT INTO {ks}.client_rpcs (id, tenant, device, request_id, method, params, status, created_ms, deadline_ms, updated_ms, answer) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS",
    ),
    (
        "get_crpc",
        "SELECT id, tenant, device, request_id, method, params, status, created_ms, deadline_ms, updated_ms, answer FROM {ks}.client_rpcs WHERE tenant = ? AND device = ? AND id = ?",
    ),
    (
        "crpcs_of",
        "SELECT id, tenant, device, request_id, method, params, status, created_ms, deadline_ms, updated_ms, answer FROM {ks}.client_rpcs WHERE tenant = ? AND device = ? ORDER BY id DESC LIMIT 1000",
    ),
    (
        "end_crpc",
        "UPDATE {ks}.client_rpcs SET status = ?, answer = ?, updated_ms = ? WHERE tenant = ? AND device = ? AND id = ? IF status = ?",
    ),
    (
        "del_crpcs",
        "DELETE FROM {ks}.client_rpcs WHERE tenant = ? AND device = ?",
    ),
    (
        "put_crpc_pending",
        "INSERT INTO {ks}.client_rpcs_pending (shard, id, tenant, device) VALUES (0, ?, ?, ?)",
    ),
    (
        "del_crpc_pending",
        "DELETE FROM {ks}.client_rpcs_pending WHERE shard = 0 AND id = ?",
    ),
    (
        "get_crpc_pending",
        "SELECT id, tenant, device FROM {ks}.client_rpcs_pending WHERE shard = 0 LIMIT ?",
    ),
    (
        "get_claim",
        "SELECT secret_hash, window_until_ms, owner, claimed_ms FROM {ks}.device_claims WHERE tenant = ? AND device = ?",
    ),
    (
        "open_claim",
        "UPDATE {ks}.device_claims SET secret_hash = ?, window_until_ms = ? WHERE tenant = ? AND device = ?",
    ),
    (
        "set_claim_owner",
        "UPDATE {ks}.device_claims SET owner = ?, claimed_ms = ?, window_until_ms = 0 WHERE tenant = ? AND device = ? IF window_until_ms = ? AND owner = null",
    ),
    (
        "del_claim",
        "DELETE FROM {ks}.device_claims WHERE tenant = ? AND device = ?",
    ),
    (
        "put_conn",
        "INSERT INTO {ks}.connection_log (tenant, device, at_ms, uid, connected, front, remote_addr, reason, via) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?",
    ),
    (
        "get_conn",
        "SELECT at_ms, connected, front, remote_addr, reason, via FROM {ks}.connection_log WHERE tenant = ? AND device = ? ORDER BY at_ms DESC LIMIT ?",
    ),
    (
        "del_conn",
        "DELETE FROM {ks}.connection_log WHERE tenant = ? AND device = ?",
    ),
    (
        "put_rej",
        "INSERT INTO {ks}.rejected_log (tenant, day, at_ms, uid, device, code, message, excerpt) VALUES (?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?",
    ),
    (
        "get_rej",
        "SELECT device, at_ms, code, message, excerpt FROM {ks}.rejected_log WHERE tenant = ? AND day = ? ORDER BY at_ms DESC",
    ),
    (
        "put_rej_day",
        "INSERT INTO {ks}.rejected_days (tenant, day) VALUES (?, ?) USING TTL ?",
    ),
    (
        "rej_days",
        "SELECT day FROM {ks}.rejected_days WHERE tenant = ? ORDER BY day DESC",
    ),
    (
        "put_version",
        "INSERT INTO {ks}.schema_version (id, version) VALUES (?, ?)",
    ),
];

impl Stmts {
    fn get(&self, name: &str) -> Result<&PreparedStatement> {
        self.0
            .get(name)
            .ok_or_else(|| StoreError::Config(format!("statement {name} was not prepared")))
    }
}

/// The ScyllaDB store.
pub struct ScyllaStore {
    session: Arc<Session>,
    stmts: Stmts,
    cfg: ScyllaConfig,
    permits: Semaphore,
    retries: AtomicU64,
}

impl std::fmt::Debug for ScyllaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScyllaStore")
            .field("keyspace", &self.cfg.keyspace)
            .finish()
    }
}

fn db_retriable(e: &ExecutionError) -> bool {
    match e {
        ExecutionError::RequestTimeout(_) | ExecutionError::ConnectionPoolError(_) => true,
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(db, _)) => matches!(
            db,
            DbError::WriteTimeout { .. }
                | DbError::ReadTimeout { .. }
                | DbError::Unavailable { .. }
                | DbError::Overloaded
                | DbError::IsBootstrapping
        ),
        ExecutionError::LastAttemptError(_) => true,
        _ => false,
    }
}

fn exec_err(e: ExecutionError) -> StoreError {
    if db_retriable(&e) {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Corrupt(e.to_string())
    }
}

fn read_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// A value as read from its typed columns: (vtype, long, double, text, bool).
type Typed = (i32, Option<i64>, Option<f64>, Option<String>, Option<bool>);

/// A value as written to its typed columns: (vtype, long, double, text, bool). The
/// columns of the other types are left *unset*, not null: a null is a tombstone per cell,
/// and a time-series partition of them slows every read (Cassandra warns at 1,000
/// tombstones per query and fails it at 100,000). Reads go by `vtype`, so a column left
/// from an earlier value of another type is never read.
type Cells = (
    i32,
    MaybeUnset<i64>,
    MaybeUnset<f64>,
    MaybeUnset<String>,
    MaybeUnset<bool>,
);

fn typed(v: &Value) -> Cells {
    use MaybeUnset::{Set, Unset};
    match v {
        Value::Integer(i) => (0, Set(*i), Unset, Unset, Unset),
        Value::Float(f) => (1, Unset, Set(*f), Unset, Unset),
        Value::String(s) => (2, Unset, Unset, Set(s.clone()), Unset),
        Value::Bool(b) => (3, Unset, Unset, Unset, Set(*b)),
        Value::Json(j) => (4, Unset, Unset, Set(j.to_string()), Unset),
    }
}

fn untyped(t: Typed) -> Result<Value> {
    let bad = || StoreError::Corrupt(format!("value of type {} unreadable", t.0));
    Ok(match t {
        (0, Some(i), ..) => Value::Integer(i),
        (1, _, Some(f), ..) => Value::Float(f),
        (2, _, _, Some(s), _) => Value::String(s),
        (3, .., Some(b)) => Value::Bool(b),
        (4, _, _, Some(s), _) => Value::from_json(serde_json::from_str(&s).map_err(|_| bad())?),
        _ => return Err(bad()),
    })
}

/// A process-unique text id for log rows.
fn uid() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn rows<T>(r: QueryResult) -> Result<Vec<T>>
where
    T: for<'f> scylla::deserialize::row::DeserializeRow<'f, 'f>,
{
    let rr = r.into_rows_result().map_err(read_err)?;
    let out = rr
        .rows::<T>()
        .map_err(read_err)?
        .map(|r| r.map_err(read_err))
        .collect::<Result<Vec<T>>>()?;
    Ok(out)
}

/// Whether a lightweight transaction applied: `[applied]` comes first; one that did not
/// may carry the row's current columns after it.
fn applied(r: QueryResult) -> Result<bool> {
    let rs = r.into_rows_result().map_err(read_err)?;
    Ok(rs
        .rows::<(bool,)>()
        .ok()
        .and_then(|mut it| it.next())
        .and_then(|r| r.ok())
        .is_some_and(|(a,)| a))
}

/// Whether a command in `status` is in flight (see `Store::in_flight_commands`).
fn in_flight(c: &fluxgate_model::Command, status: CommandStatus) -> bool {
    match status {
        CommandStatus::Sent => true,
        CommandStatus::Delivered => c.two_way,
        _ => false,
    }
}

/// The write timestamp (microseconds) of a cell that holds a value of sample time `ts_ms`:
/// latest values and attributes are written with it, so last-write-wins goes by sample
/// time, and deleted with it, so a tombstone covers exactly what was written.
fn cell_time(ts_ms: i64) -> i64 {
    ts_ms.saturating_mul(1000)
}

impl ScyllaStore {
    /// A device's attributes of one scope, with their timestamps: one small partition,
    /// read whole (`ts` is not a clustering column to range over).
    async fn attribute_rows(
        &self,
        tenant: &TenantId,
        device: &DeviceId,
        scope: AttributeScope,
    ) -> Result<Vec<(String, i64, Value)>> {
        type Row = (
            String,
            i64,
            i32,
            Option<i64>,
            Option<f64>,
            Option<String>,
            Option<bool>,
        );
        let r: Vec<Row> = rows(
            self.exec(
                "get_attrs_ts",
                (tenant.as_str(), device.as_str(), scope.as_str()),
            )
            .await?,
        )?;
        r.into_iter()
            .map(|(key, ts, vt, l, f, s, b)| Ok((key, ts, untyped((vt, l, f, s, b))?)))
            .collect()
    }

    /// Connects, creates the schema if needed (see [`Store::migrate`]) and prepares every
    /// statement.
    pub async fn connect(cfg: ScyllaConfig) -> Result<Self> {
        use scylla::client::execution_profile::ExecutionProfile;
        use scylla::policies::retry::FallthroughRetryPolicy;
        if !cfg
            .keyspace
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
            || cfg.keyspace.is_empty()
        {
            return Err(StoreError::Config(format!(
                "store.scylla.keyspace must be letters, digits and _, not {:?}",
                cfg.keyspace
            )));
        }
        // The store retries (with backoff, counted); the driver does not retry on its own.
        let profile = ExecutionProfile::builder()
            .request_timeout(Some(Duration::from_millis(cfg.request_timeout_ms)))
            .retry_policy(Arc::new(FallthroughRetryPolicy::new()))
            .build()
            .into_handle();
        let session = SessionBuilder::new()
            .known_nodes(&cfg.nodes)
            .default_execution_profile_handle(profile)
            .build()
            .await
            .map_err(|e| {
                StoreError::Unavailable(format!(
                    "cannot connect to ScyllaDB at {:?}: {e}",
                    cfg.nodes
                ))
            })?;
        let session = Arc::new(session);
        Self::create_schema(&session, &cfg).await?;
        let mut stmts = HashMap::new();
        for (name, text) in STATEMENTS {
            let mut p = session
                .prepare(text.replace("{ks}", &cfg.keyspace))
                .await
                .map_err(|e| StoreError::Config(format!("preparing {name}: {e}")))?;
            p.set_is_idempotent(!name.starts_with("claim"));
            stmts.insert(*name, p);
        }
        Ok(ScyllaStore {
            session,
            stmts: Stmts(stmts),
            permits: Semaphore::new(cfg.max_in_flight.max(1)),
            cfg,
            retries: AtomicU64::new(0),
        })
    }

    async fn create_schema(session: &Session, cfg: &ScyllaConfig) -> Result<()> {
        let ks = &cfg.keyspace;
        session
            .query_unpaged(
                format!(
                    "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {}",
                    cfg.replication
                ),
                &[],
            )
            .await
            .map_err(exec_err)?;
        for t in TABLES {
            session
                .query_unpaged(t.replace("{ks}", ks), &[])
                .await
                .map_err(exec_err)?;
        }
        // A keyspace an older build made lacks the columns added since.
        let version: Option<i32> = session
            .query_unpaged(
                format!("SELECT version FROM {ks}.schema_version WHERE id = 1"),
                &[],
            )
            .await
            .map_err(exec_err)
            .and_then(rows::<(i32,)>)?
            .first()
            .map(|(v,)| *v);
        if version.is_some_and(|v| v < 3) {
            for (table, column, kind) in ADDED_COLUMNS {
                let alter = format!("ALTER TABLE {ks}.{table} ADD {column} {kind}");
                match session.query_unpaged(alter, &[]).await {
                    Ok(_) => {}
                    // Added by a start that stopped before it recorded the version.
                    Err(e) if e.to_string().contains("already exists") => {}
                    Err(e) => return Err(exec_err(e)),
                }
            }
        }
        Ok(())
    }

    /// Requests retried so far (for metrics).
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Runs `request` until it succeeds, fails for good, or the retry budget
    /// (`retries`, from `backoff_ms` doubling) is spent; each retry is counted.
    async fn retrying<T, F>(&self, what: &str, mut request: impl FnMut() -> F) -> Result<T>
    where
        F: Future<Output = std::result::Result<T, ExecutionError>>,
    {
        let mut backoff = Backoff::new(Duration::from_millis(self.cfg.backoff_ms), Duration::MAX);
        let mut attempt = 0;
        loop {
            match request().await {
                Ok(r) => return Ok(r),
                Err(e) if db_retriable(&e) && attempt < self.cfg.retries => {
                    attempt += 1;
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(statement = what, attempt, error = %e, "store: retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(e) => return Err(exec_err(e)),
            }
        }
    }

    /// Runs a prepared statement with the retry budget.
    async fn exec(&self, name: &str, values: impl SerializeRow + Clone) -> Result<QueryResult> {
        let stmt = self.stmts.get(name)?;
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| StoreError::Unavailable("store closed".into()))?;
        self.retrying(name, || self.session.execute_unpaged(stmt, values.clone()))
            .await
    }

    /// Runs an unlogged batch (one partition) with the retry budget.
    async fn batch<V: scylla::serialize::batch::BatchValues + Clone>(
        &self,
        names: &[&str],
        values: V,
    ) -> Result<()> {
        let mut batch = Batch::new(BatchType::Unlogged);
        for n in names {
            batch.append_statement(self.stmts.get(n)?.clone());
        }
        batch.set_is_idempotent(true);
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| StoreError::Unavailable("store closed".into()))?;
        self.retrying("batch", || self.session.batch(&batch, values.clone()))
            .await
            .map(|_| ())
    }

    async fn ttl_secs(&self, tenant: &TenantId) -> Result<i32> {
        let r: Vec<(String, String, Option<i32>, i64)> =
            rows(self.exec("get_app", (tenant.as_str(),)).await?)?;
        Ok(r.first().and_then(|a| a.2).unwrap_or(0))
    }

    async fn load_device(&self, tenant: &str, device: &str) -> Result<Option<Device>> {
        let r: Vec<DeviceRow> = rows(self.exec("get_device", (tenant, device)).await?)?;
        r.into_iter().next().map(codec::device).transpose()
    }

    /// Deletes what a device wrote: time series, latest values, attributes, commands and
    /// the connection log, so a device made again under the same id starts empty.
    ///
    /// Latest values and attributes are written `USING TIMESTAMP` = their sample time, so
    /// a wall-clock tombstone would also hide the new device's values whose sample time is
    /// older than the delete (a clock a little behind, buffered data). Each is deleted at
    /// its own write timestamp instead: the tombstone covers exactly what the old device
    /// wrote. What is left: a new value older than the old device's newest of the same key
    /// stays hidden from `latest`/`attributes` (not from `query`) until a newer one comes.
    async fn purge_device_data(&self, t: &str, d: &str) -> Result<()> {
        // Each tombstone at the cell time its row was written with.
        for scope in [AttributeScope::Client, AttributeScope::Shared] {
            let s = scope.as_str();
            let keys: Vec<(String, i64)> = rows(self.exec("attr_keys", (t, d, s)).await?)?;
            for (key, ts) in keys {
                self.exec("del_attr_at", (cell_time(ts), t, d, s, key.as_str()))
                    .await?;
            }
        }
        let series: Vec<(String, i64)> = rows(self.exec("latest_keys", (t, d)).await?)?;
        for (key, ts) in series {
            let k = key.as_str();
            let buckets: Vec<(i64,)> =
                rows(self.exec("buckets", (t, d, k, i64::MIN, i64::MAX)).await?)?;
            for (bucket,) in buckets {
                self.exec("del_points", (t, d, k, bucket)).await?;
            }
            self.exec("del_buckets", (t, d, k)).await?;
            self.exec("del_latest_at", (cell_time(ts), t, d, k)).await?;
        }
        let commands: Vec<(String, String)> = rows(self.exec("cmds_of", (t, d)).await?)?;
        for (cid, _) in commands {
            let c = cid.as_str();
            self.exec("del_awaiting", (c,)).await?;
            self.exec("del_hist", (c,)).await?;
            self.exec("del_cmd", (c,)).await?;
        }
        self.exec("del_cmd_idx", (t, d)).await?;
        self.exec("del_conn", (t, d)).await?;
        self.exec("del_claim", (t, d)).await?;
        let rpcs: Vec<ClientRpcRow> = rows(self.exec("crpcs_of", (t, d)).await?)?;
        for (key, ..) in rpcs {
            self.exec("del_crpc_pending", (key.as_str(),)).await?;
        }
        self.exec("del_crpcs", (t, d)).await?;
        Ok(())
    }

    async fn load_client_rpc(&self, t: &str, d: &str, key: &str) -> Result<Option<ClientRpc>> {
        let r: Vec<ClientRpcRow> = rows(self.exec("get_crpc", (t, d, key)).await?)?;
        r.into_iter().next().map(codec::client_rpc).transpose()
    }

    async fn load_command(&self, cid: &str) -> Result<Option<CommandRecord>> {
        let r: Vec<CommandRow> = rows(self.exec("get_cmd", (cid,)).await?)?;
        r.into_iter().next().map(codec::command).transpose()
    }

    /// [`Self::load_command`] with the command's history seq (`None`: never changed
    /// since a build without it wrote the row).
    async fn load_command_seq(&self, cid: &str) -> Result<Option<(CommandRecord, Option<i32>)>> {
        type WithSeq = (
            String,
            String,
            String,
            String,
            String,
            i64,
            i64,
            Option<String>,
            Option<i32>,
        );
        let r: Vec<WithSeq> = rows(self.exec("get_cmd_seq", (cid,)).await?)?;
        r.into_iter()
            .next()
            .map(|(a, b, c, d, e, f, g, h, seq)| {
                Ok((codec::command((a, b, c, d, e, f, g, h))?, seq))
            })
            .transpose()
    }

    async fn insert_device(&self, d: &Device) -> Result<()> {
        self.exec(
            "put_device",
            (
                d.tenant.as_str(),
                d.id.as_str(),
                d.name.as_str(),
                d.kind.as_str(),
                d.peripheral_policy.as_ref().map(to_json),
                to_json(&d.tags),
                d.profile.clone(),
                d.created_ms,
                d.updated_ms,
            ),
        )
        .await?;
        Ok(())
    }
}

impl Store for ScyllaStore {
    fn migrate(&self) -> BoxFuture<'_, Result<u32>> {
        Box::pin(async move {
            Self::create_schema(&self.session, &self.cfg).await?;
            self.exec("put_version", (1i32, SCHEMA_VERSION as i32))
                .await?;
            Ok(SCHEMA_VERSION)
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.session
                .query_unpaged("SELECT now() FROM system.local", &[])
                .await
                .map(|_| ())
                .map_err(exec_err)
        })
    }

    fn put_application(&self, app: Application) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let ttl = app.ttl_secs.map(|t| i32::try_from(t).unwrap_or(i32::MAX));
            self.exec(
                "put_app",
                (app.id.as_str(), app.name.as_str(), ttl, app.created_ms),
            )
            .await?;
            Ok(())
        })
    }

    fn application(&self, tenant: TenantId) -> BoxFuture<'_, Result<Option<Application>>> {
        Box::pin(async move {
            let r: Vec<(String, String, Option<i32>, i64)> =
                rows(self.exec("get_app", (tenant.as_str(),)).await?)?;
            r.into_iter()
                .next()
                .map(|(i, name, ttl, created_ms)| {
                    Ok(Application {
                        id: id(i, TenantId::new)?,
                        name,
                        ttl_secs: ttl.map(|t| t.max(0) as u32),
                        created_ms,
                    })
                })
                .transpose()
        })
    }

    fn put_device(&self, device: Device) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.insert_device(&device).await?;
            self.exec(
                "put_name",
                (
                    device.tenant.as_str(),
                    device.name.as_str(),
                    device.id.as_str(),
                ),
            )
            .await?;
            Ok(())
        })
    }

    fn device(&self, tenant: TenantId, device: DeviceId) -> BoxFuture<'_, Result<Option<Device>>> {
        Box::pin(async move { self.load_device(tenant.as_str(), device.as_str()).await })
    }

    fn delete_device(&self, tenant: TenantId, device: DeviceId) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move {
            let (t, d) = (tenant.as_str(), device.as_str());
            let Some(existing) = self.load_device(t, d).await? else {
                return Ok(false);
            };
            let named: Vec<(String,)> =
                rows(self.exec("get_name", (t, existing.name.as_str())).await?)?;
            if named.first().is_some_and(|(x,)| x == d) {
                self.exec("del_name", (t, existing.name.as_str())).await?;
            }
            let tokens: Vec<(String,)> = rows(self.exec("tokens_of", (t, d)).await?)?;
            for (h,) in tokens {
                self.exec("del_token", (h,)).await?;
            }
            self.exec("del_token_idx", (t, d)).await?;
            self.exec("del_defs", (t, d)).await?;
            self.purge_device_data(t, d).await?;
            // Last: a delete that fails part-way can be repeated, and finds the device.
            self.exec("del_device", (t, d)).await?;
            Ok(true)
        })
    }

    fn devices(
        &self,
        tenant: TenantId,
        after: Option<DeviceId>,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<Device>>> {
        Box::pin(async move {
            let after = after.as_ref().map_or("", DeviceId::as_str);
            let limit = i32::try_from(limit.max(1)).unwrap_or(i32::MAX);
            let r: Vec<DeviceRow> = rows(
                self.exec("list_devices", (tenant.as_str(), after, limit))
                    .await?,
            )?;
            r.into_iter().map(codec::device).collect()
        })
    }

    fn device_named(
        &self,
        tenant: TenantId,
        name: DeviceName,
    ) -> BoxFuture<'_, Result<Option<Device>>> {
        Box::pin(async move {
            let t = tenant.as_str();
            let owner: Vec<(String,)> = rows(self.exec("get_name", (t, name.as_str())).await?)?;
            match owner.into_iter().next() {
                Some((id,)) => self.load_device(t, &id).await,
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
        Box::pin(async move {
            let (t, n) = (tenant.as_str(), name.as_str());
            let fresh = new_device_id(now_ms, n)?;
            let r = self.exec("claim_name", (t, n, fresh.as_str())).await?;
            if applied(r)? {
                let device = Device {
                    tenant: tenant.clone(),
                    id: fresh,
                    name: n.to_owned(),
                    kind: DeviceKind::Standalone,
                    peripheral_policy: None,
                    tags: Vec::new(),
                    profile: Some(profile),
                    created_ms: now_ms,
                    updated_ms: now_ms,
                };
                self.insert_device(&device).await?;
                return Ok(NamedDevice {
                    device,
                    created: true,
                });
            }
            let owner: Vec<(String,)> = rows(self.exec("get_name", (t, n)).await?)?;
            let did = owner.into_iter().next().map(|(d,)| d).ok_or_else(|| {
                StoreError::Unavailable(format!("name {n} claimed but not readable yet"))
            })?;
            // The winner may not have written its device row yet: wait briefly for it.
            for _ in 0..50 {
                if let Some(device) = self.load_device(t, &did).await? {
                    return Ok(NamedDevice {
                        device,
                        created: false,
                    });
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(StoreError::Unavailable(format!(
                "device {did} for name {n} not written yet; retry"
            )))
        })
    }

    fn put_access_key(&self, key: AccessKey) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.exec(
                "put_key",
                (
                    key.key.as_str(),
                    key.tenant.as_str(),
                    key.secret_hash.as_str(),
                    to_json(&key.scope),
                    key.custom_topics,
                    key.active,
                    key.created_ms,
                ),
            )
            .await?;
            Ok(())
        })
    }

    fn access_key(&self, key: String) -> BoxFuture<'_, Result<Option<AccessKey>>> {
        Box::pin(async move {
            let r: Vec<(String, String, String, String, bool, bool, i64)> =
                rows(self.exec("get_key", (key.as_str(),)).await?)?;
            r.into_iter().next().map(codec::access_key).transpose()
        })
    }

    fn put_device_token(&self, token: DeviceToken) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let (h, t, d) = (
                token.token_hash.as_str(),
                token.tenant.as_str(),
                token.device.as_str(),
            );
            self.exec("put_token", (h, t, d)).await?;
            self.exec("put_token_idx", (t, d, h)).await?;
            Ok(())
        })
    }

    fn device_token(&self, token_hash: String) -> BoxFuture<'_, Result<Option<DeviceToken>>> {
        Box::pin(async move {
            let r: Vec<(String, String, String)> =
                rows(self.exec("get_token", (token_hash.as_str(),)).await?)?;
            r.into_iter().next().map(codec::device_token).transpose()
        })
    }

    fn put_api_token(&self, token: ApiToken) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let row = (
                token.token_hash.as_str(),
                token.tenant.as_str(),
                token.scope.as_str(),
                token.name.as_str(),
                token.created_ms,
            );
            self.exec("put_api_token", row).await?;
            Ok(())
        })
    }

    fn api_token(&self, token_hash: String) -> BoxFuture<'_, Result<Option<ApiToken>>> {
        Box::pin(async move {
            let r: Vec<crate::rows::ApiTokenRow> =
                rows(self.exec("get_api_token", (token_hash.as_str(),)).await?)?;
            r.into_iter().next().map(codec::api_token).transpose()
        })
    }

    fn delete_api_token(&self, token_hash: String) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move {
            let found = self.api_token(token_hash.clone()).await?.is_some();
            if found {
                self.exec("del_api_token", (token_hash.as_str(),)).await?;
            }
            Ok(found)
        })
    }

    fn put_attribute_defs(
        &self,
        tenant: TenantId,
        device: DeviceId,
        defs: Vec<AttributeDef>,
    ) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let (t, d) = (tenant.as_str(), device.as_str());
            self.exec("del_defs", (t, d)).await?;
            for def in &defs {
                self.exec("put_def", (t, d, def.name.as_str(), def.kind.as_str()))
                    .await?;
            }
            Ok(())
        })
    }

    fn attribute_defs(
        &self,
        tenant: TenantId,
        device: DeviceId,
    ) -> BoxFuture<'_, Result<Vec<AttributeDef>>> {
        Box::pin(async move {
            let r: Vec<(String, String)> = rows(
                self.exec("get_defs", (tenant.as_str(), device.as_str()))
                    .await?,
            )?;
            r.into_iter()
                .map(|(name, kind)| {
                    Ok(AttributeDef {
                        name,
                        kind: AttributeType::parse(&kind)
                            .ok_or_else(|| StoreError::Corrupt(format!("attribute type {kind}")))?,
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
        Box::pin(async move {
            for (k, v) in &values {
                let (vt, l, f, s, b) = typed(v);
                // Write time = sample time: an older report never overwrites a newer one.
                let write_ts = cell_time(ts_ms);
                self.exec(
                    "put_attr",
                    (
                        tenant.as_str(),
                        device.as_str(),
                        scope.as_str(),
                        k,
                        ts_ms,
                        vt,
                        l,
                        f,
                        s,
                        b,
                        write_ts,
                    ),
                )
                .await?;
            }
            Ok(())
        })
    }

    fn attributes(
        &self,
        tenant: TenantId,
        device: DeviceId,
        scope: AttributeScope,
        keys: Option<Vec<String>>,
    ) -> BoxFuture<'_, Result<Values>> {
        Box::pin(async move {
            let rows = self.attribute_rows(&tenant, &device, scope).await?;
            Ok(rows
                .into_iter()
                .filter(|(key, _, _)| keys.as_ref().is_none_or(|ks| ks.contains(key)))
                .map(|(key, _, v)| (key, v))
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
        Box::pin(async move {
            let rows = self.attribute_rows(&tenant, &device, scope).await?;
            Ok(rows
                .into_iter()
                .filter(|&(_, ts, _)| ts > since_ms)
                .map(|(key, _, v)| (key, v))
                .collect())
        })
    }

    fn write_samples(&self, batches: Vec<SampleBatch>) -> BoxFuture<'_, Result<usize>> {
        Box::pin(async move {
            let mut ttls: HashMap<TenantId, i32> = HashMap::new();
            let mut written = 0;
            for b in &batches {
                let ttl = match ttls.get(&b.tenant) {
                    Some(t) => *t,
                    None => {
                        let t = self.ttl_secs(&b.tenant).await?;
                        ttls.insert(b.tenant.clone(), t);
                        t
                    }
                };
                let (t, d) = (b.tenant.as_str(), b.device.as_str());
                // Group points by partition (key, bucket): one unlogged batch per partition.
                let mut partitions: HashMap<(&str, i64), Vec<(i64, &Value)>> = HashMap::new();
                let mut newest: HashMap<&str, (i64, &Value)> = HashMap::new();
                for s in &b.samples {
                    for (k, v) in &s.values {
                        let bucket = s.ts_ms.div_euclid(self.cfg.bucket_ms);
                        partitions
                            .entry((k, bucket))
                            .or_default()
                            .push((s.ts_ms, v));
                        let slot = newest.entry(k).or_insert((s.ts_ms, v));
                        if s.ts_ms >= slot.0 {
                            *slot = (s.ts_ms, v);
                        }
                        written += 1;
                    }
                }
                for ((key, bucket), points) in &partitions {
                    let values: Vec<_> = points
                        .iter()
                        .map(|(ts, v)| {
                            let (vt, l, f, s, bo) = typed(v);
                            (t, d, *key, *bucket, *ts, vt, l, f, s, bo, ttl)
                        })
                        .collect();
                    let names = vec!["put_point"; values.len()];
                    self.batch(&names, values).await?;
                    self.exec("put_bucket", (t, d, *key, *bucket, ttl)).await?;
                }
                for (key, (ts, v)) in newest {
                    let (vt, l, f, s, bo) = typed(v);
                    self.exec(
                        "put_latest",
                        (t, d, key, ts, vt, l, f, s, bo, ttl, cell_time(ts)),
                    )
                    .await?;
                }
            }
            Ok(written)
        })
    }

    fn latest(
        &self,
        tenant: TenantId,
        device: DeviceId,
        keys: Option<Vec<String>>,
    ) -> BoxFuture<'_, Result<Vec<Point>>> {
        Box::pin(async move {
            type Row = (
                String,
                i64,
                i32,
                Option<i64>,
                Option<f64>,
                Option<String>,
                Option<bool>,
            );
            let r: Vec<Row> = rows(
                self.exec("get_latest", (tenant.as_str(), device.as_str()))
                    .await?,
            )?;
            let mut out = Vec::new();
            for (key, ts, vt, l, f, s, b) in r {
                if keys.as_ref().is_some_and(|ks| !ks.contains(&key)) {
                    continue;
                }
                out.push(Point {
                    device: device.clone(),
                    key,
                    ts_ms: ts,
                    value: untyped((vt, l, f, s, b))?,
                });
            }
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
    }

    fn query(&self, q: RangeQuery) -> BoxFuture<'_, Result<PointPage>> {
        Box::pin(async move {
            if q.limit == 0 || q.from_ms >= q.to_ms {
                return Ok(PointPage {
                    points: Vec::new(),
                    next: None,
                });
            }
            let (t, d) = (q.tenant.as_str(), q.device.as_str());
            let keys = if q.keys.is_empty() {
                // Every key: those with a latest value (every key written has one).
                let r: Vec<(String, i64)> = rows(self.exec("latest_keys", (t, d)).await?)?;
                r.into_iter().map(|(k, _)| k).collect()
            } else {
                q.keys.clone()
            };
            let after = match q.page_token.as_deref() {
                Some(t) => {
                    let (ts, key) = t.split_once(':').ok_or(StoreError::BadPageToken)?;
                    Some((
                        ts.parse::<i64>().map_err(|_| StoreError::BadPageToken)?,
                        key.to_owned(),
                    ))
                }
                None => None,
            };
            let want = q.limit as usize + 1;
            let (first, last) = (
                q.from_ms.div_euclid(self.cfg.bucket_ms),
                (q.to_ms - 1).div_euclid(self.cfg.bucket_ms),
            );
            // Read each key's points in order up to `want` past the token, then merge.
            let mut all: Vec<Point> = Vec::new();
            for key in &keys {
                let buckets: Vec<(i64,)> = rows(
                    self.exec("buckets", (t, d, key.as_str(), first, last))
                        .await?,
                )?;
                let mut buckets: Vec<i64> = buckets.into_iter().map(|(b,)| b).collect();
                if q.order == Order::Desc {
                    buckets.reverse();
                }
                let mut got = 0;
                for bucket in buckets {
                    // Bound the window by the token where it allows.
                    let (mut from, mut to) = (q.from_ms, q.to_ms);
                    if let Some((ts, _)) = &after {
                        match q.order {
                            Order::Asc => from = from.max(*ts),
                            Order::Desc => to = to.min(ts.saturating_add(1)),
                        }
                    }
                    let name = if q.order == Order::Asc {
                        "range_asc"
                    } else {
                        "range_desc"
                    };
                    let limit = i32::try_from(want + 1).unwrap_or(i32::MAX);
                    type Row = (
                        i64,
                        i32,
                        Option<i64>,
                        Option<f64>,
                        Option<String>,
                        Option<bool>,
                    );
                    let r: Vec<Row> = rows(
                        self.exec(name, (t, d, key.as_str(), bucket, from, to, limit))
                            .await?,
                    )?;
                    for (ts, vt, l, f, s, b) in r {
                        let past = match (&after, q.order) {
                            (Some((ats, akey)), Order::Asc) => {
                                (ts, key.as_str()) > (*ats, akey.as_str())
                            }
                            (Some((ats, akey)), Order::Desc) => {
                                (ts, key.as_str()) < (*ats, akey.as_str())
                            }
                            (None, _) => true,
                        };
                        if !past {
                            continue;
                        }
                        all.push(Point {
                            device: q.device.clone(),
                            key: key.clone(),
                            ts_ms: ts,
                            value: untyped((vt, l, f, s, b))?,
                        });
                        got += 1;
                    }
                    if got >= want {
                        break;
                    }
                }
            }
            all.sort_by(|a, b| (a.ts_ms, &a.key).cmp(&(b.ts_ms, &b.key)));
            if q.order == Order::Desc {
                all.reverse();
            }
            all.truncate(want);
            let next = if all.len() > q.limit as usize {
                all.truncate(q.limit as usize);
                all.last().map(|p| format!("{}:{}", p.ts_ms, p.key))
            } else {
                None
            };
            Ok(PointPage { points: all, next })
        })
    }

    fn put_command(&self, r: CommandRecord) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let cid = r.id.to_string();
            self.exec(
                "put_cmd",
                (
                    cid.as_str(),
                    r.tenant.as_str(),
                    r.device.as_str(),
                    to_json(&r.command),
                    r.status.as_str(),
                    r.created_ms,
                    r.updated_ms,
                    r.reply.as_ref().map(to_json),
                ),
            )
            .await?;
            self.exec(
                "put_cmd_idx",
                (
                    r.tenant.as_str(),
                    r.device.as_str(),
                    r.created_ms,
                    cid.as_str(),
                    r.status.as_str(),
                ),
            )
            .await?;
            self.exec("del_hist", (cid.as_str(),)).await?;
            self.exec(
                "put_hist",
                (
                    cid.as_str(),
                    0i32,
                    r.status.as_str(),
                    r.created_ms,
                    None::<String>,
                ),
            )
            .await?;
            Ok(())
        })
    }

    fn command(&self, cid: MessageId) -> BoxFuture<'_, Result<Option<CommandRecord>>> {
        Box::pin(async move { self.load_command(&cid.to_string()).await })
    }

    fn set_command_status(
        &self,
        cid: MessageId,
        to: CommandStatus,
        at_ms: i64,
        detail: Option<String>,
        reply: Option<serde_json::Value>,
    ) -> BoxFuture<'_, Result<CommandRecord>> {
        Box::pin(async move {
            let key = cid.to_string();
            // One lightweight transaction per change, conditional on the status and the
            // history seq read just before: of two racing changes one applies, and the
            // other reads again and is judged against what applied.
            let mut attempts = 0;
            let (current, seq) = loop {
                attempts += 1;
                if attempts > 16 {
                    return Err(StoreError::Unavailable(format!(
                        "command {cid}: its status kept changing under 16 attempts"
                    )));
                }
                // The command and its history seq, in one read: the condition below is on
                // the pair as it was.
                let (current, seen) = self
                    .load_command_seq(&key)
                    .await?
                    .ok_or_else(|| StoreError::NotFound(format!("command {cid}")))?;
                if !current.status.can_become(to) {
                    return Err(StoreError::InvalidTransition {
                        id: cid,
                        from: current.status.as_str(),
                        to: to.as_str(),
                    });
                }
                let next = seen.map_or(1, |s| s + 1);
                let reply_json = reply
                    .as_ref()
                    .map(to_json)
                    .or_else(|| current.reply.as_ref().map(to_json));
                let r = self
                    .exec(
                        "set_cmd",
                        (
                            to.as_str(),
                            at_ms,
                            reply_json,
                            next,
                            key.as_str(),
                            current.status.as_str(),
                            seen,
                        ),
                    )
                    .await?;
                if applied(r)? {
                    break (current, next);
                }
            };
            self.exec(
                "put_cmd_idx",
                (
                    current.tenant.as_str(),
                    current.device.as_str(),
                    current.created_ms,
                    key.as_str(),
                    to.as_str(),
                ),
            )
            .await?;
            let stmt = if in_flight(&current.command, to) {
                "put_awaiting"
            } else {
                "del_awaiting"
            };
            self.exec(stmt, (key.as_str(),)).await?;
            self.exec("put_hist", (key.as_str(), seq, to.as_str(), at_ms, detail))
                .await?;
            self.load_command(&key)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("command {cid}")))
        })
    }

    fn command_history(&self, cid: MessageId) -> BoxFuture<'_, Result<Vec<StatusChange>>> {
        Box::pin(async move {
            let r: Vec<(i32, String, i64, Option<String>)> =
                rows(self.exec("get_hist", (cid.to_string(),)).await?)?;
            r.into_iter()
                .map(|(_, status, at_ms, detail)| {
                    Ok(StatusChange {
                        status: codec::status(&status)?,
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
        Box::pin(async move {
            let idx: Vec<(String, String)> = rows(
                self.exec("cmds_of", (tenant.as_str(), device.as_str()))
                    .await?,
            )?;
            let mut out = Vec::new();
            for (cid, st) in idx {
                if out.len() >= limit as usize {
                    break;
                }
                if status.is_some_and(|s| s.as_str() != st) {
                    continue;
                }
                if let Some(c) = self.load_command(&cid).await? {
                    out.push(c);
                }
            }
            Ok(out)
        })
    }

    fn in_flight_commands(&self, limit: u32) -> BoxFuture<'_, Result<Vec<CommandRecord>>> {
        Box::pin(async move {
            let limit = i32::try_from(limit).unwrap_or(i32::MAX);
            let ids: Vec<(String,)> = rows(self.exec("get_awaiting", (limit,)).await?)?;
            let mut out = Vec::new();
            for (cid,) in ids {
                if let Some(c) = self.load_command(&cid).await?
                    && in_flight(&c.command, c.status)
                {
                    out.push(c);
                }
            }
            out.sort_by_key(|c| c.updated_ms);
            Ok(out)
        })
    }

    fn put_client_rpc(&self, rpc: ClientRpc) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move {
            let key = rpc.id.to_string();
            let (t, d) = (rpc.tenant.as_str(), rpc.device.as_str());
            // The index first: an index entry without its request is dropped when read, a
            // request without its entry would never time out after a restart.
            self.exec("put_crpc_pending", (key.as_str(), t, d)).await?;
            let r = self
                .exec(
                    "put_crpc",
                    (
                        key.as_str(),
                        t,
                        d,
                        to_json(&rpc.request_id),
                        rpc.method.as_str(),
                        to_json(&rpc.params),
                        rpc.status.as_str(),
                        rpc.created_ms,
                        rpc.deadline_ms,
                        rpc.updated_ms,
                        rpc.answer.as_ref().map(to_json),
                    ),
                )
                .await?;
            applied(r)
        })
    }

    fn client_rpc(
        &self,
        tenant: TenantId,
        device: DeviceId,
        rid: MessageId,
    ) -> BoxFuture<'_, Result<Option<ClientRpc>>> {
        Box::pin(async move {
            self.load_client_rpc(tenant.as_str(), device.as_str(), &rid.to_string())
                .await
        })
    }

    fn client_rpcs(
        &self,
        tenant: TenantId,
        device: DeviceId,
        status: Option<ClientRpcStatus>,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<ClientRpc>>> {
        Box::pin(async move {
            let r: Vec<ClientRpcRow> = rows(
                self.exec("crpcs_of", (tenant.as_str(), device.as_str()))
                    .await?,
            )?;
            let mut out = Vec::new();
            for row in r {
                let rpc = codec::client_rpc(row)?;
                if status.is_none_or(|s| s == rpc.status) {
                    out.push(rpc);
                }
                if out.len() >= limit as usize {
                    break;
                }
            }
            Ok(out)
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
        Box::pin(async move {
            let (t, d, key) = (tenant.as_str(), device.as_str(), rid.to_string());
            // A lightweight transaction: of an answer and a timeout, one applies.
            let r = self
                .exec(
                    "end_crpc",
                    (
                        to.as_str(),
                        answer.as_ref().map(to_json),
                        at_ms,
                        t,
                        d,
                        key.as_str(),
                        ClientRpcStatus::Pending.as_str(),
                    ),
                )
                .await?;
            if !applied(r)? {
                return Ok(None);
            }
            self.exec("del_crpc_pending", (key.as_str(),)).await?;
            self.load_client_rpc(t, d, &key).await
        })
    }

    fn pending_client_rpcs(&self, limit: u32) -> BoxFuture<'_, Result<Vec<ClientRpc>>> {
        Box::pin(async move {
            let limit = i32::try_from(limit).unwrap_or(i32::MAX);
            let ids: Vec<(String, String, String)> =
                rows(self.exec("get_crpc_pending", (limit,)).await?)?;
            let mut out = Vec::new();
            for (key, t, d) in ids {
                match self.load_client_rpc(&t, &d, &key).await? {
                    Some(rpc) if rpc.status == ClientRpcStatus::Pending => out.push(rpc),
                    // Ended (or deleted) since: the entry is stale.
                    _ => {
                        self.exec("del_crpc_pending", (key.as_str(),)).await?;
                    }
                }
            }
            out.sort_by_key(|r| r.created_ms);
            Ok(out)
        })
    }

    fn device_claim(
        &self,
        tenant: TenantId,
        device: DeviceId,
    ) -> BoxFuture<'_, Result<Option<DeviceClaim>>> {
        Box::pin(async move {
            type Row = (String, i64, Option<String>, Option<i64>);
            let r: Vec<Row> = rows(
                self.exec("get_claim", (tenant.as_str(), device.as_str()))
                    .await?,
            )?;
            Ok(r.into_iter()
                .next()
                .map(
                    |(secret_hash, window_until_ms, owner, claimed_ms)| DeviceClaim {
                        tenant,
                        device,
                        secret_hash,
                        window_until_ms,
                        owner,
                        claimed_ms,
                    },
                ))
        })
    }

    fn open_claim_window(
        &self,
        tenant: TenantId,
        device: DeviceId,
        secret_hash: String,
        until_ms: i64,
    ) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let (t, d) = (tenant.as_str(), device.as_str());
            self.exec("open_claim", (secret_hash, until_ms, t, d))
                .await?;
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
        Box::pin(async move {
            let (t, d) = (tenant.as_str(), device.as_str());
            // A lightweight transaction: of two racing claims one applies.
            let r = self
                .exec("set_claim_owner", (owner, at_ms, t, d, seen_until_ms))
                .await?;
            applied(r)
        })
    }

    fn clear_claim(&self, tenant: TenantId, device: DeviceId) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move {
            let owned = self
                .device_claim(tenant.clone(), device.clone())
                .await?
                .is_some_and(|c| c.owner.is_some());
            if owned {
                self.exec("del_claim", (tenant.as_str(), device.as_str()))
                    .await?;
            }
            Ok(owned)
        })
    }

    fn log_connection(&self, e: ConnectionEvent) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let ttl = self.ttl_secs(&e.tenant).await?;
            self.exec(
                "put_conn",
                (
                    e.tenant.as_str(),
                    e.device.as_str(),
                    e.at_ms,
                    uid(),
                    e.connected,
                    e.front.clone(),
                    e.remote_addr.clone(),
                    e.reason.clone(),
                    e.via.as_ref().map(|v| v.as_str().to_owned()),
                    ttl,
                ),
            )
            .await?;
            Ok(())
        })
    }

    fn connection_log(
        &self,
        tenant: TenantId,
        device: DeviceId,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<ConnectionEvent>>> {
        Box::pin(async move {
            type Row = (
                i64,
                bool,
                Option<String>,
                Option<String>,
                Option<String>,
                Option<String>,
            );
            let limit = i32::try_from(limit.max(1)).unwrap_or(i32::MAX);
            let r: Vec<Row> = rows(
                self.exec("get_conn", (tenant.as_str(), device.as_str(), limit))
                    .await?,
            )?;
            r.into_iter()
                .map(|(at_ms, connected, front, remote_addr, reason, via)| {
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
        Box::pin(async move {
            let ttl = self.ttl_secs(&e.tenant).await?;
            let day = e.at_ms.div_euclid(86_400_000);
            self.exec(
                "put_rej",
                (
                    e.tenant.as_str(),
                    day,
                    e.at_ms,
                    uid(),
                    e.device.as_str(),
                    e.code.as_str(),
                    e.message.as_str(),
                    e.excerpt.as_str(),
                    ttl,
                ),
            )
            .await?;
            self.exec("put_rej_day", (e.tenant.as_str(), day, ttl))
                .await?;
            Ok(())
        })
    }

    fn rejected_log(
        &self,
        tenant: TenantId,
        device: Option<String>,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<RejectedEntry>>> {
        Box::pin(async move {
            let days: Vec<(i64,)> = rows(self.exec("rej_days", (tenant.as_str(),)).await?)?;
            let mut out = Vec::new();
            for (day,) in days {
                let r: Vec<(String, i64, String, String, String)> =
                    rows(self.exec("get_rej", (tenant.as_str(), day)).await?)?;
                for (dev, at_ms, code, message, excerpt) in r {
                    if device.as_ref().is_some_and(|d| d != &dev) {
                        continue;
                    }
                    out.push(RejectedEntry {
                        tenant: tenant.clone(),
                        device: dev,
                        at_ms,
                        code: codec::reason(&code)?,
                        message,
                        excerpt,
                    });
                    if out.len() >= limit as usize {
                        return Ok(out);
                    }
                }
            }
            Ok(out)
        })
    }
}
