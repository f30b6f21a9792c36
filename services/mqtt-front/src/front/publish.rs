//! The publish pipeline: one PUBLISH from its packet to its verdict. In packet order
//! (the session task, `link`, takes one at a time): classify the topic, refuse retained
//! messages, count the rate limits, check the ACL, normalize, and send the records to the
//! bus; then, out of order, wait for their acks — the PUBACK is only sent once every
//! record of the publish is durable. A refusal that closes the connection takes effect in
//! packet order; a refused publish goes on the rejected log.

use std::rc::Rc;

use fluxgate_bus::{AckFuture, OutRecord};
use fluxgate_model::{
    Body, Channel, DeviceRef, Ingress, PublishTarget, Reject, Rejection, classify_publish,
    normalize,
};
use ntex::util::{ByteString, Bytes};

use super::acl::Denied;
use super::link::Settled;
use super::side::Side;
use super::{CUSTOM_TOPIC_HEADER, Front, new_id, now_ms, traced};
use crate::metrics::{dialect_label, op_label};
use crate::rate_limit::Over;
use crate::session::{CloseReason, Conn, Sink, State};
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

impl Verdict {
    /// The verdict of a publish once what its in-order part sent is acknowledged:
    /// `Ok(Some(acks))`, wait for these; `Ok(None)`, answered by the front.
    pub(super) async fn of(sent: Result<Option<Vec<AckFuture>>, Verdict>) -> Verdict {
        match sent {
            Ok(Some(acks)) => {
                let mut failed = None;
                for ack in acks {
                    if let Err(e) = ack.await {
                        failed = Some(e.to_string());
                    }
                }
                failed.map_or(Verdict::Accepted, Verdict::Failed)
            }
            Ok(None) => Verdict::Answered,
            Err(v) => v,
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Verdict::Accepted => "accepted",
            Verdict::Answered => "answered",
            Verdict::Denied(_) => "denied",
            Verdict::Malformed(_) => "malformed",
            Verdict::RetainRefused => "retain_refused",
            Verdict::RateLimited => "rate_limited",
            Verdict::Failed(_) => "failed",
            Verdict::Dropped => "dropped",
        }
    }
}

impl Front {
    /// A publish has its verdict: counts it, logs a refusal and puts it on the rejected
    /// log. Returns why the connection closes, when a bus failure after the in-order part
    /// closes it (a v3 connection; refusals found in order began their close then).
    pub(super) fn settled(&self, conn: &Conn, done: &Settled) -> Option<CloseReason> {
        let dialect = conn.identity.principal.dialect();
        self.metrics
            .bytes
            .with_label_values(&[dialect_label(dialect)])
            .inc_by(done.payload.len() as u64);
        if let Verdict::Accepted = done.verdict {
            self.metrics
                .ack_latency
                .observe(done.started.elapsed().as_secs_f64());
        }
        self.metrics
            .message(dialect, done.kind, done.verdict.label());
        done.span.record("outcome", done.verdict.label());
        if let Verdict::Denied(r) | Verdict::Malformed(r) = &done.verdict {
            done.span.record("reason", r.code().as_str());
        }
        match &done.verdict {
            Verdict::Denied(r) | Verdict::Malformed(r) => {
                let topic = fluxgate_model::bounded(&done.topic, 128);
                tracing::info!(device = %conn.identity.principal.device(), %topic, reason = %r.message(), "publish refused");
                self.produce_rejection(conn, r, &done.payload);
                None
            }
            Verdict::Failed(e) => {
                tracing::warn!(device = %conn.identity.principal.device(), error = %e, "publish not acknowledged by the bus");
                self.closes(conn, &done.verdict)
            }
            _ => None,
        }
    }

    /// Whether a publish refused with `v` closes the connection, and why. MQTT 3.1.1 has
    /// no negative PUBACK, so a v3 client learns of a refusal by the close (unless the
    /// `v3_on_*` policy drops it); a v5 client gets a PUBACK reason instead.
    pub(super) fn closes(&self, conn: &Conn, v: &Verdict) -> Option<CloseReason> {
        let v3 = matches!(conn.sink, Sink::V3(_));
        let close = crate::config::V3Refusal::Close;
        match v {
            Verdict::RetainRefused => Some(CloseReason::Retain),
            Verdict::RateLimited => Some(CloseReason::RateLimited),
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
        state: &mut State,
        topic: &ByteString,
        payload: &Bytes,
        retain: bool,
    ) -> (&'static str, Result<Option<Vec<AckFuture>>, Verdict>) {
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
        if let Err(over) = state.limits.check(topic) {
            return (kind, Err(self.rate_limited(conn, state, topic, over)));
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
        if let Err(over) = state.limits.check_devices(named) {
            return (kind, Err(self.rate_limited(conn, state, topic, over)));
        }
        if let [env] = envs.as_slice()
            && let Body::RpcRequest {
                request_id, method, ..
            } = &env.body
            && method == "getSessionLimits"
        {
            self.answer_session_limits(conn, &state.subs, request_id.clone())
                .await;
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

    /// A publish over a rate limit: counted, logged, and refused for a while; the
    /// connection closes (after the acks of the publishes before it: [`Front::closes`]).
    pub(super) fn rate_limited(
        &self,
        conn: &Conn,
        state: &State,
        topic: &ByteString,
        over: Over,
    ) -> Verdict {
        let limit = over.label(&state.limits);
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
