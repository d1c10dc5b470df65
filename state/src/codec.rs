//! Encoding of stored values and keys. Every value starts with a format-version byte, so a store
//! or changelog written by another format is a clear error, never a misread.

use ackwatch_topology::{PerSide, RunKey, RunState, TaskMeta};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The format of stored run states and task meta. Bump it when `RunState` changes shape.
/// 2: every commit's changelog records end with a [`CommitMarker`].
/// 3: a phase-less activation is stored as `unknown`; blocked `ack_missing` findings, late
///    fills by episode, the rollback decision of a paused episode.
pub const FORMAT_VERSION: u8 = 3;

/// Changelog/store key of the task meta (stream time, first record time). Run keys start with
/// a length byte pair, so no run key equals it.
pub const META_KEY: &[u8] = b"\xff\xffmeta";

/// Changelog/store key of the [`CommitMarker`], the last record of every commit.
pub const COMMIT_KEY: &[u8] = b"\xff\xffcommit";

/// Written last in each commit's changelog records (same partition, so after all of them):
/// a restore applies the changelog only up to the last marker, so it never restores half a
/// commit, and the marker says which input the restored state reflects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CommitMarker {
    /// Next input offset per side the state reflects: every record before it was processed,
    /// and its outputs acknowledged by the broker. Stored as the two offsets, activation first.
    pub input_next: PerSide<i64>,
}

/// Whether a store/changelog key is one of the task's own (meta, marker), not a run's.
pub fn is_task_key(key: &[u8]) -> bool {
    key == META_KEY || key == COMMIT_KEY
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("stored value has format version {found}, this ackwatch reads {FORMAT_VERSION}: restore the store from the changelog or run a matching version")]
    UnknownFormat { found: u8 },
    #[error("stored value is empty")]
    Empty,
    #[error("stored value does not decode: {0}")]
    Corrupt(String),
    #[error("stored key is not a run key")]
    BadKey,
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![FORMAT_VERSION];
    bincode::serde::encode_into_std_write(value, &mut out, bincode::config::standard())
        .expect("encoding into a Vec cannot fail");
    out
}

/// Checks a stored value's format byte without decoding the value.
pub fn check_format(bytes: &[u8]) -> Result<(), CodecError> {
    match bytes.first() {
        None => Err(CodecError::Empty),
        Some(&FORMAT_VERSION) => Ok(()),
        Some(&found) => Err(CodecError::UnknownFormat { found }),
    }
}

/// Checks a changelog/store record without decoding its value: the key is a task key or a run
/// key, the value (absent for a tombstone) has this format's byte.
pub fn check_record(key: &[u8], value: Option<&[u8]>) -> Result<(), CodecError> {
    if !is_task_key(key) {
        decode_key(key)?;
    }
    value.map_or(Ok(()), check_format)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    check_format(bytes)?;
    let body = &bytes[1..];
    let (value, used) = bincode::serde::decode_from_slice(body, bincode::config::standard())
        .map_err(|e| CodecError::Corrupt(e.to_string()))?;
    if used != body.len() {
        return Err(CodecError::Corrupt(format!(
            "{} trailing bytes",
            body.len() - used
        )));
    }
    Ok(value)
}

pub fn encode_run(state: &RunState) -> Vec<u8> {
    encode(state)
}

pub fn decode_run(bytes: &[u8]) -> Result<RunState, CodecError> {
    decode(bytes)
}

pub fn encode_meta(meta: &TaskMeta) -> Vec<u8> {
    encode(meta)
}

pub fn decode_meta(bytes: &[u8]) -> Result<TaskMeta, CodecError> {
    decode(bytes)
}

pub fn encode_marker(marker: &CommitMarker) -> Vec<u8> {
    encode(marker)
}

pub fn decode_marker(bytes: &[u8]) -> Result<CommitMarker, CodecError> {
    decode(bytes)
}

/// `len(world_id) as u16 BE, world_id, run_id`: unambiguous whatever the ids contain.
pub fn encode_key(run: &RunKey) -> Vec<u8> {
    let world = run.world_id.as_bytes();
    let len = u16::try_from(world.len()).expect("world_id is bounded by ID_BYTES_MAX");
    let mut out = Vec::with_capacity(2 + world.len() + run.run_id.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(world);
    out.extend_from_slice(run.run_id.as_bytes());
    out
}

pub fn decode_key(bytes: &[u8]) -> Result<RunKey, CodecError> {
    let (len, rest) = bytes.split_first_chunk::<2>().ok_or(CodecError::BadKey)?;
    let len = u16::from_be_bytes(*len) as usize;
    if rest.len() < len || is_task_key(bytes) {
        return Err(CodecError::BadKey);
    }
    let world = std::str::from_utf8(&rest[..len]).map_err(|_| CodecError::BadKey)?;
    let run = std::str::from_utf8(&rest[len..]).map_err(|_| CodecError::BadKey)?;
    Ok(RunKey::new(world, run))
}
