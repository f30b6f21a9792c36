//! What the front does with a connection, independent of the MQTT version: CONNECT,
//! PUBLISH, SUBSCRIBE, deliveries and the end of a session. [`crate::server`] maps the
//! outcomes to v3 and v5 packets.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fluxgate_bus::{Headers, OutRecord, ProduceError, Producer, Topic, TopicsConfig, TraceParent};
use fluxgate_model::{
    Body, Channel, Check, CorrelationId, Delivery, DeviceId, DeviceRef, ENVELOPE_VERSION, Envelope,
    Ingress, MessageId, Outbound, PublishTarget, Reject, Rejection, Rendered, SessionInfo,
    SubscribeTarget, Subscription, TenantId, classify_publish, classify_subscribe, normalize,
};
use futures_channel::mpsc;
use governor::DefaultKeyedRateLimiter;
use ntex::util::{ByteString, Bytes};
use ntex_mqtt::{QoS, TopicFilter};

use crate::auth::{AuthError, Credentials, FailureDelay, Registry};
use crate::config::FrontConfig;
use crate::metrics::{FrontMetrics, dialect_label, op_label};
use crate::session::{
    CloseReason, Conn, ConnLimits, Entry, Job, NotQueued, Over, Reached, Sequencer, SessionMap,
    Sink, Subs, ToSession, next, quota,
};
pub(crate) use fluxgate_bus::now_ms;

/// Header carrying the MQTT topic of a custom-topic record on `fluxgate.mqtt.custom`.
pub(crate) const CUSTOM_TOPIC_HEADER: &str = "mqtt-topic";

/// Why a SUBSCRIBE filter is refused.
#[derive(Debug)]
pub(crate) enum SubscribeRefused {
    /// Not allowed to this client.
    Denied(Reject),
    /// Allowed, but what it implies could not be put on the bus (try again).
    Unavailable(String),
}

impl SubscribeRefused {
    pub(crate) fn message(&self) -> String {
        match self {
            SubscribeRefused::Denied(r) => r.message(),
            SubscribeRefused::Unavailable(e) => format!("bus unavailable: {e}"),
        }
    }
}

/// Why a CONNECT is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Credentials (see [`AuthError`]).
    Auth(AuthError),
    /// The front is shutting down.
    Draining,
    /// The client is blocked after going over a rate limit.
    Blocked,
    /// The application opens connections faster than allowed.
    RateLimited,
    /// CleanSession = 0 on v3 (persistent sessions are not supported; v3 has no CONNACK
    /// code that says so, "identifier rejected" is the nearest).
    PersistentSession,
    /// The presence event could not be produced.
    Unavailable,
}

impl Refusal {
    fn label(&self) -> &'static str {
        match self {
            Refusal::Auth(e) => e.label(),
            Refusal::Draining => "draining",
            Refusal::Blocked => "blocked",
            Refusal::RateLimited => "rate_limited",
            Refusal::PersistentSession => "persistent_session_unsupported",
            Refusal::Unavailable => "unavailable",
        }
    }
}

/// What became of a publish.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// On the bus (or answered locally); acknowledge.
    Accepted,
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

struct Names {
    raw: String,
    events: String,
    rejected: String,
    custom: String,
}

/// A client blocked after a rate-limit offence.
#[derive(Debug, Clone, Copy)]
struct Block {
    offences: u32,
    until: Instant,
}

/// State shared by every connection of one front.
pub(crate) struct Front {
    pub(crate) cfg: FrontConfig,
    pub(crate) registry: Registry,
    failures: FailureDelay,
    pub(crate) producer: Arc<dyn Producer>,
    names: Names,
    pub(crate) sessions: SessionMap,
    pub(crate) metrics: FrontMetrics,
    new_conns: Option<DefaultKeyedRateLimiter<TenantId>>,
    /// New-connection limiters of the applications with their own rate limits.
    app_new_conns: std::collections::HashMap<String, Option<governor::DefaultDirectRateLimiter>>,
    blocks: moka::sync::Cache<(TenantId, DeviceId), Block>,
    next_conn: AtomicU64,
    pub(crate) draining: AtomicBool,
}

