//! Which member of the consumer group owns a world's partition and where it answers HTTP: the
//! owner lookup of the interactive queries (Kafka Streams' `application.server` metadata).
//!
//! Nothing here is a registry of ackwatch's own: the broker's view of the group is asked
//! (DescribeGroups, classic protocol). Each stream thread's consumer advertises its instance's
//! `http.advertised_url` in its `client.id` (`<id>@<url>`), since librdkafka's built-in
//! assignors carry no user data in the subscription; its assignment is decoded from the
//! member's classic `ConsumerProtocolAssignment`.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;

use crate::settings::{ClientKind, Settings};

/// Longest one DescribeGroups request of a query may take. Cost: an HTTP query to a non-owner
/// waits this long at worst before it answers 503.
pub const OWNERS_FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest a fetched group membership answers queries before it is asked again. Cost: for this
/// long after a rebalance a query may be sent to the previous owner (which then answers from
/// its own view and never redirects a redirected query again).
pub const OWNERS_REUSED_MAX: Duration = Duration::from_secs(2);

/// What separates a consumer's `client.id` from the instance's advertised URL in it.
const ADVERTISED_SEPARATOR: char = '@';

/// The stream thread consumer's `client.id`: `<id>@<url>` when the instance advertises a URL.
pub fn advertising_client_id(client_id: &str, advertised_url: &str) -> String {
    match advertised_url {
        "" => client_id.to_string(),
        url => format!("{client_id}{ADVERTISED_SEPARATOR}{url}"),
    }
}

/// The URL a member's `client.id` advertises (`<id>@http://…`), if any.
pub fn advertised_url_of(client_id: &str) -> Option<&str> {
    ["@http://", "@https://"]
        .iter()
        .filter_map(|marker| client_id.rfind(marker))
        .max()
        .map(|at| &client_id[at + 1..])
}

/// A malformed `ConsumerProtocolAssignment`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the member's assignment is not a classic consumer assignment: {0}")]
pub struct AssignmentError(&'static str);

/// The topic partitions of a classic `ConsumerProtocolAssignment` (big-endian: version i16,
/// then an i32 count of topics, each an i16-length name and an i32 count of i32 partitions;
/// the user data after them is not read). Empty bytes: nothing assigned (a member that has not
/// synced yet).
pub fn decode_assignment(bytes: &[u8]) -> Result<Vec<(String, Vec<i32>)>, AssignmentError> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let mut rest = bytes;
    let mut take = |n: usize, what: &'static str| -> Result<&[u8], AssignmentError> {
        if rest.len() < n {
            return Err(AssignmentError(what));
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Ok(head)
    };
    let _version = take(2, "truncated version")?;
    let topics = i32::from_be_bytes(take(4, "truncated topic count")?.try_into().unwrap());
    // Each topic needs at least 6 bytes: a count cannot promise more than the bytes hold.
    if topics < 0 || topics as usize > bytes.len() / 6 {
        return Err(AssignmentError("impossible topic count"));
    }
    let mut assigned = Vec::with_capacity(topics as usize);
    for _ in 0..topics {
        let len = i16::from_be_bytes(take(2, "truncated topic name length")?.try_into().unwrap());
        let len =
            usize::try_from(len).map_err(|_| AssignmentError("negative topic name length"))?;
        let name = std::str::from_utf8(take(len, "truncated topic name")?)
            .map_err(|_| AssignmentError("topic name not UTF-8"))?
            .to_string();
        let count = i32::from_be_bytes(take(4, "truncated partition count")?.try_into().unwrap());
        if count < 0 || count as usize > bytes.len() / 4 {
            return Err(AssignmentError("impossible partition count"));
        }
        let mut partitions = Vec::with_capacity(count as usize);
        for _ in 0..count {
            partitions.push(i32::from_be_bytes(
                take(4, "truncated partition")?.try_into().unwrap(),
            ));
        }
        assigned.push((name, partitions));
    }
    Ok(assigned)
}

/// One member of the group as the broker describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub client_id: String,
    /// Its instance's advertised URL (none: it advertises none).
    pub url: Option<String>,
    /// Its partitions of the activation topic.
    pub partitions: Vec<i32>,
}

/// The group as the broker described it at one moment.
#[derive(Clone, Debug)]
pub struct Owners {
    /// The group's state (`Stable` unless rebalancing).
    pub state: String,
    pub members: Vec<Member>,
    fetched: Instant,
}

impl Owners {
    /// The member that owns `partition` of the activation topic (none while the group is
    /// rebalancing, or when no member has it).
    pub fn owner_of(&self, partition: i32) -> Option<&Member> {
        self.members
            .iter()
            .find(|m| m.partitions.contains(&partition))
    }
}

