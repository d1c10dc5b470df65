//! A partition that cannot be read is never silent: another producer leaves a transaction open
//! on one input partition (read_committed readers stop at it, as a crashed transactional
//! producer with a long `transaction.timeout.ms` leaves it), records keep arriving after it.
//! ackwatch reports the partition stalled in its metric, in `/healthz` and in one log line,
//! leaves the other partition alone, and reports the end of the stall when the transaction
//! is aborted.

mod support;

use std::time::{Duration, Instant};

use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use support::facts::*;
use support::{LiveTopics, Processor};

/// `STALL_TIMEOUT` (src/runtime/stalls.rs) plus the metrics refresh (5 s) and some slack.
const REPORT_WITHIN: Duration = Duration::from_secs(50);

fn stalled_gauge(http: &str, topic: &str, partition: i32) -> Option<f64> {
    let (_, text) = support::http_get(http, "/metrics")?;
    let series =
        format!("ackwatch_partition_stalled{{partition=\"{partition}\",topic=\"{topic}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series)?.parse().ok())
}

fn activation(world: &str, seq: u64) -> String {
    format!(
        r#"{{"type":"ActivationUpdated","version":1,"world_id":"{world}","run_id":"r1","requires_ack":true,"sequence":{seq},"phase":"freeze","ts":"{}"}}"#,
        ackwatch_topology::time::format_rfc3339_ms(now_ms())
    )
}

#[test]
fn a_partition_held_by_an_open_transaction_is_reported_stalled_then_progressing() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let topics = rt.block_on(LiveTopics::create("stall", 2));
    let app = support::unique("app-stall");
    let (config, http) = support::live_config(dir.path(), &topics, &app, "i1", "at_least_once", "");
    let mut processor = Processor::start(&config, &http);
    processor.wait_ready(Duration::from_secs(60));

    // The open transaction, then ordinary records behind it on the same partition.
    let stuck: BaseProducer = support::client_config()
        .set("transactional.id", support::unique("stuck-producer"))
        .set("transaction.timeout.ms", "300000")
        .create()
        .unwrap();
    stuck.init_transactions(Duration::from_secs(30)).unwrap();
    stuck.begin_transaction().unwrap();
    let value = activation("w_stuck", 1);
    stuck
        .send(
            BaseRecord::to(&topics.activation)
                .partition(0)
                .key("w_stuck")
                .payload(&value),
        )
        .map_err(|(e, _)| e)
        .unwrap();
    stuck.flush(Duration::from_secs(30)).unwrap();
    for seq in 2..=4 {
        rt.block_on(support::produce_value_to(
            &topics.activation,
            0,
            "w_stuck",
            &activation("w_stuck", seq),
        ));
    }
    rt.block_on(support::produce_value_to(
        &topics.activation,
        1,
        "w_free",
        &activation("w_free", 1),
    ));

    let started = Instant::now();
    while stalled_gauge(&http, &topics.activation, 0) != Some(1.0) {
        assert!(
            started.elapsed() < REPORT_WITHIN,
            "partition 0 not reported stalled within {REPORT_WITHIN:?}:\n{}",
            processor.log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("stall reported {:?} after the records", started.elapsed());
    let (status, body) = support::http_get(&http, "/healthz").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains(&format!("{}[0]", topics.activation)) && body.contains("no progress"),
        "{body}"
    );
    assert!(!body.contains("[1]"), "partition 1 reads fine: {body}");
    assert_ne!(stalled_gauge(&http, &topics.activation, 1), Some(1.0));
    let log = processor.log_text();
    assert_eq!(
        log.matches("input partition stalled").count(),
        1,
        "one log line for the stall:\n{log}"
    );

    stuck.abort_transaction(Duration::from_secs(30)).unwrap();
    wait_for(|| (stalled_gauge(&http, &topics.activation, 0) == Some(0.0)).then_some(()));
    assert_eq!(support::http_get(&http, "/healthz").unwrap().0, 200);
    assert!(processor
        .log_text()
        .contains("input partition progressing again"));
    assert!(processor.terminate(Duration::from_secs(30)).success());
}