impl std::fmt::Debug for Front {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Front")
            .field("instance", &self.cfg.instance_id)
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

fn new_id() -> MessageId {
    MessageId::from_parts(now_ms().max(0) as u64, fastrand::u128(..))
}

fn traced(mut rec: OutRecord) -> OutRecord {
    let mut h = Headers::new();
    TraceParent {
        trace_id: fastrand::u128(1..),
        span_id: fastrand::u64(1..),
        flags: 1,
    }
    .inject(&mut h);
    rec.headers = h;
    rec
}

impl Front {
    pub(crate) fn new(
        cfg: FrontConfig,
        registry: Registry,
        producer: Arc<dyn Producer>,
        topics: &TopicsConfig,
        metrics: FrontMetrics,
    ) -> Self {
        let new_conns = quota(cfg.rate_limits.new_connections_per_application)
            .map(governor::RateLimiter::keyed);
        let app_new_conns = cfg
            .application_rate_limits
            .iter()
            .map(|(app, r)| {
                let l = quota(r.new_connections_per_application).map(governor::RateLimiter::direct);
                (app.clone(), l)
            })
            .collect();
        Front {
            failures: FailureDelay::new(cfg.auth_failure_delay_ms, cfg.auth_failure_delay_max_ms),
            names: Names {
                raw: topics.name(Topic::IngestRaw),
                events: topics.name(Topic::DeviceEvents),
                rejected: topics.name(Topic::IngestRejected),
                custom: topics.name(Topic::MqttCustom),
            },
            registry,
            producer,
            sessions: SessionMap::default(),
            metrics,
            new_conns,
            app_new_conns,
            blocks: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(3600))
                .build(),
            next_conn: AtomicU64::new(1),
            draining: AtomicBool::new(false),
            cfg,
        }
    }

    fn session_info(&self, remote: Option<SocketAddr>) -> SessionInfo {
        SessionInfo {
            front: self.cfg.instance_id.clone(),
            remote_addr: remote.map(|a| a.to_string()),
        }
    }

