//! Why a message was refused: a typed enum with a stable, machine-readable reason code.
//!
//! The code ([`ReasonCode::as_str`]) is what goes into metrics labels, the rejected-message
//! log and API errors; it never changes once published. The `Display` text is for people.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Every reason fluxgate refuses a message for. The set is closed and small, so it is safe
/// as a Prometheus label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ReasonCode {
    /// The payload is larger than the configured maximum.
    PayloadTooLarge,
    /// The payload is not valid JSON (or not UTF-8).
    MalformedJson,
    /// A required field is absent.
    MissingField,
    /// A field has the wrong JSON type.
    WrongType,
    /// The message carries no data at all.
    EmptyData,
    /// More attributes in one message (or for one device) than allowed.
    TooManyAttributes,
    /// An attribute key is empty or longer than allowed.
    BadKey,
    /// A value (string or JSON) is larger than allowed.
    ValueTooLarge,
    /// A message names more devices or samples than allowed.
    TooManyItems,
    /// A device id or name is not acceptable.
    BadDeviceId,
    /// A timestamp lies outside the accepted window (often seconds sent as milliseconds).
    TimestampOutOfWindow,
    /// The principal may not publish or subscribe to this topic.
    TopicNotAllowed,
    /// The topic is in a platform namespace (`losant…`, `v1/`) but means nothing there.
    UnknownTopic,
    /// The attribute is not defined on the device (Losant).
    UndefinedAttribute,
    /// A value cannot be converted to the attribute's defined type without loss.
    TypeMismatch,
    /// A gateway posted for a peripheral that does not allow it.
    PeripheralNotAllowed,
    /// The device does not exist (or is not visible to this principal).
    UnknownDevice,
    /// The JSON document nests deeper than allowed.
    TooDeep,
    /// A bus record a role could not decode: it was kept on the dead-letter topic.
    Undecodable,
    /// Creating the device would go over a quota (devices auto-created per application or
    /// per gateway).
    QuotaExceeded,
}

impl ReasonCode {
    /// Every code, for metrics that pre-register their label values.
    pub const ALL: [ReasonCode; 20] = [
        ReasonCode::PayloadTooLarge,
        ReasonCode::MalformedJson,
        ReasonCode::MissingField,
        ReasonCode::WrongType,
        ReasonCode::EmptyData,
        ReasonCode::TooManyAttributes,
        ReasonCode::BadKey,
        ReasonCode::ValueTooLarge,
        ReasonCode::TooManyItems,
        ReasonCode::BadDeviceId,
        ReasonCode::TimestampOutOfWindow,
        ReasonCode::TopicNotAllowed,
        ReasonCode::UnknownTopic,
        ReasonCode::UndefinedAttribute,
        ReasonCode::TypeMismatch,
        ReasonCode::PeripheralNotAllowed,
        ReasonCode::UnknownDevice,
        ReasonCode::TooDeep,
        ReasonCode::Undecodable,
        ReasonCode::QuotaExceeded,
    ];

