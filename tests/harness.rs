//! The test harness itself, against the real broker and Alertmanager scripts/test.sh started:
//! a consumer group resumes from its committed offsets after a restart.

mod support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::Message;

const RECORDS: usize = 100;

/// Consumes up to `max` records (or until `deadline`), returning (partition, offset, key).
async fn consume(
    consumer: &StreamConsumer,
    max: usize,
    deadline: Duration,
) -> Vec<(i32, i64, String)> {
    let start = Instant::now();
    let mut got = vec![];
    while got.len() < max {
        let Some(left) = deadline.checked_sub(start.elapsed()) else {
            break;
        };
        match tokio::time::timeout(left, consumer.recv()).await {
            Ok(Ok(m)) => got.push((
                m.partition(),
                m.offset(),
                String::from_utf8_lossy(m.key().unwrap()).into_owned(),
            )),
            Ok(Err(e)) => panic!("consume error: {e}"),
            Err(_) => break,
        }
    }
    got
}

fn group_consumer(group: &str, topic: &str) -> StreamConsumer {
    let consumer: StreamConsumer = support::client_config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    consumer
}

#[tokio::test]
async fn consumer_group_resumes_from_committed_offsets_after_restart() {
    if std::env::var("ACKWATCH_TEST_KAFKA_DIR").is_ok() {
        assert!(
            support::bootstrap().starts_with("127.0.0.1:"),
            "the harness's broker listens on loopback only"
        );
    }
    let version = support::broker_version_line();
    eprintln!(
        "broker at {}: {}",
        support::bootstrap(),
        version.as_deref().unwrap_or("(external cluster)")
    );
    if let Some(line) = &version {
        assert!(
            line.starts_with("Kafka version: 4."),
            "the harness must run Apache Kafka 4.x, got {line}"
        );
    }

    let topic = support::unique("harness");
    support::create_topic(&topic, 2, &[]).await;
    let producer: ThreadedProducer<DefaultProducerContext> = support::client_config()
        .set("acks", "all")
        .create()
        .expect("producer");
    for i in 0..RECORDS {
        let key = format!("key-{i}");
        producer
            .send(BaseRecord::to(&topic).key(&key).payload("v"))
            .map_err(|(e, _)| e)
            .expect("enqueue");
    }
    producer.flush(Duration::from_secs(30)).expect("flush");

    let group = support::unique("harness-group");
    let first = group_consumer(&group, &topic);
    let before = consume(&first, 60, Duration::from_secs(60)).await;
    assert_eq!(
        before.len(),
        60,
        "first consumer got {} records",
        before.len()
    );
    first
        .commit_consumer_state(CommitMode::Sync)
        .expect("commit");
    // Plain offsets: a TopicPartitionList holds librdkafka partition references, and one that
    // outlives its consumer makes the consumer's destroy wait forever.
    let committed: Vec<Option<i64>> = {
        let list = first
            .committed(Duration::from_secs(10))
            .expect("committed offsets");
        (0..2)
            .map(|p| {
                list.find_partition(&topic, p)
                    .and_then(|e| e.offset().to_raw())
            })
            .collect()
    };
    drop(first); // leaves the group

    let second = group_consumer(&group, &topic);
    let after = consume(&second, RECORDS - 60, Duration::from_secs(60)).await;
    assert_eq!(
        after.len(),
        RECORDS - 60,
        "second consumer got {} records",
        after.len()
    );

    // The second consumer starts exactly at each partition's committed offset.
    for p in 0..2 {
        let first_after = after.iter().filter(|r| r.0 == p).map(|r| r.1).min();
        if let Some(first_after) = first_after {
            assert_eq!(
                Some(first_after),
                committed[p as usize],
                "partition {p} resumed at the committed offset"
            );
        }
    }
    // Nothing read twice, nothing lost.
    let keys: BTreeSet<&str> = before.iter().chain(&after).map(|r| r.2.as_str()).collect();
    assert_eq!(keys.len(), RECORDS);
    assert!(
        consume(&second, 1, Duration::from_secs(2)).await.is_empty(),
        "no record beyond the 100 produced"
    );
}

/// Alertmanager (used by the alerting issue) is up: `/-/ready` answers 200.
#[test]
fn alertmanager_answers_ready() {
    let url = support::alertmanager();
    let host = url.strip_prefix("http://").expect("an http:// URL");
    if std::env::var("ACKWATCH_TEST_ALERTMANAGER_DIR").is_ok() {
        assert!(
            host.starts_with("127.0.0.1:"),
            "the harness's Alertmanager listens on loopback only: {host}"
        );
    }
    let mut stream = std::net::TcpStream::connect(host).expect("connect to Alertmanager");
    write!(stream, "GET /-/ready HTTP/1.0\r\nHost: {host}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(
        response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"),
        "{response}"
    );
}
