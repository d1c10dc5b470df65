//! The checkpoint file beside a task's store: the changelog offset the store reflects.
//! Written atomically (temp file, fsync, rename, fsync of the directory), so a crash leaves
//! either the old checkpoint or the new one, never a torn one.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The next changelog offset to read: every record before it is in the store.
    pub changelog_offset: i64,
}

pub fn path(dir: &Path) -> PathBuf {
    dir.join("checkpoint")
}

/// Reads the checkpoint; `None` when there is none or it cannot be read (then the store is
/// restored from the changelog's beginning).
pub fn read(dir: &Path) -> Option<Checkpoint> {
    let text = fs::read_to_string(path(dir)).ok()?;
    serde_json::from_str(&text).ok()
}

pub fn write(dir: &Path, checkpoint: Checkpoint) -> anyhow::Result<()> {
    let tmp = dir.join("checkpoint.tmp");
    let mut file =
        File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    file.write_all(serde_json::to_string(&checkpoint)?.as_bytes())?;
    file.sync_all()
        .with_context(|| format!("cannot fsync {}", tmp.display()))?;
    drop(file);
    fs::rename(&tmp, path(dir))
        .with_context(|| format!("cannot rename {} into place", tmp.display()))?;
    File::open(dir)?
        .sync_all()
        .with_context(|| format!("cannot fsync directory {}", dir.display()))?;
    Ok(())
}

/// Removes the checkpoint, before anything changes the store outside a commit (a restore
/// from the beginning): a crash then restores from the beginning again, never from a lie.
pub fn remove(dir: &Path) -> anyhow::Result<()> {
    match fs::remove_file(path(dir)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}
