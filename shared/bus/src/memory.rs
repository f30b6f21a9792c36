//! The in-process bus: standalone mode and fast tests.
//!
//! Same contract as Kafka, with one difference that is the point of it: a produce
//! resolves only when **every consumer group subscribed to the topic has committed the
//! record** (acked it and everything before it). Chained through the pipeline, a QoS 1
//! PUBACK in standalone mode therefore means the data is in its final store.
//!
//! Model: topics are created on first use with [`MemoryConfig::partitions`] partitions;
//! a record goes to the partition its key hashes to. A partition keeps its records until
//! every subscribed group has committed them (bounded by
//! [`MemoryConfig::max_retained_per_partition`]: a producer waits for room), and a topic
//! no group subscribes to keeps nothing and acks at once. A group joins at the end of each
//! partition; its members share the partitions (every membership change reassigns them
//! all, as an eager Kafka rebalance does, and unacked records are redelivered from the
//! committed position). A group keeps its committed positions when its last member leaves
//! — records then wait for a member to come back — except broadcast groups, which vanish
//! with their only member.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::{Notify, oneshot};

use crate::ack::{Step, Tracker};
use crate::{
    AckFuture, BoxFuture, Bus, BusError, ConsumeError, Consumer, ConsumerSpec, Delivered, Headers,
    OutRecord, Position, ProduceError, Producer, Record, TopicSpec,
};

/// In-process bus settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryConfig {
    /// Partitions of each topic.
    pub partitions: u32,
    /// Most records a partition holds waiting for commits; producers wait beyond it.
    pub max_retained_per_partition: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            partitions: 8,
            max_retained_per_partition: 10_000,
        }
    }
}

type Ack = oneshot::Sender<Result<Delivered, ProduceError>>;

struct Entry {
    key: Bytes,
    payload: Bytes,
    headers: Headers,
    ack: Option<Ack>,
}

struct Partition {
    /// Offset of `log[0]`.
    base: i64,
    log: VecDeque<Entry>,
}

impl Partition {
    fn end(&self) -> i64 {
        self.base + self.log.len() as i64
    }
}

struct TopicState {
    name: Arc<str>,
    partitions: Vec<Partition>,
}

struct Member {
    assigned: Vec<(Arc<str>, i32)>,
    positions: HashMap<(Arc<str>, i32), i64>,
    cursor: usize,
    tracker: Tracker,
    paused: bool,
    wake: Arc<Notify>,
    /// Grows at every rebalance ([`Consumer::generation`]).
    generation: u64,
}

struct Group {
    topics: Vec<Arc<str>>,
    broadcast: bool,
    committed: HashMap<(Arc<str>, i32), i64>,
    members: BTreeMap<u64, Member>,
}

#[derive(Default)]
struct State {
    topics: HashMap<Arc<str>, TopicState>,
    groups: HashMap<String, Group>,
    next_member: u64,
    closed: bool,
}

struct Inner {
    cfg: MemoryConfig,
    state: Mutex<State>,
    /// Woken whenever records leave a partition (room for waiting producers).
    room: Notify,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent-enough state for the remaining
        // users (every mutation is completed before anything can panic), so recover it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The in-process bus. Clones share the same topics and groups.
#[derive(Clone)]
pub struct MemoryBus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MemoryBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBus")
            .field("cfg", &self.inner.cfg)
            .finish()
    }
}

impl MemoryBus {
    /// A new, empty bus.
    pub fn new(cfg: MemoryConfig) -> Self {
        MemoryBus {
            inner: Arc::new(Inner {
                cfg,
                state: Mutex::new(State::default()),
                room: Notify::new(),
            }),
        }
    }

    /// Fails every waiting and future produce with [`ProduceError::Closed`] and ends
    /// consumers' `recv` with [`ConsumeError::Closed`].
    pub fn close(&self) {
        let mut st = self.inner.lock();
        st.closed = true;
        for t in st.topics.values_mut() {
            for p in &mut t.partitions {
                for e in &mut p.log {
                    if let Some(ack) = e.ack.take() {
                        let _ = ack.send(Err(ProduceError::Closed));
                    }
                }
            }
        }
        for g in st.groups.values() {
            for m in g.members.values() {
                m.wake.notify_one();
            }
        }
        drop(st);
        self.inner.room.notify_waiters();
    }
}

impl Default for MemoryBus {
    fn default() -> Self {
        MemoryBus::new(MemoryConfig::default())
    }
}

fn partition_of(key: &[u8], n: u32) -> i32 {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % u64::from(n.max(1))) as i32
}

