//! Per-partition tracking of delivered records, so that offsets are committed only past
//! records whose effect is done — in delivery order, whatever order the acks come in.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::Position;

#[derive(Debug)]
struct Partition {
    epoch: u64,
    /// Delivered offsets in delivery order, with their done flag.
    inflight: VecDeque<(i64, bool)>,
}

/// What an ack or nack asks the implementation to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Nothing (stale position, or the prefix did not move).
    None,
    /// Every record up to and including this offset is done: commit `offset + 1`.
    Commit(i64),
    /// Redeliver the partition from this offset.
    Rewind(i64),
}

/// The tracker of one consumer.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    parts: HashMap<(Arc<str>, i32), Partition>,
    next_epoch: u64,
}

impl Tracker {
    fn fresh_epoch(&mut self) -> u64 {
        self.next_epoch += 1;
        self.next_epoch
    }

    /// A record was handed to the application; returns its position.
    pub(crate) fn delivered(&mut self, topic: &Arc<str>, partition: i32, offset: i64) -> Position {
        let key = (topic.clone(), partition);
        let epoch = match self.parts.get(&key) {
            Some(p) => p.epoch,
            None => {
                let epoch = self.fresh_epoch();
                self.parts.insert(
                    key.clone(),
                    Partition {
                        epoch,
                        inflight: VecDeque::new(),
                    },
                );
                epoch
            }
        };
        if let Some(p) = self.parts.get_mut(&key) {
            p.inflight.push_back((offset, false));
        }
        Position {
            topic: topic.clone(),
            partition,
            offset,
            epoch,
        }
    }

    fn current(&mut self, pos: &Position) -> Option<&mut Partition> {
        self.parts
            .get_mut(&(pos.topic.clone(), pos.partition))
            .filter(|p| p.epoch == pos.epoch)
    }

    /// The record's effect is done.
    pub(crate) fn ack(&mut self, pos: &Position) -> Step {
        let Some(p) = self.current(pos) else {
            return Step::None;
        };
        if let Some(slot) = p.inflight.iter_mut().find(|(o, _)| *o == pos.offset) {
            slot.1 = true;
        }
        let mut last = None;
        while let Some(&(o, true)) = p.inflight.front() {
            last = Some(o);
            p.inflight.pop_front();
        }
        last.map_or(Step::None, Step::Commit)
    }

    /// The record's handler failed: forget the partition's in-flight records (their acks
    /// become stale) and rewind to the first unfinished one.
    pub(crate) fn nack(&mut self, pos: &Position) -> Step {
        let fresh = self.next_epoch + 1;
        let Some(p) = self.current(pos) else {
            return Step::None;
        };
        let from = p
            .inflight
            .iter()
            .find(|(_, done)| !done)
            .map_or(pos.offset, |(o, _)| *o);
        p.inflight.clear();
        p.epoch = fresh;
        self.next_epoch = fresh;
        Step::Rewind(from)
    }

    /// The application lost its in-flight work (its handler died): every partition with an
    /// unfinished record is rewound to the first one, and every in-flight position becomes
    /// stale. Returns the partitions to rewind, with the offset to redeliver from.
    pub(crate) fn rewind_all(&mut self) -> Vec<((Arc<str>, i32), i64)> {
        let mut out = Vec::new();
        let mut epoch = self.next_epoch;
        for (key, p) in &mut self.parts {
            epoch += 1;
            p.epoch = epoch;
            if let Some(&(from, _)) = p.inflight.iter().find(|(_, done)| !done) {
                out.push((key.clone(), from));
            }
            p.inflight.clear();
        }
        self.next_epoch = epoch;
        out
    }

    /// The partition was revoked or reassigned: every in-flight record becomes stale.
    pub(crate) fn reset(&mut self, topic: &str, partition: i32) {
        self.parts
            .retain(|(t, p), _| !(&**t == topic && *p == partition));
    }

    /// Every partition is forgotten.
    pub(crate) fn reset_all(&mut self) {
        self.parts.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_only_the_done_prefix_in_delivery_order() {
        let t: Arc<str> = "t".into();
        let mut tr = Tracker::default();
        let p: Vec<Position> = [5, 6, 8, 9]
            .iter()
            .map(|&o| tr.delivered(&t, 0, o))
            .collect();
        assert_eq!(tr.ack(&p[1]), Step::None, "6 done but 5 is not");
        assert_eq!(tr.ack(&p[0]), Step::Commit(6), "5 and 6 done");
        // Offset 7 is a gap (compaction): 8 follows 6 directly.
        assert_eq!(tr.ack(&p[3]), Step::None);
        assert_eq!(tr.ack(&p[2]), Step::Commit(9));
        // Acking twice changes nothing.
        assert_eq!(tr.ack(&p[2]), Step::None);
    }

    #[test]
    fn nack_rewinds_to_the_first_unfinished_and_makes_old_acks_stale() {
        let t: Arc<str> = "t".into();
        let mut tr = Tracker::default();
        let p: Vec<Position> = (0..5).map(|o| tr.delivered(&t, 1, o)).collect();
        assert_eq!(tr.ack(&p[0]), Step::Commit(0));
        assert_eq!(tr.ack(&p[2]), Step::None);
        // 3 fails while 1 is still running: redeliver from 1, not from 3.
        assert_eq!(tr.nack(&p[3]), Step::Rewind(1));
        assert_eq!(tr.ack(&p[1]), Step::None, "stale: 1 will be redelivered");
        let again = tr.delivered(&t, 1, 1);
        assert_eq!(tr.ack(&again), Step::Commit(1));
    }

    #[test]
    fn rewind_all_goes_back_to_each_first_unfinished_and_makes_old_acks_stale() {
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let mut tr = Tracker::default();
        let pa: Vec<Position> = (0..3).map(|o| tr.delivered(&a, 0, o)).collect();
        let pb: Vec<Position> = (10..12).map(|o| tr.delivered(&b, 1, o)).collect();
        assert_eq!(tr.ack(&pa[0]), Step::Commit(0));
        assert_eq!(tr.ack(&pa[2]), Step::None);
        assert_eq!(tr.ack(&pb[0]), Step::Commit(10));
        assert_eq!(tr.ack(&pb[1]), Step::Commit(11));
        let mut rewound = tr.rewind_all();
        rewound.sort();
        // Partition b is done: nothing to redeliver there.
        assert_eq!(rewound, vec![((a.clone(), 0), 1)]);
        assert_eq!(
            tr.ack(&pa[1]),
            Step::None,
            "acks from before the rewind are stale"
        );
        let again = tr.delivered(&a, 0, 1);
        assert_eq!(tr.ack(&again), Step::Commit(1));
    }

    #[test]
    fn reset_makes_positions_stale() {
        let t: Arc<str> = "t".into();
        let mut tr = Tracker::default();
        let a = tr.delivered(&t, 0, 0);
        let b = tr.delivered(&t, 1, 0);
        tr.reset("t", 0);
        assert_eq!(tr.ack(&a), Step::None);
        assert_eq!(tr.ack(&b), Step::Commit(0));
        let c = tr.delivered(&t, 0, 3);
        assert_ne!(c.epoch, a.epoch);
        tr.reset_all();
        assert_eq!(tr.ack(&c), Step::None);
    }
}
