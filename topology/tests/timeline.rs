//! One run's timeline (`ackwatch audit --world W --run R`), through one data-driven
//! `check(records, run, expected)`: the records are replayed as the audit replays them, and
//! every timeline entry is rendered as `at event [sequences] detail` (times in ms after T0).

use ackwatch_topology::partition_group::Buffered;
use ackwatch_topology::replay::Replay;
use ackwatch_topology::time::{format_rfc3339_ms, parse_rfc3339_ms};
use ackwatch_topology::{Millis, Policy, RunKey, Side};

/// 2026-03-02T09:00:00.000Z: times in the tests are milliseconds after it.
const T0: Millis = 1_772_442_000_000;

struct Rec {
    side: Side,
    t: Millis,
    value: String,
}

fn act(t: Millis, run: &str, seq: u64) -> Rec {
    Rec {
        side: Side::Activation,
        t,
        value: format!(
            r#"{{"type":"ActivationUpdated","version":1,"world_id":"w","run_id":"{run}","sequence":{seq},"requires_ack":true,"phase":"freeze","etag":"e{seq}","ts":"{}"}}"#,
            format_rfc3339_ms(T0 + t)
        ),
    }
}

fn ack(t: Millis, run: &str, seq: u64) -> Rec {
    Rec {
        side: Side::Ack,
        t,
        value: format!(
            r#"{{"type":"ActivationAck","version":1,"world_id":"w","run_id":"{run}","sequence":{seq},"phase":"freeze","ack_ts":"{}"}}"#,
            format_rfc3339_ms(T0 + t)
        ),
    }
}

fn poison(side: Side, t: Millis) -> Rec {
    Rec {
        side,
        t,
        value: "{not json".into(),
    }
}

fn push_all(replay: &mut Replay<'_>, records: &[Rec]) {
    let mut offsets = [0i64; 2];
    for r in records {
        let offset = &mut offsets[r.side as usize];
        replay.push(
            r.side,
            0,
            Buffered {
                offset: *offset,
                timestamp_ms: Some(T0 + r.t),
                key: Some(b"w".to_vec().into_boxed_slice()),
                value: Some(r.value.clone().into_bytes().into_boxed_slice()),
            },
        );
        *offset += 1;
    }
}

fn plain_report(records: &[Rec], end: Option<Millis>) -> ackwatch_topology::report::Report {
    let mut ignore = |_: &ackwatch_topology::Output| {};
    let mut replay = Replay::new(Policy::default(), &mut ignore);
    push_all(&mut replay, records);
    replay.finish(end.map(|e| T0 + e))
}

fn check(records: Vec<Rec>, run: &str, end: Option<Millis>, expected: &[&str]) {
    let mut ignore = |_: &ackwatch_topology::Output| {};
    let mut replay =
        Replay::new(Policy::default(), &mut ignore).with_timeline(RunKey::new("w", run));
    push_all(&mut replay, &records);
    let records_again = records;
    let (report, timeline) = replay.finish_with_timeline(end.map(|e| T0 + e));
    assert_eq!(
        report,
        plain_report(&records_again, end),
        "keeping a timeline changes nothing in the report"
    );
    let timeline = timeline.expect("asked for");
    let got: Vec<String> = timeline
        .entries
        .iter()
        .map(|e| {
            let at = parse_rfc3339_ms(&e.at).map_or(e.at.clone(), |t| (t - T0).to_string());
            let detail = e.detail.replace(&format_rfc3339_ms(T0), "T0");
            format!("{at} {} {:?} {detail}", e.event, e.sequences)
        })
        .collect();
    assert_eq!(got, expected, "timeline of {run}; report: {report:#?}");
    // What the timeline says was found and signalled is what the report lists for the run.
    let listed = |event: &str| -> Vec<String> {
        let mut v: Vec<String> = timeline
            .entries
            .iter()
            .filter(|e| e.event == event)
            .flat_map(|e| e.sequences.iter().map(|s| format!("{} {s}", e.at)))
            .collect();
        v.sort();
        v
    };
    let mine = report.findings.iter().filter(|f| f.run_id == run);
    let mut detected: Vec<String> = mine
        .clone()
        .flat_map(|f| f.sequences.iter().map(|s| format!("{} {s}", f.detected_at)))
        .collect();
    detected.sort();
    assert_eq!(listed("detected"), detected);
    let mut resolved: Vec<String> = mine
        .filter_map(|f| f.resolved_at.as_ref().map(|at| (at, &f.sequences)))
        .flat_map(|(at, seqs)| seqs.iter().map(move |s| format!("{at} {s}")))
        .collect();
    resolved.sort();
    assert_eq!(listed("resolved"), resolved);
    let signals = timeline.entries.iter().filter(|e| e.event == "signal").count();
    assert_eq!(
        signals,
        report.signals.iter().filter(|s| s.run_id == run).count()
    );
    assert_eq!(timeline.cut, 0);
}

