//! The commit protocol, for every running task of a stream thread at once, as named steps.
//! Each step is bracketed by the [`CrashPoint`] that names the moment after it, where
//! `tests/crash.rs` may kill the process (`ACKWATCH_CRASH_AT=<point>:<n>`):
//!
//! ```text
//!   start ─ 1. flush outputs (at_least_once: every output and dead letter acknowledged)
//!         ─ 2. write changelog (each task's changes, closed by a commit marker)   ─ changelog_sent (per task)
//!         ─ 3. acknowledge (at_least_once: flush; exactly_once_v2: offsets into the
//!              transaction, commit it)                                           ─ changelog_acknowledged
//!         ─ 4. write stores (one synced batch and a checkpoint per store)        ─ store_written
//!         ─ 5. commit offsets (at_least_once)                                    ─ offsets_committed
//! ```
//!
//! A crash anywhere re-runs records whose effects may already be out (at_least_once, same
//! idempotency keys) or were aborted (exactly_once_v2); the store never gets ahead of the
//! changelog, nor the changelog ahead of the outputs, and a restore stops at the last marker,
//! so a restored state is always one commit's, whole.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use ackwatch_state::{encode_changes, CommitMarker};
use ackwatch_topology::Side;
use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::stream_thread::Ctx;
use super::task_manager::TaskManager;
use crate::events::OffsetCommitFailed;

/// Points of the commit protocol where a crash test may kill the process (`ACKWATCH_CRASH_AT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    Start,
    ChangelogSent,
    ChangelogAcknowledged,
    StoreWritten,
    OffsetsCommitted,
}

impl CrashPoint {
    pub const ALL: [CrashPoint; 5] = [
        CrashPoint::Start,
        CrashPoint::ChangelogSent,
        CrashPoint::ChangelogAcknowledged,
        CrashPoint::StoreWritten,
        CrashPoint::OffsetsCommitted,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CrashPoint::Start => "start",
            CrashPoint::ChangelogSent => "changelog_sent",
            CrashPoint::ChangelogAcknowledged => "changelog_acknowledged",
            CrashPoint::StoreWritten => "store_written",
            CrashPoint::OffsetsCommitted => "offsets_committed",
        }
    }
}

impl TaskManager {
    /// Runs the commit protocol (module docs). An error is fatal: the process exits and a
    /// restart recovers from the changelog.
    pub fn commit(&mut self, consumer: &BaseConsumer<Ctx>) -> anyhow::Result<()> {
        let started = Instant::now();
        self.crash_point(CrashPoint::Start);
        self.flush_outputs()?;
        let changelog_sent = self.write_changelog()?;
        let (offsets, offsets_moved) = self.processed_offsets()?;
        self.acknowledge(consumer, &offsets, offsets_moved)?;
        if changelog_sent {
            // The broker acknowledged this commit: whatever outage was reported is over.
            self.metrics.all_brokers_down.set(0);
        }
        self.crash_point(CrashPoint::ChangelogAcknowledged);
        self.write_stores()?;
        self.crash_point(CrashPoint::StoreWritten);
        if !self.commit_offsets(consumer, &offsets, offsets_moved) {
            drop(offsets);
            self.last_commit = Instant::now();
            return Ok(());
        }
        drop(offsets);
        self.crash_point(CrashPoint::OffsetsCommitted);
        for task in self.running_mut() {
            task.offsets.committed_next = task.offsets.processed_next;
        }
        self.metrics.commits.inc();
        self.metrics
            .commit_duration_ms
            .observe(started.elapsed().as_secs_f64() * 1000.0);
        self.last_commit = Instant::now();
        Ok(())
    }

    /// Step 1, at_least_once: outputs first. A changelog record may reach the broker before the
    /// crash that stops this commit, and a restored state must never hold a finding whose
    /// event was not delivered (re-processing would not emit it again).
    fn flush_outputs(&mut self) -> anyhow::Result<()> {
        if self.collector.is_transactional() {
            return Ok(());
        }
        self.collector
            .flush()
            .context("outputs not acknowledged in time")?;
        self.collector.check_deliveries()
    }

