//! Broker faults injected with librdkafka's mock cluster (`rdkafka::mocking`): the
//! producer's acks wait while the broker is down (or fail typed after the configured
//! timeout), retried requests store a record once, and a consumer resumes when the broker
//! returns. No external service needed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::time::{Duration, Instant};

use fluxgate_bus::{Bus, ConsumerSpec, KafkaBus, KafkaConfig, OutRecord, ProduceError};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

const BROKER: i32 = 1;

fn bus(
    mock: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
    timeout_ms: u64,
) -> KafkaBus {
    KafkaBus::new(KafkaConfig {
        brokers: mock.bootstrap_servers(),
        produce_timeout_ms: timeout_ms,
        session_timeout_ms: 6_000,
        commit_interval_ms: 200,
        linger_ms: 0,
        compression: "none".into(),
        ..KafkaConfig::default()
    })
    .unwrap()
}

fn cluster(topic: &str) -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic(topic, 1, 1).unwrap();
    mock
}

async fn still_pending<F: Future + Unpin>(f: &mut F, wait: Duration) -> bool {
    tokio::time::timeout(wait, f).await.is_err()
}

/// Reads records until none arrives for `quiet`, returning their payloads.
async fn drain(bus: &KafkaBus, topic: &str, quiet: Duration) -> Vec<String> {
    let c = bus
        .consumer(ConsumerSpec::group("reader", &[topic]))
        .unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match tokio::time::timeout(
            if out.is_empty() {
                Duration::from_secs(30)
            } else {
                quiet
            },
            c.recv(),
        )
        .await
        {
            Ok(Ok(r)) => {
                c.ack(&r.position);
                out.push(String::from_utf8(r.payload.to_vec()).unwrap());
            }
            Ok(Err(_)) if Instant::now() < deadline => continue,
            _ => return out,
        }
    }
}

#[tokio::test]
async fn broker_down_holds_the_ack_until_it_returns_and_nothing_is_duplicated() {
    let mock = cluster("t");
    let bus = bus(&mock, 60_000);
    let p = bus.producer();
    p.produce(OutRecord::new("t", "k", "before")).await.unwrap();

    mock.broker_down(BROKER).unwrap();
    let mut ack = p.send(OutRecord::new("t", "k", "during")).await.unwrap();
    assert!(
        still_pending(&mut ack, Duration::from_secs(2)).await,
        "no ack while the broker is down"
    );
    mock.broker_up(BROKER).unwrap();
    let d = tokio::time::timeout(Duration::from_secs(30), ack)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.offset, 1);

    assert_eq!(
        drain(&bus, "t", Duration::from_secs(2)).await,
        ["before", "during"]
    );
}

#[tokio::test]
async fn broker_down_past_the_timeout_fails_typed() {
    let mock = cluster("t");
    let bus = bus(&mock, 1_500);
    let p = bus.producer();
    p.produce(OutRecord::new("t", "k", "before")).await.unwrap();
    mock.broker_down(BROKER).unwrap();
    let started = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        p.produce(OutRecord::new("t", "k", "lost?")),
    )
    .await
    .unwrap();
    assert_eq!(r, Err(ProduceError::Timeout));
    assert!(r.unwrap_err().is_retriable());
    assert!(
        started.elapsed() >= Duration::from_millis(1_000),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn produce_request_errors_are_retried_and_stored_once() {
    let mock = cluster("t");
    let bus = bus(&mock, 30_000);
    let p = bus.producer();
    p.produce(OutRecord::new("t", "k", "warm")).await.unwrap();
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 3],
    );
    p.produce(OutRecord::new("t", "k", "retried"))
        .await
        .unwrap();
    assert_eq!(
        drain(&bus, "t", Duration::from_secs(2)).await,
        ["warm", "retried"]
    );
}

