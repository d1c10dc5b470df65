//! The worker of one stream thread: its tasks, its producer, and the commit protocol. Driven by
//! that thread's processing loop (`super::processing_loop`) and by its consumer's rebalance
//! callbacks, always on that thread, under the `Mutex` of its [`super::StreamThread`].

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ackwatch_state::codec;
use ackwatch_state::{encode_changes, CommitMarker, StoreOptions, TaskStore};
use ackwatch_topology::partition_group::{side, Buffered, Next};
use ackwatch_topology::time::format_rfc3339_ms;
use ackwatch_topology::{Millis, Outcome, Output, RawRecord, Source, Task};
use anyhow::{bail, Context as _};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};

use super::task::{StreamTask, TASK_BUFFERED_RECORDS_MAX};
use super::Ctx;
use crate::changelog;
use crate::events::{RecordDeadLettered, RunEscalated, TaskClosed, TaskRestored};
use crate::metrics::Metrics;
use crate::settings::{Guarantee, Settings};
use crate::sink::{self, Sink};

/// Longest a commit waits for the broker to acknowledge outputs and changelog records before
/// the process gives up and exits (a restart recovers from the changelog).
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest a watermark request confirming a task is caught up may take (it blocks processing).
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest a task start waits for its store's lock (held by a stream thread of this process
/// that has not closed the task yet, or by another process: then the start fails).
const STORE_LOCK_WAIT: Duration = Duration::from_secs(30);
const STORE_LOCK_RETRY: Duration = Duration::from_millis(200);
/// Longest a metadata or offsets request at task start may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Delivery reports of the output/changelog producer.
pub struct ProducerCtx {
    changelog_topic: String,
    failures: AtomicU64,
    first_failure: Mutex<Option<String>>,
    /// Per changelog partition, the offset after the last record the broker acknowledged.
    changelog_end: Mutex<BTreeMap<i32, i64>>,
    metrics: Arc<Metrics>,
}

/// The producer reports client errors too: while a commit waits for acknowledgements the
/// consumer is not polled, and an outage that starts then must show in the metrics during the
/// wait (up to `COMMIT_TIMEOUT`), not only after it.
impl ClientContext for ProducerCtx {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        crate::events::KafkaClientError::of(&error, reason).emit(&self.metrics);
    }
}

impl ProducerContext for ProducerCtx {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(m) if m.topic() == self.changelog_topic => {
                let mut ends = self.changelog_end.lock().expect("not poisoned");
                let end = ends.entry(m.partition()).or_insert(0);
                *end = (*end).max(m.offset() + 1);
            }
            Ok(_) => {}
            Err((e, m)) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                let mut first = self.first_failure.lock().expect("not poisoned");
                first.get_or_insert_with(|| format!("{}[{}]: {e}", m.topic(), m.partition()));
            }
        }
    }
}

pub struct Worker {
    /// Which stream thread of the instance this is (0-based, `runtime.num_stream_threads`).
    pub thread: usize,
    settings: Settings,
    metrics: Arc<Metrics>,
    topic_names: [String; 2],
    topic_cnames: [CString; 2],
    changelog_topic: String,
    producer: BaseProducer<ProducerCtx>,
    in_transaction: bool,
    pub tasks: BTreeMap<i32, StreamTask>,
    /// Assigned partitions whose tasks are not restored yet.
    pub to_start: BTreeSet<i32>,
    /// This thread's consumer has an assignment (possibly empty): set by the assignment
    /// callback, cleared by the revocation one.
    pub assigned: bool,
    outputs: Vec<Output>,
    pub last_commit: Instant,
    /// Milliseconds this instance has spent waiting in `poll`: the clock that bounds a task's
    /// wait for a lagging partition (`max_task_idle_ms`). Time spent processing other tasks or
    /// committing is not time the lagging partition's records could have arrived, so a busy
    /// catch-up does not run one topic ahead of the other; when idle it runs with the wall clock.
    pub poll_clock_ms: Millis,
    /// Set when an output may change the firing alerts, so the alert loop posts soon (shared
    /// by every stream thread's worker).
    pub alerts_dirty: Arc<std::sync::atomic::AtomicBool>,
    /// `ackwatch_records_total` by side and outcome, looked up once (not per record).
    record_counters: [[prometheus::IntCounter; 6]; 2],
}

/// Outcome labels in the order of `Worker::record_counters`.
const OUTCOMES: [&str; 6] = ["tracked", "ack", "untracked", "duplicate", "invalid", "cut"];

