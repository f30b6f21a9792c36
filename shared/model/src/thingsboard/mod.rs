//! The ThingsBoard dialect: the MQTT device API ([`device`]) and gateway API ([`gateway`]).
//!
//! Both APIs share the telemetry item format, read here once by [`parse_items`]:
//! `{"k": v, ...}` (values at receive time) or `{"ts": <ms>, "values": {...}}`, alone or in
//! an array. Two deliberate improvements on ThingsBoard itself, so no data lands under a
//! bogus key: `{"values": {...}}` without `ts` means "these values at receive time" (where
//! ThingsBoard's gateway stores a key literally named `values`), and a numeric `ts` beside
//! flat keys is taken as the timestamp. A non-numeric `ts` is refused.

pub mod device;
pub mod gateway;

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::envelope::{KeySelection, Sample};
use crate::limits::Limits;
use crate::reject::Reject;
use crate::value::{Value, Values};

/// A telemetry item is read straight into a [`Sample`]; `ts_ms` holds this marker until
/// the receive time replaces it (a real `ts` of `i64::MIN` is year -292 million and would
/// fail any time window anyway).
const TS_ABSENT: i64 = i64::MIN;

fn ts_of<E: de::Error>(v: Value) -> Result<i64, E> {
    match v {
        Value::Integer(i) => Ok(i),
        Value::Float(f) => Ok(f.round() as i64),
        _ => Err(E::custom("`ts` must be a number (epoch milliseconds)")),
    }
}

/// A `values` field: an object (the `{ts, values}` form) or any other value (a flat key
/// that happens to be named `values`).
enum ValuesField {
    Map(Values),
    Other(Value),
}

impl<'de> Deserialize<'de> for ValuesField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ValuesField;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ValuesField, A::Error> {
                let mut values = Values::new();
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    values.insert(k, v);
                }
                Ok(ValuesField::Map(values))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<ValuesField, A::Error> {
                let v = serde_json::Value::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
                Ok(ValuesField::Other(Value::Json(v)))
            }
            fn visit_bool<E>(self, v: bool) -> Result<ValuesField, E> {
                Ok(ValuesField::Other(Value::Bool(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<ValuesField, E> {
                Ok(ValuesField::Other(Value::Integer(v)))
            }
            fn visit_u64<E>(self, v: u64) -> Result<ValuesField, E> {
                Ok(ValuesField::Other(
                    i64::try_from(v).map_or(Value::Float(v as f64), Value::Integer),
                ))
            }
            fn visit_f64<E>(self, v: f64) -> Result<ValuesField, E> {
                Ok(ValuesField::Other(Value::Float(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<ValuesField, E> {
                Ok(ValuesField::Other(Value::String(v.to_owned())))
            }
            fn visit_unit<E>(self) -> Result<ValuesField, E> {
                Ok(ValuesField::Other(Value::Json(serde_json::Value::Null)))
            }
        }
        d.deserialize_any(V)
    }
}

fn visit_item<'de, A: MapAccess<'de>>(mut map: A) -> Result<Sample, A::Error> {
    let mut item = Sample {
        ts_ms: TS_ABSENT,
        values: Values::new(),
    };
    while let Some(key) = map.next_key::<Cow<'de, str>>()? {
        match key.as_ref() {
            "ts" => item.ts_ms = ts_of(map.next_value()?)?,
            "values" => match map.next_value()? {
                ValuesField::Map(v) if item.values.is_empty() => item.values = v,
                ValuesField::Map(v) => item.values.extend(v),
                ValuesField::Other(v) => {
                    item.values.insert("values".to_owned(), v);
                }
            },
            _ => {
                let v = map.next_value()?;
                item.values.insert(key.into_owned(), v);
            }
        }
    }
    Ok(item)
}

/// One telemetry item.
struct Item(Sample);

impl<'de> Deserialize<'de> for Item {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ItemVisitor;
        impl<'de> Visitor<'de> for ItemVisitor {
            type Value = Item;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a telemetry object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Item, A::Error> {
                visit_item(map).map(Item)
            }
        }
        d.deserialize_map(ItemVisitor)
    }
}

/// One item or an array of items.
struct Items(Vec<Sample>);

impl<'de> Deserialize<'de> for Items {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ItemsVisitor;
        impl<'de> Visitor<'de> for ItemsVisitor {
            type Value = Items;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a telemetry object or an array of them")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Items, A::Error> {
                Ok(Items(vec![visit_item(map)?]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Items, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(1).min(64));
                while let Some(Item(item)) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Items(items))
            }
        }
        d.deserialize_any(ItemsVisitor)
    }
}

impl Items {
    /// Resolves timestamps, drops empty items and enforces the limits.
    fn into_samples(self, received_ms: i64, limits: &Limits) -> Result<Vec<Sample>, Reject> {
        let mut samples = self.0;
        limits.check_items("samples", samples.len())?;
        samples.retain(|s| !s.values.is_empty());
        for s in &mut samples {
            limits.check_values(&s.values)?;
            if s.ts_ms == TS_ABSENT {
                s.ts_ms = received_ms;
            }
        }
        Ok(samples)
    }
}

/// Reads device-API telemetry (`v1/devices/me/telemetry`) into samples. Refuses a message
/// with no values at all.
fn parse_items(payload: &[u8], received_ms: i64, limits: &Limits) -> Result<Vec<Sample>, Reject> {
    limits.check_payload(payload)?;
    let items: Items =
        serde_json::from_slice(payload).map_err(|e| Reject::from_json(&e, "telemetry"))?;
    let samples = items.into_samples(received_ms, limits)?;
    if samples.is_empty() {
        return Err(Reject::EmptyData);
    }
    Ok(samples)
}

/// Reads a payload that may be empty (meaning `{}`), for requests whose fields are all
/// optional.
fn json_or_empty(payload: &[u8], what: &'static str) -> Result<serde_json::Value, Reject> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Value::Object(Default::default()));
    }
    serde_json::from_slice(payload).map_err(|e| Reject::from_json(&e, what))
}

