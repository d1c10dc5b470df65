//! The deploy bundle (deploy/) against ackwatch itself: what scripts/check-deploy.sh's tools
//! cannot know. Metric names in rules and dashboard exist; the Kubernetes config loads and agrees
//! with the StatefulSet; the topic script creates what `ackwatch check` accepts on a real broker.

mod support;

use std::collections::BTreeSet;
use std::process::Command;

use ackwatch::metrics::Metrics;
use ackwatch::settings::Settings;

fn deploy(path: &str) -> String {
    let full = format!("{}/deploy/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

/// Metric names of ackwatch (and the RFC's histogram) that `text` mentions; runbook page names
/// (`ackwatch_operations.md`) are not metrics.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    for prefix in ["ackwatch_", "controlbus_"] {
        for (start, _) in text.match_indices(prefix) {
            if start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_') {
                continue;
            }
            let end = text[start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(text.len(), |n| start + n);
            if !text[end..].starts_with(".md") {
                names.insert(text[start..end].to_string());
            }
        }
    }
    names
}

/// Metric families exposed on /metrics, with a histogram's `_bucket`, `_sum` and `_count`
/// series. Vectors whose labels are only known at run time (lag by partition, posts by URL, cuts
/// by limit, client errors by code, stalled partitions) are touched first: they exist, but render only once observed.
fn exposed_names() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in every_metric().render().lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            names.insert(name.to_string());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
        }
    }
    names
}

/// The metrics with every vector touched once, so each family renders.
fn every_metric() -> Metrics {
    let metrics = Metrics::new(["activation", "control.activation.ack"]);
    metrics.consumer_lag.with_label_values(&["activation", "0"]);
    metrics.consumer_lag_seconds.with_label_values(&["activation", "0"]);
    metrics
        .alert_posts
        .with_label_values(&["http://am:9093", "ok"]);
    metrics.limit_cut.with_label_values(&["run_sequences"]);
    metrics.stalls.set("activation", 0, "a stall".into());
    metrics.kafka_errors.with_label_values(&["other"]);
    metrics
}

/// `promtool check metrics` (Prometheus' own linter of names, units and help) finds nothing in
/// what `/metrics` serves but the RFC's `controlbus_apply_ack_latency_ms`, kept in milliseconds
/// under the name the RFC, the Gateways and the runbooks use (docs/semantics.md §3).
#[test]
fn metric_names_pass_promtool_but_the_rfc_one() {
    support::assert_promtool_accepts_but_the_rfc_name(&every_metric().render());
}

#[test]
fn rules_and_dashboard_query_only_metrics_ackwatch_exposes() {
    let exposed = exposed_names();
    for file in [
        "prometheus/ackwatch.rules.yml",
        "kubernetes/prometheusrule.yaml",
        "grafana/ackwatch-dashboard.json",
    ] {
        let named = metric_names(&deploy(file));
        assert!(named.len() >= 5, "{file}: found only {named:?}");
        let unknown: Vec<_> = named.difference(&exposed).collect();
        assert!(
            unknown.is_empty(),
            "{file} queries metrics ackwatch does not expose: {unknown:?}"
        );
    }
    // The check itself must be able to fail.
    assert!(!exposed.contains("ackwatch_findings_open_total"));
    assert_eq!(
        metric_names("rate(ackwatch_findings_open_total[5m]) /runbooks/ackwatch_operations.md#x"),
        BTreeSet::from(["ackwatch_findings_open_total".to_string()])
    );
}

/// The `ackwatch.toml` block of the ConfigMap, de-indented.
fn configmap_toml() -> String {
    toml_of_configmap(&deploy("kubernetes/configmap.yaml"))
}

