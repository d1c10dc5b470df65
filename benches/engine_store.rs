//! Engine plus store, one core: the engine bench's traffic, with every 100 ms (wall clock) a
//! commit that encodes the changed runs once and writes them to RocksDB as one synced batch.
//! The changelog producer is not included (it runs on librdkafka's threads). `cargo bench --bench engine_store`.

use std::time::{Duration, Instant};

use ackwatch::sim::{generate, OwnedRecord, TrafficSpec};
use ackwatch_state::{encode_changes, StoreOptions, TaskStore};
use ackwatch_topology::{Policy, Task};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

#[global_allocator]
static GLOBAL: ackwatch::Allocator = mimalloc::MiMalloc;

const COMMIT_INTERVAL: Duration = Duration::from_millis(100);

fn engine_store(c: &mut Criterion) {
    let records = generate(&TrafficSpec {
        records: 400_000,
        ..TrafficSpec::default()
    });
    let raw: Vec<OwnedRecord> = records.iter().map(OwnedRecord::from_kcat).collect();
    let dir = tempfile::tempdir().unwrap();
    let mut iteration = 0;

    let mut group = c.benchmark_group("engine+store");
    group.throughput(Throughput::Elements(raw.len() as u64));
    group.sample_size(10);
    group.bench_function("decode+process+commit every 100 ms, 10k open runs", |b| {
        b.iter(|| {
            iteration += 1;
            let (store, _) = TaskStore::open(
                dir.path(),
                &format!("bench-{iteration}"),
                0,
                &StoreOptions::default(),
            )
            .unwrap();
            let mut task = Task::new(Policy::default());
            let mut out = Vec::with_capacity(64);
            let mut last_commit = Instant::now();
            let mut commits = 0;
            for (i, record) in raw.iter().enumerate() {
                task.process(&record.as_raw(), &mut out);
                out.clear();
                if i % 1024 == 0 && last_commit.elapsed() >= COMMIT_INTERVAL {
                    let (changes, meta) = task.take_changes();
                    let batch = encode_changes(
                        changes.iter().map(|(k, v)| (k, *v)),
                        meta.as_ref(),
                        &ackwatch_state::CommitMarker {
                            input_next: ackwatch_topology::PerSide::both(0),
                        },
                    );
                    store.commit_records(&batch, Some(record.offset)).unwrap();
                    last_commit = Instant::now();
                    commits += 1;
                }
            }
            let (changes, meta) = task.take_changes();
            store
                .commit_records(
                    &encode_changes(
                        changes.iter().map(|(k, v)| (k, *v)),
                        meta.as_ref(),
                        &ackwatch_state::CommitMarker {
                            input_next: ackwatch_topology::PerSide::both(0),
                        },
                    ),
                    None,
                )
                .unwrap();
            assert!(commits > 0);
            task
        })
    });
    group.finish();
}

criterion_group!(benches, engine_store);
criterion_main!(benches);
