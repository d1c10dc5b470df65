//! `ackwatch loadgen`: the simulator's traffic (src/simulator.rs) produced to a Kafka cluster,
//! or written as `kcat -J` lines for audits and tests, with the ground truth beside it.
//!
//! Live, records are paced: each is produced when the wall clock reaches its record timestamp,
//! so ackwatch sees traffic as the real producers would send it. Unpaced (`--no-pace`), records
//! go out as fast as the producer takes them (the throughput figure in BENCHMARKS.md); their
//! timestamps still follow the schedule.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ackwatch_topology::Millis;
use anyhow::Context as _;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;

use super::{SimSpec, Simulation, Truth};
use crate::runtime::wall_ms;
use crate::settings::Settings;

/// Longest the final flush waits for the broker to acknowledge what was produced.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(120);
/// How far ahead of its timestamp a paced record may be produced (batching).
const PACE_AHEAD_MS: Millis = 2;

/// What a load generation did.
#[derive(Debug, Default)]
pub struct Produced {
    pub records: u64,
    pub bytes: u64,
    pub elapsed: Duration,
}

impl Produced {
    pub fn rate(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

#[derive(Default)]
struct Deliveries {
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            self.first_error
                .lock()
                .expect("not poisoned")
                .get_or_insert_with(|| e.to_string());
        }
    }
}

/// The partition count of the input topics, which must be co-partitioned.
pub fn input_partitions(settings: &Settings) -> anyhow::Result<i32> {
    use rdkafka::consumer::Consumer as _;
    let consumer: rdkafka::consumer::BaseConsumer = settings
        .kafka
        .client_config()
        .create()
        .context("cannot create a Kafka client")?;
    let count = |topic: &str| -> anyhow::Result<i32> {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(15))
            .with_context(|| {
                format!("cannot reach Kafka at {}", settings.kafka.bootstrap_servers)
            })?;
        metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
            .map(|t| t.partitions().len() as i32)
            .with_context(|| {
                format!("topic {topic} does not exist: create it first (deploy/create-topics.sh)")
            })
    };
    let (a, k) = (
        count(&settings.topics.activation)?,
        count(&settings.topics.ack)?,
    );
    anyhow::ensure!(
        a == k,
        "{} has {a} partitions and {} has {k}: they must be co-partitioned",
        settings.topics.activation,
        settings.topics.ack
    );
    Ok(a)
}

/// When `produce` sends each record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pacing {
    /// When the wall clock reaches the record's timestamp, as the real producers would.
    AtRecordTime,
    /// As fast as the broker takes them (`--no-pace`).
    FlatOut,
}

