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
//!
//! The broker may not answer (an outage): the loop's commits wait at most `COMMIT_WAIT` at a
//! step, and a commit not acknowledged by then is [`Committed::Pending`] and goes on at the next
//! pass, the consumer polled in between. Under exactly_once_v2 a transaction the broker refuses
//! is aborted and every task restarts from its last commit ([`Committed::Aborted`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ackwatch_state::{encode_changes, CommitMarker};
use ackwatch_topology::{PerSide, RunKey, RunState, Side};
use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::stream_thread::Ctx;

/// Changed runs a stream thread's tasks may hold before a commit starts, whatever
/// `commit_interval_ms` says. Changed runs stay in memory until their commit's store write
/// evicts the settled ones: catching up at 125,000 records/s with a 1 s interval held about
/// 60,000 (100 MiB). Cost: more, smaller commits while catching up (a commit's changelog batch
/// is at most about 10,000 records, 3 MB).
pub const CHANGED_RUNS_PER_COMMIT_MAX: usize = 10_000;
use super::task_manager::TaskManager;
use super::transaction::TxnProgress;
use crate::events::{OffsetCommitFailed, TransactionAborted};

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

/// What a commit came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Committed {
    /// Every step done (or nothing to commit).
    Done,
    /// Waiting for the broker (outputs, changelog records or the transaction not acknowledged
    /// within the wait): the commit goes on at the next pass of the loop, never fails for it.
    Pending,
    /// exactly_once_v2: the transaction must be aborted; every task restarts from its last
    /// commit once it is (nothing it held is ever visible, so nothing is emitted twice).
    Aborted,
}

/// A commit whose changelog records were sent (steps 1 and 2 done) and whose acknowledgement
/// (step 3) may take several passes of the loop: the input offsets it commits, by task.
pub struct Acknowledging {
    offsets: BTreeMap<i32, PerSide<i64>>,
    changelog_sent: bool,
    started: Instant,
}

impl TaskManager {
    /// Runs the commit protocol (module docs), waiting at most `wait` for the broker at each
    /// step; a commit that waited longer goes on at the next call (`Pending`). An error is
    /// fatal (the process exits and a restart recovers from the changelog); a broker that does
    /// not answer is not an error.
    pub fn commit(
        &mut self,
        consumer: &BaseConsumer<Ctx>,
        wait: Duration,
    ) -> anyhow::Result<Committed> {
        if self.acknowledging.is_none() {
            if self.collector.is_aborting() {
                return Ok(Committed::Pending);
            }
            let started = Instant::now();
            self.crash_point(CrashPoint::Start);
            if !self.flush_outputs(wait)? {
                return Ok(Committed::Pending); // nothing taken yet: the next commit starts over
            }
            let changelog_sent = self.write_changelog()?;
            self.acknowledging = Some(Acknowledging {
                offsets: self
                    .running()
                    .map(|t| (t.partition(), t.offsets.processed_next))
                    .collect(),
                changelog_sent,
                started,
            });
        }
        self.finish_commit(consumer, wait)
    }

    /// Steps 3 to 5 of the commit under way.
    fn finish_commit(
        &mut self,
        consumer: &BaseConsumer<Ctx>,
        wait: Duration,
    ) -> anyhow::Result<Committed> {
        let acknowledging = self.acknowledging.as_ref().expect("a commit is under way");
        let (offsets, offsets_moved) = self.offsets_list(&acknowledging.offsets)?;
        match self.acknowledge(consumer, &offsets, offsets_moved, wait)? {
            TxnProgress::Retry => return Ok(Committed::Pending),
            TxnProgress::MustAbort => {
                self.acknowledging = None;
                TransactionAborted {
                    thread: self.thread,
                    tasks: self.tasks.len(),
                }
                .emit(&self.metrics);
                self.reset_tasks(consumer, "transaction aborted");
                return Ok(Committed::Aborted);
            }
            TxnProgress::Done => {}
        }
        let acknowledging = self.acknowledging.take().expect("a commit is under way");
        if acknowledging.changelog_sent {
            // The broker acknowledged this commit: whatever outage was reported is over.
            self.metrics.brokers.mark_up();
        }
        self.crash_point(CrashPoint::ChangelogAcknowledged);
        self.write_stores()?;
        self.crash_point(CrashPoint::StoreWritten);
        if offsets_moved {
            self.commit_offsets(consumer, &offsets);
        }
        drop(offsets);
        self.crash_point(CrashPoint::OffsetsCommitted);
        for task in self.running_mut() {
            if let Some(next) = acknowledging.offsets.get(&task.partition()) {
                task.offsets.committed_next = *next;
            }
        }
        self.metrics.commits.inc();
        self.metrics
            .commit_duration
            .observe(acknowledging.started.elapsed().as_secs_f64());
        self.last_commit = Instant::now();
        Ok(Committed::Done)
    }

    /// A task of the commit under way was closed without it (revoked, lost): at_least_once,
    /// its offsets are left out (they are no longer this member's to commit; its changelog
    /// records still land, and its next owner starts after what they reflect). Under
    /// exactly_once_v2 they stay: the transaction holds its records, and commits them with
    /// their offsets or not at all.
    pub(super) fn leave_out_of_commit(&mut self, partition: i32) {
        if !self.collector.is_transactional() {
            if let Some(a) = self.acknowledging.as_mut() {
                a.offsets.remove(&partition);
            }
        }
    }

