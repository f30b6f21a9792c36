//! An OTLP/gRPC trace receiver for black-box tests: the real binary exports to it over a
//! socket, and the test reads every span with the `service.name` of the process that sent
//! it (the in-process fake collector of the OpenTelemetry crates drops the resource).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};

/// One received span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// `service.name` of its resource (`fluxgate-front`, …).
    pub service: String,
    /// Its name (`client.publish`, …).
    pub name: String,
    /// `SPAN_KIND_PRODUCER`, `SPAN_KIND_CONSUMER`, …
    pub kind: String,
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits, empty for a root span.
    pub parent_span_id: String,
    /// Its links, as `(trace_id, span_id)`.
    pub links: Vec<(String, String)>,
    /// Its attributes, values as text.
    pub attributes: BTreeMap<String, String>,
}

impl Span {
    /// The value of attribute `key`, if set.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// A running receiver; it stops when dropped.
#[derive(Debug)]
pub struct Collector {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Span>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

struct Receiver(Arc<Mutex<Vec<Span>>>);

fn text(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(&kv.value)))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The spans of one export request, each with its resource's `service.name`.
fn spans_of(request: ExportTraceServiceRequest) -> Vec<Span> {
    let mut got = Vec::new();
    for rs in request.resource_spans {
        let service = rs
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
            .map(|kv| text(&kv.value))
            .unwrap_or_default();
        for s in rs.scope_spans.into_iter().flat_map(|ss| ss.spans) {
            got.push(Span {
                service: service.clone(),
                kind: s.kind().as_str_name().to_owned(),
                name: s.name,
                trace_id: hex(&s.trace_id),
                span_id: hex(&s.span_id),
                parent_span_id: hex(&s.parent_span_id),
                links: s
                    .links
                    .iter()
                    .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                    .collect(),
                attributes: attributes(&s.attributes),
            });
        }
    }
    got
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let got = spans_of(request.into_inner());
        self.0.lock().unwrap_or_else(|e| e.into_inner()).extend(got);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// One OTLP/HTTP connection (`POST /v1/traces`, protobuf bodies): its spans, each request
/// answered 200 (400 for anything else).
fn serve_http(mut stream: std::net::TcpStream, spans: &Mutex<Vec<Span>>) -> std::io::Result<()> {
    use prost::Message;
    use std::io::{BufRead, BufReader, Read, Write};
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line)?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        let (status, reply) = match (
            request_line.starts_with("POST /v1/traces "),
            ExportTraceServiceRequest::decode(&body[..]),
        ) {
            (true, Ok(req)) => {
                let got = spans_of(req);
                spans.lock().unwrap_or_else(|e| e.into_inner()).extend(got);
                (
                    "200 OK",
                    ExportTraceServiceResponse::default().encode_to_vec(),
                )
            }
            _ => ("400 Bad Request", Vec::new()),
        };
        write!(
            stream,
            "HTTP/1.1 {status}\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}\r\n\r\n",
            reply.len()
        )?;
        stream.write_all(&reply)?;
    }
}

impl Collector {
    /// Listens on 127.0.0.1 (a port of its own), on a thread of its own, so it serves
    /// whatever runtime the test runs on.
    pub fn start() -> std::io::Result<Collector> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let spans = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let service = TraceServiceServer::new(Receiver(spans.clone()));
        std::thread::Builder::new()
            .name("otlp-receiver".into())
            .spawn(move || {
                rt.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                    let _ = tonic::transport::Server::builder()
                        .add_service(service)
                        .serve_with_incoming_shutdown(incoming, async {
                            let _ = stopped.await;
                        })
                        .await;
                })
            })?;
        Ok(Collector {
            addr,
            spans,
            stop: Some(stop),
        })
    }

    /// The same receiver for OTLP over HTTP with protobuf bodies (`POST /v1/traces`), on
    /// threads of its own. Once dropped it takes no new connection (its accept thread
    /// ends at the next one it sees).
    pub fn start_http() -> std::io::Result<Collector> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let spans = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let kept = spans.clone();
        std::thread::Builder::new()
            .name("otlp-http-receiver".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if !matches!(
                        stopped.try_recv(),
                        Err(tokio::sync::oneshot::error::TryRecvError::Empty)
                    ) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let kept = kept.clone();
                    let _ = std::thread::Builder::new()
                        .name("otlp-http-conn".into())
                        .spawn(move || serve_http(stream, &kept));
                }
            })?;
        Ok(Collector {
            addr,
            spans,
            stop: Some(stop),
        })
    }

    /// `http://127.0.0.1:<port>`, for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits (at most `within`) until `done` holds for the spans received, and returns
    /// them; `Err` with what came when it never does.
    pub async fn wait_until(
        &self,
        within: Duration,
        done: impl Fn(&[Span]) -> bool,
    ) -> Result<Vec<Span>, Vec<Span>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let spans = self.spans();
            if done(&spans) {
                return Ok(spans);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(spans);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}