    fn event(&self, conn: &Conn, body: Body) -> Envelope {
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
    fn reached_event(&self, conn: &Conn, device: DeviceRef, body: Body) -> OutRecord {
        let env = Envelope {
            device,
            via: Some(conn.identity.principal.device().clone()),
            ..self.event(conn, body)
        };
        traced(OutRecord::of(&self.names.raw, &env))
    }

    /// The connect of `device` through the gateway `conn` ([`Front::reached_event`]).
    fn reached_connect(&self, conn: &Conn, device: DeviceRef) -> OutRecord {
        let connect = Body::Connect {
            profile: None,
            session: Some(self.session_info(conn.remote)),
        };
        self.reached_event(conn, device, connect)
    }

    async fn produce_event(&self, env: &Envelope) -> Result<(), ProduceError> {
        let rec = traced(OutRecord::of(&self.names.events, env));
        self.producer.produce(rec).await.map(|_| ())
    }

    /// Authenticates a CONNECT and registers the session: takes over an earlier connection
    /// of the same device, announces the connect (durably, before the CONNACK), and starts
    /// the task that writes deliveries to the client until `gone` resolves.
    pub(crate) async fn connect(
        self: &Arc<Self>,
        creds: Credentials<'_>,
        clean_session: bool,
        remote: Option<SocketAddr>,
        sink: Sink,
        gone: impl Future<Output = ()> + 'static,
    ) -> Result<Rc<Conn>, Refusal> {
        let r = self
            .try_connect(creds, clean_session, remote, sink, gone)
            .await;
        let outcome = r.as_ref().map_or_else(Refusal::label, |_| "accepted");
        self.metrics.connects.with_label_values(&[outcome]).inc();
        if let Err(Refusal::Auth(AuthError::BadCredentials | AuthError::NotAuthorized(_))) = &r
            && let Some(ip) = remote.map(|a| a.ip())
        {
            let wait = self
                .failures
                .failed(ip, creds.client_id, creds.username)
                .await;
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        match &r {
            Err(Refusal::PersistentSession) => tracing::info!(
                client_id = creds.client_id,
                ?remote,
                reason = "persistent_session_unsupported",
                "connect refused: CleanSession=0 asks for a persistent session, which fluxgate \
                 does not keep; connect with CleanSession=1 (a v3 client reads the answer as \
                 'identifier rejected', the nearest CONNACK code; the client id is fine)"
            ),
            Err(e) => {
                tracing::info!(client_id = creds.client_id, ?remote, reason = ?e, "connect refused")
            }
            Ok(_) => {}
        }
        r
    }

    async fn try_connect(
        self: &Arc<Self>,
        creds: Credentials<'_>,
        clean_session: bool,
        remote: Option<SocketAddr>,
        sink: Sink,
        gone: impl Future<Output = ()> + 'static,
    ) -> Result<Rc<Conn>, Refusal> {
        if self.draining.load(Ordering::Relaxed) {
            return Err(Refusal::Draining);
        }
        if !clean_session {
            return Err(Refusal::PersistentSession);
        }
        let identity = self
            .registry
            .authenticate(creds)
            .await
            .map_err(Refusal::Auth)?;
        let key = (identity.tenant.clone(), identity.principal.device().clone());
        if self
            .blocks
            .get(&key)
            .is_some_and(|b| b.until > Instant::now())
        {
            return Err(Refusal::Blocked);
        }
        let over = match self.app_new_conns.get(identity.tenant.as_str()) {
            Some(app) => app.as_ref().is_some_and(|l| l.check().is_err()),
            None => self
                .new_conns
                .as_ref()
                .is_some_and(|l| l.check_key(&identity.tenant).is_err()),
        };
        if over {
            self.metrics
                .rate_limited
                .with_label_values(&["new_connections"])
                .inc();
            return Err(Refusal::RateLimited);
        }
        let limits = ConnLimits::new(&identity.principal, self.rate_limits(&identity.tenant));
        let (tx, rx) = mpsc::channel(self.cfg.max_pending_deliveries.max(1));
        let conn = Rc::new(Conn {
            id: self.next_conn.fetch_add(1, Ordering::Relaxed),
            identity,
            remote,
            sink,
            subs: std::cell::RefCell::new(Subs::default()),
            order: Sequencer::default(),
            limits,
            in_flight: std::cell::Cell::new(0),
            idle: tokio::sync::Notify::new(),
            closing: std::cell::Cell::new(None),
            client_disconnected: std::cell::Cell::new(false),
            wants_custom: Arc::new(AtomicBool::new(false)),
            reached: Reached::default(),
        });
        let entry = Entry::new(conn.id, tx, conn.wants_custom.clone(), conn.reached.clone());
        if let Some(old) = self.sessions.insert(key.clone(), entry) {
            // The devices the old session of a gateway reached stay reached, through this one.
            conn.reached.adopt(&old.reached);
            // The old connection's disconnect is announced here, before the new connect, so
            // that presence ends "online" whatever order the sockets close in.
            old.close(CloseReason::Takeover).await;
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
        ntex::rt::spawn(session_task(self.clone(), conn.clone(), rx, gone));
        Ok(conn)
    }

    fn produce_rejection(&self, conn: &Conn, reject: &Reject, payload: &[u8]) {
        let r = Rejection::new(
            conn.identity.tenant.clone(),
            conn.identity.principal.device().as_str(),
            now_ms(),
            reject,
            payload,
        );
        let rec = OutRecord::of(&self.names.rejected, &r);
        let producer = self.producer.clone();
        // The rejected log is best effort: the client already got its answer.
        ntex::rt::spawn(async move {
            if let Err(e) = producer.produce(rec).await {
                tracing::warn!(error = %e, "rejected-log record not produced");
            }
        });
    }

    /// The rate limits of an application: its own, or the front's.
    fn rate_limits(&self, tenant: &TenantId) -> &crate::config::RateLimits {
        self.cfg
            .application_rate_limits
            .get(tenant.as_str())
            .unwrap_or(&self.cfg.rate_limits)
    }

    fn block(&self, conn: &Conn) {
        let key = conn.key();
        let rl = self.rate_limits(&conn.identity.tenant);
        let offences = self.blocks.get(&key).map_or(0, |b| b.offences) + 1;
        let secs = rl
            .block_secs
            .saturating_mul(1u64 << (offences - 1).min(16))
            .min(rl.block_max_secs.max(rl.block_secs));
        self.blocks.insert(
            key,
            Block {
                offences,
                until: Instant::now() + Duration::from_secs(secs),
            },
        );
    }

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
            Ok(None) => Verdict::Accepted,
            Err(v) => v,
        };
        let outcome = match &verdict {
            Verdict::Accepted => "accepted",
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
    fn closes(&self, conn: &Conn, v: &Verdict) -> Option<CloseReason> {
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
    async fn publish_in_turn(
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
        match &class.check {
            Check::None => {}
            Check::CustomTopics if id.custom_topics => {}
            Check::CustomTopics => {
                let r = Reject::TopicNotAllowed {
                    topic: topic.to_string(),
                };
                return (kind, Err(Verdict::Denied(r)));
            }
            Check::Peripheral {
                gateway,
                peripheral,
            } => match self
                .registry
                .peripheral_allows(&id.tenant, peripheral, gateway)
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    let r = Reject::PeripheralNotAllowed {
                        gateway: gateway.to_string(),
                        peripheral: peripheral.to_string(),
                    };
                    return (kind, Err(Verdict::Denied(r)));
                }
                Err(e) => return (kind, Err(Verdict::Failed(e.to_string()))),
            },
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
    fn rate_limited(&self, conn: &Rc<Conn>, topic: &ByteString, over: Over) -> Verdict {
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
        self.block(conn);
        self.close_after_acks(conn, CloseReason::RateLimited);
        Verdict::RateLimited
    }

    async fn send_all(
        &self,
        recs: Vec<OutRecord>,
    ) -> Result<Vec<fluxgate_bus::AckFuture>, Verdict> {
        let mut acks = Vec::with_capacity(recs.len());
        for rec in recs {
            match self.producer.send(rec).await {
                Ok(a) => acks.push(a),
                Err(e) => return Err(Verdict::Failed(e.to_string())),
            }
        }
        Ok(acks)
    }

    /// ThingsBoard's SDK asks for the limits right after connecting; the answer is the
    /// limits this front enforces, in ThingsBoard's format.
    async fn answer_session_limits(&self, conn: &Conn, request_id: CorrelationId) {
        let rl = self.rate_limits(&conn.identity.tenant);
        let rate = |r: crate::config::Rate| {
            if r.messages == 0 {
                String::new()
            } else {
                format!("{}:{}", r.messages, r.window_secs)
            }
        };
        // In ThingsBoard's format: `rateLimits` are the connected device's own (for a
        // gateway: the gateway as a device), `gatewayRateLimits` those of the devices
        // behind a gateway, which its SDK applies to them all together: the gateway's.
        let own = rate(rl.thingsboard_per_device);
        let mut data = serde_json::json!({
            "maxPayloadSize": self.cfg.limits.max_payload_bytes,
            "maxInflightMessages": self.cfg.max_in_flight,
            "rateLimits": {
                "messages": own,
                "telemetryMessages": own,
                "telemetryDataPoints": "",
            },
        });
        if conn.identity.principal.is_gateway() {
            let gw = rate(rl.thingsboard_gateway);
            data["gatewayRateLimits"] = serde_json::json!({
                "messages": gw,
                "telemetryMessages": gw,
                "telemetryDataPoints": "",
            });
        }
        let d = Delivery {
            v: ENVELOPE_VERSION,
            id: new_id(),
            tenant: conn.identity.tenant.clone(),
            device: conn.identity.principal.device().clone(),
            device_name: None,
            via: None,
            dialect: conn.identity.principal.dialect(),
            body: Outbound::RpcResponse { request_id, data },
        };
        if let Ok(r) = d.render() {
            let _ = self.write(conn, &r).await;
        }
    }

    /// Writes a rendered message to the client at the QoS it subscribed with; returns
    /// whether it was delivered and why not.
    async fn write(&self, conn: &Conn, r: &Rendered) -> Result<(), &'static str> {
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
    async fn deliver(&self, conn: &Conn, mut d: Delivery) {
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
    fn outcome_record(&self, d: &Delivery, failure: Option<&str>) -> OutRecord {
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

    async fn deliver_custom(&self, conn: &Conn, topic: ByteString, payload: Bytes) {
        let qos = conn.subs.borrow().custom(&topic);
        if let Some(qos) = qos {
            let ok = conn.sink.publish(topic, payload, qos).await.is_ok();
            let label = if ok { "delivered" } else { "failed" };
            self.metrics.deliveries.with_label_values(&[label]).inc();
        }
    }

    /// Handles one SUBSCRIBE filter; returns the granted QoS.
    pub(crate) async fn subscribe(
        &self,
        conn: &Conn,
        filter: &str,
        qos: QoS,
    ) -> Result<QoS, SubscribeRefused> {
        let id = &conn.identity;
        let class = classify_subscribe(&id.principal, filter).map_err(SubscribeRefused::Denied)?;
        let denied = || Reject::TopicNotAllowed {
            topic: filter.to_owned(),
        };
        match &class.check {
            Check::None => {}
            Check::CustomTopics if id.custom_topics => {}
            Check::CustomTopics => return Err(SubscribeRefused::Denied(denied())),
            Check::Peripheral {
                gateway,
                peripheral,
            } => {
                let ok = self
                    .registry
                    .peripheral_allows(&id.tenant, peripheral, gateway)
                    .await
                    .unwrap_or(false);
                if !ok {
                    return Err(SubscribeRefused::Denied(Reject::PeripheralNotAllowed {
                        gateway: gateway.to_string(),
                        peripheral: peripheral.to_string(),
                    }));
                }
                // Seed 000: a gateway subscribed to a peripheral's commands reaches it.
                if let Err(v) = self.reach(conn, DeviceRef::Id(peripheral.clone())).await {
                    return Err(SubscribeRefused::Unavailable(format!("{v:?}")));
                }
            }
        }
        let granted = if qos == QoS::AtMostOnce {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        // The feeds a device's commands and shared attributes come on: once one is
        // registered, the dispatcher may send the commands queued for the device
        // (`Body::Subscribed`) or the shared attributes it missed while away
        // (`Body::SubscribedAttributes`).
        let announce = match &class.target {
            SubscribeTarget::Platform(Subscription::TbRpcRequests) => {
                Some((Body::Subscribed, None))
            }
            SubscribeTarget::Platform(Subscription::TbAttributeUpdates) => {
                Some((Body::SubscribedAttributes, None))
            }
            SubscribeTarget::Platform(Subscription::LosantCommands { device })
                if device != id.principal.device() =>
            {
                Some((Body::Subscribed, Some(device.clone())))
            }
            SubscribeTarget::Platform(Subscription::LosantCommands { .. }) => {
                Some((Body::Subscribed, None))
            }
            _ => None,
        };
        match class.target {
            SubscribeTarget::Platform(s) => {
                conn.subs.borrow_mut().add_platform(s.clone(), granted);
                if let Some((body, peripheral)) = announce
                    && let Err(e) = self.announce_subscribed(conn, peripheral, body).await
                {
                    conn.subs.borrow_mut().remove(Some(&s), filter);
                    return Err(SubscribeRefused::Unavailable(e));
                }
            }
            SubscribeTarget::Custom => {
                let parsed: TopicFilter = filter
                    .parse()
                    .map_err(|_| SubscribeRefused::Denied(denied()))?;
                conn.subs
                    .borrow_mut()
                    .add_custom(filter.to_owned(), parsed, granted);
                conn.wants_custom.store(true, Ordering::Relaxed);
            }
        }
        Ok(granted)
    }

    /// Tells the dispatcher that the connection now listens for the commands (or shared
    /// attributes: `body` says which) of its own device, or of the `peripheral` it
    /// reaches: on the key and topic of that device's connect, behind it. Returns once it
    /// is on the bus.
    async fn announce_subscribed(
        &self,
        conn: &Conn,
        peripheral: Option<DeviceId>,
        body: Body,
    ) -> Result<(), String> {
        let rec = match peripheral {
            Some(p) => self.reached_event(conn, DeviceRef::Id(p), body),
            None => {
                let env = self.event(conn, body);
                traced(OutRecord::of(&self.names.events, &env))
            }
        };
        for ack in self
            .send_all(vec![rec])
            .await
            .map_err(|v| format!("{v:?}"))?
        {
            ack.await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Connects `device` through the gateway `conn` unless this session reached it already;
    /// returns once the connect is on the bus.
    async fn reach(&self, conn: &Conn, device: DeviceRef) -> Result<(), Verdict> {
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

    /// Handles one UNSUBSCRIBE filter.
    pub(crate) fn unsubscribe(&self, conn: &Conn, filter: &str) {
        let feed: Option<Subscription> = classify_subscribe(&conn.identity.principal, filter)
            .ok()
            .and_then(|c| match c.target {
                SubscribeTarget::Platform(s) => Some(s),
                SubscribeTarget::Custom => None,
            });
        let mut subs = conn.subs.borrow_mut();
        subs.remove(feed.as_ref(), filter);
        conn.wants_custom
            .store(subs.has_custom(), Ordering::Relaxed);
    }

    /// The session ended: unregister it and announce the disconnect (unless another
    /// connection took over, which announced it already).
    async fn gone(&self, conn: &Conn) {
        self.metrics
            .connections
            .with_label_values(&[dialect_label(conn.identity.principal.dialect())])
            .dec();
        if !self.sessions.remove(&conn.key(), conn.id) {
            return;
        }
        let reason = match conn.closing.get() {
            Some(r) => r.as_str(),
            None if conn.client_disconnected.get() => "client disconnect",
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

async fn session_task(
    front: Arc<Front>,
    conn: Rc<Conn>,
    mut rx: mpsc::Receiver<ToSession>,
    gone: impl Future<Output = ()>,
) {
    let mut gone = std::pin::pin!(gone);
    loop {
        tokio::select! {
            () = &mut gone => break,
            msg = next(&mut rx) => match msg {
                None => break,
                // The rare branches are boxed: the task of every idle connection is only
                // as large as its resting state.
                Some(ToSession::Close(CloseReason::Shutdown)) => {
                    front.close_after_acks(&conn, CloseReason::Shutdown);
                }
                Some(ToSession::Close(r)) => conn.close(r),
                Some(ToSession::Deliver(d)) => {
                    Box::pin(front.deliver(&conn, *d)).await;
                }
                Some(ToSession::Custom(m)) => {
                    let (topic, payload) = *m;
                    Box::pin(front.deliver_custom(&conn, topic, payload)).await;
                }
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
        spawn_report(front, *d, "connection backlog full");
    }
}

fn spawn_report(front: &Front, d: Delivery, why: &'static str) {
    let rec = front.outcome_record(&d, Some(why));
    let producer = front.producer.clone();
    ntex::rt::spawn(async move {
        if let Err(e) = producer.produce(rec).await {
            tracing::warn!(delivery = %d.id, error = %e, "delivery outcome not produced");
        }
    });
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
