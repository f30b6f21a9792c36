//! The Kafka bus (rdkafka, librdkafka 2.x).
//!
//! - Producer: idempotent, `acks=all`; an ack is librdkafka's delivery report, so a
//!   resolved [`crate::AckFuture`] means the record is replicated as the topic requires. A
//!   semaphore bounds records in flight ([`KafkaConfig::max_in_flight`]); `send` waits for
//!   a permit, so a slow broker slows the caller instead of growing a queue. Undelivered
//!   records fail with [`ProduceError::Timeout`] after [`KafkaConfig::produce_timeout_ms`]
//!   (librdkafka's `message.timeout.ms`).
//! - Consumer: the rust-rdkafka at-least-once pattern — `enable.auto.offset.store=false`,
//!   auto-commit of *stored* offsets only, and an offset is stored only when the record and
//!   every record delivered before it on its partition were acked. A rebalance makes the
//!   revoked partitions' in-flight positions stale (their acks are ignored; librdkafka
//!   commits what was stored before the revoke), so nothing is committed for a partition
//!   this consumer no longer owns.
//! - Broadcast consumers get a group of their own, start at the latest offset and commit
//!   nothing.

mod consumer;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, Message as _, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer as _, ProducerContext, ThreadedProducer};
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::{
    AckFuture, BoxFuture, Bus, BusError, Consumer, ConsumerSpec, Delivered, OutRecord,
    ProduceError, Producer, TopicSpec,
};

/// Kafka settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port[,host:port...]`.
    pub brokers: String,
    /// `client.id` reported to the brokers.
    pub client_id: String,
    /// How long a record may wait for the broker's ack before failing, in milliseconds.
    pub produce_timeout_ms: u64,
    /// Most records in flight (sent, not yet acknowledged) per producer.
    pub max_in_flight: usize,
    /// How long the producer waits to fill a batch, in milliseconds.
    pub linger_ms: u64,
    /// `compression.type`: none, gzip, snappy, lz4, zstd.
    pub compression: String,
    /// How often consumers commit stored offsets, in milliseconds.
    pub commit_interval_ms: u64,
    /// Consumer group session timeout, in milliseconds.
    pub session_timeout_ms: u64,
    /// `sasl.username`, when not empty. With `sasl_password`, set them from the
    /// environment (`FLUXGATE_BUS__KAFKA__SASL_USERNAME`), and `security.protocol` and
    /// `sasl.mechanism` in `librdkafka`.
    pub sasl_username: String,
    /// `sasl.password`, when not empty (`FLUXGATE_BUS__KAFKA__SASL_PASSWORD`).
    pub sasl_password: String,
    /// Any other librdkafka property, applied last (e.g. `security.protocol`).
    pub librdkafka: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            client_id: "fluxgate".into(),
            produce_timeout_ms: 30_000,
            max_in_flight: 10_000,
            linger_ms: 5,
            compression: "lz4".into(),
            commit_interval_ms: 1_000,
            session_timeout_ms: 10_000,
            sasl_username: String::new(),
            sasl_password: String::new(),
            librdkafka: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    fn base(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", &self.client_id);
        for (key, value) in [
            ("sasl.username", &self.sasl_username),
            ("sasl.password", &self.sasl_password),
        ] {
            if !value.is_empty() {
                c.set(key, value);
            }
        }
        c
    }

    /// Whether producers use the partitioner [`murmur2_partition`] reproduces (not if a
    /// `librdkafka` entry sets another one).
    fn partitioner_known(&self) -> bool {
        self.librdkafka
            .get("partitioner")
            .is_none_or(|p| p == "murmur2" || p == PARTITIONER)
    }

    fn extra(&self, c: &mut ClientConfig) {
        for (k, v) in &self.librdkafka {
            c.set(k, v);
        }
    }

    fn producer_config(&self) -> ClientConfig {
        let mut c = self.base();
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", self.produce_timeout_ms.to_string())
            .set("linger.ms", self.linger_ms.to_string())
            .set("compression.type", &self.compression)
            // Java's default, so that a consumer can tell which keys its partitions hold
            // ([`murmur2_partition`]) and a Java producer agrees on a device's partition.
            .set("partitioner", PARTITIONER)
            // Room for every permit, so an enqueue never meets a full local queue.
            .set(
                "queue.buffering.max.messages",
                (self.max_in_flight.max(1) + 1000).to_string(),
            );
        self.extra(&mut c);
        c
    }
}

