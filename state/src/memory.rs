//! RocksDB memory shared by every store of the process: one write buffer manager, so the
//! memtables of all stores together stay within `StoreOptions::write_buffers_total_bytes`
//! however many partitions an instance owns (per store they were up to 2 × 8 MiB each).
//!
//! The block cache stays per store, on purpose: a cache shared by the process outlives a
//! store's close, so a store reopened in the same process (a partition revoked and assigned
//! back) would be served blocks of its files from before they were damaged, and the load that
//! must find a corrupted store and restore it from the changelog would not see the damage
//! (`tests/changelog.rs`, `SstCorrupted`).
//!
//! The first store opened fixes the budget; every later one shares it.

use std::sync::OnceLock;

use rocksdb::WriteBufferManager;

use crate::store::StoreOptions;

pub(crate) struct Shared {
    pub write_buffers: WriteBufferManager,
}

// SAFETY: RocksDB's write buffer manager is a thread-safe C++ object, made to be shared by DB
// instances and their background threads (each DB holds its own reference to it). rust-rocksdb
// 0.23 marks it neither `Send` nor `Sync`; ackwatch only hands it to `Options` when opening a
// store and reads its usage.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

static SHARED: OnceLock<Shared> = OnceLock::new();

pub(crate) fn shared(options: &StoreOptions) -> &'static Shared {
    SHARED.get_or_init(|| Shared {
        // Not stalling writers: a commit's batch must not wait for another store's flush.
        write_buffers: WriteBufferManager::new_write_buffer_manager(
            options.write_buffers_total_bytes,
            false,
        ),
    })
}

/// Bytes of all stores' memtables (0 before the first store opens).
pub fn rocksdb_memtable_bytes() -> usize {
    SHARED.get().map_or(0, |s| s.write_buffers.get_usage())
}
