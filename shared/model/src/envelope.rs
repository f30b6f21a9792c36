//! The canonical envelope: what every inbound message becomes, whatever its dialect.
//!
//! One MQTT publish or HTTP request becomes one or more envelopes (a ThingsBoard gateway
//! message names many devices; each gets its own envelope so that each device's data is
//! keyed, partitioned and ordered by that device). Envelopes are serialized with
//! `serde_json`; the `v` field versions the format.
//!
//! ```text
//! {"v":1,"id":"018bcfe5...","part":0,"tenant":"app1","device":{"id":"dev1"},
//!  "dialect":"losant","channel":"mqtt","received_ms":1700000000000,
//!  "body":{"kind":"telemetry","samples":[{"ts_ms":1700000000000,"values":{"temp":21.5}}]}}
//! ```

use serde::{Deserialize, Serialize};

use crate::ids::{CorrelationId, DeviceId, DeviceName, MessageId, TenantId};
use crate::value::Values;

/// The envelope format version written by this crate.
pub const ENVELOPE_VERSION: u8 = 1;

/// Which device protocol a message was spoken in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dialect {
    /// Losant MQTT / REST.
    Losant,
    /// ThingsBoard MQTT device API, gateway API, or its REST counterparts.
    #[serde(rename = "thingsboard")]
    ThingsBoard,
}

/// How a message reached fluxgate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// An MQTT publish (any listener).
    Mqtt,
    /// An HTTP request to the API.
    Http,
    /// Made by fluxgate itself (presence events, answers computed by a service).
    Internal,
}

/// The device a message is about: a stable id, or — for devices behind a ThingsBoard
/// gateway, before the validator has resolved it — the name the gateway used.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceRef {
    /// A registered device's id.
    Id(DeviceId),
    /// A ThingsBoard device name, to be mapped to an id (auto-creating the device).
    Name(DeviceName),
}

impl DeviceRef {
    /// The id, when already resolved.
    pub fn id(&self) -> Option<&DeviceId> {
        match self {
            DeviceRef::Id(id) => Some(id),
            DeviceRef::Name(_) => None,
        }
    }

    /// The id or name as text.
    pub fn as_str(&self) -> &str {
        match self {
            DeviceRef::Id(id) => id.as_str(),
            DeviceRef::Name(n) => n.as_str(),
        }
    }
}

/// One timestamped set of values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Epoch milliseconds: as sent by the device, or the receive time when it sent none.
    pub ts_ms: i64,
    /// The values, by key.
    pub values: Values,
}

/// Which attribute keys of one scope a request asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeySelection {
    /// Every attribute of the scope.
    All,
    /// None of the scope.
    Nothing,
    /// These keys.
    Keys(Vec<String>),
}

/// How the answer to an attribute request must be shaped, so that the requesting client
/// recognises it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttributeReplyShape {
    /// Device API: `v1/devices/me/attributes/response/{id}`, `{"client":{..},"shared":{..}}`.
    Device,
    /// Gateway API, one key asked with `"key"`: `{"id","device","value"}`.
    GatewayValue,
    /// Gateway API, several keys: `{"id","device","values":{..}}`.
    GatewayValues,
}

/// Where a presence event was observed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// The front instance holding (or that held) the connection.
    pub front: String,
    /// The client's address as the front saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_addr: Option<String>,
}

/// A command or server-side RPC addressed to a device.
///
/// Losant commands (`name` + `payload`) and ThingsBoard RPC (`method` + `params`) are the
/// same thing: a named request with a JSON argument. `two_way` marks an RPC whose caller
/// waits for the device's reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// Losant command name / ThingsBoard RPC method.
    pub name: String,
    /// Losant command payload / ThingsBoard RPC params.
    #[serde(default)]
    pub payload: serde_json::Value,
    /// The command's own time (Losant `time`), epoch ms; the send time when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_ms: Option<i64>,
    /// The caller waits for a reply (ThingsBoard two-way RPC).
    #[serde(default)]
    pub two_way: bool,
    /// Kept and sent when the device (or its gateway) reconnects, until it expires.
    #[serde(default)]
    pub persistent: bool,
    /// Epoch ms after which the command is no longer sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<i64>,
}

