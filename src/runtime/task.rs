//! A task of the live processor: partition p of both input topics, assigned to one stream
//! thread. Its states are Kafka Streams' task states, those ackwatch needs:
//!
//! ```text
//!   Created ──restore──> Restoring ──store loaded into the engine, partitions resumed
//!      │                     │          and seeked to their start offsets──> Running
//!      │                     │                                                  │
//!      └─────────────────────┴──────────── revoked, or shutdown ────────────────┴──> Closed
//! ```
//!
//! - `Created`: assigned; its partitions were paused by the assignment callback.
//! - `Restoring`: its store is being brought up to the changelog's last complete commit.
//! - `Running`: it processes records; a commit leaves it running.
//! - `Closed`: after its last commit (revocation or shutdown); buffered records are dropped and
//!   read again by the partition's next owner from the committed offsets.
//!
//! A task never processes a record before its store is restored, and never commits an offset
//! past a record it has not processed (buffered records are not committed).

use std::collections::BTreeMap;

use ackwatch_state::{Record, TaskStore};
use ackwatch_topology::stream_task::StreamTask;
use ackwatch_topology::{PerSide, RunKey};

use super::caught_up::Confirmations;
use super::stalls::Progress;

/// Records a task buffers per input partition before that partition is paused (the buffer
/// fills only while the other partition lags, semantics §4). Cost: up to this many records (at most
/// a record value each, `RECORD_VALUE_BYTES_MAX` for tracked ones) in memory per partition.
pub const TASK_BUFFERED_RECORDS_MAX: usize = 10_000;

/// Where a task is in its lifecycle (see the module docs for the transitions).
pub enum TaskState {
    Created,
    Restoring,
    Running(Box<LiveTask>),
    Closed,
}

impl TaskState {
    pub fn name(&self) -> &'static str {
        match self {
            TaskState::Created => "CREATED",
            TaskState::Restoring => "RESTORING",
            TaskState::Running(_) => "RUNNING",
            TaskState::Closed => "CLOSED",
        }
    }

    /// Whether the lifecycle allows going from `self` to `next`.
    fn allows(&self, next: &TaskState) -> bool {
        use TaskState::*;
        matches!(
            (self, next),
            (Created, Restoring)
                | (Restoring, Running(_))
                | (Created | Restoring | Running(_), Closed)
        )
    }
}

/// An assigned task and its state.
pub struct AssignedTask {
    pub partition: i32,
    state: TaskState,
}

impl AssignedTask {
    pub fn new(partition: i32) -> Self {
        AssignedTask {
            partition,
            state: TaskState::Created,
        }
    }

    pub fn state(&self) -> &TaskState {
        &self.state
    }

    /// Moves the task to `next`; a transition the lifecycle does not allow is a bug.
    pub fn transition(&mut self, next: TaskState) {
        assert!(
            self.state.allows(&next),
            "task {}: invalid transition {} -> {}",
            self.partition,
            self.state.name(),
            next.name()
        );
        tracing::debug!(
            partition = self.partition,
            from = self.state.name(),
            to = next.name(),
            "task state"
        );
        self.state = next;
    }

    pub fn running(&self) -> Option<&LiveTask> {
        match &self.state {
            TaskState::Running(task) => Some(task),
            _ => None,
        }
    }

    pub fn running_mut(&mut self) -> Option<&mut LiveTask> {
        match &mut self.state {
            TaskState::Running(task) => Some(task),
            _ => None,
        }
    }
}

/// Input offsets of a running task, per side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offsets {
    /// After the last record fetched (the caught-up check).
    pub fetched_next: PerSide<i64>,
    /// After the last record processed: what the next commit writes.
    pub processed_next: PerSide<i64>,
    /// What the last commit wrote.
    pub committed_next: PerSide<i64>,
}

/// A running task: its processing (partition group and engine), its store and its offsets.
pub struct LiveTask {
    pub core: StreamTask,
    pub store: TaskStore,
    pub offsets: Offsets,
    /// Sides whose partition is paused because its buffer is full.
    pub paused: PerSide<bool>,
    /// Its position confirmed against the broker (semantics §4 "caught up").
    pub confirmations: Confirmations,
    /// Whether each side makes progress (`stalls.rs`).
    pub progress: PerSide<Progress>,
    /// Each side's watermark history, for its lag in time (`lag.rs`).
    pub lag: PerSide<super::lag::LagClock>,
    /// Encoded changes produced to the changelog in the running commit, for the store.
    pub pending_store: Vec<Record>,
    /// The settled runs whose state is in `pending_store`: they join the engine's settled-run
    /// cache once the store has it (docs/semantics.md §5 "Memory").
    pub settled_in_pending_store: Vec<RunKey>,
    /// What the engine's cumulative counters said at the last metrics refresh.
    pub seen_limit_cut: BTreeMap<&'static str, u64>,
    pub seen_idle_exceeded: u64,
    pub seen_clamped: PerSide<u64>,
}

impl LiveTask {
    pub fn partition(&self) -> i32 {
        self.core.partition
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_drawn_transitions_are_allowed() {
        use TaskState::*;
        let states = || [Created, Restoring, Closed];
        let allowed: Vec<(&str, &str)> = states()
            .iter()
            .flat_map(|from| {
                states()
                    .into_iter()
                    .filter(|to| from.allows(to))
                    .map(|to| (from.name(), to.name()))
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(
            allowed,
            [
                ("CREATED", "RESTORING"),
                ("CREATED", "CLOSED"),
                ("RESTORING", "CLOSED")
            ]
        );
        let mut task = AssignedTask::new(3);
        task.transition(Restoring);
        task.transition(Closed);
        let refused = std::panic::catch_unwind(move || {
            let mut task = AssignedTask::new(3);
            task.transition(Closed);
            task.transition(Restoring);
        });
        assert!(refused.is_err(), "CLOSED -> RESTORING must be refused");
    }
}
