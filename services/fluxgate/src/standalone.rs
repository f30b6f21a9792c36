//! `fluxgate standalone`: every role in one process on the in-process bus and SQLite.
//!
//! The in-process bus resolves a produce only when every consumer group subscribed to the
//! topic has committed it, and the pipeline commits only after SQLite has the data
//! (`synchronous = FULL`), so a QoS 1 PUBACK here means the sample is on disk. The
//! pipeline's consumers are subscribed ([`role`]'s first phase) before the front and the
//! API start: the bus keeps a record only for the groups subscribed when it is produced.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::Config;
use crate::role::{self, Pipeline, Role};
use anyhow::Context;
pub(crate) use fluxgate_bus::now_ms;
use fluxgate_bus::{Bus, MemoryBus};
use fluxgate_model::{DeviceId, TenantId};
use fluxgate_store::sqlite::SqliteStore;
use fluxgate_store::{
    AccessKey, ApiScope, ApiToken, Application, AttributeDef, AttributeType, Device, DeviceKind,
    DeviceToken, KeyScope, PeripheralPolicy, Store, hash_secret,
};
use fluxgate_ts_writer::WriterStore;

/// A random secret of `bytes` random bytes (the API's generator), letters and digits only
/// so that it pastes into shell lines unquoted.
fn random(bytes: usize) -> anyhow::Result<String> {
    let s = fluxgate_api::auth::random_token(bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(s.replace(['-', '_'], "x"))
}

/// Where a secret comes from ([`secret`]).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kept {
    /// The configuration sets it.
    Configured,
    /// Made now, kept in this file.
    Created(PathBuf),
    /// Made at an earlier start, kept in this file.
    Found(PathBuf),
}

/// `configured`, or the secret kept in `data_dir/name` (made on first start, in a file
/// created readable by its owner only: no moment when another user could read it).
fn secret(dir: &Path, name: &str, configured: &str) -> anyhow::Result<(String, Kept)> {
    if !configured.is_empty() {
        return Ok((configured.to_owned(), Kept::Configured));
    }
    let path = dir.join(name);
    if let Ok(s) = std::fs::read_to_string(&path) {
        let s = s.trim();
        if !s.is_empty() {
            return Ok((s.to_owned(), Kept::Found(path)));
        }
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    }
    let s = random(24)?;
    let mut file = std::fs::OpenOptions::new();
    file.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut file, 0o600);
    std::io::Write::write_all(
        &mut file
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?,
        s.as_bytes(),
    )
    .with_context(|| format!("writing {}", path.display()))?;
    Ok((s, Kept::Created(path)))
}

/// Creates the data folder readable by its owner only (0700), or makes an existing one so.
pub(crate) fn private_dir(dir: &Path) -> anyhow::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        b.mode(0o700);
        b.create(dir)
            .with_context(|| format!("data_dir {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("data_dir {}: making it private", dir.display()))?;
    }
    #[cfg(not(unix))]
    b.create(dir)
        .with_context(|| format!("data_dir {}", dir.display()))?;
    Ok(())
}