impl Worker {
    /// The worker of stream thread `thread`; `alerts_dirty` is shared by every thread's worker.
    pub fn new(
        settings: Settings,
        metrics: Arc<Metrics>,
        thread: usize,
        alerts_dirty: Arc<std::sync::atomic::AtomicBool>,
    ) -> anyhow::Result<Worker> {
        let changelog_topic = changelog::topic_name(&settings.runtime.application_id);
        let mut config = settings.kafka.client_config();
        config
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("compression.type", "lz4");
        if settings.runtime.processing_guarantee == Guarantee::ExactlyOnceV2 {
            let id = format!(
                "{}-{}",
                settings.runtime.application_id,
                settings.runtime.member_id(thread)
            );
            config.set("transactional.id", id);
            if !settings
                .kafka
                .properties
                .contains_key("transaction.timeout.ms")
            {
                // A crashed instance's open transaction blocks read_committed readers (restores
                // included) until it times out; keep that short.
                config.set("transaction.timeout.ms", "10000");
            }
        }
        let ctx = ProducerCtx {
            changelog_topic: changelog_topic.clone(),
            failures: AtomicU64::new(0),
            first_failure: Mutex::new(None),
            changelog_end: Mutex::new(BTreeMap::new()),
            metrics: Arc::clone(&metrics),
        };
        let producer: BaseProducer<ProducerCtx> = config
            .create_with_context(ctx)
            .context("cannot create the producer")?;
        if settings.runtime.processing_guarantee == Guarantee::ExactlyOnceV2 {
            producer
                .init_transactions(REQUEST_TIMEOUT)
                .context("cannot initialise transactions (exactly_once_v2)")?;
        }
        let topic_names = [
            settings.topics.activation.clone(),
            settings.topics.ack.clone(),
        ];
        let topic_cnames = [
            CString::new(topic_names[0].clone()).context("topic name with NUL")?,
            CString::new(topic_names[1].clone()).context("topic name with NUL")?,
        ];
        let record_counters = [0, 1]
            .map(|s| OUTCOMES.map(|o| metrics.records.with_label_values(&[&topic_names[s], o])));
        Ok(Worker {
            thread,
            record_counters,
            settings,
            metrics,
            topic_names,
            topic_cnames,
            changelog_topic,
            producer,
            in_transaction: false,
            tasks: BTreeMap::new(),
            to_start: BTreeSet::new(),
            assigned: false,
            outputs: Vec::new(),
            last_commit: Instant::now(),
            poll_clock_ms: 0,
            alerts_dirty,
        })
    }

    fn eos(&self) -> bool {
        self.settings.runtime.processing_guarantee == Guarantee::ExactlyOnceV2
    }

    pub fn side_of(&self, topic: &str) -> Option<usize> {
        self.topic_names.iter().position(|t| t == topic)
    }

    /// Restores and starts the tasks of newly assigned partitions (their partitions were paused
    /// at assignment), then seeks each partition to its committed offset and resumes it.
    pub fn start_tasks(&mut self, consumer: &BaseConsumer<Ctx>) -> anyhow::Result<()> {
        while let Some(&partition) = self.to_start.first() {
            self.metrics
                .restoring_tasks
                .set(self.thread, self.to_start.len() as i64);
            let task = self.start_task(consumer, partition)?;
            self.to_start.remove(&partition);
            self.tasks.insert(partition, task);
        }
        self.metrics.restoring_tasks.set(self.thread, 0);
        Ok(())
    }

