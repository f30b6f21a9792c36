//! The one configuration of every role: defaults, then a TOML file, then `FLUXGATE_*`
//! environment variables (`FLUXGATE_FRONT__TCP_ADDR` sets `front.tcp_addr`). Errors name
//! the key at fault.

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use fluxgate_api::ApiConfig;
use fluxgate_bus::{KafkaConfig, TopicsConfig};
use fluxgate_command_dispatch::DispatchConfig;
use fluxgate_mqtt_front::FrontConfig;
use fluxgate_observability::telemetry::TelemetryConfig;
use fluxgate_store::scylla::ScyllaConfig;
use fluxgate_store::sqlite::SqliteConfig;
use fluxgate_ts_writer::WriterConfig;
use fluxgate_validator::ValidatorConfig;
use serde::{Deserialize, Serialize};

/// Which bus the roles use (standalone always uses the in-process one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum BusKind {
    /// Kafka (`bus.kafka`).
    Kafka,
    /// The in-process bus (one process only).
    Memory,
}

/// Bus settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct BusConfig {
    /// `kafka` or `memory`.
    pub(crate) kind: BusKind,
    /// Kafka client settings.
    pub(crate) kafka: KafkaConfig,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            kind: BusKind::Kafka,
            kafka: KafkaConfig::default(),
        }
    }
}

/// Which store the roles use (standalone always uses SQLite under `data_dir`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum StoreKind {
    /// ScyllaDB (`store.scylla`).
    Scylla,
    /// SQLite at `data_dir/fluxgate.db`.
    Sqlite,
}

/// Store settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct StoreConfig {
    /// `scylla` or `sqlite`.
    pub(crate) kind: StoreKind,
    /// ScyllaDB settings.
    pub(crate) scylla: ScyllaConfig,
    /// SQLite settings.
    pub(crate) sqlite: SqliteConfig,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            kind: StoreKind::Scylla,
            scylla: ScyllaConfig::default(),
            sqlite: SqliteConfig::default(),
        }
    }
}

/// Log settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct LogConfig {
    /// Filter, `RUST_LOG` syntax (`RUST_LOG` itself wins when set).
    pub(crate) filter: String,
    /// JSON lines instead of plain text.
    pub(crate) json: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            filter: "info".into(),
            json: false,
        }
    }
}

/// Every setting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Config {
    /// Where standalone keeps its database and generated secrets.
    pub(crate) data_dir: PathBuf,
    /// `/metrics`, `/healthz`, `/readyz` of the validator, writer and dispatcher roles
    /// (standalone serves their metrics on the API's `/metrics`).
    pub(crate) metrics_addr: String,
    /// The bus.
    pub(crate) bus: BusConfig,
    /// The store.
    pub(crate) store: StoreConfig,
    /// Topic names and creation.
    pub(crate) topics: TopicsConfig,
    /// The MQTT front.
    pub(crate) front: FrontConfig,
    /// The HTTP API.
    pub(crate) api: ApiConfig,
    /// The validator.
    pub(crate) validator: ValidatorConfig,
    /// The time-series writer.
    pub(crate) writer: WriterConfig,
    /// The command dispatcher.
    pub(crate) dispatcher: DispatchConfig,
    /// Logs.
    pub(crate) log: LogConfig,
    /// OpenTelemetry traces (off by default; the `OTEL_*` variables apply too).
    pub(crate) telemetry: TelemetryConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("fluxgate-data"),
            metrics_addr: "0.0.0.0:9102".into(),
            bus: BusConfig::default(),
            store: StoreConfig::default(),
            topics: TopicsConfig::default(),
            front: FrontConfig {
                instance_id: "front-0".into(),
                ..FrontConfig::default()
            },
            api: ApiConfig::default(),
            validator: ValidatorConfig::default(),
            writer: WriterConfig::default(),
            dispatcher: DispatchConfig::default(),
            log: LogConfig::default(),
            telemetry: TelemetryConfig::default(),
        }
    }
}

impl Config {
    /// Defaults, then `file` (when given), then `FLUXGATE_*` variables.
    pub(crate) fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        let mut f = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                anyhow::bail!("config file {} does not exist", path.display());
            }
            f = f.merge(Toml::file(path));
        }
        let cfg: Config = f
            .merge(Env::prefixed("FLUXGATE_").split("__"))
            .extract()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        cfg.front
            .validate()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        // Payload limits of every role that reads device input.
        for (role, limits) in [
            ("front", &cfg.front.limits),
            ("validator", &cfg.validator.limits),
        ] {
            limits
                .validate()
                .map_err(|e| anyhow::anyhow!("invalid configuration: {role}.{e}"))?;
        }
        // Retry backoffs of the pipeline roles.
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
            fluxgate_model::Backoff::check_ms(
                &format!("{role}.retry_initial_ms"),
                initial,
                &format!("{role}.retry_max_ms"),
                max,
            )
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        }
        cfg.telemetry
            .validate()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        // The API's settings, its limits (flat settings of its own section) among them.
        cfg.api
            .validate()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_printed_defaults_load_back_and_errors_name_the_key() {
        let dir = std::env::temp_dir().join(format!("fg-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("fluxgate.toml");
        std::fs::write(&file, crate::config_doc::annotated_toml().unwrap()).unwrap();
        assert_eq!(Config::load(Some(&file)).unwrap(), Config::default());

        std::fs::write(&file, "[front]\nconnect_timeout_secs = \"soon\"\n").unwrap();
        let e = Config::load(Some(&file)).unwrap_err().to_string();
        assert!(e.contains("front.connect_timeout_secs"), "{e}");
        std::fs::write(&file, "[front]\ntcp_adr = \"x\"\n").unwrap();
        let e = Config::load(Some(&file)).unwrap_err().to_string();
        assert!(e.contains("tcp_adr"), "{e}");
        assert!(Config::load(Some(&dir.join("missing.toml"))).is_err());
        std::fs::write(&file, "[front.limits]\nmax_json_depth = 500\n").unwrap();
        let e = Config::load(Some(&file)).unwrap_err().to_string();
        assert!(e.contains("front.limits.max_json_depth"), "{e}");
        std::fs::write(&file, "[writer]\nretry_initial_ms = 0\n").unwrap();
        let e = Config::load(Some(&file)).unwrap_err().to_string();
        assert!(e.contains("writer.retry_initial_ms"), "{e}");
        std::fs::write(&file, "[dispatcher]\nretry_max_ms = 10\n").unwrap();
        let e = Config::load(Some(&file)).unwrap_err().to_string();
        assert!(e.contains("dispatcher.retry_max_ms"), "{e}");
        std::fs::write(&file, "[api]\nrequest_timeout_ms = 0\n").unwrap();
        let e = Config::load(Some(&file)).unwrap_err().to_string();
        assert!(e.contains("api.request_timeout_ms"), "{e}");
        std::fs::write(&file, "[api]\nmax_json_depth = 500\n").unwrap();
        let e = Config::load(Some(&file)).unwrap_err().to_string();
        assert!(e.contains("api.max_json_depth"), "{e}");
    }
}
