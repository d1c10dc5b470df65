//! The live processor (`ackwatch run`): `runtime.num_stream_threads` stream threads, each a
//! consumer-group member that owns some partitions of the two input topics, one
//! [`task::StreamTask`] per partition pair, and runs Kafka Streams' loop:
//!
//! ```text
//!   poll one record ──> buffer in its task ──> process what the PartitionGroup releases
//!        ^                                      (outputs and dead letters produced at once)
//!        |                                                   |
//!        +── commit every commit_interval_ms <── punctuate every PUNCTUATE_INTERVAL
//!            (changelog, outputs, store, offsets)    (waits run out; wall-clock stream time
//!                                                     when a deadline is due and the task is
//!                                                     confirmed caught up)
//! ```
//!
//! Rebalance callbacks run inside `poll` on the thread of their consumer: a revocation commits
//! and closes that thread's tasks, an assignment checks co-partitioning and pauses the new
//! partitions until their stores are restored. What a thread's loop and its callbacks share is
//! its [`StreamThread`] in [`Shared`], under one mutex that is never held across `poll`. The HTTP
//! server runs on a small tokio runtime and reads metrics without those mutexes; only `/runs`
//! queries and the alert loop's scan take them, one thread's at a time.

pub mod http;
mod task;
mod worker;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ackwatch_topology::Millis;
use anyhow::{bail, Context as _};
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::{ClientContext, TopicPartitionList};

pub use task::TASK_BUFFERED_RECORDS_MAX;
pub use worker::{Worker, COMMIT_TIMEOUT};

use crate::changelog;
use crate::events::{CommitFailed, KafkaClientError, PartitionsAssigned};
use crate::metrics::Metrics;
use crate::settings::{Guarantee, Settings};

/// Longest a `poll` blocks when nothing arrives: bounds how late a punctuation or commit runs.
const POLL_TIMEOUT: Duration = Duration::from_millis(20);
/// How often every task is processed and punctuated without a new record.
const PUNCTUATE_INTERVAL: Duration = Duration::from_millis(50);
/// Shortest time between punctuations woken by a due deadline: bounds the watermark requests
/// while a deadline is due but the task is not confirmed caught up.
const DUE_PUNCTUATE_SPACING: Duration = Duration::from_millis(5);
/// How often the state-summarising gauges are recomputed (a scan of every run held).
const METRICS_REFRESH_INTERVAL: Duration = Duration::from_secs(5);
/// Records taken from the consumer per pass of the loop (one lock, one processing pass per
/// task). Cost: as many librdkafka messages held at once.
pub const POLL_BATCH_RECORDS_MAX: usize = 512;
const METADATA_TIMEOUT: Duration = Duration::from_secs(15);

/// What the stream threads, their rebalance callbacks and the HTTP server share.
pub struct Shared {
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    /// One per `runtime.num_stream_threads`, by thread index.
    pub threads: Vec<StreamThread>,
    pub shutdown: AtomicBool,
    /// Set by any thread's fatal error; every thread stops on it.
    fatal: Mutex<Option<String>>,
    /// Set when an output may change the firing alerts, so the alert loop posts soon.
    pub alerts_dirty: Arc<AtomicBool>,
}

/// One stream thread's part of [`Shared`]: its worker and the flags its loop publishes.
pub struct StreamThread {
    pub worker: Mutex<Worker>,
    /// The thread has an assignment (possibly empty) and every task of it is restored.
    ready: AtomicBool,
    /// The thread's assignment is not empty.
    owns_tasks: AtomicBool,
    /// Bumped by every rebalance callback of this thread's consumer: records polled across a
    /// rebalance are dropped (their tasks were closed; the new tasks read from the committed
    /// offsets).
    generation: AtomicU64,
}

impl StreamThread {
    pub fn worker(&self) -> MutexGuard<'_, Worker> {
        self.worker
            .lock()
            .expect("a panic on a stream thread ends the process")
    }
}

impl Shared {
    /// Ready: every stream thread has its assignment restored, and the instance owns a task.
    pub fn ready(&self) -> bool {
        self.threads.iter().all(|t| t.ready.load(Ordering::SeqCst))
            && self
                .threads
                .iter()
                .any(|t| t.owns_tasks.load(Ordering::SeqCst))
    }

