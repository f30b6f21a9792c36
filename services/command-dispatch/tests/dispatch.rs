//! The dispatcher on the in-process bus with SQLite. A test "front" reads
//! `fluxgate.deliveries` and renders what it gets, as a real front would.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use fluxgate_pipeline::clock::{Clock, ManualClock};
use fluxgate_pipeline::{Parts, Stage};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use fluxgate_bus::{Bus, Consumer, ConsumerSpec, MemoryBus, OutRecord, Topic, TopicsConfig};
use fluxgate_command_dispatch::{DispatchConfig, DispatchStats, Dispatcher, rpc_id};
use fluxgate_model::{
    AttributeReplyShape, Body, Channel, Command, CorrelationId, Delivery, DeviceId, DeviceRef,
    Dialect, ENVELOPE_VERSION, Envelope, KeySelection, MessageId, TenantId, Value, Values,
    device_key,
};
use fluxgate_store::sqlite::SqliteStore;
use fluxgate_store::{AttributeScope, ClientRpcStatus, CommandStatus, Device, DeviceKind, Store};
use fluxgate_testkit::Stoppable;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
/// Waits (at most 10 s) until `counter` reads `want`: counters are bumped after the
/// effect they count (a delivery produced, a row written), so a test that saw the effect
/// may read them a moment early.
async fn counts(counter: &std::sync::atomic::AtomicU64, want: u64, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = counter.load(std::sync::atomic::Ordering::Relaxed);
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {got}, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
/// Waits (at most 10 s) until `n` timers sleep on `clock`: a test moves the clock only
/// once the timers it is about are parked, so a step of the clock cannot pass them by.
async fn parked(clock: &ManualClock, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while clock.sleeping() != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} timers sleeping, wanted {n}",
            clock.sleeping()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
fn tenant() -> TenantId {
    TenantId::new("app").unwrap()
}
fn dev(s: &str) -> DeviceId {
    DeviceId::new(s).unwrap()
}

fn envelope(
    id: MessageId,
    device: &str,
    via: Option<&str>,
    dialect: Dialect,
    body: Body,
) -> Envelope {
    Envelope {
        v: ENVELOPE_VERSION,
        id,
        part: 0,
        tenant: tenant(),
        device: DeviceRef::Id(dev(device)),
        via: via.map(dev),
        dialect,
        channel: Channel::Internal,
        received_ms: now_ms(),
        body,
    }
}

struct Rig {
    bus: MemoryBus,
    store: Arc<dyn Store>,
    topics: TopicsConfig,
    front: Arc<dyn Consumer>,
    next_id: std::sync::atomic::AtomicU64,
}

impl Rig {
    fn new() -> Rig {
        let bus = MemoryBus::default();
        let topics = TopicsConfig::default();
        let front = bus
            .consumer(ConsumerSpec::broadcast(
                "front",
                &[&topics.name(Topic::Deliveries)],
            ))
            .unwrap();
        Rig {
            store: Arc::new(SqliteStore::in_memory().unwrap()),
            bus,
            topics,
            front,
            next_id: std::sync::atomic::AtomicU64::new(1),
        }
    }

    fn dispatcher(&self, arbiter: Option<&Arbiter>) -> Arc<DispatchStats> {
        self.dispatcher_with(arbiter, DispatchConfig::default()).1
    }

    /// A dispatcher of the group `dispatchers`, and the consumer it reads with.
    fn dispatcher_with(
        &self,
        arbiter: Option<&Arbiter>,
        cfg: DispatchConfig,
    ) -> (Arc<dyn Consumer>, Arc<DispatchStats>) {
        self.dispatcher_on(arbiter, cfg, Clock::System)
    }

    /// [`Rig::dispatcher_with`], its deadlines measured on `clock`.
    fn dispatcher_on(
        &self,
        arbiter: Option<&Arbiter>,
        cfg: DispatchConfig,
        clock: Clock,
    ) -> (Arc<dyn Consumer>, Arc<DispatchStats>) {
        let events = self.topics.name(Topic::DeviceEvents);
        let consumer = self
            .bus
            .consumer(ConsumerSpec::group("dispatchers", &[&events]))
            .unwrap();
        let stats = Arc::new(DispatchStats::default());
        let d = Dispatcher::new(Parts {
            consumer: consumer.clone(),
            producer: self.bus.producer(),
            store: self.store.clone(),
            topics: self.topics.clone(),
            cfg,
            stats: stats.clone(),
        })
        .with_clock(clock);
        match arbiter {
            Some(a) => {
                fluxgate_pipeline::Pipeline::start_in_arbiter(&a.handle(), |_| {
                    fluxgate_pipeline::Pipeline::new(d)
                });
            }
            None => {
                d.start();
            }
        }
        (consumer, stats)
    }

    /// `fluxgate_command_dispatch::run_with` on `bus` (this rig's bus, or a wrapper of it)
    /// until it is stopped. The dispatchers' group is created first (the
    /// in-process bus keeps records only for groups it knows), whenever `run_with`
    /// subscribes.
    fn run_on(
        &self,
        bus: Arc<dyn Bus>,
        cfg: DispatchConfig,
    ) -> (Arc<DispatchStats>, Stoppable<()>) {
        self.run_clocked(bus, cfg, Clock::System)
    }

    /// [`Rig::run_on`], the dispatcher's deadlines measured on `clock`.
    fn run_clocked(
        &self,
        bus: Arc<dyn Bus>,
        cfg: DispatchConfig,
        clock: Clock,
    ) -> (Arc<DispatchStats>, Stoppable<()>) {
        let stats = Arc::new(DispatchStats::default());
        let (store, counted) = (self.store.clone(), stats.clone());
        let prepared = fluxgate_command_dispatch::prepare(&bus, store, &self.topics, cfg, counted)
            .unwrap()
            .with_clock(clock);
        let running = Stoppable::spawn_local(|shutdown| async move {
            prepared.run(shutdown).await;
        });
        (stats, running)
    }

    fn id(&self) -> MessageId {
        MessageId::from_parts(
            now_ms() as u64,
            u128::from(
                self.next_id
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            ),
        )
    }

    async fn send(&self, topic: Topic, env: &Envelope) {
        let rec = OutRecord::of(self.topics.name(topic), &env);
        let _ack = self.bus.producer().send(rec).await.unwrap();
    }

    async fn command(
        &self,
        device: &str,
        dialect: Dialect,
        two_way: bool,
        persistent: bool,
        expires_ms: Option<i64>,
    ) -> MessageId {
        let id = self.id();
        let cmd = Command {
            name: "setGpio".into(),
            payload: serde_json::json!({"pin": 4}),
            time_ms: None,
            two_way,
            persistent,
            expires_ms,
        };
        self.send(
            Topic::DeviceEvents,
            &envelope(id, device, None, dialect, Body::Command(cmd)),
        )
        .await;
        id
    }

    async fn event(&self, device: &str, via: Option<&str>, dialect: Dialect, body: Body) {
        let id = self.id();
        self.send(
            Topic::DeviceEvents,
            &envelope(id, device, via, dialect, body),
        )
        .await;
    }

    /// Announces the device and, unless it is behind a ThingsBoard gateway (whose RPC feed
    /// is subscribed already), its subscription to its commands, as a front does once the
    /// client subscribes. With `settle`, waits until the dispatcher has handled both (the
    /// in-process ack resolves once the dispatcher committed the event), so presence is
    /// known before the next command; without, returns at once (an event that sends queued
    /// commands completes only when the test's front has read them).
    async fn connect(&self, device: &str, via: Option<&str>, dialect: Dialect, settle: bool) {
        let connect = Body::Connect {
            profile: None,
            session: None,
        };
        self.announce(device, via, dialect, connect, settle).await;
        if via.is_none() || dialect == Dialect::Losant {
            self.announce(device, via, dialect, Body::Subscribed, settle)
                .await;
        }
    }

    async fn announce(
        &self,
        device: &str,
        via: Option<&str>,
        dialect: Dialect,
        body: Body,
        settle: bool,
    ) {
        let env = envelope(self.id(), device, via, dialect, body);
        let rec = OutRecord::of(self.topics.name(Topic::DeviceEvents), &env);
        let ack = self.bus.producer().send(rec).await.unwrap();
        if settle {
            tokio::time::timeout(Duration::from_secs(10), ack)
                .await
                .expect("event handled")
                .unwrap();
        }
    }

    async fn delivery(&self) -> Delivery {
        let r = tokio::time::timeout(Duration::from_secs(5), self.front.recv())
            .await
            .expect("a delivery")
            .unwrap();
        self.front.ack(&r.position);
        Delivery::from_bytes(&r.payload).unwrap()
    }

    async fn no_delivery(&self) -> bool {
        tokio::time::timeout(Duration::from_millis(300), self.front.recv())
            .await
            .is_err()
    }

    async fn status(&self, id: MessageId, want: CommandStatus) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let got = self.store.command(id).await.unwrap().map(|c| c.status);
            if got == Some(want) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "command {id}: {got:?}, wanted {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[actix_rt::test]
async fn offline_devices_fail_lightweight_commands_and_get_persistent_ones_on_connect() {
    let rig = Rig::new();
    rig.dispatcher(None);
    let light = rig.command("d1", Dialect::Losant, false, false, None).await;
    rig.status(light, CommandStatus::Failed).await;
    let kept = rig.command("d1", Dialect::Losant, false, true, None).await;
    rig.status(kept, CommandStatus::Queued).await;
    assert!(rig.no_delivery().await);

    rig.connect("d1", None, Dialect::Losant, false).await;
    let d = rig.delivery().await;
    assert_eq!(d.id, kept);
    let r = d.render().unwrap();
    assert_eq!(r.topic, "losant/d1/command");
    rig.status(kept, CommandStatus::Sent).await;
    rig.event(
        "d1",
        None,
        Dialect::Losant,
        Body::DeliveryOutcome {
            delivery: kept,
            delivered: true,
            at_most_once: false,
            reason: None,
        },
    )
    .await;
    rig.status(kept, CommandStatus::Delivered).await;
    let history = rig.store.command_history(kept).await.unwrap();
    assert_eq!(
        history.iter().map(|h| h.status).collect::<Vec<_>>(),
        [
            CommandStatus::Queued,
            CommandStatus::Sent,
            CommandStatus::Delivered
        ]
    );
}

#[actix_rt::test]
async fn a_two_way_rpc_is_answered_by_the_device() {
    let rig = Rig::new();
    let outcomes = rig
        .bus
        .consumer(ConsumerSpec::broadcast(
            "api",
            &[&rig.topics.name(Topic::CommandOutcomes)],
        ))
        .unwrap();
    rig.dispatcher(None);
    rig.connect("t1", None, Dialect::ThingsBoard, true).await;
    let id = rig
        .command("t1", Dialect::ThingsBoard, true, false, None)
        .await;
    let d = rig.delivery().await;
    let r = d.render().unwrap();
    assert_eq!(r.topic, format!("v1/devices/me/rpc/request/{}", rpc_id(id)));
    rig.status(id, CommandStatus::Sent).await;
    let reply = Body::RpcResponse {
        request_id: CorrelationId::Int(rpc_id(id)),
        data: serde_json::json!({"ok": true}),
    };
    rig.event("t1", None, Dialect::ThingsBoard, reply).await;
    rig.status(id, CommandStatus::Replied).await;
    // Its end is announced to every API instance, keyed by the command id.
    let announced = tokio::time::timeout(Duration::from_secs(5), outcomes.recv())
        .await
        .expect("an announcement")
        .unwrap();
    assert_eq!(announced.key, id.to_string().as_bytes());
    assert_eq!(
        rig.store.command(id).await.unwrap().unwrap().reply,
        Some(serde_json::json!({"ok": true}))
    );
}

#[actix_rt::test]
async fn rpc_through_a_gateway_names_the_device_and_times_out_unanswered() {
    let rig = Rig::new();
    rig.store
        .put_device(Device {
            tenant: tenant(),
            id: dev("tb-a"),
            name: "Device A".into(),
            kind: DeviceKind::Standalone,
            peripheral_policy: None,
            tags: vec![],
            profile: Some("default".into()),
            created_ms: 0,
            updated_ms: 0,
        })
        .await
        .unwrap();
    rig.dispatcher(None);
    rig.connect("tb-a", Some("gw"), Dialect::ThingsBoard, true)
        .await;
    let id = rig
        .command(
            "tb-a",
            Dialect::ThingsBoard,
            true,
            false,
            Some(now_ms() + 300),
        )
        .await;
    let d = rig.delivery().await;
    assert_eq!(d.connection().as_str(), "gw");
    let r = d.render().unwrap();
    assert_eq!(r.topic, "v1/gateway/rpc");
    let payload: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
    assert_eq!(payload["device"], "Device A");
    assert_eq!(payload["data"]["id"], rpc_id(id));
    rig.status(id, CommandStatus::TimedOut).await;

    // The gateway's session ends: the front disconnects the device behind it, on the
    // device's key.
    let gone = envelope(
        rig.id(),
        "tb-a",
        Some("gw"),
        Dialect::ThingsBoard,
        Body::Disconnect {
            reason: Some("gateway session ended: client disconnect".into()),
            session: None,
        },
    );
    let rec = OutRecord::of(rig.topics.name(Topic::DeviceEvents), &gone);
    let ack = rig.bus.producer().send(rec).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), ack)
        .await
        .unwrap()
        .unwrap();
    let late = rig
        .command("tb-a", Dialect::ThingsBoard, false, false, None)
        .await;
    rig.status(late, CommandStatus::Failed).await;
    // The dispatcher, which owns presence, logged both.
    let log = rig
        .store
        .connection_log(tenant(), dev("tb-a"), 10)
        .await
        .unwrap();
    let seen: Vec<_> = log
        .iter()
        .map(|e| (e.connected, e.via.clone(), e.reason.clone()))
        .collect();
    assert_eq!(
        seen,
        [
            (
                false,
                Some(dev("gw")),
                Some("gateway session ended: client disconnect".into())
            ),
            (true, Some(dev("gw")), None),
        ]
    );
}

