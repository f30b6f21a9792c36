//! `fluxgate-observability`: what every role exposes for operators.
//!
//! - [`serve`]: an HTTP server with `/metrics` (Prometheus text format of a registry),
//!   `/healthz` (200 while the process is alive) and `/readyz` (200 while [`Health`] says
//!   the role has started and its probes — bus reachable, store answers — pass; 503
//!   naming what is missing before, during shutdown and while a dependency is away).
//! - [`CounterSet`]: counters a service already keeps as atomics (its stats structs),
//!   exposed as Prometheus counters read at scrape time — the services stay free of
//!   Prometheus types, and the names live in one place per role.
//!
//! - [`catalogue`]: every metric of every role, with its type, unit and labels; roles
//!   make their metrics only from it.
//!
//! Naming follows DESIGN.md: `fluxgate_<role>_<what>_<unit>[_total]`, base units, small
//! fixed label sets.
//!
//! - [`telemetry`]: logs and OpenTelemetry traces (OTLP), and the trace context carried
//!   across the bus and MQTT 5.

pub mod catalogue;
pub mod telemetry;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};
use prometheus::core::{Collector, Desc, Describer};
use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Encoder, Opts, Registry, TextEncoder};

/// What a probe answers: `Err(reason)` while its dependency is away.
pub type ProbeFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// One dependency check (bus reachable, store answers), rechecked by [`Health::watch`].
struct Probe {
    name: &'static str,
    check: Box<dyn Fn() -> ProbeFuture + Send + Sync>,
    /// `None` while passing; the reason while failing. Failing until first checked.
    failure: Mutex<Option<String>>,
}

/// Liveness and readiness of a role.
///
/// `/readyz` answers 200 when the role says it has started ([`Health::set_ready`]) *and*
/// every probe passed its last check; its body names each failing probe. Probes are
/// rechecked every [`Health::watch`] period, so a role whose broker or store goes away
/// turns unready and comes back on its own.
#[derive(Default)]
pub struct Health {
    started: AtomicBool,
    probes: Mutex<Vec<Arc<Probe>>>,
    /// Parts of the process with a readiness of their own, read when asked.
    parts: Mutex<Vec<(&'static str, Arc<Health>)>>,
    watching: AtomicBool,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("started", &self.started.load(Ordering::SeqCst))
            .field("failing", &self.failing())
            .finish()
    }
}