    /// The input partitions owned by any stream thread, sorted.
    pub fn partitions(&self) -> Vec<i32> {
        let mut all: Vec<i32> = self
            .threads
            .iter()
            .flat_map(|t| t.worker().partitions())
            .collect();
        all.sort_unstable();
        all
    }

    fn set_fatal(&self, error: String) {
        tracing::error!(error = error.as_str(), "fatal error; the processor stops");
        self.fatal
            .lock()
            .expect("not poisoned")
            .get_or_insert(error);
    }

    pub fn fatal(&self) -> Option<String> {
        self.fatal.lock().expect("not poisoned").clone()
    }
}

/// A stream thread's consumer context: client errors into metrics, rebalances into its worker.
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
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.thread().generation.fetch_add(1, Ordering::SeqCst);
        if let Rebalance::Revoke(list) = rebalance {
            let topics = &self.shared.settings.topics;
            let mut revoked = partitions_by_topic(list, &topics.activation);
            revoked.extend(partitions_by_topic(list, &topics.ack));
            self.thread().ready.store(false, Ordering::SeqCst);
            let mut worker = self.thread().worker();
            worker.assigned = false;
            if let Err(e) = worker.commit(consumer) {
                CommitFailed { error: &e }.emit(&self.shared.metrics);
                self.shared
                    .set_fatal(format!("commit on revocation failed: {e:#}"));
            }
            worker.close_tasks(&revoked, "revoked");
            PartitionsAssigned {
                thread: self.thread,
                partitions: &worker.partitions(),
            }
            .emit(&self.shared.metrics);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.thread().generation.fetch_add(1, Ordering::SeqCst);
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
                let mut worker = self.thread().worker();
                worker.assigned = true;
                worker.to_start.extend(activation);
                PartitionsAssigned {
                    thread: self.thread,
                    partitions: &worker.partitions(),
                }
                .emit(&self.shared.metrics);
            }
            Rebalance::Error(e) => {
                tracing::warn!(error = %e, "rebalance error");
            }
            Rebalance::Revoke(_) => {}
        }
    }
}

/// The wall clock in epoch milliseconds: the only clock outside the engine (SPEC §4 live time).
pub fn wall_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}

/// What `check` and `run` verify about the cluster before processing: every topic exists, the
/// inputs are co-partitioned, the changelog matches them. Returns the input partition count and
/// one line per check.
/// What `check_cluster` does about the changelog topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangelogCheck {
    /// `ackwatch check`: report whether it exists and fits; create nothing.
    Report,
    /// `ackwatch run`: create it when missing; refuse one that is not compacted.
    Ensure,
    /// An embedded cluster without admin requests (librdkafka's mock cluster, `ackwatch demo`):
    /// the embedder created it; only its partition count is checked.
    Precreated,
}

