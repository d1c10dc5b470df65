//! The live processor (`ackwatch run`): `runtime.num_stream_threads` stream threads, each a
//! consumer-group member that owns some partitions of the two input topics, one task per
//! partition pair, and runs Kafka Streams' loop (`stream_thread.rs`).
//!
//! The parts, one role each:
//! - `stream_thread.rs`: a thread's consumer, its rebalance callbacks, its `run_once` loop;
//! - `task_manager.rs`: a thread's tasks (assignment, records in, processing, metrics);
//! - `task.rs`: a task's states and transitions; `task_start.rs`: restore and start as steps;
//! - `commit.rs`: the commit protocol as steps; `record_collector.rs`: the producer and
//!   everything it writes; `transaction.rs`: its transaction through broker errors
//!   (exactly_once_v2); `caught_up.rs`: whether a task has read its partitions to the end;
//! - `brokers.rs`: whether the brokers can be reached, and since when;
//! - `stalls.rs`: input partitions that make no progress although behind;
//! - `changelog.rs`: the changelog topic (creation, restore); `cluster.rs`: checks before
//!   start and the topology description; `http.rs`: metrics, health and run queries.
//!
//! What a thread's loop and its callbacks share is its [`StreamThread`] in [`Shared`], under one
//! mutex that is never held across `poll`. The HTTP server runs on a small tokio runtime and
//! reads metrics without those mutexes; only `/runs` queries and the alert loop's scan take
//! them, one thread's at a time.

pub mod acls;
pub mod brokers;
pub mod caught_up;
pub mod changelog;
pub mod standby;
pub mod cluster;
pub mod commit;
pub mod http;
pub mod lag;
pub mod owners;
pub mod record_collector;
pub mod stalls;
pub mod state;
pub mod stream_thread;
pub mod task;
pub mod task_manager;
pub mod task_metrics;
pub mod task_start;
pub mod transaction;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ackwatch_topology::Millis;
use anyhow::Context as _;

pub use cluster::{
    check_cluster, dead_letter_topic_max_bytes, describe, inspect_cluster, inspect_local,
    ChangelogCheck, Inspection,
};
pub use record_collector::COMMIT_TIMEOUT;
pub use stream_thread::POLL_BATCH_RECORDS_MAX;
pub use task::TASK_BUFFERED_RECORDS_MAX;
pub use task_manager::TaskManager;

use crate::metrics::Metrics;
use crate::settings::Settings;

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
    /// Every stream thread has stopped.
    stopped: AtomicBool,
    /// The instance's Kafka Streams-like state, as last logged (`state.rs`).
    state: state::StateLine,
    /// The partition count of each input topic.
    pub input_partitions: i32,
    /// Which member owns a partition, for queries to a non-owner (`owners.rs`).
    pub owners: owners::OwnerLookup,
}

/// One stream thread's part of [`Shared`]: its tasks and the flags its loop publishes.
pub struct StreamThread {
    pub tasks: Mutex<TaskManager>,
    /// The thread has an assignment (possibly empty) and every task of it is restored.
    ready: AtomicBool,
    /// Bumped by every rebalance callback of this thread's consumer: records polled across a
    /// rebalance are dropped (their tasks were closed; the new tasks read from the committed
    /// offsets).
    generation: AtomicU64,
}

impl StreamThread {
    pub fn tasks(&self) -> MutexGuard<'_, TaskManager> {
        self.tasks
            .lock()
            .expect("a panic on a stream thread ends the process")
    }
}

impl Shared {
    /// Ready (Kafka Streams' RUNNING): every stream thread is in the group with its assignment
    /// restored. An idle member (more instances than partitions) is ready: it owns nothing but
    /// is in the group, so a rollout or a node drain need not wait for it.
    pub fn ready(&self) -> bool {
        self.threads.iter().all(|t| t.ready.load(Ordering::SeqCst))
    }

    /// The input partitions owned by any stream thread, sorted.
    pub fn partitions(&self) -> Vec<i32> {
        let mut all: Vec<i32> = self
            .threads
            .iter()
            .flat_map(|t| t.tasks().partitions())
            .collect();
        all.sort_unstable();
        all
    }

    /// The alerts the open findings of every running task call for, and the worlds with
    /// several runs paused (`sinks/world_alert.rs`).
    pub fn firing_alerts(&self) -> Vec<crate::sinks::alerts::Firing> {
        use crate::sinks::world_alert;
        let mut current = Vec::new();
        let mut paused = std::collections::BTreeMap::new();
        for thread in &self.threads {
            let tasks = thread.tasks();
            current.extend(crate::sinks::alerts::firing(
                tasks.running().flat_map(|t| t.core.engine.runs()),
            ));
            world_alert::count_paused(tasks.running().flat_map(|t| t.core.engine.runs()), &mut paused);
        }
        current.extend(world_alert::firing(paused));
        current
    }

