//! The topic classifier: given who is connected and a topic, what the publish or subscribe
//! means, whether it is a plain pub/sub ("custom") topic, or that it is refused.
//!
//! Pure: checks that need the registry (may this gateway act for that peripheral? may this
//! key use custom topics?) are not made here but returned as a [`Check`] the caller must
//! perform before acting.
//!
//! Namespaces: every topic starting with `losant` belongs to the Losant dialect and every
//! topic starting with `v1/` to the ThingsBoard dialect (Losant: "a Losant topic is anything
//! that starts with losant"). A client may use only its own dialect's namespace; all other
//! topics are custom.

use crate::Dialect;
use crate::ids::{CorrelationId, DeviceId};
use crate::reject::Reject;

/// Who is on the other end of a connection, as established at CONNECT.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    /// A Losant device (client id = device id) or gateway.
    Losant {
        /// The connected device.
        device: DeviceId,
        /// The device is a gateway and may act for peripherals that allow it.
        gateway: bool,
    },
    /// A ThingsBoard device authenticated by its access token, or a gateway.
    ThingsBoard {
        /// The connected device.
        device: DeviceId,
        /// The device is a gateway and may use the gateway API.
        gateway: bool,
    },
}

impl Principal {
    /// The connected device's id.
    pub fn device(&self) -> &DeviceId {
        match self {
            Principal::Losant { device, .. } | Principal::ThingsBoard { device, .. } => device,
        }
    }

    /// Whether the principal is a gateway.
    pub fn is_gateway(&self) -> bool {
        match self {
            Principal::Losant { gateway, .. } | Principal::ThingsBoard { gateway, .. } => *gateway,
        }
    }

    /// The dialect the principal speaks.
    pub fn dialect(&self) -> Dialect {
        match self {
            Principal::Losant { .. } => Dialect::Losant,
            Principal::ThingsBoard { .. } => Dialect::ThingsBoard,
        }
    }
}

/// A registry check the caller must pass before acting on a classified topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Nothing more to check.
    None,
    /// The peripheral must allow this gateway ("any gateway", or "specific gateway" naming
    /// it). Refuse with [`Reject::PeripheralNotAllowed`] otherwise.
    Peripheral {
        /// The connected gateway.
        gateway: DeviceId,
        /// The device it wants to act for.
        peripheral: DeviceId,
    },
    /// The credentials must allow custom (non-platform) topics.
    CustomTopics,
}

/// What a platform publish is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishOp {
    /// `losant/{device}/state` (also `losant/{device}`, as in seed 000's gateway example).
    LosantState {
        /// The device the state is for: the publisher or one of its peripherals.
        device: DeviceId,
    },
    /// `v1/devices/me/telemetry`.
    TbTelemetry,
    /// `v1/devices/me/attributes`: client attributes.
    TbAttributes,
    /// `v1/devices/me/attributes/request/{id}`.
    TbAttributeRequest {
        /// The `{id}` level.
        request_id: CorrelationId,
    },
    /// `v1/devices/me/rpc/request/{id}`: client-side RPC.
    TbRpcRequest {
        /// The `{id}` level.
        request_id: CorrelationId,
    },
    /// `v1/devices/me/rpc/response/{id}`: answer to a server-side RPC.
    TbRpcResponse {
        /// The `{id}` level.
        request_id: CorrelationId,
    },
    /// `v1/devices/me/claim`.
    TbClaim,
    /// `v1/gateway/connect`.
    GatewayConnect,
    /// `v1/gateway/disconnect`.
    GatewayDisconnect,
    /// `v1/gateway/attributes`.
    GatewayAttributes,
    /// `v1/gateway/attributes/request`.
    GatewayAttributeRequest,
    /// `v1/gateway/telemetry`.
    GatewayTelemetry,
    /// `v1/gateway/rpc`: the gateway's answer to an RPC.
    GatewayRpc,
    /// `v1/gateway/claim`.
    GatewayClaim,
}

/// What a publish topic is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishTarget {
    /// A platform message, to normalize with [`crate::normalize`].
    Platform(PublishOp),
    /// A plain pub/sub topic.
    Custom,
}

/// A classified publish: what it is and what must still be checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishClass {
    /// What it is.
    pub target: PublishTarget,
    /// The registry check to pass first.
    pub check: Check,
}

