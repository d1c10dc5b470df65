//! Starting the tasks of newly assigned partitions, as steps: open the store, restore it from
//! the changelog, load it into the engine, compute where processing starts, then resume the
//! partitions (paused since the assignment) and seek them there.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use ackwatch_state::{codec, Opened, StoreOptions, TaskStore};
use ackwatch_topology::stream_task::StreamTask;
use ackwatch_topology::{Millis, PerSide, Side, Task};
use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::changelog::{self, RestoreStats, Restored};
use super::stalls::Progress;
use super::stream_thread::Ctx;
use super::task::{AssignedTask, LiveTask, Offsets, TaskState};
use super::task_manager::TaskManager;
use crate::events::{
    StoreLockedWaiting, StoreRebuilt, StoreWiped, TaskRestored, TaskStartDeferred,
    UnfinishedCommitLeftOut,
};
use crate::settings::ClientKind;

/// A store loaded into the engine (task start step 3).
pub(super) struct Loaded {
    engine: Task,
    /// The input offsets the stored state reflects (its last commit marker).
    reflected: Option<PerSide<i64>>,
    /// Runs read from the store, and how many of them were evicted again at once.
    runs: usize,
    evicted: usize,
}

/// Longest a task start waits for its store's lock (held by a stream thread of this process
/// that has not closed the task yet, or by another process: then the start fails).
pub const STORE_LOCK_WAIT: Duration = Duration::from_secs(30);
const STORE_LOCK_RETRY: Duration = Duration::from_millis(200);
/// Longest a metadata or offsets request at task start may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long after a task start the broker did not answer the next start is tried.
const START_RETRY_SPACING: Duration = Duration::from_secs(1);

/// Whether a task start failed because a Kafka request failed (the broker did not answer, a
/// leader moved), rather than for its store or its state: the former is tried again.
fn broker_did_not_answer(error: &anyhow::Error) -> bool {
    error
        .chain()
        .any(|e| e.downcast_ref::<rdkafka::error::KafkaError>().is_some())
}

impl TaskManager {
    /// Restores and starts every task still `Created` (their partitions were paused at
    /// assignment), one after the other.
    pub fn start_tasks(&mut self, consumer: &BaseConsumer<Ctx>) -> anyhow::Result<()> {
        let created: Vec<i32> = self
            .tasks
            .iter()
            .filter(|(_, t)| matches!(t.state(), TaskState::Created))
            .map(|(p, _)| *p)
            .collect();
        for (i, partition) in created.iter().enumerate() {
            self.metrics
                .restoring_tasks
                .set(self.thread, (created.len() - i) as i64);
            let task = self.tasks.get_mut(partition).expect("listed");
            task.transition(TaskState::Restoring);
            let live = match self.start_task(consumer, *partition) {
                Ok(live) => live,
                Err(e) if broker_did_not_answer(&e) => {
                    TaskStartDeferred {
                        partition: *partition,
                        error: &e,
                    }
                    .emit(&self.metrics);
                    let task = self.tasks.get_mut(partition).expect("listed");
                    task.transition(TaskState::Closed);
                    *task = AssignedTask::new(*partition);
                    self.start_retry_at = Some(Instant::now() + START_RETRY_SPACING);
                    break;
                }
                Err(e) => return Err(e),
            };
            let task = self.tasks.get_mut(partition).expect("listed");
            task.transition(TaskState::Running(Box::new(live)));
        }
        self.metrics.restoring_tasks.set(self.thread, 0);
        Ok(())
    }

    /// Whether the tasks still `Created` may start now: the brokers answer, no earlier start
    /// failed less than `START_RETRY_SPACING` ago, and the producer has nothing a restore
    /// must wait for (`RecordCollector::can_start_tasks`).
    pub fn may_start_tasks(&mut self) -> bool {
        if self.metrics.brokers.is_down()
            || self.start_retry_at.is_some_and(|at| Instant::now() < at)
        {
            return false;
        }
        self.start_retry_at = None;
        self.collector.can_start_tasks()
    }