    fn start_task(
        &mut self,
        consumer: &BaseConsumer<Ctx>,
        partition: i32,
    ) -> anyhow::Result<StreamTask> {
        let runtime = &self.settings.runtime;
        let (store, opened) = open_store_waiting(
            &runtime.state_dir,
            &runtime.application_id,
            partition,
            STORE_LOCK_WAIT,
        )?;
        if let ackwatch_state::Opened::Wiped(why) = &opened {
            tracing::warn!(
                partition,
                why = why.as_str(),
                "local store unusable; wiped, restoring from the changelog"
            );
        }
        let config = self.settings.kafka.client_config();
        let remaining = &self.metrics.restore_remaining_records;
        let stats = changelog::restore_with_progress(
            &config,
            &self.changelog_topic,
            partition,
            &store,
            &|left| remaining.set(self.thread, left),
        )?;
        remaining.set(self.thread, 0);
        let contents = store.load()?;
        let mut engine = Task::new(self.settings.policy);
        if let Some(meta) = contents.meta {
            engine.restore_meta(meta);
        }
        let runs = contents.runs.len();
        for (key, run) in contents.runs {
            engine.restore_run(key, run);
        }
        // Keys of a commit the previous owner did not finish: written again at the first commit.
        for key in &stats.unfinished_keys {
            if codec::is_task_key(key) {
                engine.rewrite_at_next_commit(None, true);
            } else {
                engine.rewrite_at_next_commit(Some(codec::decode_key(key)?), false);
            }
        }
        if !stats.unfinished_keys.is_empty() {
            tracing::warn!(
                partition,
                records = stats.unfinished_keys.len(),
                "the changelog ends with a commit its writer did not finish; it was left out"
            );
        }
        let reflected = contents.marker.map(|m| m.input_next);
        TaskRestored {
            partition,
            changelog: &self.changelog_topic,
            from_offset: stats.from_offset,
            to_offset: stats.to_offset,
            records: stats.records,
            bytes: stats.bytes,
            runs,
            duration: stats.duration,
            store: &store.dir().display().to_string(),
        }
        .emit(&self.metrics);

        // Where processing starts: the group's committed offset, else the partition's start.
        let mut start = [0i64; 2];
        let mut committed_start = [0i64; 2];
        let mut list = TopicPartitionList::new();
        for topic in &self.topic_names {
            list.add_partition(topic, partition);
        }
        let committed = consumer
            .committed_offsets(list, REQUEST_TIMEOUT)
            .context("cannot read committed offsets")?;
        for (s, topic) in self.topic_names.iter().enumerate() {
            let offset = committed
                .find_partition(topic, partition)
                .and_then(|e| e.offset().to_raw())
                .filter(|o| *o >= 0);
            start[s] = match offset {
                Some(o) => o,
                None => {
                    consumer
                        .fetch_watermarks(topic, partition, REQUEST_TIMEOUT)
                        .context("cannot read watermarks")?
                        .0
                }
            };
            // The restored state may reflect records after the committed offset (the previous
            // owner died between writing its changelog and committing its offsets); their
            // outputs were acknowledged before the changelog was written, so they are skipped.
            committed_start[s] = start[s];
            if let Some(reflected) = reflected {
                start[s] = start[s].max(reflected[s]);
            }
        }
        drop(committed);
        // Resume, then seek (librdkafka's documented workaround for its issue #2190: a pause
        // right after an assignment, as in our rebalance callback, can outdate the assignment's
        // fetch start; a seek after the resume starts the fetch whatever happened before).
        // Records fetched before the seek are older than its version barrier, never delivered.
        let mut list = TopicPartitionList::new();
        for topic in &self.topic_names {
            list.add_partition(topic, partition);
        }
        consumer.resume(&list).context("cannot resume partitions")?;
        drop(list);
        for (s, topic) in self.topic_names.iter().enumerate() {
            consumer
                .seek(topic, partition, Offset::Offset(start[s]), REQUEST_TIMEOUT)
                .with_context(|| format!("cannot seek {topic}[{partition}] to {}", start[s]))?;
        }
        let mut task = StreamTask::new(
            partition,
            engine,
            store,
            start,
            self.settings.runtime.max_task_idle_ms as Millis,
        );
        task.committed_next = committed_start;
        Ok(task)
    }

    /// Closes the tasks of `partitions` (after a commit); their buffered records are dropped
    /// and will be read again by the partitions' next owner from the committed offsets.
    pub fn close_tasks(&mut self, partitions: &BTreeSet<i32>, reason: &'static str) {
        for p in partitions {
            self.to_start.remove(p);
            if self.tasks.remove(p).is_some() {
                TaskClosed {
                    partition: *p,
                    reason,
                }
                .emit(&self.metrics);
            }
        }
    }

    /// Buffers one fetched record in its task; returns the task's partition when it took it.
    /// The caller processes the tasks it buffered into (`process_task`) after a batch.
    pub fn buffer(
        &mut self,
        consumer: &BaseConsumer<Ctx>,
        message: &BorrowedMessage<'_>,
    ) -> anyhow::Result<Option<i32>> {
        let Some(s) = self.side_of(message.topic()) else {
            return Ok(None);
        };
        let partition = message.partition();
        let Some(task) = self.tasks.get_mut(&partition) else {
            // A record of a partition that is not running (closed, or paused before its start):
            // its task starts from the committed offset, so nothing is skipped.
            return Ok(None);
        };
        if message.offset() < task.fetched_next[s] {
            return Ok(None); // fetched before a seek: already buffered or processed
        }
        task.fetched_next[s] = message.offset() + 1;
        let source = if s == 0 {
            Source::Activation
        } else {
            Source::Ack
        };
        let timestamp_ms = message.timestamp().to_millis();
        task.group.push(
            source,
            timestamp_ms,
            Buffered {
                offset: message.offset(),
                timestamp_ms,
                key: message.key().map(Into::into),
                value: message.payload().map(Into::into),
            },
        );
        task.buffered[s] += 1;
        if task.buffered[s] > TASK_BUFFERED_RECORDS_MAX && !task.paused[s] {
            task.paused[s] = true;
            self.set_paused(consumer, s, partition, true)?;
        }
        Ok(Some(partition))
    }

