//! `fluxgate-api`: the HTTP API (actix-web).
//!
//! ```text
//! registry (applications, devices, keys, tokens, attribute definitions) ──> store
//!                                                   └─ registry change ──> fluxgate.registry.changes
//! Losant REST state ──normalize──> fluxgate.ingest.raw (same path as MQTT; 200 after the bus ack)
//! Losant command, ThingsBoard RPC ──> fluxgate.device.events ──> dispatcher ──> the device's front
//!   (on the device's key, behind its connects and disconnects: their order holds)
//!     two-way RPC: woken by fluxgate.command.outcomes (broadcast: any replica), answers
//!     from the store; 504 on timeout
//! shared attributes ──> store + fluxgate.device.events (pushed to the device by the dispatcher)
//! queries ──> store: time series, latest state, connection log, commands, rejected log
//! ```
//!
//! Every request passes [`gate`] first: a deadline on its body, 405 with `Allow` for a
//! method its path does not have, and authentication before anything about the request is
//! checked (401 before any 400).
//!
//! Auth ([`auth`]): bearer tokens — the bootstrap admin token, application API tokens with
//! scopes read/write/admin, and Losant device tokens from `POST /auth/device` that only reach
//! their device's endpoints. Errors ([`error`]) are JSON with a stable code; a wrong field is
//! named. The OpenAPI 3 document is at `/openapi.json` ([`openapi`]).

pub mod auth;
mod claim;
mod client_rpc;
mod config;
mod device;
pub mod error;
mod gate;
pub mod openapi;
mod outcomes;
mod query;
mod registry;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use actix_web::{App, HttpMessage, HttpRequest, HttpResponse, HttpServer, web};
use fluxgate_bus::{Bus, ConsumerSpec, OutRecord, Producer, Topic, TopicsConfig};
use fluxgate_model::{Limits, RegistryChange, TenantId};
use fluxgate_observability::Health;
use fluxgate_store::{FailureDelay, Store};

pub use config::{ApiConfig, ConfigError};

use crate::auth::{Caller, DeviceTokens};
use crate::error::ApiError;
pub(crate) use fluxgate_bus::now_ms;

/// Topic names the API writes to.
#[derive(Debug, Clone)]
struct Names {
    raw: String,
    /// The device control stream: commands, RPC, shared-attribute pushes.
    control: String,
    changes: String,
}

/// Everything a request handler needs.
#[derive(Debug)]
pub struct ApiState {
    cfg: ApiConfig,
    store: Arc<dyn Store>,
    producer: Arc<dyn Producer>,
    names: Names,
    tokens: DeviceTokens,
    limits: Limits,
    metrics: ApiMetrics,
    outcomes: Arc<outcomes::Outcomes>,
    /// Slows down repeated failures of `POST /auth/device`.
    failures: FailureDelay,
}

/// The API's metrics.
#[derive(Debug, Clone)]
struct ApiMetrics {
    requests: prometheus::IntCounterVec,
    latency: prometheus::Histogram,
    claims: prometheus::IntCounterVec,
}

impl ApiMetrics {
    fn new(registry: &prometheus::Registry) -> prometheus::Result<Self> {
        use fluxgate_observability::catalogue::{API_CLAIMS, API_REQUEST_SECONDS, API_REQUESTS};
        let requests = API_REQUESTS.counter_vec()?;
        let latency = API_REQUEST_SECONDS.histogram(prometheus::DEFAULT_BUCKETS.to_vec())?;
        let claims = API_CLAIMS.counter_vec()?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(claims.clone()))?;
        Ok(ApiMetrics {
            requests,
            latency,
            claims,
        })
    }
}

impl ApiState {
    /// The API's state over `bus` and `store`; registers its metrics in `registry`.
    pub fn new(
        cfg: ApiConfig,
        bus: &dyn Bus,
        store: Arc<dyn Store>,
        topics: &TopicsConfig,
        registry: &prometheus::Registry,
    ) -> Result<Self, ApiError> {
        cfg.validate()
            .map_err(|e| ApiError::unavailable(format!("invalid configuration: {e}")))?;
        let tokens = DeviceTokens::new(&cfg.device_token_secret, cfg.device_token_ttl_secs)?;
        let metrics = ApiMetrics::new(registry)
            .map_err(|e| ApiError::unavailable(format!("metrics: {e}")))?;
        let consumer = bus
            .consumer(ConsumerSpec::broadcast(
                "fluxgate-api",
                &[&topics.name(Topic::CommandOutcomes)],
            ))
            .map_err(|e| ApiError::unavailable(format!("command outcomes: {e}")))?;
        Ok(ApiState {
            outcomes: Arc::new(outcomes::Outcomes::new(consumer)),
            store,
            producer: bus.producer(),
            names: Names {
                raw: topics.name(Topic::IngestRaw),
                control: topics.name(Topic::DeviceEvents),
                changes: topics.name(Topic::RegistryChanges),
            },
            tokens,
            limits: cfg.limits(),
            metrics,
            failures: FailureDelay::new(cfg.auth_failure_delay_ms, cfg.auth_failure_delay_max_ms),
            cfg,
        })
    }

