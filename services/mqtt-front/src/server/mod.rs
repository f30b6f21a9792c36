//! The ntex-mqtt wiring: one MQTT 3.1.1 + 5 service factory per listener, mapping the
//! front's version-independent outcomes ([`crate::front`]) to v3 and v5 packets.
//!
//! - `tls`: the TLS listeners' certificate, reloaded when its files change.
//! - `websocket`: MQTT over WebSocket (`ws`, `wss`): the HTTP upgrade, then the same service.

mod tls;
mod websocket;

pub(crate) use tls::{tls_config, tls_service};
pub(crate) use websocket::{ws_service, wss_service};

use std::io;
use std::sync::Arc;

use ntex::http::{self, HttpService, Request, Response, h1};
use ntex::io::types::PeerAddr;
use ntex::io::{Filter, Io, Layer};
use ntex::server::rustls::TlsAcceptor;
use ntex::service::{
    Pipeline, ServiceFactory, chain_factory, fn_factory, fn_factory_with_config, fn_service,
};
use ntex::util::{ByteString, Ready};
use ntex::{SharedCfg, ws};
use ntex_mqtt::{MqttError, MqttServer, MqttServiceConfig, QoS, v3, v5};

use crate::auth::{AuthError, Credentials};
use crate::config::{TlsFiles, V3Refusal};
use crate::front::{Front, Refusal, SubscribeRefused, Verdict};
use crate::session::{Handle, Packet, Sink};