/// A platform feed a client can subscribe to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subscription {
    /// `losant/{device}/command`.
    LosantCommands {
        /// Whose commands: the subscriber's own or a peripheral's.
        device: DeviceId,
    },
    /// `v1/devices/me/rpc/request/+`: server-side RPC requests.
    TbRpcRequests,
    /// `v1/devices/me/rpc/response/+`: answers to client-side RPC.
    TbRpcResponses,
    /// `v1/devices/me/attributes`: shared-attribute updates.
    TbAttributeUpdates,
    /// `v1/devices/me/attributes/response/+`: answers to attribute requests.
    TbAttributeResponses,
    /// `v1/gateway/rpc`.
    GatewayRpc,
    /// `v1/gateway/attributes`: shared-attribute updates of devices behind the gateway.
    GatewayAttributeUpdates,
    /// `v1/gateway/attributes/response`.
    GatewayAttributeResponses,
}

/// What a subscription filter is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscribeTarget {
    /// A platform feed.
    Platform(Subscription),
    /// A plain pub/sub filter (wildcards allowed).
    Custom,
}

/// A classified subscription: what it is and what must still be checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeClass {
    /// What it is.
    pub target: SubscribeTarget,
    /// The registry check to pass first.
    pub check: Check,
}

fn in_losant_namespace(topic: &str) -> bool {
    topic.starts_with("losant")
}

fn in_tb_namespace(topic: &str) -> bool {
    topic == "v1" || topic.starts_with("v1/")
}

fn not_allowed(topic: &str) -> Reject {
    Reject::TopicNotAllowed {
        topic: shown(topic),
    }
}

fn unknown(topic: &str) -> Reject {
    Reject::UnknownTopic {
        topic: shown(topic),
    }
}

/// Topics in rejections are cut to a readable length.
fn shown(topic: &str) -> String {
    const MAX: usize = 200;
    if topic.len() <= MAX {
        return topic.to_owned();
    }
    let mut end = MAX;
    while !topic.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &topic[..end])
}

fn custom(topic: &str, is_filter: bool) -> Result<Check, Reject> {
    let bad_wildcard = !is_filter && (topic.contains('+') || topic.contains('#'));
    if topic.is_empty() || topic.starts_with('$') || topic.contains('\0') || bad_wildcard {
        return Err(not_allowed(topic));
    }
    Ok(Check::CustomTopics)
}

/// A `losant/{id}/...` level that names a device acted on by `principal`: its own id needs
/// no check, a gateway's peripheral needs [`Check::Peripheral`], anything else is refused.
fn losant_target(
    principal: &Principal,
    level: &str,
    topic: &str,
) -> Result<(DeviceId, Check), Reject> {
    let me = principal.device();
    if level == me.as_str() {
        return Ok((me.clone(), Check::None));
    }
    if !principal.is_gateway() {
        return Err(not_allowed(topic));
    }
    let peripheral = DeviceId::new(level).map_err(|_| not_allowed(topic))?;
    Ok((
        peripheral.clone(),
        Check::Peripheral {
            gateway: me.clone(),
            peripheral,
        },
    ))
}

fn request_id(level: &str, topic: &str) -> Result<CorrelationId, Reject> {
    if level.is_empty() || level.contains(['+', '#']) {
        return Err(not_allowed(topic));
    }
    Ok(CorrelationId::from_topic_level(level))
}

