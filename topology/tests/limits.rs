//! Misbehaving producers cost bounded state, and what the limits cut is counted.

use ackwatch_topology::limits::{GAP_SPAN_MAX, RUN_SEQUENCES_MAX};
use ackwatch_topology::{Outcome, Output, Policy, RawRecord, RunKey, Side, Task};

fn activation(task: &mut Task, seq: u64, t: i64, out: &mut Vec<Output>) -> Outcome {
    let ts = ackwatch_topology::time::format_rfc3339_ms(t);
    let value = format!(
        r#"{{"type":"ActivationUpdated","world_id":"w","run_id":"r","sequence":{seq},"requires_ack":true,"ts":"{ts}"}}"#
    );
    process(task, Side::Activation, &value, t, out)
}

fn ack(task: &mut Task, seq: u64, t: i64, out: &mut Vec<Output>) -> Outcome {
    ack_of(task, "r", seq, t, out)
}

fn ack_of(task: &mut Task, run: &str, seq: u64, t: i64, out: &mut Vec<Output>) -> Outcome {
    let ts = ackwatch_topology::time::format_rfc3339_ms(t);
    let value = format!(
        r#"{{"type":"ActivationAck","world_id":"w","run_id":"{run}","sequence":{seq},"ack_ts":"{ts}"}}"#
    );
    process(task, Side::Ack, &value, t, out)
}

/// One record of world `w` with record time `t`.
fn process(task: &mut Task, source: Side, value: &str, t: i64, out: &mut Vec<Output>) -> Outcome {
    task.process(
        &RawRecord {
            side: source,
            partition: 0,
            offset: 0,
            timestamp_ms: Some(t),
            key: Some(b"w"),
            value: Some(value.as_bytes()),
        },
        out,
    )
}

const T0: i64 = 1_772_442_000_000;

