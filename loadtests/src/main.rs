//! `fluxgate-loadtest`: drives MQTT load at the fluxgate front or any broker.
//!
//! - `front`: runs a front on Kafka (or the in-process bus) with a registry of N Losant
//!   devices sharing one access key, and prints its PID (to read its memory from /proc).
//! - `publish`: C concurrent MQTT 3.1.1 clients each publish QoS 1 (or 0) messages with a
//!   window of W unacknowledged; prints messages/s and PUBACK latency percentiles.
//! - `idle`: opens C connections and holds them (memory per idle connection).
//!
//! `loadtests/run.sh` runs the comparison in `loadtests/RESULTS.md`.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use fluxgate_bus::{Bus, KafkaBus, KafkaConfig, MemoryBus, TopicsConfig};
use fluxgate_model::{DeviceId, TenantId};
use fluxgate_mqtt_front::{FrontConfig, Rate};
use fluxgate_store::{AccessKey, Application, Device, DeviceKind, KeyScope, Store, hash_secret};
use ntex::service::{Pipeline, ServiceFactory};
use ntex::util::{ByteString, Bytes};
use ntex::{SharedCfg, time::Seconds};
use ntex_mqtt::v3;

const KEY: &str = "load-key";
const SECRET: &str = "load-secret";
const APP: &str = "load";

#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum BusKind {
    Kafka,
    Memory,
}

/// Traces of the front under load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Telemetry {
    /// No OpenTelemetry layer (the default of a role).
    Off,
    /// Exported to `--otlp-endpoint`.
    On,
    /// Exported to a collector that is away.
    Down,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a front with N devices (`d0`..`dN-1`, key `load-key` / `load-secret`).
    Front {
        /// MQTT listener.
        #[arg(long, default_value = "127.0.0.1:18831")]
        addr: String,
        /// Devices to create.
        #[arg(long, default_value_t = 12_000)]
        devices: u32,
        /// The bus.
        #[arg(long, value_enum, default_value = "kafka")]
        bus: BusKind,
        /// Kafka bootstrap servers.
        #[arg(long, default_value = "127.0.0.1:19092")]
        brokers: String,
        /// Worker threads.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Traces: `off`, or exported to `--otlp-endpoint` (`on`); `down` exports to a
        /// port nobody listens on (a collector that is away).
        #[arg(long, value_enum, default_value = "off")]
        telemetry: Telemetry,
        /// The OTLP/gRPC collector for `--telemetry on`.
        #[arg(long, default_value = "http://127.0.0.1:4317")]
        otlp_endpoint: String,
    },
    /// Publish load.
    Publish {
        /// Broker address.
        #[arg(long, default_value = "127.0.0.1:18831")]
        addr: SocketAddr,
        /// Concurrent connections.
        #[arg(long, default_value_t = 1000)]
        connections: u32,
        /// Messages per connection.
        #[arg(long, default_value_t = 100)]
        messages: u32,
        /// Unacknowledged messages per connection.
        #[arg(long, default_value_t = 1)]
        window: u32,
        /// QoS (0 or 1).
        #[arg(long, default_value_t = 1)]
        qos: u8,
        /// Send credentials (`load-key` / `load-secret`); off for an open broker.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        auth: bool,
    },
    /// Open connections and hold them.
    Idle {
        /// Broker address.
        #[arg(long, default_value = "127.0.0.1:18831")]
        addr: SocketAddr,
        /// Connections.
        #[arg(long, default_value_t = 10_000)]
        connections: u32,
        /// How long to hold them, in seconds.
        #[arg(long, default_value_t = 20)]
        hold_secs: u64,
        /// Send credentials.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        auth: bool,
    },
}

