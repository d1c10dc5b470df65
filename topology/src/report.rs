//! The audit report of docs/semantics.md §6, built from what the engine emitted and the state it ends with.
//!
//! Findings are collected from outputs, not from run state, so a finding whose run was later
//! dropped by retention stays in the report. Sequences of one run that share kind, detection
//! and resolution are listed as one finding.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::decode::Phase;
use crate::output::{Action, Output};
use crate::run::{FindingKind, RunSummary};
use crate::side::{PerSide, Side};
use crate::task::{Counters, Pending, Task};
use crate::time::{format_rfc3339_ms, Millis};
use crate::RunKey;

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Report {
    /// What makes the report untrustworthy as a whole (an input of one topic only, partitions
    /// of one topic without the other's): every format shows these first. Absent when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// What is still open at the end and how much the report lists, counted from the rows
    /// below (so every format shows the same numbers); [`Report::recount`] keeps it true.
    pub headline: Headline,
    pub findings: Vec<FindingRow>,
    pub signals: Vec<SignalRow>,
    pub pending_at_end: Vec<PendingRow>,
    pub runs: Vec<RunRow>,
    pub totals: Totals,
    /// The invalid records (dead-lettered live), the first `INVALID_RECORDS_LISTED_MAX` by
    /// topic, partition and offset, over every record read.
    pub invalid_records: Vec<InvalidRow>,
    /// Invalid records not listed (beyond the limit).
    pub invalid_records_unlisted: u64,
}

/// One invalid record: where it is, why it is invalid, and the start of its value.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct InvalidRow {
    /// Orders the rows: the activation topic's first.
    #[serde(skip)]
    pub side: Side,
    /// `activation` or `ack`.
    pub topic: &'static str,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<String>,
    pub reason: &'static str,
    pub detail: String,
    /// The value's first `INVALID_PREVIEW_BYTES_MAX` bytes as text (invalid UTF-8 replaced),
    /// `…` when cut; null without a value.
    pub preview: Option<String>,
}

impl InvalidRow {
    pub fn of(raw: &crate::RawRecord<'_>, invalid: &crate::decode::Invalid) -> InvalidRow {
        InvalidRow {
            side: raw.side,
            topic: raw.side.as_str(),
            partition: raw.partition,
            offset: raw.offset,
            timestamp: raw.timestamp_ms.map(format_rfc3339_ms),
            reason: invalid.reason.label(),
            detail: invalid.detail.clone(),
            preview: raw.value.map(preview),
        }
    }
}

/// The start of `value` as text, cut at `INVALID_PREVIEW_BYTES_MAX` bytes on a character boundary.
fn preview(value: &[u8]) -> String {
    let max = crate::limits::INVALID_PREVIEW_BYTES_MAX;
    let text = String::from_utf8_lossy(&value[..value.len().min(max)]);
    // A character split by the cut shows as a replacement character: drop it.
    let mut text = text.into_owned();
    if value.len() > max {
        if text.ends_with('\u{FFFD}') && std::str::from_utf8(&value[..max]).is_err() {
            text.pop();
        }
        text.push('…');
    }
    text
}

/// The report's first lines. A finding is a row of `findings` (sequences of one run and kind
/// detected and resolved together); `totals.findings_raised` counts sequences instead, over
/// every record read (a cluster audit's warm-up included), so it is not this count.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Headline {
    /// Findings still open when the input ended (`resolved_at` null).
    pub open_findings: usize,
    /// Their sequences.
    pub open_sequences: usize,
    /// Open findings by kind (every kind listed, zeros included).
    pub open_by_kind: BTreeMap<String, usize>,
    /// Runs with at least one open finding.
    pub runs_with_open_findings: usize,
    /// Findings listed, open or resolved, and their sequences.
    pub findings: usize,
    pub finding_sequences: usize,
    pub signals: usize,
    /// Deadlines not yet passed when the input ended (rows of `pending_at_end`).
    pub pending_at_end: usize,
}

