//! Standby replicas (Kafka Streams' `num.standby.replicas`): this instance keeps warm copies of
//! the stores of partitions other instances own, by applying their changelog to its own stores,
//! so that when a partition moves here its task start restores only the tail.
//!
//! Which instance is a standby of which partition comes from the broker's description of the
//! group (`owners.rs`), not from a registry of ackwatch's own: the instances are ordered by
//! their consumers' `client.id` (without the thread and role), and the `num_standby_replicas`
//! instances after a partition's owner, in a ring, are its standbys. An idle member (more
//! instances than partitions) is a standby like any other.
//!
//! A standby copy is brought up to date by the task start's own restore
//! (`changelog::restore`: from the store's checkpoint to the last commit marker), one partition
//! after the other, each store opened only for its restore and closed after it, so that a task
//! start of this process that takes the partition waits for one tail's restore at most
//! (`STORE_LOCK_WAIT`). A partition a stream thread of this process owns is never touched.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ackwatch_state::{StoreOptions, TaskStore};

use super::changelog;
use super::owners::{advertised_url_of, Member};
use super::Shared;
use crate::events::{StandbyUpdateFailed, StandbyUpdated};
use crate::settings::{ClientKind, Settings};

/// How often the standby copies are brought up to the changelog. Cost: a DescribeGroups
/// request (reused for `OWNERS_REUSED_MAX`) and, per standby partition, a store open and a
/// watermark request; a takeover restores at most this long's changelog records.
pub const STANDBY_INTERVAL: Duration = Duration::from_secs(1);

/// The instance a group member belongs to: its consumer's `client.id` without the thread and
/// role (`<base>-t<N>-consumer`), with its advertised URL (two instances configured with one
/// `client.id` still differ by their URL).
pub fn instance_of(client_id: &str) -> (String, Option<String>) {
    let url = advertised_url_of(client_id).map(str::to_string);
    let id = match &url {
        Some(url) => &client_id[..client_id.len() - url.len() - 1],
        None => client_id,
    };
    let base = id
        .strip_suffix("-consumer")
        .and_then(|rest| rest.rsplit_once("-t"))
        .filter(|(_, thread)| !thread.is_empty() && thread.bytes().all(|b| b.is_ascii_digit()))
        .map_or(id, |(base, _)| base);
    (base.to_string(), url)
}

/// The partitions `me` keeps standby copies of: those whose owner is `replicas` or fewer
/// places before `me` in the ring of instances, never those `me` owns.
pub fn standby_partitions(members: &[Member], me: &(String, Option<String>), replicas: usize) -> BTreeSet<i32> {
    let mut owned: BTreeMap<(String, Option<String>), Vec<i32>> = BTreeMap::new();
    for member in members {
        owned
            .entry(instance_of(&member.client_id))
            .or_default()
            .extend(&member.partitions);
    }
    let ring: Vec<_> = owned.keys().cloned().collect();
    let Some(at) = ring.iter().position(|i| i == me) else {
        return BTreeSet::new();
    };
    let before = replicas.min(ring.len() - 1);
    (1..=before)
        .map(|back| &ring[(at + ring.len() - back) % ring.len()])
        .flat_map(|owner| owned[owner].iter().copied())
        .filter(|p| !owned[me].contains(p))
        .collect()
}

/// This instance as [`instance_of`] names its members.
fn this_instance(settings: &Settings) -> (String, Option<String>) {
    let config = settings.client_config(ClientKind::Consumer, "t0-consumer");
    let client_id = config.get("client.id").unwrap_or_default();
    let url = settings.http.advertised();
    instance_of(&super::owners::advertising_client_id(client_id, &url))
}

