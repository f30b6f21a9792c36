//! Delivery: the session task, the one writer to a client. It takes what the inbound
//! task routes to the connection (commands, RPC, attribute messages, custom-topic
//! messages, close requests), renders a delivery in the connection's dialect, writes it
//! at the QoS the client subscribed with, and reports the outcome to the dispatcher on
//! `fluxgate.device.events`. When the socket goes, it ends the session (`presence`).

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use fluxgate_bus::OutRecord;
use fluxgate_model::{
    Body, Channel, Delivery, DeviceRef, ENVELOPE_VERSION, Envelope, Rendered, TenantId,
};
use futures_channel::mpsc;
use ntex::util::{ByteString, Bytes};

use super::side::Side;
use super::{Front, new_id, now_ms, traced};
use crate::session::{CloseReason, CloseSignal, Conn, NotQueued, ToSession, next};

impl Front {
    /// Writes a rendered message to the client at the QoS it subscribed with; returns
    /// whether it was delivered and why not.
    pub(super) async fn write(&self, conn: &Conn, r: &Rendered) -> Result<(), &'static str> {
        let qos = conn.subs.borrow().feed(&r.feed);
        let outcome = match qos {
            None => Err("not subscribed"),
            Some(qos) => conn
                .sink
                .publish(
                    ByteString::from(r.topic.as_str()),
                    Bytes::copy_from_slice(&r.payload),
                    qos,
                )
                .await
                .map_err(|_| "client did not acknowledge"),
        };
        let label = match outcome {
            Ok(()) => "delivered",
            Err("not subscribed") => "not_subscribed",
            Err(_) => "failed",
        };
        self.metrics.deliveries.with_label_values(&[label]).inc();
        outcome
    }

    /// Delivers a command/RPC/attribute message and reports the outcome to the dispatcher.
    pub(super) async fn deliver(&self, conn: &Conn, mut d: Delivery) {
        // The connection's dialect is the truth: a dispatcher that rebuilt presence from the
        // store after a restart knows where the device is, not how it speaks.
        d.dialect = conn.identity.principal.dialect();
        let r = match d.render() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(delivery = %d.id, error = %e, "delivery cannot be rendered");
                self.metrics
                    .deliveries
                    .with_label_values(&["unrenderable"])
                    .inc();
                let why = "cannot be rendered in the device's dialect";
                return self.report(&d, Some(why)).await;
            }
        };
        let outcome = self.write(conn, &r).await;
        self.report(&d, outcome.err()).await;
    }

    /// The delivery-outcome record for the dispatcher.
    pub(super) fn outcome_record(&self, d: &Delivery, failure: Option<&str>) -> OutRecord {
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
                reason: failure.map(str::to_owned),
            },
        };
        traced(OutRecord::of(&self.names.events, &env))
    }

    /// Produces a delivery outcome for the dispatcher.
    pub(crate) async fn report(&self, d: &Delivery, failure: Option<&str>) {
        if let Err(e) = self.producer.produce(self.outcome_record(d, failure)).await {
            tracing::warn!(delivery = %d.id, error = %e, "delivery outcome not produced");
        }
    }

    pub(super) async fn deliver_custom(&self, conn: &Conn, topic: ByteString, payload: Bytes) {
        let qos = conn.subs.borrow().custom(&topic);
        if let Some(qos) = qos {
            let ok = conn.sink.publish(topic, payload, qos).await.is_ok();
            let label = if ok { "delivered" } else { "failed" };
            self.metrics.deliveries.with_label_values(&[label]).inc();
        }
    }

    /// Closes `conn` gracefully: it takes in no more publishes, the ones it took in before
    /// get their verdict and ack (at most the drain grace is waited for them), then the
    /// socket closes, with the reason for an MQTT 5 client.
    pub(crate) fn close_after_acks(&self, conn: &Rc<Conn>, reason: CloseReason) {
        if conn.closing.get().is_some() {
            return; // a close is under way
        }
        conn.mark_closing(reason);
        let grace = Duration::from_secs(self.cfg.drain_grace_secs);
        let conn = conn.clone();
        ntex::rt::spawn(async move {
            let idle = async {
                loop {
                    let n = conn.idle.notified();
                    if conn.in_flight.get() == 0 {
                        return;
                    }
                    n.await;
                }
            };
            let _ = tokio::time::timeout(grace, idle).await;
            // The last verdict's ack is written by ntex right after the publish returns.
            tokio::task::yield_now().await;
            conn.sink.close(reason);
        });
    }
}

impl Front {
    /// Writes one queued message to the client.
    async fn handle(&self, conn: &Conn, msg: ToSession) {
        match msg {
            ToSession::Deliver(d) => self.deliver(conn, *d).await,
            ToSession::Custom(m) => {
                let (topic, payload) = *m;
                self.deliver_custom(conn, topic, payload).await;
            }
        }
    }
}

pub(super) async fn session_task(
    front: Arc<Front>,
    conn: Rc<Conn>,
    mut rx: mpsc::Receiver<ToSession>,
    close: Arc<CloseSignal>,
    gone: impl Future<Output = ()>,
) {
    let mut gone = std::pin::pin!(gone);
    let mut closing = false;
    loop {
        tokio::select! {
            () = &mut gone => break,
            reason = close.requested(), if !closing => {
                closing = true;
                // What was queued before the close request is still written.
                while let Ok(msg) = rx.try_recv() {
                    Box::pin(front.handle(&conn, msg)).await;
                }
                match reason {
                    CloseReason::Shutdown => front.close_after_acks(&conn, reason),
                    r => conn.close(r),
                }
            }
            msg = next(&mut rx) => match msg {
                // Every sender is gone: the session's registration was dropped. A takeover
                // requests the close just before it drops the old registration, and this
                // branch may be picked first; the close must still happen.
                None => {
                    if let (false, Some(reason)) = (closing, close.reason()) {
                        conn.close(reason);
                    }
                    break;
                }
                // Boxed: the task of every idle connection is only as large as its
                // resting state.
                Some(msg) => Box::pin(front.handle(&conn, msg)).await,
            },
        }
    }
    Box::pin(front.gone(&conn)).await;
}

/// Something a session is asked to deliver, routed from the bus.
pub(crate) fn route_delivery(front: &Front, d: Delivery) {
    let Some(entry) = front.sessions.get(&d.tenant, d.connection()) else {
        return; // another front holds the connection, or nobody does
    };
    // Rendered by the session, in the dialect of the connection it holds.
    if let Err(NotQueued::Full(ToSession::Deliver(d))) =
        entry.try_send(ToSession::Deliver(Box::new(d)))
    {
        front
            .metrics
            .deliveries
            .with_label_values(&["backlog_full"])
            .inc();
        let rec = front.outcome_record(&d, Some("connection backlog full"));
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
