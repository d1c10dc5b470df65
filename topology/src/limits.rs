//! Every bound the engine enforces, in one place (TigerBeetle style).
//!
//! Each limit names what it costs when raised and what is cut when it binds. Whatever a limit
//! cuts is counted in [`crate::Counters::limit_cut`] under the limit's name, so an operator sees
//! it in `ackwatch_limit_cut_total{limit=...}` and in the audit report's totals.

/// Default of the policy's `max_record_bytes`: the largest record value the decoder parses.
/// Over it a record is classified by its envelope type alone (tracked types: `too_large`
/// dead letters; other types: untracked). Real ControlBus records are about 1 KiB.
pub const RECORD_VALUE_BYTES_DEFAULT: usize = 128 * 1024;

/// Largest `max_record_bytes` a policy may set. Cost: one value of this size is parsed in
/// memory per task at a time, and a tracked record of this size may be dead-lettered whole.
pub const RECORD_VALUE_BYTES_MAX: usize = 1024 * 1024;

/// Smallest `max_record_bytes` a policy may set: a tracked record with ids and etag at their
/// limits must fit.
pub const RECORD_VALUE_BYTES_MIN: usize = 4096;

/// Longest `world_id` / `run_id` accepted; longer ones are dead-lettered as `field_too_long`.
/// Cost: every run key in memory, in the store and in every output carries these strings.
pub const ID_BYTES_MAX: usize = 256;

/// Longest `etag` kept for conflict detection; longer ones are dead-lettered as `field_too_long`.
pub const ETAG_BYTES_MAX: usize = 512;

/// Distinct sequences one run may track (activations, missing ones awaiting their gap
/// timeout, orphan acks). A record for a new sequence beyond it is cut (counted as
/// `run_sequences`) and the run is marked truncated. Real apply runs have a few dozen.
/// Cost: about 100 bytes per sequence in memory and in the run's stored value.
pub const RUN_SEQUENCES_MAX: usize = 4096;

/// Runs one task knows at once, in memory or evicted to the store (each held until
/// `run_retention_ms` after its last event). A record that would start a new run beyond it is
/// cut (counted as `task_runs`, alerted by `AckwatchLimitCut`): the task no longer sees new
/// runs until retention drops old ones. Counted the same live and in a replay, so the cut is
/// reproducible. Cost: a settled run evicted to the store keeps about 100 bytes in memory (its
/// retention index entry); an unsettled one stays resident, about 1.7 KiB plus its sequences.
pub const TASK_RUNS_MAX: usize = 2_000_000;

/// Sequences all runs of one task hold at once (in memory or evicted; counted the same live
/// and in a replay). A record for a new sequence beyond it is cut (counted as
/// `task_sequences`, alerted by `AckwatchLimitCut`) and its run marked truncated, until
/// retention drops old runs. With `TASK_RUNS_MAX` it bounds a task's memory whatever the input:
/// about 100 bytes per sequence of an unsettled run, so at most about 400 MiB per task even if
/// no run ever settles.
pub const TASK_SEQUENCES_MAX: usize = 4_000_000;

/// Widest sequence jump turned into missing sequences at once. A jump from 2 to 2^63 would
/// otherwise ask for 2^63 entries; only the `GAP_SPAN_MAX` sequences just below the new one
/// are tracked, the rest counted as `gap_span`.
pub const GAP_SPAN_MAX: u64 = 1024;

/// Sequences listed in one gap event; a larger group is split into several events.
/// Cost: the size of one output record (about 8 bytes per sequence).
pub const EVENT_SEQUENCES_MAX: usize = 256;

/// Distinct world ids a task shares between its run keys (runs of a world share one string).
/// When full it is cleared: sharing is only a memory saving, never needed for correctness.
/// Cost: about 60 bytes per world.
pub const WORLDS_INTERNED_MAX: usize = 100_000;

/// Tombstones of runs dropped by retention handed to the store in one commit. When stream time
/// jumps (a quiet partition wakes up, a backlog), retention can drop a whole store's runs at
/// once; the rest wait for the next commits (counted in `Task::deferred_tombstones`, exported
/// as `ackwatch_retention_tombstones_deferred`). A dropped run is gone for the engine at once;
/// only its deletion from the store and changelog waits. Cost: one commit's `WriteBatch` and
/// changelog records (about 40 bytes a tombstone).
pub const RETENTION_TOMBSTONES_PER_COMMIT_MAX: usize = 10_000;

/// Entries one run's timeline (`ackwatch audit --world W --run R`) keeps; later ones are
/// counted and the timeline says how many were cut. A run has at most `RUN_SEQUENCES_MAX`
/// sequences, each a few entries (record, deadline set and gone, finding, resolution), but
/// duplicates are unbounded. Cost: about 200 bytes an entry, so at most about 20 MiB.
pub const TIMELINE_ENTRIES_MAX: usize = 100_000;

/// Invalid records the audit report lists one by one (the first by topic, partition and
/// offset); the rest are counted (`invalid_records_unlisted`; `totals.invalid` counts all).
/// Cost: one row each, with a preview of at most `INVALID_PREVIEW_BYTES_MAX`.
pub const INVALID_RECORDS_LISTED_MAX: usize = 1_000;

/// Bytes of an invalid record's value shown in its row's preview (cut on a character boundary).
pub const INVALID_PREVIEW_BYTES_MAX: usize = 160;

const _: () = assert!(TIMELINE_ENTRIES_MAX >= 8 * RUN_SEQUENCES_MAX);
const _: () = assert!(INVALID_RECORDS_LISTED_MAX * INVALID_PREVIEW_BYTES_MAX <= 1 << 20);
const _: () = assert!(GAP_SPAN_MAX as usize <= RUN_SEQUENCES_MAX);
const _: () = assert!(RUN_SEQUENCES_MAX <= TASK_SEQUENCES_MAX);
const _: () = assert!(EVENT_SEQUENCES_MAX <= RUN_SEQUENCES_MAX);
const _: () = assert!(ID_BYTES_MAX * 2 + ETAG_BYTES_MAX < RECORD_VALUE_BYTES_MIN);
const _: () = assert!(RECORD_VALUE_BYTES_MIN <= RECORD_VALUE_BYTES_DEFAULT);
const _: () = assert!(RECORD_VALUE_BYTES_DEFAULT <= RECORD_VALUE_BYTES_MAX);
