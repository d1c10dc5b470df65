//! ackwatch's configuration: a TOML file plus `ACKWATCH__SECTION__KEY` environment overrides,
//! read with the `config` crate (`load.rs`). Every key has a default; an unknown key is an
//! error naming it; no configuration value is ever shown (`crate::secrets`).

mod load;

use std::collections::BTreeMap;
use std::path::PathBuf;

use ackwatch_topology::Policy;
use serde::{Deserialize, Serialize};

/// Most processing threads one instance may run (`runtime.num_stream_threads`). Cost per thread:
/// a consumer and a producer (librdkafka threads, prefetch and producer queues) and a group
/// member; beyond the cores of a machine more threads only add rebalancing.
pub const STREAM_THREADS_MAX: u64 = 64;

/// Every client's `reconnect.backoff.max.ms` unless `[kafka.properties]` sets it: a client
/// retries an unreachable broker at least this often (cost: one connection attempt per broker
/// per client per second during an outage).
pub const RECONNECT_BACKOFF_MAX_MS: &str = "1000";

/// Names of the topics ackwatch reads and writes (semantics §1, §3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Topics {
    pub activation: String,
    pub ack: String,
    pub gap: String,
    pub signal: String,
    pub dead_letter: String,
}

impl Default for Topics {
    fn default() -> Self {
        Topics {
            activation: "activation".into(),
            ack: "control.activation.ack".into(),
            gap: "control.activation.gap".into(),
            signal: "control.activation.signal".into(),
            dead_letter: "ackwatch.dlq".into(),
        }
    }
}

/// How ackwatch reaches Kafka. `properties` are passed to librdkafka as they are (security.protocol,
/// sasl.*, ssl.* ...), for every client ackwatch creates; values of secret keys are never logged.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Kafka {
    pub bootstrap_servers: String,
    pub properties: BTreeMap<String, String>,
    /// Properties whose values are read from files (e.g. a mounted Kubernetes Secret): property
    /// name → path. The file's content, without a final line break, is the value.
    pub property_files: BTreeMap<String, PathBuf>,
}

impl Default for Kafka {
    fn default() -> Self {
        Kafka {
            bootstrap_servers: "127.0.0.1:9092".into(),
            properties: BTreeMap::new(),
            property_files: BTreeMap::new(),
        }
    }
}

impl Kafka {
    /// The configuration every client starts from: the bootstrap servers, ackwatch's client
    /// defaults, then `[kafka.properties]` (which override the defaults).
    pub fn client_config(&self) -> rdkafka::ClientConfig {
        let mut config = rdkafka::ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap_servers);
        // librdkafka backs off reconnects up to 10 s: a client would then see a returned broker
        // up to 10 s late, and processing must resume within seconds of an outage's end.
        config.set("reconnect.backoff.max.ms", RECONNECT_BACKOFF_MAX_MS);
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }

    /// Each property as librdkafka takes it, checked one by one, so that an unknown key or a
    /// refused value is reported by name: librdkafka's own message quotes the value.
    pub fn validate(&self) -> anyhow::Result<()> {
        use rdkafka::types::RDKafkaConfRes;
        for (key, value) in &self.properties {
            let mut one = rdkafka::ClientConfig::new();
            one.set(key, value);
            if let Err(e) = one.create_native_config() {
                let why = match e {
                    rdkafka::error::KafkaError::ClientConfig(
                        RDKafkaConfRes::RD_KAFKA_CONF_UNKNOWN,
                        ..
                    ) => "librdkafka does not know this property (misspelt, or a feature this build lacks)",
                    _ => "librdkafka refused its value",
                };
                anyhow::bail!("kafka.properties.\"{key}\": {why} (the value is not shown)");
            }
        }
        Ok(())
    }

    /// The names of the properties, as they may be logged (values never are).
    pub fn property_names(&self) -> Vec<&str> {
        self.properties.keys().map(String::as_str).collect()
    }
}

/// Property values never appear in a debug print either.
impl std::fmt::Debug for Kafka {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kafka")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("properties", &self.property_names())
            .field("property_files", &self.property_files)
            .finish()
    }
}

/// `processing.guarantee`, as Kafka Streams names it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Guarantee {
    /// Outputs and changelog acknowledged, then the store, then input offsets. A crash may
    /// re-emit outputs (same idempotency keys), never lose one.
    #[default]
    AtLeastOnce,
    /// One Kafka transaction per commit: outputs, changelog records and input offsets.
    ExactlyOnceV2,
}

