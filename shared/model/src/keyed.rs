//! Bus messages name their own record key: a key is never formatted by hand, so
//! everything about one device lands on one partition, in order.

use crate::envelope::key_of;
use crate::{Delivery, Envelope, MessageId, RegistryChange, Rejection};

/// A message of a bus topic: its record key and value come from its type.
pub trait Keyed {
    /// The record key.
    fn record_key(&self) -> String;
    /// The record value (JSON, or what the topic's readers decode).
    fn record_value(&self) -> Vec<u8>;
}

impl<T: Keyed + ?Sized> Keyed for &T {
    fn record_key(&self) -> String {
        (**self).record_key()
    }
    fn record_value(&self) -> Vec<u8> {
        (**self).record_value()
    }
}

impl Keyed for Envelope {
    /// [`Envelope::key`].
    fn record_key(&self) -> String {
        self.key()
    }
    fn record_value(&self) -> Vec<u8> {
        self.to_bytes()
    }
}

impl Keyed for Delivery {
    /// The tenant and the device whose connection carries it ([`Delivery::connection`]):
    /// the deliveries of one connection stay in order.
    fn record_key(&self) -> String {
        key_of(&self.tenant, self.connection().as_str())
    }
    fn record_value(&self) -> Vec<u8> {
        self.to_bytes()
    }
}

impl Keyed for RegistryChange {
    /// [`RegistryChange::key`]: changes to one thing stay ordered and compact.
    fn record_key(&self) -> String {
        self.key()
    }
    fn record_value(&self) -> Vec<u8> {
        self.to_bytes()
    }
}

impl Keyed for Rejection {
    /// The tenant and the device (or name, or client id) refused.
    fn record_key(&self) -> String {
        key_of(&self.tenant, &self.device)
    }
    fn record_value(&self) -> Vec<u8> {
        self.to_bytes()
    }
}

/// A command ended (`fluxgate.command.outcomes`, read by every API instance): the key and
/// the value are its id; the status is in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandEnded(pub MessageId);

impl CommandEnded {
    /// Reads an outcome record's key.
    pub fn from_key(key: &[u8]) -> Option<Self> {
        let id = std::str::from_utf8(key).ok()?.parse::<MessageId>().ok()?;
        Some(CommandEnded(id))
    }
}

impl Keyed for CommandEnded {
    fn record_key(&self) -> String {
        self.0.to_string()
    }
    fn record_value(&self) -> Vec<u8> {
        self.0.to_string().into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        Body, Channel, DeviceId, DeviceRef, Dialect, ENVELOPE_VERSION, Outbound, TenantId,
    };

    #[test]
    fn a_device_and_its_deliveries_share_a_key() {
        let (tenant, device) = (TenantId::new("t").unwrap(), DeviceId::new("d").unwrap());
        let env = Envelope {
            v: ENVELOPE_VERSION,
            id: MessageId(1),
            part: 0,
            tenant: tenant.clone(),
            device: DeviceRef::Id(device.clone()),
            via: None,
            dialect: Dialect::ThingsBoard,
            channel: Channel::Internal,
            received_ms: 0,
            body: Body::Subscribed,
        };
        let delivery = Delivery {
            v: ENVELOPE_VERSION,
            id: MessageId(2),
            tenant: tenant.clone(),
            device: device.clone(),
            device_name: None,
            via: None,
            dialect: Dialect::ThingsBoard,
            body: Outbound::SharedAttributes {
                values: Default::default(),
            },
        };
        assert_eq!(env.record_key(), "t/d");
        assert_eq!(delivery.record_key(), crate::device_key(&tenant, &device));
        let gw = DeviceId::new("gw").unwrap();
        let behind = Delivery {
            via: Some(gw.clone()),
            ..delivery
        };
        assert_eq!(behind.record_key(), crate::device_key(&tenant, &gw));
        let ended = CommandEnded(MessageId(77));
        assert_eq!(
            CommandEnded::from_key(ended.record_key().as_bytes()),
            Some(ended)
        );
        assert_eq!(CommandEnded::from_key(b"not an id"), None);
    }
}
