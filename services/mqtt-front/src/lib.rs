//! `fluxgate-mqtt-front`: the stateless MQTT service devices and gateways connect to.
//!
//! ```text
//!            CONNECT ──> auth (registry, cached) ──> presence: connect ──> fluxgate.device.events
//! device ──> PUBLISH ──> ACL (topic, peripheral policy) ──> normalize ──> fluxgate.ingest.raw
//!   ^                     custom topics ─────────────────────────────> fluxgate.mqtt.custom
//!   │                     refused / malformed ──> PUBACK reason (v5) or close (v3) + fluxgate.ingest.rejected
//!   │        PUBACK only after the bus acknowledged every record of the publish
//!   │        a gateway's first message about a device (or, Losant, its subscription to the
//!   │        device's command topic) ──> connect of that device ──> fluxgate.ingest.raw;
//!   │        the gateway's session end ──> disconnect of each device it reached
//!   │
//!   └── session task <── inbound task <── fluxgate.deliveries, fluxgate.mqtt.custom (broadcast)
//!                                     <── fluxgate.registry.changes (cache invalidation)
//! ```
//!
//! - [`auth`]: CONNECT credentials and the registry reads the ACL needs, cached.
//! - `front`: what happens to a CONNECT, PUBLISH, SUBSCRIBE and a delivery, independent
//!   of the MQTT version, one module per job: `admission` (draining, blocks, per-application
//!   connection limits, the failed-auth delay), `acl` (the one topic check publish and
//!   subscribe share), `publish` (normalize, produce, PUBACK after the bus ack),
//!   `presence` (connects and disconnects, of a gateway's devices too), `subscribe`,
//!   `link` (the session task: the one owner of a connection's state, taking its packets
//!   in order), `deliver` (commands, RPC and attribute answers to the session holding the
//!   device),
//!   `thingsboard` (what the front answers itself), `side` (rejections and delivery
//!   outcomes on one bounded queue). `server` maps it to v3 and v5 packets (ntex-mqtt),
//!   with the TLS certificate reload and the WebSocket upgrade.
//! - `session`: per-connection state and the front-wide map of connected devices.
//! - `inbound`: what the front reads from the bus (deliveries, custom-topic messages,
//!   registry changes), decoded once and routed.
//! - `rate_limit`: per-connection message and byte quotas.
//! - [`metrics`]: the front's metrics, made from `fluxgate_observability::catalogue`.
//!
//! Readiness (`/readyz`): the consumer holds every topic the front reads (deliveries,
//! custom topics, registry changes), and the probes the binary adds (bus metadata, store
//! ping) pass.
//!
//! Each connection is served by one ntex worker thread and one session task there; its
//! ntex services queue the client's packets to that task, and a bounded channel carries
//! deliveries to it from the inbound task. Per connection, at most
//! `max_in_flight` publishes wait for the bus; then the front stops reading the socket.

pub mod auth;
mod config;
mod front;
mod inbound;
pub mod metrics;
mod rate_limit;
mod server;
mod session;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use fluxgate_bus::{Bus, BusError, Consumer, ConsumerSpec, TopicsConfig};
use fluxgate_observability::Health;
use fluxgate_store::RegistryStore;
use tokio::sync::oneshot;

pub use config::{ConfigError, FrontConfig, Rate, RateLimits, SlowClient, TlsFiles, V3Refusal};

use crate::front::Front;
use crate::inbound::Inbound;
use crate::session::CloseReason;

/// Why the front could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrontError {
    /// A setting is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The bus refused the front's consumer.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The TLS certificate or key could not be loaded.
    #[error("mqtt_front.{0}")]
    Tls(String),
    /// Metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The front's threads could not be started.
    #[error("cannot start the front: {0}")]
    Start(String),
}

