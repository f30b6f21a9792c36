//! W3C trace context in record headers, so one trace runs from an MQTT publish through
//! the bus to the store write (and from an API command to the device).
//!
//! [`Headers`] is an OpenTelemetry [`Injector`] and [`Extractor`]: a propagator
//! (`TraceContextPropagator`, set up by the observability crate) writes `traceparent` and
//! `tracestate` into a record's headers on produce and reads them back on consume. This
//! module only moves the headers; which span they name is the roles' business.

use opentelemetry::propagation::{Extractor, Injector};

use crate::Headers;

/// The W3C header naming the trace and the parent span.
pub const TRACEPARENT: &str = "traceparent";

impl Injector for Headers {
    /// Sets `key`: a record carries one value per trace header, the last one written.
    fn set(&mut self, key: &str, value: String) {
        self.0.retain(|(k, _)| k != key);
        self.insert(key, value);
    }
}

impl Extractor for Headers {
    /// `key`'s last value, when it is UTF-8 (a propagator ignores what does not parse).
    fn get(&self, key: &str) -> Option<&str> {
        std::str::from_utf8(Headers::get(self, key)?).ok()
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::{SpanContext, TraceContextExt, TraceFlags, TraceState};
    use opentelemetry::{Context, SpanId, TraceId};
    use opentelemetry_sdk::propagation::TraceContextPropagator;

    use super::*;

    const W3C: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_context_survives_the_headers() {
        let sc = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let p = TraceContextPropagator::new();
        let mut h = Headers::new();
        h.insert("other", "kept");
        h.insert(
            TRACEPARENT,
            "00-11111111111111111111111111111111-1111111111111111-01",
        );
        p.inject_context(&Context::new().with_remote_span_context(sc.clone()), &mut h);
        assert_eq!(Headers::get(&h, TRACEPARENT), Some(W3C.as_bytes()));
        assert_eq!(h.iter().filter(|(k, _)| *k == TRACEPARENT).count(), 1);
        assert_eq!(Headers::get(&h, "other"), Some(&b"kept"[..]));
        let back = p.extract(&h);
        assert_eq!(back.span().span_context().trace_id(), sc.trace_id());
        assert_eq!(back.span().span_context().span_id(), sc.span_id());
        assert!(back.span().span_context().is_remote());
    }

    #[test]
    fn invalid_headers_give_no_parent() {
        let p = TraceContextPropagator::new();
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "not-a-traceparent",
        ] {
            let mut h = Headers::new();
            h.insert(TRACEPARENT, bad);
            assert!(!p.extract(&h).span().span_context().is_valid(), "{bad}");
        }
        let mut h = Headers::new();
        h.insert(TRACEPARENT, vec![0xffu8]);
        assert!(!p.extract(&h).span().span_context().is_valid());
        assert!(!p.extract(&Headers::new()).span().span_context().is_valid());
    }
}
