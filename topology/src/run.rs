//! The state of one run `(world_id, run_id)`: what was seen per sequence, its findings and its
//! signal episode. Plain data: the `state` crate stores it with bincode and restores it.
//!
//! Pending timers are not stored; they are derived from the per-sequence facts
//! ([`RunState::rebuild_timers`]), so a restored run fires exactly what the original would have.

use serde::{Deserialize, Serialize};

use crate::compact::{SeqFindings, TimerSet};
use crate::decode::Phase;
use crate::policy::Policy;
use crate::seq_map::SeqMap;
use crate::time::Millis;

/// The four finding kinds of semantics §2. The order is the firing order at equal deadlines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    AckMissing,
    ActivationGap,
    OrphanAck,
    SequenceConflict,
}

impl FindingKind {
    pub const ALL: [FindingKind; 4] = [
        FindingKind::AckMissing,
        FindingKind::ActivationGap,
        FindingKind::OrphanAck,
        FindingKind::SequenceConflict,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::AckMissing => "ack_missing",
            FindingKind::ActivationGap => "activation_gap",
            FindingKind::OrphanAck => "orphan_ack",
            FindingKind::SequenceConflict => "sequence_conflict",
        }
    }

    /// Whether a finding of this kind pauses the run (semantics §3: not `orphan_ack`).
    pub fn pauses(self) -> bool {
        !matches!(self, FindingKind::OrphanAck)
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// One raised finding of one sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FindingState {
    pub detected_at: Millis,
    pub resolved_at: Option<Millis>,
}

impl FindingState {
    pub fn is_open(&self) -> bool {
        self.resolved_at.is_none()
    }
}

/// The tracked activation seen for a sequence (the first one; later ones are duplicates).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivationSeen {
    pub event_ms: Millis,
    pub phase: Phase,
    pub etag: Option<Box<str>>,
}

/// An `ack_missing` raised while an earlier sequence of its run was missing (semantics §2 "Blocked
/// ACKs"): the Gateway holds the ACK back behind that gap. It opens no episode, does not count
/// towards a rollback and raises no alert of its own, until it is released.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blocked {
    /// The lowest sequence of the run that was missing (gap pending or open) when it was
    /// raised; fixed from then on.
    pub by: u64,
    /// `ack_timeout_ms` after the blocker's activation arrived: when it is released if its ACK
    /// has not come by then.
    pub release_due: Option<Millis>,
    /// Released: an ordinary open finding from `release_due` on (`by` stays in the record).
    pub released: bool,
}

impl Blocked {
    /// Whether the finding is still held back by its blocker (it counts once released).
    pub fn holds(&self) -> bool {
        !self.released
    }
}

/// Sequences of a run missing their activation, revealed together by one later activation:
/// `[from, to)`, held as one range however wide (a jump from 1 to 1000 is one entry, not
/// 998). Every sequence of it is pending (`detected_at` none, the gap deadline `gap_due` not
/// passed) or open; a sequence whose activation arrives leaves the range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Missing {
    pub from: u64,
    /// Exclusive.
    pub to: u64,
    pub gap_due: Millis,
    /// When the gap deadline passed: every sequence of the range has an open finding.
    pub detected_at: Option<Millis>,
}

impl Missing {
    pub fn len(&self) -> u64 {
        self.to - self.from
    }

    pub fn is_empty(&self) -> bool {
        self.from >= self.to
    }

    pub fn contains(&self, seq: u64) -> bool {
        (self.from..self.to).contains(&seq)
    }

    fn timer(&self) -> Option<Timer> {
        self.detected_at.is_none().then_some(Timer {
            due: self.gap_due,
            kind: TimerKind::Finding(FindingKind::ActivationGap),
            sequence: self.from,
        })
    }
}