/// The producers' partitioner: murmur2 for keyed records (random for empty keys).
const PARTITIONER: &str = "murmur2_random";

/// The partition Kafka's murmur2 partitioner (the Java client's default, librdkafka's
/// `murmur2_random`) gives a non-empty `key` on a topic of `partitions` partitions.
pub fn murmur2_partition(key: &[u8], partitions: u32) -> i32 {
    let h = murmur2::murmur2(key, murmur2::KAFKA_SEED) & 0x7fff_ffff;
    // Below `partitions`, so it fits in an i32.
    (h % partitions.max(1)) as i32
}

/// Maps a delivery or enqueue error to the contract's error.
fn produce_error(e: &KafkaError) -> ProduceError {
    use RDKafkaErrorCode as C;
    match e.rdkafka_error_code() {
        Some(C::MessageTimedOut) => ProduceError::Timeout,
        Some(C::MessageSizeTooLarge | C::InvalidMessageSize) => ProduceError::TooLarge,
        Some(
            C::QueueFull
            | C::AllBrokersDown
            | C::BrokerTransportFailure
            | C::RequestTimedOut
            | C::NetworkException
            | C::NotEnoughReplicas
            | C::NotEnoughReplicasAfterAppend
            | C::LeaderNotAvailable
            | C::NotLeaderForPartition
            | C::UnknownTopicOrPartition,
        ) => ProduceError::Retriable(e.to_string()),
        _ => ProduceError::Fatal(e.to_string()),
    }
}

fn headers_of(rec: &OutRecord) -> Option<OwnedHeaders> {
    if rec.headers.is_empty() {
        return None;
    }
    let mut h = OwnedHeaders::new_with_capacity(rec.headers.iter().count());
    for (key, value) in rec.headers.iter() {
        h = h.insert(Header {
            key,
            value: Some(value),
        });
    }
    Some(h)
}

/// What travels with a record to its delivery report: the in-flight permit (released the
/// moment the broker answers, whether or not anyone awaits the ack) and the ack channel.
struct Pending {
    _permit: OwnedSemaphorePermit,
    ack: oneshot::Sender<Result<Delivered, ProduceError>>,
}

/// Producer callbacks: resolve each record's ack from its delivery report.
struct ProducerCtx;

impl ClientContext for ProducerCtx {}

impl ProducerContext for ProducerCtx {
    type DeliveryOpaque = Box<Pending>;

    fn delivery(&self, result: &DeliveryResult<'_>, pending: Box<Pending>) {
        let outcome = match result {
            Ok(m) => Ok(Delivered {
                partition: m.partition(),
                offset: m.offset(),
            }),
            Err((e, _)) => Err(produce_error(e)),
        };
        // The receiver may be gone (caller not interested): the permit is freed anyway.
        let _ = pending.ack.send(outcome);
    }
}

/// A Kafka producer with a bound on records in flight. librdkafka's own thread polls for
/// delivery reports, so acks resolve and permits free up even when nobody polls the
/// [`AckFuture`] yet.
pub struct KafkaProducer {
    producer: ThreadedProducer<ProducerCtx>,
    permits: Arc<Semaphore>,
}

impl std::fmt::Debug for KafkaProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaProducer")
            .field("available_permits", &self.permits.available_permits())
            .finish()
    }
}

impl KafkaProducer {
    /// Connects a producer.
    pub fn new(cfg: &KafkaConfig) -> Result<Self, BusError> {
        let producer: ThreadedProducer<ProducerCtx> = cfg
            .producer_config()
            .create_with_context(ProducerCtx)
            .map_err(|e| BusError::Config(e.to_string()))?;
        Ok(KafkaProducer {
            producer,
            permits: Arc::new(Semaphore::new(cfg.max_in_flight.max(1))),
        })
    }

    /// Waits until every record handed over is acknowledged (or failed), up to `timeout`.
    pub fn flush(&self, timeout: Duration) -> Result<(), ProduceError> {
        self.producer.flush(timeout).map_err(|e| produce_error(&e))
    }
}

