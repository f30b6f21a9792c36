//! Row decoding shared by the adapters: both read the same records back from columns of
//! the same meaning, so the checks (ids valid, JSON readable, enums known) live once.

use fluxgate_model::{Command, DeviceId, ReasonCode, TenantId};

use crate::types::*;
use crate::{Result, StoreError};

/// A stored id, validated again on the way out.
pub(crate) fn stored_id<T>(
    s: String,
    make: fn(String) -> std::result::Result<T, fluxgate_model::IdError>,
) -> Result<T> {
    let shown = s.clone();
    make(s).map_err(|e| StoreError::Corrupt(format!("stored id {shown:?}: {e}")))
}

/// Reads a JSON column.
pub(crate) fn json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Writes a JSON column (these types always serialize).
pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// A command status column.
pub(crate) fn status(s: &str) -> Result<CommandStatus> {
    CommandStatus::parse(s).ok_or_else(|| StoreError::Corrupt(format!("status {s}")))
}

/// A reason code column.
pub(crate) fn reason(s: &str) -> Result<ReasonCode> {
    ReasonCode::ALL
        .into_iter()
        .find(|c| c.as_str() == s)
        .ok_or_else(|| StoreError::Corrupt(format!("reason code {s}")))
}

/// A fresh id for an auto-created device: independent of its name, so a rename never
/// makes a second device.
pub(crate) fn new_device_id(now_ms: i64, name: &str) -> Result<DeviceId> {
    use std::hash::{BuildHasher, RandomState};
    let a = RandomState::new().hash_one((now_ms, name));
    let b = RandomState::new().hash_one(a);
    DeviceId::new(format!(
        "tb-{:012x}{:016x}{:04x}",
        now_ms & 0xFFFF_FFFF_FFFF,
        a,
        b & 0xFFFF
    ))
    .map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// The device columns: tenant, id, name, kind, peripheral policy JSON, tags JSON, profile,
/// created, updated.
pub(crate) const DEVICE_COLS: &str =
    "tenant, id, name, kind, peripheral_policy, tags, profile, created_ms, updated_ms";

/// A device row as read (see [`DEVICE_COLS`]).
pub(crate) type DeviceRow = (
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
    i64,
);

/// A device from its row.
pub(crate) fn device(r: DeviceRow) -> Result<Device> {
    let (tenant, did, name, kind, policy, tags, profile, created_ms, updated_ms) = r;
    Ok(Device {
        tenant: stored_id(tenant, TenantId::new)?,
        id: stored_id(did, DeviceId::new)?,
        name,
        kind: DeviceKind::parse(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("device kind {kind}")))?,
        peripheral_policy: policy.as_deref().map(json).transpose()?,
        tags: json(tags.as_deref().unwrap_or("[]"))?,
        profile,
        created_ms,
        updated_ms,
    })
}

/// The command columns.
pub(crate) const COMMAND_COLS: &str =
    "id, tenant, device, command, status, created_ms, updated_ms, reply";

/// A command row as read (see [`COMMAND_COLS`]).
pub(crate) type CommandRow = (
    String,
    String,
    String,
    String,
    String,
    i64,
    i64,
    Option<String>,
);

/// A command from its row.
pub(crate) fn command(r: CommandRow) -> Result<CommandRecord> {
    let (cid, tenant, device, command, st, created_ms, updated_ms, reply) = r;
    Ok(CommandRecord {
        id: cid
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("command id {cid}")))?,
        tenant: stored_id(tenant, TenantId::new)?,
        device: stored_id(device, DeviceId::new)?,
        command: json::<Command>(&command)?,
        status: status(&st)?,
        created_ms,
        updated_ms,
        reply: reply.as_deref().map(json).transpose()?,
    })
}

/// An access key row: key, tenant, secret hash, scope JSON, custom topics, active, created.
pub(crate) type AccessKeyRow = (String, String, String, String, bool, bool, i64);

/// An access key from its row.
pub(crate) fn access_key(r: AccessKeyRow) -> Result<AccessKey> {
    let (key, tenant, secret_hash, scope, custom_topics, active, created_ms) = r;
    Ok(AccessKey {
        key,
        tenant: stored_id(tenant, TenantId::new)?,
        secret_hash,
        scope: json(&scope)?,
        custom_topics,
        active,
        created_ms,
    })
}

/// An API token row: hash, tenant, scope, name, creation time.
pub(crate) type ApiTokenRow = (String, String, String, String, i64);

/// An API token from its row.
pub(crate) fn api_token(r: ApiTokenRow) -> Result<ApiToken> {
    let (token_hash, tenant, scope, name, created_ms) = r;
    Ok(ApiToken {
        token_hash,
        tenant: stored_id(tenant, TenantId::new)?,
        scope: ApiScope::parse(&scope)
            .ok_or_else(|| StoreError::Corrupt(format!("api token scope {scope}")))?,
        name,
        created_ms,
    })
}

/// A device token row: hash, tenant, device.
pub(crate) type TokenRow = (String, String, String);

/// A device token from its row.
pub(crate) fn device_token(r: TokenRow) -> Result<DeviceToken> {
    let (token_hash, tenant, device) = r;
    Ok(DeviceToken {
        token_hash,
        tenant: stored_id(tenant, TenantId::new)?,
        device: stored_id(device, DeviceId::new)?,
    })
}

/// The client-side RPC columns: id, tenant, device, request id JSON, method, params JSON,
/// status, created, deadline, updated, answer JSON.
pub(crate) const CLIENT_RPC_COLS: &str = "id, tenant, device, request_id, method, params, status, created_ms, deadline_ms, updated_ms, answer";

/// A client-side RPC row as read (see [`CLIENT_RPC_COLS`]).
pub(crate) type ClientRpcRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    i64,
    i64,
    i64,
    Option<String>,
);

/// A client-side RPC from its row.
pub(crate) fn client_rpc(r: ClientRpcRow) -> Result<ClientRpc> {
    let (
        id,
        tenant,
        device,
        request_id,
        method,
        params,
        st,
        created_ms,
        deadline_ms,
        updated_ms,
        answer,
    ) = r;
    Ok(ClientRpc {
        id: id
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("client RPC id {id}")))?,
        tenant: stored_id(tenant, TenantId::new)?,
        device: stored_id(device, DeviceId::new)?,
        request_id: json(&request_id)?,
        method,
        params: json(&params)?,
        status: ClientRpcStatus::parse(&st)
            .ok_or_else(|| StoreError::Corrupt(format!("client RPC status {st}")))?,
        created_ms,
        deadline_ms,
        updated_ms,
        answer: answer.as_deref().map(json).transpose()?,
    })
}