/// Everything known about one sequence of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqState {
    pub activation: Option<ActivationSeen>,
    /// Event time of the first ACK (later ACKs, from any Gateway, are duplicates).
    pub ack_ms: Option<Millis>,
    /// Findings by [`FindingKind::index`]. A gap that is still missing lives in the run's
    /// [`Missing`] ranges instead; once filled, its finding (if raised) is recorded here.
    pub findings: SeqFindings,
    /// Set when its `ack_missing` was raised behind a missing earlier sequence.
    pub blocked: Option<Box<Blocked>>,
    /// The episode during which this sequence's activation filled its open gap (a late fill):
    /// that episode does not end before this sequence is acknowledged (semantics §3 resume).
    pub filled_in_episode: Option<u32>,
}

impl SeqState {
    pub fn finding(&self, kind: FindingKind) -> Option<&FindingState> {
        self.findings[kind.index()].as_ref()
    }

    /// ACK latency, once both ends are known; negative (clock skew) reads as 0.
    pub fn latency_ms(&self) -> Option<u64> {
        let act = self.activation.as_ref()?;
        Some(self.ack_ms?.saturating_sub(act.event_ms).max(0) as u64)
    }

    /// Whether the sequence waits for its ACK with its deadline not yet passed (a "pending
    /// ACK"); one whose deadline passed is an `ack_missing` finding instead.
    pub fn awaits_ack(&self) -> bool {
        self.activation.is_some()
            && self.ack_ms.is_none()
            && self.finding(FindingKind::AckMissing).is_none()
    }

    /// A finding's phase (docs/semantics.md §2): the activation's for `ack_missing` and
    /// `sequence_conflict`, none for `activation_gap` and `orphan_ack`.
    pub fn finding_phase(&self, kind: FindingKind) -> Option<Phase> {
        match kind {
            FindingKind::AckMissing | FindingKind::SequenceConflict => {
                Some(self.activation.as_ref().map_or(Phase::Unknown, |a| a.phase))
            }
            FindingKind::ActivationGap | FindingKind::OrphanAck => None,
        }
    }

    /// Whether an open finding of `kind` counts towards an episode (pause, rollback, alert):
    /// every open finding does, but a still-blocked `ack_missing`.
    pub fn counts(&self, kind: FindingKind) -> bool {
        self.finding(kind).is_some_and(FindingState::is_open)
            && !(kind == FindingKind::AckMissing && self.blocked.as_deref().is_some_and(Blocked::holds))
    }

    /// The deadlines this sequence still waits for, by kind.
    fn timers(&self, policy: &Policy) -> impl Iterator<Item = (Millis, FindingKind)> {
        let ack = match (
            &self.activation,
            self.ack_ms,
            self.finding(FindingKind::AckMissing),
        ) {
            (Some(act), None, None) => Some((
                act.event_ms.saturating_add(policy.ack_timeout_ms),
                FindingKind::AckMissing,
            )),
            _ => None,
        };
        let orphan = match (
            &self.activation,
            self.ack_ms,
            self.finding(FindingKind::OrphanAck),
        ) {
            (None, Some(ack), None) => Some((
                ack.saturating_add(policy.orphan_timeout_ms),
                FindingKind::OrphanAck,
            )),
            _ => None,
        };
        [ack, orphan].into_iter().flatten()
    }

    /// When a blocked, still open `ack_missing` is released, if its blocker arrived.
    fn release_due(&self) -> Option<Millis> {
        let blocked = self.blocked.as_deref().filter(|b| b.holds())?;
        self.finding(FindingKind::AckMissing)
            .is_some_and(FindingState::is_open)
            .then_some(blocked.release_due)
            .flatten()
    }

    /// Every derived timer of this sequence.
    fn all_timers(&self, seq: u64, policy: &Policy) -> impl Iterator<Item = Timer> {
        let release = self.release_due().map(|due| Timer {
            due,
            kind: TimerKind::Release,
            sequence: seq,
        });
        self.timers(policy)
            .map(move |(due, kind)| Timer {
                due,
                kind: TimerKind::Finding(kind),
                sequence: seq,
            })
            .chain(release)
    }
}

