//! `ackwatch-topology`: ackwatch's processing, as pure and deterministic logic.
//!
//! Given the records of partition p of the `activation` and `control.activation.ack` topics,
//! this crate decides what docs/semantics.md says: findings, resolutions, ACK latencies and signals.
//! It is the same code for the live processor, the audit and the tests.
//!
//! Invariants (see ARCHITECTURE.md):
//! - no I/O, no threads, no clock: time enters only as record event times and
//!   [`Task::punctuate`];
//! - the same records in the same per-partition order give the same outputs and the same
//!   idempotency keys, whatever the process history (restore included);
//! - every per-run collection is bounded by [`limits`], and what a limit cuts is counted.

pub mod compact;
pub mod decode;
pub mod limits;
pub mod output;
pub mod partition_group;
pub mod partitioning;
pub mod policy;
pub mod replay;
pub mod report;
pub mod run;
pub mod seq_map;
pub mod side;
pub mod stream_task;
pub mod task;
pub mod time;
pub mod timeline;

use std::borrow::Cow;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use decode::{decode, Decoded, Phase, RawRecord};
pub use output::{Action, GapDetected, GapResolved, Outcome, OutcomeLabel, Output, Signal};
pub use policy::Policy;
pub use run::{FindingKind, RunState};
pub use side::{PerSide, Side};
pub use task::{Counters, Pending, Task, TaskMeta};
pub use time::Millis;

/// A run: `(world_id, run_id)`. Shared strings, so the many places that name a run (index,
/// change list, outputs) share one allocation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RunKey {
    pub world_id: Arc<str>,
    pub run_id: Arc<str>,
}

impl RunKey {
    pub fn new(world_id: &str, run_id: &str) -> Self {
        RunKey {
            world_id: world_id.into(),
            run_id: run_id.into(),
        }
    }
}

/// A run named by strings borrowed from a record, for lookups that allocate nothing.
/// Hashes exactly like [`RunKey`] (both hash two `str`s in order).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RunRef<'a> {
    pub world_id: Cow<'a, str>,
    pub run_id: Cow<'a, str>,
}

impl RunRef<'_> {
    pub fn to_key(&self) -> RunKey {
        RunKey::new(&self.world_id, &self.run_id)
    }
}

impl hashbrown::Equivalent<RunKey> for RunRef<'_> {
    fn equivalent(&self, key: &RunKey) -> bool {
        *self.world_id == *key.world_id && *self.run_id == *key.run_id
    }
}

impl std::fmt::Display for RunKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.world_id, self.run_id)
    }
}