/// Asks the broker for the group's members, at most once per [`OWNERS_REUSED_MAX`]; its admin
/// client is made on the first query.
#[derive(Default)]
pub struct OwnerLookup {
    client: OnceLock<Result<AdminClient<DefaultClientContext>, String>>,
    last: Mutex<Option<Owners>>,
}

impl OwnerLookup {
    /// The group's members (blocking: call from a blocking task).
    pub fn owners(&self, settings: &Settings) -> anyhow::Result<Owners> {
        let mut last = self.last.lock().expect("not poisoned");
        if let Some(owners) = last
            .as_ref()
            .filter(|o| o.fetched.elapsed() < OWNERS_REUSED_MAX)
        {
            return Ok(owners.clone());
        }
        let client = self
            .client
            .get_or_init(|| {
                settings
                    .client_config(ClientKind::Admin, "queries")
                    .create()
                    .map_err(|e| format!("cannot create the owner lookup's admin client: {e}"))
            })
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let group = &settings.runtime.application_id;
        let list = client
            .inner()
            .fetch_group_list(Some(group), OWNERS_FETCH_TIMEOUT)
            .with_context(|| format!("cannot describe the consumer group {group:?}"))?;
        let described = list
            .groups()
            .first()
            .with_context(|| format!("the broker does not know the consumer group {group:?}"))?;
        let mut members = Vec::new();
        for member in described.members() {
            let assigned = decode_assignment(member.assignment().unwrap_or_default())
                .with_context(|| format!("member {:?}", member.client_id()))?;
            let partitions = assigned
                .into_iter()
                .filter(|(topic, _)| *topic == settings.topics.activation)
                .flat_map(|(_, partitions)| partitions)
                .collect();
            members.push(Member {
                client_id: member.client_id().to_string(),
                url: advertised_url_of(member.client_id()).map(str::to_string),
                partitions,
            });
        }
        let owners = Owners {
            state: described.state().to_string(),
            members,
            fetched: Instant::now(),
        };
        *last = Some(owners.clone());
        Ok(owners)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(topics: &[(&str, &[i32])], user_data: &[u8]) -> Vec<u8> {
        let mut out = vec![0, 1];
        out.extend((topics.len() as i32).to_be_bytes());
        for (name, partitions) in topics {
            out.extend((name.len() as i16).to_be_bytes());
            out.extend(name.as_bytes());
            out.extend((partitions.len() as i32).to_be_bytes());
            for p in *partitions {
                out.extend(p.to_be_bytes());
            }
        }
        out.extend((user_data.len() as i32).to_be_bytes());
        out.extend(user_data);
        out
    }

    #[test]
    fn assignments_decode_or_say_what_is_wrong() {
        let check = |bytes: &[u8], expected: Result<Vec<(&str, Vec<i32>)>, &'static str>| {
            let got = decode_assignment(bytes);
            let expected = expected
                .map(|t| t.into_iter().map(|(n, p)| (n.to_string(), p)).collect())
                .map_err(AssignmentError);
            assert_eq!(got, expected, "{bytes:?}");
        };
        let two = assignment(
            &[("activation", &[0, 2]), ("control.activation.ack", &[0, 2])],
            b"xy",
        );
        check(
            &two,
            Ok(vec![
                ("activation", vec![0, 2]),
                ("control.activation.ack", vec![0, 2]),
            ]),
        );
        check(&assignment(&[], b""), Ok(vec![]));
        check(b"", Ok(vec![]));
        check(&two[..two.len() - 12], Err("truncated partition"));
        check(&[0, 1, 0x7f, 0, 0, 0], Err("impossible topic count"));
        check(
            &[0, 1, 0, 0, 0, 1, 0xff, 0xff],
            Err("negative topic name length"),
        );
        check(
            &[0, 1, 0, 0, 0, 1, 0, 1, 0xc3, 0, 0, 0, 0],
            Err("topic name not UTF-8"),
        );
        check(&[0], Err("truncated version"));
    }

    #[test]
    fn a_client_id_carries_the_advertised_url() {
        let check = |id: &str, url: &str| {
            let client_id = advertising_client_id(id, url);
            assert_eq!(
                advertised_url_of(&client_id),
                (!url.is_empty()).then_some(url),
                "{client_id}"
            );
        };
        check("ackwatch-a-t0-consumer", "http://127.0.0.1:9464");
        check(
            "ackwatch-a-t0-consumer",
            "https://ackwatch-0.ackwatch.ns.svc:9464",
        );
        check("ackwatch-a-t0-consumer", "");
        check("me@example-t0-consumer", "http://ackwatch-0.ackwatch:9464");
        check("me@example-t0-consumer", "");
        check("rdkafka", "");
    }
}