/// Classifies a PUBLISH topic for `principal`.
pub fn classify_publish(principal: &Principal, topic: &str) -> Result<PublishClass, Reject> {
    let platform = |op, check| {
        Ok(PublishClass {
            target: PublishTarget::Platform(op),
            check,
        })
    };
    if topic.contains(['+', '#']) {
        return Err(not_allowed(topic));
    }
    match principal {
        _ if !in_losant_namespace(topic) && !in_tb_namespace(topic) => Ok(PublishClass {
            target: PublishTarget::Custom,
            check: custom(topic, false)?,
        }),
        Principal::Losant { .. } if in_losant_namespace(topic) => {
            let levels: Vec<&str> = topic.split('/').collect();
            match levels.as_slice() {
                ["losant", id, "state"] | ["losant", id] => {
                    let (device, check) = losant_target(principal, id, topic)?;
                    platform(PublishOp::LosantState { device }, check)
                }
                ["losant", _, "command"] => Err(not_allowed(topic)),
                _ => Err(unknown(topic)),
            }
        }
        Principal::ThingsBoard { gateway, .. } if in_tb_namespace(topic) => {
            let levels: Vec<&str> = topic.split('/').collect();
            let op = match levels.as_slice() {
                ["v1", "devices", "me", "telemetry"] => PublishOp::TbTelemetry,
                ["v1", "devices", "me", "attributes"] => PublishOp::TbAttributes,
                ["v1", "devices", "me", "attributes", "request", id] => {
                    PublishOp::TbAttributeRequest {
                        request_id: request_id(id, topic)?,
                    }
                }
                ["v1", "devices", "me", "rpc", "request", id] => PublishOp::TbRpcRequest {
                    request_id: request_id(id, topic)?,
                },
                ["v1", "devices", "me", "rpc", "response", id] => PublishOp::TbRpcResponse {
                    request_id: request_id(id, topic)?,
                },
                ["v1", "devices", "me", "claim"] => PublishOp::TbClaim,
                ["v1", "gateway", rest @ ..] => {
                    let op = match rest {
                        ["connect"] => PublishOp::GatewayConnect,
                        ["disconnect"] => PublishOp::GatewayDisconnect,
                        ["attributes"] => PublishOp::GatewayAttributes,
                        ["attributes", "request"] => PublishOp::GatewayAttributeRequest,
                        ["telemetry"] => PublishOp::GatewayTelemetry,
                        ["rpc"] => PublishOp::GatewayRpc,
                        ["claim"] => PublishOp::GatewayClaim,
                        _ => return Err(unknown(topic)),
                    };
                    if !gateway {
                        return Err(not_allowed(topic));
                    }
                    op
                }
                _ => return Err(unknown(topic)),
            };
            platform(op, Check::None)
        }
        // The other dialect's namespace.
        _ => Err(not_allowed(topic)),
    }
}

