//! The changelog topic against the real broker: created compacted, refused when it does not fit,
//! and a store rebuilt from it alone equals the state that was committed.

mod support;

use ackwatch::runtime::changelog::{self, ChangelogWriter, Ensured};
use ackwatch_state::{encode_changes, Opened, StoreOptions, TaskStore};
use ackwatch_topology::{Policy, RawRecord, RunKey, RunState, Side, Task};

const T0: i64 = 1_772_442_000_000;

fn feed(task: &mut Task, from_world: usize, worlds: usize, t: i64) {
    let mut out = vec![];
    for w in from_world..from_world + worlds {
        let world = format!("w{w}");
        for seq in 1..=3u64 {
            let ts = ackwatch_topology::time::format_rfc3339_ms(t + seq as i64 * 100);
            let act = format!(
                r#"{{"type":"ActivationUpdated","world_id":"{world}","run_id":"r","sequence":{seq},"requires_ack":true,"ts":"{ts}"}}"#
            );
            task.process(
                &RawRecord {
                    side: Side::Activation,
                    partition: 0,
                    offset: 0,
                    timestamp_ms: Some(t),
                    key: Some(world.as_bytes()),
                    value: Some(act.as_bytes()),
                },
                &mut out,
            );
            if seq != 2 || w % 3 != 0 {
                let ack = format!(
                    r#"{{"type":"ActivationAck","world_id":"{world}","run_id":"r","sequence":{seq},"ack_ts":"{ts}"}}"#
                );
                task.process(
                    &RawRecord {
                        side: Side::Ack,
                        partition: 0,
                        offset: 0,
                        timestamp_ms: Some(t),
                        key: Some(world.as_bytes()),
                        value: Some(ack.as_bytes()),
                    },
                    &mut out,
                );
            }
        }
    }
}

/// One commit as the runtime does it: changelog first (acknowledged), then store and checkpoint.
async fn commit(
    task: &mut Task,
    writer: &ChangelogWriter,
    store: &TaskStore,
    partition: i32,
) -> usize {
    let (changes, meta) = task.take_changes();
    let records = encode_changes(
        changes.iter().map(|(k, v)| (k, *v)),
        meta.as_ref(),
        &ackwatch_state::CommitMarker {
            input_next: ackwatch_topology::PerSide::both(0),
        },
    );
    let end = writer.write(partition, &records).await.unwrap();
    store.commit_records(&records, end).unwrap();
    records.len()
}

/// A fresh application's changelog topic with `partitions` partitions, and a writer for it.
async fn new_changelog(
    partitions: i32,
) -> (rdkafka::ClientConfig, String, String, ChangelogWriter) {
    let config = support::client_config();
    let app = support::unique("app");
    let topic = changelog::topic_name(&app);
    changelog::ensure_topic(&config, &topic, partitions, 1)
        .await
        .unwrap();
    let writer = ChangelogWriter::new(&config, &topic).unwrap();
    (config, app, topic, writer)
}

fn sorted_state(runs: impl IntoIterator<Item = (RunKey, RunState)>) -> Vec<(RunKey, RunState)> {
    let mut v: Vec<_> = runs.into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[tokio::test]
async fn changelog_topic_is_created_compacted_and_refused_when_it_does_not_fit() {
    let config = support::client_config();
    let topic = changelog::topic_name(&support::unique("app"));
    assert_eq!(
        changelog::ensure_topic(&config, &topic, 3, 1)
            .await
            .unwrap(),
        Ensured::Created
    );
    assert_eq!(
        changelog::ensure_topic(&config, &topic, 3, 1)
            .await
            .unwrap(),
        Ensured::Existing
    );
    let err = changelog::ensure_topic(&config, &topic, 4, 1)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("has 3 partitions but the input topics have 4"),
        "{err}"
    );

    let not_compacted = support::unique("plain");
    support::create_topic(&not_compacted, 2, &[("cleanup.policy", "delete")]).await;
    let err = changelog::ensure_topic(&config, &not_compacted, 2, 1)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("cleanup.policy=delete, not compact"), "{err}");
}

