//! Registry change announcements: what the API publishes on `fluxgate.registry.changes`
//! after it changed the registry in the store, so that caches in fronts and validators drop
//! the entries that changed.
//!
//! A change names *what* changed, never the new contents: a cache drops the entry and reads
//! the store again on next use, so a lost or reordered announcement can only delay, never
//! corrupt (caches also expire on a TTL).

use serde::{Deserialize, Serialize};

use crate::ids::{DeviceId, TenantId};

/// One registry change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum RegistryChange {
    /// A device was created, changed, deactivated or deleted (also its peripheral policy
    /// and tags).
    Device {
        /// Tenant.
        tenant: TenantId,
        /// The device.
        device: DeviceId,
    },
    /// An access key was created, changed, deactivated or deleted.
    AccessKey {
        /// The key (public half).
        key: String,
    },
    /// A ThingsBoard device token was created or revoked.
    DeviceToken {
        /// SHA-256 of the token, hex.
        token_hash: String,
    },
    /// A device's attribute definitions changed.
    AttributeDefs {
        /// Tenant.
        tenant: TenantId,
        /// The device.
        device: DeviceId,
    },
    /// An application (its limits, TTL) changed or was deleted.
    Application {
        /// Tenant.
        tenant: TenantId,
    },
}

impl RegistryChange {
    /// Serializes to the JSON bytes put on the bus.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a change from bus bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, crate::EnvelopeError> {
        Ok(serde_json::from_slice(bytes)?)
    }

    /// The record key: changes to one thing stay ordered (and compact to the last one).
    pub fn key(&self) -> String {
        match self {
            RegistryChange::Device { tenant, device }
            | RegistryChange::AttributeDefs { tenant, device } => {
                format!("{tenant}/{device}")
            }
            RegistryChange::AccessKey { key } => format!("key/{key}"),
            RegistryChange::DeviceToken { token_hash } => format!("token/{token_hash}"),
            RegistryChange::Application { tenant } => format!("app/{tenant}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_round_trip_and_key_by_subject() {
        let d = RegistryChange::Device {
            tenant: TenantId::new("t").unwrap(),
            device: DeviceId::new("d").unwrap(),
        };
        let text = String::from_utf8(d.to_bytes()).unwrap();
        assert_eq!(text, r#"{"kind":"device","tenant":"t","device":"d"}"#);
        assert_eq!(RegistryChange::from_bytes(text.as_bytes()).unwrap(), d);
        assert_eq!(d.key(), "t/d");
        let k = RegistryChange::AccessKey { key: "k1".into() };
        assert_eq!(k.key(), "key/k1");
        assert!(RegistryChange::from_bytes(br#"{"kind":"nope"}"#).is_err());
    }
}