#[actix_rt::test]
async fn attribute_requests_are_answered_from_the_store() {
    let rig = Rig::new();
    let mut shared = Values::new();
    shared.insert("target", Value::Float(21.5));
    rig.store
        .put_attributes(tenant(), dev("t2"), AttributeScope::Shared, shared, 1)
        .await
        .unwrap();
    rig.dispatcher(None);
    rig.connect("t2", None, Dialect::ThingsBoard, true).await;
    let ask = Body::AttributeRequest {
        request_id: CorrelationId::Int(7),
        client: KeySelection::Nothing,
        shared: KeySelection::Keys(vec!["target".into()]),
        reply: AttributeReplyShape::Device,
    };
    rig.event("t2", None, Dialect::ThingsBoard, ask).await;
    let r = rig.delivery().await.render().unwrap();
    assert_eq!(r.topic, "v1/devices/me/attributes/response/7");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&r.payload).unwrap(),
        serde_json::json!({"shared": {"target": 21.5}})
    );
}

#[actix_rt::test]
async fn a_restarted_dispatcher_keeps_pending_commands() {
    let rig = Rig::new();
    let arbiter = Arbiter::new();
    rig.dispatcher(Some(&arbiter));
    let kept = rig
        .command("d9", Dialect::Losant, false, true, Some(now_ms() + 60_000))
        .await;
    rig.status(kept, CommandStatus::Queued).await;
    arbiter.stop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    rig.dispatcher(None);
    rig.connect("d9", None, Dialect::Losant, false).await;
    let d = rig.delivery().await;
    assert_eq!(d.id, kept);
    rig.status(kept, CommandStatus::Sent).await;
    // An expired persistent command is not sent on reconnect.
    let old = rig
        .command("d8", Dialect::Losant, false, true, Some(now_ms() + 100))
        .await;
    rig.status(old, CommandStatus::Queued).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    rig.connect("d8", None, Dialect::Losant, true).await;
    rig.status(old, CommandStatus::Expired).await;
    assert!(rig.no_delivery().await);
}