    fn set_paused(
        &self,
        consumer: &BaseConsumer<Ctx>,
        s: usize,
        partition: i32,
        pause: bool,
    ) -> anyhow::Result<()> {
        let mut list = TopicPartitionList::new();
        list.add_partition(&self.topic_names[s], partition);
        if pause {
            consumer.pause(&list)?;
            self.metrics.buffer_paused_partitions.inc();
        } else {
            consumer.resume(&list)?;
            self.metrics.buffer_paused_partitions.dec();
        }
        Ok(())
    }

    /// The high watermark of side `s` of `partition` as the client last saw it (no request).
    fn cached_high_watermark(
        &self,
        consumer: &BaseConsumer<Ctx>,
        s: usize,
        partition: i32,
    ) -> Option<i64> {
        let (mut low, mut high) = (-1i64, -1i64);
        // SAFETY: a valid client pointer and a NUL-terminated topic name; librdkafka only reads
        // its cached watermarks and writes the two out-parameters.
        let err = unsafe {
            rdkafka::bindings::rd_kafka_get_watermark_offsets(
                consumer.client().native_ptr(),
                self.topic_cnames[s].as_ptr(),
                partition,
                &mut low,
                &mut high,
            )
        };
        (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
            .then_some(high)
    }

    /// Whether side `s` of the task has been fetched up to its high watermark.
    fn caught_up(&self, consumer: &BaseConsumer<Ctx>, task: &StreamTask, s: usize) -> bool {
        self.cached_high_watermark(consumer, s, task.partition)
            .is_some_and(|high| task.fetched_next[s] >= high)
    }

    /// Processes what the task's partition group releases, then (caught up on both sides)
    /// lets stream time follow the wall clock minus `lateness_ms` (SPEC §4).
    pub fn process_task(
        &mut self,
        consumer: &BaseConsumer<Ctx>,
        partition: i32,
        now_ms: Millis,
    ) -> anyhow::Result<()> {
        let Some(mut task) = self.tasks.remove(&partition) else {
            return Ok(());
        };
        task.group.hold_after = Some(now_ms - self.settings.runtime.lateness_ms as Millis);
        let result = self.drain(consumer, &mut task, now_ms);
        let to = now_ms - self.settings.runtime.lateness_ms as Millis;
        // Records held by the live merge are all newer than `to` (that is what held means), so
        // they cannot pass a deadline before `to`: punctuate past them rather than wait for
        // their release, which would delay wall-clock findings by up to `lateness_ms` more.
        if result.is_ok()
            && task.engine.next_due().is_some_and(|due| due < to)
            && task.group.all_after(to)
            && self.confirmed_caught_up(consumer, &task)
        {
            task.engine.punctuate(to, &mut self.outputs);
        }
        self.tasks.insert(partition, task);
        result?;
        self.emit_outputs(now_ms)
    }

    /// Whether both sides of the task have been fetched to their high watermarks: first by the
    /// client's cached watermarks (no request), then, since a cached watermark can be stale
    /// (a slow fetch, a busy broker) and wall-clock stream time would then pass deadlines of
    /// records already on the broker, confirmed by asking the broker. Only asked when a
    /// deadline is about to fire by the wall clock; a failed request means "not caught up".
    fn confirmed_caught_up(&self, consumer: &BaseConsumer<Ctx>, task: &StreamTask) -> bool {
        if !(self.caught_up(consumer, task, 0) && self.caught_up(consumer, task, 1)) {
            return false;
        }
        // Asked through the producer's client: the broker answers a connection's requests in
        // order, and the consumer's connection usually has a long-poll fetch in flight
        // (`fetch.wait.max.ms`, 500 ms), which held each confirmation for up to that long.
        (0..2).all(|s| {
            self.producer
                .client()
                .fetch_watermarks(&self.topic_names[s], task.partition, WATERMARK_TIMEOUT)
                .is_ok_and(|(_, high)| task.fetched_next[s] >= high)
        })
    }

    fn drain(
        &mut self,
        consumer: &BaseConsumer<Ctx>,
        task: &mut StreamTask,
        now_ms: Millis,
    ) -> anyhow::Result<()> {
        loop {
            let (hwm_ok, fetched_next) = (
                |s: usize| self.cached_high_watermark(consumer, s, task.partition),
                task.fetched_next,
            );
            let next = task.group.next_with(self.poll_clock_ms, |s| {
                hwm_ok(s).is_some_and(|high| fetched_next[s] >= high)
            });
            let Next::Record(source, record) = next else {
                break;
            };
            let s = side(source);
            task.buffered[s] -= 1;
            let raw = record.as_raw(source, task.partition);
            let outcome = task.engine.process(&raw, &mut self.outputs);
            let label = match &outcome {
                Outcome::Tracked => 0,
                Outcome::Ack => 1,
                Outcome::Untracked => 2,
                Outcome::Duplicate => 3,
                Outcome::Invalid(_) => 4,
                Outcome::Cut => 5,
                Outcome::NeedsRun(_) => {
                    panic!("invariant: the live runtime never evicts runs, so no run needs loading")
                }
            };
            self.record_counters[s][label].inc();
            if let Outcome::Invalid(invalid) = outcome {
                self.dead_letter(&invalid, &raw, s)?;
            }
            task.processed_next[s] = record.offset + 1;
            if !self.outputs.is_empty() {
                self.emit_outputs(now_ms)?;
            }
            if task.paused[s] && task.buffered[s] <= TASK_BUFFERED_RECORDS_MAX / 2 {
                task.paused[s] = false;
                self.set_paused(consumer, s, task.partition, false)?;
            }
        }
        Ok(())
    }

    fn dead_letter(
        &mut self,
        invalid: &ackwatch_topology::decode::Invalid,
        raw: &RawRecord<'_>,
        s: usize,
    ) -> anyhow::Result<()> {
        let value = raw.value.unwrap_or_default();
        let origin = sink::Origin {
            topic: &self.topic_names[s],
            partition: raw.partition,
            offset: raw.offset,
        };
        let mut headers = OwnedHeaders::new();
        for (name, value) in sink::dead_letter_headers(invalid, origin, value.len()) {
            headers = headers.insert(Header {
                key: name,
                value: Some(value.as_bytes()),
            });
        }
        let cut = value.len() > sink::DEAD_LETTER_VALUE_BYTES_MAX;
        let topic = self.settings.topics.dead_letter.clone();
        self.send(
            &topic,
            None,
            raw.key,
            raw.value.map(|_| sink::dead_letter_value(value)),
            Some(headers),
        )?;
        RecordDeadLettered {
            topic: &self.topic_names[s],
            partition: raw.partition,
            offset: raw.offset,
            reason: invalid.reason.label(),
            cut,
        }
        .emit(&self.metrics);
        Ok(())
    }

    fn emit_outputs(&mut self, now_ms: Millis) -> anyhow::Result<()> {
        let outputs = std::mem::take(&mut self.outputs);
        for output in &outputs {
            if matches!(
                output,
                Output::Detected(_) | Output::Resolved(_) | Output::Escalated { .. }
            ) {
                self.alerts_dirty.store(true, Ordering::Relaxed);
            }
            match output {
                Output::Detected(d) => {
                    self.metrics
                        .findings_raised
                        .with_label_values(&[d.kind.as_str()])
                        .inc_by(d.sequences.len() as u64);
                    self.metrics
                        .detection_delay_ms
                        .observe(now_ms.saturating_sub(d.detected_at).max(0) as f64);
                }
                Output::Resolved(r) => {
                    self.metrics
                        .findings_resolved
                        .with_label_values(&[r.kind.as_str()])
                        .inc_by(r.sequences.len() as u64);
                }
                Output::Signal(s) => self
                    .metrics
                    .signals
                    .with_label_values(&[s.action.as_str()])
                    .inc(),
                Output::Escalated { run, episode, .. } => RunEscalated {
                    world_id: &run.world_id,
                    run_id: &run.run_id,
                    episode: *episode,
                }
                .emit(&self.metrics),
                Output::Latency { phase, ms, .. } => {
                    let phase = phase.map_or("none", |p| {
                        if p == ackwatch_topology::Phase::Freeze {
                            "freeze"
                        } else {
                            "unfreeze"
                        }
                    });
                    self.metrics
                        .ack_latency_ms
                        .with_label_values(&[phase])
                        .observe(*ms as f64);
                }
                Output::RunDropped { .. } => {}
            }
            if let Some(encoded) = sink::encode(output) {
                let topic = match encoded.sink {
                    Sink::Gap => self.settings.topics.gap.clone(),
                    Sink::Signal => self.settings.topics.signal.clone(),
                };
                let emitted_at = format_rfc3339_ms(now_ms);
                let headers = OwnedHeaders::new()
                    .insert(Header {
                        key: "ackwatch.idempotency_key",
                        value: Some(encoded.idempotency_key.as_bytes()),
                    })
                    .insert(Header {
                        key: "ackwatch.emitted_at",
                        value: Some(emitted_at.as_bytes()),
                    });
                self.send(
                    &topic,
                    None,
                    Some(encoded.key.as_bytes()),
                    Some(encoded.value.as_bytes()),
                    Some(headers),
                )?;
            }
        }
        self.outputs = outputs;
        self.outputs.clear();
        Ok(())
    }

    fn begin_if_needed(&mut self) -> anyhow::Result<()> {
        if self.eos() && !self.in_transaction {
            self.producer
                .begin_transaction()
                .context("cannot begin a transaction")?;
            self.in_transaction = true;
        }
        Ok(())
    }

    /// Produces one record, waiting for queue space rather than failing.
    fn send(
        &mut self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
    ) -> anyhow::Result<()> {
        self.begin_if_needed()?;
        let mut record = BaseRecord::<[u8], [u8]>::to(topic);
        if let Some(headers) = headers {
            record = record.headers(headers);
        }
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        if let Some(p) = partition {
            record = record.partition(p);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((e, r)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                    self.producer.poll(Duration::from_millis(10));
                    record = r;
                }
                Err((e, _)) => bail!("cannot produce to {topic}: {e}"),
            }
        }
    }

