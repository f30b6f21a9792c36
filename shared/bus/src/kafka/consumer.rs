//! The Kafka consumer: at-least-once over librdkafka's stored offsets.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, RebalanceProtocol,
    StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers as _, Message};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};

use super::KafkaConfig;
use crate::ack::{Step, Tracker};
use crate::{BoxFuture, BusError, ConsumeError, Consumer, ConsumerSpec, Headers, Position, Record};

#[derive(Default)]
struct Shared {
    tracker: Mutex<Tracker>,
    /// Whether the application paused intake. Held while the assignment is paused or
    /// resumed, and by the rebalance hook while it pauses new partitions, so a resume
    /// racing a rebalance cannot leave new partitions paused with the flag down.
    paused: Mutex<bool>,
    assigned: AtomicUsize,
    /// Consumer lag of the assigned partitions, measured by [`watch_lag`].
    lag: AtomicU64,
    /// Per topic: its partition count and the partitions held now.
    held: Mutex<HashMap<String, Held>>,
    /// Grows at every assignment and revocation.
    generation: AtomicU64,
}

/// The partitions of one topic this consumer holds.
#[derive(Debug, Default)]
struct Held {
    /// The topic's partition count, read at the first `holds` after the assignment;
    /// `Some(None)` if its metadata could not be read.
    count: Option<Option<u32>>,
    partitions: HashSet<i32>,
}