/// Produces the simulation to the cluster `settings` names (its topics), paced or not;
/// `stop` ends it early. Returns what was produced and the truth of it.
pub fn produce(
    settings: &Settings,
    spec: SimSpec,
    pacing: Pacing,
    stop: &std::sync::atomic::AtomicBool,
    mut progress: impl FnMut(&Produced),
) -> anyhow::Result<(Produced, Truth)> {
    let mut config = settings.kafka.client_config();
    for (key, value) in [
        ("linger.ms", "5"),
        ("batch.num.messages", "10000"),
        ("queue.buffering.max.messages", "1000000"),
        ("queue.buffering.max.kbytes", "65536"),
        ("compression.type", "lz4"),
    ] {
        if !settings.kafka.properties.contains_key(key) {
            config.set(key, value);
        }
    }
    let producer: BaseProducer<Deliveries> = config
        .create_with_context(Deliveries::default())
        .context("cannot create the producer")?;
    let mut sim = Simulation::new(spec)?;
    let mut done = Produced::default();
    let started = Instant::now();
    let mut last_progress = Instant::now();
    for record in sim.by_ref() {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let ts = record.ts.expect("simulated records have timestamps");
        if pacing == Pacing::AtRecordTime {
            loop {
                let wait = ts - PACE_AHEAD_MS - wall_ms();
                if wait <= 0 {
                    break;
                }
                producer.poll(Duration::ZERO);
                std::thread::sleep(Duration::from_millis(wait.min(20) as u64));
            }
        }
        let topic = if record.topic == "activation" {
            &settings.topics.activation
        } else {
            &settings.topics.ack
        };
        let payload = record.payload.as_deref().unwrap_or_default();
        let mut out = BaseRecord::<str, str>::to(topic)
            .partition(record.partition)
            .timestamp(ts)
            .payload(payload);
        if let Some(key) = record.key.as_deref() {
            out = out.key(key);
        }
        loop {
            match producer.send(out) {
                Ok(()) => break,
                Err((e, back)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                    producer.poll(Duration::from_millis(5));
                    out = back;
                }
                Err((e, _)) => anyhow::bail!("cannot produce to {topic}: {e}"),
            }
        }
        done.records += 1;
        done.bytes += payload.len() as u64;
        if done.records % 4096 == 0 {
            producer.poll(Duration::ZERO);
        }
        // Progress about every second, also at a demo's few hundred records/s.
        if done.records % 64 == 0 && last_progress.elapsed() >= Duration::from_secs(1) {
            done.elapsed = started.elapsed();
            progress(&done);
            last_progress = Instant::now();
        }
    }
    producer
        .flush(FLUSH_TIMEOUT)
        .context("the broker did not acknowledge the records in time")?;
    done.elapsed = started.elapsed();
    let failed = producer.context().failed.load(Ordering::Relaxed);
    if failed > 0 {
        let first = producer
            .context()
            .first_error
            .lock()
            .expect("not poisoned")
            .clone();
        anyhow::bail!(
            "{failed} records were not delivered (first error: {}); the truth does not describe what the cluster holds",
            first.unwrap_or_default()
        );
    }
    Ok((done, sim.truth()))
}

/// Writes the simulation as `kcat -J` lines (one record per line) to `path`.
pub fn write_kcat(path: &Path, spec: SimSpec) -> anyhow::Result<(Produced, Truth)> {
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut sim = Simulation::new(spec)?;
    let mut done = Produced::default();
    let started = Instant::now();
    for record in sim.by_ref() {
        serde_json::to_writer(&mut out, &record)?;
        out.write_all(b"\n")?;
        done.records += 1;
        done.bytes += record.payload.as_ref().map_or(0, |p| p.len()) as u64;
    }
    out.flush()
        .with_context(|| format!("cannot write {}", path.display()))?;
    done.elapsed = started.elapsed();
    Ok((done, sim.truth()))
}

/// Writes the truth as JSON.
pub fn write_truth(path: &Path, truth: &Truth) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(truth)?;
    std::fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))
}

/// "30s", "2m", "1500ms", "1h", or plain seconds (the command line's durations).
pub fn parse_duration_ms(text: &str) -> anyhow::Result<Millis> {
    ackwatch_topology::time::parse_duration_ms(text, 1000).map_err(anyhow::Error::msg)
}

/// A short account of a truth, for terminals.
pub fn truth_summary(truth: &Truth) -> String {
    let mut by_kind = std::collections::BTreeMap::<&str, usize>::new();
    for f in &truth.live_findings {
        *by_kind.entry(f.kind.as_str()).or_default() += 1;
    }
    let mut by_action = std::collections::BTreeMap::<&str, usize>::new();
    for s in &truth.live_signals {
        *by_action.entry(s.action.as_str()).or_default() += 1;
    }
    format!(
        "truth: {} findings {:?}, {} signals {:?}; {} tracked activations, {} acks, {} duplicates, {} untracked, {} poison",
        truth.live_findings.len(),
        by_kind,
        truth.live_signals.len(),
        by_action,
        truth.tracked,
        truth.acks,
        truth.duplicates,
        truth.untracked,
        truth.poison_records
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let check = |text: &str, expected: Option<Millis>| {
            assert_eq!(parse_duration_ms(text).ok(), expected, "{text}")
        };
        check("30", Some(30_000));
        check("30s", Some(30_000));
        check("1500ms", Some(1500));
        check("2m", Some(120_000));
        check("1h", Some(3_600_000));
        check("2w", None);
        check("soon", None);
        check("", None);
    }
}
