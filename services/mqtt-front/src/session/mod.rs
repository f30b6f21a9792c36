//! Connections: per-connection state and the front-wide map of who is connected
//! ([`SessionMap`], shared by all threads).
//!
//! ```text
//! ntex services ──Request──> mpsc ──┐
//!                                   ├──> session task (owns State) ──> MqttSink ──> client
//! inbound task ──ToSession──> mpsc ─┘         │
//!                         (bounded)           └── socket gone ──> SessionMap::remove + disconnect
//! ```
//!
//! Each connection's mutable state ([`State`]: subscriptions, rate limits, closing) has one
//! owner, its session task (`front::link`), in the style of rumqtt's link. The ntex
//! services of the connection hold a [`Handle`]: they queue each packet as a [`Packet`]
//! (synchronously, in packet order) and wait for the answer. So the bus sends of a
//! connection follow its packets' order without a sequencer, and only the session task
//! writes deliveries to the client, in their order.
//!
//! - `subs`: what a connection subscribed to; `map`: the [`SessionMap`] and its entries
//!   (the queue to each session task).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard};

use fluxgate_model::{Delivery, DeviceId, DeviceRef, RegistryChange, Subscription, TenantId};
use futures_channel::mpsc;
use ntex::util::{ByteString, Bytes};
use ntex_mqtt::{QoS, TopicFilter, v3, v5};
use tokio::sync::{Notify, oneshot};

use crate::auth::{Credential, Identity};
use crate::rate_limit::ConnLimits;

mod map;
mod subs;

pub(crate) use map::{Entry, NotQueued, SessionMap, next};
pub(crate) use subs::Subs;

/// Something for one connection, from the inbound task.
#[derive(Debug)]
pub(crate) enum ToSession {
    /// A command, RPC or attribute message for the device (or one behind the gateway),
    /// with its `client.deliver` span (a child of the dispatcher's).
    Deliver(Box<(Delivery, tracing::Span)>),
    /// A custom-topic message of the connection's application: topic and payload (boxed:
    /// every connection's channel holds a block of these, so the enum stays small).
    Custom(Box<(ByteString, Bytes)>),
}

/// A request to close a connection, beside its delivery queue: it never waits for room
/// there. The first reason asked for wins.
#[derive(Debug, Default)]
pub(crate) struct CloseSignal {
    reason: Mutex<Option<CloseReason>>,
    notify: Notify,
}

impl CloseSignal {
    /// Asks for the close (a no-op if one was asked for already).
    pub(crate) fn request(&self, reason: CloseReason) {
        let mut r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if r.is_none() {
            *r = Some(reason);
            self.notify.notify_one();
        }
    }

    /// The close asked for, if any.
    pub(crate) fn reason(&self) -> Option<CloseReason> {
        *self.reason.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for a close request and returns its reason.
    pub(crate) async fn requested(&self) -> CloseReason {
        loop {
            if let Some(r) = self.reason() {
                return r;
            }
            self.notify.notified().await;
        }
    }
}

/// Why the front closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// Another connection with the same identity took over.
    Takeover,
    /// The front is shutting down.
    Shutdown,
    /// The client went over a rate limit.
    RateLimited,
    /// A refused publish on v3 (no negative PUBACK there).
    Refused,
    /// The bus failed a produce; the client must resend.
    BusFailed,
    /// A retained publish (not supported).
    Retain,
    /// Its credential no longer holds (key deactivated or deleted, token revoked, device
    /// deleted).
    Revoked,
    /// It does not read what it is sent (`slow_client = "close"`).
    SlowClient,
    /// A packet whose lengths do not add up (a PUBLISH whose payload runs past the
    /// largest packet the front reads).
    Malformed,
}

impl CloseReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CloseReason::Takeover => "takeover",
            CloseReason::Shutdown => "server shutting down",
            CloseReason::RateLimited => "rate limited",
            CloseReason::Refused => "publish refused",
            CloseReason::BusFailed => "bus unavailable",
            CloseReason::Retain => "retain not supported",
            CloseReason::Revoked => "credentials revoked",
            CloseReason::SlowClient => "client not reading",
            CloseReason::Malformed => "malformed packet",
        }
    }
}

