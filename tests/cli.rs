//! `ackwatch audit` as a user runs it: the binary, its output, its report file, its errors.

mod support;

use support::ackwatch;

fn fixture(path: &str) -> String {
    format!("{}/tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn malformed_lines_are_reported_by_number_and_the_audit_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("dump.jsonl");
    let mut lines: Vec<String> = std::fs::read_to_string(fixture("scenarios/late_ack.kcat.jsonl"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    lines.insert(
        1,
        "% Reached end of topic activation [0] at offset 9".into(),
    );
    lines.insert(5, "{\"topic\": \"activation\", \"partition\": 0".into());
    std::fs::write(&input, lines.join("\n")).unwrap();
    let report = dir.path().join("report.json");
    let (ok, stdout, stderr) = ackwatch(&[
        "audit",
        "--input",
        input.to_str().unwrap(),
        "--output",
        report.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("dump.jsonl:2: skipped: not a kcat -J record"),
        "{stderr}"
    );
    assert!(stderr.contains("dump.jsonl:6: skipped"), "{stderr}");
    assert!(stdout.contains("2 malformed lines skipped"), "{stdout}");
    assert!(
        stdout.contains("ack_missing") && stdout.contains("resume"),
        "{stdout}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(json["totals"]["malformed_lines"], 2);
    assert_eq!(
        json["totals"]["records"], 24,
        "every record line still counted"
    );
    assert_eq!(json["signals"].as_array().unwrap().len(), 2);
    assert_eq!(
        json["findings"][0]["detected_at"],
        "2026-03-02T09:00:04.200Z"
    );
    assert_eq!(
        json["findings"][0]["resolved_at"],
        "2026-03-02T09:00:06.400Z"
    );
}

#[test]
fn policy_flags_change_the_verdict() {
    let input = fixture("scenarios/late_ack.kcat.jsonl");
    let (ok, stdout, stderr) = ackwatch(&[
        "audit",
        "--input",
        &input,
        "--format",
        "json",
        "--ack-timeout-ms",
        "6000",
    ]);
    assert!(ok, "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        json["findings"].as_array().unwrap().len(),
        0,
        "a 5.2 s ACK is on time with a 6 s timeout"
    );
    let (ok, stdout, _) = ackwatch(&[
        "audit",
        "--input",
        &fixture("scenarios/ack_missing.kcat.jsonl"),
        "--format",
        "json",
        "--auto-rollback",
        "--rollback-after-ms",
        "1000",
    ]);
    assert!(ok);
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let actions: Vec<&str> = json["signals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["pause", "rollback"]);
}

#[test]
fn errors_say_what_to_fix() {
    let (ok, _, stderr) = ackwatch(&["audit", "--input", "/nonexistent/dump.jsonl"]);
    assert!(!ok);
    assert!(
        stderr.contains("cannot open input /nonexistent/dump.jsonl"),
        "{stderr}"
    );
    let (ok, _, stderr) = ackwatch(&[
        "audit",
        "--input",
        &fixture("wire/qmtl-apply-run.kcat.jsonl"),
        "--gap-timeout-ms",
        "0",
    ]);
    assert!(!ok);
    assert!(stderr.contains("gap_timeout_ms"), "{stderr}");
}

/// An input of one topic only (a dump of the ACK topic alone, as `kcat -C -t a -t b` with
/// kcat 1.7 gives) or partitions of one topic without the other's: the audit says so in every
/// format instead of reporting thousands of orphan ACKs as if they were the traffic's.
#[test]
fn an_input_of_one_topic_or_unmatched_partitions_is_warned_about_in_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = std::fs::read_to_string(fixture("scenarios/late_ack.kcat.jsonl"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let acks_only: Vec<&String> = lines
        .iter()
        .filter(|l| {
            l.contains("\"topic\":\"control.activation.ack\"")
                || l.contains("\"topic\": \"control.activation.ack\"")
        })
        .collect();
    assert!(!acks_only.is_empty() && acks_only.len() < lines.len());
    let input = dir.path().join("acks.jsonl");
    std::fs::write(
        &input,
        acks_only
            .iter()
            .map(|l| format!("{l}\n"))
            .collect::<String>(),
    )
    .unwrap();
    let warning = "the input holds records of the ACK topic only, none of the activation topic";
    for format in ["text", "json", "html"] {
        let (ok, stdout, stderr) = ackwatch(&[
            "audit",
            "--input",
            input.to_str().unwrap(),
            "--format",
            format,
        ]);
        assert!(ok, "{stderr}");
        assert!(stdout.contains(warning), "{format}: {stdout}");
        assert!(
            stderr.contains(&format!("warning: {warning}")),
            "{format}: {stderr}"
        );
    }

    // Both topics, but the ACKs on partition 1 only: a partition of each topic alone.
    let moved: String = lines
        .iter()
        .map(|l| {
            if l.contains("control.activation.ack") {
                l.replacen("\"partition\":0", "\"partition\":1", 1)
                    .replacen("\"partition\": 0", "\"partition\": 1", 1)
            } else {
                l.clone()
            }
        })
        .map(|l| l + "\n")
        .collect();
    let input = dir.path().join("moved.jsonl");
    std::fs::write(&input, moved).unwrap();
    let (ok, stdout, stderr) = ackwatch(&["audit", "--input", input.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    for expected in [
        "WARNING: partition(s) 0 of the activation topic have records but the same partition(s) of the ACK topic have none",
        "WARNING: partition(s) 1 of the ACK topic have records but the same partition(s) of the activation topic have none",
    ] {
        assert!(stdout.contains(expected), "{stdout}");
    }

    // The whole scenario: no warning.
    let (ok, stdout, stderr) = ackwatch(&[
        "audit",
        "--input",
        &fixture("scenarios/late_ack.kcat.jsonl"),
    ]);
    assert!(
        ok && !stdout.contains("WARNING") && !stderr.contains("warning:"),
        "{stdout}{stderr}"
    );
}
