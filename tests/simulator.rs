//! The simulator's traffic, replayed by `ackwatch audit` from a kcat -J file, agrees exactly
//! with the simulator's ground truth: every finding (kind, run, sequence, detected_at,
//! resolved_at), every pending deadline at the end, every signal (action, run, episode, at),
//! every poison record dead-lettered. The truth is derived from the injected faults, not by the
//! engine, so this checks both against the behaviour rules from two sides.

use ackwatch::audit::FileAudit;
use ackwatch::settings::Topics;
use ackwatch::sim::{check_report, parse_script, simulate, Faults, SimSpec, TruthFinding};
use ackwatch_topology::FindingKind;
use ackwatch_topology::Policy;

/// The records as a kcat -J file, replayed by the file audit under `policy`.
fn audit(
    records: &[ackwatch::audit::kcat::KcatRecord],
    policy: Policy,
) -> ackwatch_topology::report::Report {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("traffic.kcat.jsonl");
    let text: Vec<String> = records
        .iter()
        .map(|r| serde_json::to_string(r).unwrap())
        .collect();
    std::fs::write(&path, text.join("\n") + "\n").unwrap();
    FileAudit {
        inputs: vec![path],
        topics: Topics::default(),
        policy,
        progress: false,
        end_ms: None,
    }
    .run()
    .unwrap()
}

fn check(profile: &str, seed: u64, policy: Policy, partitions: i32) {
    let spec = SimSpec {
        worlds: 40,
        rate: 400,
        duration_ms: 60_000,
        seed,
        partitions,
        faults: Faults::profile(profile).unwrap(),
        policy,
        ..SimSpec::default()
    };
    let (records, truth) = simulate(spec).unwrap();
    let report = audit(&records, policy);
    let result = check_report(&truth, &report);
    assert!(
        result.is_exact(),
        "profile {profile}, seed {seed}, {partitions} partitions:\n{result}"
    );
    // The check must have had something to check.
    if profile == "none" || profile == "duplicates" {
        assert!(
            truth.findings.is_empty(),
            "{profile} injects nothing a finding follows from"
        );
        assert!(report.findings.is_empty() && report.signals.is_empty());
    } else {
        assert!(
            result.findings.detected >= 10,
            "{profile}/{seed}: only {} findings",
            result.findings.detected
        );
        assert!(
            result.signals.detected >= 5,
            "{profile}/{seed}: only {} signals",
            result.signals.detected
        );
    }
    if profile != "none" {
        assert!(
            truth.duplicates > 0 && truth.poison_records > 0,
            "{profile}"
        );
        assert_eq!(
            report.totals.duplicates, truth.duplicates,
            "{profile}/{seed} duplicates"
        );
    }
    assert_eq!(
        report.totals.tracked, truth.tracked,
        "{profile}/{seed} tracked"
    );
    assert_eq!(report.totals.acks, truth.acks, "{profile}/{seed} acks");
    assert_eq!(
        report.totals.untracked, truth.untracked,
        "{profile}/{seed} untracked"
    );
}

#[test]
fn audit_of_simulated_traffic_agrees_with_the_truth_for_every_profile_and_several_seeds() {
    for profile in Faults::PROFILES {
        for seed in [1, 2, 3] {
            check(profile, seed, Policy::default(), 3);
        }
    }
}

#[test]
fn the_truth_follows_the_policy_rollbacks_and_other_timeouts_included() {
    let policy = Policy {
        auto_rollback: true,
        rollback_after_ms: 5_000,
        ack_timeout_ms: 4_000,
        gap_timeout_ms: 2_000,
        ..Policy::default()
    };
    for seed in [4, 5] {
        check("heavy", seed, policy, 1);
    }
}

#[test]
fn the_same_seed_gives_the_same_traffic_and_truth() {
    let spec = SimSpec {
        seed: 9,
        ..SimSpec::default()
    };
    let (a, ta) = simulate(spec.clone()).unwrap();
    let (b, tb) = simulate(spec).unwrap();
    assert_eq!(a, b);
    assert_eq!(ta, tb);
    let (c, _) = simulate(SimSpec {
        seed: 10,
        ..SimSpec::default()
    })
    .unwrap();
    assert_ne!(a, c);
}

#[test]
fn scripted_faults_are_exactly_the_findings_of_a_quiet_traffic() {
    let script = parse_script(
        r#"[
            {"world": 0, "run": 2, "sequence": 3, "fault": "dropped_ack"},
            {"world": 1, "run": 3, "sequence": 1, "fault": "late_ack"},
            {"world": 2, "run": 4, "sequence": 2, "fault": "lost_activation"},
            {"world": 3, "run": 2, "sequence": 1, "fault": "conflict"},
            {"world": 4, "run": 1, "sequence": 2, "fault": "duplicate_ack"},
            {"world": 4, "run": 1, "sequence": 99, "fault": "dropped_ack"}
        ]"#,
    )
    .unwrap();
    let spec = SimSpec {
        worlds: 5,
        rate: 50,
        duration_ms: 60_000,
        faults: Faults::profile("none").unwrap(),
        script,
        ..SimSpec::default()
    };
    let (records, truth) = simulate(spec).unwrap();
    let found: Vec<(FindingKind, &str, u64, bool)> = truth
        .live_findings
        .iter()
        .map(|f: &TruthFinding| {
            (
                f.kind,
                f.world_id.as_str(),
                f.sequence,
                f.resolved_at_ms.is_some(),
            )
        })
        .collect();
    assert_eq!(
        found.len(),
        4,
        "dropped, late, lost, conflict; the duplicate raises nothing: {found:?}"
    );
    for want in [
        (FindingKind::AckMissing, "world_0", 3, false),
        (FindingKind::AckMissing, "world_1", 1, true),
        (FindingKind::ActivationGap, "world_2", 2, false),
        (FindingKind::SequenceConflict, "world_3", 1, false),
    ] {
        assert!(found.contains(&want), "{want:?} not in {found:?}");
    }
    assert_eq!(truth.duplicates, 1);
    assert_eq!(truth.script_unapplied, vec!["4 1 99".to_string()]);
    // Resumed only where the finding resolved: the late ACK's run.
    let resumed: Vec<&str> = truth
        .live_signals
        .iter()
        .filter(|s| s.action == "resume")
        .map(|s| s.world_id.as_str())
        .collect();
    assert_eq!(resumed, ["world_1"]);

    let report = audit(&records, Policy::default());
    let result = check_report(&truth, &report);
    assert!(result.is_exact(), "{result}");

    for (bad, why) in [
        (
            r#"[{"world": 0, "run": 0, "sequence": 1, "fault": "meteor"}]"#,
            "unknown variant",
        ),
        (
            r#"[{"world": 0, "run": 0, "sequence": 0, "fault": "late_ack"}]"#,
            "sequences start at 1",
        ),
        (
            r#"[{"world": 0, "run": 0, "sequence": 1, "fault": "late_ack", "x": 1}]"#,
            "unknown field",
        ),
    ] {
        let err = parse_script(bad).unwrap_err().to_string();
        assert!(err.contains(why), "{err}");
    }
    let far =
        parse_script(r#"[{"world": 9, "run": 0, "sequence": 1, "fault": "late_ack"}]"#).unwrap();
    let err = simulate(SimSpec {
        worlds: 5,
        script: far,
        ..SimSpec::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("world 9"), "{err}");
}