    fn start_task(
        &mut self,
        consumer: &BaseConsumer<Ctx>,
        partition: i32,
    ) -> anyhow::Result<LiveTask> {
        let store = self.open_store(partition)?;
        let restored = self.restore_store(partition, store)?;
        let Loaded {
            engine, reflected, ..
        } = restored.loaded;
        let (start, committed) = self.start_offsets(consumer, partition, reflected)?;
        self.resume_and_seek(consumer, partition, start)?;
        Ok(LiveTask {
            core: StreamTask::new(
                partition,
                engine,
                self.settings.runtime.max_task_idle_ms as Millis,
            ),
            store: restored.store,
            offsets: Offsets {
                fetched_next: start,
                processed_next: start,
                committed_next: committed,
            },
            paused: PerSide::both(false),
            confirmations: Default::default(),
            progress: PerSide::from_fn(|side| Progress::new(start[side], Instant::now())),
            lag: Default::default(),
            pending_store: Vec::new(),
            settled_in_pending_store: Vec::new(),
            seen_limit_cut: Default::default(),
            seen_idle_exceeded: 0,
            seen_clamped: PerSide::default(),
        })
    }

    /// Step 1: the task's local store (a store that cannot be used is wiped, with the reason).
    fn open_store(&self, partition: i32) -> anyhow::Result<TaskStore> {
        let runtime = &self.settings.runtime;
        let (store, opened) = open_store_waiting(
            &runtime.state_dir,
            &runtime.application_id,
            partition,
            STORE_LOCK_WAIT,
        )?;
        if let Opened::Wiped(why) = &opened {
            StoreWiped { partition, why }.emit(&self.metrics);
        }
        Ok(store)
    }

    /// Step 2: the store brought up to the changelog's last complete commit, and loaded into
    /// the engine by step 3 (a store that disagrees with its checkpoint, or cannot be read, is
    /// rebuilt from the beginning).
    fn restore_store(&self, partition: i32, store: TaskStore) -> anyhow::Result<Restored<Loaded>> {
        let config = self
            .settings
            .client_config(ClientKind::Consumer, &format!("t{}-restore", self.thread));
        let remaining = &self.metrics.restore_remaining_records;
        let restored = changelog::restore_and_load(
            &config,
            &self.changelog_topic,
            partition,
            store,
            &StoreOptions::default(),
            &|left| remaining.set(self.thread, left),
            |store, stats| self.load_engine(store, stats),
        )?;
        remaining.set(self.thread, 0);
        if let Some(why) = &restored.stats.full_restore_reason {
            StoreRebuilt { partition, why }.emit(&self.metrics);
        }
        let (stats, store) = (&restored.stats, &restored.store);
        if !stats.unfinished_keys.is_empty() {
            UnfinishedCommitLeftOut {
                partition,
                records: stats.unfinished_keys.len(),
            }
            .emit(&self.metrics);
        }
        self.metrics
            .runs_evicted
            .inc_by(restored.loaded.evicted as u64);
        TaskRestored {
            partition,
            changelog: &self.changelog_topic,
            from_offset: stats.from_offset,
            to_offset: stats.to_offset,
            records: stats.records,
            bytes: stats.bytes,
            runs: restored.loaded.runs,
            duration: stats.duration,
            store: &store.dir().display().to_string(),
        }
        .emit(&self.metrics);
        Ok(restored)
    }

    /// Step 3: the engine loaded from the store run by run, each settled run evicted again as
    /// soon as it is read (the store has it), so a store of a million runs never sits in memory
    /// whole; with the input offsets the stored state reflects (its last commit marker).
    fn load_engine(&self, store: &TaskStore, stats: &RestoreStats) -> anyhow::Result<Loaded> {
        let task = store.load_task()?;
        let mut engine = Task::new(self.settings.policy);
        if let Some(meta) = task.meta {
            engine.restore_meta(meta);
        }
        // Keys of a commit the previous owner did not finish stay in memory: they are written
        // again at the first commit (an evicted one would be written as a tombstone).
        let mut unfinished = BTreeSet::new();
        let mut meta_unfinished = false;
        for key in &stats.unfinished_keys {
            if codec::is_task_key(key) {
                meta_unfinished = true;
            } else {
                unfinished.insert(codec::decode_key(key)?);
            }
        }
        let (mut runs, mut evicted) = (0, 0);
        store.for_each_run(|key, run| {
            runs += 1;
            engine.restore_run(key.clone(), run);
            if !unfinished.contains(&key) {
                evicted += engine.evict_settled([key]);
            }
        })?;
        engine.rewrite_at_next_commit(None, meta_unfinished);
        for key in unfinished {
            engine.rewrite_at_next_commit(Some(key), false);
        }
        Ok(Loaded {
            engine,
            reflected: task.marker.map(|m| m.input_next),
            runs,
            evicted,
        })
    }

