//! Internal events of the live processor, one struct per occurrence: `emit` writes the log line
//! and bumps the metric together, so the two never disagree.
//!
//! Longer than 600 lines because every occurrence has its struct here, each a few lines: one
//! place to read what the processor can say about itself.

use std::time::Duration;

use crate::metrics::Metrics;

pub struct TaskRestored<'a> {
    pub partition: i32,
    pub changelog: &'a str,
    pub from_offset: i64,
    pub to_offset: i64,
    pub records: u64,
    pub bytes: u64,
    pub runs: usize,
    pub duration: Duration,
    pub store: &'a str,
}

impl TaskRestored<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        tracing::info!(
            partition = self.partition,
            changelog = self.changelog,
            from_offset = self.from_offset,
            to_offset = self.to_offset,
            records = self.records,
            bytes = self.bytes,
            runs = self.runs,
            duration_ms = self.duration.as_millis() as u64,
            store = self.store,
            "task restored"
        );
        metrics.restore_records.inc_by(self.records);
        metrics.restore_bytes.inc_by(self.bytes);
    }
}

pub struct TaskClosed {
    pub partition: i32,
    pub reason: &'static str,
}

impl TaskClosed {
    pub fn emit(&self, _metrics: &Metrics) {
        tracing::info!(
            partition = self.partition,
            reason = self.reason,
            "task closed"
        );
    }
}

pub struct RecordDeadLettered<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub reason: &'static str,
    /// Key, value or detail cut to the dead-letter limits.
    pub cut: bool,
    /// The producer refused even the bounded dead letter: a stub went instead.
    pub stubbed: bool,
}

impl RecordDeadLettered<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        tracing::debug!(
            topic = self.topic,
            partition = self.partition,
            offset = self.offset,
            reason = self.reason,
            cut = self.cut,
            stubbed = self.stubbed,
            "record dead-lettered"
        );
        metrics.dead_letters.inc();
        metrics.invalid.with_label_values(&[self.reason]).inc();
        if self.cut {
            metrics.dead_letters_cut.inc();
            metrics
                .limit_cut
                .with_label_values(&["DEAD_LETTER_BYTES"])
                .inc();
        }
        if self.stubbed {
            metrics.dead_letters_stubbed.inc();
        }
    }
}

/// The broker refused a dead letter as too large (its topic's limit was lowered since the
/// start): a stub with the reason and origin went in its place.
pub struct DeadLetterStubbed<'a> {
    pub topic: &'a str,
}

impl DeadLetterStubbed<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        tracing::warn!(
            topic = self.topic,
            "the broker refused a dead letter as too large; a stub with its reason and origin was sent instead"
        );
        metrics.dead_letters_stubbed.inc();
    }
}

pub struct CommitFailed<'a> {
    pub error: &'a anyhow::Error,
}

impl CommitFailed<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        tracing::error!(
            error = format!("{:#}", self.error),
            "commit failed; exiting so a restart recovers from the changelog"
        );
        metrics.commit_failures.inc();
    }
}

pub struct OffsetCommitFailed<'a> {
    pub error: &'a str,
}

impl OffsetCommitFailed<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        // State and outputs are durable already; the next commit carries the offsets again.
        tracing::warn!(
            error = self.error,
            "input offset commit failed; retried at the next commit"
        );
        metrics.commit_failures.inc();
    }
}

pub struct RunEscalated<'a> {
    pub world_id: &'a str,
    pub run_id: &'a str,
    pub episode: u32,
}

impl RunEscalated<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        tracing::warn!(
            world_id = self.world_id,
            run_id = self.run_id,
            episode = self.episode,
            "run still failing after rollback_after_ms; escalated to an operator"
        );
        metrics.escalations.inc();
    }
}

pub struct KafkaClientError<'a> {
    pub code: String,
    pub reason: &'a str,
    pub all_brokers_down: bool,
}

impl<'a> KafkaClientError<'a> {
    /// The occurrence of a client error as librdkafka reports it (consumer or producer context,
    /// or an error polled from the consumer).
    pub fn of(error: &rdkafka::error::KafkaError, reason: &'a str) -> KafkaClientError<'a> {
        let code = error.rdkafka_error_code();
        KafkaClientError {
            code: code.map_or_else(|| "other".to_string(), |c| format!("{c:?}")),
            reason,
            all_brokers_down: code == Some(rdkafka::types::RDKafkaErrorCode::AllBrokersDown),
        }
    }

    pub fn emit(&self, metrics: &Metrics) {
        tracing::warn!(
            code = self.code.as_str(),
            reason = self.reason,
            "kafka client error"
        );
        metrics.kafka_errors.with_label_values(&[&self.code]).inc();
        if self.all_brokers_down {
            metrics.brokers.mark_down();
        }
    }
}

/// Partitions as a log field: `0, 1, 2` (no Rust `Debug` in what operators read).
fn partition_list(partitions: &[i32]) -> String {
    partitions
        .iter()
        .map(i32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

pub struct PartitionsAssigned<'a> {
    /// The stream thread (`runtime.num_stream_threads`) the partitions were assigned to.
    pub thread: usize,
    pub partitions: &'a [i32],
}

impl PartitionsAssigned<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        tracing::info!(
            thread = self.thread,
            partitions = partition_list(self.partitions),
            "partitions assigned"
        );
        metrics
            .assigned_partitions
            .set(self.thread, self.partitions.len() as i64);
    }
}

