//! The tasks of one stream thread (Kafka Streams' `TaskManager`): created by the assignment
//! callback, restored and started by the thread's loop (`task_start.rs`), fed records, committed
//! (`commit.rs`), closed on revocation or shutdown. It lives under the `Mutex` of its
//! [`super::StreamThread`]; the loop and the consumer's rebalance callbacks take it on the
//! thread, the HTTP server and the alert loop only to read.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ackwatch_topology::partition_group::Buffered;
use ackwatch_topology::partitioning::{Partitioner, Placements};
use ackwatch_topology::stream_task::Step;
use ackwatch_topology::{Millis, Outcome, OutcomeLabel, Output, PerSide, RunKey, Side};
use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message, TopicPartitionList};

use super::caught_up::Watermarks;
use super::commit::Acknowledging;
use super::record_collector::RecordCollector;
use super::stream_thread::Ctx;
use super::task::{AssignedTask, LiveTask, TaskState, TASK_BUFFERED_RECORDS_MAX};
use crate::events::{PartitionersDisagree, ProducerReplaced, TaskClosed};
use crate::metrics::Metrics;
use crate::runtime::changelog;
use crate::settings::Settings;

pub struct TaskManager {
    /// Which stream thread of the instance this is (0-based, `runtime.num_stream_threads`).
    pub thread: usize,
    pub(super) settings: Settings,
    pub(super) metrics: Arc<Metrics>,
    pub(super) watermarks: Watermarks,
    pub(super) changelog_topic: String,
    pub(super) collector: RecordCollector,
    pub(super) tasks: BTreeMap<i32, AssignedTask>,
    /// This thread's consumer has an assignment (possibly empty): set by the assignment
    /// callback, cleared by the revocation one.
    pub assigned: bool,
    outputs: Vec<Output>,
    pub last_commit: Instant,
    /// Milliseconds this thread has spent waiting in `poll`: the clock that bounds a task's
    /// wait for a lagging partition (`max_task_idle_ms`). Time spent processing other tasks or
    /// committing is not time the lagging partition's records could have arrived, so a busy
    /// catch-up does not run one topic ahead of the other; when idle it runs with the wall clock.
    pub poll_clock_ms: Millis,
    /// `ackwatch_records_total` by side and outcome, looked up once (not per record).
    record_counters: PerSide<[prometheus::IntCounter; 6]>,
    /// Partitions of each input topic (co-partitioned: the same count).
    input_partitions: i32,
    /// Where this thread's tracked records landed against where each partitioner puts them.
    placements: Placements,
    /// `ackwatch_misplaced_records_total` by side and partitioner, looked up once.
    misplaced_counters: PerSide<[prometheus::IntCounter; 2]>,
    /// The topics were found to follow different partitioners (reported once).
    partitioners_disagree: bool,
    /// The commit under way, while the broker has not acknowledged it (`commit.rs`).
    pub(super) acknowledging: Option<Acknowledging>,
    /// Input partitions whose lag series this thread exported at the last refresh.
    pub(super) lag_exported: std::collections::BTreeSet<(Side, i32)>,
    /// A task start failed because the broker did not answer: no start before this.
    pub(super) start_retry_at: Option<Instant>,
}

impl TaskManager {
    /// The task manager of stream thread `thread`; `input_partitions` is the input topics'
    /// partition count, `dead_letter_max_bytes` the dead-letter topic's `max.message.bytes`;
    /// `alerts_dirty` is shared by every thread.
    pub fn new(
        settings: Settings,
        metrics: Arc<Metrics>,
        thread: usize,
        input_partitions: i32,
        dead_letter_max_bytes: Option<usize>,
        alerts_dirty: Arc<AtomicBool>,
    ) -> anyhow::Result<TaskManager> {
        let collector = RecordCollector::new(
            &settings,
            metrics.clone(),
            thread,
            dead_letter_max_bytes,
            alerts_dirty,
        )?;
        let topics = PerSide::new(
            settings.topics.activation.clone(),
            settings.topics.ack.clone(),
        );
        let record_counters = PerSide::from_fn(|side| {
            OutcomeLabel::ALL.map(|o| {
                metrics
                    .records
                    .with_label_values(&[&topics[side], o.as_str()])
            })
        });
        let misplaced_counters = PerSide::from_fn(|side| {
            Partitioner::ALL.map(|p| {
                metrics
                    .misplaced_records
                    .with_label_values(&[&topics[side], p.as_str()])
            })
        });
        Ok(TaskManager {
            thread,
            input_partitions,
            placements: Placements::default(),
            misplaced_counters,
            partitioners_disagree: false,
            changelog_topic: changelog::topic_name(&settings.runtime.application_id),
            watermarks: Watermarks::new(topics)?,
            record_counters,
            settings,
            metrics,
            collector,
            tasks: BTreeMap::new(),
            assigned: false,
            outputs: Vec::new(),
            last_commit: Instant::now(),
            poll_clock_ms: 0,
            acknowledging: None,
            lag_exported: Default::default(),
            start_retry_at: None,
        })
    }