pub async fn check_cluster(
    settings: &Settings,
    changelog_check: ChangelogCheck,
) -> anyhow::Result<(i32, Vec<String>)> {
    let config = settings.kafka.client_config();
    let admin: AdminClient<DefaultClientContext> = config
        .create()
        .context("cannot create a Kafka admin client")?;
    let metadata = admin
        .inner()
        .fetch_metadata(None, METADATA_TIMEOUT)
        .with_context(|| {
            format!(
                "cannot reach Kafka at {} (kafka.bootstrap_servers): is it running and reachable?",
                settings.kafka.bootstrap_servers
            )
        })?;
    let count = |name: &str| {
        metadata
            .topics()
            .iter()
            .find(|t| t.name() == name && t.error().is_none())
            .map(|t| t.partitions().len() as i32)
    };
    let mut lines = vec![format!(
        "ok: reached Kafka at {} ({} brokers)",
        settings.kafka.bootstrap_servers,
        metadata.brokers().len()
    )];
    let topics = &settings.topics;
    let (Some(activation), Some(ack)) = (count(&topics.activation), count(&topics.ack)) else {
        let missing: Vec<&str> = [&topics.activation, &topics.ack]
            .into_iter()
            .filter(|t| count(t).is_none())
            .map(String::as_str)
            .collect();
        bail!("input topic(s) {missing:?} do not exist (topics.activation / topics.ack): create them, co-partitioned");
    };
    if activation != ack {
        bail!(
            "input topics are not co-partitioned: {} has {activation} partitions, {} has {ack}; \
             partition p of one must join partition p of the other (SPEC §1), give them the same count",
            topics.activation,
            topics.ack
        );
    }
    lines.push(format!(
        "ok: {} and {} are co-partitioned ({activation} partitions)",
        topics.activation, topics.ack
    ));
    let missing: Vec<&str> = [&topics.gap, &topics.signal, &topics.dead_letter]
        .into_iter()
        .filter(|t| count(t).is_none())
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        bail!("output topic(s) {missing:?} do not exist (topics.gap / topics.signal / topics.dead_letter): create them");
    }
    lines.push(format!(
        "ok: output topics {}, {}, {} exist",
        topics.gap, topics.signal, topics.dead_letter
    ));
    let changelog = changelog::topic_name(&settings.runtime.application_id);
    match count(&changelog) {
        Some(n) if n != activation => bail!(
            "changelog topic {changelog} has {n} partitions but the input topics have {activation}: delete it \
             (ackwatch recreates it and restores from scratch) or restore the input partition count"
        ),
        None if changelog_check == ChangelogCheck::Report => lines.push(format!("ok: changelog topic {changelog} does not exist yet; `run` creates it")),
        None if changelog_check == ChangelogCheck::Precreated => {
            bail!("changelog topic {changelog} does not exist on the embedded cluster")
        }
        Some(_) if changelog_check == ChangelogCheck::Precreated => {
            lines.push(format!("ok: changelog topic {changelog} ({activation} partitions, created by the embedder)"))
        }
        _ => {
            let ensured = changelog::ensure_topic(&config, &changelog, activation, settings.runtime.changelog_replication_factor).await?;
            lines.push(format!("ok: changelog topic {changelog} ({ensured:?}, compacted, {activation} partitions)"));
        }
    }
    Ok((activation, lines))
}

/// The consumer of the input topics: the group, range assignment (co-partitioning), offsets
/// committed only by the commit protocol.
fn consumer_config(settings: &Settings, thread: usize) -> rdkafka::ClientConfig {
    let mut config = settings.kafka.client_config();
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
    config
}

/// How the processor is embedded: `ackwatch run` uses the defaults.
#[derive(Clone, Default)]
pub struct RunOptions {
    /// Set by the embedder to stop the processor as SIGTERM would (drain, commit, leave).
    pub stop: Option<Arc<AtomicBool>>,
    /// The cluster serves no admin requests (`ackwatch demo`'s mock cluster): the changelog
    /// topic was created by the embedder.
    pub embedded_cluster: bool,
}

/// Runs the processor until SIGTERM/SIGINT or a fatal error.
pub fn run(settings: Settings) -> anyhow::Result<()> {
    run_with(settings, RunOptions::default())
}

