//! Logs and traces of a role: `tracing` spans and events, written as log lines (plain or
//! JSON) and, when `[telemetry]` is on, exported as OpenTelemetry spans over OTLP.
//!
//! - [`init`] sets up the process's subscriber once: the log layer (filtered by
//!   `log.filter` / `RUST_LOG`) and the OpenTelemetry layer (its own filter, `info`, so a
//!   quiet log level does not hide spans), a W3C trace-context propagator, a parent-based
//!   ratio sampler, and the resource (`service.name = fluxgate-<role>`, `service.version`,
//!   `service.instance.id`).
//! - Export never holds up the work: a finished span goes into a bounded queue
//!   ([`TelemetryConfig::queue_size`]) that a thread of its own sends in batches; a span
//!   that finds the queue full is dropped and counted
//!   (`fluxgate_telemetry_spans_dropped_total{reason="queue_full"}`), so is a batch the
//!   collector did not take (`reason="export_failed"`). [`Telemetry::shutdown`] flushes.
//! - [`inject`], [`parent`] and [`link`] carry a span's context across the bus (record
//!   headers) and MQTT 5 (user properties): anything that is an OpenTelemetry
//!   `Injector` / `Extractor`.
//! - JSON log lines written inside a span carry its `trace_id` and `span_id`, so a log
//!   line leads to its trace.
//!
//! The standard variables win over the file, as `FLUXGATE_*` do: `OTEL_SDK_DISABLED`,
//! `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`, `OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`,
//! `OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT`, `OTEL_TRACES_SAMPLER_ARG`, `OTEL_BSP_*`,
//! `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
pub use opentelemetry::trace::SpanContext;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, SpanData, SpanExporter,
    SpanProcessor,
};
use serde::{Deserialize, Serialize};
use tracing::dispatcher::WeakDispatch;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How spans reach the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum Protocol {
    /// OTLP over gRPC (port 4317).
    #[serde(rename = "grpc")]
    Grpc,
    /// OTLP over HTTP with protobuf bodies (port 4318, path `/v1/traces`).
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

impl Protocol {
    fn from_env(value: &str) -> Option<Protocol> {
        match value.trim() {
            "grpc" => Some(Protocol::Grpc),
            "http/protobuf" => Some(Protocol::HttpProtobuf),
            _ => None,
        }
    }
}

/// `[telemetry]`: OpenTelemetry traces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Export spans over OTLP (`OTEL_SDK_DISABLED=true` turns it off again).
    pub enabled: bool,
    /// The collector: `http://host:4317` for gRPC, `http://host:4318/v1/traces` for
    /// HTTP (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT` win).
    pub endpoint: String,
    /// `grpc` or `http/protobuf` (`OTEL_EXPORTER_OTLP_PROTOCOL` wins).
    pub protocol: Protocol,
    /// Share of new traces kept, 0.0 to 1.0; a span with a parent follows its parent's
    /// decision (`OTEL_TRACES_SAMPLER_ARG` wins).
    pub sample_ratio: f64,
    /// Finished spans waiting for export at most; more are dropped and counted
    /// (`OTEL_BSP_MAX_QUEUE_SIZE` wins).
    pub queue_size: usize,
    /// Seconds one export may take before it counts as failed.
    pub export_timeout_secs: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            enabled: false,
            endpoint: "http://127.0.0.1:4317".into(),
            protocol: Protocol::Grpc,
            sample_ratio: 1.0,
            queue_size: 2048,
            export_timeout_secs: 10,
        }
    }
}

