//! The live processor against the real broker: `ackwatch run` as a child process, its inputs
//! produced to unique topics, its outputs read back and compared with `ackwatch audit` over the
//! same records (the audit's window ending now, as the live stream time does once caught up).

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rdkafka::consumer::Consumer as _;

use ackwatch::audit::kcat::KcatRecord;
use ackwatch_topology::Policy;
use serde_json::{json, Value};
use support::facts::*;
use support::{read_topic, LiveTopics, Processor};

const READY_TIMEOUT: Duration = Duration::from_secs(60);

fn scenario_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/scenarios")
}

/// Every public scenario, produced to the broker, gives on the gap and signal topics exactly
/// the audit's facts with the audit's idempotency keys; the findings are the expected file's,
/// its pending deadlines included (the live stream time passes them).
fn scenarios_live(guarantee: &str, stream_threads: usize) {
    let runtime_extra = format!("num_stream_threads = {stream_threads}");
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "ack_missing",
        "activation_gap",
        "clean",
        "late_ack",
        "truncated_times",
        "phase_unknown",
        "blocked_acks",
        "late_fill",
        "clock_ahead",
        "untracked_large",
    ] {
        let input = scenario_dir().join(format!("{name}.kcat.jsonl"));
        let expected: Value = serde_json::from_str(
            &std::fs::read_to_string(scenario_dir().join(format!("{name}.expected.json"))).unwrap(),
        )
        .unwrap();
        let policy: Policy = serde_json::from_value(expected["config"].clone()).unwrap();
        assert_eq!(
            policy,
            Policy::default(),
            "{name}: the live test runs the default policy"
        );
        let topics = rt.block_on(LiveTopics::create(&format!("live-{name}"), 3));
        rt.block_on(support::produce_kcat(&read_kcat(&input), &topics));

        let app = support::unique(&format!("app-{name}"));
        let (config, http) =
            support::live_config(dir.path(), &topics, &app, "i1", guarantee, &runtime_extra);
        let mut processor = Processor::start(&config, &http);
        processor.wait_ready(READY_TIMEOUT);
        if stream_threads > 1 {
            assert!(
                threads_owning_partitions(&processor.log_text()) >= 2,
                "partitions spread over the stream threads\n{}",
                processor.log_text()
            );
        }
        let want = reference(&input, policy, now_ms());
        let committed = guarantee == "exactly_once_v2";
        let (gap, signal) = read_outputs(&topics, &want, committed);
        let got = observed(&gap, &signal);
        let log = processor.log_text();
        assert_eq!(
            got.keys,
            want.keys,
            "{name}: idempotency keys\n{log}\n{}",
            progress(&http)
        );
        assert_eq!(got.signals, want.signals, "{name}: signals");
        let mut expected_findings: Vec<Value> = expected["findings"].as_array().unwrap().clone();
        for p in expected["pending_at_end"].as_array().unwrap() {
            expected_findings.push(json!([p[0], p[1], p[2], p[3], false]));
        }
        expected_findings.sort_by_key(Value::to_string);
        assert_eq!(got.findings, expected_findings, "{name}: findings");
        assert_eq!(
            got.findings, want.findings,
            "{name}: findings as the audit flattens them"
        );

        // Metrics and the interactive queries, while it runs.
        let (status, metrics) = support::http_get(&http, "/metrics").unwrap();
        assert_eq!(status, 200);
        let acked: u64 = expected["latency_max"]
            .as_object()
            .map_or(0, |m| m.len() as u64);
        if acked > 0 {
            assert!(
                !metrics.contains("controlbus_apply_ack_latency_ms_count{phase=\"freeze\"} 0\n")
                    || !metrics
                        .contains("controlbus_apply_ack_latency_ms_count{phase=\"unfreeze\"} 0\n")
                    || !metrics
                        .contains("controlbus_apply_ack_latency_ms_count{phase=\"unknown\"} 0\n"),
                "{name}: latency observed\n{metrics}"
            );
        }
        assert!(
            metrics.contains(&format!(
                "ackwatch_records_total{{outcome=\"tracked\",topic=\"{}\"}}",
                topics.activation
            )),
            "{metrics}"
        );
        // The scenario's runs are past retention by the wall clock; a fresh activation is not.
        let fresh = fresh_activation("live_world", "r1");
        rt.block_on(support::produce_kcat(&[fresh], &topics));
        let run = wait_for(|| {
            support::http_get(&http, "/runs/live_world/r1")
                .filter(|(s, _)| *s == 200)
                .map(|(_, b)| b)
        });
        let run: Value = serde_json::from_str(&run).unwrap();
        assert_eq!(run["pending_acks"], json!([1]), "{run}");
        assert_eq!(run["tracked"], 1, "{run}");
        let (status, body) = support::http_get(&http, "/runs/live_world").unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()["runs_total"],
            1,
            "{body}"
        );
        // Its ACK never comes: ack_missing, then paused; the index of what is wrong lists it.
        let runs_in = |state: &str| -> Value {
            let (status, body) = support::http_get(&http, &format!("/runs?state={state}")).unwrap();
            assert_eq!(status, 200, "{body}");
            serde_json::from_str(&body).unwrap()
        };
        let listed = |index: &Value| {
            index["runs"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["world_id"] == "live_world" && r["run_id"] == "r1")
        };
        let paused = wait_for(|| Some(runs_in("paused")).filter(|index| listed(index)));
        assert_eq!(paused["state"], "paused", "{paused}");
        let open = runs_in("open");
        assert!(listed(&open), "{open}");
        let run = open["runs"].as_array().unwrap().iter().find(|r| r["world_id"] == "live_world").unwrap();
        assert_eq!(run["open_findings"][0]["kind"], "ack_missing", "{run}");
        assert!(!listed(&runs_in("escalated")), "not escalated before rollback_after_ms");
        let (status, body) = support::http_get(&http, "/runs?state=closed").unwrap();
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("not one of open, paused, escalated"), "{body}");
        let (status, body) = support::http_get(&http, "/runs/no_such_world/r1").unwrap();
        assert_eq!(status, 404, "{body}");
        assert!(body.contains("owned_partitions"), "{body}");
        assert!(
            body.contains("[0,1,2]"),
            "all three partitions owned: {body}"
        );
        assert_eq!(support::http_get(&http, "/healthz").unwrap().0, 200);
        assert!(
            metrics.contains("ackwatch_assigned_partitions 3\n"),
            "every thread's partitions counted once\n{metrics}"
        );
        // What a live instance serves, every series it has grown included.
        support::assert_promtool_accepts_but_the_rfc_name(&metrics);
        assert!(
            metrics.contains("ackwatch_state{state=\"RUNNING\"} 1\n")
                && metrics.contains("ackwatch_state{state=\"REBALANCING\"} 0\n"),
            "{metrics}"
        );

        let status = processor.terminate(Duration::from_secs(30));
        assert!(
            status.success(),
            "{name}: exit {status}\n{}",
            processor.log_text()
        );
        // Kafka Streams' state line, from the start to the end, in order.
        let log = processor.log_text();
        let states: Vec<String> = log
            .lines()
            .filter_map(|l| l.split_once("ackwatch state "))
            // Plain or JSON lines: the message ends at a quote or the end of the line.
            .map(|(_, s)| s.split('"').next().unwrap_or("").split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(states.first().map(String::as_str), Some("CREATED -> REBALANCING"), "{log}");
        assert!(states.iter().any(|s| s == "REBALANCING -> RUNNING"), "{states:?}");
        assert_eq!(
            &states[states.len() - 2..],
            ["RUNNING -> PENDING_SHUTDOWN", "PENDING_SHUTDOWN -> NOT_RUNNING"],
            "{states:?}"
        );
        assert_eq!(
            processor
                .log_text()
                .matches("stream thread stopped cleanly")
                .count(),
            stream_threads,
            "every stream thread committed and left\n{}",
            processor.log_text()
        );
    }
}

