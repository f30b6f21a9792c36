//! The bus contract, written once and run against every implementation
//! (`contract_memory.rs`, `contract_kafka.rs`).
//!
//! Each test uses its own topic and group names, so the suite can run against a shared
//! broker. Consumers are created (and, for Kafka, assigned) before anything is produced.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use fluxgate_bus::{Bus, Consumer, ConsumerSpec, OutRecord, Record, TopicSpec};
use fluxgate_testkit::unique_name;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How long any single wait may take (Kafka group joins take seconds).
pub const PATIENCE: Duration = Duration::from_secs(60);

pub struct Harness {
    pub bus: Arc<dyn Bus>,
}

/// A consumer whose `recv` loop runs in a task (as a service's would), feeding a channel.
pub struct Collector {
    pub consumer: Arc<dyn Consumer>,
    rx: mpsc::Receiver<Record>,
    task: JoinHandle<()>,
}

impl Collector {
    pub fn new(consumer: Arc<dyn Consumer>) -> Self {
        let (tx, rx) = mpsc::channel(1);
        let c = consumer.clone();
        let task = tokio::spawn(async move {
            loop {
                match c.recv().await {
                    Ok(r) => {
                        if tx.send(r).await.is_err() {
                            return;
                        }
                    }
                    Err(fluxgate_bus::ConsumeError::Closed) => return,
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        Collector { consumer, rx, task }
    }

    /// The next record, or `None` if none comes within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Record> {
        tokio::time::timeout(wait, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    pub async fn next(&mut self) -> Record {
        self.next_within(PATIENCE)
            .await
            .expect("a record within the patience")
    }

    pub async fn wait_assigned(&self) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.consumer.assigned() == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "consumer never got partitions"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the consumer the way a crash does: its loop ends, its client goes away.
    pub fn kill(self) {
        self.task.abort();
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn seq_of(r: &Record) -> u32 {
    std::str::from_utf8(&r.payload).unwrap().parse().unwrap()
}

impl Harness {
    pub async fn topic(&self, partitions: i32) -> String {
        let name = unique_name("fgtest");
        self.bus
            .ensure_topics(&[TopicSpec::new(&name, partitions)])
            .await
            .expect("topic created");
        name
    }

    pub fn member(&self, group: &str, topic: &str) -> Collector {
        Collector::new(
            self.bus
                .consumer(ConsumerSpec::group(group, &[topic]))
                .unwrap(),
        )
    }

    pub fn broadcast(&self, prefix: &str, topic: &str) -> Collector {
        Collector::new(
            self.bus
                .consumer(ConsumerSpec::broadcast(prefix, &[topic]))
                .unwrap(),
        )
    }

    /// Produces `(key, seq)` records in order, each `send` awaited before the next (the
    /// ordering contract), then waits for every ack.
    pub async fn produce(
        &self,
        topic: &str,
        records: &[(String, u32)],
    ) -> Vec<fluxgate_bus::Delivered> {
        let p = self.bus.producer();
        let mut acks = Vec::new();
        for (key, seq) in records {
            let rec = OutRecord::new(
                topic,
                key.clone().into_bytes(),
                seq.to_string().into_bytes(),
            );
            acks.push(p.send(rec).await.expect("send"));
        }
        let mut out = Vec::new();
        for a in acks {
            out.push(
                tokio::time::timeout(PATIENCE, a)
                    .await
                    .expect("ack in time")
                    .expect("ack ok"),
            );
        }
        out
    }

    /// Starts the acks of `records` without waiting for them (for implementations whose
    /// acks wait for consumers).
    pub async fn produce_background(
        &self,
        topic: &str,
        records: Vec<(String, u32)>,
    ) -> JoinHandle<()> {
        let p = self.bus.producer();
        let mut acks = Vec::new();
        for (key, seq) in records {
            let rec = OutRecord::new(topic, key.into_bytes(), seq.to_string().into_bytes());
            // Sent without waiting: records batch as they do in production, so consumer
            // fetches (after a crash, a rewind) start inside batches.
            acks.push(p.send(rec).await.expect("send"));
        }
        tokio::spawn(async move {
            for a in acks {
                a.await.expect("ack ok");
            }
        })
    }
}

fn keyed(keys: usize, per_key: u32) -> Vec<(String, u32)> {
    // Interleaved: k0/0, k1/0, ..., k0/1, ...; seq numbers are global and unique.
    let mut out = Vec::new();
    for i in 0..per_key {
        for k in 0..keys {
            out.push((format!("key-{k}"), i * keys as u32 + k as u32));
        }
    }
    out
}

/// Records with one key arrive in the order produced, and each ack names the position
/// the record is read back at.
pub async fn ordering_per_key(h: &Harness) {
    let topic = h.topic(3).await;
    let mut c = h.member(&unique_name("g"), &topic);
    c.wait_assigned().await;
    let records = keyed(3, 30);
    let bg = h.produce_background(&topic, records.clone()).await;
    let mut by_key: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    let mut positions = Vec::new();
    for _ in 0..records.len() {
        let r = c.next().await;
        c.consumer.ack(&r.position);
        by_key
            .entry(String::from_utf8(r.key.to_vec()).unwrap())
            .or_default()
            .push(seq_of(&r));
        positions.push((seq_of(&r), r.position.partition, r.position.offset));
    }
    bg.await.unwrap();
    for (key, seqs) in &by_key {
        let want: Vec<u32> = records
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, s)| *s)
            .collect();
        assert_eq!(seqs, &want, "order of {key}");
    }
    assert!(
        c.next_within(Duration::from_millis(300)).await.is_none(),
        "nothing extra"
    );
    // Each key stayed on one partition.
    let mut part_of_key: BTreeMap<u32, BTreeSet<i32>> = BTreeMap::new();
    for (seq, part, _) in &positions {
        part_of_key.entry(seq % 3).or_default().insert(*part);
    }
    assert!(
        part_of_key.values().all(|p| p.len() == 1),
        "{part_of_key:?}"
    );
}

/// Acks report the real position: a record is read back at the partition and offset its
/// ack named.
pub async fn acks_name_the_stored_position(h: &Harness) {
    let topic = h.topic(2).await;
    let mut c = h.member(&unique_name("g"), &topic);
    c.wait_assigned().await;
    let p = h.bus.producer();
    let mut acks = Vec::new();
    for i in 0..10u32 {
        let ack = p
            .send(OutRecord::new(
                &topic,
                format!("k{i}").into_bytes(),
                i.to_string().into_bytes(),
            ))
            .await
            .unwrap();
        acks.push((i, ack));
    }
    let mut seen = BTreeMap::new();
    for _ in 0..10 {
        let r = c.next().await;
        seen.insert(seq_of(&r), (r.position.partition, r.position.offset));
        c.consumer.ack(&r.position);
    }
    for (i, ack) in acks {
        let d = tokio::time::timeout(PATIENCE, ack).await.unwrap().unwrap();
        assert_eq!(seen[&i], (d.partition, d.offset), "record {i}");
    }
}

/// A consumer that dies with unacked records: the group's next member gets them again,
/// starting at the first unfinished one; records acked before it are not redelivered.
pub async fn at_least_once_across_a_crash(h: &Harness) {
    let topic = h.topic(1).await;
    let group = unique_name("g");
    let mut c1 = h.member(&group, &topic);
    c1.wait_assigned().await;
    let records: Vec<(String, u32)> = (0..10).map(|i| ("k".to_string(), i)).collect();
    let bg = h.produce_background(&topic, records).await;
    let mut got = Vec::new();
    for _ in 0..10 {
        got.push(c1.next().await);
    }
    assert_eq!(
        got.iter().map(seq_of).collect::<Vec<_>>(),
        (0..10).collect::<Vec<_>>()
    );
    // 0, 1, 2 finish; 3 never does; 4 and 6 finish after it; the rest never finish.
    for i in [0, 1, 2, 4, 6] {
        c1.consumer.ack(&got[i].position);
    }
    c1.consumer.commit().await.unwrap();
    c1.kill();

    let mut c2 = h.member(&group, &topic);
    let again: Vec<u32> = {
        let mut v = Vec::new();
        for _ in 0..7 {
            let r = c2.next().await;
            c2.consumer.ack(&r.position);
            v.push(seq_of(&r));
        }
        v
    };
    assert_eq!(
        again,
        vec![3, 4, 5, 6, 7, 8, 9],
        "redelivered from the first unfinished record"
    );
    assert!(
        c2.next_within(Duration::from_millis(500)).await.is_none(),
        "0..2 are not redelivered"
    );
    tokio::time::timeout(PATIENCE, bg).await.unwrap().unwrap();
}

/// A handler failure redelivers the partition from its first unfinished record, without
/// the consumer restarting.
pub async fn nack_redelivers(h: &Harness) {
    let topic = h.topic(1).await;
    let mut c = h.member(&unique_name("g"), &topic);
    c.wait_assigned().await;
    let records: Vec<(String, u32)> = (0..5).map(|i| ("k".to_string(), i)).collect();
    let bg = h.produce_background(&topic, records).await;
    let r0 = c.next().await;
    let _r1 = c.next().await;
    let r2 = c.next().await;
    c.consumer.ack(&r0.position);
    // 2 fails while 1 is still unfinished: everything from 1 comes again.
    c.consumer.nack(&r2.position);
    let mut after = Vec::new();
    loop {
        let r = c.next().await;
        let s = seq_of(&r);
        if s == 1 || !after.is_empty() {
            after.push(s);
            c.consumer.ack(&r.position);
        }
        if s == 4 && !after.is_empty() {
            break;
        }
    }
    assert_eq!(after, vec![1, 2, 3, 4]);
    tokio::time::timeout(PATIENCE, bg).await.unwrap().unwrap();
}

/// A rewind (the handler died holding records) redelivers every unfinished record, and
/// the dead handler's late acks change nothing.
pub async fn rewind_redelivers_everything_unfinished(h: &Harness) {
    let topic = h.topic(1).await;
    let mut c = h.member(&unique_name("g"), &topic);
    c.wait_assigned().await;
    let records: Vec<(String, u32)> = (0..4).map(|i| ("k".to_string(), i)).collect();
    let bg = h.produce_background(&topic, records).await;
    let r0 = c.next().await;
    let r1 = c.next().await;
    let r2 = c.next().await;
    c.consumer.ack(&r0.position);
    c.consumer.ack(&r2.position);
    assert_eq!(
        c.consumer.rewind(),
        1,
        "one partition had unfinished records"
    );
    // The old handler's ack of 1 arrives late: stale.
    c.consumer.ack(&r1.position);
    // Records the collector fetched before the rewind come first; skip them.
    let mut after = Vec::new();
    while after.last() != Some(&3) {
        let r = c.next().await;
        let s = seq_of(&r);
        if s == 1 || !after.is_empty() {
            after.push(s);
            c.consumer.ack(&r.position);
        }
    }
    assert_eq!(after, vec![1, 2, 3], "from the first unfinished record on");
    tokio::time::timeout(PATIENCE, bg).await.unwrap().unwrap();
}

/// The lag counts the records past the acked position: produced, not finished.
pub async fn lag_counts_unfinished_records(h: &Harness) {
    let topic = h.topic(1).await;
    let mut c = h.member(&unique_name("g"), &topic);
    c.wait_assigned().await;
    let records: Vec<(String, u32)> = (0..5).map(|i| ("k".to_string(), i)).collect();
    let bg = h.produce_background(&topic, records).await;
    // All five delivered (the consumer keeps polling), two finished.
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(c.next().await);
    }
    c.consumer.ack(&got[0].position);
    c.consumer.ack(&got[1].position);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while c.consumer.lag() != 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "lag {} instead of 3",
            c.consumer.lag()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for r in &got[2..] {
        c.consumer.ack(&r.position);
    }
    tokio::time::timeout(PATIENCE, bg).await.unwrap().unwrap();
}

/// Records waiting behind a paused consumer (the writer while its store is down, a role
/// under backpressure) are lag too, though the consumer has not fetched them.
pub async fn lag_counts_records_behind_a_paused_consumer(h: &Harness) {
    let topic = h.topic(1).await;
    let mut c = h.member(&unique_name("g"), &topic);
    c.wait_assigned().await;
    let first = h
        .produce_background(&topic, vec![("k".to_string(), 0)])
        .await;
    let r = c.next().await;
    c.consumer.ack(&r.position);
    tokio::time::timeout(PATIENCE, first)
        .await
        .unwrap()
        .unwrap();
    c.consumer.pause();
    let records: Vec<(String, u32)> = (1..=6).map(|i| ("k".to_string(), i)).collect();
    let bg = h.produce_background(&topic, records).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while c.consumer.lag() != 6 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "lag {} instead of 6 while paused",
            c.consumer.lag()
        );
        // Paused consumers keep polling (membership); nothing is delivered.
        assert!(c.next_within(Duration::from_millis(100)).await.is_none());
    }
    c.consumer.resume();
    for _ in 0..6 {
        let r = c.next().await;
        c.consumer.ack(&r.position);
    }
    tokio::time::timeout(PATIENCE, bg).await.unwrap().unwrap();
}

/// Two members of one group split the partitions; together they see every record.
pub async fn rebalance_two_members(h: &Harness) {
    let topic = h.topic(4).await;
    let group = unique_name("g");
    let mut a = h.member(&group, &topic);
    a.wait_assigned().await;
    let mut b = h.member(&group, &topic);
    // Both must hold partitions (the group rebalanced) before producing.
    both_hold_partitions(&mut a, &mut b, 4).await;
    let records = keyed(20, 10);
    let bg = h.produce_background(&topic, records.clone()).await;
    let mut seen_a = BTreeSet::new();
    let mut seen_b = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while seen_a.union(&seen_b).count() < records.len() {
        assert!(tokio::time::Instant::now() < deadline, "records missing");
        tokio::select! {
            Some(r) = a.rx.recv() => { a.consumer.ack(&r.position); seen_a.insert(seq_of(&r)); }
            Some(r) = b.rx.recv() => { b.consumer.ack(&r.position); seen_b.insert(seq_of(&r)); }
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    assert!(
        !seen_a.is_empty() && !seen_b.is_empty(),
        "both members worked: {} / {}",
        seen_a.len(),
        seen_b.len()
    );
    tokio::time::timeout(PATIENCE, bg).await.unwrap().unwrap();
}

/// Waits until `a` and `b` share the topic's `partitions` between them. Kafka only
/// rebalances while both poll: they drain (nothing is produced yet).
async fn both_hold_partitions(a: &mut Collector, b: &mut Collector, partitions: usize) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (na, nb) = (a.consumer.assigned(), b.consumer.assigned());
        if na > 0 && nb > 0 && na + nb == partitions {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no rebalance: {na} + {nb}"
        );
        let _ = a.next_within(Duration::from_millis(20)).await;
        let _ = b.next_within(Duration::from_millis(20)).await;
    }
}

/// `holds` names, for every key, the member its records go to (the producers'
/// partitioner over the topic's partitions), and `generation` changes when a member's
/// assignment does: what per-key state outside the bus (timers) relies on.
pub async fn holds_names_the_member_a_key_goes_to(h: &Harness) {
    let topic = h.topic(4).await;
    let group = unique_name("g");
    let mut a = h.member(&group, &topic);
    a.wait_assigned().await;
    let alone = a.consumer.generation();
    assert!(alone > 0, "an assignment counts as a generation");
    let mut b = h.member(&group, &topic);
    both_hold_partitions(&mut a, &mut b, 4).await;
    assert_ne!(
        a.consumer.generation(),
        alone,
        "the rebalance changed a's generation"
    );
    let records = keyed(20, 5);
    let bg = h.produce_background(&topic, records.clone()).await;
    let (mut got_a, mut got_b) = (0, 0);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while got_a + got_b < records.len() {
        assert!(tokio::time::Instant::now() < deadline, "records missing");
        let (r, mine, other) = tokio::select! {
            Some(r) = a.rx.recv() => { got_a += 1; (r, &a.consumer, &b.consumer) }
            Some(r) = b.rx.recv() => { got_b += 1; (r, &b.consumer, &a.consumer) }
            _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
        };
        let key = String::from_utf8_lossy(&r.key).into_owned();
        assert!(mine.holds(&topic, &r.key), "{key}: its receiver holds it");
        assert!(
            !other.holds(&topic, &r.key),
            "{key}: the other member does not"
        );
        mine.ack(&r.position);
    }
    assert!(
        got_a > 0 && got_b > 0,
        "both members got keys: {got_a} / {got_b}"
    );
    assert!(
        !a.consumer.holds("another-topic", b"k"),
        "a topic not consumed is not held"
    );
    tokio::time::timeout(PATIENCE, bg).await.unwrap().unwrap();
}

/// A rebalance while a member holds records it has not finished: records of the
/// partitions that move are redelivered to the new owner (the old owner's late acks for
/// them are ignored), and nothing is lost.
pub async fn rebalance_with_records_in_flight(h: &Harness) {
    let topic = h.topic(4).await;
    let group = unique_name("g");
    let mut a = h.member(&group, &topic);
    a.wait_assigned().await;
    let records = keyed(20, 10);
    let bg = h.produce_background(&topic, records.clone()).await;
    // `a` takes 40 records (and later more), at least one of every partition, so whichever
    // partitions move, a record `a` holds moves with them; it finishes none of them yet.
    let mut held: Vec<Record> = Vec::new();
    let partitions = |held: &[Record]| {
        held.iter()
            .map(|r| r.position.partition)
            .collect::<BTreeSet<_>>()
            .len()
    };
    while held.len() < 40 || partitions(&held) < 4 {
        held.push(a.next().await);
    }
    let mut b = h.member(&group, &topic);
    let mut seen = BTreeSet::new();
    let mut b_got: BTreeSet<(i32, u32)> = BTreeSet::new();
    let mut b_parts = BTreeSet::new();
    let mut released = false;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let moved = |held: &[Record], b_parts: &BTreeSet<i32>| {
        held.iter()
            .filter(|r| b_parts.contains(&r.position.partition))
            .map(|r| (r.position.partition, seq_of(r)))
            .collect::<Vec<_>>()
    };
    loop {
        let redelivered = moved(&held, &b_parts).iter().all(|k| b_got.contains(k));
        if seen.len() == records.len() && released && redelivered && bg.is_finished() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "seen {} of {}; held records of moved partitions redelivered: {redelivered}",
            seen.len(),
            records.len()
        );
        // Once `b` has records of its partitions the group has rebalanced (and `b` started
        // where the group had committed, before what `a` holds): `a` finishes what it held,
        // late. Until then it finishes nothing (but keeps polling, so the group can
        // rebalance at all).
        if !released && !b_parts.is_empty() {
            for r in &held {
                a.consumer.ack(&r.position);
                seen.insert(seq_of(r));
            }
            released = true;
        }
        tokio::select! {
            Some(r) = a.rx.recv() => {
                if released {
                    a.consumer.ack(&r.position);
                    seen.insert(seq_of(&r));
                } else {
                    held.push(r);
                }
            }
            Some(r) = b.rx.recv() => {
                b.consumer.ack(&r.position);
                seen.insert(seq_of(&r));
                b_parts.insert(r.position.partition);
                b_got.insert((r.position.partition, seq_of(&r)));
            }
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    assert!(
        !moved(&held, &b_parts).is_empty(),
        "no held record was in a partition that moved: the test proved nothing"
    );
    tokio::time::timeout(PATIENCE, bg).await.unwrap().unwrap();
}

/// Every broadcast consumer gets every record produced once it counts its partitions as
/// assigned: its start position is settled by then (a front is ready from that moment on).
pub async fn broadcast_reaches_every_instance(h: &Harness) {
    let topic = h.topic(2).await;
    let prefix = unique_name("front");
    let mut x = h.broadcast(&prefix, &topic);
    let mut y = h.broadcast(&prefix, &topic);
    x.wait_assigned().await;
    y.wait_assigned().await;
    let records = keyed(4, 5);
    let bg = h.produce_background(&topic, records.clone()).await;
    for c in [&mut x, &mut y] {
        let mut seen = BTreeSet::new();
        while seen.len() < records.len() {
            let r = c.next().await;
            c.consumer.ack(&r.position);
            seen.insert(seq_of(&r));
        }
    }
    tokio::time::timeout(PATIENCE, bg).await.unwrap().unwrap();
}

/// A broadcast consumer of several topics gets a record produced to each of them once it
/// holds every topic (`holds_topic`): what a front waits for before it is ready.
pub async fn broadcast_holds_every_topic_it_consumes(h: &Harness) {
    let topics = [h.topic(2).await, h.topic(1).await, h.topic(3).await];
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let mut c = Collector::new(
        h.bus
            .consumer(ConsumerSpec::broadcast(unique_name("front"), &names))
            .unwrap(),
    );
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !names.iter().all(|t| c.consumer.holds_topic(t)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "some topic never held: {:?}",
            names
                .iter()
                .map(|t| (*t, c.consumer.holds_topic(t)))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !c.consumer.holds_topic("another-topic"),
        "a topic not consumed is not held"
    );
    let mut acks = Vec::new();
    for (i, t) in names.iter().enumerate() {
        acks.push(
            h.produce_background(t, vec![(format!("k{i}"), i as u32)])
                .await,
        );
    }
    let mut seen = BTreeSet::new();
    while seen.len() < names.len() {
        let r = c.next().await;
        c.consumer.ack(&r.position);
        seen.insert((r.position.topic.to_string(), seq_of(&r)));
    }
    let expected: BTreeSet<_> = names
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), i as u32))
        .collect();
    assert_eq!(seen, expected);
    for a in acks {
        tokio::time::timeout(PATIENCE, a).await.unwrap().unwrap();
    }
}

/// A paused consumer gets nothing; resumed, it gets everything.
pub async fn pause_and_resume(h: &Harness) {
    let topic = h.topic(2).await;
    let mut c = h.member(&unique_name("g"), &topic);
    c.wait_assigned().await;
    c.consumer.pause();
    let records = keyed(2, 5);
    let bg = h.produce_background(&topic, records.clone()).await;
    assert!(
        c.next_within(Duration::from_secs(1)).await.is_none(),
        "a paused consumer delivers nothing"
    );
    c.consumer.resume();
    let mut seen = BTreeSet::new();
    while seen.len() < records.len() {
        let r = c.next().await;
        c.consumer.ack(&r.position);
        seen.insert(seq_of(&r));
    }
    tokio::time::timeout(PATIENCE, bg).await.unwrap().unwrap();
}