impl TelemetryConfig {
    /// Checks the values; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(format!(
                "telemetry.sample_ratio must be between 0.0 and 1.0, not {}",
                self.sample_ratio
            ));
        }
        if self.queue_size == 0 {
            return Err("telemetry.queue_size must be at least 1".into());
        }
        if self.export_timeout_secs == 0 {
            return Err("telemetry.export_timeout_secs must be at least 1".into());
        }
        if self.enabled
            && !(self.endpoint.starts_with("http://") || self.endpoint.starts_with("https://"))
        {
            return Err(format!(
                "telemetry.endpoint must be an http:// or https:// URL, not {:?}",
                self.endpoint
            ));
        }
        Ok(())
    }

    /// The settings after the standard `OTEL_*` variables.
    fn with_env(&self, env: &dyn Fn(&str) -> Option<String>) -> TelemetryConfig {
        let mut c = self.clone();
        if env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            c.enabled = false;
        }
        if let Some(p) = env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .and_then(|v| Protocol::from_env(&v))
        {
            c.protocol = p;
        }
        if let Some(r) = env("OTEL_TRACES_SAMPLER_ARG")
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|r| (0.0..=1.0).contains(r))
        {
            c.sample_ratio = r;
        }
        if let Some(q) = env("OTEL_BSP_MAX_QUEUE_SIZE")
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|q| *q > 0)
        {
            c.queue_size = q;
        }
        c
    }
}

/// The target of the roles' per-message spans (`client.publish`, `validator.process`, …).
/// They exist for tracing only: the log layer leaves them out (`<target>=off` is added to
/// `log.filter` unless it names the target), so with telemetry off they cost nothing.
pub const SPANS: &str = "fluxgate_span";

/// Set while the export queue is full: new spans are not started (and counted as
/// dropped) until it has drained to half, so a collector that is away costs the roles
/// almost nothing, rather than building spans only to drop them.
static SHEDDING: AtomicBool = AtomicBool::new(false);

/// Spans dropped because the export queue was full.
static DROPPED_QUEUE_FULL: AtomicU64 = AtomicU64::new(0);
/// Spans dropped because the collector did not take their batch.
static DROPPED_EXPORT_FAILED: AtomicU64 = AtomicU64::new(0);
/// Spans the collector took.
static EXPORTED: AtomicU64 = AtomicU64::new(0);

/// Spans dropped so far: `(queue_full, export_failed)`.
pub fn dropped() -> (u64, u64) {
    (
        DROPPED_QUEUE_FULL.load(Ordering::Relaxed),
        DROPPED_EXPORT_FAILED.load(Ordering::Relaxed),
    )
}

/// Spans the collector took so far.
pub fn exported() -> u64 {
    EXPORTED.load(Ordering::Relaxed)
}

/// The process's span counters, as metric families (added to every `/metrics`).
pub(crate) fn families() -> Vec<prometheus::proto::MetricFamily> {
    use crate::catalogue::{TELEMETRY_SPANS_DROPPED, TELEMETRY_SPANS_EXPORTED};
    let mut out = Vec::new();
    if let Ok(dropped) = TELEMETRY_SPANS_DROPPED.counter_vec() {
        let (full, failed) = self::dropped();
        dropped.with_label_values(&["queue_full"]).inc_by(full);
        dropped.with_label_values(&["export_failed"]).inc_by(failed);
        out.extend(prometheus::core::Collector::collect(&dropped));
    }
    if let Ok(sent) = TELEMETRY_SPANS_EXPORTED.counter() {
        sent.inc_by(exported());
        out.extend(prometheus::core::Collector::collect(&sent));
    }
    out
}

/// Spans handed to the batch processor and not yet exported or failed: the bound of the
/// queue is kept here, where a drop can be counted (the SDK's own count is private).
#[derive(Debug)]
struct Bounded<P> {
    inner: P,
    queued: Arc<AtomicUsize>,
    cap: usize,
}

