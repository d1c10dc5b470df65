//! A stream task's processing, without I/O: its [`PartitionGroup`] and its engine ([`Task`]),
//! and the one step the live runtime, the audit's replay and the tests all take: the next
//! record the group releases, applied to the engine (Kafka Streams' `StreamTask::process`).

use crate::output::{Outcome, Output};
use crate::partition_group::{Buffered, Next, PartitionGroup};
use crate::policy::Policy;
use crate::side::Side;
use crate::task::Task;
use crate::time::Millis;
use crate::RunKey;

/// Partition p of both inputs: the records buffered between read and processing, and the engine.
#[derive(Debug)]
pub struct StreamTask {
    pub partition: i32,
    pub group: PartitionGroup<Buffered>,
    pub engine: Task,
}

/// What one [`StreamTask::step`] did.
#[derive(Debug)]
pub enum Step {
    /// A record was applied; the caller keeps it for what the outcome asks (a dead letter).
    Processed {
        side: Side,
        record: Buffered,
        outcome: Outcome,
    },
    /// The next record's run was evicted from memory: load it into the engine
    /// (`Task::restore_run`, or `Task::run_not_stored` when the store lacks it), then step
    /// again. Nothing was applied; the record is back at the head of its partition.
    NeedsRun(RunKey),
    /// One partition is empty but not caught up, and the group waits for it.
    Wait,
    /// Nothing is buffered.
    Empty,
}

impl StreamTask {
    pub fn new(partition: i32, engine: Task, max_task_idle_ms: Millis) -> Self {
        StreamTask {
            partition,
            group: PartitionGroup::new(max_task_idle_ms),
            engine,
        }
    }

    /// A task for a bounded input (audit, tests): never waits for a lagging partition longer
    /// than it takes the caller to say the input ended.
    pub fn bounded(partition: i32, policy: Policy) -> Self {
        StreamTask::new(partition, Task::new(policy), Millis::MAX)
    }

    /// Buffers a record read from `side`.
    pub fn push(&mut self, side: Side, record: Buffered) {
        self.group.push(side, record.timestamp_ms, record);
    }

    /// Takes the next record the partition group releases and applies it. `clock_ms` bounds the
    /// wait for a lagging partition (`max_task_idle_ms`); `caught_up(side)` says whether that
    /// side has been read to its end (asked only while it has nothing buffered); `wall_ms` is
    /// the live wall clock (event times are clamped to it + `max_clock_lead_ms`), `None` for a
    /// replay.
    pub fn step(
        &mut self,
        clock_ms: Millis,
        caught_up: impl FnMut(Side) -> bool,
        wall_ms: Option<Millis>,
        out: &mut Vec<Output>,
    ) -> Step {
        let (side, record) = match self.group.next_with(clock_ms, caught_up) {
            Next::Record(side, record) => (side, record),
            Next::Wait => return Step::Wait,
            Next::Empty => return Step::Empty,
        };
        let outcome = self
            .engine
            .process_at(&record.as_raw(side, self.partition), wall_ms, out);
        if let Outcome::NeedsRun(key) = outcome {
            self.group.push_front(side, record.timestamp_ms, record);
            return Step::NeedsRun(key);
        }
        Step::Processed {
            side,
            record,
            outcome,
        }
    }
}