/// Classifies a SUBSCRIBE topic filter for `principal`.
pub fn classify_subscribe(principal: &Principal, filter: &str) -> Result<SubscribeClass, Reject> {
    let platform = |sub| {
        Ok(SubscribeClass {
            target: SubscribeTarget::Platform(sub),
            check: Check::None,
        })
    };
    let is_id_level = |l: &str| l == "+" || l == "#" || request_id(l, filter).is_ok();
    match principal {
        _ if !in_losant_namespace(filter) && !in_tb_namespace(filter) => Ok(SubscribeClass {
            target: SubscribeTarget::Custom,
            check: custom(filter, true)?,
        }),
        Principal::Losant { .. } if in_losant_namespace(filter) => {
            let levels: Vec<&str> = filter.split('/').collect();
            match levels.as_slice() {
                ["losant", id, "command"] if !id.contains(['+', '#']) => {
                    let (device, check) = losant_target(principal, id, filter)?;
                    Ok(SubscribeClass {
                        target: SubscribeTarget::Platform(Subscription::LosantCommands { device }),
                        check,
                    })
                }
                ["losant", ..] if filter.contains(['+', '#']) => Err(not_allowed(filter)),
                _ => Err(unknown(filter)),
            }
        }
        Principal::ThingsBoard { gateway, .. } if in_tb_namespace(filter) => {
            let levels: Vec<&str> = filter.split('/').collect();
            match levels.as_slice() {
                ["v1", "devices", "me", "rpc", "request", id] if is_id_level(id) => {
                    platform(Subscription::TbRpcRequests)
                }
                ["v1", "devices", "me", "rpc", "response", id] if is_id_level(id) => {
                    platform(Subscription::TbRpcResponses)
                }
                ["v1", "devices", "me", "attributes"] => platform(Subscription::TbAttributeUpdates),
                ["v1", "devices", "me", "attributes", "response", id] if is_id_level(id) => {
                    platform(Subscription::TbAttributeResponses)
                }
                ["v1", "gateway", rest @ ..] if *gateway => match rest {
                    ["rpc"] => platform(Subscription::GatewayRpc),
                    ["attributes"] => platform(Subscription::GatewayAttributeUpdates),
                    ["attributes", "response"] => platform(Subscription::GatewayAttributeResponses),
                    _ if filter.contains(['+', '#']) => Err(not_allowed(filter)),
                    _ => Err(unknown(filter)),
                },
                ["v1", "gateway", ..] => Err(not_allowed(filter)),
                _ if filter.contains(['+', '#']) => Err(not_allowed(filter)),
                _ => Err(unknown(filter)),
            }
        }
        _ => Err(not_allowed(filter)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ReasonCode;

    fn id(s: &str) -> DeviceId {
        DeviceId::new(s).unwrap()
    }
    fn losant(dev: &str, gateway: bool) -> Principal {
        Principal::Losant {
            device: id(dev),
            gateway,
        }
    }
    fn tb(dev: &str, gateway: bool) -> Principal {
        Principal::ThingsBoard {
            device: id(dev),
            gateway,
        }
    }
    fn op(p: &Principal, t: &str) -> PublishOp {
        match classify_publish(p, t).unwrap() {
            PublishClass {
                target: PublishTarget::Platform(op),
                check: Check::None,
            } => op,
            other => panic!("{t}: {other:?}"),
        }
    }
    fn pub_code(p: &Principal, t: &str) -> ReasonCode {
        classify_publish(p, t).unwrap_err().code()
    }
    fn sub(p: &Principal, t: &str) -> Result<SubscribeClass, ReasonCode> {
        classify_subscribe(p, t).map_err(|r| r.code())
    }

    #[test]
    fn losant_device_publishes_only_its_own_state() {
        let d = losant("dev1", false);
        assert_eq!(
            op(&d, "losant/dev1/state"),
            PublishOp::LosantState { device: id("dev1") }
        );
        assert_eq!(
            pub_code(&d, "losant/dev2/state"),
            ReasonCode::TopicNotAllowed
        );
        assert_eq!(
            pub_code(&d, "losant/dev1/command"),
            ReasonCode::TopicNotAllowed
        );
        assert_eq!(pub_code(&d, "losant/dev1/other"), ReasonCode::UnknownTopic);
        assert_eq!(pub_code(&d, "losantx"), ReasonCode::UnknownTopic);
        assert_eq!(
            pub_code(&d, "v1/devices/me/telemetry"),
            ReasonCode::TopicNotAllowed
        );
        assert_eq!(pub_code(&d, "losant/+/state"), ReasonCode::TopicNotAllowed);
    }

    #[test]
    fn losant_gateway_publishes_for_peripherals_after_a_check() {
        let g = losant("gw", true);
        assert_eq!(
            op(&g, "losant/gw/state"),
            PublishOp::LosantState { device: id("gw") }
        );
        for t in ["losant/periph/state", "losant/periph"] {
            // seed 000's Node.js example publishes to `losant/my-peripheral-id`.
            assert_eq!(
                classify_publish(&g, t).unwrap(),
                PublishClass {
                    target: PublishTarget::Platform(PublishOp::LosantState {
                        device: id("periph")
                    }),
                    check: Check::Peripheral {
                        gateway: id("gw"),
                        peripheral: id("periph")
                    },
                },
                "{t}"
            );
        }
        assert_eq!(pub_code(&g, "losant//state"), ReasonCode::TopicNotAllowed);
    }

    #[test]
    fn losant_subscriptions() {
        let d = losant("dev1", false);
        assert_eq!(
            sub(&d, "losant/dev1/command").unwrap().target,
            SubscribeTarget::Platform(Subscription::LosantCommands { device: id("dev1") })
        );
        assert_eq!(
            sub(&d, "losant/dev2/command"),
            Err(ReasonCode::TopicNotAllowed)
        );
        assert_eq!(
            sub(&d, "losant/+/command"),
            Err(ReasonCode::TopicNotAllowed)
        );
        assert_eq!(sub(&d, "losant/#"), Err(ReasonCode::TopicNotAllowed));
        assert_eq!(sub(&d, "losant/dev1/state"), Err(ReasonCode::UnknownTopic));
        let g = losant("gw", true);
        assert_eq!(
            sub(&g, "losant/p1/command").unwrap().check,
            Check::Peripheral {
                gateway: id("gw"),
                peripheral: id("p1")
            }
        );
    }

    #[test]
    fn custom_topics_need_the_custom_check() {
        for p in [losant("d", false), tb("d", true)] {
            let c = classify_publish(&p, "factory/line1/temp").unwrap();
            assert_eq!(c.target, PublishTarget::Custom);
            assert_eq!(c.check, Check::CustomTopics);
            let s = sub(&p, "factory/+/temp").unwrap();
            assert_eq!(s.target, SubscribeTarget::Custom);
            assert_eq!(s.check, Check::CustomTopics);
            assert_eq!(sub(&p, "#").unwrap().target, SubscribeTarget::Custom);
            assert_eq!(pub_code(&p, "$SYS/x"), ReasonCode::TopicNotAllowed);
            assert_eq!(pub_code(&p, "a/+"), ReasonCode::TopicNotAllowed);
            assert_eq!(pub_code(&p, ""), ReasonCode::TopicNotAllowed);
        }
    }

    #[test]
    fn thingsboard_device_api() {
        let d = tb("dev", false);
        assert_eq!(op(&d, "v1/devices/me/telemetry"), PublishOp::TbTelemetry);
        assert_eq!(op(&d, "v1/devices/me/attributes"), PublishOp::TbAttributes);
        assert_eq!(
            op(&d, "v1/devices/me/attributes/request/1"),
            PublishOp::TbAttributeRequest {
                request_id: CorrelationId::Int(1)
            }
        );
        assert_eq!(
            op(&d, "v1/devices/me/rpc/request/42"),
            PublishOp::TbRpcRequest {
                request_id: CorrelationId::Int(42)
            }
        );
        assert_eq!(
            op(&d, "v1/devices/me/rpc/response/abc"),
            PublishOp::TbRpcResponse {
                request_id: CorrelationId::Str("abc".into())
            }
        );
        assert_eq!(op(&d, "v1/devices/me/claim"), PublishOp::TbClaim);
        assert_eq!(
            pub_code(&d, "v1/devices/me/attributes/request/"),
            ReasonCode::TopicNotAllowed
        );
        assert_eq!(
            pub_code(&d, "v1/devices/other/telemetry"),
            ReasonCode::UnknownTopic
        );
        assert_eq!(
            pub_code(&d, "v1/gateway/telemetry"),
            ReasonCode::TopicNotAllowed
        );
        assert_eq!(
            pub_code(&d, "losant/dev/state"),
            ReasonCode::TopicNotAllowed
        );
        assert_eq!(pub_code(&d, "v1"), ReasonCode::UnknownTopic);

        for (f, s) in [
            ("v1/devices/me/rpc/request/+", Subscription::TbRpcRequests),
            ("v1/devices/me/rpc/response/+", Subscription::TbRpcResponses),
            ("v1/devices/me/attributes", Subscription::TbAttributeUpdates),
            (
                "v1/devices/me/attributes/response/+",
                Subscription::TbAttributeResponses,
            ),
            (
                "v1/devices/me/attributes/response/7",
                Subscription::TbAttributeResponses,
            ),
            ("v1/devices/me/rpc/request/#", Subscription::TbRpcRequests),
        ] {
            assert_eq!(
                sub(&d, f).unwrap().target,
                SubscribeTarget::Platform(s),
                "{f}"
            );
        }
        assert_eq!(sub(&d, "v1/gateway/rpc"), Err(ReasonCode::TopicNotAllowed));
        assert_eq!(sub(&d, "v1/#"), Err(ReasonCode::TopicNotAllowed));
        assert_eq!(
            sub(&d, "v1/devices/me/other"),
            Err(ReasonCode::UnknownTopic)
        );
    }

    #[test]
    fn thingsboard_gateway_api_all_ten_operations() {
        let g = tb("gw", true);
        for (t, o) in [
            ("v1/gateway/connect", PublishOp::GatewayConnect),
            ("v1/gateway/disconnect", PublishOp::GatewayDisconnect),
            ("v1/gateway/attributes", PublishOp::GatewayAttributes),
            (
                "v1/gateway/attributes/request",
                PublishOp::GatewayAttributeRequest,
            ),
            ("v1/gateway/telemetry", PublishOp::GatewayTelemetry),
            ("v1/gateway/rpc", PublishOp::GatewayRpc),
            ("v1/gateway/claim", PublishOp::GatewayClaim),
            // The gateway is a device too.
            ("v1/devices/me/telemetry", PublishOp::TbTelemetry),
        ] {
            assert_eq!(op(&g, t), o, "{t}");
        }
        for (f, s) in [
            ("v1/gateway/rpc", Subscription::GatewayRpc),
            (
                "v1/gateway/attributes",
                Subscription::GatewayAttributeUpdates,
            ),
            (
                "v1/gateway/attributes/response",
                Subscription::GatewayAttributeResponses,
            ),
        ] {
            assert_eq!(
                sub(&g, f).unwrap().target,
                SubscribeTarget::Platform(s),
                "{f}"
            );
        }
        assert_eq!(pub_code(&g, "v1/gateway/unknown"), ReasonCode::UnknownTopic);
        assert_eq!(sub(&g, "v1/gateway/+"), Err(ReasonCode::TopicNotAllowed));
    }

    #[test]
    fn long_topics_are_cut_in_rejections() {
        let t = format!("losant/{}", "é".repeat(300));
        let msg = classify_publish(&losant("d", false), &t)
            .unwrap_err()
            .to_string();
        assert!(msg.len() < 300);
    }
}
