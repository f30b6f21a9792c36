//! The dispatcher stage (run by the `fluxgate_pipeline` actor): the actor side, which
//! keeps presence and hands each record to [`Ctx`], the async side.
//!
//! - `events`: what each kind of event does (one function per kind).
//! - `deliver`: presence from the connection log, deliveries, command status moves.
//! - `timers`: RPC reply and delivery deadlines, client-side RPC timeouts, re-arming.
//! - `stats`: the role's counters.

mod deliver;
mod events;
mod stats;
mod timers;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use actix::AsyncContext;
use fluxgate_bus::{OutRecord, Producer, Record, Topic, TopicsConfig};
use fluxgate_model::{DeviceId, DeviceRef, Envelope, MessageId, TenantId};
use fluxgate_pipeline::{Clock, Ctx as StageCtx, Parts, Source, Stage};
use fluxgate_store::{CommandRecord, Store};
use tracing::Instrument;

use crate::DispatchConfig;
use deliver::{Ctx, Online, Presence};
pub use stats::DispatchStats;
use timers::{Deadline, Timers};

/// The ThingsBoard RPC id of a command (an integer, as ThingsBoard clients expect),
/// derived from the command id so that it survives restarts.
pub fn rpc_id(id: MessageId) -> i64 {
    (id.0 & 0x7FFF_FFFF) as i64
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
        let stats = self.parts.stats.clone();
        let mut backoff = self.parts.cfg.backoff();
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
        if let Some(r) = fluxgate_model::Rejection::undecodable(
            &rec.key,
            self.clock.now_ms(),
            ROLE,
            error,
            &rec.payload,
        ) {
            outputs.push(OutRecord::of(&self.names.rejected, &r));
        }
        let producer = self.parts.producer.clone();
        let fut = self.retrying("a dead letter", move || {
            let (producer, outputs) = (producer.clone(), outputs.clone());
            async move { produce_all(&*producer, &outputs).await }
        });
        fluxgate_pipeline::wait(ctx, fut, move |d, (), _| {
            d.parts
                .stats
                .pipeline
                .undecodable
                .fetch_add(1, Ordering::Relaxed);
            d.parts.consumer.ack(&rec.position);
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
        let mut r = r.clone();
        fluxgate_observability::telemetry::inject(&mut r.headers);
        acks.push(producer.send(r).await?);
    }
    for a in acks {
        a.await?;
    }
    Ok(())
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
    parts: Parts<DispatchConfig, DispatchStats>,
    names: Names,
    /// Presence seen on the events topic since this dispatcher started: `None` is a
    /// device known to be offline. Devices not in the map are looked up in the store.
    online: HashMap<Key, Option<Online>>,
    timers: Arc<Timers>,
    /// The consumer's assignment generation the timers were last re-armed for.
    generation: u64,
    /// What the command and RPC deadlines are measured on.
    clock: Clock,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("online", &self.online.len())
            .finish()
    }
}

impl Dispatcher {
    /// A dispatcher over `parts.consumer` (subscribed to the device events topic).
    pub fn new(parts: Parts<DispatchConfig, DispatchStats>) -> Self {
        Dispatcher {
            names: Names {
                events: parts.topics.name(Topic::DeviceEvents),
                deliveries: parts.topics.name(Topic::Deliveries),
                outcomes: parts.topics.name(Topic::CommandOutcomes),
                rejected: parts.topics.name(Topic::IngestRejected),
                dead_letter: parts.topics.name(Topic::DeadLetter),
            },
            parts,
            online: HashMap::new(),
            timers: Arc::default(),
            generation: 0,
            clock: Clock::System,
        }
    }

    /// The same dispatcher, its deadlines measured on `clock` (tests move a manual one).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Re-arms, from the store, the timers of the partitions assigned since the last
    /// look (at start: all the consumer holds).
    fn watch_assignment(&mut self) {
        let generation = self.parts.consumer.generation();
        if generation != self.generation {
            self.generation = generation;
            actix::spawn(self.ctx().rearm_timers());
        }
    }

    fn ctx(&self) -> Ctx {
        Ctx {
            consumer: self.parts.consumer.clone(),
            timers: self.timers.clone(),
            producer: self.parts.producer.clone(),
            store: self.parts.store.clone(),
            names: self.names.clone(),
            cfg: self.parts.cfg.clone(),
            stats: self.parts.stats.clone(),
            clock: self.clock.clone(),
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
    Parts::subscribe(bus, spec, store, topics, cfg, stats).map(|parts| Prepared {
        parts,
        clock: Clock::System,
    })
}

/// A dispatcher subscribed to its topic and not yet running ([`prepare`]).
#[derive(Debug)]
pub struct Prepared {
    parts: Parts<DispatchConfig, DispatchStats>,
    clock: Clock,
}

impl Prepared {
    /// The same dispatcher, its deadlines measured on `clock` (tests move a manual one).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Runs the dispatcher until `shutdown` resolves, then drains it. Must run inside an
    /// actix system. Returns its counters.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> Arc<DispatchStats> {
        let Prepared { parts, clock } = self;
        let timers: Arc<Timers> = Arc::default();
        let make = || {
            let mut d = Dispatcher::new(parts.clone()).with_clock(clock.clone());
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

    fn source(&self) -> Source<'_> {
        Source::new(&self.parts.consumer, &self.parts.stats.pipeline)
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
        // A consumer span per record, child of the span that produced it (an API
        // command, a device's RPC request, a delivery outcome).
        let span = tracing::info_span!(
        target: fluxgate_observability::telemetry::SPANS,
            "dispatcher.process",
            otel.kind = "consumer",
            tenant = env.tenant.as_str(),
            device = env.device.as_str(),
            message.kind = env.body.kind().as_str(),
        );
        fluxgate_observability::telemetry::parent(&span, &rec.headers);
        let (work, consumer) = (self.ctx(), self.parts.consumer.clone());
        let fut = self
            .retrying("a record", move || {
                let (work, env, online) = (work.clone(), env.clone(), online.clone());
                async move { work.step(env, online).await }
            })
            .instrument(span);
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