/// Runs standalone until SIGINT/SIGTERM.
pub(crate) async fn run(mut cfg: Config, demo: bool) -> anyhow::Result<()> {
    let dir = cfg.data_dir.clone();
    private_dir(&dir)?;
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(dir.join("fluxgate.db"), &cfg.store.sqlite).context("store.sqlite")?,
    );
    store.migrate().await.context("migrating the database")?;
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::default());
    let bootstrap;
    (cfg.api.bootstrap_token, bootstrap) =
        secret(&dir, "bootstrap-token", &cfg.api.bootstrap_token)?;
    (cfg.api.device_token_secret, _) =
        secret(&dir, "device-token-secret", &cfg.api.device_token_secret)?;
    let topics = cfg.topics.clone();

    // The pipeline first, each prepared (subscribed) before anything can produce: the
    // bus keeps a record only for the groups subscribed when it is produced. Listed so
    // that stopping them last to first stops each role after every role that produces
    // to it: the API and the front, then the validator, then the writer (which stores
    // what the validator passes) and the dispatcher (which follows both's events).
    // Their counters join the API's /metrics, as the front's do.
    let registry = prometheus::Registry::new();
    let mut roles: Vec<Box<dyn Role>> = Vec::new();
    {
        let stats = Arc::new(fluxgate_command_dispatch::DispatchStats::default());
        for c in stats.collectors()? {
            registry.register(c)?;
        }
        let p = fluxgate_command_dispatch::prepare(
            &bus,
            store.clone(),
            &topics,
            cfg.dispatcher.clone(),
            stats,
        )?;
        roles.push(Pipeline::new("dispatcher", |stop| async move {
            p.run(stop).await;
        }));
        let stats = Arc::new(fluxgate_ts_writer::WriterStats::default());
        for c in stats.collectors()? {
            registry.register(c)?;
        }
        let p = fluxgate_ts_writer::prepare(
            &bus,
            WriterStore::of(store.clone()),
            &topics,
            cfg.writer.clone(),
            stats,
        )?;
        roles.push(Pipeline::new("writer", |stop| async move {
            p.run(stop).await;
        }));
        let stats = Arc::new(fluxgate_validator::ValidatorStats::default());
        for c in stats.collectors()? {
            registry.register(c)?;
        }
        let p = fluxgate_validator::prepare(
            &bus,
            store.clone(),
            &topics,
            cfg.validator.clone(),
            stats,
        )?;
        roles.push(Pipeline::new("validator", |stop| async move {
            p.run(stop).await;
        }));
    }

    // One observability server for the process, the API's: the front's metrics join its
    // registry, and its readiness (deliveries consumer assigned, not draining) is part of
    // the process's.
    let front = fluxgate_mqtt_front::start_in(
        cfg.front.clone(),
        bus.clone(),
        store.clone(),
        &topics,
        &registry,
    )
    .context("starting the MQTT front")?;
    let health = fluxgate_observability::Health::new();
    health.include("front", front.health.clone());
    crate::probe_dependencies(&health, &bus, &store)?;
    let state = fluxgate_api::ApiState::new(
        cfg.api.clone(),
        bus.as_ref(),
        store.clone(),
        &topics,
        &registry,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let api = fluxgate_api::start(state, registry, health.clone()).context("api.http_addr")?;
    let api_addr = api.addr;

    let l = &front.listening;
    println!("fluxgate standalone is running");
    println!("  data:     {}", dir.display());
    if let Some(a) = l.tcp {
        println!("  mqtt:     tcp://{a}");
    }
    if let Some(a) = l.tls {
        println!("  mqtts:    tls://{a}");
    }
    if let Some(a) = l.ws {
        println!("  mqtt-ws:  ws://{a}/mqtt");
    }
    if let Some(a) = l.wss {
        println!("  mqtt-wss: wss://{a}/mqtt");
    }
    println!(
        "  api:      http://{api_addr}  (OpenAPI: /openapi.json; every role's /metrics, /readyz)"
    );
    // Shown once, when it is made; afterwards, where it is kept.
    match &bootstrap {
        Kept::Created(path) => {
            println!("  bootstrap admin token: {}", cfg.api.bootstrap_token);
            println!(
                "    (shown this once; kept in {}, readable by you only)",
                path.display()
            );
        }
        Kept::Found(path) => println!("  bootstrap admin token file: {}", path.display()),
        Kept::Configured => println!("  bootstrap admin token: set by api.bootstrap_token"),
    }
    if demo {
        let mqtt = l
            .tcp
            .map_or_else(|| "127.0.0.1:1883".into(), |a| a.to_string());
        demo_data(store.as_ref(), &mqtt, &api_addr.to_string()).await?;
    }
    roles.push(Box::new(role::Front(front)));
    roles.push(Box::new(role::Api(api)));
    role::serve(roles, &[health], || println!("ready")).await?;
    println!("stopped");
    Ok(())
}

