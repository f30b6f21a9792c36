//! `fluxgate`: the one binary.
//!
//! - `fluxgate standalone [--demo]`: every role in one process, on the in-process bus and
//!   SQLite under `data_dir`.
//! - `fluxgate front|api|validator|writer|dispatcher`: one role, on Kafka and ScyllaDB (or
//!   what `bus.kind` / `store.kind` say).
//! - `fluxgate migrate`: creates the store's schema and the Kafka topics.
//! - `fluxgate config`: prints the default configuration (TOML).
//!
//! The binary only reads configuration, sets up logs, prepares the roles and hands them
//! to [`role::serve`], the same for one role and for standalone.

mod config;
mod config_doc;
mod probe;
mod role;
mod standalone;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fluxgate_bus::{Bus, KafkaBus, MemoryBus};
use fluxgate_store::Store;
use fluxgate_ts_writer::WriterStore;

use crate::config::{BusKind, Config, StoreKind};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "fluxgate: IoT ingestion for Losant and ThingsBoard devices"
)]
struct Cli {
    /// Configuration file (TOML); `FLUXGATE_*` variables override it.
    #[arg(long, short, global = true, env = "FLUXGATE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Every role in one process on embedded parts (in-process bus, SQLite).
    Standalone {
        /// Create a demo application with devices and keys, and print commands to try.
        #[arg(long)]
        demo: bool,
    },
    /// The MQTT front.
    Front,
    /// The HTTP API.
    Api,
    /// The validator.
    Validator,
    /// The time-series writer.
    Writer,
    /// The command dispatcher.
    Dispatcher,
    /// Create the store schema and the Kafka topics, then exit.
    Migrate,
    /// Print every setting with its default and a one-line doc, as TOML.
    Config {
        /// The reference as Markdown instead (`docs/configuration.md`).
        #[arg(long)]
        markdown: bool,
        /// Load the configuration (`--config` file, then `FLUXGATE_*` variables) as a role
        /// would, and exit non-zero naming the first bad key.
        #[arg(long, conflicts_with = "markdown")]
        check: bool,
        /// The JSON Schema (draft-07) of the configuration file instead: what the Helm
        /// chart's `values.schema.json` checks `config` against.
        #[arg(long, conflicts_with_all = ["markdown", "check"])]
        schema: bool,
    },
    /// GET an http:// URL (a role's `/readyz`) and exit 0 on a 2xx answer: the container
    /// healthcheck, with no curl in the image. An mqtt://host:port URL gets an MQTT
    /// CONNECT instead and passes on any CONNACK (`helm test`).
    Probe {
        url: String,
        /// Seconds for the connection and for the answer.
        #[arg(long, default_value_t = 3)]
        timeout_secs: u64,
    },
    /// Sleep this many seconds, then exit 0: the front's preStop hook in Kubernetes (the
    /// image has no shell and no `sleep`; the hook's own sleep action needs 1.30).
    #[command(hide = true)]
    Sleep { secs: u64 },
    /// Print every metric of every role, with its type, unit and labels (Markdown,
    /// `docs/metrics.md`).
    Metrics,
}

/// The role's name in `service.name` (`fluxgate-<role>`) and its instance id.
fn service_of(cmd: &Cmd, cfg: &Config) -> (&'static str, String) {
    let role = match cmd {
        Cmd::Standalone { .. } => "standalone",
        Cmd::Front => "front",
        Cmd::Api => "api",
        Cmd::Validator => "validator",
        Cmd::Writer => "writer",
        Cmd::Dispatcher => "dispatcher",
        Cmd::Migrate => "migrate",
        Cmd::Config { .. } | Cmd::Probe { .. } | Cmd::Sleep { .. } | Cmd::Metrics => "cli",
    };
    let instance = match cmd {
        Cmd::Front | Cmd::Standalone { .. } => cfg.front.instance_id.clone(),
        // A pod's or a container's name.
        _ => std::env::var("HOSTNAME").unwrap_or_else(|_| format!("{role}-{}", std::process::id())),
    };
    (role, instance)
}

