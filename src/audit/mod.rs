//! `ackwatch audit`: replays retained records with fresh state and no side effects, through the
//! same engine as the live processor ([`ackwatch_topology::replay::Replay`]), and builds the
//! report (docs/semantics.md, "The audit report").
//!
//! - this file: the audit of `kcat -J` files, and the report's text summary;
//! - `cluster.rs`: the audit of a cluster's retained topics over a window, compared with the
//!   live outputs; `html.rs`: the report as a self-contained page; `kcat.rs`: the input format.
//!
//! Records are streamed: each partition's two topics are merged by record timestamp as soon
//! as both have a buffered head, so memory holds only the skew between the two topics in the
//! file, not the whole file.

pub mod cluster;
pub mod html;
pub mod kcat;

use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal};
use std::path::PathBuf;

use ackwatch_topology::partition_group::Buffered;
use ackwatch_topology::replay::Replay;
use ackwatch_topology::report::Report;
use ackwatch_topology::{Millis, Output, Policy, Side};
use anyhow::Context;

use crate::settings::Topics;
use kcat::parse_line;

/// Malformed input lines printed before the audit only counts them.
const MALFORMED_LINES_PRINTED_MAX: u64 = 20;

/// Lines the reader thread parses before handing them over as one batch. Cost: one batch of
/// parsed records (about 1 KiB each) in memory; smaller batches cost a channel hand-off more often.
const READ_BATCH_LINES_MAX: usize = 1024;

/// Batches the reader thread may be ahead of the engine. With `READ_BATCH_LINES_MAX` this bounds
/// the read-ahead to about 4 MiB; when it binds, the reader waits (nothing is dropped).
const READ_AHEAD_BATCHES_MAX: usize = 4;

pub struct FileAudit {
    pub inputs: Vec<PathBuf>,
    pub topics: Topics,
    pub policy: Policy,
    pub progress: bool,
    /// When the replayed window ends: deadlines before it fire (as they did live, where stream
    /// time follows the wall clock) instead of being reported as `pending_at_end`. `None`: the
    /// input ends at the largest event time it holds (docs/semantics.md §4).
    pub end_ms: Option<Millis>,
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
        // A reader thread reads and parses the kcat lines (about half the work: every payload
        // is a JSON string to unescape) while this thread runs the engine, so the audit uses
        // two cores. The channel holds at most `READ_AHEAD_BATCHES_MAX` batches.
        let (batches, received) = std::sync::mpsc::sync_channel(READ_AHEAD_BATCHES_MAX);
        let read_result = std::thread::scope(|scope| {
            let reader = scope.spawn(|| self.read_inputs(bar.as_ref(), batches));
            for batch in received {
                for line in batch {
                    match line {
                        ReadLine::Record(source, partition, record) => {
                            replay.push(source, partition, record)
                        }
                        ReadLine::OtherTopic => replay.report.other_topic += 1,
                        ReadLine::Malformed(why) => {
                            replay.report.malformed_lines += 1;
                            if replay.report.malformed_lines <= MALFORMED_LINES_PRINTED_MAX {
                                eprintln!("{why}");
                            }
                        }
                    }
                }
            }
            reader.join().expect("the audit's reader thread panicked")
        });
        read_result?;
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

impl FileAudit {
    /// Reads every input in order and sends its lines, parsed, in batches; stops early when the
    /// receiver is gone. Runs on the reader thread.
    fn read_inputs(
        &self,
        bar: Option<&indicatif::ProgressBar>,
        batches: std::sync::mpsc::SyncSender<Vec<ReadLine>>,
    ) -> anyhow::Result<()> {
        let mut batch = Vec::with_capacity(READ_BATCH_LINES_MAX);
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
                if let Some(bar) = bar {
                    bar.inc(n as u64);
                }
                if line.trim().is_empty() {
                    continue;
                }
                batch.push(
                    self.read_line(line.trim_end(), || format!("{}:{line_no}", path.display())),
                );
                if batch.len() == READ_BATCH_LINES_MAX {
                    let full =
                        std::mem::replace(&mut batch, Vec::with_capacity(READ_BATCH_LINES_MAX));
                    if batches.send(full).is_err() {
                        return Ok(());
                    }
                }
            }
        }
        if !batch.is_empty() {
            let _ = batches.send(batch);
        }
        Ok(())
    }

    fn read_line(&self, line: &str, place: impl FnOnce() -> String) -> ReadLine {
        let record = match parse_line(line) {
            Ok(record) => record,
            Err(why) => return ReadLine::Malformed(format!("{}: skipped: {why}", place())),
        };
        let source = if record.topic == self.topics.activation {
            Side::Activation
        } else if record.topic == self.topics.ack {
            Side::Ack
        } else {
            return ReadLine::OtherTopic;
        };
        ReadLine::Record(
            source,
            record.partition,
            Buffered {
                offset: record.offset,
                timestamp_ms: record.timestamp_ms,
                key: record.key.map(into_boxed_bytes),
                value: record.payload.map(into_boxed_bytes),
            },
        )
    }
}

/// An unescaped string is already owned: keep its allocation instead of copying it.
fn into_boxed_bytes(text: std::borrow::Cow<'_, str>) -> Box<[u8]> {
    match text {
        std::borrow::Cow::Owned(owned) => owned.into_bytes().into_boxed_slice(),
        std::borrow::Cow::Borrowed(borrowed) => borrowed.as_bytes().into(),
    }
}

/// One input line as the reader thread hands it over.
enum ReadLine {
    Record(Side, i32, Buffered),
    OtherTopic,
    /// Where and why, ready to print.
    Malformed(String),
}

/// The human summary of a report.
pub fn summary(report: &Report) -> String {
    use std::fmt::Write;
    let t = &report.totals;
    let mut s = String::new();
    for warning in &report.warnings {
        let _ = writeln!(s, "WARNING: {warning}");
    }
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
