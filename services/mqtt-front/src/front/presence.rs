//! Presence: who is connected here, announced to the rest of the system. A session's
//! connect is on `fluxgate.device.events` before its CONNACK; a takeover announces the
//! old session's disconnect first; a gateway reaches the devices behind it (their
//! connects go on `fluxgate.ingest.raw`, behind the gateway's other messages about them);
//! the end of a session disconnects it and every device it reached.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use fluxgate_bus::{OutRecord, ProduceError};
use fluxgate_model::{Body, Channel, DeviceRef, ENVELOPE_VERSION, Envelope, SessionInfo};
use futures_channel::mpsc;

use super::admission::Refusal;
use super::link::Link;
use super::publish::Verdict;
use super::{Front, new_id, now_ms, traced};
use crate::auth::Identity;
use crate::metrics::dialect_label;
use crate::rate_limit::ConnLimits;
use crate::session::{CloseReason, CloseSignal, Conn, Entry, Handle, Reached, Sink, State};

impl Front {
    /// Registers the session of an admitted client: takes over an earlier connection of
    /// the same device, announces the connect (durably, before the CONNACK), and starts
    /// the connection's session task, which serves it until `gone` resolves.
    pub(super) async fn register(
        self: &Arc<Self>,
        identity: Identity,
        remote: Option<SocketAddr>,
        sink: Sink,
        gone: impl Future<Output = ()> + 'static,
    ) -> Result<Handle, Refusal> {
        let key = (identity.tenant.clone(), identity.principal.device().clone());
        let limits = ConnLimits::new(&identity.principal, self.rate_limits(&identity.tenant));
        let (tx, rx) = mpsc::channel(self.cfg.max_pending_deliveries.max(1));
        let close = Arc::new(CloseSignal::default());
        let conn = Rc::new(Conn {
            id: self.next_conn.fetch_add(1, Ordering::Relaxed),
            identity,
            remote,
            sink,
            close: close.clone(),
            reached: Reached::default(),
        });
        let entry = Entry::new(
            conn.id,
            tx,
            close.clone(),
            conn.reached.clone(),
            conn.identity.credential.clone(),
        );
        if let Some(old) = self.sessions.insert(key.clone(), entry) {
            // The devices the old session of a gateway reached stay reached, through this one.
            conn.reached.adopt(&old.reached);
            // The old connection's disconnect is announced here, before the new connect, so
            // that presence ends "online" whatever order the sockets close in.
            old.close(CloseReason::Takeover);
            let ev = self.event(
                &conn,
                Body::Disconnect {
                    reason: Some(CloseReason::Takeover.as_str().into()),
                    session: Some(self.session_info(None)),
                },
            );
            if let Err(e) = self.produce_event(&ev).await {
                tracing::warn!(error = %e, "takeover disconnect event not produced");
            }
        }
        let ev = self.event(
            &conn,
            Body::Connect {
                profile: None,
                session: Some(self.session_info(remote)),
            },
        );
        if let Err(e) = self.produce_event(&ev).await {
            tracing::warn!(error = %e, "connect event not produced; refusing the connection");
            self.sessions.remove(&key, conn.id);
            return Err(Refusal::Unavailable);
        }
        self.metrics
            .connections
            .with_label_values(&[dialect_label(conn.identity.principal.dialect())])
            .inc();
        let (requests, queued) = mpsc::unbounded();
        let link = Link::new(
            self.clone(),
            conn.clone(),
            State::new(limits),
            queued,
            rx,
            close,
        );
        ntex::rt::spawn(link.run(gone));
        Ok(Handle::new(conn, requests))
    }

    pub(super) fn session_info(&self, remote: Option<SocketAddr>) -> SessionInfo {
        SessionInfo {
            front: self.cfg.instance_id.clone(),
            remote_addr: remote.map(|a| a.to_string()),
        }
    }

    pub(super) fn event(&self, conn: &Conn, body: Body) -> Envelope {
        Envelope {
            v: ENVELOPE_VERSION,
            id: new_id(),
            part: 0,
            tenant: conn.identity.tenant.clone(),
            device: DeviceRef::Id(conn.identity.principal.device().clone()),
            via: None,
            dialect: conn.identity.principal.dialect(),
            channel: Channel::Internal,
            received_ms: now_ms(),
            body,
        }
    }

    /// A connect or disconnect of `device`, reached through the gateway `conn`: on the raw
    /// topic, behind the gateway's other messages about it, for the validator to resolve.
    pub(super) fn reached_event(&self, conn: &Conn, device: DeviceRef, body: Body) -> OutRecord {
        let env = Envelope {
            device,
            via: Some(conn.identity.principal.device().clone()),
            ..self.event(conn, body)
        };
        traced(OutRecord::of(&self.names.raw, &env))
    }

    /// The connect of `device` through the gateway `conn` ([`Front::reached_event`]).
    pub(super) fn reached_connect(&self, conn: &Conn, device: DeviceRef) -> OutRecord {
        let connect = Body::Connect {
            profile: None,
            session: Some(self.session_info(conn.remote)),
        };
        self.reached_event(conn, device, connect)
    }

    pub(super) async fn produce_event(&self, env: &Envelope) -> Result<(), ProduceError> {
        let rec = traced(OutRecord::of(&self.names.events, env));
        self.producer.produce(rec).await.map(|_| ())
    }

    /// Connects `device` through the gateway `conn` unless this session reached it already;
    /// returns once the connect is on the bus.
    pub(super) async fn reach(&self, conn: &Conn, device: DeviceRef) -> Result<(), Verdict> {
        let Some(d) = conn.reached.new_of([&device]).pop() else {
            return Ok(());
        };
        for ack in self
            .send_all(vec![self.reached_connect(conn, d.clone())])
            .await?
        {
            ack.await.map_err(|e| Verdict::Failed(e.to_string()))?;
        }
        conn.reached.insert(d);
        Ok(())
    }

    /// The session ended: unregister it and announce the disconnect (unless another
    /// connection took over, which announced it already).
    pub(super) async fn gone(&self, conn: &Conn, state: &State) {
        self.metrics
            .connections
            .with_label_values(&[dialect_label(conn.identity.principal.dialect())])
            .dec();
        if !self.sessions.remove(&conn.key(), conn.id) {
            return;
        }
        let reason = match state.closing {
            Some(r) => r.as_str(),
            None if state.client_disconnected => "client disconnect",
            None => "connection lost",
        };
        let ev = self.event(
            conn,
            Body::Disconnect {
                reason: Some(reason.into()),
                session: Some(self.session_info(conn.remote)),
            },
        );
        if let Err(e) = self.produce_event(&ev).await {
            tracing::warn!(error = %e, "disconnect event not produced");
        }
        // Every device the gateway reached is disconnected with it, each on its own key.
        let why = format!("gateway session ended: {reason}");
        let recs: Vec<OutRecord> = (conn.reached.take().into_iter())
            .map(|d| {
                let body = Body::Disconnect {
                    reason: Some(why.clone()),
                    session: Some(self.session_info(conn.remote)),
                };
                self.reached_event(conn, d, body)
            })
            .collect();
        let count = recs.len();
        match self.send_all(recs).await {
            Ok(acks) => {
                for a in acks {
                    if let Err(e) = a.await {
                        tracing::warn!(error = %e, "disconnect of a device behind a gateway not produced");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(devices = count, error = ?e, "disconnects of the devices behind a gateway not produced")
            }
        }
    }
}
