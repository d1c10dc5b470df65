//! The due index and firing deadlines in order (docs/semantics.md §4): before a record with
//! event time e is applied, every deadline earlier than e fires, in deadline order across runs.

use crate::output::Output;
use crate::run::TimerKind;
use crate::time::Millis;
use crate::RunKey;

use super::episode::record_findings;
use super::Task;

impl Task {
    pub(super) fn mark_dirty(&mut self, key: &RunKey) {
        if let Some(run) = self.runs.get_mut(key) {
            if !run.dirty {
                run.dirty = true;
                self.dirty.push(key.clone());
            }
        }
    }

    /// Makes sure the index holds the run no later than its next deadline (see `due`).
    pub(super) fn reindex(&mut self, key: &RunKey) {
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
    pub(super) fn fire_due(&mut self, out: &mut Vec<Output>) {
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
    pub(super) fn fire_run_at(&mut self, key: &RunKey, due: Millis, out: &mut Vec<Output>) {
        let run = self.runs.get_mut(key).expect("indexed run exists");
        if run.timers.first().is_none_or(|t| t.due != due) {
            debug_assert!(
                run.timers.is_empty(),
                "retention is never before a pending deadline"
            );
            let run = self.runs.remove(key).expect("run exists");
            self.sequences_known -= run.sequences.len() as u64;
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
                    let group: Vec<u64> = run
                        .timers
                        .iter()
                        .take_while(|t| t.due == due && t.kind == first.kind)
                        .map(|t| t.sequence)
                        .collect();
                    for raised in record_findings(run, kind, &group, due, &self.policy) {
                        self.raise(key, raised, due, out);
                    }
                }
                TimerKind::Release => self.release(key, first.sequence, due, out),
                TimerKind::Rollback => self.fire_rollback(key, due, out),
            }
        }
    }
}