/// What a message says. The `kind` tag names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Body {
    /// Time-series data: Losant state, ThingsBoard telemetry.
    Telemetry {
        /// One or more samples.
        samples: Vec<Sample>,
        /// Losant `flowVersion`: which workflow version the state should trigger.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        flow_version: Option<String>,
    },
    /// Client-side attributes reported by the device (ThingsBoard).
    Attributes {
        /// The attributes.
        values: Values,
    },
    /// The device is now connected: its own session, or a gateway announced it.
    Connect {
        /// ThingsBoard device type/profile given with a gateway `connect`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        profile: Option<String>,
        /// The session, for connections fluxgate itself observed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<SessionInfo>,
    },
    /// The device is no longer connected (or no longer behind the gateway).
    Disconnect {
        /// Why, when known (client disconnect, keepalive timeout, takeover...).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// The session, for connections fluxgate itself observed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<SessionInfo>,
    },
    /// The connection that reaches the device subscribed to the feed its commands come on
    /// (its own command or RPC topic, or a Losant gateway to a peripheral's): commands
    /// queued for it can be sent now (front -> dispatcher, after the device's connect).
    Subscribed,
    /// The connection that reaches the device subscribed to its shared-attribute updates
    /// (ThingsBoard `v1/devices/me/attributes`): the shared attributes changed while it
    /// was away can be pushed now (front -> dispatcher, after the device's connect).
    SubscribedAttributes,
    /// The device asks for attribute values.
    AttributeRequest {
        /// Echoed in the answer.
        request_id: CorrelationId,
        /// Client-scope keys asked for.
        client: KeySelection,
        /// Shared-scope keys asked for.
        shared: KeySelection,
        /// How to shape the answer.
        reply: AttributeReplyShape,
    },
    /// Client-side RPC: the device calls the server.
    RpcRequest {
        /// Echoed in the answer topic.
        request_id: CorrelationId,
        /// The method called.
        method: String,
        /// Its parameters.
        #[serde(default)]
        params: serde_json::Value,
    },
    /// The device's answer to a server-side RPC.
    RpcResponse {
        /// The RPC's id.
        request_id: CorrelationId,
        /// The answer.
        #[serde(default)]
        data: serde_json::Value,
    },
    /// The device starts the claiming process.
    Claim {
        /// Secret the claiming user must present (ThingsBoard default: empty).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secret_key: Option<String>,
        /// Claiming window in ms (ThingsBoard default: a system setting).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duration_ms: Option<u64>,
    },
    /// An application's answer to a device's client-side RPC ([`Body::RpcRequest`]), to
    /// send to the device (API -> dispatcher).
    RpcAnswer {
        /// The request's id ([`Envelope::id`] of its [`Body::RpcRequest`]).
        request: MessageId,
        /// The device's own id of the request, echoed in the answer topic.
        request_id: CorrelationId,
        /// The answer.
        #[serde(default)]
        data: serde_json::Value,
    },
    /// A command or RPC to send to the device.
    Command(Command),
    /// The front's report on a [`crate::Delivery`]: the client acknowledged it (PUBACK,
    /// QoS 1), it was written to a QoS 0 subscriber's connection (`at_most_once`), or it
    /// could not be delivered.
    DeliveryOutcome {
        /// The delivery's id ([`crate::Delivery::id`]).
        delivery: MessageId,
        /// Whether the client got it (QoS 1) or it was written to its connection (QoS 0).
        delivered: bool,
        /// Written at QoS 0: on its way, and never acknowledged. Absent in the records of
        /// fronts older than this field (they reported QoS 0 writes as `delivered`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        at_most_once: bool,
        /// Why not, when it did not.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}

/// The message kinds, without their data: for metrics labels and routing decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// [`Body::Telemetry`].
    Telemetry,
    /// [`Body::Attributes`].
    Attributes,
    /// [`Body::Connect`].
    Connect,
    /// [`Body::Disconnect`].
    Disconnect,
    /// [`Body::Subscribed`].
    Subscribed,
    /// [`Body::SubscribedAttributes`].
    SubscribedAttributes,
    /// [`Body::AttributeRequest`].
    AttributeRequest,
    /// [`Body::RpcRequest`].
    RpcRequest,
    /// [`Body::RpcResponse`].
    RpcResponse,
    /// [`Body::Claim`].
    Claim,
    /// [`Body::RpcAnswer`].
    RpcAnswer,
    /// [`Body::Command`].
    Command,
    /// [`Body::DeliveryOutcome`].
    DeliveryOutcome,
}

