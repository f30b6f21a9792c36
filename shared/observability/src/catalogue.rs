//! Every metric of every role, in one place: name, type, unit, labels (with the values
//! they take) and help, the way vector's `metric_name.rs` keeps its names. Roles make
//! their metrics only from these definitions ([`Metric::counter_vec`] and friends, and
//! [`crate::CounterDef`] for counters read from atomics), so a metric cannot be exported
//! under a name, type or label set that is not listed here. `docs/metrics.md` is
//! [`markdown`] of this list (a test keeps them equal), and the end-to-end tests check
//! that what each role exports is listed, with documented label values only.
//!
//! Naming (DESIGN.md): `fluxgate_<role>_<what>_<unit>[_total]`, base units (seconds,
//! bytes), small fixed label sets.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
};

/// What kind of series a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (reset at restart).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations in buckets, with `_sum` and `_count`.
    Histogram,
}

impl Kind {
    /// The Prometheus `# TYPE` word.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A label of a metric and the values it takes.
#[derive(Debug, Clone, Copy)]
pub struct Label {
    /// The label's name.
    pub name: &'static str,
    /// Every value it takes; empty when the set is open (and then `open` says what the
    /// values are).
    pub values: &'static [&'static str],
    /// For an open set: what its values are (a route pattern, a reason code).
    pub open: &'static str,
}

/// A label that takes exactly `values`.
const fn closed(name: &'static str, values: &'static [&'static str]) -> Label {
    Label {
        name,
        values,
        open: "",
    }
}

/// A label whose values are described by `what`.
const fn open(name: &'static str, what: &'static str) -> Label {
    Label {
        name,
        values: &[],
        open: what,
    }
}

/// One metric.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    /// Full name (without the `_bucket`/`_sum`/`_count` suffixes of a histogram).
    pub name: &'static str,
    /// Its type.
    pub kind: Kind,
    /// Its unit (base units), `""` for a plain count.
    pub unit: &'static str,
    /// The role that exports it (`pipeline`: each of validator, writer, dispatcher).
    pub role: &'static str,
    /// Its labels.
    pub labels: &'static [Label],
    /// The help text exported with it.
    pub help: &'static str,
}

impl Metric {
    /// Its label names, in order.
    pub fn label_names(&self) -> Vec<&'static str> {
        self.labels.iter().map(|l| l.name).collect()
    }

    fn opts(&self) -> Opts {
        Opts::new(self.name, self.help)
    }

    fn expect(&self, kind: Kind, labelled: bool) {
        debug_assert_eq!(self.kind, kind, "{} is a {}", self.name, self.kind.as_str());
        debug_assert_eq!(
            !self.labels.is_empty(),
            labelled,
            "{} labels: {:?}",
            self.name,
            self.label_names()
        );
    }

    /// The counter (no labels).
    pub fn counter(&self) -> prometheus::Result<IntCounter> {
        self.expect(Kind::Counter, false);
        IntCounter::with_opts(self.opts())
    }

    /// The counter family, with a zero series for every combination of documented
    /// values when all its labels are closed (so `rate()` starts from zero).
    pub fn counter_vec(&self) -> prometheus::Result<IntCounterVec> {
        self.expect(Kind::Counter, true);
        let v = IntCounterVec::new(self.opts(), &self.label_names())?;
        for values in self.combinations() {
            v.with_label_values(&values);
        }
        Ok(v)
    }

    /// The gauge (no labels).
    pub fn gauge(&self) -> prometheus::Result<IntGauge> {
        self.expect(Kind::Gauge, false);
        IntGauge::with_opts(self.opts())
    }

    /// The gauge family, every documented combination at zero.
    pub fn gauge_vec(&self) -> prometheus::Result<IntGaugeVec> {
        self.expect(Kind::Gauge, true);
        let v = IntGaugeVec::new(self.opts(), &self.label_names())?;
        for values in self.combinations() {
            v.with_label_values(&values);
        }
        Ok(v)
    }

    /// The histogram (no labels), with `buckets` (in its unit).
    pub fn histogram(&self, buckets: Vec<f64>) -> prometheus::Result<Histogram> {
        self.expect(Kind::Histogram, false);
        Histogram::with_opts(HistogramOpts::new(self.name, self.help).buckets(buckets))
    }

    /// Every combination of documented label values, or none if a label is open or
    /// there would be more than 64 series.
    fn combinations(&self) -> Vec<Vec<&'static str>> {
        let n: usize = self.labels.iter().map(|l| l.values.len()).product();
        if self.labels.is_empty() || n == 0 || n > 64 {
            return Vec::new();
        }
        let mut all = vec![Vec::new()];
        for l in self.labels {
            all = all
                .into_iter()
                .flat_map(|prefix| {
                    l.values.iter().map(move |v| {
                        let mut p = prefix.clone();
                        p.push(*v);
                        p
                    })
                })
                .collect();
        }
        all
    }
}

