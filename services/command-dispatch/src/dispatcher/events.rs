//! What each kind of device event does: [`Ctx::step`] finds where the device is
//! connected and hands the event to the function for its kind.

use std::sync::atomic::Ordering;

use fluxgate_model::{
    Body, Command, CorrelationId, DeviceId, DeviceRef, Envelope, KeySelection, MessageId, Outbound,
    SessionInfo, Values,
};
use fluxgate_store::{
    AttributeScope, ClientRpc, ClientRpcStatus, CommandRecord, CommandStatus, StoreError,
    hash_secret,
};

use super::deliver::{Ctx, Online, Presence, connection_event};
use super::{After, rpc_id};

fn store_err(e: StoreError) -> String {
    e.to_string()
}

impl Ctx {
    /// Handles one record; returns what the actor must change afterwards.
    pub(super) async fn step(&self, env: Envelope, presence: Presence) -> Result<After, String> {
        let DeviceRef::Id(device) = env.device.clone() else {
            return Ok(After::Nothing);
        };
        let online = match (presence, &env.body) {
            // The request came over the connection that reaches the device: answered
            // there, whatever was seen of it before.
            (_, Body::AttributeRequest { .. }) => Some(Online {
                via: env.via.clone(),
                dialect: env.dialect,
            }),
            (Presence::Seen(seen), _) => seen,
            (
                Presence::Unknown,
                Body::Command(_)
                | Body::Attributes { .. }
                | Body::RpcAnswer { .. }
                | Body::Subscribed
                | Body::SubscribedAttributes,
            ) => self
                .presence_from_store(&env.tenant, &device, env.dialect)
                .await
                .map_err(store_err)?,
            (Presence::Unknown, _) => None,
        };
        let d = &device;
        match &env.body {
            Body::Command(command) => self.command(&env, d, command, online).await,
            Body::Connect { session, .. } => self.connect(&env, d, session.clone()).await,
            Body::Subscribed => {
                match &online {
                    Some(o) => self.send_queued(&env.tenant, d, o).await?,
                    None => {
                        tracing::info!(tenant = %env.tenant, device = %d, "dispatcher: subscription of a device not connected; ignored");
                    }
                }
                Ok(After::Nothing)
            }
            Body::SubscribedAttributes => {
                match &online {
                    Some(o) => {
                        self.push_missed_attributes(env.id, &env.tenant, d, o)
                            .await?
                    }
                    None => {
                        tracing::info!(tenant = %env.tenant, device = %d, "dispatcher: attribute subscription of a device not connected; ignored");
                    }
                }
                Ok(After::Nothing)
            }
            Body::Disconnect { session, reason } => {
                let e = connection_event(&env, d.clone(), false, session.clone(), reason.clone());
                self.store.log_connection(e).await.map_err(store_err)?;
                Ok(After::Offline((env.tenant.clone(), device)))
            }
            Body::RpcResponse { request_id, data } => {
                self.rpc_response(&env, d, request_id, data).await
            }
            Body::DeliveryOutcome {
                delivery,
                delivered,
                at_most_once,
                reason,
            } => {
                let outcome = match (delivered, at_most_once) {
                    (true, false) => Outcome::Delivered,
                    (true, true) => Outcome::WrittenAtMostOnce,
                    (false, _) => Outcome::NotDelivered(reason.clone()),
                };
                self.delivery_outcome(*delivery, outcome).await
            }
            Body::AttributeRequest {
                request_id,
                client,
                shared,
                reply,
            } => {
                let Some(o) = online else {
                    return Ok(After::Nothing);
                };
                let client = self.read_attributes(&env, d, AttributeScope::Client, client);
                let shared = self.read_attributes(&env, d, AttributeScope::Shared, shared);
                let body = Outbound::AttributeResponse {
                    request_id: request_id.clone(),
                    reply: *reply,
                    client: client.await.map_err(store_err)?,
                    shared: shared.await.map_err(store_err)?,
                };
                self.deliver(&env.tenant, d, &o, env.id, body).await?;
                Ok(After::Nothing)
            }
            // Shared attributes changed through the API (already in the store): pushed to the
            // device, or through its gateway, when it is online. An offline device gets what
            // changed while it was away when it subscribes to its attribute updates again
            // (`SubscribedAttributes`; behind a ThingsBoard gateway, at its connect).
            Body::Attributes { values } => {
                if let Some(o) = online {
                    let body = Outbound::SharedAttributes {
                        values: values.clone(),
                    };
                    self.deliver(&env.tenant, d, &o, env.id, body).await?;
                }
                Ok(After::Nothing)
            }
            Body::Claim {
                secret_key,
                duration_ms,
            } => {
                self.claim(&env, d, secret_key.as_deref(), *duration_ms)
                    .await
            }
            Body::RpcRequest {
                request_id,
                method,
                params,
            } => {
                let (id, method, params) = (request_id.clone(), method.clone(), params.clone());
                self.rpc_request(&env, device, id, method, params).await
            }
            // An application answered a client-side RPC (the API ended it in the store):
            // to the device, over the connection that reaches it now.
            Body::RpcAnswer {
                request,
                request_id,
                data,
            } => {
                let body = Outbound::RpcResponse {
                    request_id: request_id.clone(),
                    data: data.clone(),
                };
                self.answer_client_rpc(&env.tenant, d, online.as_ref(), *request, body)
                    .await?;
                Ok(After::Nothing)
            }
            // Not for the dispatcher: telemetry goes to the writer.
            Body::Telemetry { .. } => Ok(After::Nothing),
        }
    }

