//! The publish pipeline: one PUBLISH from its packet to its verdict. In packet order
//! (the connection's [`Sequencer`](crate::session::Sequencer) turn): classify the topic,
//! refuse retained messages, count the rate limits, check the ACL, normalize, and send
//! the records to the bus; then, out of order, wait for their acks — the PUBACK is only
//! sent once every record of the publish is durable. A refusal that closes the connection
//! takes effect in packet order; a refused publish goes on the rejected log.

use std::rc::Rc;
use std::time::Instant;

use fluxgate_bus::OutRecord;
use fluxgate_model::{
    Body, Channel, DeviceRef, Ingress, PublishTarget, Reject, Rejection, classify_publish,
    normalize,
};
use ntex::util::{ByteString, Bytes};

use super::acl::Denied;
use super::side::Side;
use super::{CUSTOM_TOPIC_HEADER, Front, new_id, now_ms, traced};
use crate::metrics::{dialect_label, op_label};
use crate::rate_limit::Over;
use crate::session::{CloseReason, Conn, Job, Sink};

/// What became of a publish.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// On the bus; acknowledge.
    Accepted,
    /// Answered by the front itself (ThingsBoard's `getSessionLimits`); acknowledge.
    Answered,
    /// The client may not publish there.
    Denied(Reject),
    /// The payload is not what the topic takes.
    Malformed(Reject),
    /// Retained messages are not supported.
    RetainRefused,
    /// Over a rate limit: the connection is being closed.
    RateLimited,
    /// The bus or registry failed; do not acknowledge, the client must resend.
    Failed(String),
    /// The connection is closing: not stored, and never acknowledged (the client sends it
    /// again on its next connection).
    Dropped,
}

impl Front {
    /// Handles one PUBLISH. `job` was taken when the packet arrived
    /// ([`Conn::begin_publish`]): its ticket keeps bus sends in the packets' order, and
    /// while it lives a closing connection waits for this publish's verdict.
    pub(crate) async fn publish(
        &self,
        conn: &Rc<Conn>,
        job: Job,
        topic: &ByteString,
        payload: &Bytes,
        retain: bool,
    ) -> Verdict {
        let started = Instant::now();
        let dialect = conn.identity.principal.dialect();
        self.metrics
            .bytes
            .with_label_values(&[dialect_label(dialect)])
            .inc_by(payload.len() as u64);
        let turn = conn.order.turn(job.ticket).await;
        let (kind, verdict) = self.publish_in_turn(conn, topic, payload, retain).await;
        // A refusal that ends the connection takes effect in packet order: the publishes
        // behind this one are then not stored (and never acknowledged), and the ones
        // before it get their acks before the socket closes.
        if let Err(v) = &verdict
            && let Some(reason) = self.closes(conn, v)
        {
            self.close_after_acks(conn, reason);
        }
        drop(turn);
        let verdict = match verdict {
            Ok(Some(acks)) => {
                let mut failed = None;
                for ack in acks {
                    if let Err(e) = ack.await {
                        failed = Some(e.to_string());
                    }
                }
                match failed {
                    None => {
                        self.metrics
                            .ack_latency
                            .observe(started.elapsed().as_secs_f64());
                        Verdict::Accepted
                    }
                    Some(e) => {
                        // The bus failed an ack after the turn: a v3 connection closes too
                        // (refusals found in the turn began their close above).
                        let v = Verdict::Failed(e);
                        if let Some(reason) = self.closes(conn, &v) {
                            self.close_after_acks(conn, reason);
                        }
                        v
                    }
                }
            }
            Ok(None) => Verdict::Answered,
            Err(v) => v,
        };
        let outcome = match &verdict {
            Verdict::Accepted => "accepted",
            Verdict::Answered => "answered",
            Verdict::Denied(_) => "denied",
            Verdict::Malformed(_) => "malformed",
            Verdict::RetainRefused => "retain_refused",
            Verdict::RateLimited => "rate_limited",
            Verdict::Failed(_) => "failed",
            Verdict::Dropped => "dropped",
        };
        self.metrics.message(dialect, kind, outcome);
        drop(job);
        match &verdict {
            Verdict::Denied(r) | Verdict::Malformed(r) => {
                let topic = fluxgate_model::bounded(topic, 128);
                tracing::info!(device = %conn.identity.principal.device(), %topic, reason = %r.message(), "publish refused");
                self.produce_rejection(conn, r, payload);
            }
            Verdict::Failed(e) => {
                tracing::warn!(device = %conn.identity.principal.device(), error = %e, "publish not acknowledged by the bus");
            }
            _ => {}
        }
        verdict
    }

    /// Whether a publish refused with `v` closes the connection, and why. MQTT 3.1.1 has
    /// no negative PUBACK, so a v3 client learns of a refusal by the close (unless the
    /// `v3_on_*` policy drops it); a v5 client gets a PUBACK reason instead.
    pub(super) fn closes(&self, conn: &Conn, v: &Verdict) -> Option<CloseReason> {
        let v3 = matches!(conn.sink, Sink::V3(_));
        let close = crate::config::V3Refusal::Close;
        match v {
            Verdict::RetainRefused => Some(CloseReason::Retain),
            Verdict::Denied(_) if v3 && self.cfg.v3_on_denied == close => {
                Some(CloseReason::Refused)
            }
            Verdict::Malformed(_) if v3 && self.cfg.v3_on_malformed == close => {
                Some(CloseReason::Refused)
            }
            Verdict::Failed(_) if v3 => Some(CloseReason::BusFailed),
            _ => None,
        }
    }

