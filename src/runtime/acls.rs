//! The ACLs the processor needs, checked by `ackwatch check` against what the broker says this
//! principal may do: DescribeTopics and DescribeConsumerGroups with their authorized operations
//! (Kafka's KIP-430), a validate-only CreateTopics for a changelog not yet created, and, under
//! exactly_once_v2, a transactional producer initialised on a probe id of the processor's
//! transactional-id prefix.
//!
//! A broker without an authorizer reports every operation as allowed, so on an open cluster every
//! check here passes. Only what the broker denies is a problem; what it does not report (an older
//! broker) is said as such, never guessed.

use std::ffi::{c_char, c_int, CStr, CString};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::bindings as rd;
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseProducer, Producer as _};

use crate::settings::{ClientKind, Guarantee, Settings};

/// Longest one ACL request of `check` may take (each of DescribeTopics, DescribeConsumerGroups,
/// CreateTopics and the transactional probe). Cost: a broker that never answers delays `check`
/// by this much per request before the problem is listed.
pub const ACL_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// The ACL operations the processor uses, named as Kafka's `kafka-acls --operation` spells them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Operation {
    Read,
    Write,
    Create,
    Describe,
    DescribeConfigs,
}

impl Operation {
    const ALL: [Operation; 5] = [
        Operation::Read,
        Operation::Write,
        Operation::Create,
        Operation::Describe,
        Operation::DescribeConfigs,
    ];

    fn code(self) -> rd::rd_kafka_AclOperation_t {
        use rd::rd_kafka_AclOperation_t::*;
        match self {
            Operation::Read => RD_KAFKA_ACL_OPERATION_READ,
            Operation::Write => RD_KAFKA_ACL_OPERATION_WRITE,
            Operation::Create => RD_KAFKA_ACL_OPERATION_CREATE,
            Operation::Describe => RD_KAFKA_ACL_OPERATION_DESCRIBE,
            Operation::DescribeConfigs => RD_KAFKA_ACL_OPERATION_DESCRIBE_CONFIGS,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Operation::Read => "Read",
            Operation::Write => "Write",
            Operation::Create => "Create",
            Operation::Describe => "Describe",
            Operation::DescribeConfigs => "DescribeConfigs",
        }
    }
}

/// A resource the processor uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resource {
    Topic(String),
    Group(String),
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Resource::Topic(name) => write!(f, "topic {name}"),
            Resource::Group(name) => write!(f, "group {name}"),
        }
    }
}

/// What the processor needs of one resource, and what for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Need {
    pub resource: Resource,
    pub operations: Vec<Operation>,
    pub why: &'static str,
}

/// Every topic and group the processor of `settings` uses and the operations it needs of each
/// (the changelog only when it exists: a missing one needs Create, checked on its own).
pub fn needs(settings: &Settings, changelog: Option<&str>) -> Vec<Need> {
    use Operation::*;
    let t = &settings.topics;
    let app = &settings.runtime.application_id;
    let worldservice = !settings.worldservice.url.is_empty();
    let topic = |name: &str, operations: Vec<Operation>, why| Need {
        resource: Resource::Topic(name.to_string()),
        operations,
        why,
    };
    let group = |name: String, why| Need {
        resource: Resource::Group(name),
        operations: vec![Describe, Read],
        why,
    };
    let mut needs = vec![
        topic(&t.activation, vec![Describe, Read], "an input"),
        topic(&t.ack, vec![Describe, Read], "an input"),
        topic(&t.gap, vec![Describe, Write], "an output"),
        topic(&t.dead_letter, vec![Describe, Write], "the dead-letter output"),
    ];
    needs.push(match worldservice {
        true => topic(&t.signal, vec![Describe, Read, Write], "an output, read by the WorldService forwarder"),
        false => topic(&t.signal, vec![Describe, Write], "an output"),
    });
    if let Some(changelog) = changelog {
        needs.push(topic(
            changelog,
            vec![Describe, Read, Write, DescribeConfigs],
            "the changelog: written, restored from, its cleanup.policy read",
        ));
    }
    needs.push(group(app.clone(), "the processor's consumer group"));
    if worldservice {
        needs.push(group(format!("{app}-worldservice"), "the WorldService forwarder's consumer group"));
    }
    needs
}

/// What the broker said of one resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Described {
    /// The operations this principal may perform on it.
    Authorized(Vec<Operation>),
    /// The broker answered without authorized operations (a broker before KIP-430).
    NotReported,
    /// Not even Describe is allowed.
    Denied,
    /// Any other error (a topic that does not exist, say), as the broker said it.
    Failed(String),
}

