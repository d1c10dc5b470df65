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
pub mod provenance;

use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal};
use std::path::PathBuf;

use ackwatch_topology::partition_group::Buffered;
use ackwatch_topology::replay::Replay;
use ackwatch_topology::report::Report;
use ackwatch_topology::timeline::Timeline;
use ackwatch_topology::{Millis, Output, Policy, RunKey, Side};
use anyhow::Context;

use crate::settings::Topics;
use kcat::parse_line;
use provenance::{FileDigest, InputFile};

/// Malformed input lines printed before the audit only counts them.
const MALFORMED_LINES_PRINTED_MAX: u64 = 20;
/// Invalid records the text summary prints (the JSON and HTML reports list more).
const INVALID_RECORDS_PRINTED_MAX: usize = 20;

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

/// What a file audit gives: the report, the timeline of the run asked for, and every input
/// file as read (size and SHA-256, for the provenance).
pub struct Audited {
    pub report: Report,
    pub timeline: Option<Timeline>,
    pub inputs: Vec<InputFile>,
}

impl FileAudit {
    pub fn run(&self) -> anyhow::Result<Report> {
        self.run_with(&mut |_| {})
    }

    /// [`Self::run`], showing every engine output to `observe` as it happens (gap events and
    /// signals carry the idempotency keys the live processor emits).
    pub fn run_with(&self, observe: &mut dyn FnMut(&Output)) -> anyhow::Result<Report> {
        Ok(self.run_explained(None, observe)?.report)
    }

    /// [`Self::run_with`], keeping `run`'s timeline when one is named.
    pub fn run_explained(
        &self,
        run: Option<RunKey>,
        observe: &mut dyn FnMut(&Output),
    ) -> anyhow::Result<Audited> {
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
        if let Some(run) = run {
            replay = replay.with_timeline(run);
        }
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
        let inputs = read_result?;
        if replay.report.malformed_lines > MALFORMED_LINES_PRINTED_MAX {
            eprintln!(
                "... {} malformed lines in all",
                replay.report.malformed_lines
            );
        }
        let (report, timeline) = replay.finish_with_timeline(self.end_ms);
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        Ok(Audited {
            report,
            timeline,
            inputs,
        })
    }
}

impl FileAudit {
    /// Reads every input in order and sends its lines, parsed, in batches; stops early when the
    /// receiver is gone. Hashes every file as it goes. Runs on the reader thread.
    fn read_inputs(
        &self,
        bar: Option<&indicatif::ProgressBar>,
        batches: std::sync::mpsc::SyncSender<Vec<ReadLine>>,
    ) -> anyhow::Result<Vec<InputFile>> {
        let mut batch = Vec::with_capacity(READ_BATCH_LINES_MAX);
        let mut files = Vec::with_capacity(self.inputs.len());
        for path in &self.inputs {
            let mut digest = FileDigest::new(path);
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
                digest.update(line.as_bytes());
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
                        return Ok(files);
                    }
                }
            }
            files.push(digest.finish());
        }
        if !batch.is_empty() {
            let _ = batches.send(batch);
        }
        Ok(files)
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

/// When `ackwatch audit` exits with [`AUDIT_FAILED_EXIT`] instead of 0, for pipelines.
#[derive(Clone, Copy, clap::ValueEnum, PartialEq, Eq, Debug)]
pub enum FailOn {
    /// Any finding listed (open or resolved), or a warning that the report cannot be trusted.
    Findings,
    /// A finding still open at the end, or a warning that the report cannot be trusted.
    Open,
    /// Exit 0 whenever the report was made.
    Never,
}

/// The exit status of an audit whose report meets `--fail-on` (1 is an audit that could not be
/// made, 2 a usage error).
pub const AUDIT_FAILED_EXIT: u8 = 3;

/// Whether the report meets `--fail-on`, and why.
pub fn failed(fail_on: FailOn, report: &Report) -> Option<String> {
    let h = &report.headline;
    let untrusted = !report.warnings.is_empty();
    match fail_on {
        FailOn::Never => None,
        _ if untrusted => Some(format!("{} warning(s) about the input", report.warnings.len())),
        FailOn::Findings if h.findings > 0 => Some(format!("{} finding(s) listed", h.findings)),
        FailOn::Open if h.open_findings > 0 => {
            Some(format!("{} finding(s) open at the end", h.open_findings))
        }
        FailOn::Findings | FailOn::Open => None,
    }
}

/// What a file audit writes as JSON: where it came from, the report, a run's timeline.
#[derive(serde::Serialize)]
pub struct FileReport<'a> {
    pub provenance: &'a provenance::Provenance,
    #[serde(flatten)]
    pub report: &'a Report,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeline: Option<&'a Timeline>,
}

/// One input line as the reader thread hands it over.
enum ReadLine {
    Record(Side, i32, Buffered),
    OtherTopic,
    /// Where and why, ready to print.
    Malformed(String),
}

/// The report's first lines in every text form: its warnings, then what is still open.
pub fn headline(report: &Report) -> String {
    use std::fmt::Write;
    let h = &report.headline;
    let mut s = String::new();
    for warning in &report.warnings {
        let _ = writeln!(s, "WARNING: {warning}");
    }
    if h.open_findings == 0 {
        let _ = writeln!(s, "open at the end: none (every finding listed was resolved)");
    } else {
        let by_kind: Vec<String> = h
            .open_by_kind
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let _ = writeln!(
            s,
            "OPEN AT THE END: {} finding(s) ({} sequence(s)) in {} run(s): {}",
            h.open_findings,
            h.open_sequences,
            h.runs_with_open_findings,
            by_kind.join(", ")
        );
    }
    let _ = writeln!(
        s,
        "listed: {} finding(s) ({} sequence(s)), {} signal(s), {} pending at the end",
        h.findings, h.finding_sequences, h.signals, h.pending_at_end
    );
    s
}

/// The short summary for a terminal when the full report went to a file: the headline and the
/// counts, no rows.
pub fn short_summary(report: &Report) -> String {
    let t = &report.totals;
    format!(
        "{}records: {} ({} tracked, {} acks, {} invalid), runs: {}\n",
        headline(report),
        t.records,
        t.tracked,
        t.acks,
        t.invalid,
        report.runs.len()
    )
}

/// The human summary of a report.
pub fn summary(report: &Report) -> String {
    use std::fmt::Write;
    let t = &report.totals;
    let mut s = headline(report);
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
        for row in report.invalid_records.iter().take(INVALID_RECORDS_PRINTED_MAX) {
            let _ = writeln!(
                s,
                "  invalid {}/{}@{}: {} ({}) {}",
                row.topic,
                row.partition,
                row.offset,
                row.reason,
                row.detail,
                row.preview.as_deref().unwrap_or("(no value)")
            );
        }
        let more = t.invalid.saturating_sub(INVALID_RECORDS_PRINTED_MAX.min(report.invalid_records.len()) as u64);
        if more > 0 {
            let _ = writeln!(s, "  ... {more} more invalid records (the JSON and HTML reports list up to {})", ackwatch_topology::limits::INVALID_RECORDS_LISTED_MAX);
        }
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
    let _ = writeln!(
        s,
        "sequences raised as findings over every record read: {}",
        raised.join(", ")
    );
    let _ = writeln!(s, "findings: {}", report.findings.len());
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