/// What ackwatch read and owns, for a failure message: records by outcome, lag, partitions.
fn progress(http: &str) -> String {
    let Some((_, metrics)) = support::http_get(http, "/metrics") else {
        return "(no /metrics)".into();
    };
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("ackwatch_records_total")
                || l.starts_with("ackwatch_consumer_lag")
                || l.starts_with("ackwatch_assigned_partitions")
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// How many stream threads' latest "partitions assigned" line names partitions.
fn threads_owning_partitions(log: &str) -> usize {
    let mut latest = std::collections::BTreeMap::new();
    for line in log.lines() {
        let Ok(event) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if event["message"] == "partitions assigned" {
            let owns = event["partitions"].as_str().is_some_and(|p| p != "[]");
            latest.insert(event["thread"].as_u64(), owns);
        }
    }
    latest.values().filter(|owns| **owns).count()
}

#[test]
fn scenarios_live_at_least_once() {
    scenarios_live("at_least_once", 1);
}

#[test]
fn scenarios_live_exactly_once_v2() {
    scenarios_live("exactly_once_v2", 1);
}

/// Four stream threads on three partitions (one thread idle, each with its own consumer and
/// transactional producer): the same outputs as one thread, ready although a thread owns nothing,
/// partitions spread over threads, gauges summed over them, queries answered from any thread.
#[test]
fn scenarios_live_stream_threads() {
    scenarios_live("exactly_once_v2", 4);
}

/// Poison records (bad JSON, wrong types, a 1 MB value, a key that is not the world) go to the
/// dead-letter topic with their reason and origin; the valid records around them are processed.
#[test]
fn poison_records_are_dead_lettered_and_processing_continues() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let input = scenario_dir().join("ack_missing.kcat.jsonl");
    let mut records = read_kcat(&input);
    let ts = records[0].ts;
    let poison = |payload: String, key: &str| KcatRecord {
        topic: "activation".into(),
        partition: 0,
        offset: 0,
        tstype: None,
        ts,
        broker: None,
        key: Some(key.into()),
        payload: Some(payload),
        headers: None,
    };
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(1_000_000));
    let poisons = vec![
        (poison("{not json".into(), "crypto_mom_1h"), "not_json"),
        (
            poison(r#"{"type":"ActivationUpdated","version":1,"world_id":"crypto_mom_1h","run_id":"r9","requires_ack":true,"sequence":"seven","ts":"2026-03-02T09:00:01Z"}"#.into(), "crypto_mom_1h"),
            "mistyped_field",
        ),
        (poison(big, "crypto_mom_1h"), "too_large"),
        (
            poison(r#"{"type":"ActivationUpdated","version":1,"world_id":"crypto_mom_1h","run_id":"r9","requires_ack":true,"sequence":1,"ts":"2026-03-02T09:00:01Z"}"#.into(), "another_world"),
            "key_mismatch",
        ),
    ];
    // Interleave: the poison records sit between valid ones.
    for (i, (p, _)) in poisons.iter().enumerate() {
        records.insert(1 + i * 3, p.clone());
    }
    let topics = rt.block_on(LiveTopics::create("live-poison", 1));
    rt.block_on(support::produce_kcat(&records, &topics));
    let (config, http) = support::live_config(
        dir.path(),
        &topics,
        &support::unique("app-poison"),
        "i1",
        "at_least_once",
        "",
    );
    let mut processor = Processor::start(&config, &http);
    processor.wait_ready(READY_TIMEOUT);

    let dlq = read_topic(
        &topics.dead_letter,
        false,
        poisons.len(),
        QUIET,
        OUTPUT_TIMEOUT,
    );
    let reasons: Vec<&str> = dlq
        .iter()
        .map(|r| r.header("ackwatch.reason").unwrap())
        .collect();
    assert_eq!(
        reasons,
        poisons.iter().map(|(_, r)| *r).collect::<Vec<_>>(),
        "{}",
        processor.log_text()
    );
    for r in &dlq {
        assert_eq!(r.header("ackwatch.topic"), Some(topics.activation.as_str()));
        assert_eq!(r.header("ackwatch.partition"), Some("0"));
        assert!(r.header("ackwatch.offset").unwrap().parse::<i64>().is_ok());
        assert!(!r.header("ackwatch.detail").unwrap().is_empty());
    }
    let cut = dlq
        .iter()
        .find(|r| r.header("ackwatch.reason") == Some("too_large"))
        .unwrap();
    assert_eq!(
        cut.value.len(),
        ackwatch::sinks::records::DEAD_LETTER_VALUE_BYTES_MAX
    );
    assert_eq!(cut.header("ackwatch.original_bytes"), Some("1000010"));
    assert_eq!(dlq[0].value, b"{not json");

    // The valid records still give the scenario's findings.
    let clean = dir.path().join("valid.kcat.jsonl");
    write_kcat(&clean, &records);
    let want = reference(&clean, Policy::default(), now_ms());
    let (gap, signal) = read_outputs(&topics, &want, false);
    let got = observed(&gap, &signal);
    assert_eq!(got.keys, want.keys);
    assert!(!got.findings.is_empty());
    let (_, metrics) = support::http_get(&http, "/metrics").unwrap();
    assert!(
        metrics.contains("ackwatch_dead_letters_total 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ackwatch_dead_letters_cut_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ackwatch_invalid_records_total{reason=\"key_mismatch\"} 1"),
        "{metrics}"
    );
    assert!(processor.terminate(Duration::from_secs(30)).success());
}

fn killed_and_restarted(guarantee: &str) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let topics = rt.block_on(LiveTopics::create("live-kill", 4));
    let records = traffic(24_000, 4, 7, now_ms() + 3000, "world_");
    let producing = produce_paced(records.clone(), topics.clone());
    let app = support::unique("app-kill");
    // lateness_ms 2000: on two loaded cores a fetch may lag more than the default 500 ms, and a
    // record fetched later than lateness_ms may be judged late live (docs/semantics.md §4), not in the audit.
    let (config, http) = support::live_config(
        dir.path(),
        &topics,
        &app,
        "i1",
        guarantee,
        "lateness_ms = 2000",
    );
    let state_dir = dir.path().join("state-i1");
    let mut logs = String::new();
    for (i, moment) in kill_moments(4).into_iter().enumerate() {
        let mut processor = Processor::start(&config, &http);
        // Ready first (the group waits out the killed member's session), so the kill lands
        // while tasks process, commit and write the changelog.
        processor.wait_ready(READY_TIMEOUT);
        std::thread::sleep(moment);
        processor.kill9();
        logs += &processor.log_text();
        if i % 2 == 1 {
            // Every other restart is on a "new machine": the local stores are gone.
            remove_if_present(&state_dir);
        }
    }
    producing.join().unwrap();
    remove_if_present(&state_dir);
    let mut processor = Processor::start(&config, &http);
    processor.wait_ready(READY_TIMEOUT);
    assert_same_facts(
        &topics,
        &records,
        dir.path(),
        guarantee == "exactly_once_v2",
        &processor.log_text(),
    );
    let (_, metrics) = support::http_get(&http, "/metrics").unwrap();
    assert!(
        !metrics.contains("ackwatch_restore_records_total 0\n"),
        "the last start, without local stores, restored from the changelog\n{}",
        processor.log_text()
    );
    assert!(
        processor.terminate(Duration::from_secs(30)).success(),
        "{logs}"
    );
}