impl Shared {
    fn tracker(&self) -> MutexGuard<'_, Tracker> {
        self.tracker.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn paused(&self) -> MutexGuard<'_, bool> {
        self.paused.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn held(&self) -> MutexGuard<'_, HashMap<String, Held>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Rebalance hooks: revoked partitions' in-flight positions become stale; partitions
/// assigned while paused start paused; a broadcast consumer's new partitions start at
/// offsets resolved before they are assigned.
struct Ctx {
    shared: Arc<Shared>,
    broadcast: bool,
}

/// How long a broadcast consumer waits for the end offsets of its new partitions.
const END_OFFSETS_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `holds` waits for a topic's partition count.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

impl Ctx {
    /// Sets every partition of `tpl` to its current end offset, as a number. Left to
    /// librdkafka, "latest" is resolved some time after the assignment, and a record
    /// produced in between is skipped although `assigned()` already counted the partition
    /// (a front then looks ready and misses a delivery).
    ///
    /// Asked again, with a growing pause, until every end is known or
    /// [`END_OFFSETS_TIMEOUT`] passed: a topic created a moment ago answers
    /// `NotLeaderForPartition` until its leaders are elected.
    fn start_at_end(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let deadline = Instant::now() + END_OFFSETS_TIMEOUT;
        let mut unknown = tpl.clone();
        let mut pause = Duration::from_millis(50);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let last_error = match offsets_at(consumer, &unknown, Offset::End, left) {
                Ok(ends) => {
                    let mut still = TopicPartitionList::new();
                    let mut last_error = None;
                    for e in ends.elements() {
                        match (e.error(), e.offset()) {
                            (Ok(()), Offset::Offset(end)) => {
                                if let Some(mut p) = tpl.find_partition(e.topic(), e.partition())
                                    && let Err(err) = p.set_offset(Offset::Offset(end))
                                {
                                    tracing::warn!(error = %err, "kafka consumer: could not set a start offset");
                                }
                            }
                            (r, _) => {
                                last_error = r.err().map(|e| e.to_string());
                                still.add_partition(e.topic(), e.partition());
                            }
                        }
                    }
                    unknown = still;
                    last_error
                }
                Err(e) => Some(e.to_string()),
            };
            if unknown.count() == 0 {
                return;
            }
            if Instant::now() + pause >= deadline {
                // Left to librdkafka's own "latest": a record produced right now may be
                // missed.
                tracing::warn!(
                    error = last_error.as_deref().unwrap_or("no offset"),
                    partitions = unknown.count(),
                    "kafka consumer: end offsets of new partitions unknown"
                );
                return;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }
}

/// How often a group consumer measures its lag.
const LAG_INTERVAL: Duration = Duration::from_secs(5);
/// How long one lag measurement may wait for the broker, per request.
const LAG_TIMEOUT: Duration = Duration::from_secs(2);

impl ClientContext for Ctx {}

/// Measures, every [`LAG_INTERVAL`] until the consumer is dropped, the records of its
/// assigned partitions past their committed offsets, from the broker: the partitions'
/// end offsets and the group's commits. librdkafka's own statistics were used before, but
/// a paused partition is not fetched, so its end offset there froze: a writer paused on a
/// failing store reported the same small lag for as long as the outage lasted while
/// records piled up behind it. A measurement the broker does not answer keeps the last.
fn watch_lag(consumer: Weak<StreamConsumer<Ctx>>, shared: Arc<Shared>) {
    let spawned = std::thread::Builder::new()
        .name("fluxgate-kafka-lag".into())
        .spawn(move || {
            loop {
                std::thread::sleep(LAG_INTERVAL);
                let Some(c) = consumer.upgrade() else {
                    return;
                };
                if let Some(lag) = measure_lag(&c) {
                    shared.lag.store(lag, Ordering::Relaxed);
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "kafka consumer: no lag measurement (thread not started)");
    }
}

/// `tpl`'s partitions' offsets at `at` (`Offset::Beginning` or `Offset::End`), in one
/// ListOffsets request.
fn offsets_at<C: rdkafka::consumer::Consumer<Ctx>>(
    c: &C,
    tpl: &TopicPartitionList,
    at: Offset,
    timeout: Duration,
) -> rdkafka::error::KafkaResult<TopicPartitionList> {
    let mut query = tpl.clone();
    query.set_all_offsets(at)?;
    c.offsets_for_times(query, timeout)
}

/// One measurement: for each assigned partition, its end offset less the group's
/// committed offset (its start offset when nothing is committed yet, or when retention
/// removed what was committed). Three requests whatever the partition count: the commits,
/// the start and the end offsets.
fn measure_lag(c: &StreamConsumer<Ctx>) -> Option<u64> {
    let assigned = c.assignment().ok()?;
    if assigned.count() == 0 {
        return Some(0);
    }
    let known = |tpl: &TopicPartitionList, topic: &str, partition: i32| {
        let p = tpl.find_partition(topic, partition)?;
        match (p.error(), p.offset()) {
            (Ok(()), Offset::Offset(o)) => Some(o),
            _ => None,
        }
    };
    let committed = c.committed_offsets(assigned.clone(), LAG_TIMEOUT).ok()?;
    let starts = offsets_at(c, &assigned, Offset::Beginning, LAG_TIMEOUT).ok()?;
    let ends = offsets_at(c, &assigned, Offset::End, LAG_TIMEOUT).ok()?;
    let mut lag = 0u64;
    for e in assigned.elements() {
        let (topic, partition) = (e.topic(), e.partition());
        let low = known(&starts, topic, partition)?;
        let high = known(&ends, topic, partition)?;
        let from = known(&committed, topic, partition).map_or(low, |o| o.max(low));
        lag += u64::try_from(high - from).unwrap_or(0);
    }
    Some(lag)
}

impl ConsumerContext for Ctx {
    /// librdkafka's rebalance with the hooks below, through the safe assign calls; a
    /// broadcast consumer's assignment carries explicit start offsets.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                if self.broadcast {
                    self.start_at_end(consumer, tpl);
                }
                self.pre_rebalance(consumer, &Rebalance::Assign(tpl));
                let r = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = r {
                    tracing::error!(error = %e, "kafka consumer: assign failed");
                }
                self.post_rebalance(consumer, &Rebalance::Assign(tpl));
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.pre_rebalance(consumer, &Rebalance::Revoke(tpl));
                let r = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = r {
                    tracing::error!(error = %e, "kafka consumer: unassign failed");
                }
                self.post_rebalance(consumer, &Rebalance::Revoke(tpl));
            }
            other => {
                let code: RDKafkaErrorCode = other.into();
                tracing::error!(error = %code, "kafka consumer: rebalance error");
                // As librdkafka's default: drop the assignment.
                if let Err(e) = consumer.unassign() {
                    tracing::error!(error = %e, "kafka consumer: unassign failed");
                }
                let error = Rebalance::Error(KafkaError::Rebalance(code));
                self.post_rebalance(consumer, &error);
            }
        }
    }

    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut tracker = self.shared.tracker();
            for e in tpl.elements() {
                tracker.reset(e.topic(), e.partition());
            }
            tracing::debug!(
                partitions = tpl.count(),
                "kafka consumer: partitions revoked"
            );
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let paused = self.shared.paused();
            if *paused && let Err(e) = consumer.pause(tpl) {
                tracing::warn!(error = %e, "kafka consumer: could not pause newly assigned partitions");
            }
            drop(paused);
            tracing::debug!(
                partitions = tpl.count(),
                "kafka consumer: partitions assigned"
            );
        }
        // Partition counts are read when `holds` first needs them: nothing blocking here,
        // in librdkafka's poll.
        let assignment = consumer.assignment().ok();
        let n = assignment.as_ref().map_or(0, |a| a.count());
        let mut held: HashMap<String, Held> = HashMap::new();
        for e in assignment.iter().flat_map(|a| a.elements()) {
            held.entry(e.topic().to_owned())
                .or_default()
                .partitions
                .insert(e.partition());
        }
        *self.shared.held() = held;
        self.shared.assigned.store(n, Ordering::SeqCst);
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
    }
}

