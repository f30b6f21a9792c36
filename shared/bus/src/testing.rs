//! Helpers for tests of the roles:
//! - [`FaultyBus`]: a bus whose consumers and producers panic at a chosen call, so that a
//!   role's supervision can be tested through its real `run`. The panic happens inside the
//!   role's handler (the call is made from it), which is how a bug in a handler would look.
//! - [`kafka_with_fresh_topics`]: a Kafka bus tuned for tests, with topics of its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::kafka::{KafkaBus, KafkaConfig};
use crate::topics::TopicsConfig;
use crate::{
    AckFuture, BoxFuture, Bus, BusError, ConsumeError, Consumer, ConsumerSpec, Position,
    ProduceError, Producer, Record, TopicSpec,
};

/// A Kafka bus at `brokers` for tests (6 s group sessions and 200 ms commits, so joins,
/// rebalances and commits stay short) and a fresh set of every fluxgate topic, named with
/// `name` and a unique suffix, `partitions` each.
pub async fn kafka_with_fresh_topics(
    brokers: String,
    name: &str,
    partitions: i32,
) -> Result<(Arc<dyn Bus>, TopicsConfig), BusError> {
    let bus: Arc<dyn Bus> = Arc::new(KafkaBus::new(KafkaConfig {
        brokers,
        session_timeout_ms: 6_000,
        commit_interval_ms: 200,
        ..KafkaConfig::default()
    })?);
    let topics = TopicsConfig {
        prefix: format!("{name}-{}.", crate::unique_suffix()),
        partitions,
        replication_factor: 1,
        ..TopicsConfig::default()
    };
    bus.ensure_topics(&topics.specs()).await?;
    Ok((bus, topics))
}

/// Which call panics: the `n`-th (1-based) of its kind, counted across every consumer or
/// producer of the bus, once. `0` never panics.
#[derive(Debug, Default)]
pub struct Faults {
    /// Panic in the n-th [`Consumer::recv`] that returns a record (the record is lost by
    /// the handler, as in a crash after reading it).
    pub recv: AtomicU64,
    /// Panic in the n-th [`Consumer::ack`], before it reaches the bus (a crash after the
    /// effect, before its acknowledgement).
    pub ack: AtomicU64,
    /// Panic in the n-th [`Producer::send`].
    pub send: AtomicU64,
    counts: [AtomicU64; 3],
}

impl Faults {
    fn hit(&self, which: usize, at: &AtomicU64) {
        let n = self.counts[which].fetch_add(1, Ordering::SeqCst) + 1;
        if at.load(Ordering::SeqCst) == n {
            at.store(0, Ordering::SeqCst);
            panic!("injected fault: call {n} of kind {which}");
        }
    }
}

/// A bus that passes everything to `inner`, panicking where [`Faults`] says.
#[derive(Debug)]
pub struct FaultyBus {
    inner: Arc<dyn Bus>,
    faults: Arc<Faults>,
}

impl FaultyBus {
    /// Wraps `inner`; set the faults through [`FaultyBus::faults`].
    pub fn new(inner: Arc<dyn Bus>) -> Self {
        FaultyBus {
            inner,
            faults: Arc::default(),
        }
    }

    /// The fault settings (shared with every consumer and producer made since).
    pub fn faults(&self) -> &Faults {
        &self.faults
    }
}

impl Bus for FaultyBus {
    fn producer(&self) -> Arc<dyn Producer> {
        Arc::new(FaultyProducer {
            inner: self.inner.producer(),
            faults: self.faults.clone(),
        })
    }

    fn consumer(&self, spec: ConsumerSpec) -> Result<Arc<dyn Consumer>, BusError> {
        Ok(Arc::new(FaultyConsumer {
            inner: self.inner.consumer(spec)?,
            faults: self.faults.clone(),
        }))
    }

    fn ensure_topics<'a>(&'a self, topics: &'a [TopicSpec]) -> BoxFuture<'a, Result<(), BusError>> {
        self.inner.ensure_topics(topics)
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), BusError>> {
        self.inner.ping()
    }
}

#[derive(Debug)]
struct FaultyProducer {
    inner: Arc<dyn Producer>,
    faults: Arc<Faults>,
}

impl Producer for FaultyProducer {
    fn send(&self, record: crate::OutRecord) -> BoxFuture<'_, Result<AckFuture, ProduceError>> {
        self.faults.hit(2, &self.faults.send);
        self.inner.send(record)
    }
}

#[derive(Debug)]
struct FaultyConsumer {
    inner: Arc<dyn Consumer>,
    faults: Arc<Faults>,
}

impl Consumer for FaultyConsumer {
    fn recv(&self) -> BoxFuture<'_, Result<Record, ConsumeError>> {
        Box::pin(async move {
            let r = self.inner.recv().await?;
            self.faults.hit(0, &self.faults.recv);
            Ok(r)
        })
    }
    fn ack(&self, position: &Position) {
        self.faults.hit(1, &self.faults.ack);
        self.inner.ack(position);
    }
    fn nack(&self, position: &Position) {
        self.inner.nack(position);
    }
    fn rewind(&self) -> usize {
        self.inner.rewind()
    }
    fn pause(&self) {
        self.inner.pause();
    }
    fn resume(&self) {
        self.inner.resume();
    }
    fn commit(&self) -> BoxFuture<'_, Result<(), ConsumeError>> {
        self.inner.commit()
    }
    fn assigned(&self) -> usize {
        self.inner.assigned()
    }
    fn lag(&self) -> u64 {
        self.inner.lag()
    }
    fn holds(&self, topic: &str, key: &[u8]) -> bool {
        self.inner.holds(topic, key)
    }
    fn holds_topic(&self, topic: &str) -> bool {
        self.inner.holds_topic(topic)
    }
    fn generation(&self) -> u64 {
        self.inner.generation()
    }
}
