//! Every metric of the MQTT front, in one place.
//!
//! | name | type | labels |
//! |---|---|---|
//! | `fluxgate_mqtt_front_connections` | gauge | `dialect` |
//! | `fluxgate_mqtt_front_connects_total` | counter | `outcome`: accepted, bad_credentials, not_authorized, unavailable, rate_limited, blocked, persistent_session_unsupported (v3 CleanSession=0), draining |
//! | `fluxgate_mqtt_front_messages_total` | counter | `dialect`, `kind` (the publish operation, `custom`, `unknown`), `outcome`: accepted, answered, denied, malformed, rate_limited, failed, retain_refused, dropped (taken in while the connection was closing: not stored, not acked) |
//! | `fluxgate_mqtt_front_received_bytes_total` | counter | `dialect` |
//! | `fluxgate_mqtt_front_publish_ack_seconds` | histogram | — (publish received to bus ack) |
//! | `fluxgate_mqtt_front_rate_limited_total` | counter | `limit`: topic, connection (Losant); device, gateway (ThingsBoard; `device` also for a device behind a gateway); new_connections |
//! | `fluxgate_mqtt_front_in_flight` | gauge | — (publishes taken in that have no verdict yet) |
//! | `fluxgate_mqtt_front_deliveries_total` | counter | `outcome`: delivered, not_subscribed, failed, backlog_full, unrenderable |
//! | `fluxgate_mqtt_front_side_dropped_total` | counter | `kind`: rejection, delivery_outcome (best-effort records dropped because the side queue was full) |
//! | `fluxgate_mqtt_front_protocol_errors_total` | counter | — (malformed packets, packets over the size limit, QoS 2) |
//! | `fluxgate_mqtt_front_undecodable_total` | counter | `topic`: deliveries, mqtt_custom, registry_changes (broadcast records this front could not read; the record stays on its topic) |

use fluxgate_model::{Dialect, PublishOp};
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// The front's metrics.
#[derive(Debug, Clone)]
pub struct FrontMetrics {
    /// Open connections by dialect.
    pub connections: IntGaugeVec,
    /// CONNECT outcomes.
    pub connects: IntCounterVec,
    /// Publishes by dialect, kind and outcome.
    pub messages: IntCounterVec,
    /// Publish payload bytes by dialect.
    pub bytes: IntCounterVec,
    /// Publish to bus ack.
    pub ack_latency: Histogram,
    /// Rate-limit hits.
    pub rate_limited: IntCounterVec,
    /// Publishes taken in that have no verdict yet.
    pub in_flight: IntGauge,
    /// Deliveries to clients by outcome.
    pub deliveries: IntCounterVec,
    /// Best-effort records dropped because the side queue was full.
    pub side_dropped: IntCounterVec,
    /// Connections closed for protocol violations.
    pub protocol_errors: IntCounter,
    /// Broadcast records (deliveries, registry changes) that could not be decoded.
    pub undecodable: IntCounterVec,
}

impl FrontMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let p = |n: &str| format!("fluxgate_mqtt_front_{n}");
        let m = FrontMetrics {
            connections: IntGaugeVec::new(
                Opts::new(p("connections"), "Open MQTT connections."),
                &["dialect"],
            )?,
            connects: IntCounterVec::new(
                Opts::new(p("connects_total"), "CONNECT packets by outcome."),
                &["outcome"],
            )?,
            messages: IntCounterVec::new(
                Opts::new(
                    p("messages_total"),
                    "PUBLISH packets by dialect, kind and outcome.",
                ),
                &["dialect", "kind", "outcome"],
            )?,
            bytes: IntCounterVec::new(
                Opts::new(p("received_bytes_total"), "PUBLISH payload bytes received."),
                &["dialect"],
            )?,
            ack_latency: Histogram::with_opts(
                HistogramOpts::new(
                    p("publish_ack_seconds"),
                    "Time from receiving a publish to the bus acknowledging it.",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
            )?,
            rate_limited: IntCounterVec::new(
                Opts::new(p("rate_limited_total"), "Rate-limit hits by limit."),
                &["limit"],
            )?,
            in_flight: IntGauge::new(
                p("in_flight"),
                "Publishes taken in that have no verdict yet.",
            )?,
            deliveries: IntCounterVec::new(
                Opts::new(p("deliveries_total"), "Deliveries to clients by outcome."),
                &["outcome"],
            )?,
            side_dropped: IntCounterVec::new(
                Opts::new(
                    p("side_dropped_total"),
                    "Best-effort records (rejected log, outcomes of deliveries no session took) dropped because the side queue was full.",
                ),
                &["kind"],
            )?,
            protocol_errors: IntCounter::new(
                p("protocol_errors_total"),
                "Connections closed for a protocol violation (malformed or oversize packet, QoS 2).",
            )?,
            undecodable: IntCounterVec::new(
                Opts::new(
                    p("undecodable_total"),
                    "Broadcast records this front could not decode (they stay on their topic).",
                ),
                &["topic"],
            )?,
        };
        registry.register(Box::new(m.connections.clone()))?;
        registry.register(Box::new(m.connects.clone()))?;
        registry.register(Box::new(m.messages.clone()))?;
        registry.register(Box::new(m.bytes.clone()))?;
        registry.register(Box::new(m.ack_latency.clone()))?;
        registry.register(Box::new(m.rate_limited.clone()))?;
        registry.register(Box::new(m.in_flight.clone()))?;
        registry.register(Box::new(m.deliveries.clone()))?;
        registry.register(Box::new(m.side_dropped.clone()))?;
        registry.register(Box::new(m.protocol_errors.clone()))?;
        registry.register(Box::new(m.undecodable.clone()))?;
        Ok(m)
    }

    pub(crate) fn message(&self, dialect: Dialect, kind: &str, outcome: &str) {
        self.messages
            .with_label_values(&[dialect_label(dialect), kind, outcome])
            .inc();
    }
}

/// `losant` or `thingsboard`.
pub(crate) fn dialect_label(d: Dialect) -> &'static str {
    match d {
        Dialect::Losant => "losant",
        Dialect::ThingsBoard => "thingsboard",
    }
}

/// The `kind` label of a platform publish.
pub(crate) fn op_label(op: &PublishOp) -> &'static str {
    match op {
        PublishOp::LosantState { .. } => "state",
        PublishOp::TbTelemetry => "telemetry",
        PublishOp::TbAttributes => "attributes",
        PublishOp::TbAttributeRequest { .. } => "attribute_request",
        PublishOp::TbRpcRequest { .. } => "rpc_request",
        PublishOp::TbRpcResponse { .. } => "rpc_response",
        PublishOp::TbClaim => "claim",
        PublishOp::GatewayConnect => "gateway_connect",
        PublishOp::GatewayDisconnect => "gateway_disconnect",
        PublishOp::GatewayAttributes => "gateway_attributes",
        PublishOp::GatewayAttributeRequest => "gateway_attribute_request",
        PublishOp::GatewayTelemetry => "gateway_telemetry",
        PublishOp::GatewayRpc => "gateway_rpc",
        PublishOp::GatewayClaim => "gateway_claim",
    }
}