/// A command no front delivers (its session closed with the delivery queued, or no front
/// holds it) does not stay `sent`: a lightweight one fails, a persistent one is queued
/// again and sent at the next connect.
#[actix_rt::test]
async fn a_sent_command_that_no_front_delivers_fails_or_is_queued_again() {
    let rig = Rig::new();
    let cfg = DispatchConfig {
        delivery_timeout_ms: 300,
        ..DispatchConfig::default()
    };
    let clock = Arc::new(ManualClock::starting_now());
    let bus = Arc::new(rig.bus.clone());
    let (stats, running) = rig.run_clocked(bus, cfg, Clock::Manual(clock.clone()));
    rig.connect("gone", None, Dialect::Losant, true).await;
    let light = rig
        .command("gone", Dialect::Losant, false, false, None)
        .await;
    let kept = rig
        .command("gone", Dialect::Losant, false, true, None)
        .await;
    // The test front reads both deliveries and reports nothing, as a front whose session
    // went away does.
    let mut delivered = [rig.delivery().await.id, rig.delivery().await.id];
    delivered.sort();
    let mut want = [light, kept];
    want.sort();
    assert_eq!(delivered, want);
    // Both delivery deadlines are waiting; just short of them, both are still `sent`.
    parked(&clock, 2).await;
    clock.advance(Duration::from_millis(299));
    assert_eq!(clock.sleeping(), 2, "a deadline passed early");
    for id in [light, kept] {
        let c = rig.store.command(id).await.unwrap().unwrap();
        assert_eq!(c.status, CommandStatus::Sent);
    }
    clock.advance(Duration::from_millis(1));
    rig.status(light, CommandStatus::Failed).await;
    rig.status(kept, CommandStatus::Queued).await;
    counts(&stats.timers, 0, "timers running").await;
    let detail = |h: Vec<fluxgate_store::StatusChange>| h.last().unwrap().detail.clone();
    assert_eq!(
        detail(rig.store.command_history(light).await.unwrap()).as_deref(),
        Some("not delivered within 300 ms")
    );
    assert_eq!(
        detail(rig.store.command_history(kept).await.unwrap()).as_deref(),
        Some("not delivered within 300 ms; queued for the next connect")
    );
    // Sent again at the next connect; delivered this time, and it stays delivered.
    rig.connect("gone", None, Dialect::Losant, false).await;
    assert_eq!(rig.delivery().await.id, kept);
    rig.status(kept, CommandStatus::Sent).await;
    let outcome = Body::DeliveryOutcome {
        delivery: kept,
        delivered: true,
        at_most_once: false,
        reason: None,
    };
    rig.event("gone", None, Dialect::Losant, outcome).await;
    rig.status(kept, CommandStatus::Delivered).await;
    // Its new delivery deadline passes and finds it delivered: it stays so.
    parked(&clock, 1).await;
    clock.advance(Duration::from_millis(300));
    counts(&stats.timers, 0, "timers running").await;
    rig.status(kept, CommandStatus::Delivered).await;
    running.stop(Duration::from_secs(5)).await;
}

