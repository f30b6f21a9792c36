//! Real MQTT clients for tests (ntex-mqtt's own v3 and v5 clients) over TCP, TLS,
//! WebSocket and secure WebSocket, with an inbox of what the server sends them.
//!
//! Behind the `mqtt` feature: only crates that test MQTT pay for ntex.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    missing_debug_implementations
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ntex::SharedCfg;
use ntex::service::{Pipeline, ServiceFactory, fn_service};
use ntex::util::{ByteString, Bytes};
use ntex_mqtt::{v3, v5};
use tokio::sync::mpsc;

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
    /// The user properties of each message received, in the order of `inbox`.
    pub props: mpsc::UnboundedReceiver<Vec<(String, String)>>,
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
    let (props_tx, props) = mpsc::unbounded_channel();
    ntex::rt::spawn(
        conn.start(fn_service(move |m: v5::client::ProtocolMessage| {
            let (tx, props_tx) = (tx.clone(), props_tx.clone());
            async move {
                Ok::<_, ()>(match m {
                    v5::client::ProtocolMessage::Publish(p) => {
                        let user = p
                            .packet()
                            .properties
                            .user_properties
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect();
                        let _ = props_tx.send(user);
                        let body = p.read_all().await.unwrap_or_default();
                        let _ = tx.send((p.packet().topic.to_string(), body));
                        p.ack(v5::codec::PublishAckReason::Success)
                    }
                    other => other.ack(),
                })
            }
        })),
    );
    Ok(V5 { sink, inbox, props })
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

    /// QoS 1 publish with user properties (a `traceparent`); the PUBACK reason code.
    pub async fn publish_with(
        &self,
        topic: &str,
        payload: &[u8],
        user: &[(&str, &str)],
    ) -> Result<v5::codec::PublishAckReason, String> {
        let user: Vec<(ByteString, ByteString)> = user
            .iter()
            .map(|(k, v)| (ByteString::from(*k), ByteString::from(*v)))
            .collect();
        self.sink
            .publish(ByteString::from(topic))
            .properties(|p| p.user_properties = user)
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
