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

/// Runs the binary: (exit code, stdout, stderr).
fn ackwatch_status(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ackwatch"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every report says where it came from: the version, the policy used, every input with its
/// size and SHA-256 (as `sha256sum` computes it), and when it was made — in JSON, text and HTML.
#[test]
fn every_report_carries_its_provenance() {
    let inputs = [
        fixture("scenarios/late_ack.kcat.jsonl"),
        fixture("scenarios/ack_missing.kcat.jsonl"),
    ];
    let sha256sum = std::process::Command::new("sha256sum")
        .args(&inputs)
        .output()
        .unwrap();
    assert!(sha256sum.status.success());
    let sums: Vec<String> = String::from_utf8(sha256sum.stdout)
        .unwrap()
        .lines()
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    let before = std::time::SystemTime::now();
    let (code, stdout, stderr) = ackwatch_status(&[
        "audit", "--input", &inputs[0], &inputs[1], "--format", "json", "--ack-timeout-ms", "4s",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let p = &json["provenance"];
    assert_eq!(p["ackwatch_version"], env!("CARGO_PKG_VERSION"));
    assert!(p["revision"].as_str().is_some_and(|r| !r.is_empty()));
    assert_eq!(p["policy"]["ack_timeout_ms"], 4000, "the flag's policy, not the default");
    assert_eq!(p["activation_topic"], "activation");
    for (i, input) in inputs.iter().enumerate() {
        assert_eq!(p["inputs"][i]["path"], input.as_str());
        assert_eq!(p["inputs"][i]["sha256"], sums[i].as_str());
        assert_eq!(
            p["inputs"][i]["bytes"].as_u64().unwrap(),
            std::fs::metadata(input).unwrap().len()
        );
    }
    let made = ackwatch_topology::time::parse_rfc3339_ms(p["generated_at"].as_str().unwrap())
        .unwrap();
    let before_ms = before.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    assert!((before_ms - 1000..before_ms + 60_000).contains(&made), "{made} vs {before_ms}");

    let (code, text, _) = ackwatch_status(&["audit", "--input", &inputs[0], &inputs[1]]);
    assert_eq!(code, 0);
    let (code, html, _) =
        ackwatch_status(&["audit", "--input", &inputs[0], &inputs[1], "--format", "html"]);
    assert_eq!(code, 0);
    for out in [&text, &html] {
        assert!(out.contains(&format!("ackwatch {}", env!("CARGO_PKG_VERSION"))));
        assert!(out.contains("ack_timeout_ms 3000"), "the default policy is named");
        for sum in &sums {
            assert!(out.contains(&format!("sha256 {sum}")), "{out}");
        }
    }
}

/// The headline says what is still open at the end, and its counts are the rows' in every
/// format; `--fail-on` turns it into an exit status a pipeline can use (3; default never).
#[test]
fn the_headline_and_fail_on() {
    // late_ack: one finding, resolved. ack_missing: one finding still open.
    let resolved = fixture("scenarios/late_ack.kcat.jsonl");
    let open = fixture("scenarios/ack_missing.kcat.jsonl");
    let (_, stdout, _) = ackwatch_status(&["audit", "--input", &open, "--format", "json"]);
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let h = &json["headline"];
    assert_eq!(h["open_findings"], 1);
    assert_eq!(h["open_by_kind"]["ack_missing"], 1);
    assert_eq!(h["open_by_kind"]["orphan_ack"], 0);
    assert_eq!(h["runs_with_open_findings"], 1);
    assert_eq!(h["findings"].as_u64().unwrap() as usize, json["findings"].as_array().unwrap().len());
    assert_eq!(h["signals"].as_u64().unwrap() as usize, json["signals"].as_array().unwrap().len());
    let (_, text, _) = ackwatch_status(&["audit", "--input", &open]);
    assert!(
        text.contains("OPEN AT THE END: 1 finding(s) (1 sequence(s)) in 1 run(s): ack_missing 1"),
        "{text}"
    );
    let (_, text, _) = ackwatch_status(&["audit", "--input", &resolved]);
    assert!(text.contains("open at the end: none"), "{text}");

    for (input, fail_on, expected) in [
        (&resolved, None, 0),
        (&resolved, Some("never"), 0),
        (&resolved, Some("open"), 0),
        (&resolved, Some("findings"), 3),
        (&open, None, 0),
        (&open, Some("open"), 3),
        (&open, Some("findings"), 3),
        (&open, Some("never"), 0),
    ] {
        let mut args = vec!["audit", "--input", input.as_str()];
        if let Some(f) = fail_on {
            args.extend(["--fail-on", f]);
        }
        let (code, _, stderr) = ackwatch_status(&args);
        assert_eq!(code, expected, "{input} --fail-on {fail_on:?}: {stderr}");
        if expected == 3 {
            assert!(stderr.contains("audit: --fail-on:"), "{stderr}");
        }
    }
    // An input that cannot be audited is 1, not 3.
    let (code, _, _) = ackwatch_status(&["audit", "--input", "/nonexistent", "--fail-on", "open"]);
    assert_eq!(code, 1);
}

/// `--world W --run R` prints the run's timeline in order: its records, deadlines, finding,
/// signals and resolution; the JSON report carries it as `timeline`.
#[test]
fn one_run_explained() {
    let input = fixture("scenarios/late_ack.kcat.jsonl");
    let (code, text, stderr) =
        ackwatch_status(&["audit", "--input", &input, "--world", "w1", "--run", "r1"]);
    assert_eq!(code, 0, "{stderr}");
    let timeline = &text[text.find("timeline of world w1 run r1").expect("printed")..];
    let order = [
        " activation ",
        " deadline_set ",
        " detected ",
        " signal ",
        " ack ",
        " resolved ",
        " signal ",
    ];
    let mut at = 0;
    for event in order {
        let found = timeline[at..]
            .find(event)
            .unwrap_or_else(|| panic!("{event:?} after position {at}:\n{timeline}"));
        at += found + event.len();
    }
    assert!(timeline.contains("ack_missing"), "{timeline}");
    assert!(timeline.contains("pause (episode 1)") && timeline.contains("resume (episode 1)"));

    let (_, stdout, _) = ackwatch_status(&[
        "audit", "--input", &input, "--world", "w1", "--run", "r1", "--format", "json",
    ]);
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["timeline"]["world_id"], "w1");
    let detected: Vec<&serde_json::Value> = json["timeline"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "detected")
        .collect();
    assert_eq!(detected.len(), 1);
    assert_eq!(detected[0]["at"], json["findings"][0]["detected_at"]);

    // A run not in the input: said, not an error.
    let (code, text, _) =
        ackwatch_status(&["audit", "--input", &input, "--world", "w1", "--run", "nope"]);
    assert_eq!(code, 0);
    assert!(text.contains("no record, deadline or output of this run"), "{text}");
    // --world alone on files says what to do.
    let (code, _, stderr) = ackwatch_status(&["audit", "--input", &input, "--world", "w1"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("--world W --run R"), "{stderr}");
}

/// The policy flags take durations (`6s`) as well as milliseconds, and say what they do.
#[test]
fn policy_flags_take_durations_and_have_help() {
    let input = fixture("scenarios/late_ack.kcat.jsonl");
    let findings = |value: &str| {
        let (code, stdout, stderr) = ackwatch_status(&[
            "audit", "--input", &input, "--format", "json", "--ack-timeout-ms", value,
        ]);
        assert_eq!(code, 0, "{stderr}");
        let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        json["findings"].as_array().unwrap().len()
    };
    assert_eq!(findings("6000"), 0);
    assert_eq!(findings("6s"), 0);
    assert_eq!(findings("3s"), 1);
    let (code, _, stderr) = ackwatch_status(&["audit", "--input", &input, "--ack-timeout-ms", "6x"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--ack-timeout-ms") && stderr.contains("unknown unit"), "{stderr}");
    let (_, help, _) = ackwatch_status(&["audit", "--help"]);
    for (flag, says) in [
        ("--ack-timeout-ms", "is `ack_missing`"),
        ("--gap-timeout-ms", "is `activation_gap`"),
        ("--orphan-timeout-ms", "is `orphan_ack`"),
        ("--rollback-after-ms", "rolled back or escalated"),
    ] {
        assert!(help.contains(flag) && help.contains(says), "{flag}: {help}");
    }
    assert!(help.contains("--bootstrap-server"), "Kafka's spelling is listed");
    assert!(help.contains("-10m"), "relative times are documented");
    assert!(help.contains("--fail-on"));
}

/// With the page in a file, the terminal gets a short summary, not the report's rows.
/// An invalid record is listed where it is, with its reason and the start of its value, in
/// every format (JSON rows, the text summary, the HTML table), with markup escaped.
#[test]
fn invalid_records_are_listed_in_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("dump.jsonl");
    let mut text = std::fs::read_to_string(fixture("scenarios/late_ack.kcat.jsonl")).unwrap();
    text += "{\"topic\": \"activation\", \"partition\": 1, \"offset\": 42, \"tstype\": \"create\", \"ts\": 1772442001500, \"key\": \"w1\", \"payload\": \"<b>not json\"}\n";
    std::fs::write(&input, text).unwrap();
    let input = input.to_str().unwrap();
    let (_, json, stderr) = ackwatch_status(&["audit", "--input", input, "--format", "json"]);
    let report: serde_json::Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    let rows = report["invalid_records"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["topic"], "activation");
    assert_eq!(rows[0]["partition"], 1);
    assert_eq!(rows[0]["offset"], 42);
    assert_eq!(rows[0]["reason"], "not_json");
    assert_eq!(rows[0]["preview"], "<b>not json");
    assert_eq!(report["totals"]["invalid"], 1);
    let (_, summary, _) = ackwatch_status(&["audit", "--input", input]);
    assert!(summary.contains("invalid activation/1@42: not_json ("), "{summary}");
    let (_, html, _) = ackwatch_status(&["audit", "--input", input, "--format", "html"]);
    assert!(html.contains("<h2>Invalid records (1)</h2>"), "{html}");
    assert!(html.contains("<code>&lt;b&gt;not json</code>"), "{html}");
}

#[test]
fn html_to_a_file_prints_a_short_summary() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("audit.html");
    let input = fixture("scenarios/late_ack.kcat.jsonl");
    let (code, stdout, stderr) = ackwatch_status(&[
        "audit", "--input", &input, "--format", "html", "--output", page.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("page written to"), "{stdout}");
    assert!(!stdout.contains("2026-03-02T09:00:04.200Z"), "no finding rows: {stdout}");
    assert!(stdout.lines().count() <= 5, "{stdout}");
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("Open at the end: none") && html.contains("Provenance"));
}
