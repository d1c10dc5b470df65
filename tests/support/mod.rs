//! Test support for the real-broker tests: where the broker and Alertmanager are, unique names.
//!
//! `scripts/test.sh` starts one Kafka broker and one Alertmanager on 127.0.0.1 for the whole
//! test run and exports their addresses. To use an existing cluster instead, set
//! `ACKWATCH_TEST_BOOTSTRAP=host:port` (and `ACKWATCH_TEST_ALERTMANAGER=http://host:port`)
//! before running `cargo test`.
#![allow(dead_code)]

pub mod facts;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;

/// Runs the ackwatch binary: (success, stdout, stderr).
pub fn ackwatch(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ackwatch"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

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
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
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
        .create_topics(
            [&topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
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
    log.lines()
        .find_map(|l| l.find("Kafka version: ").map(|i| l[i..].to_string()))
}

/// A free TCP port on 127.0.0.1 (bound, then released for the process under test).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The value of the unlabelled series `name` (or of a series written whole, labels included) on
/// the processor's `/metrics`.
pub fn metric(http: &str, name: &str) -> Option<f64> {
    let (_, text) = http_get(http, "/metrics")?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// The input partitions a running processor owns, as its `/runs` answer for an unknown world
/// lists them.
pub fn owned_partitions(processor: &Processor) -> Vec<i64> {
    http_get(&processor.http, "/runs/no_such_world")
        .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
        .and_then(|v| {
            v["owned_partitions"]
                .as_array()
                .map(|a| a.iter().filter_map(serde_json::Value::as_i64).collect())
        })
        .unwrap_or_default()
}

/// A minimal HTTP/1.0 GET against 127.0.0.1, so tests need no HTTP client: (status, body).
pub fn http_get(address: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect_timeout(&address.parse().ok()?, Duration::from_secs(2))
            .ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// The topics of one live test, all unique.
#[derive(Clone, Debug)]
pub struct LiveTopics {
    pub activation: String,
    pub ack: String,
    pub gap: String,
    pub signal: String,
    pub dead_letter: String,
}

impl LiveTopics {
    pub async fn create(prefix: &str, partitions: i32) -> LiveTopics {
        let base = unique(prefix);
        let topics = LiveTopics {
            activation: format!("{base}.activation"),
            ack: format!("{base}.ack"),
            gap: format!("{base}.gap"),
            signal: format!("{base}.signal"),
            dead_letter: format!("{base}.dlq"),
        };
        // The fixtures' records carry their original timestamps (months old): with the broker's
        // default time retention (7 days, checked every 5 minutes) a check between producing and
        // reading deleted every input segment, and the processor, finding nothing, emitted
        // nothing (two CI runs and two local runs failed so). Test inputs are kept for good.
        let keep = [("retention.ms", "-1")];
        create_topic(&topics.activation, partitions, &keep).await;
        create_topic(&topics.ack, partitions, &keep).await;
        for t in [&topics.gap, &topics.signal, &topics.dead_letter] {
            create_topic(t, 1, &[]).await;
        }
        topics
    }

    /// The test topic standing for a kcat record's topic.
    pub fn input(&self, kcat_topic: &str) -> &str {
        if kcat_topic == "activation" {
            &self.activation
        } else {
            &self.ack
        }
    }
}

/// Produces kcat records to the test's input topics, keeping partition, key, value and timestamp.
pub async fn produce_kcat(records: &[ackwatch::audit::kcat::KcatRecord], topics: &LiveTopics) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    // A Gateway's producer during a broker outage: it buffers and delivers when the broker is
    // back, reconnecting within a second (the outage tests time ackwatch, not this producer).
    let producer: FutureProducer = client_config()
        .set("linger.ms", "5")
        .set("message.max.bytes", "2000000")
        .set("reconnect.backoff.max.ms", "500")
        .create()
        .unwrap();
    let mut pending = Vec::new();
    for r in records {
        let mut record =
            FutureRecord::<str, str>::to(topics.input(&r.topic)).partition(r.partition);
        if let Some(key) = &r.key {
            record = record.key(key);
        }
        if let Some(payload) = &r.payload {
            record = record.payload(payload);
        }
        if let Some(ts) = r.ts {
            record = record.timestamp(ts);
        }
        pending.push(
            producer
                .send_result(record)
                .map_err(|(e, _)| e)
                .expect("enqueue"),
        );
        if pending.len() >= 10_000 {
            for d in pending.drain(..) {
                d.await.unwrap().map_err(|(e, _)| e).expect("delivered");
            }
        }
    }
    for d in pending {
        d.await.unwrap().map_err(|(e, _)| e).expect("delivered");
    }
}

/// Produces one record (key and value) to `topic`.
pub async fn produce_value(topic: &str, key: &str, value: &str) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = client_config().create().unwrap();
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(value),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("delivered");
}

/// Produces one record (key and value) to `partition` of `topic`.
pub async fn produce_value_to(topic: &str, partition: i32, key: &str, value: &str) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = client_config().create().unwrap();
    producer
        .send(
            FutureRecord::to(topic)
                .partition(partition)
                .key(key)
                .payload(value),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("delivered");
}

/// One record read back from an output topic.
#[derive(Clone, Debug)]
pub struct OutRecord {
    pub key: Option<String>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl OutRecord {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.value).expect("output values are JSON")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads every record of `topic` (all partitions, from the beginning) until at least `min`
/// arrived and nothing new came for `quiet`, or `timeout` passed.
pub fn read_topic(
    topic: &str,
    read_committed: bool,
    min: usize,
    quiet: Duration,
    timeout: Duration,
) -> Vec<OutRecord> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Headers;
    use rdkafka::Message;
    let consumer: BaseConsumer = client_config()
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set(
            "isolation.level",
            if read_committed {
                "read_committed"
            } else {
                "read_uncommitted"
            },
        )
        .set("fetch.message.max.bytes", "2000000")
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let partitions = metadata.topics()[0].partitions().len() as i32;
    let mut list = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&list).unwrap();
    drop(list);
    let started = std::time::Instant::now();
    let mut last_new = std::time::Instant::now();
    let mut out = Vec::new();
    while started.elapsed() < timeout && !(out.len() >= min && last_new.elapsed() >= quiet) {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.expect("read output");
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_string(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(OutRecord {
                key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                value: m.payload().unwrap_or_default().to_vec(),
                headers,
            });
            last_new = std::time::Instant::now();
        }
    }
    out
}

/// An `ackwatch run` child process with its own config, state dir and HTTP port.
pub struct Processor {
    pub child: std::process::Child,
    pub http: String,
    pub config: std::path::PathBuf,
    pub log: std::path::PathBuf,
}

/// Writes a config for a live test: the test topics, the test broker, a state dir, a port.
pub fn live_config(
    dir: &std::path::Path,
    topics: &LiveTopics,
    app: &str,
    instance: &str,
    guarantee: &str,
    extra: &str,
) -> (std::path::PathBuf, String) {
    let http = format!("127.0.0.1:{}", free_port());
    let text = format!(
        "[topics]\nactivation = {:?}\nack = {:?}\ngap = {:?}\nsignal = {:?}\ndead_letter = {:?}\n\
         [kafka]\nbootstrap_servers = {:?}\n\
         [kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"1000\"\n\
         [runtime]\napplication_id = {app:?}\ninstance_id = {instance:?}\nstate_dir = {:?}\nprocessing_guarantee = {guarantee:?}\n\
         commit_interval_ms = 200\nshutdown_timeout_ms = 20000\n{extra}\n\
         [http]\nlisten = {http:?}\n",
        topics.activation,
        topics.ack,
        topics.gap,
        topics.signal,
        topics.dead_letter,
        bootstrap(),
        dir.join(format!("state-{instance}")).display().to_string(),
    );
    let path = dir.join(format!("{instance}.toml"));
    std::fs::write(&path, text).unwrap();
    (path, http)
}

/// One instance of a live group: [`live_config`] written, the processor started on it.
pub fn start_live(
    dir: &std::path::Path,
    topics: &LiveTopics,
    app: &str,
    instance: &str,
    guarantee: &str,
    extra: &str,
) -> Processor {
    let (config, http) = live_config(dir, topics, app, instance, guarantee, extra);
    Processor::start(&config, &http)
}

impl Processor {
    pub fn start(config: &std::path::Path, http: &str) -> Processor {
        Self::start_with_env(config, http, &[])
    }

    /// [`Self::start`] with extra environment variables (e.g. the crash-test hook, or a
    /// `RUST_LOG` of its own).
    pub fn start_with_env(config: &std::path::Path, http: &str, env: &[(&str, &str)]) -> Processor {
        let log = config.with_extension(format!("{}.log", unique("run")));
        let file = std::fs::File::create(&log).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_ackwatch"))
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info,librdkafka=warn")
            .envs(env.iter().copied())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("start ackwatch run");
        Processor {
            child,
            http: http.to_string(),
            config: config.to_path_buf(),
            log,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `/readyz` answers 200, failing with the process log otherwise.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let started = std::time::Instant::now();
        while started.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("ackwatch exited early with {status}:\n{}", self.log_text());
            }
            if http_get(&self.http, "/readyz").is_some_and(|(s, _)| s == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("ackwatch not ready after {timeout:?}:\n{}", self.log_text());
    }

    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then the exit status (within `timeout`).
    pub fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let started = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < timeout,
                "ackwatch did not stop within {timeout:?} of SIGTERM:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Processor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A broker or Alertmanager of a test's own, run by its script in `scripts/` (`start`, `stop`,
/// `restart` DIR); stopped when dropped.
pub struct Scripted {
    pub script: &'static str,
    pub dir: std::path::PathBuf,
}

impl Scripted {
    /// Runs `scripts/<script> COMMAND DIR`, failing the test with its stderr; returns stdout.
    pub fn run(&self, command: &str) -> String {
        self.run_with(command, &[])
    }

    /// Runs `scripts/<script> COMMAND DIR ARGS...` (e.g. `kafka-broker.sh acl DIR --add ...`).
    pub fn run_with(&self, command: &str, args: &[&str]) -> String {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("scripts")
            .join(self.script);
        let out = std::process::Command::new("bash")
            .arg(script)
            .arg(command)
            .arg(&self.dir)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{} {command}: {}",
            self.script,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("scripts")
            .join(self.script);
        let _ = std::process::Command::new("bash")
            .arg(script)
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}

/// `promtool check metrics` (Prometheus' own linter of names, units and help) on a `/metrics`
/// text: nothing may be flagged but the RFC's `controlbus_apply_ack_latency_ms`, kept in
/// milliseconds under the name the RFC, the Gateways and the runbooks use (docs/semantics.md §3),
/// and that one must be (so promtool really read the text).
pub fn assert_promtool_accepts_but_the_rfc_name(text: &str) {
    use std::io::Write;
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (scripts/setup.sh installs Debian's prometheus package)");
    promtool.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (rfc, others): (Vec<&str>, Vec<&str>) = said
        .lines()
        .filter(|l| !l.trim().is_empty())
        .partition(|l| l.starts_with("controlbus_apply_ack_latency_ms"));
    assert!(others.is_empty(), "promtool flags: {others:#?}");
    assert!(
        rfc.iter().any(|l| l.contains("units")),
        "promtool did not flag the RFC's ms histogram: {said}"
    );
}