pub struct TaskIdleExceeded {
    pub partition: i32,
    pub times: u64,
}

impl TaskIdleExceeded {
    pub fn emit(&self, metrics: &Metrics) {
        tracing::warn!(
            partition = self.partition,
            times = self.times,
            "waited max_task_idle_ms for a lagging partition and went on without it; records may be judged out of order"
        );
        metrics.task_idle_exceeded.inc_by(self.times);
    }
}

/// A signal WorldService accepted (2xx).
pub struct SignalDelivered<'a> {
    pub key: &'a str,
    pub attempts: u32,
}

impl SignalDelivered<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        tracing::debug!(
            idempotency_key = self.key,
            attempts = self.attempts,
            "signal delivered to WorldService"
        );
        metrics.worldservice_posts.with_label_values(&["ok"]).inc();
        metrics
            .worldservice_signals
            .with_label_values(&["delivered"])
            .inc();
    }
}

/// A post that failed in a way worth retrying (connection, timeout, 5xx, 408, 429).
pub struct SignalPostFailed<'a> {
    pub key: &'a str,
    pub error: &'a str,
    pub attempt: u32,
    pub retry_in: Duration,
}

impl SignalPostFailed<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        tracing::warn!(
            idempotency_key = self.key,
            error = self.error,
            attempt = self.attempt,
            retry_in_ms = self.retry_in.as_millis() as u64,
            "cannot post a signal to WorldService; retrying"
        );
        metrics
            .worldservice_posts
            .with_label_values(&["error"])
            .inc();
    }
}

/// A signal WorldService refused for good (4xx other than 408/429): not retried.
pub struct SignalRejected<'a> {
    pub key: &'a str,
    pub status: u16,
}

impl SignalRejected<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        tracing::error!(
            idempotency_key = self.key,
            status = self.status,
            "WorldService rejected a signal; not retried (it stays on the signal topic)"
        );
        metrics
            .worldservice_posts
            .with_label_values(&["rejected"])
            .inc();
        metrics
            .worldservice_signals
            .with_label_values(&["rejected"])
            .inc();
    }
}

/// A signal older than `worldservice.max_signal_age_ms` when read: no longer current, not posted.
pub struct SignalExpired<'a> {
    pub key: &'a str,
    pub age_ms: i64,
}

impl SignalExpired<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        tracing::warn!(
            idempotency_key = self.key,
            age_ms = self.age_ms,
            "signal older than worldservice.max_signal_age_ms; not posted"
        );
        metrics
            .worldservice_signals
            .with_label_values(&["expired"])
            .inc();
    }
}

/// A post to one Alertmanager failed; the alert loop retries in 5 s.
pub struct AlertPostFailed<'a> {
    pub url: &'a str,
    pub error: &'a str,
}

impl AlertPostFailed<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        tracing::warn!(
            url = self.url,
            error = self.error,
            "cannot post alerts; retrying in 5 s"
        );
        metrics
            .alert_posts
            .with_label_values(&[self.url, "error"])
            .inc();
    }
}

/// A task's local store could not be used and was wiped; the task restores from the changelog.
pub struct StoreWiped<'a> {
    pub partition: i32,
    pub why: &'a str,
}

impl StoreWiped<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        tracing::warn!(
            partition = self.partition,
            why = self.why,
            "local store unusable; wiped, restoring from the changelog"
        );
        metrics.stores_wiped.inc();
    }
}

/// A restore found a commit its writer did not finish at the changelog's end; it was not
/// applied, and its keys are written again at the next commit.
pub struct UnfinishedCommitLeftOut {
    pub partition: i32,
    pub records: usize,
}

impl UnfinishedCommitLeftOut {
    pub fn emit(&self, _metrics: &Metrics) {
        tracing::warn!(
            partition = self.partition,
            records = self.records,
            "the changelog ends with a commit its writer did not finish; it was left out"
        );
    }
}

/// A task start waits for its store, locked by a stream thread still closing it.
pub struct StoreLockedWaiting<'a> {
    pub partition: i32,
    pub error: &'a anyhow::Error,
}

