//! `ackwatch loadgen` and `ackwatch demo` as a user runs them (the binary).
//! - loadgen's kcat file, replayed by `ackwatch audit`, agrees with loadgen's truth file, for
//!   several seeds and fault profiles;
//! - the demo (its defaults: mock cluster, real processor) ends with 0 missed and 0 spurious.

mod support;

use std::collections::BTreeMap;
use std::process::Command;

use ackwatch::simulator::{compare, finding_facts, signal_facts, Truth};
use ackwatch_topology::time::parse_rfc3339_ms;
use ackwatch_topology::FindingKind;
use serde_json::Value;

fn ackwatch(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ackwatch"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn kind(name: &str) -> FindingKind {
    FindingKind::ALL
        .into_iter()
        .find(|k| k.as_str() == name)
        .unwrap()
}

fn time(v: &Value) -> i64 {
    parse_rfc3339_ms(v.as_str().unwrap()).unwrap()
}

/// The audit report's findings and signals as comparable facts.
fn report_facts(report: &Value) -> (BTreeMap<String, String>, BTreeMap<String, String>, usize) {
    let mut findings = Vec::new();
    for row in report["findings"].as_array().unwrap() {
        for seq in row["sequences"].as_array().unwrap() {
            findings.push((
                kind(row["kind"].as_str().unwrap()),
                row["world_id"].as_str().unwrap().to_string(),
                row["run_id"].as_str().unwrap().to_string(),
                seq.as_u64().unwrap(),
                time(&row["detected_at"]),
                (!row["resolved_at"].is_null()).then(|| time(&row["resolved_at"])),
            ));
        }
    }
    let signals: Vec<(String, String, String, u32, i64)> = report["signals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["action"].as_str().unwrap().to_string(),
                s["world_id"].as_str().unwrap().to_string(),
                s["run_id"].as_str().unwrap().to_string(),
                s["episode"].as_u64().unwrap() as u32,
                time(&s["at"]),
            )
        })
        .collect();
    let pending: usize = report["pending_at_end"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["sequences"].as_array().unwrap().len())
        .sum();
    (
        finding_facts(
            findings
                .iter()
                .map(|(k, w, r, s, d, res)| (*k, w.as_str(), r.as_str(), *s, *d, *res)),
        ),
        signal_facts(
            signals
                .iter()
                .map(|(a, w, r, e, at)| (a.as_str(), w.as_str(), r.as_str(), *e, *at)),
        ),
        pending,
    )
}

#[test]
fn loadgen_files_audited_agree_with_loadgen_truth_for_several_seeds_and_profiles() {
    let dir = tempfile::tempdir().unwrap();
    for (profile, seed) in [
        ("default", 1),
        ("default", 2),
        ("heavy", 3),
        ("duplicates", 4),
    ] {
        let traffic = dir.path().join(format!("{profile}-{seed}.kcat.jsonl"));
        let truth_path = dir.path().join(format!("{profile}-{seed}.truth.json"));
        let report_path = dir.path().join(format!("{profile}-{seed}.report.json"));
        let seed_text = seed.to_string();
        let (ok, stdout, stderr) = ackwatch(&[
            "loadgen",
            "--output",
            traffic.to_str().unwrap(),
            "--truth",
            truth_path.to_str().unwrap(),
            "--faults",
            profile,
            "--seed",
            &seed_text,
            "--worlds",
            "30",
            "--rate",
            "300",
            "--duration",
            "40s",
            "--partitions",
            "3",
            "--start-time",
            "2026-03-02T09:00:00Z",
        ]);
        assert!(ok, "{stdout}{stderr}");
        assert!(stdout.contains("truth written to"), "{stdout}");
        let (ok, _, stderr) = ackwatch(&[
            "audit",
            "--input",
            traffic.to_str().unwrap(),
            "--format",
            "json",
            "--output",
            report_path.to_str().unwrap(),
            "--quiet",
        ]);
        assert!(ok, "{stderr}");
        let truth: Truth =
            serde_json::from_str(&std::fs::read_to_string(&truth_path).unwrap()).unwrap();
        let report: Value =
            serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
        let (got_findings, got_signals, got_pending) = report_facts(&report);
        let want_findings = finding_facts(truth.findings.iter().map(|f| {
            (
                f.kind,
                f.world_id.as_str(),
                f.run_id.as_str(),
                f.sequence,
                f.detected_at_ms,
                f.resolved_at_ms,
            )
        }));
        let want_signals = signal_facts(truth.signals.iter().map(|s| {
            (
                s.action.as_str(),
                s.world_id.as_str(),
                s.run_id.as_str(),
                s.episode,
                s.at_ms,
            )
        }));
        let findings = compare(&want_findings, &got_findings);
        let signals = compare(&want_signals, &got_signals);
        assert!(
            findings.is_exact(),
            "{profile}/{seed} findings: {findings:?}"
        );
        assert!(signals.is_exact(), "{profile}/{seed} signals: {signals:?}");
        assert_eq!(
            got_pending,
            truth.pending_at_end.len(),
            "{profile}/{seed} pending"
        );
        assert_eq!(
            report["totals"]["invalid"], truth.poison_records,
            "{profile}/{seed} dead letters"
        );
        if profile == "duplicates" {
            assert!(
                want_findings.is_empty() && truth.duplicates > 100,
                "{profile}: noise only"
            );
        } else {
            assert!(
                findings.detected >= 20 && signals.detected >= 10,
                "{profile}/{seed}: {findings:?}"
            );
        }
    }
}

#[test]
fn loadgen_refuses_what_it_cannot_do_and_says_why() {
    let (ok, _, stderr) = ackwatch(&["loadgen", "--output", "/dev/null", "--faults", "wild"]);
    assert!(
        !ok && stderr.contains("--faults \"wild\": not one of"),
        "{stderr}"
    );
    let (ok, _, stderr) = ackwatch(&["loadgen", "--output", "/dev/null", "--duration", "soon"]);
    assert!(!ok && stderr.contains("--duration"), "{stderr}");
    let (ok, _, stderr) = ackwatch(&["loadgen", "--faults", "none"]);
    assert!(!ok && stderr.contains("--bootstrap-servers"), "{stderr}");
}

#[test]
fn the_demo_detects_exactly_the_injected_faults() {
    let http = format!("127.0.0.1:{}", support::free_port());
    let (ok, stdout, stderr) = ackwatch(&["demo", "--duration", "12s", "--http", &http]);
    assert!(ok, "{stdout}\n{stderr}");
    let line = |what: &str| {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{what}:")))
            .unwrap_or_else(|| panic!("no {what} line in\n{stdout}"))
            .to_string()
    };
    for what in ["findings", "signals"] {
        let l = line(what);
        assert!(
            l.contains(" 0 missed, 0 spurious, 0 with another"),
            "{l}\n{stdout}"
        );
        let detected: usize = l.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!(detected >= 5, "the demo shows something: {l}");
    }
    assert!(
        stdout.contains("FINDING") && stdout.contains("SIGNAL"),
        "{stdout}"
    );
}