fn dev(id: &str) -> anyhow::Result<DeviceId> {
    DeviceId::new(id).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Creates (or completes) the demo application and prints commands to try.
async fn demo_data(store: &dyn Store, mqtt: &str, api: &str) -> anyhow::Result<()> {
    let app = TenantId::new("demo").map_err(|e| anyhow::anyhow!("{e}"))?;
    let now = crate::standalone::now_ms();
    if store.application(app.clone()).await?.is_none() {
        store
            .put_application(Application {
                id: app.clone(),
                name: "Demo".into(),
                ttl_secs: None,
                created_ms: now,
            })
            .await?;
    }
    let device = |id: &str, kind, policy| -> anyhow::Result<Device> {
        Ok(Device {
            tenant: app.clone(),
            id: dev(id)?,
            name: id.into(),
            kind,
            peripheral_policy: policy,
            tags: Vec::new(),
            profile: None,
            created_ms: now,
            updated_ms: now,
        })
    };
    for d in [
        device("sensor-1", DeviceKind::Standalone, None)?,
        device("gateway-1", DeviceKind::Gateway, None)?,
        device(
            "peripheral-1",
            DeviceKind::Peripheral,
            Some(PeripheralPolicy::AnyGateway),
        )?,
        device("tb-gateway", DeviceKind::Gateway, None)?,
    ] {
        if store.device(app.clone(), d.id.clone()).await?.is_none() {
            store.put_device(d).await?;
        }
    }
    let defs = |names: &[&str]| -> Vec<AttributeDef> {
        names
            .iter()
            .map(|n| AttributeDef {
                name: (*n).into(),
                kind: AttributeType::Number,
            })
            .collect()
    };
    store
        .put_attribute_defs(
            app.clone(),
            dev("sensor-1")?,
            defs(&["temperature", "humidity"]),
        )
        .await?;
    store
        .put_attribute_defs(app.clone(), dev("peripheral-1")?, defs(&["level"]))
        .await?;
    // Fresh credentials on every start: secrets are never stored, so they cannot be shown
    // again; earlier ones keep working.
    let (key, key_secret) = (format!("demo-{}", random(6)?), random(24)?);
    store
        .put_access_key(AccessKey {
            key: key.clone(),
            tenant: app.clone(),
            secret_hash: hash_secret(&key_secret),
            scope: KeyScope::AllDevices,
            custom_topics: true,
            active: true,
            created_ms: now,
        })
        .await?;
    let tb_token = random(15)?;
    store
        .put_device_token(DeviceToken {
            token_hash: hash_secret(&tb_token),
            tenant: app.clone(),
            device: dev("tb-gateway")?,
        })
        .await?;
    let api_token = format!("fgt_{}", random(32)?);
    store
        .put_api_token(ApiToken {
            token_hash: hash_secret(&api_token),
            tenant: app.clone(),
            scope: ApiScope::Admin,
            name: "demo".into(),
            created_ms: now,
        })
        .await?;
    let (host, port) = mqtt.rsplit_once(':').unwrap_or((mqtt, "1883"));
    let host = if host == "0.0.0.0" { "127.0.0.1" } else { host };
    let api = api.replace("0.0.0.0", "127.0.0.1");
    println!();
    println!(
        "demo application \"demo\": Losant devices sensor-1, gateway-1, peripheral-1 (any gateway);"
    );
    println!("ThingsBoard gateway tb-gateway. Credentials (shown once):");
    println!("  DEMO_KEY={key}");
    println!("  DEMO_SECRET={key_secret}");
    println!("  DEMO_TB_TOKEN={tb_token}");
    println!("  DEMO_API_TOKEN={api_token}");
    println!();
    println!("Try:");
    println!(
        "  mosquitto_pub -h {host} -p {port} -q 1 -i sensor-1 -u {key} -P {key_secret} -t losant/sensor-1/state -m '{{\"data\":{{\"temperature\":21.5,\"humidity\":40}}}}'"
    );
    println!(
        "  curl -s -H 'Authorization: Bearer {api_token}' http://{api}/applications/demo/devices/sensor-1/state"
    );
    println!(
        "  mosquitto_sub -h {host} -p {port} -q 1 -i sensor-1 -u {key} -P {key_secret} -t losant/sensor-1/command -C 1 -v &"
    );
    println!(
        "  curl -s -X POST -H 'Authorization: Bearer {api_token}' -H 'Content-Type: application/json' -d '{{\"name\":\"blink\",\"payload\":{{\"times\":3}}}}' http://{api}/applications/demo/devices/sensor-1/command"
    );
    println!(
        "  mosquitto_pub -h {host} -p {port} -q 1 -i gateway-1 -u {key} -P {key_secret} -t losant/peripheral-1/state -m '{{\"data\":{{\"level\":7}}}}'"
    );
    println!(
        "  mosquitto_pub -h {host} -p {port} -q 1 -u {tb_token} -t v1/gateway/telemetry -m '{{\"Sensor A\":[{{\"values\":{{\"temp\":20}}}}]}}'"
    );
    println!();
    Ok(())
}