impl Health {
    /// Not ready yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Health::default())
    }

    /// The role's own start is done (`true`) or it is draining (`false`). Ready also
    /// needs every probe passing.
    pub fn set_ready(&self, ready: bool) {
        self.started.store(ready, Ordering::SeqCst);
    }

    /// Adds a dependency check, failing until [`Health::watch`] first runs it.
    pub fn probe<F, Fut>(&self, name: &'static str, check: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        lock(&self.probes).push(Arc::new(Probe {
            name,
            check: Box::new(move || Box::pin(check())),
            failure: Mutex::new(Some("not checked yet".into())),
        }));
    }

    /// Makes `part`'s readiness a condition of this one, read each time this one is
    /// asked (not on a period): one process serving several roles (standalone) is ready
    /// when each of them is.
    pub fn include(&self, name: &'static str, part: Arc<Health>) {
        lock(&self.parts).push((name, part));
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.started.load(Ordering::SeqCst) && self.failing().is_empty()
    }

    /// Each failing probe (or included part) with its reason.
    pub fn failing(&self) -> Vec<(&'static str, String)> {
        let mut failing: Vec<(&'static str, String)> = lock(&self.probes)
            .iter()
            .filter_map(|p| lock(&p.failure).clone().map(|why| (p.name, why)))
            .collect();
        for (name, part) in lock(&self.parts).iter() {
            if !part.started.load(Ordering::SeqCst) {
                failing.push((name, "starting or draining".to_owned()));
            }
            for (probe, why) in part.failing() {
                failing.push((name, format!("{probe}: {why}")));
            }
        }
        failing
    }

    /// Runs every probe now, each bounded by `timeout`, and records the answers.
    pub async fn check(&self, timeout: Duration) {
        let probes: Vec<Arc<Probe>> = lock(&self.probes).clone();
        let runs: Vec<_> = probes
            .into_iter()
            .map(|p| {
                tokio::spawn(async move {
                    let answer = match tokio::time::timeout(timeout, (p.check)()).await {
                        Ok(a) => a,
                        Err(_) => Err(format!("no answer within {timeout:?}")),
                    };
                    let mut failure = lock(&p.failure);
                    match (&*failure, &answer) {
                        (Some(_), Ok(())) => tracing::info!(probe = p.name, "dependency back"),
                        (None, Err(why)) => {
                            tracing::warn!(probe = p.name, error = %why, "dependency away: not ready")
                        }
                        _ => {}
                    }
                    *failure = answer.err();
                })
            })
            .collect();
        for r in runs {
            let _ = r.await;
        }
    }

    /// Checks the probes now and then every `every` (each bounded by `every`), on a
    /// thread of its own so a stalled runtime of the role cannot hide it. Stops when the
    /// last handle to this `Health` is dropped. Calling it again does nothing.
    pub fn watch(self: &Arc<Self>, every: Duration) -> std::io::Result<()> {
        if self.watching.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let weak = Arc::downgrade(self);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("fluxgate-readiness".into())
            .spawn(move || {
                rt.block_on(async move {
                    while let Some(health) = weak.upgrade() {
                        health.check(every).await;
                        drop(health);
                        tokio::time::sleep(every).await;
                    }
                })
            })?;
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One exposed counter: its metric in the [`catalogue`], fixed labels, and the atomic
/// it reads.
#[derive(Debug, Clone)]
pub struct CounterDef {
    /// The metric (name, help, label names), e.g. [`catalogue::WRITER_POINTS`].
    pub metric: &'static catalogue::Metric,
    /// Fixed labels of this series, e.g. `[("kind", "valid")]`.
    pub labels: Vec<(&'static str, &'static str)>,
    /// The value.
    pub value: Arc<AtomicU64>,
}

/// Counters (and a few gauges) read from atomics at scrape time.
#[derive(Debug)]
pub struct CounterSet {
    defs: Vec<(CounterDef, MetricType)>,
    descs: Vec<Desc>,
    /// Labels are constant (part of each series' identity in the registry), so sets
    /// that differ only in them can share one registry.
    constant: bool,
}

impl CounterSet {
    /// A set of counters; series sharing a name form one family.
    pub fn new(defs: Vec<CounterDef>) -> prometheus::Result<Self> {
        Self::of(defs, false)
    }

    /// A set whose labels are constant: each series is described with its label values,
    /// so two sets naming the same metric with different label values (the pipeline
    /// counters of two roles, `role="validator"` and `role="writer"`) can both be
    /// registered in one registry.
    pub fn constant(defs: Vec<CounterDef>) -> prometheus::Result<Self> {
        Self::of(defs, true)
    }

    fn of(defs: Vec<CounterDef>, constant: bool) -> prometheus::Result<Self> {
        let mut set = CounterSet {
            defs: Vec::new(),
            descs: Vec::new(),
            constant,
        };
        set.add(defs, MetricType::COUNTER)?;
        Ok(set)
    }

    /// Adds gauges: values that go up and down (a consumer's lag), same rules otherwise.
    pub fn with_gauges(mut self, defs: Vec<CounterDef>) -> prometheus::Result<Self> {
        self.add(defs, MetricType::GAUGE)?;
        Ok(self)
    }

    fn add(&mut self, defs: Vec<CounterDef>, kind: MetricType) -> prometheus::Result<()> {
        for d in defs {
            debug_assert_eq!(
                d.labels.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
                d.metric.label_names(),
                "{}: labels as in the catalogue",
                d.metric.name
            );
            if self.constant {
                let labels = d
                    .labels
                    .iter()
                    .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                    .collect();
                self.descs.push(
                    Opts::new(d.metric.name, d.metric.help)
                        .const_labels(labels)
                        .describe()?,
                );
            } else if !self.descs.iter().any(|x| x.fq_name == d.metric.name) {
                let label_names: Vec<String> =
                    d.labels.iter().map(|(k, _)| (*k).to_string()).collect();
                self.descs.push(
                    Opts::new(d.metric.name, d.metric.help)
                        .variable_labels(label_names)
                        .describe()?,
                );
            }
            self.defs.push((d, kind));
        }
        Ok(())
    }
}

impl Collector for CounterSet {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut families: Vec<MetricFamily> = Vec::new();
        for (d, kind) in &self.defs {
            let idx = match families.iter().position(|f| f.name() == d.metric.name) {
                Some(i) => i,
                None => {
                    let mut f = MetricFamily::default();
                    f.set_name(d.metric.name.to_string());
                    f.set_help(d.metric.help.to_string());
                    f.set_field_type(*kind);
                    families.push(f);
                    families.len() - 1
                }
            };
            let value = d.value.load(Ordering::Relaxed) as f64;
            let mut m = Metric::default();
            if *kind == MetricType::GAUGE {
                let mut gauge = Gauge::default();
                gauge.set_value(value);
                m.set_gauge(gauge);
            } else {
                let mut counter = Counter::default();
                counter.set_value(value);
                m.set_counter(counter);
            }
            let labels: Vec<LabelPair> = d
                .labels
                .iter()
                .map(|(k, v)| {
                    let mut l = LabelPair::default();
                    l.set_name((*k).to_string());
                    l.set_value((*v).to_string());
                    l
                })
                .collect();
            m.set_label(labels);
            families[idx].mut_metric().push(m);
        }
        families
    }
}

/// Renders a registry in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut buf = Vec::new();
    // Encoding gathered families into a Vec cannot fail.
    let _ = TextEncoder::new().encode(&registry.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

/// The `/metrics` answer: `registry` and this process's readiness
/// (`fluxgate_process_ready`), read now, so an alert can see a process that runs but is
/// not ready.
pub fn exposition(registry: &Registry, health: &Health) -> String {
    let mut families = registry.gather();
    if let Ok(ready) = catalogue::PROCESS_READY.gauge() {
        ready.set(i64::from(health.is_ready()));
        families.extend(prometheus::core::Collector::collect(&ready));
    }
    families.extend(telemetry::families());
    let mut buf = Vec::new();
    // Encoding gathered families into a Vec cannot fail.
    let _ = TextEncoder::new().encode(&families, &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

/// The `/readyz` answer: 200 `ready`, or 503 naming what is missing.
pub fn readyz(health: &Health) -> HttpResponse {
    if health.is_ready() {
        return HttpResponse::Ok().body("ready");
    }
    let mut body = String::from("not ready");
    if !health.started.load(Ordering::SeqCst) {
        body.push_str("\nstarting or draining");
    }
    for (name, why) in health.failing() {
        body.push_str(&format!("\n{name}: {why}"));
    }
    HttpResponse::ServiceUnavailable().body(body)
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` (e.g. `127.0.0.1:0`). Returns the
/// bound address and the running server (await it, or `handle().stop(true)` it).
pub fn serve(
    addr: &str,
    registry: Registry,
    health: Arc<Health>,
) -> std::io::Result<(std::net::SocketAddr, actix_web::dev::Server)> {
    let state = web::Data::new((registry, health));
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route(
                "/metrics",
                web::get().to(|s: web::Data<(Registry, Arc<Health>)>| async move {
                    HttpResponse::Ok()
                        .content_type("text/plain; version=0.0.4")
                        .body(exposition(&s.0, &s.1))
                }),
            )
            .route(
                "/healthz",
                web::get().to(|| async { HttpResponse::Ok().body("ok") }),
            )
            .route(
                "/readyz",
                web::get().to(|s: web::Data<(Registry, Arc<Health>)>| async move { readyz(&s.1) }),
            )
    })
    .workers(1)
    .disable_signals()
    .bind(addr)?;
    let bound = server
        .addrs()
        .first()
        .copied()
        .ok_or_else(|| std::io::Error::other("no address bound"))?;
    Ok((bound, server.run()))
}