/// The live processor's runtime.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Runtime {
    /// Consumer group id, changelog topic prefix and store directory name.
    pub application_id: String,
    /// This instance's stable name (the transactional id under exactly_once_v2, so a restarted
    /// instance fences its predecessor at once). Empty: the host name.
    pub instance_id: String,
    /// Where the task stores live: `<state_dir>/<application_id>/<partition>/`.
    pub state_dir: PathBuf,
    pub processing_guarantee: Guarantee,
    /// How often tasks commit (state, changelog, outputs, offsets).
    pub commit_interval_ms: u64,
    /// How long a task waits for an empty, lagging partition before going on (docs/semantics.md §4).
    pub max_task_idle_ms: u64,
    /// Live stream time follows the wall clock minus this, while both partitions are caught up.
    pub lateness_ms: u64,
    /// Replication factor of the changelog topic when ackwatch creates it (-1: broker default).
    pub changelog_replication_factor: i32,
    /// Longest a shutdown (drain, commit, leave the group) may take before the process exits.
    pub shutdown_timeout_ms: u64,
    /// Kafka static group membership (the default): the consumer's `group.instance.id` is the
    /// member id, so an instance restarted within `session.timeout.ms` gets its partitions back
    /// without a rebalance, and a member whose session expired in a broker outage rejoins at
    /// once when the broker is back (a dynamic member waits `session.timeout.ms` for its old
    /// self to expire). A shutdown still leaves the group. Instance ids must be unique.
    pub static_membership: bool,
    /// After a broker outage, how long the wall clock fires nothing (records are processed):
    /// the producers that buffered ACKs through the outage deliver them first (librdkafka's
    /// `reconnect.backoff.max.ms` is 10 s), so their lateness is not mistaken for a missing ACK.
    pub outage_grace_ms: u64,
    /// Processing threads of this instance, like Kafka Streams' `num.stream.threads`: each has
    /// its own consumer (a member of the group), producer and tasks, so partitions spread over
    /// threads as over instances. More threads than partitions leave some idle.
    pub num_stream_threads: u64,
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime {
            application_id: "ackwatch".into(),
            instance_id: String::new(),
            state_dir: PathBuf::from("/var/lib/ackwatch"),
            processing_guarantee: Guarantee::AtLeastOnce,
            commit_interval_ms: 1000,
            max_task_idle_ms: 1000,
            lateness_ms: 500,
            changelog_replication_factor: -1,
            shutdown_timeout_ms: 30_000,
            static_membership: true,
            outage_grace_ms: 15_000,
            num_stream_threads: 1,
        }
    }
}

impl Runtime {
    /// The consumer-group member name of stream thread `thread` (its `group.instance.id` under
    /// static membership, and its transactional id's suffix): the instance id for thread 0, as
    /// before threads existed, `<instance id>-t<thread>` for the others.
    pub fn member_id(&self, thread: usize) -> String {
        match thread {
            0 => self.instance_id(),
            t => format!("{}-t{t}", self.instance_id()),
        }
    }

    pub fn instance_id(&self) -> String {
        if !self.instance_id.is_empty() {
            return self.instance_id.clone();
        }
        std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .ok()
                    .map(|h| h.trim().to_string())
            })
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "ackwatch".into())
    }
}

/// Alerts to Alertmanager (`POST /api/v2/alerts` on each URL; empty: no alerts).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Alerts {
    /// Base URLs, e.g. `http://alertmanager:9093`; each is posted to independently (an HA pair).
    pub alertmanager_urls: Vec<String>,
    /// Firing alerts are re-sent this often, with `endsAt` four intervals ahead.
    pub resend_interval_ms: u64,
    /// Resolved alerts are re-sent for this long (Alertmanager keeps no state across restarts).
    pub resolved_resend_ms: u64,
    /// Runbook link of each alert: `{kind}` is replaced by the finding kind (one page per kind,
    /// as in deploy/runbooks/); without it, `#<kind>` is appended. Empty: no link.
    pub runbook_url: String,
}

impl Default for Alerts {
    fn default() -> Self {
        Alerts {
            alertmanager_urls: Vec::new(),
            resend_interval_ms: 60_000,
            resolved_resend_ms: 300_000,
            runbook_url: String::new(),
        }
    }
}

/// Signals also POSTed to WorldService over HTTP (src/worldservice.rs); off when `url` is empty.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorldService {
    /// Where each signal is POSTed as JSON, e.g. `http://worldservice:8080/apply/signals`.
    pub url: String,
    /// Longest one post may take (connect to response).
    pub timeout_ms: u64,
    /// First retry wait of a failed post; doubles per attempt (with jitter) up to `retry_max_ms`.
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// Signals older than this (record timestamp) are no longer current: skipped and counted.
    pub max_signal_age_ms: u64,
    /// The request header that carries the signal's idempotency key.
    pub idempotency_header: String,
}