/// Latency buckets, in seconds, of the front's PUBACK and the writer's store write.
pub const LATENCY_BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

const DIALECT: Label = closed("dialect", &["losant", "thingsboard"]);
const PIPELINE_ROLE: Label = closed("role", &["validator", "writer", "dispatcher"]);

/// `fluxgate_mqtt_front_connections`
pub const FRONT_CONNECTIONS: Metric = Metric {
    name: "fluxgate_mqtt_front_connections",
    kind: Kind::Gauge,
    unit: "",
    role: "front",
    labels: &[DIALECT],
    help: "Open MQTT connections.",
};

/// `fluxgate_mqtt_front_connects_total`
pub const FRONT_CONNECTS: Metric = Metric {
    name: "fluxgate_mqtt_front_connects_total",
    kind: Kind::Counter,
    unit: "",
    role: "front",
    labels: &[closed(
        "outcome",
        &[
            "accepted",
            "bad_credentials",
            "not_authorized",
            "unavailable",
            "rate_limited",
            "blocked",
            "persistent_session_unsupported",
            "draining",
            "server_full",
        ],
    )],
    help: "CONNECT packets by outcome (persistent_session_unsupported: MQTT 3.1.1 CleanSession=0; server_full: max_connections sessions held).",
};

/// `fluxgate_mqtt_front_messages_total`
pub const FRONT_MESSAGES: Metric = Metric {
    name: "fluxgate_mqtt_front_messages_total",
    kind: Kind::Counter,
    unit: "",
    role: "front",
    labels: &[
        DIALECT,
        closed(
            "kind",
            &[
                "state",
                "telemetry",
                "attributes",
                "attribute_request",
                "rpc_request",
                "rpc_response",
                "claim",
                "gateway_connect",
                "gateway_disconnect",
                "gateway_attributes",
                "gateway_attribute_request",
                "gateway_telemetry",
                "gateway_rpc",
                "gateway_claim",
                "custom",
                "unknown",
            ],
        ),
        closed(
            "outcome",
            &[
                "accepted",
                "answered",
                "denied",
                "malformed",
                "rate_limited",
                "failed",
                "retain_refused",
                "dropped",
            ],
        ),
    ],
    help: "PUBLISH packets by dialect, kind (the platform operation, custom or unknown) and outcome (answered: by the front itself; dropped: taken in while the connection was closing, not stored, not acked).",
};

/// `fluxgate_mqtt_front_received_bytes_total`
pub const FRONT_RECEIVED_BYTES: Metric = Metric {
    name: "fluxgate_mqtt_front_received_bytes_total",
    kind: Kind::Counter,
    unit: "bytes",
    role: "front",
    labels: &[DIALECT],
    help: "PUBLISH payload bytes received.",
};