/// Where a started front listens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listening {
    /// Plain MQTT.
    pub tcp: Option<SocketAddr>,
    /// MQTT over TLS.
    pub tls: Option<SocketAddr>,
    /// MQTT over WebSocket (`/mqtt`).
    pub ws: Option<SocketAddr>,
    /// MQTT over secure WebSocket (`/mqtt`).
    pub wss: Option<SocketAddr>,
    /// `/metrics`, `/healthz`, `/readyz`.
    pub http: Option<SocketAddr>,
}

/// A running front. Dropping it does not stop it; call [`RunningFront::shutdown`].
#[derive(Debug)]
pub struct RunningFront {
    /// Bound addresses.
    pub listening: Listening,
    /// The front's metrics.
    pub registry: prometheus::Registry,
    /// Liveness and readiness.
    pub health: Arc<Health>,
    stop: Option<oneshot::Sender<()>>,
    done: oneshot::Receiver<()>,
    http: Option<actix_web::dev::ServerHandle>,
}

impl RunningFront {
    /// Drains and stops: refuses new connections, lets each session's publishes get their
    /// acks (at most `drain_grace_secs`), closes the sessions (v5: "server shutting down"),
    /// then stops the listeners.
    pub async fn shutdown(mut self) {
        self.health.set_ready(false);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.done).await;
        if let Some(h) = self.http.take() {
            h.stop(true).await;
        }
    }
}

fn bind(addr: &str) -> Result<TcpListener, FrontError> {
    TcpListener::bind(addr).map_err(|source| FrontError::Bind {
        addr: addr.into(),
        source,
    })
}

/// Starts the front: binds its listeners (port 0 is fine; see [`RunningFront::listening`])
/// and serves until [`RunningFront::shutdown`]. Its `/metrics`, `/healthz` and `/readyz`
/// are served on `cfg.http_addr` if set (the `front` role's own process).
pub fn start(
    cfg: FrontConfig,
    bus: Arc<dyn Bus>,
    store: Arc<dyn RegistryStore>,
    topics: &TopicsConfig,
) -> Result<RunningFront, FrontError> {
    let registry = prometheus::Registry::new();
    launch(cfg, bus, store, topics, registry, true)
}

/// [`start`] inside a process that already serves `/metrics` (standalone): the front's
/// metrics are registered in `registry`, and `cfg.http_addr` is not used. The process
/// reads the front's readiness from [`RunningFront::health`].
pub fn start_in(
    cfg: FrontConfig,
    bus: Arc<dyn Bus>,
    store: Arc<dyn RegistryStore>,
    topics: &TopicsConfig,
    registry: &prometheus::Registry,
) -> Result<RunningFront, FrontError> {
    launch(cfg, bus, store, topics, registry.clone(), false)
}