impl State {
    // The lookup-then-insert keeps the hot path free of an `Arc` allocation per call.
    #[allow(clippy::expect_used)]
    fn topic(&mut self, name: &str, partitions: u32) -> &mut TopicState {
        if !self.topics.contains_key(name) {
            let name: Arc<str> = name.into();
            let t = TopicState {
                name: name.clone(),
                partitions: (0..partitions.max(1))
                    .map(|_| Partition {
                        base: 0,
                        log: VecDeque::new(),
                    })
                    .collect(),
            };
            self.topics.insert(name, t);
        }
        self.topics.get_mut(name).expect("inserted above")
    }

    fn subscribed(&self, topic: &str) -> bool {
        self.groups
            .values()
            .any(|g| g.topics.iter().any(|t| &**t == topic))
    }

    /// Reassigns every partition of the group's topics round-robin over its members, and
    /// restarts each member from the committed positions.
    fn rebalance(&mut self, group: &str) {
        let Some(g) = self.groups.get(group) else {
            return;
        };
        let mut parts = Vec::new();
        for t in &g.topics {
            let n = self.topics.get(t).map_or(0, |t| t.partitions.len());
            parts.extend((0..n as i32).map(|p| (t.clone(), p)));
        }
        let Some(g) = self.groups.get_mut(group) else {
            return;
        };
        let n = g.members.len();
        for (i, m) in g.members.values_mut().enumerate() {
            m.assigned = parts.iter().skip(i).step_by(n.max(1)).cloned().collect();
            m.positions = m
                .assigned
                .iter()
                .map(|tp| (tp.clone(), g.committed.get(tp).copied().unwrap_or(0)))
                .collect();
            m.tracker.reset_all();
            m.cursor = 0;
            m.generation += 1;
            m.wake.notify_one();
        }
    }

    /// Drops the records of a partition that every subscribed group has committed,
    /// resolving their produce acks. Returns whether anything was dropped.
    fn advance(&mut self, topic: &Arc<str>, partition: i32) -> bool {
        let key = (topic.clone(), partition);
        let min = self
            .groups
            .values()
            .filter(|g| g.topics.contains(topic))
            .map(|g| g.committed.get(&key).copied().unwrap_or(0))
            .min();
        let Some(t) = self.topics.get_mut(topic) else {
            return false;
        };
        let Some(p) = t.partitions.get_mut(partition as usize) else {
            return false;
        };
        let upto = min.unwrap_or_else(|| p.end());
        let mut dropped = false;
        while p.base < upto {
            let Some(mut e) = p.log.pop_front() else {
                break;
            };
            if let Some(ack) = e.ack.take() {
                let _ = ack.send(Ok(Delivered {
                    partition,
                    offset: p.base,
                }));
            }
            p.base += 1;
            dropped = true;
        }
        dropped
    }

    fn wake_group_members(&self, topic: &str) {
        for g in self
            .groups
            .values()
            .filter(|g| g.topics.iter().any(|t| &**t == topic))
        {
            for m in g.members.values() {
                m.wake.notify_one();
            }
        }
    }
}

#[derive(Debug)]
struct MemoryProducer {
    bus: MemoryBus,
}

impl MemoryProducer {
    /// Stores the record if its partition has room; gives it back otherwise.
    fn try_push(&self, rec: OutRecord) -> Result<Result<AckFuture, ProduceError>, OutRecord> {
        let inner = &self.bus.inner;
        let mut st = inner.lock();
        if st.closed {
            return Ok(Err(ProduceError::Closed));
        }
        let n = inner.cfg.partitions;
        let partition = partition_of(&rec.key, n);
        let subscribed = st.subscribed(&rec.topic);
        let t = st.topic(&rec.topic, n);
        let name = t.name.clone();
        let Some(p) = t.partitions.get_mut(partition as usize) else {
            return Ok(Err(ProduceError::Fatal("partition out of range".into())));
        };
        if !subscribed {
            // Nobody will ever read it: durable as far as anyone can tell.
            let offset = p.end();
            p.base += 1;
            return Ok(Ok(AckFuture::new(async move {
                Ok(Delivered { partition, offset })
            })));
        }
        if p.log.len() >= inner.cfg.max_retained_per_partition {
            return Err(rec);
        }
        let (tx, rx) = oneshot::channel();
        p.log.push_back(Entry {
            key: rec.key,
            payload: rec.payload,
            headers: rec.headers,
            ack: Some(tx),
        });
        st.wake_group_members(&name);
        Ok(Ok(AckFuture::new(async move {
            rx.await.unwrap_or(Err(ProduceError::Closed))
        })))
    }
}