/// Spans still queued at exit get this long to reach the collector.
const FLUSH_AT_EXIT: std::time::Duration = std::time::Duration::from_secs(5);

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Cmd::Metrics = cli.cmd {
        print!("{}", fluxgate_observability::catalogue::markdown());
        return Ok(());
    }
    if let Cmd::Sleep { secs } = cli.cmd {
        std::thread::sleep(std::time::Duration::from_secs(secs));
        return Ok(());
    }
    if let Cmd::Probe { url, timeout_secs } = &cli.cmd {
        let status = probe::probe(url, std::time::Duration::from_secs(*timeout_secs))?;
        println!("{url}: {status}");
        return Ok(());
    }
    if let Cmd::Config { check: true, .. } = cli.cmd {
        Config::load(cli.config.as_deref())?;
        match &cli.config {
            Some(f) => println!(
                "configuration ok: {} and the FLUXGATE_* variables",
                f.display()
            ),
            None => println!("configuration ok: defaults and the FLUXGATE_* variables"),
        }
        return Ok(());
    }
    if let Cmd::Config {
        markdown, schema, ..
    } = cli.cmd
    {
        if schema {
            println!("{}", config_doc::json_schema()?);
        } else if markdown {
            print!("{}", config_doc::markdown()?);
        } else {
            print!("{}", config_doc::annotated_toml()?);
        }
        return Ok(());
    }
    let cfg = Config::load(cli.config.as_deref())?;
    let (role, instance) = service_of(&cli.cmd, &cfg);
    let telemetry = fluxgate_observability::telemetry::init(
        &fluxgate_observability::telemetry::Service {
            role,
            instance: &instance,
        },
        &fluxgate_observability::telemetry::LogSettings {
            filter: &cfg.log.filter,
            json: cfg.log.json,
        },
        &cfg.telemetry,
    )
    .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    let done = actix_rt::System::new().block_on(async move {
        match cli.cmd {
            Cmd::Standalone { demo } => standalone::run(cfg, demo).await,
            Cmd::Migrate => migrate(cfg).await,
            Cmd::Config { .. } | Cmd::Metrics | Cmd::Probe { .. } | Cmd::Sleep { .. } => Ok(()),
            role => run_role(cfg, role).await,
        }
    });
    telemetry.shutdown(FLUSH_AT_EXIT);
    done
}

/// Resolves on SIGINT or SIGTERM.
pub(crate) async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn bus(cfg: &Config) -> anyhow::Result<Arc<dyn Bus>> {
    Ok(match cfg.bus.kind {
        BusKind::Kafka => {
            let bus: Arc<dyn Bus> =
                Arc::new(KafkaBus::new(cfg.bus.kafka.clone()).context("bus.kafka")?);
            bus.ensure_topics(&cfg.topics.specs())
                .await
                .context("creating the Kafka topics")?;
            bus
        }
        BusKind::Memory => Arc::new(MemoryBus::default()),
    })
}

async fn store(cfg: &Config) -> anyhow::Result<Arc<dyn Store>> {
    let store: Arc<dyn Store> = match cfg.store.kind {
        StoreKind::Scylla => Arc::new(
            fluxgate_store::scylla::ScyllaStore::connect(cfg.store.scylla.clone())
                .await
                .context("store.scylla")?,
        ),
        StoreKind::Sqlite => {
            standalone::private_dir(&cfg.data_dir)?;
            Arc::new(
                fluxgate_store::sqlite::SqliteStore::open(
                    cfg.data_dir.join("fluxgate.db"),
                    &cfg.store.sqlite,
                )
                .context("store.sqlite")?,
            )
        }
    };
    Ok(store)
}

async fn migrate(cfg: Config) -> anyhow::Result<()> {
    let store = store(&cfg).await?;
    let version = store.migrate().await.context("migrating the store")?;
    println!("store schema at version {version}");
    if cfg.bus.kind == BusKind::Kafka {
        bus(&cfg).await?;
        println!("Kafka topics present (prefix {:?})", cfg.topics.prefix);
    }
    Ok(())
}

/// How often readiness rechecks the bus and the store (each check bounded by it too).
const PROBE_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Makes `health` ready only while `bus` answers a metadata request and `store` a ping,
/// rechecked every [`PROBE_EVERY`] (DESIGN.md "Health").
pub(crate) fn probe_dependencies(
    health: &Arc<fluxgate_observability::Health>,
    bus: &Arc<dyn Bus>,
    store: &Arc<dyn Store>,
) -> anyhow::Result<()> {
    let b = bus.clone();
    health.probe("bus", move || {
        let b = b.clone();
        async move { b.ping().await.map_err(|e| e.to_string()) }
    });
    let s = store.clone();
    health.probe("store", move || {
        let s = s.clone();
        async move { s.ping().await.map_err(|e| e.to_string()) }
    });
    health
        .watch(PROBE_EVERY)
        .context("starting the readiness probes")
}