fn launch(
    cfg: FrontConfig,
    bus: Arc<dyn Bus>,
    store: Arc<dyn RegistryStore>,
    topics: &TopicsConfig,
    registry: prometheus::Registry,
    own_http: bool,
) -> Result<RunningFront, FrontError> {
    cfg.validate()?;
    let metrics = metrics::FrontMetrics::new(&registry)?;
    let health = Health::new();
    let subscribed = Inbound::TOPICS.map(|t| topics.name(t));
    let consumer = bus.consumer(ConsumerSpec::broadcast(
        format!("fluxgate-front-{}", cfg.instance_id),
        &subscribed.iter().map(String::as_str).collect::<Vec<_>>(),
    ))?;
    let names = topics.clone();
    let tls = cfg
        .tls
        .as_ref()
        .map(server::tls_config)
        .transpose()
        .map_err(FrontError::Tls)?;
    let sockets = Sockets {
        tcp: cfg.tcp_addr.as_deref().map(bind).transpose()?,
        tls: cfg.tls_addr.as_deref().map(bind).transpose()?,
        ws: cfg.ws_addr.as_deref().map(bind).transpose()?,
        wss: cfg.wss_addr.as_deref().map(bind).transpose()?,
        tls_config: tls,
    };
    let addr = |l: &Option<TcpListener>| l.as_ref().and_then(|l| l.local_addr().ok());
    let mut listening = Listening {
        tcp: addr(&sockets.tcp),
        tls: addr(&sockets.tls),
        ws: addr(&sockets.ws),
        wss: addr(&sockets.wss),
        http: None,
    };
    let mut http = None;
    if let Some(addr) = cfg.http_addr.as_ref().filter(|_| own_http) {
        let (bound, handle) = serve_http(addr, registry.clone(), health.clone())?;
        listening.http = Some(bound);
        http = Some(handle);
    }
    let auth = auth::Registry::new(store, Duration::from_secs(cfg.auth_cache_ttl_secs));
    let front = Arc::new(Front::new(cfg, auth, bus.producer(), topics, metrics));
    let (stop_tx, stop_rx) = oneshot::channel();
    let (done_tx, done_rx) = oneshot::channel();
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let health_for_thread = health.clone();
    std::thread::Builder::new()
        .name("fluxgate-front".into())
        .spawn(move || {
            let sys = ntex::rt::System::build()
                .name("fluxgate-front")
                .signals(false)
                .build(ntex::rt::DefaultRuntime);
            sys.block_on(serve_mqtt(
                front,
                sockets,
                consumer,
                names,
                health_for_thread,
                stop_rx,
                started_tx,
            ));
            let _ = done_tx.send(());
        })
        .map_err(|e| FrontError::Start(e.to_string()))?;
    match started_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(FrontError::Start(e)),
        Err(_) => return Err(FrontError::Start("the front thread exited".into())),
    }
    Ok(RunningFront {
        listening,
        registry,
        health,
        stop: Some(stop_tx),
        done: done_rx,
        http,
    })
}

fn serve_http(
    addr: &str,
    registry: prometheus::Registry,
    health: Arc<Health>,
) -> Result<(SocketAddr, actix_web::dev::ServerHandle), FrontError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let addr = addr.to_owned();
    std::thread::Builder::new()
        .name("fluxgate-front-http".into())
        .spawn(move || {
            actix_rt::System::new().block_on(async move {
                match fluxgate_observability::serve(&addr, registry, health) {
                    Ok((bound, server)) => {
                        let _ = tx.send(Ok((bound, server.handle())));
                        let _ = server.await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(FrontError::Bind { addr, source: e }));
                    }
                }
            });
        })
        .map_err(|e| FrontError::Start(e.to_string()))?;
    rx.recv()
        .map_err(|_| FrontError::Start("the http thread exited".into()))?
}

/// The bound listeners and the TLS settings they need.
struct Sockets {
    tcp: Option<TcpListener>,
    tls: Option<TcpListener>,
    ws: Option<TcpListener>,
    wss: Option<TcpListener>,
    tls_config: Option<Arc<rustls::ServerConfig>>,
}

/// How long ntex may take to stop its workers once the drain is over.
const STOP_AFTER_DRAIN: Duration = Duration::from_secs(1);

fn listeners(front: &Arc<Front>, s: Sockets) -> std::io::Result<ntex::server::ServerBuilder> {
    let cfg = &front.cfg;
    let mut b = ntex::server::Server::builder()
        .workers(cfg.workers)
        // A ceiling the socket admission keeps below (sessions + pending sockets): at it
        // ntex would stop accepting, and new clients would hang with no CONNACK.
        .maxconn(
            (cfg.max_connections + cfg.max_pending_connections)
                .div_ceil(cfg.workers)
                .max(1)
                + 1,
        )
        // The drain has given every session `drain_grace_secs` already; what ntex still
        // holds when it stops the listeners is dropped after this, not after ntex's
        // default 30 s (which outlasted the role's own stop deadline).
        .shutdown_timeout(STOP_AFTER_DRAIN)
        .disable_signals();
    let mqtt_cfg = server::mqtt_config(front);
    if let Some(l) = s.tcp {
        let f = front.clone();
        b = b
            .listen("mqtt", l, async move |_| {
                server::gated(f.clone(), server::mqtt_service::<ntex::io::Base>(f.clone()))
            })?
            .config("mqtt", mqtt_cfg.clone());
    }
    if let Some(l) = s.ws {
        let f = front.clone();
        b = b
            .listen("mqtt-ws", l, async move |_| {
                server::gated(f.clone(), server::ws_service::<ntex::io::Base>(f.clone()))
            })?
            .config("mqtt-ws", mqtt_cfg.clone());
    }
    if let Some(tls) = s.tls_config {
        if let Some(l) = s.tls {
            let (f, t) = (front.clone(), tls.clone());
            b = b
                .listen("mqtt-tls", l, async move |_| {
                    server::gated(f.clone(), server::tls_service(f.clone(), t.clone()))
                })?
                .config("mqtt-tls", mqtt_cfg.clone());
        }
        if let Some(l) = s.wss {
            let (f, t) = (front.clone(), tls);
            b = b
                .listen("mqtt-wss", l, async move |_| {
                    server::gated(f.clone(), server::wss_service(f.clone(), t.clone()))
                })?
                .config("mqtt-wss", mqtt_cfg);
        }
    }
    Ok(b)
}