fn main() -> Result<(), String> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Front {
            addr,
            devices,
            bus,
            brokers,
            workers,
            telemetry,
            otlp_endpoint,
        } => {
            let t = init_telemetry(telemetry, otlp_endpoint)?;
            let r = run_front(addr, devices, bus, brokers, workers);
            t.shutdown(std::time::Duration::from_secs(2));
            let (full, failed) = fluxgate_observability::telemetry::dropped();
            println!(
                "spans exported {}, dropped: queue_full {full}, export_failed {failed}",
                fluxgate_observability::telemetry::exported()
            );
            r
        }
        Cmd::Publish {
            addr,
            connections,
            messages,
            window,
            qos,
            auth,
        } => ntex::rt::System::build()
            .name("load")
            .build(ntex::rt::DefaultRuntime)
            .block_on(publish(addr, connections, messages, window, qos, auth)),
        Cmd::Idle {
            addr,
            connections,
            hold_secs,
            auth,
        } => ntex::rt::System::build()
            .name("idle")
            .build(ntex::rt::DefaultRuntime)
            .block_on(idle(addr, connections, hold_secs, auth)),
    }
}

/// Logs at `warn`, and traces as `--telemetry` says.
fn init_telemetry(
    mode: Telemetry,
    endpoint: String,
) -> Result<fluxgate_observability::telemetry::Telemetry, String> {
    use fluxgate_observability::telemetry::{LogSettings, Service, TelemetryConfig};
    let endpoint = match mode {
        Telemetry::Off | Telemetry::On => endpoint,
        Telemetry::Down => {
            // Bound, then released: nobody listens there.
            let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            let port = l.local_addr().map_err(|e| e.to_string())?.port();
            format!("http://127.0.0.1:{port}")
        }
    };
    let cfg = TelemetryConfig {
        enabled: mode != Telemetry::Off,
        endpoint,
        ..TelemetryConfig::default()
    };
    fluxgate_observability::telemetry::init(
        &Service {
            role: "loadtest-front",
            instance: "load-front",
        },
        &LogSettings {
            filter: "warn",
            json: false,
        },
        &cfg,
    )
}

fn run_front(
    addr: String,
    devices: u32,
    bus: BusKind,
    brokers: String,
    workers: usize,
) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let topics = TopicsConfig {
            prefix: format!("load{}.", std::process::id()),
            partitions: 4,
            replication_factor: 1,
            ..TopicsConfig::default()
        };
        let bus: Arc<dyn Bus> = match bus {
            BusKind::Memory => Arc::new(MemoryBus::default()),
            BusKind::Kafka => Arc::new(
                KafkaBus::new(KafkaConfig {
                    brokers,
                    ..KafkaConfig::default()
                })
                .map_err(|e| e.to_string())?,
            ),
        };
        bus.ensure_topics(&topics.specs())
            .await
            .map_err(|e| e.to_string())?;
        let store: Arc<dyn Store> =
            Arc::new(fluxgate_store::sqlite::SqliteStore::in_memory().map_err(|e| e.to_string())?);
        seed(store.as_ref(), devices).await?;
        // Limits stay on (their per-connection state is part of the memory measured), set
        // high enough not to trigger.
        let off = Rate {
            messages: 1_000_000,
            window_secs: 1,
        };
        let mut cfg = FrontConfig {
            instance_id: "load-front".into(),
            tcp_addr: Some(addr),
            http_addr: None,
            workers,
            ..FrontConfig::default()
        };
        cfg.rate_limits.per_topic = off;
        cfg.rate_limits.per_connection = off;
        cfg.rate_limits.new_connections_per_application = off;
        let front =
            fluxgate_mqtt_front::start(cfg, bus, store, &topics).map_err(|e| e.to_string())?;
        println!(
            "front pid {} listening on {:?}",
            std::process::id(),
            front.listening.tcp
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| e.to_string())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        front.shutdown().await;
        Ok(())
    })
}

async fn seed(store: &dyn Store, devices: u32) -> Result<(), String> {
    let err = |e: fluxgate_store::StoreError| e.to_string();
    let tenant = TenantId::new(APP).map_err(|e| e.to_string())?;
    store.migrate().await.map_err(err)?;
    store
        .put_application(Application {
            id: tenant.clone(),
            name: "load".into(),
            ttl_secs: None,
            created_ms: 0,
        })
        .await
        .map_err(err)?;
    store
        .put_access_key(AccessKey {
            key: KEY.into(),
            tenant: tenant.clone(),
            secret_hash: hash_secret(SECRET),
            scope: KeyScope::AllDevices,
            custom_topics: false,
            active: true,
            created_ms: 0,
        })
        .await
        .map_err(err)?;
    for i in 0..devices {
        let id = DeviceId::new(format!("d{i}")).map_err(|e| e.to_string())?;
        store
            .put_device(Device {
                tenant: tenant.clone(),
                id,
                name: format!("d{i}"),
                kind: DeviceKind::Standalone,
                peripheral_policy: None,
                tags: Vec::new(),
                profile: None,
                created_ms: 0,
                updated_ms: 0,
            })
            .await
            .map_err(err)?;
    }
    Ok(())
}

