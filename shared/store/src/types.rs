//! The records the store keeps.

pub use fluxgate_model::{
    AccessKey, CommandStatus, Device, DeviceKind, KeyScope, PeripheralPolicy,
};
use fluxgate_model::{DeviceId, DeviceName, MessageId, TenantId, Value};
use serde::{Deserialize, Serialize};

/// An application (Losant term): a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Application {
    /// Its id.
    pub id: TenantId,
    /// Display name.
    pub name: String,
    /// How long time series, connection and rejected logs are kept, in seconds (`None`:
    /// forever).
    pub ttl_secs: Option<u32>,
    /// Creation time, epoch ms.
    pub created_ms: i64,
}

/// A ThingsBoard device access token, kept only as its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceToken {
    /// SHA-256 of the token, hex.
    pub token_hash: String,
    /// Tenant.
    pub tenant: TenantId,
    /// The device it authenticates.
    pub device: DeviceId,
}

/// The type an attribute is defined with (Losant).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttributeType {
    /// A number.
    Number,
    /// A string.
    String,
    /// A boolean.
    Boolean,
    /// A "lat,lon" string.
    Gps,
    /// Any JSON.
    Json,
}

impl AttributeType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AttributeType::Number => "number",
            AttributeType::String => "string",
            AttributeType::Boolean => "boolean",
            AttributeType::Gps => "gps",
            AttributeType::Json => "json",
        }
    }
    pub(crate) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "number" => AttributeType::Number,
            "string" => AttributeType::String,
            "boolean" => AttributeType::Boolean,
            "gps" => AttributeType::Gps,
            "json" => AttributeType::Json,
            _ => return None,
        })
    }
}

/// What an application API token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiScope {
    /// Read the registry, data, logs and commands.
    Read,
    /// Also send commands and data, change attributes.
    Write,
    /// Also change the registry (devices, keys, tokens, definitions).
    Admin,
}

impl ApiScope {
    /// The scope's name.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiScope::Read => "read",
            ApiScope::Write => "write",
            ApiScope::Admin => "admin",
        }
    }
    /// A scope from its name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "read" => ApiScope::Read,
            "write" => ApiScope::Write,
            "admin" => ApiScope::Admin,
            _ => return None,
        })
    }
    /// Whether a token of this scope may do what `needed` allows.
    pub fn allows(self, needed: ApiScope) -> bool {
        self >= needed
    }
}

/// An application API token, kept only as its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    /// SHA-256 of the token, hex.
    pub token_hash: String,
    /// The application it opens.
    pub tenant: TenantId,
    /// What it may do.
    pub scope: ApiScope,
    /// A name for people.
    pub name: String,
    /// Creation time, epoch ms.
    pub created_ms: i64,
}

/// An attribute definition on a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttributeDef {
    /// Attribute name.
    pub name: String,
    /// Its type.
    pub kind: AttributeType,
}

/// Attribute scopes (ThingsBoard).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttributeScope {
    /// Reported by the device.
    Client,
    /// Set by the platform, pushed to the device.
    Shared,
}

impl AttributeScope {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AttributeScope::Client => "client",
            AttributeScope::Shared => "shared",
        }
    }
}

/// One stored sample of one key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Device.
    pub device: DeviceId,
    /// Key.
    pub key: String,
    /// Epoch ms.
    pub ts_ms: i64,
    /// Value.
    pub value: Value,
}

/// Samples of one device to write.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleBatch {
    /// Tenant.
    pub tenant: TenantId,
    /// Device.
    pub device: DeviceId,
    /// The samples.
    pub samples: Vec<fluxgate_model::Sample>,
}

/// Sort order of a range query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// Oldest first.
    #[default]
    Asc,
    /// Newest first.
    Desc,
}

/// A time-series range query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeQuery {
    /// Tenant.
    pub tenant: TenantId,
    /// Device.
    pub device: DeviceId,
    /// Keys (empty: every key of the device).
    pub keys: Vec<String>,
    /// Window start, epoch ms, inclusive.
    pub from_ms: i64,
    /// Window end, epoch ms, exclusive.
    pub to_ms: i64,
    /// Most points per page.
    pub limit: u32,
    /// Order by time (then key).
    pub order: Order,
    /// Continue after the page that returned this token.
    pub page_token: Option<String>,
}

/// One page of points.
#[derive(Debug, Clone, PartialEq)]
pub struct PointPage {
    /// The points.
    pub points: Vec<Point>,
    /// Pass back to get the next page; `None` on the last page.
    pub next: Option<String>,
}

/// A command or RPC with its lifecycle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandRecord {
    /// Command id.
    pub id: MessageId,
    /// Tenant.
    pub tenant: TenantId,
    /// Target device.
    pub device: DeviceId,
    /// What to send.
    pub command: fluxgate_model::Command,
    /// Current status.
    pub status: CommandStatus,
    /// Created, epoch ms.
    pub created_ms: i64,
    /// Last status change, epoch ms.
    pub updated_ms: i64,
    /// The device's reply (two-way RPC).
    pub reply: Option<serde_json::Value>,
}

/// One status change in a command's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusChange {
    /// The new status.
    pub status: CommandStatus,
    /// When, epoch ms.
    pub at_ms: i64,
    /// Why (error text, front that sent it, …).
    pub detail: Option<String>,
}

