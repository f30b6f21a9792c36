//! The dispatcher on a real Kafka-protocol broker (`KAFKA_BROKERS`; Apache Kafka in CI) with the
//! ScyllaDB adapter on a real CQL database (`SCYLLA_URI`; Cassandra in CI), through the supervised `run_with`: the
//! command lifecycle across a dispatcher restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use fluxgate_pipeline::{Parts, Stage};
use std::sync::Arc;
use std::time::Duration;

use fluxgate_bus::{Bus, ConsumerSpec, OutRecord, Topic, TopicsConfig};
use fluxgate_command_dispatch::{DispatchConfig, rpc_id};
use fluxgate_model::{
    Body, Channel, Command, CorrelationId, Delivery, DeviceId, DeviceRef, Dialect,
    ENVELOPE_VERSION, Envelope, MessageId, TenantId,
};
use fluxgate_store::scylla::{ScyllaConfig, ScyllaStore};
use fluxgate_store::{CommandStatus, Store};
use fluxgate_testkit::Stoppable;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn envelope(id: MessageId, device: &str, body: Body) -> Envelope {
    Envelope {
        v: ENVELOPE_VERSION,
        id,
        part: 0,
        tenant: TenantId::new("app").unwrap(),
        device: DeviceRef::Id(DeviceId::new(device).unwrap()),
        via: None,
        dialect: Dialect::Losant,
        channel: Channel::Internal,
        received_ms: now_ms(),
        body,
    }
}

fn command(two_way: bool, persistent: bool) -> Body {
    Body::Command(Command {
        name: "reboot".into(),
        payload: serde_json::json!({}),
        time_ms: None,
        two_way,
        persistent,
        expires_ms: persistent.then(|| now_ms() + 120_000),
    })
}

/// One dispatcher, subscribed on return, running until it is stopped.
fn dispatcher(
    bus: &Arc<dyn Bus>,
    store: &Arc<dyn Store>,
    topics: &TopicsConfig,
    cfg: &DispatchConfig,
) -> Stoppable<()> {
    let stats = Arc::default();
    let prepared =
        fluxgate_command_dispatch::prepare(bus, store.clone(), topics, cfg.clone(), stats).unwrap();
    Stoppable::spawn_local(|shutdown| async move {
        prepared.run(shutdown).await;
    })
}

/// A front: a broadcast consumer of deliveries, polling (and so joining) from now on, and
/// what it reads.
fn front(
    bus: &Arc<dyn Bus>,
    topics: &TopicsConfig,
) -> (
    Arc<dyn fluxgate_bus::Consumer>,
    tokio::sync::mpsc::UnboundedReceiver<Delivery>,
) {
    let front = bus
        .consumer(ConsumerSpec::broadcast(
            "front",
            &[&topics.name(Topic::Deliveries)],
        ))
        .unwrap();
    let (tx, deliveries) = tokio::sync::mpsc::unbounded_channel();
    let reader = front.clone();
    actix_rt::spawn(async move {
        loop {
            if let Ok(r) = reader.recv().await {
                reader.ack(&r.position);
                if let Ok(d) = Delivery::from_bytes(&r.payload) {
                    let _ = tx.send(d);
                }
            }
        }
    });
    (front, deliveries)
}