impl StoreLockedWaiting<'_> {
    pub fn emit(&self) {
        tracing::warn!(
            partition = self.partition,
            error = format!("{:#}", self.error),
            "store locked; waiting for it"
        );
    }
}

/// The consumer reported a failed rebalance (librdkafka retries it).
pub struct RebalanceFailed<'a> {
    pub error: &'a rdkafka::error::KafkaError,
}

impl RebalanceFailed<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        tracing::warn!(error = %self.error, "rebalance error");
        metrics.kafka_errors.with_label_values(&["rebalance"]).inc();
    }
}

/// A fatal error: every stream thread stops and the process exits non-zero.
pub struct ProcessorFatal<'a> {
    pub error: &'a str,
}

impl ProcessorFatal<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        tracing::error!(error = self.error, "fatal error; the processor stops");
        metrics.fatal_errors.inc();
    }
}

/// The instance's state changed (src/runtime/state.rs): one line per change, as Kafka Streams
/// logs its `State transition from A to B`.
pub struct StateChanged {
    pub from: crate::runtime::state::InstanceState,
    pub to: crate::runtime::state::InstanceState,
}

impl StateChanged {
    pub fn emit(&self, metrics: &Metrics) {
        let (from, to) = (self.from.as_str(), self.to.as_str());
        tracing::info!("ackwatch state {from} -> {to}");
        metrics.instance_state.with_label_values(&[from]).set(0);
        metrics.instance_state.with_label_values(&[to]).set(1);
    }
}

/// A shutdown took longer than `runtime.shutdown_timeout_ms`; the process exits at once.
pub struct ShutdownTimedOut;

impl ShutdownTimedOut {
    pub fn emit(&self) {
        tracing::error!("shutdown took longer than runtime.shutdown_timeout_ms; exiting");
    }
}

/// The HTTP endpoint stopped serving.
pub struct HttpServerStopped<'a> {
    pub error: &'a std::io::Error,
}

impl HttpServerStopped<'_> {
    pub fn emit(&self) {
        tracing::error!(error = %self.error, "http server stopped");
    }
}

/// The WorldService delivery stopped; processing goes on, the signal topic keeps every signal.
pub struct WorldServiceDeliveryStopped<'a> {
    pub error: &'a anyhow::Error,
}

impl WorldServiceDeliveryStopped<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        tracing::error!(
            error = format!("{:#}", self.error),
            "WorldService delivery stopped"
        );
        metrics
            .worldservice_posts
            .with_label_values(&["error"])
            .inc();
    }
}

/// The WorldService delivery could not read the signal topic; it retries in a second.
pub struct SignalTopicReadFailed<'a> {
    pub error: &'a rdkafka::error::KafkaError,
}

impl SignalTopicReadFailed<'_> {
    pub fn emit(&self) {
        tracing::warn!(error = %self.error, "signal topic read failed; retrying");
    }
}

/// The two input topics follow different partitioners: a world's activations and ACKs land on
/// different partition numbers, so every run of the affected worlds looks like missing ACKs and
/// orphan ACKs. Reported once per stream thread, loudly.
pub struct PartitionersDisagree<'a> {
    pub thread: usize,
    pub placements: &'a ackwatch_topology::partitioning::Placements,
    pub topics: [&'a str; 2],
}

impl PartitionersDisagree<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        use ackwatch_topology::Side;
        let names = |side: Side| {
            self.placements
                .consistent(side)
                .iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join(",")
        };
        tracing::error!(
            thread = self.thread,
            activation_topic = self.topics[0],
            activation_partitioner = names(Side::Activation).as_str(),
            ack_topic = self.topics[1],
            ack_partitioner = names(Side::Ack).as_str(),
            "the input topics follow different partitioners: a world's activations and ACKs are on \
             different partitions, so its runs look like missing and orphan ACKs; make WorldService \
             and the Gateways use one partitioner (murmur2, the Java default: librdkafka clients set \
             partitioner=murmur2_random)"
        );
        metrics.partitioners_disagree.set(self.thread, 1);
    }
}

/// A task's store had a checkpoint it could not be trusted with (deleted under it, an older copy
/// put back): rebuilt from the changelog's beginning.
pub struct StoreRebuilt<'a> {
    pub partition: i32,
    pub why: &'a str,
}

impl StoreRebuilt<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        tracing::warn!(
            partition = self.partition,
            why = self.why,
            "local store disagrees with its checkpoint; restoring it from the changelog's beginning"
        );
        metrics.stores_rebuilt.inc();
    }
}

/// exactly_once_v2: the broker refused the open transaction (an outage, a rebalance that fenced
/// its offsets); it is aborted and the thread's tasks restart from their last commit.
pub struct TransactionAborted {
    pub thread: usize,
    pub tasks: usize,
}

