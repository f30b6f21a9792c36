//! `fluxgate-bus`: the one way every fluxgate role produces and consumes.
//!
//! One contract, two implementations:
//! - [`kafka::KafkaBus`] (rdkafka) for deployments: idempotent producer, `acks=all`, an
//!   ack is the broker's delivery report; consumer groups with offsets stored only for
//!   records whose handler finished.
//! - [`memory::MemoryBus`] for standalone mode and fast tests: partitions by key hash,
//!   bounded memory, and a produce resolves only when every consumer group subscribed to
//!   the topic has committed the record — so in standalone mode a QoS 1 PUBACK means the
//!   data reached its final store.
//!
//! The contract, as the tests in `tests/contract` check it on both:
//! - **Produce** ([`Producer::send`]) waits for room (backpressure surfaces to the caller,
//!   never an unbounded queue) and returns an [`AckFuture`] that resolves once the record
//!   is durable, or fails with a typed [`ProduceError`]. Records sent in order with the
//!   same key are stored in that order on one partition.
//! - **Consume** ([`Consumer::recv`]) is at-least-once: [`Consumer::ack`] marks a record's
//!   effect as done; the committed position of a partition only ever moves past a record
//!   when it and every record before it were acked, whatever order acks come in.
//!   [`Consumer::nack`] (the handler failed) redelivers from the first unfinished record.
//!   Records not acked when a consumer dies are redelivered to the group.
//!   [`Consumer::rewind`] does the same within a live consumer whose handler died, and
//!   `fluxgate_pipeline::supervise` restarts such a handler.
//! - **Broadcast** consumers ([`ConsumerSpec::broadcast`]) each get every record produced
//!   after they joined (a group of their own, starting at the end), for
//!   `fluxgate.deliveries` and `fluxgate.mqtt.custom`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;

mod ack;
pub mod kafka;
pub mod memory;
#[cfg(feature = "testing")]
pub mod testing;
pub mod topics;
pub mod trace;

pub use kafka::{KafkaBus, KafkaConfig};
pub use memory::{MemoryBus, MemoryConfig};
pub use topics::{Topic, TopicSpec, TopicsConfig};

/// A boxed, sendable future (the trait methods return these so the traits stay usable
/// as `dyn` objects).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Record headers, in order. Keys may repeat; [`Headers::get`] returns the last.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, Bytes)>);

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Headers(Vec::new())
    }

    /// Adds a header.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Bytes>) {
        self.0.push((key.into(), value.into()));
    }

    /// The last value of `key`.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| &v[..])
    }

    /// All headers in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.0.iter().map(|(k, v)| (k.as_str(), &v[..]))
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A record to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRecord {
    /// Full topic name (prefix included; see [`TopicsConfig::name`]).
    pub topic: String,
    /// Partitioning key: records with the same key stay in order on one partition.
    pub key: Bytes,
    /// The value.
    pub payload: Bytes,
    /// Headers (e.g. `traceparent`).
    pub headers: Headers,
}

impl OutRecord {
    /// A record without headers.
    pub fn new(topic: impl Into<String>, key: impl Into<Bytes>, payload: impl Into<Bytes>) -> Self {
        OutRecord {
            topic: topic.into(),
            key: key.into(),
            payload: payload.into(),
            headers: Headers::new(),
        }
    }

    /// The record of `message`, keyed by its type ([`fluxgate_model::Keyed`]).
    pub fn of(topic: impl Into<String>, message: &impl fluxgate_model::Keyed) -> Self {
        OutRecord::new(topic, message.record_key(), message.record_value())
    }
}

/// Headers of a dead-letter record: where the original was, who could not read it, why.
pub mod dead_letter_headers {
    /// The topic the record was consumed from.
    pub const TOPIC: &str = "dlq-topic";
    /// Its partition (decimal).
    pub const PARTITION: &str = "dlq-partition";
    /// Its offset (decimal).
    pub const OFFSET: &str = "dlq-offset";
    /// The role that could not decode it (`validator`, `ts-writer`, `command-dispatch`).
    pub const ROLE: &str = "dlq-role";
    /// The decoder's error.
    pub const ERROR: &str = "dlq-error";
}