impl<P: SpanProcessor> SpanProcessor for Bounded<P> {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            // Not exported; the batch processor ignores it too.
            return;
        }
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.cap {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            DROPPED_QUEUE_FULL.fetch_add(1, Ordering::Relaxed);
            SHEDDING.store(true, Ordering::Relaxed);
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The exporter, counting what it sent and what failed, and releasing the queue's room.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    queued: Arc<AtomicUsize>,
    cap: usize,
    /// Whether the last export failed: the log says so once per outage, not per batch.
    failing: AtomicBool,
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let res = self.inner.export(batch).await;
        if self.queued.fetch_sub(n, Ordering::AcqRel) - n <= self.cap / 2 {
            SHEDDING.store(false, Ordering::Relaxed);
        }
        match (&res, self.failing.swap(res.is_err(), Ordering::Relaxed)) {
            (Err(e), false) => tracing::warn!(error = %e,
                "telemetry: the collector did not take a batch; spans are dropped (counted in fluxgate_telemetry_spans_dropped_total) until it does"),
            (Ok(()), true) => tracing::info!("telemetry: the collector takes spans again"),
            _ => {}
        }
        let counter = if res.is_ok() {
            &EXPORTED
        } else {
            &DROPPED_EXPORT_FAILED
        };
        counter.fetch_add(n as u64, Ordering::Relaxed);
        res
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Who the spans are from.
#[derive(Debug, Clone)]
pub struct Service<'a> {
    /// The role (`front`, `validator`, `standalone`, …): `service.name = fluxgate-<role>`.
    pub role: &'a str,
    /// This process among the role's (`service.instance.id`): a front's instance id, a
    /// pod's name.
    pub instance: &'a str,
}

/// Log settings ([`init`]).
#[derive(Debug, Clone)]
pub struct LogSettings<'a> {
    /// `RUST_LOG` syntax; `RUST_LOG` itself wins when set.
    pub filter: &'a str,
    /// JSON lines instead of plain text.
    pub json: bool,
}