impl Producer for MemoryProducer {
    fn send(&self, record: OutRecord) -> BoxFuture<'_, Result<AckFuture, ProduceError>> {
        Box::pin(async move {
            let mut record = record;
            loop {
                // Registered before trying, so a commit in between is not missed.
                let room = self.bus.inner.room.notified();
                let mut room = std::pin::pin!(room);
                room.as_mut().enable();
                match self.try_push(record) {
                    Ok(result) => return result,
                    Err(back) => record = back,
                }
                room.await;
            }
        })
    }
}

/// A member of a group.
struct MemoryConsumer {
    bus: MemoryBus,
    group: String,
    id: u64,
    wake: Arc<Notify>,
}

impl std::fmt::Debug for MemoryConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryConsumer")
            .field("group", &self.group)
            .field("id", &self.id)
            .finish()
    }
}

impl MemoryConsumer {
    fn with_member<R>(
        &self,
        f: impl FnOnce(&mut Member, &mut HashMap<(Arc<str>, i32), i64>) -> R,
    ) -> Option<R> {
        let mut st = self.bus.inner.lock();
        let g = st.groups.get_mut(&self.group)?;
        let m = g.members.get_mut(&self.id)?;
        Some(f(m, &mut g.committed))
    }

    /// Takes the next deliverable record, if any.
    fn poll_record(&self) -> Result<Option<Record>, ConsumeError> {
        let mut st = self.bus.inner.lock();
        if st.closed {
            return Err(ConsumeError::Closed);
        }
        let State { topics, groups, .. } = &mut *st;
        let Some(m) = groups
            .get_mut(&self.group)
            .and_then(|g| g.members.get_mut(&self.id))
        else {
            return Err(ConsumeError::Closed);
        };
        if m.paused || m.assigned.is_empty() {
            return Ok(None);
        }
        let n = m.assigned.len();
        for i in 0..n {
            let idx = (m.cursor + i) % n;
            let (topic, partition) = m.assigned[idx].clone();
            let Some(p) = topics
                .get(&topic)
                .and_then(|t| t.partitions.get(partition as usize))
            else {
                continue;
            };
            let Some(pos) = m.positions.get_mut(&(topic.clone(), partition)) else {
                continue;
            };
            if *pos < p.base {
                // Only possible for a position behind what every group committed.
                *pos = p.base;
            }
            if *pos >= p.end() {
                continue;
            }
            let e = &p.log[(*pos - p.base) as usize];
            let offset = *pos;
            *pos += 1;
            m.cursor = (idx + 1) % n;
            return Ok(Some(Record {
                position: m.tracker.delivered(&topic, partition, offset),
                key: e.key.clone(),
                payload: e.payload.clone(),
                headers: e.headers.clone(),
            }));
        }
        Ok(None)
    }
}

impl Consumer for MemoryConsumer {
    fn recv(&self) -> BoxFuture<'_, Result<Record, ConsumeError>> {
        Box::pin(async move {
            loop {
                let woken = self.wake.notified();
                if let Some(r) = self.poll_record()? {
                    return Ok(r);
                }
                woken.await;
            }
        })
    }

    fn ack(&self, position: &Position) {
        let mut st = self.bus.inner.lock();
        let Some(g) = st.groups.get_mut(&self.group) else {
            return;
        };
        let Some(m) = g.members.get_mut(&self.id) else {
            return;
        };
        if let Step::Commit(last) = m.tracker.ack(position) {
            let key = (position.topic.clone(), position.partition);
            let c = g.committed.entry(key).or_insert(0);
            *c = (*c).max(last + 1);
            if st.advance(&position.topic, position.partition) {
                drop(st);
                self.bus.inner.room.notify_waiters();
            }
        }
    }

    fn nack(&self, position: &Position) {
        self.with_member(|m, _| {
            if let Step::Rewind(from) = m.tracker.nack(position)
                && let Some(pos) = m
                    .positions
                    .get_mut(&(position.topic.clone(), position.partition))
            {
                *pos = from;
                m.wake.notify_one();
            }
        });
    }

    fn rewind(&self) -> usize {
        self.with_member(|m, _| {
            let rewound = m.tracker.rewind_all();
            for (key, from) in &rewound {
                if let Some(pos) = m.positions.get_mut(key) {
                    *pos = (*pos).min(*from);
                }
            }
            m.wake.notify_one();
            rewound.len()
        })
        .unwrap_or(0)
    }

    fn pause(&self) {
        self.with_member(|m, _| m.paused = true);
    }

    fn resume(&self) {
        self.with_member(|m, _| {
            m.paused = false;
            m.wake.notify_one();
        });
    }

    fn commit(&self) -> BoxFuture<'_, Result<(), ConsumeError>> {
        // Acks commit immediately.
        Box::pin(async { Ok(()) })
    }

    fn assigned(&self) -> usize {
        self.with_member(|m, _| m.assigned.len()).unwrap_or(0)
    }

    fn holds(&self, topic: &str, key: &[u8]) -> bool {
        let partition = partition_of(key, self.bus.inner.cfg.partitions);
        self.with_member(|m, _| {
            m.assigned
                .iter()
                .any(|(t, p)| &**t == topic && *p == partition)
        })
        .unwrap_or(false)
    }

    fn holds_topic(&self, topic: &str) -> bool {
        self.with_member(|m, _| m.assigned.iter().any(|(t, _)| &**t == topic))
            .unwrap_or(false)
    }

    fn generation(&self) -> u64 {
        self.with_member(|m, _| m.generation).unwrap_or(0)
    }

    fn lag(&self) -> u64 {
        let st = self.bus.inner.lock();
        let Some(g) = st.groups.get(&self.group) else {
            return 0;
        };
        let Some(m) = g.members.get(&self.id) else {
            return 0;
        };
        let mut lag = 0;
        for key in &m.assigned {
            let Some(p) = st
                .topics
                .get(&key.0)
                .and_then(|t| t.partitions.get(key.1 as usize))
            else {
                continue;
            };
            let done = g.committed.get(key).copied().unwrap_or(0).max(p.base);
            lag += (p.end() - done).max(0) as u64;
        }
        lag
    }
}

