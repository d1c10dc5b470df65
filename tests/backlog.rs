//! Catching up behind a backlog of 1,000,000 records after a restart: the merge by record
//! timestamp and `max_task_idle_ms` keep the two topics in step, so catching up raises exactly
//! the findings the records justify (the audit's over the same records).

mod support;

use std::time::Duration;

use support::facts::*;
use support::{LiveTopics, Processor};

const BACKLOG_RECORDS: usize = 1_000_000;

#[test]
fn catching_up_a_million_record_backlog_invents_nothing() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let topics = rt.block_on(LiveTopics::create("backlog", 4));
    let app = support::unique("app-backlog");
    let (config, http) = support::live_config(dir.path(), &topics, &app, "i1", "at_least_once", "");

    // Event times an hour ago: the backlog is old, as after an outage of the processor.
    let start_ms = now_ms() - 3_600_000;
    let spec = |records, seed, start_ms, world_prefix| ackwatch::sim::TrafficSpec {
        concurrent_runs: 10_000,
        records,
        fault_percent: 5,
        partitions: 4,
        seed,
        start_ms,
        world_prefix,
    };
    let first = ackwatch::sim::generate(&spec(20_000, 1, start_ms, "world_"));
    rt.block_on(support::produce_kcat(&first, &topics));
    let mut processor = Processor::start(&config, &http);
    processor.wait_ready(Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        processor.terminate(Duration::from_secs(30)).success(),
        "{}",
        processor.log_text()
    );

    // The backlog continues the same runs where the first part stopped.
    let first_end = first.iter().filter_map(|r| r.ts).max().unwrap();
    let backlog = ackwatch::sim::generate(&spec(BACKLOG_RECORDS, 2, first_end + 1000, "backlog_"));
    rt.block_on(support::produce_kcat(&backlog, &topics));
    let mut processor = Processor::start(&config, &http);
    processor.wait_ready(Duration::from_secs(60));
    let mut all = first;
    all.extend(backlog);
    assert_same_facts(&topics, &all, dir.path(), false, &processor.log_text());
    let (_, metrics) = support::http_get(&http, "/metrics").unwrap();
    let processed: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("ackwatch_records_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(
        processed >= BACKLOG_RECORDS as u64,
        "the restarted instance read the backlog: {processed}"
    );
    assert!(
        processor.terminate(Duration::from_secs(30)).success(),
        "{}",
        processor.log_text()
    );
}
