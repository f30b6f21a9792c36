//! Delivery: what the inbound task routes to a connection (commands, RPC, attribute
//! messages, custom-topic messages), rendered in the connection's dialect, written at the
//! QoS the client subscribed with, and its outcome reported to the dispatcher on
//! `fluxgate.device.events`. The session task (`link`) writes them one at a time.

use std::rc::Rc;
use std::sync::Arc;

use fluxgate_bus::OutRecord;
use fluxgate_model::{
    Body, Channel, Delivery, DeviceRef, ENVELOPE_VERSION, Envelope, Rendered, TenantId,
};
use futures_util::future::LocalBoxFuture;
use ntex::util::{ByteString, Bytes};
use ntex_mqtt::QoS;

use super::side::Side;
use super::{Front, new_id, now_ms, traced};
use crate::config::SlowClient;
use crate::session::{CloseReason, Conn, NotQueued, Subs, ToSession};
use tracing::Instrument;

/// How far a write got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Written {
    /// The client acknowledged it (QoS 1 PUBACK).
    Acknowledged,
    /// Written to the connection at QoS 0: on its way, never acknowledged.
    Sent,
}

/// Why a write did not happen.
const NOT_SUBSCRIBED: &str = "not subscribed";
const NOT_READING: &str = "the client does not read what it is sent";

/// The label of a write's outcome (metric and span).
fn label_of(outcome: &Result<Written, &'static str>) -> &'static str {
    match outcome {
        Ok(Written::Acknowledged) => "delivered",
        Ok(Written::Sent) => "sent",
        Err(NOT_SUBSCRIBED) => "not_subscribed",
        Err(NOT_READING) => "dropped_slow_client",
        Err(_) => "failed",
    }
}

/// MQTT 5 user properties a propagator writes the trace context into.
struct UserPropsOut(Vec<(ByteString, ByteString)>);

impl opentelemetry::propagation::Injector for UserPropsOut {
    fn set(&mut self, key: &str, value: String) {
        self.0
            .push((ByteString::from(key), ByteString::from(value)));
    }
}

impl Front {
    /// Whether a QoS 0 message may be written to `conn` now. A client that does not read
    /// what it is sent (its socket's send buffer and the front's write buffer are full,
    /// or every QoS 1 message in flight to it is unacknowledged) gets none: the message
    /// is dropped, or the session closed (`slow_client`). Only QoS 0 writes need this;
    /// a QoS 1 write waits for the client, and what queues behind it is bounded.
    fn may_write_at_most_once(&self, conn: &Conn) -> Result<(), &'static str> {
        if conn.sink.is_ready() {
            return Ok(());
        }
        if self.cfg.slow_client == SlowClient::Close {
            conn.close.request(CloseReason::SlowClient);
        }
        Err(NOT_READING)
    }

    /// Writes a rendered message to the client at `qos`, the QoS it subscribed to the
    /// message's feed with (`None`: it did not); returns how far it got, or why not.
    pub(super) async fn write(
        &self,
        conn: &Conn,
        qos: Option<QoS>,
        r: &Rendered,
    ) -> Result<Written, &'static str> {
        // An MQTT 5 client gets the trace's `traceparent` as a user property.
        let mut props = UserPropsOut(Vec::new());
        fluxgate_observability::telemetry::inject(&mut props);
        let outcome = match qos {
            None => Err(NOT_SUBSCRIBED),
            Some(QoS::AtMostOnce) => match self.may_write_at_most_once(conn) {
                Ok(()) => conn
                    .sink
                    .publish_with(
                        ByteString::from(r.topic.as_str()),
                        Bytes::copy_from_slice(&r.payload),
                        QoS::AtMostOnce,
                        props.0,
                    )
                    .await
                    .map(|()| Written::Sent)
                    .map_err(|_| "the connection is closed"),
                Err(e) => Err(e),
            },
            Some(qos) => conn
                .sink
                .publish_with(
                    ByteString::from(r.topic.as_str()),
                    Bytes::copy_from_slice(&r.payload),
                    qos,
                    props.0,
                )
                .await
                .map(|()| Written::Acknowledged)
                .map_err(|_| "client did not acknowledge"),
        };
        tracing::Span::current().record("outcome", label_of(&outcome));
        self.metrics
            .deliveries
            .with_label_values(&[label_of(&outcome)])
            .inc();
        outcome
    }

    /// The write of one queued message to the client, with the QoS of the subscription
    /// it matches now (`subs`, read when the write starts).
    pub(super) fn delivery(
        self: &Arc<Self>,
        conn: &Rc<Conn>,
        subs: &Subs,
        msg: ToSession,
    ) -> LocalBoxFuture<'static, ()> {
        let (front, conn) = (self.clone(), conn.clone());
        match msg {
            ToSession::Deliver(d) => {
                let (mut d, span) = *d;
                // The connection's dialect is the truth: a dispatcher that rebuilt
                // presence from the store after a restart knows where the device is, not
                // how it speaks.
                d.dialect = conn.identity.principal.dialect();
                match d.render() {
                    Ok(r) => {
                        let qos = subs.feed(&r.feed);
                        Box::pin(
                            async move {
                                let outcome = front.write(&conn, qos, &r).await;
                                front.report(&d, outcome).await;
                            }
                            .instrument(span),
                        )
                    }
                    Err(e) => Box::pin(async move {
                        span.record("outcome", "unrenderable");
                        tracing::warn!(delivery = %d.id, error = %e, "delivery cannot be rendered");
                        front
                            .metrics
                            .deliveries
                            .with_label_values(&["unrenderable"])
                            .inc();
                        let why = "cannot be rendered in the device's dialect";
                        front.report(&d, Err(why)).await;
                    }),
                }
            }
            ToSession::Custom(m) => {
                let (topic, payload) = *m;
                let qos = subs.custom(&topic);
                Box::pin(async move {
                    let Some(qos) = qos else { return };
                    let outcome = match qos {
                        QoS::AtMostOnce => match front.may_write_at_most_once(&conn) {
                            Ok(()) => conn
                                .sink
                                .publish(topic, payload, qos)
                                .await
                                .map(|()| Written::Sent),
                            Err(e) => Err(e.to_owned()),
                        },
                        _ => conn
                            .sink
                            .publish(topic, payload, qos)
                            .await
                            .map(|()| Written::Acknowledged),
                    };
                    let label = match outcome {
                        Err(e) if e == NOT_READING => "dropped_slow_client",
                        Err(_) => "failed",
                        Ok(w) => label_of(&Ok(w)),
                    };
                    front.metrics.deliveries.with_label_values(&[label]).inc();
                })
            }
        }
    }

    /// The delivery-outcome record for the dispatcher.
    pub(super) fn outcome_record(&self, d: &Delivery, outcome: Result<Written, &str>) -> OutRecord {
        let failure = outcome.err();
        let env = Envelope {
            v: ENVELOPE_VERSION,
            id: new_id(),
            part: 0,
            tenant: d.tenant.clone(),
            device: DeviceRef::Id(d.device.clone()),
            via: d.via.clone(),
            dialect: d.dialect,
            channel: Channel::Internal,
            received_ms: now_ms(),
            body: Body::DeliveryOutcome {
                delivery: d.id,
                delivered: failure.is_none(),
                at_most_once: outcome == Ok(Written::Sent),
                reason: failure.map(str::to_owned),
            },
        };
        traced(OutRecord::of(&self.names.events, &env))
    }

    /// Produces a delivery outcome for the dispatcher.
    pub(crate) async fn report(&self, d: &Delivery, outcome: Result<Written, &str>) {
        if let Err(e) = self.producer.produce(self.outcome_record(d, outcome)).await {
            tracing::warn!(delivery = %d.id, error = %e, "delivery outcome not produced");
        }
    }
}

