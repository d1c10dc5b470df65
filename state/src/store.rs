//! A task's local state store: RocksDB under `state.dir/<application id>/<partition>/`, holding
//! every run's state and the task meta, written as one `WriteBatch` per commit.
//!
//! The store is a cache of the changelog topic: when it cannot be trusted (cannot be opened,
//! written by another format, belongs to another application id) it is wiped and the caller
//! restores it from the changelog.

use std::path::{Path, PathBuf};

use ackwatch_topology::{RunKey, RunState, TaskMeta};
use anyhow::Context;
use rocksdb::{BlockBasedOptions, Cache, Options, WriteBatch, WriteOptions, DB};

use crate::checkpoint::{self, Checkpoint};
use crate::codec::{self, CommitMarker, COMMIT_KEY, META_KEY};

/// Identity of a store: which application wrote it, in which format.
const IDENTITY_KEY: &[u8] = b"\xff\xffidentity";

/// The changelog offset the store reflects, written in the same batch as the records it
/// reflects (the checkpoint file is written after the batch). A restore trusts the checkpoint
/// only when the store agrees with it: a deleted store, or an older copy of it put back beside
/// a newer checkpoint, is rebuilt from the changelog instead of read as empty or stale state.
const POSITION_KEY: &[u8] = b"\xff\xffchangelog-position";

/// RocksDB sizing, chosen so one instance with many tasks stays small (see ARCHITECTURE.md).
/// The memtable budget is the process's, shared by all its stores (`memory.rs`); the block
/// cache is each store's own.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Each store's block cache; run states are read when an evicted run gets a record and at
    /// restore time.
    pub block_cache_bytes: usize,
    /// Memtables of all stores together: past it the largest is flushed.
    pub write_buffers_total_bytes: usize,
    /// One memtable's size; a commit's batch is small (runs changed in 100 ms).
    pub write_buffer_bytes: usize,
    pub max_write_buffers: i32,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            block_cache_bytes: 16 << 20,
            write_buffers_total_bytes: 16 << 20,
            write_buffer_bytes: 8 << 20,
            max_write_buffers: 2,
        }
    }
}

/// How opening went.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened {
    /// The store was there and is this application's, in this format.
    Existing,
    /// There was no store.
    Created,
    /// There was a store that could not be used; it was wiped. The reason says why.
    Wiped(String),
}

pub struct TaskStore {
    db: DB,
    dir: PathBuf,
    identity: Vec<u8>,
}

/// What a store holds.
#[derive(Debug, Default, PartialEq)]
pub struct Contents {
    pub meta: Option<TaskMeta>,
    /// The marker of the last commit the store holds.
    pub marker: Option<CommitMarker>,
    pub runs: Vec<(RunKey, RunState)>,
}

impl TaskStore {
    pub fn dir_for(state_dir: &Path, application_id: &str, partition: i32) -> PathBuf {
        state_dir.join(application_id).join(partition.to_string())
    }

