//! Identifier newtypes: tenants, devices, device names, messages and request correlation ids.
//!
//! Ids that end up in MQTT topics or Kafka keys are validated on construction so that a
//! `DeviceId` can always be put into a topic without escaping, and two ids that look
//! alike are one id: tenant and device ids are 1 to [`MAX_ID_BYTES`] ASCII letters,
//! digits and `._-:@~`. Device names (ThingsBoard gateways name their devices) may be any
//! printable text: no MQTT wildcards, no control, bidirectional or invisible characters,
//! not blank nor edged with white space, and normalized to NFC, so one name typed two
//! ways is one device ([`ID_RULES`]).

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest tenant or device id accepted, in bytes.
pub const MAX_ID_BYTES: usize = 128;

/// The longest device *name* accepted (ThingsBoard gateway devices are named), in bytes.
pub const MAX_NAME_BYTES: usize = 255;

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The id is the empty string.
    #[error("id is empty")]
    Empty,
    /// The id is longer than allowed.
    #[error("id is {len} bytes long, at most {max} are allowed")]
    TooLong {
        /// Length of the offered id in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The id contains a character outside the id alphabet (tenant and device ids), or
    /// one no name may contain (MQTT wildcards, control, bidirectional and invisible
    /// characters).
    #[error("{0:?} is not allowed here ({ID_RULES})")]
    BadChar(char),
    /// A name that is blank, or starts or ends with white space.
    #[error("a name may not be blank, nor start or end with white space")]
    Blank,
}

/// The id rules, as error messages and API documents state them.
pub const ID_RULES: &str = "tenant and device ids: 1 to 128 ASCII letters, digits and . _ - : @ ~; \
device names: 1 to 255 bytes of printable text, without + #, control, bidirectional or \
invisible characters, not blank nor edged with spaces";

/// Whether `c` may appear in a tenant or device id: ASCII letters, digits and `._-:@~`.
/// Ids go into MQTT topic levels, Kafka keys and URL paths unescaped, and two ids that
/// look alike are the same id.
fn id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '@' | '~')
}

/// Whether `c` may appear in a device name: not an MQTT wildcard, not a control
/// character, not a bidirectional control (which can make text read backwards) and not
/// an invisible one (zero-width and format characters that make two names look alike).
fn name_char(c: char) -> bool {
    !(c == '+'
        || c == '#'
        || c.is_control()
        || matches!(c,
            '\u{00ad}' | '\u{061c}' | '\u{180e}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}'
            | '\u{2060}'..='\u{206f}' | '\u{feff}' | '\u{fff9}'..='\u{fffb}'))
}