/// One line per need: `Ok(line)` when every operation is allowed (or cannot be told),
/// `Err(problem)` naming the missing operations and the ACL to add.
pub fn judge(need: &Need, described: &Described, principal: &str) -> Result<String, String> {
    let ops = |ops: &[Operation]| ops.iter().map(|o| o.name()).collect::<Vec<_>>().join(", ");
    let (kind, name) = match &need.resource {
        Resource::Topic(name) => ("--topic", name),
        Resource::Group(name) => ("--group", name),
    };
    let grant = |missing: &[Operation]| {
        format!(
            "grant it with kafka-acls --add --allow-principal {principal} {} {kind} {name}",
            missing.iter().map(|o| format!("--operation {}", o.name())).collect::<Vec<_>>().join(" ")
        )
    };
    let resource = &need.resource;
    match described {
        Described::Authorized(allowed) => {
            let missing: Vec<Operation> = need
                .operations
                .iter()
                .copied()
                .filter(|o| !allowed.contains(o))
                .collect();
            match missing.is_empty() {
                true => Ok(format!("ok: {principal} may {} {resource} ({})", ops(&need.operations), need.why)),
                false => Err(format!(
                    "{principal} may not {} {resource} ({}, which needs {}): {}",
                    ops(&missing),
                    need.why,
                    ops(&need.operations),
                    grant(&missing)
                )),
            }
        }
        Described::Denied => Err(format!(
            "{principal} may not even Describe {resource} ({}, which needs {}): {}",
            need.why,
            ops(&need.operations),
            grant(&need.operations)
        )),
        Described::NotReported => Ok(format!(
            "note: the broker does not report what {principal} may do on {resource}; its ACLs are not checked"
        )),
        Described::Failed(error) => Err(format!("cannot check the ACLs of {resource}: {error}")),
    }
}

/// The principal `check` names in its lines. Not the SASL user name itself: every
/// `[kafka.properties]` value is kept out of output (docs/decisions.md "Secrets"), so the name
/// is given as where it is configured.
pub fn principal(settings: &Settings) -> String {
    let config = settings.client_config(ClientKind::Admin, "admin");
    match config.get("sasl.username") {
        Some(user) if !user.is_empty() => "User:<sasl.username>".to_string(),
        _ => "this client's principal".to_string(),
    }
}

/// Every ACL check (each problem listed): needs of the existing topics and the groups, Create of
/// a missing changelog, the transactional id under exactly_once_v2.
pub async fn inspect_acls(
    settings: &Settings,
    admin: &AdminClient<DefaultClientContext>,
    changelog: &str,
    changelog_exists: bool,
    partitions: Option<i32>,
) -> (Vec<String>, Vec<String>) {
    let (mut lines, mut problems) = (Vec::new(), Vec::new());
    let principal = principal(settings);
    let needs = needs(settings, changelog_exists.then_some(changelog));
    let (mut topics, mut groups) = (Vec::new(), Vec::new());
    for need in &needs {
        match &need.resource {
            Resource::Topic(t) => topics.push(t.clone()),
            Resource::Group(g) => groups.push(g.clone()),
        }
    }
    let described = describe(admin, rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBETOPICS, &topics)
        .and_then(|mut t| {
            t.extend(describe(admin, rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBECONSUMERGROUPS, &groups)?);
            Ok(t)
        });
    match described {
        Err(e) => problems.push(format!("cannot ask the broker what {principal} may do: {e:#}")),
        Ok(described) => {
            for need in &needs {
                let name = match &need.resource {
                    Resource::Topic(n) | Resource::Group(n) => n,
                };
                let said = described
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, d)| d.clone())
                    .unwrap_or_else(|| Described::Failed("the broker did not describe it".into()));
                match judge(need, &said, &principal) {
                    Ok(line) => lines.push(line),
                    Err(problem) => problems.push(problem),
                }
            }
        }
    }
    if let (false, Some(partitions)) = (changelog_exists, partitions) {
        match may_create(settings, admin, changelog, partitions).await {
            Ok(()) => lines.push(format!(
                "ok: {principal} may create the changelog topic {changelog} (a validate-only request); \
                 its Read, Write and DescribeConfigs are checked once `run` has created it"
            )),
            Err(e) => problems.push(format!(
                "{principal} may not create the changelog topic {changelog} ({e}): create it yourself \
                 (compacted, {partitions} partitions) or grant Create on it (kafka-acls --add --allow-principal \
                 {principal} --operation Create --topic {changelog})"
            )),
        }
    }
    if settings.runtime.processing_guarantee == Guarantee::ExactlyOnceV2 {
        let probe = format!("{}-check-probe", settings.runtime.application_id);
        match may_use_transactional_id(settings, &probe) {
            Ok(()) => lines.push(format!(
                "ok: {principal} may use transactional ids of prefix {}- (probe {probe})",
                settings.runtime.application_id
            )),
            Err(e) => problems.push(format!(
                "{principal} may not use the transactional id {probe} ({e}); exactly_once_v2 needs \
                 Write on the processor's transactional ids {app}-<member id>: grant it with kafka-acls --add \
                 --allow-principal {principal} --operation Write --operation Describe --transactional-id {app}- \
                 --resource-pattern-type prefixed",
                app = settings.runtime.application_id
            )),
        }
    }
    (lines, problems)
}

