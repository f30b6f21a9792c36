//! The MQTT front's metrics, made from their definitions in
//! [`fluxgate_observability::catalogue`] (`FRONT_*`), where each is listed with its type,
//! unit, labels and the values they take (also in `docs/metrics.md`).

use fluxgate_model::{Dialect, PublishOp};
use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};

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
    /// Sessions closed because their credential was revoked.
    pub revoked: IntCounter,
    /// Open sockets, sessions and not.
    pub sockets: IntGauge,
    /// Sockets closed at accept: too many open without a session.
    pub pending_refused: IntCounter,
}

impl FrontMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        use fluxgate_observability::catalogue as c;
        let m = FrontMetrics {
            connections: c::FRONT_CONNECTIONS.gauge_vec()?,
            connects: c::FRONT_CONNECTS.counter_vec()?,
            messages: c::FRONT_MESSAGES.counter_vec()?,
            bytes: c::FRONT_RECEIVED_BYTES.counter_vec()?,
            ack_latency: c::FRONT_PUBLISH_ACK.histogram(c::LATENCY_BUCKETS.to_vec())?,
            rate_limited: c::FRONT_RATE_LIMITED.counter_vec()?,
            in_flight: c::FRONT_IN_FLIGHT.gauge()?,
            deliveries: c::FRONT_DELIVERIES.counter_vec()?,
            side_dropped: c::FRONT_SIDE_DROPPED.counter_vec()?,
            protocol_errors: c::FRONT_PROTOCOL_ERRORS.counter()?,
            undecodable: c::FRONT_UNDECODABLE.counter_vec()?,
            revoked: c::FRONT_SESSIONS_REVOKED.counter()?,
            sockets: c::FRONT_SOCKETS.gauge()?,
            pending_refused: c::FRONT_SOCKETS_REFUSED.counter()?,
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
        registry.register(Box::new(m.revoked.clone()))?;
        registry.register(Box::new(m.sockets.clone()))?;
        registry.register(Box::new(m.pending_refused.clone()))?;
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