    /// The assignment callback's new partitions: tasks in `Created`, started by the loop.
    pub fn add_assigned(&mut self, partitions: impl IntoIterator<Item = i32>) {
        for p in partitions {
            self.tasks.entry(p).or_insert_with(|| AssignedTask::new(p));
        }
    }

    /// Running tasks.
    pub fn running(&self) -> impl Iterator<Item = &LiveTask> {
        self.tasks.values().filter_map(AssignedTask::running)
    }

    pub(super) fn running_mut(&mut self) -> impl Iterator<Item = &mut LiveTask> {
        self.tasks
            .values_mut()
            .filter_map(AssignedTask::running_mut)
    }

    /// Assigned tasks not running yet (`Created` or `Restoring`).
    pub fn starting(&self) -> usize {
        self.tasks
            .values()
            .filter(|t| t.running().is_none())
            .count()
    }

    /// Runs changed since the tasks' last commit (they wait in memory for it).
    pub fn changed_runs(&self) -> usize {
        self.running().map(|t| t.core.engine.changed_count()).sum()
    }

    /// The assigned partitions, sorted.
    pub fn partitions(&self) -> Vec<i32> {
        self.tasks.keys().copied().collect()
    }

    /// Closes the tasks of `partitions` (after a commit); their buffered records are dropped
    /// and will be read again by the partitions' next owner from the committed offsets.
    pub fn close_tasks(&mut self, partitions: &BTreeSet<i32>, reason: &'static str) {
        for p in partitions {
            if let Some(mut task) = self.tasks.remove(p) {
                if let Some(live) = task.running() {
                    let paused = Side::BOTH.iter().filter(|&&s| live.paused[s]).count();
                    self.metrics.buffer_paused_partitions.sub(paused as i64);
                }
                self.leave_out_of_commit(*p);
                for side in Side::BOTH {
                    self.metrics.stalls.clear(self.watermarks.topic(side), *p);
                }
                task.transition(TaskState::Closed);
                TaskClosed {
                    partition: *p,
                    reason,
                }
                .emit(&self.metrics);
            }
        }
    }

    /// Closes every task without a commit and creates it again (`Created`, its partitions
    /// paused until it restarts): its state goes back to its last commit, restored from the
    /// store and the changelog, and it re-processes from the committed offsets.
    pub fn reset_tasks(&mut self, consumer: &BaseConsumer<Ctx>, reason: &'static str) {
        let all: BTreeSet<i32> = self.tasks.keys().copied().collect();
        self.close_tasks(&all, reason);
        let mut list = TopicPartitionList::new();
        for &p in &all {
            for side in Side::BOTH {
                list.add_partition(self.watermarks.topic(side), p);
            }
        }
        // Only saves fetching: records of a task that is not running are dropped, and its start
        // resumes and seeks its partitions.
        let _ = consumer.pause(&list);
        self.add_assigned(all);
    }

    /// Buffers one fetched record in its task; returns the task's partition when it took it.
    /// The caller processes the tasks it buffered into (`process_task`) after a batch.
    pub fn add_record(
        &mut self,
        consumer: &BaseConsumer<Ctx>,
        message: &BorrowedMessage<'_>,
    ) -> anyhow::Result<Option<i32>> {
        let Some(side) = self.watermarks.side_of(message.topic()) else {
            return Ok(None);
        };
        let partition = message.partition();
        let Some(task) = self
            .tasks
            .get_mut(&partition)
            .and_then(AssignedTask::running_mut)
        else {
            // A record of a partition that is not running (closed, or paused before its start):
            // its task starts from the committed offset, so nothing is skipped.
            return Ok(None);
        };
        if message.offset() < task.offsets.fetched_next[side] {
            return Ok(None); // fetched before a seek: already buffered or processed
        }
        task.offsets.fetched_next[side] = message.offset() + 1;
        let timestamp_ms = message.timestamp().to_millis();
        task.core.push(
            side,
            Buffered {
                offset: message.offset(),
                timestamp_ms,
                key: message.key().map(Into::into),
                value: message.payload().map(Into::into),
            },
        );
        if task.core.group.len(side) > TASK_BUFFERED_RECORDS_MAX && !task.paused[side] {
            task.paused[side] = true;
            set_paused(
                consumer,
                &self.metrics,
                self.watermarks.topic(side),
                partition,
                true,
            )?;
        }
        Ok(Some(partition))
    }