/// `fluxgate_mqtt_front_publish_ack_seconds`
pub const FRONT_PUBLISH_ACK: Metric = Metric {
    name: "fluxgate_mqtt_front_publish_ack_seconds",
    kind: Kind::Histogram,
    unit: "seconds",
    role: "front",
    labels: &[],
    help: "Time from receiving a publish to the bus acknowledging it.",
};

/// `fluxgate_mqtt_front_rate_limited_total`
pub const FRONT_RATE_LIMITED: Metric = Metric {
    name: "fluxgate_mqtt_front_rate_limited_total",
    kind: Kind::Counter,
    unit: "",
    role: "front",
    labels: &[closed(
        "limit",
        &[
            "topic",
            "connection",
            "device",
            "gateway",
            "new_connections",
        ],
    )],
    help: "Rate-limit hits by limit (topic, connection: Losant; device, gateway: ThingsBoard, device also for a device behind a gateway).",
};

/// `fluxgate_mqtt_front_in_flight`
pub const FRONT_IN_FLIGHT: Metric = Metric {
    name: "fluxgate_mqtt_front_in_flight",
    kind: Kind::Gauge,
    unit: "",
    role: "front",
    labels: &[],
    help: "Publishes taken in that have no verdict yet.",
};

/// `fluxgate_mqtt_front_deliveries_total`
pub const FRONT_DELIVERIES: Metric = Metric {
    name: "fluxgate_mqtt_front_deliveries_total",
    kind: Kind::Counter,
    unit: "",
    role: "front",
    labels: &[closed(
        "outcome",
        &[
            "delivered",
            "sent",
            "not_subscribed",
            "failed",
            "backlog_full",
            "dropped_slow_client",
            "unrenderable",
        ],
    )],
    help: "Deliveries to clients by outcome (delivered: the client acknowledged, QoS 1; sent: written at QoS 0; dropped_slow_client: a QoS 0 message for a client that does not read).",
};

/// `fluxgate_mqtt_front_side_dropped_total`
pub const FRONT_SIDE_DROPPED: Metric = Metric {
    name: "fluxgate_mqtt_front_side_dropped_total",
    kind: Kind::Counter,
    unit: "",
    role: "front",
    labels: &[closed("kind", &["rejection", "delivery_outcome"])],
    help: "Best-effort records (rejected log, outcomes of deliveries no session took) dropped because the side queue was full.",
};

/// `fluxgate_mqtt_front_protocol_errors_total`
pub const FRONT_PROTOCOL_ERRORS: Metric = Metric {
    name: "fluxgate_mqtt_front_protocol_errors_total",
    kind: Kind::Counter,
    unit: "",
    role: "front",
    labels: &[],
    help: "Connections closed for a protocol violation (malformed or oversize packet, QoS 2).",
};

/// `fluxgate_mqtt_front_sessions_revoked_total`
pub const FRONT_SESSIONS_REVOKED: Metric = Metric {
    name: "fluxgate_mqtt_front_sessions_revoked_total",
    kind: Kind::Counter,
    unit: "",
    role: "front",
    labels: &[],
    help: "Sessions closed because a registry change ended their credential (key deactivated or deleted, token revoked, device deleted).",
};

/// `fluxgate_mqtt_front_sockets`
pub const FRONT_SOCKETS: Metric = Metric {
    name: "fluxgate_mqtt_front_sockets",
    kind: Kind::Gauge,
    unit: "",
    role: "front",
    labels: &[],
    help: "Open client sockets on every listener: sessions, and sockets that have not become one (minus fluxgate_mqtt_front_connections: those waiting for or in CONNECT).",
};

/// `fluxgate_mqtt_front_sockets_refused_total`
pub const FRONT_SOCKETS_REFUSED: Metric = Metric {
    name: "fluxgate_mqtt_front_sockets_refused_total",
    kind: Kind::Counter,
    unit: "",
    role: "front",
    labels: &[],
    help: "Sockets closed as soon as accepted because max_pending_connections sockets had not become sessions.",
};

