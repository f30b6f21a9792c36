//! The dispatcher stage (run by the `fluxgate_pipeline` actor).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::AsyncContext;
use fluxgate_bus::{Consumer, OutRecord, Producer, Record, Topic, TopicsConfig, now_ms};
use fluxgate_model::{
    Body, CommandEnded, CorrelationId, Delivery, DeviceId, DeviceName, DeviceRef, Dialect,
    ENVELOPE_VERSION, Envelope, KeySelection, MessageId, Outbound, TenantId, Values, device_key,
};
use fluxgate_pipeline::{Ctx as StageCtx, Parts, PipelineStats, Stage};
use fluxgate_store::{
    AttributeScope, ClientRpc, ClientRpcStatus, CommandRecord, CommandStatus, Store, StoreError,
    hash_secret,
};

use crate::DispatchConfig;

/// The ThingsBoard RPC id of a command (an integer, as ThingsBoard clients expect),
/// derived from the command id so that it survives restarts.
pub fn rpc_id(id: MessageId) -> i64 {
    (id.0 & 0x7FFF_FFFF) as i64
}

/// Counters of one dispatcher.
#[derive(Debug, Default)]
pub struct DispatchStats {
    /// Deliveries produced.
    pub deliveries: Arc<AtomicU64>,
    /// Commands that ended failed, timed out or expired.
    pub failed: Arc<AtomicU64>,
    /// Client-side RPC requests of devices, stored for an application to answer.
    pub client_rpcs: Arc<AtomicU64>,
    /// Client-side RPC answers sent to their device.
    pub client_rpc_answers: Arc<AtomicU64>,
    /// Client-side RPC answers whose device was offline (not sent).
    pub client_rpc_undelivered: Arc<AtomicU64>,
    /// Client-side RPC requests nobody answered in time (the device got an error reply).
    pub client_rpc_timed_out: Arc<AtomicU64>,
    /// Claiming windows devices opened.
    pub claim_windows: Arc<AtomicU64>,
    /// Records read, retried store or bus failures, undecodable records kept, restarts
    /// and lag.
    pub pipeline: PipelineStats,
    /// Timers running now (RPC replies, delivery deadlines, client-side RPC timeouts),
    /// of the devices whose partitions this dispatcher holds.
    pub timers: Arc<AtomicU64>,
    /// Timers started again from the store when partitions were assigned.
    pub timers_rearmed: Arc<AtomicU64>,
    /// Pushes, at a (re)subscription, of the shared attributes changed while the device
    /// was away.
    pub missed_attribute_pushes: Arc<AtomicU64>,
}

impl DispatchStats {
    /// These counters as Prometheus collectors (register each in the role's registry).
    pub fn collectors(&self) -> prometheus::Result<Vec<Box<dyn prometheus::core::Collector>>> {
        Ok(vec![
            Box::new(self.counters()?),
            Box::new(self.pipeline.collector(Dispatcher::ROLE)?),
        ])
    }