impl Kind {
    /// The snake_case name, as in the `kind` tag.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Telemetry => "telemetry",
            Kind::Attributes => "attributes",
            Kind::Connect => "connect",
            Kind::Disconnect => "disconnect",
            Kind::Subscribed => "subscribed",
            Kind::SubscribedAttributes => "subscribed_attributes",
            Kind::AttributeRequest => "attribute_request",
            Kind::RpcRequest => "rpc_request",
            Kind::RpcResponse => "rpc_response",
            Kind::Claim => "claim",
            Kind::RpcAnswer => "rpc_answer",
            Kind::Command => "command",
            Kind::DeliveryOutcome => "delivery_outcome",
        }
    }
}

impl Body {
    /// The kind of this body.
    pub fn kind(&self) -> Kind {
        match self {
            Body::Telemetry { .. } => Kind::Telemetry,
            Body::Attributes { .. } => Kind::Attributes,
            Body::Connect { .. } => Kind::Connect,
            Body::Disconnect { .. } => Kind::Disconnect,
            Body::Subscribed => Kind::Subscribed,
            Body::SubscribedAttributes => Kind::SubscribedAttributes,
            Body::AttributeRequest { .. } => Kind::AttributeRequest,
            Body::RpcRequest { .. } => Kind::RpcRequest,
            Body::RpcResponse { .. } => Kind::RpcResponse,
            Body::Claim { .. } => Kind::Claim,
            Body::RpcAnswer { .. } => Kind::RpcAnswer,
            Body::Command(_) => Kind::Command,
            Body::DeliveryOutcome { .. } => Kind::DeliveryOutcome,
        }
    }
}

/// The canonical message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Format version, [`ENVELOPE_VERSION`].
    pub v: u8,
    /// The inbound publish/request this came from.
    pub id: MessageId,
    /// Index of this envelope among those made from the same publish/request.
    #[serde(default)]
    pub part: u32,
    /// The tenant (application).
    pub tenant: TenantId,
    /// The device the message is about.
    pub device: DeviceRef,
    /// The gateway it came through, if not the device's own connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<DeviceId>,
    /// The dialect it was spoken in.
    pub dialect: Dialect,
    /// How it arrived.
    pub channel: Channel,
    /// Server receive time, epoch ms.
    pub received_ms: i64,
    /// What it says.
    pub body: Body,
}

/// The bus record key of everything about `device` ([`Envelope::key`]): whoever keeps
/// state per device key (a dispatcher's timers) finds the partition with it.
pub fn device_key(tenant: &TenantId, device: &DeviceId) -> String {
    key_of(tenant, device.as_str())
}

pub(crate) fn key_of(tenant: &TenantId, dev: &str) -> String {
    let mut k = String::with_capacity(tenant.as_str().len() + 1 + dev.len());
    k.push_str(tenant.as_str());
    k.push('/');
    k.push_str(dev);
    k
}

impl Envelope {
    /// The bus record key: `tenant/device` for everything about one device, so that one
    /// device's messages stay in order on one partition. A device still known only by the
    /// name its ThingsBoard gateway gave it is keyed by that gateway (`tenant/gateway`), which
    /// keeps the gateway's `connect` ahead of the device's first data; the validator re-keys
    /// by the resolved id.
    pub fn key(&self) -> String {
        let dev = match (&self.device, &self.via) {
            (DeviceRef::Id(id), _) => id.as_str(),
            (DeviceRef::Name(_), Some(gw)) => gw.as_str(),
            (DeviceRef::Name(n), None) => n.as_str(),
        };
        key_of(&self.tenant, dev)
    }

    /// Serializes to the JSON bytes put on the bus.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serializing these types cannot fail: all map keys are strings and non-finite
        // floats are written as null.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads an envelope from bus bytes, refusing unknown versions.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let env: Envelope = serde_json::from_slice(bytes)?;
        if env.v != ENVELOPE_VERSION {
            return Err(EnvelopeError::Version(env.v));
        }
        Ok(env)
    }
}

