//! Broker outages, each on the test's own broker (not the shared one), so an outage touches no
//! other test; the tests of this binary take turns (`TURN`) and set the bootstrap for the
//! process while they hold it.
//!
//! - a graceful stop of ten seconds: reported in the metrics, survived, nothing invented;
//! - a kill -9 for several session timeouts under both guarantees, with traffic produced
//!   throughout (the Gateways' producers buffer it and deliver when the broker is back): the
//!   processor never exits, processes again within `RESUME_BOUND` of the broker's return, and
//!   emits exactly the facts the audit of the same records emits (exactly_once_v2: each once).

mod support;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use support::facts::*;
use support::{LiveTopics, Processor, Scripted};

/// One broker of a test's own at a time.
static TURN: Mutex<()> = Mutex::new(());

/// The session timeout `support::live_config` gives the processor's consumer.
const SESSION_TIMEOUT: Duration = Duration::from_secs(6);
/// How long after the broker's return ackwatch must process records again (the bound).
const RESUME_BOUND: Duration = Duration::from_secs(10);

/// The sum of every series of the counter `name` (`name{...} value` lines).
fn counter_sum(http: &str, name: &str) -> Option<f64> {
    let (_, text) = support::http_get(http, "/metrics")?;
    let prefix = format!("{name}{{");
    Some(
        text.lines()
            .filter_map(|l| {
                l.strip_prefix(&prefix)?
                    .rsplit_once(' ')?
                    .1
                    .parse::<f64>()
                    .ok()
            })
            .sum(),
    )
}

/// Starts the test's own broker and points the process's tests at it.
fn own_broker(dir: &std::path::Path) -> (Scripted, String) {
    let broker = Scripted {
        script: "kafka-broker.sh",
        dir: dir.join("kafka"),
    };
    let bootstrap = broker.run("start");
    assert!(bootstrap.starts_with("127.0.0.1:"), "{bootstrap}");
    std::env::set_var("ACKWATCH_TEST_BOOTSTRAP", &bootstrap);
    (broker, bootstrap)
}

#[test]
fn broker_outage_is_reported_and_survived() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (broker, bootstrap) = own_broker(dir.path());

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
    let outage = Instant::now();
    wait_for(|| (support::metric(&http, "ackwatch_kafka_all_brokers_down")? == 1.0).then_some(()));
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
        support::metric(&http, "ackwatch_kafka_all_brokers_down"),
        Some(0.0),
        "recovered"
    );
    assert!(
        processor.terminate(Duration::from_secs(30)).success(),
        "{}",
        processor.log_text()
    );
}

/// The broker killed with SIGKILL while paced traffic flows, down for four session timeouts,
/// started again; the traffic's producers deliver what they buffered when it is back.
fn broker_killed_past_the_session_timeout(guarantee: &str) {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (broker, bootstrap) = own_broker(dir.path());
    let exactly_once = guarantee == "exactly_once_v2";

    let rt = runtime();
    let topics = rt.block_on(LiveTopics::create("kill", 2));
    let app = support::unique("app-kill");
    let (config, http) = support::live_config(
        dir.path(),
        &topics,
        &app,
        "i1",
        guarantee,
        "lateness_ms = 2000",
    );
    let config_text = std::fs::read_to_string(&config).unwrap();
    assert!(
        config_text.contains(&format!(
            "\"session.timeout.ms\" = \"{}\"",
            SESSION_TIMEOUT.as_millis()
        )),
        "the session timeout this test outlasts: {config_text}"
    );
    let mut processor = Processor::start(&config, &http);
    processor.wait_ready(Duration::from_secs(60));

    // About 800 records a second for 45 s: 10 s before the kill, 25 s of outage, 10 s after.
    let records = traffic(36_000, 2, 11, now_ms() + 2000, "kill_");
    let producing = produce_paced(records.clone(), topics.clone());
    std::thread::sleep(Duration::from_secs(12));

    broker.run("kill");
    let outage = Instant::now();
    wait_for(|| (support::metric(&http, "ackwatch_kafka_all_brokers_down")? == 1.0).then_some(()));
    std::thread::sleep((SESSION_TIMEOUT * 4).saturating_sub(outage.elapsed()));
    assert!(
        processor.child.try_wait().unwrap().is_none(),
        "ackwatch exited during the outage:\n{}",
        processor.log_text()
    );
    let processed_before = counter_sum(&http, "ackwatch_records_total").unwrap();
    assert_eq!(broker.run("restart"), bootstrap);
    let back = Instant::now();
    let resumed = loop {
        let processed = counter_sum(&http, "ackwatch_records_total").unwrap_or(processed_before);
        if processed > processed_before {
            break back.elapsed();
        }
        assert!(
            back.elapsed() < RESUME_BOUND,
            "no record processed within {RESUME_BOUND:?} of the broker's return:\n{}",
            processor.log_text()
        );
        assert!(
            processor.child.try_wait().unwrap().is_none(),
            "ackwatch exited after the outage:\n{}",
            processor.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!(
        "{guarantee}: outage of {:?} (session timeout {SESSION_TIMEOUT:?}); first record \
         processed {resumed:?} after the broker's return",
        back - outage
    );
    producing.join().unwrap();
    assert_same_facts(
        &topics,
        &records,
        dir.path(),
        exactly_once,
        &processor.log_text(),
    );
    // The hard version: the client's session expired in the outage (the assignment was lost).
    let lost = support::metric(&http, "ackwatch_assignments_lost_total").unwrap();
    assert!(
        lost >= 1.0,
        "the outage outlasted the session: {}",
        processor.log_text()
    );
    for name in [
        "ackwatch_transactions_aborted_total",
        "ackwatch_producers_replaced_total",
        "ackwatch_task_starts_deferred_total",
    ] {
        eprintln!("{guarantee}: {name} {:?}", support::metric(&http, name));
    }
    assert!(
        processor.terminate(Duration::from_secs(30)).success(),
        "{}",
        processor.log_text()
    );
}

#[test]
fn broker_killed_past_the_session_timeout_at_least_once() {
    broker_killed_past_the_session_timeout("at_least_once");
}

#[test]
fn broker_killed_past_the_session_timeout_exactly_once_v2() {
    broker_killed_past_the_session_timeout("exactly_once_v2");
}
