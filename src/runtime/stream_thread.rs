//! One stream thread: its consumer (a member of the group), the rebalance callbacks that hand
//! partitions to its [`TaskManager`], and Kafka Streams' loop, one pass of which is
//! [`StreamThreadLoop::run_once`]:
//!
//! ```text
//!   poll ──> start new tasks ──> add records to tasks ──> process ──> punctuate ──> maybe commit
//!   (no lock:      (restore,          (buffer in their    (what the    (every PUNCTUATE_INTERVAL,
//!    callbacks      resume, seek)      partition groups)   groups        or when a deadline is due
//!    take it)                                              release)      by the wall clock)
//! ```
//!
//! Rebalance callbacks run inside `poll`, on this thread: a revocation commits and closes the
//! revoked tasks, an assignment checks co-partitioning and pauses the new partitions until their
//! tasks are restored.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ackwatch_topology::Millis;
use anyhow::{bail, Context as _};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{ClientContext, TopicPartitionList};

use super::brokers::{PROBE_INTERVAL, PROBE_TIMEOUT};
use super::commit::{Committed, CHANGED_RUNS_PER_COMMIT_MAX};
use super::record_collector::{COMMIT_TIMEOUT, COMMIT_WAIT};
use super::task_manager::TaskManager;
use super::{wall_ms, Shared, StreamThread};
use crate::events::{
    AssignmentLost, CommitFailed, KafkaClientError, OffsetCommitFailed, PartitionsAssigned,
    RebalanceFailed, RevocationCommitUnfinished,
};
use crate::settings::{ClientKind, Settings};

/// Longest a `poll` blocks when nothing arrives: bounds how late a punctuation or commit runs.
const POLL_TIMEOUT: Duration = Duration::from_millis(20);
/// How often every task is processed and punctuated without a new record.
const PUNCTUATE_INTERVAL: Duration = Duration::from_millis(50);
/// Shortest time between punctuations woken by a due deadline: bounds the watermark requests
/// while a deadline is due but the task is not confirmed caught up.
const DUE_PUNCTUATE_SPACING: Duration = Duration::from_millis(5);
/// How often the state-summarising gauges are recomputed (a scan of every run held).
const METRICS_REFRESH_INTERVAL: Duration = Duration::from_secs(5);
/// Longest a shutdown polls after unsubscribing, for the revocation and the LeaveGroup.
const LEAVE_WAIT: Duration = Duration::from_secs(2);
/// Shortest such polling (the LeaveGroup request is sent after the revocation completes).
const LEAVE_SEND: Duration = Duration::from_millis(200);
/// Records taken from the consumer per pass of the loop (one lock, one processing pass per
/// task). Cost: as many librdkafka messages held at once.
pub const POLL_BATCH_RECORDS_MAX: usize = 512;

/// A stream thread's consumer context: client errors into metrics, rebalances into its tasks.
pub struct Ctx {
    shared: Arc<Shared>,
    thread: usize,
}

impl Ctx {
    fn thread(&self) -> &StreamThread {
        &self.shared.threads[self.thread]
    }
}

impl ClientContext for Ctx {
    fn error(&self, error: KafkaError, reason: &str) {
        KafkaClientError::of(&error, reason).emit(&self.shared.metrics);
    }
}

fn partitions_by_topic(list: &TopicPartitionList, topic: &str) -> BTreeSet<i32> {
    list.elements()
        .iter()
        .filter(|e| e.topic() == topic)
        .map(|e| e.partition())
        .collect()
}

