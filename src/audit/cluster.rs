//! `ackwatch audit --bootstrap-servers ... --from T1 --to T2`: replays the retained input topics
//! of a live cluster over a window, with no side effects, and says what the live processor
//! should have emitted and where its outputs differ.
//!
//! - Records are read with an assign-only consumer: no consumer group is joined and no offset
//!   is committed anywhere. Reading starts `warmup` before T1 (found with
//!   offsets-for-times), so runs that began earlier are understood; records with a timestamp
//!   after T2 are left out, and the replay ends at T2 (deadlines before it fire, as they did
//!   live). Findings and signals are reported from T1 on.
//! - The gap and signal topics are read over the same window, and every output is compared by
//!   its idempotency key and value with what the replay emits for facts in [T1, T2): missing
//!   live, emitted live but not in the replay, or emitted with other content.

use std::collections::BTreeMap;
use std::time::Duration;

use ackwatch_topology::partition_group::Buffered;
use ackwatch_topology::report::Report;
use ackwatch_topology::time::{format_rfc3339_ms, parse_rfc3339_ms};
use ackwatch_topology::{Millis, Output, Side};
use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::Serialize;

use crate::audit::provenance::{ClusterRead, OffsetsRead, Provenance};
use crate::settings::Settings;
use crate::sinks::records as sink;
use ackwatch_topology::timeline::Timeline;
use ackwatch_topology::RunKey;
use ackwatch_topology::replay::Replay;

/// Longest a metadata or offsets request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Outputs of facts in the window may be emitted this long after it ends (a catch-up).
const OUTPUT_EMISSION_SLACK_MS: Millis = 3_600_000;
/// Differences listed in the report; more are counted.
pub const DIFFERENCES_LISTED_MAX: usize = 1000;

pub struct ClusterAudit {
    pub settings: Settings,
    pub from_ms: Millis,
    pub to_ms: Millis,
    pub warmup_ms: Millis,
    /// The warm-up as given (for the provenance).
    pub warmup: String,
    pub world: Option<String>,
    /// With `world`: the run whose timeline is kept.
    pub run: Option<String>,
    /// A progress bar on standard error while reading (when it is a terminal).
    pub progress: bool,
}

/// Where what ackwatch emitted live differs from what the replay says it should have.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Difference {
    pub topic: String,
    pub idempotency_key: String,
    /// `missing_live`, `unexpected_live` or `different_content`.
    pub what: &'static str,
    pub replay: Option<String>,
    pub live: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ClusterReport {
    pub provenance: Provenance,
    pub window: Window,
    #[serde(flatten)]
    pub report: Report,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeline: Option<Timeline>,
    /// ACK latencies of the window by phase: counts per bucket upper bound (ms; "+Inf" last).
    pub latency_by_phase: BTreeMap<String, Vec<(String, u64)>>,
    pub live_outputs_compared: usize,
    pub live_differences: Vec<Difference>,
    pub live_differences_total: usize,
}

#[derive(Debug, Serialize)]
pub struct Window {
    pub from: String,
    pub to: String,
    pub read_from: String,
    pub world_id: Option<String>,
}

/// Output records by idempotency key: (topic, value).
type Outputs = BTreeMap<String, (String, String)>;

/// What the replay gave: the report, the outputs it would have emitted in the window, and its
/// ACK latencies by phase.
struct Replayed {
    report: Report,
    timeline: Option<Timeline>,
    /// The input topics' offsets read.
    read: Ranges,
    expected: Outputs,
    latencies: BTreeMap<&'static str, Vec<u64>>,
}

/// Where the live outputs differ from the replay's, by idempotency key.
fn differences(expected: &Outputs, live: &Outputs) -> Vec<Difference> {
    let mut differences = Vec::new();
    for (key, (topic, value)) in expected {
        match live.get(key) {
            None => differences.push(Difference {
                topic: topic.clone(),
                idempotency_key: key.clone(),
                what: "missing_live",
                replay: Some(value.clone()),
                live: None,
            }),
            Some((_, v)) if v != value => differences.push(Difference {
                topic: topic.clone(),
                idempotency_key: key.clone(),
                what: "different_content",
                replay: Some(value.clone()),
                live: Some(v.clone()),
            }),
            Some(_) => {}
        }
    }
    for (key, (topic, value)) in live {
        if !expected.contains_key(key) {
            differences.push(Difference {
                topic: topic.clone(),
                idempotency_key: key.clone(),
                what: "unexpected_live",
                replay: None,
                live: Some(value.clone()),
            });
        }
    }
    differences
}

