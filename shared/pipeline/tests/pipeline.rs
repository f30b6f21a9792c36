//! The skeleton on the in-process bus: order, drain, supervision.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::AsyncContext;
use fluxgate_bus::{Bus, Consumer, ConsumerSpec, MemoryBus, MemoryConfig, OutRecord, Record};
use fluxgate_pipeline::{Ctx, PipelineStats, Source, Stage};
use tokio::sync::Semaphore;

const TOPIC: &str = "t";

/// What the test stages saw.
#[derive(Debug, Default)]
struct Seen {
    /// Payloads, in the order `accept` got them.
    accepted: Mutex<Vec<String>>,
    /// Payloads whose work finished (and was acked).
    done: Mutex<Vec<String>>,
    /// `accept` was called while the previous record's waited-for work was running.
    overtaken: AtomicBool,
    /// Waited-for work running now.
    busy: AtomicBool,
    /// Panic on the record "boom" while this is set (cleared by the panic).
    panic_once: AtomicBool,
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    /// Work the next record must wait for (`fluxgate_pipeline::wait`).
    Wait,
    /// Work spawned on the actor, acked when done; drain waits for it.
    Spawn,
}

struct Test {
    consumer: Arc<dyn Consumer>,
    stats: PipelineStats,
    seen: Arc<Seen>,
    mode: Mode,
    /// Work spawned and not finished (drain takes every permit).
    in_flight: Arc<Semaphore>,
}

const IN_FLIGHT: u32 = 64;

impl Stage for Test {
    const ROLE: &'static str = "test";

    fn source(&self) -> Source<'_> {
        Source::new(&self.consumer, &self.stats)
    }

    fn accept(&mut self, rec: Record, ctx: &mut Ctx<Self>) {
        let text = String::from_utf8_lossy(&rec.payload).into_owned();
        if text == "boom" && self.seen.panic_once.swap(false, Ordering::SeqCst) {
            panic!("the test stage dies on its first 'boom'");
        }
        if self.seen.busy.load(Ordering::SeqCst) {
            self.seen.overtaken.store(true, Ordering::SeqCst);
        }
        self.seen.accepted.lock().unwrap().push(text.clone());
        let (seen, consumer) = (self.seen.clone(), self.consumer.clone());
        match self.mode {
            Mode::Wait => {
                seen.busy.store(true, Ordering::SeqCst);
                let work = tokio::time::sleep(Duration::from_millis(30));
                fluxgate_pipeline::wait(ctx, work, move |_, (), _| {
                    seen.busy.store(false, Ordering::SeqCst);
                    seen.done.lock().unwrap().push(text);
                    consumer.ack(&rec.position);
                });
            }
            Mode::Spawn => {
                let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
                    return consumer.nack(&rec.position);
                };
                ctx.spawn(actix::fut::wrap_future(async move {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    seen.done.lock().unwrap().push(text);
                    consumer.ack(&rec.position);
                    drop(permit);
                }));
            }
        }
    }

    fn drain(&mut self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> {
        let in_flight = self.in_flight.clone();
        Box::pin(async move {
            let _all = in_flight.acquire_many(IN_FLIGHT).await;
        })
    }
}

struct Rig {
    bus: MemoryBus,
    consumer: Arc<dyn Consumer>,
    stats: PipelineStats,
    seen: Arc<Seen>,
}

impl Rig {
    fn new() -> Self {
        let bus = MemoryBus::new(MemoryConfig::default());
        let consumer = bus.consumer(ConsumerSpec::group("g", &[TOPIC])).unwrap();
        Rig {
            bus,
            consumer,
            stats: PipelineStats::default(),
            seen: Arc::default(),
        }
    }

    fn make(&self, mode: Mode) -> impl FnMut() -> Test + 'static {
        let (consumer, stats, seen) =
            (self.consumer.clone(), self.stats.clone(), self.seen.clone());
        move || Test {
            consumer: consumer.clone(),
            stats: stats.clone(),
            seen: seen.clone(),
            mode,
            in_flight: Arc::new(Semaphore::new(IN_FLIGHT as usize)),
        }
    }

    /// Hands `payloads` to the bus without waiting for their acks (the in-process bus
    /// acks a record once every group has committed it).
    /// Their acks resolve once the group has committed them.
    async fn produce(&self, payloads: &[&str]) -> Vec<fluxgate_bus::AckFuture> {
        let p = self.bus.producer();
        let mut acks = Vec::new();
        for body in payloads {
            let rec = OutRecord::new(TOPIC, "k", body.as_bytes().to_vec());
            acks.push(p.send(rec).await.unwrap());
        }
        acks
    }

    async fn until(&self, what: &str, done: impl Fn(&Seen) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !done(&self.seen) {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn done(&self) -> Vec<String> {
        self.seen.done.lock().unwrap().clone()
    }

    /// `fluxgate_pipeline::run` with stages in `mode`, until [`Running::stop`].
    fn run(&self, mode: Mode) -> Running {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (consumer, stats, make) = (self.consumer.clone(), self.stats.clone(), self.make(mode));
        let task = actix_rt::spawn(async move {
            fluxgate_pipeline::run(&consumer, &stats, make, async {
                let _ = stopped.await;
            })
            .await
        });
        Running { stop, task }
    }
}

/// A running pipeline (`Rig::run`).
struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: actix_rt::task::JoinHandle<()>,
}

