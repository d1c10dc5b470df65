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

/// Most standby copies of each partition (`runtime.num_standby_replicas`). Cost per copy: the
/// whole task store on the disk of another instance, and that instance's restore consumer
/// tailing the partition's changelog.
pub const STANDBY_REPLICAS_MAX: u64 = 8;

/// `runtime.settled_cache_bytes` unless set: settled runs kept in memory after their commit,
/// for the whole instance (Kafka Streams' record cache defaults to 10 MiB). 0.5–1.4 KiB a run
/// by its sequences, so 12,000–32,000 runs: enough for the runs of the applies of the last seconds
/// (each gets records in consecutive commits). Cost: that much RSS; saved: a store read and a
/// decode for each record of a cached run. Catching up over more open runs than it holds gains
/// little from it (BENCHMARKS.md, issue #19).
pub const SETTLED_CACHE_BYTES_DEFAULT: u64 = 16 << 20;

/// Largest `runtime.settled_cache_bytes` accepted (a typo guard: 64 GiB).
pub const SETTLED_CACHE_BYTES_MAX: u64 = 64 << 30;

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

/// Which kind of Kafka client a configuration is for: `[kafka.properties]` keys prefixed
/// `consumer.`, `producer.` or `admin.` (Kafka Streams' prefixes) reach only that kind, so a
/// producer setting never makes librdkafka warn "will be ignored by this consumer".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientKind {
    Consumer,
    Producer,
    Admin,
}

impl ClientKind {
    pub const ALL: [ClientKind; 3] = [
        ClientKind::Consumer,
        ClientKind::Producer,
        ClientKind::Admin,
    ];

    /// The prefix of the properties for this kind only.
    pub fn prefix(self) -> &'static str {
        match self {
            ClientKind::Consumer => "consumer.",
            ClientKind::Producer => "producer.",
            ClientKind::Admin => "admin.",
        }
    }

    /// `key` without a kind prefix, and the kind it names (`None`: every client).
    pub fn split(key: &str) -> (Option<ClientKind>, &str) {
        for kind in ClientKind::ALL {
            if let Some(rest) = key.strip_prefix(kind.prefix()) {
                return (Some(kind), rest);
            }
        }
        (None, key)
    }
}

impl Kafka {
    /// The configuration of one kind of client: [`Self::client_config`], then the properties
    /// prefixed with the kind's prefix (without it; they override unprefixed ones).
    pub fn client_config_for(&self, kind: ClientKind) -> rdkafka::ClientConfig {
        let mut config = self.client_config();
        for (key, value) in &self.properties {
            if let (Some(k), name) = ClientKind::split(key) {
                if k == kind {
                    config.set(name, value);
                }
            }
        }
        config
    }