/// The process's telemetry; [`Telemetry::shutdown`] flushes the spans.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    /// Where the gRPC exporter's connection runs: its own thread, so an export never
    /// waits on a role's runtime (nor the other way round).
    runtime: Option<tokio::runtime::Runtime>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports what is queued (within `timeout`) and stops exporting.
    pub fn shutdown(mut self, timeout: Duration) {
        if let Some(p) = self.provider.take()
            && let Err(e) = p.shutdown_with_timeout(timeout)
        {
            tracing::warn!(error = %e, "telemetry: spans not all flushed at shutdown");
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Sets up logs, and traces when `cfg` (after the `OTEL_*` variables) says so. Call once,
/// first thing; a second call leaves the first subscriber in place and exports nothing.
pub fn init(
    service: &Service<'_>,
    log: &LogSettings<'_>,
    cfg: &TelemetryConfig,
) -> Result<Telemetry, String> {
    let cfg = cfg.with_env(&|k| std::env::var(k).ok());
    cfg.validate()?;
    let mut telemetry = Telemetry::default();
    let otel = if cfg.enabled {
        let (provider, runtime) = provider(service, &cfg)?;
        let tracer = provider.tracer("fluxgate");
        telemetry.provider = Some(provider);
        telemetry.runtime = runtime;
        Some(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_tracked_inactivity(false)
                .with_filter(
                    // Decided per callsite for debug and trace (never), so the libraries'
                    // fine-grained events stay free; per span for the rest (shedding).
                    tracing_subscriber::filter::dynamic_filter_fn(|meta, _| admit(meta))
                        .with_callsite_filter(|meta| {
                            if *meta.level() <= tracing::Level::INFO {
                                tracing::subscriber::Interest::sometimes()
                            } else {
                                tracing::subscriber::Interest::never()
                            }
                        })
                        .with_max_level_hint(tracing_subscriber::filter::LevelFilter::INFO),
                ),
        )
    } else {
        None
    };
    let filter = log_filter(log.filter);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let (fmt, hook) = if log.json {
        let (format, hook) = json_with_ids();
        let fmt = fmt
            .event_format(format)
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .with_filter(filter)
            .boxed();
        (fmt, Some(hook))
    } else {
        let fmt = fmt.fmt_fields(plain_fields()).with_filter(filter).boxed();
        (fmt, None)
    };
    let installed = tracing_subscriber::registry()
        .with(hook)
        .with(fmt)
        .with(otel)
        .try_init();
    if installed.is_err() {
        // Another subscriber is in place (a test harness): spans would not reach ours.
        telemetry.shutdown(Duration::from_secs(1));
        return Ok(Telemetry::default());
    }
    Ok(telemetry)
}

/// Which spans and events the OpenTelemetry layer takes: `info` and above, and no new span
/// while the export queue is full (counted as dropped).
fn admit(meta: &tracing::Metadata<'_>) -> bool {
    if *meta.level() > tracing::Level::INFO {
        return false;
    }
    if meta.is_span() && SHEDDING.load(Ordering::Relaxed) {
        DROPPED_QUEUE_FULL.fetch_add(1, Ordering::Relaxed);
        return false;
    }
    true
}

/// The log layer's filter: `RUST_LOG` or `configured`, without the per-message spans
/// ([`SPANS`]) and the OpenTelemetry SDK's own per-batch errors (the exporter logs an
/// outage once), unless the filter names them.
fn log_filter(configured: &str) -> EnvFilter {
    let text = std::env::var(EnvFilter::DEFAULT_ENV).unwrap_or_else(|_| configured.to_owned());
    let mut extra = Vec::new();
    for target in [
        SPANS,
        "opentelemetry_sdk",
        "opentelemetry_otlp",
        "opentelemetry",
    ] {
        if !text.contains(target) {
            extra.push(format!("{target}=off"));
        }
    }
    let full = if text.trim().is_empty() {
        extra.join(",")
    } else {
        format!("{text},{}", extra.join(","))
    };
    EnvFilter::try_new(&full).unwrap_or_else(|_| EnvFilter::new(configured))
}

/// The tracer provider for `cfg`: exporter, bounded batch processor, sampler, resource.
fn provider(
    service: &Service<'_>,
    cfg: &TelemetryConfig,
) -> Result<(SdkTracerProvider, Option<tokio::runtime::Runtime>), String> {
    let env_endpoint = std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_ok()
        || std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").is_ok();
    let timeout = Duration::from_secs(cfg.export_timeout_secs);
    let queued = Arc::new(AtomicUsize::new(0));
    let (exporter, runtime) = match cfg.protocol {
        Protocol::Grpc => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("fluxgate-otlp")
                .enable_all()
                .build()
                .map_err(|e| format!("telemetry: no runtime for the exporter: {e}"))?;
            let _in = rt.enter();
            let mut b = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_timeout(timeout);
            if !env_endpoint {
                b = b.with_endpoint(cfg.endpoint.clone());
            }
            let e = b.build().map_err(|e| format!("telemetry.endpoint: {e}"))?;
            (e, Some(rt))
        }
        Protocol::HttpProtobuf => {
            let mut b = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_timeout(timeout);
            if !env_endpoint {
                b = b.with_endpoint(cfg.endpoint.clone());
            }
            let e = b.build().map_err(|e| format!("telemetry.endpoint: {e}"))?;
            (e, None)
        }
    };
    let batch = BatchConfigBuilder::default()
        .with_max_queue_size(cfg.queue_size)
        .build();
    let processor = Bounded {
        inner: BatchSpanProcessor::new(
            Counted {
                inner: exporter,
                queued: queued.clone(),
                cap: cfg.queue_size,
                failing: AtomicBool::new(false),
            },
            batch,
        ),
        queued,
        cap: cfg.queue_size,
    };
    let mut resource = Resource::builder().with_attributes([
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        KeyValue::new("service.instance.id", service.instance.to_owned()),
    ]);
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name(format!("fluxgate-{}", service.role));
    }
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            cfg.sample_ratio,
        ))))
        .with_resource(resource.build())
        .build();
    Ok((provider, runtime))
}

fn propagator() -> TraceContextPropagator {
    TraceContextPropagator::new()
}

/// Writes the current span's context (`traceparent`, `tracestate`) into `carrier`;
/// nothing when there is no exported span (telemetry off).
pub fn inject(carrier: &mut dyn Injector) {
    inject_from(&tracing::Span::current(), carrier);
}

/// Writes `span`'s context into `carrier`.
pub fn inject_from(span: &tracing::Span, carrier: &mut dyn Injector) {
    let cx = span.context();
    if cx.span().span_context().is_valid() {
        propagator().inject_context(&cx, carrier);
    }
}

/// The context `carrier` names, if any.
pub fn extract(carrier: &dyn Extractor) -> Option<Context> {
    let cx = propagator().extract(carrier);
    cx.span().span_context().is_valid().then_some(cx)
}