/// Something a session is asked to deliver, routed from the bus; `headers` are its
/// record's, with the trace it continues (the dispatcher's span), read only by the front
/// that holds the connection (every front reads every delivery).
pub(crate) fn route_delivery(front: &Front, d: Delivery, headers: &fluxgate_bus::Headers) {
    let Some(entry) = front.sessions.get(&d.tenant, d.connection()) else {
        return; // another front holds the connection, or nobody does
    };
    // From the record to the client's PUBACK (or the failure), on the front that holds
    // the connection.
    let span = tracing::info_span!(
        target: fluxgate_observability::telemetry::SPANS,
        "client.deliver",
        otel.kind = "producer",
        tenant = %d.tenant,
        device = %d.device,
        delivery = %d.id,
        outcome = tracing::field::Empty,
    );
    fluxgate_observability::telemetry::parent(&span, headers);
    // Rendered by the session, in the dialect of the connection it holds.
    if let Err(NotQueued::Full(ToSession::Deliver(d))) =
        entry.try_send(ToSession::Deliver(Box::new((d, span))))
    {
        let (d, span) = *d;
        let _in = span.enter();
        span.record("outcome", "backlog_full");
        front
            .metrics
            .deliveries
            .with_label_values(&["backlog_full"])
            .inc();
        let rec = front.outcome_record(&d, Err("connection backlog full"));
        front.side.send(Side::DeliveryOutcome, rec);
    }
}

/// A custom-topic message from the bus, for the local subscribers of its application.
pub(crate) fn route_custom(front: &Front, tenant: &TenantId, topic: ByteString, payload: Bytes) {
    for e in front.sessions.custom_subscribers(tenant) {
        let _ = e.try_send(ToSession::Custom(Box::new((
            topic.clone(),
            payload.clone(),
        ))));
    }
}
