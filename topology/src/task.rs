//! A stream task: partition p of both input topics, its runs, stream time and timers (SPEC §4).
//!
//! `process` applies one record; `punctuate` advances stream time without a record (the live
//! runtime's wall clock minus `lateness_ms`); `pending` lists what a bounded input ends with.
//! Before a record with event time e is applied, every deadline earlier than e fires, so an
//! ACK exactly at its deadline is on time and `detected_at` is always the deadline itself.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rustc_hash::FxBuildHasher;

type RunMap = hashbrown::HashMap<RunKey, RunState, FxBuildHasher>;
/// Evicted runs by a 64-bit hash of their key: how many evicted runs have that hash.
type EvictedMap = hashbrown::HashMap<u64, u32, FxBuildHasher>;

use serde::{Deserialize, Serialize};

use crate::decode::{decode, Ack, Activation, Decoded, Phase, RawRecord};
use crate::limits::{
    EVENT_SEQUENCES_MAX, GAP_SPAN_MAX, RETENTION_TOMBSTONES_PER_COMMIT_MAX, RUN_SEQUENCES_MAX,
    WORLDS_INTERNED_MAX,
};
use crate::output::{
    detected_key, resolved_key, signal_key, Action, GapDetected, GapResolved, Outcome, Output,
    Signal,
};
use crate::policy::Policy;
use crate::run::{
    ActivationSeen, EpisodeState, FindingKind, FindingState, RunState, SeqState, Timer, TimerKind,
};
use crate::time::Millis;
use crate::{RunKey, RunRef};

/// Task-level state that must survive a restart along with the runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskMeta {
    /// Largest event time processed (or punctuated to).
    pub stream_time: Option<Millis>,
    /// Record time of the first record the task ever read (leading-gap exemption).
    pub first_record_ms: Option<Millis>,
}

/// Counts of what the task saw and did, for metrics and report totals. Not persisted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub records: u64,
    pub tracked: u64,
    pub untracked: u64,
    pub acks: u64,
    pub duplicates: u64,
    pub invalid: u64,
    pub invalid_by_reason: BTreeMap<&'static str, u64>,
    pub findings_raised: [u64; 4],
    pub findings_resolved: [u64; 4],
    pub signals: [u64; 3],
    pub escalations: u64,
    pub clock_skew: u64,
    pub runs_dropped: u64,
    pub limit_cut: BTreeMap<&'static str, u64>,
}

impl Counters {
    pub fn merge(&mut self, other: &Counters) {
        self.records += other.records;
        self.tracked += other.tracked;
        self.untracked += other.untracked;
        self.acks += other.acks;
        self.duplicates += other.duplicates;
        self.invalid += other.invalid;
        for (k, v) in &other.invalid_by_reason {
            *self.invalid_by_reason.entry(k).or_default() += v;
        }
        for i in 0..4 {
            self.findings_raised[i] += other.findings_raised[i];
            self.findings_resolved[i] += other.findings_resolved[i];
        }
        for i in 0..3 {
            self.signals[i] += other.signals[i];
        }
        self.escalations += other.escalations;
        self.clock_skew += other.clock_skew;
        self.runs_dropped += other.runs_dropped;
        for (k, v) in &other.limit_cut {
            *self.limit_cut.entry(k).or_default() += v;
        }
    }

    fn cut(&mut self, limit: &'static str, n: u64) {
        *self.limit_cut.entry(limit).or_default() += n;
    }
}

/// A deadline that had not passed when a bounded input ended.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pending {
    pub kind: FindingKind,
    pub run: RunKey,
    pub sequence: u64,
    pub due: Millis,
}

