//! A broker outage: the processor's own broker is stopped for ten seconds and started again.
//! ackwatch keeps running, reports the outage in its metrics, and catches up without a finding
//! the records do not justify. Its own broker (not the shared one), so the outage touches no
//! other test; the only test in this binary, so it may set the bootstrap for the process.

mod support;

use std::time::Duration;

use support::facts::*;
use support::{LiveTopics, Processor};

fn metric(http: &str, name: &str) -> Option<f64> {
    let (_, text) = support::http_get(http, "/metrics")?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn broker_outage_is_reported_and_survived() {
    let dir = tempfile::tempdir().unwrap();
    let broker = support::Scripted {
        script: "kafka-broker.sh",
        dir: dir.path().join("kafka"),
    };
    let bootstrap = broker.run("start");
    assert!(bootstrap.starts_with("127.0.0.1:"), "{bootstrap}");
    std::env::set_var("ACKWATCH_TEST_BOOTSTRAP", &bootstrap);

    let rt = runtime();
    let topics = rt.block_on(LiveTopics::create("outage", 2));
    let app = support::unique("app-outage");
    let (config, http) = support::live_config(
        dir.path(),
        &topics,
        &app,
        "i1",
        "at_least_once",
        "lateness_ms = 2000",
    );
    let mut processor = Processor::start(&config, &http);
    processor.wait_ready(Duration::from_secs(60));

    let before = traffic(4000, 2, 3, now_ms() + 2000, "before_");
    produce_paced(before.clone(), topics.clone())
        .join()
        .unwrap();
    // Every deadline of the first phase passes (late ACKs come up to 7 s late) before the outage.
    std::thread::sleep(Duration::from_secs(12));

    broker.run("stop");
    let outage = std::time::Instant::now();
    wait_for(|| (metric(&http, "ackwatch_kafka_all_brokers_down")? == 1.0).then_some(()));
    std::thread::sleep(Duration::from_secs(10).saturating_sub(outage.elapsed()));
    assert!(
        processor.child.try_wait().unwrap().is_none(),
        "ackwatch exited during the outage:\n{}",
        processor.log_text()
    );
    assert_eq!(support::http_get(&http, "/healthz").unwrap().0, 200);
    assert_eq!(broker.run("restart"), bootstrap);

    let after = traffic(4000, 2, 4, now_ms() + 2000, "after_");
    produce_paced(after.clone(), topics.clone()).join().unwrap();
    let mut all = before;
    all.extend(after);
    assert_same_facts(&topics, &all, dir.path(), false, &processor.log_text());
    assert_eq!(
        metric(&http, "ackwatch_kafka_all_brokers_down"),
        Some(0.0),
        "recovered"
    );
    assert!(
        processor.terminate(Duration::from_secs(30)).success(),
        "{}",
        processor.log_text()
    );
}
