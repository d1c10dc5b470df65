//! The changelog topic of the run stores: creation and validation, writing a commit's changes,
//! and restoring a task's store from it (Kafka I/O; the store itself is `ackwatch-state`).

use std::time::{Duration, Instant};

use ackwatch_state::{codec, Record, StoreOptions, TaskStore};
use anyhow::{bail, Context};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};

const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Records applied to the store per batch while restoring. Cost: this many records in memory.
pub const RESTORE_BATCH_RECORDS_MAX: usize = 10_000;

pub fn topic_name(application_id: &str) -> String {
    format!("{application_id}-runs-changelog")
}

#[derive(Debug, PartialEq, Eq)]
pub enum Ensured {
    Created,
    Existing,
}

/// Creates the changelog topic (compacted, `partitions` partitions) when it is missing; refuses,
/// saying what to do, when an existing one has another partition count or is not compacted.
pub async fn ensure_topic(
    config: &ClientConfig,
    topic: &str,
    partitions: i32,
    replication: i32,
) -> anyhow::Result<Ensured> {
    let admin: AdminClient<DefaultClientContext> = config
        .create()
        .context("cannot create a Kafka admin client")?;
    let metadata = admin
        .inner()
        .fetch_metadata(Some(topic), ADMIN_TIMEOUT)
        .context("cannot read cluster metadata")?;
    let found = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .filter(|t| t.error().is_none())
        .map(|t| t.partitions().len() as i32);
    match found {
        None => {
            let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication)).set("cleanup.policy", "compact");
            let results = admin.create_topics([&new], &AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT))).await?;
            for result in results {
                match result {
                    Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((name, code)) => bail!("cannot create changelog topic {name}: {code}"),
                }
            }
            Ok(Ensured::Created)
        }
        Some(n) if n != partitions => bail!(
            "changelog topic {topic} has {n} partitions but the input topics have {partitions}: each task's \
             changelog partition must match its input partition; delete {topic} (ackwatch recreates it and \
             restores state from scratch) or restore the input partition count"
        ),
        Some(_) => {
            let resource = ResourceSpecifier::Topic(topic);
            let configs = admin.describe_configs([&resource], &AdminOptions::new().request_timeout(Some(ADMIN_TIMEOUT))).await?;
            let policy = configs
                .into_iter()
                .flatten()
                .flat_map(|c| c.entries)
                .find(|e| e.name == "cleanup.policy")
                .and_then(|e| e.value);
            match policy {
                Some(p) if p.split(',').any(|v| v.trim() == "compact") => Ok(Ensured::Existing),
                other => bail!(
                    "changelog topic {topic} has cleanup.policy={}, not compact: old run states would expire and \
                     restores lose state; set cleanup.policy=compact on it",
                    other.as_deref().unwrap_or("(unknown)")
                ),
            }
        }
    }
}

/// Writes a commit's changes to partition p of the changelog.
pub struct ChangelogWriter {
    producer: FutureProducer,
    topic: String,
}

impl ChangelogWriter {
    pub fn new(config: &ClientConfig, topic: &str) -> anyhow::Result<Self> {
        let producer = config
            .clone()
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("compression.type", "lz4")
            .create()
            .context("cannot create the changelog producer")?;
        Ok(ChangelogWriter {
            producer,
            topic: topic.to_string(),
        })
    }

    /// Produces the records and waits until the broker has them all; returns the offset after
    /// the last one (what the store's checkpoint records), or `None` when there was nothing.
    pub async fn write(&self, partition: i32, records: &[Record]) -> anyhow::Result<Option<i64>> {
        let mut pending = Vec::with_capacity(records.len());
        for (key, value) in records {
            let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic)
                .partition(partition)
                .key(&key[..]);
            if let Some(value) = value {
                record = record.payload(&value[..]);
            }
            // Waits for queue space rather than failing: the commit must write every change.
            let mut record = record;
            let delivery = loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => break delivery,
                    Err((e, r)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        record = r;
                    }
                    Err((e, _)) => bail!("cannot produce to changelog {}: {e}", self.topic),
                }
            };
            pending.push(delivery);
        }
        let mut end = None;
        for delivery in pending {
            let delivered = delivery.await.context("changelog producer closed")?;
            let delivery = delivered.map_err(|(e, _)| {
                anyhow::anyhow!("changelog {} refused a record: {e}", self.topic)
            })?;
            end = Some(end.unwrap_or(0).max(delivery.offset + 1));
        }
        Ok(end)
    }
}

/// What a restore did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreStats {
    pub from_offset: i64,
    pub to_offset: i64,
    pub records: u64,
    pub bytes: u64,
    pub duration: Duration,
    /// Keys of the records after the last commit marker: a commit that did not finish (the
    /// previous owner died while writing it). They were not applied; the new owner must write
    /// those keys' current values (or tombstones) in its first commit, so that a later restore
    /// that reads past them (followed by newer markers) never applies them.
    pub unfinished_keys: Vec<Vec<u8>>,
    /// Why the store was rebuilt from the changelog's beginning although it had a checkpoint.
    pub full_restore_reason: Option<String>,
}