#[tokio::test]
async fn a_deleted_store_is_rebuilt_from_the_changelog_alone() {
    let (config, app, topic, writer) = new_changelog(2).await;
    let state_dir = tempfile::tempdir().unwrap();
    let partition = 1;

    // Several commits, with runs that retention drops in between (tombstones).
    let policy = Policy {
        run_retention_ms: 60_000,
        ..Policy::default()
    };
    let mut task = Task::new(policy);
    let (store, _) =
        TaskStore::open(state_dir.path(), &app, partition, &StoreOptions::default()).unwrap();
    feed(&mut task, 0, 40, T0);
    commit(&mut task, &writer, &store, partition).await;
    feed(&mut task, 40, 40, T0 + 120_000); // the first 40 runs are dropped by retention
    let dropped = task.counters().runs_dropped;
    assert_eq!(dropped, 40);
    commit(&mut task, &writer, &store, partition).await;
    feed(&mut task, 80, 10, T0 + 121_000);
    commit(&mut task, &writer, &store, partition).await;
    let expected = sorted_state(task.runs().map(|(k, v)| (k.clone(), v.clone())));
    assert_eq!(expected.len(), 50);
    drop(store);

    std::fs::remove_dir_all(state_dir.path().join(&app)).unwrap();
    let (store, opened) =
        TaskStore::open(state_dir.path(), &app, partition, &StoreOptions::default()).unwrap();
    assert_eq!(opened, Opened::Created);
    let stats = changelog::restore(&config, &topic, partition, &store).unwrap();
    assert_eq!(stats.from_offset, 0);
    assert!(stats.records > 0 && stats.bytes > 0);
    let contents = store.load().unwrap();
    assert_eq!(
        sorted_state(contents.runs),
        expected,
        "restored runs equal the committed ones, dropped runs stay dropped"
    );
    assert_eq!(contents.meta, Some(task.meta()));

    // Restoring again from the checkpoint reads nothing; after one more commit, only that commit.
    let again = changelog::restore(&config, &topic, partition, &store).unwrap();
    assert_eq!((again.from_offset, again.records), (stats.to_offset, 0));
    // The commit goes to another store (another instance's), so `store` learns it only by restoring.
    let other_dir = tempfile::tempdir().unwrap();
    let (other_store, _) =
        TaskStore::open(other_dir.path(), &app, partition, &StoreOptions::default()).unwrap();
    feed(&mut task, 90, 5, T0 + 122_000);
    let written = commit(&mut task, &writer, &other_store, partition).await;
    let incremental = changelog::restore(&config, &topic, partition, &store).unwrap();
    assert_eq!(incremental.from_offset, stats.to_offset);
    assert_eq!(incremental.records as usize, written);
    let expected = sorted_state(task.runs().map(|(k, v)| (k.clone(), v.clone())));
    assert_eq!(sorted_state(store.load().unwrap().runs), expected);
}

