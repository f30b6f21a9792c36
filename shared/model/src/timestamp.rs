//! Timestamps: the Losant `time` forms, ISO-8601 text, and the sanity window that catches
//! seconds sent where milliseconds belong.
//!
//! All timestamps inside fluxgate are epoch milliseconds (`i64`).

use serde::{Deserialize, Serialize};
use time::format_description::well_known::{Iso8601, Rfc3339};
use time::{Date, OffsetDateTime, PrimitiveDateTime, macros::format_description};

use crate::reject::Reject;

/// Numbers below this magnitude are epoch *seconds* (1e11 ms is March 1973; 1e11 s is the
/// year 5138), so a Losant `time` of `1700000000` means November 2023, not January 1970.
pub const SECONDS_THRESHOLD: f64 = 1e11;

/// What a Losant `time` field held, before it is resolved against the receive time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LosantTime {
    /// A JSON number: epoch ms, epoch s (by magnitude) or, when negative, ms ago.
    Number(f64),
    /// A time already resolved to epoch ms (ISO text, `{"$date": ...}`).
    Millis(i64),
    /// Absent, `null` or unparseable: the server's receive time.
    Received,
}

impl LosantTime {
    /// Resolves to epoch milliseconds given the server receive time.
    pub fn resolve(self, received_ms: i64) -> i64 {
        match self {
            LosantTime::Received => received_ms,
            LosantTime::Millis(ms) => ms,
            LosantTime::Number(n) if n < 0.0 => received_ms.saturating_add(n.round() as i64),
            LosantTime::Number(n) if n < SECONDS_THRESHOLD => (n * 1000.0).round() as i64,
            LosantTime::Number(n) => n.round() as i64,
        }
    }
}

/// Parses ISO-8601 text to epoch milliseconds: RFC 3339 (`2016-11-04T19:42:06.710Z`),
/// other ISO-8601 forms with an offset, local date-times (taken as UTC) and plain dates
/// (midnight UTC). `None` when the text is none of these.
pub fn parse_iso8601_ms(s: &str) -> Option<i64> {
    let s = s.trim();
    let dt = OffsetDateTime::parse(s, &Rfc3339)
        .or_else(|_| OffsetDateTime::parse(s, &Iso8601::DEFAULT))
        .or_else(|_| PrimitiveDateTime::parse(s, &Iso8601::DEFAULT).map(|p| p.assume_utc()))
        .or_else(|_| Date::parse(s, &Iso8601::DEFAULT).map(|d| d.midnight().assume_utc()))
        .ok()?;
    i64::try_from(dt.unix_timestamp_nanos() / 1_000_000).ok()
}

/// Formats epoch milliseconds as `2016-11-04T19:42:06.710Z`, the form Losant puts in
/// `{"$date": ...}`. Out-of-range values are clamped to the representable years.
pub fn format_iso8601_ms(ms: i64) -> String {
    let fmt =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    let nanos = i128::from(ms) * 1_000_000;
    let dt = OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or(if ms < 0 {
        OffsetDateTime::UNIX_EPOCH
    } else {
        Date::MAX.midnight().assume_utc()
    });
    dt.format(&fmt).unwrap_or_default()
}

/// The accepted range of sample timestamps, relative to the receive time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TimeWindow {
    /// How far in the past a timestamp may lie, in milliseconds (default: 10 years).
    pub max_past_ms: i64,
    /// How far in the future a timestamp may lie, in milliseconds (default: 1 day).
    pub max_future_ms: i64,
}

impl Default for TimeWindow {
    fn default() -> Self {
        TimeWindow {
            max_past_ms: 10 * 365 * 86_400_000,
            max_future_ms: 86_400_000,
        }
    }
}

impl TimeWindow {
    /// Refuses `ts_ms` outside `[now - max_past, now + max_future]`.
    pub fn check(&self, ts_ms: i64, now_ms: i64) -> Result<(), Reject> {
        let min_ms = now_ms.saturating_sub(self.max_past_ms);
        let max_ms = now_ms.saturating_add(self.max_future_ms);
        if ts_ms < min_ms || ts_ms > max_ms {
            return Err(Reject::TimestampOutOfWindow {
                ts_ms,
                min_ms,
                max_ms,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    #[test]
    fn losant_numbers() {
        assert_eq!(
            LosantTime::Number(1_478_288_526_710.0).resolve(NOW),
            1_478_288_526_710
        );
        // Seconds, told apart by magnitude.
        assert_eq!(
            LosantTime::Number(1_478_288_526.0).resolve(NOW),
            1_478_288_526_000
        );
        assert_eq!(
            LosantTime::Number(1_478_288_526.5).resolve(NOW),
            1_478_288_526_500
        );
        // Negative: that many ms ago.
        assert_eq!(LosantTime::Number(-5000.0).resolve(NOW), NOW - 5000);
        assert_eq!(LosantTime::Received.resolve(NOW), NOW);
        assert_eq!(LosantTime::Millis(5).resolve(NOW), 5);
        // Absurd values saturate instead of wrapping, and then fail the window.
        let huge = LosantTime::Number(1e300).resolve(NOW);
        assert_eq!(huge, i64::MAX);
        assert!(TimeWindow::default().check(huge, NOW).is_err());
        assert_eq!(
            LosantTime::Number(-1e300).resolve(NOW),
            NOW.saturating_add(i64::MIN)
        );
    }

    #[test]
    fn iso_forms() {
        let t = 1_478_288_526_710;
        assert_eq!(parse_iso8601_ms("2016-11-04T19:42:06.710Z"), Some(t));
        assert_eq!(parse_iso8601_ms("2016-11-04T21:42:06.710+02:00"), Some(t));
        assert_eq!(parse_iso8601_ms("2016-11-04T19:42:06.710"), Some(t));
        assert_eq!(parse_iso8601_ms("2016-11-04T19:42:06Z"), Some(t - 710));
        assert_eq!(parse_iso8601_ms("2016-11-04"), Some(1_478_217_600_000));
        assert_eq!(parse_iso8601_ms("yesterday"), None);
        assert_eq!(parse_iso8601_ms(""), None);
    }

    #[test]
    fn iso_format_round_trips() {
        for t in [0, 1_478_288_526_710, NOW, 253_402_300_799_999] {
            let s = format_iso8601_ms(t);
            assert_eq!(parse_iso8601_ms(&s), Some(t), "{s}");
        }
        assert_eq!(
            format_iso8601_ms(1_478_288_526_710),
            "2016-11-04T19:42:06.710Z"
        );
        // Never panics on extremes.
        assert!(!format_iso8601_ms(i64::MAX).is_empty());
        assert!(!format_iso8601_ms(i64::MIN).is_empty());
    }

    #[test]
    fn window_catches_seconds_as_millis() {
        let w = TimeWindow::default();
        assert!(w.check(NOW, NOW).is_ok());
        assert!(w.check(NOW - 86_400_000 * 365, NOW).is_ok());
        assert!(w.check(NOW + 3_600_000, NOW).is_ok());
        // ThingsBoard `ts` in seconds lands in January 1970.
        assert!(w.check(1_700_000_000, NOW).is_err());
        assert!(w.check(NOW + 2 * 86_400_000, NOW).is_err());
    }
}