pub(crate) struct KafkaConsumer {
    consumer: Arc<StreamConsumer<Ctx>>,
    shared: Arc<Shared>,
    broadcast: bool,
    group: String,
    names: Mutex<HashMap<String, Arc<str>>>,
    /// Whether [`super::murmur2_partition`] is the producers' partitioner.
    partitioner_known: bool,
}

impl std::fmt::Debug for KafkaConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConsumer")
            .field("group", &self.group)
            .field("broadcast", &self.broadcast)
            .finish()
    }
}

impl KafkaConsumer {
    pub(crate) fn new(cfg: &KafkaConfig, spec: ConsumerSpec) -> Result<Self, BusError> {
        let group = spec.group_id()?;
        let mut c = cfg.base();
        c.set("group.id", &group)
            .set("enable.partition.eof", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.auto.commit", (!spec.broadcast).to_string())
            .set(
                "auto.commit.interval.ms",
                cfg.commit_interval_ms.to_string(),
            )
            .set("session.timeout.ms", cfg.session_timeout_ms.to_string())
            .set(
                "auto.offset.reset",
                if spec.broadcast { "latest" } else { "earliest" },
            )
            // Bounded prefetch: a paused or slow consumer holds at most this much.
            .set("queued.max.messages.kbytes", "16384");
        cfg.extra(&mut c);
        let shared = Arc::new(Shared::default());
        let consumer: StreamConsumer<Ctx> = c
            .create_with_context(Ctx {
                shared: shared.clone(),
                broadcast: spec.broadcast,
            })
            .map_err(|e| BusError::Config(e.to_string()))?;
        let topics: Vec<&str> = spec.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| BusError::Broker(e.to_string()))?;
        let consumer = Arc::new(consumer);
        // A broadcast consumer commits nothing and its lag is not reported.
        if !spec.broadcast {
            watch_lag(Arc::downgrade(&consumer), shared.clone());
        }
        Ok(KafkaConsumer {
            consumer,
            shared,
            broadcast: spec.broadcast,
            group,
            names: Mutex::new(HashMap::new()),
            partitioner_known: cfg.partitioner_known(),
        })
    }

    fn intern(&self, topic: &str) -> Arc<str> {
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = names.get(topic) {
            return t.clone();
        }
        let t: Arc<str> = topic.into();
        names.insert(topic.to_owned(), t.clone());
        t
    }

    /// The topic's partition count, from the cluster's metadata (one request).
    fn partition_count(&self, topic: &str) -> Option<u32> {
        match self.consumer.fetch_metadata(Some(topic), METADATA_TIMEOUT) {
            Ok(md) => md
                .topics()
                .first()
                .and_then(|t| u32::try_from(t.partitions().len()).ok())
                .filter(|&c| c > 0),
            Err(e) => {
                tracing::warn!(error = %e, topic = %topic,
                    "kafka consumer: partition count unknown; every key of the topic counts as held");
                None
            }
        }
    }

    fn set_paused(&self, paused: bool) {
        let mut flag = self.shared.paused();
        *flag = paused;
        let tpl = match self.consumer.assignment() {
            Ok(tpl) => tpl,
            Err(e) => {
                tracing::warn!(error = %e, paused, "kafka consumer: assignment unknown; pause/resume not applied");
                return;
            }
        };
        let r = if paused {
            self.consumer.pause(&tpl)
        } else {
            self.consumer.resume(&tpl)
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, paused, "kafka consumer: pause/resume failed");
        }
    }
}

