//! Record order within a task (docs/semantics.md §4), as Kafka Streams' `PartitionGroup` does it.
//!
//! A task reads partition p of two topics. It takes the buffered head with the lowest record
//! timestamp (ties: the activation first). While one partition has nothing buffered and is not
//! caught up to its high watermark, it waits for it, at most `max_task_idle_ms`, so catching up
//! after a restart never runs one topic ahead of the other.

use std::collections::VecDeque;

use crate::decode::RawRecord;
use crate::side::{PerSide, Side};
use crate::time::Millis;

/// One record held by a task between its read and its processing, owned.
#[derive(Debug)]
pub struct Buffered {
    pub offset: i64,
    pub timestamp_ms: Option<Millis>,
    pub key: Option<Box<[u8]>>,
    pub value: Option<Box<[u8]>>,
}

impl Buffered {
    pub fn as_raw(&self, side: Side, partition: i32) -> RawRecord<'_> {
        RawRecord {
            side,
            partition,
            offset: self.offset,
            timestamp_ms: self.timestamp_ms,
            key: self.key.as_deref(),
            value: self.value.as_deref(),
        }
    }
}

/// What the task should do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next<T> {
    Record(Side, T),
    /// One partition is empty but not caught up, and `max_task_idle_ms` has not passed.
    Wait,
    /// Nothing buffered.
    Empty,
}

#[derive(Debug)]
pub struct PartitionGroup<T> {
    queues: PerSide<VecDeque<(Millis, T)>>,
    max_task_idle_ms: Millis,
    /// When the task began waiting for an empty partition (the caller's clock).
    waiting_since: Option<Millis>,
    /// Times the wait ran out and the task went on without the empty partition.
    pub idle_exceeded: u64,
    /// Live only: while the other partition is empty and caught up, records with a timestamp
    /// after this are held (the live caller sets the wall clock minus `lateness_ms`), so a
    /// record that reached the broker within `lateness_ms` of its timestamp is merged in order
    /// even when its fetch comes after the other partition's. `None` (bounded inputs): no hold.
    pub hold_after: Option<Millis>,
}

impl<T> PartitionGroup<T> {
    pub fn new(max_task_idle_ms: Millis) -> Self {
        PartitionGroup {
            queues: PerSide::default(),
            max_task_idle_ms,
            waiting_since: None,
            idle_exceeded: 0,
            hold_after: None,
        }
    }

    /// Buffers a record; `timestamp_ms` is its record timestamp (records without one sort first).
    pub fn push(&mut self, side: Side, timestamp_ms: Option<Millis>, item: T) {
        self.queues[side].push_back((timestamp_ms.unwrap_or(Millis::MIN), item));
    }

    /// Puts a record just taken by [`Self::next`] back at the head of its partition, to be
    /// taken again first (its run had to be loaded before it could be processed).
    pub fn push_front(&mut self, side: Side, timestamp_ms: Option<Millis>, item: T) {
        self.queues[side].push_front((timestamp_ms.unwrap_or(Millis::MIN), item));
    }

    /// Records buffered for `side`.
    pub fn len(&self, side: Side) -> usize {
        self.queues[side].len()
    }