/// [`run`], embedded: stopped also by `options.stop`.
pub fn run_with(settings: Settings, options: RunOptions) -> anyhow::Result<()> {
    tracing::info!(
        application_id = settings.runtime.application_id.as_str(),
        bootstrap_servers = settings.kafka.bootstrap_servers.as_str(),
        properties = ?settings.kafka.redacted_properties(),
        guarantee = ?settings.runtime.processing_guarantee,
        "starting"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let changelog_check = if options.embedded_cluster {
        ChangelogCheck::Precreated
    } else {
        ChangelogCheck::Ensure
    };
    let (_, lines) = runtime.block_on(check_cluster(&settings, changelog_check))?;
    for line in lines {
        tracing::info!("{line}");
    }
    std::fs::create_dir_all(&settings.runtime.state_dir).with_context(|| {
        format!(
            "cannot create runtime.state_dir {}: is it writable?",
            settings.runtime.state_dir.display()
        )
    })?;
    let metrics = Arc::new(Metrics::new([
        &settings.topics.activation,
        &settings.topics.ack,
    ]));
    let alerts_dirty = Arc::new(AtomicBool::new(false));
    let threads = (0..settings.runtime.num_stream_threads as usize)
        .map(|thread| {
            Ok(StreamThread {
                worker: Mutex::new(Worker::new(
                    settings.clone(),
                    metrics.clone(),
                    thread,
                    alerts_dirty.clone(),
                )?),
                ready: AtomicBool::new(false),
                owns_tasks: AtomicBool::new(false),
                generation: AtomicU64::new(0),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let shared = Arc::new(Shared {
        settings: settings.clone(),
        metrics,
        threads,
        shutdown: AtomicBool::new(false),
        fatal: Mutex::new(None),
        alerts_dirty,
    });
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(&settings.http.listen))
        .with_context(|| format!("cannot listen on http.listen = {}", settings.http.listen))?;
    tracing::info!(address = settings.http.listen.as_str(), "http listening");
    runtime.spawn(http::serve(listener, shared.clone()));
    if !settings.alerts.alertmanager_urls.is_empty() {
        runtime.spawn(alert_loop(shared.clone()));
    }
    let delivery_stop = Arc::new(AtomicBool::new(false));
    let delivery = (!settings.worldservice.url.is_empty()).then(|| {
        runtime.spawn(crate::worldservice::deliver_loop(
            settings.clone(),
            shared.metrics.clone(),
            delivery_stop.clone(),
        ))
    });
    if let Some(stop) = options.stop.clone() {
        let shared = shared.clone();
        runtime.spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tracing::info!(
                "stop requested by the embedder: draining, committing, leaving the group"
            );
            shared.shutdown.store(true, Ordering::SeqCst);
        });
    }
    let on_signal = shared.clone();
    let shutdown_timeout = Duration::from_millis(settings.runtime.shutdown_timeout_ms);
    runtime.spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested: draining, committing, leaving the group");
        on_signal.shutdown.store(true, Ordering::SeqCst);
        tokio::time::sleep(shutdown_timeout).await;
        tracing::error!("shutdown took longer than runtime.shutdown_timeout_ms; exiting");
        std::process::exit(2);
    });
    let result = run_stream_threads(&shared);
    delivery_stop.store(true, Ordering::SeqCst);
    if let Some(delivery) = delivery {
        // Let the delivery consumer commit what it delivered before the runtime goes.
        let _ = runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(5), delivery).await });
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// Posts the firing alerts (derived from the tasks' run states) to every Alertmanager: soon
/// after an output changes them, every `resend_interval_ms` regardless, and every 5 s after a
/// failed post, so an Alertmanager outage delays alerts but loses none.
async fn alert_loop(shared: Arc<Shared>) {
    const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);
    let settings = shared.settings.alerts.clone();
    let resend = Duration::from_millis(settings.resend_interval_ms);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("an HTTP client without TLS builds");
    let dirty = shared.alerts_dirty.clone();
    let mut book = crate::alerts::AlertBook::default();
    let mut last_post: Option<Instant> = None;
    let mut failed = false;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let wait = if failed { RETRY_AFTER_FAILURE } else { resend };
        let due = last_post.is_none_or(|t| t.elapsed() >= wait)
            || (dirty.load(Ordering::Relaxed) && !failed);
        if !due {
            continue;
        }
        dirty.store(false, Ordering::Relaxed);
        let reader = shared.clone();
        let Ok(current) = tokio::task::spawn_blocking(move || {
            let mut current = Vec::new();
            for thread in &reader.threads {
                let worker = thread.worker();
                current.extend(crate::alerts::firing(
                    worker.tasks.values().flat_map(|t| t.engine.runs()),
                ));
            }
            current
        })
        .await
        else {
            continue;
        };
        let now = wall_ms();
        book.update(now, current, &settings);
        shared.metrics.alerts_firing.set(book.firing_count() as i64);
        let payload = book.payload(now, &settings);
        failed = false;
        for url in &settings.alertmanager_urls {
            let endpoint = format!("{}/api/v2/alerts", url.trim_end_matches('/'));
            let result = match client.post(&endpoint).json(&payload).send().await {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(format!("status {}", r.status())),
                Err(e) => Err(e.to_string()),
            };
            let outcome = if result.is_ok() { "ok" } else { "error" };
            shared
                .metrics
                .alert_posts
                .with_label_values(&[url, outcome])
                .inc();
            if let Err(why) = result {
                failed = true;
                tracing::warn!(
                    url = url.as_str(),
                    error = why.as_str(),
                    "cannot post alerts; retrying in 5 s"
                );
            }
        }
        last_post = Some(Instant::now());
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Runs every stream thread until shutdown or a fatal error; a thread that fails stops the
/// others (through the fatal error they all check) and its error is the result.
fn run_stream_threads(shared: &Arc<Shared>) -> anyhow::Result<()> {
    let handles = (0..shared.threads.len())
        .map(|thread| {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("stream-{thread}"))
                .spawn(move || {
                    let result = processing_loop(&shared, thread);
                    if let Err(e) = &result {
                        shared.set_fatal(format!("stream thread {thread}: {e:#}"));
                    }
                    result
                })
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut first_error = None;
    for handle in handles {
        let result = handle
            .join()
            .map_err(|_| anyhow::anyhow!("a stream thread panicked"))
            .and_then(|r| r);
        if let Err(e) = result {
            first_error.get_or_insert(e);
        }
    }
    match (first_error, shared.fatal()) {
        (Some(e), _) => Err(e),
        (None, Some(fatal)) => Err(anyhow::anyhow!(fatal)),
        (None, None) => Ok(()),
    }
}

/// One stream thread: Kafka Streams' poll → process → punctuate → commit loop over the tasks
/// of this thread's consumer.
fn processing_loop(shared: &Arc<Shared>, thread_index: usize) -> anyhow::Result<()> {
    let settings = &shared.settings;
    let thread = &shared.threads[thread_index];
    let consumer: BaseConsumer<Ctx> = consumer_config(settings, thread_index)
        .create_with_context(Ctx {
            shared: shared.clone(),
            thread: thread_index,
        })
        .context("cannot create the consumer")?;
    consumer
        .subscribe(&[&settings.topics.activation, &settings.topics.ack])
        .context("cannot subscribe")?;
    let commit_interval = Duration::from_millis(settings.runtime.commit_interval_ms);
    let mut last_punctuate = Instant::now();
    let mut last_refresh = Instant::now();
    let mut batch = Vec::with_capacity(POLL_BATCH_RECORDS_MAX);
    let mut errors = Vec::new();
    let mut touched = BTreeSet::new();
    let mut poll_clock = Duration::ZERO;
    // When the earliest deadline of any task can fire by the wall clock (SPEC §4): the loop
    // punctuates then, so a finding waits `lateness_ms`, not also a punctuation interval.
    let mut wall_fire_ms: Option<Millis> = None;
    let result = loop {
        if shared.shutdown.load(Ordering::SeqCst) {
            break Ok(());
        }
        // Poll without the worker's lock: rebalance callbacks take it.
        let polling = Instant::now();
        let generation = thread.generation.load(Ordering::SeqCst);
        let mut timeout = match wall_fire_ms {
            Some(at) => POLL_TIMEOUT.min(Duration::from_millis(
                at.saturating_sub(wall_ms()).max(0) as u64,
            )),
            None => POLL_TIMEOUT,
        };
        while batch.len() < POLL_BATCH_RECORDS_MAX {
            match consumer.poll(timeout) {
                Some(Ok(m)) => batch.push(m),
                Some(Err(e)) => errors.push(e),
                None => break,
            }
            timeout = Duration::ZERO;
        }
        if thread.generation.load(Ordering::SeqCst) != generation {
            batch.clear();
        }
        let tick = Instant::now();
        let polled = tick.duration_since(polling);
        let now = wall_ms();
        let mut worker = thread.worker();
        poll_clock += polled;
        worker.poll_clock_ms = poll_clock.as_millis() as Millis;
        if let Some(fatal) = shared.fatal() {
            break Err(anyhow::anyhow!(fatal));
        }
        if !worker.to_start.is_empty() {
            thread.ready.store(false, Ordering::SeqCst);
            if let Err(e) = worker.start_tasks(&consumer) {
                break Err(e.context("cannot start a task"));
            }
        }
        let step = (|| -> anyhow::Result<()> {
            // Client errors (all brokers down, ...) come through `poll` as well as `error`.
            for e in errors.drain(..) {
                KafkaClientError::of(&e, &e.to_string()).emit(&shared.metrics);
                if matches!(e, KafkaError::MessageConsumptionFatal(_)) {
                    bail!("fatal consumer error: {e}");
                }
            }
            if !batch.is_empty() {
                shared.metrics.all_brokers_down.set(0);
            }
            for m in batch.drain(..) {
                if let Some(p) = worker.buffer(&consumer, &m)? {
                    touched.insert(p);
                }
            }
            let since = tick.duration_since(last_punctuate);
            let punctuate = since >= PUNCTUATE_INTERVAL
                || (wall_fire_ms.is_some_and(|at| now >= at) && since >= DUE_PUNCTUATE_SPACING);
            if punctuate {
                last_punctuate = tick;
                touched.extend(worker.tasks.keys().copied());
            }
            while let Some(p) = touched.pop_first() {
                worker.process_task(&consumer, p, now)?;
            }
            worker.poll_producer();
            if tick.duration_since(worker.last_commit) >= commit_interval {
                worker
                    .commit(&consumer)
                    .inspect_err(|e| CommitFailed { error: e }.emit(&shared.metrics))?;
            }
            wall_fire_ms = worker.next_wall_clock_fire_ms();
            if tick.duration_since(last_refresh) >= METRICS_REFRESH_INTERVAL {
                last_refresh = tick;
                worker.refresh_metrics(&consumer);
            }
            Ok(())
        })();
        if let Err(e) = step {
            break Err(e);
        }
        thread
            .owns_tasks
            .store(!worker.tasks.is_empty(), Ordering::SeqCst);
        thread.ready.store(
            worker.assigned && worker.to_start.is_empty(),
            Ordering::SeqCst,
        );
    };
    drop(batch);
    thread.ready.store(false, Ordering::SeqCst);
    if result.is_ok() {
        let mut worker = thread.worker();
        worker
            .commit(&consumer)
            .inspect_err(|e| CommitFailed { error: e }.emit(&shared.metrics))?;
        let all: BTreeSet<i32> = worker.partitions().into_iter().collect();
        worker.close_tasks(&all, "shutdown");
    }
    // Leaving the group: the consumer's close runs the revocation callback (nothing left to
    // commit) and tells the coordinator, so the partitions move at once.
    drop(consumer);
    if result.is_ok() {
        tracing::info!(thread = thread_index, "stream thread stopped cleanly");
    }
    result
}

/// Kafka Streams' `TopologyDescription` of ackwatch: sources, the processor, its store, sinks.
pub fn describe(settings: &Settings) -> String {
    let t = &settings.topics;
    let store = "runs";
    let changelog = changelog::topic_name(&settings.runtime.application_id);
    let guarantee = match settings.runtime.processing_guarantee {
        Guarantee::AtLeastOnce => "at_least_once",
        Guarantee::ExactlyOnceV2 => "exactly_once_v2",
    };
    format!(
        "Topologies:\n   \
         Sub-topology: 0 (application.id {app}, processing.guarantee {guarantee})\n    \
         Source: activation-source (topics: [{act}])\n      --> ack-join\n    \
         Source: ack-source (topics: [{ack}])\n      --> ack-join\n    \
         Processor: ack-join (stores: [{store}])\n      --> gap-sink, signal-sink, dead-letter-sink\n      \
         <-- activation-source, ack-source\n    \
         Sink: gap-sink (topic: {gap})\n      <-- ack-join\n    \
         Sink: signal-sink (topic: {signal})\n      <-- ack-join\n    \
         Sink: dead-letter-sink (topic: {dlq})\n      <-- ack-join\n\
         State stores:\n    \
         {store}: RocksDB per task, key (world_id, run_id), changelog {changelog} (compacted)\n{ws}",
        ws = if settings.worldservice.url.is_empty() {
            String::new()
        } else {
            format!(
                "   Sub-topology: 1 (consumer group {app}-worldservice)\n    \
                 Source: signal-source (topics: [{signal}])\n      --> worldservice-http-sink\n    \
                 Sink: worldservice-http-sink (POST {url})\n      <-- signal-source\n",
                app = settings.runtime.application_id,
                signal = t.signal,
                url = settings.worldservice.url,
            )
        },
        app = settings.runtime.application_id,
        act = t.activation,
        ack = t.ack,
        gap = t.gap,
        signal = t.signal,
        dlq = t.dead_letter,
    )
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
