//! One run's story, the first question of an incident review (`ackwatch audit --world W --run
//! R`): every record of the run (and every invalid record of its world, whose run cannot be
//! known), every deadline set, passed or cleared, every finding, resolution, release,
//! escalation and signal, in the order the engine saw or emitted them, and what was still
//! pending when the input ended.
//!
//! The timeline is taken from the replay itself (the same engine and stream time as the
//! report), never recomputed, so it cannot disagree with the report.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::decode::{decode_with, Decoded, RawRecord};
use crate::limits::TIMELINE_ENTRIES_MAX;
use crate::output::{Outcome, Output};
use crate::run::{FindingKind, TimerKind};
use crate::side::Side;
use crate::task::Task;
use crate::time::{format_rfc3339_ms, Millis};
use crate::RunKey;

/// One line of a run's timeline.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Entry {
    /// When it happened in event time: a record's event time (its timestamp when it has none),
    /// a deadline's stream time when it was set or went away, an output's own time.
    pub at: String,
    /// `activation`, `ack`, `duplicate`, `untracked`, `cut`, `invalid`, `deadline_set`,
    /// `deadline_passed`, `deadline_cleared`, `detected`, `resolved`, `released`, `escalated`,
    /// `signal`, `pending_at_end`.
    pub event: &'static str,
    /// The sequences it is about (none for an invalid record or a signal).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sequences: Vec<u64>,
    /// What else an incident review needs: topic, partition and offset of a record; kind and
    /// due time of a deadline; kind, phase and blocker of a finding; action and episode of a
    /// signal.
    pub detail: String,
    #[serde(skip)]
    at_ms: Millis,
}