    /// Opens (or creates) the store of `partition`, wiping one that cannot be used.
    pub fn open(
        state_dir: &Path,
        application_id: &str,
        partition: i32,
        options: &StoreOptions,
    ) -> anyhow::Result<(TaskStore, Opened)> {
        let dir = Self::dir_for(state_dir, application_id, partition);
        std::fs::create_dir_all(&dir).with_context(|| {
            format!(
                "cannot create state dir {}: is state.dir writable?",
                dir.display()
            )
        })?;
        let db_dir = dir.join("rocksdb");
        let existed = db_dir.join("CURRENT").exists();
        let identity = identity(application_id);
        let mut opened = if existed {
            Opened::Existing
        } else {
            Opened::Created
        };
        let db = match open_db(&db_dir, options) {
            Ok(db) => match db.get(IDENTITY_KEY) {
                Ok(Some(found)) if found == identity => Some(db),
                Ok(Some(found)) => {
                    opened = Opened::Wiped(format!(
                        "store belongs to {:?}, expected {:?}",
                        String::from_utf8_lossy(&found),
                        String::from_utf8_lossy(&identity)
                    ));
                    None
                }
                Ok(None) if !existed => Some(db),
                Ok(None) => {
                    opened = Opened::Wiped("store has no identity record".into());
                    None
                }
                Err(e) => {
                    opened = Opened::Wiped(format!("store cannot be read: {e}"));
                    None
                }
            },
            // A store in use is not a broken store: wiping it would delete files under its
            // owner (another process on the same state dir, or a stream thread of this one that
            // has not closed it yet).
            Err(e) if is_lock_error(&e) => {
                return Err(StoreLocked {
                    dir: db_dir,
                    reason: e.to_string(),
                }
                .into())
            }
            Err(e) => {
                opened = Opened::Wiped(format!("store cannot be opened: {e}"));
                None
            }
        };
        let db = match db {
            Some(db) => db,
            None => {
                checkpoint::remove(&dir)?;
                std::fs::remove_dir_all(&db_dir)
                    .with_context(|| format!("cannot wipe {}", db_dir.display()))?;
                open_db(&db_dir, options)
                    .with_context(|| format!("cannot create store in {}", db_dir.display()))?
            }
        };
        db.put(IDENTITY_KEY, &identity)?;
        Ok((TaskStore { db, dir, identity }, opened))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Deletes the store's files and its checkpoint and opens it empty: for a store whose
    /// contents turn out unreadable (a corrupt file RocksDB only notices on read). Its lock is
    /// released first (the store is consumed).
    pub fn rebuild(self, options: &StoreOptions) -> anyhow::Result<TaskStore> {
        let TaskStore { db, dir, identity } = self;
        drop(db);
        checkpoint::remove(&dir)?;
        let db_dir = dir.join("rocksdb");
        std::fs::remove_dir_all(&db_dir)
            .with_context(|| format!("cannot wipe {}", db_dir.display()))?;
        let db = open_db(&db_dir, options)
            .with_context(|| format!("cannot create store in {}", db_dir.display()))?;
        db.put(IDENTITY_KEY, &identity)?;
        Ok(TaskStore { db, dir, identity })
    }

    pub fn checkpoint(&self) -> Option<Checkpoint> {
        checkpoint::read(&self.dir)
    }

    /// Everything in the store; a value of another format is an error that names the fix.
    pub fn load(&self) -> anyhow::Result<Contents> {
        let mut contents = self.load_task()?;
        self.for_each_run(|key, run| contents.runs.push((key, run)))?;
        Ok(contents)
    }

    /// The task's own records (meta and last commit marker), `runs` left empty: read before
    /// the runs, since restoring a run needs the task's stream time.
    pub fn load_task(&self) -> anyhow::Result<Contents> {
        let meta = self.db.get(META_KEY)?;
        let marker = self.db.get(COMMIT_KEY)?;
        Ok(Contents {
            meta: meta.map(|v| codec::decode_meta(&v)).transpose()?,
            marker: marker.map(|v| codec::decode_marker(&v)).transpose()?,
            runs: Vec::new(),
        })
    }

    /// Hands every stored run to `on_run` as it is read, in key order, without collecting them:
    /// a task start loads a store of a million runs without holding them all at once (it
    /// evicts the settled ones as they come).
    pub fn for_each_run(&self, mut on_run: impl FnMut(RunKey, RunState)) -> anyhow::Result<()> {
        for item in self.db.iterator(rocksdb::IteratorMode::Start) {
            let (key, value) = item?;
            if [IDENTITY_KEY, POSITION_KEY, META_KEY, COMMIT_KEY].contains(&&*key) {
                continue;
            }
            on_run(codec::decode_key(&key)?, codec::decode_run(&value)?);
        }
        Ok(())
    }

    /// One run's stored state: for a run the engine evicted (`Outcome::NeedsRun`) and for
    /// queries of runs not in memory.
    pub fn get_run(&self, key: &RunKey) -> anyhow::Result<Option<RunState>> {
        let value = self
            .db
            .get(codec::encode_key(key))
            .with_context(|| format!("cannot read the store in {}", self.dir.display()))?;
        Ok(value.map(|v| codec::decode_run(&v)).transpose()?)
    }

    /// The stored runs of one world that `keep` accepts, in run id order: the first `max` of
    /// them decoded, and how many there are in all (run keys start with the world id, so this
    /// reads one key range; values past the first `max` are not decoded).
    pub fn runs_of_world(
        &self,
        world_id: &str,
        max: usize,
        mut keep: impl FnMut(&RunKey) -> bool,
    ) -> anyhow::Result<(Vec<(RunKey, RunState)>, usize)> {
        let prefix = codec::encode_key(&RunKey::new(world_id, ""));
        let mut runs = Vec::new();
        let mut total = 0;
        let mode = rocksdb::IteratorMode::From(&prefix, rocksdb::Direction::Forward);
        for item in self.db.iterator(mode) {
            let (key, value) = item?;
            if !key.starts_with(&prefix) {
                break;
            }
            let key = codec::decode_key(&key)?;
            if !keep(&key) {
                continue;
            }
            total += 1;
            if runs.len() < max {
                runs.push((key, codec::decode_run(&value)?));
            }
        }
        Ok((runs, total))
    }

    /// Applies one commit's changes as one synced `WriteBatch`, then records the changelog
    /// offset the store now reflects (when the caller knows it).
    pub fn commit<'a>(
        &self,
        runs: impl IntoIterator<Item = (&'a RunKey, Option<&'a RunState>)>,
        meta: Option<&TaskMeta>,
        marker: &CommitMarker,
        changelog_end: Option<i64>,
    ) -> anyhow::Result<()> {
        let records = encode_changes(runs, meta, marker);
        self.commit_records(&records, changelog_end)
    }

