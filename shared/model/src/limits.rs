//! Size and count limits every parser enforces (not just documents).

use serde::{Deserialize, Serialize};

use crate::reject::Reject;
use crate::value::{Value, Values};

/// Limits applied while parsing device payloads. Defaults follow Losant's published ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload_bytes: 256 * 1024,
            max_attributes: 256,
            max_key_bytes: 255,
            max_value_bytes: 64 * 1024,
            max_items: 1000,
        }
    }
}

impl Limits {
    /// Refuses a payload larger than [`Limits::max_payload_bytes`].
    pub fn check_payload(&self, payload: &[u8]) -> Result<(), Reject> {
        if payload.len() > self.max_payload_bytes {
            return Err(Reject::PayloadTooLarge {
                size: payload.len(),
                limit: self.max_payload_bytes,
            });
        }
        Ok(())
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
    }
}