/// Where a run stands in its signal episodes (docs/semantics.md §3). Transitions:
///
/// ```text
///   Idle --first open counting finding--> Paused --every finding resolved, late fills
///    ^                                      |      acknowledged--> Idle (episode ends: resume)
///    |______________________________________|
///                                           +--rollback_after_ms, a counting finding open,
///                                              auto_rollback--> RolledBack (final)
/// ```
///
/// A counting finding is an open `ack_missing` (not blocked, or released), `activation_gap`
/// or `sequence_conflict`; `orphan_ack` never opens an episode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum EpisodeState {
    #[default]
    Idle,
    Paused {
        at: Millis,
        rollback: Rollback,
    },
    RolledBack {
        at: Millis,
    },
}

/// The rollback decision of a paused run's episode, taken once at pause + `rollback_after_ms`
/// by the findings that count at that moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rollback {
    /// Not decided yet: the rollback timer is pending.
    Due,
    /// A counting finding was open and `auto_rollback` is off: alerts go critical.
    Escalated,
    /// Nothing counted at that moment; no rollback in this episode.
    NotNeeded,
}

/// A timer of a run. Ordered by deadline, then kind (findings before the rollback), then sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timer {
    pub due: Millis,
    pub kind: TimerKind,
    pub sequence: u64,
}

/// What a timer does when stream time passes it. The order is the firing order at equal
/// deadlines: findings, then releases of blocked findings, then the rollback decision (which
/// counts what the others changed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TimerKind {
    Finding(FindingKind),
    /// A blocked `ack_missing` is released (its blocker arrived and its ACK did not follow).
    Release,
    Rollback,
}

/// The state of one run. Equality compares the stored facts only, not the derived timers or
/// the task's bookkeeping.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunState {
    /// Record time of the run's first record (for the leading-gap exemption).
    pub first_record_ms: Millis,
    /// Largest event time of the run's records (for retention).
    pub last_event_ms: Millis,
    /// Highest tracked sequence seen.
    pub max_sequence: Option<u64>,
    pub sequences: SeqMap,
    /// Sequences missing their activation, as ranges sorted by `from`, disjoint.
    pub missing: Vec<Missing>,
    /// Episodes started so far (the current one's number when paused).
    pub episode: u32,
    pub episode_state: EpisodeState,
    /// Records or missing sequences this run could not track because of a limit.
    pub cut: u64,
    /// Pending timers, derived from the fields above; rebuilt on restore.
    #[serde(skip)]
    pub(crate) timers: TimerSet,
    /// The deadline under which the task's index holds this run (never later than `next_due`).
    #[serde(skip)]
    pub(crate) indexed_due: Option<Millis>,
    /// Changed since the task last handed its changes to the store.
    #[serde(skip)]
    pub(crate) dirty: bool,
    /// The last `take_changes` batch that handed it to the store (0: none since it was
    /// loaded): only that batch's eviction may evict it ([`crate::Task::evict_settled_beyond`]).
    #[serde(skip)]
    pub(crate) taken_in: u64,
}

impl PartialEq for RunState {
    fn eq(&self, other: &Self) -> bool {
        self.first_record_ms == other.first_record_ms
            && self.last_event_ms == other.last_event_ms
            && self.max_sequence == other.max_sequence
            && self.sequences == other.sequences
            && self.missing == other.missing
            && self.episode == other.episode
            && self.episode_state == other.episode_state
            && self.cut == other.cut
    }
}

impl Eq for RunState {}

impl RunState {
    pub fn new(first_record_ms: Millis) -> Self {
        RunState {
            first_record_ms,
            last_event_ms: first_record_ms,
            ..Default::default()
        }
    }

    /// Recomputes the derived timer set, after a restore or a policy change.
    pub fn rebuild_timers(&mut self, policy: &Policy) {
        self.timers.clear();
        for (&seq, state) in &self.sequences {
            self.timers.extend(state.all_timers(seq, policy));
        }
        self.timers
            .extend(self.missing.iter().filter_map(Missing::timer));
        if let Some(due) = self.rollback_due(policy) {
            self.timers.insert(Timer {
                due,
                kind: TimerKind::Rollback,
                sequence: 0,
            });
        }
    }