/// Reads a list of attribute keys given as a comma-separated string (`"a,b"`) or an array
/// of strings. `None` when the field is absent or null.
fn key_list(v: Option<&serde_json::Value>, field: &str) -> Result<Option<Vec<String>>, Reject> {
    let wrong = || Reject::WrongType {
        field: field.to_owned(),
        expected: "a comma-separated string or an array of strings",
    };
    match v {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(
            s.split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(str::to_owned)
                .collect(),
        )),
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .map(|k| k.as_str().map(str::to_owned).ok_or_else(wrong))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(wrong()),
    }
}

/// ThingsBoard's rule for attribute requests: with neither scope named, both are asked
/// for in full; with one named, only that one.
fn selections(
    client: Option<Vec<String>>,
    shared: Option<Vec<String>>,
) -> (KeySelection, KeySelection) {
    match (client, shared) {
        (None, None) => (KeySelection::All, KeySelection::All),
        (c, s) => (
            c.map_or(KeySelection::Nothing, KeySelection::Keys),
            s.map_or(KeySelection::Nothing, KeySelection::Keys),
        ),
    }
}

/// Reads a string field that may be absent.
fn opt_str(obj: &serde_json::Value, field: &str) -> Result<Option<String>, Reject> {
    match obj.get(field) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Reject::WrongType {
            field: field.to_owned(),
            expected: "a string",
        }),
    }
}

/// Reads a non-negative integer field that may be absent.
fn opt_u64(obj: &serde_json::Value, field: &str) -> Result<Option<u64>, Reject> {
    match obj.get(field) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| Reject::WrongType {
            field: field.to_owned(),
            expected: "a non-negative integer",
        }),
    }
}

/// Refuses a top-level payload that is not a JSON object.
fn expect_object(v: &serde_json::Value, what: &str) -> Result<(), Reject> {
    if v.is_object() {
        Ok(())
    } else {
        Err(Reject::WrongType {
            field: what.to_owned(),
            expected: "a JSON object",
        })
    }
}

/// The parameters of a claim request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClaimRequest {
    /// Secret the claiming user must present.
    pub secret_key: Option<String>,
    /// Claiming window in ms.
    pub duration_ms: Option<u64>,
}

impl ClaimRequest {
    fn from_json(v: &serde_json::Value, what: &str) -> Result<Self, Reject> {
        expect_object(v, what)?;
        Ok(ClaimRequest {
            secret_key: opt_str(v, "secretKey")?,
            duration_ms: opt_u64(v, "durationMs")?,
        })
    }

    fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        if let Some(s) = &self.secret_key {
            m.insert("secretKey".into(), s.clone().into());
        }
        if let Some(d) = self.duration_ms {
            m.insert("durationMs".into(), d.into());
        }
        serde_json::Value::Object(m)
    }
}

/// Converts values to a JSON object.
fn values_json(values: &Values) -> serde_json::Value {
    serde_json::Value::Object(
        values
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_json()))
            .collect(),
    )
}