impl ConsumerContext for Ctx {
    /// The result of an asynchronous offset commit (`commit.rs` step 5): a failure is retried
    /// by the next commit.
    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, _: &TopicPartitionList) {
        if let Err(e) = result {
            OffsetCommitFailed {
                error: &e.to_string(),
            }
            .emit(&self.shared.metrics);
        }
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.thread().generation.fetch_add(1, Ordering::SeqCst);
        if let Rebalance::Revoke(list) = rebalance {
            let topics = &self.shared.settings.topics;
            let mut revoked = partitions_by_topic(list, &topics.activation);
            revoked.extend(partitions_by_topic(list, &topics.ack));
            self.thread().ready.store(false, Ordering::SeqCst);
            self.shared.note_state();
            let mut tasks = self.thread().tasks();
            tasks.assigned = false;
            let reason = if consumer.assignment_lost() {
                // Kafka Streams' "lost" partitions: no commit (another member may own them and
                // have processed past us already); the tasks close as they are.
                AssignmentLost {
                    thread: self.thread,
                    partitions: &tasks.partitions(),
                }
                .emit(&self.shared.metrics);
                tasks.abandon_transaction();
                "lost"
            } else {
                match tasks.commit(consumer, COMMIT_TIMEOUT) {
                    Ok(Committed::Done) => {}
                    Ok(Committed::Pending | Committed::Aborted) => {
                        RevocationCommitUnfinished {
                            thread: self.thread,
                        }
                        .emit(&self.shared.metrics);
                        tasks.abandon_transaction();
                    }
                    Err(e) => {
                        if let Err(e) = tasks.recover_from_fencing(consumer, e) {
                            CommitFailed { error: &e }.emit(&self.shared.metrics);
                            self.shared
                                .set_fatal(format!("commit on revocation failed: {e:#}"));
                        }
                    }
                }
                "revoked"
            };
            tasks.close_tasks(&revoked, reason);
            PartitionsAssigned {
                thread: self.thread,
                partitions: &tasks.partitions(),
            }
            .emit(&self.shared.metrics);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.thread().generation.fetch_add(1, Ordering::SeqCst);
        self.shared.note_state();
        match rebalance {
            Rebalance::Assign(list) => {
                let topics = &self.shared.settings.topics;
                let activation = partitions_by_topic(list, &topics.activation);
                let ack = partitions_by_topic(list, &topics.ack);
                if activation != ack {
                    self.shared.set_fatal(format!(
                        "assignment is not co-partitioned: {} partitions {activation:?} but {} partitions {ack:?}; \
                         every instance must use partition.assignment.strategy=range and subscribe to both topics",
                        topics.activation, topics.ack
                    ));
                    return;
                }
                // Paused until the task's store is restored (the processing loop starts it).
                if let Err(e) = consumer.pause(list) {
                    self.shared
                        .set_fatal(format!("cannot pause newly assigned partitions: {e}"));
                    return;
                }
                let mut tasks = self.thread().tasks();
                tasks.assigned = true;
                tasks.add_assigned(activation);
                PartitionsAssigned {
                    thread: self.thread,
                    partitions: &tasks.partitions(),
                }
                .emit(&self.shared.metrics);
            }
            Rebalance::Error(e) => RebalanceFailed { error: e }.emit(&self.shared.metrics),
            Rebalance::Revoke(_) => {}
        }
    }
}

/// The consumer of the input topics: the group, range assignment (co-partitioning), offsets
/// committed only by the commit protocol.
pub fn consumer_config(settings: &Settings, thread: usize) -> rdkafka::ClientConfig {
    let mut config = settings.client_config(ClientKind::Consumer, &format!("t{thread}-consumer"));
    // librdkafka prefetches up to queued.max.messages.kbytes per partition (default 64 MiB)
    // into one queue for all partitions: a small prefetch keeps a catching-up instance small and
    // keeps a lagging partition's records from queueing behind megabytes of the others'
    // (max_task_idle_ms). A full prefetch postpones the partition's next fetch by
    // fetch.queue.backoff.ms (default 1 s, which starves a fast consumer); 10 ms refills it.
    for (key, value) in [
        ("queued.max.messages.kbytes", "4096"),
        ("fetch.queue.backoff.ms", "10"),
    ] {
        if !settings.kafka.properties.contains_key(key) {
            config.set(key, value);
        }
    }
    config
        .set("group.id", &settings.runtime.application_id)
        .set("partition.assignment.strategy", "range")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "false");
    if settings.runtime.static_membership {
        config.set("group.instance.id", settings.runtime.member_id(thread));
    }
    // The group learns where this instance answers queries from its members' client ids.
    let client_id = config.get("client.id").unwrap_or_default().to_string();
    config.set(
        "client.id",
        super::owners::advertising_client_id(&client_id, &settings.http.advertised()),
    );
    config
}

