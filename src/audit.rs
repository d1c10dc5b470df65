//! `ackwatch audit` over `kcat -J` files: replays the records with fresh state and no side
//! effects, through the same engine as the live processor, and builds the SPEC §5 report.
//!
//! Records are streamed: each partition's two topics are merged by record timestamp as soon
//! as both have a buffered head, so memory holds only the skew between the two topics in the
//! file, not the whole file.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal};
use std::path::PathBuf;

use ackwatch_topology::partition_group::{Buffered, Next, PartitionGroup};
use ackwatch_topology::report::{Report, ReportBuilder};
use ackwatch_topology::{Millis, Output, Policy, Source, Task};
use anyhow::Context;

use crate::kcat::parse_line;
use crate::settings::Topics;

/// Malformed input lines printed before the audit only counts them.
const MALFORMED_LINES_PRINTED_MAX: u64 = 20;

pub struct FileAudit {
    pub inputs: Vec<PathBuf>,
    pub topics: Topics,
    pub policy: Policy,
    pub progress: bool,
    /// When the replayed window ends: deadlines before it fire (as they did live, where stream
    /// time follows the wall clock) instead of being reported as `pending_at_end`. `None`: the
    /// input ends at the largest event time it holds (SPEC §4).
    pub end_ms: Option<Millis>,
}

struct PartitionTask {
    group: PartitionGroup<Buffered>,
    task: Task,
}

impl PartitionTask {
    fn drain(
        &mut self,
        partition: i32,
        bounded_end: bool,
        outputs: &mut Vec<Output>,
        report: &mut ReportBuilder,
        observe: &mut dyn FnMut(&Output),
    ) {
        // A file gives no high watermark: until its end, wait for both topics to have a head.
        let caught_up = [bounded_end, bounded_end];
        while let Next::Record(source, record) = self.group.next(0, caught_up) {
            self.task
                .process(&record.as_raw(source, partition), outputs);
            for output in outputs.drain(..) {
                observe(&output);
                report.observe(&output);
            }
        }
    }
}

/// The engine over a bounded input, as the live processor runs it: one task per partition, the
/// two topics of a partition merged by record timestamp. Used by the file and cluster audits.
pub struct Replay<'o> {
    policy: Policy,
    tasks: BTreeMap<i32, PartitionTask>,
    outputs: Vec<Output>,
    pub report: ReportBuilder,
    observe: &'o mut dyn FnMut(&Output),
}

impl<'o> Replay<'o> {
    pub fn new(policy: Policy, observe: &'o mut dyn FnMut(&Output)) -> Self {
        Replay {
            policy,
            tasks: BTreeMap::new(),
            outputs: Vec::new(),
            report: ReportBuilder::default(),
            observe,
        }
    }

    /// Takes one record of `partition` and processes what the merge releases.
    pub fn push(&mut self, source: Source, partition: i32, record: Buffered) {
        let policy = self.policy;
        let entry = self
            .tasks
            .entry(partition)
            .or_insert_with(|| PartitionTask {
                group: PartitionGroup::new(Millis::MAX),
                task: Task::new(policy),
            });
        entry.group.push(source, record.timestamp_ms, record);
        entry.drain(
            partition,
            false,
            &mut self.outputs,
            &mut self.report,
            self.observe,
        );
    }

    /// The input ended: every buffered record is processed, then (with `end_ms`) deadlines
    /// before it fire, as they did live; the rest are pending at the end.
    pub fn finish(mut self, end_ms: Option<Millis>) -> Report {
        for (partition, mut entry) in std::mem::take(&mut self.tasks) {
            entry.drain(
                partition,
                true,
                &mut self.outputs,
                &mut self.report,
                self.observe,
            );
            if let Some(end) = end_ms {
                entry.task.punctuate(end, &mut self.outputs);
                for output in self.outputs.drain(..) {
                    (self.observe)(&output);
                    self.report.observe(&output);
                }
            }
            self.report.finish_task(&entry.task);
        }
        self.report.build()
    }
}

impl FileAudit {
    pub fn run(&self) -> anyhow::Result<Report> {
        self.run_with(&mut |_| {})
    }

