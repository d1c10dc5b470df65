//! The record collector of one stream thread (Kafka Streams' `RecordCollector`): its producer
//! and every record the thread writes — gap events, signals, dead letters and changelog records
//! — the waits for the broker's acknowledgements, the delivery checks, and under
//! `exactly_once_v2` the transaction that holds them.
//!
//! Longer than 600 lines because sends, flushes, delivery checks and the producer's replacement
//! share one producer and its delivery bookkeeping (`transaction.rs` already holds the
//! transaction's states); split, each part would reach into the other's fields.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ackwatch_topology::decode::Invalid;
use ackwatch_topology::time::format_rfc3339_ms;
use ackwatch_topology::{Millis, Output, PerSide, RawRecord};
use anyhow::{bail, Context as _};
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Message, TopicPartitionList};

use crate::events::{KafkaClientError, RecordDeadLettered, RunEscalated};
use crate::metrics::Metrics;
use crate::runtime::changelog;
use crate::runtime::transaction::{Transaction, TxnProgress, TxnState};
use crate::settings::{ClientKind, Guarantee, Settings, Topics};
use crate::sinks::records::{self as sink, DeadLetter, DeadLetterBudget, Sink};

/// Longest a revocation's or a shutdown's commit waits for the broker (the partitions move, or
/// the process stops, without it after that: a restart recovers from the changelog).
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest a commit of the processing loop waits for the broker at once: one that is not
/// acknowledged by then goes on at the next passes of the loop, which keeps polling (a
/// broker outage never stops the loop, and never fails the commit).
pub const COMMIT_WAIT: Duration = Duration::from_secs(1);
/// Longest `init_transactions` may take when the producer starts.
const INIT_TRANSACTIONS_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`RecordCollector::flush`] sleeps when a pass served no delivery report. rdkafka's
/// `poll(d)` serves reports until `d` has passed, and once less than a millisecond is left it
/// polls without blocking, i.e. spins: a third of a commit's wait was spent spinning on the
/// core the broker needs to acknowledge (BENCHMARKS.md, issue #19). Not blocking in librdkafka
/// and sleeping this long between passes costs at most this much latency per wait.
const FLUSH_SLEEP: Duration = Duration::from_micros(200);

/// Delivery reports of the producer.
pub struct ProducerCtx {
    changelog_topic: String,
    dead_letter_topic: String,
    /// Dead letters the broker refused as too large: their stubs wait to be sent.
    stubs: Mutex<Vec<OwnedStub>>,
    failures: AtomicU64,
    first_failure: Mutex<Option<String>>,
    /// Per changelog partition, the offset after the last record the broker acknowledged.
    changelog_end: Mutex<BTreeMap<i32, i64>>,
    metrics: Arc<Metrics>,
}

/// A stub to send in place of a dead letter the broker refused (owned: built in the delivery
/// callback from the refused record's headers).
struct OwnedStub {
    key: Option<Vec<u8>>,
    headers: Vec<(String, String)>,
}

impl ProducerCtx {
    fn new(changelog_topic: String, dead_letter_topic: String, metrics: Arc<Metrics>) -> Self {
        ProducerCtx {
            changelog_topic,
            dead_letter_topic,
            stubs: Mutex::new(Vec::new()),
            failures: AtomicU64::new(0),
            first_failure: Mutex::new(None),
            changelog_end: Mutex::new(BTreeMap::new()),
            metrics,
        }
    }
}