    fn counters(&self) -> prometheus::Result<fluxgate_observability::CounterSet> {
        use fluxgate_observability::CounterDef;
        let def = |name, help, labels: &[(&'static str, &'static str)], value: &Arc<AtomicU64>| {
            CounterDef {
                name,
                help,
                labels: labels.to_vec(),
                value: value.clone(),
            }
        };
        fluxgate_observability::CounterSet::new(vec![
            def(
                "fluxgate_command_dispatch_deliveries_total",
                "Deliveries produced.",
                &[],
                &self.deliveries,
            ),
            def(
                "fluxgate_command_dispatch_failed_total",
                "Commands that ended failed, timed out or expired.",
                &[],
                &self.failed,
            ),
            def(
                "fluxgate_command_dispatch_client_rpcs_total",
                "Client-side RPC requests of devices, stored for an application to answer.",
                &[],
                &self.client_rpcs,
            ),
            def(
                "fluxgate_command_dispatch_client_rpc_answers_total",
                "Client-side RPC answers sent to their device.",
                &[],
                &self.client_rpc_answers,
            ),
            def(
                "fluxgate_command_dispatch_client_rpc_undelivered_total",
                "Client-side RPC answers not sent: the device was offline.",
                &[],
                &self.client_rpc_undelivered,
            ),
            def(
                "fluxgate_command_dispatch_client_rpc_timed_out_total",
                "Client-side RPC requests nobody answered in time; the device got an error reply.",
                &[],
                &self.client_rpc_timed_out,
            ),
            def(
                "fluxgate_command_dispatch_claim_windows_total",
                "Claiming windows devices opened (ThingsBoard claim messages).",
                &[],
                &self.claim_windows,
            ),
            def(
                "fluxgate_command_dispatch_missed_attribute_pushes_total",
                "Pushes of the shared attributes changed while a device was away, when it subscribed again.",
                &[],
                &self.missed_attribute_pushes,
            ),
            def(
                "fluxgate_command_dispatch_timers_rearmed_total",
                "Timers of commands and client-side RPCs started again from the store when partitions were assigned.",
                &[],
                &self.timers_rearmed,
            ),
        ])
        .and_then(|set| {
            set.with_gauges(vec![def(
                    "fluxgate_command_dispatch_timers",
                    "Timers running (RPC replies, delivery deadlines, client-side RPC timeouts) of the devices whose partitions this dispatcher holds.",
                    &[],
                    &self.timers,
                )])
        })
    }
}

impl Dispatcher {
    /// `attempt` run until it succeeds, with exponential backoff between the configured
    /// bounds; each failure is counted as a retry.
    fn retrying<T, E, F>(
        &self,
        what: &'static str,
        mut attempt: impl FnMut() -> F + 'static,
    ) -> impl Future<Output = T> + 'static
    where
        T: 'static,
        E: std::fmt::Display + 'static,
        F: Future<Output = Result<T, E>> + 'static,
    {
        let stats = self.stats.clone();
        let mut backoff = self.cfg.backoff();
        async move {
            loop {
                match attempt().await {
                    Ok(v) => return v,
                    Err(e) => {
                        stats.pipeline.retries.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "dispatcher: retrying {what}");
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                }
            }
        }
    }

    /// A record that is not an envelope: kept whole on the dead-letter topic and noted in
    /// the rejected log, retrying until both are acknowledged; then acked.
    fn keep_undecodable(&mut self, rec: Record, error: &str, ctx: &mut StageCtx<Self>) {
        const ROLE: &str = "command-dispatch";
        tracing::error!(topic = %rec.position.topic, offset = rec.position.offset, error,
            "dispatcher: not an envelope; keeping it on the dead-letter topic");
        let mut outputs = vec![fluxgate_bus::dead_letter(
            &self.names.dead_letter,
            &rec,
            ROLE,
            error,
        )];
        if let Some(r) =
            fluxgate_model::Rejection::undecodable(&rec.key, now_ms(), ROLE, error, &rec.payload)
        {
            outputs.push(OutRecord::of(&self.names.rejected, &r));
        }
        let producer = self.producer.clone();
        let fut = self.retrying("a dead letter", move || {
            let (producer, outputs) = (producer.clone(), outputs.clone());
            async move { produce_all(&*producer, &outputs).await }
        });
        fluxgate_pipeline::wait(ctx, fut, move |d, (), _| {
            d.stats.pipeline.undecodable.fetch_add(1, Ordering::Relaxed);
            d.consumer.ack(&rec.position);
        });
    }
}

/// Produces `recs` and waits for every ack.
async fn produce_all(
    producer: &dyn Producer,
    recs: &[OutRecord],
) -> Result<(), fluxgate_bus::ProduceError> {
    let mut acks = Vec::with_capacity(recs.len());
    for r in recs {
        acks.push(producer.send(r.clone()).await?);
    }
    for a in acks {
        a.await?;
    }
    Ok(())
}