    /// Step 1, at_least_once: outputs first. A changelog record may reach the broker before the
    /// crash that stops this commit, and a restored state must never hold a finding whose
    /// event was not delivered (re-processing would not emit it again). Returns whether they
    /// were acknowledged within `wait`.
    fn flush_outputs(&mut self, wait: Duration) -> anyhow::Result<bool> {
        if self.collector.is_transactional() {
            return Ok(true);
        }
        if !self.collector.flush(wait)? {
            return Ok(false);
        }
        self.collector.check_deliveries()?;
        Ok(true)
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
            let settled: Vec<RunKey> = changes
                .iter()
                .filter(|(_, state)| state.is_some_and(RunState::is_settled))
                .map(|(key, _)| key.clone())
                .collect();
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
            task.settled_in_pending_store = settled;
            result?;
            sent = true;
            self.crash_point(CrashPoint::ChangelogSent);
        }
        Ok(sent)
    }

    /// The input offsets of the commit under way as the client takes them, and whether any
    /// moved since the last commit (a task closed since counts as moved under
    /// exactly_once_v2, whose transaction holds its offsets).
    fn offsets_list(
        &self,
        offsets: &BTreeMap<i32, PerSide<i64>>,
    ) -> anyhow::Result<(TopicPartitionList, bool)> {
        let mut list = TopicPartitionList::new();
        let mut moved = false;
        for (&partition, next) in offsets {
            let committed = self
                .tasks
                .get(&partition)
                .and_then(|t| t.running())
                .map(|t| t.offsets.committed_next);
            for side in Side::BOTH {
                list.add_partition_offset(
                    self.watermarks.topic(side),
                    partition,
                    Offset::Offset(next[side]),
                )?;
                moved |= committed.is_none_or(|c| c[side] != next[side]);
            }
        }
        Ok((list, moved))
    }

    /// Step 3: the broker has everything of this commit. at_least_once: every changelog record
    /// acknowledged; exactly_once_v2: the input offsets added to the transaction (outputs,
    /// changelog records and offsets in one) and the transaction committed.
    fn acknowledge(
        &mut self,
        consumer: &BaseConsumer<Ctx>,
        offsets: &TopicPartitionList,
        offsets_moved: bool,
        wait: Duration,
    ) -> anyhow::Result<TxnProgress> {
        let progress = if self.collector.is_transactional() {
            if offsets_moved || self.collector.in_transaction() {
                let group = consumer
                    .group_metadata()
                    .context("no consumer group metadata")?;
                self.collector.commit_transaction(offsets, &group, wait)?
            } else {
                TxnProgress::Done
            }
        } else if self.collector.flush(wait)? {
            TxnProgress::Done
        } else {
            TxnProgress::Retry
        };
        if progress == TxnProgress::Done {
            self.collector.check_deliveries()?;
        }
        Ok(progress)
    }

    /// Step 4: each store writes the records its changelog partition acknowledged, as one
    /// synced batch (marker included), and its checkpoint; then the batch's settled runs join
    /// the task's cache of settled runs, and past its share of `runtime.settled_cache_bytes`
    /// the least recently committed leave memory (the store has them; a later record loads
    /// them back).
    fn write_stores(&mut self) -> anyhow::Result<()> {
        let ends = self.collector.take_changelog_ends();
        let budget = self.settled_cache_share();
        let mut evicted = 0;
        let mut cached = 0;
        for task in self.running_mut() {
            if !task.pending_store.is_empty() {
                task.store
                    .commit_records(&task.pending_store, ends.get(&task.partition()).copied())?;
                task.pending_store.clear();
            }
            let written = std::mem::take(&mut task.settled_in_pending_store);
            evicted += task.core.engine.evict_settled_beyond(written, budget);
            cached += task.core.engine.cached_settled_bytes();
        }
        self.metrics.runs_evicted.inc_by(evicted as u64);
        self.metrics.settled_cache_bytes.set(self.thread, cached as i64);
        self.metrics.rocksdb_memtables.set(ackwatch_state::rocksdb_memtable_bytes() as i64);
        Ok(())
    }

    /// Each running task's share of this instance's settled-run cache: the budget splits
    /// evenly over the stream threads, and a thread's share over its running tasks.
    fn settled_cache_share(&self) -> usize {
        let runtime = &self.settings.runtime;
        let threads = runtime.num_stream_threads.max(1);
        let tasks = self.running().count().max(1) as u64;
        usize::try_from(runtime.settled_cache_bytes / threads / tasks).unwrap_or(usize::MAX)
    }

    /// Step 5, at_least_once: the input offsets, committed asynchronously (a commit request
    /// that outlives the broker must not hold the loop). A failure is reported by the
    /// consumer's commit callback; the offsets move again at the next commit, and until then a
    /// restart re-processes a few records (at_least_once: the same idempotency keys).
    fn commit_offsets(&self, consumer: &BaseConsumer<Ctx>, offsets: &TopicPartitionList) {
        if self.collector.is_transactional() {
            return;
        }
        if let Err(e) = consumer.commit(offsets, CommitMode::Async) {
            OffsetCommitFailed {
                error: &e.to_string(),
            }
            .emit(&self.metrics);
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
