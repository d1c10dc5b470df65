//! Poison never stops processing, whatever its size (issue: a dead letter larger than the
//! producer accepts killed the processor on every restart). Against the real broker: records the
//! broker accepts with a 600 KB key, and with a 100 KB key and a 920 KB value, are dead-lettered
//! within the size limits with what was cut said in headers; after the dead-letter topic's limit
//! is lowered under a running processor, a dead letter the broker refuses becomes a stub with the
//! reason and origin; and the clean records around them are processed.

mod support;

use std::time::Duration;

use ackwatch::audit::kcat::KcatRecord;
use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use support::facts::*;
use support::{read_topic, LiveTopics, Processor};

fn record(topic: &str, key: String, payload: String, ts: i64) -> KcatRecord {
    KcatRecord {
        topic: topic.into(),
        partition: 0,
        offset: 0,
        tstype: None,
        ts: Some(ts),
        broker: None,
        key: Some(key),
        payload: Some(payload),
        headers: None,
    }
}

fn activation(world: &str, run: &str, seq: u64, ts: i64) -> String {
    let time = ackwatch_topology::time::format_rfc3339_ms(ts);
    format!(
        r#"{{"type":"ActivationUpdated","world_id":"{world}","run_id":"{run}","sequence":{seq},"requires_ack":true,"phase":"freeze","ts":"{time}"}}"#
    )
}

fn ack(world: &str, run: &str, seq: u64, ts: i64) -> String {
    let time = ackwatch_topology::time::format_rfc3339_ms(ts);
    format!(
        r#"{{"type":"ActivationAck","world_id":"{world}","run_id":"{run}","sequence":{seq},"ack_ts":"{time}"}}"#
    )
}

#[test]
fn dead_letters_fit_whatever_the_poison_and_processing_goes_on() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let topics = rt.block_on(LiveTopics::create("dead-letters", 1));
    let t = now_ms() - 60_000;
    let huge_key = "k".repeat(600 * 1024);
    let big_key = "b".repeat(100 * 1024);
    let big_value = format!("{{\"blob\":\"{}\"}}", "v".repeat(920 * 1024));
    let records = vec![
        record(
            "activation",
            huge_key.clone(),
            activation("w1", "r1", 1, t),
            t,
        ),
        record("activation", big_key.clone(), big_value.clone(), t + 1),
        record(
            "activation",
            "w2".into(),
            activation("w2", "r1", 1, t + 2),
            t + 2,
        ),
        record(
            "control.activation.ack",
            "w2".into(),
            ack("w2", "r1", 1, t + 30),
            t + 30,
        ),
    ];
    rt.block_on(support::produce_kcat(&records, &topics));

    let app = support::unique("app-dead-letters");
    let (config, http) = support::live_config(dir.path(), &topics, &app, "i1", "at_least_once", "");
    let mut processor = Processor::start(&config, &http);
    processor.wait_ready(Duration::from_secs(60));
    let dlq = read_topic(&topics.dead_letter, false, 2, QUIET, OUTPUT_TIMEOUT);
    assert_eq!(dlq.len(), 2, "{}", processor.log_text());
    for letter in &dlq {
        let size = letter.key.as_ref().map_or(0, String::len)
            + letter.value.len()
            + letter
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        assert!(size < 1_000_000, "a dead letter of {size} bytes");
        assert!(letter.key.as_ref().unwrap().len() <= 1024);
        assert_eq!(
            letter.header("ackwatch.topic"),
            Some(topics.activation.as_str())
        );
        assert!(letter.header("ackwatch.detail").unwrap().len() <= 1024);
    }
    assert_eq!(dlq[0].header("ackwatch.reason"), Some("key_mismatch"));
    assert_eq!(
        dlq[0].header("ackwatch.original_key_bytes"),
        Some((600 * 1024).to_string().as_str())
    );
    assert_eq!(dlq[1].header("ackwatch.reason"), Some("too_large"));
    assert_eq!(
        dlq[1].header("ackwatch.original_key_bytes"),
        Some((100 * 1024).to_string().as_str())
    );
    assert_eq!(
        dlq[1].header("ackwatch.original_bytes"),
        Some(big_value.len().to_string().as_str())
    );
    assert!(dlq[1].value.len() < big_value.len());

    // The dead-letter topic's limit lowered under the running processor: the next oversized
    // dead letter is refused by the broker and replaced by a stub.
    let admin: AdminClient<DefaultClientContext> = support::client_config().create().unwrap();
    let lowered = AlterConfig::new(ResourceSpecifier::Topic(&topics.dead_letter))
        .set("max.message.bytes", "20000");
    rt.block_on(admin.alter_configs([&lowered], &AdminOptions::new()))
        .unwrap()
        .into_iter()
        .for_each(|r| {
            r.unwrap();
        });
    // Incompressible (the producer compresses with lz4, and the broker limits batches as sent).
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let noise: String = (0..50 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect();
    let poison = format!("{{\"blob\":\"{noise}\"");
    let more = vec![
        record("activation", "w3".into(), poison, t + 40),
        record(
            "activation",
            "w4".into(),
            activation("w4", "r1", 1, t + 50),
            t + 50,
        ),
        record(
            "control.activation.ack",
            "w4".into(),
            ack("w4", "r1", 1, t + 80),
            t + 80,
        ),
    ];
    rt.block_on(support::produce_kcat(&more, &topics));
    let dlq = read_topic(&topics.dead_letter, false, 3, QUIET, OUTPUT_TIMEOUT);
    assert_eq!(dlq.len(), 3, "{}", processor.log_text());
    let stub = &dlq[2];
    assert_eq!(
        stub.header("ackwatch.stub"),
        Some("true"),
        "{:?}",
        stub.headers
    );
    assert_eq!(stub.header("ackwatch.reason"), Some("not_json"));
    assert_eq!(stub.header("ackwatch.offset"), Some("3"));
    assert!(stub.value.is_empty());

    // Every clean record was processed, and the processor is healthy.
    wait_for(|| {
        (support::metric(&http, "ackwatch_dead_letters_stubbed_total")? >= 1.0).then_some(())
    });
    let tracked_and_acked = wait_for(|| {
        let (_, text) = support::http_get(&http, "/metrics")?;
        let count = |outcome: &str| {
            text.lines()
                .filter(|l| {
                    l.starts_with("ackwatch_records_total{")
                        && l.contains(&format!("outcome=\"{outcome}\""))
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>()
        };
        (count("tracked") >= 2.0 && count("ack") >= 2.0).then_some(())
    });
    assert_eq!(tracked_and_acked, ());
    assert_eq!(support::http_get(&http, "/healthz").unwrap().0, 200);
    assert!(
        processor.child.try_wait().unwrap().is_none(),
        "{}",
        processor.log_text()
    );
    assert!(processor.terminate(Duration::from_secs(30)).success());
}