/// The producer reports client errors too: while a commit waits for acknowledgements the
/// consumer is not polled, and an outage that starts then must show in the metrics during the
/// wait (up to `COMMIT_TIMEOUT`), not only after it.
impl ClientContext for ProducerCtx {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        KafkaClientError::of(&error, reason).emit(&self.metrics);
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
            // Records of an aborted transaction, purged by the abort: produced again after it.
            Err((e, _))
                if matches!(
                    e.rdkafka_error_code(),
                    Some(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight)
                ) => {}
            Err((e, m))
                if m.topic() == self.dead_letter_topic
                    && e.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge) =>
            {
                // Poison never stops processing: a dead letter the broker still refuses (its
                // topic's limit lowered since the start) is replaced by a stub.
                use rdkafka::message::Headers;
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                let value = String::from_utf8_lossy(h.value.unwrap_or_default());
                                (h.key.to_string(), value.into_owned())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let key = m.key().map(|k| k[..k.len().min(64)].to_vec());
                self.stubs
                    .lock()
                    .expect("not poisoned")
                    .push(OwnedStub { key, headers });
            }
            Err((e, m)) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                let mut first = self.first_failure.lock().expect("not poisoned");
                first.get_or_insert_with(|| format!("{}[{}]: {e}", m.topic(), m.partition()));
            }
        }
    }
}

/// A stream thread's producer and what it writes.
pub struct RecordCollector {
    producer: BaseProducer<ProducerCtx>,
    eos: bool,
    /// Under exactly_once_v2, the producer's transaction (idle under at_least_once).
    txn: Transaction,
    topics: Topics,
    input_topics: PerSide<String>,
    changelog_topic: String,
    /// What a dead letter must stay under (the producer's and the topic's size limits).
    dead_letter_budget: DeadLetterBudget,
    metrics: Arc<Metrics>,
    /// Set when an output may change the firing alerts, so the alert loop posts soon (shared
    /// by every stream thread).
    alerts_dirty: Arc<AtomicBool>,
    /// What the producer was made from, to make it again ([`Self::replace_producer`]).
    settings: Settings,
    thread: usize,
    dead_letter_max_bytes: Option<usize>,
}

