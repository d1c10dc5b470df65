//! `ackwatch loadgen` and `ackwatch demo` as a user runs them (the binary).
//! - loadgen's kcat file, replayed by `ackwatch audit`, agrees with loadgen's truth file, for
//!   several seeds and fault profiles;
//! - the demo (its defaults: mock cluster, real processor) ends with 0 missed and 0 spurious.

mod support;

use ackwatch::sim::{compare, Truth};
use serde_json::Value;
use support::ackwatch;
use support::facts::report_facts;

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
        let (got_findings, got_signals) = report_facts(&report);
        let got_pending: usize = report["pending_at_end"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["sequences"].as_array().unwrap().len())
            .sum();
        let (want_findings, want_signals) = truth.facts(ackwatch::sim::Reading::Replay);
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
    // The requested port is taken (an `ackwatch run` on the same machine): the demo moves.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let http = taken.local_addr().unwrap().to_string();
    let (ok, stdout, stderr) = ackwatch(&["demo", "--duration", "12s", "--http", &http]);
    drop(taken);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("{http} is in use (another ackwatch?): serving on 127.0.0.1:")),
        "{stdout}"
    );
    // Something to see from the first second: a status line before any finding could be due,
    // and later ones with the ACK latency the processor measured.
    let first_status = stdout.find("t+0s: ").unwrap_or_else(|| panic!("no t+0s status in\n{stdout}"));
    let first_finding = stdout.find("FINDING").unwrap_or(usize::MAX);
    assert!(first_status < first_finding, "{stdout}");
    assert!(
        stdout.lines().any(|l| l.starts_with("t+") && l.contains("read by ackwatch") && l.contains("ACK latency p50 ≤ ")),
        "{stdout}"
    );
    // Not a terminal: no colour codes, neither on the screen nor in the log.
    assert!(!stdout.contains('\x1b') && !stderr.contains('\x1b'), "{stdout}\n{stderr}");
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
