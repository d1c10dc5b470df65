//! What the engine emits. Every emitted fact carries an idempotency key that depends only on
//! the fact, so a restart or a replay emits the same key again (docs/semantics.md §3).

use serde::{Deserialize, Serialize};

use crate::decode::{Invalid, Phase};
use crate::run::{FindingKind, RunSummary};
use crate::time::Millis;
use crate::RunKey;

/// `ActivationGapDetected`: sequences of one run that crossed a deadline of one kind together.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GapDetected {
    pub world_id: String,
    pub run_id: String,
    pub kind: FindingKind,
    pub sequences: Vec<u64>,
    /// `ack_missing` and `sequence_conflict`: the activation's phase; otherwise none.
    pub phase: Option<Phase>,
    /// A blocked `ack_missing`: the missing earlier sequence that holds its ACK back.
    pub blocked_by: Option<u64>,
    pub detected_at: Millis,
    pub idempotency_key: String,
}

/// `ActivationGapResolved`: one sequence whose missing counterpart arrived.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GapResolved {
    pub world_id: String,
    pub run_id: String,
    pub kind: FindingKind,
    pub sequences: Vec<u64>,
    pub phase: Option<Phase>,
    pub blocked_by: Option<u64>,
    pub detected_at: Millis,
    pub resolved_at: Millis,
    pub idempotency_key: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Pause,
    Rollback,
    Resume,
}

impl Action {
    pub const ALL: [Action; 3] = [Action::Pause, Action::Rollback, Action::Resume];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Rollback => "rollback",
            Action::Resume => "resume",
        }
    }
}

/// A signal to WorldService: at most one per run, action and episode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signal {
    pub world_id: String,
    pub run_id: String,
    pub action: Action,
    pub episode: u32,
    pub at: Millis,
    pub idempotency_key: String,
}

/// One output of the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    Detected(GapDetected),
    Resolved(GapResolved),
    Signal(Signal),
    /// The rollback deadline of a paused run passed with `auto_rollback = false`.
    Escalated {
        run: RunKey,
        episode: u32,
        at: Millis,
    },
    /// A blocked `ack_missing` was released: an ordinary open finding from `at` on.
    Released {
        run: RunKey,
        sequence: u64,
        at: Millis,
    },
    /// An ACK latency sample (once per sequence), by the activation's phase.
    Latency {
        phase: Phase,
        ms: u64,
        clock_skew: bool,
    },
    /// The run's state was dropped by retention (the store writes a tombstone). The summary is
    /// absent when the run was evicted from memory at the time (live processing only).
    RunDropped {
        run: RunKey,
        summary: Option<RunSummary>,
    },
}

/// How one input record was classified and applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Tracked,
    Ack,
    Untracked,
    Duplicate,
    /// Dead-letter this record.
    Invalid(Invalid),
    /// A valid record a limit did not let the run track; counted in `limit_cut`.
    Cut,
    /// The record's run was evicted from memory: load it from the store, `restore_run` it, and
    /// process the record again. Nothing was changed or counted.
    NeedsRun(RunKey),
}

/// What an input record counted as: the `outcome` label of `ackwatch_records_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OutcomeLabel {
    Tracked,
    Ack,
    Untracked,
    Duplicate,
    Invalid,
    Cut,
}

impl OutcomeLabel {
    pub const ALL: [OutcomeLabel; 6] = [
        OutcomeLabel::Tracked,
        OutcomeLabel::Ack,
        OutcomeLabel::Untracked,
        OutcomeLabel::Duplicate,
        OutcomeLabel::Invalid,
        OutcomeLabel::Cut,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeLabel::Tracked => "tracked",
            OutcomeLabel::Ack => "ack",
            OutcomeLabel::Untracked => "untracked",
            OutcomeLabel::Duplicate => "duplicate",
            OutcomeLabel::Invalid => "invalid",
            OutcomeLabel::Cut => "cut",
        }
    }

    /// Position in [`Self::ALL`], for per-label arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl Outcome {
    /// The label a processed record is counted under; `None` for `NeedsRun` (nothing was
    /// processed yet).
    pub fn label(&self) -> Option<OutcomeLabel> {
        Some(match self {
            Outcome::Tracked => OutcomeLabel::Tracked,
            Outcome::Ack => OutcomeLabel::Ack,
            Outcome::Untracked => OutcomeLabel::Untracked,
            Outcome::Duplicate => OutcomeLabel::Duplicate,
            Outcome::Invalid(_) => OutcomeLabel::Invalid,
            Outcome::Cut => OutcomeLabel::Cut,
            Outcome::NeedsRun(_) => return None,
        })
    }
}

/// Escapes `%` and `:` so the parts of a key cannot run into each other.
fn key_part(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains([':', '%']) {
        text.replace('%', "%25").replace(':', "%3A").into()
    } else {
        text.into()
    }
}

pub(crate) fn detected_key(
    run: &RunKey,
    kind: FindingKind,
    first_seq: u64,
    detected_at: Millis,
) -> String {
    format!(
        "ackwatch:gap:{}:{}:{}:{first_seq}:{detected_at}:detected",
        key_part(&run.world_id),
        key_part(&run.run_id),
        kind.as_str()
    )
}

pub(crate) fn resolved_key(
    run: &RunKey,
    kind: FindingKind,
    seq: u64,
    detected_at: Millis,
) -> String {
    format!(
        "ackwatch:gap:{}:{}:{}:{seq}:{detected_at}:resolved",
        key_part(&run.world_id),
        key_part(&run.run_id),
        kind.as_str()
    )
}

/// The key of a signal of the episode that paused at `paused_at`: episode numbers start again
/// when a run is recreated after retention dropped it, its pause time does not repeat.
pub(crate) fn signal_key(run: &RunKey, action: Action, episode: u32, paused_at: Millis) -> String {
    format!(
        "ackwatch:signal:{}:{}:{}:{episode}:{paused_at}",
        key_part(&run.world_id),
        key_part(&run.run_id),
        action.as_str()
    )
}
