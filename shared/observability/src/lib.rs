//! `fluxgate-observability`: what every role exposes for operators.
//!
//! - [`serve`]: an HTTP server with `/metrics` (Prometheus text format of a registry),
//!   `/healthz` (200 while the process is alive) and `/readyz` (200 once [`Health`] says
//!   the role is connected to what it needs, 503 before and during shutdown).
//! - [`CounterSet`]: counters a service already keeps as atomics (its stats structs),
//!   exposed as Prometheus counters read at scrape time — the services stay free of
//!   Prometheus types, and the names live in one place per role.
//!
//! Naming follows DESIGN.md: `fluxgate_<role>_<what>_<unit>[_total]`, base units, small
//! fixed label sets. Traces (OpenTelemetry) come with the front and API work.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use actix_web::{App, HttpResponse, HttpServer, web};
use prometheus::core::{Collector, Desc, Describer};
use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Encoder, Opts, Registry, TextEncoder};

/// Liveness and readiness of a role.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
}

impl Health {
    /// Not ready yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Health::default())
    }

    /// Connected to what the role needs (bus, store): `/readyz` answers 200.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

/// One exposed counter: name, help, fixed labels, and the atomic it reads.
#[derive(Debug, Clone)]
pub struct CounterDef {
    /// Full metric name, e.g. `fluxgate_ts_writer_points_written_total`.
    pub name: &'static str,
    /// Help text.
    pub help: &'static str,
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
}

impl CounterSet {
    /// A set of counters; series sharing a name form one family.
    pub fn new(defs: Vec<CounterDef>) -> prometheus::Result<Self> {
        let mut set = CounterSet {
            defs: Vec::new(),
            descs: Vec::new(),
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
            if !self.descs.iter().any(|x| x.fq_name == d.name) {
                let label_names: Vec<String> =
                    d.labels.iter().map(|(k, _)| (*k).to_string()).collect();
                self.descs.push(
                    Opts::new(d.name, d.help)
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
            let idx = match families.iter().position(|f| f.name() == d.name) {
                Some(i) => i,
                None => {
                    let mut f = MetricFamily::default();
                    f.set_name(d.name.to_string());
                    f.set_help(d.help.to_string());
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
                        .body(render(&s.0))
                }),
            )
            .route(
                "/healthz",
                web::get().to(|| async { HttpResponse::Ok().body("ok") }),
            )
            .route(
                "/readyz",
                web::get().to(|s: web::Data<(Registry, Arc<Health>)>| async move {
                    if s.1.is_ready() {
                        HttpResponse::Ok().body("ready")
                    } else {
                        HttpResponse::ServiceUnavailable().body("not ready")
                    }
                }),
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
