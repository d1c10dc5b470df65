//! The stores of one process share one RocksDB memory budget (`state/src/memory.rs`): however
//! many partitions an instance owns, its memtables stay within `write_buffers_total_bytes`.
//! Its own process, so the shared budget is this test's (the first store opened fixes it).

use std::time::{Duration, Instant};

use ackwatch_state::{rocksdb_memtable_bytes, Record, StoreOptions, TaskStore};

#[test]
fn four_stores_keep_their_memtables_within_the_shared_budget() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions::default();
    let stores: Vec<TaskStore> = (0..4)
        .map(|p| TaskStore::open(dir.path(), "app", p, &options).unwrap().0)
        .collect();
    // 7 MB a store: less than one memtable of its own (8 MiB), so without the shared budget
    // nothing would flush and the four would hold 28 MB of memtables.
    let value = vec![7u8; 1000];
    let mut most = 0;
    for store in &stores {
        for batch in 0..70 {
            let records: Vec<Record> = (0..100)
                .map(|i| (format!("k{batch:03}-{i:03}").into_bytes(), Some(value.clone())))
                .collect();
            store.commit_records(&records, None).unwrap();
            most = most.max(rocksdb_memtable_bytes());
        }
    }
    assert!(most > 4 << 20, "the shared manager counts every store's memtables: {most}");
    let bound = options.write_buffers_total_bytes + (4 << 20);
    let started = Instant::now();
    while rocksdb_memtable_bytes() > bound {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "memtables {} bytes, shared budget {}",
            rocksdb_memtable_bytes(),
            options.write_buffers_total_bytes
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
