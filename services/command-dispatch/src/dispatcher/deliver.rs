//! The dispatcher's async side ([`Ctx`]): where a device is connected, deliveries to
//! the front that holds it, and the moves of a command's status.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fluxgate_bus::{Consumer, OutRecord, Producer};
use fluxgate_model::{
    CommandEnded, CorrelationId, Delivery, DeviceId, DeviceName, Dialect, ENVELOPE_VERSION,
    Envelope, MessageId, Outbound, TenantId,
};
use fluxgate_pipeline::Clock;
use fluxgate_store::{AttributeScope, CommandRecord, CommandStatus, Store, StoreError};

use super::timers::{Deadline, Timers};
use super::{DispatchStats, Names, rpc_id};
use crate::DispatchConfig;

/// A connect or disconnect as the connection log keeps it.
pub(super) fn connection_event(
    env: &Envelope,
    device: DeviceId,
    connected: bool,
    session: Option<fluxgate_model::SessionInfo>,
    reason: Option<String>,
) -> fluxgate_store::ConnectionEvent {
    let (front, remote_addr) = session.map_or((None, None), |s| (Some(s.front), s.remote_addr));
    fluxgate_store::ConnectionEvent {
        tenant: env.tenant.clone(),
        device,
        at_ms: env.received_ms,
        connected,
        front,
        remote_addr,
        reason,
        via: env.via.clone(),
    }
}

/// A connected device.
#[derive(Debug, Clone)]
pub(super) struct Online {
    pub(super) via: Option<DeviceId>,
    pub(super) dialect: Dialect,
}

/// What the actor knows of a device's connection.
#[derive(Debug, Clone)]
pub(super) enum Presence {
    /// An event of it was seen since the dispatcher started (`None`: offline).
    Seen(Option<Online>),
    /// Nothing seen yet: the connection log says, which the dispatcher that owned the
    /// device's partition before wrote before it committed past the device's events.
    Unknown,
}

/// Everything a step needs, cloned out of the actor.
#[derive(Clone)]
pub(super) struct Ctx {
    pub(super) consumer: Arc<dyn Consumer>,
    pub(super) producer: Arc<dyn Producer>,
    pub(super) store: Arc<dyn Store>,
    pub(super) names: Names,
    pub(super) cfg: DispatchConfig,
    pub(super) stats: Arc<DispatchStats>,
    pub(super) timers: Arc<Timers>,
    pub(super) clock: Clock,
}

