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

    let spec =
        |records, concurrent_runs, seed, start_ms, world_prefix| ackwatch::sim::TrafficSpec {
            concurrent_runs,
            records,
            fault_percent: 5,
            partitions: 4,
            seed,
            start_ms,
            world_prefix,
        };
    let first = ackwatch::sim::generate(&spec(20_000, 10_000, 1, now_ms() - 60_000, "first_"));
    rt.block_on(support::produce_kcat(&first, &topics));
    let mut processor = Processor::start(&config, &http);
    processor.wait_ready(Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        processor.terminate(Duration::from_secs(30)).success(),
        "{}",
        processor.log_text()
    );

    // While the processor is down, a million records pile up. Their event times are when they
    // were produced, i.e. after the processor stopped (records produced long after their event
    // time may be judged late live, semantics §4; that is not what this test is about). The traffic
    // is produced faster than its event times pass, so they run a few seconds ahead.
    let backlog = ackwatch::sim::generate(&spec(
        BACKLOG_RECORDS,
        50_000,
        2,
        now_ms() + 1000,
        "backlog_",
    ));
    let last_ms = backlog.iter().filter_map(|r| r.ts).max().unwrap();
    rt.block_on(support::produce_kcat(&backlog, &topics));
    let mut processor = Processor::start(&config, &http);
    processor.wait_ready(Duration::from_secs(60));
    // Every deadline of the backlog passes by the wall clock (late ACKs come up to 7 s late).
    let settle = last_ms + 12_000 - now_ms();
    if settle > 0 {
        std::thread::sleep(Duration::from_millis(settle as u64));
    }
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
