//! `ackwatch check` against a broker that enforces ACLs (the test's own, from
//! `scripts/kafka-broker.sh start-secured`: SASL/PLAIN, StandardAuthorizer, and topic
//! auto-creation on, as Kafka ships it):
//!
//! - with some ACLs missing, one run lists every missing one (a Read on an input, a whole
//!   output, the changelog, the transactional id), each with the grant to add, calls no
//!   undescribable topic missing, and creates nothing (no changelog appears);
//! - once the grants it named are added, `check` passes, and `run` starts on exactly those ACLs
//!   and creates its changelog.
//!
//! The test's own set-up (topics, reading metadata) uses the broker's PLAINTEXT listener, whose
//! principal is a super user; ackwatch authenticates as `User:monitor`.

mod support;

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use support::{LiveTopics, Processor, Scripted};

/// The principal ackwatch authenticates as, granted ACLs by the test.
const PRINCIPAL: &str = "User:monitor";
/// How `check` names it: every `[kafka.properties]` value, the user name included, is kept out
/// of its output (docs/decisions.md "Secrets").
const SHOWN: &str = "User:<sasl.username>";

/// The topics the broker has, as its super user sees them.
fn broker_topics() -> Vec<String> {
    let consumer: BaseConsumer = support::client_config().create().unwrap();
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap();
    metadata.topics().iter().map(|t| t.name().to_string()).collect()
}

/// `ackwatch check`'s verdict and its `problem:` lines.
fn check(config: &std::path::Path) -> (bool, Vec<String>, String) {
    let (ok, stdout, stderr) = support::ackwatch(&["check", "--config", config.to_str().unwrap()]);
    let problems = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("problem: "))
        .map(str::to_string)
        .collect();
    (ok, problems, format!("{stdout}{stderr}"))
}

#[test]
fn check_lists_every_missing_acl_and_its_grants_suffice_to_run() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Scripted {
        script: "kafka-broker.sh",
        dir: dir.path().join("kafka"),
    };
    let sasl = broker.run("start-secured");
    let internal = std::fs::read_to_string(dir.path().join("kafka/internal")).unwrap();
    std::env::set_var("ACKWATCH_TEST_BOOTSTRAP", internal.trim());
    let acl = |args: &[&str]| {
        let mut all = vec!["--add", "--allow-principal", PRINCIPAL];
        all.extend_from_slice(args);
        broker.run_with("acl", &all);
    };

    let rt = tokio::runtime::Runtime::new().unwrap();
    let topics = rt.block_on(LiveTopics::create("acls", 2));
    let app = support::unique("app-acls");
    let changelog = format!("{app}-runs-changelog");
    let (config, http) = support::live_config(
        dir.path(),
        &topics,
        &app,
        "i1",
        "exactly_once_v2",
        "",
    );
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(&format!("bootstrap_servers = {:?}", internal.trim()), &format!("bootstrap_servers = {sasl:?}"))
        .replace(
            "[kafka.properties]\n",
            "[kafka.properties]\n\"security.protocol\" = \"SASL_PLAINTEXT\"\n\"sasl.mechanism\" = \"PLAIN\"\n\
             \"sasl.username\" = \"monitor\"\n\"sasl.password\" = \"monitor-secret\"\n",
        );
    assert!(text.contains(&sasl), "{text}");
    std::fs::write(&config, text).unwrap();

    // Some of what the processor needs: the ack topic without Read, the dead-letter topic, the
    // changelog and the transactional ids without anything; the signal topic with Write alone
    // (Kafka's Write implies Describe).
    acl(&["--operation", "Describe", "--operation", "Read", "--topic", &topics.activation]);
    acl(&["--operation", "Describe", "--topic", &topics.ack]);
    acl(&["--operation", "Describe", "--operation", "Write", "--topic", &topics.gap]);
    acl(&["--operation", "Write", "--topic", &topics.signal]);
    acl(&["--operation", "Describe", "--operation", "Read", "--group", &app]);

    let (ok, problems, output) = check(&config);
    assert!(!ok, "{output}");
    let grant = format!("grant it with kafka-acls --add --allow-principal {SHOWN}");
    let expected = [
        format!("{SHOWN} may not Read topic {} (an input, which needs Describe, Read): {grant} --operation Read --topic {}", topics.ack, topics.ack),
        format!("{SHOWN} may not even Describe topic {} (the dead-letter output, which needs Describe, Write): {grant} --operation Describe --operation Write --topic {}", topics.dead_letter, topics.dead_letter),
        format!("{SHOWN} may not even Describe topic {changelog} (the changelog"),
        format!("{SHOWN} may not use the transactional id {app}-check-probe"),
    ];
    assert_eq!(problems.len(), expected.len(), "{output}");
    for want in &expected {
        assert!(problems.iter().any(|p| p.starts_with(want.as_str())), "no problem {want:?}:\n{output}");
    }
    assert!(!output.contains("do not exist"), "an undescribable topic is not a missing one:\n{output}");
    for met in [
        format!("ok: {SHOWN} may Describe, Read topic {} (an input)", topics.activation),
        format!("ok: {SHOWN} may Describe, Write topic {} (an output)", topics.gap),
        format!("ok: {SHOWN} may Describe, Write topic {} (an output)", topics.signal),
        format!("ok: {SHOWN} may Describe, Read group {app} (the processor's consumer group)"),
    ] {
        assert!(output.contains(&met), "no line {met:?}:\n{output}");
    }
    assert!(!broker_topics().contains(&changelog), "check created the changelog:\n{output}");

    // The grants it named, and Create on the changelog it cannot yet see.
    acl(&["--operation", "Read", "--topic", &topics.ack]);
    acl(&["--operation", "Describe", "--operation", "Write", "--topic", &topics.dead_letter]);
    acl(&["--operation", "Describe", "--operation", "Read", "--operation", "Write", "--operation", "DescribeConfigs", "--operation", "Create", "--topic", &changelog]);
    acl(&["--operation", "Describe", "--operation", "Write", "--transactional-id", &format!("{app}-"), "--resource-pattern-type", "prefixed"]);

    let (ok, problems, output) = check(&config);
    assert!(ok && problems.is_empty(), "{output}");
    assert!(output.contains(&format!("ok: {SHOWN} may create the changelog topic {changelog}")), "{output}");
    assert!(output.contains(&format!("ok: {SHOWN} may use transactional ids of prefix {app}-")), "{output}");
    assert!(!broker_topics().contains(&changelog), "check created the changelog:\n{output}");

    let mut processor = Processor::start(&config, &http);
    processor.wait_ready(Duration::from_secs(60));
    assert!(broker_topics().contains(&changelog), "run did not create its changelog:\n{}", processor.log_text());
    let status = processor.terminate(Duration::from_secs(30));
    assert!(status.success(), "{status}:\n{}", processor.log_text());
}