    /// The stable snake_case code.
    pub fn as_str(self) -> &'static str {
        match self {
            ReasonCode::PayloadTooLarge => "payload_too_large",
            ReasonCode::MalformedJson => "malformed_json",
            ReasonCode::MissingField => "missing_field",
            ReasonCode::WrongType => "wrong_type",
            ReasonCode::EmptyData => "empty_data",
            ReasonCode::TooManyAttributes => "too_many_attributes",
            ReasonCode::BadKey => "bad_key",
            ReasonCode::ValueTooLarge => "value_too_large",
            ReasonCode::TooManyItems => "too_many_items",
            ReasonCode::BadDeviceId => "bad_device_id",
            ReasonCode::TimestampOutOfWindow => "timestamp_out_of_window",
            ReasonCode::TopicNotAllowed => "topic_not_allowed",
            ReasonCode::UnknownTopic => "unknown_topic",
            ReasonCode::UndefinedAttribute => "undefined_attribute",
            ReasonCode::TypeMismatch => "type_mismatch",
            ReasonCode::PeripheralNotAllowed => "peripheral_not_allowed",
            ReasonCode::UnknownDevice => "unknown_device",
            ReasonCode::TooDeep => "too_deep",
            ReasonCode::Undecodable => "undecodable",
            ReasonCode::QuotaExceeded => "quota_exceeded",
        }
    }
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused message: the reason with its details.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Reject {
    /// See [`ReasonCode::PayloadTooLarge`].
    #[error("payload is {size} bytes, the limit is {limit}")]
    PayloadTooLarge {
        /// Payload size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// See [`ReasonCode::MalformedJson`].
    #[error("payload is not valid JSON: {detail}")]
    MalformedJson {
        /// The parser's description, with line and column.
        detail: String,
    },
    /// See [`ReasonCode::MissingField`].
    #[error("required field `{field}` is missing")]
    MissingField {
        /// The JSON field name.
        field: String,
    },
    /// See [`ReasonCode::WrongType`].
    #[error("field `{field}` must be {expected}")]
    WrongType {
        /// The JSON field name (or a path such as `Device A`).
        field: String,
        /// What was expected, e.g. "an object".
        expected: &'static str,
    },
    /// See [`ReasonCode::WrongType`]: well-formed JSON of the wrong shape, as the JSON
    /// reader described it.
    #[error("{what} payload has the wrong shape: {detail}")]
    Shape {
        /// Which message was being read ("Losant state", "gateway telemetry").
        what: &'static str,
        /// The reader's description, with line and column.
        detail: String,
    },
    /// See [`ReasonCode::EmptyData`].
    #[error("message carries no data")]
    EmptyData,
    /// See [`ReasonCode::TooManyAttributes`].
    #[error("{count} attributes, at most {limit} are allowed")]
    TooManyAttributes {
        /// Attributes offered.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// See [`ReasonCode::BadKey`].
    #[error("attribute key {key:?} is empty or longer than {limit} bytes")]
    BadKey {
        /// The key (truncated to the limit plus an ellipsis when too long).
        key: String,
        /// The limit in bytes.
        limit: usize,
    },
    /// See [`ReasonCode::ValueTooLarge`].
    #[error("value of `{key}` is {size} bytes, the limit is {limit}")]
    ValueTooLarge {
        /// The attribute key.
        key: String,
        /// Value size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// See [`ReasonCode::TooManyItems`].
    #[error("{count} {what}, at most {limit} are allowed in one message")]
    TooManyItems {
        /// What was counted ("devices", "samples").
        what: &'static str,
        /// How many were offered.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// See [`ReasonCode::BadDeviceId`].
    #[error("device {id:?} is not acceptable: {reason}")]
    BadDeviceId {
        /// The offending id or name.
        id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// See [`ReasonCode::TimestampOutOfWindow`].
    #[error(
        "timestamp {ts_ms} ms is outside the accepted window [{min_ms}, {max_ms}] \
         (was it sent in seconds instead of milliseconds?)"
    )]
    TimestampOutOfWindow {
        /// The offending timestamp, epoch milliseconds.
        ts_ms: i64,
        /// The earliest accepted.
        min_ms: i64,
        /// The latest accepted.
        max_ms: i64,
    },
    /// See [`ReasonCode::TopicNotAllowed`].
    #[error("topic {topic:?} is not allowed for this client")]
    TopicNotAllowed {
        /// The topic or topic filter.
        topic: String,
    },
    /// See [`ReasonCode::UnknownTopic`].
    #[error("topic {topic:?} is reserved by the platform and has no meaning")]
    UnknownTopic {
        /// The topic or topic filter.
        topic: String,
    },
    /// See [`ReasonCode::UndefinedAttribute`].
    #[error("attribute `{key}` is not defined on the device")]
    UndefinedAttribute {
        /// The attribute key.
        key: String,
    },
    /// See [`ReasonCode::TypeMismatch`].
    #[error("value of `{key}` cannot be converted to {expected} without loss")]
    TypeMismatch {
        /// The attribute key.
        key: String,
        /// The defined type.
        expected: &'static str,
    },
    /// See [`ReasonCode::PeripheralNotAllowed`].
    #[error("gateway {gateway} may not act for peripheral {peripheral}")]
    PeripheralNotAllowed {
        /// The gateway's id.
        gateway: String,
        /// The peripheral's id.
        peripheral: String,
    },
    /// See [`ReasonCode::UnknownDevice`].
    #[error("device {device:?} does not exist")]
    UnknownDevice {
        /// The device id or name.
        device: String,
    },
    /// See [`ReasonCode::TooDeep`].
    #[error("JSON nests deeper than {limit} levels")]
    TooDeep {
        /// The limit ([`crate::Limits::max_json_depth`]).
        limit: usize,
    },
    /// See [`ReasonCode::QuotaExceeded`].
    #[error("device {device:?} not created: {what} has {count} devices, the quota is {limit}")]
    QuotaExceeded {
        /// The device name that would have been created.
        device: String,
        /// Whose quota (`application app1`, `gateway gw1`).
        what: String,
        /// Devices counted.
        count: u64,
        /// The quota.
        limit: u64,
    },
}

impl Reject {
    /// The stable reason code.
    pub fn code(&self) -> ReasonCode {
        match self {
            Reject::PayloadTooLarge { .. } => ReasonCode::PayloadTooLarge,
            Reject::MalformedJson { .. } => ReasonCode::MalformedJson,
            Reject::MissingField { .. } => ReasonCode::MissingField,
            Reject::WrongType { .. } | Reject::Shape { .. } => ReasonCode::WrongType,
            Reject::EmptyData => ReasonCode::EmptyData,
            Reject::TooManyAttributes { .. } => ReasonCode::TooManyAttributes,
            Reject::BadKey { .. } => ReasonCode::BadKey,
            Reject::ValueTooLarge { .. } => ReasonCode::ValueTooLarge,
            Reject::TooManyItems { .. } => ReasonCode::TooManyItems,
            Reject::BadDeviceId { .. } => ReasonCode::BadDeviceId,
            Reject::TimestampOutOfWindow { .. } => ReasonCode::TimestampOutOfWindow,
            Reject::TopicNotAllowed { .. } => ReasonCode::TopicNotAllowed,
            Reject::UnknownTopic { .. } => ReasonCode::UnknownTopic,
            Reject::UndefinedAttribute { .. } => ReasonCode::UndefinedAttribute,
            Reject::TypeMismatch { .. } => ReasonCode::TypeMismatch,
            Reject::PeripheralNotAllowed { .. } => ReasonCode::PeripheralNotAllowed,
            Reject::UnknownDevice { .. } => ReasonCode::UnknownDevice,
            Reject::TooDeep { .. } => ReasonCode::TooDeep,
            Reject::QuotaExceeded { .. } => ReasonCode::QuotaExceeded,
        }
    }

    /// Whether the payload itself is unreadable (MQTT 5 reason 0x99 "payload format
    /// invalid"), as opposed to a readable payload that breaks a rule.
    pub fn is_payload_format(&self) -> bool {
        matches!(
            self.code(),
            ReasonCode::MalformedJson
                | ReasonCode::TooDeep
                | ReasonCode::MissingField
                | ReasonCode::WrongType
                | ReasonCode::EmptyData
        )
    }

    /// The human message, at most [`Reject::MESSAGE_BYTES`] bytes: what goes into MQTT 5
    /// reason strings (65,535 bytes at most on the wire), API errors, the rejected log and
    /// log lines. Details such as a topic, key or device name come from the client and
    /// may be as long as the packet; quoting them whole must never break an answer.
    pub fn message(&self) -> String {
        bounded(&self.to_string(), Self::MESSAGE_BYTES).into_owned()
    }

    /// The longest [`Reject::message`].
    pub const MESSAGE_BYTES: usize = 256;

    /// Maps a `serde_json` error to a rejection: syntax errors are malformed JSON; a
    /// well-formed document of the wrong shape is a wrong type.
    pub(crate) fn from_json(err: &serde_json::Error, what: &'static str) -> Self {
        use serde_json::error::Category;
        match err.classify() {
            Category::Data => Reject::Shape {
                what,
                detail: err.to_string(),
            },
            Category::Io | Category::Syntax | Category::Eof => Reject::MalformedJson {
                detail: err.to_string(),
            },
        }
    }
}

/// A rejection as it is logged and published: code plus human message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectInfo {
    /// The stable reason code.
    pub code: ReasonCode,
    /// A sentence for people.
    pub message: String,
}

impl From<&Reject> for RejectInfo {
    fn from(r: &Reject) -> Self {
        RejectInfo {
            code: r.code(),
            message: r.message(),
        }
    }
}

/// `s` cut to at most `max` bytes on a char boundary, with `…` marking a cut (the
/// ellipsis counts in `max`).
pub fn bounded(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max {
        return std::borrow::Cow::Borrowed(s);
    }
    const MORE: &str = "…";
    let mut end = max.saturating_sub(MORE.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}{MORE}", &s[..end]))
}

/// A refused message as it travels on `fluxgate.ingest.rejected` to the rejected log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// Format version, [`crate::ENVELOPE_VERSION`].
    pub v: u8,
    /// The tenant.
    pub tenant: crate::TenantId,
    /// The device id, or the name a gateway used, or the client id when unknown.
    pub device: String,
    /// When it was received, epoch ms.
    pub received_ms: i64,
    /// Why.
    pub reason: RejectInfo,
    /// The start of the payload (at most [`Rejection::EXCERPT_BYTES`] bytes, lossy UTF-8).
    pub excerpt: String,
}

impl Rejection {
    /// How much of a refused payload is kept.
    pub const EXCERPT_BYTES: usize = 256;

    /// A rejection of `payload` for `reject`.
    pub fn new(
        tenant: crate::TenantId,
        device: impl Into<String>,
        received_ms: i64,
        reject: &Reject,
        payload: &[u8],
    ) -> Self {
        let cut = &payload[..payload.len().min(Self::EXCERPT_BYTES)];
        Rejection {
            v: crate::ENVELOPE_VERSION,
            tenant,
            device: device.into(),
            received_ms,
            reason: RejectInfo::from(reject),
            excerpt: String::from_utf8_lossy(cut).into_owned(),
        }
    }

    /// The rejected-log entry of a bus record that `role` could not decode (it went to the
    /// dead-letter topic). `key` is the record's key, `tenant/device` for every record
    /// fluxgate produces; `None` when it names no valid tenant.
    pub fn undecodable(
        key: &[u8],
        received_ms: i64,
        role: &str,
        error: &str,
        payload: &[u8],
    ) -> Option<Self> {
        let key = std::str::from_utf8(key).ok()?;
        let (tenant, device) = key.split_once('/').unwrap_or((key, ""));
        let tenant = crate::TenantId::new(tenant).ok()?;
        let message =
            format!("{role} could not decode the record (kept on the dead-letter topic): {error}");
        let cut = &payload[..payload.len().min(Self::EXCERPT_BYTES)];
        Some(Rejection {
            v: crate::ENVELOPE_VERSION,
            tenant,
            device: bounded(device, Self::EXCERPT_BYTES).into_owned(),
            received_ms,
            reason: RejectInfo {
                code: ReasonCode::Undecodable,
                message: bounded(&message, Reject::MESSAGE_BYTES).into_owned(),
            },
            excerpt: String::from_utf8_lossy(cut).into_owned(),
        })
    }

    /// Serializes to bus bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads from bus bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, crate::EnvelopeError> {
        let r: Rejection = serde_json::from_slice(bytes)?;
        if r.v != crate::ENVELOPE_VERSION {
            return Err(crate::EnvelopeError::Version(r.v));
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_round_trip_with_a_bounded_excerpt() {
        let big = vec![b'{'; 1000];
        let r = Rejection::new(
            crate::TenantId::new("t").unwrap(),
            "dev",
            5,
            &Reject::MalformedJson { detail: "x".into() },
            &big,
        );
        assert_eq!(r.excerpt.len(), Rejection::EXCERPT_BYTES);
        assert_eq!(r.reason.code, ReasonCode::MalformedJson);
        assert_eq!(Rejection::from_bytes(&r.to_bytes()).unwrap(), r);
    }

    #[test]
    fn codes_are_unique_and_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for c in ReasonCode::ALL {
            assert!(seen.insert(c.as_str()), "duplicate {c}");
            assert!(
                c.as_str()
                    .chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch == '_')
            );
            // serde name and as_str agree
            assert_eq!(
                serde_json::to_string(&c).unwrap(),
                format!("\"{}\"", c.as_str())
            );
        }
    }

    #[test]
    fn messages_say_what_is_wrong() {
        let r = Reject::TimestampOutOfWindow {
            ts_ms: 1_700_000_000,
            min_ms: 0,
            max_ms: 1,
        };
        assert_eq!(r.code(), ReasonCode::TimestampOutOfWindow);
        assert!(r.to_string().contains("seconds instead of milliseconds"));
        let info = RejectInfo::from(&Reject::MissingField {
            field: "data".into(),
        });
        assert_eq!(
            serde_json::to_value(&info).unwrap(),
            serde_json::json!({"code": "missing_field", "message": "required field `data` is missing"})
        );
    }

    #[test]
    fn messages_are_bounded_whatever_the_client_sent() {
        // A 100 KB topic of multi-byte chars: the message is cut on a char boundary.
        let topic = "é".repeat(50_000);
        let r = Reject::TopicNotAllowed { topic };
        let m = r.message();
        assert!(m.len() <= Reject::MESSAGE_BYTES, "{}", m.len());
        assert!(m.ends_with('…'));
        assert!(m.starts_with("topic \"éé"));
        assert!(RejectInfo::from(&r).message.len() <= Reject::MESSAGE_BYTES);
        // Short messages are kept whole.
        let short = Reject::EmptyData;
        assert_eq!(short.message(), short.to_string());
        assert_eq!(bounded("abc", 3), "abc");
        assert_eq!(bounded("abcd", 3), "…");
    }

    #[test]
    fn an_undecodable_record_becomes_a_rejection_of_its_key() {
        let r = Rejection::undecodable(b"t1/dev-9", 7, "validator", "bad json", b"{{{").unwrap();
        assert_eq!(r.tenant.as_str(), "t1");
        assert_eq!(r.device, "dev-9");
        assert_eq!(r.reason.code, ReasonCode::Undecodable);
        assert!(r.reason.message.contains("dead-letter"));
        assert_eq!(r.excerpt, "{{{");
        assert!(Rejection::undecodable(b"", 7, "validator", "x", b"").is_none());
        assert!(Rejection::undecodable(&[0xff], 7, "validator", "x", b"").is_none());
    }

    #[test]
    fn json_errors_are_classified() {
        let syntax = serde_json::from_str::<serde_json::Value>("{").unwrap_err();
        assert_eq!(
            Reject::from_json(&syntax, "x").code(),
            ReasonCode::MalformedJson
        );
        let data = serde_json::from_str::<u8>("\"a\"").unwrap_err();
        assert_eq!(Reject::from_json(&data, "x").code(), ReasonCode::WrongType);
    }
}
