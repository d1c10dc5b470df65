//! `ackwatch audit --bootstrap-servers ... --from --to` against the real broker: paced loadgen
//! traffic, `ackwatch run` watching it live, then a cluster audit over the window. The audit
//! agrees with loadgen's ground truth and finds no difference from what the live processor
//! emitted; an output nobody should have emitted is reported; `--world` and `--format html` work.

mod support;

use std::time::Duration;

use ackwatch::sim::{compare, Truth};
use ackwatch_topology::time::format_rfc3339_ms;
use serde_json::Value;
use support::ackwatch;
use support::facts::{now_ms, read_outputs_at_least, report_facts, runtime};
use support::{LiveTopics, Processor};

fn audit(config: &str, from: i64, to: i64, extra: &[&str]) -> Value {
    let (from, to, bootstrap) = (
        format_rfc3339_ms(from),
        format_rfc3339_ms(to),
        support::bootstrap(),
    );
    let mut args = vec![
        "audit",
        "--bootstrap-servers",
        &bootstrap,
        "--config",
        config,
        "--from",
        &from,
        "--to",
        &to,
        "--format",
        "json",
    ];
    args.extend_from_slice(extra);
    let (ok, stdout, stderr) = ackwatch(&args);
    assert!(ok, "{stderr}");
    serde_json::from_str(&stdout).unwrap()
}