/// The error that ends a connection (v3 has no other way to refuse a publish).
#[derive(Debug)]
pub(crate) struct Closed(pub(crate) &'static str);

impl From<()> for Closed {
    fn from((): ()) -> Self {
        Closed("service error")
    }
}

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Closed {}

impl TryFrom<Closed> for v5::PublishAck {
    type Error = Closed;

    fn try_from(err: Closed) -> Result<Self, Self::Error> {
        Err(err)
    }
}

/// The largest MQTT packet a listener reads: the payload limit, and room for the topic
/// name and properties that ride on top of it. No payload is longer.
pub(crate) fn max_packet_bytes(cfg: &crate::FrontConfig) -> u32 {
    u32::try_from(cfg.limits.max_payload_bytes)
        .unwrap_or(u32::MAX)
        .saturating_add(8 * 1024)
}

/// The ntex-mqtt settings of every listener.
pub(crate) fn mqtt_config(front: &Front) -> SharedCfg {
    let c = &front.cfg;
    let max_packet = max_packet_bytes(c);
    SharedCfg::new("fluxgate-mqtt")
        // Smaller io buffers than ntex's 16 KiB defaults: most device packets are small,
        // and what a connection keeps counts in memory per idle connection.
        .add(
            ntex::io::IoConfig::new()
                .set_read_buf(4 * 1024, 512, 128)
                .set_write_buf(4 * 1024, 512, 128)
                .set_write_page_size(ntex::util::BytePageSize::Size4),
        )
        .add(
            MqttServiceConfig::new()
                .set_max_qos(QoS::AtLeastOnce)
                .set_max_size(max_packet)
                // v3 counts publishes in flight; a v5 client is told 65535 (at CONNACK).
                .set_max_receive(c.max_in_flight)
                .set_max_receive_size(c.max_in_flight_bytes)
                .set_connect_timeout(ntex::time::Seconds(c.connect_timeout_secs))
                // A publish read from the socket is handled even when the client's
                // DISCONNECT (or its closing the socket) was read right behind it, as
                // one-shot clients do (mosquitto_pub, cron scripts, battery devices).
                .set_handle_qos_after_disconnect(Some(QoS::AtLeastOnce))
                .set_handshake_timeout(ntex::time::Seconds(c.connect_timeout_secs)),
        )
        .into()
}

fn remote(io: &ntex::io::IoBoxed) -> Option<std::net::SocketAddr> {
    io.query::<PeerAddr>().get().map(|a| a.0)
}

async fn handshake_v3(
    front: Arc<Front>,
    h: v3::Handshake,
) -> Result<v3::HandshakeAck<Handle>, Closed> {
    let pkt = h.packet();
    let creds = Credentials {
        client_id: &pkt.client_id,
        username: pkt.username.as_deref(),
        password: pkt.password.as_deref(),
    };
    let gone = h.io().on_disconnect();
    let r = front
        .connect(
            creds,
            pkt.clean_session,
            remote(h.io()),
            Sink::V3(h.sink()),
            gone,
        )
        .await;
    // Read before the handshake is consumed by its answer.
    let imposed = front.cfg.imposed_keepalive(h.packet().keep_alive);
    Ok(match r {
        // ntex closes a session silent for 1.5 times its keep-alive (30 s for none); an
        // imposed one is timed the same way. v3 cannot tell the client.
        Ok(conn) => match imposed {
            Some(ka) => h
                .ack(conn, false)
                .idle_timeout(ntex::time::Seconds(ka.saturating_add(ka / 2))),
            None => h.ack(conn, false),
        },
        Err(Refusal::Auth(AuthError::BadCredentials)) => h.bad_username_or_pwd(),
        Err(Refusal::Auth(AuthError::NotAuthorized(_))) => h.not_authorized(),
        Err(Refusal::PersistentSession) => h.identifier_rejected(),
        Err(_) => h.service_unavailable(),
    })
}

async fn handshake_v5(
    front: Arc<Front>,
    h: v5::Handshake,
) -> Result<v5::HandshakeAck<Handle>, Closed> {
    use v5::codec::ConnectAckReason as C;
    let pkt = h.packet();
    let creds = Credentials {
        client_id: &pkt.client_id,
        username: pkt.username.as_deref(),
        password: pkt.password.as_deref(),
    };
    // v5 keeps no session when the expiry interval is 0, whatever Clean Start says.
    let clean = pkt.clean_start || pkt.session_expiry_interval_secs == 0;
    let imposed = front.cfg.imposed_keepalive(pkt.keep_alive);
    let gone = h.io().on_disconnect();
    let r = front
        .connect(creds, clean, remote(h.io()), Sink::V5(h.sink()), gone)
        .await;
    let code = match r {
        Ok(conn) => {
            let ack = match imposed {
                // Told in the CONNACK's Server Keep Alive; silent for 1.5 times it, closed.
                Some(ka) => h.ack(conn).keep_alive(ka.saturating_add(ka / 2)),
                None => h.ack(conn),
            };
            return Ok(ack.with(|ack| {
                if let Some(ka) = imposed {
                    ack.server_keepalive_sec = Some(ka);
                }
                ack.retain_available = false;
                ack.shared_subscription_available = false;
                ack.subscription_identifiers_available = false;
                ack.session_expiry_interval_secs = Some(0);
                // Back-pressure is by bytes in flight (`max_in_flight_bytes`): a client
                // that sends more than a small Receive Maximum (MQTT.js has no limit,
                // paho 2 keeps 20) is slowed down, not disconnected with its publishes.
                ack.receive_max = std::num::NonZeroU16::MAX;
            }));
        }
        Err(Refusal::Auth(AuthError::BadCredentials)) => C::BadUserNameOrPassword,
        Err(Refusal::Auth(AuthError::NotAuthorized(_))) => C::NotAuthorized,
        Err(Refusal::PersistentSession) => C::ImplementationSpecificError,
        Err(Refusal::Blocked | Refusal::Full) => C::QuotaExceeded,
        Err(Refusal::RateLimited) => C::ConnectionRateExceeded,
        Err(
            Refusal::Draining | Refusal::Unavailable | Refusal::Auth(AuthError::Unavailable(_)),
        ) => C::ServerUnavailable,
    };
    Ok(h.failed(code))
}

/// Queues a PUBLISH for the connection's session task, synchronously, in packet order
/// (ntex calls the publish service in that order), and waits for its verdict. The task
/// handles what it was given even when ntex drops this future (a client that sends
/// DISCONNECT right after its publishes): a publish the server has read still reaches
/// the bus.
fn take_in(
    h: &Handle,
    topic: ByteString,
    payload: ntex_mqtt::Payload,
    retain: bool,
    parent: Option<opentelemetry::Context>,
) -> impl Future<Output = Verdict> + use<> {
    let (verdict, rx) = tokio::sync::oneshot::channel();
    let queued = h.send(Packet::Publish {
        topic,
        payload,
        retain,
        parent,
        verdict,
    });
    async move {
        if !queued {
            return Verdict::Dropped;
        }
        rx.await.unwrap_or(Verdict::Dropped)
    }
}

/// MQTT 5 user properties as a trace-context carrier (`traceparent`, `tracestate`).
pub(crate) struct UserProps<'a>(pub(crate) &'a [(ByteString, ByteString)]);

impl opentelemetry::propagation::Extractor for UserProps<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k.as_str() == key)
            .map(|(_, v)| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_str()).collect()
    }
}