    /// The configuration every client starts from: the bootstrap servers, ackwatch's client
    /// defaults, then the unprefixed `[kafka.properties]` (which override the defaults).
    pub fn client_config(&self) -> rdkafka::ClientConfig {
        let mut config = rdkafka::ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap_servers);
        // librdkafka backs off reconnects up to 10 s: a client would then see a returned broker
        // up to 10 s late, and processing must resume within seconds of an outage's end.
        config.set("reconnect.backoff.max.ms", RECONNECT_BACKOFF_MAX_MS);
        // A producer or admin client (librdkafka's default: allowed) asking for one topic's
        // metadata would let a broker with auto.create.topics.enable (Kafka's default) create it
        // uncompacted and with the broker's partition count: a changelog or an output topic is
        // created by ackwatch as it must be, or reported missing.
        config.set("allow.auto.create.topics", "false");
        for (key, value) in &self.properties {
            if ClientKind::split(key).0.is_none() {
                config.set(key, value);
            }
        }
        config
    }

    /// Each property as librdkafka takes it, checked one by one, so that an unknown key or a
    /// refused value is reported by name: librdkafka's own message quotes the value.
    pub fn validate(&self) -> anyhow::Result<()> {
        use rdkafka::types::RDKafkaConfRes;
        for (key, value) in &self.properties {
            let mut one = rdkafka::ClientConfig::new();
            one.set(ClientKind::split(key).1, value);
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

impl Guarantee {
    /// The configuration's spelling (`runtime.processing_guarantee`).
    pub fn as_str(self) -> &'static str {
        match self {
            Guarantee::AtLeastOnce => "at_least_once",
            Guarantee::ExactlyOnceV2 => "exactly_once_v2",
        }
    }
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
    #[serde(deserialize_with = "ackwatch_topology::time::duration_ms")]
    pub commit_interval_ms: u64,
    /// How long a task waits for an empty, lagging partition before going on (docs/semantics.md §4).
    #[serde(deserialize_with = "ackwatch_topology::time::duration_ms")]
    pub max_task_idle_ms: u64,
    /// Live stream time follows the wall clock minus this, while both partitions are caught up.
    #[serde(deserialize_with = "ackwatch_topology::time::duration_ms")]
    pub lateness_ms: u64,
    /// Replication factor of the changelog topic when ackwatch creates it (-1: broker default).
    pub changelog_replication_factor: i32,
    /// Longest a shutdown (drain, commit, leave the group) may take before the process exits.
    #[serde(deserialize_with = "ackwatch_topology::time::duration_ms")]
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
    #[serde(deserialize_with = "ackwatch_topology::time::duration_ms")]
    pub outage_grace_ms: u64,
    /// Processing threads of this instance, like Kafka Streams' `num.stream.threads`: each has
    /// its own consumer (a member of the group), producer and tasks, so partitions spread over
    /// threads as over instances. More threads than partitions leave some idle.
    pub num_stream_threads: u64,
    /// Memory for settled runs kept resident after their commit, shared by this instance's
    /// tasks (Kafka Streams' `statestore.cache.max.bytes`): a record of a cached run needs no
    /// store read. Past it the least recently committed leave memory first; 0 evicts every
    /// settled run at its commit.
    pub settled_cache_bytes: u64,
    /// Warm copies of each partition's store kept by other instances (Kafka Streams'
    /// `num.standby.replicas`): each tails the partition's changelog into its own store, so the
    /// instance that takes the partition over restores only the tail. 0: none.
    pub num_standby_replicas: u64,
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
            settled_cache_bytes: SETTLED_CACHE_BYTES_DEFAULT,
            num_standby_replicas: 0,
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
    #[serde(deserialize_with = "ackwatch_topology::time::duration_ms")]
    pub resend_interval_ms: u64,
    /// Resolved alerts are re-sent for this long (Alertmanager keeps no state across restarts).
    #[serde(deserialize_with = "ackwatch_topology::time::duration_ms")]
    pub resolved_resend_ms: u64,
    /// Runbook link of each alert: `{kind}` is replaced by the finding kind (one page per kind,
    /// as in deploy/runbooks/); without it, `#<kind>` is appended. Empty: the runbooks this
    /// instance serves, `<generator base>/runbooks/{kind}.md` (no link without a generator base).
    pub runbook_url: String,
    /// Labels added to every alert (e.g. `cluster`, `environment`), so one Alertmanager can route
    /// several deployments. Must not redefine one of ackwatch's own labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// This instance's HTTP address as an on-call reaches it (e.g.
    /// `http://ackwatch-0.ackwatch:9464`): each alert's `generatorURL` is its run's
    /// `/runs/{world_id}/{run_id}` there. Empty: `http.advertised_url` (and without one, no
    /// link).
    pub generator_base_url: String,
}

/// The labels ackwatch sets on every finding alert itself (`alerts.labels` may not redefine them).
pub const ALERT_OWN_LABELS: [&str; 6] = [
    "alertname",
    "world_id",
    "run_id",
    "kind",
    "episode",
    "severity",
];

impl Default for Alerts {
    fn default() -> Self {
        Alerts {
            alertmanager_urls: Vec::new(),
            resend_interval_ms: 60_000,
            resolved_resend_ms: 300_000,
            runbook_url: String::new(),
            labels: Default::default(),
            generator_base_url: String::new(),
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
    #[serde(deserialize_with = "ackwatch_topology::time::duration_ms")]
    pub timeout_ms: u64,
    /// First retry wait of a failed post; doubles per attempt (with jitter) up to `retry_max_ms`.
    #[serde(deserialize_with = "ackwatch_topology::time::duration_ms")]
    pub retry_initial_ms: u64,
    #[serde(deserialize_with = "ackwatch_topology::time::duration_ms")]
    pub retry_max_ms: u64,
    /// Signals older than this (record timestamp) are no longer current: skipped and counted.
    #[serde(deserialize_with = "ackwatch_topology::time::duration_ms")]
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
    /// This instance's HTTP address as the other instances and an on-call reach it (Kafka
    /// Streams' `application.server`), e.g. `http://ackwatch-0.ackwatch:9464`. The group learns
    /// it from the stream threads' consumer `client.id` (`<id>@<url>`), so a query to a
    /// non-owner is redirected to the owner. Empty: `http://<http.listen>` when that names one
    /// host, otherwise none (the chart sets it from the pod's name and the headless service).
    pub advertised_url: String,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            listen: "127.0.0.1:9464".into(),
            advertised_url: String::new(),
        }
    }
}

impl Http {
    /// [`Http::advertised_url`] as set, or derived from `listen` (empty for a wildcard address
    /// such as 0.0.0.0 or [::], which no other machine can open); never ends in `/`.
    pub fn advertised(&self) -> String {
        let url = if !self.advertised_url.is_empty() {
            self.advertised_url.clone()
        } else {
            match self.listen.parse::<std::net::SocketAddr>() {
                Ok(addr) if addr.ip().is_unspecified() => String::new(),
                _ => format!("http://{}", self.listen),
            }
        };
        url.trim_end_matches('/').to_string()
    }
}

/// Whether `url` is an http(s):// URL with a host part.
fn is_http_url(url: &str) -> bool {
    ["http://", "https://"]
        .iter()
        .any(|scheme| url.strip_prefix(scheme).is_some_and(|rest| !rest.is_empty()))
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
    /// A Kafka client's configuration with a `client.id` that says whose it is, as consumer-group
    /// tools and broker logs show it (Kafka Streams' `<client.id>-StreamThread-1-consumer`):
    /// `<base>-<role>`, the base being `kafka.properties."client.id"` (or the kind's prefixed
    /// one) when set, otherwise
    /// `ackwatch-<instance id>`. Roles: `t<N>-consumer`, `t<N>-producer`, `t<N>-restore`,
    /// `worldservice`, `admin`.
    pub fn client_config(&self, kind: ClientKind, role: &str) -> rdkafka::ClientConfig {
        let mut config = self.kafka.client_config_for(kind);
        let base = config
            .get("client.id")
            .filter(|id| *id != "rdkafka")
            .map(str::to_string)
            .unwrap_or_else(|| format!("ackwatch-{}", self.runtime.instance_id()));
        config.set("client.id", format!("{base}-{role}"));
        config
    }

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
                "runtime.num_standby_replicas",
                r.num_standby_replicas,
                0,
                STANDBY_REPLICAS_MAX,
            ),
            (
                "runtime.settled_cache_bytes",
                r.settled_cache_bytes,
                0,
                SETTLED_CACHE_BYTES_MAX,
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
        for (name, value) in &self.alerts.labels {
            let valid = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with("__");
            anyhow::ensure!(
                valid,
                "alerts.labels: {name:?} is not a label name (letters, digits and _, not starting with a digit or __)"
            );
            anyhow::ensure!(
                !ALERT_OWN_LABELS.contains(&name.as_str()),
                "alerts.labels: {name:?} is set by ackwatch itself on every alert; choose another name"
            );
            anyhow::ensure!(
                !value.is_empty(),
                "alerts.labels.{name}: empty value (Alertmanager drops empty labels)"
            );
        }
        let base = &self.alerts.generator_base_url;
        anyhow::ensure!(
            base.is_empty() || is_http_url(base),
            "alerts.generator_base_url: {base:?} is not an http(s):// URL like http://ackwatch-0.ackwatch:9464 (empty: http.advertised_url)"
        );
        let advertised = &self.http.advertised_url;
        anyhow::ensure!(
            advertised.is_empty()
                || is_http_url(advertised) && !advertised.contains(['@', ' ', '?', '#']),
            "http.advertised_url is not an http(s):// URL like http://ackwatch-0.ackwatch:9464 \
             without credentials, query or spaces (empty: derived from http.listen)"
        );
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
mod tests;
