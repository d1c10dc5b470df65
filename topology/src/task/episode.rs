//! Findings raised and resolved, blocked ACKs and their release, and a run's episodes:
//! pause, the rollback decision, resume (docs/semantics.md §2, §3).

use crate::decode::Phase;
use crate::limits::EVENT_SEQUENCES_MAX;
use crate::output::{
    detected_key, resolved_key, signal_key, Action, GapDetected, GapResolved, Output, Signal,
};
use crate::policy::Policy;
use crate::run::{Blocked, EpisodeState, FindingKind, FindingState, Rollback, RunState};
use crate::time::Millis;
use crate::RunKey;

use super::Task;

impl Task {
    /// Resolves the open finding of `kind` on `seq`, if there is one.
    pub(super) fn resolve(
        &mut self,
        key: &RunKey,
        seq: u64,
        kind: FindingKind,
        at: Millis,
        out: &mut Vec<Output>,
    ) {
        let run = self.runs.get_mut(key).expect("run exists");
        let Some(state) = run.sequences.get_mut(&seq) else {
            return;
        };
        let phase = state.finding_phase(kind);
        let blocked_by = match kind {
            FindingKind::AckMissing => state.blocked.as_ref().map(|b| b.by),
            _ => None,
        };
        let Some(detected_at) = state
            .finding(kind)
            .filter(|f| f.is_open())
            .map(|f| f.detected_at)
        else {
            return;
        };
        let policy = self.policy;
        run.untrack(seq, &policy);
        let state = run.sequences.get_mut(&seq).expect("checked");
        state.findings[kind.index()] = Some(FindingState {
            detected_at,
            resolved_at: Some(at),
        });
        run.track(seq, &policy);
        self.counters.findings_resolved[kind.index()] += 1;
        out.push(Output::Resolved(GapResolved {
            world_id: key.world_id.to_string(),
            run_id: key.run_id.to_string(),
            kind,
            sequences: vec![seq],
            phase,
            blocked_by,
            detected_at,
            resolved_at: at,
            idempotency_key: resolved_key(key, kind, seq, detected_at),
        }));
    }

    /// semantics §3 resume: a paused (not rolled-back) run whose findings are all resolved, with
    /// no late-filled activation still waiting for its ACK, resumes at `at`, the event time of
    /// the record that made it so.
    pub(super) fn maybe_resume(&mut self, key: &RunKey, at: Millis, out: &mut Vec<Output>) {
        let run = self.runs.get_mut(key).expect("run exists");
        let EpisodeState::Paused { at: paused_at, .. } = run.episode_state else {
            return;
        };
        if run.open_findings() == 0 && !run.awaits_late_fill_ack() {
            let policy = self.policy;
            run.set_episode(EpisodeState::Idle, &policy);
            self.signal(key, Action::Resume, at, paused_at, out);
        }
    }

    /// The activation of `seq` arrived: the blocked findings it held back are released
    /// `ack_timeout_ms` from now unless their ACKs come first (semantics §2 "Blocked ACKs").
    pub(super) fn start_releases(&mut self, key: &RunKey, seq: u64, arrived_ms: Millis) {
        let policy = self.policy;
        let run = self.runs.get_mut(key).expect("run exists");
        let waiting: Vec<u64> = run
            .sequences
            .iter()
            .filter(|(&s, state)| {
                s > seq
                    && state
                        .blocked
                        .as_ref()
                        .is_some_and(|b| b.by == seq && b.release_due.is_none())
                    && state
                        .finding(FindingKind::AckMissing)
                        .is_some_and(FindingState::is_open)
            })
            .map(|(&s, _)| s)
            .collect();
        for s in waiting {
            run.untrack(s, &policy);
            let blocked = run
                .sequences
                .get_mut(&s)
                .and_then(|st| st.blocked.as_mut())
                .expect("listed as blocked");
            blocked.release_due = Some(arrived_ms.saturating_add(policy.ack_timeout_ms));
            run.track(s, &policy);
        }
    }

    /// Emits the detected events of findings just recorded (one group: same kind, phase and
    /// blocker), and pauses the run if it is idle and the findings count (blocked ones do not).
    pub(super) fn raise(
        &mut self,
        key: &RunKey,
        raised: Raised,
        detected_at: Millis,
        out: &mut Vec<Output>,
    ) {
        let kind = raised.kind;
        self.counters.findings_raised[kind.index()] += raised.sequences.len() as u64;
        for chunk in raised.sequences.chunks(EVENT_SEQUENCES_MAX) {
            out.push(Output::Detected(GapDetected {
                world_id: key.world_id.to_string(),
                run_id: key.run_id.to_string(),
                kind,
                sequences: chunk.to_vec(),
                phase: raised.phase,
                blocked_by: raised.blocked_by,
                detected_at,
                idempotency_key: detected_key(key, kind, chunk[0], detected_at),
            }));
        }
        if kind.pauses() && raised.blocked_by.is_none() {
            self.pause_if_idle(key, detected_at, out);
        }
    }

