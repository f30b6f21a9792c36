//! The access check of a topic, one for PUBLISH and SUBSCRIBE: what
//! `classify_publish`/`classify_subscribe` say a topic needs ([`Check`]) against what the
//! client is (custom topics allowed to its key, the peripheral policy of a gateway).
//! A registry that cannot be read is not a refusal: the client is told to try again.

use fluxgate_model::{Check, Reject};

use super::Front;
use crate::auth::Identity;

/// Why a topic is not open to a client.
#[derive(Debug)]
pub(crate) enum Denied {
    /// Not allowed.
    Refused(Reject),
    /// The registry could not be read; the answer may change on a retry.
    Unavailable(String),
}

impl Front {
    /// Whether `id` may use `topic`, which needs `check`.
    pub(super) async fn allowed(
        &self,
        id: &Identity,
        check: &Check,
        topic: &str,
    ) -> Result<(), Denied> {
        match check {
            Check::None => Ok(()),
            Check::CustomTopics if id.custom_topics => Ok(()),
            Check::CustomTopics => Err(Denied::Refused(Reject::TopicNotAllowed {
                topic: topic.to_owned(),
            })),
            Check::Peripheral {
                gateway,
                peripheral,
            } => match self
                .registry
                .peripheral_allows(&id.tenant, peripheral, gateway)
                .await
            {
                Ok(true) => Ok(()),
                Ok(false) => Err(Denied::Refused(Reject::PeripheralNotAllowed {
                    gateway: gateway.to_string(),
                    peripheral: peripheral.to_string(),
                })),
                Err(e) => Err(Denied::Unavailable(e.to_string())),
            },
        }
    }
}