/// Converts a JSON object to values (anything else: empty).
fn json_values(v: &serde_json::Value) -> Values {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), Value::from_json(v.clone())))
                .collect()
        })
        .unwrap_or_default()
}

/// Encodes samples the way a device sends them: `[{"ts": .., "values": {..}}, ...]`.
pub fn encode_samples(samples: &[Sample]) -> serde_json::Value {
    serde_json::Value::Array(
        samples
            .iter()
            .map(|s| serde_json::json!({"ts": s.ts_ms, "values": values_json(&s.values)}))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ReasonCode;

    const NOW: i64 = 1_700_000_000_000;

    fn items(s: &str) -> Result<Vec<Sample>, Reject> {
        parse_items(s.as_bytes(), NOW, &Limits::default())
    }

    #[test]
    fn the_four_telemetry_shapes() {
        let flat = items(r#"{"temperature": 42, "active": false}"#).unwrap();
        assert_eq!(flat.len(), 1);
        assert_eq!(flat[0].ts_ms, NOW);
        assert_eq!(flat[0].values["temperature"], Value::Integer(42));
        assert_eq!(flat[0].values["active"], Value::Bool(false));

        let ts =
            items(r#"{"ts": 1451649600512, "values": {"key1": "value1", "key2": 2.5}}"#).unwrap();
        assert_eq!(ts[0].ts_ms, 1_451_649_600_512);
        assert_eq!(ts[0].values.len(), 2);
        assert!(!ts[0].values.contains_key("ts"));

        let arr =
            items(r#"[{"ts": 1, "values": {"a": 1}}, {"ts": 2, "values": {"a": 2}}]"#).unwrap();
        assert_eq!(arr.iter().map(|s| s.ts_ms).collect::<Vec<_>>(), [1, 2]);

        let arr_flat = items(r#"[{"a": 1}, {"b": "x"}]"#).unwrap();
        assert_eq!(arr_flat.len(), 2);
        assert!(arr_flat.iter().all(|s| s.ts_ms == NOW));
    }

    #[test]
    fn values_without_ts_never_store_a_key_named_values() {
        let s = items(r#"{"values": {"temperature": 5}}"#).unwrap();
        assert_eq!(s[0].ts_ms, NOW);
        assert_eq!(s[0].values.keys().collect::<Vec<_>>(), ["temperature"]);
        // A scalar `values` is just a key.
        let s = items(r#"{"values": 5}"#).unwrap();
        assert_eq!(s[0].values["values"], Value::Integer(5));
    }

    #[test]
    fn json_values_and_floats() {
        let s = items(r#"{"obj": {"a": [1, 2]}, "f": 1.0, "big": 12345678901234}"#).unwrap();
        assert_eq!(
            s[0].values["obj"],
            Value::Json(serde_json::json!({"a": [1, 2]}))
        );
        assert_eq!(s[0].values["f"], Value::Float(1.0));
        assert_eq!(s[0].values["big"], Value::Integer(12_345_678_901_234));
    }

    #[test]
    fn telemetry_errors() {
        let code = |s: &str| items(s).unwrap_err().code();
        assert_eq!(code("{"), ReasonCode::MalformedJson);
        assert_eq!(code("{}"), ReasonCode::EmptyData);
        assert_eq!(code("[]"), ReasonCode::EmptyData);
        assert_eq!(code("[{}]"), ReasonCode::EmptyData);
        assert_eq!(code("5"), ReasonCode::WrongType);
        assert_eq!(code("[5]"), ReasonCode::WrongType);
        assert_eq!(
            code(r#"{"ts": "yesterday", "values": {"a": 1}}"#),
            ReasonCode::WrongType
        );
        let l = Limits {
            max_items: 2,
            ..Limits::default()
        };
        assert_eq!(
            parse_items(b"[{\"a\":1},{\"a\":1},{\"a\":1}]", NOW, &l)
                .unwrap_err()
                .code(),
            ReasonCode::TooManyItems
        );
    }

    #[test]
    fn key_lists() {
        assert_eq!(
            key_list(Some(&serde_json::json!("a, b,,c")), "k").unwrap(),
            Some(vec!["a".to_string(), "b".into(), "c".into()])
        );
        assert_eq!(
            key_list(Some(&serde_json::json!(["a"])), "k").unwrap(),
            Some(vec!["a".to_string()])
        );
        assert_eq!(key_list(None, "k").unwrap(), None);
        assert!(key_list(Some(&serde_json::json!(5)), "k").is_err());
        assert!(key_list(Some(&serde_json::json!([5])), "k").is_err());
    }
}
