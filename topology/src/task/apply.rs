//! What a tracked activation or an ACK changes in its run (docs/semantics.md §2).

use crate::decode::{Ack, Activation};
use crate::limits::{GAP_SPAN_MAX, RUN_SEQUENCES_MAX};
use crate::output::{Outcome, Output};
use crate::run::{ActivationSeen, FindingKind, FindingState};
use crate::time::Millis;
use crate::RunKey;

use super::episode::Raised;
use super::{touch_run, Task};

impl Task {
    /// Whether a record of `key` may be applied: its run exists, or the task knows fewer than
    /// `runs_max` (`TASK_RUNS_MAX`) runs (in memory or evicted; the same count live and in a replay). A
    /// record of a new run beyond it is cut, counted as `task_runs`.
    fn admits(&mut self, key: &RunKey) -> bool {
        if self.runs.contains_key(key) || self.run_count() < self.runs_max {
            return true;
        }
        self.counters.cut("task_runs", 1);
        false
    }

    /// Which limit, if any, cuts a record for a new sequence of a run holding `run_len`:
    /// `RUN_SEQUENCES_MAX` per run, or `sequences_max` (`TASK_SEQUENCES_MAX`) over every run
    /// the task knows (in memory or evicted; the same count live and in a replay).
    fn sequence_limit(&self, new_sequence: bool, run_len: usize) -> Option<&'static str> {
        if !new_sequence {
            None
        } else if run_len >= RUN_SEQUENCES_MAX {
            Some("run_sequences")
        } else if self.sequences_known >= self.sequences_max {
            Some("task_sequences")
        } else {
            None
        }
    }

    pub(super) fn apply_activation(
        &mut self,
        act: Activation<'_>,
        record_ms: Millis,
        out: &mut Vec<Output>,
    ) -> Outcome {
        let policy = self.policy;
        let exempt_from = self.meta.first_record_ms.unwrap_or(record_ms);
        let key = self.key_of(&act.run);
        if !self.admits(&key) {
            return Outcome::Cut;
        }
        touch_run(&mut self.runs, &key, record_ms, act.event_ms);
        self.mark_dirty(&key);
        let run = self.runs.get_mut(&key).expect("just touched");
        let seq = act.sequence;

        if let Some(existing) = run.sequences.get(&seq).and_then(|s| s.activation.as_ref()) {
            let conflict =
                existing.etag.as_deref() != act.etag.as_deref() || existing.phase != act.phase;
            let already = run.sequences[&seq]
                .finding(FindingKind::SequenceConflict)
                .is_some();
            self.mark_dirty(&key);
            if conflict && !already {
                self.counters.tracked += 1;
                let run = self.runs.get_mut(&key).expect("run exists");
                let state = run.sequences.get_mut(&seq).expect("seq exists");
                state.findings[FindingKind::SequenceConflict.index()] = Some(FindingState {
                    detected_at: act.event_ms,
                    resolved_at: None,
                });
                let raised = Raised {
                    kind: FindingKind::SequenceConflict,
                    phase: state.finding_phase(FindingKind::SequenceConflict),
                    blocked_by: None,
                    sequences: vec![seq],
                };
                self.raise(&key, raised, act.event_ms, out);
                self.reindex(&key);
                return Outcome::Tracked;
            }
            self.counters.duplicates += 1;
            self.reindex(&key);
            return Outcome::Duplicate;
        }

        let (new_sequence, run_len) = (!run.sequences.contains_key(&seq), run.sequences.len());
        if let Some(limit) = self.sequence_limit(new_sequence, run_len) {
            let run = self.runs.get_mut(&key).expect("run exists");
            run.cut += 1;
            self.counters.cut(limit, 1);
            self.mark_dirty(&key);
            self.reindex(&key);
            return Outcome::Cut;
        }
        self.counters.tracked += 1;
        let run = self.runs.get_mut(&key).expect("run exists");

        // Sequences this activation reveals as missing: between the highest seen and this one,
        // or, for the run's first activation, from `sequence_start` (unless the run may have
        // begun before the input did).
        let missing_from = match run.max_sequence {
            Some(max) if seq > max => Some(max + 1),
            Some(_) => None,
            None if run.first_record_ms > exempt_from.saturating_add(policy.gap_timeout_ms) => {
                Some(policy.sequence_start)
            }
            None => None,
        };
        if let Some(from) = missing_from.filter(|&from| from < seq) {
            let mut from = from;
            if seq - from > GAP_SPAN_MAX {
                self.counters.cut("gap_span", seq - from - GAP_SPAN_MAX);
                run.cut += seq - from - GAP_SPAN_MAX;
                from = seq - GAP_SPAN_MAX;
            }
            run.reveal_missing(
                from,
                seq,
                act.event_ms.saturating_add(policy.gap_timeout_ms),
            );
        }
        run.max_sequence = Some(run.max_sequence.map_or(seq, |m| m.max(seq)));

        run.untrack(seq, &policy);
        self.sequences_known += u64::from(new_sequence);
        let run = self.runs.get_mut(&key).expect("run exists");
        let state = run.sequences.get_or_default(seq);
        state.activation = Some(ActivationSeen {
            event_ms: act.event_ms,
            phase: act.phase,
            etag: act.etag.map(|e| e.into()),
        });
        let latency = state
            .ack_ms
            .map(|ack_ms| ack_ms.saturating_sub(act.event_ms));
        run.track(seq, &policy);
        if let Some(raw) = latency {
            self.observe_latency(act.phase, raw, out);
        }
        // A filled gap that was raised: its open finding moves from the range to the sequence
        // (resolved just below), and the episode waits for this sequence's ACK.
        let run = self.runs.get_mut(&key).expect("run exists");
        if let Some(detected_at) = run.fill_missing(seq).and_then(|m| m.detected_at) {
            let episode = run.episode;
            let state = run.sequences.get_mut(&seq).expect("just recorded");
            state.findings[FindingKind::ActivationGap.index()] = Some(FindingState {
                detected_at,
                resolved_at: None,
            });
            state.filled_in_episode = Some(episode);
        }
        for kind in [FindingKind::ActivationGap, FindingKind::OrphanAck] {
            self.resolve(&key, seq, kind, act.event_ms, out);
        }
        self.start_releases(&key, seq, act.event_ms);
        self.maybe_resume(&key, act.event_ms, out);
        self.mark_dirty(&key);
        self.reindex(&key);
        Outcome::Tracked
    }

    pub(super) fn apply_ack(
        &mut self,
        ack: Ack<'_>,
        record_ms: Millis,
        out: &mut Vec<Output>,
    ) -> Outcome {
        let policy = self.policy;
        let key = self.key_of(&ack.run);
        if !self.admits(&key) {
            return Outcome::Cut;
        }
        touch_run(&mut self.runs, &key, record_ms, ack.event_ms);
        self.mark_dirty(&key);
        let run = self.runs.get_mut(&key).expect("just touched");
        let seq = ack.sequence;

        if run.sequences.get(&seq).is_some_and(|s| s.ack_ms.is_some()) {
            self.counters.duplicates += 1;
            self.reindex(&key);
            return Outcome::Duplicate;
        }
        let (new_sequence, run_len) = (!run.sequences.contains_key(&seq), run.sequences.len());
        if let Some(limit) = self.sequence_limit(new_sequence, run_len) {
            let run = self.runs.get_mut(&key).expect("run exists");
            run.cut += 1;
            self.counters.cut(limit, 1);
            self.reindex(&key);
            return Outcome::Cut;
        }
        self.sequences_known += u64::from(new_sequence);
        let run = self.runs.get_mut(&key).expect("run exists");
        self.counters.acks += 1;
        run.untrack(seq, &policy);
        let state = run.sequences.get_or_default(seq);
        state.ack_ms = Some(ack.event_ms);
        let latency = state
            .activation
            .as_ref()
            .map(|a| (a.phase, ack.event_ms.saturating_sub(a.event_ms)));
        run.track(seq, &policy);
        if let Some((phase, raw)) = latency {
            self.observe_latency(phase, raw, out);
        }
        self.resolve(&key, seq, FindingKind::AckMissing, ack.event_ms, out);
        self.maybe_resume(&key, ack.event_ms, out);
        self.reindex(&key);
        Outcome::Ack
    }
}