impl Drop for MemoryConsumer {
    fn drop(&mut self) {
        let mut st = self.bus.inner.lock();
        let Some(g) = st.groups.get_mut(&self.group) else {
            return;
        };
        g.members.remove(&self.id);
        let topics = g.topics.clone();
        if g.broadcast && g.members.is_empty() {
            st.groups.remove(&self.group);
        } else {
            st.rebalance(&self.group);
        }
        // Records may now be committed by every remaining group.
        let mut dropped = false;
        for t in &topics {
            let n = st.topics.get(t).map_or(0, |t| t.partitions.len());
            for p in 0..n as i32 {
                dropped |= st.advance(t, p);
            }
        }
        drop(st);
        if dropped {
            self.bus.inner.room.notify_waiters();
        }
    }
}

impl Bus for MemoryBus {
    fn producer(&self) -> Arc<dyn Producer> {
        Arc::new(MemoryProducer { bus: self.clone() })
    }

    fn consumer(&self, spec: ConsumerSpec) -> Result<Arc<dyn Consumer>, BusError> {
        let group = spec.group_id()?;
        let n = self.inner.cfg.partitions;
        let mut st = self.inner.lock();
        let mut topics = Vec::new();
        let mut ends = HashMap::new();
        for name in &spec.topics {
            let t = st.topic(name, n);
            topics.push(t.name.clone());
            for (i, p) in t.partitions.iter().enumerate() {
                ends.insert((t.name.clone(), i as i32), p.end());
            }
        }
        if let Some(g) = st.groups.get(&group) {
            if g.topics != topics {
                return Err(BusError::Config(format!(
                    "group {group} already consumes other topics ({:?})",
                    g.topics
                )));
            }
        } else {
            st.groups.insert(
                group.clone(),
                Group {
                    topics,
                    broadcast: spec.broadcast,
                    committed: ends,
                    members: BTreeMap::new(),
                },
            );
        }
        st.next_member += 1;
        let id = st.next_member;
        let wake = Arc::new(Notify::new());
        if let Some(g) = st.groups.get_mut(&group) {
            g.members.insert(
                id,
                Member {
                    assigned: Vec::new(),
                    positions: HashMap::new(),
                    cursor: 0,
                    tracker: Tracker::default(),
                    paused: false,
                    wake: wake.clone(),
                    generation: 0,
                },
            );
        }
        st.rebalance(&group);
        drop(st);
        Ok(Arc::new(MemoryConsumer {
            bus: self.clone(),
            group,
            id,
            wake,
        }))
    }

    fn ensure_topics<'a>(&'a self, topics: &'a [TopicSpec]) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            let mut st = self.inner.lock();
            for t in topics {
                // The in-process bus partitions every topic alike.
                st.topic(&t.name, self.inner.cfg.partitions);
            }
            Ok(())
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), BusError>> {
        // In the process: reachable while the process runs.
        Box::pin(async { Ok(()) })
    }
}
