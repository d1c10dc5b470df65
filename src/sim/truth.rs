//! The ground truth of a simulation: the findings the injected faults call for, and the
//! signals a [`Referee`] derives from semantics §3–§4 applied literally to the records in the order
//! they leave the simulation; and the comparison of a report or of live outputs with it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use ackwatch_topology::time::format_rfc3339_ms;
use ackwatch_topology::{FindingKind, Millis, Policy};
use serde::{Deserialize, Serialize};

/// One finding the behaviour rules (docs/semantics.md) prescribe for the injected faults, per sequence.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TruthFinding {
    pub kind: FindingKind,
    pub world_id: String,
    pub run_id: String,
    pub sequence: u64,
    pub detected_at_ms: Millis,
    pub resolved_at_ms: Option<Millis>,
}

/// One signal the behaviour rules prescribe (see [`Truth::signals`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TruthSignal {
    pub world_id: String,
    pub run_id: String,
    pub action: String,
    pub episode: u32,
    pub at_ms: Millis,
}

/// What the simulator did wrong on purpose, and what the behaviour rules say follows, for a bounded
/// replay of the records (`ackwatch audit`) and for a live run that outlasts the traffic.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Truth {
    /// A replay: findings raised (their deadline passed by a later record's event time).
    pub findings: Vec<TruthFinding>,
    /// A replay: findings whose deadline no record passed (semantics §4 `pending_at_end`).
    pub pending_at_end: Vec<TruthFinding>,
    pub signals: Vec<TruthSignal>,
    /// Live, once the wall clock passed every deadline: every finding, and the signals.
    pub live_findings: Vec<TruthFinding>,
    pub live_signals: Vec<TruthSignal>,
    /// Poison records produced (each must be dead-lettered).
    pub poison_records: u64,
    /// Records produced, counted as the report's totals count them.
    pub tracked: u64,
    pub acks: u64,
    pub untracked: u64,
    pub duplicates: u64,
    pub policy: Policy,
    /// Scripted faults that did not happen (the run was shorter, started after the traffic
    /// ended, or a lost first sequence at the start, which semantics §2 exempts), as "world run seq".
    pub script_unapplied: Vec<String>,
}

/// Which reading of the records a truth is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reading {
    /// A bounded replay (`ackwatch audit`): deadlines after the last event time stay pending.
    Replay,
    /// A live run that outlasted every deadline: the wall clock passed them all.
    Live,
}

impl Truth {
    /// The truth as comparable facts (see [`finding_facts`], [`signal_facts`]): the findings
    /// and signals of a replay, or of a live run that outlasted every deadline.
    pub fn facts(&self, reading: Reading) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
        self.facts_until(reading, None)
    }

    /// [`Self::facts`] of what was due before `cut` (a live run stopped early): findings
    /// detected and signals given before it, resolutions before it.
    pub fn facts_until(
        &self,
        reading: Reading,
        cut: Option<Millis>,
    ) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
        let due = |t: Millis| cut.is_none_or(|c| t < c);
        let (findings, signals) = if reading == Reading::Live {
            (&self.live_findings, &self.live_signals)
        } else {
            (&self.findings, &self.signals)
        };
        (
            finding_facts(findings.iter().filter(|f| due(f.detected_at_ms)).map(|f| {
                let (world, run) = (f.world_id.as_str(), f.run_id.as_str());
                let resolved = f.resolved_at_ms.filter(|r| due(*r));
                (f.kind, world, run, f.sequence, f.detected_at_ms, resolved)
            })),
            signal_facts(signals.iter().filter(|s| due(s.at_ms)).map(|s| {
                let (world, run) = (s.world_id.as_str(), s.run_id.as_str());
                (s.action.as_str(), world, run, s.episode, s.at_ms)
            })),
        )
    }
}

/// Detected versus prescribed, keyed by (kind, world, run, sequence) for findings and by
/// (action, world, run, episode) for signals; times compared too.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Comparison {
    pub detected: usize,
    pub missed: Vec<String>,
    pub spurious: Vec<String>,
    /// Present on both sides with another time or resolution.
    pub differing: Vec<String>,
}

impl Comparison {
    pub fn is_exact(&self) -> bool {
        self.missed.is_empty() && self.spurious.is_empty() && self.differing.is_empty()
    }
}

