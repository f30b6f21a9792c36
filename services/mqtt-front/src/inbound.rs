//! What a front reads from the bus: deliveries for the sessions it holds, custom-topic
//! messages for its subscribers, and registry changes for its cache. Every front reads
//! every record (broadcast consumers); each is decoded once, where it is read.

use std::sync::Arc;
use std::time::Duration;

use fluxgate_bus::{Consumer, Topic, TopicsConfig};
use fluxgate_model::{Delivery, RegistryChange, TenantId};
use ntex::util::{ByteString, Bytes};

use crate::auth::AuthError;
use crate::front::{CUSTOM_TOPIC_HEADER, Front, route_custom, route_delivery};
use crate::session::CloseReason;

/// What a front consumes, decoded once where it is read: one variant per topic, each
/// with the one message type its topic carries.
pub(crate) enum Inbound {
    /// `fluxgate.deliveries`: for a session of this front, or of another.
    Delivery(Delivery),
    /// `fluxgate.mqtt.custom`: a custom-topic message of an application, keyed by it.
    Custom {
        tenant: TenantId,
        topic: ByteString,
        payload: Bytes,
    },
    /// `fluxgate.registry.changes`: what the registry cache must forget.
    Change(RegistryChange),
}

impl Inbound {
    /// The topics a front subscribes to.
    pub(crate) const TOPICS: [Topic; 3] =
        [Topic::Deliveries, Topic::MqttCustom, Topic::RegistryChanges];

    /// The record as what its topic carries, or why it cannot be read (with the topic's
    /// label for the metric).
    fn decode(
        topics: &TopicsConfig,
        rec: &fluxgate_bus::Record,
    ) -> Result<Inbound, (&'static str, String)> {
        let topic = topics.topic_of(&rec.position.topic);
        let label = topic.map_or("unknown", Topic::label);
        let bad = |e: &dyn std::fmt::Display| (label, e.to_string());
        match topic {
            Some(Topic::Deliveries) => Delivery::from_bytes(&rec.payload)
                .map(Inbound::Delivery)
                .map_err(|e| bad(&e)),
            Some(Topic::MqttCustom) => {
                let tenant = std::str::from_utf8(&rec.key)
                    .map_err(|e| bad(&e))
                    .and_then(|t| TenantId::new(t).map_err(|e| bad(&e)))?;
                let mqtt_topic = rec
                    .headers
                    .get(CUSTOM_TOPIC_HEADER)
                    .ok_or_else(|| bad(&format!("no {CUSTOM_TOPIC_HEADER} header")))
                    .and_then(|t| std::str::from_utf8(t).map_err(|e| bad(&e)))?;
                Ok(Inbound::Custom {
                    tenant,
                    topic: ByteString::from(mqtt_topic),
                    payload: Bytes::copy_from_slice(&rec.payload),
                })
            }
            Some(Topic::RegistryChanges) => RegistryChange::from_bytes(&rec.payload)
                .map(Inbound::Change)
                .map_err(|e| bad(&e)),
            Some(other) => Err(bad(&format!(
                "a record of {}, not a front's topic",
                other.label()
            ))),
            None => Err(bad(&format!(
                "a record of {}, not a fluxgate topic",
                rec.position.topic
            ))),
        }
    }
}

/// Deliveries, custom-topic messages and registry changes from the bus.
pub(crate) async fn inbound(front: Arc<Front>, consumer: Arc<dyn Consumer>, topics: TopicsConfig) {
    loop {
        let rec = match consumer.recv().await {
            Ok(r) => r,
            Err(fluxgate_bus::ConsumeError::Closed) => return,
            Err(e) => {
                tracing::warn!(error = %e, "inbound consumer error; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        match Inbound::decode(&topics, &rec) {
            Ok(Inbound::Delivery(d)) => route_delivery(&front, d, &rec.headers),
            Ok(Inbound::Custom {
                tenant,
                topic,
                payload,
            }) => route_custom(&front, &tenant, topic, payload),
            Ok(Inbound::Change(c)) => {
                front.registry.invalidate(&c).await;
                // Sessions whose credential the change may end are checked again, off
                // this loop (a store read each).
                ntex::rt::spawn(recheck(front.clone(), c));
            }
            Err((label, e)) => unreadable(&front, &rec, label, &e),
        }
        consumer.ack(&rec.position);
        if let Err(e) = consumer.commit().await {
            tracing::warn!(error = %e, "inbound commit failed");
        }
    }
}

/// Checks again the sessions whose credential `change` may have made invalid, and closes
/// those it did (MQTT 5: DISCONNECT "not authorized"). A registry that cannot be read
/// leaves the session alone: an outage of the store does not disconnect the fleet.
async fn recheck(front: Arc<Front>, change: RegistryChange) {
    for ((tenant, device), entry) in front.sessions.touched_by(&change) {
        match front
            .registry
            .recheck(&tenant, &device, &entry.credential)
            .await
        {
            Ok(()) => {}
            Err(AuthError::Unavailable(e)) => {
                tracing::warn!(%tenant, %device, error = %e,
                    "registry unavailable; a session's credential not checked again");
            }
            Err(e) => {
                tracing::info!(%tenant, %device, reason = %e,
                    "credential no longer valid; closing the session");
                front.metrics.revoked.inc();
                entry.close(CloseReason::Revoked);
            }
        }
    }
}

/// A broadcast record this front cannot read: every front reads it, and it stays on its
/// topic, so it is counted and logged, not dead-lettered once per front.
fn unreadable(front: &Front, rec: &fluxgate_bus::Record, topic: &str, e: &dyn std::fmt::Display) {
    front.metrics.undecodable.with_label_values(&[topic]).inc();
    tracing::error!(error = %e, topic, offset = rec.position.offset, "unreadable broadcast record skipped");
}
