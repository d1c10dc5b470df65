//! A stream task: partition p of both input topics, its runs, stream time and timers (docs/semantics.md §4).
//!
//! `process` applies one record; `punctuate` advances stream time without a record (the live
//! runtime's wall clock minus `lateness_ms`); `pending` lists what a bounded input ends with.
//! Before a record with event time e is applied, every deadline earlier than e fires, so an
//! ACK exactly at its deadline is on time and `detected_at` is always the deadline itself.
//!
//! - this file: the task's state, its changes for the store, eviction and restore, and the
//!   entry points (`process`, `punctuate`);
//! - `apply.rs`: what a tracked activation or an ACK changes in its run;
//! - `episode.rs`: findings raised and resolved, blocked ACKs, pauses, rollbacks, resumes;
//! - `timers.rs`: the due index and firing deadlines in order;
//! - `cache.rs`: settled runs kept in memory after their commit, up to a byte budget.

mod apply;
mod cache;
mod episode;
mod timers;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rustc_hash::FxBuildHasher;

type RunMap = hashbrown::HashMap<RunKey, RunState, FxBuildHasher>;
/// Evicted runs by a 64-bit hash of their key: how many evicted runs have that hash.
/// Evicted runs by key hash, with the number of sequences each holds (at most one evicted run
/// per hash: a run whose hash an evicted one already has stays in memory).
type EvictedMap = hashbrown::HashMap<u64, u32, FxBuildHasher>;

use serde::{Deserialize, Serialize};