    /// Whether nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.queues.values().all(VecDeque::is_empty)
    }

    /// Whether every buffered record's timestamp is after `t_ms` (true when nothing is
    /// buffered). Live, stream time may follow the wall clock to `t_ms` while records are held
    /// only when this holds: none of them can then carry a deadline-passing time the
    /// punctuation would skip. Scans whole queues (timestamps within a partition can go
    /// backwards); they hold at most `lateness_ms` of records when the task is caught up.
    pub fn all_after(&self, t_ms: Millis) -> bool {
        self.queues.values().flatten().all(|(ts, _)| *ts > t_ms)
    }

    /// The next record to process. `caught_up[s]` says partition s has been read to its high
    /// watermark (always true for a bounded input); `now_ms` is the caller's clock, used only
    /// to bound the wait.
    pub fn next(&mut self, now_ms: Millis, caught_up: PerSide<bool>) -> Next<T> {
        self.next_with(now_ms, |side| caught_up[side])
    }

    /// [`Self::next`], asking `caught_up(side)` only when it matters: when that side has
    /// nothing buffered.
    pub fn next_with(
        &mut self,
        now_ms: Millis,
        mut caught_up: impl FnMut(Side) -> bool,
    ) -> Next<T> {
        let heads = self.queues.map_ref(|q| q.front().map(|h| h.0));
        let pick = match (heads.activation, heads.ack) {
            (Some(a), Some(b)) => {
                self.waiting_since = None;
                if a <= b {
                    Side::Activation
                } else {
                    Side::Ack
                }
            }
            (None, None) => return Next::Empty,
            (Some(_), None) | (None, Some(_)) => {
                let full = if heads.activation.is_some() {
                    Side::Activation
                } else {
                    Side::Ack
                };
                let empty = full.other();
                if caught_up(empty) {
                    self.waiting_since = None;
                    // At the head of both partitions, a record of the other one with a lower
                    // timestamp may still be on its way: hold records newer than `hold_after`.
                    if self
                        .hold_after
                        .is_some_and(|h| heads[full].is_some_and(|ts| ts > h))
                    {
                        return Next::Wait;
                    }
                } else {
                    let since = *self.waiting_since.get_or_insert(now_ms);
                    // Millis::MAX marks a wait that already ran out: processing goes on,
                    // counted once, until both partitions have data again.
                    if since != Millis::MAX {
                        if now_ms.saturating_sub(since) < self.max_task_idle_ms {
                            return Next::Wait;
                        }
                        self.idle_exceeded += 1;
                        self.waiting_since = Some(Millis::MAX);
                    }
                }
                full
            }
        };
        let (_, item) = self.queues[pick].pop_front().expect("head exists");
        Next::Record(pick, item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(
        group: &mut PartitionGroup<&'static str>,
        now: Millis,
        caught_up: PerSide<bool>,
    ) -> Vec<&'static str> {
        let mut got = vec![];
        while let Next::Record(_, item) = group.next(now, caught_up) {
            got.push(item);
        }
        got
    }

    fn check(
        activations: &[(Millis, &'static str)],
        acks: &[(Millis, &'static str)],
        expected: &[&str],
    ) {
        let mut group = PartitionGroup::new(1000);
        for &(ts, name) in activations {
            group.push(Side::Activation, Some(ts), name);
        }
        for &(ts, name) in acks {
            group.push(Side::Ack, Some(ts), name);
        }
        assert_eq!(drain(&mut group, 0, PerSide::both(true)), expected);
    }

    #[test]
    fn merges_by_timestamp_with_activation_first_on_ties() {
        check(
            &[(1, "a1"), (5, "a5")],
            &[(2, "k2"), (5, "k5")],
            &["a1", "k2", "a5", "k5"],
        );
        check(
            &[(10, "a10")],
            &[(1, "k1"), (2, "k2")],
            &["k1", "k2", "a10"],
        );
        check(&[], &[(3, "k3")], &["k3"]);
        // Within a partition, offset order stands even when timestamps go backwards.
        check(&[(9, "a9"), (1, "a1")], &[(5, "k5")], &["k5", "a9", "a1"]);
    }

    #[test]
    fn waits_for_a_lagging_partition_at_most_max_task_idle() {
        let mut group = PartitionGroup::new(1000);
        group.push(Side::Activation, Some(1), "a1");
        assert_eq!(group.next(100, PerSide::new(true, false)), Next::Wait);
        assert_eq!(group.next(1099, PerSide::new(true, false)), Next::Wait);
        assert_eq!(
            group.next(1100, PerSide::new(true, false)),
            Next::Record(Side::Activation, "a1")
        );
        assert_eq!(group.idle_exceeded, 1);
        group.push(Side::Activation, Some(2), "a2");
        assert_eq!(
            group.next(1200, PerSide::new(true, false)),
            Next::Record(Side::Activation, "a2")
        );
        assert_eq!(group.idle_exceeded, 1, "one wait, counted once");
        assert_eq!(group.next(1300, PerSide::new(true, false)), Next::Empty);
    }

    #[test]
    fn live_holds_records_newer_than_the_hold_while_the_other_side_is_empty() {
        let mut group = PartitionGroup::new(1000);
        group.hold_after = Some(100);
        group.push(Side::Activation, Some(100), "a100");
        group.push(Side::Activation, Some(101), "a101");
        assert_eq!(
            group.next(0, PerSide::both(true)),
            Next::Record(Side::Activation, "a100")
        );
        assert_eq!(
            group.next(0, PerSide::both(true)),
            Next::Wait,
            "a101 is newer than the hold"
        );
        group.push(Side::Ack, Some(99), "k99");
        assert_eq!(
            group.next(0, PerSide::both(true)),
            Next::Record(Side::Ack, "k99")
        );
        assert_eq!(group.next(0, PerSide::both(true)), Next::Wait);
        group.hold_after = Some(101);
        assert_eq!(
            group.next(0, PerSide::both(true)),
            Next::Record(Side::Activation, "a101")
        );
    }

    #[test]
    fn all_after_looks_at_every_buffered_record_not_only_the_heads() {
        let mut group = PartitionGroup::new(1000);
        assert!(group.all_after(Millis::MAX), "empty");
        group.push(Side::Activation, Some(200), "a200");
        group.push(Side::Ack, Some(150), "k150");
        assert!(group.all_after(149));
        assert!(!group.all_after(150), "a record at t is not after t");
        group.push(
            Side::Activation,
            Some(120),
            "a120 (timestamps went backwards)",
        );
        assert!(!group.all_after(149));
        group.push(Side::Ack, None, "no timestamp");
        assert!(
            !group.all_after(Millis::MIN + 1),
            "no timestamp sorts first"
        );
    }

    #[test]
    fn does_not_wait_for_a_caught_up_partition() {
        let mut group = PartitionGroup::new(1000);
        group.push(Side::Ack, Some(7), "k7");
        assert_eq!(
            group.next(0, PerSide::both(true)),
            Next::Record(Side::Ack, "k7")
        );
        assert_eq!(group.idle_exceeded, 0);
    }
}