/// Brings this instance's standby copies up to date every [`STANDBY_INTERVAL`] until
/// shutdown (run on a thread of its own).
pub fn standby_loop(shared: Arc<Shared>) {
    let settings = &shared.settings;
    let replicas = settings.runtime.num_standby_replicas as usize;
    let me = this_instance(settings);
    let topic = changelog::topic_name(&settings.runtime.application_id);
    let config = settings.client_config(ClientKind::Consumer, "standby");
    // The last error logged per partition (None: the group's description), so that a lasting
    // failure is one line, not one a second.
    let mut logged: BTreeMap<Option<i32>, String> = BTreeMap::new();
    let mut failed = |partition: Option<i32>, error: &anyhow::Error| {
        let text = format!("{error:#}");
        let new = logged.get(&partition) != Some(&text);
        StandbyUpdateFailed { partition, error, logged: new }.emit(&shared.metrics);
        logged.insert(partition, text);
    };
    while !shared.shutdown.load(Ordering::SeqCst) {
        let round = Instant::now();
        let wanted = match shared.owners.owners(settings) {
            Ok(owners) => standby_partitions(&owners.members, &me, replicas),
            Err(e) => {
                failed(None, &e);
                BTreeSet::new()
            }
        };
        let owned_here = shared.partitions();
        let standby: Vec<i32> = wanted.into_iter().filter(|p| !owned_here.contains(p)).collect();
        shared.metrics.standby_partitions.set(standby.len() as i64);
        for partition in standby {
            if shared.shutdown.load(Ordering::SeqCst) || shared.partitions().contains(&partition) {
                continue;
            }
            if let Err(e) = update(&config, &topic, partition, &shared) {
                failed(Some(partition), &e);
            }
        }
        std::thread::sleep(STANDBY_INTERVAL.saturating_sub(round.elapsed()));
    }
}

/// One standby copy brought up to the changelog's last commit. A store held by a stream thread
/// of this process (a task start that just took the partition) is left to it.
fn update(config: &rdkafka::ClientConfig, topic: &str, partition: i32, shared: &Shared) -> anyhow::Result<()> {
    let settings = &shared.settings;
    let (store, _) = match TaskStore::open(
        &settings.runtime.state_dir,
        &settings.runtime.application_id,
        partition,
        &StoreOptions::default(),
    ) {
        Err(e) if e.is::<ackwatch_state::StoreLocked>() => return Ok(()),
        other => other?,
    };
    let stats = changelog::restore(config, topic, partition, &store)?;
    StandbyUpdated { partition, stats: &stats }.emit(&shared.metrics);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(client_id: &str, partitions: &[i32]) -> Member {
        Member {
            client_id: client_id.to_string(),
            url: advertised_url_of(client_id).map(str::to_string),
            partitions: partitions.to_vec(),
        }
    }

    #[test]
    fn a_member_belongs_to_its_instance() {
        let check = |client_id: &str, base: &str, url: Option<&str>| {
            assert_eq!(instance_of(client_id), (base.to_string(), url.map(str::to_string)), "{client_id}");
        };
        check("ackwatch-a-t0-consumer", "ackwatch-a", None);
        check("ackwatch-a-t12-consumer@http://10.0.0.1:9464", "ackwatch-a", Some("http://10.0.0.1:9464"));
        check("shared-t1-consumer@http://b:9464", "shared", Some("http://b:9464"));
        check("rdkafka", "rdkafka", None);
        check("ackwatch-a-tx-consumer", "ackwatch-a-tx-consumer", None);
    }

    #[test]
    fn the_instances_after_the_owner_are_its_standbys() {
        // Instances a (threads 0 and 1), b, c (idle), in client.id order.
        let members = [
            member("ackwatch-b-t0-consumer", &[2, 3]),
            member("ackwatch-a-t0-consumer", &[0]),
            member("ackwatch-a-t1-consumer", &[1]),
            member("ackwatch-c-t0-consumer", &[]),
        ];
        let check = |me: &str, replicas: usize, expected: &[i32]| {
            let me = (me.to_string(), None);
            let got: Vec<i32> = standby_partitions(&members, &me, replicas).into_iter().collect();
            assert_eq!(got, expected, "{me:?} with {replicas} standbys");
        };
        check("ackwatch-a", 0, &[]);
        check("ackwatch-b", 1, &[0, 1]);
        check("ackwatch-c", 1, &[2, 3]);
        check("ackwatch-a", 1, &[]);
        check("ackwatch-a", 2, &[2, 3]);
        check("ackwatch-c", 2, &[0, 1, 2, 3]);
        // More standbys than other instances: every other instance's partitions, once.
        check("ackwatch-b", 8, &[0, 1]);
        // Not (yet) in the group: nothing.
        check("ackwatch-d", 1, &[]);
    }
}
