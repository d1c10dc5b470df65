//! The task store and codec: what is committed is what is loaded, across reopen; values of
//! another format are refused clearly; a store that cannot be trusted is wiped.

use std::path::Path;

use ackwatch_state::checkpoint::{self, Checkpoint};
use ackwatch_state::codec::{self, CodecError, FORMAT_VERSION};
use ackwatch_state::{CommitMarker, Contents, Opened, StoreOptions, TaskStore};

const MARKER: CommitMarker = CommitMarker {
    input_next: PerSide::new(7, 9),
};
use ackwatch_topology::{PerSide, Policy, RawRecord, RunKey, RunState, Side, Task, TaskMeta};
use proptest::prelude::*;

/// A task that saw a few runs: clean, missing ACK, gap, orphan, conflict, paused.
fn busy_task() -> Task {
    let mut task = Task::new(Policy::default());
    let mut out = vec![];
    let t0 = 1_772_442_000_000i64;
    let act = |w: &str, r: &str, seq: u64, etag: &str, t: i64| {
        (
            Side::Activation,
            w.to_string(),
            format!(
                r#"{{"type":"ActivationUpdated","version":1,"world_id":"{w}","run_id":"{r}","sequence":{seq},"requires_ack":true,"phase":"freeze","etag":"{etag}","ts":"{}"}}"#,
                ackwatch_topology::time::format_rfc3339_ms(t)
            ),
            t,
        )
    };
    let ack = |w: &str, r: &str, seq: u64, t: i64| {
        (
            Side::Ack,
            w.to_string(),
            format!(
                r#"{{"type":"ActivationAck","version":1,"world_id":"{w}","run_id":"{r}","sequence":{seq},"ack_ts":"{}"}}"#,
                ackwatch_topology::time::format_rfc3339_ms(t)
            ),
            t,
        )
    };
    let records = vec![
        act("w1", "r1", 1, "a", t0),
        ack("w1", "r1", 1, t0 + 40),
        act("w1", "r1", 2, "b", t0 + 100),
        act("w2", "r:odd%", 1, "a", t0 + 200),
        act("w2", "r:odd%", 3, "c", t0 + 300),
        ack("w2", "r:odd%", 1, t0 + 320),
        ack("w3", "r9", 5, t0 + 400),
        act("w1", "r1", 2, "other", t0 + 500),
        act("w4", "r1", 1, "a", t0 + 10_000),
        ack("w4", "r1", 1, t0 + 10_050),
    ];
    for (source, key, value, t) in &records {
        task.process(
            &RawRecord {
                side: *source,
                partition: 0,
                offset: 0,
                timestamp_ms: Some(*t),
                key: Some(key.as_bytes()),
                value: Some(value.as_bytes()),
            },
            &mut out,
        );
    }
    assert!(
        task.counters().findings_raised.iter().sum::<u64>() > 0,
        "the fixture has findings"
    );
    task
}

fn open(dir: &Path, app: &str) -> (TaskStore, Opened) {
    TaskStore::open(dir, app, 3, &StoreOptions::default()).unwrap()
}

/// Commits all of `task`'s changes to the store of `app` under `dir`, and returns the store.
fn commit_all(task: &mut Task, dir: &Path, app: &str, changelog_end: Option<i64>) -> TaskStore {
    let (changes, meta) = task.take_changes();
    let (store, _) = open(dir, app);
    store
        .commit(
            changes.iter().map(|(k, v)| (k, *v)),
            meta.as_ref(),
            &MARKER,
            changelog_end,
        )
        .unwrap();
    store
}

#[test]
fn committed_state_loads_back_after_reopen_and_tombstones_delete() {
    let dir = tempfile::tempdir().unwrap();
    let mut task = busy_task();
    let (changes, meta) = task.take_changes();
    let expected: Vec<(RunKey, RunState)> = changes
        .iter()
        .map(|(k, v)| (k.clone(), v.unwrap().clone()))
        .collect();
    let meta = meta.expect("meta changed");
    {
        let (store, opened) = open(dir.path(), "app");
        assert_eq!(opened, Opened::Created);
        store
            .commit(
                changes.iter().map(|(k, v)| (k, *v)),
                Some(&meta),
                &MARKER,
                Some(42),
            )
            .unwrap();
    }
    let (store, opened) = open(dir.path(), "app");
    assert_eq!(opened, Opened::Existing);
    assert_eq!(
        store.checkpoint(),
        Some(Checkpoint {
            changelog_offset: 42
        })
    );
    let mut loaded = store.load().unwrap();
    loaded.runs.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(loaded.meta, Some(meta));
    assert_eq!(
        loaded.marker,
        Some(MARKER),
        "the commit marker is stored with the commit"
    );
    assert_eq!(loaded.runs, expected);

    let gone = expected[0].0.clone();
    store
        .commit([(&gone, None)], None, &MARKER, Some(43))
        .unwrap();
    let after = store.load().unwrap();
    assert_eq!(after.runs.len(), expected.len() - 1);
    assert!(after.runs.iter().all(|(k, _)| *k != gone));
    assert_eq!(
        store.checkpoint(),
        Some(Checkpoint {
            changelog_offset: 43
        })
    );
}

