//! Connections: per-connection state ([`Conn`], owned by the worker thread that serves it)
//! and the front-wide map of who is connected ([`SessionMap`], shared by all threads).
//!
//! ```text
//! inbound task ──ToSession──> mpsc (bounded) ──> session task ──> MqttSink ──> client
//!                                                     │
//!                                     socket gone ───┘──> SessionMap::remove + disconnect event
//! ```
//!
//! Only the session task writes to a client, so deliveries to one connection keep their
//! order. Publishes from the client are handled by the ntex publish service; their bus sends
//! go through a [`Sequencer`] so that they reach the bus in the order they arrived even when
//! some of them wait for the registry.
//!
//! - `subs`: what a connection subscribed to; `order`: the [`Sequencer`] of its bus sends;
//!   `map`: the [`SessionMap`] and its entries (the queue to each session task).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use fluxgate_model::{Delivery, DeviceId, DeviceRef, Subscription, TenantId};
use futures_channel::mpsc;
use ntex::util::{ByteString, Bytes};
use ntex_mqtt::{QoS, TopicFilter, v3, v5};
use tokio::sync::Notify;

use crate::auth::Identity;
use crate::rate_limit::ConnLimits;

mod map;
mod order;
mod subs;

pub(crate) use map::{Entry, NotQueued, SessionMap, next};
pub(crate) use order::Sequencer;
pub(crate) use subs::Subs;

/// Something for one connection, from the inbound task.
#[derive(Debug)]
pub(crate) enum ToSession {
    /// A command, RPC or attribute message for the device (or one behind the gateway).
    Deliver(Box<Delivery>),
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
        let r = match (self, qos) {
            (Sink::V3(s), QoS::AtMostOnce) => s.publish(topic).send_at_most_once(payload),
            (Sink::V3(s), _) => s.publish(topic).send_at_least_once(payload).await,
            (Sink::V5(s), QoS::AtMostOnce) => s.publish(topic).send_at_most_once(payload),
            (Sink::V5(s), _) => {
                let ack = s.publish(topic).send_at_least_once(payload).await;
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
                };
                s.close_with_reason(v5::codec::Disconnect {
                    reason_code: code,
                    ..Default::default()
                });
            }
        }
    }
}

/// One connection's state, owned by its worker thread.
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
    /// What it subscribed to.
    pub(crate) subs: RefCell<Subs>,
    /// Orders bus sends.
    pub(crate) order: Sequencer,
    /// Rate limits.
    pub(crate) limits: ConnLimits,
    /// Publishes taken in ([`Conn::begin_publish`]) that have no verdict yet.
    pub(crate) in_flight: Cell<usize>,
    /// Signalled when `in_flight` drops to zero.
    pub(crate) idle: Notify,
    /// Why the front closes it, once it decided to: from then on publishes are not taken
    /// in, and those taken in before get their verdict before the socket closes.
    pub(crate) closing: Cell<Option<CloseReason>>,
    /// The client sent DISCONNECT.
    pub(crate) client_disconnected: Cell<bool>,
    /// Shared with the [`SessionMap`] entry: the connection has custom subscriptions.
    pub(crate) wants_custom: Arc<AtomicBool>,
    /// Shared with the [`SessionMap`] entry: the devices a gateway's session reached.
    pub(crate) reached: Reached,
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
    /// Closes the connection for `reason` now (the first reason given is the one
    /// reported). [`crate::front::Front::close_after_acks`] closes it gracefully.
    pub(crate) fn close(&self, reason: CloseReason) {
        self.mark_closing(reason);
        self.sink.close(reason);
    }

    /// Stops taking in publishes, for `reason` (the first reason given is kept).
    pub(crate) fn mark_closing(&self, reason: CloseReason) {
        if self.closing.get().is_none() {
            self.closing.set(Some(reason));
        }
    }

    pub(crate) fn key(&self) -> (TenantId, DeviceId) {
        (
            self.identity.tenant.clone(),
            self.identity.principal.device().clone(),
        )
    }
}

/// A publish the connection took in before it began to close: its place in the bus order
/// and its in-flight mark. Held until the publish has its verdict (and so its ack), so a
/// closing connection waits for exactly these ([`Conn::idle`]).
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) ticket: u64,
    _in_flight: InFlight,
}

impl Conn {
    /// Takes in a publish that just arrived (synchronously, in packet order): `None` when
    /// the connection is closing, so the publish is neither stored nor acknowledged.
    pub(crate) fn begin_publish(self: &Rc<Self>, gauge: &prometheus::IntGauge) -> Option<Job> {
        if self.closing.get().is_some() {
            return None;
        }
        Some(Job {
            ticket: self.order.ticket(),
            _in_flight: InFlight::new(self.clone(), gauge.clone()),
        })
    }
}

/// Marks a publish as in flight for as long as it lives.
#[derive(Debug)]
struct InFlight(Rc<Conn>, prometheus::IntGauge);

impl InFlight {
    fn new(conn: Rc<Conn>, gauge: prometheus::IntGauge) -> Self {
        conn.in_flight.set(conn.in_flight.get() + 1);
        gauge.inc();
        InFlight(conn, gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let n = self.0.in_flight.get().saturating_sub(1);
        self.0.in_flight.set(n);
        self.1.dec();
        if n == 0 {
            self.0.idle.notify_waiters();
        }
    }
}
