//! Deliveries: what fluxgate sends *to* devices, and how each is rendered on the wire.
//!
//! The command dispatcher publishes [`Delivery`] records on `fluxgate.deliveries`; the front
//! that holds the target connection ([`Delivery::connection`]: the device's own, or its
//! gateway's) renders them with [`Delivery::render`] into an MQTT topic and payload in the
//! target's dialect — a Losant command, a ThingsBoard device-API message, or a gateway-API
//! message naming the device behind the gateway.

use serde::{Deserialize, Serialize};

use crate::envelope::{AttributeReplyShape, Dialect, ENVELOPE_VERSION};
use crate::ids::{CorrelationId, DeviceId, DeviceName, MessageId, TenantId};
use crate::losant;
use crate::thingsboard::{device, gateway};
use crate::topic::Subscription;
use crate::value::Values;

/// What is sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outbound {
    /// A Losant command, or a ThingsBoard server-side RPC (`name` = method,
    /// `payload` = params, `request_id` = RPC id).
    Command {
        /// The RPC id (ThingsBoard); unused by Losant.
        request_id: CorrelationId,
        /// Command name / RPC method.
        name: String,
        /// Command payload / RPC params.
        #[serde(default)]
        payload: serde_json::Value,
        /// Command time (Losant `time`), epoch ms.
        time_ms: i64,
    },
    /// The answer to a client-side RPC (ThingsBoard device API).
    RpcResponse {
        /// The device's request id.
        request_id: CorrelationId,
        /// The answer.
        #[serde(default)]
        data: serde_json::Value,
    },
    /// The answer to an attribute request.
    AttributeResponse {
        /// The device's request id.
        request_id: CorrelationId,
        /// The answer's shape, as the request dictated.
        reply: AttributeReplyShape,
        /// Client-scope values found.
        client: Values,
        /// Shared-scope values found.
        shared: Values,
    },
    /// Shared attributes changed.
    SharedAttributes {
        /// The changed values.
        values: Values,
    },
}

/// A message for one device, routed to the connection that can reach it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// Format version, [`ENVELOPE_VERSION`].
    pub v: u8,
    /// Id of this delivery (the command id for commands); delivery outcomes refer to it.
    pub id: MessageId,
    /// The tenant.
    pub tenant: TenantId,
    /// The target device.
    pub device: DeviceId,
    /// The name a ThingsBoard gateway knows the device by (needed when `via` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_name: Option<DeviceName>,
    /// Deliver on this gateway's connection instead of the device's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<DeviceId>,
    /// The target's dialect.
    pub dialect: Dialect,
    /// What to send.
    pub body: Outbound,
}

/// An MQTT message ready to publish to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The topic.
    pub topic: String,
    /// The payload.
    pub payload: Vec<u8>,
    /// The subscription a client needs to receive it.
    pub feed: Subscription,
}

/// Why a delivery cannot be put on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RenderError {
    /// The dialect has no such message (e.g. attribute answers in Losant).
    #[error("{dialect:?} has no way to send a {what} (through a gateway: {via_gateway})")]
    NotInDialect {
        /// The target's dialect.
        dialect: Dialect,
        /// The kind of message.
        what: &'static str,
        /// Whether it was to go through a gateway.
        via_gateway: bool,
    },
    /// A delivery through a ThingsBoard gateway lacks the device's name.
    #[error("delivery through gateway {0} has no device name")]
    MissingDeviceName(DeviceId),
}

impl Delivery {
    /// The device whose connection carries this delivery: the gateway's, or the device's.
    pub fn connection(&self) -> &DeviceId {
        self.via.as_ref().unwrap_or(&self.device)
    }

