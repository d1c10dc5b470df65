//! What the processor needs of the cluster, checked before it starts (`ackwatch check`,
//! `ackwatch run`), and the processing topology as Kafka Streams describes one
//! (`ackwatch topology`).

use std::time::Duration;

use anyhow::{bail, Context as _};
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;

use super::{acls, changelog};
use crate::settings::{ClientKind, Guarantee, Settings};

/// Longest the metadata request of a check may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(15);

/// What `check_cluster` does about the changelog topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangelogCheck {
    /// `ackwatch check`: report whether it exists and fits; create nothing.
    Report,
    /// `ackwatch run`: create it when missing; refuse one that is not compacted.
    Ensure,
    /// An embedded cluster without admin requests (librdkafka's mock cluster, `ackwatch demo`):
    /// the embedder created it; only its partition count is checked.
    Precreated,
}

/// What `check` and `run` verify about the cluster before processing: every topic exists, the
/// inputs are co-partitioned, the changelog matches them. Returns the input partition count and
/// one line per check; the first problem is the error (`run` starts only on a sound cluster).
pub async fn check_cluster(
    settings: &Settings,
    changelog_check: ChangelogCheck,
) -> anyhow::Result<(i32, Vec<String>)> {
    let found = inspect_cluster(settings, changelog_check).await?;
    if let Some(first) = found.problems.into_iter().next() {
        bail!(first);
    }
    Ok((
        found.partitions.expect("no problem: the inputs were found"),
        found.lines,
    ))
}

/// Every check of the cluster, each problem found listed (not only the first): `ackwatch check`.
pub struct Inspection {
    /// The input partition count, when both inputs exist with the same count.
    pub partitions: Option<i32>,
    /// One `ok: ...` line per check passed.
    pub lines: Vec<String>,
    /// One line per problem, saying what to do.
    pub problems: Vec<String>,
}

/// The problem of `kind` topics this principal may not Describe, for `run` (whose first problem
/// is its error). `check` says nothing here: its ACL checks list each with the ACLs to grant.
fn undescribable(kind: &str, hidden: &[&str], changelog_check: ChangelogCheck) -> Option<String> {
    (!hidden.is_empty() && changelog_check != ChangelogCheck::Report).then(|| {
        format!(
            "{kind} topic(s) {hidden:?} cannot be described by this principal: a Describe ACL is missing \
             (`ackwatch check` lists every ACL to grant)"
        )
    })
}