/// `fluxgate_mqtt_front_undecodable_total`
pub const FRONT_UNDECODABLE: Metric = Metric {
    name: "fluxgate_mqtt_front_undecodable_total",
    kind: Kind::Counter,
    unit: "",
    role: "front",
    labels: &[closed(
        "topic",
        &["deliveries", "mqtt_custom", "registry_changes"],
    )],
    help: "Broadcast records this front could not decode (they stay on their topic).",
};

/// `fluxgate_api_requests_total`
pub const API_REQUESTS: Metric = Metric {
    name: "fluxgate_api_requests_total",
    kind: Kind::Counter,
    unit: "",
    role: "api",
    labels: &[
        open(
            "route",
            "the route pattern, e.g. /applications/{app}/devices; unmatched",
        ),
        closed("status", &["2xx", "4xx", "5xx", "other"]),
    ],
    help: "API requests by route and status class.",
};

/// `fluxgate_api_request_seconds`
pub const API_REQUEST_SECONDS: Metric = Metric {
    name: "fluxgate_api_request_seconds",
    kind: Kind::Histogram,
    unit: "seconds",
    role: "api",
    labels: &[],
    help: "API request handling time.",
};

/// `fluxgate_api_claims_total`
pub const API_CLAIMS: Metric = Metric {
    name: "fluxgate_api_claims_total",
    kind: Kind::Counter,
    unit: "",
    role: "api",
    labels: &[closed(
        "outcome",
        &[
            "claimed",
            "already_yours",
            "owned",
            "no_window",
            "wrong_secret",
        ],
    )],
    help: "Device claim attempts by outcome.",
};

/// `fluxgate_validator_outputs_total`
pub const VALIDATOR_OUTPUTS: Metric = Metric {
    name: "fluxgate_validator_outputs_total",
    kind: Kind::Counter,
    unit: "",
    role: "validator",
    labels: &[closed("kind", &["valid", "event", "rejected"])],
    help: "Outputs acknowledged, by kind.",
};

/// `fluxgate_validator_rejections_total`
pub const VALIDATOR_REJECTIONS: Metric = Metric {
    name: "fluxgate_validator_rejections_total",
    kind: Kind::Counter,
    unit: "",
    role: "validator",
    labels: &[open(
        "reason",
        "a rejection reason code (fluxgate_model::ReasonCode, PROTOCOLS.md), each exported from zero",
    )],
    help: "Rejections acknowledged on the rejected topic, by reason code.",
};

/// `fluxgate_ts_writer_points_written_total`
pub const WRITER_POINTS: Metric = Metric {
    name: "fluxgate_ts_writer_points_written_total",
    kind: Kind::Counter,
    unit: "",
    role: "writer",
    labels: &[],
    help: "Points written to the store.",
};

/// `fluxgate_ts_writer_batches_total`
pub const WRITER_BATCHES: Metric = Metric {
    name: "fluxgate_ts_writer_batches_total",
    kind: Kind::Counter,
    unit: "",
    role: "writer",
    labels: &[],
    help: "Batches flushed to the store.",
};

/// `fluxgate_ts_writer_write_seconds`
pub const WRITER_WRITE_SECONDS: Metric = Metric {
    name: "fluxgate_ts_writer_write_seconds",
    kind: Kind::Histogram,
    unit: "seconds",
    role: "writer",
    labels: &[],
    help: "Time a successful batch write took in the store.",
};

/// `fluxgate_ts_writer_batch_points`
pub const WRITER_BATCH_POINTS: Metric = Metric {
    name: "fluxgate_ts_writer_batch_points",
    kind: Kind::Histogram,
    unit: "points",
    role: "writer",
    labels: &[],
    help: "Points per written batch.",
};

/// A dispatcher counter without labels.
const fn dispatcher(name: &'static str, help: &'static str) -> Metric {
    Metric {
        name,
        kind: Kind::Counter,
        unit: "",
        role: "dispatcher",
        labels: &[],
        help,
    }
}