/// Why bus bytes are not an envelope.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// Not JSON, or not of the envelope's shape.
    #[error("not a fluxgate envelope: {0}")]
    Json(#[from] serde_json::Error),
    /// Written by a newer (or unknown) format version: upgrade this service.
    #[error(
        "envelope version {0} is not supported (this build reads version {ENVELOPE_VERSION}); upgrade the consumer"
    )]
    Version(u8),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Value;

    fn sample_env(body: Body) -> Envelope {
        Envelope {
            v: ENVELOPE_VERSION,
            id: MessageId::from_parts(1_700_000_000_000, 42),
            part: 0,
            tenant: TenantId::new("app1").unwrap(),
            device: DeviceRef::Id(DeviceId::new("dev1").unwrap()),
            via: None,
            dialect: Dialect::Losant,
            channel: Channel::Mqtt,
            received_ms: 1_700_000_000_000,
            body,
        }
    }

    #[test]
    fn every_body_kind_round_trips() {
        let mut values = Values::new();
        values.insert("temp", Value::Float(21.5));
        values.insert("n", Value::Integer(3));
        let bodies = vec![
            Body::Telemetry {
                samples: vec![Sample {
                    ts_ms: 1,
                    values: values.clone(),
                }],
                flow_version: Some("v2".into()),
            },
            Body::Attributes { values },
            Body::Connect {
                profile: Some("Sensor A".into()),
                session: Some(SessionInfo {
                    front: "front-0".into(),
                    remote_addr: Some("127.0.0.1:5555".into()),
                }),
            },
            Body::Disconnect {
                reason: Some("keepalive".into()),
                session: None,
            },
            Body::Subscribed,
            Body::SubscribedAttributes,
            Body::AttributeRequest {
                request_id: CorrelationId::Int(1),
                client: KeySelection::Keys(vec!["a".into()]),
                shared: KeySelection::All,
                reply: AttributeReplyShape::GatewayValues,
            },
            Body::RpcRequest {
                request_id: CorrelationId::Str("x".into()),
                method: "getSessionLimits".into(),
                params: serde_json::json!({}),
            },
            Body::RpcResponse {
                request_id: CorrelationId::Int(9),
                data: serde_json::json!({"ok": true}),
            },
            Body::Claim {
                secret_key: None,
                duration_ms: Some(60000),
            },
            Body::RpcAnswer {
                request: MessageId::from_parts(3, 4),
                request_id: CorrelationId::Int(2),
                data: serde_json::json!({"time": 1}),
            },
            Body::Command(Command {
                name: "set-temperature".into(),
                payload: serde_json::json!({"temperature": 72}),
                time_ms: Some(5),
                two_way: false,
                persistent: true,
                expires_ms: None,
            }),
            Body::DeliveryOutcome {
                delivery: MessageId::from_parts(1, 2),
                delivered: false,
                at_most_once: false,
                reason: Some("no subscription".into()),
            },
            Body::DeliveryOutcome {
                delivery: MessageId::from_parts(1, 3),
                delivered: true,
                at_most_once: true,
                reason: None,
            },
        ];
        for body in bodies {
            let kind = body.kind();
            let env = sample_env(body);
            let bytes = env.to_bytes();
            let text = String::from_utf8(bytes.clone()).unwrap();
            assert!(
                text.contains(&format!("\"kind\":\"{}\"", kind.as_str())),
                "{text}"
            );
            assert_eq!(Envelope::from_bytes(&bytes).unwrap(), env);
        }
    }

    #[test]
    fn keys_partition_by_device() {
        let mut env = sample_env(Body::Attributes {
            values: Values::new(),
        });
        assert_eq!(env.key(), "app1/dev1");
        env.device = DeviceRef::Name(DeviceName::new("Device A").unwrap());
        env.via = Some(DeviceId::new("gw1").unwrap());
        assert_eq!(env.key(), "app1/gw1");
    }

    #[test]
    fn unknown_versions_are_refused() {
        let mut env = sample_env(Body::Claim {
            secret_key: None,
            duration_ms: None,
        });
        env.v = 2;
        let err = Envelope::from_bytes(&env.to_bytes()).unwrap_err();
        assert!(matches!(err, EnvelopeError::Version(2)));
        assert!(Envelope::from_bytes(b"{}").is_err());
    }
}