/// Those of `names` (topics an all-topics metadata answer left out) that the broker says this
/// principal may not Describe. A failed request counts none as denied: they are then reported
/// as missing, as before this check.
pub fn denied_topics(admin: &AdminClient<DefaultClientContext>, names: &[String]) -> Vec<String> {
    let op = rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBETOPICS;
    describe(admin, op, names)
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, said)| *said == Described::Denied)
        .map(|(name, _)| name)
        .collect()
}

/// A validate-only CreateTopics of the changelog: the broker authorizes it and creates nothing.
async fn may_create(
    settings: &Settings,
    admin: &AdminClient<DefaultClientContext>,
    changelog: &str,
    partitions: i32,
) -> Result<(), String> {
    let replication = TopicReplication::Fixed(settings.runtime.changelog_replication_factor);
    let topic = NewTopic::new(changelog, partitions, replication).set("cleanup.policy", "compact");
    let options = AdminOptions::new()
        .validate_only(true)
        .request_timeout(Some(ACL_REQUEST_TIMEOUT));
    match admin.create_topics([&topic], &options).await {
        Ok(results) => match results.into_iter().next() {
            Some(Err((_, code))) => Err(code.to_string()),
            _ => Ok(()),
        },
        Err(e) => Err(e.to_string()),
    }
}

/// Initialises a transactional producer of id `probe`: the broker checks Write on it. The probe id
/// is the processor's prefix plus `check`, so no member's transactional id is fenced; the
/// coordinator keeps it until `transactional.id.expiration.ms` (7 days by default).
fn may_use_transactional_id(settings: &Settings, probe: &str) -> Result<(), String> {
    let mut config = settings.client_config(ClientKind::Producer, "check");
    config.set("transactional.id", probe);
    let producer: BaseProducer = config.create().map_err(|e| e.to_string())?;
    producer
        .init_transactions(ACL_REQUEST_TIMEOUT)
        .map_err(|e| e.to_string())
}

/// Frees a librdkafka object when dropped.
struct Owned<T>(*mut T, unsafe extern "C" fn(*mut T));

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the pointer came from librdkafka's constructor of this destructor and is
            // freed once.
            unsafe { (self.1)(self.0) }
        }
    }
}

fn text(ptr: *const c_char) -> String {
    if ptr.is_null() {
        return String::new();
    }
    // SAFETY: librdkafka returns NUL-terminated strings owned by the object they came from,
    // alive while it is.
    unsafe { CStr::from_ptr(ptr) }.to_string_lossy().into_owned()
}

/// How long `describe` waits before asking again about a resource the broker could not
/// describe yet (a group coordinator still loading on a broker that just started).
const DESCRIBE_RETRY: Duration = Duration::from_millis(500);

/// DescribeTopics or DescribeConsumerGroups of `names` with authorized operations: each name
/// with what the broker said of it. A retriable error (coordinator not available or loading) is
/// asked again until [`ACL_REQUEST_TIMEOUT`] has passed.
fn describe(
    admin: &AdminClient<DefaultClientContext>,
    op: rd::rd_kafka_admin_op_t,
    names: &[String],
) -> anyhow::Result<Vec<(String, Described)>> {
    let deadline = std::time::Instant::now() + ACL_REQUEST_TIMEOUT;
    loop {
        let said = describe_once(admin, op, names)?;
        if !said.iter().any(|(_, _, retriable)| *retriable) || std::time::Instant::now() + DESCRIBE_RETRY > deadline {
            return Ok(said.into_iter().map(|(name, described, _)| (name, described)).collect());
        }
        std::thread::sleep(DESCRIBE_RETRY);
    }
}

