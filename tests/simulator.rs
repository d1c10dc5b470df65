//! The simulator's traffic, replayed by `ackwatch audit` from a kcat -J file, agrees exactly
//! with the simulator's ground truth: every finding (kind, run, sequence, detected_at,
//! resolved_at), every pending deadline at the end, every signal (action, run, episode, at),
//! every poison record dead-lettered. The truth is derived from the injected faults, not by the
//! engine, so this checks both against SPEC.md from two sides.

use ackwatch::audit::FileAudit;
use ackwatch::settings::Topics;
use ackwatch::simulator::{check_report, simulate, Faults, SimSpec};
use ackwatch_topology::Policy;

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
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("traffic.kcat.jsonl");
    let text: Vec<String> = records
        .iter()
        .map(|r| serde_json::to_string(r).unwrap())
        .collect();
    std::fs::write(&path, text.join("\n") + "\n").unwrap();
    let report = FileAudit {
        inputs: vec![path],
        topics: Topics::default(),
        policy,
        progress: false,
        end_ms: None,
    }
    .run()
    .unwrap();
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
