//! Test support for the real-broker tests: where the broker and Alertmanager are, unique names.
//!
//! `scripts/test.sh` starts one Kafka broker and one Alertmanager on 127.0.0.1 for the whole
//! test run and exports their addresses. To use an existing cluster instead, set
//! `ACKWATCH_TEST_BOOTSTRAP=host:port` (and `ACKWATCH_TEST_ALERTMANAGER=http://host:port`)
//! before running `cargo test`.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;

pub fn bootstrap() -> String {
    std::env::var("ACKWATCH_TEST_BOOTSTRAP").expect(
        "ACKWATCH_TEST_BOOTSTRAP is not set: run the tests with scripts/test.sh (it starts a Kafka broker), \
         or point them at a cluster with ACKWATCH_TEST_BOOTSTRAP=host:port",
    )
}

pub fn alertmanager() -> String {
    std::env::var("ACKWATCH_TEST_ALERTMANAGER").expect(
        "ACKWATCH_TEST_ALERTMANAGER is not set: run the tests with scripts/test.sh (it starts Alertmanager), \
         or set ACKWATCH_TEST_ALERTMANAGER=http://host:port",
    )
}

/// A name no other test (or earlier run against the same cluster) uses.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}-{}-{nanos}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

pub fn client_config() -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap());
    config
}

pub async fn create_topic(name: &str, partitions: i32, extra: &[(&str, &str)]) {
    let admin: AdminClient<DefaultClientContext> = client_config().create().expect("admin client");
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (k, v) in extra {
        topic = topic.set(k, v);
    }
    let results = admin
        .create_topics([&topic], &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))))
        .await
        .expect("create_topics request");
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("cannot create topic {t}: {e}"));
    }
}

/// The broker's own startup line with its version, when scripts/test.sh started it.
pub fn broker_version_line() -> Option<String> {
    let dir = std::env::var("ACKWATCH_TEST_KAFKA_DIR").ok()?;
    let log = std::fs::read_to_string(format!("{dir}/server.log")).ok()?;
    log.lines().find_map(|l| l.find("Kafka version: ").map(|i| l[i..].to_string()))
}
