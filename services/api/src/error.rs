//! API errors: JSON bodies with a stable code, naming the field when a field is wrong.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use fluxgate_store::StoreError;
use serde::Serialize;

/// An error answer: `{"error": {"code", "message", "field"?}}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// Stable code (snake_case).
    pub code: &'static str,
    /// What is wrong and what to do.
    pub message: String,
    /// The request field at fault.
    pub field: Option<String>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

/// The longest message or field name an error quotes: both may echo what the client
/// sent (a key, a JSON error quoting a string), which must not make the answer huge.
const MAX_QUOTED_BYTES: usize = 512;

fn quoted(s: impl Into<String>) -> String {
    let s = s.into();
    match fluxgate_model::bounded(&s, MAX_QUOTED_BYTES) {
        std::borrow::Cow::Borrowed(_) => s,
        std::borrow::Cow::Owned(cut) => cut,
    }
}

impl ApiError {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: quoted(message),
            field: None,
        }
    }
    /// A refused payload: 400 when it cannot be read at all (not JSON, nested too deep),
    /// 422 when it was read but breaks a rule. The code is the rejection's reason code.
    pub fn from_reject(r: &fluxgate_model::Reject) -> Self {
        use fluxgate_model::ReasonCode as C;
        let status = match r.code() {
            C::MalformedJson | C::TooDeep => 400,
            _ => 422,
        };
        Self::new(status, r.code().as_str(), r.message())
    }
    /// 401: no or bad credentials.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(401, "unauthorized", message)
    }
    /// 403: valid credentials that do not allow this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "forbidden", message)
    }
    /// 404.
    pub fn not_found(what: impl std::fmt::Display) -> Self {
        Self::new(404, "not_found", format!("{what} not found"))
    }
    /// 409.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(409, "conflict", message)
    }
    /// A refusal with its own status and code (a claim with the wrong secret, or outside
    /// the device's window).
    pub fn refused(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self::new(status, code, message)
    }
    /// 400 naming the field.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            field: Some(quoted(field)),
            ..Self::new(400, "invalid_field", message)
        }
    }
    /// 400 for a body that is not the JSON expected.
    pub fn bad_body(message: impl Into<String>) -> Self {
        Self::new(400, "invalid_body", message)
    }
    /// 422: the data was understood but refused (a Losant state that cannot be stored).
    pub fn rejected(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(422, code, message)
    }
    /// 503: a dependency is down; retry.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "unavailable", message)
    }
    /// 504: a two-way RPC got no reply in time.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(504, "timeout", message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => ApiError::not_found(what),
            StoreError::BadPageToken => ApiError::invalid("page", "invalid page token"),
            StoreError::InvalidTransition { .. } => ApiError::conflict(e.to_string()),
            other => ApiError::unavailable(other.to_string()),
        }
    }
}

impl From<fluxgate_bus::ProduceError> for ApiError {
    fn from(e: fluxgate_bus::ProduceError) -> Self {
        ApiError::unavailable(format!("bus: {e}"))
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code()).json(Body {
            error: Inner {
                code: self.code,
                message: &self.message,
                field: self.field.as_deref(),
            },
        })
    }
}
