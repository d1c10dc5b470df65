//! Restore throughput against a real broker: writes RECORDS run states (as a task's commits
//! would) to a fresh changelog partition, then restores them into an empty store and reports
//! changelog records/s. `scripts/bench-restore.sh` starts a broker and runs this.
//!   ACKWATCH_TEST_BOOTSTRAP=host:port cargo run --release --example bench_restore -- [RECORDS]

use std::time::Instant;

use ackwatch::runtime::changelog::{self, ChangelogWriter};
use ackwatch_state::{codec, Record, StoreOptions, TaskStore};
use ackwatch_topology::{RunKey, RunState};
use rdkafka::config::ClientConfig;

#[global_allocator]
static GLOBAL: ackwatch::Allocator = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let records: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let bootstrap = std::env::var("ACKWATCH_TEST_BOOTSTRAP")
        .map_err(|_| anyhow::anyhow!("set ACKWATCH_TEST_BOOTSTRAP=host:port"))?;
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &bootstrap);
    let app = format!("bench-{}", std::process::id());
    let topic = changelog::topic_name(&app);
    changelog::ensure_topic(&config, &topic, 1, 1).await?;

    // A realistic run state: 8 sequences, acked, as a finished apply run leaves it.
    let mut state = RunState::new(1_772_442_000_000);
    for seq in 1..=8u64 {
        let s = state.sequences.get_or_default(seq);
        s.activation = Some(ackwatch_topology::run::ActivationSeen {
            event_ms: 1_772_442_000_000 + seq as i64 * 200,
            phase: ackwatch_topology::Phase::Freeze,
            etag: Some(format!("act:world:s{seq}:long:{}", 100 + seq).into()),
        });
        s.ack_ms = Some(1_772_442_000_050 + seq as i64 * 200);
    }
    let value = codec::encode_run(&state);
    let writer = ChangelogWriter::new(&config, &topic)?;
    let produce_started = Instant::now();
    for chunk_start in (0..records).step_by(50_000) {
        let chunk: Vec<Record> = (chunk_start..(chunk_start + 50_000).min(records))
            .map(|i| {
                (
                    codec::encode_key(&RunKey::new(
                        &format!("world_{}", i % 10_000),
                        &format!("run{i}"),
                    )),
                    Some(value.clone()),
                )
            })
            .collect();
        writer.write(0, &chunk).await?;
    }
    // The commit marker that closes them (a restore applies only complete commits).
    let marker = ackwatch_state::CommitMarker {
        input_next: ackwatch_topology::PerSide::both(records as i64),
    };
    writer
        .write(
            0,
            &[(
                codec::COMMIT_KEY.to_vec(),
                Some(codec::encode_marker(&marker)),
            )],
        )
        .await?;
    eprintln!(
        "produced {records} changelog records ({} B values) in {:.1?}",
        value.len(),
        produce_started.elapsed()
    );

    let dir = tempfile::tempdir()?;
    let (store, _) = TaskStore::open(dir.path(), &app, 0, &StoreOptions::default())?;
    let stats = changelog::restore(&config, &topic, 0, &store)?;
    anyhow::ensure!(
        stats.unfinished_keys.is_empty() && stats.records == records as u64 + 1,
        "restored {} records, {} left out as unfinished",
        stats.records,
        stats.unfinished_keys.len()
    );
    println!(
        "restore: {} records, {} MiB in {:.2?}: {:.0} records/s",
        stats.records,
        stats.bytes >> 20,
        stats.duration,
        stats.records as f64 / stats.duration.as_secs_f64()
    );
    Ok(())
}
