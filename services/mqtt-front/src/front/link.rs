//! The session task: the one owner of a connection's mutable state ([`State`]), in the
//! style of rumqtt's link. One loop takes, in turn:
//!
//! - the client's packets, queued by the ntex services in packet order ([`Packet`]):
//!   each publish's in-order part (checks, normalization, bus sends) runs here, so the
//!   bus sends follow the packets; its acks are then waited for beside the rest
//!   (`pending`), and its verdict goes back to the service, which answers the client;
//! - what the inbound task routes to the connection (commands, RPC, attributes, custom
//!   topics), written one at a time, in order (`writing`);
//! - close requests (takeover, drain) and the end of the socket.
//!
//! A graceful close takes in no more publishes, lets those taken in get their verdict
//! (at most `drain_grace_secs`), then closes the socket. When the socket is gone, the
//! packets read before it still reach the bus; then the session ends (`presence`).

use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_channel::mpsc;
use futures_util::StreamExt;
use futures_util::future::LocalBoxFuture;
use futures_util::stream::FuturesUnordered;
use ntex::util::{ByteString, Bytes};
use tokio::sync::oneshot;
use tracing::Instrument;

use super::Front;
use super::publish::Verdict;
use crate::session::{CloseReason, CloseSignal, Conn, Packet, State, ToSession, next};

/// A publish whose bus acks came (or failed): what the loop settles.
pub(super) struct Settled {
    pub(super) verdict: Verdict,
    pub(super) kind: &'static str,
    pub(super) started: Instant,
    pub(super) topic: ByteString,
    pub(super) payload: Bytes,
    /// `client.publish`, ended once the verdict is counted.
    pub(super) span: tracing::Span,
    reply: oneshot::Sender<Verdict>,
}

/// One connection's session task.
pub(super) struct Link {
    front: Arc<Front>,
    conn: Rc<Conn>,
    state: State,
    requests: mpsc::UnboundedReceiver<Packet>,
    deliveries: mpsc::Receiver<ToSession>,
    close: Arc<CloseSignal>,
    /// Publishes taken in, waiting for their bus acks.
    pending: FuturesUnordered<LocalBoxFuture<'static, Settled>>,
    /// The delivery being written to the client: one at a time, so they keep their order.
    writing: Option<LocalBoxFuture<'static, ()>>,
    /// A graceful close under way: why, and until when the publishes taken in are waited
    /// for.
    graceful: Option<(CloseReason, Pin<Box<tokio::time::Sleep>>)>,
}

impl Link {
    pub(super) fn new(
        front: Arc<Front>,
        conn: Rc<Conn>,
        state: State,
        requests: mpsc::UnboundedReceiver<Packet>,
        deliveries: mpsc::Receiver<ToSession>,
        close: Arc<CloseSignal>,
    ) -> Self {
        Link {
            front,
            conn,
            state,
            requests,
            deliveries,
            close,
            pending: FuturesUnordered::new(),
            writing: None,
            graceful: None,
        }
    }

