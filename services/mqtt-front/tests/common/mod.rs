//! A real front on 127.0.0.1 with a seeded registry, real MQTT clients (ntex-mqtt's own
//! v3 and v5 clients) and taps on the topics the front writes to.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    dead_code,
    unreachable_pub,
    unused_imports
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fluxgate_bus::{Bus, ConsumerSpec, OutRecord, Topic, TopicsConfig};
use fluxgate_model::{DeviceId, Envelope, TenantId};
use fluxgate_mqtt_front::{FrontConfig, RunningFront};
use fluxgate_store::{
    AccessKey, Application, Device, DeviceKind, DeviceToken, KeyScope, PeripheralPolicy, Store,
    hash_secret,
};
use tokio::sync::mpsc;

pub use fluxgate_testkit::mqtt::*;

pub const APP: &str = "app1";
pub const SECRET: &str = "s3cret-s3cret";

pub fn tenant() -> TenantId {
    TenantId::new(APP).unwrap()
}
pub fn dev(s: &str) -> DeviceId {
    DeviceId::new(s).unwrap()
}

fn device(id: &str, kind: DeviceKind, policy: Option<PeripheralPolicy>, tags: &[&str]) -> Device {
    Device {
        tenant: tenant(),
        id: dev(id),
        name: id.into(),
        kind,
        peripheral_policy: policy,
        tags: tags.iter().map(|t| t.to_string()).collect(),
        profile: None,
        created_ms: 0,
        updated_ms: 0,
    }
}

fn key(key: &str, scope: KeyScope, custom_topics: bool, active: bool) -> AccessKey {
    AccessKey {
        key: key.into(),
        tenant: tenant(),
        secret_hash: hash_secret(SECRET),
        scope,
        custom_topics,
        active,
        created_ms: 0,
    }
}

/// The registry every test starts with:
/// - Losant: device `dev1`, `dev2`, `tagged` (tag `blue`); gateways `gw1`, `gw2`;
///   peripherals `p-any` (any gateway) and `p-gw2` (only `gw2`).
/// - Keys: `key-all` (all devices, custom topics), `key-dev1` (only dev1), `key-blue`
///   (tag blue), `key-off` (deactivated).
/// - ThingsBoard: device `tb1` (token `tok-tb1`), gateway `tbgw` (token `tok-gw`).
pub async fn seed(store: &dyn Store) {
    store.migrate().await.unwrap();
    store
        .put_application(Application {
            id: tenant(),
            name: "App".into(),
            ttl_secs: None,
            created_ms: 0,
        })
        .await
        .unwrap();
    let s = DeviceKind::Standalone;
    for d in [
        device("dev1", s, None, &[]),
        device("dev2", s, None, &[]),
        device("tagged", s, None, &["blue"]),
        device("gw1", DeviceKind::Gateway, None, &[]),
        device("gw2", DeviceKind::Gateway, None, &[]),
        device(
            "p-any",
            DeviceKind::Peripheral,
            Some(PeripheralPolicy::AnyGateway),
            &[],
        ),
        device(
            "p-gw2",
            DeviceKind::Peripheral,
            Some(PeripheralPolicy::SpecificGateway(dev("gw2"))),
            &[],
        ),
        device("tb1", s, None, &[]),
        device("tbgw", DeviceKind::Gateway, None, &[]),
    ] {
        store.put_device(d).await.unwrap();
    }
    for k in [
        key("key-all", KeyScope::AllDevices, true, true),
        key(
            "key-dev1",
            KeyScope::Devices(vec![dev("dev1")]),
            false,
            true,
        ),
        key("key-blue", KeyScope::Tags(vec!["blue".into()]), false, true),
        key("key-off", KeyScope::AllDevices, false, false),
    ] {
        store.put_access_key(k).await.unwrap();
    }
    for (t, d) in [("tok-tb1", "tb1"), ("tok-gw", "tbgw")] {
        store
            .put_device_token(DeviceToken {
                token_hash: hash_secret(t),
                tenant: tenant(),
                device: dev(d),
            })
            .await
            .unwrap();
    }
}

/// Reads a topic in its own consumer group and passes records on, acking and committing
/// each (so that in-process produces resolve).
pub struct Tap {
    rx: mpsc::UnboundedReceiver<(Vec<u8>, Vec<u8>)>,
}

impl Tap {
    pub fn start(bus: &Arc<dyn Bus>, topic: &str, group: &str) -> Tap {
        Tap::with_delay(bus, topic, group, Duration::ZERO)
    }