#[test]
fn a_cluster_audit_of_loadgen_traffic_agrees_with_the_truth_and_with_what_ran_live() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let topics = rt.block_on(LiveTopics::create("cluster-audit", 2));
    let app = support::unique("app-cluster-audit");
    let (config, http) = support::live_config(dir.path(), &topics, &app, "i1", "at_least_once", "");
    let config_text = config.to_str().unwrap();
    let mut processor = Processor::start(&config, &http);
    processor.wait_ready(Duration::from_secs(60));

    let truth_path = dir.path().join("truth.json");
    let started = now_ms();
    let (ok, stdout, stderr) = ackwatch(&[
        "loadgen",
        "--bootstrap-servers",
        &support::bootstrap(),
        "--config",
        config_text,
        "--worlds",
        "12",
        "--rate",
        "120",
        "--duration",
        "15s",
        "--faults",
        "default",
        "--seed",
        "5",
        "--truth",
        truth_path.to_str().unwrap(),
    ]);
    assert!(ok, "{stdout}{stderr}");
    let truth: Truth =
        serde_json::from_str(&std::fs::read_to_string(&truth_path).unwrap()).unwrap();
    assert!(
        truth.live_findings.len() >= 5,
        "the traffic has faults: {stdout}"
    );
    let last = truth
        .live_findings
        .iter()
        .flat_map(|f| [Some(f.detected_at_ms), f.resolved_at_ms])
        .chain(truth.live_signals.iter().map(|s| Some(s.at_ms)))
        .flatten()
        .max()
        .unwrap();
    // Everything is due once the wall clock minus lateness passed the last fact; then the live
    // outputs are read until quiet.
    while now_ms() < last + 2_000 {
        std::thread::sleep(Duration::from_millis(200));
    }
    let live_outputs = read_outputs_at_least(&topics, 1);
    let to = now_ms();
    let from = started - 1_000;

    let report = audit(config_text, from, to, &[]);
    assert_eq!(
        report["live_differences_total"], 0,
        "{:#}",
        report["live_differences"]
    );
    assert_eq!(
        report["live_outputs_compared"].as_u64().unwrap() as usize,
        live_outputs,
        "every live output of the window was compared"
    );
    let (got_findings, got_signals) = report_facts(&report);
    let (want_findings, want_signals) = truth.facts(ackwatch::sim::Reading::Live);
    let findings = compare(&want_findings, &got_findings);
    assert!(findings.is_exact(), "{findings:?}");
    let signals = compare(&want_signals, &got_signals);
    assert!(signals.is_exact(), "{signals:?}");
    assert!(
        findings.detected >= 5 && signals.detected >= 3,
        "{findings:?} {signals:?}"
    );

    // Provenance: the cluster and exactly the offsets read, of both input topics.
    let read = report["provenance"]["cluster"]["read"].as_array().unwrap();
    for topic in [&topics.activation, &topics.ack] {
        let partitions: Vec<&Value> = read.iter().filter(|r| r["topic"] == topic.as_str()).collect();
        assert_eq!(partitions.len(), 2, "{topic}: {read:?}");
        assert!(partitions.iter().all(|r| r["to_offset"].as_i64() >= r["from_offset"].as_i64()));
    }
    assert_eq!(report["provenance"]["cluster"]["bootstrap_servers"], support::bootstrap());
    // Counts agree: the headline is the rows' (the warm-up's findings are not in either).
    assert_eq!(
        report["headline"]["findings"].as_u64().unwrap() as usize,
        report["findings"].as_array().unwrap().len()
    );

    // One world only, and one run of it explained.
    let first = &truth.live_findings[0];
    let world = first.world_id.clone();
    let one = audit(config_text, from, to, &["--world", &world, "--run", &first.run_id]);
    let rows = one["findings"].as_array().unwrap();
    assert!(!rows.is_empty() && rows.iter().all(|r| r["world_id"] == world.as_str()));
    assert_eq!(
        one["live_differences_total"], 0,
        "{:#}",
        one["live_differences"]
    );
    let entries = one["timeline"]["entries"].as_array().unwrap();
    let detected = entries.iter().find(|e| {
        e["event"] == "detected"
            && e["sequences"].as_array().unwrap().contains(&first.sequence.into())
            && e["at"] == format_rfc3339_ms(first.detected_at_ms).as_str()
    });
    assert!(detected.is_some(), "the truth's first finding is in its run's timeline: {entries:#?}");
    assert!(entries.iter().any(|e| e["event"] == "activation" || e["event"] == "ack"));

    // The page.
    let page = dir.path().join("audit.html");
    // Kafka's spelling of the flag, and kcat-like relative times (the window now ends later:
    // nothing was emitted since).
    let ago = format!("-{}ms", now_ms() - from);
    let (ok, stdout, stderr) = ackwatch(&[
        "audit",
        "--bootstrap-server",
        &support::bootstrap(),
        "--config",
        config_text,
        "--from",
        &ago,
        "--to",
        "now",
        "--format",
        "html",
        "--output",
        page.to_str().unwrap(),
        "--fail-on",
        "never",
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("page written to") && stdout.lines().count() < 10,
        "a short summary on the terminal: {stdout}"
    );
    let html = std::fs::read_to_string(&page).unwrap();
    for needle in [
        "<!DOCTYPE html>",
        "no difference",
        "Timelines",
        "<svg",
        "ACK latency by phase",
        "ACK latency, ms (bucket upper bound)",
        "p99 ≤",
        "Provenance",
        &world,
    ] {
        assert!(html.contains(needle), "page lacks {needle}");
    }

    // No side effects: the audits joined no consumer group (their consumers only assign).
    let admin: rdkafka::consumer::BaseConsumer = support::client_config().create().unwrap();
    let groups =
        rdkafka::consumer::Consumer::fetch_group_list(&admin, None, Duration::from_secs(30))
            .unwrap();
    let names: Vec<String> = groups
        .groups()
        .iter()
        .map(|g| g.name().to_string())
        .collect();
    assert!(
        names.iter().any(|n| n == &app),
        "the live processor's group is listed: {names:?}"
    );
    assert!(
        !names.iter().any(|n| n.starts_with("ackwatch-audit-")),
        "an audit left a consumer group: {names:?}"
    );
    drop(groups);

    // A signal nobody should have emitted is a difference.
    let fake = format!(
        r#"{{"type":"ApplyPauseRequested","version":1,"world_id":"{world}","run_id":"ghost","action":"pause","episode":1,"at":"{}","idempotency_key":"ackwatch:signal:{world}:ghost:pause:1"}}"#,
        format_rfc3339_ms(to - 5_000)
    );
    rt.block_on(support::produce_value(&topics.signal, &world, &fake));
    let after = audit(config_text, from, to, &[]);
    assert_eq!(
        after["live_differences_total"], 1,
        "{:#}",
        after["live_differences"]
    );
    assert_eq!(after["live_differences"][0]["what"], "unexpected_live");
    assert!(processor.terminate(Duration::from_secs(30)).success());
}