#[test]
fn a_restored_task_continues_like_the_original() {
    let dir = tempfile::tempdir().unwrap();
    let mut original = busy_task();
    let contents = commit_all(&mut original, dir.path(), "app", None)
        .load()
        .unwrap();
    let mut restored = Task::new(Policy::default());
    restored.restore_meta(contents.meta.unwrap());
    for (k, v) in contents.runs {
        restored.restore_run(k, v);
    }
    // The same punctuation fires the same deadlines with the same keys.
    let (mut a, mut b) = (vec![], vec![]);
    original.punctuate(1_772_442_100_000, &mut a);
    restored.punctuate(1_772_442_100_000, &mut b);
    assert!(!a.is_empty());
    assert_eq!(a, b);
    assert_eq!(original.pending(), restored.pending());
}

#[test]
fn a_store_of_another_application_is_wiped() {
    let dir = tempfile::tempdir().unwrap();
    drop(commit_all(&mut busy_task(), dir.path(), "app", Some(7)));
    // Another application id uses another directory; move this one under it to simulate a
    // state dir copied between applications.
    std::fs::rename(dir.path().join("app"), dir.path().join("other")).unwrap();
    let (store, opened) = open(dir.path(), "other");
    assert!(
        matches!(&opened, Opened::Wiped(why) if why.contains("belongs to")),
        "{opened:?}"
    );
    assert_eq!(store.load().unwrap(), Default::default());
    assert_eq!(store.checkpoint(), None, "a wiped store has no checkpoint");
}

/// A store in use (another process on the same state dir, or a stream thread that has not closed
/// it yet) is refused, never wiped: its owner's data is intact and opens again once released.
#[test]
fn a_locked_store_is_refused_not_wiped() {
    let dir = tempfile::tempdir().unwrap();
    let mut task = busy_task();
    let owner = commit_all(&mut task, dir.path(), "app", Some(7));
    let held = owner.load().unwrap();
    assert!(!held.runs.is_empty());
    let error = TaskStore::open(dir.path(), "app", 3, &StoreOptions::default())
        .err()
        .expect("a second open of a store in use fails");
    let locked = error
        .downcast_ref::<ackwatch_state::StoreLocked>()
        .unwrap_or_else(|| panic!("not a StoreLocked: {error:#}"));
    assert!(
        error
            .to_string()
            .contains("runtime.state_dir must not be shared"),
        "{error}"
    );
    assert!(locked.dir.ends_with("rocksdb"), "{locked:?}");
    assert_eq!(
        owner.load().unwrap(),
        held,
        "the owner's store is untouched"
    );
    assert_eq!(owner.checkpoint().map(|c| c.changelog_offset), Some(7));
    drop(owner);
    let (reopened, opened) = open(dir.path(), "app");
    assert_eq!(opened, Opened::Existing);
    assert_eq!(reopened.load().unwrap(), held);
}

#[test]
fn a_corrupt_store_is_wiped() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _) = open(dir.path(), "app");
        store
            .commit(
                std::iter::empty(),
                Some(&TaskMeta::default()),
                &MARKER,
                Some(1),
            )
            .unwrap();
    }
    let db = TaskStore::dir_for(dir.path(), "app", 3).join("rocksdb");
    for entry in std::fs::read_dir(&db).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("MANIFEST")
        {
            std::fs::write(&path, b"garbage").unwrap();
        }
    }
    let (store, opened) = open(dir.path(), "app");
    assert!(
        matches!(&opened, Opened::Wiped(why) if why.contains("cannot be opened")),
        "{opened:?}"
    );
    assert_eq!(store.load().unwrap(), Default::default());
}