/// One DescribeTopics or DescribeConsumerGroups, answered on a queue of its own: each name, what
/// the broker said of it, and whether that was a retriable error.
fn describe_once(
    admin: &AdminClient<DefaultClientContext>,
    op: rd::rd_kafka_admin_op_t,
    names: &[String],
) -> anyhow::Result<Vec<(String, Described, bool)>> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let rk = admin.inner().native_ptr();
    let c_names: Vec<CString> = names
        .iter()
        .map(|n| CString::new(n.as_str()))
        .collect::<Result<_, _>>()?;
    let mut ptrs: Vec<*const c_char> = c_names.iter().map(|n| n.as_ptr()).collect();
    let timeout_ms = ACL_REQUEST_TIMEOUT.as_millis() as c_int;
    // SAFETY: every pointer passed is alive for the call (names, options, queue are dropped
    // after the event is taken); results are read before the event is destroyed.
    unsafe {
        let queue = Owned(rd::rd_kafka_queue_new(rk), rd::rd_kafka_queue_destroy);
        let options = Owned(rd::rd_kafka_AdminOptions_new(rk, op), rd::rd_kafka_AdminOptions_destroy);
        let mut errstr = [0 as c_char; 256];
        rd::rd_kafka_AdminOptions_set_request_timeout(options.0, timeout_ms, errstr.as_mut_ptr(), errstr.len());
        let error = rd::rd_kafka_AdminOptions_set_include_authorized_operations(options.0, 1);
        if !error.is_null() {
            let message = text(rd::rd_kafka_error_string(error));
            rd::rd_kafka_error_destroy(error);
            anyhow::bail!("librdkafka cannot ask for authorized operations: {message}");
        }
        let topics;
        match op {
            rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBETOPICS => {
                topics = Owned(
                    rd::rd_kafka_TopicCollection_of_topic_names(ptrs.as_mut_ptr(), ptrs.len()),
                    rd::rd_kafka_TopicCollection_destroy,
                );
                rd::rd_kafka_DescribeTopics(rk, topics.0, options.0, queue.0);
            }
            _ => rd::rd_kafka_DescribeConsumerGroups(rk, ptrs.as_mut_ptr(), ptrs.len(), options.0, queue.0),
        }
        let event = Owned(rd::rd_kafka_queue_poll(queue.0, timeout_ms + 1000), rd::rd_kafka_event_destroy);
        anyhow::ensure!(!event.0.is_null(), "no answer within {ACL_REQUEST_TIMEOUT:?}");
        if rd::rd_kafka_event_error(event.0) != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            anyhow::bail!("{}", text(rd::rd_kafka_event_error_string(event.0)));
        }
        let mut count = 0usize;
        let out = if op == rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBETOPICS {
            let result = rd::rd_kafka_event_DescribeTopics_result(event.0);
            anyhow::ensure!(!result.is_null(), "the answer is not a DescribeTopics result");
            let items = rd::rd_kafka_DescribeTopics_result_topics(result, &mut count);
            Accessors {
                name: rd::rd_kafka_TopicDescription_name,
                error: rd::rd_kafka_TopicDescription_error,
                operations: rd::rd_kafka_TopicDescription_authorized_operations,
            }
            .read(items, count)
        } else {
            let result = rd::rd_kafka_event_DescribeConsumerGroups_result(event.0);
            anyhow::ensure!(!result.is_null(), "the answer is not a DescribeConsumerGroups result");
            let items = rd::rd_kafka_DescribeConsumerGroups_result_groups(result, &mut count);
            Accessors {
                name: rd::rd_kafka_ConsumerGroupDescription_group_id,
                error: rd::rd_kafka_ConsumerGroupDescription_error,
                operations: rd::rd_kafka_ConsumerGroupDescription_authorized_operations,
            }
            .read(items, count)
        };
        Ok(out)
    }
}

/// librdkafka's accessors of one kind of description (a topic's or a group's).
struct Accessors<T> {
    name: unsafe extern "C" fn(*const T) -> *const c_char,
    error: unsafe extern "C" fn(*const T) -> *const rd::rd_kafka_error_t,
    operations: unsafe extern "C" fn(*const T, *mut usize) -> *const rd::rd_kafka_AclOperation_t,
}

impl<T> Accessors<T> {
    /// Each of the `count` descriptions at `items`: its name and what the broker said of it.
    ///
    /// SAFETY: `items` points at `count` live descriptions of the event being read.
    unsafe fn read(&self, items: *mut *const T, count: usize) -> Vec<(String, Described, bool)> {
        (0..count)
            .map(|i| {
                let item = *items.add(i);
                let mut n = 0usize;
                let ops = (self.operations)(item, &mut n);
                let error = (self.error)(item);
                let retriable = !error.is_null()
                    && (rd::rd_kafka_error_is_retriable(error) != 0 || transient(rd::rd_kafka_error_code(error)));
                (text((self.name)(item)), classify(error, ops, n), retriable)
            })
            .collect()
    }
}