/// Compares facts given as `key -> value` maps (see [`finding_facts`], [`signal_facts`]).
pub fn compare(want: &BTreeMap<String, String>, got: &BTreeMap<String, String>) -> Comparison {
    let mut c = Comparison::default();
    for (key, value) in want {
        match got.get(key) {
            None => c.missed.push(format!("{key} {value}")),
            Some(v) if v != value => c.differing.push(format!("{key}: want {value}, got {v}")),
            Some(_) => c.detected += 1,
        }
    }
    for (key, value) in got {
        if !want.contains_key(key) {
            c.spurious.push(format!("{key} {value}"));
        }
    }
    c
}

/// Findings as comparable facts: `kind world/run #seq` -> `detected_at resolved_at`.
pub fn finding_facts<'a>(
    findings: impl IntoIterator<Item = (FindingKind, &'a str, &'a str, u64, Millis, Option<Millis>)>,
) -> BTreeMap<String, String> {
    findings
        .into_iter()
        .map(|(kind, world, run, seq, detected, resolved)| {
            (
                format!("{} {world}/{run} #{seq}", kind.as_str()),
                format!(
                    "detected {} resolved {}",
                    format_rfc3339_ms(detected),
                    resolved.map_or_else(|| "never".to_string(), format_rfc3339_ms)
                ),
            )
        })
        .collect()
}

/// Signals as comparable facts: `action world/run episode` -> `at`.
pub fn signal_facts<'a>(
    signals: impl IntoIterator<Item = (&'a str, &'a str, &'a str, u32, Millis)>,
) -> BTreeMap<String, String> {
    signals
        .into_iter()
        .map(|(action, world, run, episode, at)| {
            (
                format!("{action} {world}/{run} episode {episode}"),
                format_rfc3339_ms(at),
            )
        })
        .collect()
}

/// What a record does to the truth when it is processed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Effect {
    None,
    /// It raises this finding (a conflicting activation: detected at its own event time).
    Detects(usize),
    /// It resolves this finding (a late ACK).
    Resolves(usize),
}

/// A deadline waiting for stream time: (deadline, 0 finding / 1 rollback, sequence, id).
/// Findings fire before a rollback at the same deadline, like the engine's timers.
type Deadline = Reverse<(Millis, u8, u64, usize)>;

/// A run's episode as semantics §3 defines it.
#[derive(Clone, Debug, Default)]
struct Episode {
    open: usize,
    episode: u32,
    paused_at: Option<Millis>,
    rolled_back: bool,
}

/// Applies semantics §2–§4 to the records in processing order: per partition, stream time and the
/// deadlines it passes; per run, open findings and episodes.
#[derive(Clone, Debug, Default)]
pub struct Referee {
    policy: Policy,
    findings: Vec<TruthFinding>,
    partition_of_finding: Vec<i32>,
    raised: Vec<bool>,
    deadlines: BTreeMap<i32, BinaryHeap<Deadline>>,
    stream_time: BTreeMap<i32, Millis>,
    /// Rollback deadlines: id -> (world, run, episode).
    rollbacks: Vec<(String, String, u32)>,
    runs: BTreeMap<(String, String), Episode>,
    signals: Vec<TruthSignal>,
}

impl Referee {
    pub(super) fn new(policy: Policy) -> Self {
        Referee {
            policy,
            ..Referee::default()
        }
    }

    /// A finding that follows from an injected fault; `deadline`: it fires when stream time
    /// passes its `detected_at` (otherwise a record's effect raises it).
    pub(super) fn add(&mut self, finding: TruthFinding, partition: i32, deadline: bool) -> usize {
        let id = self.findings.len();
        if deadline {
            self.deadlines.entry(partition).or_default().push(Reverse((
                finding.detected_at_ms,
                0,
                finding.sequence,
                id,
            )));
        }
        self.findings.push(finding);
        self.partition_of_finding.push(partition);
        self.raised.push(false);
        id
    }