    /// A command or RPC made through the API: stored `queued` (unless a redelivery finds
    /// it stored), sent if its device is online, else kept (persistent) or failed.
    async fn command(
        &self,
        env: &Envelope,
        device: &DeviceId,
        command: &Command,
        online: Option<Online>,
    ) -> Result<After, String> {
        let record = match self.store.command(env.id).await.map_err(store_err)? {
            // Redelivered after a crash between storing and sending it: go on.
            Some(c) if c.status == CommandStatus::Queued => c,
            Some(_) => return Ok(After::Nothing), // redelivered: already handled
            None => {
                let record = CommandRecord {
                    id: env.id,
                    tenant: env.tenant.clone(),
                    device: device.clone(),
                    command: command.clone(),
                    status: CommandStatus::Queued,
                    created_ms: env.received_ms,
                    updated_ms: env.received_ms,
                    reply: None,
                };
                self.store
                    .put_command(record.clone())
                    .await
                    .map_err(store_err)?;
                record
            }
        };
        let timer = self
            .timeout_of(&record)
            .map(|d| After::Timer(Box::new(record.clone()), d));
        // The device's connects and disconnects come before this on its key: offline
        // here is offline when the command was made.
        match online {
            Some(o) => self.send(&record, &o).await?,
            None if record.command.persistent => return Ok(After::Nothing),
            None => {
                let why = Some("device offline".into());
                self.set(record.id, CommandStatus::Failed, why, None)
                    .await
                    .map_err(store_err)?;
                return Ok(After::Nothing);
            }
        }
        Ok(timer.unwrap_or(After::Nothing))
    }

    /// A device connected: logged, and behind a ThingsBoard gateway sent what waited.
    async fn connect(
        &self,
        env: &Envelope,
        device: &DeviceId,
        session: Option<SessionInfo>,
    ) -> Result<After, String> {
        let o = Online {
            via: env.via.clone(),
            dialect: env.dialect,
        };
        let e = connection_event(env, device.clone(), true, session, None);
        self.store.log_connection(e).await.map_err(store_err)?;
        // A device behind a ThingsBoard gateway gets its commands on the gateway's
        // `v1/gateway/rpc`, subscribed when the gateway's session began. Any other
        // device subscribes after connecting: its queued commands wait for that
        // (`Subscribed`), or they would reach a connection not listening yet.
        // The same for its shared attributes, on `v1/gateway/attributes`.
        if env.via.is_some() && env.dialect == fluxgate_model::Dialect::ThingsBoard {
            self.send_queued(&env.tenant, device, &o).await?;
            self.push_missed_attributes(env.id, &env.tenant, device, &o)
                .await?;
        }
        Ok(After::Online((env.tenant.clone(), device.clone()), o))
    }

    /// A two-way RPC's reply: the sent (or delivered) command with its RPC id is
    /// `replied`.
    async fn rpc_response(
        &self,
        env: &Envelope,
        device: &DeviceId,
        request_id: &CorrelationId,
        data: &serde_json::Value,
    ) -> Result<After, String> {
        let CorrelationId::Int(rid) = request_id else {
            return Ok(After::Nothing);
        };
        let recent = self
            .store
            .commands(env.tenant.clone(), device.clone(), None, 200)
            .await
            .map_err(store_err)?;
        if let Some(c) = recent.iter().find(|c| {
            rpc_id(c.id) == *rid
                && matches!(c.status, CommandStatus::Sent | CommandStatus::Delivered)
        }) {
            self.set(c.id, CommandStatus::Replied, None, Some(data.clone()))
                .await
                .map_err(store_err)?;
        }
        Ok(After::Nothing)
    }

