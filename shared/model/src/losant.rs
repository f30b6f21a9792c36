//! The Losant dialect: device state in, commands out.
//!
//! State (`losant/{deviceId}/state`, or the REST state endpoint):
//! `{"data": {attr: value, ...}, "time": <optional>, "flowVersion": <optional string>}`;
//! `time` in every form of [`LosantTime`]. Commands (`losant/{deviceId}/command`):
//! `{"name": "...", "payload": <any JSON>, "time": {"$date": "<ISO-8601>"}}`.

use std::fmt;

use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::envelope::Sample;
use crate::ids::DeviceId;
use crate::limits::Limits;
use crate::reject::Reject;
use crate::timestamp::{LosantTime, format_iso8601_ms, parse_iso8601_ms};
use crate::value::Values;

/// The state topic of a device.
pub fn state_topic(device: &DeviceId) -> String {
    format!("losant/{device}/state")
}

/// The command topic of a device.
pub fn command_topic(device: &DeviceId) -> String {
    format!("losant/{device}/command")
}

/// One parsed device state.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    /// The state's time and attribute values.
    pub sample: Sample,
    /// Which workflow version the state should trigger.
    pub flow_version: Option<String>,
}

/// A state as read. Deserialized by hand so that only a JSON *object* is a state (serde's
/// derive would also take an array of fields).
struct StateWire {
    data: Option<Values>,
    time: TimeField,
    flow_version: Option<String>,
}

impl<'de> Deserialize<'de> for StateWire {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StateWire;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a state object {\"data\": {...}}")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StateWire, A::Error> {
                let mut w = StateWire {
                    data: None,
                    time: TimeField::default(),
                    flow_version: None,
                };
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match key.as_ref() {
                        "data" => w.data = map.next_value()?,
                        "time" => w.time = map.next_value()?,
                        "flowVersion" => w.flow_version = map.next_value()?,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(w)
            }
        }
        d.deserialize_map(V)
    }
}

impl StateWire {
    fn into_state(self, received_ms: i64, limits: &Limits) -> Result<State, Reject> {
        let values = self.data.ok_or_else(|| Reject::MissingField {
            field: "data".into(),
        })?;
        if values.is_empty() {
            return Err(Reject::EmptyData);
        }
        limits.check_values(&values)?;
        Ok(State {
            sample: Sample {
                ts_ms: self.time.0.resolve(received_ms),
                values,
            },
            flow_version: self.flow_version,
        })
    }
}

/// Parses one state payload (the MQTT form). `received_ms` is used when the payload has no
/// usable `time`.
pub fn parse_state(payload: &[u8], received_ms: i64, limits: &Limits) -> Result<State, Reject> {
    limits.check_payload(payload)?;
    let wire: StateWire =
        serde_json::from_slice(payload).map_err(|e| Reject::from_json(&e, "Losant state"))?;
    wire.into_state(received_ms, limits)
}

/// Parses the REST state body: one state object or an array of them.
pub fn parse_states(
    payload: &[u8],
    received_ms: i64,
    limits: &Limits,
) -> Result<Vec<State>, Reject> {
    limits.check_payload(payload)?;
    let is_array = payload
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'[');
    if !is_array {
        return Ok(vec![parse_state(payload, received_ms, limits)?]);
    }
    let wires: Vec<StateWire> =
        serde_json::from_slice(payload).map_err(|e| Reject::from_json(&e, "Losant state"))?;
    if wires.is_empty() {
        return Err(Reject::EmptyData);
    }
    limits.check_items("states", wires.len())?;
    wires
        .into_iter()
        .map(|w| w.into_state(received_ms, limits))
        .collect()
}

/// Encodes a state payload, as a device would send it. `time_ms = None` omits `time`.
pub fn encode_state(values: &Values, time_ms: Option<i64>) -> Vec<u8> {
    #[derive(Serialize)]
    struct Out<'a> {
        data: &'a Values,
        #[serde(skip_serializing_if = "Option::is_none")]
        time: Option<i64>,
    }
    serde_json::to_vec(&Out {
        data: values,
        time: time_ms,
    })
    .unwrap_or_default()
}

/// A command as a device receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct LosantCommand {
    /// The command name.
    pub name: String,
    /// Any JSON.
    pub payload: serde_json::Value,
    /// The command time, epoch ms (absent or unparseable: `None`).
    pub time_ms: Option<i64>,
}

/// Encodes a command for `losant/{id}/command`.
pub fn encode_command(name: &str, payload: &serde_json::Value, time_ms: i64) -> Vec<u8> {
    #[derive(Serialize)]
    struct Date {
        #[serde(rename = "$date")]
        date: String,
    }
    #[derive(Serialize)]
    struct Out<'a> {
        name: &'a str,
        payload: &'a serde_json::Value,
        time: Date,
    }
    serde_json::to_vec(&Out {
        name,
        payload,
        time: Date {
            date: format_iso8601_ms(time_ms),
        },
    })
    .unwrap_or_default()
}