/// The trace a v5 PUBLISH names in its `traceparent` user property (as EMQX reads it).
fn trace_parent(props: &[(ByteString, ByteString)]) -> Option<opentelemetry::Context> {
    if !props.iter().any(|(k, _)| k.as_str() == "traceparent") {
        return None;
    }
    fluxgate_observability::telemetry::extract(&UserProps(props))
}

/// The answer to a publish that must not be acknowledged on a connection that is closing:
/// none. Later publishes are not taken in either, and ntex drops this future when the
/// connection closes (acks before it in the queue are written first).
async fn never_answered<T>() -> T {
    std::future::pending().await
}

async fn publish_v3(
    front: Arc<Front>,
    verdict: impl Future<Output = Verdict>,
) -> Result<(), Closed> {
    match verdict.await {
        Verdict::Accepted | Verdict::Answered => Ok(()),
        Verdict::Denied(_) if front.cfg.v3_on_denied == V3Refusal::Drop => Ok(()),
        Verdict::Malformed(_) if front.cfg.v3_on_malformed == V3Refusal::Drop => Ok(()),
        // The connection is closing (the front began it with the verdict), or the
        // publish was not taken in: v3 has no negative PUBACK, the client learns of the
        // refusal by the close.
        _ => never_answered().await,
    }
}

async fn publish_v5(
    p: v5::Publish,
    verdict: impl Future<Output = Verdict>,
) -> Result<v5::PublishAck, Closed> {
    use v5::codec::PublishAckReason as R;
    let v = verdict.await;
    let (code, reason) = match v {
        Verdict::Accepted | Verdict::Answered => return Ok(p.ack()),
        Verdict::Denied(r) => (R::NotAuthorized, r.message()),
        Verdict::Malformed(r) if r.is_payload_format() => (R::PayloadFormatInvalid, r.message()),
        Verdict::Malformed(r) => (R::ImplementationSpecificError, r.message()),
        // The connection is closing (the front began it with the verdict), or the
        // publish was not taken in.
        Verdict::RetainRefused | Verdict::RateLimited | Verdict::Dropped => {
            return never_answered().await;
        }
        Verdict::Failed(e) => (
            R::UnspecifiedError,
            fluxgate_model::bounded(&e, fluxgate_model::Reject::MESSAGE_BYTES).into_owned(),
        ),
    };
    Ok(p.ack().reason_code(code).reason(reason.into()))
}

/// One SUBSCRIBE filter, handled by the session task in packet order: the QoS granted,
/// or why not (logged).
async fn subscribe(h: &Handle, filter: ByteString, qos: QoS) -> Result<QoS, SubscribeRefused> {
    let (granted, rx) = tokio::sync::oneshot::channel();
    let queued = h.send(Packet::Subscribe {
        filter: filter.clone(),
        qos,
        granted,
    });
    let gone = || SubscribeRefused::Unavailable("connection closed".into());
    let r = match queued {
        true => rx.await.unwrap_or_else(|_| Err(gone())),
        false => Err(gone()),
    };
    if let Err(r) = &r {
        let filter = fluxgate_model::bounded(&filter, 128);
        tracing::info!(device = %h.conn.identity.principal.device(), %filter, reason = %r.message(), "subscribe refused");
    }
    r
}

async fn protocol_v3(
    h: Handle,
    msg: v3::ProtocolMessage,
) -> Result<v3::ProtocolMessageAck, Closed> {
    Ok(match msg {
        v3::ProtocolMessage::Subscribe(mut s) => {
            for mut sub in s.iter_mut() {
                match subscribe(&h, sub.topic().clone(), sub.qos()).await {
                    Ok(q) => sub.confirm(q),
                    Err(_) => sub.fail(),
                }
            }
            s.ack()
        }
        v3::ProtocolMessage::Unsubscribe(u) => {
            for f in u.iter() {
                h.send(Packet::Unsubscribe(f.clone()));
            }
            u.ack()
        }
        v3::ProtocolMessage::Disconnect(d) => {
            h.send(Packet::Disconnect);
            d.ack()
        }
        other => other.ack(),
    })
}

