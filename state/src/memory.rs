//! RocksDB memory shared by every store of the process: one block cache and one write buffer
//! manager that charges the memtables to it. Per-store caches and memtables made an instance's
//! RocksDB memory grow with the partitions it owns (32 MiB a store); shared, it is bounded by
//! `StoreOptions::block_cache_bytes` however many it owns (Kafka Streams' bounded-memory config).
//!
//! The first store opened fixes the sizes; every later one shares them.

use std::sync::OnceLock;

use rocksdb::{Cache, WriteBufferManager};

use crate::store::StoreOptions;

pub(crate) struct Shared {
    pub cache: Cache,
    pub write_buffers: WriteBufferManager,
}

// SAFETY: RocksDB's LRU cache and write buffer manager are thread-safe C++ objects, made to be
// shared by DB instances and their background threads (each DB holds its own reference to
// them). rust-rocksdb 0.23 marks the cache handle `Send` only and the write buffer manager
// neither; ackwatch only hands them to `Options` when opening a store and reads their usage.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

static SHARED: OnceLock<Shared> = OnceLock::new();

pub(crate) fn shared(options: &StoreOptions) -> &'static Shared {
    SHARED.get_or_init(|| {
        let cache = Cache::new_lru_cache(options.block_cache_bytes);
        // Not stalling writers: a commit's batch must not wait for another store's flush.
        let write_buffers = WriteBufferManager::new_write_buffer_manager_with_cache(
            options.write_buffers_total_bytes,
            false,
            cache.clone(),
        );
        Shared {
            cache,
            write_buffers,
        }
    })
}

/// Bytes the shared block cache holds (blocks and the memtables charged to it), 0 before the
/// first store opens.
pub fn rocksdb_memory_bytes() -> usize {
    SHARED.get().map_or(0, |s| s.cache.get_usage())
}

/// Bytes of all stores' memtables.
pub fn rocksdb_memtable_bytes() -> usize {
    SHARED.get().map_or(0, |s| s.write_buffers.get_usage())
}