/// Kill -9 at random moments while traffic with faults flows, four times, then restart: no
/// fact lost, none invented, none with another key; repeats allowed (at_least_once).
#[test]
fn kill_9_and_restart_at_least_once() {
    killed_and_restarted("at_least_once");
}

/// The same under exactly_once_v2, read with read_committed: every fact exactly once.
#[test]
fn kill_9_and_restart_exactly_once_v2() {
    killed_and_restarted("exactly_once_v2");
}

/// Two, then three instances in one group; one is killed mid-stream. Its partitions move, their
/// state is restored from the changelog, and the facts are the same as with one instance.
#[test]
fn instances_join_and_die_and_partitions_move() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let topics = rt.block_on(LiveTopics::create("live-group", 6));
    let records = traffic(14_000, 6, 11, now_ms() + 3000, "world_");
    let producing = produce_paced(records.clone(), topics.clone());
    let app = support::unique("app-group");
    let start = |instance: &str| {
        support::start_live(dir.path(), &topics, &app, instance, "at_least_once", "lateness_ms = 2000")
    };
    let mut a = start("a");
    let mut b = start("b");
    std::thread::sleep(Duration::from_secs(4));
    let mut c = start("c");
    std::thread::sleep(Duration::from_secs(4));
    a.kill9();
    producing.join().unwrap();
    b.wait_ready(READY_TIMEOUT);
    let logs = b.log_text() + &c.log_text();
    assert_same_facts(&topics, &records, dir.path(), false, &logs);
    let owned = |p: &Processor| -> Vec<i64> {
        let (_, body) = support::http_get(&p.http, "/runs/no_such_world").unwrap();
        serde_json::from_str::<Value>(&body).unwrap()["owned_partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect()
    };
    let mut all = owned(&b);
    all.extend(owned(&c));
    all.sort();
    assert_eq!(
        all,
        (0..6).collect::<Vec<i64>>(),
        "the survivors own every partition once\n{logs}"
    );
    assert!(c.log_text().contains("task restored"), "{}", c.log_text());
    assert!(b.terminate(Duration::from_secs(30)).success());
    assert!(c.terminate(Duration::from_secs(30)).success());
}