async fn status(store: &Arc<dyn Store>, id: MessageId, want: CommandStatus) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let got = store.command(id).await.unwrap().map(|c| c.status);
        if got == Some(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "command {id}: {got:?}, wanted {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[actix_rt::test]
async fn kafka_command_lifecycle_across_a_dispatcher_restart() {
    let Some(brokers) =
        fluxgate_testkit::kafka_brokers("kafka_command_lifecycle_across_a_dispatcher_restart")
    else {
        return;
    };
    let (bus, topics) = fluxgate_bus::testing::kafka_with_fresh_topics(brokers, "disp", 2)
        .await
        .unwrap();
    let Some((node, keyspace)) =
        fluxgate_testkit::cql::node("kafka_command_lifecycle_across_a_dispatcher_restart")
    else {
        return;
    };
    let store: Arc<dyn Store> = Arc::new(
        ScyllaStore::connect(ScyllaConfig::single_node(node, &keyspace))
            .await
            .unwrap(),
    );
    // Commands travel on the events topic, on their device's key.
    let (commands, events) = (
        topics.name(Topic::DeviceEvents),
        topics.name(Topic::DeviceEvents),
    );
    let cfg = DispatchConfig {
        group: fluxgate_testkit::unique_name("dispatchers"),
        rpc_timeout_ms: 1_500,
        ..DispatchConfig::default()
    };
    let first = dispatcher(&bus, &store, &topics, &cfg);
    let (front, mut deliveries) = front(&bus, &topics);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while front.assigned() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "front never joined");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut next_delivery = async || {
        tokio::time::timeout(Duration::from_secs(60), deliveries.recv())
            .await
            .expect("a delivery")
            .unwrap()
    };
    let p = bus.producer();
    let send = async |topic: &str, env: Envelope| {
        p.produce(OutRecord::of(topic, &env)).await.unwrap();
    };
    let mut n = 0u128;
    let mut id = || {
        n += 1;
        MessageId::from_parts(now_ms() as u64, n)
    };

    // Persistent, device offline: queued. Then the dispatcher restarts.
    let kept = id();
    send(&commands, envelope(kept, "d1", command(false, true))).await;
    status(&store, kept, CommandStatus::Queued).await;
    first.stop(Duration::from_secs(30)).await;
    let second = dispatcher(&bus, &store, &topics, &cfg);

    // The device connects ...
    let connect = Body::Connect {
        profile: None,
        session: None,
    };
    send(&events, envelope(id(), "d1", connect)).await;
    // ... and subscribes to its commands, which sends the queued one.
    send(&events, envelope(id(), "d1", Body::Subscribed)).await;
    let d = next_delivery().await;
    assert_eq!(d.id, kept);
    assert_eq!(d.render().unwrap().topic, "losant/d1/command");
    status(&store, kept, CommandStatus::Sent).await;

    // A two-way RPC answered by the device: replied, with the answer.
    let asked = id();
    send(&commands, envelope(asked, "d1", command(true, false))).await;
    assert_eq!(next_delivery().await.id, asked);
    status(&store, asked, CommandStatus::Sent).await;
    let answer = Body::RpcResponse {
        request_id: CorrelationId::Int(rpc_id(asked)),
        data: serde_json::json!({"ok": true}),
    };
    send(&events, envelope(id(), "d1", answer)).await;
    status(&store, asked, CommandStatus::Replied).await;
    let reply = store.command(asked).await.unwrap().unwrap().reply;
    assert_eq!(reply, Some(serde_json::json!({"ok": true})));

    // A two-way RPC nobody answers: timed out by the timer.
    let unanswered = id();
    send(&commands, envelope(unanswered, "d1", command(true, false))).await;
    assert_eq!(next_delivery().await.id, unanswered);
    status(&store, unanswered, CommandStatus::TimedOut).await;

    // Lightweight, to a device that is not connected: failed at once, nothing delivered.
    let light = id();
    send(&commands, envelope(light, "d2", command(false, false))).await;
    status(&store, light, CommandStatus::Failed).await;
    assert!(
        tokio::time::timeout(Duration::from_secs(1), deliveries.recv())
            .await
            .is_err()
    );

    second.stop(Duration::from_secs(30)).await;
}