/// Issue 22, finding 1: a command a front wrote at QoS 0 is `sent` at most — never
/// `delivered`, since nothing acknowledges it — and its delivery deadline no longer
/// fails it.
#[actix_rt::test]
async fn a_command_written_at_qos_0_stays_sent_past_its_delivery_deadline() {
    let rig = Rig::new();
    let cfg = DispatchConfig {
        delivery_timeout_ms: 300,
        ..DispatchConfig::default()
    };
    let clock = Arc::new(ManualClock::starting_now());
    let bus = Arc::new(rig.bus.clone());
    let (stats, running) = rig.run_clocked(bus, cfg, Clock::Manual(clock.clone()));
    rig.connect("q0", None, Dialect::Losant, true).await;
    let id = rig.command("q0", Dialect::Losant, false, false, None).await;
    assert_eq!(rig.delivery().await.id, id);
    let outcome = Body::DeliveryOutcome {
        delivery: id,
        delivered: true,
        at_most_once: true,
        reason: None,
    };
    rig.event("q0", None, Dialect::Losant, outcome).await;
    // Recorded as a change of its own, still `sent`.
    for _ in 0..100 {
        let h = rig.store.command_history(id).await.unwrap();
        if h.last().and_then(|c| c.detail.as_deref()) == Some(fluxgate_model::WRITTEN_AT_MOST_ONCE)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let h = rig.store.command_history(id).await.unwrap();
    let last = h.last().unwrap();
    assert_eq!(
        (last.status, last.detail.as_deref()),
        (
            CommandStatus::Sent,
            Some(fluxgate_model::WRITTEN_AT_MOST_ONCE)
        )
    );
    // The delivery deadline passes: it stays `sent`.
    parked(&clock, 1).await;
    clock.advance(Duration::from_millis(300));
    counts(&stats.timers, 0, "timers running").await;
    rig.status(id, CommandStatus::Sent).await;
    running.stop(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn run_stops_on_shutdown() {
    let rig = Rig::new();
    let (stats, running) = rig.run_on(Arc::new(rig.bus.clone()), DispatchConfig::default());
    let light = rig.command("x", Dialect::Losant, false, false, None).await;
    rig.status(light, CommandStatus::Failed).await;
    running.stop(Duration::from_secs(5)).await;
    assert_eq!(stats.failed.load(std::sync::atomic::Ordering::Relaxed), 1);
    // Stopped: a new command is not handled (for as long as we look)...
    let later = rig.command("x", Dialect::Losant, false, false, None).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(rig.store.command(later).await.unwrap().is_none());
    // ...and is left on the bus, uncommitted, for the next dispatcher of the group.
    let (stats, running) = rig.run_on(Arc::new(rig.bus.clone()), DispatchConfig::default());
    rig.status(later, CommandStatus::Failed).await;
    running.stop(Duration::from_secs(5)).await;
    assert_eq!(stats.failed.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[actix_rt::test]
async fn a_dispatcher_that_panics_keeps_presence_and_running_timers() {
    use fluxgate_bus::testing::FaultyBus;
    let rig = Rig::new();
    let cfg = DispatchConfig {
        rpc_timeout_ms: 1_000,
        ..DispatchConfig::default()
    };
    // The device connected before this dispatcher started: only the store knows (the
    // writer logged the connect; its event was consumed by an earlier dispatcher).
    rig.store
        .log_connection(fluxgate_store::ConnectionEvent {
            tenant: tenant(),
            device: dev("p1"),
            at_ms: now_ms(),
            connected: true,
            front: Some("front-1".into()),
            remote_addr: None,
            reason: None,
            via: None,
        })
        .await
        .unwrap();
    // The dispatcher dies producing its second delivery.
    let bus = Arc::new(FaultyBus::new(Arc::new(rig.bus.clone())));
    bus.faults()
        .send
        .store(2, std::sync::atomic::Ordering::SeqCst);
    let (stats, running) = rig.run_on(bus, cfg);
    // A two-way RPC: sent (presence from the store), its timer running.
    let rpc = rig
        .command("p1", Dialect::ThingsBoard, true, false, None)
        .await;
    assert_eq!(rig.delivery().await.id, rpc);
    rig.status(rpc, CommandStatus::Sent).await;
    // A one-way command: the dispatcher dies sending it, is restarted, and sends it.
    let one_way = rig
        .command("p1", Dialect::ThingsBoard, false, false, None)
        .await;
    assert_eq!(rig.delivery().await.id, one_way);
    rig.status(one_way, CommandStatus::Sent).await;
    assert_eq!(
        stats
            .pipeline
            .restarts
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // The RPC's timer outlived the actor that set it.
    rig.status(rpc, CommandStatus::TimedOut).await;
    running.stop(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn a_new_dispatcher_rearms_the_timers_of_rpcs_sent_before_it() {
    let rig = Rig::new();
    let arbiter = Arbiter::new();
    rig.dispatcher(Some(&arbiter));
    rig.connect("r1", None, Dialect::ThingsBoard, true).await;
    // A two-way RPC with its own deadline, sent by the first dispatcher...
    let deadline = now_ms() + 1_500;
    let rpc = rig
        .command("r1", Dialect::ThingsBoard, true, false, Some(deadline))
        .await;
    assert_eq!(rig.delivery().await.id, rpc);
    rig.status(rpc, CommandStatus::Sent).await;
    // ...which dies with the timer (its whole event loop stops).
    arbiter.stop();
    arbiter.join().unwrap();
    // The next one finds the RPC in the store and times it out at its deadline.
    let (_, running) = rig.run_on(Arc::new(rig.bus.clone()), DispatchConfig::default());
    rig.status(rpc, CommandStatus::TimedOut).await;
    let history = rig.store.command_history(rpc).await.unwrap();
    let timed_out = history.last().unwrap();
    // The first dispatcher's loop has ended, so only the new one's timer is left; it
    // keeps the RPC's own deadline (a re-armed timer starting from scratch, or one firing
    // at once on start, would not).
    assert!(
        timed_out.at_ms >= deadline && timed_out.at_ms < deadline + 5_000,
        "timed out at the RPC's deadline {deadline}, not at {}",
        timed_out.at_ms
    );
    running.stop(Duration::from_secs(5)).await;
}

/// Timers belong to the dispatcher holding the device's partition. One that takes a
/// partition over from a dispatcher that died runs the deadlines of the commands the dead
/// one sent after the survivor had started (which no start-up re-arm sees): none stays
/// `sent`. The survivor runs no timer of a partition it did not hold.
#[actix_rt::test]
async fn a_dispatcher_taking_over_a_partition_runs_its_timers() {
    let rig = Rig::new();
    let cfg = DispatchConfig {
        delivery_timeout_ms: 800,
        ..DispatchConfig::default()
    };
    let arbiter = Arbiter::new();
    let (a, a_stats) = rig.dispatcher_with(Some(&arbiter), cfg.clone());
    let (b, b_stats) = rig.dispatcher_with(None, cfg);
    let events = rig.topics.name(Topic::DeviceEvents);
    let held_by = |c: &Arc<dyn Consumer>, d: &str| {
        c.holds(&events, device_key(&tenant(), &dev(d)).as_bytes())
    };
    let device = (0..64)
        .map(|i| format!("moved-{i}"))
        .find(|d| held_by(&a, d))
        .expect("a holds some partition");
    assert!(!held_by(&b, &device), "one holder per key");
    drop(a); // the dispatcher's own handle is all that keeps it in the group
    rig.connect(&device, None, Dialect::Losant, true).await;
    let light = rig
        .command(&device, Dialect::Losant, false, false, None)
        .await;
    assert_eq!(rig.delivery().await.id, light);
    rig.status(light, CommandStatus::Sent).await;
    let relaxed = std::sync::atomic::Ordering::Relaxed;
    // The status is written just before the timer starts.
    counts(&a_stats.timers, 1, "timers the sender runs").await;
    assert_eq!(
        b_stats.timers.load(relaxed),
        0,
        "the other dispatcher does not"
    );
    // The sender dies with its timer; the survivor gets the partition and the deadline.
    arbiter.stop();
    rig.status(light, CommandStatus::Failed).await;
    assert!(held_by(&b, &device));
    assert_eq!(b_stats.timers_rearmed.load(relaxed), 1);
    let history = rig.store.command_history(light).await.unwrap();
    assert_eq!(
        history.last().unwrap().detail.as_deref(),
        Some("not delivered within 800 ms")
    );
}

/// A command queued again after a failed delivery and sent once more gets the full
/// delivery deadline from its new send: the first send's timer does not cut it short.
#[actix_rt::test]
async fn a_command_sent_again_gets_its_delivery_deadline_from_the_new_send() {
    let rig = Rig::new();
    let cfg = DispatchConfig {
        delivery_timeout_ms: 1_500,
        ..DispatchConfig::default()
    };
    let clock = Arc::new(ManualClock::starting_now());
    let (_, stats) = rig.dispatcher_on(None, cfg, Clock::Manual(clock.clone()));
    rig.connect("again", None, Dialect::Losant, true).await;
    let kept = rig
        .command("again", Dialect::Losant, false, true, None)
        .await;
    assert_eq!(rig.delivery().await.id, kept);
    parked(&clock, 1).await;
    // The front could not deliver it (the session closed): queued again.
    let failed = Body::DeliveryOutcome {
        delivery: kept,
        delivered: false,
        at_most_once: false,
        reason: Some("session closed".into()),
    };
    rig.event("again", None, Dialect::Losant, failed).await;
    rig.status(kept, CommandStatus::Queued).await;
    // Sent again 1 s after the first send, when the device subscribes again.
    clock.advance(Duration::from_millis(1_000));
    rig.connect("again", None, Dialect::Losant, false).await;
    assert_eq!(rig.delivery().await.id, kept);
    rig.status(kept, CommandStatus::Sent).await;
    let resent = clock.now_ms();
    // Past the first send's deadline it is still `sent` (its timer, woken, waits again
    // for the new one); at the new one it is queued.
    clock.advance(Duration::from_millis(900));
    assert_eq!(clock.sleeping(), 0, "the first send's deadline was due");
    parked(&clock, 1).await;
    let c = rig.store.command(kept).await.unwrap().unwrap();
    assert_eq!(
        c.status,
        CommandStatus::Sent,
        "the first send's deadline passed"
    );
    clock.advance(Duration::from_millis(599));
    assert_eq!(clock.sleeping(), 1, "the new deadline passed early");
    clock.advance(Duration::from_millis(1));
    rig.status(kept, CommandStatus::Queued).await;
    let history = rig.store.command_history(kept).await.unwrap();
    let requeued = history.last().unwrap();
    assert_eq!(
        requeued.at_ms - resent,
        1_500,
        "queued this long after the new send"
    );
    counts(&stats.timers, 0, "timers running").await;
}

#[actix_rt::test]
async fn a_command_right_behind_a_connect_or_a_disconnect_sees_it() {
    let rig = Rig::new();
    rig.dispatcher(None);
    // Nothing waits: the connect and the command are on one key, in that order.
    rig.connect("quick", None, Dialect::Losant, false).await;
    let cmd = rig
        .command("quick", Dialect::Losant, false, false, None)
        .await;
    assert_eq!(rig.delivery().await.id, cmd);
    rig.status(cmd, CommandStatus::Sent).await;
    rig.event(
        "quick",
        None,
        Dialect::Losant,
        Body::Disconnect {
            reason: Some("client disconnect".into()),
            session: None,
        },
    )
    .await;
    let after = rig
        .command("quick", Dialect::Losant, false, false, None)
        .await;
    rig.status(after, CommandStatus::Failed).await;
    assert!(rig.no_delivery().await);
}

#[actix_rt::test]
async fn a_persistent_rpc_sent_on_connect_still_times_out() {
    let rig = Rig::new();
    rig.dispatcher(None);
    let rpc = rig
        .command(
            "sleepy",
            Dialect::ThingsBoard,
            true,
            true,
            Some(now_ms() + 1_500),
        )
        .await;
    rig.status(rpc, CommandStatus::Queued).await;
    rig.connect("sleepy", None, Dialect::ThingsBoard, false)
        .await;
    assert_eq!(rig.delivery().await.id, rpc);
    rig.status(rpc, CommandStatus::Sent).await;
    // Never answered: its timer, started when the connect sent it, ends it.
    rig.status(rpc, CommandStatus::TimedOut).await;
}

#[actix_rt::test]
async fn an_undecodable_command_is_dead_lettered_and_the_next_one_is_handled() {
    let rig = Rig::new();
    let read = |t: Topic| {
        rig.bus
            .consumer(ConsumerSpec::group(
                format!("reader-{}", t.suffix()),
                &[&rig.topics.name(t)],
            ))
            .unwrap()
    };
    let (dlq, rejected) = (read(Topic::DeadLetter), read(Topic::IngestRejected));
    let stats = rig.dispatcher(None);
    let producer = rig.bus.producer();
    let ack = producer
        .send(fluxgate_bus::OutRecord::new(
            rig.topics.name(Topic::DeviceEvents),
            "app/d1",
            b"{\"v\": 1, \"body\": {\"command\": [[[".to_vec(),
        ))
        .await
        .unwrap();
    let within = |c: Arc<dyn fluxgate_bus::Consumer>| async move {
        let r = tokio::time::timeout(Duration::from_secs(5), c.recv())
            .await
            .expect("in time")
            .unwrap();
        c.ack(&r.position);
        c.commit().await.unwrap();
        r
    };
    let dead = within(dlq).await;
    assert_eq!(
        dead.headers.get(fluxgate_bus::dead_letter_headers::ROLE),
        Some(&b"command-dispatch"[..])
    );
    let r = fluxgate_model::Rejection::from_bytes(&within(rejected).await.payload).unwrap();
    assert_eq!(r.reason.code, fluxgate_model::ReasonCode::Undecodable);
    // The dispatcher committed the record only after its dead letter was kept.
    tokio::time::timeout(Duration::from_secs(5), ack)
        .await
        .expect("acked in time")
        .unwrap();
    assert_eq!(
        stats
            .pipeline
            .undecodable
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    let next = rig.command("d1", Dialect::Losant, false, false, None).await;
    rig.status(next, CommandStatus::Failed).await; // offline: handled, not stuck
}

/// A device's claim message (and a gateway's, for a device behind it) opens a claiming
/// window in the store, with the device's secret (only its hash) and duration, or the
/// configured default of neither is given.
#[actix_rt::test]
async fn a_claim_message_opens_the_devices_claiming_window() {
    let rig = Rig::new();
    let stats = rig.dispatcher(None);
    let sent = now_ms();
    let claim = |secret: Option<&str>, duration_ms| Body::Claim {
        secret_key: secret.map(str::to_owned),
        duration_ms,
    };
    rig.event(
        "c1",
        None,
        Dialect::ThingsBoard,
        claim(Some("s3"), Some(60_000)),
    )
    .await;
    rig.event("c2", Some("gw"), Dialect::ThingsBoard, claim(None, None))
        .await;
    counts(&stats.claim_windows, 2, "claims handled").await;
    let c1 = rig
        .store
        .device_claim(tenant(), dev("c1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c1.secret_hash, fluxgate_store::hash_secret("s3"));
    assert!(!format!("{c1:?}").contains("\"s3\""));
    let left = c1.window_until_ms - sent;
    assert!(
        (59_000..=61_000).contains(&left),
        "window of {left} ms, asked 60 000"
    );
    assert_eq!(c1.owner, None);
    let c2 = rig
        .store
        .device_claim(tenant(), dev("c2"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c2.secret_hash, fluxgate_store::hash_secret(""));
    let default = DispatchConfig::default().claim_duration_ms as i64;
    let left = c2.window_until_ms - sent;
    assert!(
        (default - 1_000..=default + 1_000).contains(&left),
        "window of {left} ms"
    );
}

/// A device's client-side RPC is stored pending; the answer an application gives (the
/// API ends the request, then sends `rpc_answer`) reaches the device on its response
/// topic; a request nobody answers ends `timed_out` and the device gets an error reply.
#[actix_rt::test]
async fn client_side_rpc_is_answered_or_times_out_with_an_error_reply() {
    let rig = Rig::new();
    let cfg = DispatchConfig {
        client_rpc_timeout_ms: 400,
        ..DispatchConfig::default()
    };
    let (stats, running) = rig.run_on(Arc::new(rig.bus.clone()), cfg);
    rig.connect("t1", None, Dialect::ThingsBoard, true).await;
    let ask = |n: i64, method: &str| Body::RpcRequest {
        request_id: CorrelationId::Int(n),
        method: method.into(),
        params: serde_json::json!({"n": n}),
    };
    let first = rig.id();
    rig.send(
        Topic::DeviceEvents,
        &envelope(first, "t1", None, Dialect::ThingsBoard, ask(1, "getTime")),
    )
    .await;
    let stored = loop {
        let found = rig
            .store
            .client_rpc(tenant(), dev("t1"), first)
            .await
            .unwrap();
        if let Some(r) = found {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        (stored.method.as_str(), stored.status),
        ("getTime", ClientRpcStatus::Pending)
    );

    // Answered as the API does: ended in the store, then handed to the dispatcher.
    let answer = serde_json::json!({"time": 1_700_000_000_000i64});
    let ended = rig.store.end_client_rpc(
        tenant(),
        dev("t1"),
        first,
        ClientRpcStatus::Answered,
        Some(answer.clone()),
        now_ms(),
    );
    assert!(ended.await.unwrap().is_some());
    let body = Body::RpcAnswer {
        request: first,
        request_id: CorrelationId::Int(1),
        data: answer.clone(),
    };
    rig.event("t1", None, Dialect::ThingsBoard, body).await;
    let d = rig.delivery().await;
    let r = d.render().unwrap();
    assert_eq!(r.topic, "v1/devices/me/rpc/response/1");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&r.payload).unwrap(),
        answer
    );

    // Nobody answers the second one: it times out, and the device hears so.
    let second = rig.id();
    rig.send(
        Topic::DeviceEvents,
        &envelope(
            second,
            "t1",
            None,
            Dialect::ThingsBoard,
            ask(2, "getConfig"),
        ),
    )
    .await;
    let d = rig.delivery().await;
    let r = d.render().unwrap();
    assert_eq!(r.topic, "v1/devices/me/rpc/response/2");
    let err: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
    assert!(err["error"].as_str().unwrap().contains("400 ms"), "{err}");
    let late = rig
        .store
        .client_rpc(tenant(), dev("t1"), second)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(late.status, ClientRpcStatus::TimedOut);
    let first_now = rig
        .store
        .client_rpc(tenant(), dev("t1"), first)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        first_now.status,
        ClientRpcStatus::Answered,
        "the answered one stays answered"
    );
    // Both answers were produced (the test received them); each is counted just after.
    counts(&stats.client_rpcs, 2, "client-side RPCs").await;
    counts(&stats.client_rpc_answers, 2, "answers sent").await;
    counts(&stats.client_rpc_timed_out, 1, "timed out").await;
    running.stop(Duration::from_secs(10)).await;
}

/// A device that connects gets its queued commands once its connection subscribed to its
/// commands, not before: sent at the connect, they would reach a connection that does not
/// listen yet (and go back to the queue until the next connect).
#[actix_rt::test]
async fn queued_commands_wait_for_the_subscription_not_the_connect() {
    let rig = Rig::new();
    rig.dispatcher(None);
    let kept = rig
        .command("w1", Dialect::ThingsBoard, false, true, None)
        .await;
    rig.status(kept, CommandStatus::Queued).await;
    let connect = Body::Connect {
        profile: None,
        session: None,
    };
    rig.announce("w1", None, Dialect::ThingsBoard, connect, true)
        .await;
    assert!(rig.no_delivery().await, "nothing is sent at the connect");
    rig.status(kept, CommandStatus::Queued).await;
    rig.announce("w1", None, Dialect::ThingsBoard, Body::Subscribed, false)
        .await;
    let d = rig.delivery().await;
    assert_eq!(d.id, kept);
    rig.status(kept, CommandStatus::Sent).await;
}

/// Shared attributes changed while a device is away are pushed when it is back: a device
/// of its own when it subscribes to its attribute updates, one behind a ThingsBoard
/// gateway at its connect (the gateway's `v1/gateway/attributes` is subscribed already).
/// Only what changed since its last disconnect is pushed.
#[actix_rt::test]
async fn shared_attributes_changed_while_away_are_pushed_when_the_device_is_back() {
    use fluxgate_model::Outbound;
    let rig = Rig::new();
    let stats = rig.dispatcher(None);
    let set = async |device: &str, via: Option<&str>, key: &str, v: f64| {
        let mut values = Values::new();
        values.insert(key, Value::Float(v));
        rig.store
            .put_attributes(
                tenant(),
                dev(device),
                AttributeScope::Shared,
                values.clone(),
                now_ms(),
            )
            .await
            .unwrap();
        rig.event(
            device,
            via,
            Dialect::ThingsBoard,
            Body::Attributes { values },
        )
        .await;
    };
    let gone = || Body::Disconnect {
        reason: None,
        session: None,
    };
    let pushed = |d: Delivery| match d.body {
        Outbound::SharedAttributes { values } => values,
        other => panic!("not a shared-attribute push: {other:?}"),
    };
    for (device, via) in [("away", None), ("child", Some("gw"))] {
        rig.connect(device, via, Dialect::ThingsBoard, true).await;
        set(device, via, "seen", 1.0).await;
        assert_eq!(
            pushed(rig.delivery().await).len(),
            1,
            "{device}: pushed online"
        );
        rig.announce(device, via, Dialect::ThingsBoard, gone(), true)
            .await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        set(device, via, "missed", 2.0).await;
        assert!(rig.no_delivery().await, "{device}: offline, nothing sent");
        rig.connect(device, via, Dialect::ThingsBoard, false).await;
        if via.is_none() {
            // Connected and subscribed to its RPC, not yet to its attribute updates.
            assert!(rig.no_delivery().await, "{device}: not listening yet");
            rig.announce(
                device,
                None,
                Dialect::ThingsBoard,
                Body::SubscribedAttributes,
                false,
            )
            .await;
        }
        let values = pushed(rig.delivery().await);
        assert_eq!(
            values.keys().collect::<Vec<_>>(),
            ["missed"],
            "{device}: only what changed while away"
        );
        assert_eq!(values["missed"], Value::Float(2.0));
    }
    let relaxed = std::sync::atomic::Ordering::Relaxed;
    assert_eq!(stats.missed_attribute_pushes.load(relaxed), 2);
}