    fn set_fatal(&self, error: String) {
        crate::events::ProcessorFatal { error: &error }.emit(&self.metrics);
        self.fatal
            .lock()
            .expect("not poisoned")
            .get_or_insert(error);
        self.note_state();
    }

    /// Logs and exports a change of the instance's state (`state.rs`); called wherever a flag
    /// it is derived from changes.
    pub fn note_state(&self) {
        let flags = state::Flags {
            fatal: self.fatal.lock().expect("not poisoned").is_some(),
            stopped: self.stopped.load(Ordering::SeqCst),
            shutdown: self.shutdown.load(Ordering::SeqCst),
            ready: self.ready(),
            joined: self.threads.iter().any(|t| t.generation.load(Ordering::SeqCst) > 0),
        };
        for (from, to) in self.state.observe(flags.state()) {
            crate::events::StateChanged { from, to }.emit(&self.metrics);
        }
    }

    /// The instance's state as last logged.
    pub fn state(&self) -> state::InstanceState {
        self.state.current()
    }

    pub fn fatal(&self) -> Option<String> {
        self.fatal.lock().expect("not poisoned").clone()
    }
}

/// The wall clock in epoch milliseconds: the only clock outside the engine (semantics §4 live time).
pub fn wall_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
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
        version = crate::audit::provenance::VERSION,
        revision = crate::audit::provenance::REVISION,
        application_id = settings.runtime.application_id.as_str(),
        bootstrap_servers = settings.kafka.bootstrap_servers.as_str(),
        properties = settings.kafka.property_names().join(", "),
        guarantee = settings.runtime.processing_guarantee.as_str(),
        "starting ackwatch {}",
        crate::audit::provenance::VERSION
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
    let (input_partitions, lines) = runtime.block_on(check_cluster(&settings, changelog_check))?;
    let dead_letter_max_bytes = match options.embedded_cluster {
        true => None,
        false => runtime.block_on(dead_letter_topic_max_bytes(&settings)),
    };
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
                tasks: Mutex::new(TaskManager::new(
                    settings.clone(),
                    metrics.clone(),
                    thread,
                    input_partitions,
                    dead_letter_max_bytes,
                    alerts_dirty.clone(),
                )?),
                ready: AtomicBool::new(false),
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
        stopped: AtomicBool::new(false),
        state: Default::default(),
        input_partitions,
        owners: Default::default(),
    });
    shared
        .metrics
        .instance_state
        .with_label_values(&[state::InstanceState::Created.as_str()])
        .set(1);
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(&settings.http.listen))
        .with_context(|| format!("cannot listen on http.listen = {}", settings.http.listen))?;
    tracing::info!(address = settings.http.listen.as_str(), "http listening");
    runtime.spawn(http::serve(listener, shared.clone()));
    if !settings.alerts.alertmanager_urls.is_empty() {
        let scan = shared.clone();
        let mut alerts = settings.alerts.clone();
        if alerts.generator_base_url.is_empty() {
            alerts.generator_base_url = settings.http.advertised();
        }
        if alerts.runbook_url.is_empty() && !alerts.generator_base_url.is_empty() {
            // The shipped runbooks, served by this instance (`/runbooks/{page}`).
            alerts.runbook_url =
                format!("{}/runbooks/{{kind}}.md", alerts.generator_base_url.trim_end_matches('/'));
        }
        runtime.spawn(crate::sinks::alerts::post_loop(
            alerts,
            shared.metrics.clone(),
            shared.alerts_dirty.clone(),
            move || scan.firing_alerts(),
        ));
    }
    let delivery_stop = Arc::new(AtomicBool::new(false));
    let delivery = (!settings.worldservice.url.is_empty()).then(|| {
        runtime.spawn(crate::sinks::worldservice::deliver_loop(
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
            shared.note_state();
        });
    }
    let on_signal = shared.clone();
    let shutdown_timeout = Duration::from_millis(settings.runtime.shutdown_timeout_ms);
    runtime.spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested: draining, committing, leaving the group");
        on_signal.shutdown.store(true, Ordering::SeqCst);
        on_signal.note_state();
        tokio::time::sleep(shutdown_timeout).await;
        crate::events::ShutdownTimedOut.emit();
        std::process::exit(2);
    });
    let standby = (settings.runtime.num_standby_replicas > 0)
        .then(|| {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("standby".into())
                .spawn(move || standby::standby_loop(shared))
        })
        .transpose()?;
    let result = run_stream_threads(&shared);
    // The standby thread stops after the standby update it is in (its store closed cleanly).
    shared.shutdown.store(true, Ordering::SeqCst);
    if let Some(standby) = standby {
        let _ = standby.join();
    }
    shared.stopped.store(true, Ordering::SeqCst);
    shared.note_state();
    delivery_stop.store(true, Ordering::SeqCst);
    if let Some(delivery) = delivery {
        // Let the delivery consumer commit what it delivered before the runtime goes.
        let _ = runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(5), delivery).await });
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
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
                    let result = stream_thread::run(&shared, thread);
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