    fn rollback_due(&self, policy: &Policy) -> Option<Millis> {
        match self.episode_state {
            EpisodeState::Paused {
                at,
                rollback: Rollback::Due,
            } => Some(at.saturating_add(policy.rollback_after_ms)),
            _ => None,
        }
    }

    /// Removes the derived timers of `seq` before it changes; pair with [`Self::track`].
    pub(crate) fn untrack(&mut self, seq: u64, policy: &Policy) {
        if let Some(state) = self.sequences.get(&seq) {
            for timer in state.all_timers(seq, policy) {
                self.timers.remove(&timer);
            }
        }
    }

    pub(crate) fn track(&mut self, seq: u64, policy: &Policy) {
        if let Some(state) = self.sequences.get(&seq) {
            self.timers.extend(state.all_timers(seq, policy));
        }
    }

    pub(crate) fn set_episode(&mut self, next: EpisodeState, policy: &Policy) {
        if let Some(due) = self.rollback_due(policy) {
            self.timers.remove(&Timer {
                due,
                kind: TimerKind::Rollback,
                sequence: 0,
            });
        }
        self.episode_state = next;
        if let Some(due) = self.rollback_due(policy) {
            self.timers.insert(Timer {
                due,
                kind: TimerKind::Rollback,
                sequence: 0,
            });
        }
    }

    /// When the run may be dropped: `run_retention_ms` after its last event, and never before
    /// its last pending deadline, so a dropped run never has anything pending.
    pub fn retention_due(&self, policy: &Policy) -> Millis {
        let after_last = self.last_event_ms.saturating_add(policy.run_retention_ms);
        self.timers
            .last()
            .map_or(after_last, |t| after_last.max(t.due))
    }

    /// The earliest moment anything of this run is due.
    pub fn next_due(&self, policy: &Policy) -> Millis {
        let retention = self.retention_due(policy);
        self.timers
            .first()
            .map_or(retention, |t| t.due.min(retention))
    }

    /// Nothing of the run is pending, open or paused: what the live runtime may evict to the
    /// store after a commit. Every operator view (alerts, gauges, `/runs`' open findings) reads
    /// only unsettled runs from memory, so evicting settled ones changes none of them.
    pub fn is_settled(&self) -> bool {
        self.timers.is_empty()
            && !matches!(self.episode_state, EpisodeState::Paused { .. })
            && self.open_findings() == 0
    }

    pub fn open_findings(&self) -> usize {
        let in_ranges: u64 = self
            .missing
            .iter()
            .filter(|m| m.detected_at.is_some())
            .map(Missing::len)
            .sum();
        self.sequences
            .values()
            .flat_map(|s| s.findings.iter().flatten())
            .filter(|f| f.is_open())
            .count()
            + in_ranges as usize
    }