impl Default for WorldService {
    fn default() -> Self {
        WorldService {
            url: String::new(),
            timeout_ms: 2000,
            retry_initial_ms: 100,
            retry_max_ms: 30_000,
            max_signal_age_ms: 3_600_000,
            idempotency_header: "Idempotency-Key".into(),
        }
    }
}

/// The HTTP endpoint: metrics, health, readiness, run queries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Http {
    pub listen: String,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub topics: Topics,
    pub policy: Policy,
    pub kafka: Kafka,
    pub runtime: Runtime,
    pub http: Http,
    pub alerts: Alerts,
    pub worldservice: WorldService,
}

impl Settings {
    /// Checks what the types alone cannot; the error names the key (never a value).
    pub fn validate(&self) -> anyhow::Result<()> {
        self.policy.validate()?;
        self.kafka.validate()?;
        let r = &self.runtime;
        for (key, value, min, max) in [
            (
                "runtime.commit_interval_ms",
                r.commit_interval_ms,
                10,
                600_000,
            ),
            ("runtime.max_task_idle_ms", r.max_task_idle_ms, 0, 600_000),
            ("runtime.lateness_ms", r.lateness_ms, 0, 3_600_000),
            ("runtime.outage_grace_ms", r.outage_grace_ms, 0, 600_000),
            (
                "runtime.num_stream_threads",
                r.num_stream_threads,
                1,
                STREAM_THREADS_MAX,
            ),
            (
                "runtime.shutdown_timeout_ms",
                r.shutdown_timeout_ms,
                1000,
                600_000,
            ),
        ] {
            anyhow::ensure!(
                (min..=max).contains(&value),
                "{key} = {value} is not between {min} and {max}"
            );
        }
        anyhow::ensure!(
            !r.application_id.is_empty(),
            "runtime.application_id must not be empty"
        );
        for url in &self.alerts.alertmanager_urls {
            anyhow::ensure!(
                url.starts_with("http://") && url.len() > "http://".len(),
                "alerts.alertmanager_urls: {url:?} is not an http:// URL like http://alertmanager:9093"
            );
        }
        let ws = &self.worldservice;
        anyhow::ensure!(
            ws.url.is_empty() || (ws.url.starts_with("http://") && ws.url.len() > "http://".len()),
            "worldservice.url: {:?} is not an http:// URL like http://worldservice:8080/signals (empty: off)",
            ws.url
        );
        for (key, value, min, max) in [
            ("worldservice.timeout_ms", ws.timeout_ms, 10, 600_000),
            (
                "worldservice.retry_initial_ms",
                ws.retry_initial_ms,
                1,
                600_000,
            ),
            (
                "worldservice.retry_max_ms",
                ws.retry_max_ms,
                ws.retry_initial_ms,
                3_600_000,
            ),
            (
                "worldservice.max_signal_age_ms",
                ws.max_signal_age_ms,
                1000,
                30 * 86_400_000,
            ),
        ] {
            anyhow::ensure!(
                (min..=max).contains(&value),
                "{key} = {value} is not between {min} and {max}"
            );
        }
        anyhow::ensure!(
            reqwest::header::HeaderName::from_bytes(ws.idempotency_header.as_bytes()).is_ok(),
            "worldservice.idempotency_header = {:?} is not a valid HTTP header name",
            ws.idempotency_header
        );
        anyhow::ensure!(
            (1000..=3_600_000).contains(&self.alerts.resend_interval_ms),
            "alerts.resend_interval_ms = {} is not between 1000 and 3600000",
            self.alerts.resend_interval_ms
        );
        anyhow::ensure!(
            r.changelog_replication_factor == -1 || r.changelog_replication_factor >= 1,
            "runtime.changelog_replication_factor = {} must be -1 (broker default) or at least 1",
            r.changelog_replication_factor
        );
        anyhow::ensure!(
            !self.kafka.bootstrap_servers.is_empty(),
            "kafka.bootstrap_servers must not be empty"
        );
        anyhow::ensure!(
            self.topics.activation != self.topics.ack,
            "topics.activation and topics.ack must differ (both are {:?})",
            self.topics.ack
        );
        self.http
            .listen
            .parse::<std::net::SocketAddr>()
            .map_err(|e| {
                anyhow::anyhow!(
                    "http.listen = {:?} is not an address like 127.0.0.1:9464: {e}",
                    self.http.listen
                )
            })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(toml: &str, expected: Result<Settings, &str>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ackwatch.toml");
        std::fs::write(&path, toml).unwrap();
        match (Settings::load(Some(&path)), expected) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{toml}"),
            (Err(got), Err(want)) => {
                let text = format!("{got:#}");
                assert!(
                    text.contains(want),
                    "{toml}: error {text:?} should mention {want:?}"
                );
            }
            (got, want) => panic!("{toml}: got {got:?}, expected {want:?}"),
        }
    }