/// Runs every cluster check it can; only an unreachable cluster stops it (an error).
pub async fn inspect_cluster(
    settings: &Settings,
    changelog_check: ChangelogCheck,
) -> anyhow::Result<Inspection> {
    let config = settings.client_config(ClientKind::Admin, "admin");
    let admin: AdminClient<DefaultClientContext> = config
        .create()
        .context("cannot create a Kafka admin client")?;
    let metadata = admin
        .inner()
        .fetch_metadata(None, METADATA_TIMEOUT)
        .with_context(|| {
            format!(
                "cannot reach Kafka at {} (kafka.bootstrap_servers): is it running and reachable?",
                settings.kafka.bootstrap_servers
            )
        })?;
    let count = |name: &str| {
        metadata
            .topics()
            .iter()
            .find(|t| t.name() == name && t.error().is_none())
            .map(|t| t.partitions().len() as i32)
    };
    // A topic this principal may not Describe is left out of an all-topics answer, as a missing
    // one is; a DescribeTopics by name says which it is (a metadata request by name could instead
    // auto-create it on a broker with auto.create.topics.enable). Those are not called missing:
    // the ACL checks of `check` name what to grant.
    let topics = &settings.topics;
    let changelog = changelog::topic_name(&settings.runtime.application_id);
    let unseen: Vec<String> = [&topics.activation, &topics.ack, &topics.gap, &topics.signal, &topics.dead_letter, &changelog]
        .into_iter()
        .filter(|t| count(t).is_none())
        .cloned()
        .collect();
    let hidden_topics = acls::denied_topics(&admin, &unseen);
    let denied = |name: &str| hidden_topics.iter().any(|t| t == name);
    let absent = |name: &&String| count(name).is_none() && !denied(name);
    let mut found = Inspection {
        partitions: None,
        lines: vec![format!(
            "ok: reached Kafka at {} ({} brokers)",
            settings.kafka.bootstrap_servers,
            metadata.brokers().len()
        )],
        problems: Vec::new(),
    };
    match (count(&topics.activation), count(&topics.ack)) {
        (Some(activation), Some(ack)) if activation != ack => found.problems.push(format!(
            "input topics are not co-partitioned: {} has {activation} partitions, {} has {ack}; \
             partition p of one must join partition p of the other (docs/semantics.md §1), give them the same count",
            topics.activation, topics.ack
        )),
        (Some(activation), Some(_)) => {
            found.partitions = Some(activation);
            found.lines.push(format!(
                "ok: {} and {} are co-partitioned ({activation} partitions)",
                topics.activation, topics.ack
            ));
        }
        _ => {
            let missing: Vec<&str> = [&topics.activation, &topics.ack]
                .into_iter()
                .filter(absent)
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                found.problems.push(format!("input topic(s) {missing:?} do not exist (topics.activation / topics.ack): create them, co-partitioned"));
            }
            let hidden: Vec<&str> = [&topics.activation, &topics.ack].into_iter().filter(|t| denied(t)).map(String::as_str).collect();
            found.problems.extend(undescribable("input", &hidden, changelog_check));
        }
    }
    let missing: Vec<&str> = [&topics.gap, &topics.signal, &topics.dead_letter]
        .into_iter()
        .filter(absent)
        .map(String::as_str)
        .collect();
    let hidden: Vec<&str> = [&topics.gap, &topics.signal, &topics.dead_letter].into_iter().filter(|t| denied(t)).map(String::as_str).collect();
    found.problems.extend(undescribable("output", &hidden, changelog_check));
    if !missing.is_empty() {
        found.problems.push(format!("output topic(s) {missing:?} do not exist (topics.gap / topics.signal / topics.dead_letter): create them"));
    } else if hidden.is_empty() {
        found.lines.push(format!(
            "ok: output topics {}, {}, {} exist",
            topics.gap, topics.signal, topics.dead_letter
        ));
    }
    if changelog_check == ChangelogCheck::Report {
        let exists = count(&changelog).is_some() || denied(&changelog);
        let (lines, problems) = acls::inspect_acls(settings, &admin, &changelog, exists, found.partitions).await;
        found.lines.extend(lines);
        found.problems.extend(problems);
    }
    let Some(activation) = found.partitions else {
        return Ok(found);
    };
    match count(&changelog) {
        Some(n) if n != activation => found.problems.push(format!(
            "changelog topic {changelog} has {n} partitions but the input topics have {activation}: delete it \
             (ackwatch recreates it and restores from scratch) or restore the input partition count"
        )),
        None if denied(&changelog) => found.problems.extend(undescribable("changelog", &[&changelog], changelog_check)),
        None if changelog_check == ChangelogCheck::Report => found.lines.push(format!("ok: changelog topic {changelog} does not exist yet; `run` creates it")),
        None if changelog_check == ChangelogCheck::Precreated => found
            .problems
            .push(format!("changelog topic {changelog} does not exist on the embedded cluster")),
        Some(_) if changelog_check == ChangelogCheck::Precreated => {
            found.lines.push(format!("ok: changelog topic {changelog} ({activation} partitions, created by the embedder)"))
        }
        _ => {
            let ensured = changelog::ensure_topic(&config, &changelog, activation, settings.runtime.changelog_replication_factor).await?;
            found.lines.push(format!("ok: changelog topic {changelog} ({ensured:?}, compacted, {activation} partitions)"));
        }
    }
    Ok(found)
}