/// `fluxgate_command_dispatch_deliveries_total`
pub const DISPATCH_DELIVERIES: Metric = dispatcher(
    "fluxgate_command_dispatch_deliveries_total",
    "Deliveries produced.",
);
/// `fluxgate_command_dispatch_failed_total`
pub const DISPATCH_FAILED: Metric = dispatcher(
    "fluxgate_command_dispatch_failed_total",
    "Commands that ended failed, timed out or expired.",
);
/// `fluxgate_command_dispatch_client_rpcs_total`
pub const DISPATCH_CLIENT_RPCS: Metric = dispatcher(
    "fluxgate_command_dispatch_client_rpcs_total",
    "Client-side RPC requests of devices, stored for an application to answer.",
);
/// `fluxgate_command_dispatch_client_rpc_answers_total`
pub const DISPATCH_CLIENT_RPC_ANSWERS: Metric = dispatcher(
    "fluxgate_command_dispatch_client_rpc_answers_total",
    "Client-side RPC answers sent to their device.",
);
/// `fluxgate_command_dispatch_client_rpc_undelivered_total`
pub const DISPATCH_CLIENT_RPC_UNDELIVERED: Metric = dispatcher(
    "fluxgate_command_dispatch_client_rpc_undelivered_total",
    "Client-side RPC answers not sent: the device was offline.",
);
/// `fluxgate_command_dispatch_client_rpc_timed_out_total`
pub const DISPATCH_CLIENT_RPC_TIMED_OUT: Metric = dispatcher(
    "fluxgate_command_dispatch_client_rpc_timed_out_total",
    "Client-side RPC requests nobody answered in time; the device got an error reply.",
);
/// `fluxgate_command_dispatch_claim_windows_total`
pub const DISPATCH_CLAIM_WINDOWS: Metric = dispatcher(
    "fluxgate_command_dispatch_claim_windows_total",
    "Claiming windows devices opened (ThingsBoard claim messages).",
);
/// `fluxgate_command_dispatch_missed_attribute_pushes_total`
pub const DISPATCH_MISSED_ATTRIBUTE_PUSHES: Metric = dispatcher(
    "fluxgate_command_dispatch_missed_attribute_pushes_total",
    "Pushes of the shared attributes changed while a device was away, when it subscribed again.",
);
/// `fluxgate_command_dispatch_timers_rearmed_total`
pub const DISPATCH_TIMERS_REARMED: Metric = dispatcher(
    "fluxgate_command_dispatch_timers_rearmed_total",
    "Timers of commands and client-side RPCs started again from the store when partitions were assigned.",
);
/// `fluxgate_command_dispatch_timers`
pub const DISPATCH_TIMERS: Metric = Metric {
    kind: Kind::Gauge,
    ..dispatcher(
        "fluxgate_command_dispatch_timers",
        "Timers running (RPC replies, delivery deadlines, client-side RPC timeouts) of the devices whose partitions this dispatcher holds.",
    )
};

/// A counter every pipeline role has, labelled by role.
const fn pipeline(name: &'static str, help: &'static str) -> Metric {
    Metric {
        name,
        kind: Kind::Counter,
        unit: "",
        role: "pipeline",
        labels: &[PIPELINE_ROLE],
        help,
    }
}

/// `fluxgate_pipeline_records_total`
pub const PIPELINE_RECORDS: Metric = pipeline(
    "fluxgate_pipeline_records_total",
    "Records read from the bus by a consuming role.",
);
/// `fluxgate_pipeline_retries_total`
pub const PIPELINE_RETRIES: Metric = pipeline(
    "fluxgate_pipeline_retries_total",
    "Store or bus failures a consuming role retried.",
);
/// `fluxgate_pipeline_undecodable_total`
pub const PIPELINE_UNDECODABLE: Metric = pipeline(
    "fluxgate_pipeline_undecodable_total",
    "Records a consuming role could not decode, kept on the dead-letter topic and in the rejected log.",
);
/// `fluxgate_pipeline_restarts_total`
pub const PIPELINE_RESTARTS: Metric = pipeline(
    "fluxgate_pipeline_restarts_total",
    "Times a consuming role's handler died and was restarted; its unfinished records were redelivered.",
);
/// `fluxgate_pipeline_consumer_lag_records`
pub const PIPELINE_LAG: Metric = Metric {
    kind: Kind::Gauge,
    unit: "records",
    ..pipeline(
        "fluxgate_pipeline_consumer_lag_records",
        "Records of a consuming role's assigned partitions not finished yet (consumer lag).",
    )
};