/// `/metrics`, `/healthz`, `/readyz` of a pipeline role.
struct Observed {
    health: Arc<fluxgate_observability::Health>,
    handle: actix_web::dev::ServerHandle,
}

impl Observed {
    fn serve(
        addr: &str,
        (bus, store): (&Arc<dyn Bus>, &Arc<dyn Store>),
        collectors: Vec<Box<dyn prometheus::core::Collector>>,
    ) -> anyhow::Result<Self> {
        let registry = prometheus::Registry::new();
        for c in collectors {
            registry.register(c)?;
        }
        let health = fluxgate_observability::Health::new();
        probe_dependencies(&health, bus, store)?;
        let (bound, server) = fluxgate_observability::serve(addr, registry, health.clone())
            .with_context(|| format!("metrics_addr {addr}"))?;
        tracing::info!(addr = %bound, "metrics listening");
        let handle = server.handle();
        actix_rt::spawn(server);
        Ok(Observed { health, handle })
    }
}

/// One role until SIGTERM, then its drain.
async fn run_role(cfg: Config, role: Cmd) -> anyhow::Result<()> {
    use role::{Pipeline, Role};
    let (bus, store) = (bus(&cfg).await?, store(&cfg).await?);
    let topics = cfg.topics.clone();
    tracing::info!(role = ?role, "starting");
    let metrics_addr = cfg.metrics_addr.clone();
    let observe = |collectors| Observed::serve(&metrics_addr, (&bus, &store), collectors);
    // The role, its observability server if the binary serves it, and the health the
    // binary declares ready (the front declares its own, once its consumer is assigned).
    let (role, server, health): (Box<dyn Role>, _, _) = match role {
        Cmd::Front => {
            let front = fluxgate_mqtt_front::start(cfg.front, bus.clone(), store.clone(), &topics)?;
            probe_dependencies(&front.health, &bus, &store)?;
            tracing::info!(listening = ?front.listening, "mqtt front started");
            (Box::new(role::Front(front)), None, None)
        }
        Cmd::Api => {
            let registry = prometheus::Registry::new();
            let health = fluxgate_observability::Health::new();
            probe_dependencies(&health, &bus, &store)?;
            let state =
                fluxgate_api::ApiState::new(cfg.api, bus.as_ref(), store, &topics, &registry)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            let running =
                fluxgate_api::start(state, registry, health.clone()).context("api.http_addr")?;
            tracing::info!(addr = %running.addr, "api listening");
            (Box::new(role::Api(running)), None, Some(health))
        }
        Cmd::Validator => {
            let stats = Arc::new(fluxgate_validator::ValidatorStats::default());
            let obs = observe(stats.collectors()?)?;
            let p = fluxgate_validator::prepare(&bus, store, &topics, cfg.validator, stats)?;
            let role = Pipeline::new("validator", |stop| async move {
                p.run(stop).await;
            });
            (role as Box<dyn Role>, Some(obs.handle), Some(obs.health))
        }
        Cmd::Writer => {
            let stats = Arc::new(fluxgate_ts_writer::WriterStats::default());
            let obs = observe(stats.collectors()?)?;
            let p = fluxgate_ts_writer::prepare(
                &bus,
                WriterStore::of(store),
                &topics,
                cfg.writer,
                stats,
            )?;
            let role = Pipeline::new("writer", |stop| async move {
                p.run(stop).await;
            });
            (role as Box<dyn Role>, Some(obs.handle), Some(obs.health))
        }
        Cmd::Dispatcher => {
            let stats = Arc::new(fluxgate_command_dispatch::DispatchStats::default());
            let obs = observe(stats.collectors()?)?;
            let p =
                fluxgate_command_dispatch::prepare(&bus, store, &topics, cfg.dispatcher, stats)?;
            let role = Pipeline::new("dispatcher", |stop| async move {
                p.run(stop).await;
            });
            (role as Box<dyn Role>, Some(obs.handle), Some(obs.health))
        }
        Cmd::Standalone { .. }
        | Cmd::Migrate
        | Cmd::Config { .. }
        | Cmd::Metrics
        | Cmd::Probe { .. }
        | Cmd::Sleep { .. } => {
            return Ok(());
        }
    };
    let served = role::serve(vec![role], health.as_slice(), || {}).await;
    if let Some(handle) = server {
        handle.stop(true).await;
    }
    tracing::info!("stopped");
    served
}