    /// A tap that waits `delay` before it commits each record: on the in-process bus, a
    /// produce to `topic` is acknowledged that much later, like a slow broker.
    pub fn with_delay(bus: &Arc<dyn Bus>, topic: &str, group: &str, delay: Duration) -> Tap {
        let c = bus.consumer(ConsumerSpec::group(group, &[topic])).unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                while let Ok(r) = c.recv().await {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    c.ack(&r.position);
                    c.commit().await.unwrap();
                    if tx.send((r.key.to_vec(), r.payload.to_vec())).is_err() {
                        return;
                    }
                }
            });
        });
        Tap { rx }
    }

    /// The next record, within 5 s.
    pub async fn next(&mut self) -> (Vec<u8>, Vec<u8>) {
        tokio::time::timeout(Duration::from_secs(5), self.rx.recv())
            .await
            .expect("a record within 5 s")
            .expect("tap running")
    }

    pub async fn next_envelope(&mut self) -> Envelope {
        let (_, v) = self.next().await;
        Envelope::from_bytes(&v).unwrap()
    }

    /// The next record, if one arrives within `ms`.
    pub async fn next_within(&mut self, ms: u64) -> Option<(Vec<u8>, Vec<u8>)> {
        tokio::time::timeout(Duration::from_millis(ms), self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Nothing arrives for `ms`.
    pub async fn quiet(&mut self, ms: u64) -> bool {
        tokio::time::timeout(Duration::from_millis(ms), self.rx.recv())
            .await
            .is_err()
    }
}

pub struct Rig {
    pub bus: Arc<dyn Bus>,
    pub store: Arc<dyn Store>,
    pub topics: TopicsConfig,
    pub front: Option<RunningFront>,
    pub addr: SocketAddr,
}

impl Rig {
    pub fn config() -> FrontConfig {
        FrontConfig {
            instance_id: "front-test".into(),
            tcp_addr: Some("127.0.0.1:0".into()),
            http_addr: Some("127.0.0.1:0".into()),
            workers: 1,
            auth_failure_delay_ms: 10,
            auth_failure_delay_max_ms: 50,
            ..FrontConfig::default()
        }
    }

    /// A front on the in-process bus and a seeded in-memory SQLite.
    pub async fn memory(cfg: FrontConfig) -> Rig {
        let bus: Arc<dyn Bus> = Arc::new(fluxgate_bus::MemoryBus::default());
        Rig::on(bus, TopicsConfig::default(), cfg).await
    }

    pub async fn on(bus: Arc<dyn Bus>, topics: TopicsConfig, cfg: FrontConfig) -> Rig {
        let store: Arc<dyn Store> =
            Arc::new(fluxgate_store::sqlite::SqliteStore::in_memory().unwrap());
        seed(store.as_ref()).await;
        let front = start_ready(cfg, &bus, &store, &topics).await;
        let addr = front.listening.tcp.unwrap();
        Rig {
            bus,
            store,
            topics,
            front: Some(front),
            addr,
        }
    }

    pub fn tap(&self, topic: Topic) -> Tap {
        Tap::start(
            &self.bus,
            &self.topics.name(topic),
            &format!("tap-{}", fluxgate_testkit::unique_name("g")),
        )
    }

    /// A tap whose commits (and so the front's acks) come `delay_ms` after each record.
    pub fn slow_tap(&self, topic: Topic, delay_ms: u64) -> Tap {
        Tap::with_delay(
            &self.bus,
            &self.topics.name(topic),
            &format!("tap-{}", fluxgate_testkit::unique_name("g")),
            Duration::from_millis(delay_ms),
        )
    }

    pub async fn produce(&self, topic: Topic, key: &str, payload: Vec<u8>) {
        self.bus
            .producer()
            .produce(OutRecord::new(
                self.topics.name(topic),
                key.to_owned(),
                payload,
            ))
            .await
            .unwrap();
    }

    pub async fn metrics(&self) -> String {
        let addr = self.front.as_ref().unwrap().listening.http.unwrap();
        http_get(addr, "/metrics").await
    }
}

/// Starts a front and waits until it is ready (its consumer holds every topic it reads).
pub async fn start_ready(
    cfg: FrontConfig,
    bus: &Arc<dyn Bus>,
    store: &Arc<dyn Store>,
    topics: &TopicsConfig,
) -> RunningFront {
    let front = fluxgate_mqtt_front::start(cfg, bus.clone(), store.clone(), topics).unwrap();
    for _ in 0..600 {
        if front.health.is_ready() {
            return front;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("front not ready within 30 s");
}

/// A GET over a real socket; returns status line, headers and body as one text.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    let r = fluxgate_testkit::http::request(addr, "GET", path, None, None)
        .await
        .unwrap();
    format!("HTTP/1.0 {}\r\n\r\n{}", r.status, r.body)
}

/// A self-signed certificate for 127.0.0.1 and localhost, written to PEM files, and a
/// client configuration that trusts it.
pub fn self_signed() -> (fluxgate_mqtt_front::TlsFiles, Arc<rustls::ClientConfig>) {
    let dir = std::env::temp_dir().join(fluxgate_testkit::unique_name("fluxgate-tls"));
    std::fs::create_dir_all(&dir).unwrap();
    let files = fluxgate_mqtt_front::TlsFiles {
        cert_path: dir.join("cert.pem"),
        key_path: dir.join("key.pem"),
        reload_check_secs: 0,
    };
    let client = write_self_signed(&files);
    (files, client)
}

/// Writes a new self-signed pair to `files`; returns a client configuration trusting it.
pub fn write_self_signed(files: &fluxgate_mqtt_front::TlsFiles) -> Arc<rustls::ClientConfig> {
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    std::fs::write(&files.cert_path, ck.cert.pem()).unwrap();
    std::fs::write(&files.key_path, ck.signing_key.serialize_pem()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(client)
}