impl Report {
    /// Recomputes the headline from the rows, after rows were filtered (a cluster audit keeps
    /// only its window's).
    pub fn recount(&mut self) {
        let open: Vec<&FindingRow> = self
            .findings
            .iter()
            .filter(|f| f.resolved_at.is_none())
            .collect();
        let mut open_by_kind: BTreeMap<String, usize> = FindingKind::ALL
            .iter()
            .map(|k| (k.as_str().to_string(), 0))
            .collect();
        for f in &open {
            *open_by_kind.entry(f.kind.as_str().to_string()).or_default() += 1;
        }
        let runs: BTreeSet<(&str, &str)> = open
            .iter()
            .map(|f| (f.world_id.as_str(), f.run_id.as_str()))
            .collect();
        self.headline = Headline {
            open_findings: open.len(),
            open_sequences: open.iter().map(|f| f.sequences.len()).sum(),
            open_by_kind,
            runs_with_open_findings: runs.len(),
            findings: self.findings.len(),
            finding_sequences: self.findings.iter().map(|f| f.sequences.len()).sum(),
            signals: self.signals.len(),
            pending_at_end: self.pending_at_end.len(),
        };
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FindingRow {
    pub kind: FindingKind,
    pub world_id: String,
    pub run_id: String,
    pub sequences: Vec<u64>,
    pub phase: Option<Phase>,
    /// A blocked `ack_missing`: the missing earlier sequence that held its ACK back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked_by: Option<u64>,
    pub detected_at: String,
    pub resolved_at: Option<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SignalRow {
    pub action: Action,
    pub world_id: String,
    pub run_id: String,
    pub episode: u32,
    pub at: String,
    pub idempotency_key: String,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PendingRow {
    pub kind: FindingKind,
    pub world_id: String,
    pub run_id: String,
    pub sequences: Vec<u64>,
    pub due: String,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RunRow {
    pub world_id: String,
    pub run_id: String,
    pub tracked: u64,
    pub acked: u64,
    pub latency_ms: Option<Percentiles>,
    /// Sequences or records this run could not track because of a limit.
    #[serde(skip_serializing_if = "is_zero")]
    pub cut: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct Percentiles {
    pub p50: u64,
    pub p95: u64,
    pub p99: u64,
    pub max: u64,
}

impl Percentiles {
    /// Nearest-rank percentiles of sorted samples.
    pub fn of_sorted(sorted: &[u64]) -> Option<Percentiles> {
        let rank = |p: u64| sorted[((p as usize * sorted.len()).div_ceil(100)).max(1) - 1];
        (!sorted.is_empty()).then(|| Percentiles {
            p50: rank(50),
            p95: rank(95),
            p99: rank(99),
            max: rank(100),
        })
    }
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Totals {
    pub records: u64,
    pub tracked: u64,
    pub untracked: u64,
    pub acks: u64,
    pub duplicates: u64,
    pub invalid: u64,
    pub invalid_by_reason: BTreeMap<String, u64>,
    pub findings_raised: BTreeMap<String, u64>,
    pub clock_skew: u64,
    /// Records whose event time was clamped to their timestamp + `max_clock_lead_ms`.
    pub clamped: u64,
    /// ACK latency over every run.
    pub latency_ms: Option<Percentiles>,
    pub limit_cut: BTreeMap<String, u64>,
    /// Input lines that were not kcat records at all (file input only).
    pub malformed_lines: u64,
    /// Records on topics other than the two inputs (file input only).
    pub other_topic: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct FindingFacts {
    phase: Option<Phase>,
    blocked_by: Option<u64>,
    detected_at: Millis,
    resolved_at: Option<Millis>,
}

/// Collects outputs while tasks run, then builds the report.
#[derive(Default)]
pub struct ReportBuilder {
    findings: BTreeMap<(RunKey, FindingKind, u64), FindingFacts>,
    signals: Vec<(Millis, RunKey, Action, u32, String)>,
    runs: BTreeMap<RunKey, RunSummary>,
    pending: Vec<Pending>,
    counters: Counters,
    pub malformed_lines: u64,
    pub other_topic: u64,
    /// The partitions each input topic had records on.
    pub partitions_seen: PerSide<BTreeSet<i32>>,
    /// The first invalid records by position, and how many more there were.
    invalid_records: BTreeSet<InvalidRow>,
    invalid_records_unlisted: u64,
}

impl ReportBuilder {
    /// An invalid record was processed.
    pub fn invalid(&mut self, row: InvalidRow) {
        self.invalid_records.insert(row);
        if self.invalid_records.len() > crate::limits::INVALID_RECORDS_LISTED_MAX {
            self.invalid_records.pop_last();
            self.invalid_records_unlisted += 1;
        }
    }

    pub fn observe(&mut self, output: &Output) {
        match output {
            Output::Detected(d) => {
                let run = RunKey::new(&d.world_id, &d.run_id);
                for &seq in &d.sequences {
                    let facts = FindingFacts {
                        phase: d.phase,
                        blocked_by: d.blocked_by,
                        detected_at: d.detected_at,
                        resolved_at: None,
                    };
                    self.findings.insert((run.clone(), d.kind, seq), facts);
                }
            }
            Output::Resolved(r) => {
                let run = RunKey::new(&r.world_id, &r.run_id);
                for &seq in &r.sequences {
                    if let Some(f) = self.findings.get_mut(&(run.clone(), r.kind, seq)) {
                        f.resolved_at = Some(r.resolved_at);
                    }
                }
            }
            Output::Signal(s) => {
                let run = RunKey::new(&s.world_id, &s.run_id);
                self.signals
                    .push((s.at, run, s.action, s.episode, s.idempotency_key.clone()));
            }
            Output::RunDropped {
                run,
                summary: Some(summary),
            } => merge_summary(self.runs.entry(run.clone()).or_default(), summary),
            Output::RunDropped { summary: None, .. } => {}
            Output::Escalated { .. } | Output::Released { .. } | Output::Latency { .. } => {}
        }
    }

    /// Takes a finished task's remaining runs, pending deadlines and counters.
    pub fn finish_task(&mut self, task: &Task) {
        for (run, state) in task.runs() {
            merge_summary(self.runs.entry(run.clone()).or_default(), &state.summary());
        }
        self.pending.extend(task.pending());
        self.counters.merge(task.counters());
    }

    pub fn build(mut self) -> Report {
        let findings = group_findings(&self.findings);
        self.signals.sort();
        let signals = self
            .signals
            .into_iter()
            .map(|(at, run, action, episode, key)| SignalRow {
                action,
                world_id: run.world_id.to_string(),
                run_id: run.run_id.to_string(),
                episode,
                at: format_rfc3339_ms(at),
                idempotency_key: key,
            })
            .collect();
        self.pending.sort_by(|a, b| {
            (&a.run, a.kind, a.due, a.sequence).cmp(&(&b.run, b.kind, b.due, b.sequence))
        });
        let mut pending_at_end: Vec<PendingRow> = vec![];
        let mut previous: Option<&Pending> = None;
        for p in &self.pending {
            let same_group =
                previous.is_some_and(|q| (&q.run, q.kind, q.due) == (&p.run, p.kind, p.due));
            previous = Some(p);
            match pending_at_end.last_mut() {
                Some(last) if same_group => last.sequences.push(p.sequence),
                _ => pending_at_end.push(PendingRow {
                    kind: p.kind,
                    world_id: p.run.world_id.to_string(),
                    run_id: p.run.run_id.to_string(),
                    sequences: vec![p.sequence],
                    due: format_rfc3339_ms(p.due),
                }),
            }
        }
        let mut all_latencies: Vec<u64> = self
            .runs
            .values()
            .flat_map(|s| s.latencies_ms.iter().copied())
            .collect();
        all_latencies.sort_unstable();
        let runs = self
            .runs
            .into_iter()
            .map(|(run, s)| RunRow {
                world_id: run.world_id.to_string(),
                run_id: run.run_id.to_string(),
                tracked: s.tracked,
                acked: s.acked,
                latency_ms: Percentiles::of_sorted(&s.latencies_ms),
                cut: s.cut,
            })
            .collect();
        let c = &self.counters;
        let totals = Totals {
            records: c.records + self.other_topic,
            tracked: c.tracked,
            untracked: c.untracked,
            acks: c.acks,
            duplicates: c.duplicates,
            invalid: c.invalid,
            invalid_by_reason: c
                .invalid_by_reason
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            findings_raised: FindingKind::ALL
                .iter()
                .map(|k| (k.as_str().to_string(), c.findings_raised[k.index()]))
                .collect(),
            clock_skew: c.clock_skew,
            clamped: c.clamped.activation + c.clamped.ack,
            latency_ms: Percentiles::of_sorted(&all_latencies),
            limit_cut: c
                .limit_cut
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            malformed_lines: self.malformed_lines,
            other_topic: self.other_topic,
        };
        let mut report = Report {
            warnings: one_sided(&self.partitions_seen),
            headline: Headline::default(),
            findings,
            signals,
            pending_at_end,
            runs,
            totals,
            invalid_records: self.invalid_records.into_iter().collect(),
            invalid_records_unlisted: self.invalid_records_unlisted,
        };
        report.recount();
        report
    }
}

/// The join needs both topics of every partition: records of one input topic only (a dump of
/// one topic, `kcat` reading only the last `-t`), or partitions of one topic without the other's,
/// make every activation an `ack_missing` or every ACK an `orphan_ack` that the topics do not
/// justify.
fn one_sided(seen: &PerSide<BTreeSet<i32>>) -> Vec<String> {
    let name = |side: Side| match side {
        Side::Activation => "activation",
        Side::Ack => "ACK",
    };
    let (act, ack) = (&seen.activation, &seen.ack);
    if act.is_empty() && ack.is_empty() {
        return vec![];
    }
    for (side, other) in [(Side::Activation, Side::Ack), (Side::Ack, Side::Activation)] {
        if seen[other].is_empty() {
            return vec![format!(
                "the input holds records of the {} topic only, none of the {} topic: the \
                 findings below follow from the missing topic, not from the traffic; audit a \
                 dump of both topics",
                name(side),
                name(other)
            )];
        }
    }
    let mut warnings = vec![];
    for (side, other) in [(Side::Activation, Side::Ack), (Side::Ack, Side::Activation)] {
        let alone: Vec<String> = seen[side]
            .difference(&seen[other])
            .map(i32::to_string)
            .collect();
        if !alone.is_empty() {
            warnings.push(format!(
                "partition(s) {} of the {} topic have records but the same partition(s) of the \
                 {} topic have none: their findings follow from the missing records; audit a \
                 dump of every partition of both topics",
                alone.join(", "),
                name(side),
                name(other)
            ));
        }
    }
    warnings
}

fn merge_summary(into: &mut RunSummary, from: &RunSummary) {
    into.tracked += from.tracked;
    into.acked += from.acked;
    into.cut += from.cut;
    into.latencies_ms.extend_from_slice(&from.latencies_ms);
    into.latencies_ms.sort_unstable();
}

/// Consecutive sequences of one run and kind with the same detection, resolution, phase and
/// blocker form one row (semantics §2: a finding's sequences share its phase and `blocked_by`).
fn group_findings(facts: &BTreeMap<(RunKey, FindingKind, u64), FindingFacts>) -> Vec<FindingRow> {
    let mut rows: Vec<(FindingRow, RunKey, FindingKind, FindingFacts)> = vec![];
    for ((run, kind, seq), f) in facts {
        if let Some((row, last_run, last_kind, last)) = rows.last_mut() {
            if last_run == run && last_kind == kind && last == f {
                row.sequences.push(*seq);
                continue;
            }
        }
        rows.push((
            FindingRow {
                kind: *kind,
                world_id: run.world_id.to_string(),
                run_id: run.run_id.to_string(),
                sequences: vec![*seq],
                phase: f.phase,
                blocked_by: f.blocked_by,
                detected_at: format_rfc3339_ms(f.detected_at),
                resolved_at: f.resolved_at.map(format_rfc3339_ms),
            },
            run.clone(),
            *kind,
            *f,
        ));
    }
    rows.sort_by(|a, b| {
        (a.3.detected_at, &a.1, a.2, a.0.sequences[0]).cmp(&(
            b.3.detected_at,
            &b.1,
            b.2,
            b.0.sequences[0],
        ))
    });
    rows.into_iter().map(|r| r.0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(samples: &[u64], expected: Option<(u64, u64, u64, u64)>) {
        let got = Percentiles::of_sorted(samples).map(|p| (p.p50, p.p95, p.p99, p.max));
        assert_eq!(got, expected, "samples {samples:?}");
    }

    #[test]
    fn nearest_rank_percentiles() {
        check(&[], None);
        check(&[7], Some((7, 7, 7, 7)));
        check(&[1, 2], Some((1, 2, 2, 2)));
        check(&[1, 2, 3, 4], Some((2, 4, 4, 4)));
        let hundred: Vec<u64> = (1..=100).collect();
        check(&hundred, Some((50, 95, 99, 100)));
    }
}
