//! Size and count limits every parser enforces (not just documents).

use serde::{Deserialize, Serialize};

use crate::reject::Reject;
use crate::value::{Value, Values};

/// Limits applied while parsing device payloads. Defaults follow Losant's published ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest accepted payload, in bytes (Losant and ThingsBoard: 256 KB).
    pub max_payload_bytes: usize,
    /// Most attributes in one sample (Losant: 256 per device).
    pub max_attributes: usize,
    /// Longest attribute key, in bytes.
    pub max_key_bytes: usize,
    /// Largest single value (string length or serialized JSON), in bytes.
    pub max_value_bytes: usize,
    /// Most devices named in one gateway message, and most samples in one message.
    pub max_items: usize,
    /// Deepest nesting of objects and arrays in a JSON document (a payload, a command
    /// payload, a JSON value), 1 to [`Limits::MAX_JSON_DEPTH`]. The canonical envelope
    /// wraps a payload in a few more levels, and every reader downstream must still decode
    /// it: deeper input is refused where it enters, never acknowledged and then lost.
    pub max_json_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload_bytes: 256 * 1024,
            max_attributes: 256,
            max_key_bytes: 255,
            max_value_bytes: 64 * 1024,
            max_items: 1000,
            max_json_depth: 32,
        }
    }
}

impl Limits {
    /// The highest [`Limits::max_json_depth`] a configuration may set. serde_json refuses
    /// documents deeper than 128 levels, and the envelope and delivery formats add fewer
    /// than 16 around a payload, so every record made from accepted input decodes.
    pub const MAX_JSON_DEPTH: usize = 100;

    /// Checks the settings: `Err` names the field and what is wrong with it.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=Self::MAX_JSON_DEPTH).contains(&self.max_json_depth) {
            return Err(format!(
                "limits.max_json_depth = {}: must be between 1 and {}",
                self.max_json_depth,
                Self::MAX_JSON_DEPTH
            ));
        }
        Ok(())
    }

    /// Refuses a payload larger than [`Limits::max_payload_bytes`] or, read as JSON,
    /// nesting deeper than [`Limits::max_json_depth`].
    pub fn check_payload(&self, payload: &[u8]) -> Result<(), Reject> {
        if payload.len() > self.max_payload_bytes {
            return Err(Reject::PayloadTooLarge {
                size: payload.len(),
                limit: self.max_payload_bytes,
            });
        }
        if json_text_depth(payload) > self.max_json_depth {
            return Err(self.too_deep());
        }
        Ok(())
    }

    /// Refuses a parsed JSON value nesting deeper than [`Limits::max_json_depth`].
    pub fn check_json(&self, v: &serde_json::Value) -> Result<(), Reject> {
        if json_value_depth(v) > self.max_json_depth {
            return Err(self.too_deep());
        }
        Ok(())
    }

    fn too_deep(&self) -> Reject {
        Reject::TooDeep {
            limit: self.max_json_depth,
        }
    }

    /// Refuses more than [`Limits::max_items`] items of one kind in a message.
    pub fn check_items(&self, what: &'static str, count: usize) -> Result<(), Reject> {
        if count > self.max_items {
            return Err(Reject::TooManyItems {
                what,
                count,
                limit: self.max_items,
            });
        }
        Ok(())
    }

    /// Checks a set of values: attribute count, key sizes and value sizes.
    pub fn check_values(&self, values: &Values) -> Result<(), Reject> {
        if values.len() > self.max_attributes {
            return Err(Reject::TooManyAttributes {
                count: values.len(),
                limit: self.max_attributes,
            });
        }
        for (k, v) in values {
            self.check_key(k)?;
            self.check_value(k, v)?;
        }
        Ok(())
    }

    /// Refuses an empty key or one longer than [`Limits::max_key_bytes`].
    pub fn check_key(&self, key: &str) -> Result<(), Reject> {
        if key.is_empty() || key.len() > self.max_key_bytes {
            let mut shown: String = key.chars().take(self.max_key_bytes.min(64)).collect();
            if shown.len() < key.len() {
                shown.push('…');
            }
            return Err(Reject::BadKey {
                key: shown,
                limit: self.max_key_bytes,
            });
        }
        Ok(())
    }

    fn check_value(&self, key: &str, v: &Value) -> Result<(), Reject> {
        if let Value::Json(j) = v {
            self.check_json(j)?;
        }
        let size = v.size_bytes();
        if size > self.max_value_bytes {
            return Err(Reject::ValueTooLarge {
                key: key.to_owned(),
                size,
                limit: self.max_value_bytes,
            });
        }
        Ok(())
    }
}