/// A commit whose writer died mid-way (its records without its closing marker) is left out of
/// a restore, whatever store restores: the restored state is the last complete commit's, and the
/// keys of the unfinished one are reported for the next owner to write again. Once a newer
/// commit rewrites them, a full restore reads past the unfinished records to the right state.
#[tokio::test]
async fn a_commit_without_its_marker_is_left_out_of_a_restore() {
    let (config, app, topic, writer) = new_changelog(1).await;
    let dir = tempfile::tempdir().unwrap();
    let open = |name: &str| {
        TaskStore::open(&dir.path().join(name), &app, 0, &StoreOptions::default())
            .unwrap()
            .0
    };

    let mut task = Task::new(Policy::default());
    feed(&mut task, 0, 20, T0);
    commit(&mut task, &writer, &open("writer"), 0).await;
    let complete = sorted_state(task.runs().map(|(k, v)| (k.clone(), v.clone())));
    let complete_meta = task.meta();

    // The next commit dies after writing some of its records, before its marker.
    let mut dying = Task::new(Policy::default());
    for (key, run) in &complete {
        dying.restore_run(key.clone(), run.clone());
    }
    dying.restore_meta(complete_meta);
    feed(&mut dying, 15, 10, T0 + 5_000); // changes 5 runs, adds 5
    let (changes, meta) = dying.take_changes();
    let mut records = encode_changes(
        changes.iter().map(|(k, v)| (k, *v)),
        meta.as_ref(),
        &ackwatch_state::CommitMarker {
            input_next: ackwatch_topology::PerSide::both(9),
        },
    );
    records.pop().expect("the marker, last");
    records.truncate(records.len() - 2); // and two more records never written
    let unfinished: Vec<Vec<u8>> = records.iter().map(|(k, _)| k.clone()).collect();
    assert!(unfinished.len() >= 5);
    writer.write(0, &records).await.unwrap();

    let fresh = open("fresh");
    let stats = changelog::restore(&config, &topic, 0, &fresh).unwrap();
    let restored = fresh.load().unwrap();
    assert_eq!(
        sorted_state(restored.runs),
        complete,
        "the last complete commit"
    );
    assert_eq!(restored.meta, Some(complete_meta));
    assert_eq!(
        restored.marker,
        Some(ackwatch_state::CommitMarker {
            input_next: ackwatch_topology::PerSide::both(0)
        })
    );
    assert_eq!(stats.unfinished_keys, unfinished);
    // Restoring the same store again still leaves the unfinished commit out.
    let again = changelog::restore(&config, &topic, 0, &fresh).unwrap();
    assert_eq!(again.unfinished_keys, unfinished);
    assert_eq!(sorted_state(fresh.load().unwrap().runs), complete);

    // The next owner writes the unfinished keys again (their complete-commit state or a
    // tombstone), with its own changes, in its first commit.
    let mut owner = Task::new(Policy::default());
    for (key, run) in &complete {
        owner.restore_run(key.clone(), run.clone());
    }
    owner.restore_meta(complete_meta);
    for key in &stats.unfinished_keys {
        match ackwatch_state::codec::decode_key(key) {
            Ok(run) => owner.rewrite_at_next_commit(Some(run), false),
            Err(_) => owner.rewrite_at_next_commit(None, true),
        }
    }
    feed(&mut owner, 40, 3, T0 + 6_000);
    commit(&mut owner, &writer, &open("owner"), 0).await;
    let expected = sorted_state(owner.runs().map(|(k, v)| (k.clone(), v.clone())));
    let rebuilt = open("rebuilt");
    let stats = changelog::restore(&config, &topic, 0, &rebuilt).unwrap();
    assert!(stats.unfinished_keys.is_empty());
    assert_eq!(sorted_state(rebuilt.load().unwrap().runs), expected);
    assert_eq!(rebuilt.load().unwrap().meta, Some(owner.meta()));
}

/// A changelog of the previous format (no commit markers) is refused with what to do, never
/// taken for an unfinished commit whose keys the next owner would overwrite with empty state.
#[tokio::test]
async fn a_changelog_of_another_format_is_refused_not_overwritten() {
    let (config, app, topic, writer) = new_changelog(1).await;
    let mut task = Task::new(Policy::default());
    feed(&mut task, 0, 5, T0);
    let (changes, _) = task.take_changes();
    let old_format: Vec<ackwatch_state::Record> = changes
        .iter()
        .map(|(k, v)| {
            let mut value = ackwatch_state::codec::encode_run(v.unwrap());
            value[0] = 1; // the format byte of the previous format
            (ackwatch_state::codec::encode_key(k), Some(value))
        })
        .collect();
    writer.write(0, &old_format).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let (store, _) = TaskStore::open(dir.path(), &app, 0, &StoreOptions::default()).unwrap();
    let err = format!(
        "{:#}",
        changelog::restore(&config, &topic, 0, &store).unwrap_err()
    );
    assert!(
        err.contains("cannot restore") && err.contains("format version 1"),
        "{err}"
    );
    assert!(err.contains("delete the changelog topic"), "{err}");
}

/// What can happen to a store or its checkpoint on disk, between two runs.
#[derive(Clone, Copy, Debug)]
enum Damage {
    /// The control: nothing; the restore reads only what the store lacks.
    None,
    /// `<partition>/rocksdb` deleted, the checkpoint kept (a cleanup, a partial volume restore).
    StoreDeleted,
    /// An older copy of `<partition>/rocksdb` put back beside the newer checkpoint.
    StoreRolledBack,
    CheckpointGarbage,
    /// A checkpoint past the changelog's end.
    CheckpointForward,
    SstCorrupted,
    CurrentTruncated,
    ManifestGarbage,
}

fn files_named(dir: &std::path::Path, starts: &str, ends: &str) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with(starts) && name.ends_with(ends)
        })
        .collect()
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
}