/// Per topic partition: where reading starts and the offset it stops before.
type Ranges = Vec<(String, i32, i64, i64)>;

impl ClusterAudit {
    fn consumer(&self) -> anyhow::Result<BaseConsumer> {
        // librdkafka wants a group.id even to assign; an assign-only consumer never joins the
        // group and this one commits nothing, so the id is never seen by the broker's groups.
        self.settings
            .kafka
            .client_config()
            .set("group.id", format!("ackwatch-audit-{}", std::process::id()))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("isolation.level", "read_committed")
            .create()
            .context("cannot create a Kafka consumer")
    }

    /// The offsets of `topics` between two record timestamps (the end: the first offset at or
    /// after `to_ts`, else the high watermark).
    fn ranges(
        &self,
        consumer: &BaseConsumer,
        topics: &[&str],
        from_ts: Millis,
        to_ts: Millis,
    ) -> anyhow::Result<Ranges> {
        let metadata = consumer
            .fetch_metadata(None, REQUEST_TIMEOUT)
            .with_context(|| {
                format!(
                    "cannot reach Kafka at {}",
                    self.settings.kafka.bootstrap_servers
                )
            })?;
        let mut ranges = Vec::new();
        for topic in topics {
            let partitions = metadata
                .topics()
                .iter()
                .find(|t| t.name() == *topic && t.error().is_none())
                .map(|t| t.partitions().len() as i32)
                .with_context(|| format!("topic {topic} does not exist"))?;
            let offsets_at = |ts: Millis| -> anyhow::Result<Vec<Option<i64>>> {
                let mut list = TopicPartitionList::new();
                for p in 0..partitions {
                    list.add_partition_offset(topic, p, Offset::Offset(ts))?;
                }
                let found = consumer.offsets_for_times(list, REQUEST_TIMEOUT)?;
                let result = (0..partitions)
                    .map(|p| {
                        found
                            .find_partition(topic, p)
                            .and_then(|e| e.offset().to_raw())
                            .filter(|o| *o >= 0)
                    })
                    .collect();
                drop(found);
                Ok(result)
            };
            let starts = offsets_at(from_ts)?;
            let ends = offsets_at(to_ts.saturating_add(1))?;
            for p in 0..partitions {
                let (low, high) = consumer.fetch_watermarks(topic, p, REQUEST_TIMEOUT)?;
                let start = starts[p as usize].unwrap_or(high).max(low);
                let end = ends[p as usize].unwrap_or(high);
                ranges.push((topic.to_string(), p, start, end));
            }
        }
        Ok(ranges)
    }

    /// Reads each range once, in offset order per partition, handing every record to `take`.
    fn read(
        &self,
        consumer: &BaseConsumer,
        ranges: &Ranges,
        mut take: impl FnMut(&str, i32, &rdkafka::message::BorrowedMessage<'_>),
    ) -> anyhow::Result<()> {
        let mut list = TopicPartitionList::new();
        let mut left: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for (topic, p, start, end) in ranges {
            if start < end {
                list.add_partition_offset(topic, *p, Offset::Offset(*start))?;
                left.insert((topic.clone(), *p), *end);
            }
        }
        consumer
            .assign(&list)
            .context("cannot assign the audit's partitions")?;
        drop(list);
        while !left.is_empty() {
            match consumer.poll(Duration::from_secs(10)) {
                None => anyhow::bail!(
                    "no record for 10 s while reading the window: is the cluster reachable?"
                ),
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    // EOF names only the partition: a range of it is done when the consumer's
                    // position passed its end (transaction markers are never delivered, so the
                    // last offset of a range may never arrive as a record).
                    let positions = consumer.position().context("cannot read positions")?;
                    left.retain(|(topic, part), end| {
                        let at = positions
                            .find_partition(topic, *part)
                            .and_then(|e| e.offset().to_raw())
                            .unwrap_or(-1);
                        *part != p || at < *end
                    });
                    drop(positions);
                }
                Some(Err(e)) => return Err(e).context("cannot read the window"),
                Some(Ok(m)) => {
                    let key = (m.topic().to_string(), m.partition());
                    let Some(end) = left.get(&key).copied() else {
                        continue;
                    };
                    if m.offset() < end {
                        take(m.topic(), m.partition(), &m);
                    }
                    if m.offset() + 1 >= end {
                        left.remove(&key);
                    }
                }
            }
        }
        consumer.unassign().ok();
        Ok(())
    }