/// One stream task's engine. Owns no thread, socket, file or clock.
#[derive(Debug)]
pub struct Task {
    policy: Policy,
    meta: TaskMeta,
    /// Runs held in memory.
    runs: RunMap,
    /// Runs with nothing pending whose state lives only in the store, by key hash (8 bytes a
    /// run instead of a key); their retention deadline is in `due`. A record of one of them asks
    /// the caller to load it (`NeedsRun`).
    evicted: EvictedMap,
    evicted_count: usize,
    /// Keys whose hash matched an evicted run but that the store does not have (a collision).
    absent: hashbrown::HashSet<RunKey, FxBuildHasher>,
    /// One shared string per world id, for new run keys (bounded by `WORLDS_INTERNED_MAX`).
    worlds: hashbrown::HashSet<Arc<str>, FxBuildHasher>,
    /// Each run under a deadline no later than its next one, so firing finds due runs without a
    /// scan. An entry may be early (a deadline that since went away, a retention moved later):
    /// firing re-checks the run and re-indexes it, so the index moves only when a deadline
    /// gets earlier, not on every record.
    due: BTreeSet<(Millis, RunKey)>,
    /// Runs changed (or dropped) since the last `take_changes`; each run's `dirty` flag keeps
    /// a key from being listed twice.
    dirty: Vec<RunKey>,
    meta_dirty: bool,
    counters: Counters,
}

/// A change for the state store: the run's new state, or `None` when retention dropped it.
pub type Change<'a> = (RunKey, Option<&'a RunState>);

impl Task {
    pub fn new(policy: Policy) -> Self {
        Task {
            policy,
            meta: TaskMeta::default(),
            runs: RunMap::default(),
            evicted: EvictedMap::default(),
            evicted_count: 0,
            absent: Default::default(),
            worlds: Default::default(),
            due: BTreeSet::new(),
            dirty: Vec::new(),
            meta_dirty: false,
            counters: Counters::default(),
        }
    }

