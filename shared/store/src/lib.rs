//! `fluxgate-store`: everything fluxgate keeps, as four aggregates ([`RegistryStore`],
//! [`TelemetryStore`], [`CommandStore`], [`LogStore`]) of one [`Store`].
//!
//! - [`sqlite::SqliteStore`]: standalone mode and the embedded default (bundled SQLite,
//!   WAL).
//! - [`scylla::ScyllaStore`]: deployments (ScyllaDB through the `scylla` driver); tested
//!   against the CQL test double in `fluxgate-testkit`, or a real ScyllaDB at `SCYLLA_URI`.
//!
//! What the contract promises (the suite in `tests/contract` checks it on every adapter):
//! - Time-series writes are idempotent: `(tenant, device, key, ts)` is the identity of a
//!   point, and writing it again overwrites, never duplicates — so a consumer may redeliver.
//! - The latest value of `(device, key)` never goes back in time when writes arrive out
//!   of order.
//! - Range queries page with an opaque token; pages neither skip nor repeat points.
//! - TTL per application applies to time series, connection log and rejected log.
//! - Secrets are stored only as hashes ([`hash_secret`]); no table holds a secret.
//! - A ThingsBoard device name maps to exactly one device even when two callers create it
//!   at once.
//! - Command status moves only along [`CommandStatus::can_become`].
//! - A client-side RPC ends once: answered or timed out, never both.
//! - A device is claimed by at most one owner, within the window it opened, with its
//!   secret, even when two claims race.
//! - Deleting a device deletes its data: a device made again under the same id shows
//!   none of the old one's points, latest values, attributes, commands or connections.

use std::future::Future;
use std::pin::Pin;

use fluxgate_model::{DeviceId, DeviceName, MessageId, TenantId, Values};

pub mod cached;
mod failure_delay;
mod rows;
pub mod scylla;
pub mod sqlite;
mod types;

pub use cached::CachedStore;
pub use failure_delay::FailureDelay;
pub use types::*;

/// A boxed, sendable future (keeps [`Store`] usable as `dyn`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Result of a store operation.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store is unreachable, overloaded or timed out: retry with backoff.
    #[error("store unavailable: {0}; retry later")]
    Unavailable(String),
    /// A command status change that its lifecycle does not allow.
    #[error("command {id} cannot go from {from} to {to}")]
    InvalidTransition {
        /// The command.
        id: MessageId,
        /// Its current status.
        from: &'static str,
        /// The refused status.
        to: &'static str,
    },
    /// The record to change does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// A page token this store did not issue.
    #[error("invalid page token")]
    BadPageToken,
    /// Stored data could not be read back (schema mismatch or corruption).
    #[error("stored data is unreadable: {0}; run `fluxgate migrate`")]
    Corrupt(String),
    /// The store refused its configuration (path, keyspace...).
    #[error("store configuration refused: {0}")]
    Config(String),
}