/// Static membership is the default, and a SIGTERM still leaves the group: the survivor owns
/// every partition long before the stopped member's session (30 s here) would have expired.
/// (librdkafka sends no LeaveGroup for a static member that merely closes.)
#[test]
fn a_stopped_static_member_leaves_the_group_at_once() {
    const SESSION_TIMEOUT_MS: u64 = 30_000;
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let topics = rt.block_on(LiveTopics::create("live-leave", 4));
    let app = support::unique("app-leave");
    let start = |instance: &str| {
        let (config, http) =
            support::live_config(dir.path(), &topics, &app, instance, "at_least_once", "");
        let text = std::fs::read_to_string(&config).unwrap();
        let longer = text.replace(
            "\"session.timeout.ms\" = \"6000\"",
            &format!("\"session.timeout.ms\" = \"{SESSION_TIMEOUT_MS}\""),
        );
        assert_ne!(text, longer, "the session timeout is set where expected");
        std::fs::write(&config, longer).unwrap();
        Processor::start(&config, &http)
    };
    let owned = support::owned_partitions;
    let mut a = start("a");
    a.wait_ready(READY_TIMEOUT);
    let mut b = start("b");
    b.wait_ready(READY_TIMEOUT);
    wait_for(|| (!owned(&a).is_empty() && !owned(&b).is_empty()).then_some(()));
    let log = std::fs::read_to_string(&a.log).unwrap_or_default();
    assert!(log.contains("\"partitions assigned\""), "{log}");
    assert!(
        a.terminate(Duration::from_secs(30)).success(),
        "{}",
        a.log_text()
    );
    let stopped = std::time::Instant::now();
    while owned(&b) != [0, 1, 2, 3] {
        assert!(
            stopped.elapsed() < Duration::from_millis(SESSION_TIMEOUT_MS / 3),
            "the survivor did not get the stopped member's partitions within a third of its \
             session timeout: it did not leave the group\n{}",
            b.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "partitions moved {:?} after the SIGTERM'd member exited",
        stopped.elapsed()
    );
    assert!(b.terminate(Duration::from_secs(30)).success());
}

/// Two instances "a" and "b" of one application on a one-partition topic pair, each ready
/// (a first); returns them as (owner, idle) with their instance names once one owns the
/// partition and the other nothing.
fn owner_and_idle(
    dir: &Path,
    topics: &LiveTopics,
    app: &str,
) -> ((&'static str, Processor), (&'static str, Processor)) {
    let start = |instance: &str| support::start_live(dir, topics, app, instance, "at_least_once", "");
    let owned = support::owned_partitions;
    let mut a = start("a");
    a.wait_ready(READY_TIMEOUT);
    let mut b = start("b");
    b.wait_ready(READY_TIMEOUT);
    let a_owns = wait_for(|| match (owned(&a).as_slice(), owned(&b).as_slice()) {
        ([0], []) => Some(true),
        ([], [0]) => Some(false),
        _ => None,
    });
    if a_owns {
        (("a", a), ("b", b))
    } else {
        (("b", b), ("a", a))
    }
}

/// Ready means "in the group and not restoring" (Kafka Streams' RUNNING): with more instances
/// than partitions the idle member is ready too, so a StatefulSet rollout or a node drain never
/// waits for it; it takes the partition over when the owner stops.
#[test]
fn an_idle_member_is_ready_and_takes_over() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let topics = rt.block_on(LiveTopics::create("live-idle", 1));
    let app = support::unique("app-idle");
    let owned = support::owned_partitions;
    // Both in the group: one owns the partition, the other nothing, and both are ready.
    let ((owner_name, mut owner), (idle_name, mut idle)) = owner_and_idle(dir.path(), &topics, &app);
    let ready = |p: &Processor| support::http_get(&p.http, "/readyz").map(|(s, _)| s);
    assert_eq!(ready(&idle), Some(200), "the idle member is ready");
    // Each member says in the group which instance, thread and role it is.
    let looker: rdkafka::consumer::BaseConsumer = support::client_config().create().unwrap();
    let groups = looker
        .fetch_group_list(Some(&app), Duration::from_secs(10))
        .unwrap();
    let mut clients: Vec<String> = groups.groups()[0]
        .members()
        .iter()
        .map(|m| m.client_id().to_string())
        .collect();
    clients.sort();
    // It also advertises where its instance answers queries (http.advertised_url's default).
    let mut expected = [
        format!("ackwatch-{owner_name}-t0-consumer@http://{}", owner.http),
        format!("ackwatch-{idle_name}-t0-consumer@http://{}", idle.http),
    ];
    expected.sort();
    assert_eq!(clients, expected);
    assert_eq!(ready(&owner), Some(200));
    assert!(owner.terminate(Duration::from_secs(30)).success());
    wait_for(|| (owned(&idle) == [0]).then_some(()));
    assert_eq!(ready(&idle), Some(200));
    assert!(idle.terminate(Duration::from_secs(30)).success());
}