async fn protocol_v5(
    h: Handle,
    msg: v5::ProtocolMessage,
) -> Result<v5::ProtocolMessageAck, Closed> {
    use v5::codec::SubscribeAckReason as R;
    Ok(match msg {
        v5::ProtocolMessage::Subscribe(mut s) => {
            for mut sub in s.iter_mut() {
                match subscribe(&h, sub.topic().clone(), sub.options().qos).await {
                    Ok(q) => sub.confirm(q),
                    Err(SubscribeRefused::Denied(_)) => sub.fail(R::NotAuthorized),
                    Err(SubscribeRefused::Unavailable(_)) => sub.fail(R::UnspecifiedError),
                }
            }
            s.ack()
        }
        v5::ProtocolMessage::Unsubscribe(mut u) => {
            for mut f in u.iter_mut() {
                h.send(Packet::Unsubscribe(f.topic().clone()));
                f.success();
            }
            u.ack()
        }
        v5::ProtocolMessage::Disconnect(d) => {
            h.send(Packet::Disconnect);
            d.ack()
        }
        other => other.ack(),
    })
}

fn count_protocol_error<E>(front: &Front, c: &ntex_mqtt::Control<E>) {
    if let ntex_mqtt::Control::Stop(ntex_mqtt::Reason::Protocol(e)) = c {
        front.metrics.protocol_errors.inc();
        tracing::info!(error = %e.get_ref(), "connection closed for a protocol error");
    }
}

/// `listener` (MQTT over any transport) behind the front's socket admission: a socket
/// accepted while `max_pending_connections` others have not become sessions is closed at
/// once (counted); the others are counted while they are open.
pub(crate) fn gated<R, S>(
    front: Arc<Front>,
    listener: S,
) -> impl ServiceFactory<R, SharedCfg, Response = (), Error = S::Error, InitError = S::InitError>
where
    S: ServiceFactory<R, SharedCfg, Response = ()>,
{
    ntex::service::apply_fn_factory(
        listener,
        async move |io: R, svc: &ntex::service::dev::ApplyCtx<'_, S::Service>| {
            let sessions = front.sessions.len();
            let Some(_socket) = front.admission.open_socket(sessions) else {
                front.metrics.pending_refused.inc();
                return Ok(()); // dropped: closed
            };
            svc.call(io).await
        },
    )
}

/// The MQTT 3.1.1 + 5 service for one accepted connection of any transport.
pub(crate) fn mqtt_service<F: Filter>(
    front: Arc<Front>,
) -> impl ServiceFactory<Io<F>, SharedCfg, Response = (), Error = MqttError<Closed>, InitError = ()>
{
    let (f3, f5) = (front.clone(), front);
    let v3 = v3::MqttServer::new({
        let f = f3.clone();
        move |h| handshake_v3(f.clone(), h)
    })
    .protocol(fn_factory_with_config({
        move |s: v3::Session<Handle>| {
            Ready::Ok::<_, Closed>(fn_service(move |m| protocol_v3(Handle::clone(&s), m)))
        }
    }))
    .control(fn_factory_with_config({
        let f = f3.clone();
        move |_s: v3::Session<Handle>| {
            let f = f.clone();
            Ready::Ok::<_, Closed>(fn_service(move |c: ntex_mqtt::Control<Closed>| {
                count_protocol_error(&f, &c);
                Ready::Ok::<_, Closed>(None)
            }))
        }
    }))
    .publish(fn_factory_with_config(move |s: v3::Session<Handle>| {
        let f = f3.clone();
        Ready::Ok::<_, Closed>(fn_service(move |mut p: v3::Publish| {
            // Queued here, synchronously, in packet order.
            let topic = p.topic().get_ref().clone();
            let verdict = take_in(&s, topic, p.take_payload(), p.retain(), None);
            publish_v3(f.clone(), verdict)
        }))
    }));
    let v5 = v5::MqttServer::new({
        let f = f5.clone();
        move |h| handshake_v5(f.clone(), h)
    })
    .protocol(fn_factory_with_config({
        move |s: v5::Session<Handle>| {
            Ready::Ok::<_, Closed>(fn_service(move |m| protocol_v5(Handle::clone(&s), m)))
        }
    }))
    .control(fn_factory_with_config({
        let f = f5.clone();
        move |_s: v5::Session<Handle>| {
            let f = f.clone();
            Ready::Ok::<_, Closed>(fn_service(move |c: ntex_mqtt::Control<Closed>| {
                count_protocol_error(&f, &c);
                Ready::Ok::<_, Closed>(None)
            }))
        }
    }))
    .publish(fn_factory_with_config(move |s: v5::Session<Handle>| {
        Ready::Ok::<_, Closed>(fn_service(move |mut p: v5::Publish| {
            let topic = p.topic().get_ref().clone();
            let parent = trace_parent(&p.packet().properties.user_properties);
            let verdict = take_in(&s, topic, p.take_payload(), p.retain(), parent);
            publish_v5(p, verdict)
        }))
    }));
    MqttServer::new().v3(v3).v5(v5)
}