/// Timers belong to the dispatcher holding the device's partition, on Kafka's own
/// assignment: when the holder dies, the dispatcher the group gives the partition to runs
/// the deadline of the command the dead one sent, and before that it ran none of it.
#[actix_rt::test]
async fn kafka_a_dispatcher_taking_over_a_partition_runs_its_timers() {
    use actix::{Actor, Arbiter};
    use fluxgate_command_dispatch::{DispatchStats, Dispatcher};
    use std::sync::atomic::Ordering::Relaxed;

    let test = "kafka_a_dispatcher_taking_over_a_partition_runs_its_timers";
    let Some(brokers) = fluxgate_testkit::kafka_brokers(test) else {
        return;
    };
    let (bus, topics) = fluxgate_bus::testing::kafka_with_fresh_topics(brokers, "takeover", 2)
        .await
        .unwrap();
    let Some((node, keyspace)) = fluxgate_testkit::cql::node(test) else {
        return;
    };
    let store: Arc<dyn Store> = Arc::new(
        ScyllaStore::connect(ScyllaConfig::single_node(node, &keyspace))
            .await
            .unwrap(),
    );
    let events = topics.name(Topic::DeviceEvents);
    let cfg = DispatchConfig {
        group: fluxgate_testkit::unique_name("dispatchers"),
        delivery_timeout_ms: 3_000,
        ..DispatchConfig::default()
    };
    let make = |cfg: &DispatchConfig| {
        let consumer = bus
            .consumer(ConsumerSpec::group(&cfg.group, &[&events]))
            .unwrap();
        let stats = Arc::new(DispatchStats::default());
        let d = Dispatcher::new(Parts {
            consumer: consumer.clone(),
            producer: bus.producer(),
            store: store.clone(),
            topics: topics.clone(),
            cfg: cfg.clone(),
            stats: stats.clone(),
        });
        (consumer, stats, d)
    };
    let arbiter = Arbiter::new();
    let (a, a_stats, d) = make(&cfg);
    fluxgate_pipeline::Pipeline::start_in_arbiter(&arbiter.handle(), |_| {
        fluxgate_pipeline::Pipeline::new(d)
    });
    let (b, b_stats, d) = make(&cfg);
    d.start();
    let (front, mut deliveries) = front(&bus, &topics);
    // Both dispatchers hold a partition, and the front reads.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while a.assigned() == 0 || b.assigned() == 0 || front.assigned() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no assignment");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tenant = TenantId::new("app").unwrap();
    let held_by = |c: &Arc<dyn fluxgate_bus::Consumer>, d: &str| {
        let key = fluxgate_model::device_key(&tenant, &DeviceId::new(d).unwrap());
        c.holds(&events, key.as_bytes())
    };
    let device = (0..64)
        .map(|i| format!("moved-{i}"))
        .find(|d| held_by(&a, d))
        .expect("a holds a partition");
    assert!(!held_by(&b, &device), "one holder per key");
    drop(a);

    let p = bus.producer();
    let send = async |env: Envelope| {
        p.produce(OutRecord::of(&events, &env)).await.unwrap();
    };
    let mut n = 0u128;
    let mut id = || {
        n += 1;
        MessageId::from_parts(now_ms() as u64, n)
    };
    let connect = Body::Connect {
        profile: None,
        session: None,
    };
    send(envelope(id(), &device, connect)).await;
    send(envelope(id(), &device, Body::Subscribed)).await;
    let light = id();
    send(envelope(light, &device, command(false, false))).await;
    let d = tokio::time::timeout(Duration::from_secs(60), deliveries.recv())
        .await
        .expect("a delivery")
        .unwrap();
    assert_eq!(d.id, light);
    status(&store, light, CommandStatus::Sent).await;
    // The status is written just before the timer starts.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while a_stats.timers.load(Relaxed) != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sender runs the deadline"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        b_stats.timers.load(Relaxed),
        0,
        "the other dispatcher does not"
    );
    // The sender dies (its consumer leaves the group) before the deadline; no front
    // reports the delivery.
    arbiter.stop();
    status(&store, light, CommandStatus::Failed).await;
    assert!(held_by(&b, &device), "the survivor holds the partition now");
    assert_eq!(b_stats.timers_rearmed.load(Relaxed), 1);
    // The history entry is written right after the status (not in one transaction).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let last = loop {
        let history = store.command_history(light).await.unwrap();
        match history.last() {
            Some(h) if h.status == CommandStatus::Failed => break h.clone(),
            _ => assert!(tokio::time::Instant::now() < deadline, "{history:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(last.detail.as_deref(), Some("not delivered within 3000 ms"));
}