    pub fn meta(&self) -> TaskMeta {
        self.meta
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn runs(&self) -> impl Iterator<Item = (&RunKey, &RunState)> {
        self.runs.iter()
    }

    pub fn run(&self, key: &RunKey) -> Option<&RunState> {
        self.runs.get(key)
    }

    /// No deadline of the task passes before this (the earliest entry of the due index; it may
    /// be earlier than the true next deadline, never later). `None`: nothing pending at all.
    pub fn next_due(&self) -> Option<Millis> {
        self.due.first().map(|(due, _)| *due)
    }

    /// Runs known to the task, in memory or evicted.
    pub fn run_count(&self) -> usize {
        self.runs.len() + self.evicted_count
    }

    /// Tombstones of dropped runs not handed to the store yet: those of the next
    /// [`Self::take_changes`], and those it leaves for later ones (see
    /// `RETENTION_TOMBSTONES_PER_COMMIT_MAX`). Every key listed as changed that names no run.
    pub fn deferred_tombstones(&self) -> usize {
        self.dirty
            .iter()
            .filter(|k| !self.runs.contains_key(*k))
            .count()
    }

    /// Runs held in memory.
    pub fn resident_count(&self) -> usize {
        self.runs.len()
    }

    /// Evicts from memory those of `keys` that have nothing pending and no uncommitted change
    /// (call it after the store has the task's changes); returns how many it evicted. Their
    /// state must be in the store: a later record of one of them returns `NeedsRun`.
    pub fn evict_settled(&mut self, keys: impl IntoIterator<Item = RunKey>) -> usize {
        let mut evicted = 0;
        for key in keys {
            let Some(run) = self
                .runs
                .get(&key)
                .filter(|r| !r.dirty && r.timers.is_empty())
            else {
                continue;
            };
            let due = run.retention_due(&self.policy);
            if let Some(old) = run.indexed_due {
                self.due.remove(&(old, key.clone()));
            }
            self.runs.remove(&key);
            self.absent.remove(&key);
            *self.evicted.entry(key_hash(&key)).or_default() += 1;
            self.evicted_count += 1;
            self.due.insert((due, key));
            evicted += 1;
        }
        evicted
    }

    /// Restores task state from the store (before any record is processed).
    pub fn restore_meta(&mut self, meta: TaskMeta) {
        self.meta = meta;
    }

    /// Restores one run from the store; its timers are rebuilt under the current policy.
    pub fn restore_run(&mut self, mut key: RunKey, mut state: RunState) {
        key.world_id = self.intern_world(&key.world_id);
        state.rebuild_timers(&self.policy);
        if self
            .meta
            .stream_time
            .is_some_and(|now| state.retention_due(&self.policy) < now)
        {
            // Dropped by retention before the store learnt it (its tombstone was deferred, see
            // `RETENTION_TOMBSTONES_PER_COMMIT_MAX`): gone, and its tombstone written again.
            self.dirty.push(key);
            return;
        }
        self.absent.remove(&key);
        if !self.runs.contains_key(&key)
            && self
                .due
                .remove(&(state.retention_due(&self.policy), key.clone()))
        {
            // It was evicted: its index entry was its retention deadline (same policy, same facts).
            self.forget_evicted(&key);
        }
        self.runs.insert(key.clone(), state);
        self.reindex(&key);
    }

    /// Lists `key` (and the task meta, when `meta`) among the changes of the next
    /// [`Self::take_changes`], whether or not it changed: its current state, or a tombstone when
    /// the task has no such run. For keys a store may hold a stale value of.
    pub fn rewrite_at_next_commit(&mut self, key: Option<RunKey>, meta: bool) {
        self.meta_dirty |= meta;
        if let Some(key) = key {
            match self.runs.get_mut(&key) {
                Some(run) if run.dirty => {}
                Some(run) => {
                    run.dirty = true;
                    self.dirty.push(key);
                }
                None => self.dirty.push(key),
            }
        }
    }

    /// Hands the changes since the last call to the store: (run, new state or tombstone),
    /// and the task meta when it changed.
    /// At most `RETENTION_TOMBSTONES_PER_COMMIT_MAX` tombstones are handed over per call; the
    /// others stay listed for the next calls.
    pub fn take_changes(&mut self) -> (Vec<Change<'_>>, Option<TaskMeta>) {
        let meta = std::mem::take(&mut self.meta_dirty).then_some(self.meta);
        let mut keys = std::mem::take(&mut self.dirty);
        keys.sort();
        keys.dedup();
        let mut tombstones = 0;
        keys.retain(|key| match self.runs.get_mut(key) {
            Some(run) => {
                run.dirty = false;
                true
            }
            None if tombstones < RETENTION_TOMBSTONES_PER_COMMIT_MAX => {
                tombstones += 1;
                true
            }
            None => {
                self.dirty.push(key.clone());
                false
            }
        });
        let runs = &self.runs;
        (
            keys.into_iter()
                .map(|k| {
                    let state = runs.get(&k);
                    (k, state)
                })
                .collect(),
            meta,
        )
    }

    /// Applies one record.
    pub fn process(&mut self, record: &RawRecord<'_>, out: &mut Vec<Output>) -> Outcome {
        let decoded = decode(record);
        if let Decoded::Tracked(Activation { run, .. }) | Decoded::Ack(Ack { run, .. }) = &decoded {
            if !self.evicted.is_empty()
                && !self.runs.contains_key(run)
                && self.evicted.contains_key(&key_hash(run))
                && !self.absent.contains(run)
            {
                return Outcome::NeedsRun(run.to_key());
            }
        }
        self.counters.records += 1;
        let record_ms = record.timestamp_ms.or(match &decoded {
            Decoded::Tracked(a) => Some(a.event_ms),
            Decoded::Ack(a) => Some(a.event_ms),
            _ => None,
        });
        if self.meta.first_record_ms.is_none() && record_ms.is_some() {
            self.meta.first_record_ms = record_ms;
            self.meta_dirty = true;
        }
        match decoded {
            Decoded::Invalid(invalid) => {
                self.counters.invalid += 1;
                *self
                    .counters
                    .invalid_by_reason
                    .entry(invalid.reason.label())
                    .or_default() += 1;
                Outcome::Invalid(invalid)
            }
            Decoded::Untracked => {
                self.counters.untracked += 1;
                Outcome::Untracked
            }
            Decoded::Tracked(activation) => {
                self.advance(activation.event_ms, out);
                let outcome = self.apply_activation(activation, record_ms.unwrap_or(i64::MIN), out);
                self.fire_due(out);
                outcome
            }
            Decoded::Ack(ack) => {
                self.advance(ack.event_ms, out);
                let outcome = self.apply_ack(ack, record_ms.unwrap_or(i64::MIN), out);
                self.fire_due(out);
                outcome
            }
        }
    }

    /// Advances stream time without a record (punctuation), firing what became due.
    pub fn punctuate(&mut self, time: Millis, out: &mut Vec<Output>) {
        self.advance(time, out);
    }

    fn advance(&mut self, time: Millis, out: &mut Vec<Output>) {
        if self.meta.stream_time.is_none_or(|st| time > st) {
            self.meta.stream_time = Some(time);
            self.meta_dirty = true;
            self.fire_due(out);
        }
    }

    /// Deadlines not yet passed, for the end of a bounded input (`pending_at_end`).
    pub fn pending(&self) -> Vec<Pending> {
        let mut pending: Vec<Pending> = self
            .runs
            .iter()
            .flat_map(|(run, state)| {
                state.pending_timers().filter_map(move |t| match t.kind {
                    TimerKind::Finding(kind) => Some(Pending {
                        kind,
                        run: run.clone(),
                        sequence: t.sequence,
                        due: t.due,
                    }),
                    TimerKind::Rollback => None,
                })
            })
            .collect();
        pending.sort();
        pending
    }

    // ---- applying records -------------------------------------------------------------

    fn apply_activation(
        &mut self,
        act: Activation<'_>,
        record_ms: Millis,
        out: &mut Vec<Output>,
    ) -> Outcome {
        let policy = self.policy;
        let exempt_from = self.meta.first_record_ms.unwrap_or(record_ms);
        let key = self.key_of(&act.run);
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
                run.sequences.get_mut(&seq).expect("seq exists").findings
                    [FindingKind::SequenceConflict.index()] = Some(FindingState {
                    detected_at: act.event_ms,
                    resolved_at: None,
                });
                let phase = act.phase;
                self.raise(
                    &key,
                    FindingKind::SequenceConflict,
                    vec![seq],
                    phase,
                    act.event_ms,
                    out,
                );
                self.reindex(&key);
                return Outcome::Tracked;
            }
            self.counters.duplicates += 1;
            self.reindex(&key);
            return Outcome::Duplicate;
        }

