//! Crashes in the middle of a commit, against the real broker (issue #4): `ackwatch run` kills
//! itself with SIGKILL at a random point of its commit protocol (`ACKWATCH_CRASH_AT`), several
//! times while input flows. After each crash, every partition's store is restored from the
//! changelog alone into an empty directory, and must equal — run by run, and the task meta —
//! the state the engine has after exactly the input the restored commit marker says it reflects.
//!
//! Event times lie 20 to 40 minutes behind the wall clock and the processor runs with
//! `lateness_ms` of an hour, so its wall-clock stream time (the wall clock minus `lateness_ms`)
//! never passes them: the state depends on the input alone, and the reference is the engine fed
//! that input prefix. (Event times ahead of the wall clock would be clamped to it live.)

mod support;

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use ackwatch::audit::kcat::KcatRecord;
use ackwatch::sim::OwnedRecord;
use ackwatch_state::{StoreOptions, TaskStore};
use ackwatch_topology::partition_group::Buffered;
use ackwatch_topology::stream_task::{Step, StreamTask};
use ackwatch_topology::{PerSide, Policy, RunKey, RunState, TaskMeta};
use support::facts::{now_ms, runtime, traffic};
use support::{LiveTopics, Processor};

const PARTITIONS: i32 = 2;
const CRASHES: usize = 5;
const CRASH_POINTS: [&str; 5] = [
    "start",
    "changelog_sent",
    "changelog_acknowledged",
    "store_written",
    "offsets_committed",
];

/// The engine's state after the records of partition `p` before `input_next` (per side), in
/// the order the live task processes them (record timestamp; the task's partition group).
fn reference(
    records: &[(i32, OwnedRecord)],
    partition: i32,
    input_next: PerSide<i64>,
) -> (Vec<(RunKey, RunState)>, TaskMeta) {
    let mut task = StreamTask::bounded(partition, Policy::default());
    for (_, r) in records.iter().filter(|(p, _)| *p == partition) {
        if r.offset < input_next[r.side] {
            let record = Buffered {
                offset: r.offset,
                timestamp_ms: Some(r.timestamp_ms),
                key: Some(r.key.clone().into()),
                value: Some(r.value.clone().into()),
            };
            task.push(r.side, record);
        }
    }
    let mut out = Vec::new();
    while let Step::Processed { .. } = task.step(0, |_| true, None, &mut out) {
        out.clear();
    }
    let engine = &task.engine;
    (
        sorted(engine.runs().map(|(k, v)| (k.clone(), v.clone()))),
        engine.meta(),
    )
}

fn sorted(runs: impl IntoIterator<Item = (RunKey, RunState)>) -> Vec<(RunKey, RunState)> {
    let mut v: Vec<_> = runs.into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Input records with the partition they go to.
struct Input {
    kcat: Vec<KcatRecord>,
    owned: Vec<(i32, OwnedRecord)>,
}

fn input() -> Input {
    let start = now_ms() - 40 * 60_000;
    let kcat = traffic(48_000, PARTITIONS, 11, start, "world_");
    let span = kcat.last().unwrap().ts.unwrap() - start;
    assert!(
        span < 20 * 60_000,
        "the traffic spans {span} ms; it must stay more than lateness_ms behind the wall clock's \
         end of the test"
    );
    let owned = kcat
        .iter()
        .map(|r| (r.partition, OwnedRecord::from_kcat(r)))
        .collect();
    Input { kcat, owned }
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

#[test]
fn killed_mid_commit_the_restored_state_is_the_uninterrupted_state_at_its_input_offset() {
    killed_mid_commit("at_least_once");
}

/// The same under exactly_once_v2: the changelog is transactional and restored read_committed.
#[test]
fn killed_mid_commit_exactly_once_v2() {
    killed_mid_commit("exactly_once_v2");
}

fn killed_mid_commit(guarantee: &str) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let topics = rt.block_on(LiveTopics::create("crash", PARTITIONS));
    let input = input();
    // Produced in chunks while the processor runs, so crashes land in commits with work in them
    // (an idle commit writes no changelog record, so `changelog_sent` needs input to pass). The
    // input lasts longer than the crashes take (72 s; five crashes took 30 s here, 60 s on a slow
    // run); production stops once they are done.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producing = {
        let (kcat, topics, stop) = (input.kcat.clone(), topics.clone(), stop.clone());
        std::thread::spawn(move || {
            let rt = runtime();
            for chunk in kcat.chunks(1_000) {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                rt.block_on(support::produce_kcat(chunk, &topics));
                std::thread::sleep(Duration::from_millis(1_500));
            }
        })
    };
    let app = support::unique("app-crash");
    let (config, http) = support::live_config(
        dir.path(),
        &topics,
        &app,
        "i1",
        guarantee,
        // A restarted instance takes its partitions back at once, so crashes land mid-stream.
        // An hour of lateness keeps wall-clock stream time behind every event time.
        "static_membership = true\nlateness_ms = 3600000",
    );
    let changelog = ackwatch::runtime::changelog::topic_name(&app);

    let mut seed = std::env::var("ACKWATCH_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| now_ms() as u64)
        | 1;
    eprintln!("crash points seed: {seed} (set ACKWATCH_TEST_SEED to replay)");
    let mut compared_runs = 0;
    for crash in 0..CRASHES {
        let point = CRASH_POINTS[(xorshift(&mut seed) % 5) as usize];
        let nth = 1 + xorshift(&mut seed) % 6;
        let crash_at = format!("{point}:{nth}");
        let mut processor =
            Processor::start_with_env(&config, &http, &[("ACKWATCH_CRASH_AT", &crash_at)]);
        let started = Instant::now();
        let status = loop {
            if let Some(status) = processor.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "no crash at {crash_at} within 90 s:\n{}",
                processor.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let logs = processor.log_text();
        assert_eq!(
            status.signal(),
            Some(9),
            "crash {crash}: ackwatch should have killed itself at {point}:{nth}, got {status}\n{logs}"
        );

        for partition in 0..PARTITIONS {
            let restore_dir = tempfile::tempdir().unwrap();
            let (store, _) = TaskStore::open(
                restore_dir.path(),
                &app,
                partition,
                &StoreOptions::default(),
            )
            .unwrap();
            let config = support::client_config();
            ackwatch::runtime::changelog::restore(&config, &changelog, partition, &store).unwrap();
            let restored = store.load().unwrap();
            let input_next = restored.marker.map_or(PerSide::both(0), |m| m.input_next);
            let (runs, meta) = reference(&input.owned, partition, input_next);
            assert_eq!(
                sorted(restored.runs),
                runs,
                "crash {crash} at {point}:{nth}, partition {partition}: restored runs differ from \
                 the engine's after input {input_next:?}\n{logs}"
            );
            if input_next != PerSide::both(0) {
                assert_eq!(
                    restored.meta.map(|m| (m.first_record_ms, m.stream_time)),
                    Some((meta.first_record_ms, meta.stream_time)),
                    "crash {crash}, partition {partition}: task meta"
                );
            }
            eprintln!(
                "crash {crash} at {point}:{nth}, partition {partition}: restored state after \
                 input {input_next:?} equals the reference ({} runs)",
                runs.len()
            );
            compared_runs += runs.len();
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    producing.join().unwrap();
    assert!(
        compared_runs > 0,
        "the crashes happened before any commit held runs; nothing was compared"
    );
}