    /// Serves the connection until `gone` resolves (the socket closed), then ends its
    /// session.
    ///
    /// Not an `async fn`: one copies its arguments into its future, and this future is
    /// the resting memory of every idle connection (the `async move` block uses `self`
    /// where it was captured).
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn holds its Link twice: 1368 bytes a connection, not 888"
    )]
    pub(super) fn run(mut self, gone: impl Future<Output = ()>) -> impl Future<Output = ()> {
        async move {
            let mut gone = std::pin::pin!(gone);
            // Made once, not per turn of the loop: waiting on the signal registers with its
            // `Notify`, under a lock.
            let close = self.close.clone();
            let mut close_requested = std::pin::pin!(close.requested());
            let mut close_asked = false;
            let mut requests_open = true;
            loop {
                if self.graceful.is_some() && self.pending.is_empty() {
                    self.finish_graceful_close().await;
                }
                tokio::select! {
                    biased;
                    () = &mut gone => break,
                    Some(done) = self.pending.next(), if !self.pending.is_empty() => self.settle(done),
                    req = next(&mut self.requests), if requests_open => match req {
                        // Boxed: the task of every idle connection is only as large as its
                        // resting state.
                        Some(req) => Box::pin(self.request(req)).await,
                        None => requests_open = false,
                    },
                    () = written(&mut self.writing), if self.writing.is_some() => {
                        self.writing = None;
                    }
                    reason = &mut close_requested, if !close_asked => {
                        close_asked = true;
                        // What was queued before the close request is still written.
                        // Boxed, as every step taken once per connection: the task's
                        // resting size is the largest state it may await in.
                        Box::pin(self.write_queued()).await;
                        match reason {
                            CloseReason::Shutdown => self.close_gracefully(reason),
                            r => self.close_now(r),
                        }
                    }
                    msg = next(&mut self.deliveries), if self.writing.is_none() => match msg {
                        // Every sender is gone: the session's registration was dropped. A
                        // takeover requests the close just before it drops the old
                        // registration, and this branch may be picked first; the close must
                        // still happen.
                        None => {
                            if let (false, Some(reason)) = (close_asked, self.close.reason()) {
                                self.close_now(reason);
                            }
                            break;
                        }
                        Some(msg) => self.writing = Some(self.front.delivery(&self.conn, &self.state.subs, msg)),
                    },
                    () = grace_over(&mut self.graceful), if self.graceful.is_some() => {
                        // The grace is over: close without the verdicts still missing.
                        self.finish_graceful_close().await;
                    }
                }
            }
            Box::pin(self.end()).await;
        }
    }

    /// The socket is gone. The packets the client sent before it closed are still
    /// handled (a one-shot client sends PUBLISH and DISCONNECT and goes), and get their
    /// verdicts; then the session ends.
    async fn end(mut self) {
        // ntex may hand the packets over after the socket closed: they are taken until it
        // lets go of the connection's services (at most the drain grace).
        let grace = Duration::from_secs(self.front.cfg.drain_grace_secs);
        let rest = async {
            while let Some(req) = next(&mut self.requests).await {
                Box::pin(self.request(req)).await;
            }
        };
        if tokio::time::timeout(grace, rest).await.is_err() {
            self.requests.close();
            while let Ok(req) = self.requests.try_recv() {
                Box::pin(self.request(req)).await;
            }
        }
        while let Some(done) = self.pending.next().await {
            self.settle(done);
        }
        if let Some(w) = self.writing.take() {
            w.await;
        }
        self.front.gone(&self.conn, &self.state).await;
    }

    /// Handles one packet of the client, in packet order.
    async fn request(&mut self, req: Packet) {
        match req {
            Packet::Publish {
                topic,
                payload,
                retain,
                parent,
                verdict,
            } => self.publish(topic, payload, retain, parent, verdict).await,
            Packet::Subscribe {
                filter,
                qos,
                granted,
            } => {
                let r = (self.front)
                    .subscribe(&self.conn, &mut self.state, &filter, qos)
                    .await;
                let _ = granted.send(r);
            }
            Packet::Unsubscribe(filter) => {
                self.front.unsubscribe(&self.conn, &mut self.state, &filter);
            }
            Packet::Disconnect => self.state.client_disconnected = true,
        }
    }

    /// Takes in a PUBLISH: its in-order part now, its acks in `pending`.
    async fn publish(
        &mut self,
        topic: ByteString,
        payload: ntex_mqtt::Payload,
        retain: bool,
        parent: Option<opentelemetry::Context>,
        reply: oneshot::Sender<Verdict>,
    ) {
        // A close began (a refusal in packet order before this one, a takeover, the
        // drain): not stored, and never acknowledged.
        if self.state.closing.is_some() {
            self.front.metrics.message(
                self.conn.identity.principal.dialect(),
                "unknown",
                "dropped",
            );
            let _ = reply.send(Verdict::Dropped);
            return;
        }
        let started = Instant::now();
        let max = crate::server::max_packet_bytes(&self.front.cfg) as usize;
        let payload = match read_payload(&payload, max).await {
            Ok(p) => p,
            Err(PayloadRead::Broken) => {
                // The socket broke inside the payload: nothing to store.
                let _ = reply.send(Verdict::Dropped);
                return;
            }
            Err(PayloadRead::TooLong) => {
                // Longer than any packet the front reads: the packet's lengths lied.
                self.front.metrics.protocol_errors.inc();
                let id = &self.conn.identity;
                tracing::info!(tenant = %id.tenant, device = %id.principal.device(),
                    topic = ?fluxgate_model::bounded(&topic, 256), max_packet_bytes = max,
                    "closing the connection: a publish's payload runs past the largest packet");
                self.close_now(CloseReason::Malformed);
                let _ = reply.send(Verdict::Dropped);
                return;
            }
        };
        // EMQX's `client.publish`: from the packet to the verdict (the PUBACK), a
        // producer span whose context the records carry to the bus.
        let id = &self.conn.identity;
        let span = tracing::info_span!(
        target: fluxgate_observability::telemetry::SPANS,
            "client.publish",
            otel.kind = "producer",
            tenant = %id.tenant,
            device = %id.principal.device(),
            dialect = crate::metrics::dialect_label(id.principal.dialect()),
            topic.kind = tracing::field::Empty,
            outcome = tracing::field::Empty,
            reason = tracing::field::Empty,
        );
        if let Some(cx) = parent {
            fluxgate_observability::telemetry::set_parent(&span, cx);
        }
        let (kind, sent) = (self.front)
            .publish_in_turn(&self.conn, &mut self.state, &topic, &payload, retain)
            .instrument(span.clone())
            .await;
        span.record("topic.kind", kind);
        // A refusal that ends the connection takes effect in packet order: the publishes
        // behind this one are then not stored (and never acknowledged), and the ones
        // before it get their acks before the socket closes.
        if let Err(v) = &sent
            && let Some(reason) = self.front.closes(&self.conn, v)
        {
            self.close_gracefully(reason);
        }
        self.front.metrics.in_flight.inc();
        self.pending.push(Box::pin(async move {
            Settled {
                verdict: Verdict::of(sent).await,
                kind,
                started,
                topic,
                payload,
                span,
                reply,
            }
        }));
    }

    /// A publish has its verdict: counted, logged, and sent to its service.
    fn settle(&mut self, done: Settled) {
        self.front.metrics.in_flight.dec();
        if let Some(reason) = self.front.settled(&self.conn, &done) {
            self.close_gracefully(reason);
        }
        let _ = done.reply.send(done.verdict);
    }

    /// Writes what is queued for the client now (after the write under way).
    async fn write_queued(&mut self) {
        if let Some(w) = self.writing.take() {
            w.await;
        }
        while let Ok(msg) = self.deliveries.try_recv() {
            self.front.delivery(&self.conn, &self.state.subs, msg).await;
        }
    }

    /// Closes the connection for `reason` now (the first reason given is the one
    /// reported).
    fn close_now(&mut self, reason: CloseReason) {
        self.state.closing.get_or_insert(reason);
        self.graceful = None;
        self.conn.sink.close(reason);
    }

    /// Closes the connection gracefully: it takes in no more publishes, the ones it took
    /// in before get their verdict and ack (at most the drain grace is waited for them),
    /// then the socket closes, with the reason for an MQTT 5 client.
    fn close_gracefully(&mut self, reason: CloseReason) {
        if self.state.closing.is_some() {
            return; // a close is under way
        }
        self.state.closing = Some(reason);
        let grace = Duration::from_secs(self.front.cfg.drain_grace_secs);
        self.graceful = Some((reason, Box::pin(tokio::time::sleep(grace))));
    }

    async fn finish_graceful_close(&mut self) {
        let Some((reason, _)) = self.graceful.take() else {
            return;
        };
        // The last verdict's ack is written by ntex once its service has the verdict.
        tokio::task::yield_now().await;
        self.conn.sink.close(reason);
    }
}

