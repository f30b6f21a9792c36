//! TLS, WebSocket and secure WebSocket listeners: the same MQTT service behind each.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use fluxgate_bus::Topic;
use fluxgate_model::{Body, DeviceRef};

#[ntex::test]
async fn every_listener_serves_mqtt() {
    let (files, client_tls) = self_signed();
    let mut cfg = Rig::config();
    cfg.tls = Some(files);
    cfg.tls_addr = Some("127.0.0.1:0".into());
    cfg.ws_addr = Some("127.0.0.1:0".into());
    cfg.wss_addr = Some("127.0.0.1:0".into());
    let rig = Rig::memory(cfg).await;
    let _events = rig.tap(Topic::DeviceEvents);
    let mut raw = rig.tap(Topic::IngestRaw);
    let l = rig.front.as_ref().unwrap().listening.clone();

    let (tls, ws, wss) = (l.tls.unwrap(), l.ws.unwrap(), l.wss.unwrap());
    let cases = [
        ("tls", Via::Tls(client_tls.clone()), tls),
        ("ws", Via::Ws(format!("http://{ws}/mqtt")), ws),
        // `ws://host:port`, as MQTT.js users and Losant's docs write it.
        ("ws at /", Via::Ws(format!("http://{ws}/")), ws),
        (
            "wss",
            Via::Wss(
                format!("https://localhost:{}/mqtt", wss.port()),
                client_tls.clone(),
            ),
            wss,
        ),
    ];
    for (name, via, addr) in cases {
        let c = v3_via(
            via.clone(),
            addr,
            "dev1",
            Some("key-dev1"),
            Some(SECRET),
            true,
        )
        .await
        .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        let body = format!(r#"{{"data":{{"via":"{name}"}}}}"#);
        c.publish("losant/dev1/state", &body).await.unwrap();
        let env = raw.next_envelope().await;
        assert_eq!(env.device, DeviceRef::Id(dev("dev1")), "{name}");
        let Body::Telemetry { samples, .. } = env.body else {
            panic!("{name}: not telemetry")
        };
        assert_eq!(
            samples[0].values.get("via"),
            Some(&fluxgate_model::Value::String(name.into()))
        );
        // Credentials are checked the same way on every listener.
        assert_eq!(
            v3_via(via, addr, "dev1", Some("key-dev1"), Some("wrong"), true)
                .await
                .err(),
            Some(ntex_mqtt::v3::codec::ConnectAckReason::BadUserNameOrPassword),
            "{name}"
        );
        c.sink.close();
    }
}

/// A WebSocket upgrade at a path that is not in `ws_paths` is answered with an HTTP 404
/// (it used to be a closed socket with no status); a plain GET too.
#[ntex::test]
async fn websocket_upgrades_elsewhere_get_http_404() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut cfg = Rig::config();
    cfg.ws_addr = Some("127.0.0.1:0".into());
    let rig = Rig::memory(cfg).await;
    let ws = rig.front.as_ref().unwrap().listening.ws.unwrap();
    let reply = http_get(ws, "/").await;
    assert!(reply.starts_with("HTTP/1.0 404"), "{reply}");
    for path in ["/elsewhere", "/mqtt/x"] {
        let mut s = tokio::net::TcpStream::connect(ws).await.unwrap();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: mqtt\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 512];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("an answer within 5 s")
            .unwrap();
        let head = String::from_utf8_lossy(&buf[..n]);
        assert!(head.starts_with("HTTP/1.1 404"), "{path}: {head:?}");
    }
}

#[test]
fn a_bad_certificate_path_names_the_field() {
    let mut cfg = Rig::config();
    cfg.tls = Some(fluxgate_mqtt_front::TlsFiles {
        cert_path: "/nonexistent/cert.pem".into(),
        key_path: "/nonexistent/key.pem".into(),
        reload_check_secs: 30,
    });
    cfg.tls_addr = Some("127.0.0.1:0".into());
    let bus: std::sync::Arc<dyn fluxgate_bus::Bus> =
        std::sync::Arc::new(fluxgate_bus::MemoryBus::default());
    let store: std::sync::Arc<dyn fluxgate_store::Store> =
        std::sync::Arc::new(fluxgate_store::sqlite::SqliteStore::in_memory().unwrap());
    let err = fluxgate_mqtt_front::start(cfg, bus, store, &Default::default()).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("mqtt_front.tls.cert_path /nonexistent/cert.pem"),
        "{text}"
    );
}

#[ntex::test]
async fn a_renewed_certificate_is_used_without_a_restart() {
    let (files, old_client) = self_signed();
    let mut cfg = Rig::config();
    cfg.tls = Some(files.clone());
    cfg.tls_addr = Some("127.0.0.1:0".into());
    let rig = Rig::memory(cfg).await;
    let _events = rig.tap(Topic::DeviceEvents);
    let tls = rig.front.as_ref().unwrap().listening.tls.unwrap();
    let connect = |client| {
        v3_via(
            Via::Tls(client),
            tls,
            "dev1",
            Some("key-dev1"),
            Some(SECRET),
            true,
        )
    };
    assert!(connect(old_client.clone()).await.is_ok());
    // Renew the pair on disk (a later modification time than the first write).
    std::thread::sleep(std::time::Duration::from_millis(20));
    let new_client = write_self_signed(&files);
    assert!(
        connect(new_client).await.is_ok(),
        "the renewed certificate is served"
    );
}