/// Parses a command payload, as a device (or a test client) reads it.
pub fn parse_command(payload: &[u8]) -> Result<LosantCommand, Reject> {
    #[derive(Deserialize)]
    struct Wire {
        name: Option<String>,
        #[serde(default)]
        payload: serde_json::Value,
        #[serde(default)]
        time: TimeField,
    }
    let w: Wire =
        serde_json::from_slice(payload).map_err(|e| Reject::from_json(&e, "Losant command"))?;
    let name = w.name.ok_or_else(|| Reject::MissingField {
        field: "name".into(),
    })?;
    let time_ms = match w.time.0 {
        LosantTime::Received => None,
        t => Some(t.resolve(0)),
    };
    Ok(LosantCommand {
        name,
        payload: w.payload,
        time_ms,
    })
}

/// The `time` field in any of its forms; anything unusable means "receive time".
#[derive(Debug, Clone, Copy, PartialEq)]
struct TimeField(LosantTime);

impl Default for TimeField {
    fn default() -> Self {
        TimeField(LosantTime::Received)
    }
}

impl<'de> Deserialize<'de> for TimeField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TimeVisitor).map(TimeField)
    }
}

struct TimeVisitor;

impl<'de> Visitor<'de> for TimeVisitor {
    type Value = LosantTime;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a timestamp")
    }
    fn visit_i64<E>(self, v: i64) -> Result<LosantTime, E> {
        Ok(LosantTime::Number(v as f64))
    }
    fn visit_u64<E>(self, v: u64) -> Result<LosantTime, E> {
        Ok(LosantTime::Number(v as f64))
    }
    fn visit_f64<E>(self, v: f64) -> Result<LosantTime, E> {
        Ok(LosantTime::Number(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<LosantTime, E> {
        Ok(parse_iso8601_ms(v).map_or(LosantTime::Received, LosantTime::Millis))
    }
    fn visit_bool<E>(self, _: bool) -> Result<LosantTime, E> {
        Ok(LosantTime::Received)
    }
    fn visit_unit<E>(self) -> Result<LosantTime, E> {
        Ok(LosantTime::Received)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<LosantTime, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(LosantTime::Received)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LosantTime, A::Error> {
        // `{"$date": "<ISO-8601>"}` (MongoDB extended JSON; `$date` may also be epoch ms).
        let mut out = LosantTime::Received;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == "$date" {
                out = match map.next_value::<serde_json::Value>()? {
                    serde_json::Value::String(s) => {
                        parse_iso8601_ms(&s).map_or(LosantTime::Received, LosantTime::Millis)
                    }
                    serde_json::Value::Number(n) => n.as_f64().map_or(LosantTime::Received, |f| {
                        LosantTime::Millis(f.round() as i64)
                    }),
                    _ => LosantTime::Received,
                };
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ReasonCode;
    use crate::value::Value;

    const NOW: i64 = 1_700_000_000_000;

    fn state(s: &str) -> Result<State, Reject> {
        parse_state(s.as_bytes(), NOW, &Limits::default())
    }

    #[test]
    fn seed_002_state_example() {
        // Seed 002's "Publish State Example" (braces restored).
        let s = state(
            r#"{"data": {"temperature": 72}, "time": { "$date": "2016-11-04T19:42:06.710Z" }}"#,
        )
        .unwrap();
        assert_eq!(s.sample.ts_ms, 1_478_288_526_710);
        assert_eq!(s.sample.values["temperature"], Value::Integer(72));
        assert_eq!(s.flow_version, None);
    }

    #[test]
    fn every_time_form() {
        let t = 1_478_288_526_710i64;
        for (time, want) in [
            ("1478288526710".to_string(), t),
            ("1478288526".to_string(), t - 710),
            ("1478288526.71".to_string(), t),
            ("\"2016-11-04T19:42:06.710Z\"".to_string(), t),
            ("{\"$date\": \"2016-11-04T19:42:06.710Z\"}".to_string(), t),
            ("{\"$date\": 1478288526710}".to_string(), t),
            ("-60000".to_string(), NOW - 60_000),
            ("null".to_string(), NOW),
            ("\"not a time\"".to_string(), NOW),
            ("{\"$date\": \"garbage\"}".to_string(), NOW),
            ("{\"other\": 1}".to_string(), NOW),
            ("true".to_string(), NOW),
            ("[1,2]".to_string(), NOW),
        ] {
            let p = format!(r#"{{"data": {{"a": 1}}, "time": {time}}}"#);
            assert_eq!(state(&p).unwrap().sample.ts_ms, want, "{time}");
        }
        assert_eq!(state(r#"{"data": {"a": 1}}"#).unwrap().sample.ts_ms, NOW);
    }

    #[test]
    fn flow_version_is_kept() {
        let s = state(r#"{"data": {"a": "x"}, "flowVersion": "v1.2"}"#).unwrap();
        assert_eq!(s.flow_version.as_deref(), Some("v1.2"));
    }

    #[test]
    fn value_types_are_kept() {
        let s = state(r#"{"data": {"n": 72, "f": 72.5, "s": "72", "b": true, "g": "37.1,-122.4", "j": {"x": [1]}}}"#)
            .unwrap();
        let v = &s.sample.values;
        assert_eq!(v["n"], Value::Integer(72));
        assert_eq!(v["f"], Value::Float(72.5));
        assert_eq!(v["s"], Value::String("72".into()));
        assert_eq!(v["b"], Value::Bool(true));
        assert_eq!(v["g"], Value::String("37.1,-122.4".into()));
        assert_eq!(v["j"], Value::Json(serde_json::json!({"x": [1]})));
    }

    #[test]
    fn bad_states_are_rejected_with_reasons() {
        let code = |s: &str| state(s).unwrap_err().code();
        assert_eq!(code(r#"{"data": {"a": 1}"#), ReasonCode::MalformedJson);
        assert_eq!(code("not json"), ReasonCode::MalformedJson);
        assert_eq!(code(""), ReasonCode::MalformedJson);
        assert_eq!(code(r#"{"time": 5}"#), ReasonCode::MissingField);
        assert_eq!(code(r#"{"data": null}"#), ReasonCode::MissingField);
        assert_eq!(code(r#"{"data": {}}"#), ReasonCode::EmptyData);
        assert_eq!(code(r#"{"data": "x"}"#), ReasonCode::WrongType);
        assert_eq!(code(r#"{"data": [1]}"#), ReasonCode::WrongType);
        assert_eq!(code(r#"[]"#), ReasonCode::WrongType);
        assert_eq!(
            code(r#"{"data": {"a": 1}, "flowVersion": 3}"#),
            ReasonCode::WrongType
        );
        assert_eq!(
            parse_state(&[0xff, 0xfe], NOW, &Limits::default())
                .unwrap_err()
                .code(),
            ReasonCode::MalformedJson
        );
        let many: Vec<String> = (0..257).map(|i| format!("\"k{i}\": {i}")).collect();
        assert_eq!(
            code(&format!("{{\"data\": {{{}}}}}", many.join(","))),
            ReasonCode::TooManyAttributes
        );
        let big = format!(r#"{{"data": {{"a": "{}"}}}}"#, "x".repeat(300 * 1024));
        assert_eq!(code(&big), ReasonCode::PayloadTooLarge);
    }

    #[test]
    fn rest_body_takes_one_state_or_many() {
        let one = parse_states(br#"{"data": {"a": 1}}"#, NOW, &Limits::default()).unwrap();
        assert_eq!(one.len(), 1);
        let many = parse_states(
            br#" [{"data": {"a": 1}, "time": 1478288526710}, {"data": {"b": 2}}]"#,
            NOW,
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(many.len(), 2);
        assert_eq!(many[0].sample.ts_ms, 1_478_288_526_710);
        assert_eq!(many[1].sample.ts_ms, NOW);
        assert_eq!(
            parse_states(b"[]", NOW, &Limits::default())
                .unwrap_err()
                .code(),
            ReasonCode::EmptyData
        );
        assert_eq!(
            parse_states(br#"[{"data": {}}]"#, NOW, &Limits::default())
                .unwrap_err()
                .code(),
            ReasonCode::EmptyData
        );
    }

    #[test]
    fn state_encoding_round_trips() {
        let mut values = Values::new();
        values.insert("temperature", Value::Float(21.5));
        values.insert("on", Value::Bool(true));
        let bytes = encode_state(&values, Some(1_478_288_526_710));
        let s = parse_state(&bytes, NOW, &Limits::default()).unwrap();
        assert_eq!(s.sample.values, values);
        assert_eq!(s.sample.ts_ms, 1_478_288_526_710);
        let s = parse_state(&encode_state(&values, None), NOW, &Limits::default()).unwrap();
        assert_eq!(s.sample.ts_ms, NOW);
    }

    #[test]
    fn command_encoding_matches_losant_and_round_trips() {
        let payload = serde_json::json!({"temperature": 72});
        let bytes = encode_command("set-temperature", &payload, 1_478_288_526_710);
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&bytes).unwrap(),
            serde_json::json!({
                "name": "set-temperature",
                "payload": {"temperature": 72},
                "time": {"$date": "2016-11-04T19:42:06.710Z"}
            })
        );
        let c = parse_command(&bytes).unwrap();
        assert_eq!(c.name, "set-temperature");
        assert_eq!(c.payload, payload);
        assert_eq!(c.time_ms, Some(1_478_288_526_710));
        // Seed 002's command example: the payload is optional-ish and time may be absent.
        let c = parse_command(br#"{"name": "command-name", "payload": {}}"#).unwrap();
        assert_eq!(c.time_ms, None);
        assert_eq!(
            parse_command(br#"{"payload": {}}"#).unwrap_err().code(),
            ReasonCode::MissingField
        );
    }

    #[test]
    fn topics() {
        let d = DeviceId::new("575ecf887ae143cd83dc4aa2").unwrap();
        assert_eq!(state_topic(&d), "losant/575ecf887ae143cd83dc4aa2/state");
        assert_eq!(command_topic(&d), "losant/575ecf887ae143cd83dc4aa2/command");
    }
}