/// Runs stream thread `index` until shutdown or a fatal error, then commits, closes its tasks
/// and leaves the group.
pub fn run(shared: &Arc<Shared>, index: usize) -> anyhow::Result<()> {
    let consumer: BaseConsumer<Ctx> = consumer_config(&shared.settings, index)
        .create_with_context(Ctx {
            shared: shared.clone(),
            thread: index,
        })
        .context("cannot create the consumer")?;
    let topics = &shared.settings.topics;
    consumer
        .subscribe(&[&topics.activation, &topics.ack])
        .context("cannot subscribe")?;
    let mut stream_thread = StreamThreadLoop {
        shared,
        thread: &shared.threads[index],
        consumer: &consumer,
        batch: Vec::with_capacity(POLL_BATCH_RECORDS_MAX),
        errors: Vec::new(),
        touched: BTreeSet::new(),
        poll_clock: Duration::ZERO,
        last_punctuate: Instant::now(),
        last_refresh: Instant::now(),
        last_probe: None,
        wall_fire_ms: None,
    };
    let result = loop {
        if shared.shutdown.load(Ordering::SeqCst) {
            break Ok(());
        }
        if let Err(e) = stream_thread.run_once() {
            break Err(e);
        }
    };
    let thread = stream_thread.thread;
    drop(stream_thread);
    thread.ready.store(false, Ordering::SeqCst);
    if result.is_ok() {
        let mut tasks = thread.tasks();
        let committed = tasks
            .commit(&consumer, COMMIT_TIMEOUT)
            .inspect_err(|e| CommitFailed { error: e }.emit(&shared.metrics))?;
        if committed != Committed::Done {
            let e = anyhow::anyhow!(
                "the last commit was not acknowledged within {COMMIT_TIMEOUT:?}; a restart \
                 recovers from the changelog"
            );
            CommitFailed { error: &e }.emit(&shared.metrics);
            return Err(e);
        }
        let all: BTreeSet<i32> = tasks.partitions().into_iter().collect();
        tasks.close_tasks(&all, "shutdown");
        drop(tasks);
        leave_group(&consumer);
    }
    drop(consumer);
    if result.is_ok() {
        tracing::info!(thread = index, "stream thread stopped cleanly");
    }
    result
}

/// Leaves the group so the partitions move at once, static member or not: librdkafka sends no
/// LeaveGroup for a static member that closes (KIP-345), but does for one that unsubscribes.
/// The revocation callback runs in the polls (nothing left to commit).
fn leave_group(consumer: &BaseConsumer<Ctx>) {
    consumer.unsubscribe();
    let started = Instant::now();
    while started.elapsed() < LEAVE_WAIT {
        let _ = consumer.poll(Duration::from_millis(50));
        if consumer.assignment().is_ok_and(|a| a.count() == 0) && started.elapsed() >= LEAVE_SEND {
            break;
        }
    }
}

/// The loop's own state between passes.
struct StreamThreadLoop<'a> {
    shared: &'a Shared,
    thread: &'a StreamThread,
    consumer: &'a BaseConsumer<Ctx>,
    batch: Vec<BorrowedMessage<'a>>,
    errors: Vec<KafkaError>,
    /// Tasks that got records (or, at a punctuation, every task): processed this pass.
    touched: BTreeSet<i32>,
    /// Time spent waiting in `poll` (see `TaskManager::poll_clock_ms`).
    poll_clock: Duration,
    last_punctuate: Instant,
    last_refresh: Instant,
    /// When the brokers were last probed during an outage.
    last_probe: Option<Instant>,
    /// When the earliest deadline of any task can fire by the wall clock (docs/semantics.md §4): the loop
    /// punctuates then, so a finding waits `lateness_ms`, not also a punctuation interval.
    wall_fire_ms: Option<Millis>,
}