/// A deadline as the timeline tracks it: (due, what, sequence; none for the rollback decision,
/// how long before `due` its countdown started).
type Deadline = (Millis, &'static str, Option<u64>, Millis);

/// Collects one run's timeline while a replay runs.
#[derive(Debug, Serialize)]
pub struct Timeline {
    #[serde(flatten)]
    pub run: RunKey,
    pub entries: Vec<Entry>,
    /// Entries not kept because the timeline held `TIMELINE_ENTRIES_MAX` already.
    pub cut: u64,
    /// The run's deadlines at the last look, per partition (a run whose records are spread
    /// over partitions, against the partitioning rule, has separate state in each).
    #[serde(skip)]
    deadlines: BTreeMap<i32, BTreeSet<Deadline>>,
    /// Entries before it are in their final order ([`Self::end_step`]).
    #[serde(skip)]
    ordered: usize,
    /// The event time of the record the current step applied, if it applied one.
    #[serde(skip)]
    step_record_ms: Option<Millis>,
}

impl Timeline {
    pub fn new(run: RunKey) -> Self {
        Timeline {
            run,
            entries: Vec::new(),
            cut: 0,
            deadlines: BTreeMap::new(),
            ordered: 0,
            step_record_ms: None,
        }
    }

    fn push(&mut self, at: Millis, event: &'static str, sequences: Vec<u64>, detail: String) {
        if self.entries.len() >= TIMELINE_ENTRIES_MAX {
            self.cut += 1;
            return;
        }
        self.entries.push(Entry {
            at: format_rfc3339_ms(at),
            event,
            sequences,
            detail,
            at_ms: at,
        });
    }

    /// One engine step (a record applied, or stream time advanced) is over. Its entries are put
    /// in event-time order, stably: a record first advances stream time, and what that fires
    /// (deadlines before the record's time) happened before the record was applied.
    pub fn end_step(&mut self) {
        self.entries[self.ordered..].sort_by_key(|e| e.at_ms);
        self.ordered = self.entries.len();
        self.step_record_ms = None;
    }

    /// A record the engine applied, with its outcome: kept when it is the run's, or an invalid
    /// record keyed by the run's world.
    pub fn record(&mut self, raw: &RawRecord<'_>, outcome: &Outcome, max_record_bytes: usize) {
        let topic = match raw.side {
            Side::Activation => "activation topic",
            Side::Ack => "ACK topic",
        };
        let place = format!("{topic} partition {} offset {}", raw.partition, raw.offset);
        let (event_ms, sequence) = match decode_with(raw, max_record_bytes) {
            Decoded::Tracked(a) if is(&a.run, &self.run) => (
                a.event_ms,
                Some((a.sequence, format!("{place}, phase {}", a.phase.as_str()))),
            ),
            Decoded::Ack(a) if is(&a.run, &self.run) => (a.event_ms, Some((a.sequence, place.clone()))),
            Decoded::Invalid(invalid) if raw.key == Some(self.run.world_id.as_bytes()) => {
                let at = raw.timestamp_ms.unwrap_or(Millis::MIN);
                let detail = format!(
                    "{place}: {} ({}); its run cannot be known",
                    invalid.reason.label(),
                    invalid.detail
                );
                self.push(at, "invalid", vec![], detail);
                return;
            }
            _ => return,
        };
        let Some((sequence, detail)) = sequence else {
            return;
        };
        self.step_record_ms = Some(event_ms);
        let event = match outcome {
            Outcome::Tracked => "activation",
            Outcome::Ack => "ack",
            Outcome::Duplicate => "duplicate",
            Outcome::Untracked => "untracked",
            Outcome::Cut => "cut",
            Outcome::Invalid(_) => "invalid",
            Outcome::NeedsRun(_) => return,
        };
        self.push(event_ms, event, vec![sequence], detail);
    }

    /// An engine output: kept when it is about the run.
    pub fn output(&mut self, output: &Output) {
        let run = &self.run;
        let mine = |world: &str, id: &str| *run.world_id == *world && *run.run_id == *id;
        match output {
            Output::Detected(d) if mine(&d.world_id, &d.run_id) => {
                let mut detail = d.kind.as_str().to_string();
                if let Some(phase) = d.phase {
                    detail += &format!(", phase {}", phase.as_str());
                }
                if let Some(blocker) = d.blocked_by {
                    detail += &format!(", blocked by sequence {blocker} (raises no alert)");
                }
                self.push(d.detected_at, "detected", d.sequences.clone(), detail);
            }
            Output::Resolved(r) if mine(&r.world_id, &r.run_id) => {
                let detail = format!(
                    "{}, detected {}",
                    r.kind.as_str(),
                    format_rfc3339_ms(r.detected_at)
                );
                self.push(r.resolved_at, "resolved", r.sequences.clone(), detail);
            }
            Output::Signal(s) if mine(&s.world_id, &s.run_id) => {
                let detail = format!(
                    "{} (episode {}), idempotency key {}",
                    s.action.as_str(),
                    s.episode,
                    s.idempotency_key
                );
                self.push(s.at, "signal", vec![], detail);
            }
            Output::Escalated { run, episode, at } if *run == self.run => {
                let detail =
                    format!("episode {episode}: rollback deadline passed, an operator decides");
                self.push(*at, "escalated", vec![], detail);
            }
            Output::Released { run, sequence, at } if *run == self.run => {
                let detail = "ack_missing no longer blocked: an ordinary open finding".into();
                self.push(*at, "released", vec![*sequence], detail);
            }
            _ => {}
        }
    }

    /// Compares the run's deadlines with the last look: new ones are set (at the start of
    /// their countdown: an activation's event time for its `ack_missing`, the pause for the
    /// rollback decision), gone ones passed (stream time went past them) or cleared (what they
    /// waited for arrived: at the step's record, or at stream time).
    pub fn deadlines(&mut self, partition: i32, task: &Task) {
        let now: BTreeSet<Deadline> = deadlines_of(task, &self.run);
        let before = self.deadlines.entry(partition).or_default();
        if now == *before {
            return;
        }
        let stream_time = task.meta().stream_time.unwrap_or(Millis::MIN);
        let gone: Vec<Deadline> = before.difference(&now).copied().collect();
        let new: Vec<Deadline> = now.difference(before).copied().collect();
        *before = now;
        for (due, what, sequence, _) in gone {
            let (event, at) = if due < stream_time {
                ("deadline_passed", due)
            } else {
                ("deadline_cleared", self.step_record_ms.unwrap_or(stream_time))
            };
            let detail = format!("{what}, due {}", format_rfc3339_ms(due));
            self.push(at, event, sequence.into_iter().collect(), detail);
        }
        for (due, what, sequence, countdown) in new {
            let detail = format!("{what}, due {}", format_rfc3339_ms(due));
            let at = due.saturating_sub(countdown);
            self.push(at, "deadline_set", sequence.into_iter().collect(), detail);
        }
    }

    /// The lines `ackwatch audit --world W --run R` prints.
    pub fn text(&self) -> String {
        let mut s = format!(
            "timeline of world {} run {} ({} entries{}):\n",
            self.run.world_id,
            self.run.run_id,
            self.entries.len(),
            if self.cut > 0 {
                format!(", {} more cut by TIMELINE_ENTRIES_MAX", self.cut)
            } else {
                String::new()
            }
        );
        if self.entries.is_empty() {
            s += "  no record, deadline or output of this run in the input\n";
        }
        for e in &self.entries {
            let sequences = match e.sequences.as_slice() {
                [] => String::new(),
                [one] => format!(" seq {one}"),
                many => format!(" seq {many:?}"),
            };
            s += &format!("  {} {:<16}{sequences} {}\n", e.at, e.event, e.detail);
        }
        s
    }

    /// The input of `partition` ended: what is still pending there.
    pub fn finish(&mut self, partition: i32, task: &Task) {
        self.deadlines(partition, task);
        let end = task.meta().stream_time.unwrap_or(Millis::MIN);
        let pending: Vec<Deadline> = self.deadlines[&partition].iter().copied().collect();
        for (due, what, sequence, _) in pending {
            let detail = format!("{what}, due {}", format_rfc3339_ms(due));
            self.push(end, "pending_at_end", sequence.into_iter().collect(), detail);
        }
        self.end_step();
    }
}

fn is(run: &crate::RunRef<'_>, key: &RunKey) -> bool {
    hashbrown::Equivalent::equivalent(run, key)
}

/// The run's deadlines now: per-sequence timers, the rollback decision and releases, and a
/// pending gap's timer once per missing sequence.
fn deadlines_of(task: &Task, run: &RunKey) -> BTreeSet<Deadline> {
    let Some(state) = task.run(run) else {
        return BTreeSet::new();
    };
    let policy = task.policy();
    let countdown = |kind: FindingKind| match kind {
        FindingKind::AckMissing | FindingKind::SequenceConflict => policy.ack_timeout_ms,
        FindingKind::ActivationGap => policy.gap_timeout_ms,
        FindingKind::OrphanAck => policy.orphan_timeout_ms,
    };
    let timers = state.pending_timers().map(|t| match t.kind {
        TimerKind::Finding(kind) => (t.due, kind.as_str(), Some(t.sequence), countdown(kind)),
        TimerKind::Release => (
            t.due,
            "release of a blocked ack_missing",
            Some(t.sequence),
            policy.ack_timeout_ms,
        ),
        TimerKind::Rollback => (t.due, "rollback decision", None, policy.rollback_after_ms),
    });
    let gaps = state
        .missing
        .iter()
        .filter(|m| m.detected_at.is_none())
        .flat_map(|m| {
            let what = FindingKind::ActivationGap.as_str();
            (m.from..m.to).map(move |s| (m.gap_due, what, Some(s), policy.gap_timeout_ms))
        });
    timers
        .filter(|(_, what, _, _)| *what != FindingKind::ActivationGap.as_str())
        .chain(gaps)
        .collect()
}