fn check_id(s: &str, max: usize, name: bool) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > max {
        return Err(IdError::TooLong { len: s.len(), max });
    }
    if name {
        if let Some(c) = s.chars().find(|&c| !name_char(c)) {
            return Err(IdError::BadChar(c));
        }
        if s.trim() != s || s.trim().is_empty() {
            return Err(IdError::Blank);
        }
        return Ok(());
    }
    match s.chars().find(|&c| !id_char(c)) {
        Some(c) => Err(IdError::BadChar(c)),
        None => Ok(()),
    }
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $max:expr, $is_name:expr) => {
        $(#[$doc])*
        ///
        /// Shared, immutable text: cloning is a reference-count increment, so ids can be
        /// copied into every envelope and cache entry cheaply.
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Arc<str>);

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl $name {
            /// Validates and wraps `s` (a name normalized to NFC first).
            pub fn new(s: impl AsRef<str> + Into<Arc<str>>) -> Result<Self, IdError> {
                if $is_name {
                    use unicode_normalization::{IsNormalized, UnicodeNormalization, is_nfc_quick};
                    if is_nfc_quick(s.as_ref().chars()) != IsNormalized::Yes {
                        let nfc: String = s.as_ref().nfc().collect();
                        check_id(&nfc, $max, true)?;
                        return Ok(Self(nfc.into()));
                    }
                }
                check_id(s.as_ref(), $max, $is_name)?;
                Ok(Self(s.into()))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<&str> for $name {
            type Error = IdError;
            fn try_from(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::new(s.as_ref()).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_id!(
    /// A tenant: a Losant application. Device ids are unique within one tenant.
    TenantId,
    MAX_ID_BYTES,
    false
);
string_id!(
    /// A device's stable id within its tenant (Losant device id, or the id the registry
    /// assigned to a ThingsBoard device). Gateways are devices too.
    DeviceId,
    MAX_ID_BYTES,
    false
);
string_id!(
    /// The name a ThingsBoard gateway gives a device behind it. The registry maps
    /// (tenant, name) to a stable [`DeviceId`]; names may contain `/` and spaces.
    DeviceName,
    MAX_NAME_BYTES,
    true
);

/// A 128-bit message id, written as 32 lowercase hex digits. It names one inbound MQTT
/// publish or HTTP request; the envelopes made from it are told apart by
/// [`Envelope::part`](crate::Envelope::part).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(pub u128);

impl MessageId {
    /// A time-ordered id in the UUIDv7 layout from a unix time in milliseconds and 74
    /// random bits supplied by the caller (this crate does no I/O, so it takes no RNG).
    pub fn from_parts(unix_ms: u64, random: u128) -> Self {
        let ms = u128::from(unix_ms & 0xFFFF_FFFF_FFFF);
        let rand_a = (random >> 62) & 0xFFF;
        let rand_b = random & ((1u128 << 62) - 1);
        Self((ms << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b)
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

impl std::str::FromStr for MessageId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let hex: String = s.chars().filter(|&c| c != '-').collect();
        if hex.len() != 32 {
            return Err(IdError::TooLong {
                len: hex.len(),
                max: 32,
            });
        }
        u128::from_str_radix(&hex, 16).map(Self).map_err(|_| {
            IdError::BadChar(hex.chars().find(|c| !c.is_ascii_hexdigit()).unwrap_or('?'))
        })
    }
}

impl Serialize for MessageId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MessageId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A request id chosen by a client, echoed back exactly as it came: ThingsBoard's request
/// ids in topics (`.../request/{id}`) and the `id` fields of gateway requests, which real
/// gateways send as integers and some as strings.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CorrelationId {
    /// A numeric id (what ThingsBoard's own clients send).
    Int(i64),
    /// Any other id, kept verbatim.
    Str(String),
}

impl CorrelationId {
    /// Reads an id from a topic level: digits become [`CorrelationId::Int`] (so that
    /// `request/7` and `{"id":7}` correlate), anything else stays a string.
    pub fn from_topic_level(level: &str) -> Self {
        match level.parse::<i64>() {
            Ok(n) if n.to_string() == level => Self::Int(n),
            _ => Self::Str(level.to_owned()),
        }
    }
}

impl fmt::Display for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Int(n) => write!(f, "{n}"),
            Self::Str(s) => f.write_str(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_are_topic_safe() {
        assert!(DeviceId::new("575ecf887ae143cd83dc4aa2").is_ok());
        assert_eq!(DeviceId::new(""), Err(IdError::Empty));
        assert_eq!(DeviceId::new("a/b"), Err(IdError::BadChar('/')));
        assert_eq!(DeviceId::new("a+"), Err(IdError::BadChar('+')));
        assert_eq!(DeviceId::new("#"), Err(IdError::BadChar('#')));
        assert_eq!(DeviceId::new("a\nb"), Err(IdError::BadChar('\n')));
        assert!(matches!(
            DeviceId::new("x".repeat(MAX_ID_BYTES + 1)),
            Err(IdError::TooLong { .. })
        ));
        // Names behind ThingsBoard gateways may contain slashes and spaces.
        assert!(DeviceName::new("Building 1/Floor 2 sensor").is_ok());
        assert!(DeviceName::new("").is_err());
        // Non-ASCII names are fine; non-ASCII control characters are not.
        assert!(DeviceName::new("Gerät 1/Küche").is_ok());
        assert_eq!(
            DeviceName::new("Gerät\u{85}"),
            Err(IdError::BadChar('\u{85}'))
        );
    }

    /// Issue 22, finding 6: ids that look blank, read backwards or look like others are
    /// refused; a name typed two ways is one name.
    #[test]
    fn ids_that_look_like_others_are_refused_and_names_are_normalized() {
        for (bad, c) in [
            (" ", ' '),
            ("dev\u{202e}1", '\u{202e}'),
            // Cyrillic "е" and "о" in "dеvicе-1", "sensоr".
            ("d\u{0435}vice-1", '\u{0435}'),
            ("sens\u{043e}r", '\u{043e}'),
            ("dev\u{200b}1", '\u{200b}'),
            ("dev 1", ' '),
        ] {
            assert_eq!(DeviceId::new(bad), Err(IdError::BadChar(c)), "{bad:?}");
            assert_eq!(TenantId::new(bad), Err(IdError::BadChar(c)), "{bad:?}");
        }
        for ok in [
            "thermo-1",
            "575ecf887ae143cd83dc4aa2",
            "a.b_c:d@e~f",
            "tb-0123abcd",
        ] {
            assert!(DeviceId::new(ok).is_ok(), "{ok}");
        }
        // Names: any printable text, but not blank, edged with spaces, backwards or hidden.
        assert_eq!(DeviceName::new("   "), Err(IdError::Blank));
        assert_eq!(DeviceName::new(" Pump 1"), Err(IdError::Blank));
        assert_eq!(DeviceName::new("Pump 1 "), Err(IdError::Blank));
        assert_eq!(
            DeviceName::new("Pump\u{202e}1"),
            Err(IdError::BadChar('\u{202e}'))
        );
        assert_eq!(
            DeviceName::new("Pump\u{200b}1"),
            Err(IdError::BadChar('\u{200b}'))
        );
        assert!(
            DeviceName::new("Насос 1").is_ok(),
            "Cyrillic names are names"
        );
        // "Café" composed and decomposed: one name.
        let composed = DeviceName::new("Caf\u{e9}").unwrap();
        let decomposed = DeviceName::new("Cafe\u{301}").unwrap();
        assert_eq!(composed, decomposed);
        assert_eq!(decomposed.as_str(), "Caf\u{e9}");
    }

    #[test]
    fn deserializing_an_id_validates_it() {
        assert!(serde_json::from_str::<DeviceId>("\"ok\"").is_ok());
        assert!(serde_json::from_str::<DeviceId>("\"no/slash\"").is_err());
    }

    #[test]
    fn message_id_round_trips_and_is_uuid_v7_shaped() {
        let id = MessageId::from_parts(1_700_000_000_000, 0x1234_5678_9abc_def0_1234_5678_9abc);
        let s = id.to_string();
        assert_eq!(s.len(), 32);
        assert_eq!(&s[12..13], "7", "version nibble");
        assert!(matches!(&s[16..17], "8" | "9" | "a" | "b"), "variant bits");
        assert_eq!(s.parse::<MessageId>(), Ok(id));
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<MessageId>(&json).unwrap(), id);
        // Hyphenated UUID text is accepted too.
        let hyph = format!(
            "{}-{}-{}-{}-{}",
            &s[0..8],
            &s[8..12],
            &s[12..16],
            &s[16..20],
            &s[20..]
        );
        assert_eq!(hyph.parse::<MessageId>(), Ok(id));
        assert!("xyz".parse::<MessageId>().is_err());
        assert!("g".repeat(32).parse::<MessageId>().is_err());
    }

    #[test]
    fn correlation_ids_keep_their_form() {
        assert_eq!(CorrelationId::from_topic_level("7"), CorrelationId::Int(7));
        assert_eq!(
            CorrelationId::from_topic_level("07"),
            CorrelationId::Str("07".into())
        );
        assert_eq!(
            CorrelationId::from_topic_level("abc"),
            CorrelationId::Str("abc".into())
        );
        assert_eq!(serde_json::to_string(&CorrelationId::Int(3)).unwrap(), "3");
        assert_eq!(
            serde_json::to_string(&CorrelationId::Str("x".into())).unwrap(),
            "\"x\""
        );
        assert_eq!(
            serde_json::from_str::<CorrelationId>("12").unwrap(),
            CorrelationId::Int(12)
        );
    }
}
