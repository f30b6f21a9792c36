//! Typed attribute / telemetry values.
//!
//! A [`Value`] serializes as plain JSON and reads back as the same variant: integers are
//! written without a fraction, floats always with one (`2.0`), so the type survives the trip
//! through Kafka without a type tag and a topic stays readable with `kcat`.

use std::fmt;

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The values of one sample, by key: a small map kept as a vector sorted by key.
///
/// Samples carry a handful of keys (at most [`crate::Limits::max_attributes`]); a sorted
/// vector costs one allocation where a `BTreeMap` allocates a large node, and it iterates
/// in key order, so serialization is deterministic. When the input repeats a key, the last
/// occurrence wins, as with any JSON object reader.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Values(Vec<(String, Value)>);

impl Values {
    /// An empty map.
    pub fn new() -> Self {
        Values(Vec::new())
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn find(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.find(key).ok().map(|i| &self.0[i].1)
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_ok()
    }

    /// Sets `key`, returning the value it replaced.
    pub fn insert(&mut self, key: impl Into<String>, value: Value) -> Option<Value> {
        let key = key.into();
        match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (key, value));
                None
            }
        }
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        self.find(key).ok().map(|i| self.0.remove(i).1)
    }

    /// Entries in key order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &Value)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Keys in order.
    pub fn keys(&self) -> impl ExactSizeIterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_str())
    }

    /// Values in key order.
    pub fn values(&self) -> impl ExactSizeIterator<Item = &Value> {
        self.0.iter().map(|(_, v)| v)
    }

    /// Builds from entries in any order; for a repeated key the last entry wins.
    fn from_unsorted(mut entries: Vec<(String, Value)>) -> Self {
        if !entries.is_sorted_by(|a, b| a.0 < b.0) {
            // A stable sort keeps input order among equal keys; of each run of equal keys
            // the last one is kept (moved into the slot `dedup_by` retains).
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            entries.dedup_by(|later, kept| {
                let same = later.0 == kept.0;
                if same {
                    std::mem::swap(later, kept);
                }
                same
            });
        }
        Values(entries)
    }
}

impl std::ops::Index<&str> for Values {
    type Output = Value;
    /// Panics when the key is absent, like `BTreeMap`'s index.
    fn index(&self, key: &str) -> &Value {
        match self.get(key) {
            Some(v) => v,
            None => panic!("no value for key {key:?}"),
        }
    }
}

impl Extend<(String, Value)> for Values {
    fn extend<I: IntoIterator<Item = (String, Value)>>(&mut self, iter: I) {
        for (k, v) in iter {
            self.insert(k, v);
        }
    }
}

impl FromIterator<(String, Value)> for Values {
    fn from_iter<I: IntoIterator<Item = (String, Value)>>(iter: I) -> Self {
        Values::from_unsorted(iter.into_iter().collect())
    }
}

impl<const N: usize> From<[(String, Value); N]> for Values {
    fn from(entries: [(String, Value); N]) -> Self {
        Values::from_unsorted(entries.into())
    }
}

impl IntoIterator for Values {
    type Item = (String, Value);
    type IntoIter = std::vec::IntoIter<(String, Value)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a Values {
    type Item = (&'a str, &'a Value);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (String, Value)>,
        fn(&'a (String, Value)) -> (&'a str, &'a Value),
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }
}

impl Serialize for Values {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

impl<'de> Deserialize<'de> for Values {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Values;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Values, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(4).min(256));
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    entries.push(entry);
                }
                Ok(Values::from_unsorted(entries))
            }
        }
        d.deserialize_map(V)
    }
}

/// One typed value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A JSON number without fraction or exponent that fits in an `i64`.
    Integer(i64),
    /// Any other JSON number.
    Float(f64),
    /// A string.
    String(String),
    /// A boolean.
    Bool(bool),
    /// A JSON object, array or `null`. Never a number, string or bool: those have their own
    /// variants, and [`Value::from_json`] picks them.
    Json(serde_json::Value),
}