    pub fn run(&self) -> anyhow::Result<ClusterReport> {
        anyhow::ensure!(self.from_ms < self.to_ms, "--from must be before --to");
        let read_from = self.from_ms - self.warmup_ms;
        let consumer = self.consumer()?;
        let replayed = self.replay(&consumer, read_from)?;
        let live = self.live_outputs(&consumer, read_from)?;
        let mut differences = differences(&replayed.expected, &live);
        let total = differences.len();
        differences.truncate(DIFFERENCES_LISTED_MAX);
        drop(consumer);
        let mut provenance = Provenance::new(self.settings.policy, &self.settings.topics);
        provenance.world_id = self.world.clone();
        provenance.run_id = self.run.clone();
        provenance.cluster = Some(ClusterRead {
            bootstrap_servers: self.settings.kafka.bootstrap_servers.clone(),
            warmup: self.warmup.clone(),
            read: replayed
                .read
                .iter()
                .map(|(topic, partition, from, to)| OffsetsRead {
                    topic: topic.clone(),
                    partition: *partition,
                    from_offset: *from,
                    to_offset: *to,
                })
                .collect(),
        });
        Ok(ClusterReport {
            provenance,
            timeline: replayed.timeline,
            window: Window {
                from: format_rfc3339_ms(self.from_ms),
                to: format_rfc3339_ms(self.to_ms),
                read_from: format_rfc3339_ms(read_from),
                world_id: self.world.clone(),
            },
            report: replayed.report,
            latency_by_phase: replayed
                .latencies
                .into_iter()
                .map(|(phase, samples)| (phase.to_string(), histogram(&samples)))
                .collect(),
            live_outputs_compared: live.len(),
            live_differences: differences,
            live_differences_total: total,
        })
    }

    /// The replay of the inputs from `read_from` to the window's end, remembering what it would
    /// have emitted for facts in the window (by idempotency key: topic and value).
    fn replay(&self, consumer: &BaseConsumer, read_from: Millis) -> anyhow::Result<Replayed> {
        let topics = &self.settings.topics;
        let (from, to) = (self.from_ms, self.to_ms);
        let inputs = self.ranges(consumer, &[&topics.activation, &topics.ack], read_from, to)?;
        let mut expected: Outputs = BTreeMap::new();
        let mut latencies: BTreeMap<&'static str, Vec<u64>> = BTreeMap::new();
        let mut observe = |output: &Output| {
            let at = match output {
                Output::Detected(d) => Some(d.detected_at),
                Output::Resolved(r) => Some(r.resolved_at),
                Output::Signal(s) => Some(s.at),
                _ => None,
            };
            if let Output::Latency { phase, ms, .. } = output {
                latencies.entry(phase.as_str()).or_default().push(*ms);
            }
            if let (Some(at), Some(encoded)) = (at, sink::encode(output)) {
                if (from..to).contains(&at) {
                    let topic = match encoded.sink {
                        sink::Sink::Gap => "gap",
                        sink::Sink::Signal => "signal",
                    };
                    expected.insert(encoded.idempotency_key, (topic.to_string(), encoded.value));
                }
            }
        };
        let mut replay = Replay::new(self.settings.policy, &mut observe);
        if let (Some(world), Some(run)) = (&self.world, &self.run) {
            replay = replay.with_timeline(RunKey::new(world, run));
        }
        let world = self.world.as_deref().map(str::as_bytes);
        let bar = progress_bar(self.progress, &inputs);
        self.read(consumer, &inputs, |topic, partition, m| {
            if let Some(bar) = &bar {
                bar.inc(1);
            }
            let side = if topic == topics.activation {
                Side::Activation
            } else {
                Side::Ack
            };
            let ts = m.timestamp().to_millis();
            if ts.is_some_and(|t| t > to) || world.is_some_and(|w| m.key() != Some(w)) {
                return;
            }
            replay.push(
                side,
                partition,
                Buffered {
                    offset: m.offset(),
                    timestamp_ms: ts,
                    key: m.key().map(Into::into),
                    value: m.payload().map(Into::into),
                },
            );
        })?;
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        let (mut report, timeline) = replay.finish_with_timeline(Some(to));
        let in_window = |t: &str| parse_rfc3339_ms(t).is_some_and(|t| t >= from);
        report.findings.retain(|f| in_window(&f.detected_at));
        report.signals.retain(|s| in_window(&s.at));
        report.recount();
        Ok(Replayed {
            report,
            timeline,
            read: inputs,
            expected,
            latencies,
        })
    }