/// `fluxgate_process_ready`
pub const PROCESS_READY: Metric = Metric {
    name: "fluxgate_process_ready",
    kind: Kind::Gauge,
    unit: "",
    role: "process",
    labels: &[],
    help: "1 when this process's /readyz answers 200 (started, every dependency probe passing), 0 otherwise; read at each scrape.",
};

/// `fluxgate_telemetry_spans_dropped_total`
pub const TELEMETRY_SPANS_DROPPED: Metric = Metric {
    name: "fluxgate_telemetry_spans_dropped_total",
    kind: Kind::Counter,
    unit: "",
    role: "process",
    labels: &[closed("reason", &["queue_full", "export_failed"])],
    help: "Finished spans not exported: the export queue was full (`queue_full`), or the collector did not take their batch (`export_failed`). Stays 0 with telemetry off.",
};

/// `fluxgate_telemetry_spans_exported_total`
pub const TELEMETRY_SPANS_EXPORTED: Metric = Metric {
    name: "fluxgate_telemetry_spans_exported_total",
    kind: Kind::Counter,
    unit: "",
    role: "process",
    labels: &[],
    help: "Finished spans the OTLP collector took.",
};

/// Every metric, grouped by role.
pub const ALL: &[&Metric] = &[
    &FRONT_CONNECTIONS,
    &FRONT_CONNECTS,
    &FRONT_MESSAGES,
    &FRONT_RECEIVED_BYTES,
    &FRONT_PUBLISH_ACK,
    &FRONT_RATE_LIMITED,
    &FRONT_IN_FLIGHT,
    &FRONT_DELIVERIES,
    &FRONT_SIDE_DROPPED,
    &FRONT_PROTOCOL_ERRORS,
    &FRONT_SESSIONS_REVOKED,
    &FRONT_SOCKETS,
    &FRONT_SOCKETS_REFUSED,
    &FRONT_UNDECODABLE,
    &API_REQUESTS,
    &API_REQUEST_SECONDS,
    &API_CLAIMS,
    &VALIDATOR_OUTPUTS,
    &VALIDATOR_REJECTIONS,
    &WRITER_POINTS,
    &WRITER_BATCHES,
    &WRITER_WRITE_SECONDS,
    &WRITER_BATCH_POINTS,
    &DISPATCH_DELIVERIES,
    &DISPATCH_FAILED,
    &DISPATCH_CLIENT_RPCS,
    &DISPATCH_CLIENT_RPC_ANSWERS,
    &DISPATCH_CLIENT_RPC_UNDELIVERED,
    &DISPATCH_CLIENT_RPC_TIMED_OUT,
    &DISPATCH_CLAIM_WINDOWS,
    &DISPATCH_MISSED_ATTRIBUTE_PUSHES,
    &DISPATCH_TIMERS_REARMED,
    &DISPATCH_TIMERS,
    &PIPELINE_RECORDS,
    &PIPELINE_RETRIES,
    &PIPELINE_UNDECODABLE,
    &PIPELINE_RESTARTS,
    &PIPELINE_LAG,
    &PROCESS_READY,
    &TELEMETRY_SPANS_DROPPED,
    &TELEMETRY_SPANS_EXPORTED,
];