impl Ctx {
    pub(super) async fn set(
        &self,
        id: MessageId,
        to: CommandStatus,
        detail: Option<String>,
        reply: Option<serde_json::Value>,
    ) -> Result<(), StoreError> {
        match self
            .store
            .set_command_status(id, to, self.clock.now_ms(), detail, reply)
            .await
        {
            Ok(_) => {
                if matches!(
                    to,
                    CommandStatus::Failed | CommandStatus::TimedOut | CommandStatus::Expired
                ) {
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                }
                if to.is_final() {
                    self.announce_outcome(id).await;
                }
                Ok(())
            }
            // A redelivered event may try a move already made; that is not a failure.
            Err(StoreError::InvalidTransition { .. }) => Ok(()),
            // Deleting a device deletes its commands: nothing is left to move.
            Err(StoreError::NotFound(what)) => {
                tracing::info!(%id, %what, "dispatcher: command gone with its device");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Tells every API instance that command `id` ended (best effort: a waiting request
    /// also reads the store now and then).
    pub(super) async fn announce_outcome(&self, id: MessageId) {
        let mut rec = OutRecord::of(&self.names.outcomes, &CommandEnded(id));
        fluxgate_observability::telemetry::inject(&mut rec.headers);
        if let Err(e) = self.producer.produce(rec).await {
            tracing::warn!(command = %id, error = %e, "dispatcher: command outcome not announced");
        }
    }

    /// Publishes a delivery for the connection that reaches `device`.
    pub(super) async fn deliver(
        &self,
        tenant: &TenantId,
        device: &DeviceId,
        online: &Online,
        id: MessageId,
        body: Outbound,
    ) -> Result<(), String> {
        let device_name = match &online.via {
            Some(_) => {
                let d = self
                    .store
                    .device(tenant.clone(), device.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                d.and_then(|d| DeviceName::new(d.name).ok())
            }
            None => None,
        };
        let delivery = Delivery {
            v: ENVELOPE_VERSION,
            id,
            tenant: tenant.clone(),
            device: device.clone(),
            device_name,
            via: online.via.clone(),
            dialect: online.dialect,
            body,
        };
        // The front's `client.deliver` continues this trace.
        let mut rec = OutRecord::of(&self.names.deliveries, &delivery);
        fluxgate_observability::telemetry::inject(&mut rec.headers);
        self.producer
            .produce(rec)
            .await
            .map_err(|e| e.to_string())?;
        self.stats.deliveries.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Sends a stored command to its online device and marks it sent.
    pub(super) async fn send(&self, c: &CommandRecord, online: &Online) -> Result<(), String> {
        let body = Outbound::Command {
            request_id: CorrelationId::Int(rpc_id(c.id)),
            name: c.command.name.clone(),
            payload: c.command.payload.clone(),
            time_ms: c.command.time_ms.unwrap_or_else(|| self.clock.now_ms()),
        };
        self.deliver(&c.tenant, &c.device, online, c.id, body)
            .await?;
        self.set(c.id, CommandStatus::Sent, None, None)
            .await
            .map_err(|e| e.to_string())?;
        // No front may hold the session any more (it closed with the delivery queued, or
        // the device moved): without an outcome in time, the command does not stay `sent`.
        let after = Duration::from_millis(self.cfg.delivery_timeout_ms);
        self.clone().start_timer(c, after, Deadline::Delivery);
        Ok(())
    }

    /// Sends the device's queued commands, oldest first (expired ones end `expired`).
    pub(super) async fn send_queued(
        &self,
        tenant: &TenantId,
        device: &DeviceId,
        online: &Online,
    ) -> Result<(), String> {
        let queued = self
            .store
            .commands(
                tenant.clone(),
                device.clone(),
                Some(CommandStatus::Queued),
                1000,
            )
            .await
            .map_err(|e| e.to_string())?;
        for c in queued.iter().rev() {
            if c.command
                .expires_ms
                .is_some_and(|at| at <= self.clock.now_ms())
            {
                self.set(c.id, CommandStatus::Expired, None, None)
                    .await
                    .map_err(|e| e.to_string())?;
            } else {
                self.send(c, online).await?;
                if let Some(d) = self.timeout_of(c) {
                    self.clone().start_timer(c, d, Deadline::Reply);
                }
            }
        }
        Ok(())
    }

    /// Pushes the shared attributes written since the device's last disconnect (all of
    /// them if the connection log shows none): what it missed while away, pushes to a
    /// connection not yet subscribed included. Values are the current ones, so a push
    /// already received is repeated, never reordered. The delivery takes the id of the
    /// event that made it (`id`).
    pub(super) async fn push_missed_attributes(
        &self,
        id: MessageId,
        tenant: &TenantId,
        device: &DeviceId,
        online: &Online,
    ) -> Result<(), String> {
        let log = self
            .store
            .connection_log(tenant.clone(), device.clone(), 50)
            .await
            .map_err(|e| e.to_string())?;
        let since = log
            .iter()
            .find(|e| !e.connected)
            .map_or(i64::MIN, |e| e.at_ms);
        let values = self
            .store
            .attributes_since(
                tenant.clone(),
                device.clone(),
                AttributeScope::Shared,
                since,
            )
            .await
            .map_err(|e| e.to_string())?;
        if values.is_empty() {
            return Ok(());
        }
        self.stats
            .missed_attribute_pushes
            .fetch_add(1, Ordering::Relaxed);
        let body = Outbound::SharedAttributes { values };
        self.deliver(tenant, device, online, id, body).await
    }

    /// Sends a client-side RPC's answer (or its timeout's error) to the device if it is
    /// online; counted either way.
    pub(super) async fn answer_client_rpc(
        &self,
        tenant: &TenantId,
        device: &DeviceId,
        online: Option<&Online>,
        id: MessageId,
        body: Outbound,
    ) -> Result<(), String> {
        match online {
            Some(o) => {
                self.deliver(tenant, device, o, id, body).await?;
                self.stats
                    .client_rpc_answers
                    .fetch_add(1, Ordering::Relaxed);
            }
            None => {
                tracing::info!(%tenant, %device, rpc = %id, "dispatcher: client-side RPC answered while its device is offline; not sent");
                self.stats
                    .client_rpc_undelivered
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Whether this dispatcher holds the partition of the device keyed `key`.
    pub(super) fn holds(&self, key: &str) -> bool {
        self.consumer.holds(&self.names.events, key.as_bytes())
    }

    /// Where `device` is connected according to the connection log: the presence of a
    /// device this dispatcher has seen no event of since it started. Dispatchers write
    /// that log themselves, each entry before the event's offset is committed, so it is
    /// exact for every event before this one on the device's key.
    pub(super) async fn presence_from_store(
        &self,
        tenant: &TenantId,
        device: &DeviceId,
        dialect: Dialect,
    ) -> Result<Option<Online>, StoreError> {
        let log = self
            .store
            .connection_log(tenant.clone(), device.clone(), 1)
            .await?;
        Ok(log
            .into_iter()
            .next()
            .filter(|e| e.connected)
            .map(|e| Online {
                via: e.via,
                // The front renders in the dialect of the connection it holds.
                dialect,
            }))
    }

    pub(super) fn timeout_of(&self, c: &CommandRecord) -> Option<Duration> {
        if !c.command.two_way {
            return None;
        }
        Some(match c.command.expires_ms {
            Some(at) => self.clock.until(at),
            None => Duration::from_millis(self.cfg.rpc_timeout_ms),
        })
    }
}
