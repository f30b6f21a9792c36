//! The skeleton every consuming role runs on: the validator, the time-series writer and
//! the command dispatcher each provide only a [`Stage`] (what one record does); this
//! crate reads the records, counts them, retries consume errors, supervises the stage
//! (a stage that dies is restarted and its unfinished records come again), drains it at
//! shutdown and makes the final commit.
//!
//! - [`Pipeline`] is the actor a stage runs in. It fetches one record at a time and hands
//!   it to [`Stage::accept`]; work the stage makes the actor wait for ([`wait`]) holds
//!   up the next fetch, which is how each role keeps its records in order.
//! - [`run`] starts a pipeline under [`supervise::supervise`] until shutdown, then sends
//!   it [`Drain`]: no more fetching, [`Stage::drain`] awaited, the actor stopped.
//! - [`PipelineStats`] are the counters every role has, exported with a `role` label
//!   ([`PipelineStats::collector`]): `fluxgate_pipeline_records_total`,
//!   `_retries_total`, `_restarts_total`, `_undecodable_total` and the
//!   `fluxgate_pipeline_consumer_lag_records` gauge.
//! - [`Clock`] is where a stage's own timers read the time and wait, so its deadlines
//!   can be tested on a clock the test moves (the `testing` feature).

pub mod clock;
pub mod supervise;

pub use clock::Clock;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix::prelude::*;
use fluxgate_bus::{
    Bus, BusError, ConsumeError, Consumer, ConsumerSpec, Producer, Record, TopicsConfig,
};

use crate::supervise::{Lifeline, Watch};

/// Pause before fetching again after a consume error.
const CONSUME_RETRY: Duration = Duration::from_millis(100);

/// Records the stage's mailbox holds at most (only [`Drain`] is sent to it).
const MAILBOX: usize = 16;

/// What one consuming role does with its records.
pub trait Stage: Sized + Unpin + 'static {
    /// The role's name, as the binary's commands spell it (`validator`, `writer`,
    /// `dispatcher`): in the log and the `role` label of [`PipelineStats`].
    const ROLE: &'static str;

    /// Where the stage's records come from: the consumer it acks them on, and the
    /// role's pipeline counters ([`Pipeline`] counts the records it reads).
    fn source(&self) -> Source<'_>;

    /// Called once when the pipeline starts, before the first fetch (timers go here).
    fn started(&mut self, _ctx: &mut Ctx<Self>) {}

    /// One record, in the order the consumer gives them. Work the next record must not
    /// overtake goes through [`wait`]; the stage acks or nacks the record itself when
    /// its effect is done.
    fn accept(&mut self, rec: Record, ctx: &mut Ctx<Self>);

    /// Starts this stage in a [`Pipeline`] of its own, unsupervised: a stage that dies
    /// stays dead (tests and benchmarks; [`run`] is the supervised one).
    fn start(self) -> Addr<Pipeline<Self>> {
        Pipeline::new(self).start()
    }

    /// At shutdown, after the last fetch: what must finish before the stage stops (its
    /// records in flight acknowledged, its open batch written).
    fn drain(&mut self) -> Pin<Box<dyn Future<Output = ()>>> {
        Box::pin(std::future::ready(()))
    }
}

/// A stage's consumer and pipeline counters ([`Stage::source`]).
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// The consumer the records come from and are acked on.
    pub consumer: &'a Arc<dyn Consumer>,
    /// The role's pipeline counters.
    pub stats: &'a PipelineStats,
}

impl<'a> Source<'a> {
    /// Records from `consumer`, counted in `stats`.
    pub fn new(consumer: &'a Arc<dyn Consumer>, stats: &'a PipelineStats) -> Self {
        Source { consumer, stats }
    }
}

/// The context a stage's callbacks get.
pub type Ctx<S> = Context<Pipeline<S>>;

/// The actor a [`Stage`] runs in.
pub struct Pipeline<S: Stage> {
    stage: S,
    draining: bool,
    fetching: Option<SpawnHandle>,
    lifeline: Option<Lifeline>,
}