#[test]
fn changelog_records_are_validated_before_they_are_applied() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path(), "app");
    let key = codec::encode_key(&RunKey::new("w", "r"));
    let good = codec::encode_run(&RunState::new(5));
    assert_eq!(
        store
            .apply_changelog([(&key[..], Some(&good[..]))])
            .unwrap(),
        1
    );
    let mut future = good.clone();
    future[0] = FORMAT_VERSION + 1;
    let err = store
        .apply_changelog([(&key[..], Some(&future[..]))])
        .unwrap_err();
    assert!(err.to_string().contains("format version"), "{err}");
    assert_eq!(
        store.load().unwrap().runs,
        vec![(RunKey::new("w", "r"), RunState::new(5))],
        "a refused batch changes nothing"
    );
}

fn check_decode(bytes: &[u8], expected: Result<(), CodecError>) {
    assert_eq!(
        codec::decode_run(bytes).map(|_| ()),
        expected,
        "bytes {bytes:?}"
    );
}

#[test]
fn values_of_another_format_are_refused() {
    let good = codec::encode_run(&RunState::new(1));
    check_decode(&good, Ok(()));
    check_decode(&[], Err(CodecError::Empty));
    let mut other = good.clone();
    other[0] = 9;
    check_decode(&other, Err(CodecError::UnknownFormat { found: 9 }));
    let mut trailing = good.clone();
    trailing.push(0);
    assert!(matches!(
        codec::decode_run(&trailing),
        Err(CodecError::Corrupt(_))
    ));
    assert!(matches!(
        codec::decode_run(&good[..good.len() - 1]),
        Err(CodecError::Corrupt(_))
    ));
}

#[test]
fn checkpoint_is_replaced_whole() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(checkpoint::read(dir.path()), None);
    checkpoint::write(
        dir.path(),
        Checkpoint {
            changelog_offset: 10,
        },
    )
    .unwrap();
    checkpoint::write(
        dir.path(),
        Checkpoint {
            changelog_offset: 11,
        },
    )
    .unwrap();
    assert_eq!(
        checkpoint::read(dir.path()),
        Some(Checkpoint {
            changelog_offset: 11
        })
    );
    assert!(!dir.path().join("checkpoint.tmp").exists());
    checkpoint::remove(dir.path()).unwrap();
    assert_eq!(checkpoint::read(dir.path()), None);
}

proptest! {
    #[test]
    fn keys_round_trip_whatever_the_ids(world in "\\PC{1,40}", run in "\\PC{0,40}") {
        let key = RunKey::new(&world, &run);
        let bytes = codec::encode_key(&key);
        prop_assert_eq!(codec::decode_key(&bytes).unwrap(), key);
        prop_assert_ne!(&bytes[..], codec::META_KEY);
    }

    #[test]
    fn run_states_round_trip(cut in 0usize..10) {
        let task = busy_task();
        for (key, state) in task.runs().take(cut + 1) {
            let bytes = codec::encode_run(state);
            prop_assert_eq!(bytes[0], FORMAT_VERSION);
            prop_assert_eq!(&codec::decode_run(&bytes).unwrap(), state, "{}", key);
        }
    }
}

/// The store records the changelog offset it reflects in the batch it reflects it with, so a
/// restore can tell a store that agrees with its checkpoint from one deleted or replaced under
/// it; a rebuilt store is empty, without checkpoint or position.
#[test]
fn the_store_records_the_changelog_position_it_reflects() {
    let dir = tempfile::tempdir().unwrap();
    let mut task = busy_task();
    let store = commit_all(&mut task, dir.path(), "app", Some(17));
    assert_eq!(store.changelog_position().unwrap(), Some(17));
    assert_eq!(store.checkpoint().map(|c| c.changelog_offset), Some(17));
    store.commit_records(&[], Some(23)).unwrap();
    assert_eq!(store.changelog_position().unwrap(), Some(23));
    drop(store);
    let (store, opened) = open(dir.path(), "app");
    assert_eq!(opened, Opened::Existing);
    assert_eq!(store.changelog_position().unwrap(), Some(23), "durable");
    assert!(
        !store.load().unwrap().runs.is_empty(),
        "the position is not a run"
    );
    store.clear().unwrap();
    assert_eq!(store.changelog_position().unwrap(), None);
    let rebuilt = store.rebuild(&StoreOptions::default()).unwrap();
    assert_eq!(rebuilt.changelog_position().unwrap(), None);
    assert_eq!(rebuilt.checkpoint(), None);
    assert_eq!(rebuilt.load().unwrap(), Contents::default());
}
