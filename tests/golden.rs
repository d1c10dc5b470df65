//! Golden tests: every scenario in `tests/fixtures/scenarios` audits to exactly its expected file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ackwatch::audit::FileAudit;
use ackwatch::settings::Topics;
use ackwatch_topology::report::Report;
use ackwatch_topology::Policy;
use serde_json::Value;

fn scenario_dirs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    vec![root.join("tests/fixtures/scenarios")]
}

fn scenarios() -> BTreeMap<String, (PathBuf, PathBuf)> {
    let mut found = BTreeMap::new();
    for dir in scenario_dirs() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            if let Some(stem) = name.strip_suffix(".expected.json") {
                let input = dir.join(format!("{stem}.kcat.jsonl"));
                assert!(
                    input.exists(),
                    "{} has no input {}",
                    path.display(),
                    input.display()
                );
                found.insert(stem.to_string(), (input, path));
            }
        }
    }
    found
}

fn audit(input: &Path, policy: Policy) -> Report {
    audit_until(input, policy, None)
}

fn audit_until(input: &Path, policy: Policy, end_ms: Option<i64>) -> Report {
    FileAudit {
        inputs: vec![input.to_path_buf()],
        topics: Topics::default(),
        policy,
        progress: false,
        end_ms,
    }
    .run()
    .unwrap()
}

/// Flattens a report the way the expected files are written (fixtures/README.md).
fn flatten(report: &Report) -> Value {
    let mut findings: Vec<Value> = report
        .findings
        .iter()
        .flat_map(|f| {
            f.sequences.iter().map(move |s| {
                serde_json::json!([
                    f.kind.as_str(),
                    f.world_id,
                    f.run_id,
                    s,
                    f.resolved_at.is_some()
                ])
            })
        })
        .collect();
    findings.sort_by_key(|v| v.to_string());
    let mut signals: Vec<Value> = report
        .signals
        .iter()
        .map(|s| serde_json::json!([s.action.as_str(), s.world_id, s.run_id]))
        .collect();
    signals.sort_by_key(|v| v.to_string());
    let mut pending: Vec<Value> = report
        .pending_at_end
        .iter()
        .flat_map(|p| {
            p.sequences
                .iter()
                .map(move |s| serde_json::json!([p.kind.as_str(), p.world_id, p.run_id, s]))
        })
        .collect();
    pending.sort_by_key(|v| v.to_string());
    let latency_max: serde_json::Map<String, Value> = report
        .runs
        .iter()
        .filter_map(|r| {
            r.latency_ms
                .map(|l| (format!("{}/{}", r.world_id, r.run_id), Value::from(l.max)))
        })
        .collect();
    serde_json::json!({
        "findings": findings, "signals": signals, "pending_at_end": pending,
        "latency_max": latency_max, "records": report.totals.records,
        "totals": serde_json::to_value(&report.totals).unwrap(),
    })
}

fn sorted(v: &Value) -> Value {
    let mut items = v.as_array().cloned().unwrap_or_default();
    items.sort_by_key(|v| v.to_string());
    Value::Array(items)
}

fn check(name: &str, input: &Path, expected_path: &Path) {
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(expected_path).unwrap()).unwrap();
    let policy: Policy = serde_json::from_value(
        expected
            .get("config")
            .cloned()
            .unwrap_or(Value::Object(Default::default())),
    )
    .unwrap_or_else(|e| panic!("{name}: config not a policy: {e}"));
    let got = flatten(&audit(input, policy));
    for key in ["findings", "signals", "pending_at_end"] {
        assert_eq!(got[key], sorted(&expected[key]), "{name}: {key}");
    }
    if let Some(latency) = expected.get("latency_max") {
        assert_eq!(&got["latency_max"], latency, "{name}: latency_max");
    }
    if let Some(records) = expected.get("records") {
        assert_eq!(&got["records"], records, "{name}: records");
    }
    for (key, value) in expected
        .get("totals")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        assert_eq!(&got["totals"][key], value, "{name}: totals.{key}");
    }
}

#[test]
fn every_scenario_matches_its_expected_outcome() {
    let all = scenarios();
    assert!(
        all.len() >= 4,
        "expected the four public scenarios at least, found {:?}",
        all.keys()
    );
    for (name, (input, expected)) in &all {
        check(name, input, expected);
    }
}