impl<S: Stage> std::fmt::Debug for Pipeline<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("role", &S::ROLE)
            .field("draining", &self.draining)
            .finish()
    }
}

impl<S: Stage> Pipeline<S> {
    /// A pipeline running `stage`, unsupervised: a stage that dies stays dead (tests and
    /// benchmarks; [`run`] is the supervised one).
    pub fn new(stage: S) -> Self {
        Pipeline {
            stage,
            draining: false,
            fetching: None,
            lifeline: None,
        }
    }

    /// The stage, for callbacks the stage registers on its context.
    pub fn stage(&mut self) -> &mut S {
        &mut self.stage
    }

    fn fetch(&mut self, ctx: &mut Ctx<S>) {
        if self.draining {
            return;
        }
        let c = self.stage.source().consumer.clone();
        let next = async move { c.recv().await }.into_actor(self);
        self.fetching = Some(ctx.spawn(next.map(|res, act, ctx| match res {
            Ok(rec) => {
                act.stage
                    .source()
                    .stats
                    .records
                    .fetch_add(1, Ordering::Relaxed);
                act.stage.accept(rec, ctx);
                // Spawned now, polled only once what `accept` made the actor wait for is
                // done (actix polls nothing else while a `wait` is pending).
                act.fetch(ctx);
            }
            Err(ConsumeError::Closed) => ctx.stop(),
            Err(e) => {
                tracing::warn!(role = S::ROLE, error = %e, "consume error; retrying");
                ctx.run_later(CONSUME_RETRY, |act, ctx| act.fetch(ctx));
            }
        })));
    }
}

impl<S: Stage> Actor for Pipeline<S> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX);
        self.stage.started(ctx);
        self.fetch(ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        if let Some(l) = self.lifeline.take() {
            l.finished();
        }
    }
}

/// Makes the pipeline finish `work` before it fetches the next record or handles a
/// message, then calls `then` with the stage and the work's output.
///
/// While `work` is pending, actix polls nothing else of this actor: no message and no
/// future spawned on its context. So `work` must never wait for something only such a
/// future would release (a permit, a channel): that waits forever. Await those on a task
/// of their own (`actix::spawn`).
pub fn wait<S: Stage, T: 'static>(
    ctx: &mut Ctx<S>,
    work: impl Future<Output = T> + 'static,
    then: impl FnOnce(&mut S, T, &mut Ctx<S>) + 'static,
) {
    ctx.wait(
        actix::fut::wrap_future::<_, Pipeline<S>>(work)
            .map(move |out, act, ctx| then(&mut act.stage, out, ctx)),
    );
}

/// Stops fetching, waits for [`Stage::drain`], then stops the pipeline (graceful drain).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Drain;

impl<S: Stage> Handler<Drain> for Pipeline<S> {
    type Result = ();

    fn handle(&mut self, _: Drain, ctx: &mut Self::Context) {
        self.draining = true;
        if let Some(h) = self.fetching.take() {
            ctx.cancel_future(h);
        }
        // Spawned, not waited for: what the drain waits on (the validator's acks, say)
        // is itself spawned on this actor, and actix polls nothing else during a wait.
        let done = self.stage.drain();
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(done)
                .map(|(), _, ctx: &mut Self::Context| ctx.stop()),
        );
    }
}

/// Runs stages made by `make` on `consumer` until `shutdown` resolves, restarting one
/// that dies (its unfinished records are redelivered to the next); then drains the live
/// one and commits the consumer's acked positions. Must run inside an actix system.
pub async fn run<S: Stage>(
    consumer: &Arc<dyn Consumer>,
    stats: &PipelineStats,
    mut make: impl FnMut() -> S,
    shutdown: impl Future<Output = ()>,
) {
    let start = |lifeline| {
        let mut p = Pipeline::new(make());
        p.lifeline = Some(lifeline);
        p.start()
    };
    let drain = |addr: &Addr<Pipeline<S>>| addr.do_send(Drain);
    supervise::supervise(S::ROLE, consumer, stats.watch(), start, drain, shutdown).await;
}

