//! Memory with 1,000,000 runs in the store: feeds that many apply runs (2 sequences each, ACKed)
//! through the engine with the RocksDB store ackwatch ships, committing every 100 ms of wall
//! clock and evicting settled runs, then reports the process's peak and current RSS.
//!   cargo run --release --example bench_rss -- [RUNS]

use std::time::Instant;

use ackwatch_state::{encode_changes, StoreOptions, TaskStore};
use ackwatch_topology::{Outcome, Policy, RawRecord, Side, Task};

#[global_allocator]
static GLOBAL: ackwatch::Allocator = mimalloc::MiMalloc;

fn status(field: &str) -> String {
    let text = std::fs::read_to_string("/proc/self/status").unwrap();
    text.lines()
        .find(|l| l.starts_with(field))
        .unwrap_or("?")
        .split_whitespace()
        .skip(1)
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir()?;
    let (store, _) = TaskStore::open(dir.path(), "bench-rss", 0, &StoreOptions::default())?;
    let mut task = Task::new(Policy::default());
    let mut out = Vec::new();
    let started = Instant::now();
    let mut last_commit = Instant::now();
    let t0 = 1_772_442_000_000i64;
    let commit = |task: &mut Task| -> anyhow::Result<()> {
        let (changes, meta) = task.take_changes();
        let records = encode_changes(
            changes.iter().map(|(k, v)| (k, *v)),
            meta.as_ref(),
            &ackwatch_state::CommitMarker {
                input_next: ackwatch_topology::PerSide::both(0),
            },
        );
        let keys: Vec<_> = changes.into_iter().map(|(k, _)| k).collect();
        store.commit_records(&records, None)?;
        task.evict_settled(keys);
        Ok(())
    };
    for i in 0..runs {
        let world = format!("world_{}", i % 10_000);
        let t = t0 + (i as i64) * 2;
        for seq in 1..=2u64 {
            let ts = ackwatch_topology::time::format_rfc3339_ms(t);
            let act = format!(
                r#"{{"type":"ActivationUpdated","version":1,"world_id":"{world}","run_id":"run{i}","sequence":{seq},"requires_ack":true,"phase":"freeze","etag":"act:{world}:s{seq}:long:{i}","ts":"{ts}"}}"#
            );
            let ack = format!(
                r#"{{"type":"ActivationAck","version":1,"world_id":"{world}","run_id":"run{i}","sequence":{seq},"ack_ts":"{ts}"}}"#
            );
            for (source, value) in [(Side::Activation, act), (Side::Ack, ack)] {
                let record = RawRecord {
                    side: source,
                    partition: 0,
                    offset: 0,
                    timestamp_ms: Some(t),
                    key: Some(world.as_bytes()),
                    value: Some(value.as_bytes()),
                };
                let outcome = task.process(&record, &mut out);
                assert!(!matches!(outcome, Outcome::NeedsRun(_)), "runs are new");
                out.clear();
            }
        }
        if last_commit.elapsed().as_millis() >= 100 {
            commit(&mut task)?;
            last_commit = Instant::now();
        }
    }
    commit(&mut task)?;
    println!(
        "{} runs ({} in memory, {} evicted to the store) in {:.1?}: VmHWM {} (peak RSS), VmRSS {}",
        task.run_count(),
        task.resident_count(),
        task.run_count() - task.resident_count(),
        started.elapsed(),
        status("VmHWM:"),
        status("VmRSS:")
    );
    Ok(())
}