    /// The part of a publish that must happen in order: checks, normalization, and the
    /// sends (not their acks). `Ok(Some(acks))`: wait for these; `Ok(None)`: done.
    pub(super) async fn publish_in_turn(
        &self,
        conn: &Rc<Conn>,
        topic: &ByteString,
        payload: &Bytes,
        retain: bool,
    ) -> (
        &'static str,
        Result<Option<Vec<fluxgate_bus::AckFuture>>, Verdict>,
    ) {
        // An earlier publish (in packet order) closed the connection: this one, taken in
        // before that, is not stored.
        if conn.closing.get().is_some() {
            return ("unknown", Err(Verdict::Dropped));
        }
        let id = &conn.identity;
        let class = match classify_publish(&id.principal, topic) {
            Ok(c) => c,
            Err(r) => return ("unknown", Err(Verdict::Denied(r))),
        };
        let kind = match &class.target {
            PublishTarget::Platform(op) => op_label(op),
            PublishTarget::Custom => "custom",
        };
        if retain {
            return (kind, Err(Verdict::RetainRefused));
        }
        if let Err(over) = conn.limits.check(topic) {
            return (kind, Err(self.rate_limited(conn, topic, over)));
        }
        match self.allowed(id, &class.check, topic).await {
            Ok(()) => {}
            Err(Denied::Refused(r)) => return (kind, Err(Verdict::Denied(r))),
            Err(Denied::Unavailable(e)) => return (kind, Err(Verdict::Failed(e))),
        }
        let op = match class.target {
            PublishTarget::Custom => {
                let mut rec = OutRecord::new(
                    &self.names.custom,
                    id.tenant.as_str().to_owned(),
                    payload.to_vec(),
                );
                rec = traced(rec);
                rec.headers
                    .insert(CUSTOM_TOPIC_HEADER, topic.as_bytes().to_vec());
                return (kind, self.send_all(vec![rec]).await.map(Some));
            }
            PublishTarget::Platform(op) => op,
        };
        let ingress = Ingress {
            tenant: &id.tenant,
            principal: &id.principal,
            channel: Channel::Mqtt,
            id: new_id(),
            received_ms: now_ms(),
            limits: &self.cfg.limits,
        };
        let envs = match normalize(&ingress, &op, payload) {
            Ok(e) => e,
            Err(r) => return (kind, Err(Verdict::Malformed(r))),
        };
        // A ThingsBoard gateway's message counts for each device it is about.
        let named = envs.iter().filter_map(|e| match &e.device {
            DeviceRef::Name(n) => Some(n.as_str()),
            DeviceRef::Id(_) => None,
        });
        if let Err(over) = conn.limits.check_devices(named) {
            return (kind, Err(self.rate_limited(conn, topic, over)));
        }
        if let [env] = envs.as_slice()
            && let Body::RpcRequest {
                request_id, method, ..
            } = &env.body
            && method == "getSessionLimits"
        {
            self.answer_session_limits(conn, request_id.clone()).await;
            return (kind, Ok(None));
        }
        // Any gateway message about a device connects it through the gateway (as
        // ThingsBoard does: a restarted gateway does not announce the devices it
        // remembers), once per session, just before the message.
        let about = envs.iter().filter(|e| {
            e.via.is_some() && !matches!(e.body, Body::Connect { .. } | Body::Disconnect { .. })
        });
        let implicit = conn.reached.new_of(about.map(|e| &e.device));
        let mut recs = Vec::with_capacity(envs.len() + implicit.len());
        for d in &implicit {
            recs.push(self.reached_connect(conn, d.clone()));
        }
        recs.extend(
            envs.iter()
                .map(|e| traced(OutRecord::of(&self.names.raw, e))),
        );
        let sent = self.send_all(recs).await;
        if sent.is_ok() {
            for d in implicit {
                conn.reached.insert(d);
            }
            for e in envs.iter().filter(|e| e.via.is_some()) {
                match e.body {
                    Body::Connect { .. } => conn.reached.insert(e.device.clone()),
                    Body::Disconnect { .. } => conn.reached.remove(&e.device),
                    _ => {}
                }
            }
        }
        (kind, sent.map(Some))
    }

    /// A publish over a rate limit: counted, logged, and the connection closed (after the
    /// acks of the publishes before it) and refused for a while.
    pub(super) fn rate_limited(&self, conn: &Rc<Conn>, topic: &ByteString, over: Over) -> Verdict {
        let limit = over.label(&conn.limits);
        self.metrics.rate_limited.with_label_values(&[limit]).inc();
        let id = &conn.identity;
        let behind = match &over {
            Over::Device(name) => name.as_str(),
            _ => "",
        };
        tracing::warn!(tenant = %id.tenant, device = %id.principal.device(), limit, %topic,
            device_behind_gateway = behind,
            "rate limit exceeded: closing the connection and refusing it for a while");
        self.admission
            .block(conn.key(), self.rate_limits(&conn.identity.tenant));
        self.close_after_acks(conn, CloseReason::RateLimited);
        Verdict::RateLimited
    }

    /// Puts a refused publish on the rejected log, best effort: the client already has
    /// its answer.
    pub(super) fn produce_rejection(&self, conn: &Conn, reject: &Reject, payload: &[u8]) {
        let r = Rejection::new(
            conn.identity.tenant.clone(),
            conn.identity.principal.device().as_str(),
            now_ms(),
            reject,
            payload,
        );
        self.side
            .send(Side::Rejection, OutRecord::of(&self.names.rejected, &r));
    }
}