/// The dead-letter copy of `rec`, for `topic` (the [`Topic::DeadLetter`] name): the same
/// key, value and headers, plus the `dlq-*` headers of [`dead_letter_headers`]. A role
/// that cannot decode a record produces this and acks the original only once this is
/// acknowledged, so nothing is consumed and lost.
pub fn dead_letter(topic: &str, rec: &Record, role: &str, error: &str) -> OutRecord {
    use dead_letter_headers as h;
    let mut out = OutRecord::new(topic, rec.key.clone(), rec.payload.clone());
    out.headers = rec.headers.clone();
    out.headers.insert(h::TOPIC, rec.position.topic.to_string());
    out.headers
        .insert(h::PARTITION, rec.position.partition.to_string());
    out.headers
        .insert(h::OFFSET, rec.position.offset.to_string());
    out.headers.insert(h::ROLE, role.to_owned());
    // A decoder error quotes little of the input, but bound it all the same.
    let mut end = error.len().min(1024);
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    out.headers.insert(h::ERROR, error[..end].to_owned());
    out
}

/// Where a produced record was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Its partition.
    pub partition: i32,
    /// Its offset in the partition.
    pub offset: i64,
}

/// A record's place, and the assignment it was delivered under (acks from an older
/// assignment of the partition are ignored: those records are redelivered anyway).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Position {
    /// Topic name.
    pub topic: Arc<str>,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    pub(crate) epoch: u64,
}

/// A consumed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Where it is; pass it to [`Consumer::ack`] / [`Consumer::nack`].
    pub position: Position,
    /// Its key.
    pub key: Bytes,
    /// Its value.
    pub payload: Bytes,
    /// Its headers.
    pub headers: Headers,
}

/// Why a produce failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProduceError {
    /// The broker did not acknowledge within the configured produce timeout. The record
    /// may or may not be stored: retry (the idempotent producer and idempotent consumers
    /// make that safe) or report failure upstream.
    #[error("the broker did not acknowledge the record in time; check that Kafka is reachable")]
    Timeout,
    /// The record can never be stored: it is larger than the broker accepts.
    #[error("record is too large for the broker (raise message.max.bytes or send less)")]
    TooLarge,
    /// The bus is shutting down.
    #[error("the bus is shutting down")]
    Closed,
    /// A broker or network error that may pass.
    #[error("broker error, retriable: {0}")]
    Retriable(String),
    /// An error retrying will not fix (bad topic, authorization, fatal producer state).
    #[error("broker error: {0}")]
    Fatal(String),
}

impl ProduceError {
    /// Whether trying again later may succeed.
    pub fn is_retriable(&self) -> bool {
        matches!(self, ProduceError::Timeout | ProduceError::Retriable(_))
    }
}

/// Why consuming failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConsumeError {
    /// The consumer was closed.
    #[error("the consumer is closed")]
    Closed,
    /// A broker error; consuming may continue.
    #[error("broker error while consuming: {0}")]
    Broker(String),
}

/// Why a bus operation (creating a client, bootstrapping topics) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// The configuration was refused.
    #[error("bus configuration refused: {0}")]
    Config(String),
    /// The broker refused or could not be reached.
    #[error("broker error: {0}; check that Kafka is reachable at the configured brokers")]
    Broker(String),
}

/// The durability acknowledgement of one produced record.
pub struct AckFuture(BoxFuture<'static, Result<Delivered, ProduceError>>);

impl AckFuture {
    pub(crate) fn new(
        f: impl Future<Output = Result<Delivered, ProduceError>> + Send + 'static,
    ) -> Self {
        AckFuture(Box::pin(f))
    }
}

impl fmt::Debug for AckFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AckFuture")
    }
}

impl Future for AckFuture {
    type Output = Result<Delivered, ProduceError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx)
    }
}

/// Produces records.
pub trait Producer: Send + Sync + fmt::Debug {
    /// Hands the record to the bus, waiting while the bus is at its in-flight bound.
    /// Records sent in order are stored in that order (per key). The returned future
    /// resolves when the record is durable.
    fn send(&self, record: OutRecord) -> BoxFuture<'_, Result<AckFuture, ProduceError>>;
}

impl dyn Producer + '_ {
    /// Sends and waits for durability.
    pub async fn produce(&self, record: OutRecord) -> Result<Delivered, ProduceError> {
        self.send(record).await?.await
    }
}