impl Value {
    /// The name of the value's type, as used in attribute definitions and errors.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Integer(_) | Value::Float(_) => "number",
            Value::String(_) => "string",
            Value::Bool(_) => "boolean",
            Value::Json(_) => "json",
        }
    }

    /// Converts any JSON value, choosing the most specific variant.
    pub fn from_json(v: serde_json::Value) -> Self {
        match v {
            serde_json::Value::Bool(b) => Value::Bool(b),
            serde_json::Value::String(s) => Value::String(s),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Value::Integer(i),
                None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            other => Value::Json(other),
        }
    }

    /// Converts back to a JSON value (a non-finite float becomes `null`, as JSON has none).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Integer(i) => (*i).into(),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            Value::String(s) => serde_json::Value::String(s.clone()),
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Json(j) => j.clone(),
        }
    }

    /// The size the value occupies, in bytes, as limits count it: the string length for
    /// strings, the serialized JSON length for JSON values, 8 for numbers and 1 for bools.
    pub fn size_bytes(&self) -> usize {
        match self {
            Value::Integer(_) | Value::Float(_) => 8,
            Value::Bool(_) => 1,
            Value::String(s) => s.len(),
            Value::Json(j) => json_len(j),
        }
    }
}

/// Serialized length of a JSON value without allocating the text.
fn json_len(v: &serde_json::Value) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Counter(0);
    // Writing a `serde_json::Value` to an infallible writer cannot fail.
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Integer(v)
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::String(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::String(v)
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Integer(i) => s.serialize_i64(*i),
            Value::Float(f) if f.is_finite() => s.serialize_f64(*f),
            Value::Float(_) => s.serialize_unit(),
            Value::String(v) => s.serialize_str(v),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Json(j) => j.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Integer(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(i64::try_from(v).map_or(Value::Float(v as f64), Value::Integer))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Json(serde_json::Value::Null))
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Json(serde_json::Value::Null))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Value, A::Error> {
        let v = serde_json::Value::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
        Ok(Value::Json(v))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Value, A::Error> {
        let v = serde_json::Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
        Ok(Value::Json(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn json_types_map_to_variants() {
        assert_eq!(parse("72"), Value::Integer(72));
        assert_eq!(parse("-3"), Value::Integer(-3));
        assert_eq!(parse("72.5"), Value::Float(72.5));
        assert_eq!(parse("1e3"), Value::Float(1000.0));
        assert_eq!(
            parse("18446744073709551615"),
            Value::Float(18446744073709551615.0)
        );
        assert_eq!(parse("\"x\""), Value::String("x".into()));
        assert_eq!(parse("true"), Value::Bool(true));
        assert_eq!(parse("null"), Value::Json(serde_json::Value::Null));
        assert_eq!(parse("[1,2]"), Value::Json(serde_json::json!([1, 2])));
        assert_eq!(
            parse("{\"a\":{\"b\":1}}"),
            Value::Json(serde_json::json!({"a":{"b":1}}))
        );
    }

    #[test]
    fn serialization_keeps_the_variant() {
        for v in [
            Value::Integer(7),
            Value::Float(7.0),
            Value::Float(-0.5),
            Value::Float(1e300),
            Value::String("7".into()),
            Value::Bool(false),
            Value::Json(serde_json::json!({"k": [1, "a", null]})),
            Value::Json(serde_json::Value::Null),
        ] {
            let text = serde_json::to_string(&v).unwrap();
            assert_eq!(parse(&text), v, "{text}");
            assert_eq!(Value::from_json(v.to_json()), v);
        }
        assert_eq!(
            serde_json::to_string(&Value::Float(f64::NAN)).unwrap(),
            "null"
        );
    }

    #[test]
    fn values_map_semantics() {
        let mut v: Values = serde_json::from_str(r#"{"b": 1, "a": 2, "b": 3}"#).unwrap();
        assert_eq!(v.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(v["b"], Value::Integer(3), "last duplicate wins");
        assert_eq!(v.insert("c", Value::Bool(true)), None);
        assert_eq!(v.insert("a", Value::Bool(false)), Some(Value::Integer(2)));
        assert_eq!(v.remove("b"), Some(Value::Integer(3)));
        assert!(!v.contains_key("b") && v.get("zz").is_none());
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"a":false,"c":true}"#
        );
        let from_iter: Values = [
            ("z".to_string(), Value::Integer(1)),
            ("y".to_string(), Value::Integer(2)),
        ]
        .into_iter()
        .collect();
        assert_eq!(from_iter.keys().collect::<Vec<_>>(), ["y", "z"]);
        assert!(serde_json::from_str::<Values>("[1]").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(Value::String("abc".into()).size_bytes(), 3);
        assert_eq!(Value::Json(serde_json::json!({"a":1})).size_bytes(), 7);
        assert_eq!(Value::Integer(1).size_bytes(), 8);
    }
}