    /// Sequences with an open `activation_gap` (still missing, deadline passed), with its
    /// `detected_at`, in order.
    pub fn open_gaps(&self) -> impl Iterator<Item = (u64, Millis)> + '_ {
        self.missing
            .iter()
            .filter_map(|m| m.detected_at.map(|at| (m.from..m.to, at)))
            .flat_map(|(range, at)| range.map(move |seq| (seq, at)))
    }

    /// Makes `[from, to)` missing with its gap deadline `gap_due` (it lies above every
    /// sequence seen so far, so above every range).
    pub(crate) fn reveal_missing(&mut self, from: u64, to: u64, gap_due: Millis) {
        debug_assert!(self.missing.last().is_none_or(|m| m.to <= from));
        let range = Missing {
            from,
            to,
            gap_due,
            detected_at: None,
        };
        self.timers.extend(range.timer());
        self.missing.push(range);
    }

    /// The activation of `seq` arrived: it leaves its missing range (split in two). Returns
    /// the range's gap deadline and detection, when it was missing.
    pub(crate) fn fill_missing(&mut self, seq: u64) -> Option<Missing> {
        let i = self.missing.iter().position(|m| m.contains(seq))?;
        let range = self.missing.remove(i);
        if let Some(timer) = range.timer() {
            self.timers.remove(&timer);
        }
        let below = Missing { to: seq, ..range };
        let above = Missing {
            from: seq + 1,
            ..range
        };
        for (offset, part) in [below, above]
            .into_iter()
            .filter(|p| !p.is_empty())
            .enumerate()
        {
            self.timers.extend(part.timer());
            self.missing.insert(i + offset, part);
        }
        Some(range)
    }

    /// The gap deadline `due` passed for the range starting at `from`: every sequence of it
    /// has an open finding from now on. Returns the range.
    pub(crate) fn detect_missing(&mut self, from: u64, due: Millis) -> Option<Missing> {
        let range = self
            .missing
            .iter_mut()
            .find(|m| m.from == from && m.detected_at.is_none() && m.gap_due == due)?;
        range.detected_at = Some(due);
        let detected = *range;
        self.timers.remove(&Timer {
            due,
            kind: TimerKind::Finding(FindingKind::ActivationGap),
            sequence: from,
        });
        Some(detected)
    }

    /// Whether an open finding counts towards the episode (see [`EpisodeState`]).
    pub fn has_counting_finding(&self) -> bool {
        self.missing.iter().any(|m| m.detected_at.is_some())
            || self.sequences.values().any(|s| {
                [
                    FindingKind::AckMissing,
                    FindingKind::ActivationGap,
                    FindingKind::SequenceConflict,
                ]
                .into_iter()
                .any(|kind| s.counts(kind))
            })
    }

    /// The lowest sequence below `seq` whose activation is missing with its gap pending or
    /// open: what holds back the ACK of `seq` (semantics §2 "Blocked ACKs"). Every sequence
    /// of a missing range is pending or open, and exempt sequences are in none.
    pub fn blocker_of(&self, seq: u64) -> Option<u64> {
        self.missing.first().map(|m| m.from).filter(|&m| m < seq)
    }

    /// Whether an activation that filled a gap during the current episode still waits for
    /// its ACK (semantics §3: the run is not healthy until the late-filled sequence is applied).
    /// By episode, not by time: a late record's event time may precede the pause.
    pub fn awaits_late_fill_ack(&self) -> bool {
        self.sequences
            .values()
            .any(|s| s.filled_in_episode == Some(self.episode) && s.ack_ms.is_none())
    }

    /// About the memory the run holds (its entry in the task's map, its key's run id, its
    /// sequences, etags, findings, ranges and timers): what the settled-run cache counts.
    pub fn resident_bytes(&self) -> usize {
        use std::mem::size_of;
        let per_sequence: usize = self
            .sequences
            .values()
            .map(|s| {
                s.activation.as_ref().and_then(|a| a.etag.as_ref()).map_or(0, |e| e.len())
                    + s.findings.heap_bytes()
                    + s.blocked.as_ref().map_or(0, |_| size_of::<Blocked>())
            })
            .sum();
        size_of::<(crate::RunKey, RunState)>()
            + 64 // the run id's shared string, and the map's and due index's per-entry share
            + self.sequences.capacity() * size_of::<(u64, SeqState)>()
            + per_sequence
            + self.missing.capacity() * size_of::<Missing>()
            + self.timers.len() * size_of::<Timer>()
    }

    pub fn pending_timers(&self) -> impl Iterator<Item = &Timer> {
        self.timers.iter()
    }

    /// Tracked activations, ACKed ones, and the latencies of those (for reports).
    pub fn summary(&self) -> RunSummary {
        let mut latencies: Vec<u64> = self
            .sequences
            .values()
            .filter_map(SeqState::latency_ms)
            .collect();
        latencies.sort_unstable();
        RunSummary {
            tracked: self
                .sequences
                .values()
                .filter(|s| s.activation.is_some())
                .count() as u64,
            acked: latencies.len() as u64,
            latencies_ms: latencies,
            cut: self.cut,
        }
    }
}

/// What a report needs of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunSummary {
    pub tracked: u64,
    pub acked: u64,
    /// Sorted ascending.
    pub latencies_ms: Vec<u64>,
    pub cut: u64,
}