impl StoreError {
    /// Whether retrying may succeed.
    pub fn is_retriable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// SHA-256 of a secret or token, lowercase hex: what credentials are stored and looked up
/// by. Secrets are random and long (not passwords), so a fast hash is the right tool.
pub fn hash_secret(secret: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(secret.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    out
}

/// Whether `secret` hashes to `stored_hash`, compared in constant time. The secret is
/// hashed even when there is no stored hash (an unknown key), so the time taken tells
/// nothing about which keys exist.
pub fn secret_matches(secret: &str, stored_hash: Option<&str>) -> bool {
    use subtle::ConstantTimeEq;
    let given = hash_secret(secret);
    let stored = stored_hash.unwrap_or("");
    given.as_bytes().ct_eq(stored.as_bytes()).into() && stored_hash.is_some()
}

/// Why Losant device credentials (access key, secret, device id) are refused. MQTT
/// CONNECT and REST `/auth/device` both answer from [`check_access_key`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyRefusal {
    /// Unknown key or wrong secret (indistinguishable on purpose).
    #[error("bad device id, key or secret")]
    BadCredentials,
    /// The right secret of a deactivated key.
    #[error("access key is deactivated")]
    Deactivated,
    /// The device id is not one.
    #[error("the device id is not a valid device id")]
    NotADeviceId,
    /// No such device in the key's application.
    #[error("no such device in the key's application")]
    NoSuchDevice,
    /// The key's scope leaves this device out.
    #[error("the access key does not open this device")]
    NotOpened,
    /// The registry could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The one Losant credential check: `key` exists and `secret` is its secret (compared in
/// constant time, hashed even for an unknown key), the key is active, and it opens the
/// device `device_id` of its application. The key and the device on success.
pub async fn check_access_key(
    store: &dyn RegistryStore,
    key: &str,
    secret: &str,
    device_id: &str,
) -> std::result::Result<(AccessKey, Device), KeyRefusal> {
    let found = match key {
        "" => None,
        k => store.access_key(k.to_owned()).await?,
    };
    let same = secret_matches(secret, found.as_ref().map(|k| k.secret_hash.as_str()));
    let key = match found {
        Some(k) if same => k,
        _ => return Err(KeyRefusal::BadCredentials),
    };
    if !key.active {
        return Err(KeyRefusal::Deactivated);
    }
    let id = DeviceId::new(device_id).map_err(|_| KeyRefusal::NotADeviceId)?;
    let device = store
        .device(key.tenant.clone(), id)
        .await?
        .ok_or(KeyRefusal::NoSuchDevice)?;
    if !key.opens(&device) {
        return Err(KeyRefusal::NotOpened);
    }
    Ok((key, device))
}

/// Claims `device` for `owner` with the secret the device set, at `now_ms` (ThingsBoard's
/// device claiming): within the window the device opened, with its secret, by one owner.
pub async fn claim_device(
    store: &dyn RegistryStore,
    tenant: TenantId,
    device: DeviceId,
    secret: &str,
    owner: String,
    now_ms: i64,
) -> Result<ClaimOutcome> {
    let Some(claim) = store.device_claim(tenant.clone(), device.clone()).await? else {
        return Ok(ClaimOutcome::NoWindow);
    };
    match &claim.owner {
        Some(o) if *o == owner => return Ok(ClaimOutcome::AlreadyYours(claim)),
        Some(_) => return Ok(ClaimOutcome::Owned),
        None => {}
    }
    if claim.window_until_ms <= now_ms {
        return Ok(ClaimOutcome::NoWindow);
    }
    if !secret_matches(secret, Some(&claim.secret_hash)) {
        return Ok(ClaimOutcome::WrongSecret);
    }
    let seen = claim.window_until_ms;
    if !store
        .set_claim_owner(tenant.clone(), device.clone(), seen, owner.clone(), now_ms)
        .await?
    {
        // Another claim (or a new window) came first: judged against what is there now.
        return Ok(match store.device_claim(tenant, device).await? {
            Some(c) if c.owner.as_deref() == Some(owner.as_str()) => ClaimOutcome::AlreadyYours(c),
            Some(c) if c.owner.is_some() => ClaimOutcome::Owned,
            _ => ClaimOutcome::NoWindow,
        });
    }
    Ok(ClaimOutcome::Claimed(DeviceClaim {
        window_until_ms: 0,
        owner: Some(owner),
        claimed_ms: Some(now_ms),
        ..claim
    }))
}

/// The registry: applications, devices and their credentials (access keys, device
/// tokens, API tokens), attribute definitions and claims. The front and the validator read
/// it on every connection or record ([`CachedStore`] caches it).
pub trait RegistryStore: Send + Sync + std::fmt::Debug {
    /// Creates or replaces an application.
    fn put_application(&self, app: Application) -> BoxFuture<'_, Result<()>>;
    /// An application.
    fn application(&self, id: TenantId) -> BoxFuture<'_, Result<Option<Application>>>;
    /// Creates or replaces a device.
    fn put_device(&self, device: Device) -> BoxFuture<'_, Result<()>>;
    /// A device.
    fn device(&self, tenant: TenantId, id: DeviceId) -> BoxFuture<'_, Result<Option<Device>>>;
    /// Deletes a device with everything it has: credentials, name mapping, attribute
    /// definitions and attributes, time series and latest values, commands and their
    /// history, connection log; `false` if absent. A device made again under the same id
    /// starts empty. The tenant's rejected log keeps its entries until they expire.
    /// On ScyllaDB a latest value or attribute of the new device that is older than the
    /// deleted device's newest of the same key stays hidden until a newer one arrives
    /// (see `scylla` for why).
    fn delete_device(&self, tenant: TenantId, id: DeviceId) -> BoxFuture<'_, Result<bool>>;
    /// Devices of a tenant in id order, after `after`.
    fn devices(
        &self,
        tenant: TenantId,
        after: Option<DeviceId>,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<Device>>>;
    /// The device a ThingsBoard gateway calls `name`, created as `how` says on first
    /// sight. Concurrent callers get the same device; exactly one sees `created`.
    fn device_by_name(
        &self,
        tenant: TenantId,
        name: DeviceName,
        how: AutoCreate,
    ) -> BoxFuture<'_, Result<NamedDevice>>;
    /// The device a ThingsBoard gateway calls `name`, if there is one; never creates it.
    fn device_named(
        &self,
        tenant: TenantId,
        name: DeviceName,
    ) -> BoxFuture<'_, Result<Option<Device>>>;
    /// Creates or replaces an access key.
    fn put_access_key(&self, key: AccessKey) -> BoxFuture<'_, Result<()>>;
    /// An access key by its public key.
    fn access_key(&self, key: String) -> BoxFuture<'_, Result<Option<AccessKey>>>;
    /// Creates or replaces a device token.
    fn put_device_token(&self, token: DeviceToken) -> BoxFuture<'_, Result<()>>;
    /// The token with this hash.
    fn device_token(&self, token_hash: String) -> BoxFuture<'_, Result<Option<DeviceToken>>>;
    /// Revokes every token of a device; returns the hashes revoked (to announce).
    fn revoke_device_tokens(
        &self,
        tenant: TenantId,
        device: DeviceId,
    ) -> BoxFuture<'_, Result<Vec<String>>>;
    /// Creates or replaces an application API token.
    fn put_api_token(&self, token: ApiToken) -> BoxFuture<'_, Result<()>>;
    /// The API token with this hash.
    fn api_token(&self, token_hash: String) -> BoxFuture<'_, Result<Option<ApiToken>>>;
    /// Revokes an API token; `false` if absent.
    fn delete_api_token(&self, token_hash: String) -> BoxFuture<'_, Result<bool>>;
    /// Replaces a device's attribute definitions.
    fn put_attribute_defs(
        &self,
        tenant: TenantId,
        device: DeviceId,
        defs: Vec<AttributeDef>,
    ) -> BoxFuture<'_, Result<()>>;
    /// A device's attribute definitions, by name.
    fn attribute_defs(
        &self,
        tenant: TenantId,
        device: DeviceId,
    ) -> BoxFuture<'_, Result<Vec<AttributeDef>>>;
    /// A device's claim record, if it ever opened a claiming window.
    fn device_claim(
        &self,
        tenant: TenantId,
        device: DeviceId,
    ) -> BoxFuture<'_, Result<Option<DeviceClaim>>>;
    /// Opens (or reopens) a device's claiming window: claims presenting the secret that
    /// hashes to `secret_hash` succeed until `until_ms`. An owner stays.
    fn open_claim_window(
        &self,
        tenant: TenantId,
        device: DeviceId,
        secret_hash: String,
        until_ms: i64,
    ) -> BoxFuture<'_, Result<()>>;
    /// Records `owner` and closes the window, if the window is still the one read
    /// (`seen_until_ms`) and nobody owns the device: one conditional write, so of two
    /// racing claims exactly one applies. Returns whether this one did.
    fn set_claim_owner(
        &self,
        tenant: TenantId,
        device: DeviceId,
        seen_until_ms: i64,
        owner: String,
        at_ms: i64,
    ) -> BoxFuture<'_, Result<bool>>;
    /// Unclaims a device: drops its owner and any open window (the device opens a new one
    /// to be claimed again). `false` if it had no owner.
    fn clear_claim(&self, tenant: TenantId, device: DeviceId) -> BoxFuture<'_, Result<bool>>;
}

/// Device data: the time series the writer stores and the API reads, and attribute
/// values (client ones reported by devices, shared ones set through the API).
pub trait TelemetryStore: Send + Sync + std::fmt::Debug {
    /// Sets attributes of one scope (later writes win).
    fn put_attributes(
        &self,
        tenant: TenantId,
        device: DeviceId,
        scope: AttributeScope,
        values: Values,
        ts_ms: i64,
    ) -> BoxFuture<'_, Result<()>>;
    /// Attributes of one scope: all, or these keys.
    fn attributes(
        &self,
        tenant: TenantId,
        device: DeviceId,
        scope: AttributeScope,
        keys: Option<Vec<String>>,
    ) -> BoxFuture<'_, Result<Values>>;
    /// Attributes of one scope whose value was written after `since_ms` (their timestamp
    /// is later): what changed while a device was away.
    fn attributes_since(
        &self,
        tenant: TenantId,
        device: DeviceId,
        scope: AttributeScope,
        since_ms: i64,
    ) -> BoxFuture<'_, Result<Values>>;
    /// Writes samples (idempotently) and updates latest values; returns points written.
    fn write_samples(&self, batches: Vec<SampleBatch>) -> BoxFuture<'_, Result<usize>>;
    /// Latest value of each key of a device (all keys, or these).
    fn latest(
        &self,
        tenant: TenantId,
        device: DeviceId,
        keys: Option<Vec<String>>,
    ) -> BoxFuture<'_, Result<Vec<Point>>>;
    /// Points of a device in a time window.
    fn query(&self, query: RangeQuery) -> BoxFuture<'_, Result<PointPage>>;
}

/// Commands and RPCs to devices and client-side RPCs from them, with their lifecycle.
pub trait CommandStore: Send + Sync + std::fmt::Debug {
    /// Stores a new command (status and history start with `record.status`).
    fn put_command(&self, record: CommandRecord) -> BoxFuture<'_, Result<()>>;
    /// A command.
    fn command(&self, id: MessageId) -> BoxFuture<'_, Result<Option<CommandRecord>>>;
    /// Moves a command to `to` if its lifecycle allows it, recording the change (and the
    /// reply, if any). Returns the updated command.
    fn set_command_status(
        &self,
        id: MessageId,
        to: CommandStatus,
        at_ms: i64,
        detail: Option<String>,
        reply: Option<serde_json::Value>,
    ) -> BoxFuture<'_, Result<CommandRecord>>;
    /// A command's status history, oldest first.
    fn command_history(&self, id: MessageId) -> BoxFuture<'_, Result<Vec<StatusChange>>>;
    /// Commands of a device, newest first, optionally of one status.
    fn commands(
        &self,
        tenant: TenantId,
        device: DeviceId,
        status: Option<CommandStatus>,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<CommandRecord>>>;
    /// Commands in flight, oldest first: two-way ones sent and not answered or ended yet
    /// (status sent or delivered) and one-way ones sent and not delivered yet (status
    /// sent). Their RPC timers and delivery deadlines are what a restarted dispatcher
    /// must run again.
    fn in_flight_commands(&self, limit: u32) -> BoxFuture<'_, Result<Vec<CommandRecord>>>;
    /// Stores a device's new client-side RPC (status [`ClientRpcStatus::Pending`]);
    /// `false` if it was stored already (a redelivered request), which changes nothing.
    fn put_client_rpc(&self, rpc: ClientRpc) -> BoxFuture<'_, Result<bool>>;
    /// A client-side RPC of a device.
    fn client_rpc(
        &self,
        tenant: TenantId,
        device: DeviceId,
        id: MessageId,
    ) -> BoxFuture<'_, Result<Option<ClientRpc>>>;
    /// A device's client-side RPCs, newest first, optionally of one status (among its
    /// 1000 newest).
    fn client_rpcs(
        &self,
        tenant: TenantId,
        device: DeviceId,
        status: Option<ClientRpcStatus>,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<ClientRpc>>>;
    /// Ends a pending client-side RPC (`Answered` with its answer, or `TimedOut`): one
    /// conditional write, so an answer and a timeout at the same instant leave one of
    /// them. Returns the ended request, or `None` if it was not pending (or not there).
    fn end_client_rpc(
        &self,
        tenant: TenantId,
        device: DeviceId,
        id: MessageId,
        to: ClientRpcStatus,
        answer: Option<serde_json::Value>,
        at_ms: i64,
    ) -> BoxFuture<'_, Result<Option<ClientRpc>>>;
    /// Pending client-side RPCs of every device, oldest first: the timeouts a restarted
    /// dispatcher must run again.
    fn pending_client_rpcs(&self, limit: u32) -> BoxFuture<'_, Result<Vec<ClientRpc>>>;
}

/// The connection log (presence) and the rejected log.
pub trait LogStore: Send + Sync + std::fmt::Debug {
    /// Records a connect/disconnect.
    fn log_connection(&self, event: ConnectionEvent) -> BoxFuture<'_, Result<()>>;
    /// A device's connection log, newest first.
    fn connection_log(
        &self,
        tenant: TenantId,
        device: DeviceId,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<ConnectionEvent>>>;
    /// Records a refused message.
    fn log_rejected(&self, entry: RejectedEntry) -> BoxFuture<'_, Result<()>>;
    /// The rejected log of a tenant (or one device), newest first.
    fn rejected_log(
        &self,
        tenant: TenantId,
        device: Option<String>,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<RejectedEntry>>>;
}

/// Everything fluxgate keeps: the four aggregates of one database, and its schema. Each
/// role takes only the aggregates it uses (the front and the validator a
/// [`RegistryStore`], the writer a [`TelemetryStore`] and a [`LogStore`]); the binary
/// opens one `Store` and hands out its parts.
pub trait Store: RegistryStore + TelemetryStore + CommandStore + LogStore {
    /// Creates or updates the schema; idempotent. Returns the schema version.
    fn migrate(&self) -> BoxFuture<'_, Result<u32>>;
    /// Whether the store answers a trivial query now; readiness asks this periodically.
    /// Never retries.
    fn ping(&self) -> BoxFuture<'_, Result<()>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_hash_is_sha256_hex() {
        assert_eq!(
            hash_secret("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_ne!(hash_secret("a"), hash_secret("b"));
        assert!(secret_matches("s", Some(&hash_secret("s"))));
        assert!(!secret_matches("s", Some(&hash_secret("t"))));
        assert!(!secret_matches("s", None));
    }
}