async fn serve_mqtt(
    front: Arc<Front>,
    sockets: Sockets,
    consumer: Arc<dyn Consumer>,
    names: TopicsConfig,
    health: Arc<Health>,
    stop: oneshot::Receiver<()>,
    started: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let srv = match listeners(&front, sockets) {
        Ok(b) => b.run(),
        Err(e) => {
            let _ = started.send(Err(e.to_string()));
            return;
        }
    };
    let _ = started.send(Ok(()));
    // Ready once the consumer holds every topic it reads: before that, a command for a
    // device connected here could be missed (broadcast consumers start at the end). Any
    // partition is not enough: a topic whose metadata came late is assigned later.
    let ready = ntex::rt::spawn({
        let consumer = consumer.clone();
        let subscribed = Inbound::TOPICS.map(|t| names.name(t));
        async move {
            while !subscribed.iter().all(|t| consumer.holds_topic(t)) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            health.set_ready(true);
        }
    });
    let inbound = ntex::rt::spawn(inbound::inbound(front.clone(), consumer, names));
    let (side_stop, side_stopped) = oneshot::channel::<()>();
    let side = ntex::rt::spawn({
        let front = front.clone();
        async move {
            front
                .run_side_channel(async {
                    let _ = side_stopped.await;
                })
                .await;
        }
    });
    let _ = stop.await;
    ready.cancel();
    drain(&front, &srv).await;
    inbound.cancel();
    // What the sessions left on the side queue is sent before the front reports stopped.
    let _ = side_stop.send(());
    let _ = side.await;
}

/// Refuses new connections, asks every session to close once its publishes are acked,
/// and stops the listeners.
async fn drain(front: &Front, srv: &ntex::server::Server) {
    front.admission.drain();
    srv.pause().await;
    let started = tokio::time::Instant::now();
    let grace = Duration::from_secs(front.cfg.drain_grace_secs);
    // Paced: `drain_closes_per_sec`, up to the last second of the grace, then the rest.
    let rate = front.cfg.drain_closes_per_sec;
    let paced_until = started + grace.saturating_sub(Duration::from_secs(1));
    let sessions = front.sessions.all();
    let total = sessions.len();
    for (i, e) in sessions.into_iter().enumerate() {
        if rate > 0 {
            let due = started + Duration::from_secs_f64(i as f64 / f64::from(rate));
            if due < paced_until {
                tokio::time::sleep_until(due).await;
            }
        }
        e.close(CloseReason::Shutdown);
    }
    tracing::info!(sessions = total, took = ?started.elapsed(), "drain: every session asked to close");
    let deadline = started + grace + Duration::from_secs(1);
    if tokio::time::timeout_at(deadline, front.sessions.empty())
        .await
        .is_err()
    {
        tracing::warn!(
            sessions = front.sessions.len(),
            "drain: sessions still open at the end of the grace"
        );
    }
    srv.stop(true).await;
}
