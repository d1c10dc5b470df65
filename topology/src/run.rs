//! The state of one run `(world_id, run_id)`: what was seen per sequence, its findings and its
//! signal episode. Plain data: the `state` crate stores it with bincode and restores it.
//!
//! Pending timers are not stored; they are derived from the per-sequence facts
//! ([`RunState::rebuild_timers`]), so a restored run fires exactly what the original would have.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

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
    pub etag: Option<String>,
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

/// Everything known about one sequence of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqState {
    pub activation: Option<ActivationSeen>,
    /// Event time of the first ACK (later ACKs, from any Gateway, are duplicates).
    pub ack_ms: Option<Millis>,
    /// Set while the activation is missing but a later sequence was seen: the gap deadline.
    pub gap_due: Option<Millis>,
    /// Findings by [`FindingKind::index`].
    pub findings: [Option<FindingState>; 4],
    /// Set when its `ack_missing` was raised behind a missing earlier sequence.
    pub blocked: Option<Blocked>,
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

    /// Whether the sequence's `activation_gap` is pending (a later sequence seen, its deadline
    /// not passed) or open: it holds back the ACKs of every later sequence.
    pub fn gap_pending_or_open(&self) -> bool {
        self.activation.is_none()
            && (self.gap_due.is_some()
                || self
                    .finding(FindingKind::ActivationGap)
                    .is_some_and(FindingState::is_open))
    }

    /// Whether an open finding of `kind` counts towards an episode (pause, rollback, alert):
    /// every open finding does, but a still-blocked `ack_missing`.
    pub fn counts(&self, kind: FindingKind) -> bool {
        self.finding(kind).is_some_and(FindingState::is_open)
            && !(kind == FindingKind::AckMissing && self.blocked.is_some_and(|b| b.holds()))
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
        let gap = match (
            &self.activation,
            self.gap_due,
            self.finding(FindingKind::ActivationGap),
        ) {
            (None, Some(due), None) => Some((due, FindingKind::ActivationGap)),
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
        [ack, gap, orphan].into_iter().flatten()
    }

    /// When a blocked, still open `ack_missing` is released, if its blocker arrived.
    fn release_due(&self) -> Option<Millis> {
        let blocked = self.blocked.filter(Blocked::holds)?;
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
    /// Episodes started so far (the current one's number when paused).
    pub episode: u32,
    pub episode_state: EpisodeState,
    /// Records or missing sequences this run could not track because of a limit.
    pub cut: u64,
    /// Pending timers, derived from the fields above; rebuilt on restore.
    #[serde(skip)]
    pub(crate) timers: BTreeSet<Timer>,
    /// The deadline under which the task's index holds this run (never later than `next_due`).
    #[serde(skip)]
    pub(crate) indexed_due: Option<Millis>,
    /// Changed since the task last handed its changes to the store.
    #[serde(skip)]
    pub(crate) dirty: bool,
}

impl PartialEq for RunState {
    fn eq(&self, other: &Self) -> bool {
        self.first_record_ms == other.first_record_ms
            && self.last_event_ms == other.last_event_ms
            && self.max_sequence == other.max_sequence
            && self.sequences == other.sequences
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

    pub fn open_findings(&self) -> usize {
        self.sequences
            .values()
            .flat_map(|s| s.findings.iter().flatten())
            .filter(|f| f.is_open())
            .count()
    }

    /// Whether an open finding counts towards the episode (see [`EpisodeState`]).
    pub fn has_counting_finding(&self) -> bool {
        self.sequences.values().any(|s| {
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
    /// open: what holds back the ACK of `seq` (semantics §2 "Blocked ACKs").
    pub fn blocker_of(&self, seq: u64) -> Option<u64> {
        self.sequences
            .iter()
            .take_while(|(&m, _)| m < seq)
            .find(|(_, s)| s.gap_pending_or_open())
            .map(|(&m, _)| m)
    }

    /// Whether an activation that filled a gap during the current episode still waits for
    /// its ACK (semantics §3: the run is not healthy until the late-filled sequence is applied).
    /// By episode, not by time: a late record's event time may precede the pause.
    pub fn awaits_late_fill_ack(&self) -> bool {
        self.sequences
            .values()
            .any(|s| s.filled_in_episode == Some(self.episode) && s.ack_ms.is_none())
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