        if !run.sequences.contains_key(&seq) && run.sequences.len() >= RUN_SEQUENCES_MAX {
            run.cut += 1;
            self.counters.cut("run_sequences", 1);
            self.mark_dirty(&key);
            self.reindex(&key);
            return Outcome::Cut;
        }
        self.counters.tracked += 1;

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
            let gap_due = act.event_ms.saturating_add(policy.gap_timeout_ms);
            // Highest first, so a run near its limit keeps the sequences closest to this one.
            let mut kept_from = from;
            let mut len = run.sequences.len();
            for missing in (from..seq).rev() {
                if !run.sequences.contains_key(&missing) {
                    if len + 1 >= RUN_SEQUENCES_MAX {
                        let left = missing - from + 1;
                        run.cut += left;
                        self.counters.cut("run_sequences", left);
                        kept_from = missing + 1;
                        break;
                    }
                    len += 1;
                }
            }
            let mut absent = Vec::new();
            for missing in kept_from..seq {
                let Some(state) = run.sequences.get(&missing) else {
                    absent.push(missing);
                    continue;
                };
                if state.activation.is_none() && state.gap_due.is_none() {
                    run.untrack(missing, &policy);
                    run.sequences.get_or_default(missing).gap_due = Some(gap_due);
                    run.track(missing, &policy);
                }
            }
            run.sequences.insert_absent(&absent, || SeqState {
                gap_due: Some(gap_due),
                ..SeqState::default()
            });
            for &missing in &absent {
                run.track(missing, &policy);
            }
        }
        run.max_sequence = Some(run.max_sequence.map_or(seq, |m| m.max(seq)));

        run.untrack(seq, &policy);
        let state = run.sequences.get_or_default(seq);
        state.activation = Some(ActivationSeen {
            event_ms: act.event_ms,
            phase: act.phase,
            etag: act.etag.map(|e| e.into_owned()),
        });
        let latency = state
            .ack_ms
            .map(|ack_ms| ack_ms.saturating_sub(act.event_ms));
        run.track(seq, &policy);
        if let Some(raw) = latency {
            self.observe_latency(act.phase, raw, out);
        }
        for kind in [FindingKind::ActivationGap, FindingKind::OrphanAck] {
            self.resolve(&key, seq, kind, act.event_ms, out);
        }
        self.mark_dirty(&key);
        self.reindex(&key);
        Outcome::Tracked
    }

    fn apply_ack(&mut self, ack: Ack<'_>, record_ms: Millis, out: &mut Vec<Output>) -> Outcome {
        let policy = self.policy;
        let key = self.key_of(&ack.run);
        touch_run(&mut self.runs, &key, record_ms, ack.event_ms);
        self.mark_dirty(&key);
        let run = self.runs.get_mut(&key).expect("just touched");
        let seq = ack.sequence;

        if run.sequences.get(&seq).is_some_and(|s| s.ack_ms.is_some()) {
            self.counters.duplicates += 1;
            self.reindex(&key);
            return Outcome::Duplicate;
        }
        if !run.sequences.contains_key(&seq) && run.sequences.len() >= RUN_SEQUENCES_MAX {
            run.cut += 1;
            self.counters.cut("run_sequences", 1);
            self.reindex(&key);
            return Outcome::Cut;
        }
        self.counters.acks += 1;
        run.untrack(seq, &policy);
        let state = run.sequences.get_or_default(seq);
        state.ack_ms = Some(ack.event_ms);
        state.ack_phase = ack.phase;
        let latency = state
            .activation
            .as_ref()
            .map(|a| (a.phase, ack.event_ms.saturating_sub(a.event_ms)));
        run.track(seq, &policy);
        if let Some((phase, raw)) = latency {
            self.observe_latency(phase, raw, out);
        }
        self.resolve(&key, seq, FindingKind::AckMissing, ack.event_ms, out);
        self.reindex(&key);
        Outcome::Ack
    }

    /// The run's key: the stored one when the run exists (no allocation), else a new one
    /// sharing its world's string.
    fn key_of(&mut self, run: &RunRef<'_>) -> RunKey {
        match self.runs.get_key_value(run) {
            Some((key, _)) => key.clone(),
            None => RunKey {
                world_id: self.intern_world(&run.world_id),
                run_id: Arc::from(&*run.run_id),
            },
        }
    }

    fn intern_world(&mut self, world_id: &str) -> Arc<str> {
        if let Some(shared) = self.worlds.get(world_id) {
            return shared.clone();
        }
        if self.worlds.len() >= WORLDS_INTERNED_MAX {
            self.worlds.clear();
        }
        let shared: Arc<str> = Arc::from(world_id);
        self.worlds.insert(shared.clone());
        shared
    }

    fn observe_latency(&mut self, phase: Option<Phase>, raw_ms: Millis, out: &mut Vec<Output>) {
        let clock_skew = raw_ms < 0;
        self.counters.clock_skew += u64::from(clock_skew);
        out.push(Output::Latency {
            phase,
            ms: raw_ms.max(0) as u64,
            clock_skew,
        });
    }

    // ---- findings and signals ----------------------------------------------------------

    /// Resolves the open finding of `kind` on `seq`, if there is one, and resumes the run when
    /// it was the last open finding of a paused run.
    fn resolve(
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
        let phase = state.phase();
        let Some(finding) = state.findings[kind.index()]
            .as_mut()
            .filter(|f| f.is_open())
        else {
            return;
        };
        finding.resolved_at = Some(at);
        let detected_at = finding.detected_at;
        self.counters.findings_resolved[kind.index()] += 1;
        out.push(Output::Resolved(GapResolved {
            world_id: key.world_id.to_string(),
            run_id: key.run_id.to_string(),
            kind,
            sequences: vec![seq],
            phase,
            detected_at,
            resolved_at: at,
            idempotency_key: resolved_key(key, kind, seq, detected_at),
        }));
        if matches!(run.episode_state, EpisodeState::Paused { .. }) && run.open_findings() == 0 {
            let policy = self.policy;
            run.set_episode(EpisodeState::Idle, &policy);
            self.signal(key, Action::Resume, at, out);
        }
    }

    /// Emits a detected event for findings just recorded, and pauses the run if it is idle.
    fn raise(
        &mut self,
        key: &RunKey,
        kind: FindingKind,
        sequences: Vec<u64>,
        phase: Option<Phase>,
        detected_at: Millis,
        out: &mut Vec<Output>,
    ) {
        self.counters.findings_raised[kind.index()] += sequences.len() as u64;
        for chunk in sequences.chunks(EVENT_SEQUENCES_MAX) {
            out.push(Output::Detected(GapDetected {
                world_id: key.world_id.to_string(),
                run_id: key.run_id.to_string(),
                kind,
                sequences: chunk.to_vec(),
                phase,
                detected_at,
                idempotency_key: detected_key(key, kind, chunk[0], detected_at),
            }));
        }
        let run = self.runs.get_mut(key).expect("run exists");
        if kind.pauses() && run.episode_state == EpisodeState::Idle {
            run.episode += 1;
            let policy = self.policy;
            run.set_episode(
                EpisodeState::Paused {
                    at: detected_at,
                    escalated: false,
                },
                &policy,
            );
            self.signal(key, Action::Pause, detected_at, out);
        }
    }

    fn signal(&mut self, key: &RunKey, action: Action, at: Millis, out: &mut Vec<Output>) {
        let episode = self.runs[key].episode;
        self.counters.signals[action as usize] += 1;
        out.push(Output::Signal(Signal {
            world_id: key.world_id.to_string(),
            run_id: key.run_id.to_string(),
            action,
            episode,
            at,
            idempotency_key: signal_key(key, action, episode),
        }));
    }

    // ---- timers --------------------------------------------------------------------------

    fn mark_dirty(&mut self, key: &RunKey) {
        if let Some(run) = self.runs.get_mut(key) {
            if !run.dirty {
                run.dirty = true;
                self.dirty.push(key.clone());
            }
        }
    }

    /// Makes sure the index holds the run no later than its next deadline (see `due`).
    fn reindex(&mut self, key: &RunKey) {
        let Some(run) = self.runs.get_mut(key) else {
            return;
        };
        let next = run.next_due(&self.policy);
        match run.indexed_due {
            Some(indexed) if indexed <= next => {}
            old => {
                run.indexed_due = Some(next);
                if let Some(old) = old {
                    self.due.remove(&(old, key.clone()));
                }
                self.due.insert((next, key.clone()));
            }
        }
    }

    /// Fires every deadline earlier than stream time, in deadline order across all runs (ties:
    /// by run key), so the order of outputs depends only on the records, not on the history of
    /// the index.
    fn fire_due(&mut self, out: &mut Vec<Output>) {
        let Some(now) = self.meta.stream_time else {
            return;
        };
        while let Some(&(indexed, _)) = self.due.first() {
            if indexed >= now {
                break;
            }
            let (_, key) = self.due.pop_first().expect("checked non-empty");
            let Some(run) = self.runs.get_mut(&key) else {
                // Only evicted runs are indexed without being in memory.
                self.drop_evicted(key, out);
                continue;
            };
            run.indexed_due = None;
            let due = run.next_due(&self.policy);
            if due > indexed {
                // An early entry: index the run at its real next deadline instead.
                self.reindex(&key);
                continue;
            }
            self.fire_run_at(&key, due, out);
            self.reindex(&key);
        }
    }

    /// Fires the run's timers due at `due` (one finding event per kind), or drops the run when
    /// `due` is its retention deadline.
    fn fire_run_at(&mut self, key: &RunKey, due: Millis, out: &mut Vec<Output>) {
        let run = self.runs.get_mut(key).expect("indexed run exists");
        if run.timers.first().is_none_or(|t| t.due != due) {
            debug_assert!(
                run.timers.is_empty(),
                "retention is never before a pending deadline"
            );
            let run = self.runs.remove(key).expect("run exists");
            if !run.dirty {
                self.dirty.push(key.clone());
            }
            self.counters.runs_dropped += 1;
            out.push(Output::RunDropped {
                run: key.clone(),
                summary: Some(run.summary()),
            });
            return;
        }
        self.mark_dirty(key);
        loop {
            let run = self.runs.get_mut(key).expect("run exists");
            let Some(&first) = run.timers.first().filter(|t| t.due == due) else {
                break;
            };
            match first.kind {
                TimerKind::Finding(kind) => {
                    let group: Vec<Timer> = run
                        .timers
                        .iter()
                        .take_while(|t| t.due == due && t.kind == first.kind)
                        .copied()
                        .collect();
                    let policy = self.policy;
                    let mut phase = None;
                    for t in &group {
                        run.untrack(t.sequence, &policy);
                        let state = run
                            .sequences
                            .get_mut(&t.sequence)
                            .expect("timer's sequence exists");
                        state.findings[kind.index()] = Some(FindingState {
                            detected_at: due,
                            resolved_at: None,
                        });
                        phase = phase.or(state.phase());
                        run.track(t.sequence, &policy);
                    }
                    let sequences = group.iter().map(|t| t.sequence).collect();
                    self.raise(key, kind, sequences, phase, due, out);
                }
                TimerKind::Rollback => self.fire_rollback(key, due, out),
            }
        }
    }

    /// The caller's answer to `NeedsRun` when the store has no such run: the key only shared
    /// a hash with an evicted run. Records of it are new from now on.
    pub fn run_not_stored(&mut self, key: RunKey) {
        self.absent.insert(key);
    }

    fn forget_evicted(&mut self, key: &RunKey) {
        let hash = key_hash(key);
        let count = self
            .evicted
            .get_mut(&hash)
            .expect("an evicted run is counted under its hash");
        *count -= 1;
        if *count == 0 {
            self.evicted.remove(&hash);
        }
        self.evicted_count -= 1;
    }

    /// An evicted run has only its retention deadline (its index entry, exact since eviction):
    /// drop it then, a tombstone for the store.
    fn drop_evicted(&mut self, key: RunKey, out: &mut Vec<Output>) {
        self.forget_evicted(&key);
        self.dirty.push(key.clone());
        self.counters.runs_dropped += 1;
        out.push(Output::RunDropped {
            run: key,
            summary: None,
        });
    }

    fn fire_rollback(&mut self, key: &RunKey, due: Millis, out: &mut Vec<Output>) {
        let policy = self.policy;
        let run = self.runs.get_mut(key).expect("run exists");
        let EpisodeState::Paused { at, .. } = run.episode_state else {
            unreachable!("a rollback timer exists only while paused")
        };
        if policy.auto_rollback {
            run.set_episode(EpisodeState::RolledBack { at: due }, &policy);
            self.signal(key, Action::Rollback, due, out);
        } else {
            run.set_episode(
                EpisodeState::Paused {
                    at,
                    escalated: true,
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

/// Gets or creates the run of a record, counting the record towards retention.
fn touch_run<'a>(
    runs: &'a mut RunMap,
    key: &RunKey,
    record_ms: Millis,
    event_ms: Millis,
) -> &'a mut RunState {
    let run = runs
        .entry(key.clone())
        .or_insert_with(|| RunState::new(record_ms));
    run.last_event_ms = run.last_event_ms.max(event_ms);
    run
}

/// The hash evicted runs are remembered by. Equal for a `RunKey` and a `RunRef` of the same run.
fn key_hash<K: std::hash::Hash + ?Sized>(key: &K) -> u64 {
    use std::hash::BuildHasher;
    FxBuildHasher.hash_one(key)
}