/// Where a restore starts reading the changelog.
enum Start {
    /// The store and its checkpoint agree on this offset, within the retained range.
    Checkpoint(i64),
    /// From the beginning, the store cleared first; with the reason when the store had a
    /// checkpoint it could not be trusted with.
    Beginning(Option<String>),
}

/// A store is read from its checkpoint only when the store itself says it reflects that
/// offset: a store deleted under its checkpoint, or an older copy put back beside a newer one,
/// would otherwise be taken as current and the task would run on empty or stale state.
fn restore_start(store: &TaskStore, low: i64, high: i64) -> anyhow::Result<Start> {
    let Some(checkpoint) = store.checkpoint() else {
        return Ok(Start::Beginning(None));
    };
    let at = checkpoint.changelog_offset;
    let why = match store.changelog_position()? {
        _ if !(low..=high).contains(&at) => format!(
            "the checkpoint ({at}) is outside the changelog's retained offsets {low}..{high}"
        ),
        Some(position) if position == at => return Ok(Start::Checkpoint(at)),
        Some(position) => format!(
            "the store reflects changelog offset {position} but its checkpoint says {at} \
             (a store copy from another time?)"
        ),
        None => format!(
            "the checkpoint says {at} but the store holds no changelog position (the store was \
             deleted or replaced)"
        ),
    };
    Ok(Start::Beginning(Some(why)))
}

/// Tail records read per step when looking for the last commit marker; doubled each step.
/// Cost: one fetch of this many records (a commit's changelog records, in the common case).
const MARKER_SEARCH_RECORDS_MIN: i64 = 1_000;

/// Brings `store` up to the last complete commit of partition p of the changelog: from the
/// store's checkpoint when it is within the partition's retained range, from the beginning
/// (after clearing the store) otherwise. Records after the last commit marker are a commit
/// that never finished: they are not applied, and their keys are returned.
pub fn restore(
    config: &ClientConfig,
    topic: &str,
    partition: i32,
    store: &TaskStore,
) -> anyhow::Result<RestoreStats> {
    restore_with_progress(config, topic, partition, store, &|_| {})
}

fn restore_consumer(config: &ClientConfig, topic: &str) -> anyhow::Result<BaseConsumer> {
    // librdkafka wants a group id even for a manual assignment; it joins no group and commits
    // nothing, so the restore never touches any consumer group's offsets.
    config
        .clone()
        .set("group.id", format!("{topic}-restore"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        // Only committed changelog records: an aborted exactly_once_v2 commit never reaches a store.
        .set("isolation.level", "read_committed")
        // Restore reads one partition as fast as it can: large fetches, deep local queue.
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "16777216")
        .set("queued.max.messages.kbytes", "262144")
        .create()
        .context("cannot create the restore consumer")
}

/// Called with each changelog record read: (offset, key, value or tombstone).
type EachRecord<'a> = dyn FnMut(i64, &[u8], Option<&[u8]>) -> anyhow::Result<()> + 'a;

/// Reads `[from, to)` of the partition, calling `each` with every record.
fn read_range(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    from: i64,
    to: i64,
    each: &mut EachRecord<'_>,
) -> anyhow::Result<()> {
    if from >= to {
        return Ok(());
    }
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, partition, Offset::Offset(from))?;
    consumer.assign(&assignment)?;
    let mut next = from;
    while next < to {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                next = m.offset() + 1;
                if m.offset() < to {
                    let key = m.key().context("changelog record without a key")?;
                    each(m.offset(), key, m.payload())?;
                }
            }
            Some(Err(e)) => {
                // The client's error kept as the source: a task start tells a broker that did
                // not answer (tried again) from a broken store.
                return Err(anyhow::Error::new(e)
                    .context(format!("cannot read changelog {topic}[{partition}]")));
            }
            // The last offsets may hold no record (transaction markers): the position says.
            None => next = next.max(position(consumer, topic, partition)?.unwrap_or(next)),
        }
    }
    Ok(())
}

/// The offset of the last commit marker in `[low, high)`, read backwards in growing steps.
fn last_marker(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    low: i64,
    high: i64,
) -> anyhow::Result<Option<i64>> {
    let mut end = high;
    let mut step = MARKER_SEARCH_RECORDS_MIN;
    while end > low {
        let start = (end - step).max(low);
        let mut found = None;
        read_range(
            consumer,
            topic,
            partition,
            start,
            end,
            &mut |offset, key, _| {
                if key == codec::COMMIT_KEY {
                    found = Some(offset);
                }
                Ok(())
            },
        )?;
        if found.is_some() {
            return Ok(found);
        }
        end = start;
        step = step.saturating_mul(2);
    }
    Ok(None)
}

