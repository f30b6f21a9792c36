//! SUBSCRIBE and UNSUBSCRIBE: the access check of each filter, the feeds a connection
//! listens to (commands, shared attributes, RPC, custom topics), and telling the
//! dispatcher once a device can hear its commands or its shared attributes
//! (`Body::Subscribed`, `Body::SubscribedAttributes`).

use fluxgate_model::{
    Body, Check, DeviceId, DeviceRef, Reject, SubscribeTarget, Subscription, classify_subscribe,
};
use ntex_mqtt::{QoS, TopicFilter};

use super::acl::Denied;
use super::{Front, traced};
use crate::session::{Conn, State};
use fluxgate_bus::OutRecord;

/// Why a SUBSCRIBE filter is refused.
#[derive(Debug)]
pub(crate) enum SubscribeRefused {
    /// Not allowed to this client.
    Denied(Reject),
    /// Allowed, but what it implies could not be read from the registry or put on the
    /// bus (try again).
    Unavailable(String),
}

impl SubscribeRefused {
    pub(crate) fn message(&self) -> String {
        match self {
            SubscribeRefused::Denied(r) => r.message(),
            SubscribeRefused::Unavailable(e) => format!("unavailable: {e}"),
        }
    }
}

impl Front {
    /// Handles one SUBSCRIBE filter; returns the granted QoS.
    pub(crate) async fn subscribe(
        &self,
        conn: &Conn,
        state: &mut State,
        filter: &str,
        qos: QoS,
    ) -> Result<QoS, SubscribeRefused> {
        let id = &conn.identity;
        let class = classify_subscribe(&id.principal, filter).map_err(SubscribeRefused::Denied)?;
        let denied = || Reject::TopicNotAllowed {
            topic: filter.to_owned(),
        };
        self.allowed(id, &class.check, filter)
            .await
            .map_err(|d| match d {
                Denied::Refused(r) => SubscribeRefused::Denied(r),
                Denied::Unavailable(e) => SubscribeRefused::Unavailable(e),
            })?;
        // Seed 000: a gateway subscribed to a peripheral's commands reaches it.
        if let Check::Peripheral { peripheral, .. } = &class.check
            && let Err(v) = self.reach(conn, DeviceRef::Id(peripheral.clone())).await
        {
            return Err(SubscribeRefused::Unavailable(format!("{v:?}")));
        }
        let granted = if qos == QoS::AtMostOnce {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        // The feeds a device's commands and shared attributes come on: once one is
        // registered, the dispatcher may send the commands queued for the device
        // (`Body::Subscribed`) or the shared attributes it missed while away
        // (`Body::SubscribedAttributes`).
        let announce = match &class.target {
            SubscribeTarget::Platform(Subscription::TbRpcRequests) => {
                Some((Body::Subscribed, None))
            }
            SubscribeTarget::Platform(Subscription::TbAttributeUpdates) => {
                Some((Body::SubscribedAttributes, None))
            }
            SubscribeTarget::Platform(Subscription::LosantCommands { device })
                if device != id.principal.device() =>
            {
                Some((Body::Subscribed, Some(device.clone())))
            }
            SubscribeTarget::Platform(Subscription::LosantCommands { .. }) => {
                Some((Body::Subscribed, None))
            }
            _ => None,
        };
        match class.target {
            SubscribeTarget::Platform(s) => {
                state.subs.add_platform(s.clone(), granted);
                if let Some((body, peripheral)) = announce
                    && let Err(e) = self.announce_subscribed(conn, peripheral, body).await
                {
                    state.subs.remove(Some(&s), filter);
                    return Err(SubscribeRefused::Unavailable(e));
                }
            }
            SubscribeTarget::Custom => {
                let parsed: TopicFilter = filter
                    .parse()
                    .map_err(|_| SubscribeRefused::Denied(denied()))?;
                state.subs.add_custom(filter.to_owned(), parsed, granted);
                self.sessions.set_custom(&conn.key(), conn.id, true);
            }
        }
        Ok(granted)
    }

    /// Tells the dispatcher that the connection now listens for the commands (or shared
    /// attributes: `body` says which) of its own device, or of the `peripheral` it
    /// reaches: on the key and topic of that device's connect, behind it. Returns once it
    /// is on the bus.
    pub(super) async fn announce_subscribed(
        &self,
        conn: &Conn,
        peripheral: Option<DeviceId>,
        body: Body,
    ) -> Result<(), String> {
        let rec = match peripheral {
            Some(p) => self.reached_event(conn, DeviceRef::Id(p), body),
            None => {
                let env = self.event(conn, body);
                traced(OutRecord::of(&self.names.events, &env))
            }
        };
        for ack in self
            .send_all(vec![rec])
            .await
            .map_err(|v| format!("{v:?}"))?
        {
            ack.await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Handles one UNSUBSCRIBE filter.
    pub(crate) fn unsubscribe(&self, conn: &Conn, state: &mut State, filter: &str) {
        let feed: Option<Subscription> = classify_subscribe(&conn.identity.principal, filter)
            .ok()
            .and_then(|c| match c.target {
                SubscribeTarget::Platform(s) => Some(s),
                SubscribeTarget::Custom => None,
            });
        state.subs.remove(feed.as_ref(), filter);
        self.sessions
            .set_custom(&conn.key(), conn.id, state.subs.has_custom());
    }
}