/// Kafka Streams' `application.server`: a query to the member that does not own a world is
/// redirected to the one that does (found from the broker's view of the group), and a client
/// that follows redirects gets the owner's own answer; a redirected query is never redirected
/// again, and a world nobody has is a 404 from its partition's owner. The index of what is
/// wrong now, asked with `scope=group` of any member, holds every member's runs.
#[test]
fn a_query_to_a_non_owner_reaches_the_owner() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let topics = rt.block_on(LiveTopics::create("live-owner", 1));
    let app = support::unique("app-owner");
    let ((_, mut owner), (other_id, mut other)) = owner_and_idle(dir.path(), &topics, &app);
    rt.block_on(support::produce_kcat(
        &[fresh_activation("w_owner", "r1")],
        &topics,
    ));
    let direct = wait_for(|| match support::http_get(&owner.http, "/runs/w_owner/r1") {
        Some((200, body)) => Some(body),
        _ => None,
    });
    let direct: serde_json::Value = serde_json::from_str(&direct).unwrap();
    assert_eq!(direct["tracked"], 1, "{direct}");

    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let follows = reqwest::Client::new();
    let get = |client: &reqwest::Client, url: String| {
        rt.block_on(async {
            let response = client.get(&url).send().await.unwrap();
            let status = response.status().as_u16();
            let location = response
                .headers()
                .get("location")
                .map(|l| l.to_str().unwrap().to_string());
            let body: serde_json::Value = response.json().await.unwrap();
            (status, location, body)
        })
    };
    for path in ["/runs/w_owner/r1", "/runs/w_owner"] {
        let (status, location, body) = get(&no_redirects, format!("http://{}{path}", other.http));
        assert_eq!(status, 307, "{path}: {body}");
        assert_eq!(
            location.as_deref(),
            Some(format!("http://{}{path}?redirected_from={other_id}", owner.http).as_str()),
            "{body}"
        );
        assert_eq!(body["owner"]["partition"], 0, "{body}");
        let (status, _, followed) = get(&follows, format!("http://{}{path}", other.http));
        assert_eq!(status, 200, "{path}: {followed}");
        if path == "/runs/w_owner/r1" {
            assert_eq!(followed, direct, "the owner's own answer");
        } else {
            assert_eq!(followed["runs"][0], direct, "{followed}");
        }
    }
    // Nobody has it: the owner of its partition says so (404), and the redirect is not repeated.
    let (status, location, body) = get(&follows, format!("http://{}/runs/w_nobody/r1", other.http));
    assert_eq!((status, location), (404, None), "{body}");
    assert_eq!(body["owned_partitions"], serde_json::json!([0]), "answered by the owner: {body}");
    let (status, _, body) = get(
        &no_redirects,
        format!("http://{}/runs/w_owner/r1?redirected_from=x", other.http),
    );
    assert_eq!(status, 404, "a redirected query is answered where it arrives: {body}");

    // What is wrong now, across the group, asked of the member that owns nothing: once the
    // ACK is overdue the run has an open finding on the owner, and the group answer lists it.
    let open_here = |p: &Processor| {
        let (_, body) = support::http_get(&p.http, "/runs?state=open").unwrap();
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["runs_total"].as_u64()
    };
    wait_for(|| (open_here(&owner) == Some(1)).then_some(()));
    assert_eq!(open_here(&other), Some(0), "the instance scope is this instance's tasks");
    let (status, _, group) = get(&no_redirects, format!("http://{}/runs?state=open&scope=group", other.http));
    assert_eq!(status, 200, "{group}");
    assert_eq!(group["complete"], true, "{group}");
    assert_eq!(group["runs_total"], 1, "{group}");
    assert_eq!(group["runs"][0]["world_id"], "w_owner", "{group}");
    assert_eq!(group["runs"][0]["run_id"], "r1", "{group}");
    let mut asked: Vec<String> = group["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["url"].as_str().unwrap().to_string())
        .collect();
    asked.sort();
    let mut expected = vec![format!("http://{}", owner.http), format!("http://{}", other.http)];
    expected.sort();
    assert_eq!(asked, expected, "both members answered: {group}");
    owner.terminate(Duration::from_secs(30));
    other.terminate(Duration::from_secs(30));
}
