//! What every request passes before its handler runs, in this order:
//!
//! 1. a deadline on its body ([`ApiConfig::request_timeout_ms`](crate::ApiConfig)): a body
//!    still incomplete by then ends the request with 408 and closes the connection, so a
//!    half-sent body cannot hold a connection (actix-web bounds only the head). Whatever
//!    the answer, a body not yet received whole when it is sent is not waited for: the
//!    connection is closed (actix-web would otherwise read a chunked body to its end);
//! 2. the method: a path the API has, asked with a method it does not have, is answered
//!    405 with `Allow` (from [`openapi::OPERATIONS`], which the tests keep equal to the
//!    routes);
//! 3. authentication, for every operation that needs a token: 401 comes before any
//!    complaint about the path, the query or the body. The [`Caller`] is left in the
//!    request's extensions for [`ApiState::caller`](crate::ApiState).
//!
//! On the way out, an error answer that is not JSON yet (actix-web's own, such as 413 from
//! a body extractor) is made the API's JSON error, as `/openapi.json` documents.

use std::cell::{Cell, RefCell};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, ResponseError, web};

use crate::ApiState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::openapi;

/// The gate; see the module doc.
pub(crate) async fn gate(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(state) = req.app_data::<web::Data<ApiState>>().cloned() else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    let expired = Rc::new(Cell::new(false));
    let timeout = Duration::from_millis(state.cfg.request_timeout_ms);
    let body = Rc::new(RefCell::new(req.take_payload()));
    req.set_payload(Payload::Stream {
        payload: Box::pin(Deadline {
            body: body.clone(),
            timer: Box::pin(tokio::time::sleep(timeout)),
            expired: expired.clone(),
            done: false,
        }),
    });
    let keep = Unread(body);

    let ops = openapi::operations_at(req.path());
    if !ops.is_empty() {
        let method = req.method().as_str().to_ascii_lowercase();
        match ops.iter().find(|op| op.method == method) {
            None => {
                let allow = openapi::allow(&ops);
                let mut res = ApiError::refused(
                    405,
                    "method_not_allowed",
                    format!("{} is not allowed here; use {allow}", req.method()),
                )
                .error_response();
                if let Ok(v) = HeaderValue::from_str(&allow) {
                    res.headers_mut().insert(header::ALLOW, v);
                }
                return Ok(keep.on(req.into_response(res)));
            }
            Some(op) if !op.scope.is_empty() => match state.authenticate(req.headers()).await {
                Ok(caller) => {
                    req.extensions_mut().insert::<Caller>(caller);
                }
                Err(e) => return Ok(keep.on(req.into_response(e.error_response()))),
            },
            Some(_) => {}
        }
    }

    let res = next.call(req).await?.map_into_boxed_body();
    if expired.get() {
        let e = ApiError::refused(
            408,
            "request_timeout",
            format!(
                "the request body did not arrive within {} ms; send it whole, or raise api.request_timeout_ms",
                timeout.as_millis()
            ),
        );
        let (req, _) = res.into_parts();
        return Ok(keep.on(ServiceResponse::new(req, e.error_response())));
    }
    Ok(keep.on(as_json_error(res)))
}

/// The request body, kept alive by the answer's body: actix-web closes a connection whose
/// request body is unfinished and still referenced when the answer has gone out (a dropped
/// one, if chunked, it would read to its end, however slowly it comes). A body received
/// whole changes nothing.
struct Unread(Rc<RefCell<Payload>>);

impl Unread {
    fn on(self, res: ServiceResponse<BoxBody>) -> ServiceResponse<BoxBody> {
        res.map_body(|_, body| {
            BoxBody::new(Holding {
                body,
                _request_body: self.0,
            })
        })
    }
}

/// An answer's body that holds the request's body until it has been sent.
struct Holding {
    body: BoxBody,
    _request_body: Rc<RefCell<Payload>>,
}

impl MessageBody for Holding {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> actix_web::body::BodySize {
        self.body.size()
    }

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<web::Bytes, Self::Error>>> {
        Pin::new(&mut self.body).poll_next(cx)
    }
}

/// An error answer made by actix-web itself (not JSON) as the API's JSON error.
fn as_json_error(res: ServiceResponse<BoxBody>) -> ServiceResponse<BoxBody> {
    let status = res.status();
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return res;
    }
    let message = res
        .response()
        .error()
        .map(|e| e.to_string())
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
    let code = match status.as_u16() {
        400 => "invalid_body",
        404 => "not_found",
        408 => "request_timeout",
        413 => "too_large",
        415 => "unsupported_media_type",
        s if s >= 500 => "internal",
        _ => "refused",
    };
    let (req, old) = res.into_parts();
    let mut new = ApiError::refused(status.as_u16(), code, message).error_response();
    for (name, value) in old.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            new.headers_mut().insert(name.clone(), value.clone());
        }
    }
    ServiceResponse::new(req, new)
}

/// A request body that must be complete by a deadline.
struct Deadline {
    body: Rc<RefCell<Payload>>,
    timer: Pin<Box<tokio::time::Sleep>>,
    expired: Rc<Cell<bool>>,
    done: bool,
}

impl futures_core::Stream for Deadline {
    type Item = Result<web::Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut *this.body.borrow_mut()).poll_next(cx);
        match polled {
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(chunk)) => Poll::Ready(Some(chunk)),
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.done = true;
                    this.expired.set(true);
                    Poll::Ready(Some(Err(PayloadError::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the request body did not arrive in time",
                    )))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}