/// The deepest nesting of `[` and `{` in a JSON text, brackets inside strings not counted.
/// One pass, no allocation; text that is not JSON gets a number too (the parser refuses
/// it afterwards).
pub fn json_text_depth(text: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in text {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// The nesting depth of a parsed JSON value (a scalar is 0, `[]` and `{}` are 1), found
/// without recursion.
pub fn json_value_depth(v: &serde_json::Value) -> usize {
    use serde_json::Value as J;
    let mut deepest = 0;
    let mut stack = vec![(v, 0usize)];
    while let Some((v, d)) = stack.pop() {
        match v {
            J::Array(a) => {
                deepest = deepest.max(d + 1);
                stack.extend(a.iter().map(|x| (x, d + 1)));
            }
            J::Object(o) => {
                deepest = deepest.max(d + 1);
                stack.extend(o.values().map(|x| (x, d + 1)));
            }
            _ => {}
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ReasonCode;

    #[test]
    fn limits_are_enforced() {
        let l = Limits {
            max_payload_bytes: 10,
            max_attributes: 2,
            max_key_bytes: 3,
            max_value_bytes: 4,
            max_items: 1,
            max_json_depth: 2,
        };
        assert!(l.check_payload(&[0; 10]).is_ok());
        assert_eq!(
            l.check_payload(&[0; 11]).unwrap_err().code(),
            ReasonCode::PayloadTooLarge
        );
        assert_eq!(
            l.check_items("devices", 2).unwrap_err().code(),
            ReasonCode::TooManyItems
        );

        let mut v = Values::new();
        v.insert("a", Value::String("1234".into()));
        assert!(l.check_values(&v).is_ok());
        v.insert("b", Value::String("12345".into()));
        assert_eq!(
            l.check_values(&v).unwrap_err().code(),
            ReasonCode::ValueTooLarge
        );
        v.insert("c", Value::Bool(true));
        assert_eq!(
            l.check_values(&v).unwrap_err().code(),
            ReasonCode::TooManyAttributes
        );

        let mut k = Values::new();
        k.insert("long", Value::Bool(true));
        assert_eq!(l.check_values(&k).unwrap_err().code(), ReasonCode::BadKey);
        let mut e = Values::new();
        e.insert(String::new(), Value::Bool(true));
        assert_eq!(l.check_values(&e).unwrap_err().code(), ReasonCode::BadKey);

        assert!(l.check_payload(b"[[]]").is_ok());
        assert_eq!(
            l.check_payload(b"[[[]]]").unwrap_err().code(),
            ReasonCode::TooDeep
        );
        let mut deep = Values::new();
        deep.insert("j", Value::Json(serde_json::json!([[[1]]])));
        assert_eq!(
            l.check_values(&deep).unwrap_err().code(),
            ReasonCode::TooDeep
        );
    }

    #[test]
    fn depth_counts_brackets_outside_strings_only() {
        assert_eq!(json_text_depth(b"1"), 0);
        assert_eq!(json_text_depth(br#"{"a": [1, {"b": []}]}"#), 4);
        assert_eq!(json_text_depth(br#"{"a": "[[[[{{{{"}"#), 1);
        assert_eq!(json_text_depth(br#"{"a": "\"[[[["}"#), 1);
        assert_eq!(json_text_depth(br#"["\\", [[]]]"#), 3);
        for text in [
            r#"{"a": [1, {"b": []}]}"#,
            "[[[[]]]]",
            r#"{"x": {"y": "]]"}}"#,
        ] {
            let v: serde_json::Value = serde_json::from_str(text).unwrap();
            assert_eq!(
                json_value_depth(&v),
                json_text_depth(text.as_bytes()),
                "{text}"
            );
        }
    }

    #[test]
    fn a_depth_the_envelope_cannot_carry_is_a_config_error() {
        let mut l = Limits::default();
        assert!(l.validate().is_ok());
        l.max_json_depth = 126;
        assert!(l.validate().unwrap_err().contains("limits.max_json_depth"));
        l.max_json_depth = 0;
        assert!(l.validate().is_err());
    }
}