    /// Serves the producer's delivery reports.
    pub fn poll_producer(&self) {
        self.producer.poll(Duration::ZERO);
    }

    /// The commit protocol, for every task at once:
    /// 0. at_least_once: wait until the broker acknowledged every output produced so far;
    /// 1. each task's changes go to its changelog partition (encoded once, kept for the store),
    ///    closed by a commit marker with the input offsets they reflect;
    /// 2. at_least_once: wait until the broker acknowledged every changelog record;
    ///    exactly_once_v2: add the input offsets to the transaction and commit it;
    /// 3. each store writes its batch (synced) and checkpoints the changelog offset it reflects;
    /// 4. at_least_once: commit the input offsets.
    ///
    /// A crash anywhere re-runs records whose effects may already be out (at_least_once, same
    /// idempotency keys) or were aborted (exactly_once_v2); the store never gets ahead of the
    /// changelog, nor the changelog ahead of the outputs, and a restore stops at the last
    /// marker, so a restored state is always one commit's, whole.
    pub fn commit(&mut self, consumer: &BaseConsumer<Ctx>) -> anyhow::Result<()> {
        let started = Instant::now();
        self.crash_point(CrashPoint::Start);
        if !self.eos() {
            // Outputs first: a changelog record may reach the broker before the crash that
            // stops this commit, and a restored state must never hold a finding whose event
            // was not delivered (re-processing would not emit it again).
            self.flush_producer()
                .context("outputs not acknowledged in time")?;
            self.check_deliveries()?;
        }
        let changelog_topic = self.changelog_topic.clone();
        let partitions: Vec<i32> = self.tasks.keys().copied().collect();
        let mut changelog_sent = false;
        for p in &partitions {
            let task = self.tasks.get_mut(p).expect("listed");
            let marker = CommitMarker {
                input_next: task.processed_next,
            };
            let (changes, meta) = task.engine.take_changes();
            if changes.is_empty() && meta.is_none() && task.processed_next == task.committed_next {
                // Nothing new: no marker either. An idle task then produces nothing, so an idle
                // commit never waits on the broker (during an outage it would wait until the
                // broker returns, and the consumer would not be polled meanwhile).
                continue;
            }
            let records =
                encode_changes(changes.iter().map(|(k, s)| (k, *s)), meta.as_ref(), &marker);
            drop(changes);
            let mut task = self.tasks.remove(p).expect("listed");
            task.pending_store = records;
            let mut result = Ok(());
            for (key, value) in &task.pending_store {
                result = self.send(
                    &changelog_topic,
                    Some(*p),
                    Some(key),
                    value.as_deref(),
                    // No headers: an empty header list is still allocated and sent per record.
                    None,
                );
                if result.is_err() {
                    break;
                }
            }
            self.metrics
                .changelog_records
                .inc_by(task.pending_store.len() as u64);
            self.tasks.insert(*p, task);
            result?;
            changelog_sent = true;
            self.crash_point(CrashPoint::ChangelogSent);
        }
        let mut offsets = TopicPartitionList::new();
        let mut offsets_moved = false;
        for task in self.tasks.values() {
            for (s, topic) in self.topic_names.iter().enumerate() {
                offsets.add_partition_offset(
                    topic,
                    task.partition,
                    Offset::Offset(task.processed_next[s]),
                )?;
                offsets_moved |= task.processed_next[s] != task.committed_next[s];
            }
        }

        if self.eos() {
            if offsets_moved || self.in_transaction {
                self.begin_if_needed()?;
                let group = consumer
                    .group_metadata()
                    .context("no consumer group metadata")?;
                self.producer
                    .send_offsets_to_transaction(&offsets, &group, COMMIT_TIMEOUT)
                    .context("cannot add offsets to the transaction")?;
                self.producer
                    .commit_transaction(COMMIT_TIMEOUT)
                    .context("cannot commit the transaction")?;
                self.in_transaction = false;
            }
        } else {
            self.flush_producer()
                .context("outputs and changelog records not acknowledged in time")?;
        }
        self.check_deliveries()?;
        if changelog_sent {
            // The broker acknowledged this commit: whatever outage was reported is over.
            self.metrics.all_brokers_down.set(0);
        }
        self.crash_point(CrashPoint::ChangelogAcknowledged);

        let ends = std::mem::take(
            &mut *self
                .producer
                .context()
                .changelog_end
                .lock()
                .expect("not poisoned"),
        );
        for task in self.tasks.values_mut() {
            if !task.pending_store.is_empty() {
                task.store
                    .commit_records(&task.pending_store, ends.get(&task.partition).copied())?;
                task.pending_store.clear();
            }
        }
        self.crash_point(CrashPoint::StoreWritten);

        if !self.eos() && offsets_moved {
            if let Err(e) = consumer.commit(&offsets, CommitMode::Sync) {
                crate::events::OffsetCommitFailed {
                    error: &e.to_string(),
                }
                .emit(&self.metrics);
                drop(offsets);
                self.last_commit = Instant::now();
                return Ok(());
            }
        }
        drop(offsets);
        self.crash_point(CrashPoint::OffsetsCommitted);
        for task in self.tasks.values_mut() {
            task.committed_next = task.processed_next;
        }
        self.metrics.commits.inc();
        self.metrics
            .commit_duration_ms
            .observe(started.elapsed().as_secs_f64() * 1000.0);
        self.last_commit = Instant::now();
        Ok(())
    }

