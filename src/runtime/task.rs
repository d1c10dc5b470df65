//! A `StreamTask`: partition p of both input topics, their `PartitionGroup`, the engine and the
//! task's state store. Lifecycle (Kafka Streams' task states, reduced to what ackwatch needs):
//!
//! ```text
//!   assigned ──(partitions paused)──> restoring ──(store caught up with the changelog,
//!                                                  engine loaded, partitions resumed)──> running
//!   running ──(commit)──> running
//!   running ──(revoked or shutdown: commit, then close)──> closed
//! ```
//!
//! A task never processes a record before its store is restored, and never commits an offset
//! past a record it has not processed (buffered records are not committed).

use std::collections::BTreeMap;

use ackwatch_state::{Record, TaskStore};
use ackwatch_topology::partition_group::{Buffered, PartitionGroup};
use ackwatch_topology::{Millis, Task};

/// Records a task buffers per input partition before that partition is paused (the buffer
/// fills only while the other partition lags, SPEC §4). Cost: up to this many records (at most
/// a record value each, `RECORD_VALUE_BYTES_MAX` for tracked ones) in memory per partition.
pub const TASK_BUFFERED_RECORDS_MAX: usize = 10_000;

pub struct StreamTask {
    pub partition: i32,
    pub group: PartitionGroup<Buffered>,
    pub engine: Task,
    pub store: TaskStore,
    /// Offset after the last record fetched, per input side (caught-up check).
    pub fetched_next: [i64; 2],
    /// Offset after the last record processed, per side: what the next commit writes.
    pub processed_next: [i64; 2],
    /// What the last commit wrote, per side.
    pub committed_next: [i64; 2],
    /// Records buffered per side (the group's queues), for the pause limit.
    pub buffered: [usize; 2],
    pub paused: [bool; 2],
    /// Encoded changes produced to the changelog in the running commit, for the store.
    pub pending_store: Vec<Record>,
    /// What the engine's cumulative counters said at the last metrics refresh.
    pub seen_limit_cut: BTreeMap<&'static str, u64>,
    pub seen_idle_exceeded: u64,
}

impl StreamTask {
    pub fn new(
        partition: i32,
        engine: Task,
        store: TaskStore,
        start: [i64; 2],
        max_task_idle_ms: Millis,
    ) -> Self {
        StreamTask {
            partition,
            group: PartitionGroup::new(max_task_idle_ms),
            engine,
            store,
            fetched_next: start,
            processed_next: start,
            committed_next: start,
            buffered: [0, 0],
            paused: [false, false],
            pending_store: Vec::new(),
            seen_limit_cut: BTreeMap::new(),
            seen_idle_exceeded: 0,
        }
    }
}