fn toml_of_configmap(manifest: &str) -> String {
    let start = manifest
        .find("  ackwatch.toml: |\n")
        .expect("the ConfigMap has an ackwatch.toml key");
    manifest[start..]
        .lines()
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| l.get(4..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

fn yaml_number(manifest: &str, key: &str) -> u64 {
    manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("no {key} in the manifest"))
        .parse()
        .unwrap()
}

#[test]
fn the_kubernetes_config_loads_and_agrees_with_the_statefulset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ackwatch.toml");
    std::fs::write(&path, configmap_toml()).unwrap();
    let settings = Settings::load(Some(&path)).expect("the ConfigMap's ackwatch.toml is valid");
    let statefulset = deploy("kubernetes/statefulset.yaml");

    assert!(
        settings.runtime.static_membership,
        "a StatefulSet's stable pod names are for static membership"
    );
    assert_eq!(
        settings.runtime.instance_id, "",
        "the instance id must be the pod's host name (differs per pod)"
    );
    let grace_ms = yaml_number(&statefulset, "terminationGracePeriodSeconds") * 1000;
    assert!(
        grace_ms > settings.runtime.shutdown_timeout_ms,
        "terminationGracePeriodSeconds ({grace_ms} ms) must exceed runtime.shutdown_timeout_ms ({})",
        settings.runtime.shutdown_timeout_ms
    );
    let state_dir = settings.runtime.state_dir.to_str().unwrap();
    assert!(
        statefulset.contains(&format!("mountPath: {state_dir}\n")),
        "the state volume is mounted at runtime.state_dir ({state_dir})"
    );
    let port = settings.http.listen.rsplit(':').next().unwrap();
    assert!(
        settings.http.listen.starts_with("0.0.0.0:"),
        "probes and scrapes come from outside the pod"
    );
    assert!(statefulset.contains(&format!("containerPort: {port}\n")));
    assert!(statefulset.contains("path: /readyz") && statefulset.contains("path: /healthz"));
    assert_eq!(
        settings.alerts.alertmanager_urls.len(),
        2,
        "both members of the HA pair"
    );
    // The chart's default runbook base: every pod's own /runbooks/, through the Service.
    assert_eq!(
        settings.alerts.runbook_url,
        "http://ackwatch.ackwatch.svc:9464/runbooks/{kind}.md"
    );
}