/// The client's side of a connection, in either protocol version.
#[derive(Debug, Clone)]
pub(crate) enum Sink {
    V3(v3::MqttSink),
    V5(v5::MqttSink),
}

impl Sink {
    /// Publishes to the client; with QoS 1, waits for its PUBACK.
    pub(crate) async fn publish(
        &self,
        topic: ByteString,
        payload: Bytes,
        qos: QoS,
    ) -> Result<(), String> {
        self.publish_with(topic, payload, qos, Vec::new()).await
    }

    /// [`Sink::publish`] with MQTT 5 user properties (`traceparent`); a v3 client gets
    /// none (3.1.1 has no properties).
    pub(crate) async fn publish_with(
        &self,
        topic: ByteString,
        payload: Bytes,
        qos: QoS,
        props: Vec<(ByteString, ByteString)>,
    ) -> Result<(), String> {
        let v5 = |s: &v5::MqttSink| {
            let p = s.publish(topic.clone());
            if props.is_empty() {
                p
            } else {
                p.properties(|p| p.user_properties = props.clone())
            }
        };
        let r = match (self, qos) {
            (Sink::V3(s), QoS::AtMostOnce) => s.publish(topic).send_at_most_once(payload),
            (Sink::V3(s), _) => s.publish(topic).send_at_least_once(payload).await,
            (Sink::V5(s), QoS::AtMostOnce) => v5(s).send_at_most_once(payload),
            (Sink::V5(s), _) => {
                let ack = v5(s).send_at_least_once(payload).await;
                return match ack {
                    Ok(a)
                        if matches!(
                            a.reason_code,
                            v5::codec::PublishAckReason::Success
                                | v5::codec::PublishAckReason::NoMatchingSubscribers
                        ) =>
                    {
                        Ok(())
                    }
                    Ok(a) => Err(format!("client answered {:?}", a.reason_code)),
                    Err(e) => Err(e.to_string()),
                };
            }
        };
        r.map_err(|e| e.to_string())
    }

    /// Whether the client reads what it is sent: its write buffer is below its high
    /// watermark and it has QoS 1 credit left.
    pub(crate) fn is_ready(&self) -> bool {
        match self {
            Sink::V3(s) => s.is_ready(),
            Sink::V5(s) => s.is_ready(),
        }
    }

    /// Closes the connection, telling a v5 client why.
    pub(crate) fn close(&self, reason: CloseReason) {
        match self {
            Sink::V3(s) => s.close(),
            Sink::V5(s) => {
                use v5::codec::DisconnectReasonCode as C;
                let code = match reason {
                    CloseReason::Takeover => C::SessionTakenOver,
                    CloseReason::Shutdown => C::ServerShuttingDown,
                    CloseReason::RateLimited => C::MessageRateTooHigh,
                    CloseReason::Refused => C::NotAuthorized,
                    CloseReason::BusFailed => C::ServerBusy,
                    CloseReason::Retain => C::RetainNotSupported,
                    CloseReason::Revoked => C::NotAuthorized,
                    CloseReason::SlowClient => C::QuotaExceeded,
                    CloseReason::Malformed => C::MalformedPacket,
                };
                s.close_with_reason(v5::codec::Disconnect {
                    reason_code: code,
                    ..Default::default()
                });
            }
        }
    }
}

/// What a connection is: fixed at CONNECT, shared by its session task and its services.
#[derive(Debug)]
pub(crate) struct Conn {
    /// Unique per front.
    pub(crate) id: u64,
    /// Who connected.
    pub(crate) identity: Identity,
    /// The client's address.
    pub(crate) remote: Option<SocketAddr>,
    /// Writes to the client.
    pub(crate) sink: Sink,
    /// Asks the session task to close the connection.
    pub(crate) close: Arc<CloseSignal>,
    /// Shared with the [`SessionMap`] entry: the devices a gateway's session reached (a
    /// connection that takes the session over, on any thread, takes them over).
    pub(crate) reached: Reached,
}