/// `--end-time` after every deadline turns exactly the pending deadlines into open findings
/// (what the live processor raises once the wall clock passes them).
#[test]
fn an_end_time_after_every_deadline_turns_pending_into_findings() {
    for (name, (input, expected_path)) in scenarios() {
        let expected: Value =
            serde_json::from_str(&std::fs::read_to_string(&expected_path).unwrap()).unwrap();
        let policy: Policy = serde_json::from_value(
            expected
                .get("config")
                .cloned()
                .unwrap_or(Value::Object(Default::default())),
        )
        .unwrap();
        let bounded = flatten(&audit(&input, policy));
        let ended = flatten(&audit_until(&input, policy, Some(i64::MAX / 4)));
        let mut want: Vec<Value> = bounded["findings"].as_array().unwrap().clone();
        for p in bounded["pending_at_end"].as_array().unwrap() {
            want.push(serde_json::json!([p[0], p[1], p[2], p[3], false]));
        }
        assert_eq!(ended["findings"], sorted(&Value::Array(want)), "{name}");
        assert_eq!(ended["pending_at_end"], Value::Array(vec![]), "{name}");
    }
}

/// A payload time as docs/semantics.md §1 defines the event time, computed here independently
/// of the engine: a text without a fractional second may be cut to the second, and then the
/// first of the CloudEvents `time` and the record timestamp within that second is used.
fn event_ms(stamp: &Value, envelope_time: Option<&Value>, record_ms: i64) -> i64 {
    let parse = |s: &str| {
        let t =
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap();
        (t.unix_timestamp_nanos() / 1_000_000) as i64
    };
    let text = stamp.as_str().unwrap();
    let ms = parse(text);
    let whole_second = text.as_bytes().get(19) != Some(&b'.');
    if !whole_second {
        return ms;
    }
    let candidates = [
        envelope_time.and_then(Value::as_str).map(parse),
        Some(record_ms),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|c| (ms..ms + 1000).contains(c))
        .unwrap_or(ms)
}

/// The real producers' records: no finding, no invalid record, and each latency is the first
/// ACK's event time minus its activation's (computed here independently from the raw JSON).
#[test]
fn wire_fixtures_audit_clean_with_the_right_latencies() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wire");
    for file in [
        "qmtl-apply-run.kcat.jsonl",
        "documented-envelopes.kcat.jsonl",
        "qmtl-two-gateways.kcat.jsonl",
    ] {
        let path = root.join(file);
        let report = audit(&path, Policy::default());
        assert!(report.findings.is_empty(), "{file}: {:?}", report.findings);
        assert!(
            report.signals.is_empty() && report.pending_at_end.is_empty(),
            "{file}"
        );
        assert_eq!(report.totals.invalid, 0, "{file}");

        let mut act_ms = BTreeMap::new();
        let mut ack_ms = BTreeMap::new();
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let record: Value = serde_json::from_str(line).unwrap();
            let payload: Value = serde_json::from_str(record["payload"].as_str().unwrap()).unwrap();
            let data = payload.get("data").unwrap_or(&payload);
            let record_ms = record["ts"].as_i64().unwrap();
            let run = data["run_id"].as_str().unwrap_or_default().to_string();
            if data.get("requires_ack") == Some(&Value::Bool(true)) {
                let key = (run, data["sequence"].as_u64().unwrap());
                let t = event_ms(&data["ts"], payload.get("time"), record_ms);
                act_ms.entry(key).or_insert(t);
            } else if data.get("ack_ts").is_some() {
                let key = (run, data["sequence"].as_u64().unwrap());
                let t = event_ms(&data["ack_ts"], payload.get("time"), record_ms);
                ack_ms.entry(key).or_insert(t);
            }
        }
        let mut latencies: Vec<u64> = act_ms.iter().map(|(s, t)| (ack_ms[s] - t) as u64).collect();
        latencies.sort();
        let tracked: u64 = report.runs.iter().map(|r| r.tracked).sum();
        let acked: u64 = report.runs.iter().map(|r| r.acked).sum();
        assert_eq!(tracked, act_ms.len() as u64, "{file}");
        assert_eq!(acked, latencies.len() as u64, "{file}");
        let max = report
            .runs
            .iter()
            .filter_map(|r| r.latency_ms)
            .map(|l| l.max)
            .max();
        assert_eq!(max, latencies.last().copied(), "{file}");
        assert_eq!(
            report.totals.latency_ms.unwrap().p50,
            latencies[(latencies.len() - 1) / 2],
            "{file}"
        );
    }
}

/// The two-Gateway fixture as its README describes it: every record of one world as QMTL's
/// WorldService and two real Gateways wrote it.
#[test]
fn the_two_gateway_fixture_has_the_documented_totals() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/wire/qmtl-two-gateways.kcat.jsonl");
    let report = audit(&path, Policy::default());
    let t = &report.totals;
    assert_eq!(
        (t.tracked, t.acks, t.duplicates, t.untracked, t.invalid),
        (97, 97, 98, 19, 0)
    );
    let latency = t.latency_ms.unwrap();
    assert_eq!((latency.p50, latency.max), (32, 133));
}