    /// The caller of `req`: as [`gate`] authenticated it (or now, for a request that did
    /// not pass it).
    pub(crate) async fn caller(&self, req: &HttpRequest) -> Result<Caller, ApiError> {
        if let Some(caller) = req.extensions().get::<Caller>() {
            return Ok(caller.clone());
        }
        self.authenticate(req.headers()).await
    }

    /// Who sent these request headers (`Authorization: Bearer`).
    pub(crate) async fn authenticate(
        &self,
        headers: &actix_web::http::header::HeaderMap,
    ) -> Result<Caller, ApiError> {
        let header = headers
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        auth::authenticate(
            header,
            &self.cfg.bootstrap_token,
            &self.tokens,
            self.store.as_ref(),
            now_ms(),
        )
        .await
    }

    /// Announces a registry change (best effort: caches also expire on their TTL).
    pub(crate) async fn announce(&self, change: RegistryChange) {
        let mut rec = OutRecord::of(&self.names.changes, &change);
        fluxgate_observability::telemetry::inject(&mut rec.headers);
        if let Err(e) = self.producer.produce(rec).await {
            tracing::warn!(error = %e, ?change, "registry change not announced; caches catch up on their TTL");
        }
    }
}

impl ApiState {
    /// The caller, allowed to act with `scope` in application `app` (a path segment).
    pub(crate) async fn authorize(
        &self,
        req: &HttpRequest,
        app: &str,
        scope: fluxgate_store::ApiScope,
    ) -> Result<TenantId, ApiError> {
        let app = app_id(app)?;
        self.caller(req).await?.require(&app, scope)?;
        Ok(app)
    }

    /// The device, or a 404 naming it.
    pub(crate) async fn existing_device(
        &self,
        app: &TenantId,
        device: &fluxgate_model::DeviceId,
    ) -> Result<fluxgate_store::Device, ApiError> {
        self.store
            .device(app.clone(), device.clone())
            .await?
            .ok_or_else(|| ApiError::not_found(format!("device {device}")))
    }

    /// [`ApiState::authorize`] for a device's route: the application and the device id.
    pub(crate) async fn authorize_device(
        &self,
        req: &HttpRequest,
        app: &str,
        device: &str,
        scope: fluxgate_store::ApiScope,
    ) -> Result<(TenantId, fluxgate_model::DeviceId), ApiError> {
        let app = self.authorize(req, app, scope).await?;
        Ok((app, device_id(device)?))
    }
}

/// An application id from a path segment.
pub(crate) fn app_id(s: &str) -> Result<TenantId, ApiError> {
    TenantId::new(s).map_err(|e| ApiError::invalid("applicationId", e.to_string()))
}

/// A device id from a path segment.
pub(crate) fn device_id(s: &str) -> Result<fluxgate_model::DeviceId, ApiError> {
    fluxgate_model::DeviceId::new(s).map_err(|e| ApiError::invalid("deviceId", e.to_string()))
}

/// Adds the API's routes and extractor settings to an actix-web app.
pub fn configure(state: web::Data<ApiState>) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg: &mut web::ServiceConfig| {
        let max = state.cfg.max_body_bytes;
        cfg.app_data(state)
            .app_data(
                web::JsonConfig::default()
                    .limit(max)
                    .error_handler(|e, _| json_error(e).into()),
            )
            .app_data(web::PayloadConfig::new(max))
            .app_data(
                web::QueryConfig::default()
                    .error_handler(|e, _| ApiError::bad_body(e.to_string()).into()),
            )
            .app_data(
                web::PathConfig::default()
                    .error_handler(|e, _| ApiError::bad_body(e.to_string()).into()),
            )
            .route("/openapi.json", web::get().to(openapi::serve))
            .configure(registry::routes)
            .configure(claim::routes)
            .configure(client_rpc::routes)
            .configure(device::routes)
            .configure(query::routes);
    }
}