/// What a role's stage is built from, the same for every role: its subscribed
/// consumer, a producer, the part of the store it uses (`St`: the validator a
/// [`fluxgate_store::RegistryStore`], the writer its time series and logs), the topic
/// names, its config and its counters. The first phase of a role ([`Parts::subscribe`])
/// makes them; each (re)start of its stage gets a clone.
#[derive(Debug)]
pub struct Parts<Cfg, Stats, St: ?Sized = dyn fluxgate_store::Store> {
    /// Subscribed to the role's topics.
    pub consumer: Arc<dyn Consumer>,
    /// For the role's outputs (and dead letters).
    pub producer: Arc<dyn Producer>,
    /// The aggregates of the store the role uses.
    pub store: Arc<St>,
    /// Topic names.
    pub topics: TopicsConfig,
    /// The role's config.
    pub cfg: Cfg,
    /// The role's counters (their [`PipelineStats`] among them).
    pub stats: Arc<Stats>,
}

impl<Cfg: Clone, Stats, St: ?Sized> Clone for Parts<Cfg, Stats, St> {
    fn clone(&self) -> Self {
        Parts {
            consumer: self.consumer.clone(),
            producer: self.producer.clone(),
            store: self.store.clone(),
            topics: self.topics.clone(),
            cfg: self.cfg.clone(),
            stats: self.stats.clone(),
        }
    }
}

impl<Cfg, Stats, St: ?Sized> Parts<Cfg, Stats, St> {
    /// A role's first phase: its consumer is subscribed (`spec`), so every record
    /// produced from now on reaches it.
    pub fn subscribe(
        bus: &Arc<dyn Bus>,
        spec: ConsumerSpec,
        store: Arc<St>,
        topics: &TopicsConfig,
        cfg: Cfg,
        stats: Arc<Stats>,
    ) -> Result<Self, BusError> {
        Ok(Parts {
            consumer: bus.consumer(spec)?,
            producer: bus.producer(),
            store,
            topics: topics.clone(),
            cfg,
            stats,
        })
    }
}

/// The counters every consuming role has (its own come beside them).
#[derive(Debug, Clone, Default)]
pub struct PipelineStats {
    /// Records read from the bus.
    pub records: Arc<AtomicU64>,
    /// Store or bus failures retried.
    pub retries: Arc<AtomicU64>,
    /// Records that could not be decoded: kept on the dead-letter topic and in the
    /// rejected log, then acked.
    pub undecodable: Arc<AtomicU64>,
    /// Times the stage died and was restarted (its unfinished records redelivered).
    pub restarts: Arc<AtomicU64>,
    /// The consumer's lag: records of the assigned partitions not finished yet.
    pub lag: Arc<AtomicU64>,
}

impl PipelineStats {
    /// Where the supervisor reports restarts and lag.
    fn watch(&self) -> Watch<'_> {
        Watch {
            restarts: &self.restarts,
            lag: &self.lag,
        }
    }

    /// These counters as Prometheus metrics labelled `role="{role}"`. The sets of
    /// several roles can share one registry (standalone).
    pub fn collector(
        &self,
        role: &'static str,
    ) -> prometheus::Result<fluxgate_observability::CounterSet> {
        use fluxgate_observability::catalogue::{
            PIPELINE_LAG, PIPELINE_RECORDS, PIPELINE_RESTARTS, PIPELINE_RETRIES,
            PIPELINE_UNDECODABLE,
        };
        use fluxgate_observability::{CounterDef, CounterSet};
        let def = |metric, value: &Arc<AtomicU64>| CounterDef {
            metric,
            labels: vec![("role", role)],
            value: value.clone(),
        };
        CounterSet::constant(vec![
            def(&PIPELINE_RECORDS, &self.records),
            def(&PIPELINE_RETRIES, &self.retries),
            def(&PIPELINE_UNDECODABLE, &self.undecodable),
            def(&PIPELINE_RESTARTS, &self.restarts),
        ])?
        .with_gauges(vec![def(&PIPELINE_LAG, &self.lag)])
    }
}