/// What `ackwatch check` verifies on this machine, each problem listed: the state directory is
/// writable and not in use by a running instance, `http.listen` can be bound, every Alertmanager
/// and WorldService answers. Returns (ok lines, problems).
pub async fn inspect_local(settings: &Settings) -> (Vec<String>, Vec<String>) {
    let (mut lines, mut problems) = (Vec::new(), Vec::new());
    let dir = &settings.runtime.state_dir;
    let probe = dir.join(format!(".ackwatch-check-{}", std::process::id()));
    let writable = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&probe, b"check"))
        .and_then(|()| std::fs::remove_file(&probe));
    match writable {
        Ok(()) => lines.push(format!("ok: runtime.state_dir {} is writable", dir.display())),
        Err(e) => problems.push(format!(
            "runtime.state_dir {} is not writable ({e}): point it at a writable directory (a persistent volume)",
            dir.display()
        )),
    }
    match std::net::TcpListener::bind(&settings.http.listen) {
        Ok(_) => lines.push(format!("ok: http.listen {} can be bound", settings.http.listen)),
        Err(e) => problems.push(format!(
            "http.listen {} cannot be bound ({e}): is another process (another ackwatch?) using it?",
            settings.http.listen
        )),
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .expect("an HTTP client without TLS builds");
    for url in &settings.alerts.alertmanager_urls {
        let shown = crate::secrets::display_url(url);
        let ready = format!("{}/-/ready", url.trim_end_matches('/'));
        match client.get(&ready).send().await {
            Ok(r) if r.status().is_success() => {
                lines.push(format!("ok: Alertmanager {shown} is ready"))
            }
            Ok(r) => problems.push(format!(
                "Alertmanager {shown} answers {} to /-/ready (alerts.alertmanager_urls)",
                r.status()
            )),
            Err(e) => problems.push(format!(
                "Alertmanager {shown} cannot be reached ({}): check alerts.alertmanager_urls",
                e.without_url()
            )),
        }
    }
    let ws = &settings.worldservice.url;
    if !ws.is_empty() {
        let shown = crate::secrets::display_url(ws);
        // Any HTTP answer means it is there (a GET of the signal endpoint may well be refused).
        match client.get(ws).send().await {
            Ok(_) => lines.push(format!("ok: WorldService {shown} answers")),
            Err(e) => problems.push(format!(
                "WorldService {shown} cannot be reached ({}): check worldservice.url",
                e.without_url()
            )),
        }
    }
    (lines, problems)
}

/// The dead-letter topic's `max.message.bytes`, when the cluster says (a dead letter is held
/// under it, so the broker never refuses one).
pub async fn dead_letter_topic_max_bytes(settings: &Settings) -> Option<usize> {
    use rdkafka::admin::{AdminOptions, ResourceSpecifier};
    let admin: AdminClient<DefaultClientContext> = settings
        .client_config(ClientKind::Admin, "admin")
        .create()
        .ok()?;
    let resource = ResourceSpecifier::Topic(&settings.topics.dead_letter);
    let options = AdminOptions::new().request_timeout(Some(METADATA_TIMEOUT));
    let configs = admin.describe_configs([&resource], &options).await.ok()?;
    configs
        .into_iter()
        .flatten()
        .flat_map(|c| c.entries)
        .find(|e| e.name == "max.message.bytes")
        .and_then(|e| e.value)
        .and_then(|v| v.parse().ok())
}

/// Kafka Streams' `TopologyDescription` of ackwatch: sources, the processor, its store, sinks.
pub fn describe(settings: &Settings) -> String {
    let t = &settings.topics;
    let store = "runs";
    let changelog = changelog::topic_name(&settings.runtime.application_id);
    let guarantee = match settings.runtime.processing_guarantee {
        Guarantee::AtLeastOnce => "at_least_once",
        Guarantee::ExactlyOnceV2 => "exactly_once_v2",
    };
    format!(
        "Topologies:\n   \
         Sub-topology: 0 (application.id {app}, processing.guarantee {guarantee})\n    \
         Source: activation-source (topics: [{act}])\n      --> ack-join\n    \
         Source: ack-source (topics: [{ack}])\n      --> ack-join\n    \
         Processor: ack-join (stores: [{store}])\n      --> gap-sink, signal-sink, dead-letter-sink\n      \
         <-- activation-source, ack-source\n    \
         Sink: gap-sink (topic: {gap})\n      <-- ack-join\n    \
         Sink: signal-sink (topic: {signal})\n      <-- ack-join\n    \
         Sink: dead-letter-sink (topic: {dlq})\n      <-- ack-join\n\
         State stores:\n    \
         {store}: RocksDB per task, key (world_id, run_id), changelog {changelog} (compacted)\n{ws}",
        ws = if settings.worldservice.url.is_empty() {
            String::new()
        } else {
            format!(
                "   Sub-topology: 1 (consumer group {app}-worldservice)\n    \
                 Source: signal-source (topics: [{signal}])\n      --> worldservice-http-sink\n    \
                 Sink: worldservice-http-sink (POST {url})\n      <-- signal-source\n",
                app = settings.runtime.application_id,
                signal = t.signal,
                url = crate::secrets::display_url(&settings.worldservice.url),
            )
        },
        app = settings.runtime.application_id,
        act = t.activation,
        ack = t.ack,
        gap = t.gap,
        signal = t.signal,
        dlq = t.dead_letter,
    )
}