    /// Processes what the task's partition group releases, then (caught up on both sides)
    /// lets stream time follow the wall clock minus `lateness_ms` (docs/semantics.md §4).
    pub fn process_task(
        &mut self,
        consumer: &BaseConsumer<Ctx>,
        partition: i32,
        now_ms: Millis,
    ) -> anyhow::Result<()> {
        let lateness = self.settings.runtime.lateness_ms as Millis;
        let to = now_ms - lateness;
        let Some(task) = self
            .tasks
            .get_mut(&partition)
            .and_then(AssignedTask::running_mut)
        else {
            return Ok(());
        };
        task.core.group.hold_after = Some(to);
        if !self.collector.accepts_records() {
            // A transaction being committed or aborted takes no records: processing waits.
            return Ok(());
        }
        let mut placed = Placed {
            placements: &mut self.placements,
            counters: &self.misplaced_counters,
            partitions: self.input_partitions,
        };
        let result = drain(
            task,
            consumer,
            &self.watermarks,
            &mut self.collector,
            &self.record_counters,
            &mut placed,
            &self.metrics,
            self.poll_clock_ms,
            &mut self.outputs,
            now_ms,
        );
        if !self.partitioners_disagree && self.placements.disagree() {
            self.partitioners_disagree = true;
            PartitionersDisagree {
                thread: self.thread,
                placements: &self.placements,
                topics: [
                    self.watermarks.topic(Side::Activation),
                    self.watermarks.topic(Side::Ack),
                ],
            }
            .emit(&self.metrics);
        }
        // Records held by the live merge are all newer than `to` (that is what held means), so
        // they cannot pass a deadline before `to`: punctuate past them rather than wait for
        // their release, which would delay wall-clock findings by up to `lateness_ms` more.
        let grace = Duration::from_millis(self.settings.runtime.outage_grace_ms);
        if result.is_ok()
            && task.core.engine.next_due().is_some_and(|due| due < to)
            && task.core.group.all_after(to)
            && self.metrics.brokers.settled(grace)
            && self.watermarks.confirmed(
                consumer,
                self.collector.client(),
                &self.metrics.brokers,
                task,
            )
        {
            task.core.engine.punctuate(to, &mut self.outputs);
        }
        result?;
        self.collector.emit(&mut self.outputs, now_ms)
    }

    /// The wall-clock time at which the earliest task deadline can fire by the wall clock
    /// (stream time, the wall clock minus `lateness_ms`, passes it), so the loop wakes then
    /// rather than at its next regular punctuation.
    pub fn next_wall_clock_fire_ms(&self) -> Option<Millis> {
        let lateness = self.settings.runtime.lateness_ms as Millis;
        let due = self
            .running()
            .filter_map(|t| t.core.engine.next_due())
            .min()?;
        Some(due.saturating_add(lateness).saturating_add(1))
    }

    /// Serves the producer's delivery reports.
    pub fn poll_producer(&self) {
        self.collector.poll();
    }

    /// The producer's client (requests that must not queue behind the consumer's fetch).
    pub fn collector_client(
        &self,
    ) -> &rdkafka::client::Client<super::record_collector::ProducerCtx> {
        self.collector.client()
    }

    /// A commit waits for the broker's acknowledgement (`commit.rs`).
    pub fn commit_under_way(&self) -> bool {
        self.acknowledging.is_some()
    }

    /// exactly_once_v2, the assignment lost or a revocation's commit unfinished: the open
    /// transaction will be aborted (the tasks that produced into it are closing).
    pub fn abandon_transaction(&mut self) {
        self.collector.abandon();
    }

    /// Recovers from `error` when it comes from a producer fenced under exactly_once_v2 (its
    /// transaction timed out on the coordinator, typically in a broker outage): every task
    /// restarts from its last commit, with a new producer, as Kafka Streams does. Any other
    /// error is returned as it is.
    pub fn recover_from_fencing(
        &mut self,
        consumer: &BaseConsumer<Ctx>,
        error: anyhow::Error,
    ) -> anyhow::Result<()> {
        if !self.collector.is_transactional() || !self.collector.producer_failed() {
            return Err(error);
        }
        ProducerReplaced {
            thread: self.thread,
            error: &error,
        }
        .emit(&self.metrics);
        self.acknowledging = None;
        self.reset_tasks(consumer, "producer fenced");
        self.collector
            .replace_producer()
            .context("cannot replace the fenced producer")
    }