/// [`restore`], reporting the changelog offsets left to read after every applied batch.
pub fn restore_with_progress(
    config: &ClientConfig,
    topic: &str,
    partition: i32,
    store: &TaskStore,
    progress: &dyn Fn(i64),
) -> anyhow::Result<RestoreStats> {
    let started = Instant::now();
    let consumer = restore_consumer(config, topic)?;
    let (low, high) = consumer
        .fetch_watermarks(topic, partition, ADMIN_TIMEOUT)
        .with_context(|| format!("cannot read the offsets of {topic}[{partition}]"))?;
    let mut stats = RestoreStats {
        from_offset: low,
        to_offset: high,
        records: 0,
        bytes: 0,
        duration: Duration::ZERO,
        unfinished_keys: Vec::new(),
        full_restore_reason: None,
    };
    let from = match restore_start(store, low, high)? {
        Start::Checkpoint(offset) => offset,
        Start::Beginning(why) => {
            if let Some(why) = why {
                stats.full_restore_reason = Some(why);
            }
            store.clear()?;
            low
        }
    };
    // Applied: everything up to and including the last marker.
    let applied_end = last_marker(&consumer, topic, partition, from, high)?.map_or(from, |m| m + 1);
    stats.from_offset = from;
    stats.to_offset = high;
    let mut batch: Vec<Record> = Vec::with_capacity(RESTORE_BATCH_RECORDS_MAX);
    read_range(
        &consumer,
        topic,
        partition,
        from,
        high,
        &mut |offset, key, value| {
            stats.bytes += (key.len() + value.map_or(0, <[u8]>::len)) as u64;
            if offset >= applied_end {
                // Not applied, but checked like applied records: a changelog of another format
                // (which has no markers) must be an error, not a commit to write over.
                codec::check_record(key, value).with_context(|| refused(topic, partition))?;
                stats.unfinished_keys.push(key.to_vec());
                return Ok(());
            }
            batch.push((key.to_vec(), value.map(<[u8]>::to_vec)));
            if batch.len() >= RESTORE_BATCH_RECORDS_MAX {
                stats.records += apply(store, &batch, topic, partition)?;
                batch.clear();
                progress(high - offset - 1);
            }
            Ok(())
        },
    )?;
    stats.records += apply(store, &batch, topic, partition)?;
    // With an unfinished commit at the end, the checkpoint stays before it, so a restore of
    // this store reads it again (and again leaves it out, unless newer commits follow it).
    let checkpoint = if stats.unfinished_keys.is_empty() {
        high
    } else {
        applied_end
    };
    store.commit_records(&[], Some(checkpoint))?;
    stats.duration = started.elapsed();
    Ok(stats)
}

/// A store brought up to the changelog and read, ready for the engine: `loaded` is what the
/// caller's loader made of its contents (the engine, or for tests `ackwatch_state::Contents`).
pub struct Restored<L> {
    pub store: TaskStore,
    pub loaded: L,
    pub stats: RestoreStats,
}

/// Restores `store` from partition p of the changelog and reads it with `load` (which sees the
/// restore's stats). A store whose contents cannot be read (a corrupt file RocksDB only notices
/// on read) is rebuilt: wiped, restored from the beginning, read again by a new call of `load`,
/// with the reason in `stats.full_restore_reason`.
pub fn restore_and_load<L>(
    config: &ClientConfig,
    topic: &str,
    partition: i32,
    store: TaskStore,
    options: &StoreOptions,
    progress: &dyn Fn(i64),
    mut load: impl FnMut(&TaskStore, &RestoreStats) -> anyhow::Result<L>,
) -> anyhow::Result<Restored<L>> {
    let stats = restore_with_progress(config, topic, partition, &store, progress)?;
    match load(&store, &stats) {
        Ok(loaded) => Ok(Restored {
            store,
            loaded,
            stats,
        }),
        Err(e) => {
            let why = format!("the store's contents cannot be read ({e:#})");
            let store = store.rebuild(options)?;
            let mut stats = restore_with_progress(config, topic, partition, &store, progress)?;
            stats.full_restore_reason = Some(why);
            let loaded = load(&store, &stats)?;
            Ok(Restored {
                store,
                loaded,
                stats,
            })
        }
    }
}

/// Applies restored records; a record the store refuses (another format, a bad key) names the
/// changelog and what to do.
fn apply(store: &TaskStore, batch: &[Record], topic: &str, partition: i32) -> anyhow::Result<u64> {
    store
        .apply_changelog(batch.iter().map(|(k, v)| (&k[..], v.as_deref())))
        .with_context(|| refused(topic, partition))
}

fn refused(topic: &str, partition: i32) -> String {
    format!(
        "changelog {topic}[{partition}] holds a record this ackwatch cannot restore: run the \
         ackwatch version that wrote it, or start from empty state (delete the changelog topic \
         and the state directory; ackwatch recreates both)"
    )
}

fn position(consumer: &BaseConsumer, topic: &str, partition: i32) -> anyhow::Result<Option<i64>> {
    let list = consumer.position()?;
    Ok(list
        .find_partition(topic, partition)
        .and_then(|e| e.offset().to_raw()))
}