    /// Like [`Self::commit`] for changes already encoded (the runtime encodes once for the
    /// changelog and the store).
    pub fn commit_records(
        &self,
        records: &[Record],
        changelog_end: Option<i64>,
    ) -> anyhow::Result<()> {
        let mut batch = WriteBatch::default();
        for (key, value) in records {
            match value {
                Some(value) => batch.put(key, value),
                None => batch.delete(key),
            }
        }
        if let Some(offset) = changelog_end {
            batch.put(POSITION_KEY, offset.to_be_bytes());
        }
        self.write(batch)?;
        if let Some(offset) = changelog_end {
            checkpoint::write(
                &self.dir,
                Checkpoint {
                    changelog_offset: offset,
                },
            )?;
        }
        Ok(())
    }

    /// The changelog offset the store's contents reflect (written with them), or `None` for a
    /// store that never committed one (new, wiped, deleted under its checkpoint).
    pub fn changelog_position(&self) -> anyhow::Result<Option<i64>> {
        let value = self.db.get(POSITION_KEY)?;
        Ok(value
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map(i64::from_be_bytes))
    }

    /// Deletes everything but the store's identity, and the checkpoint: before a restore from
    /// the changelog's beginning, so runs the changelog no longer holds cannot linger.
    pub fn clear(&self) -> anyhow::Result<()> {
        checkpoint::remove(&self.dir)?;
        let identity = identity_of(&self.db)?;
        let mut batch = WriteBatch::default();
        batch.delete_range(&[][..], &[0xffu8; 16][..]);
        batch.put(IDENTITY_KEY, identity);
        self.write(batch)
    }

    /// Applies changelog records (key, value or tombstone) during restore. Each key is checked
    /// and each value's format byte, so a changelog of another format is refused before it
    /// reaches the store; values are fully decoded by [`Self::load`], once.
    pub fn apply_changelog<'a>(
        &self,
        records: impl IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
    ) -> anyhow::Result<u64> {
        let mut batch = WriteBatch::default();
        let mut n = 0;
        for (key, value) in records {
            codec::check_record(key, value)?;
            match value {
                Some(value) => batch.put(key, value),
                None => batch.delete(key),
            }
            n += 1;
        }
        self.write(batch)?;
        Ok(n)
    }

    fn write(&self, batch: WriteBatch) -> anyhow::Result<()> {
        let mut options = WriteOptions::default();
        options.set_sync(true);
        self.db
            .write_opt(batch, &options)
            .with_context(|| format!("cannot write the store in {}", self.dir.display()))
    }
}

/// The store is held by another RocksDB instance: another process using the same state dir,
/// or (briefly, while a partition moves between stream threads) a thread of this process.
#[derive(Debug, thiserror::Error)]
#[error(
    "the store in {} is locked by another user ({reason}): runtime.state_dir must not be shared \
     between running instances",
    dir.display()
)]
pub struct StoreLocked {
    pub dir: PathBuf,
    pub reason: String,
}

/// Whether RocksDB refused to open because the store's `LOCK` file is held (by another process,
/// or by another open instance in this one).
fn is_lock_error(e: &rocksdb::Error) -> bool {
    let text = e.to_string();
    text.contains("/LOCK") || text.contains("lock hold by current process")
}

/// One changelog/store record: key and value, `None` for a tombstone.
pub type Record = (Vec<u8>, Option<Vec<u8>>);

/// Encodes a commit's changes once, for both the changelog and the store; the commit marker
/// comes last.
pub fn encode_changes<'a>(
    runs: impl IntoIterator<Item = (&'a RunKey, Option<&'a RunState>)>,
    meta: Option<&TaskMeta>,
    marker: &CommitMarker,
) -> Vec<Record> {
    let mut records: Vec<Record> = runs
        .into_iter()
        .map(|(key, state)| (codec::encode_key(key), state.map(codec::encode_run)))
        .collect();
    if let Some(meta) = meta {
        records.push((META_KEY.to_vec(), Some(codec::encode_meta(meta))));
    }
    records.push((COMMIT_KEY.to_vec(), Some(codec::encode_marker(marker))));
    records
}

fn identity_of(db: &DB) -> anyhow::Result<Vec<u8>> {
    Ok(db.get(IDENTITY_KEY)?.unwrap_or_default())
}

fn identity(application_id: &str) -> Vec<u8> {
    format!("{application_id}/format-{}", codec::FORMAT_VERSION).into_bytes()
}

fn open_db(path: &Path, options: &StoreOptions) -> Result<DB, rocksdb::Error> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.set_write_buffer_size(options.write_buffer_bytes);
    opts.set_max_write_buffer_number(options.max_write_buffers);
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    opts.set_keep_log_file_num(2);
    opts.set_max_open_files(64);
    let shared = crate::memory::shared(options);
    opts.set_write_buffer_manager(&shared.write_buffers);
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(&Cache::new_lru_cache(options.block_cache_bytes));
    table.set_cache_index_and_filter_blocks(true);
    opts.set_block_based_table_factory(&table);
    DB::open(&opts, path)
}