/// Consumes records with at-least-once semantics.
pub trait Consumer: Send + Sync + fmt::Debug {
    /// The next record. Keep calling it while paused: group membership is kept alive by
    /// the calls (a paused consumer just gets no records).
    fn recv(&self) -> BoxFuture<'_, Result<Record, ConsumeError>>;
    /// The record's effect is durable: its offset may be committed once every earlier
    /// record of the partition is acked too.
    fn ack(&self, position: &Position);
    /// The record's handler failed: the partition is redelivered from its first
    /// unfinished record.
    fn nack(&self, position: &Position);
    /// The application lost every record it had in hand (its handler died and was
    /// restarted): each partition is redelivered from its first unfinished record, and acks
    /// of earlier deliveries are ignored. Returns how many partitions were rewound.
    fn rewind(&self) -> usize;
    /// Stop delivering records (backpressure), keeping the group membership.
    fn pause(&self);
    /// Deliver again after [`Consumer::pause`].
    fn resume(&self);
    /// Commits acked positions now (at drain; they are also committed periodically).
    fn commit(&self) -> BoxFuture<'_, Result<(), ConsumeError>>;
    /// Number of partitions currently assigned to this consumer.
    fn assigned(&self) -> usize;
    /// Whether a record keyed `key` on `topic` goes to a partition this consumer holds now
    /// (by the producers' partitioner). State kept per key outside the bus, such as a
    /// timer, belongs to the consumer that holds the key.
    fn holds(&self, topic: &str, key: &[u8]) -> bool;
    /// Whether this consumer holds any partition of `topic` now. A broadcast consumer of
    /// several topics may get them in more than one assignment (a topic whose metadata
    /// came late joins later): it has what it subscribed to once every topic is held.
    fn holds_topic(&self, topic: &str) -> bool;
    /// Changes whenever this consumer's assignment changes: compare it to learn when to
    /// take over the per-key state of newly held partitions.
    fn generation(&self) -> u64;
    /// Consumer lag: records in the assigned partitions past the committed (acked)
    /// position, i.e. not finished yet. Kafka's figure is measured from the broker every
    /// 5 s (end offsets less the group's commits, so also for a paused consumer); the
    /// in-process bus's is exact.
    fn lag(&self) -> u64;
}

/// How to consume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerSpec {
    /// Consumer group; for broadcast consumers, the prefix of a group unique to this one.
    pub group: String,
    /// Full topic names.
    pub topics: Vec<String>,
    /// Every broadcast consumer receives every record produced after it joined.
    pub broadcast: bool,
}

impl ConsumerSpec {
    /// A group member sharing the topics' partitions with the group's other members.
    pub fn group(group: impl Into<String>, topics: &[&str]) -> Self {
        ConsumerSpec {
            group: group.into(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            broadcast: false,
        }
    }

    /// A broadcast consumer.
    pub fn broadcast(group_prefix: impl Into<String>, topics: &[&str]) -> Self {
        ConsumerSpec {
            broadcast: true,
            ..ConsumerSpec::group(group_prefix, topics)
        }
    }
}

impl ConsumerSpec {
    /// Checks the spec and returns the group id to join: the group itself, or for a
    /// broadcast consumer a group unique to it.
    pub(crate) fn group_id(&self) -> Result<String, BusError> {
        if self.topics.is_empty() {
            return Err(BusError::Config(
                "a consumer needs at least one topic".into(),
            ));
        }
        Ok(if self.broadcast {
            format!("{}-{}", self.group, unique_suffix())
        } else {
            self.group.clone()
        })
    }
}

/// A bus: makes producers and consumers, and creates topics.
pub trait Bus: Send + Sync + fmt::Debug {
    /// A producer (cheap to clone; share one per process).
    fn producer(&self) -> Arc<dyn Producer>;
    /// A new consumer.
    fn consumer(&self, spec: ConsumerSpec) -> Result<Arc<dyn Consumer>, BusError>;
    /// Creates the topics that do not exist yet (idempotent).
    fn ensure_topics<'a>(&'a self, topics: &'a [TopicSpec]) -> BoxFuture<'a, Result<(), BusError>>;
    /// Whether the broker answers now (Kafka: a metadata request, bounded in time).
    /// Readiness asks this periodically; it never retries.
    fn ping(&self) -> BoxFuture<'_, Result<(), BusError>>;
}

/// The wall clock in epoch milliseconds, as every role stamps envelopes, records and store
/// rows (0 for a clock set before 1970).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A process-unique suffix for broadcast group names.
pub(crate) fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "{}-{:x}-{}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}
