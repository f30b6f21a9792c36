//! Normalization: a classified publish plus its payload becomes canonical envelopes.
//!
//! [`normalize`] is the one entry point the MQTT front (and the API, for REST state) calls
//! after [`crate::classify_publish`] and the [`crate::Check`] it asked for. It is pure and
//! total: every input gives envelopes or a [`Reject`], never a panic.

use crate::envelope::{Body, Channel, DeviceRef, ENVELOPE_VERSION, Envelope};
use crate::ids::{DeviceId, MessageId, TenantId};
use crate::limits::Limits;
use crate::reject::Reject;
use crate::thingsboard::{device, gateway};
use crate::topic::{Principal, PublishOp};
use crate::{Sample, losant};

/// Everything about an inbound message except its payload.
#[derive(Debug, Clone, Copy)]
pub struct Ingress<'a> {
    /// The tenant the principal belongs to.
    pub tenant: &'a TenantId,
    /// Who sent it.
    pub principal: &'a Principal,
    /// How it arrived.
    pub channel: Channel,
    /// Id of this publish/request.
    pub id: MessageId,
    /// Server receive time, epoch ms.
    pub received_ms: i64,
    /// Limits to enforce.
    pub limits: &'a Limits,
}

impl Ingress<'_> {
    fn envelope(
        &self,
        part: u32,
        device: DeviceRef,
        via: Option<DeviceId>,
        body: Body,
    ) -> Envelope {
        Envelope {
            v: ENVELOPE_VERSION,
            id: self.id,
            part,
            tenant: self.tenant.clone(),
            device,
            via,
            dialect: self.principal.dialect(),
            channel: self.channel,
            received_ms: self.received_ms,
            body,
        }
    }

    /// An envelope about the connected device itself.
    fn own(&self, body: Body) -> Vec<Envelope> {
        vec![self.envelope(
            0,
            DeviceRef::Id(self.principal.device().clone()),
            None,
            body,
        )]
    }

    /// Envelopes about devices behind the connected gateway, one per device.
    fn behind<T>(
        &self,
        items: Vec<(crate::DeviceName, T)>,
        body: impl Fn(T) -> Body,
    ) -> Vec<Envelope> {
        let gw = self.principal.device();
        items
            .into_iter()
            .enumerate()
            .map(|(i, (name, t))| {
                self.envelope(i as u32, DeviceRef::Name(name), Some(gw.clone()), body(t))
            })
            .collect()
    }
}

fn telemetry(samples: Vec<Sample>) -> Body {
    Body::Telemetry {
        samples,
        flow_version: None,
    }
}