/// Every kind of damage to a store or its checkpoint ends in the changelog's state: the
/// restore (through the runtime's `restore_and_load`) never runs on empty or stale state. A
/// deleted or rolled-back store beside its checkpoint was read as current before (empty or old
/// state, then invented findings); the other damages were rebuilt already and stay tested.
#[tokio::test]
async fn every_damage_to_a_store_or_its_checkpoint_ends_in_the_changelogs_state() {
    for damage in [
        Damage::None,
        Damage::StoreDeleted,
        Damage::StoreRolledBack,
        Damage::CheckpointGarbage,
        Damage::CheckpointForward,
        Damage::SstCorrupted,
        Damage::CurrentTruncated,
        Damage::ManifestGarbage,
    ] {
        let (config, app, topic, writer) = new_changelog(1).await;
        let state_dir = tempfile::tempdir().unwrap();
        let options = StoreOptions::default();
        let mut task = Task::new(Policy::default());
        let (store, _) = TaskStore::open(state_dir.path(), &app, 0, &options).unwrap();
        feed(&mut task, 0, 30, T0);
        commit(&mut task, &writer, &store, 0).await;
        let store_dir = TaskStore::dir_for(state_dir.path(), &app, 0);
        let db_dir = store_dir.join("rocksdb");
        // A copy of the store after the first commit (closed, so its files are whole).
        drop(store);
        let old_copy = state_dir.path().join("old-copy");
        copy_dir(&db_dir, &old_copy);
        let (store, _) = TaskStore::open(state_dir.path(), &app, 0, &options).unwrap();
        feed(&mut task, 30, 30, T0 + 1_000);
        commit(&mut task, &writer, &store, 0).await;
        feed(&mut task, 60, 10, T0 + 2_000);
        commit(&mut task, &writer, &store, 0).await;
        let expected = sorted_state(task.runs().map(|(k, v)| (k.clone(), v.clone())));
        drop(store);
        // Reopened once more, so RocksDB has flushed the data into SST files.
        drop(TaskStore::open(state_dir.path(), &app, 0, &options).unwrap());

        let checkpoint = store_dir.join("checkpoint");
        match damage {
            Damage::None => {}
            Damage::StoreDeleted => std::fs::remove_dir_all(&db_dir).unwrap(),
            Damage::StoreRolledBack => {
                std::fs::remove_dir_all(&db_dir).unwrap();
                copy_dir(&old_copy, &db_dir);
            }
            Damage::CheckpointGarbage => std::fs::write(&checkpoint, b"{not json").unwrap(),
            Damage::CheckpointForward => {
                std::fs::write(&checkpoint, br#"{"changelog_offset":999999}"#).unwrap()
            }
            Damage::SstCorrupted => {
                let ssts = files_named(&db_dir, "", ".sst");
                assert!(!ssts.is_empty(), "the store has SST files to corrupt");
                for sst in ssts {
                    let mut bytes = std::fs::read(&sst).unwrap();
                    let middle = bytes.len() / 3;
                    for b in &mut bytes[middle..middle + 64] {
                        *b ^= 0x5a;
                    }
                    std::fs::write(&sst, bytes).unwrap();
                }
            }
            Damage::CurrentTruncated => {
                std::fs::write(db_dir.join("CURRENT"), b"MANIF").unwrap();
            }
            Damage::ManifestGarbage => {
                for manifest in files_named(&db_dir, "MANIFEST", "") {
                    std::fs::write(manifest, b"garbage").unwrap();
                }
            }
        }

        let (store, _) = TaskStore::open(state_dir.path(), &app, 0, &options).unwrap();
        let restored =
            changelog::restore_and_load(&config, &topic, 0, store, &options, &|_| {}, |s, _| {
                s.load()
            })
            .unwrap();
        assert_eq!(
            sorted_state(restored.loaded.runs),
            expected,
            "{damage:?}: the restored state is the changelog's"
        );
        assert_eq!(restored.loaded.meta, Some(task.meta()), "{damage:?}");
        match damage {
            Damage::None => assert_eq!(restored.stats.records, 0, "nothing missing to read"),
            Damage::StoreDeleted | Damage::StoreRolledBack => {
                assert_eq!(restored.stats.from_offset, 0, "{damage:?}: a full restore");
                let why = restored
                    .stats
                    .full_restore_reason
                    .as_deref()
                    .unwrap_or_default();
                assert!(
                    why.contains("checkpoint"),
                    "{damage:?}: the reason says why: {why}"
                );
            }
            _ => assert_eq!(restored.stats.from_offset, 0, "{damage:?}: a full restore"),
        }
    }
}
