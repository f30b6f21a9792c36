//! MQTT over WebSocket: the HTTP upgrade on the configured paths, then the MQTT service.

use super::*;

/// Accepts the WebSocket upgrade (the path was checked; echoing the `mqtt` subprotocol that
/// MQTT clients ask for) and switches the connection to the WebSocket transport.
fn ws_upgrade<F: Filter>() -> impl ServiceFactory<
    (Request, Io<F>, h1::Codec),
    SharedCfg,
    Response = Io<Layer<ws::WsTransport, F>>,
    Error = io::Error,
    InitError = (),
> {
    fn_service(
        move |(req, io, codec): (Request, Io<F>, h1::Codec)| async move {
            let mut res = ws::handshake(req.head()).map_err(|e| io::Error::other(e.to_string()))?;
            let asks_mqtt = req
                .headers()
                .get(http::header::SEC_WEBSOCKET_PROTOCOL)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.split(',').any(|p| p.trim() == "mqtt"));
            if asks_mqtt {
                res.header(http::header::SEC_WEBSOCKET_PROTOCOL, "mqtt");
            }
            io.send(
                h1::Message::Item((res.finish().drop_body(), http::body::BodySize::Empty)),
                &codec,
            )
            .await
            .map_err(|e| io::Error::other(format!("{e:?}")))?;
            Ok(ws::WsTransport::create(io, ws::Codec::new()))
        },
    )
}

/// MQTT over WebSocket (any filter below: plain TCP or TLS).
pub(crate) fn ws_service<F: Filter>(
    front: Arc<Front>,
) -> impl ServiceFactory<Io<F>, SharedCfg, Response = (), Error = io::Error, InitError = ()> {
    let paths = front.cfg.ws_paths.clone();
    let not_here = format!("MQTT over WebSocket is at {}", paths.join(", "));
    let plain_404 = not_here.clone();
    HttpService::new(move |_req: Request| {
        Ready::Ok::<_, io::Error>(Response::NotFound().body(plain_404.clone()))
    })
    .h1_control(fn_factory(move || {
        let front = front.clone();
        let (paths, not_here) = (paths.clone(), not_here.clone());
        async move {
            let cfg = mqtt_config(&front);
            let ws_svc = Pipeline::new(
                chain_factory(ws_upgrade())
                    .and_then(mqtt_service(front).map_err(|e| io::Error::other(format!("{e:?}"))))
                    .create(cfg)
                    .await?,
            );
            Ok::<_, ()>(fn_service(move |msg: h1::Control<_, _>| {
                let ack = match msg {
                    h1::Control::Upgrade(ctl) => {
                        if paths.iter().any(|p| p == ctl.get_ref().path()) {
                            let ws = ws_svc.clone();
                            ctl.handle(move |req, io, codec| ws.call_static((req, io, codec)))
                        } else {
                            // Answered, not dropped: the client sees why.
                            ctl.fail_with(Response::NotFound().body(not_here.clone()))
                        }
                    }
                    _ => msg.ack(),
                };
                async move { Ok::<_, io::Error>(ack) }
            }))
        }
    }))
    .map_err(|e| io::Error::other(format!("{e:?}")))
}

/// MQTT over secure WebSocket.
pub(crate) fn wss_service(
    front: Arc<Front>,
    tls: Arc<rustls::ServerConfig>,
) -> impl ServiceFactory<Io, SharedCfg, Response = (), Error = io::Error, InitError = ()> {
    chain_factory(TlsAcceptor::new(tls)).and_then(ws_service(front))
}