/// The metric named `name` (a histogram's `_bucket`/`_sum`/`_count` series name its
/// histogram).
pub fn find(name: &str) -> Option<&'static Metric> {
    ALL.iter().copied().find(|m| m.name == name).or_else(|| {
        ["_bucket", "_sum", "_count"].iter().find_map(|s| {
            let base = name.strip_suffix(s)?;
            ALL.iter()
                .copied()
                .find(|m| m.name == base && m.kind == Kind::Histogram)
        })
    })
}

/// What in a `/metrics` exposition (Prometheus text format) disagrees with the
/// catalogue: a `fluxgate_` family that is not listed or has another type, a series whose
/// label names differ from its metric's, a value of a closed label that is not listed,
/// and each listed metric of `roles` that is missing (`pipeline` stands for the
/// validator, writer and dispatcher). Empty when they agree.
pub fn disagreements(exposition: &str, roles: &[&str]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            if !name.starts_with("fluxgate_") {
                continue;
            }
            match ALL.iter().find(|m| m.name == name) {
                None => problems.push(format!("{name}: not in the catalogue")),
                Some(m) if m.kind.as_str() != kind => problems.push(format!(
                    "{name}: exported as a {kind}, listed as a {}",
                    m.kind.as_str()
                )),
                Some(m) => {
                    seen.insert(m.name);
                }
            }
            continue;
        }
        if line.starts_with('#') || !line.starts_with("fluxgate_") {
            continue;
        }
        let (name, labels) = match line.find('{') {
            Some(i) => (&line[..i], series_labels(&line[i + 1..])),
            None => (line.split_whitespace().next().unwrap_or(line), Vec::new()),
        };
        let Some(m) = find(name) else { continue };
        let names: Vec<&str> = labels
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| !(m.kind == Kind::Histogram && *k == "le"))
            .collect();
        if names != m.label_names() {
            problems.push(format!(
                "{name}: labels {names:?}, listed as {:?}",
                m.label_names()
            ));
            continue;
        }
        for (k, v) in &labels {
            let Some(l) = m.labels.iter().find(|l| l.name == k) else {
                continue;
            };
            if !l.values.is_empty() && !l.values.contains(&v.as_str()) {
                problems.push(format!("{name}: {k}=\"{v}\" is not a listed value"));
            }
        }
    }
    for m in ALL.iter().filter(|m| roles.contains(&m.role)) {
        if !seen.contains(m.name) {
            problems.push(format!("{}: listed for {}, not exported", m.name, m.role));
        }
    }
    problems
}

/// The `name="value"` pairs of a series, from just after its `{`.
fn series_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        let name = name.trim_start_matches([',', ' ']).to_owned();
        if name.is_empty() || name.starts_with('}') || chars.next() != Some('"') {
            return out;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if let Some(n) = chars.next() {
                        value.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => break,
                c => value.push(c),
            }
        }
        out.push((name, value));
    }
}

