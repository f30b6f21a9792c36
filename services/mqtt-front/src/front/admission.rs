//! Admission: whether a CONNECT may become a session, before and after its credentials
//! are checked — the front is not draining, the session is not persistent, the client is
//! not blocked after a rate-limit offence, its application opens connections within its
//! limit — and what a refusal costs: a failed login waits longer each time it repeats
//! ([`FailureDelay`]), a rate-limit offence blocks the client for a time that doubles
//! with each repeat ([`Admission::block`]). The session itself is registered by
//! `presence`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tracing::Instrument;

use fluxgate_model::{Backoff, DeviceId, TenantId};
use fluxgate_store::FailureDelay;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter};

use super::Front;
use crate::auth::{AuthError, Credentials, Identity};
use crate::config::{FrontConfig, RateLimits};
use crate::metrics::FrontMetrics;
use crate::rate_limit::quota;
use crate::session::{Handle, Sink};

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
    /// The front holds `max_connections` sessions already.
    Full,
}

impl Refusal {
    pub(super) fn label(&self) -> &'static str {
        match self {
            Refusal::Auth(e) => e.label(),
            Refusal::Draining => "draining",
            Refusal::Blocked => "blocked",
            Refusal::RateLimited => "rate_limited",
            Refusal::PersistentSession => "persistent_session_unsupported",
            Refusal::Unavailable => "unavailable",
            Refusal::Full => "server_full",
        }
    }
}

/// A client blocked after a rate-limit offence.
#[derive(Debug, Clone, Copy)]
struct Block {
    offences: u32,
    until: Instant,
}

/// Who may connect now.
pub(crate) struct Admission {
    failures: FailureDelay,
    new_conns: Option<DefaultKeyedRateLimiter<TenantId>>,
    /// New-connection limiters of the applications with their own rate limits.
    app_new_conns: HashMap<String, Option<DefaultDirectRateLimiter>>,
    blocks: moka::sync::Cache<(TenantId, DeviceId), Block>,
    draining: AtomicBool,
    /// Open sockets, on every listener (sessions and those that have not become one):
    /// the `fluxgate_mqtt_front_sockets` gauge.
    sockets: prometheus::IntGauge,
    max_sessions: usize,
    max_pending: usize,
}

/// Held for as long as an accepted socket is open ([`Admission::open_socket`]).
#[derive(Debug)]
pub(crate) struct Socket(prometheus::IntGauge);

impl Drop for Socket {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Admission {
    /// Admission by `cfg`, counting open sockets in `sockets`.
    pub(crate) fn new(cfg: &FrontConfig, sockets: prometheus::IntGauge) -> Self {
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
        Admission {
            failures: FailureDelay::new(cfg.auth_failure_delay_ms, cfg.auth_failure_delay_max_ms),
            new_conns,
            app_new_conns,
            blocks: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(3600))
                .build(),
            draining: AtomicBool::new(false),
            sockets,
            max_sessions: cfg.max_connections,
            max_pending: cfg.max_pending_connections,
        }
    }

    /// A socket was accepted while the front holds `sessions` sessions: counted while the
    /// returned guard lives, or `None` (close it) when `max_pending_connections` sockets
    /// have not become a session yet. Sockets that never send CONNECT cannot crowd out
    /// the sessions, nor make the front stop accepting.
    pub(crate) fn open_socket(&self, sessions: usize) -> Option<Socket> {
        self.sockets.inc();
        let socket = Socket(self.sockets.clone());
        let open = usize::try_from(self.sockets.get() - 1).unwrap_or(0);
        (open.saturating_sub(sessions) < self.max_pending).then_some(socket)
    }

    /// From now on every CONNECT is refused (`Draining`).
    pub(crate) fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// The checks made before the credentials are read, while the front holds `sessions`.
    pub(super) fn before_auth(&self, clean_session: bool, sessions: usize) -> Result<(), Refusal> {
        if self.draining.load(Ordering::Relaxed) {
            return Err(Refusal::Draining);
        }
        if sessions >= self.max_sessions {
            return Err(Refusal::Full);
        }
        if !clean_session {
            return Err(Refusal::PersistentSession);
        }
        Ok(())
    }

    /// The checks made once the client is known: blocks, then the application's rate of
    /// new connections (counted here).
    pub(super) fn after_auth(
        &self,
        identity: &Identity,
        metrics: &FrontMetrics,
    ) -> Result<(), Refusal> {
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
            metrics
                .rate_limited
                .with_label_values(&["new_connections"])
                .inc();
            return Err(Refusal::RateLimited);
        }
        Ok(())
    }

    /// Blocks the client `key` after a rate-limit offence: `block_secs`, doubled for each
    /// repeat, at most `block_max_secs`.
    pub(crate) fn block(&self, key: (TenantId, DeviceId), rl: &RateLimits) {
        let offences = self.blocks.get(&key).map_or(0, |b| b.offences) + 1;
        let block = Backoff::new(
            Duration::from_secs(rl.block_secs),
            Duration::from_secs(rl.block_max_secs),
        )
        .nth(offences - 1);
        self.blocks.insert(
            key,
            Block {
                offences,
                until: Instant::now() + block,
            },
        );
    }
}

impl Front {
    /// Authenticates a CONNECT and registers the session: takes over an earlier connection
    /// of the same device, announces the connect (durably, before the CONNACK), and starts
    /// the connection's session task, which serves it until `gone` resolves.
    pub(crate) async fn connect(
        self: &Arc<Self>,
        creds: Credentials<'_>,
        clean_session: bool,
        remote: Option<SocketAddr>,
        sink: Sink,
        gone: impl Future<Output = ()> + 'static,
    ) -> Result<Handle, Refusal> {
        // EMQX's `client.connect`, with `client.authn` inside: the connect's durable
        // announcement carries its context.
        let span = tracing::info_span!(
        target: fluxgate_observability::telemetry::SPANS,
            "client.connect",
            otel.kind = "server",
            client_id = creds.client_id,
            tenant = tracing::field::Empty,
            device = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        let r = self
            .try_connect(creds, clean_session, remote, sink, gone)
            .instrument(span.clone())
            .await;
        let outcome = r.as_ref().map_or_else(Refusal::label, |_| "accepted");
        span.record("outcome", outcome);
        self.metrics.connects.with_label_values(&[outcome]).inc();
        if let Err(Refusal::Auth(AuthError::BadCredentials | AuthError::NotAuthorized(_))) = &r
            && let Some(ip) = remote.map(|a| a.ip())
        {
            let wait = self
                .admission
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

    pub(super) async fn try_connect(
        self: &Arc<Self>,
        creds: Credentials<'_>,
        clean_session: bool,
        remote: Option<SocketAddr>,
        sink: Sink,
        gone: impl Future<Output = ()> + 'static,
    ) -> Result<Handle, Refusal> {
        self.admission
            .before_auth(clean_session, self.sessions.len())?;
        let identity = self
            .registry
            .authenticate(creds)
            .instrument(tracing::info_span!(target: fluxgate_observability::telemetry::SPANS, "client.authn"))
            .await
            .map_err(Refusal::Auth)?;
        let span = tracing::Span::current();
        span.record("tenant", tracing::field::display(&identity.tenant));
        span.record(
            "device",
            tracing::field::display(identity.principal.device()),
        );
        self.admission.after_auth(&identity, &self.metrics)?;
        self.register(identity, remote, sink, gone).await
    }
}
