//! Standby replicas against the real broker: two instances with `num_standby_replicas = 1`
//! each keep a warm copy of the other's partition; when one is killed with SIGKILL, the other
//! takes its partition over restoring only the changelog's tail from the standby copy's
//! checkpoint, not the whole changelog.

mod support;

use std::time::{Duration, Instant};

use support::facts::*;
use support::{LiveTopics, Processor};

/// The `task restored` log lines of a processor: (partition, from_offset, to_offset, records).
fn restores(processor: &Processor) -> Vec<(i64, i64, i64, i64)> {
    processor
        .log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "task restored")
        .map(|v| {
            let n = |k: &str| v[k].as_i64().unwrap_or(-1);
            (n("partition"), n("from_offset"), n("to_offset"), n("records"))
        })
        .collect()
}

#[test]
fn a_standby_takes_over_restoring_only_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let topics = rt.block_on(LiveTopics::create("standby", 2));
    let app = support::unique("app-standby");
    let start = |instance: &str| {
        support::start_live(dir.path(), &topics, &app, instance, "at_least_once", "num_standby_replicas = 1")
    };
    let mut first = start("i1");
    first.wait_ready(Duration::from_secs(60));
    let mut second = start("i2");
    second.wait_ready(Duration::from_secs(60));
    wait_until("each instance owns one partition", Duration::from_secs(60), || {
        support::owned_partitions(&first).len() == 1 && support::owned_partitions(&second).len() == 1
    });
    let taken = support::owned_partitions(&second)[0];

    produce_paced(traffic(4000, 2, 17, now_ms() + 500, "standby_"), topics.clone())
        .join()
        .unwrap();
    // The first instance's copy of the second's partition follows its changelog: wait until it
    // has applied records and stops growing (the traffic has ended, its commits too).
    let standby_records = || support::metric(&first.http, "ackwatch_standby_records_total").unwrap_or(0.0);
    let mut last = (standby_records(), Instant::now());
    wait_until("the standby copy settles", Duration::from_secs(60), || {
        let now = standby_records();
        if now != last.0 {
            last = (now, Instant::now());
        }
        now > 0.0 && last.1.elapsed() > Duration::from_secs(3)
    });
    assert_eq!(support::metric(&first.http, "ackwatch_standby_partitions"), Some(1.0));
    let restored_before = restores(&first).len();

    second.kill9();
    wait_until("the first instance owns both partitions", Duration::from_secs(60), || {
        support::owned_partitions(&first).len() == 2
    });
    let takeover: Vec<_> = restores(&first)[restored_before..]
        .iter()
        .copied()
        .filter(|r| r.0 == taken)
        .collect();
    let &[(_, from_offset, to_offset, records)] = takeover.as_slice() else {
        panic!("one restore of partition {taken} expected after the kill: {takeover:?}\n{}", first.log_text());
    };
    // The changelog of the taken partition holds hundreds of records, all written after the
    // second instance took the partition (so no checkpoint of the first instance's own from
    // before covers them); the takeover read from the standby copy's checkpoint, at most the
    // last commits after it.
    assert!(to_offset > 100, "the changelog was written: {takeover:?}");
    assert!(from_offset > 0 && records * 10 < to_offset, "more than the tail restored: {takeover:?}");
    let status = first.terminate(Duration::from_secs(30));
    assert!(status.success(), "{status}:\n{}", first.log_text());
}