async fn connect(addr: SocketAddr, i: u32, auth: bool) -> Result<v3::client::Client, String> {
    let mut c = v3::client::Connect::new(addr)
        .client_id(format!("d{i}"))
        .clean_session()
        .keep_alive(Seconds(120));
    if auth {
        c = c
            .username(KEY.to_owned())
            .password(Bytes::from_static(SECRET.as_bytes()));
    }
    let connector = v3::client::MqttConnector::new()
        .create(SharedCfg::default())
        .await
        .map_err(|_| "connector".to_owned())?;
    Pipeline::new(connector)
        .call(c)
        .await
        .map_err(|e| format!("connect d{i}: {e:?}"))
}

/// Connects `n` clients, at most 200 handshakes at a time.
async fn connect_all(addr: SocketAddr, n: u32, auth: bool) -> Result<Vec<v3::MqttSink>, String> {
    let mut sinks = Vec::with_capacity(n as usize);
    let mut i = 0;
    while i < n {
        let batch: Vec<_> = (i..(i + 200).min(n))
            .map(|k| ntex::rt::spawn(connect(addr, k, auth)))
            .collect();
        for h in batch {
            let client = h.await.map_err(|_| "connect task failed".to_owned())??;
            sinks.push(client.sink());
            ntex::rt::spawn(client.start_default());
        }
        i = (i + 200).min(n);
    }
    Ok(sinks)
}

async fn publish(
    addr: SocketAddr,
    connections: u32,
    messages: u32,
    window: u32,
    qos: u8,
    auth: bool,
) -> Result<(), String> {
    let sinks = connect_all(addr, connections, auth).await?;
    println!("connected {}", sinks.len());
    let lat = Rc::new(std::cell::RefCell::new(Vec::with_capacity(
        (connections * messages) as usize,
    )));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, sink) in sinks.iter().enumerate() {
        for w in 0..window {
            let sink = sink.clone();
            let lat = lat.clone();
            let topic = ByteString::from(format!("losant/d{i}/state"));
            let n = messages / window + u32::from(w < messages % window);
            tasks.push(ntex::rt::spawn(async move {
                for k in 0..n {
                    let body = format!(r#"{{"data":{{"temp":{k},"w":{w}}}}}"#);
                    let t = Instant::now();
                    let p = sink.publish(topic.clone());
                    let r = if qos == 0 {
                        p.send_at_most_once(Bytes::from(body))
                    } else {
                        p.send_at_least_once(Bytes::from(body)).await
                    };
                    if r.is_err() {
                        return false;
                    }
                    lat.borrow_mut().push(t.elapsed());
                }
                true
            }));
        }
    }
    let mut failed = 0;
    for t in tasks {
        if !t.await.unwrap_or(false) {
            failed += 1;
        }
    }
    let elapsed = started.elapsed();
    let mut l = std::mem::take(&mut *lat.borrow_mut());
    l.sort();
    let pct = |p: f64| {
        l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let n = l.len();
    println!(
        "sent {n} qos{qos} messages over {connections} connections (window {window}) in {:.2} s: {:.0} msg/s; ack latency p50 {:.1} ms, p99 {:.1} ms; failed streams {failed}",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
    );
    for s in &sinks {
        s.close();
    }
    ntex::time::sleep(Duration::from_millis(200)).await;
    Ok(())
}

async fn idle(
    addr: SocketAddr,
    connections: u32,
    hold_secs: u64,
    auth: bool,
) -> Result<(), String> {
    let started = Instant::now();
    let sinks = connect_all(addr, connections, auth).await?;
    println!(
        "holding {} idle connections (connected in {:.1} s)",
        sinks.len(),
        started.elapsed().as_secs_f64()
    );
    ntex::time::sleep(Duration::from_secs(hold_secs)).await;
    for s in &sinks {
        s.close();
    }
    Ok(())
}