/// A connect or disconnect, as the connection log keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionEvent {
    /// Tenant.
    pub tenant: TenantId,
    /// Device.
    pub device: DeviceId,
    /// When, epoch ms.
    pub at_ms: i64,
    /// `true` for connect, `false` for disconnect.
    pub connected: bool,
    /// Front instance.
    pub front: Option<String>,
    /// Client address.
    pub remote_addr: Option<String>,
    /// Disconnect reason.
    pub reason: Option<String>,
    /// The gateway it is behind, for devices announced by a gateway.
    pub via: Option<DeviceId>,
}

/// A refused message, as the rejected log keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedEntry {
    /// Tenant.
    pub tenant: TenantId,
    /// Device (or the name its gateway used).
    pub device: String,
    /// When, epoch ms.
    pub at_ms: i64,
    /// Stable reason code.
    pub code: fluxgate_model::ReasonCode,
    /// Human message.
    pub message: String,
    /// The start of the payload, for diagnosis.
    pub excerpt: String,
}

/// A name a ThingsBoard gateway used, resolved to a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedDevice {
    /// The device.
    pub device: Device,
    /// Whether this call created it.
    pub created: bool,
}

/// How a device a gateway names is made on first sight
/// ([`crate::RegistryStore::device_by_name`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoCreate {
    /// Its ThingsBoard device profile (type).
    pub profile: String,
    /// The gateway that named it: the device is made a peripheral of that gateway only
    /// (`None`: a standalone device).
    pub gateway: Option<DeviceId>,
    /// When, epoch ms.
    pub now_ms: i64,
}

impl AutoCreate {
    /// The device to create as `id`, called `name` by its gateway.
    pub fn device(&self, tenant: TenantId, id: DeviceId, name: &str) -> Device {
        let (kind, peripheral_policy) = match &self.gateway {
            Some(g) => (
                DeviceKind::Peripheral,
                Some(PeripheralPolicy::SpecificGateway(g.clone())),
            ),
            None => (DeviceKind::Standalone, None),
        };
        Device {
            tenant,
            id,
            name: name.to_owned(),
            kind,
            peripheral_policy,
            tags: Vec::new(),
            profile: Some(self.profile.clone()),
            created_ms: self.now_ms,
            updated_ms: self.now_ms,
        }
    }
}

/// The name → id lookup key of a ThingsBoard device.
pub type NameKey = (TenantId, DeviceName);

/// A device's claim (ThingsBoard's device claiming): the window the device opened, and
/// who claimed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceClaim {
    /// Tenant.
    pub tenant: TenantId,
    /// Device.
    pub device: DeviceId,
    /// SHA-256 of the secret the device set for its window ([`crate::hash_secret`]; the
    /// empty secret when the device set none).
    pub secret_hash: String,
    /// Claims succeed until then, epoch ms; 0 when no window is open (never opened, or
    /// used by a claim).
    pub window_until_ms: i64,
    /// Who claimed it.
    pub owner: Option<String>,
    /// When, epoch ms.
    pub claimed_ms: Option<i64>,
}

/// What a claim attempt came to ([`crate::claim_device`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// Claimed now, by the caller.
    Claimed(DeviceClaim),
    /// The caller had already claimed it (ThingsBoard answers `CLAIMED`).
    AlreadyYours(DeviceClaim),
    /// Another owner holds it.
    Owned,
    /// No claiming window is open: the device never opened one, it expired, or a claim
    /// used it.
    NoWindow,
    /// The secret is not the one the device set.
    WrongSecret,
}

/// Where a device's client-side RPC stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientRpcStatus {
    /// Waiting for an application's answer.
    Pending,
    /// An application answered it.
    Answered,
    /// Nobody answered within its timeout; the device got an error reply.
    TimedOut,
}

impl ClientRpcStatus {
    /// Every status.
    pub const ALL: [ClientRpcStatus; 3] = [
        ClientRpcStatus::Pending,
        ClientRpcStatus::Answered,
        ClientRpcStatus::TimedOut,
    ];

    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientRpcStatus::Pending => "pending",
            ClientRpcStatus::Answered => "answered",
            ClientRpcStatus::TimedOut => "timed_out",
        }
    }

    /// The status named `s`.
    pub fn parse(s: &str) -> Option<Self> {
        ClientRpcStatus::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// A client-side RPC: a device's request to the server (ThingsBoard
/// `v1/devices/me/rpc/request/{id}`), for an application to answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientRpc {
    /// Its id (the id of the envelope that carried it).
    pub id: MessageId,
    /// Tenant.
    pub tenant: TenantId,
    /// The device that asked.
    pub device: DeviceId,
    /// The device's own id of the request, echoed in the answer's topic.
    pub request_id: fluxgate_model::CorrelationId,
    /// The method called.
    pub method: String,
    /// Its parameters.
    pub params: serde_json::Value,
    /// Where it stands.
    pub status: ClientRpcStatus,
    /// Received, epoch ms.
    pub created_ms: i64,
    /// Unanswered by then, it times out; epoch ms.
    pub deadline_ms: i64,
    /// Last status change, epoch ms.
    pub updated_ms: i64,
    /// The application's answer.
    pub answer: Option<serde_json::Value>,
}