/// The catalogue as the Markdown of `docs/metrics.md`.
pub fn markdown() -> String {
    let mut out = String::from(
        "# Metrics\n\n\
         Every metric fluxgate exports, by role (generated from\n\
         `shared/observability/src/catalogue.rs` by `fluxgate metrics`; a test keeps\n\
         this file equal to it). Each role serves them on its `/metrics`; `standalone` serves\n\
         every role's on the API's. Labels whose values are listed take only those values,\n\
         and every combination is exported from zero; `pipeline` metrics are exported by\n\
         the validator, the writer and the dispatcher, one series each; `process` metrics\n\
         by every role's process.\n",
    );
    let mut role = "";
    for m in ALL {
        if m.role != role {
            role = m.role;
            out.push_str(&format!(
                "\n## {role}\n\n| name | type | unit | labels | help |\n|---|---|---|---|---|\n"
            ));
        }
        let labels: Vec<String> = m
            .labels
            .iter()
            .map(|l| {
                if l.values.is_empty() {
                    format!("`{}`: {}", l.name, l.open)
                } else {
                    format!("`{}`: {}", l.name, l.values.join(", "))
                }
            })
            .collect();
        let labels = if labels.is_empty() {
            "—".to_owned()
        } else {
            labels.join("; ")
        };
        let unit = if m.unit.is_empty() { "—" } else { m.unit };
        out.push_str(&format!(
            "| `{}` | {} | {} | {} | {} |\n",
            m.name,
            m.kind.as_str(),
            unit,
            labels,
            m.help
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_follow_the_conventions() {
        let mut seen = std::collections::HashSet::new();
        for m in ALL {
            assert!(seen.insert(m.name), "{} listed twice", m.name);
            assert!(m.name.starts_with("fluxgate_"), "{}", m.name);
            match m.kind {
                Kind::Counter => assert!(m.name.ends_with("_total"), "{}", m.name),
                _ => assert!(!m.name.ends_with("_total"), "{}", m.name),
            }
            if !m.unit.is_empty() {
                let stem = m.name.trim_end_matches("_total");
                assert!(stem.ends_with(m.unit), "{} has unit {}", m.name, m.unit);
            }
            for l in m.labels {
                assert!(
                    l.values.is_empty() != l.open.is_empty(),
                    "{}: label {} is either closed or described",
                    m.name,
                    l.name
                );
            }
        }
    }

    #[test]
    fn closed_labels_start_at_zero_for_every_value() {
        let registry = prometheus::Registry::new();
        registry
            .register(Box::new(FRONT_DELIVERIES.counter_vec().unwrap()))
            .unwrap();
        let text = crate::render(&registry);
        for v in FRONT_DELIVERIES.labels[0].values {
            let series = format!("fluxgate_mqtt_front_deliveries_total{{outcome=\"{v}\"}} 0");
            assert!(text.contains(&series), "{series} missing from\n{text}");
        }
        // Open labels (or too many combinations) are not pre-made.
        assert!(FRONT_MESSAGES.combinations().is_empty());
        assert_eq!(FRONT_CONNECTS.combinations().len(), 9);
    }

    #[test]
    fn an_exposition_is_checked_against_the_catalogue() {
        let registry = prometheus::Registry::new();
        registry
            .register(Box::new(FRONT_DELIVERIES.counter_vec().unwrap()))
            .unwrap();
        registry
            .register(Box::new(
                FRONT_PUBLISH_ACK
                    .histogram(LATENCY_BUCKETS.to_vec())
                    .unwrap(),
            ))
            .unwrap();
        let text = crate::render(&registry);
        assert_eq!(disagreements(&text, &[]), Vec::<String>::new(), "{text}");
        let missing = disagreements(&text, &["front"]);
        assert!(
            missing
                .contains(&"fluxgate_mqtt_front_in_flight: listed for front, not exported".into()),
            "{missing:?}"
        );
        let bad = "# TYPE fluxgate_mqtt_front_deliveries_total gauge\n\
                   fluxgate_mqtt_front_deliveries_total{outcome=\"lost\"} 1\n\
                   fluxgate_mqtt_front_deliveries_total{outcome=\"delivered\",x=\"y\"} 1\n\
                   # TYPE fluxgate_made_up_total counter\n";
        assert_eq!(
            disagreements(bad, &[]),
            vec![
                "fluxgate_mqtt_front_deliveries_total: exported as a gauge, listed as a counter",
                "fluxgate_mqtt_front_deliveries_total: outcome=\"lost\" is not a listed value",
                "fluxgate_mqtt_front_deliveries_total: labels [\"outcome\", \"x\"], listed as [\"outcome\"]",
                "fluxgate_made_up_total: not in the catalogue",
            ]
        );
    }

    #[test]
    fn histogram_series_find_their_metric() {
        let m = find("fluxgate_api_request_seconds_bucket").unwrap();
        assert_eq!(m.name, API_REQUEST_SECONDS.name);
        assert!(find("fluxgate_api_requests_total_count").is_none());
        assert!(find("fluxgate_nothing_total").is_none());
    }
}