impl Running {
    /// Shuts it down; `run` must return within 10 s (`what` says why it should).
    async fn stop(self, what: &str) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect(what)
            .unwrap();
    }
}

#[actix_rt::test]
async fn waited_work_holds_up_the_next_record_and_records_come_in_order() {
    let rig = Rig::new();
    let run = rig.run(Mode::Wait);
    let sent = ["0", "1", "2", "3", "4", "5"];
    rig.produce(&sent).await;
    rig.until("every record handled", |s| {
        s.done.lock().unwrap().len() == sent.len()
    })
    .await;
    assert_eq!(rig.done(), sent);
    assert_eq!(*rig.seen.accepted.lock().unwrap(), sent);
    assert!(
        !rig.seen.overtaken.load(Ordering::SeqCst),
        "a record was accepted while the one before it was still being waited for"
    );
    assert_eq!(rig.stats.records.load(Ordering::Relaxed), sent.len() as u64);
    run.stop("run returns after shutdown").await;
}

/// Drain waits for work the stage spawned on its own actor (the validator's acks). Had the
/// skeleton made the actor *wait* for the drain, that work would never be polled.
#[actix_rt::test]
async fn drain_waits_for_work_spawned_on_the_stage_and_commits_it() {
    let rig = Rig::new();
    let run = rig.run(Mode::Spawn);
    let acks = rig.produce(&["a", "b", "c"]).await;
    rig.until("every record accepted", |s| {
        s.accepted.lock().unwrap().len() == 3
    })
    .await;
    // Shut down while the work is still running (it takes 300 ms).
    assert!(
        rig.done().len() < 3,
        "every work done before the drain began"
    );
    run.stop("the drain finishes: the spawned work ran").await;
    assert_eq!(rig.done(), ["a", "b", "c"]);
    // Everything was acked and committed (the in-process bus acks a producer's record
    // once every group has committed it).
    assert_eq!(rig.consumer.lag(), 0, "records still unfinished");
    for ack in acks {
        tokio::time::timeout(Duration::from_secs(5), ack)
            .await
            .expect("committed by the final commit")
            .unwrap();
    }
}

#[actix_rt::test]
async fn a_stage_that_dies_is_restarted_and_gets_its_record_again() {
    let rig = Rig::new();
    rig.seen.panic_once.store(true, Ordering::SeqCst);
    let run = rig.run(Mode::Wait);
    rig.produce(&["before", "boom", "after"]).await;
    rig.until("every record handled", |s| {
        s.done.lock().unwrap().len() == 3
    })
    .await;
    assert_eq!(rig.done(), ["before", "boom", "after"]);
    assert_eq!(rig.stats.restarts.load(Ordering::Relaxed), 1);
    // "boom" was read twice: once by the stage that died, once by its successor.
    assert_eq!(rig.stats.records.load(Ordering::Relaxed), 4);
    run.stop("run returns after shutdown").await;
}

#[test]
fn two_roles_counters_share_one_registry_with_a_role_label() {
    let registry = prometheus::Registry::new();
    let (a, b) = (PipelineStats::default(), PipelineStats::default());
    a.records.store(3, Ordering::Relaxed);
    b.records.store(5, Ordering::Relaxed);
    registry
        .register(Box::new(a.collector("validator").unwrap()))
        .unwrap();
    registry
        .register(Box::new(b.collector("writer").unwrap()))
        .unwrap();
    let text = fluxgate_observability::render(&registry);
    assert!(
        text.contains("fluxgate_pipeline_records_total{role=\"validator\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("fluxgate_pipeline_records_total{role=\"writer\"} 5"),
        "{text}"
    );
    assert_eq!(
        text.matches("# TYPE fluxgate_pipeline_records_total counter")
            .count(),
        1,
        "{text}"
    );
    // The same role twice is refused, as two registrations of one series.
    assert!(
        registry
            .register(Box::new(a.collector("validator").unwrap()))
            .is_err()
    );
}
