//! The CQL schema: the tables [`ScyllaStore::migrate`](super::ScyllaStore) creates and
//! every prepared statement, one typed field each ([`Statements`]), so a statement that
//! does not exist is a compile error, not a runtime lookup failure.

use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use crate::{Result, StoreError};

/// Columns added in schema version 3: `(table, column, type)`, added to a keyspace an
/// older build made.
pub(super) const ADDED_COLUMNS: &[(&str, &str, &str)] = &[("commands", "hist_seq", "int")];

pub(super) const TABLES: &[&str] = &[
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

/// A prepared statement and its name (for logs and errors).
pub(super) struct Stmt {
    pub(super) name: &'static str,
    pub(super) prepared: PreparedStatement,
}

macro_rules! statements {
    ($($name:ident: $cql:expr,)*) => {
        /// Every prepared statement of the store.
        pub(super) struct Statements {
            $(pub(super) $name: Stmt,)*
        }

        impl Statements {
            /// Prepares every statement on `session`, for keyspace `ks`.
            pub(super) async fn prepare(session: &Session, ks: &str) -> Result<Self> {
                Ok(Statements {
                    $($name: prepare(session, ks, stringify!($name), $cql).await?,)*
                })
            }
        }
    };
}

/// Prepares one statement. Claims are lightweight transactions whose retry could
/// answer "not applied" for a write that was: they are not idempotent.
async fn prepare(session: &Session, ks: &str, name: &'static str, cql: &str) -> Result<Stmt> {
    let mut prepared = session
        .prepare(cql.replace("{ks}", ks))
        .await
        .map_err(|e| StoreError::Config(format!("preparing {name}: {e}")))?;
    prepared.set_is_idempotent(!name.starts_with("claim"));
    Ok(Stmt { name, prepared })
}

statements! {
    put_app: "INSERT INTO {ks}.applications (id, name, ttl_secs, created_ms) VALUES (?, ?, ?, ?)",
    get_app: "SELECT id, name, ttl_secs, created_ms FROM {ks}.applications WHERE id = ?",
    put_device: "INSERT INTO {ks}.devices (tenant, id, name, kind, peripheral_policy, tags, profile, created_ms, updated_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    get_device: "SELECT tenant, id, name, kind, peripheral_policy, tags, profile, created_ms, updated_ms FROM {ks}.devices WHERE tenant = ? AND id = ?",
    list_devices: "SELECT tenant, id, name, kind, peripheral_policy, tags, profile, created_ms, updated_ms FROM {ks}.devices WHERE tenant = ? AND id > ? LIMIT ?",
    del_device: "DELETE FROM {ks}.devices WHERE tenant = ? AND id = ?",
    put_name: "INSERT INTO {ks}.device_names (tenant, name, device) VALUES (?, ?, ?)",
    claim_name: "INSERT INTO {ks}.device_names (tenant, name, device) VALUES (?, ?, ?) IF NOT EXISTS",
    get_name: "SELECT device FROM {ks}.device_names WHERE tenant = ? AND name = ?",
    del_name: "DELETE FROM {ks}.device_names WHERE tenant = ? AND name = ?",
    put_key: "INSERT INTO {ks}.access_keys (key, tenant, secret_hash, scope, custom_topics, active, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
    get_key: "SELECT key, tenant, secret_hash, scope, custom_topics, active, created_ms FROM {ks}.access_keys WHERE key = ?",
    put_token: "INSERT INTO {ks}.device_tokens (token_hash, tenant, device) VALUES (?, ?, ?)",
    put_token_idx: "INSERT INTO {ks}.device_tokens_by_device (tenant, device, token_hash) VALUES (?, ?, ?)",
    get_token: "SELECT token_hash, tenant, device FROM {ks}.device_tokens WHERE token_hash = ?",
    tokens_of: "SELECT token_hash FROM {ks}.device_tokens_by_device WHERE tenant = ? AND device = ?",
    del_token: "DELETE FROM {ks}.device_tokens WHERE token_hash = ?",
    del_token_idx: "DELETE FROM {ks}.device_tokens_by_device WHERE tenant = ? AND device = ?",
    put_api_token: "INSERT INTO {ks}.api_tokens (token_hash, tenant, scope, name, created_ms) VALUES (?, ?, ?, ?, ?)",
    get_api_token: "SELECT token_hash, tenant, scope, name, created_ms FROM {ks}.api_tokens WHERE token_hash = ?",
    del_api_token: "DELETE FROM {ks}.api_tokens WHERE token_hash = ?",
    put_def: "INSERT INTO {ks}.attribute_defs (tenant, device, name, kind) VALUES (?, ?, ?, ?)",
    get_defs: "SELECT name, kind FROM {ks}.attribute_defs WHERE tenant = ? AND device = ?",
    del_defs: "DELETE FROM {ks}.attribute_defs WHERE tenant = ? AND device = ?",
    put_attr: "INSERT INTO {ks}.attributes (tenant, device, scope, key, ts, vtype, v_long, v_double, v_text, v_bool) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?",
    get_attrs_ts: "SELECT key, ts, vtype, v_long, v_double, v_text, v_bool FROM {ks}.attributes WHERE tenant = ? AND device = ? AND scope = ?",
    attr_keys: "SELECT key, ts FROM {ks}.attributes WHERE tenant = ? AND device = ? AND scope = ?",
    del_attr_at: "DELETE FROM {ks}.attributes USING TIMESTAMP ? WHERE tenant = ? AND device = ? AND scope = ? AND key = ?",
    latest_keys: "SELECT key, ts FROM {ks}.ts_latest WHERE tenant = ? AND device = ?",
    del_latest_at: "DELETE FROM {ks}.ts_latest USING TIMESTAMP ? WHERE tenant = ? AND device = ? AND key = ?",
    del_points: "DELETE FROM {ks}.ts_kv WHERE tenant = ? AND device = ? AND key = ? AND bucket = ?",
    del_buckets: "DELETE FROM {ks}.ts_partitions WHERE tenant = ? AND device = ? AND key = ?",
    put_point: "INSERT INTO {ks}.ts_kv (tenant, device, key, bucket, ts, vtype, v_long, v_double, v_text, v_bool) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?",
    put_bucket: "INSERT INTO {ks}.ts_partitions (tenant, device, key, bucket) VALUES (?, ?, ?, ?) USING TTL ?",
    put_latest: "INSERT INTO {ks}.ts_latest (tenant, device, key, ts, vtype, v_long, v_double, v_text, v_bool) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ? AND TIMESTAMP ?",
    get_latest: "SELECT key, ts, vtype, v_long, v_double, v_text, v_bool FROM {ks}.ts_latest WHERE tenant = ? AND device = ?",
    buckets: "SELECT bucket FROM {ks}.ts_partitions WHERE tenant = ? AND device = ? AND key = ? AND bucket >= ? AND bucket <= ?",
    range_asc: "SELECT ts, vtype, v_long, v_double, v_text, v_bool FROM {ks}.ts_kv WHERE tenant = ? AND device = ? AND key = ? AND bucket = ? AND ts >= ? AND ts < ? LIMIT ?",
    range_desc: "SELECT ts, vtype, v_long, v_double, v_text, v_bool FROM {ks}.ts_kv WHERE tenant = ? AND device = ? AND key = ? AND bucket = ? AND ts >= ? AND ts < ? ORDER BY ts DESC LIMIT ?",
    put_cmd: "INSERT INTO {ks}.commands (id, tenant, device, command, status, created_ms, updated_ms, reply, hist_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0)",
    get_cmd: "SELECT id, tenant, device, command, status, created_ms, updated_ms, reply FROM {ks}.commands WHERE id = ?",
    set_cmd: "UPDATE {ks}.commands SET status = ?, updated_ms = ?, reply = ?, hist_seq = ? WHERE id = ? IF status = ? AND hist_seq = ?",
    get_cmd_seq: "SELECT id, tenant, device, command, status, created_ms, updated_ms, reply, hist_seq FROM {ks}.commands WHERE id = ?",
    put_cmd_idx: "INSERT INTO {ks}.commands_by_device (tenant, device, created_ms, id, status) VALUES (?, ?, ?, ?, ?)",
    cmds_of: "SELECT id, status FROM {ks}.commands_by_device WHERE tenant = ? AND device = ? ORDER BY created_ms DESC",
    put_hist: "INSERT INTO {ks}.command_history (id, seq, status, at_ms, detail) VALUES (?, ?, ?, ?, ?)",
    get_hist: "SELECT seq, status, at_ms, detail FROM {ks}.command_history WHERE id = ?",
    del_hist: "DELETE FROM {ks}.command_history WHERE id = ?",
    del_cmd: "DELETE FROM {ks}.commands WHERE id = ?",
    del_cmd_idx: "DELETE FROM {ks}.commands_by_device WHERE tenant = ? AND device = ?",
    put_awaiting: "INSERT INTO {ks}.commands_in_flight (shard, id) VALUES (0, ?)",
    del_awaiting: "DELETE FROM {ks}.commands_in_flight WHERE shard = 0 AND id = ?",
    get_awaiting: "SELECT id FROM {ks}.commands_in_flight WHERE shard = 0 LIMIT ?",
    put_crpc: "INSERT INTO {ks}.client_rpcs (id, tenant, device, request_id, method, params, status, created_ms, deadline_ms, updated_ms, answer) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS",
    get_crpc: "SELECT id, tenant, device, request_id, method, params, status, created_ms, deadline_ms, updated_ms, answer FROM {ks}.client_rpcs WHERE tenant = ? AND device = ? AND id = ?",
    crpcs_of: "SELECT id, tenant, device, request_id, method, params, status, created_ms, deadline_ms, updated_ms, answer FROM {ks}.client_rpcs WHERE tenant = ? AND device = ? ORDER BY id DESC LIMIT 1000",
    end_crpc: "UPDATE {ks}.client_rpcs SET status = ?, answer = ?, updated_ms = ? WHERE tenant = ? AND device = ? AND id = ? IF status = ?",
    del_crpcs: "DELETE FROM {ks}.client_rpcs WHERE tenant = ? AND device = ?",
    put_crpc_pending: "INSERT INTO {ks}.client_rpcs_pending (shard, id, tenant, device) VALUES (0, ?, ?, ?)",
    del_crpc_pending: "DELETE FROM {ks}.client_rpcs_pending WHERE shard = 0 AND id = ?",
    get_crpc_pending: "SELECT id, tenant, device FROM {ks}.client_rpcs_pending WHERE shard = 0 LIMIT ?",
    get_claim: "SELECT secret_hash, window_until_ms, owner, claimed_ms FROM {ks}.device_claims WHERE tenant = ? AND device = ?",
    open_claim: "UPDATE {ks}.device_claims SET secret_hash = ?, window_until_ms = ? WHERE tenant = ? AND device = ?",
    set_claim_owner: "UPDATE {ks}.device_claims SET owner = ?, claimed_ms = ?, window_until_ms = 0 WHERE tenant = ? AND device = ? IF window_until_ms = ? AND owner = null",
    del_claim: "DELETE FROM {ks}.device_claims WHERE tenant = ? AND device = ?",
    put_conn: "INSERT INTO {ks}.connection_log (tenant, device, at_ms, uid, connected, front, remote_addr, reason, via) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?",
    get_conn: "SELECT at_ms, connected, front, remote_addr, reason, via FROM {ks}.connection_log WHERE tenant = ? AND device = ? ORDER BY at_ms DESC LIMIT ?",
    del_conn: "DELETE FROM {ks}.connection_log WHERE tenant = ? AND device = ?",
    put_rej: "INSERT INTO {ks}.rejected_log (tenant, day, at_ms, uid, device, code, message, excerpt) VALUES (?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?",
    get_rej: "SELECT device, at_ms, code, message, excerpt FROM {ks}.rejected_log WHERE tenant = ? AND day = ? ORDER BY at_ms DESC",
    put_rej_day: "INSERT INTO {ks}.rejected_days (tenant, day) VALUES (?, ?) USING TTL ?",
    rej_days: "SELECT day FROM {ks}.rejected_days WHERE tenant = ? ORDER BY day DESC",
    put_version: "INSERT INTO {ks}.schema_version (id, version) VALUES (?, ?)",
}