    /// One record processed: deadlines its event time passes fire first, then its effect.
    pub(super) fn process(&mut self, partition: i32, event_ms: Option<Millis>, effect: Effect) {
        if let Some(e) = event_ms {
            let st = self.stream_time.entry(partition).or_insert(Millis::MIN);
            *st = (*st).max(e);
            let st = *st;
            self.fire(partition, |due| due < st);
        }
        match effect {
            Effect::None => {}
            Effect::Detects(id) => self.raise(partition, id),
            Effect::Resolves(id) => self.resolve(id),
        }
    }

    fn fire(&mut self, partition: i32, passed: impl Fn(Millis) -> bool) {
        loop {
            let Some(heap) = self.deadlines.get_mut(&partition) else {
                return;
            };
            match heap.peek() {
                Some(Reverse((due, _, _, _))) if passed(*due) => {}
                _ => return,
            }
            let Reverse((due, what, _, id)) = heap.pop().expect("peeked");
            if what == 0 {
                self.raise(partition, id);
            } else {
                self.rollback(id, due);
            }
        }
    }

    fn raise(&mut self, partition: i32, id: usize) {
        self.raised[id] = true;
        let f = &self.findings[id];
        let (world, run, at) = (f.world_id.clone(), f.run_id.clone(), f.detected_at_ms);
        // semantics §2 "Blocked ACKs": an ack_missing behind a lower sequence of its run that is
        // missing (a lost activation: its gap is pending or open, for good) opens no episode.
        // Lost activations never arrive in a simulation, so nothing releases it.
        let blocked = f.kind == FindingKind::AckMissing
            && self.findings.iter().any(|g| {
                g.kind == FindingKind::ActivationGap
                    && g.world_id == f.world_id
                    && g.run_id == f.run_id
                    && g.sequence < f.sequence
            });
        let pausing = f.kind != FindingKind::OrphanAck && !blocked;
        let policy = self.policy;
        let episode = self.runs.entry((world.clone(), run.clone())).or_default();
        episode.open += 1;
        if pausing && episode.paused_at.is_none() && !episode.rolled_back {
            episode.episode += 1;
            episode.paused_at = Some(at);
            let number = episode.episode;
            self.signal(&world, &run, "pause", number, at);
            if policy.auto_rollback {
                let rollback_id = self.rollbacks.len();
                self.rollbacks.push((world, run, number));
                let due = at + policy.rollback_after_ms as Millis;
                self.deadlines.entry(partition).or_default().push(Reverse((
                    due,
                    1,
                    0,
                    rollback_id,
                )));
            }
        }
    }

    fn resolve(&mut self, id: usize) {
        let f = &self.findings[id];
        assert!(
            self.raised[id],
            "a finding resolves only after it was raised"
        );
        let (world, run) = (f.world_id.clone(), f.run_id.clone());
        let at = f
            .resolved_at_ms
            .expect("a resolving record has the finding's resolution");
        let episode = self
            .runs
            .get_mut(&(world.clone(), run.clone()))
            .expect("raised");
        episode.open -= 1;
        if episode.open == 0 && episode.paused_at.is_some() && !episode.rolled_back {
            episode.paused_at = None;
            let number = episode.episode;
            self.signal(&world, &run, "resume", number, at);
        }
    }

    fn rollback(&mut self, id: usize, due: Millis) {
        let (world, run, number) = self.rollbacks[id].clone();
        let episode = self
            .runs
            .get_mut(&(world.clone(), run.clone()))
            .expect("paused");
        if episode.paused_at.is_some() && episode.episode == number && !episode.rolled_back {
            episode.rolled_back = true; // final: no pause or resume after it
            episode.paused_at = None;
            self.signal(&world, &run, "rollback", number, due);
        }
    }

    fn signal(&mut self, world: &str, run: &str, action: &str, episode: u32, at_ms: Millis) {
        self.signals.push(TruthSignal {
            world_id: world.to_string(),
            run_id: run.to_string(),
            action: action.to_string(),
            episode,
            at_ms,
        });
    }

    /// (raised, pending, signals) as they stand.
    pub(super) fn outcome(&self) -> (Vec<TruthFinding>, Vec<TruthFinding>, Vec<TruthSignal>) {
        let (mut raised, mut pending) = (Vec::new(), Vec::new());
        for (f, r) in self.findings.iter().zip(&self.raised) {
            if *r { &mut raised } else { &mut pending }.push(f.clone());
        }
        raised.sort();
        pending.sort();
        let mut signals = self.signals.clone();
        signals.sort_by(|a, b| {
            (a.at_ms, &a.world_id, &a.run_id, a.episode).cmp(&(
                b.at_ms,
                &b.world_id,
                &b.run_id,
                b.episode,
            ))
        });
        (raised, pending, signals)
    }