    /// Step 4: where processing starts on each side, and what the group has committed: the
    /// committed offset (else the partition's start), or later when the restored state
    /// reflects records after it (the previous owner died between writing its changelog and
    /// committing its offsets; their outputs were acknowledged before the changelog was
    /// written, so they are skipped).
    fn start_offsets(
        &self,
        consumer: &BaseConsumer<Ctx>,
        partition: i32,
        reflected: Option<PerSide<i64>>,
    ) -> anyhow::Result<(PerSide<i64>, PerSide<i64>)> {
        let mut list = TopicPartitionList::new();
        for side in Side::BOTH {
            list.add_partition(self.watermarks.topic(side), partition);
        }
        let committed = consumer
            .committed_offsets(list, REQUEST_TIMEOUT)
            .context("cannot read committed offsets")?;
        let mut start = PerSide::both(0i64);
        for side in Side::BOTH {
            let topic = self.watermarks.topic(side);
            let offset = committed
                .find_partition(topic, partition)
                .and_then(|e| e.offset().to_raw())
                .filter(|o| *o >= 0);
            start[side] = match offset {
                Some(o) => o,
                None => {
                    consumer
                        .fetch_watermarks(topic, partition, REQUEST_TIMEOUT)
                        .context("cannot read watermarks")?
                        .0
                }
            };
        }
        drop(committed);
        let committed_start = start;
        if let Some(reflected) = reflected {
            for side in Side::BOTH {
                start[side] = start[side].max(reflected[side]);
            }
        }
        Ok((start, committed_start))
    }

    /// Step 5: resume, then seek (librdkafka's documented workaround for its issue #2190: a
    /// pause right after an assignment, as in our rebalance callback, can outdate the
    /// assignment's fetch start; a seek after the resume starts the fetch whatever happened
    /// before). Records fetched before the seek are older than its version barrier, never
    /// delivered.
    fn resume_and_seek(
        &self,
        consumer: &BaseConsumer<Ctx>,
        partition: i32,
        start: PerSide<i64>,
    ) -> anyhow::Result<()> {
        let mut list = TopicPartitionList::new();
        for side in Side::BOTH {
            list.add_partition(self.watermarks.topic(side), partition);
        }
        consumer.resume(&list).context("cannot resume partitions")?;
        drop(list);
        for side in Side::BOTH {
            let topic = self.watermarks.topic(side);
            consumer
                .seek(
                    topic,
                    partition,
                    Offset::Offset(start[side]),
                    REQUEST_TIMEOUT,
                )
                .with_context(|| format!("cannot seek {topic}[{partition}] to {}", start[side]))?;
        }
        Ok(())
    }
}

/// Opens a task's store, waiting up to `wait` while it is locked: a partition that moves between
/// two stream threads of this process is opened by the new owner as soon as it is assigned,
/// possibly before the old owner's thread has closed it. Any other failure returns at once.
fn open_store_waiting(
    state_dir: &std::path::Path,
    application_id: &str,
    partition: i32,
    wait: Duration,
) -> anyhow::Result<(TaskStore, Opened)> {
    let started = Instant::now();
    let mut warned = false;
    loop {
        match TaskStore::open(
            state_dir,
            application_id,
            partition,
            &StoreOptions::default(),
        ) {
            Err(e) if e.is::<ackwatch_state::StoreLocked>() && started.elapsed() < wait => {
                if !std::mem::replace(&mut warned, true) {
                    StoreLockedWaiting {
                        partition,
                        error: &e,
                    }
                    .emit();
                }
                std::thread::sleep(STORE_LOCK_RETRY);
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store another thread still holds is opened once released; one held for longer than the
    /// wait fails with `StoreLocked` (and is not wiped).
    #[test]
    fn a_locked_store_is_waited_for_then_refused() {
        let dir = tempfile::tempdir().unwrap();
        let check = |hold: Duration, wait: Duration, opens: bool| {
            let (held, _) = open_store_waiting(dir.path(), "app", 1, wait).unwrap();
            let holder = std::thread::spawn(move || {
                std::thread::sleep(hold);
                drop(held);
            });
            let result = open_store_waiting(dir.path(), "app", 1, wait);
            holder.join().unwrap();
            match result {
                Ok((_, opened)) => {
                    assert!(opens, "opened although held {hold:?} > {wait:?}");
                    assert_eq!(opened, Opened::Existing, "not wiped");
                }
                Err(e) => {
                    assert!(!opens, "not opened after {hold:?} < {wait:?}: {e:#}");
                    assert!(e.is::<ackwatch_state::StoreLocked>(), "{e:#}");
                }
            }
        };
        check(Duration::from_millis(500), Duration::from_secs(10), true);
        check(Duration::from_secs(2), Duration::from_millis(300), false);
    }
}