#[tokio::test]
async fn slow_broker_delays_the_ack() {
    let mock = cluster("t");
    let bus = bus(&mock, 30_000);
    let p = bus.producer();
    p.produce(OutRecord::new("t", "k", "warm")).await.unwrap();
    mock.broker_round_trip_time(BROKER, Duration::from_millis(500))
        .unwrap();
    let started = Instant::now();
    p.produce(OutRecord::new("t", "k", "slow")).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn consumer_resumes_after_the_broker_returns() {
    let mock = cluster("t");
    let bus = bus(&mock, 60_000);
    let p = bus.producer();
    let c = bus.consumer(ConsumerSpec::group("g", &["t"])).unwrap();
    p.produce(OutRecord::new("t", "k", "one")).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(30), c.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&r.payload[..], b"one");
    c.ack(&r.position);

    mock.broker_down(BROKER).unwrap();
    let ack = p.send(OutRecord::new("t", "k", "two")).await.unwrap();
    // The consumer keeps polling through the outage. "one" may come again (at least
    // once: its offset was stored but the commit may not have reached the broker before
    // it went down), but "two" must arrive.
    let mut next = Box::pin(async {
        loop {
            match c.recv().await {
                Ok(r) if &r.payload[..] == b"one" => c.ack(&r.position),
                Ok(r) => return r,
                Err(_) => {}
            }
        }
    });
    assert!(still_pending(&mut next, Duration::from_secs(2)).await);
    mock.broker_up(BROKER).unwrap();
    let r = tokio::time::timeout(Duration::from_secs(30), next)
        .await
        .unwrap();
    assert_eq!(&r.payload[..], b"two");
    ack.await.unwrap();
}

/// The in-flight bound frees a slot when the broker answers, not when the caller awaits
/// the ack: a caller that sends many records before awaiting any must not stall.
#[tokio::test]
async fn in_flight_bound_frees_on_delivery_not_on_await() {
    let mock = cluster("t");
    let bus = KafkaBus::new(KafkaConfig {
        brokers: mock.bootstrap_servers(),
        max_in_flight: 4,
        linger_ms: 0,
        compression: "none".into(),
        ..KafkaConfig::default()
    })
    .unwrap();
    let p = bus.producer();
    let mut acks = Vec::new();
    for i in 0..40 {
        let send = p.send(OutRecord::new("t", "k", format!("{i}")));
        acks.push(
            tokio::time::timeout(Duration::from_secs(10), send)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    for (i, a) in acks.into_iter().enumerate() {
        assert_eq!(a.await.unwrap().offset, i as i64);
    }
}

#[tokio::test]
async fn ping_answers_while_the_broker_is_up_and_fails_while_it_is_down() {
    let mock = cluster("t");
    let bus = bus(&mock, 60_000);
    bus.ping().await.unwrap();
    mock.broker_down(BROKER).unwrap();
    let t = Instant::now();
    let err = bus.ping().await.unwrap_err();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "bounded: {:?}",
        t.elapsed()
    );
    assert!(err.to_string().contains("broker error"), "{err}");
    mock.broker_up(BROKER).unwrap();
    let mut back = false;
    for _ in 0..20 {
        if bus.ping().await.is_ok() {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(back, "ping answers again once the broker is up");
}

/// A broadcast consumer whose partitions' leader does not answer the end-offset query at
/// first (a topic created a moment ago answers `NotLeaderForPartition` until its leader
/// is elected) still starts at the end that held when it was assigned: a record produced
/// once it holds the topic arrives, and one produced before does not.
#[tokio::test]
async fn broadcast_starts_at_the_end_although_its_first_offset_queries_fail() {
    let mock = cluster("t");
    let bus = bus(&mock, 30_000);
    let p = bus.producer();
    p.produce(OutRecord::new("t", "k", "before")).await.unwrap();
    mock.request_errors(
        RDKafkaApiKey::ListOffsets,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; 4],
    );
    let c = bus
        .consumer(ConsumerSpec::broadcast("front", &["t"]))
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = {
        let c = c.clone();
        tokio::spawn(async move {
            loop {
                if let Ok(r) = c.recv().await {
                    c.ack(&r.position);
                    if tx
                        .send(String::from_utf8(r.payload.to_vec()).unwrap())
                        .is_err()
                    {
                        return;
                    }
                }
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !c.holds_topic("t") {
        assert!(Instant::now() < deadline, "the topic was never held");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    p.produce(OutRecord::new("t", "k", "after")).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(15), rx.recv()).await;
    reader.abort();
    assert_eq!(
        got.ok().flatten().as_deref(),
        Some("after"),
        "the first record after the consumer held the topic"
    );
}