    /// [`Self::run`], showing every engine output to `observe` as it happens (gap events and
    /// signals carry the idempotency keys the live processor emits).
    pub fn run_with(&self, observe: &mut dyn FnMut(&Output)) -> anyhow::Result<Report> {
        let total_bytes: u64 = self
            .inputs
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        let bar = (self.progress && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(total_bytes);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .expect("static template"),
            );
            bar
        });

        let mut replay = Replay::new(self.policy, observe);
        for path in &self.inputs {
            let file = File::open(path)
                .with_context(|| format!("cannot open input {}", path.display()))?;
            let mut reader = BufReader::with_capacity(1 << 20, file);
            let mut line = String::new();
            let mut line_no = 0u64;
            loop {
                line.clear();
                let n = reader
                    .read_line(&mut line)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                if n == 0 {
                    break;
                }
                line_no += 1;
                if let Some(bar) = &bar {
                    bar.inc(n as u64);
                }
                if line.trim().is_empty() {
                    continue;
                }
                let record = match parse_line(line.trim_end()) {
                    Ok(record) => record,
                    Err(why) => {
                        replay.report.malformed_lines += 1;
                        if replay.report.malformed_lines <= MALFORMED_LINES_PRINTED_MAX {
                            eprintln!("{}:{line_no}: skipped: {why}", path.display());
                        }
                        continue;
                    }
                };
                let source = if record.topic == self.topics.activation {
                    Source::Activation
                } else if record.topic == self.topics.ack {
                    Source::Ack
                } else {
                    replay.report.other_topic += 1;
                    continue;
                };
                replay.push(
                    source,
                    record.partition,
                    Buffered {
                        offset: record.offset,
                        timestamp_ms: record.timestamp_ms,
                        key: record.key.map(|k| k.as_bytes().into()),
                        value: record.payload.map(|p| p.as_bytes().into()),
                    },
                );
            }
        }
        if replay.report.malformed_lines > MALFORMED_LINES_PRINTED_MAX {
            eprintln!(
                "... {} malformed lines in all",
                replay.report.malformed_lines
            );
        }
        let report = replay.finish(self.end_ms);
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        Ok(report)
    }
}

/// The human summary of a report.
pub fn summary(report: &Report) -> String {
    use std::fmt::Write;
    let t = &report.totals;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "records: {} ({} tracked, {} acks, {} untracked, {} duplicates, {} invalid{})",
        t.records,
        t.tracked,
        t.acks,
        t.untracked,
        t.duplicates,
        t.invalid,
        if t.malformed_lines > 0 {
            format!(", {} malformed lines skipped", t.malformed_lines)
        } else {
            String::new()
        }
    );
    if !t.invalid_by_reason.is_empty() {
        let reasons: Vec<String> = t
            .invalid_by_reason
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(s, "invalid by reason: {}", reasons.join(", "));
    }
    let _ = writeln!(s, "runs: {}", report.runs.len());
    match t.latency_ms {
        Some(p) => {
            let _ = writeln!(
                s,
                "ack latency ms: p50 {} p95 {} p99 {} max {}",
                p.p50, p.p95, p.p99, p.max
            );
        }
        None => {
            let _ = writeln!(s, "ack latency ms: no acked activations");
        }
    }
    let raised: Vec<String> = t
        .findings_raised
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let _ = writeln!(s, "findings (sequences): {}", raised.join(", "));
    for f in &report.findings {
        let state = match &f.resolved_at {
            Some(at) => format!("resolved {at}"),
            None => "OPEN".to_string(),
        };
        let _ = writeln!(
            s,
            "  {} {:<17} {}/{} seq {:?} {}",
            f.detected_at,
            f.kind.as_str(),
            f.world_id,
            f.run_id,
            f.sequences,
            state
        );
    }
    let _ = writeln!(s, "signals: {}", report.signals.len());
    for sig in &report.signals {
        let _ = writeln!(
            s,
            "  {} {:<8} {}/{} episode {}",
            sig.at,
            sig.action.as_str(),
            sig.world_id,
            sig.run_id,
            sig.episode
        );
    }
    let _ = writeln!(s, "pending at end: {}", report.pending_at_end.len());
    for p in &report.pending_at_end {
        let _ = writeln!(
            s,
            "  due {} {:<17} {}/{} seq {:?}",
            p.due,
            p.kind.as_str(),
            p.world_id,
            p.run_id,
            p.sequences
        );
    }
    if !t.limit_cut.is_empty() {
        let _ = writeln!(s, "cut by limits: {:?}", t.limit_cut);
    }
    s
}