impl StreamThreadLoop<'_> {
    /// One pass: poll → (while the brokers are down, probe them; abort a refused transaction)
    /// → start new tasks → add records to tasks → process → punctuate → maybe commit →
    /// refresh metrics → publish readiness.
    fn run_once(&mut self) -> anyhow::Result<()> {
        let polled = self.poll();
        let tick = Instant::now();
        let now = wall_ms();
        let mut tasks = self.thread.tasks();
        let brokers = &self.shared.metrics.brokers;
        if !brokers.is_down() {
            // No record can arrive while no broker answers: a lagging partition's wait
            // (`max_task_idle_ms`) does not run out in an outage.
            self.poll_clock += polled;
        }
        tasks.poll_clock_ms = self.poll_clock.as_millis() as Millis;
        if let Some(fatal) = self.shared.fatal() {
            bail!(fatal);
        }
        self.probe_brokers(&tasks, tick);
        if let Err(e) = self.process(&mut tasks, tick, now) {
            self.touched.clear();
            tasks.recover_from_fencing(self.consumer, e)?;
        }
        let grace = Duration::from_millis(self.shared.settings.runtime.outage_grace_ms);
        // Until the brokers are settled nothing fires by the wall clock: the regular
        // punctuations find the deadlines once they are.
        self.wall_fire_ms = brokers
            .settled(grace)
            .then(|| tasks.next_wall_clock_fire_ms())
            .flatten();
        if tick.duration_since(self.last_refresh) >= METRICS_REFRESH_INTERVAL {
            self.last_refresh = tick;
            tasks.refresh_metrics(self.consumer);
        }
        self.thread
            .ready
            .store(tasks.assigned && tasks.starting() == 0, Ordering::SeqCst);
        self.shared.note_state();
        Ok(())
    }

    /// The passes's work on the tasks: abort a refused transaction → start new tasks → add
    /// records to tasks → process → punctuate → maybe commit.
    fn process(
        &mut self,
        tasks: &mut TaskManager,
        tick: Instant,
        now: Millis,
    ) -> anyhow::Result<()> {
        tasks.abort_refused_transaction()?;
        self.start_new_tasks(tasks)?;
        self.report_client_errors()?;
        self.add_records_to_tasks(tasks)?;
        self.maybe_punctuate(tasks, tick, now);
        while let Some(p) = self.touched.pop_first() {
            tasks.process_task(self.consumer, p, now)?;
        }
        tasks.poll_producer();
        self.maybe_commit(tasks, tick)
    }

    /// Takes up to `POLL_BATCH_RECORDS_MAX` records without the task manager's lock (rebalance
    /// callbacks take it); records polled across a rebalance are dropped (their tasks were
    /// closed; the new tasks read from the committed offsets). Returns the time spent waiting.
    fn poll(&mut self) -> Duration {
        let polling = Instant::now();
        let generation = self.thread.generation.load(Ordering::SeqCst);
        // A deadline due but not fired (its task not confirmed caught up yet) is looked at again
        // every DUE_PUNCTUATE_SPACING, not in a busy loop.
        let mut timeout = match self.wall_fire_ms {
            Some(at) => POLL_TIMEOUT.min(
                Duration::from_millis(at.saturating_sub(wall_ms()).max(0) as u64)
                    .max(DUE_PUNCTUATE_SPACING),
            ),
            None => POLL_TIMEOUT,
        };
        while self.batch.len() < POLL_BATCH_RECORDS_MAX {
            match self.consumer.poll(timeout) {
                Some(Ok(m)) => self.batch.push(m),
                Some(Err(e)) => self.errors.push(e),
                None => break,
            }
            timeout = Duration::ZERO;
        }
        if self.thread.generation.load(Ordering::SeqCst) != generation {
            self.batch.clear();
        }
        polling.elapsed()
    }

    /// Restores and starts the tasks the last assignment (or a reset) created, once the
    /// brokers answer and the producer has nothing a restore must wait for.
    fn start_new_tasks(&self, tasks: &mut TaskManager) -> anyhow::Result<()> {
        if tasks.starting() > 0 {
            self.thread.ready.store(false, Ordering::SeqCst);
            if tasks.may_start_tasks() {
                tasks
                    .start_tasks(self.consumer)
                    .context("cannot start a task")?;
            }
        }
        Ok(())
    }

    /// While the brokers are down, asks one for metadata every `PROBE_INTERVAL` (through the
    /// producer's client, whose connection has no long-poll fetch in flight): an answer ends
    /// the outage. Records fetched meanwhile prove nothing (they may have been prefetched).
    fn probe_brokers(&mut self, tasks: &TaskManager, tick: Instant) {
        let brokers = &self.shared.metrics.brokers;
        if !brokers.is_down() || self.last_probe.is_some_and(|at| tick - at < PROBE_INTERVAL) {
            return;
        }
        self.last_probe = Some(tick);
        let topic = self.shared.settings.topics.activation.as_str();
        if tasks
            .collector_client()
            .fetch_metadata(Some(topic), PROBE_TIMEOUT)
            .is_ok()
        {
            brokers.mark_up();
        }
    }

    /// Client errors (all brokers down, ...) come through `poll` as well as the context.
    fn report_client_errors(&mut self) -> anyhow::Result<()> {
        for e in self.errors.drain(..) {
            KafkaClientError::of(&e, &e.to_string()).emit(&self.shared.metrics);
            if matches!(e, KafkaError::MessageConsumptionFatal(_)) {
                bail!("fatal consumer error: {e}");
            }
        }
        Ok(())
    }

    fn add_records_to_tasks(&mut self, tasks: &mut TaskManager) -> anyhow::Result<()> {
        for m in self.batch.drain(..) {
            if let Some(p) = tasks.add_record(self.consumer, &m)? {
                self.touched.insert(p);
            }
        }
        Ok(())
    }

    /// Every `PUNCTUATE_INTERVAL`, or as soon as a deadline can fire by the wall clock, every
    /// task is processed (its waits run out; wall-clock stream time when a deadline is due).
    fn maybe_punctuate(&mut self, tasks: &TaskManager, tick: Instant, now: Millis) {
        let since = tick.duration_since(self.last_punctuate);
        let due = self.wall_fire_ms.is_some_and(|at| now >= at) && since >= DUE_PUNCTUATE_SPACING;
        if since >= PUNCTUATE_INTERVAL || due {
            self.last_punctuate = tick;
            self.touched.extend(tasks.running().map(|t| t.partition()));
        }
    }

    /// Commits every `commit_interval_ms` (sooner once `CHANGED_RUNS_PER_COMMIT_MAX` runs
    /// changed), and goes on with a commit the broker has not
    /// acknowledged yet at every pass; nothing while the brokers are down (nothing could be
    /// acknowledged, and the loop must keep polling).
    fn maybe_commit(&self, tasks: &mut TaskManager, tick: Instant) -> anyhow::Result<()> {
        if self.shared.metrics.brokers.is_down() {
            return Ok(());
        }
        let interval = Duration::from_millis(self.shared.settings.runtime.commit_interval_ms);
        if tasks.commit_under_way()
            || tick.duration_since(tasks.last_commit) >= interval
            || tasks.changed_runs() >= CHANGED_RUNS_PER_COMMIT_MAX
        {
            tasks
                .commit(self.consumer, COMMIT_WAIT)
                .inspect_err(|e| CommitFailed { error: e }.emit(&self.shared.metrics))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_membership_makes_the_member_id_the_group_instance_id() {
        let check =
            |static_membership: bool, instance_id: &str, thread: usize, expected: Option<&str>| {
                let mut settings = Settings::default();
                settings.runtime.static_membership = static_membership;
                settings.runtime.instance_id = instance_id.into();
                let config = consumer_config(&settings, thread);
                assert_eq!(config.get("group.instance.id"), expected);
                assert_eq!(config.get("group.id"), Some("ackwatch"));
                assert_eq!(config.get("partition.assignment.strategy"), Some("range"));
            };
        check(false, "ackwatch-0", 0, None);
        check(false, "ackwatch-0", 1, None);
        check(true, "ackwatch-0", 0, Some("ackwatch-0"));
        check(true, "ackwatch-2", 0, Some("ackwatch-2"));
        // Other stream threads of one instance are other members, with names of their own.
        check(true, "ackwatch-2", 1, Some("ackwatch-2-t1"));
        check(true, "ackwatch-2", 3, Some("ackwatch-2-t3"));
    }
}