    /// Step 2: each task's changes, encoded once (kept for its store), produced to its
    /// changelog partition and closed by a commit marker with the input offsets they reflect.
    /// A task with no change and no new input writes nothing, not even a marker, so an idle
    /// commit never waits on the broker (during an outage it would wait until the broker
    /// returns, and the consumer would not be polled meanwhile). Returns whether any was sent.
    fn write_changelog(&mut self) -> anyhow::Result<bool> {
        let mut sent = false;
        let partitions: Vec<i32> = self.running().map(|t| t.partition()).collect();
        for p in partitions {
            let task = self
                .tasks
                .get_mut(&p)
                .and_then(|t| t.running_mut())
                .expect("listed");
            let marker = CommitMarker {
                input_next: task.offsets.processed_next,
            };
            let (changes, meta) = task.core.engine.take_changes();
            if changes.is_empty()
                && meta.is_none()
                && task.offsets.processed_next == task.offsets.committed_next
            {
                continue;
            }
            let records =
                encode_changes(changes.iter().map(|(k, s)| (k, *s)), meta.as_ref(), &marker);
            drop(changes);
            let mut result = Ok(());
            for (key, value) in &records {
                result = self.collector.send_changelog(p, key, value.as_deref());
                if result.is_err() {
                    break;
                }
            }
            self.metrics.changelog_records.inc_by(records.len() as u64);
            let task = self
                .tasks
                .get_mut(&p)
                .and_then(|t| t.running_mut())
                .expect("listed");
            task.pending_store = records;
            result?;
            sent = true;
            self.crash_point(CrashPoint::ChangelogSent);
        }
        Ok(sent)
    }

    /// The input offsets after the last processed record of every running task, and whether
    /// any moved since the last commit.
    fn processed_offsets(&self) -> anyhow::Result<(TopicPartitionList, bool)> {
        let mut offsets = TopicPartitionList::new();
        let mut moved = false;
        for task in self.running() {
            for side in Side::BOTH {
                offsets.add_partition_offset(
                    self.watermarks.topic(side),
                    task.partition(),
                    Offset::Offset(task.offsets.processed_next[side]),
                )?;
                moved |= task.offsets.processed_next[side] != task.offsets.committed_next[side];
            }
        }
        Ok((offsets, moved))
    }

    /// Step 3: the broker has everything of this commit. at_least_once: every changelog record
    /// acknowledged; exactly_once_v2: the input offsets added to the transaction (outputs,
    /// changelog records and offsets in one) and the transaction committed.
    fn acknowledge(
        &mut self,
        consumer: &BaseConsumer<Ctx>,
        offsets: &TopicPartitionList,
        offsets_moved: bool,
    ) -> anyhow::Result<()> {
        if self.collector.is_transactional() {
            if offsets_moved || self.collector.in_transaction() {
                let group = consumer
                    .group_metadata()
                    .context("no consumer group metadata")?;
                self.collector.commit_transaction(offsets, &group)?;
            }
        } else {
            self.collector
                .flush()
                .context("outputs and changelog records not acknowledged in time")?;
        }
        self.collector.check_deliveries()
    }

    /// Step 4: each store writes the records its changelog partition acknowledged, as one
    /// synced batch (marker included), and its checkpoint.
    fn write_stores(&mut self) -> anyhow::Result<()> {
        let ends = self.collector.take_changelog_ends();
        for task in self.running_mut() {
            if !task.pending_store.is_empty() {
                task.store
                    .commit_records(&task.pending_store, ends.get(&task.partition()).copied())?;
                task.pending_store.clear();
            }
        }
        Ok(())
    }

    /// Step 5, at_least_once: the input offsets. A failure here is retried at the next commit
    /// (everything else is durable); returns whether they were committed.
    fn commit_offsets(
        &self,
        consumer: &BaseConsumer<Ctx>,
        offsets: &TopicPartitionList,
        offsets_moved: bool,
    ) -> bool {
        if self.collector.is_transactional() || !offsets_moved {
            return true;
        }
        match consumer.commit(offsets, CommitMode::Sync) {
            Ok(()) => true,
            Err(e) => {
                OffsetCommitFailed {
                    error: &e.to_string(),
                }
                .emit(&self.metrics);
                false
            }
        }
    }

    /// The crash test hook, armed only while the thread has running tasks (a commit with
    /// nothing to commit is not worth a crash).
    fn crash_point(&self, point: CrashPoint) {
        if self.running().next().is_some() {
            crash_point(point);
        }
    }
}

/// The crash test hook: with `ACKWATCH_CRASH_AT=<point>:<n>` the process kills itself with
/// SIGKILL (no destructor, no flush) the n-th time a commit passes `<point>` (a task's
/// `changelog_sent` counts once per task; commits with no task assigned do not count). Read
/// once; unset, a commit pays one atomic load.
fn crash_point(point: CrashPoint) {
    static TARGET: OnceLock<Option<(&'static str, u64)>> = OnceLock::new();
    static PASSED: AtomicU64 = AtomicU64::new(0);
    let target = TARGET.get_or_init(|| {
        let value = std::env::var("ACKWATCH_CRASH_AT").ok()?;
        let (name, n) = value.split_once(':')?;
        let point = CrashPoint::ALL.into_iter().find(|p| p.name() == name)?;
        Some((point.name(), n.parse().ok()?))
    });
    let Some((name, n)) = *target else {
        return;
    };
    if name == point.name() && PASSED.fetch_add(1, Ordering::Relaxed) + 1 == n {
        eprintln!("ACKWATCH_CRASH_AT: killing this process at {name} #{n}");
        // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}
