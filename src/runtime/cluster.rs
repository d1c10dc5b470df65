//! What the processor needs of the cluster, checked before it starts (`ackwatch check`,
//! `ackwatch run`), and the processing topology as Kafka Streams describes one
//! (`ackwatch topology`).

use std::time::Duration;

use anyhow::{bail, Context as _};
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;

use super::changelog;
use crate::settings::{Guarantee, Settings};

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
/// one line per check.
pub async fn check_cluster(
    settings: &Settings,
    changelog_check: ChangelogCheck,
) -> anyhow::Result<(i32, Vec<String>)> {
    let config = settings.kafka.client_config();
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
    let mut lines = vec![format!(
        "ok: reached Kafka at {} ({} brokers)",
        settings.kafka.bootstrap_servers,
        metadata.brokers().len()
    )];
    let topics = &settings.topics;
    let (Some(activation), Some(ack)) = (count(&topics.activation), count(&topics.ack)) else {
        let missing: Vec<&str> = [&topics.activation, &topics.ack]
            .into_iter()
            .filter(|t| count(t).is_none())
            .map(String::as_str)
            .collect();
        bail!("input topic(s) {missing:?} do not exist (topics.activation / topics.ack): create them, co-partitioned");
    };
    if activation != ack {
        bail!(
            "input topics are not co-partitioned: {} has {activation} partitions, {} has {ack}; \
             partition p of one must join partition p of the other (docs/semantics.md §1), give them the same count",
            topics.activation,
            topics.ack
        );
    }
    lines.push(format!(
        "ok: {} and {} are co-partitioned ({activation} partitions)",
        topics.activation, topics.ack
    ));
    let missing: Vec<&str> = [&topics.gap, &topics.signal, &topics.dead_letter]
        .into_iter()
        .filter(|t| count(t).is_none())
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        bail!("output topic(s) {missing:?} do not exist (topics.gap / topics.signal / topics.dead_letter): create them");
    }
    lines.push(format!(
        "ok: output topics {}, {}, {} exist",
        topics.gap, topics.signal, topics.dead_letter
    ));
    let changelog = changelog::topic_name(&settings.runtime.application_id);
    match count(&changelog) {
        Some(n) if n != activation => bail!(
            "changelog topic {changelog} has {n} partitions but the input topics have {activation}: delete it \
             (ackwatch recreates it and restores from scratch) or restore the input partition count"
        ),
        None if changelog_check == ChangelogCheck::Report => lines.push(format!("ok: changelog topic {changelog} does not exist yet; `run` creates it")),
        None if changelog_check == ChangelogCheck::Precreated => {
            bail!("changelog topic {changelog} does not exist on the embedded cluster")
        }
        Some(_) if changelog_check == ChangelogCheck::Precreated => {
            lines.push(format!("ok: changelog topic {changelog} ({activation} partitions, created by the embedder)"))
        }
        _ => {
            let ensured = changelog::ensure_topic(&config, &changelog, activation, settings.runtime.changelog_replication_factor).await?;
            lines.push(format!("ok: changelog topic {changelog} ({ensured:?}, compacted, {activation} partitions)"));
        }
    }
    Ok((activation, lines))
}

/// The dead-letter topic's `max.message.bytes`, when the cluster says (a dead letter is held
/// under it, so the broker never refuses one).
pub async fn dead_letter_topic_max_bytes(settings: &Settings) -> Option<usize> {
    use rdkafka::admin::{AdminOptions, ResourceSpecifier};
    let admin: AdminClient<DefaultClientContext> = settings.kafka.client_config().create().ok()?;
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