    /// Aborts a transaction waiting to be aborted (the broker refused it, or its tasks were
    /// lost), unless the brokers are down; the tasks start again once it is aborted.
    pub fn abort_refused_transaction(&mut self) -> anyhow::Result<()> {
        if self.collector.is_aborting() && !self.metrics.brokers.is_down() {
            self.collector
                .abort(super::record_collector::COMMIT_WAIT)
                .context("cannot abort the refused transaction")?;
        }
        Ok(())
    }
}

/// The partitioner check of tracked records (docs/semantics.md §1 "Partitioning").
struct Placed<'a> {
    placements: &'a mut Placements,
    counters: &'a PerSide<[prometheus::IntCounter; 2]>,
    partitions: i32,
}

impl Placed<'_> {
    fn check(&mut self, side: Side, key: Option<&[u8]>, partition: i32) {
        let Some(key) = key else { return };
        let misplaced = self.placements.check(side, key, partition, self.partitions);
        for (counter, misplaced) in self.counters[side].iter().zip(misplaced) {
            if misplaced {
                counter.inc();
            }
        }
    }
}

/// Processes every record the task's partition group releases: each is applied, counted,
/// placement-checked when tracked, dead-lettered when invalid, and its outputs produced at once.
#[allow(clippy::too_many_arguments)]
fn drain(
    task: &mut LiveTask,
    consumer: &BaseConsumer<Ctx>,
    watermarks: &Watermarks,
    collector: &mut RecordCollector,
    record_counters: &PerSide<[prometheus::IntCounter; 6]>,
    placed: &mut Placed<'_>,
    metrics: &Metrics,
    poll_clock_ms: Millis,
    outputs: &mut Vec<Output>,
    now_ms: Millis,
) -> anyhow::Result<()> {
    loop {
        let (partition, fetched_next) = (task.partition(), task.offsets.fetched_next);
        let client = collector.client();
        let confirmations = &mut task.confirmations;
        let caught_up = |side: Side| {
            watermarks.caught_up_for_merge(
                consumer,
                client,
                &metrics.brokers,
                partition,
                fetched_next[side],
                side,
                confirmations,
            )
        };
        let step = task
            .core
            .step(poll_clock_ms, caught_up, Some(now_ms), outputs);
        let (side, record, outcome) = match step {
            Step::Processed {
                side,
                record,
                outcome,
            } => (side, record, outcome),
            Step::NeedsRun(key) => {
                load_evicted(task, key, metrics)?;
                continue;
            }
            Step::Wait | Step::Empty => return Ok(()),
        };
        let label = outcome.label().expect("a processed record has a label");
        record_counters[side][label.index()].inc();
        if matches!(
            label,
            OutcomeLabel::Tracked | OutcomeLabel::Ack | OutcomeLabel::Duplicate | OutcomeLabel::Cut
        ) {
            placed.check(side, record.key.as_deref(), partition);
        }
        if let Outcome::Invalid(invalid) = outcome {
            collector.dead_letter(&invalid, &record.as_raw(side, partition))?;
        }
        task.offsets.processed_next[side] = record.offset + 1;
        if !outputs.is_empty() {
            collector.emit(outputs, now_ms)?;
        }
        if task.paused[side] && task.core.group.len(side) <= TASK_BUFFERED_RECORDS_MAX / 2 {
            task.paused[side] = false;
            set_paused(consumer, metrics, watermarks.topic(side), partition, false)?;
        }
    }
}

/// A record of a run evicted to the store: the run is loaded back (or, when the store lacks
/// it, the key only shared a hash with an evicted run and is new), and the record stepped again.
fn load_evicted(task: &mut LiveTask, key: RunKey, metrics: &Metrics) -> anyhow::Result<()> {
    let partition = task.partition();
    match task.store.get_run(&key).with_context(|| {
        format!("cannot load an evicted run of partition {partition} from its store")
    })? {
        Some(run) => {
            task.core.engine.restore_run(key, run);
            metrics.runs_loaded.inc();
        }
        None => task.core.engine.run_not_stored(key),
    }
    Ok(())
}

/// Pauses or resumes one input partition whose task buffer filled or drained.
fn set_paused(
    consumer: &BaseConsumer<Ctx>,
    metrics: &Metrics,
    topic: &str,
    partition: i32,
    pause: bool,
) -> anyhow::Result<()> {
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, partition);
    if pause {
        consumer.pause(&list)?;
        metrics.buffer_paused_partitions.inc();
    } else {
        consumer.resume(&list)?;
        metrics.buffer_paused_partitions.dec();
    }
    Ok(())
}