#[test]
fn a_sequence_of_2_pow_63_tracks_at_most_gap_span_max_missing_sequences() {
    let mut task = Task::new(Policy::default());
    let mut out = vec![];
    activation(&mut task, 1, T0, &mut out);
    activation(&mut task, 1 << 63, T0 + 10, &mut out);
    let run = task.run(&RunKey::new("w", "r")).unwrap();
    // The two activations are entries; the missing sequences below the jump are one range.
    assert_eq!(run.sequences.len(), 2);
    assert_eq!(run.missing.len(), 1);
    assert_eq!(run.missing[0].len(), GAP_SPAN_MAX);
    assert_eq!(run.missing[0].to, 1 << 63);
    let cut = (1u64 << 63) - 2 - GAP_SPAN_MAX;
    assert_eq!(task.counters().limit_cut.get("gap_span"), Some(&cut));
    assert_eq!(run.cut, cut);
    // The tracked part still raises its findings: one event group, split into bounded events.
    activation(&mut task, (1 << 63) + 1, T0 + 10_000, &mut out);
    let detected: usize = out
        .iter()
        .map(|o| match o {
            Output::Detected(d) if d.kind.as_str() == "activation_gap" => d.sequences.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(detected as u64, GAP_SPAN_MAX);
}

#[test]
fn a_run_with_many_more_sequences_than_the_limit_keeps_run_sequences_max() {
    let mut task = Task::new(Policy::default());
    let mut out = vec![];
    let mut cut = 0;
    for seq in 1..=20_000u64 {
        let t = T0 + seq as i64;
        if activation(&mut task, seq, t, &mut out) == Outcome::Cut {
            cut += 1;
        }
        ack(&mut task, seq, t + 1, &mut out);
        out.clear();
    }
    let run = task.run(&RunKey::new("w", "r")).unwrap();
    assert_eq!(run.sequences.len(), RUN_SEQUENCES_MAX);
    assert_eq!(cut, 20_000 - RUN_SEQUENCES_MAX as u64);
    // Cut activations and the ACKs of cut sequences (which would become orphans) are counted.
    assert_eq!(
        task.counters().limit_cut.get("run_sequences"),
        Some(&(2 * cut))
    );
    assert_eq!(run.summary().tracked, RUN_SEQUENCES_MAX as u64);
}

/// When retention drops more runs at once than one commit may delete, the tombstones come
/// over several commits; the runs are gone for the engine at once, and a task restored from a
/// store that still holds some of them (a crash between those commits) drops them again.
#[test]
fn retention_tombstones_are_bounded_per_commit_and_a_restore_drops_what_they_missed() {
    use ackwatch_topology::limits::RETENTION_TOMBSTONES_PER_COMMIT_MAX as MAX;
    let policy = Policy {
        run_retention_ms: 60_000,
        ..Policy::default()
    };
    let runs = MAX * 2 + 123;
    let mut task = Task::new(policy);
    let mut out = vec![];
    for run in 0..runs {
        ack_of(
            &mut task,
            &format!("r{run}"),
            1,
            T0 + run as i64 / 100,
            &mut out,
        );
    }
    let (changes, _) = task.take_changes();
    assert_eq!(changes.len(), runs);
    let stored: Vec<(RunKey, ackwatch_topology::RunState)> = changes
        .iter()
        .map(|(k, v)| (k.clone(), v.unwrap().clone()))
        .collect();
    drop(changes);

    // An hour later every run is past retention (their orphan findings were raised long
    // before; nothing is pending).
    ack_of(&mut task, "last", 1, T0 + 3_600_000, &mut out);
    assert_eq!(task.run_count(), 1, "dropped for the engine at once");
    assert_eq!(task.deferred_tombstones(), runs);
    let mut meta = None;
    let mut tombstones_per_commit = vec![];
    for _ in 0..3 {
        let (changes, m) = task.take_changes();
        meta = meta.or(m);
        tombstones_per_commit.push(changes.iter().filter(|(_, v)| v.is_none()).count());
    }
    assert_eq!(tombstones_per_commit, [MAX, MAX, 123]);
    assert_eq!(task.deferred_tombstones(), 0);

    // A crash after the first of those commits: the store still holds the runs the later ones
    // would have deleted. Restored, they are dropped and their tombstones listed again.
    let mut restored = Task::new(policy);
    restored.restore_meta(meta.expect("stream time moved"));
    for (key, state) in stored.iter().skip(MAX) {
        restored.restore_run(key.clone(), state.clone());
    }
    assert_eq!(restored.run_count(), 0);
    assert_eq!(restored.deferred_tombstones(), runs - MAX);
}

#[test]
fn runs_beyond_the_task_cap_are_cut_and_counted_evicted_ones_included() {
    let policy = Policy {
        run_retention_ms: 60_000,
        ..Policy::default()
    };
    let mut task = Task::new(policy).limit_runs(3, usize::MAX);
    let mut out = vec![];
    // Three runs, each activation ACKed at once: settled, so evicted after the "commit".
    for run in ["r0", "r1", "r2"] {
        let ts = ackwatch_topology::time::format_rfc3339_ms(T0);
        let value = format!(
            r#"{{"type":"ActivationUpdated","world_id":"w","run_id":"{run}","sequence":1,"requires_ack":true,"ts":"{ts}"}}"#
        );
        assert_eq!(
            process(&mut task, Side::Activation, &value, T0, &mut out),
            Outcome::Tracked
        );
        assert_eq!(ack_of(&mut task, run, 1, T0 + 10, &mut out), Outcome::Ack);
    }
    let keys: Vec<RunKey> = task.take_changes().0.into_iter().map(|(k, _)| k).collect();
    assert_eq!(task.evict_settled(keys), 3, "all three are settled");
    assert_eq!((task.resident_count(), task.run_count()), (0, 3));

    // A fourth run is cut (the evicted ones count); a record of a known run is not.
    assert_eq!(ack_of(&mut task, "r3", 1, T0 + 20, &mut out), Outcome::Cut);
    assert_eq!(task.counters().limit_cut.get("task_runs"), Some(&1));
    assert!(
        task.run(&RunKey::new("w", "r3")).is_none(),
        "nothing kept of it"
    );
    assert!(matches!(
        ack_of(&mut task, "r1", 1, T0 + 30, &mut out),
        Outcome::NeedsRun(_)
    ));

    // Once retention drops the three, new runs are admitted again.
    assert_eq!(
        ack_of(&mut task, "r4", 1, T0 + 3_600_000, &mut out),
        Outcome::Ack
    );
    assert_eq!(task.run_count(), 1);
    assert_eq!(task.counters().limit_cut.get("task_runs"), Some(&1));
}

#[test]
fn sequences_beyond_the_task_cap_are_cut_and_counted_and_retention_frees_them() {
    let policy = Policy {
        run_retention_ms: 60_000,
        ..Policy::default()
    };
    let mut task = Task::new(policy).limit_runs(usize::MAX, 5);
    let mut out = vec![];
    // Five sequences over two runs fill the task; the sixth is cut, in either run.
    for seq in 1..=3 {
        assert_eq!(ack_of(&mut task, "a", seq, T0, &mut out), Outcome::Ack);
    }
    for seq in 1..=2 {
        assert_eq!(ack_of(&mut task, "b", seq, T0, &mut out), Outcome::Ack);
    }
    assert_eq!(task.sequence_count(), 5);
    assert_eq!(ack_of(&mut task, "a", 4, T0 + 1, &mut out), Outcome::Cut);
    assert_eq!(ack_of(&mut task, "c", 1, T0 + 1, &mut out), Outcome::Cut);
    assert_eq!(task.counters().limit_cut.get("task_sequences"), Some(&2));
    assert_eq!(task.run(&RunKey::new("w", "a")).unwrap().cut, 1);
    // A record of a sequence already held is not a new one.
    assert_eq!(
        ack_of(&mut task, "a", 1, T0 + 2, &mut out),
        Outcome::Duplicate
    );
    // Retention drops the runs (and their sequences): room again.
    assert_eq!(
        ack_of(&mut task, "d", 1, T0 + 3_600_000, &mut out),
        Outcome::Ack
    );
    assert_eq!(task.sequence_count(), 1);
}

/// The live eviction pass: settled runs stay in memory after their commit while the cache is
/// within its budget; past it the least recently committed leave first, but not a run that
/// changed since (no store read per record for a run that keeps getting records).
#[test]
fn settled_runs_leave_memory_least_recently_committed_first_past_the_budget() {
    let mut task = Task::new(Policy::default());
    let mut out = vec![];
    let activation = |run: &str, seq: u64, ms: i64| {
        let ts = ackwatch_topology::time::format_rfc3339_ms(ms);
        format!(
            r#"{{"type":"ActivationUpdated","world_id":"w","run_id":"{run}","sequence":{seq},"requires_ack":true,"ts":"{ts}"}}"#
        )
    };
    // One commit: take the batch's settled runs, then the pass with them.
    let commit = |task: &mut Task, budget: usize| {
        let settled: Vec<RunKey> = task
            .take_changes()
            .0
            .into_iter()
            .filter(|(_, state)| state.is_some_and(|s| s.is_settled()))
            .map(|(key, _)| key)
            .collect();
        task.evict_settled_beyond(settled, budget)
    };
    let resident = |task: &Task, run: &str| task.run(&RunKey::new("w", run)).is_some();
    let mut change = |task: &mut Task, run: &str, seq: u64, t: i64| {
        process(task, Side::Activation, &activation(run, seq, t), t, &mut out);
        assert_eq!(ack_of(task, run, seq, t + 10, &mut out), Outcome::Ack);
    };
    let bytes_of = |task: &Task, run: &str| task.run(&RunKey::new("w", run)).unwrap().resident_bytes();
    // Commits 1 and 2 (both runs, then the busy one) join the cache, each run at its bytes then.
    change(&mut task, "busy", 1, T0);
    change(&mut task, "idle", 1, T0);
    assert_eq!(commit(&mut task, usize::MAX), 0);
    let (busy_1, idle_1) = (bytes_of(&task, "busy"), bytes_of(&task, "idle"));
    change(&mut task, "busy", 2, T0 + 1000);
    assert_eq!(commit(&mut task, usize::MAX), 0);
    let busy_2 = bytes_of(&task, "busy");
    assert_eq!(task.cached_settled_bytes(), busy_1 + idle_1 + busy_2);
    // Commit 3, one byte short of room for the last three entries: the oldest two leave. The
    // busy run's first entry is stale (it changed since), so it stays; the idle run leaves.
    change(&mut task, "busy", 3, T0 + 2000);
    let busy_3 = bytes_of(&task, "busy");
    let budget = idle_1 + busy_2 + busy_3 - 1;
    assert_eq!(commit(&mut task, budget), 1);
    assert!(resident(&task, "busy") && !resident(&task, "idle"));
    assert_eq!(task.cached_settled_bytes(), busy_2 + busy_3);
    // A commit with no change evicts nothing while within the budget.
    assert_eq!(commit(&mut task, budget), 0);
    // A budget of 0 evicts every settled run at its commit, an empty commit included.
    assert_eq!(commit(&mut task, 0), 1);
    assert_eq!((task.resident_count(), task.run_count()), (0, 2));
    assert_eq!(task.cached_settled_bytes(), 0);
}