/// Why a publish's payload was not read.
enum PayloadRead {
    /// The socket broke inside it.
    Broken,
    /// It ran past the largest packet the front reads.
    TooLong,
}

/// Reads a publish's payload, at most `max` bytes of it.
///
/// ntex-mqtt 8.2.1 takes a PUBLISH's payload length to be its remaining length minus its
/// header length, unchecked: a PUBLISH whose remaining length is shorter than its topic
/// wraps that to about 4 GiB, past the max packet size check, and all the client sends
/// next is streamed as this payload. Reading it whole would let one client fill the
/// front's memory (`tests/packet_lengths.rs`); a payload is never longer than a packet.
async fn read_payload(payload: &ntex_mqtt::Payload, max: usize) -> Result<Bytes, PayloadRead> {
    let next = async || payload.read().await.map_err(|_| PayloadRead::Broken);
    let Some(first) = next().await? else {
        return Ok(Bytes::new());
    };
    if first.len() > max {
        return Err(PayloadRead::TooLong);
    }
    // A payload that came whole (nearly all of them): no copy.
    let Some(second) = next().await? else {
        return Ok(first);
    };
    let mut buf = ntex::util::BytesMut::from(first);
    let mut chunk = Some(second);
    while let Some(c) = chunk {
        if buf.len() + c.len() > max {
            return Err(PayloadRead::TooLong);
        }
        buf.extend_from_slice(&c);
        chunk = next().await?;
    }
    Ok(buf.freeze())
}

/// Resolves when the write under way is done (never when there is none).
async fn written(writing: &mut Option<LocalBoxFuture<'static, ()>>) {
    match writing {
        Some(w) => w.await,
        None => std::future::pending().await,
    }
}

/// Resolves when the grace of a graceful close is over (never without one).
async fn grace_over(graceful: &mut Option<(CloseReason, Pin<Box<tokio::time::Sleep>>)>) {
    match graceful {
        Some((_, sleep)) => sleep.as_mut().await,
        None => std::future::pending().await,
    }
}