/// The chart rendered with every option (tests/helm/every-option.yaml) gives a configuration
/// ackwatch loads, holding what the values say: helm (scripts/helm.sh) renders it here.
#[test]
fn every_chart_option_renders_a_config_ackwatch_loads() {
    let out = Command::new("bash")
        .args([
            "-c",
            "source scripts/env.sh && source scripts/helm.sh && \
             \"$HELM\" template prod deploy/helm/ackwatch --namespace trading \
             -f tests/helm/every-option.yaml --show-only templates/configmap.yaml",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let manifest = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dir = tempfile::tempdir().unwrap();
    // The Secret's key, where the StatefulSet mounts it; here a file of the test's.
    let mounted = "/var/run/secrets/ackwatch/kafka/password";
    let toml = toml_of_configmap(&manifest);
    assert!(toml.contains(&format!("\"sasl.password\" = \"{mounted}\"")), "{toml}");
    let secret = dir.path().join("password");
    std::fs::write(&secret, "s3cret-from-the-secret\n").unwrap();
    let toml = toml.replace(mounted, secret.to_str().unwrap());
    let path = dir.path().join("ackwatch.toml");
    std::fs::write(&path, toml).unwrap();
    let settings = Settings::load(Some(&path)).expect("the rendered ackwatch.toml is valid");
    assert_eq!(settings.kafka.bootstrap_servers, "kafka-0.kafka:9093,kafka-1.kafka:9093");
    assert_eq!(settings.runtime.processing_guarantee.as_str(), "exactly_once_v2");
    assert_eq!(settings.runtime.num_stream_threads, 2);
    assert_eq!(settings.runtime.num_standby_replicas, 1);
    assert_eq!(settings.runtime.shutdown_timeout_ms, 20_000);
    assert_eq!(settings.policy.ack_timeout_ms, 5_000);
    assert!(settings.policy.auto_rollback);
    assert_eq!(settings.alerts.labels.get("cluster").map(String::as_str), Some("prod-eu"));
    assert_eq!(
        settings.alerts.runbook_url,
        "https://wiki.internal/ackwatch/runbooks/{kind}.md"
    );
    assert_eq!(settings.worldservice.url, "http://worldservice.control:8080/apply/signals");
    assert_eq!(
        settings.kafka.property_files.get("sasl.password"),
        Some(&secret)
    );
    assert_eq!(
        settings.kafka.properties.get("producer.linger.ms").map(String::as_str),
        Some("5")
    );
}

/// Every page of deploy/runbooks is served at /runbooks/<page> (the default alert links), and
/// nothing else is.
#[test]
fn every_shipped_runbook_is_served() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/runbooks");
    let mut shipped: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .map(|p| {
            let name = p.file_name().unwrap().to_str().unwrap().to_string();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    shipped.sort();
    let mut served: Vec<(String, String)> = ackwatch::runtime::http::RUNBOOKS
        .iter()
        .map(|(name, text)| (name.to_string(), text.to_string()))
        .collect();
    served.sort();
    assert_eq!(served, shipped);
}

fn kafka_topics_command() -> String {
    let out = Command::new("bash")
        .args(["-c", "source scripts/env.sh && echo \"$KAFKA_LIBS\""])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let libs = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(
        std::path::Path::new(&libs).join(".complete").exists(),
        "no Kafka jars in {libs}: run scripts/setup.sh"
    );
    format!("java -cp {libs}/* org.apache.kafka.tools.TopicCommand")
}

fn create_topics(names: &[(&str, &str)], partitions: &str) -> (bool, String) {
    let out = Command::new("bash")
        .arg(format!(
            "{}/deploy/create-topics.sh",
            env!("CARGO_MANIFEST_DIR")
        ))
        .args(["--bootstrap-server", &support::bootstrap()])
        .args(["--partitions", partitions, "--replication-factor", "1"])
        .env("KAFKA_TOPICS", kafka_topics_command())
        .envs(names.iter().copied())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[tokio::test]
async fn the_topic_script_creates_what_ackwatch_check_accepts_and_refuses_uneven_inputs() {
    let app = support::unique("deploy");
    let topic = |name: &str| format!("{app}.{name}");
    let (activation, ack, gap, signal, dlq) = (
        topic("activation"),
        topic("ack"),
        topic("gap"),
        topic("signal"),
        topic("dlq"),
    );
    let names = [
        ("APPLICATION_ID", app.as_str()),
        ("ACTIVATION_TOPIC", activation.as_str()),
        ("ACK_TOPIC", ack.as_str()),
        ("GAP_TOPIC", gap.as_str()),
        ("SIGNAL_TOPIC", signal.as_str()),
        ("DLQ_TOPIC", dlq.as_str()),
    ];
    let (ok, text) = create_topics(&names, "3");
    assert!(ok, "{text}");
    assert!(text.contains("co-partitioned with 3 partitions"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ackwatch.toml");
    std::fs::write(
        &config,
        format!(
            "[topics]\nactivation = {activation:?}\nack = {ack:?}\ngap = {gap:?}\nsignal = {signal:?}\n\
             dead_letter = {dlq:?}\n[kafka]\nbootstrap_servers = {:?}\n[runtime]\napplication_id = {app:?}\n\
             state_dir = {:?}\n",
            support::bootstrap(),
            dir.path().join("state")
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ackwatch"))
        .args(["check", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("changelog topic {app}-runs-changelog"))
            && stdout.contains("compacted, 3 partitions"),
        "{stdout}"
    );

    // Inputs that already exist with different partition counts: the script says so and fails.
    let uneven = support::unique("deploy-uneven");
    support::create_topic(&format!("{uneven}.ack"), 2, &[]).await;
    let (a, k) = (format!("{uneven}.activation"), format!("{uneven}.ack"));
    let (ok, text) = create_topics(
        &[
            ("APPLICATION_ID", uneven.as_str()),
            ("ACTIVATION_TOPIC", a.as_str()),
            ("ACK_TOPIC", k.as_str()),
            ("GAP_TOPIC", gap.as_str()),
            ("SIGNAL_TOPIC", signal.as_str()),
            ("DLQ_TOPIC", dlq.as_str()),
        ],
        "3",
    );
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!("{a} has 3 partitions but {k} has 2")),
        "{text}"
    );
}

/// What runs is visible on /metrics: `ackwatch_build_info` with the version and revision, and
/// the process's own resident memory, CPU seconds and open file descriptors.
#[test]
fn metrics_say_what_runs_and_what_it_costs() {
    let text = Metrics::new(["activation", "control.activation.ack"]).render();
    let build = text
        .lines()
        .find(|l| l.starts_with("ackwatch_build_info{"))
        .unwrap_or_else(|| panic!("no ackwatch_build_info: {text}"));
    assert!(
        build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION")))
            && build.contains("revision=\"")
            && build.ends_with(" 1"),
        "{build}"
    );
    for name in [
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        let value: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name}"));
        assert!(value >= 0.0, "{name} {value}");
    }
    let rss: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("process_resident_memory_bytes ")?.parse().ok())
        .unwrap();
    assert!(rss > 1e6, "the test process holds more than a MB: {rss}");
}