/// A connection's mutable state, owned by its session task alone.
#[derive(Debug)]
pub(crate) struct State {
    /// What it subscribed to.
    pub(crate) subs: Subs,
    /// Rate limits.
    pub(crate) limits: ConnLimits,
    /// Why the front closes it, once it decided to: from then on publishes are not taken
    /// in, and those taken in before get their verdict before the socket closes.
    pub(crate) closing: Option<CloseReason>,
    /// The client sent DISCONNECT.
    pub(crate) client_disconnected: bool,
}

impl State {
    pub(crate) fn new(limits: ConnLimits) -> Self {
        State {
            subs: Subs::default(),
            limits,
            closing: None,
            client_disconnected: false,
        }
    }
}

/// A packet of the client for its session task, queued by the ntex services in packet
/// order; those that need an answer carry where to send it.
#[derive(Debug)]
pub(crate) enum Packet {
    /// A PUBLISH; its payload is read by the session task, in order.
    Publish {
        topic: ByteString,
        payload: ntex_mqtt::Payload,
        retain: bool,
        /// The trace the client's MQTT 5 `traceparent` user property names.
        parent: Option<opentelemetry::Context>,
        verdict: oneshot::Sender<crate::front::Verdict>,
    },
    /// One filter of a SUBSCRIBE.
    Subscribe {
        filter: ByteString,
        qos: QoS,
        granted: oneshot::Sender<Result<QoS, crate::front::SubscribeRefused>>,
    },
    /// One filter of an UNSUBSCRIBE.
    Unsubscribe(ByteString),
    /// The client sent DISCONNECT.
    Disconnect,
}

/// What the ntex services of a connection hold: the connection, and the queue to its
/// session task. The queue is unbounded but not without limit: ntex reads no more
/// publishes than `max_in_flight` / `max_in_flight_bytes` allow before their acks, and a
/// connection sends one SUBSCRIBE or UNSUBSCRIBE at a time per packet read.
#[derive(Debug, Clone)]
pub(crate) struct Handle {
    pub(crate) conn: Rc<Conn>,
    requests: mpsc::UnboundedSender<Packet>,
}

impl Handle {
    pub(crate) fn new(conn: Rc<Conn>, requests: mpsc::UnboundedSender<Packet>) -> Self {
        Handle { conn, requests }
    }

    /// Queues `req` for the session task; `false` if the task is gone.
    pub(crate) fn send(&self, req: Packet) -> bool {
        self.requests.unbounded_send(req).is_ok()
    }
}

/// The devices a gateway connection has announced, implicitly or not: each got a connect
/// through it, and each gets a disconnect when the gateway's session ends. A connection
/// that takes over the gateway's session takes them over too.
#[derive(Debug, Clone, Default)]
pub(crate) struct Reached(Arc<Mutex<HashSet<DeviceRef>>>);

impl Reached {
    fn set(&self) -> MutexGuard<'_, HashSet<DeviceRef>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Of `devices`, those not reached yet (each once, in order).
    pub(crate) fn new_of<'a>(
        &self,
        devices: impl IntoIterator<Item = &'a DeviceRef>,
    ) -> Vec<DeviceRef> {
        let mut devices = devices.into_iter().peekable();
        // Most publishes are a device's own: no lock on that path.
        if devices.peek().is_none() {
            return Vec::new();
        }
        let set = self.set();
        let mut out: Vec<DeviceRef> = Vec::new();
        for d in devices {
            if !set.contains(d) && !out.contains(d) {
                out.push(d.clone());
            }
        }
        out
    }

    pub(crate) fn insert(&self, d: DeviceRef) {
        self.set().insert(d);
    }

    pub(crate) fn remove(&self, d: &DeviceRef) {
        self.set().remove(d);
    }

    /// Everything reached, emptied.
    pub(crate) fn take(&self) -> Vec<DeviceRef> {
        self.set().drain().collect()
    }

    /// Adds what `other` reached (a takeover).
    pub(crate) fn adopt(&self, other: &Reached) {
        let theirs = other.take();
        self.set().extend(theirs);
    }
}

impl Conn {
    pub(crate) fn key(&self) -> (TenantId, DeviceId) {
        (
            self.identity.tenant.clone(),
            self.identity.principal.device().clone(),
        )
    }
}