    /// The crash test hook, armed only while the worker has tasks (a commit with nothing
    /// assigned is not worth a crash).
    fn crash_point(&self, point: CrashPoint) {
        if !self.tasks.is_empty() {
            crash_point(point);
        }
    }

    /// Waits until the broker acknowledged every record produced so far (at most
    /// `COMMIT_TIMEOUT`). Not rdkafka's `flush`: it waits in `poll(100 ms)`, and `poll` returns
    /// only at its deadline, so every flush with anything in flight took at least 100 ms — two
    /// of them were half of a commit. Here the delivery reports are served in 1 ms steps.
    fn flush_producer(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + COMMIT_TIMEOUT;
        loop {
            self.producer.poll(Duration::ZERO);
            if self.producer.in_flight_count() == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} records still unacknowledged after {COMMIT_TIMEOUT:?}",
                    self.producer.in_flight_count()
                );
            }
            self.producer.poll(FLUSH_POLL_STEP);
        }
    }

    /// Fails the commit when the producer reported a record it could not deliver.
    fn check_deliveries(&self) -> anyhow::Result<()> {
        let failures = self.producer.context().failures.load(Ordering::Relaxed);
        if failures > 0 {
            let first = self
                .producer
                .context()
                .first_failure
                .lock()
                .expect("not poisoned")
                .clone()
                .unwrap_or_default();
            bail!("{failures} records were not delivered (first: {first}); outputs may be missing, so offsets are not committed");
        }
        Ok(())
    }

    /// Refreshes the gauges that summarise task state (open findings, pending ACKs, lag, runs)
    /// and the counters the engine keeps cumulatively.
    pub fn refresh_metrics(&mut self, consumer: &BaseConsumer<Ctx>) {
        let mut open = [0i64; 4];
        let mut pending_acks = 0i64;
        let mut oldest: Option<Millis> = None;
        let mut runs = 0i64;
        let mut stream_time: Option<Millis> = None;
        for task in self.tasks.values_mut() {
            runs += task.engine.run_count() as i64;
            stream_time = stream_time.max(task.engine.meta().stream_time);
            for (_, run) in task.engine.runs() {
                for seq in run.sequences.values() {
                    for (i, f) in seq.findings.iter().enumerate() {
                        open[i] += f.is_some_and(|f| f.is_open()) as i64;
                    }
                    if let (Some(a), None) = (&seq.activation, seq.ack_ms) {
                        pending_acks += 1;
                        oldest = Some(oldest.map_or(a.event_ms, |o: Millis| o.min(a.event_ms)));
                    }
                }
            }
            let counters = task.engine.counters();
            for (limit, n) in &counters.limit_cut {
                let seen = task.seen_limit_cut.entry(limit).or_default();
                self.metrics
                    .limit_cut
                    .with_label_values(&[limit])
                    .inc_by(n - *seen);
                *seen = *n;
            }
            let idle = task.group.idle_exceeded;
            if idle > task.seen_idle_exceeded {
                crate::events::TaskIdleExceeded {
                    partition: task.partition,
                    times: idle - task.seen_idle_exceeded,
                }
                .emit(&self.metrics);
            }
            task.seen_idle_exceeded = idle;
        }
        let thread = self.thread;
        for (gauge, open) in self.metrics.findings_open.iter().zip(open) {
            gauge.set(thread, open);
        }
        self.metrics.pending_acks.set(thread, pending_acks);
        self.metrics.pending_ack_oldest_age_ms.set(
            thread,
            match (oldest, stream_time) {
                (Some(o), Some(st)) => (st - o).max(0),
                _ => 0,
            },
        );
        self.metrics.runs.set(thread, runs);
        self.metrics.retention_tombstones_deferred.set(
            thread,
            self.tasks
                .values()
                .map(|t| t.engine.deferred_tombstones() as i64)
                .sum(),
        );
        for task in self.tasks.values() {
            for (s, topic) in self.topic_names.iter().enumerate() {
                if let Some(high) = self.cached_high_watermark(consumer, s, task.partition) {
                    self.metrics
                        .consumer_lag
                        .with_label_values(&[topic, &task.partition.to_string()])
                        .set((high - task.processed_next[s]).max(0));
                }
            }
        }
    }

    /// The wall-clock time at which the earliest task deadline can fire by the wall clock
    /// (stream time, the wall clock minus `lateness_ms`, passes it), so the loop wakes then
    /// rather than at its next regular punctuation.
    pub fn next_wall_clock_fire_ms(&self) -> Option<Millis> {
        let lateness = self.settings.runtime.lateness_ms as Millis;
        let due = self
            .tasks
            .values()
            .filter_map(|t| t.engine.next_due())
            .min()?;
        Some(due.saturating_add(lateness).saturating_add(1))
    }

    pub fn partitions(&self) -> Vec<i32> {
        self.tasks
            .keys()
            .chain(self.to_start.iter())
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
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
) -> anyhow::Result<(TaskStore, ackwatch_state::Opened)> {
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
                    tracing::warn!(partition, error = %e, "store locked; waiting for it");
                }
                std::thread::sleep(STORE_LOCK_RETRY);
            }
            other => return other,
        }
    }
}

