//! A real front on 127.0.0.1 with a seeded registry, real MQTT clients (ntex-mqtt's own
//! v3 and v5 clients) and taps on the topics the front writes to.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code, unreachable_pub)]

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
use ntex::service::{Pipeline, fn_service};
use ntex::util::{ByteString, Bytes};
use ntex::{ServiceFactory, SharedCfg};
use ntex_mqtt::{v3, v5};
use tokio::sync::mpsc;

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
        let c = bus.consumer(ConsumerSpec::group(group, &[topic])).unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                while let Ok(r) = c.recv().await {
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

/// Starts a front and waits until it is ready (its deliveries consumer has partitions).
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

/// A plain HTTP/1.0 GET; returns the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// What a test client received.
pub type Inbox = mpsc::UnboundedReceiver<(String, Bytes)>;

pub async fn recv(inbox: &mut Inbox) -> (String, Bytes) {
    tokio::time::timeout(Duration::from_secs(5), inbox.recv())
        .await
        .expect("a message within 5 s")
        .expect("client running")
}

/// An MQTT 3.1.1 client.
pub struct V3 {
    pub sink: v3::MqttSink,
    pub inbox: Inbox,
}

pub async fn v3(
    addr: SocketAddr,
    client_id: &str,
    user: Option<&str>,
    pass: Option<&str>,
) -> Result<V3, v3::codec::ConnectAckReason> {
    v3_with(addr, client_id, user, pass, true).await
}

pub async fn v3_with(
    addr: SocketAddr,
    client_id: &str,
    user: Option<&str>,
    pass: Option<&str>,
    clean: bool,
) -> Result<V3, v3::codec::ConnectAckReason> {
    v3_via(Via::Tcp, addr, client_id, user, pass, clean).await
}

/// How a test client reaches the front.
#[derive(Clone)]
pub enum Via {
    Tcp,
    Tls(Arc<rustls::ClientConfig>),
    /// URL of the WebSocket endpoint.
    Ws(String),
    /// URL of the secure WebSocket endpoint and the TLS settings.
    Wss(String, Arc<rustls::ClientConfig>),
}

async fn v3_finish<T>(
    connector: v3::client::MqttConnector<String, T>,
    c: v3::client::Connect<String>,
) -> Result<v3::client::Client, v3::codec::ConnectAckReason>
where
    T: ServiceFactory<
            ntex::connect::Connect<String>,
            SharedCfg,
            Error = ntex::connect::ConnectError,
        >,
    ntex::io::IoBoxed: From<T::Response>,
    T::InitError: std::fmt::Debug,
{
    Pipeline::new(connector.create(SharedCfg::default()).await.unwrap())
        .call(c)
        .await
        .map_err(|e| match e {
            ntex_mqtt::error::ClientError::Ack(a) => a.return_code,
            other => panic!("connect failed: {other:?}"),
        })
}

/// Opens WebSocket connections (asking for the `mqtt` subprotocol) for the MQTT client.
macro_rules! over_ws {
    ($builder:expr) => {{
        let ws = std::rc::Rc::new(
            $builder
                .protocols(["mqtt"])
                .build(SharedCfg::default())
                .await
                .unwrap(),
        );
        move |_: ntex::connect::Connect<String>| {
            let ws = ws.clone();
            async move {
                Ok::<_, ntex::connect::ConnectError>(
                    ws.connect()
                        .await
                        .map_err(|e| {
                            ntex::connect::ConnectError::Io(std::io::Error::other(e.to_string()))
                        })?
                        .into_transport(),
                )
            }
        }
    }};
}

pub async fn v3_via(
    via: Via,
    addr: SocketAddr,
    client_id: &str,
    user: Option<&str>,
    pass: Option<&str>,
    clean: bool,
) -> Result<V3, v3::codec::ConnectAckReason> {
    // TLS checks the certificate against the host name: use the one it was issued for.
    let target = match via {
        Via::Tls(_) => format!("localhost:{}", addr.port()),
        _ => addr.to_string(),
    };
    let mut c = v3::client::Connect::new(target).client_id(client_id.to_owned());
    if clean {
        c = c.clean_session();
    }
    if let Some(u) = user {
        c = c.username(u.to_owned());
    }
    if let Some(p) = pass {
        c = c.password(Bytes::copy_from_slice(p.as_bytes()));
    }
    use ntex::connect::rustls::TlsConnector;
    let m = v3::client::MqttConnector::new();
    let conn = match via {
        Via::Tcp => v3_finish(m, c).await?,
        Via::Tls(cfg) => v3_finish(m.connector(TlsConnector::from(cfg)), c).await?,
        Via::Ws(url) => {
            let f = over_ws!(ntex::ws::WsClient::builder(url.as_str()));
            v3_finish(m.connector(fn_service(f)), c).await?
        }
        Via::Wss(url, cfg) => {
            let f = over_ws!(ntex::ws::WsClient::with_connector(
                url.as_str(),
                TlsConnector::from(cfg)
            ));
            v3_finish(m.connector(fn_service(f)), c).await?
        }
    };
    let sink = conn.sink();
    let (tx, inbox) = mpsc::unbounded_channel();
    ntex::rt::spawn(
        conn.start(fn_service(move |m: v3::client::ProtocolMessage| {
            let tx = tx.clone();
            async move {
                if let v3::client::ProtocolMessage::Publish(p) = &m {
                    let body = p.read_all().await.unwrap_or_default();
                    let _ = tx.send((p.packet().topic.to_string(), body));
                }
                Ok::<_, ()>(m.ack())
            }
        })),
    );
    Ok(V3 { sink, inbox })
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

impl V3 {
    pub async fn publish(&self, topic: &str, payload: &str) -> Result<(), String> {
        self.sink
            .publish(ByteString::from(topic))
            .send_at_least_once(Bytes::copy_from_slice(payload.as_bytes()))
            .await
            .map_err(|e| e.to_string())
    }

    pub async fn subscribe(&self, filter: &str) -> Vec<v3::codec::SubscribeReturnCode> {
        self.sink
            .subscribe()
            .topic_filter(ByteString::from(filter), v3::codec::QoS::AtLeastOnce)
            .send()
            .await
            .unwrap()
    }

    /// Waits up to 5 s for the server to close the connection.
    pub async fn closed(&self) -> bool {
        for _ in 0..250 {
            if !self.sink.is_open() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

/// An MQTT 5 client.
pub struct V5 {
    pub sink: v5::MqttSink,
    pub inbox: Inbox,
}

pub async fn v5(
    addr: SocketAddr,
    client_id: &str,
    user: Option<&str>,
    pass: Option<&str>,
) -> Result<V5, v5::codec::ConnectAckReason> {
    let mut c = v5::client::Connect::new(addr)
        .client_id(client_id.to_owned())
        .clean_start();
    if let Some(u) = user {
        c = c.username(ByteString::from(u));
    }
    if let Some(p) = pass {
        c = c.password(Bytes::copy_from_slice(p.as_bytes()));
    }
    let conn = Pipeline::new(
        v5::client::MqttConnector::new()
            .create(SharedCfg::default())
            .await
            .unwrap(),
    )
    .call(c)
    .await
    .map_err(|e| match e {
        ntex_mqtt::error::ClientError::Ack(a) => a.reason_code,
        other => panic!("connect failed: {other:?}"),
    })?;
    let sink = conn.sink();
    let (tx, inbox) = mpsc::unbounded_channel();
    ntex::rt::spawn(
        conn.start(fn_service(move |m: v5::client::ProtocolMessage| {
            let tx = tx.clone();
            async move {
                Ok::<_, ()>(match m {
                    v5::client::ProtocolMessage::Publish(p) => {
                        let body = p.read_all().await.unwrap_or_default();
                        let _ = tx.send((p.packet().topic.to_string(), body));
                        p.ack(v5::codec::PublishAckReason::Success)
                    }
                    other => other.ack(),
                })
            }
        })),
    );
    Ok(V5 { sink, inbox })
}

impl V5 {
    /// QoS 1 publish; the PUBACK reason code.
    pub async fn publish(
        &self,
        topic: &str,
        payload: &[u8],
    ) -> Result<v5::codec::PublishAckReason, String> {
        self.sink
            .publish(ByteString::from(topic))
            .send_at_least_once(Bytes::copy_from_slice(payload))
            .await
            .map(|a| a.reason_code)
            .map_err(|e| e.to_string())
    }

    pub async fn subscribe(&self, filter: &str) -> Vec<v5::codec::SubscribeAckReason> {
        self.sink
            .subscribe(None)
            .topic_filter(
                ByteString::from(filter),
                v5::codec::SubscriptionOptions {
                    qos: v5::codec::QoS::AtLeastOnce,
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: v5::codec::RetainHandling::AtSubscribe,
                },
            )
            .send()
            .await
            .unwrap()
            .status
    }

    pub async fn closed(&self) -> bool {
        for _ in 0..250 {
            if !self.sink.is_open() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}
