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

mod commands;
mod logs;
mod registry;
mod schema;
mod telemetry;

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
use scylla::value::MaybeUnset;
use tokio::sync::Semaphore;

use crate::rows::{
    self as codec, ClientRpcRow, CommandRow, DeviceRow, new_device_id, stored_id as id, to_json,
};
use crate::types::*;
use crate::{BoxFuture, Result, Store, StoreError};
use schema::{ADDED_COLUMNS, Statements, Stmt, TABLES};

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
    /// User of password authentication (empty: none). With `password`, set it from the
    /// environment (`FLUXGATE_STORE__SCYLLA__USERNAME`).
    pub username: String,
    /// Password of `username` (`FLUXGATE_STORE__SCYLLA__PASSWORD`).
    pub password: String,
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
            username: String::new(),
            password: String::new(),
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

/// The ScyllaDB store.
pub struct ScyllaStore {
    session: Arc<Session>,
    stmts: Statements,
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
                &self.stmts.get_attrs_ts,
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
        let mut builder = SessionBuilder::new()
            .known_nodes(&cfg.nodes)
            .default_execution_profile_handle(profile);
        if !cfg.username.is_empty() {
            builder = builder.user(&cfg.username, &cfg.password);
        }
        let session = builder.build().await.map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot connect to ScyllaDB at {:?}: {e}",
                cfg.nodes
            ))
        })?;
        let session = Arc::new(session);
        Self::create_schema(&session, &cfg).await?;
        let stmts = Statements::prepare(&session, &cfg.keyspace).await?;
        Ok(ScyllaStore {
            session,
            stmts,
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
    async fn exec(&self, stmt: &Stmt, values: impl SerializeRow + Clone) -> Result<QueryResult> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| StoreError::Unavailable("store closed".into()))?;
        self.retrying(stmt.name, || {
            self.session.execute_unpaged(&stmt.prepared, values.clone())
        })
        .await
    }

    /// Runs an unlogged batch (one partition) with the retry budget.
    async fn batch<V: scylla::serialize::batch::BatchValues + Clone>(
        &self,
        stmts: &[&Stmt],
        values: V,
    ) -> Result<()> {
        let mut batch = Batch::new(BatchType::Unlogged);
        for s in stmts {
            batch.append_statement(s.prepared.clone());
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
            rows(self.exec(&self.stmts.get_app, (tenant.as_str(),)).await?)?;
        Ok(r.first().and_then(|a| a.2).unwrap_or(0))
    }

    async fn load_device(&self, tenant: &str, device: &str) -> Result<Option<Device>> {
        let r: Vec<DeviceRow> = rows(self.exec(&self.stmts.get_device, (tenant, device)).await?)?;
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
            let keys: Vec<(String, i64)> =
                rows(self.exec(&self.stmts.attr_keys, (t, d, s)).await?)?;
            for (key, ts) in keys {
                self.exec(
                    &self.stmts.del_attr_at,
                    (cell_time(ts), t, d, s, key.as_str()),
                )
                .await?;
            }
        }
        let series: Vec<(String, i64)> = rows(self.exec(&self.stmts.latest_keys, (t, d)).await?)?;
        for (key, ts) in series {
            let k = key.as_str();
            let buckets: Vec<(i64,)> = rows(
                self.exec(&self.stmts.buckets, (t, d, k, i64::MIN, i64::MAX))
                    .await?,
            )?;
            for (bucket,) in buckets {
                self.exec(&self.stmts.del_points, (t, d, k, bucket)).await?;
            }
            self.exec(&self.stmts.del_buckets, (t, d, k)).await?;
            self.exec(&self.stmts.del_latest_at, (cell_time(ts), t, d, k))
                .await?;
        }
        let commands: Vec<(String, String)> = rows(self.exec(&self.stmts.cmds_of, (t, d)).await?)?;
        for (cid, _) in commands {
            let c = cid.as_str();
            self.exec(&self.stmts.del_awaiting, (c,)).await?;
            self.exec(&self.stmts.del_hist, (c,)).await?;
            self.exec(&self.stmts.del_cmd, (c,)).await?;
        }
        self.exec(&self.stmts.del_cmd_idx, (t, d)).await?;
        self.exec(&self.stmts.del_conn, (t, d)).await?;
        self.exec(&self.stmts.del_claim, (t, d)).await?;
        let rpcs: Vec<ClientRpcRow> = rows(self.exec(&self.stmts.crpcs_of, (t, d)).await?)?;
        for (key, ..) in rpcs {
            self.exec(&self.stmts.del_crpc_pending, (key.as_str(),))
                .await?;
        }
        self.exec(&self.stmts.del_crpcs, (t, d)).await?;
        Ok(())
    }

    async fn load_client_rpc(&self, t: &str, d: &str, key: &str) -> Result<Option<ClientRpc>> {
        let r: Vec<ClientRpcRow> = rows(self.exec(&self.stmts.get_crpc, (t, d, key)).await?)?;
        r.into_iter().next().map(codec::client_rpc).transpose()
    }

    async fn load_command(&self, cid: &str) -> Result<Option<CommandRecord>> {
        let r: Vec<CommandRow> = rows(self.exec(&self.stmts.get_cmd, (cid,)).await?)?;
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
        let r: Vec<WithSeq> = rows(self.exec(&self.stmts.get_cmd_seq, (cid,)).await?)?;
        r.into_iter()
            .next()
            .map(|(a, b, c, d, e, f, g, h, seq)| {
                Ok((codec::command((a, b, c, d, e, f, g, h))?, seq))
            })
            .transpose()
    }

    async fn insert_device(&self, d: &Device) -> Result<()> {
        self.exec(
            &self.stmts.put_device,
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
            self.exec(&self.stmts.put_version, (1i32, SCHEMA_VERSION as i32))
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
}