/// How long one wait of [`Worker::flush_producer`] serves delivery reports.
const FLUSH_POLL_STEP: Duration = Duration::from_millis(1);

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

/// The crash test hook: with `ACKWATCH_CRASH_AT=<point>:<n>` the process kills itself with
/// SIGKILL (no destructor, no flush) the n-th time a commit passes `<point>` (a task's
/// `changelog_sent` counts once per task; commits with no task assigned do not count). Read once; unset, a commit pays one atomic load.
fn crash_point(point: CrashPoint) {
    use std::sync::atomic::AtomicU64;
    use std::sync::OnceLock;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The producer's client errors reach the metrics like the consumer's: an outage that
    /// starts while a commit waits on the producer shows at once.
    #[test]
    fn producer_client_errors_are_reported() {
        let metrics = Arc::new(Metrics::new(["a", "b"]));
        let ctx = ProducerCtx {
            changelog_topic: "c".into(),
            failures: AtomicU64::new(0),
            first_failure: Mutex::new(None),
            changelog_end: Mutex::new(BTreeMap::new()),
            metrics: metrics.clone(),
        };
        let check = |code: RDKafkaErrorCode, down: i64| {
            ctx.error(rdkafka::error::KafkaError::Global(code), "test");
            assert_eq!(metrics.all_brokers_down.get(), down, "{code:?}");
            assert!(
                metrics.render().contains(&format!(
                    "ackwatch_kafka_errors_total{{code=\"{code:?}\"}} 1"
                )),
                "{code:?} counted"
            );
        };
        check(RDKafkaErrorCode::BrokerTransportFailure, 0);
        check(RDKafkaErrorCode::AllBrokersDown, 1);
    }

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
                    assert_eq!(opened, ackwatch_state::Opened::Existing, "not wiped");
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