/// A JSON body that could not be read, as an API error: 413 too large, 415 not sent as
/// JSON, 400 otherwise (a body that came too late is answered 408 by [`gate`]).
fn json_error(e: actix_web::error::JsonPayloadError) -> ApiError {
    use actix_web::error::JsonPayloadError as E;
    match e {
        E::Overflow { .. } | E::OverflowKnownLength { .. } => {
            ApiError::refused(413, "too_large", e.to_string())
        }
        E::ContentType => ApiError::refused(
            415,
            "unsupported_media_type",
            "send the body as JSON, with Content-Type: application/json",
        ),
        other => ApiError::bad_body(other.to_string()),
    }
}

/// A running API server.
pub struct RunningApi {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The server; await it, or stop it through its handle.
    pub server: actix_web::dev::Server,
}

impl std::fmt::Debug for RunningApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningApi")
            .field("addr", &self.addr)
            .finish()
    }
}

/// How long a connection being closed may take to go (actix-web's default, made explicit).
const CLIENT_DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Binds and starts the API (with `/metrics`, `/healthz`, `/readyz`); call it inside an
/// actix (or tokio) runtime.
pub fn start(
    state: ApiState,
    registry: prometheus::Registry,
    health: Arc<Health>,
) -> std::io::Result<RunningApi> {
    let addr = state.cfg.http_addr.clone();
    let workers = state.cfg.workers.max(1);
    let request_timeout = Duration::from_millis(state.cfg.request_timeout_ms.max(1));
    actix_web::rt::spawn(state.outcomes.clone().run());
    let state = web::Data::new(state);
    let obs = web::Data::new((registry, health));
    let server = HttpServer::new(move || {
        App::new()
            .wrap(actix_web::middleware::from_fn(gate::gate))
            .wrap(actix_web::middleware::from_fn(count))
            .app_data(obs.clone())
            .route("/metrics", web::get().to(metrics))
            .route(
                "/healthz",
                web::get().to(|| async { HttpResponse::Ok().body("ok") }),
            )
            .route("/readyz", web::get().to(readyz))
            .configure(configure(state.clone()))
            .default_service(web::to(|| async {
                ApiError {
                    status: 404,
                    code: "no_route",
                    message: "no such endpoint; see /openapi.json".into(),
                    field: None,
                }
            }))
    })
    .workers(workers)
    // The head of a request within the timeout (its body: `gate`), and a closing
    // connection gets a second to go.
    .client_request_timeout(request_timeout)
    .client_disconnect_timeout(CLIENT_DISCONNECT_TIMEOUT)
    .disable_signals()
    .bind(&addr)?;
    let bound = server
        .addrs()
        .first()
        .copied()
        .ok_or_else(|| std::io::Error::other("no address bound"))?;
    Ok(RunningApi {
        addr: bound,
        server: server.run(),
    })
}

impl actix_web::Responder for ApiError {
    type Body = actix_web::body::BoxBody;
    fn respond_to(self, _req: &HttpRequest) -> HttpResponse {
        actix_web::ResponseError::error_response(&self)
    }
}

async fn metrics(obs: web::Data<(prometheus::Registry, Arc<Health>)>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(fluxgate_observability::exposition(&obs.0, &obs.1))
}

async fn readyz(obs: web::Data<(prometheus::Registry, Arc<Health>)>) -> HttpResponse {
    fluxgate_observability::readyz(&obs.1)
}

/// The request's headers as a trace-context carrier (a caller's `traceparent`).
struct RequestHeaders<'a>(&'a actix_web::http::header::HeaderMap);

impl opentelemetry::propagation::Extractor for RequestHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Counts requests by matched route (bounded: the route pattern, not the path) and status,
/// and serves each in a server span (`POST /applications/{app}/devices/{device}/command`)
/// whose parent is the caller's `traceparent`, if it sent one: a command's trace starts
/// here and follows it through the dispatcher and the front to the device.
async fn count(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    let started = std::time::Instant::now();
    let state = req.app_data::<web::Data<ApiState>>().cloned();
    let method = req.method().as_str().to_owned();
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
    let span = tracing::info_span!(
        target: fluxgate_observability::telemetry::SPANS,
        "http.request",
        otel.kind = "server",
        otel.name = format!("{method} {route}"),
        http.request.method = method.as_str(),
        http.route = route.as_str(),
        http.response.status_code = tracing::field::Empty,
    );
    fluxgate_observability::telemetry::parent(&span, &RequestHeaders(req.headers()));
    let res = next.call(req).instrument(span.clone()).await?;
    span.record("http.response.status_code", res.status().as_u16());
    if let Some(st) = state {
        let class = match res.status().as_u16() {
            200..=299 => "2xx",
            400..=499 => "4xx",
            500..=599 => "5xx",
            _ => "other",
        };
        st.metrics
            .requests
            .with_label_values(&[route.as_str(), class])
            .inc();
        st.metrics.latency.observe(started.elapsed().as_secs_f64());
    }
    Ok(res)
}
