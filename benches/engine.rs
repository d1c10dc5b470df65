//! Engine with decoding, on one core: CloudEvents records as the producers write them, 10,000
//! concurrently open runs, 5% faults. `cargo bench --bench engine`.

use ackwatch::sim::{generate, OwnedRecord, TrafficSpec};
use ackwatch_topology::{Policy, Task};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// The binary's allocator, so the figure is the binary's.
#[global_allocator]
static GLOBAL: ackwatch::Allocator = mimalloc::MiMalloc;

fn engine(c: &mut Criterion) {
    let records = generate(&TrafficSpec {
        records: 400_000,
        ..TrafficSpec::default()
    });
    let raw: Vec<OwnedRecord> = records.iter().map(OwnedRecord::from_kcat).collect();
    let bytes: usize = raw.iter().map(|r| r.value.len()).sum();
    eprintln!(
        "{} records, {} bytes of values, mean {} B",
        raw.len(),
        bytes,
        bytes / raw.len()
    );

    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(raw.len() as u64));
    group.sample_size(10);
    group.bench_function("decode+process, 10k open runs, 5% faults", |b| {
        b.iter(|| {
            let mut task = Task::new(Policy::default());
            let mut out = Vec::with_capacity(64);
            for record in &raw {
                task.process(&record.as_raw(), &mut out);
                out.clear();
            }
            assert!(task.run_count() >= 10_000);
            task
        })
    });
    group.finish();
}

criterion_group!(benches, engine);
criterion_main!(benches);
