//! The dispatcher's timers: a two-way RPC's reply deadline, a sent command's delivery
//! deadline and a client-side RPC's timeout. They run outside the actor (they outlive a
//! restart of it), belong to the dispatcher holding the device's partition, and are
//! re-armed from the store when partitions are assigned.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fluxgate_model::{Dialect, MessageId, Outbound, device_key};
use fluxgate_store::{ClientRpc, ClientRpcStatus, CommandRecord, CommandStatus};

use super::DispatchStats;
use super::deliver::Ctx;

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
pub(super) enum Deadline {
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
pub(super) struct Timers {
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

impl Ctx {
    /// Starts a client-side RPC's timeout: unanswered by its deadline, it ends timed out
    /// and the device gets an error reply.
    pub(super) fn start_client_rpc_timer(self, rpc: ClientRpc) -> bool {
        let timer = TimerId::ClientRpc(rpc.id);
        if !self.timers.arm(timer, &self.stats) {
            return false;
        }
        let key = device_key(&rpc.tenant, &rpc.device);
        let after = self.clock.until(rpc.deadline_ms);
        actix::spawn(async move {
            self.clock.sleep(after).await;
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
            .end_client_rpc(
                t,
                d,
                rpc.id,
                ClientRpcStatus::TimedOut,
                None,
                self.clock.now_ms(),
            )
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

    /// Starts a command's timer unless it runs already. It runs outside the actor, so it
    /// outlives a restart of the actor; [`Ctx::rearm_timers`] covers a restart of the
    /// process and a partition taken over from another dispatcher.
    pub(super) fn start_timer(
        self,
        c: &CommandRecord,
        after: Duration,
        deadline: Deadline,
    ) -> bool {
        let (id, timer) = (c.id, TimerId::Command(c.id, deadline));
        if !self.timers.arm(timer, &self.stats) {
            return false;
        }
        let key = device_key(&c.tenant, &c.device);
        actix::spawn(async move {
            let mut after = after;
            loop {
                self.clock.sleep(after).await;
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
    pub(super) async fn rearm_timers(self) {
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
        let until = |at: i64| self.clock.until(at);
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

    /// Whether a front reported command `id` written at QoS 0 (the last change of its
    /// history says so). A history that cannot be read says no: the deadline applies.
    async fn written_at_most_once(&self, id: MessageId) -> bool {
        self.store.command_history(id).await.is_ok_and(|h| {
            h.last().is_some_and(|c| {
                c.status == CommandStatus::Sent
                    && c.detail.as_deref() == Some(fluxgate_model::WRITTEN_AT_MOST_ONCE)
            })
        })
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
                // Written at QoS 0: no acknowledgement will come; its delivery is over.
                Ok(Some(c))
                    if deadline == Deadline::Delivery
                        && c.status == CommandStatus::Sent
                        && self.written_at_most_once(id).await =>
                {
                    true
                }
                Ok(Some(c))
                    if deadline == Deadline::Delivery
                        && c.status == CommandStatus::Sent
                        && c.updated_ms.saturating_add(timeout) > self.clock.now_ms() =>
                {
                    let left = c.updated_ms.saturating_add(timeout) - self.clock.now_ms();
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
}