    #[test]
    fn the_shipped_example_is_every_default() {
        let example = include_str!("../../deploy/ackwatch.example.toml");
        check(example, Ok(Settings::default()));
        // And it names every key the settings have.
        let keys = serde_json::to_value(Settings::default()).unwrap();
        for (section, fields) in keys.as_object().unwrap() {
            assert!(
                example.contains(&format!("[{section}]")),
                "example lacks [{section}]"
            );
            for key in fields.as_object().unwrap().keys() {
                let table = format!("[{section}.{key}]");
                assert!(
                    example.contains(&format!("\n{key} = ")) || example.contains(&table),
                    "example lacks {section}.{key}"
                );
            }
        }
    }

    #[test]
    fn only_property_names_are_shown() {
        let kafka = Kafka {
            properties: [("sasl.password", "hunter2"), ("sasl.username", "me")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Kafka::default()
        };
        assert_eq!(kafka.property_names(), ["sasl.password", "sasl.username"]);
        let shown = format!("{kafka:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("\"me\""),
            "{shown}"
        );
        assert!(shown.contains("sasl.password"), "{shown}");
    }

    #[test]
    fn bad_configuration_names_the_key() {
        check(
            "[policy]\nack_timeout_ms = 5000\n",
            Ok(Settings {
                policy: Policy {
                    ack_timeout_ms: 5000,
                    ..Policy::default()
                },
                ..Settings::default()
            }),
        );
        check(
            "[policy]\nack_timeout_msec = 5000\n",
            Err("ack_timeout_msec"),
        );
        check(
            "[policy]\nack_timeout_ms = \"soon\"\n",
            Err("ack_timeout_ms"),
        );
        check(
            "[policy]\ngap_timeout_ms = 0\n",
            Err("policy key `gap_timeout_ms`: 0 is not between 1 ms and one year"),
        );
        check(
            "[policy]\nrun_retention_ms = 1000\n",
            Err("run_retention_ms"),
        );
        check("[topic]\nack = \"x\"\n", Err("topic"));
        check("not toml at all [", Err("ackwatch.toml"));
        check(
            "[runtime]\ncommit_interval_ms = 0\n",
            Err("runtime.commit_interval_ms = 0 is not between 10 and 600000"),
        );
        check(
            "[runtime]\nnum_stream_threads = 0\n",
            Err("runtime.num_stream_threads = 0 is not between 1 and 64"),
        );
        check(
            "[runtime]\nprocessing_guarantee = \"exactly_once\"\n",
            Err("processing_guarantee"),
        );
        check("[http]\nlisten = \"localhost\"\n", Err("http.listen"));
        check(
            "[alerts]\nalertmanager_urls = [\"am:9093\"]\n",
            Err("alerts.alertmanager_urls: \"am:9093\" is not an http:// URL"),
        );
        check(
            "[worldservice]\nurl = \"worldservice:8080\"\n",
            Err("worldservice.url: \"worldservice:8080\" is not an http:// URL"),
        );
        check(
            "[worldservice]\nretry_initial_ms = 1000\nretry_max_ms = 500\n",
            Err("worldservice.retry_max_ms = 500 is not between 1000 and 3600000"),
        );
        check(
            "[worldservice]\nidempotency_header = \"Idempotency Key\"\n",
            Err("worldservice.idempotency_header"),
        );
        check(
            "[topics]\nactivation = \"a\"\nack = \"a\"\n",
            Err("topics.activation and topics.ack must differ"),
        );
        check(
            "[runtime]\nprocessing_guarantee = \"exactly_once_v2\"\n[kafka.properties]\n\"security.protocol\" = \"SSL\"\n",
            Ok(Settings {
                runtime: Runtime { processing_guarantee: Guarantee::ExactlyOnceV2, ..Runtime::default() },
                kafka: Kafka { properties: [("security.protocol".to_string(), "SSL".to_string())].into(), ..Kafka::default() },
                ..Settings::default()
            }),
        );
    }
}