impl Producer for KafkaProducer {
    fn send(&self, record: OutRecord) -> BoxFuture<'_, Result<AckFuture, ProduceError>> {
        Box::pin(async move {
            let permit = self
                .permits
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| ProduceError::Closed)?;
            let (tx, rx) = oneshot::channel();
            let mut pending = Box::new(Pending {
                _permit: permit,
                ack: tx,
            });
            loop {
                let mut br = BaseRecord::with_opaque_to(&record.topic, pending)
                    .key(&record.key[..])
                    .payload(&record.payload[..]);
                if let Some(h) = headers_of(&record) {
                    br = br.headers(h);
                }
                match self.producer.send(br) {
                    Ok(()) => {
                        return Ok(AckFuture::new(async move {
                            rx.await.unwrap_or(Err(ProduceError::Closed))
                        }));
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        // The permits keep this rare; wait for the local queue to drain.
                        pending = back.delivery_opaque;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => return Err(produce_error(&e)),
                }
            }
        })
    }
}

/// The Kafka bus.
#[derive(Debug, Clone)]
pub struct KafkaBus {
    cfg: KafkaConfig,
    producer: Arc<KafkaProducer>,
}

impl KafkaBus {
    /// Connects (the producer is created now; brokers are contacted lazily).
    pub fn new(cfg: KafkaConfig) -> Result<Self, BusError> {
        let producer = Arc::new(KafkaProducer::new(&cfg)?);
        Ok(KafkaBus { cfg, producer })
    }

    /// The concrete producer (for `flush` at shutdown).
    pub fn kafka_producer(&self) -> Arc<KafkaProducer> {
        self.producer.clone()
    }
}

impl Bus for KafkaBus {
    fn producer(&self) -> Arc<dyn Producer> {
        self.producer.clone()
    }

    fn consumer(&self, spec: ConsumerSpec) -> Result<Arc<dyn Consumer>, BusError> {
        Ok(Arc::new(consumer::KafkaConsumer::new(&self.cfg, spec)?))
    }

    fn ensure_topics<'a>(&'a self, topics: &'a [TopicSpec]) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            let mut c = self.cfg.base();
            self.cfg.extra(&mut c);
            let admin: AdminClient<DefaultClientContext> =
                c.create().map_err(|e| BusError::Config(e.to_string()))?;
            let retention: Vec<Option<String>> = topics
                .iter()
                .map(|t| t.retention_ms.map(|r| r.to_string()))
                .collect();
            let new: Vec<NewTopic<'_>> = topics
                .iter()
                .zip(&retention)
                .map(|(t, r)| {
                    let mut n = NewTopic::new(
                        &t.name,
                        t.partitions,
                        TopicReplication::Fixed(t.replication_factor),
                    );
                    if let Some(r) = r {
                        n = n.set("retention.ms", r);
                    }
                    if t.compacted {
                        n = n.set("cleanup.policy", "compact");
                    }
                    n
                })
                .collect();
            let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
            let results = admin
                .create_topics(&new, &opts)
                .await
                .map_err(|e| BusError::Broker(e.to_string()))?;
            for r in results {
                match r {
                    Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((topic, code)) => {
                        return Err(BusError::Broker(format!("creating topic {topic}: {code}")));
                    }
                }
            }
            Ok(())
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), BusError>> {
        let producer = self.producer.clone();
        Box::pin(async move {
            // librdkafka's metadata call blocks (bounded by its timeout): off the runtime.
            tokio::task::spawn_blocking(move || {
                producer
                    .producer
                    .client()
                    .fetch_metadata(None, PING_TIMEOUT)
                    .map(|_| ())
                    .map_err(|e| BusError::Broker(e.to_string()))
            })
            .await
            .map_err(|e| BusError::Broker(format!("metadata task failed: {e}")))?
        })
    }
}

/// How long a readiness ping waits for a broker's metadata answer.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sasl_credentials_reach_librdkafka_only_when_set() {
        let none = KafkaConfig::default().producer_config();
        assert_eq!(none.get("sasl.username"), None);
        let cfg = KafkaConfig {
            sasl_username: "fluxgate".into(),
            sasl_password: "s3cret".into(),
            librdkafka: [("sasl.mechanism".to_owned(), "PLAIN".to_owned())].into(),
            ..KafkaConfig::default()
        };
        let c = cfg.producer_config();
        assert_eq!(c.get("sasl.username"), Some("fluxgate"));
        assert_eq!(c.get("sasl.password"), Some("s3cret"));
        assert_eq!(c.get("sasl.mechanism"), Some("PLAIN"));
    }
}