impl RecordCollector {
    /// The producer of stream thread `thread`: idempotent, and under exactly_once_v2
    /// transactional with the thread's own transactional id.
    pub fn new(
        settings: &Settings,
        metrics: Arc<Metrics>,
        thread: usize,
        dead_letter_max_bytes: Option<usize>,
        alerts_dirty: Arc<AtomicBool>,
    ) -> anyhow::Result<Self> {
        let changelog_topic = changelog::topic_name(&settings.runtime.application_id);
        let eos = settings.runtime.processing_guarantee == Guarantee::ExactlyOnceV2;
        let mut config =
            settings.client_config(ClientKind::Producer, &format!("t{thread}-producer"));
        config
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("compression.type", "lz4");
        // Outputs keyed by world_id land where Java and Python clients would put them
        // (murmur2), so consumers that join them with other world-keyed topics co-partition.
        if !settings.kafka.properties.contains_key("partitioner") {
            config.set("partitioner", "murmur2_random");
        }
        // at_least_once: a record is retried until the broker takes it, however long an outage
        // lasts (librdkafka's default gives up after 5 minutes, and an output given up is an
        // output lost). exactly_once_v2 bounds it by the transaction instead.
        if !eos && !settings.kafka.properties.contains_key("message.timeout.ms") {
            config.set("message.timeout.ms", "0");
        }
        if eos {
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
        let ctx = ProducerCtx::new(
            changelog_topic.clone(),
            settings.topics.dead_letter.clone(),
            metrics.clone(),
        );
        let producer: BaseProducer<ProducerCtx> = config
            .create_with_context(ctx)
            .context("cannot create the producer")?;
        let producer_max_bytes = settings
            .kafka
            .properties
            .get("message.max.bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(DeadLetterBudget::PRODUCER_DEFAULT);
        if eos {
            producer
                .init_transactions(INIT_TRANSACTIONS_TIMEOUT)
                .context("cannot initialise transactions (exactly_once_v2)")?;
        }
        Ok(RecordCollector {
            producer,
            eos,
            txn: Transaction::new(),
            topics: settings.topics.clone(),
            input_topics: PerSide::new(
                settings.topics.activation.clone(),
                settings.topics.ack.clone(),
            ),
            changelog_topic,
            dead_letter_budget: DeadLetterBudget::new(producer_max_bytes, dead_letter_max_bytes),
            metrics,
            alerts_dirty,
            settings: settings.clone(),
            thread,
            dead_letter_max_bytes,
        })
    }

    /// The producer has a fatal error (under exactly_once_v2: fenced, e.g. its transaction
    /// timed out on the coordinator during a broker outage): it can produce nothing more.
    pub fn producer_failed(&self) -> bool {
        self.producer.client().fatal_error().is_some()
    }

    /// Replaces a failed producer with a new one of the same transactional id (its
    /// `init_transactions` bumps the epoch and aborts what the old one left open), as Kafka
    /// Streams does after a fencing. The old one's records are purged.
    pub fn replace_producer(&mut self) -> anyhow::Result<()> {
        let new = RecordCollector::new(
            &self.settings,
            self.metrics.clone(),
            self.thread,
            self.dead_letter_max_bytes,
            self.alerts_dirty.clone(),
        )?;
        *self = new;
        Ok(())
    }

    pub fn is_transactional(&self) -> bool {
        self.eos
    }

    /// A transaction is open or being committed.
    pub fn in_transaction(&self) -> bool {
        !matches!(self.txn.state, TxnState::Idle | TxnState::Aborting)
    }

    /// Whether processing may produce records now (not while a transaction is being committed
    /// or aborted).
    pub fn accepts_records(&self) -> bool {
        self.txn.accepts_records()
    }

    /// Whether a task may start now: at_least_once, every record produced so far acknowledged
    /// (a restore must see the changelog records of a commit that was still under way);
    /// exactly_once_v2, no transaction waiting to be aborted.
    pub fn can_start_tasks(&self) -> bool {
        if self.eos {
            self.txn.accepts_records()
        } else {
            self.producer.poll(Duration::ZERO);
            self.producer.in_flight_count() == 0
        }
    }

    /// Whether a transaction waits to be aborted ([`Self::abort`]).
    pub fn is_aborting(&self) -> bool {
        self.txn.state == TxnState::Aborting
    }

    /// The open transaction will be aborted (the assignment was lost, or the tasks restart).
    pub fn abandon(&mut self) {
        self.txn.abandon();
    }

    /// Aborts the transaction waiting to be aborted, waiting at most `wait`; `Retry` while
    /// the broker does not answer. The records it held were purged; their delivery failures
    /// are forgotten (the records are produced again when the tasks re-process them).
    pub fn abort(&mut self, wait: Duration) -> anyhow::Result<TxnProgress> {
        let progress = self.txn.abort(&self.producer, wait)?;
        if progress == TxnProgress::Done {
            self.producer.poll(Duration::ZERO);
            let ctx = self.producer.context();
            ctx.failures.store(0, Ordering::Relaxed);
            *ctx.first_failure.lock().expect("not poisoned") = None;
            ctx.stubs.lock().expect("not poisoned").clear();
            self.take_changelog_ends();
        }
        Ok(progress)
    }

    /// The producer's client, for requests that must not queue behind the consumer's fetch
    /// (the broker answers a connection's requests in order).
    pub fn client(&self) -> &rdkafka::client::Client<ProducerCtx> {
        self.producer.client()
    }

    /// Serves the producer's delivery reports.
    pub fn poll(&self) {
        self.producer.poll(Duration::ZERO);
    }

    /// Produces every output record of `outputs` (gap events, signals) and counts each output;
    /// `now_ms` is their emission time (`ackwatch.emitted_at`).
    pub fn emit(&mut self, outputs: &mut Vec<Output>, now_ms: Millis) -> anyhow::Result<()> {
        for output in outputs.drain(..) {
            self.count(&output, now_ms);
            let Some(encoded) = sink::encode(&output) else {
                continue;
            };
            let topic = match encoded.sink {
                Sink::Gap => &self.topics.gap,
                Sink::Signal => &self.topics.signal,
            }
            .clone();
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
        Ok(())
    }

    /// The metrics and log lines of one engine output.
    fn count(&self, output: &Output, now_ms: Millis) {
        let metrics = &self.metrics;
        if matches!(
            output,
            Output::Detected(_)
                | Output::Resolved(_)
                | Output::Escalated { .. }
                | Output::Released { .. }
        ) {
            self.alerts_dirty.store(true, Ordering::Relaxed);
        }
        match output {
            Output::Detected(d) => {
                metrics
                    .findings_raised
                    .with_label_values(&[d.kind.as_str()])
                    .inc_by(d.sequences.len() as u64);
                metrics
                    .detection_delay
                    .observe(now_ms.saturating_sub(d.detected_at).max(0) as f64 / 1000.0);
            }
            Output::Resolved(r) => metrics
                .findings_resolved
                .with_label_values(&[r.kind.as_str()])
                .inc_by(r.sequences.len() as u64),
            Output::Signal(s) => metrics
                .signals
                .with_label_values(&[s.action.as_str()])
                .inc(),
            Output::Escalated { run, episode, .. } => RunEscalated {
                world_id: &run.world_id,
                run_id: &run.run_id,
                episode: *episode,
            }
            .emit(metrics),
            Output::Latency { phase, ms, .. } => metrics
                .ack_latency_ms
                .with_label_values(&[phase.as_str()])
                .observe(*ms as f64),
            Output::Released { .. } | Output::RunDropped { .. } => {}
        }
    }

    /// Writes an invalid input record to the dead-letter topic with its reason and origin, key,
    /// headers and value held under the dead-letter budget; one the producer still refuses as
    /// too large is replaced by a stub (reason and origin only). Poison never stops processing.
    pub fn dead_letter(&mut self, invalid: &Invalid, raw: &RawRecord<'_>) -> anyhow::Result<()> {
        let topic = &self.input_topics[raw.side];
        let origin = sink::Origin {
            topic,
            partition: raw.partition,
            offset: raw.offset,
        };
        let letter = DeadLetter::new(invalid, origin, raw.key, raw.value, self.dead_letter_budget);
        let dead_letter_topic = self.topics.dead_letter.clone();
        let stubbed = match self.send_dead_letter(&dead_letter_topic, &letter) {
            Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge) => {
                self.send_dead_letter(&dead_letter_topic, &letter.stub())
                    .context("cannot produce a dead letter's stub")?;
                true
            }
            other => {
                other.with_context(|| format!("cannot produce to {dead_letter_topic}"))?;
                false
            }
        };
        RecordDeadLettered {
            topic: &self.input_topics[raw.side],
            partition: raw.partition,
            offset: raw.offset,
            reason: invalid.reason.label(),
            cut: letter.cut,
            stubbed,
        }
        .emit(&self.metrics);
        Ok(())
    }

    fn send_dead_letter(
        &mut self,
        topic: &str,
        letter: &DeadLetter<'_>,
    ) -> Result<(), rdkafka::error::KafkaError> {
        let mut headers = OwnedHeaders::new();
        for (name, value) in &letter.headers {
            headers = headers.insert(Header {
                key: name,
                value: Some(value.as_bytes()),
            });
        }
        self.send_record(topic, None, letter.key, letter.value, Some(headers))
    }

    /// Produces one changelog record to `partition` of the changelog topic.
    pub fn send_changelog(
        &mut self,
        partition: i32,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> anyhow::Result<()> {
        let topic = self.changelog_topic.clone();
        // No headers: an empty header list is still allocated and sent per record.
        self.send(&topic, Some(partition), Some(key), value, None)
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
        self.send_record(topic, partition, key, payload, headers)
            .with_context(|| format!("cannot produce to {topic}"))
    }

    /// [`Self::send`], with the client's error.
    fn send_record(
        &mut self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
    ) -> Result<(), rdkafka::error::KafkaError> {
        if self.eos {
            self.txn.begin_if_idle(&self.producer)?;
        }
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
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// Adds the input offsets to the transaction (one is begun if needed, so offsets move even
    /// when nothing was produced) and commits it (exactly_once_v2), each step waiting at most
    /// `wait`: `Retry` calls again later, `MustAbort` aborts ([`Self::abort`]).
    pub fn commit_transaction(
        &mut self,
        offsets: &TopicPartitionList,
        group: &ConsumerGroupMetadata,
        wait: Duration,
    ) -> anyhow::Result<TxnProgress> {
        self.txn.commit(&self.producer, offsets, group, wait)
    }

    /// Waits at most `wait` until the broker acknowledged every record produced so far; returns
    /// whether it did. Not rdkafka's `flush`: it waits in `poll(100 ms)`, and `poll` returns
    /// only at its deadline, so every flush with anything in flight took at least 100 ms — two
    /// of them were half of a commit. Here the delivery reports are served as they come, with a
    /// [`FLUSH_SLEEP`] pause after a pass that served none.
    pub fn flush(&mut self, wait: Duration) -> anyhow::Result<bool> {
        let deadline = Instant::now() + wait;
        loop {
            let before = self.producer.in_flight_count();
            // Serves at most one event (a delivery report batch) without blocking.
            self.producer.poll(Duration::ZERO);
            self.send_stubs()?;
            let after = self.producer.in_flight_count();
            if after == 0 {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            if after >= before {
                std::thread::sleep(FLUSH_SLEEP);
            }
        }
    }

    /// Sends the stubs of dead letters the broker refused as too large.
    fn send_stubs(&mut self) -> anyhow::Result<()> {
        let stubs =
            std::mem::take(&mut *self.producer.context().stubs.lock().expect("not poisoned"));
        let topic = self.topics.dead_letter.clone();
        for stub in stubs {
            let mut headers = OwnedHeaders::new();
            for (name, value) in stub
                .headers
                .iter()
                .chain([&("ackwatch.stub".to_string(), "true".to_string())])
            {
                headers = headers.insert(Header {
                    key: name,
                    value: Some(value.as_bytes()),
                });
            }
            self.send(&topic, None, stub.key.as_deref(), None, Some(headers))?;
            crate::events::DeadLetterStubbed { topic: &topic }.emit(&self.metrics);
        }
        Ok(())
    }

    /// Fails when the producer reported a record it could not deliver.
    pub fn check_deliveries(&self) -> anyhow::Result<()> {
        let ctx = self.producer.context();
        let failures = ctx.failures.load(Ordering::Relaxed);
        if failures > 0 {
            let first = ctx
                .first_failure
                .lock()
                .expect("not poisoned")
                .clone()
                .unwrap_or_default();
            bail!("{failures} records were not delivered (first: {first}); outputs may be missing, so offsets are not committed");
        }
        Ok(())
    }

    /// Per changelog partition, the offset after the last record acknowledged since the last
    /// call (what a store's checkpoint records).
    pub fn take_changelog_ends(&self) -> BTreeMap<i32, i64> {
        std::mem::take(
            &mut *self
                .producer
                .context()
                .changelog_end
                .lock()
                .expect("not poisoned"),
        )
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
        let ctx = ProducerCtx::new("c".into(), "d".into(), metrics.clone());
        let check = |code: RDKafkaErrorCode, down: bool| {
            ctx.error(rdkafka::error::KafkaError::Global(code), "test");
            assert_eq!(metrics.brokers.is_down(), down, "{code:?}");
            assert!(
                metrics.render().contains(&format!(
                    "ackwatch_kafka_errors_total{{code=\"{code:?}\"}} 1"
                )),
                "{code:?} counted"
            );
        };
        check(RDKafkaErrorCode::BrokerTransportFailure, false);
        check(RDKafkaErrorCode::AllBrokersDown, true);
    }
}