    /// Live, the wall clock passes every deadline once the traffic is over.
    pub(super) fn outcome_live(&self) -> (Vec<TruthFinding>, Vec<TruthSignal>) {
        let mut live = self.clone();
        let partitions: Vec<i32> = live.deadlines.keys().copied().collect();
        for p in partitions {
            live.fire(p, |_| true);
        }
        let (raised, pending, signals) = live.outcome();
        debug_assert!(pending.is_empty());
        (raised, signals)
    }
}

/// What a replay's report says against the truth: findings raised, findings pending at the end,
/// signals, and dead letters. `end_ms`: where the replay ended (the report's last event time
/// for a bounded input); findings due at or after it are expected as pending.
pub struct ReportCheck {
    pub findings: Comparison,
    pub pending: Comparison,
    pub signals: Comparison,
    pub poison_expected: u64,
    pub invalid_reported: u64,
}

impl ReportCheck {
    pub fn is_exact(&self) -> bool {
        self.findings.is_exact()
            && self.pending.is_exact()
            && self.signals.is_exact()
            && self.poison_expected == self.invalid_reported
    }
}

impl std::fmt::Display for ReportCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (what, c) in [
            ("findings", &self.findings),
            ("pending at end", &self.pending),
            ("signals", &self.signals),
        ] {
            writeln!(
                f,
                "{what}: {} detected, {} missed, {} spurious, {} differing",
                c.detected,
                c.missed.len(),
                c.spurious.len(),
                c.differing.len()
            )?;
            for line in c.missed.iter().take(10) {
                writeln!(f, "  missed: {line}")?;
            }
            for line in c.spurious.iter().take(10) {
                writeln!(f, "  spurious: {line}")?;
            }
            for line in c.differing.iter().take(10) {
                writeln!(f, "  differing: {line}")?;
            }
        }
        writeln!(
            f,
            "poison records: {} produced, {} dead-lettered",
            self.poison_expected, self.invalid_reported
        )
    }
}

/// Checks an audit report (docs/semantics.md §6) against the truth of the traffic it replayed.
pub fn check_report(truth: &Truth, report: &ackwatch_topology::report::Report) -> ReportCheck {
    use ackwatch_topology::time::parse_rfc3339_ms;
    let time = |s: &str| parse_rfc3339_ms(s).expect("report times are RFC 3339");
    let pending = &truth.pending_at_end;
    let (want_findings, want_signals) = truth.facts(Reading::Replay);
    let got_findings = finding_facts(report.findings.iter().flat_map(|row| {
        row.sequences.iter().map(move |&seq| {
            (
                row.kind,
                row.world_id.as_str(),
                row.run_id.as_str(),
                seq,
                time(&row.detected_at),
                row.resolved_at.as_deref().map(time),
            )
        })
    }));
    let pending_key = |kind: FindingKind, world: &str, run: &str, seq: u64| {
        (
            format!("{} {world}/{run} #{seq}", kind.as_str()),
            String::new(),
        )
    };
    let want_pending: BTreeMap<String, String> = pending
        .iter()
        .map(|f| pending_key(f.kind, &f.world_id, &f.run_id, f.sequence))
        .collect();
    let got_pending: BTreeMap<String, String> = report
        .pending_at_end
        .iter()
        .flat_map(|p| {
            p.sequences
                .iter()
                .map(move |&seq| pending_key(p.kind, &p.world_id, &p.run_id, seq))
        })
        .collect();
    let got_signals = signal_facts(report.signals.iter().map(|s| {
        (
            s.action.as_str(),
            s.world_id.as_str(),
            s.run_id.as_str(),
            s.episode,
            time(&s.at),
        )
    }));
    ReportCheck {
        findings: compare(&want_findings, &got_findings),
        pending: compare(&want_pending, &got_pending),
        signals: compare(&want_signals, &got_signals),
        poison_expected: truth.poison_records,
        invalid_reported: report.totals.invalid,
    }
}