/// Makes the span `carrier` names the parent of `span` (a consumer's span of a record, a
/// publish span under the device's `traceparent`). Call before the span is entered.
pub fn parent(span: &tracing::Span, carrier: &dyn Extractor) {
    if let Some(cx) = extract(carrier) {
        set_parent(span, cx);
    }
}

/// Makes `cx` the parent of `span`. Call before the span is entered.
pub fn set_parent(span: &tracing::Span, cx: Context) {
    let _ = span.set_parent(cx);
}

/// Links `span` to the span `carrier` names (one span covering many records: a batch).
pub fn link(span: &tracing::Span, carrier: &dyn Extractor) {
    if let Some(cx) = extract(carrier) {
        span.add_link(cx.span().span_context().clone());
    }
}

/// `span`'s own context, to link a later span to it (`None` when it is not exported).
pub fn span_context(span: &tracing::Span) -> Option<SpanContext> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// Links `span` to `to` (a batch span to each record's span).
pub fn add_link(span: &tracing::Span, to: SpanContext) {
    span.add_link(to);
}

/// The trace id of `span`, as 32 hex digits (`None` when it is not exported).
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    span_context(span).map(|sc| sc.trace_id().to_string())
}

/// A JSON line format that adds the current span's `trace_id` and `span_id`.
///
/// The ids come from the OpenTelemetry layer through the subscriber ([`DispatchHook`]):
/// inside an event's dispatch `Span::current()` sees no subscriber, so it cannot ask.
struct WithTraceIds<F> {
    inner: F,
    dispatch: Arc<OnceLock<WeakDispatch>>,
}

/// Tells [`WithTraceIds`] which subscriber it formats for.
struct DispatchHook(Arc<OnceLock<WeakDispatch>>);

impl<S: tracing::Subscriber> Layer<S> for DispatchHook {
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        let _ = self.0.set(subscriber.downgrade());
    }
}

/// The JSON log layer's format and the hook it needs.
fn json_with_ids() -> (
    WithTraceIds<tracing_subscriber::fmt::format::Format<tracing_subscriber::fmt::format::Json>>,
    DispatchHook,
) {
    let dispatch = Arc::new(OnceLock::new());
    (
        WithTraceIds {
            inner: tracing_subscriber::fmt::format()
                .json()
                .with_current_span(true),
            dispatch: dispatch.clone(),
        },
        DispatchHook(dispatch),
    )
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        // The innermost span the subscriber knows, whether or not the log layer shows it
        // (it leaves the per-message spans out).
        let ids = self
            .dispatch
            .get()
            .and_then(|d| d.upgrade())
            .and_then(|dispatch| {
                let id = dispatch.current_span().id()?.clone();
                let cx = tracing_opentelemetry::get_otel_context(&id, &dispatch)?;
                let sc = cx.span().span_context().clone();
                sc.is_valid().then(|| (sc.trace_id(), sc.span_id()))
            });
        let Some((trace_id, span_id)) = ids else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        match line.rfind('}') {
            Some(end) => {
                let (head, tail) = line.split_at(end);
                write!(
                    writer,
                    "{head},\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"{tail}"
                )
            }
            None => writer.write_str(&line),
        }
    }
}

/// The plain log's fields, each value with its control and bidirectional-override
/// characters escaped: a value that comes from a client (a topic with a newline, say)
/// cannot start a line of its own, nor turn the rest of one around. (The JSON log
/// escapes them by its format.)
fn plain_fields() -> impl for<'w> FormatFields<'w> + Send + Sync + 'static {
    use tracing_subscriber::field::MakeExt;
    tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
        let raw = format!("{value:?}");
        let text = escape_control(&raw);
        if field.name() == "message" {
            write!(w, "{text}")
        } else {
            write!(w, "{field}={text}")
        }
    })
    .delimited(" ")
}

