//! `ackwatch-state`: where a task's run state lives between records and across processes.
//!
//! Like Kafka Streams' state stores: each task has a local RocksDB store ([`store`]) holding the
//! engine's `RunState`s and `TaskMeta`, encoded with bincode behind a format-version byte
//! ([`codec`]); every commit's changes go to the store as one batch, and to a compacted changelog
//! topic under the same keys; a checkpoint file ([`checkpoint`]) records the changelog offset the
//! store reflects, so a restore reads only what is missing.
//!
//! This crate does no Kafka I/O: the runtime produces and consumes the changelog and hands
//! records here. It does file I/O (RocksDB, the checkpoint), never network I/O.

pub mod checkpoint;
pub mod codec;
mod memory;
pub mod store;

pub use codec::CommitMarker;
pub use memory::rocksdb_memtable_bytes;
pub use store::{encode_changes, Contents, Opened, Record, StoreLocked, StoreOptions, TaskStore};