impl TransactionAborted {
    pub fn emit(&self, metrics: &Metrics) {
        tracing::warn!(
            thread = self.thread,
            tasks = self.tasks,
            "transaction refused by the broker; aborting it, the tasks restart from their last commit"
        );
        metrics.transactions_aborted.inc();
    }
}

/// A task could not start because the broker did not answer (its restore, offsets or seek);
/// it is started again once the brokers answer.
pub struct TaskStartDeferred<'a> {
    pub partition: i32,
    pub error: &'a anyhow::Error,
}

impl TaskStartDeferred<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        tracing::warn!(
            partition = self.partition,
            error = format!("{:#}", self.error),
            "task start deferred until the brokers answer"
        );
        metrics.task_starts_deferred.inc();
    }
}

/// The consumer lost its assignment (its session expired, e.g. in a broker outage): the tasks
/// close without a commit (another member may own the partitions already) and restart from the
/// changelog and the committed offsets when assigned again.
pub struct AssignmentLost<'a> {
    pub thread: usize,
    pub partitions: &'a [i32],
}

impl AssignmentLost<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        tracing::warn!(
            thread = self.thread,
            partitions = partition_list(self.partitions),
            "assignment lost (group session expired); tasks closed without a commit"
        );
        metrics.assignments_lost.inc();
    }
}

/// A revocation's commit did not finish within `COMMIT_TIMEOUT`: the revoked tasks close
/// without it (their next owner re-processes from the last commit).
pub struct RevocationCommitUnfinished {
    pub thread: usize,
}

impl RevocationCommitUnfinished {
    pub fn emit(&self, metrics: &Metrics) {
        tracing::warn!(
            thread = self.thread,
            "commit on revocation not acknowledged in time; revoked tasks close without it"
        );
        metrics.commit_failures.inc();
    }
}

/// exactly_once_v2: the producer was fenced (its transaction timed out on the coordinator, as in
/// a broker outage longer than `transaction.timeout.ms`): it is replaced by a new one and the
/// thread's tasks restart from their last commit.
pub struct ProducerReplaced<'a> {
    pub thread: usize,
    pub error: &'a anyhow::Error,
}

impl ProducerReplaced<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        tracing::warn!(
            thread = self.thread,
            error = format!("{:#}", self.error),
            "producer fenced; replacing it, the tasks restart from their last commit"
        );
        metrics.producers_replaced.inc();
    }
}

/// An input partition makes no progress although the broker holds records after its position
/// (`src/runtime/stalls.rs`): its deadlines cannot fire and its records are not judged.
pub struct PartitionStalled<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub position: i64,
    pub high: i64,
    pub for_: std::time::Duration,
}

impl PartitionStalled<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        let reason = format!(
            "no progress for {} s at offset {} while the broker's high watermark is {}: a \
             transaction another producer left open (read_committed readers stop at it until it \
             ends or times out), a record this client cannot read, or a stuck client; findings of \
             this partition are not raised meanwhile",
            self.for_.as_secs(),
            self.position,
            self.high
        );
        tracing::error!(
            topic = self.topic,
            partition = self.partition,
            reason = reason.as_str(),
            "input partition stalled"
        );
        metrics.stalls.set(self.topic, self.partition, reason);
    }
}

/// A stalled input partition progresses again.
pub struct PartitionProgressing<'a> {
    pub topic: &'a str,
    pub partition: i32,
}

impl PartitionProgressing<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        tracing::info!(
            topic = self.topic,
            partition = self.partition,
            "input partition progressing again"
        );
        metrics.stalls.clear(self.topic, self.partition);
    }
}

/// A standby copy was brought up to its changelog's last commit (`runtime/standby.rs`). Logged
/// at debug: it happens every second per standby partition.
pub struct StandbyUpdated<'a> {
    pub partition: i32,
    pub stats: &'a crate::runtime::changelog::RestoreStats,
}

impl StandbyUpdated<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        tracing::debug!(
            partition = self.partition,
            from_offset = self.stats.from_offset,
            to_offset = self.stats.to_offset,
            records = self.stats.records,
            full_restore_reason = self.stats.full_restore_reason.as_deref().unwrap_or(""),
            "standby updated"
        );
        metrics.standby_records.inc_by(self.stats.records);
    }
}

/// A standby update failed; the next round tries again. `logged`: whether to write the line
/// (the loop writes one per distinct error, not one a second).
pub struct StandbyUpdateFailed<'a> {
    /// None: the group could not be described.
    pub partition: Option<i32>,
    pub error: &'a anyhow::Error,
    pub logged: bool,
}

impl StandbyUpdateFailed<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        if self.logged {
            tracing::warn!(
                partition = self.partition,
                error = format!("{:#}", self.error),
                "standby update failed; retried every second, this line written again only for another error"
            );
        }
        metrics.standby_failures.inc();
    }
}