    /// What ran live: the output topics' records of facts in the window, by idempotency key.
    fn live_outputs(&self, consumer: &BaseConsumer, read_from: Millis) -> anyhow::Result<Outputs> {
        let topics = &self.settings.topics;
        let (from, to) = (self.from_ms, self.to_ms);
        let outputs = self.ranges(
            consumer,
            &[&topics.gap, &topics.signal],
            read_from,
            to.saturating_add(OUTPUT_EMISSION_SLACK_MS),
        )?;
        let mut live: Outputs = BTreeMap::new();
        self.read(consumer, &outputs, |topic, _, m| {
            let Some(value) = m.payload().and_then(|v| std::str::from_utf8(v).ok()) else {
                return;
            };
            let Ok(json) = serde_json::from_str::<serde_json::Value>(value) else {
                return;
            };
            let at = ["at", "resolved_at", "detected_at"]
                .iter()
                .find_map(|k| json[*k].as_str().and_then(parse_rfc3339_ms));
            let in_window = at.is_some_and(|at| (from..to).contains(&at));
            let world_ok = self.world.as_deref().is_none_or(|w| json["world_id"] == w);
            if let (true, true, Some(key)) = (in_window, world_ok, json["idempotency_key"].as_str())
            {
                let name = if topic == topics.gap { "gap" } else { "signal" };
                live.insert(key.to_string(), (name.to_string(), value.to_string()));
            }
        })?;
        Ok(live)
    }
}

/// The reading's progress in records (the ranges' offsets; transaction markers make it end a
/// little short of 100%), when asked for and standard error is a terminal.
fn progress_bar(wanted: bool, ranges: &Ranges) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !wanted || !std::io::stderr().is_terminal() {
        return None;
    }
    let total: i64 = ranges.iter().map(|(_, _, start, end)| (end - start).max(0)).sum();
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} records {per_sec} eta {eta}",
        )
        .expect("static template"),
    );
    Some(bar)
}

/// Counts per bucket of `controlbus_apply_ack_latency_ms` (the same bounds as the metric).
pub fn histogram(samples: &[u64]) -> Vec<(String, u64)> {
    let bounds = crate::metrics::ACK_LATENCY_BUCKETS_MS;
    let mut counts = vec![0u64; bounds.len() + 1];
    for &ms in samples {
        let i = bounds
            .iter()
            .position(|b| ms as f64 <= *b)
            .unwrap_or(bounds.len());
        counts[i] += 1;
    }
    bounds
        .iter()
        .map(|b| format!("{b}"))
        .chain(std::iter::once("+Inf".to_string()))
        .zip(counts)
        .collect()
}

/// The text summary: the audit's, the window, and the live comparison.
pub fn summary(r: &ClusterReport) -> String {
    let mut s = format!(
        "window: {} to {} (read from {}{})\n",
        r.window.from,
        r.window.to,
        r.window.read_from,
        r.window
            .world_id
            .as_deref()
            .map_or(String::new(), |w| format!(", world {w}"))
    );
    s += &crate::audit::summary(&r.report);
    s += &format!(
        "live outputs in the window: {} compared, {} differences from the replay\n",
        r.live_outputs_compared, r.live_differences_total
    );
    for d in &r.live_differences {
        s += &format!("  {} {} {}\n", d.what, d.topic, d.idempotency_key);
    }
    s
}