    /// Opens an episode at `at` (a pause) if the run has none open and was not rolled back.
    pub(super) fn pause_if_idle(&mut self, key: &RunKey, at: Millis, out: &mut Vec<Output>) {
        let run = self.runs.get_mut(key).expect("run exists");
        if run.episode_state == EpisodeState::Idle {
            run.episode += 1;
            let policy = self.policy;
            run.set_episode(
                EpisodeState::Paused {
                    at,
                    rollback: Rollback::Due,
                },
                &policy,
            );
            self.signal(key, Action::Pause, at, at, out);
        }
    }

    /// Emits a signal of the run's current episode, which paused at `paused_at` (part of the
    /// idempotency key, so a run recreated after retention never reuses an episode's keys).
    pub(super) fn signal(
        &mut self,
        key: &RunKey,
        action: Action,
        at: Millis,
        paused_at: Millis,
        out: &mut Vec<Output>,
    ) {
        let episode = self.runs[key].episode;
        self.counters.signals[action as usize] += 1;
        out.push(Output::Signal(Signal {
            world_id: key.world_id.to_string(),
            run_id: key.run_id.to_string(),
            action,
            episode,
            at,
            idempotency_key: signal_key(key, action, episode, paused_at),
        }));
    }

    /// A blocked `ack_missing` whose blocker arrived `ack_timeout_ms` ago without its ACK
    /// following: an ordinary finding from now on; it pauses the run if none is open.
    pub(super) fn release(&mut self, key: &RunKey, seq: u64, due: Millis, out: &mut Vec<Output>) {
        let policy = self.policy;
        let run = self.runs.get_mut(key).expect("run exists");
        run.untrack(seq, &policy);
        if let Some(blocked) = run.sequences.get_mut(&seq).and_then(|s| s.blocked.as_mut()) {
            blocked.released = true;
        }
        run.track(seq, &policy);
        out.push(Output::Released {
            run: key.clone(),
            sequence: seq,
            at: due,
        });
        self.pause_if_idle(key, due, out);
    }

    /// The rollback decision, once, at pause + `rollback_after_ms`, by the findings that count
    /// then: a rollback (`auto_rollback`) or an escalation if one does, nothing otherwise.
    pub(super) fn fire_rollback(&mut self, key: &RunKey, due: Millis, out: &mut Vec<Output>) {
        let policy = self.policy;
        let run = self.runs.get_mut(key).expect("run exists");
        let EpisodeState::Paused { at, .. } = run.episode_state else {
            unreachable!("a rollback timer exists only while paused")
        };
        if !run.has_counting_finding() {
            let decided = EpisodeState::Paused {
                at,
                rollback: Rollback::NotNeeded,
            };
            run.set_episode(decided, &policy);
        } else if policy.auto_rollback {
            run.set_episode(EpisodeState::RolledBack { at: due }, &policy);
            self.signal(key, Action::Rollback, due, at, out);
        } else {
            run.set_episode(
                EpisodeState::Paused {
                    at,
                    rollback: Rollback::Escalated,
                },
                &policy,
            );
            let episode = run.episode;
            self.counters.escalations += 1;
            out.push(Output::Escalated {
                run: key.clone(),
                episode,
                at: due,
            });
        }
    }
}

/// Findings of one kind raised together: they share a phase and a blocker (docs/semantics.md §2).
pub(super) struct Raised {
    pub(super) kind: FindingKind,
    pub(super) phase: Option<Phase>,
    pub(super) blocked_by: Option<u64>,
    pub(super) sequences: Vec<u64>,
}

/// Records the findings of `kind` whose deadline `due` passed for the sequences of `group`
/// (ascending), and returns them grouped by phase and blocker, each group in sequence order.
pub(super) fn record_findings(
    run: &mut RunState,
    kind: FindingKind,
    group: &[u64],
    due: Millis,
    policy: &Policy,
) -> Vec<Raised> {
    if kind == FindingKind::ActivationGap {
        // Gap timers are one per missing range, under its first sequence.
        let sequences = group
            .iter()
            .filter_map(|&from| run.detect_missing(from, due))
            .flat_map(|m| m.from..m.to)
            .collect();
        return vec![Raised {
            kind,
            phase: None,
            blocked_by: None,
            sequences,
        }];
    }
    let mut raised: Vec<Raised> = Vec::new();
    for &seq in group {
        // The blocker is judged before any of the group is recorded: an `ack_missing` group
        // never contains a gap, so recording one sequence cannot change another's blocker.
        let blocked_by = match kind {
            FindingKind::AckMissing => run.blocker_of(seq),
            _ => None,
        };
        run.untrack(seq, policy);
        let state = run
            .sequences
            .get_mut(&seq)
            .expect("timer's sequence exists");
        state.findings[kind.index()] = Some(FindingState {
            detected_at: due,
            resolved_at: None,
        });
        if let Some(by) = blocked_by {
            state.blocked = Some(Box::new(Blocked {
                by,
                release_due: None,
                released: false,
            }));
        }
        let phase = state.finding_phase(kind);
        run.track(seq, policy);
        match raised
            .iter_mut()
            .find(|r| r.phase == phase && r.blocked_by == blocked_by)
        {
            Some(r) => r.sequences.push(seq),
            None => raised.push(Raised {
                kind,
                phase,
                blocked_by,
                sequences: vec![seq],
            }),
        }
    }
    raised
}
