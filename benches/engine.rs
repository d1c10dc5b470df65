//! Engine with decoding, on one core: CloudEvents records as the producers write them, 10,000
//! concurrently open runs, 5% faults. `cargo bench --bench engine`.

use ackwatch::sim::{generate, TrafficSpec};
use ackwatch_topology::{Policy, RawRecord, Source, Task};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// The binary's allocator, so the figure is the binary's.
#[global_allocator]
static GLOBAL: ackwatch::Allocator = mimalloc::MiMalloc;

fn engine(c: &mut Criterion) {
    let records = generate(&TrafficSpec { records: 400_000, ..TrafficSpec::default() });
    let raw: Vec<(Source, i64, i64, Vec<u8>, Vec<u8>)> = records
        .iter()
        .map(|r| {
            let source = if r.topic == "activation" { Source::Activation } else { Source::Ack };
            (source, r.offset, r.ts.unwrap(), r.key.clone().unwrap().into_bytes(), r.payload.clone().unwrap().into_bytes())
        })
        .collect();
    let bytes: usize = raw.iter().map(|r| r.4.len()).sum();
    eprintln!("{} records, {} bytes of values, mean {} B", raw.len(), bytes, bytes / raw.len());

    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(raw.len() as u64));
    group.sample_size(10);
    group.bench_function("decode+process, 10k open runs, 5% faults", |b| {
        b.iter(|| {
            let mut task = Task::new(Policy::default());
            let mut out = Vec::with_capacity(64);
            for (source, offset, ts, key, value) in &raw {
                let record = RawRecord { source: *source, partition: 0, offset: *offset, timestamp_ms: Some(*ts), key: Some(key), value: Some(value) };
                task.process(&record, &mut out);
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