impl Consumer for KafkaConsumer {
    fn recv(&self) -> BoxFuture<'_, Result<Record, ConsumeError>> {
        Box::pin(async move {
            let msg = self
                .consumer
                .recv()
                .await
                .map_err(|e| ConsumeError::Broker(e.to_string()))?;
            let topic = self.intern(msg.topic());
            let mut headers = Headers::new();
            if let Some(h) = msg.headers() {
                for header in h.iter() {
                    headers.insert(
                        header.key,
                        header.value.map(Bytes::copy_from_slice).unwrap_or_default(),
                    );
                }
            }
            let position = self
                .shared
                .tracker()
                .delivered(&topic, msg.partition(), msg.offset());
            Ok(Record {
                position,
                key: msg.key().map(Bytes::copy_from_slice).unwrap_or_default(),
                payload: msg
                    .payload()
                    .map(Bytes::copy_from_slice)
                    .unwrap_or_default(),
                headers,
            })
        })
    }

    fn ack(&self, position: &Position) {
        let step = self.shared.tracker().ack(position);
        if let (Step::Commit(last), false) = (step, self.broadcast) {
            // librdkafka stores `last + 1`: the next offset to read.
            if let Err(e) = self
                .consumer
                .store_offset(&position.topic, position.partition, last)
            {
                // The partition was revoked in between: its records go to the new owner.
                tracing::debug!(error = %e, topic = %position.topic, partition = position.partition,
                    "kafka consumer: offset not stored");
            }
        }
    }

    fn nack(&self, position: &Position) {
        if let Step::Rewind(from) = self.shared.tracker().nack(position)
            && let Err(e) = self.consumer.seek(
                &position.topic,
                position.partition,
                Offset::Offset(from),
                // Asynchronous: librdkafka discards what it prefetched and refetches.
                Duration::ZERO,
            )
        {
            tracing::warn!(error = %e, topic = %position.topic, partition = position.partition,
                "kafka consumer: rewind failed; the records will be redelivered after the next rebalance");
        }
    }

    fn lag(&self) -> u64 {
        self.shared.lag.load(Ordering::Relaxed)
    }

    fn rewind(&self) -> usize {
        let rewound = self.shared.tracker().rewind_all();
        for ((topic, partition), from) in &rewound {
            if let Err(e) =
                self.consumer
                    .seek(topic, *partition, Offset::Offset(*from), Duration::ZERO)
            {
                tracing::warn!(error = %e, topic = %topic, partition = *partition,
                    "kafka consumer: rewind failed; the records will be redelivered after the next rebalance");
            }
        }
        rewound.len()
    }

    fn pause(&self) {
        self.set_paused(true);
    }

    fn resume(&self) {
        self.set_paused(false);
    }

    fn commit(&self) -> BoxFuture<'_, Result<(), ConsumeError>> {
        Box::pin(async move {
            if self.broadcast {
                return Ok(());
            }
            match self.consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) => Ok(()),
                Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
                Err(e) => Err(ConsumeError::Broker(e.to_string())),
            }
        })
    }

    fn assigned(&self) -> usize {
        self.shared.assigned.load(Ordering::SeqCst)
    }

    fn holds(&self, topic: &str, key: &[u8]) -> bool {
        let cached = match self.shared.held().get(topic) {
            None => return false,
            Some(h) => h.count,
        };
        // Read without the lock held: the rebalance callback takes it.
        let count = cached.unwrap_or_else(|| self.partition_count(topic));
        let mut held = self.shared.held();
        let Some(h) = held.get_mut(topic) else {
            return false;
        };
        // Kept unless a rebalance replaced the entry meanwhile (it reads it again).
        if cached.is_none() && h.count.is_none() {
            h.count = Some(count);
        }
        match count {
            // Unknown partitioner or partition count: every key may be ours. Its holders
            // then race, which the callers' conditional writes settle.
            Some(count) if self.partitioner_known && !key.is_empty() => {
                h.partitions.contains(&super::murmur2_partition(key, count))
            }
            _ => !h.partitions.is_empty(),
        }
    }

    fn holds_topic(&self, topic: &str) -> bool {
        self.shared
            .held()
            .get(topic)
            .is_some_and(|h| !h.partitions.is_empty())
    }

    fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::SeqCst)
    }
}