    /// Serializes to the JSON bytes put on the bus.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a delivery from bus bytes, refusing unknown versions.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, crate::EnvelopeError> {
        let d: Delivery = serde_json::from_slice(bytes)?;
        if d.v != ENVELOPE_VERSION {
            return Err(crate::EnvelopeError::Version(d.v));
        }
        Ok(d)
    }

    /// Renders the MQTT topic and payload the target client expects.
    pub fn render(&self) -> Result<Rendered, RenderError> {
        let not = |what| RenderError::NotInDialect {
            dialect: self.dialect,
            what,
            via_gateway: self.via.is_some(),
        };
        let ok = |topic: String, payload: Vec<u8>, feed| {
            Ok(Rendered {
                topic,
                payload,
                feed,
            })
        };
        match (self.dialect, &self.via, &self.body) {
            // Losant: commands only, on the target's own command topic, which a gateway
            // subscribes to for its peripherals.
            (
                Dialect::Losant,
                _,
                Outbound::Command {
                    name,
                    payload,
                    time_ms,
                    ..
                },
            ) => ok(
                losant::command_topic(&self.device),
                losant::encode_command(name, payload, *time_ms),
                Subscription::LosantCommands {
                    device: self.device.clone(),
                },
            ),
            (Dialect::Losant, _, Outbound::RpcResponse { .. }) => Err(not("RPC response")),
            (Dialect::Losant, _, Outbound::AttributeResponse { .. }) => {
                Err(not("attribute response"))
            }
            (Dialect::Losant, _, Outbound::SharedAttributes { .. }) => {
                Err(not("shared-attribute update"))
            }

            (Dialect::ThingsBoard, None, body) => match body {
                Outbound::Command {
                    request_id,
                    name,
                    payload,
                    ..
                } => ok(
                    device::rpc_request_topic(request_id),
                    device::encode_rpc_request(name, payload),
                    Subscription::TbRpcRequests,
                ),
                Outbound::RpcResponse { request_id, data } => ok(
                    device::rpc_response_topic(request_id),
                    device::encode_rpc_response(data),
                    Subscription::TbRpcResponses,
                ),
                Outbound::AttributeResponse {
                    request_id,
                    client,
                    shared,
                    ..
                } => ok(
                    device::attribute_response_topic(request_id),
                    device::encode_attribute_response(client, shared),
                    Subscription::TbAttributeResponses,
                ),
                Outbound::SharedAttributes { values } => ok(
                    device::ATTRIBUTES_TOPIC.to_owned(),
                    device::encode_attributes(values),
                    Subscription::TbAttributeUpdates,
                ),
            },

            (Dialect::ThingsBoard, Some(gw), body) => {
                let name = self
                    .device_name
                    .as_ref()
                    .ok_or_else(|| RenderError::MissingDeviceName(gw.clone()))?;
                match body {
                    Outbound::Command {
                        request_id,
                        name: method,
                        payload,
                        ..
                    } => ok(
                        gateway::RPC_TOPIC.to_owned(),
                        gateway::encode_rpc_request(name, request_id, method, payload),
                        Subscription::GatewayRpc,
                    ),
                    Outbound::RpcResponse { .. } => Err(not("client-side RPC response")),
                    Outbound::AttributeResponse {
                        request_id,
                        reply,
                        client,
                        shared,
                    } => {
                        let mut values = client.clone();
                        values.extend(shared.clone());
                        ok(
                            gateway::ATTRIBUTE_RESPONSE_TOPIC.to_owned(),
                            gateway::encode_attribute_response(request_id, name, *reply, &values),
                            Subscription::GatewayAttributeResponses,
                        )
                    }
                    Outbound::SharedAttributes { values } => ok(
                        gateway::ATTRIBUTES_TOPIC.to_owned(),
                        gateway::encode_shared_attributes(name, values),
                        Subscription::GatewayAttributeUpdates,
                    ),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Value;

    fn delivery(dialect: Dialect, via: Option<&str>, body: Outbound) -> Delivery {
        Delivery {
            v: ENVELOPE_VERSION,
            id: MessageId::from_parts(1, 2),
            tenant: TenantId::new("app").unwrap(),
            device: DeviceId::new("dev").unwrap(),
            device_name: Some(DeviceName::new("Device A").unwrap()),
            via: via.map(|v| DeviceId::new(v).unwrap()),
            dialect,
            body,
        }
    }

    fn cmd() -> Outbound {
        Outbound::Command {
            request_id: CorrelationId::Int(7),
            name: "set".into(),
            payload: serde_json::json!({"x": 1}),
            time_ms: 1_478_288_526_710,
        }
    }

    fn json(b: &[u8]) -> serde_json::Value {
        serde_json::from_slice(b).unwrap()
    }

    #[test]
    fn losant_command_to_device_or_through_gateway() {
        for via in [None, Some("gw")] {
            let d = delivery(Dialect::Losant, via, cmd());
            let r = d.render().unwrap();
            assert_eq!(r.topic, "losant/dev/command");
            assert_eq!(
                json(&r.payload),
                serde_json::json!({"name": "set", "payload": {"x": 1}, "time": {"$date": "2016-11-04T19:42:06.710Z"}})
            );
            assert_eq!(d.connection().as_str(), via.unwrap_or("dev"));
        }
        let d = delivery(
            Dialect::Losant,
            None,
            Outbound::SharedAttributes {
                values: Values::new(),
            },
        );
        assert!(matches!(d.render(), Err(RenderError::NotInDialect { .. })));
    }

    #[test]
    fn thingsboard_device_api_rendering() {
        let r = delivery(Dialect::ThingsBoard, None, cmd())
            .render()
            .unwrap();
        assert_eq!(r.topic, "v1/devices/me/rpc/request/7");
        assert_eq!(
            json(&r.payload),
            serde_json::json!({"method": "set", "params": {"x": 1}})
        );
        assert_eq!(r.feed, Subscription::TbRpcRequests);

        let r = delivery(
            Dialect::ThingsBoard,
            None,
            Outbound::RpcResponse {
                request_id: CorrelationId::Int(3),
                data: serde_json::json!({"maxPayloadSize": 262144}),
            },
        )
        .render()
        .unwrap();
        assert_eq!(r.topic, "v1/devices/me/rpc/response/3");

        let client: Values = [("a".to_string(), Value::Integer(1))].into();
        let shared: Values = [("s".to_string(), Value::Bool(true))].into();
        let r = delivery(
            Dialect::ThingsBoard,
            None,
            Outbound::AttributeResponse {
                request_id: CorrelationId::Int(1),
                reply: AttributeReplyShape::Device,
                client: client.clone(),
                shared: shared.clone(),
            },
        )
        .render()
        .unwrap();
        assert_eq!(r.topic, "v1/devices/me/attributes/response/1");
        assert_eq!(
            json(&r.payload),
            serde_json::json!({"client": {"a": 1}, "shared": {"s": true}})
        );

        let r = delivery(
            Dialect::ThingsBoard,
            None,
            Outbound::SharedAttributes { values: shared },
        )
        .render()
        .unwrap();
        assert_eq!(r.topic, "v1/devices/me/attributes");
        assert_eq!(json(&r.payload), serde_json::json!({"s": true}));
    }

    #[test]
    fn thingsboard_gateway_api_rendering() {
        let r = delivery(Dialect::ThingsBoard, Some("gw"), cmd())
            .render()
            .unwrap();
        assert_eq!(r.topic, "v1/gateway/rpc");
        assert_eq!(
            json(&r.payload),
            serde_json::json!({"device": "Device A", "data": {"id": 7, "method": "set", "params": {"x": 1}}})
        );
        let values: Values = [("fw".to_string(), Value::from("1.0"))].into();
        let r = delivery(
            Dialect::ThingsBoard,
            Some("gw"),
            Outbound::AttributeResponse {
                request_id: CorrelationId::Int(2),
                reply: AttributeReplyShape::GatewayValue,
                client: values.clone(),
                shared: Values::new(),
            },
        )
        .render()
        .unwrap();
        assert_eq!(r.topic, "v1/gateway/attributes/response");
        assert_eq!(
            json(&r.payload),
            serde_json::json!({"id": 2, "device": "Device A", "value": "1.0"})
        );
        let r = delivery(
            Dialect::ThingsBoard,
            Some("gw"),
            Outbound::SharedAttributes { values },
        )
        .render()
        .unwrap();
        assert_eq!(r.topic, "v1/gateway/attributes");
        assert_eq!(
            json(&r.payload),
            serde_json::json!({"device": "Device A", "data": {"fw": "1.0"}})
        );

        let mut d = delivery(Dialect::ThingsBoard, Some("gw"), cmd());
        d.device_name = None;
        assert!(matches!(d.render(), Err(RenderError::MissingDeviceName(_))));
        let d = delivery(
            Dialect::ThingsBoard,
            Some("gw"),
            Outbound::RpcResponse {
                request_id: CorrelationId::Int(1),
                data: serde_json::Value::Null,
            },
        );
        assert!(d.render().is_err());
    }

    #[test]
    fn deliveries_survive_the_bus() {
        let d = delivery(Dialect::ThingsBoard, Some("gw"), cmd());
        assert_eq!(Delivery::from_bytes(&d.to_bytes()).unwrap(), d);
    }
}