/// Turns a platform publish into envelopes.
pub fn normalize(
    ing: &Ingress<'_>,
    op: &PublishOp,
    payload: &[u8],
) -> Result<Vec<Envelope>, Reject> {
    let (l, now) = (ing.limits, ing.received_ms);
    Ok(match op {
        PublishOp::LosantState { device } => {
            let s = losant::parse_state(payload, now, l)?;
            let me = ing.principal.device();
            let via = (device != me).then(|| me.clone());
            let body = Body::Telemetry {
                samples: vec![s.sample],
                flow_version: s.flow_version,
            };
            vec![ing.envelope(0, DeviceRef::Id(device.clone()), via, body)]
        }
        PublishOp::TbTelemetry => ing.own(telemetry(device::parse_telemetry(payload, now, l)?)),
        PublishOp::TbAttributes => ing.own(Body::Attributes {
            values: device::parse_attributes(payload, l)?,
        }),
        PublishOp::TbAttributeRequest { request_id } => {
            let r = device::parse_attribute_request(payload, l)?;
            ing.own(Body::AttributeRequest {
                request_id: request_id.clone(),
                client: r.client,
                shared: r.shared,
                reply: crate::AttributeReplyShape::Device,
            })
        }
        PublishOp::TbRpcRequest { request_id } => {
            let r = device::parse_rpc_request(payload, l)?;
            ing.own(Body::RpcRequest {
                request_id: request_id.clone(),
                method: r.method,
                params: r.params,
            })
        }
        PublishOp::TbRpcResponse { request_id } => ing.own(Body::RpcResponse {
            request_id: request_id.clone(),
            data: device::parse_rpc_response(payload, l)?,
        }),
        PublishOp::TbClaim => {
            let c = device::parse_claim(payload, l)?;
            ing.own(Body::Claim {
                secret_key: c.secret_key,
                duration_ms: c.duration_ms,
            })
        }
        PublishOp::GatewayConnect => {
            let c = gateway::parse_connect(payload, l)?;
            ing.behind(vec![(c.device, c.profile)], |profile| Body::Connect {
                profile: Some(profile),
                session: None,
            })
        }
        PublishOp::GatewayDisconnect => {
            let d = gateway::parse_disconnect(payload, l)?;
            ing.behind(vec![(d, ())], |()| Body::Disconnect {
                reason: Some("gateway announced disconnect".into()),
                session: None,
            })
        }
        PublishOp::GatewayAttributes => ing
            .behind(gateway::parse_attributes(payload, l)?, |values| {
                Body::Attributes { values }
            }),
        PublishOp::GatewayAttributeRequest => {
            let r = gateway::parse_attribute_request(payload, l)?;
            let body = Body::AttributeRequest {
                request_id: r.id,
                client: r.client,
                shared: r.shared,
                reply: r.reply,
            };
            ing.behind(vec![(r.device, body)], |b| b)
        }
        PublishOp::GatewayTelemetry => {
            ing.behind(gateway::parse_telemetry(payload, now, l)?, telemetry)
        }
        PublishOp::GatewayRpc => {
            let r = gateway::parse_rpc_reply(payload, l)?;
            let body = Body::RpcResponse {
                request_id: r.id,
                data: r.data,
            };
            ing.behind(vec![(r.device, body)], |b| b)
        }
        PublishOp::GatewayClaim => ing.behind(gateway::parse_claim(payload, l)?, |c| Body::Claim {
            secret_key: c.secret_key,
            duration_ms: c.duration_ms,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        AttributeReplyShape, Check, CorrelationId, DeviceName, Dialect, KeySelection,
        PublishTarget, ReasonCode, Value, classify_publish,
    };

    const NOW: i64 = 1_700_000_000_000;

    fn run(principal: &Principal, topic: &str, payload: &str) -> Result<Vec<Envelope>, Reject> {
        let tenant = TenantId::new("app").unwrap();
        let limits = Limits::default();
        let class = classify_publish(principal, topic)?;
        let PublishTarget::Platform(op) = class.target else {
            panic!("custom topic {topic}");
        };
        let ing = Ingress {
            tenant: &tenant,
            principal,
            channel: Channel::Mqtt,
            id: MessageId::from_parts(NOW as u64, 1),
            received_ms: NOW,
            limits: &limits,
        };
        normalize(&ing, &op, payload.as_bytes())
    }

    fn id(s: &str) -> DeviceId {
        DeviceId::new(s).unwrap()
    }

    #[test]
    fn losant_state_from_device_and_for_peripheral() {
        let dev = Principal::Losant {
            device: id("d1"),
            gateway: false,
        };
        let e = run(
            &dev,
            "losant/d1/state",
            r#"{"data": {"temperature": 72}, "time": 1478288526710}"#,
        )
        .unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].device, DeviceRef::Id(id("d1")));
        assert_eq!(e[0].via, None);
        assert_eq!(e[0].dialect, Dialect::Losant);
        assert_eq!(e[0].key(), "app/d1");
        let Body::Telemetry { samples, .. } = &e[0].body else {
            panic!()
        };
        assert_eq!(samples[0].ts_ms, 1_478_288_526_710);

        let gw = Principal::Losant {
            device: id("gw"),
            gateway: true,
        };
        let c = classify_publish(&gw, "losant/p1/state").unwrap();
        assert!(matches!(c.check, Check::Peripheral { .. }));
        let e = run(&gw, "losant/p1/state", r#"{"data": {"temperature": 72}}"#).unwrap();
        assert_eq!(e[0].device, DeviceRef::Id(id("p1")));
        assert_eq!(e[0].via, Some(id("gw")));
        assert_eq!(e[0].key(), "app/p1");
    }

    #[test]
    fn thingsboard_device_messages() {
        let d = Principal::ThingsBoard {
            device: id("t1"),
            gateway: false,
        };
        let e = run(
            &d,
            "v1/devices/me/telemetry",
            r#"[{"ts": 1, "values": {"a": 1}}, {"b": 2}]"#,
        )
        .unwrap();
        let Body::Telemetry { samples, .. } = &e[0].body else {
            panic!()
        };
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[1].ts_ms, NOW);

        let e = run(&d, "v1/devices/me/attributes", r#"{"fw": "1.2"}"#).unwrap();
        assert_eq!(
            e[0].body,
            Body::Attributes {
                values: [("fw".to_string(), Value::from("1.2"))].into()
            }
        );

        let e = run(
            &d,
            "v1/devices/me/attributes/request/3",
            r#"{"clientKeys": "fw"}"#,
        )
        .unwrap();
        assert_eq!(
            e[0].body,
            Body::AttributeRequest {
                request_id: CorrelationId::Int(3),
                client: KeySelection::Keys(vec!["fw".into()]),
                shared: KeySelection::Nothing,
                reply: AttributeReplyShape::Device,
            }
        );
        let e = run(
            &d,
            "v1/devices/me/rpc/request/4",
            r#"{"method": "getSessionLimits", "params": {}}"#,
        )
        .unwrap();
        assert!(
            matches!(&e[0].body, Body::RpcRequest { method, .. } if method == "getSessionLimits")
        );
        let e = run(&d, "v1/devices/me/rpc/response/5", r#"{"result": "ok"}"#).unwrap();
        assert!(matches!(
            &e[0].body,
            Body::RpcResponse {
                request_id: CorrelationId::Int(5),
                ..
            }
        ));
        let e = run(&d, "v1/devices/me/claim", r#"{"secretKey": "s"}"#).unwrap();
        assert!(
            matches!(&e[0].body, Body::Claim { secret_key: Some(s), duration_ms: None } if s == "s")
        );
    }

    #[test]
    fn thingsboard_gateway_messages_split_per_device() {
        let g = Principal::ThingsBoard {
            device: id("gw"),
            gateway: true,
        };
        let e = run(
            &g,
            "v1/gateway/telemetry",
            r#"{"A": [{"ts": 1, "values": {"t": 1}}], "B": {"t": 2}}"#,
        )
        .unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].device, DeviceRef::Name(DeviceName::new("A").unwrap()));
        assert_eq!(e[1].device, DeviceRef::Name(DeviceName::new("B").unwrap()));
        assert_eq!((e[0].part, e[1].part), (0, 1));
        assert!(
            e.iter()
                .all(|e| e.via == Some(id("gw")) && e.key() == "app/gw")
        );

        let e = run(&g, "v1/gateway/connect", r#"{"device": "A"}"#).unwrap();
        assert_eq!(
            e[0].body,
            Body::Connect {
                profile: Some("default".into()),
                session: None
            }
        );
        let e = run(&g, "v1/gateway/disconnect", r#"{"device": "A"}"#).unwrap();
        assert!(matches!(e[0].body, Body::Disconnect { .. }));
        let e = run(
            &g,
            "v1/gateway/attributes",
            r#"{"A": {"x": 1}, "B": {"y": 2}}"#,
        )
        .unwrap();
        assert_eq!(e.len(), 2);
        let e = run(
            &g,
            "v1/gateway/attributes/request",
            r#"{"id": 1, "device": "A", "client": true, "key": "x"}"#,
        )
        .unwrap();
        assert!(matches!(
            e[0].body,
            Body::AttributeRequest {
                reply: AttributeReplyShape::GatewayValue,
                ..
            }
        ));
        let e = run(
            &g,
            "v1/gateway/rpc",
            r#"{"device": "A", "id": 1, "data": {"success": true}}"#,
        )
        .unwrap();
        assert!(matches!(e[0].body, Body::RpcResponse { .. }));
        assert_eq!(e[0].device.as_str(), "A");
        let e = run(
            &g,
            "v1/gateway/claim",
            r#"{"A": {}, "B": {"durationMs": 5}}"#,
        )
        .unwrap();
        assert_eq!(e.len(), 2);
        // The gateway's own telemetry is about the gateway.
        let e = run(&g, "v1/devices/me/telemetry", r#"{"cpu": 5}"#).unwrap();
        assert_eq!(e[0].device, DeviceRef::Id(id("gw")));
    }

    #[test]
    fn errors_carry_reasons() {
        let d = Principal::ThingsBoard {
            device: id("t1"),
            gateway: false,
        };
        assert_eq!(
            run(&d, "v1/devices/me/telemetry", "{").unwrap_err().code(),
            ReasonCode::MalformedJson
        );
        assert_eq!(
            run(&d, "v1/gateway/telemetry", "{}").unwrap_err().code(),
            ReasonCode::TopicNotAllowed
        );
        let r = run(&d, "v1/devices/me/telemetry", "{oops").unwrap_err();
        assert!(r.is_payload_format());
    }

    #[test]
    fn envelopes_survive_the_bus() {
        let g = Principal::ThingsBoard {
            device: id("gw"),
            gateway: true,
        };
        for e in run(
            &g,
            "v1/gateway/telemetry",
            r#"{"A": [{"ts": 1, "values": {"t": 1.5, "s": "x", "o": {"k": [1]}}}]}"#,
        )
        .unwrap()
        {
            assert_eq!(Envelope::from_bytes(&e.to_bytes()).unwrap(), e);
        }
    }
}
