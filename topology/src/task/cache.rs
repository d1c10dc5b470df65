//! Settled runs kept in memory after their commit, up to a byte budget (Kafka Streams' record
//! cache, `statestore.cache.max.bytes`): a record of a cached run needs no store read and no
//! decode. Past the budget, the least recently committed batches leave memory first.
//!
//! A run joins with the batch of its `take_changes` once the store has written it. A run taken
//! again later belongs to its latest batch only (`RunState::taken_in`), so evicting an old
//! entry never evicts a run that changed since. A run entered several times is counted each
//! time until its old entries leave, so the figure kept is at least what is resident: the
//! cache never holds more than its budget, it may hold less. The same count bounds the entries:
//! each counts at least a `RunState`'s size, so there are at most budget / 256 of them.

use std::collections::VecDeque;

use crate::RunKey;

use super::Task;

#[derive(Debug, Default)]
pub(super) struct SettledCache {
    /// Oldest first: each run's batch (its `take_changes`), key and bytes when it joined.
    entries: VecDeque<(u64, RunKey, usize)>,
    /// Sum of the entries' bytes.
    bytes: usize,
}

impl Task {
    /// The eviction pass after a commit's store write. `written`: the settled runs of the
    /// batch the store just wrote (the last `take_changes`). They join the cache; then, while
    /// the cache holds more than `budget_bytes`, its oldest entries leave memory (those runs
    /// still settled and unchanged since; their state is in the store, and a later record of
    /// one returns `NeedsRun`). A budget of 0 evicts every settled run at its commit. Returns
    /// how many runs it evicted.
    pub fn evict_settled_beyond(&mut self, written: Vec<RunKey>, budget_bytes: usize) -> usize {
        let batch = self.batches_taken;
        for key in written {
            if let Some(run) = self.runs.get(&key) {
                let bytes = run.resident_bytes();
                self.cache.bytes += bytes;
                self.cache.entries.push_back((batch, key, bytes));
            }
        }
        let mut idle = Vec::new();
        while self.cache.bytes > budget_bytes {
            let Some((batch, key, bytes)) = self.cache.entries.pop_front() else {
                break;
            };
            self.cache.bytes -= bytes;
            if self.runs.get(&key).is_some_and(|run| run.taken_in == batch) {
                idle.push(key);
            }
        }
        self.evict_settled(idle)
    }

    /// Bytes of settled runs the cache holds (an upper bound of what is resident).
    pub fn cached_settled_bytes(&self) -> usize {
        self.cache.bytes
    }
}