/// The run's records, its deadlines as they are set and go away, its finding and the pause,
/// what is pending at the end; another run's records and outputs are not in it, an invalid
/// record of its world is.
#[test]
fn a_missing_ack_in_order_with_its_records_and_deadlines() {
    check(
        vec![
            act(0, "r1", 1),
            act(10, "r2", 1),
            ack(100, "r1", 1),
            act(200, "r1", 2),
            poison(Side::Ack, 300),
            act(4000, "r1", 3),
            ack(4100, "r2", 1),
        ],
        "r1",
        None,
        &[
            "0 activation [1] activation topic partition 0 offset 0, phase freeze",
            "0 deadline_set [1] ack_missing, due 2026-03-02T09:00:03.000Z",
            "100 ack [1] ACK topic partition 0 offset 0",
            "100 deadline_cleared [1] ack_missing, due 2026-03-02T09:00:03.000Z",
            "200 activation [2] activation topic partition 0 offset 2, phase freeze",
            "200 deadline_set [2] ack_missing, due 2026-03-02T09:00:03.200Z",
            "300 invalid [] ACK topic partition 0 offset 1: not_json (value is not a valid JSON object: key must be a string at line 1 column 2); its run cannot be known",
            // The record advances stream time to 4000: what that fires comes first, and the
            // rollback decision's countdown starts at the pause.
            "3200 detected [2] ack_missing, phase freeze",
            "3200 signal [] pause (episode 1), idempotency key ackwatch:signal:w:r1:pause:1:1772442003200",
            "3200 deadline_passed [2] ack_missing, due 2026-03-02T09:00:03.200Z",
            "3200 deadline_set [] rollback decision, due 2026-03-02T09:00:33.200Z",
            "4000 activation [3] activation topic partition 0 offset 3, phase freeze",
            "4000 deadline_set [3] ack_missing, due 2026-03-02T09:00:07.000Z",
            "4100 pending_at_end [3] ack_missing, due 2026-03-02T09:00:07.000Z",
            "4100 pending_at_end [] rollback decision, due 2026-03-02T09:00:33.200Z",
        ],
    );
}

/// A late ACK resolves the finding and resumes the run; at the end of the window (stream time
/// moved to it) the next sequence's ACK is missing, the run pauses again, and the rollback
/// decision escalates to an operator: each deadline is set and passes in the timeline.
#[test]
fn a_resume_then_a_pause_escalated_at_the_end_of_the_window() {
    check(
        vec![act(0, "r1", 1), act(4000, "r1", 2), ack(4500, "r1", 1)],
        "r1",
        Some(40_000),
        &[
            "0 activation [1] activation topic partition 0 offset 0, phase freeze",
            "0 deadline_set [1] ack_missing, due 2026-03-02T09:00:03.000Z",
            "3000 detected [1] ack_missing, phase freeze",
            "3000 signal [] pause (episode 1), idempotency key ackwatch:signal:w:r1:pause:1:1772442003000",
            "3000 deadline_passed [1] ack_missing, due 2026-03-02T09:00:03.000Z",
            "3000 deadline_set [] rollback decision, due 2026-03-02T09:00:33.000Z",
            "4000 activation [2] activation topic partition 0 offset 1, phase freeze",
            "4000 deadline_set [2] ack_missing, due 2026-03-02T09:00:07.000Z",
            "4500 ack [1] ACK topic partition 0 offset 0",
            "4500 resolved [1] ack_missing, detected 2026-03-02T09:00:03.000Z",
            "4500 signal [] resume (episode 1), idempotency key ackwatch:signal:w:r1:resume:1:1772442003000",
            "4500 deadline_cleared [] rollback decision, due 2026-03-02T09:00:33.000Z",
            "7000 detected [2] ack_missing, phase freeze",
            "7000 signal [] pause (episode 2), idempotency key ackwatch:signal:w:r1:pause:2:1772442007000",
            "7000 deadline_passed [2] ack_missing, due 2026-03-02T09:00:07.000Z",
            "7000 deadline_set [] rollback decision, due 2026-03-02T09:00:37.000Z",
            "37000 escalated [] episode 2: rollback deadline passed, an operator decides",
            "37000 deadline_passed [] rollback decision, due 2026-03-02T09:00:37.000Z",
        ],
    );
}
