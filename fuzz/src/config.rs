//! The config target: TOML text through the path `fluxgate`'s loader takes
//! (`services/fluxgate/src/config.rs`, `Config::load`): defaults, then the TOML file,
//! extracted with figment into the typed settings, then the checks serde cannot make.
//!
//! The loader itself lives in the `fluxgate` binary crate, which links every service,
//! rdkafka (librdkafka), scylla, rusqlite (SQLite), ntex, actix-web and OpenTelemetry: 449
//! crates where the model has 31, too heavy for an instrumented build on every CI run (and
//! a binary crate cannot be a dependency). So this target compiles the services' own
//! `config.rs` files — the real source, included by path, not copies — which depend only on
//! serde, schemars, thiserror and the model, and puts them in a document of the sections
//! `fluxgate.toml` names them by (`front`, `api`, `validator`, `writer`, `dispatcher`). Not
//! covered: the `bus`, `store`, `log` and `telemetry` sections, whose types live in crates
//! with those heavy dependencies, and the `FLUXGATE_*` environment layer.

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use fluxgate_model::Backoff;
use serde::{Deserialize, Serialize};

#[path = "../../services/api/src/config.rs"]
#[allow(dead_code, unreachable_pub)]
mod api;
#[path = "../../services/command-dispatch/src/config.rs"]
#[allow(dead_code, unreachable_pub)]
mod dispatch;
#[path = "../../services/mqtt-front/src/config.rs"]
#[allow(dead_code, unreachable_pub)]
mod front;
#[path = "../../services/validator/src/config.rs"]
#[allow(dead_code, unreachable_pub)]
mod validator;
#[path = "../../services/ts-writer/src/config.rs"]
#[allow(dead_code, unreachable_pub)]
mod writer;

/// The one thing of their own crates the included `config.rs` files name:
/// `ValidatorConfig::quotas` makes the validator's `Quotas`, its runtime device counts, not
/// part of loading settings. This stand-in lets the real file compile here.
#[derive(Debug)]
pub(crate) struct Quotas;

impl Quotas {
    pub(crate) fn new(_per_application: u64, _per_gateway: u64) -> Self {
        Quotas
    }
}

/// The sections of `fluxgate.toml` whose types this build has, under the names `Config`
/// gives them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct Sections {
    front: front::FrontConfig,
    api: api::ApiConfig,
    validator: validator::ValidatorConfig,
    writer: writer::WriterConfig,
    dispatcher: dispatch::DispatchConfig,
}

impl Default for Sections {
    /// As `Config::default` has them (the front's instance id is not the host name).
    fn default() -> Self {
        Sections {
            front: front::FrontConfig {
                instance_id: "front-0".into(),
                ..front::FrontConfig::default()
            },
            api: Default::default(),
            validator: Default::default(),
            writer: Default::default(),
            dispatcher: Default::default(),
        }
    }
}

/// The defaults of these sections, as `fluxgate config` prints them (for the seed corpus).
pub fn defaults() -> impl Serialize {
    Sections::default()
}

/// `Config::load`'s checks after extraction, in its order, for these sections (keep in
/// step with `services/fluxgate/src/config.rs`).
fn check(cfg: &Sections) -> Result<(), String> {
    cfg.front.validate().map_err(|e| e.to_string())?;
    for (role, limits) in [
        ("front", &cfg.front.limits),
        ("validator", &cfg.validator.limits),
    ] {
        limits.validate().map_err(|e| format!("{role}.{e}"))?;
    }
    for (role, initial, max) in [
        (
            "validator",
            cfg.validator.retry_initial_ms,
            cfg.validator.retry_max_ms,
        ),
        (
            "writer",
            cfg.writer.retry_initial_ms,
            cfg.writer.retry_max_ms,
        ),
        (
            "dispatcher",
            cfg.dispatcher.retry_initial_ms,
            cfg.dispatcher.retry_max_ms,
        ),
    ] {
        Backoff::check_ms(
            &format!("{role}.retry_initial_ms"),
            initial,
            &format!("{role}.retry_max_ms"),
            max,
        )?;
    }
    cfg.api.validate().map_err(|e| e.to_string())
}

/// Loads `data` as a `fluxgate.toml`; when the settings load and pass the checks, uses
/// them as the services do at start (backoffs, limits), which must not panic either.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return; // TOML is UTF-8; figment refuses anything else before parsing.
    };
    let loaded: Result<Sections, _> = Figment::from(Serialized::defaults(Sections::default()))
        .merge(Toml::string(text))
        .extract();
    let Ok(cfg) = loaded else {
        return;
    };
    if check(&cfg).is_err() {
        return;
    }
    for mut b in [
        cfg.validator.backoff(),
        cfg.writer.backoff(),
        cfg.dispatcher.backoff(),
    ] {
        for n in [0, 1, 2, 31, 32, 63, 64, u32::MAX] {
            let _ = b.nth(n);
        }
        for _ in 0..70 {
            let _ = b.next_delay();
        }
    }
    for ts in [i64::MIN, -1, 0, crate::NOW, i64::MAX] {
        for now in [i64::MIN, 0, crate::NOW, i64::MAX] {
            let _ = cfg.validator.time_window.check(ts, now);
        }
    }
    for limits in [&cfg.front.limits, &cfg.validator.limits, &cfg.api.limits()] {
        assert!(
            (1..=fluxgate_model::Limits::MAX_JSON_DEPTH).contains(&limits.max_json_depth),
            "a configuration with max_json_depth {} loaded",
            limits.max_json_depth
        );
    }
}