/// A connect or disconnect as the connection log keeps it.
fn connection_event(
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
struct Online {
    via: Option<DeviceId>,
    dialect: Dialect,
}

type Key = (TenantId, DeviceId);

#[derive(Debug, Clone)]
struct Names {
    /// The topic this dispatcher consumes (its partitions decide whose timers it runs).
    events: String,
    deliveries: String,
    outcomes: String,
    rejected: String,
    dead_letter: String,
}

/// What the actor knows of a device's connection.
#[derive(Debug, Clone)]
enum Presence {
    /// An event of it was seen since the dispatcher started (`None`: offline).
    Seen(Option<Online>),
    /// Nothing seen yet: the connection log says, which the dispatcher that owned the
    /// device's partition before wrote before it committed past the device's events.
    Unknown,
}

/// What `c` becomes when its `deadline` passes, with why; `None` if it is past that.
fn expiry(
    c: &CommandRecord,
    deadline: Deadline,
    delivery_timeout_ms: u64,
) -> Option<(CommandStatus, String)> {
    let undelivered = || format!("not delivered within {delivery_timeout_ms} ms");
    match deadline {
        Deadline::Reply if !c.status.is_final() => {
            Some((CommandStatus::TimedOut, "no reply in time".to_owned()))
        }
        Deadline::Delivery if c.status == CommandStatus::Sent && c.command.persistent => Some((
            CommandStatus::Queued,
            format!("{}; queued for the next connect", undelivered()),
        )),
        Deadline::Delivery if c.status == CommandStatus::Sent => {
            Some((CommandStatus::Failed, undelivered()))
        }
        _ => None,
    }
}

/// What a command's timer waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Deadline {
    /// A two-way RPC's reply.
    Reply,
    /// The front's delivery outcome of a sent command.
    Delivery,
}

/// One timer: at most one runs per command and deadline, or per client-side RPC, in a
/// process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum TimerId {
    Command(MessageId, Deadline),
    ClientRpc(MessageId),
}

/// The timers running in this process. A timer belongs to the dispatcher holding its
/// device's partition: one that fires after the partition moved does nothing (the new
/// holder started it again from the store when the partition was assigned to it).
#[derive(Debug, Default)]
struct Timers {
    running: Mutex<HashSet<TimerId>>,
}

impl Timers {
    /// Whether `id` was not running (and now is).
    fn arm(&self, id: TimerId, stats: &DispatchStats) -> bool {
        let new = self.lock().insert(id);
        if new {
            stats.timers.fetch_add(1, Ordering::Relaxed);
        }
        new
    }