    /// The front's outcome of a delivery: `delivered`, or back to `queued` (persistent)
    /// or `failed`.
    async fn delivery_outcome(
        &self,
        delivery: MessageId,
        outcome: Outcome,
    ) -> Result<After, String> {
        if let Some(c) = self.store.command(delivery).await.map_err(store_err)? {
            let (to, detail) = match (outcome, c.command.persistent) {
                (Outcome::Delivered, _) => (CommandStatus::Delivered, None),
                // At most sent: nothing acknowledges a QoS 0 write. Recorded, so that its
                // delivery deadline no longer applies.
                (Outcome::WrittenAtMostOnce, _) => (
                    CommandStatus::Sent,
                    Some(fluxgate_model::WRITTEN_AT_MOST_ONCE.to_owned()),
                ),
                (Outcome::NotDelivered(why), true) => (CommandStatus::Queued, why),
                (Outcome::NotDelivered(why), false) => (CommandStatus::Failed, why),
            };
            self.set(c.id, to, detail, None).await.map_err(store_err)?;
        }
        Ok(After::Nothing)
    }

    /// The attributes of `scope` an attribute request selects.
    async fn read_attributes(
        &self,
        env: &Envelope,
        device: &DeviceId,
        scope: AttributeScope,
        sel: &KeySelection,
    ) -> Result<Values, StoreError> {
        let (tenant, device) = (env.tenant.clone(), device.clone());
        match sel {
            KeySelection::Nothing => Ok(Values::new()),
            KeySelection::All => self.store.attributes(tenant, device, scope, None).await,
            KeySelection::Keys(k) => {
                let keys = Some(k.clone());
                self.store.attributes(tenant, device, scope, keys).await
            }
        }
    }

    /// The device opens its claiming window: an application claims it through the API
    /// with the secret, until the window closes.
    async fn claim(
        &self,
        env: &Envelope,
        device: &DeviceId,
        secret_key: Option<&str>,
        duration_ms: Option<u64>,
    ) -> Result<After, String> {
        let ms = duration_ms.unwrap_or(self.cfg.claim_duration_ms);
        let until = env
            .received_ms
            .saturating_add(i64::try_from(ms).unwrap_or(i64::MAX));
        let secret = hash_secret(secret_key.unwrap_or(""));
        self.store
            .open_claim_window(env.tenant.clone(), device.clone(), secret, until)
            .await
            .map_err(store_err)?;
        self.stats.claim_windows.fetch_add(1, Ordering::Relaxed);
        Ok(After::Nothing)
    }

    /// A device's client-side RPC: kept for an application to answer through the API,
    /// or to time out with an error reply.
    async fn rpc_request(
        &self,
        env: &Envelope,
        device: DeviceId,
        request_id: CorrelationId,
        method: String,
        params: serde_json::Value,
    ) -> Result<After, String> {
        let ms = i64::try_from(self.cfg.client_rpc_timeout_ms).unwrap_or(i64::MAX);
        let rpc = ClientRpc {
            id: env.id,
            tenant: env.tenant.clone(),
            device,
            request_id,
            method,
            params,
            status: ClientRpcStatus::Pending,
            created_ms: env.received_ms,
            deadline_ms: env.received_ms.saturating_add(ms),
            updated_ms: env.received_ms,
            answer: None,
        };
        if self
            .store
            .put_client_rpc(rpc.clone())
            .await
            .map_err(store_err)?
        {
            self.stats.client_rpcs.fetch_add(1, Ordering::Relaxed);
        }
        // Armed again on a redelivery too (its timer may have died with an earlier
        // process); a timeout ends only a request still pending.
        self.clone().start_client_rpc_timer(rpc);
        Ok(After::Nothing)
    }
}

/// What a front reported of a delivery.
#[derive(Debug)]
enum Outcome {
    /// The device acknowledged it (QoS 1).
    Delivered,
    /// Written to a QoS 0 subscriber's connection; never acknowledged.
    WrittenAtMostOnce,
    /// Not delivered, and why.
    NotDelivered(Option<String>),
}