/// Errors of a broker that cannot answer for a resource yet: a group coordinator being elected
/// or loading its partition of `__consumer_offsets` (the first group request on a new broker),
/// a leader moving, a request timing out.
fn transient(code: rd::rd_kafka_resp_err_t) -> bool {
    use rd::rd_kafka_resp_err_t::*;
    matches!(
        code,
        RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE
            | RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS
            | RD_KAFKA_RESP_ERR_NOT_COORDINATOR
            | RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE
            | RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION
            | RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT
            | RD_KAFKA_RESP_ERR__TIMED_OUT
            | RD_KAFKA_RESP_ERR__TRANSPORT
    )
}

/// What one described resource says: its error, or its authorized operations.
///
/// SAFETY: `error` is null or a live error; `ops` is null or points at `n` operations.
unsafe fn classify(
    error: *const rd::rd_kafka_error_t,
    ops: *const rd::rd_kafka_AclOperation_t,
    n: usize,
) -> Described {
    use rd::rd_kafka_resp_err_t::*;
    if !error.is_null() {
        let code = rd::rd_kafka_error_code(error);
        return match code {
            RD_KAFKA_RESP_ERR_NO_ERROR => Described::NotReported,
            RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED | RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED => {
                Described::Denied
            }
            _ => Described::Failed(format!(
                "{} ({})",
                text(rd::rd_kafka_error_string(error)),
                text(rd::rd_kafka_err2name(code))
            )),
        };
    }
    if ops.is_null() {
        return Described::NotReported;
    }
    let allowed = std::slice::from_raw_parts(ops, n);
    Described::Authorized(
        Operation::ALL
            .into_iter()
            .filter(|o| allowed.contains(&o.code()))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use Operation::*;

    fn need(resource: Resource, operations: &[Operation]) -> Need {
        Need { resource, operations: operations.to_vec(), why: "an input" }
    }

    fn check(described: Described, expected: Result<&str, &str>) {
        let need = need(Resource::Topic("act".into()), &[Describe, Read]);
        let got = judge(&need, &described, "User:aw");
        match (&got, expected) {
            (Ok(line), Ok(want)) | (Err(line), Err(want)) => assert!(line.contains(want), "{got:?} lacks {want:?}"),
            _ => panic!("{described:?}: {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn a_need_is_met_only_by_all_its_operations() {
        check(Described::Authorized(vec![Describe, Read, Write]), Ok("ok: User:aw may Describe, Read topic act"));
        check(
            Described::Authorized(vec![Describe]),
            Err("User:aw may not Read topic act (an input, which needs Describe, Read): grant it with kafka-acls --add --allow-principal User:aw --operation Read --topic act"),
        );
        check(Described::Authorized(vec![]), Err("may not Describe, Read topic act"));
        check(Described::Denied, Err("may not even Describe topic act"));
        check(Described::NotReported, Ok("note: the broker does not report"));
        check(Described::Failed("Broker: Unknown topic".into()), Err("cannot check the ACLs of topic act: Broker: Unknown topic"));
    }

    #[test]
    fn the_processor_needs_what_it_uses() {
        let mut settings = Settings::default();
        let names = |needs: Vec<Need>| -> Vec<String> {
            needs
                .iter()
                .map(|n| format!("{}:{}", n.resource, n.operations.iter().map(|o| o.name()).collect::<Vec<_>>().join("+")))
                .collect()
        };
        let t = settings.topics.clone();
        assert_eq!(
            names(needs(&settings, None)),
            [
                format!("topic {}:Describe+Read", t.activation),
                format!("topic {}:Describe+Read", t.ack),
                format!("topic {}:Describe+Write", t.gap),
                format!("topic {}:Describe+Write", t.dead_letter),
                format!("topic {}:Describe+Write", t.signal),
                "group ackwatch:Describe+Read".to_string(),
            ]
        );
        settings.worldservice.url = "http://127.0.0.1:1/signals".into();
        let with = names(needs(&settings, Some("ackwatch-runs-changelog")));
        assert!(with.contains(&format!("topic {}:Describe+Read+Write", t.signal)), "{with:?}");
        assert!(with.contains(&"topic ackwatch-runs-changelog:Describe+Read+Write+DescribeConfigs".to_string()), "{with:?}");
        assert!(with.contains(&"group ackwatch-worldservice:Describe+Read".to_string()), "{with:?}");
    }
}