use crate::decode::{decode_with, Ack, Activation, Decoded, Phase, RawRecord};
use crate::limits::{RETENTION_TOMBSTONES_PER_COMMIT_MAX, WORLDS_INTERNED_MAX};
use crate::output::{Outcome, Output};
use crate::policy::Policy;
use crate::run::{FindingKind, RunState, TimerKind};
use crate::side::PerSide;
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
    /// Records whose event time was clamped (a clock ahead, semantics §1), by input side.
    pub clamped: PerSide<u64>,
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
        self.clamped.activation += other.clamped.activation;
        self.clamped.ack += other.clamped.ack;
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
    /// Runs the task may know at once (`TASK_RUNS_MAX` unless lowered by [`Self::limit_runs`]).
    runs_max: usize,
    /// Sequences held by every run the task knows, in memory or evicted.
    sequences_known: u64,
    /// `TASK_SEQUENCES_MAX` unless lowered by [`Self::limit_runs`].
    sequences_max: u64,
    /// `take_changes` calls so far: the number of the latest batch.
    batches_taken: u64,
    /// Settled runs resident after their commit ([`Self::evict_settled_beyond`]).
    cache: cache::SettledCache,
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
            runs_max: crate::limits::TASK_RUNS_MAX,
            sequences_known: 0,
            batches_taken: 0,
            cache: Default::default(),
            sequences_max: crate::limits::TASK_SEQUENCES_MAX as u64,
        }
    }

    /// Lowers the caps on runs and on their sequences known at once below `TASK_RUNS_MAX` and
    /// `TASK_SEQUENCES_MAX` (tests reach them with a few runs instead of millions). Never
    /// raises them.
    pub fn limit_runs(mut self, runs_max: usize, sequences_max: usize) -> Self {
        self.runs_max = runs_max.min(crate::limits::TASK_RUNS_MAX);
        self.sequences_max = sequences_max.min(crate::limits::TASK_SEQUENCES_MAX) as u64;
        self
    }

    /// Sequences held by the runs the task knows (in memory or evicted).
    pub fn sequence_count(&self) -> u64 {
        self.sequences_known
    }

    pub fn meta(&self) -> TaskMeta {
        self.meta
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
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

    /// Whether a stored state read outside the engine (a query of an evicted run) is still a
    /// run of the task: retention has not dropped it (its tombstone may not be written yet).
    pub fn retains(&self, run: &RunState) -> bool {
        self.meta
            .stream_time
            .is_none_or(|now| run.retention_due(&self.policy) >= now)
    }

    /// Runs (and tombstones) the next [`Self::take_changes`] hands over.
    pub fn changed_count(&self) -> usize {
        self.dirty.len()
    }

    /// Runs held in memory.
    pub fn resident_count(&self) -> usize {
        self.runs.len()
    }

    /// Evicts from memory those of `keys` that are settled ([`RunState::is_settled`]) and have
    /// no uncommitted change (call it after the store has the task's changes); returns how many
    /// it evicted. Their state must be in the store: a later record of one of them returns
    /// `NeedsRun`.
    pub fn evict_settled(&mut self, keys: impl IntoIterator<Item = RunKey>) -> usize {
        let mut evicted = 0;
        for key in keys {
            let hash = key_hash(&key);
            let Some(run) = self
                .runs
                .get(&key)
                .filter(|r| !r.dirty && r.is_settled() && !self.evicted.contains_key(&hash))
            else {
                continue;
            };
            let sequences =
                u32::try_from(run.sequences.len()).expect("bounded by RUN_SEQUENCES_MAX");
            let due = run.retention_due(&self.policy);
            if let Some(old) = run.indexed_due {
                self.due.remove(&(old, key.clone()));
            }
            self.runs.remove(&key);
            self.absent.remove(&key);
            self.evicted.insert(hash, sequences);
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
            // It was evicted: its index entry was its retention deadline (same policy, same
            // facts). Its sequences were counted all along.
            self.forget_evicted(&key);
        } else if !self.runs.contains_key(&key) {
            self.sequences_known += state.sequences.len() as u64;
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
        self.batches_taken += 1;
        let batch = self.batches_taken;
        keys.sort();
        keys.dedup();
        let mut tombstones = 0;
        keys.retain(|key| match self.runs.get_mut(key) {
            Some(run) => {
                run.dirty = false;
                run.taken_in = batch;
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

    /// Applies one record of a bounded input (no wall clock).
    pub fn process(&mut self, record: &RawRecord<'_>, out: &mut Vec<Output>) -> Outcome {
        self.process_at(record, None, out)
    }

    /// Applies one record; `wall_ms` is the wall clock when the live runtime processes it
    /// (event times are clamped to it + `max_clock_lead_ms` as well), `None` for a replay.
    pub fn process_at(
        &mut self,
        record: &RawRecord<'_>,
        wall_ms: Option<Millis>,
        out: &mut Vec<Output>,
    ) -> Outcome {
        let decoded = decode_with(record, self.policy.max_record_bytes);
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
            Decoded::Tracked(mut activation) => {
                activation.event_ms = self.clamp(record, activation.event_ms, wall_ms);
                self.advance(activation.event_ms, out);
                let outcome = self.apply_activation(activation, record_ms.unwrap_or(i64::MIN), out);
                self.fire_due(out);
                outcome
            }
            Decoded::Ack(mut ack) => {
                ack.event_ms = self.clamp(record, ack.event_ms, wall_ms);
                self.advance(ack.event_ms, out);
                let outcome = self.apply_ack(ack, record_ms.unwrap_or(i64::MIN), out);
                self.fire_due(out);
                outcome
            }
        }
    }

    /// semantics §1 "Clocks ahead": an event time more than `max_clock_lead_ms` after the record's
    /// timestamp (live: or after the wall clock) is clamped to that, and counted.
    fn clamp(
        &mut self,
        record: &RawRecord<'_>,
        event_ms: Millis,
        wall_ms: Option<Millis>,
    ) -> Millis {
        let lead = self.policy.max_clock_lead_ms;
        let limit = [record.timestamp_ms, wall_ms]
            .into_iter()
            .flatten()
            .map(|t| t.saturating_add(lead))
            .min();
        match limit {
            Some(limit) if event_ms > limit => {
                self.counters.clamped[record.side] += 1;
                limit
            }
            _ => event_ms,
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
                let per_sequence = state.pending_timers().filter_map(move |t| match t.kind {
                    TimerKind::Finding(FindingKind::ActivationGap) => None,
                    TimerKind::Finding(kind) => Some(Pending {
                        kind,
                        run: run.clone(),
                        sequence: t.sequence,
                        due: t.due,
                    }),
                    TimerKind::Release | TimerKind::Rollback => None,
                });
                // A pending gap is one timer for its whole range: one entry per sequence.
                let gaps = state
                    .missing
                    .iter()
                    .filter(|m| m.detected_at.is_none())
                    .flat_map(move |m| {
                        (m.from..m.to).map(move |sequence| Pending {
                            kind: FindingKind::ActivationGap,
                            run: run.clone(),
                            sequence,
                            due: m.gap_due,
                        })
                    });
                per_sequence.chain(gaps)
            })
            .collect();
        pending.sort();
        pending
    }

    /// The run's key: the stored one when the run exists (no allocation), else a new one
    /// sharing its world's string.
    pub(super) fn key_of(&mut self, run: &RunRef<'_>) -> RunKey {
        match self.runs.get_key_value(run) {
            Some((key, _)) => key.clone(),
            None => RunKey {
                world_id: self.intern_world(&run.world_id),
                run_id: Arc::from(&*run.run_id),
            },
        }
    }

    pub(super) fn intern_world(&mut self, world_id: &str) -> Arc<str> {
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

    pub(super) fn observe_latency(&mut self, phase: Phase, raw_ms: Millis, out: &mut Vec<Output>) {
        let clock_skew = raw_ms < 0;
        self.counters.clock_skew += u64::from(clock_skew);
        out.push(Output::Latency {
            phase,
            ms: raw_ms.max(0) as u64,
            clock_skew,
        });
    }

    /// The caller's answer to `NeedsRun` when the store has no such run: the key only shared
    /// a hash with an evicted run. Records of it are new from now on.
    pub fn run_not_stored(&mut self, key: RunKey) {
        self.absent.insert(key);
    }

    /// Forgets an evicted run (loaded back or dropped); returns how many sequences it holds.
    pub(super) fn forget_evicted(&mut self, key: &RunKey) -> u64 {
        let sequences = self
            .evicted
            .remove(&key_hash(key))
            .expect("an evicted run is listed under its hash");
        self.evicted_count -= 1;
        u64::from(sequences)
    }

    /// An evicted run has only its retention deadline (its index entry, exact since eviction):
    /// drop it then, a tombstone for the store.
    pub(super) fn drop_evicted(&mut self, key: RunKey, out: &mut Vec<Output>) {
        self.sequences_known -= self.forget_evicted(&key);
        self.dirty.push(key.clone());
        self.counters.runs_dropped += 1;
        out.push(Output::RunDropped {
            run: key,
            summary: None,
        });
    }
}

/// Gets or creates the run of a record, counting the record towards retention.
pub(super) fn touch_run<'a>(
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
pub(super) fn key_hash<K: std::hash::Hash + ?Sized>(key: &K) -> u64 {
    use std::hash::BuildHasher;
    FxBuildHasher.hash_one(key)
}