    fn disarm(&self, id: TimerId, stats: &DispatchStats) {
        if self.lock().remove(&id) {
            stats.timers.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<TimerId>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What one record asks the actor to do after the async part.
enum After {
    Nothing,
    Online(Key, Online),
    Offline(Key),
    Timer(Box<CommandRecord>, Duration),
}

/// How often the dispatcher looks whether its consumer's assignment changed.
const ASSIGNMENT_CHECK: Duration = Duration::from_millis(250);

/// The dispatcher.
pub struct Dispatcher {
    consumer: Arc<dyn Consumer>,
    producer: Arc<dyn Producer>,
    store: Arc<dyn Store>,
    names: Names,
    cfg: DispatchConfig,
    stats: Arc<DispatchStats>,
    /// Presence seen on the events topic since this dispatcher started: `None` is a
    /// device known to be offline. Devices not in the map are looked up in the store.
    online: HashMap<Key, Option<Online>>,
    timers: Arc<Timers>,
    /// The consumer's assignment generation the timers were last re-armed for.
    generation: u64,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("online", &self.online.len())
            .finish()
    }
}

/// Everything a step needs, cloned out of the actor.
#[derive(Clone)]
struct Ctx {
    consumer: Arc<dyn Consumer>,
    producer: Arc<dyn Producer>,
    store: Arc<dyn Store>,
    names: Names,
    cfg: DispatchConfig,
    stats: Arc<DispatchStats>,
    timers: Arc<Timers>,
}

impl Ctx {
    async fn set(
        &self,
        id: MessageId,
        to: CommandStatus,
        detail: Option<String>,
        reply: Option<serde_json::Value>,
    ) -> Result<(), StoreError> {
        match self
            .store
            .set_command_status(id, to, now_ms(), detail, reply)
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
    async fn announce_outcome(&self, id: MessageId) {
        let rec = OutRecord::of(&self.names.outcomes, &CommandEnded(id));
        if let Err(e) = self.producer.produce(rec).await {
            tracing::warn!(command = %id, error = %e, "dispatcher: command outcome not announced");
        }
    }

    /// Publishes a delivery for the connection that reaches `device`.
    async fn deliver(
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
        let rec = OutRecord::of(&self.names.deliveries, &delivery);
        self.producer
            .produce(rec)
            .await
            .map_err(|e| e.to_string())?;
        self.stats.deliveries.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Sends a stored command to its online device and marks it sent.
    async fn send(&self, c: &CommandRecord, online: &Online) -> Result<(), String> {
        let body = Outbound::Command {
            request_id: CorrelationId::Int(rpc_id(c.id)),
            name: c.command.name.clone(),
            payload: c.command.payload.clone(),
            time_ms: c.command.time_ms.unwrap_or_else(now_ms),
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
    async fn send_queued(
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
            if c.command.expires_ms.is_some_and(|at| at <= now_ms()) {
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
    async fn push_missed_attributes(
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
    async fn answer_client_rpc(
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

    /// Starts a client-side RPC's timeout: unanswered by its deadline, it ends timed out
    /// and the device gets an error reply.
    fn start_client_rpc_timer(self, rpc: ClientRpc) -> bool {
        let timer = TimerId::ClientRpc(rpc.id);
        if !self.timers.arm(timer, &self.stats) {
            return false;
        }
        let key = device_key(&rpc.tenant, &rpc.device);
        let after = Duration::from_millis((rpc.deadline_ms - now_ms()).max(0) as u64);
        actix::spawn(async move {
            tokio::time::sleep(after).await;
            self.timers.disarm(timer, &self.stats);
            if !self.holds(&key) {
                return; // its partition moved: the new holder runs it
            }
            let mut backoff = self.cfg.backoff();
            for _ in 0..8 {
                match self.time_out_client_rpc(&rpc).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(rpc = %rpc.id, error = %e, "dispatcher: client-side RPC timeout not recorded; retrying")
                    }
                }
                self.stats.pipeline.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(backoff.next_delay()).await;
            }
        });
        true
    }

    async fn time_out_client_rpc(&self, rpc: &ClientRpc) -> Result<(), String> {
        let (t, d) = (rpc.tenant.clone(), rpc.device.clone());
        let ended = self
            .store
            .end_client_rpc(t, d, rpc.id, ClientRpcStatus::TimedOut, None, now_ms())
            .await
            .map_err(|e| e.to_string())?;
        if ended.is_none() {
            return Ok(()); // answered (or gone with its device) first
        }
        self.stats
            .client_rpc_timed_out
            .fetch_add(1, Ordering::Relaxed);
        // Presence from the connection log, which this dispatcher keeps exact for every
        // event it has handled (the timer runs outside the actor).
        let online = self
            .presence_from_store(&rpc.tenant, &rpc.device, Dialect::ThingsBoard)
            .await
            .map_err(|e| e.to_string())?;
        let body = Outbound::RpcResponse {
            request_id: rpc.request_id.clone(),
            data: serde_json::json!({
                "error": format!("no answer within {} ms", self.cfg.client_rpc_timeout_ms),
            }),
        };
        self.answer_client_rpc(&rpc.tenant, &rpc.device, online.as_ref(), rpc.id, body)
            .await
    }

    /// Whether this dispatcher holds the partition of the device keyed `key`.
    fn holds(&self, key: &str) -> bool {
        self.consumer.holds(&self.names.events, key.as_bytes())
    }

    /// Starts a command's timer unless it runs already. It runs outside the actor, so it
    /// outlives a restart of the actor; [`Ctx::rearm_timers`] covers a restart of the
    /// process and a partition taken over from another dispatcher.
    fn start_timer(self, c: &CommandRecord, after: Duration, deadline: Deadline) -> bool {
        let (id, timer) = (c.id, TimerId::Command(c.id, deadline));
        if !self.timers.arm(timer, &self.stats) {
            return false;
        }
        let key = device_key(&c.tenant, &c.device);
        actix::spawn(async move {
            let mut after = after;
            loop {
                tokio::time::sleep(after).await;
                if !self.holds(&key) {
                    break; // its partition moved: the new holder runs it
                }
                match self.expire(id, deadline).await {
                    Some(later) => after = later,
                    None => break,
                }
            }
            self.timers.disarm(timer, &self.stats);
        });
        true
    }

    /// Starts again the timers of the commands in flight and the pending client-side
    /// RPCs of the devices whose partitions this dispatcher holds now (after a restart,
    /// or a partition taken over from another instance): the store keeps them.
    async fn rearm_timers(self) {
        let mut started = 0;
        match self.store.pending_client_rpcs(100_000).await {
            Ok(rpcs) => {
                for rpc in rpcs {
                    if self.holds(&device_key(&rpc.tenant, &rpc.device)) {
                        started += u64::from(self.clone().start_client_rpc_timer(rpc));
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "dispatcher: pending client-side RPCs not read; their timeouts wait for the next restart");
            }
        }
        let pending = match self.store.in_flight_commands(100_000).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "dispatcher: commands in flight not read; their timers wait for the next restart");
                return;
            }
        };
        let now = now_ms();
        let until = |at: i64| Duration::from_millis((at - now).max(0) as u64);
        let ms = |d: u64| i64::try_from(d).unwrap_or(i64::MAX);
        for c in pending {
            if !self.holds(&device_key(&c.tenant, &c.device)) {
                continue;
            }
            if c.status == CommandStatus::Sent {
                let at = c
                    .updated_ms
                    .saturating_add(ms(self.cfg.delivery_timeout_ms));
                started += u64::from(self.clone().start_timer(&c, until(at), Deadline::Delivery));
            }
            if c.command.two_way {
                let at = c
                    .command
                    .expires_ms
                    .unwrap_or(c.updated_ms.saturating_add(ms(self.cfg.rpc_timeout_ms)));
                started += u64::from(self.clone().start_timer(&c, until(at), Deadline::Reply));
            }
        }
        self.stats
            .timers_rearmed
            .fetch_add(started, Ordering::Relaxed);
    }

    /// A command's time is up. A two-way RPC not answered timed out; a command still
    /// `sent` (no front reported its delivery) is queued again for the next connect if
    /// persistent, and fails if not. A command sent again since this timer started has a
    /// later deadline: the time left to it is returned, to wait again. Store failures are
    /// retried a few times; after that the command stays open until a re-arm.
    async fn expire(&self, id: MessageId, deadline: Deadline) -> Option<Duration> {
        let mut backoff = self.cfg.backoff();
        let timeout = i64::try_from(self.cfg.delivery_timeout_ms).unwrap_or(i64::MAX);
        for _ in 0..8 {
            let done = match self.store.command(id).await {
                Ok(Some(c))
                    if deadline == Deadline::Delivery
                        && c.status == CommandStatus::Sent
                        && c.updated_ms.saturating_add(timeout) > now_ms() =>
                {
                    let left = c.updated_ms.saturating_add(timeout) - now_ms();
                    return Some(Duration::from_millis(left.max(1) as u64));
                }
                Ok(Some(c)) => match expiry(&c, deadline, self.cfg.delivery_timeout_ms) {
                    Some((to, why)) => self.set(id, to, Some(why), None).await.is_ok(),
                    None => true,
                },
                Ok(None) => true,
                Err(_) => false,
            };
            if done {
                return None;
            }
            self.stats.pipeline.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(backoff.next_delay()).await;
        }
        tracing::warn!(command = %id, ?deadline, "dispatcher: could not record a command's timeout");
        None
    }

    /// Where `device` is connected according to the connection log: the presence of a
    /// device this dispatcher has seen no event of since it started. Dispatchers write
    /// that log themselves, each entry before the event's offset is committed, so it is
    /// exact for every event before this one on the device's key.
    async fn presence_from_store(
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

    fn timeout_of(&self, c: &CommandRecord) -> Option<Duration> {
        if !c.command.two_way {
            return None;
        }
        let ms = match c.command.expires_ms {
            Some(at) => (at - now_ms()).max(0) as u64,
            None => self.cfg.rpc_timeout_ms,
        };
        Some(Duration::from_millis(ms))
    }

    /// Handles one record; returns what the actor must change afterwards.
    async fn step(&self, env: Envelope, presence: Presence) -> Result<After, String> {
        let DeviceRef::Id(device) = env.device.clone() else {
            return Ok(After::Nothing);
        };
        let key = (env.tenant.clone(), device.clone());
        let store_err = |e: StoreError| e.to_string();
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
        match env.body {
            Body::Command(command) => {
                let record = match self.store.command(env.id).await.map_err(store_err)? {
                    // Redelivered after a crash between storing and sending it: go on.
                    Some(c) if c.status == CommandStatus::Queued => c,
                    Some(_) => return Ok(After::Nothing), // redelivered: already handled
                    None => {
                        let record = CommandRecord {
                            id: env.id,
                            tenant: env.tenant.clone(),
                            device: device.clone(),
                            command,
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
                        self.set(
                            record.id,
                            CommandStatus::Failed,
                            Some("device offline".into()),
                            None,
                        )
                        .await
                        .map_err(store_err)?;
                        return Ok(After::Nothing);
                    }
                }
                Ok(timer.unwrap_or(After::Nothing))
            }
            Body::Connect { ref session, .. } => {
                let o = Online {
                    via: env.via.clone(),
                    dialect: env.dialect,
                };
                let e = connection_event(&env, device.clone(), true, session.clone(), None);
                self.store.log_connection(e).await.map_err(store_err)?;
                // A device behind a ThingsBoard gateway gets its commands on the gateway's
                // `v1/gateway/rpc`, subscribed when the gateway's session began. Any other
                // device subscribes after connecting: its queued commands wait for that
                // (`Subscribed`), or they would reach a connection not listening yet.
                // The same for its shared attributes, on `v1/gateway/attributes`.
                if env.via.is_some() && env.dialect == Dialect::ThingsBoard {
                    self.send_queued(&env.tenant, &device, &o).await?;
                    self.push_missed_attributes(env.id, &env.tenant, &device, &o)
                        .await?;
                }
                Ok(After::Online(key, o))
            }
            Body::Subscribed => {
                match &online {
                    Some(o) => self.send_queued(&env.tenant, &device, o).await?,
                    None => {
                        tracing::info!(tenant = %env.tenant, %device, "dispatcher: subscription of a device not connected; ignored");
                    }
                }
                Ok(After::Nothing)
            }
            Body::SubscribedAttributes => {
                match &online {
                    Some(o) => {
                        self.push_missed_attributes(env.id, &env.tenant, &device, o)
                            .await?
                    }
                    None => {
                        tracing::info!(tenant = %env.tenant, %device, "dispatcher: attribute subscription of a device not connected; ignored");
                    }
                }
                Ok(After::Nothing)
            }
            Body::Disconnect {
                ref session,
                ref reason,
            } => {
                let (session, reason) = (session.clone(), reason.clone());
                let e = connection_event(&env, device.clone(), false, session, reason);
                self.store.log_connection(e).await.map_err(store_err)?;
                Ok(After::Offline(key))
            }
            Body::RpcResponse { request_id, data } => {
                let CorrelationId::Int(rid) = request_id else {
                    return Ok(After::Nothing);
                };
                let recent = self
                    .store
                    .commands(env.tenant.clone(), device.clone(), None, 200)
                    .await
                    .map_err(store_err)?;
                if let Some(c) = recent.iter().find(|c| {
                    rpc_id(c.id) == rid
                        && matches!(c.status, CommandStatus::Sent | CommandStatus::Delivered)
                }) {
                    self.set(c.id, CommandStatus::Replied, None, Some(data))
                        .await
                        .map_err(store_err)?;
                }
                Ok(After::Nothing)
            }
            Body::DeliveryOutcome {
                delivery,
                delivered,
                reason,
            } => {
                if let Some(c) = self.store.command(delivery).await.map_err(store_err)? {
                    let to = match (delivered, c.command.persistent) {
                        (true, _) => CommandStatus::Delivered,
                        (false, true) => CommandStatus::Queued,
                        (false, false) => CommandStatus::Failed,
                    };
                    self.set(c.id, to, reason, None).await.map_err(store_err)?;
                }
                Ok(After::Nothing)
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
                let read = |scope, sel: KeySelection| {
                    let (store, tenant, device) =
                        (self.store.clone(), env.tenant.clone(), device.clone());
                    async move {
                        match sel {
                            KeySelection::Nothing => Ok(Values::new()),
                            KeySelection::All => {
                                store.attributes(tenant, device, scope, None).await
                            }
                            KeySelection::Keys(k) => {
                                store.attributes(tenant, device, scope, Some(k)).await
                            }
                        }
                    }
                };
                let client = read(AttributeScope::Client, client)
                    .await
                    .map_err(store_err)?;
                let shared = read(AttributeScope::Shared, shared)
                    .await
                    .map_err(store_err)?;
                let body = Outbound::AttributeResponse {
                    request_id,
                    reply,
                    client,
                    shared,
                };
                self.deliver(&env.tenant, &device, &o, env.id, body).await?;
                Ok(After::Nothing)
            }
            // Shared attributes changed through the API (already in the store): pushed to the
            // device, or through its gateway, when it is online. An offline device gets what
            // changed while it was away when it subscribes to its attribute updates again
            // (`SubscribedAttributes`; behind a ThingsBoard gateway, at its connect).
            Body::Attributes { values } => {
                if let Some(o) = online {
                    let body = Outbound::SharedAttributes { values };
                    self.deliver(&env.tenant, &device, &o, env.id, body).await?;
                }
                Ok(After::Nothing)
            }
            // The device opens its claiming window: an application claims it through the
            // API with the secret, until the window closes.
            Body::Claim {
                secret_key,
                duration_ms,
            } => {
                let ms = duration_ms.unwrap_or(self.cfg.claim_duration_ms);
                let until = env
                    .received_ms
                    .saturating_add(i64::try_from(ms).unwrap_or(i64::MAX));
                let secret = hash_secret(secret_key.as_deref().unwrap_or(""));
                self.store
                    .open_claim_window(env.tenant.clone(), device, secret, until)
                    .await
                    .map_err(store_err)?;
                self.stats.claim_windows.fetch_add(1, Ordering::Relaxed);
                Ok(After::Nothing)
            }
            // A device's client-side RPC: kept for an application to answer through the
            // API, or to time out with an error reply.
            Body::RpcRequest {
                request_id,
                method,
                params,
            } => {
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
                // Armed again on a redelivery too (its timer may have died with an
                // earlier process); a timeout ends only a request still pending.
                self.clone().start_client_rpc_timer(rpc);
                Ok(After::Nothing)
            }
            // An application answered a client-side RPC (the API ended it in the store):
            // to the device, over the connection that reaches it now.
            Body::RpcAnswer {
                request,
                request_id,
                data,
            } => {
                let body = Outbound::RpcResponse { request_id, data };
                self.answer_client_rpc(&env.tenant, &device, online.as_ref(), request, body)
                    .await?;
                Ok(After::Nothing)
            }
            // Not for the dispatcher: telemetry goes to the writer.
            Body::Telemetry { .. } => Ok(After::Nothing),
        }
    }
}

impl Dispatcher {
    /// A dispatcher over `parts.consumer` (subscribed to the device events topic).
    pub fn new(parts: Parts<DispatchConfig, DispatchStats>) -> Self {
        let Parts {
            consumer,
            producer,
            store,
            topics,
            cfg,
            stats,
        } = parts;
        Dispatcher {
            consumer,
            producer,
            store,
            names: Names {
                events: topics.name(Topic::DeviceEvents),
                deliveries: topics.name(Topic::Deliveries),
                outcomes: topics.name(Topic::CommandOutcomes),
                rejected: topics.name(Topic::IngestRejected),
                dead_letter: topics.name(Topic::DeadLetter),
            },
            cfg,
            stats,
            online: HashMap::new(),
            timers: Arc::default(),
            generation: 0,
        }
    }

    /// Re-arms, from the store, the timers of the partitions assigned since the last
    /// look (at start: all the consumer holds).
    fn watch_assignment(&mut self) {
        let generation = self.consumer.generation();
        if generation != self.generation {
            self.generation = generation;
            actix::spawn(self.ctx().rearm_timers());
        }
    }

    fn ctx(&self) -> Ctx {
        Ctx {
            consumer: self.consumer.clone(),
            timers: self.timers.clone(),
            producer: self.producer.clone(),
            store: self.store.clone(),
            names: self.names.clone(),
            cfg: self.cfg.clone(),
            stats: self.stats.clone(),
        }
    }
}

/// The first phase of a dispatcher: its consumer is subscribed, so every event produced
/// from now on reaches it. [`Prepared::run`] is the second.
pub fn prepare(
    bus: &Arc<dyn fluxgate_bus::Bus>,
    store: Arc<dyn Store>,
    topics: &TopicsConfig,
    cfg: DispatchConfig,
    stats: Arc<DispatchStats>,
) -> Result<Prepared, fluxgate_bus::BusError> {
    let events = topics.name(Topic::DeviceEvents);
    let spec = fluxgate_bus::ConsumerSpec::group(&cfg.group, &[&events]);
    Parts::subscribe(bus, spec, store, topics, cfg, stats).map(Prepared)
}

/// A dispatcher subscribed to its topic and not yet running ([`prepare`]).
#[derive(Debug)]
pub struct Prepared(Parts<DispatchConfig, DispatchStats>);

impl Prepared {
    /// Runs the dispatcher until `shutdown` resolves, then drains it. Must run inside an
    /// actix system. Returns its counters.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> Arc<DispatchStats> {
        let parts = self.0;
        let timers: Arc<Timers> = Arc::default();
        let make = || {
            let mut d = Dispatcher::new(parts.clone());
            // A restarted actor finds the timers of the one before it running.
            d.timers = timers.clone();
            d
        };
        // A dispatcher that dies (a panic) is restarted; its unfinished records come
        // again. Presence is rebuilt from the events that follow and the store's
        // connection log.
        fluxgate_pipeline::run(&parts.consumer, &parts.stats.pipeline, make, shutdown).await;
        parts.stats
    }
}

impl Stage for Dispatcher {
    const ROLE: &'static str = "dispatcher";

    fn consumer(&self) -> &Arc<dyn Consumer> {
        &self.consumer
    }

    fn stats(&self) -> &PipelineStats {
        &self.stats.pipeline
    }

    fn started(&mut self, ctx: &mut StageCtx<Self>) {
        self.watch_assignment();
        ctx.run_interval(ASSIGNMENT_CHECK, |act, _| act.stage().watch_assignment());
    }

    /// Records are handled one at a time (each waits for the one before it).
    fn accept(&mut self, rec: Record, ctx: &mut StageCtx<Self>) {
        let env = match Envelope::from_bytes(&rec.payload) {
            Ok(env) => env,
            Err(e) => return self.keep_undecodable(rec, &e.to_string(), ctx),
        };
        let online = match &env.device {
            DeviceRef::Id(d) => match self.online.get(&(env.tenant.clone(), d.clone())) {
                Some(seen) => Presence::Seen(seen.clone()),
                None => Presence::Unknown,
            },
            DeviceRef::Name(_) => Presence::Seen(None),
        };
        let (work, consumer) = (self.ctx(), self.consumer.clone());
        let fut = self.retrying("a record", move || {
            let (work, env, online) = (work.clone(), env.clone(), online.clone());
            async move { work.step(env, online).await }
        });
        fluxgate_pipeline::wait(ctx, fut, move |act, after, _| {
            match after {
                After::Nothing => {}
                After::Online(k, o) => {
                    act.online.insert(k, Some(o));
                }
                // The devices behind a gateway get disconnects of their own, on their
                // keys, when the gateway's session ends (the front sends them).
                After::Offline(k) => {
                    act.online.insert(k, None);
                }
                After::Timer(c, d) => {
                    act.ctx().start_timer(&c, d, Deadline::Reply);
                }
            }
            consumer.ack(&rec.position);
        });
    }
}