/// `s` with control characters and bidirectional controls written as escapes (`\n`,
/// `\u{202e}`).
fn escape_control(s: &str) -> std::borrow::Cow<'_, str> {
    let bad = |c: char| {
        c.is_control()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !s.chars().any(bad) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if bad(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 22, finding 6: a newline (or a bidi override) in a value a client chose
    /// cannot forge a line of the plain log.
    #[test]
    fn a_value_cannot_forge_a_plain_log_line() {
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .fmt_fields(plain_fields())
                .with_writer(move || out.clone()),
        );
        let topic = "losant/dev1/state\n2026-12-07T00:00:00Z  INFO admin logged in\u{202e}";
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(%topic, device = "dev1", "publish refused");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("topic=losant/dev1/state\\n2026"), "{text}");
        assert!(
            text.contains("\\u{202e}") && !text.contains('\u{202e}'),
            "{text}"
        );
        assert!(text.contains("publish refused"), "{text}");
    }

    #[test]
    fn the_standard_variables_win_over_the_file() {
        let file = TelemetryConfig {
            enabled: true,
            ..TelemetryConfig::default()
        };
        let env = |k: &str| {
            match k {
                "OTEL_SDK_DISABLED" => Some("TRUE"),
                "OTEL_EXPORTER_OTLP_PROTOCOL" => Some("http/protobuf"),
                "OTEL_TRACES_SAMPLER_ARG" => Some("0.25"),
                "OTEL_BSP_MAX_QUEUE_SIZE" => Some("64"),
                _ => None,
            }
            .map(str::to_owned)
        };
        let c = file.with_env(&env);
        assert!(!c.enabled);
        assert_eq!(c.protocol, Protocol::HttpProtobuf);
        assert_eq!(c.sample_ratio, 0.25);
        assert_eq!(c.queue_size, 64);
        // Values that do not parse leave the file's.
        let junk = |_: &str| Some("nonsense".to_owned());
        assert_eq!(file.with_env(&junk), file);
    }

    /// A writer the test reads back.
    #[derive(Clone, Default)]
    struct Buf(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_inside_a_span_carry_its_ids() {
        let provider = SdkTracerProvider::builder().build();
        let buf = Buf::default();
        let out = buf.clone();
        let (format, hook) = json_with_ids();
        let subscriber = tracing_subscriber::registry()
            .with(hook)
            .with(
                tracing_subscriber::fmt::layer()
                    .event_format(format)
                    .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
                    .with_writer(move || out.clone())
                    // As `init` sets it up: the log layer does not show the span itself.
                    .with_filter(log_filter("info")),
            )
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let (trace, span_id) = tracing::subscriber::with_default(subscriber, || {
            tracing::info!("outside");
            let span = tracing::info_span!(target: SPANS, "client.publish", device = "d1");
            let _in = span.enter();
            tracing::info!(n = 1, "inside");
            let cx = span.context();
            let sc = cx.span().span_context().clone();
            (sc.trace_id().to_string(), sc.span_id().to_string())
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].get("trace_id").is_none(), "{text}");
        assert_eq!(lines[1]["trace_id"], serde_json::json!(trace), "{text}");
        assert_eq!(lines[1]["span_id"], serde_json::json!(span_id), "{text}");
        assert_eq!(lines[1]["fields"]["n"], serde_json::json!(1), "{text}");
        assert!(
            lines[1].get("span").is_none(),
            "the span is not logged: {text}"
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        let bad = [
            TelemetryConfig {
                sample_ratio: 1.5,
                ..TelemetryConfig::default()
            },
            TelemetryConfig {
                queue_size: 0,
                ..TelemetryConfig::default()
            },
            TelemetryConfig {
                export_timeout_secs: 0,
                ..TelemetryConfig::default()
            },
            TelemetryConfig {
                enabled: true,
                endpoint: "127.0.0.1:4317".into(),
                ..TelemetryConfig::default()
            },
        ];
        let keys = [
            "sample_ratio",
            "queue_size",
            "export_timeout_secs",
            "endpoint",
        ];
        for (c, key) in bad.iter().zip(keys) {
            let e = c.validate().expect_err(key);
            assert!(e.contains(&format!("telemetry.{key}")), "{e}");
        }
        assert_eq!(TelemetryConfig::default().validate(), Ok(()));
    }
}
