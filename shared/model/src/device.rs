//! Devices and the rules of who may act for them: which gateways may report for a
//! peripheral ([`Device::accepts_gateway`]) and which devices a Losant access key opens
//! ([`AccessKey::opens`]). The store keeps these records; the rules live here, beside
//! the protocols that apply them.

use serde::{Deserialize, Serialize};

use crate::ids::{DeviceId, TenantId};

/// What kind of device it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    /// Connects and reports for itself only.
    Standalone,
    /// May act for peripherals (Losant) or devices behind it (ThingsBoard).
    Gateway,
    /// Reports through a gateway (Losant).
    Peripheral,
}

impl DeviceKind {
    /// The snake_case name (as stored).
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceKind::Standalone => "standalone",
            DeviceKind::Gateway => "gateway",
            DeviceKind::Peripheral => "peripheral",
        }
    }
    /// The kind named `s` ([`DeviceKind::as_str`]).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "standalone" => DeviceKind::Standalone,
            "gateway" => DeviceKind::Gateway,
            "peripheral" => DeviceKind::Peripheral,
            _ => return None,
        })
    }
}

/// Which gateways may act for a peripheral.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "policy", content = "gateway")]
pub enum PeripheralPolicy {
    /// Any gateway of the application.
    AnyGateway,
    /// Only this gateway.
    SpecificGateway(DeviceId),
}

impl PeripheralPolicy {
    /// Whether `gateway` may act for a peripheral with this policy.
    pub fn allows(&self, gateway: &DeviceId) -> bool {
        match self {
            PeripheralPolicy::AnyGateway => true,
            PeripheralPolicy::SpecificGateway(g) => g == gateway,
        }
    }
}

/// A device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// Tenant.
    pub tenant: TenantId,
    /// Stable id.
    pub id: DeviceId,
    /// Display name (for ThingsBoard devices: the name their gateway uses).
    pub name: String,
    /// Kind.
    pub kind: DeviceKind,
    /// For peripherals: which gateways may act for it.
    pub peripheral_policy: Option<PeripheralPolicy>,
    /// Free-form tags (access keys may be scoped by tag).
    pub tags: Vec<String>,
    /// ThingsBoard device type / profile.
    pub profile: Option<String>,
    /// Creation time, epoch ms.
    pub created_ms: i64,
    /// Last change, epoch ms.
    pub updated_ms: i64,
}

impl Device {
    /// Whether `gateway` may act for this device: it is a peripheral whose policy allows
    /// that gateway (Losant "any gateway" / "specific gateway").
    pub fn accepts_gateway(&self, gateway: &DeviceId) -> bool {
        self.kind == DeviceKind::Peripheral
            && self
                .peripheral_policy
                .as_ref()
                .is_some_and(|p| p.allows(gateway))
    }
}

/// Which devices an access key opens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "scope", content = "values")]
pub enum KeyScope {
    /// Every device of the application.
    AllDevices,
    /// These devices.
    Devices(Vec<DeviceId>),
    /// Devices carrying any of these tags.
    Tags(Vec<String>),
}

/// A Losant access key. The secret itself is never stored: only its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessKey {
    /// The key (public half; MQTT username).
    pub key: String,
    /// Tenant.
    pub tenant: TenantId,
    /// SHA-256 of the secret, hex.
    pub secret_hash: String,
    /// Devices it opens.
    pub scope: KeyScope,
    /// Whether it may use custom (non-platform) MQTT topics.
    pub custom_topics: bool,
    /// Deactivated keys authenticate nothing.
    pub active: bool,
    /// Creation time, epoch ms.
    pub created_ms: i64,
}

impl AccessKey {
    /// Whether this key opens `device`: all devices, listed ones, or one carrying a tag of
    /// the key's.
    pub fn opens(&self, device: &Device) -> bool {
        match &self.scope {
            KeyScope::AllDevices => true,
            KeyScope::Devices(ids) => ids.contains(&device.id),
            KeyScope::Tags(tags) => device.tags.iter().any(|t| tags.contains(t)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_peripherals() {
        let id = |s: &str| DeviceId::new(s).unwrap();
        let mut dev = Device {
            tenant: TenantId::new("a").unwrap(),
            id: id("p"),
            name: "p".into(),
            kind: DeviceKind::Peripheral,
            peripheral_policy: Some(PeripheralPolicy::SpecificGateway(id("g1"))),
            tags: vec!["blue".into()],
            profile: None,
            created_ms: 0,
            updated_ms: 0,
        };
        assert!(dev.accepts_gateway(&id("g1")));
        assert!(!dev.accepts_gateway(&id("g2")));
        dev.kind = DeviceKind::Standalone;
        assert!(
            !dev.accepts_gateway(&id("g1")),
            "only peripherals accept gateways"
        );
        let key = |scope| AccessKey {
            key: "k".into(),
            tenant: dev.tenant.clone(),
            secret_hash: String::new(),
            scope,
            custom_topics: false,
            active: true,
            created_ms: 0,
        };
        assert!(key(KeyScope::AllDevices).opens(&dev));
        assert!(key(KeyScope::Devices(vec![id("p")])).opens(&dev));
        assert!(!key(KeyScope::Devices(vec![id("q")])).opens(&dev));
        assert!(key(KeyScope::Tags(vec!["blue".into()])).opens(&dev));
        assert!(!key(KeyScope::Tags(vec!["red".into()])).opens(&dev));
    }
}
