//! One short test per rule of docs/semantics.md, named after it, through one data-driven
//! `check(records, expected)`: the records are applied to one task in the order given (as the
//! partition group released them), and every output is rendered as a line with its
//! idempotency key, so a test states everything the rule makes the engine emit.

use ackwatch_topology::time::format_rfc3339_ms;
use ackwatch_topology::{Millis, Outcome, Output, Policy, RawRecord, Side, Task};

/// 2026-03-02T09:00:00.000Z: times in the tests are milliseconds after it.
const T0: Millis = 1_772_442_000_000;

/// One input record, built with the helpers below.
#[derive(Clone)]
struct Rec {
    side: Side,
    key: Option<String>,
    value: String,
    record_ms: Option<Millis>,
}

/// A tracked activation of run `run` (world `w`) at `t` ms, phase `freeze`, etag per sequence.
fn act(t: Millis, run: &str, seq: u64) -> Rec {
    act_with(t, run, seq, r#""phase":"freeze""#)
}

/// An activation with extra fields (`phase`, `etag`, ...) instead of the default phase.
fn act_with(t: Millis, run: &str, seq: u64, extra: &str) -> Rec {
    let extra = if extra.contains("etag") {
        extra.to_string()
    } else {
        format!(r#"{extra},"etag":"e{seq}""#)
    };
    let extra = extra.trim_start_matches(',');
    Rec {
        side: Side::Activation,
        key: Some("w".into()),
        value: format!(
            r#"{{"type":"ActivationUpdated","version":1,"world_id":"w","run_id":"{run}","sequence":{seq},"requires_ack":true,{extra},"ts":"{}"}}"#,
            format_rfc3339_ms(T0 + t)
        ),
        record_ms: Some(T0 + t),
    }
}

/// A Gateway's ACK of (run, seq) at `t` ms.
fn ack(t: Millis, run: &str, seq: u64) -> Rec {
    Rec {
        side: Side::Ack,
        key: Some("w".into()),
        value: format!(
            r#"{{"type":"ActivationAck","version":1,"world_id":"w","run_id":"{run}","sequence":{seq},"phase":"freeze","ack_ts":"{}"}}"#,
            format_rfc3339_ms(T0 + t)
        ),
        record_ms: Some(T0 + t),
    }
}

impl Rec {
    /// The same record with another record timestamp (ms after T0).
    fn stamped(mut self, record_t: Millis) -> Rec {
        self.record_ms = Some(T0 + record_t);
        self
    }

    /// The same record in another world (its key follows).
    fn world(mut self, world: &str) -> Rec {
        self.value = self
            .value
            .replace(r#""world_id":"w""#, &format!(r#""world_id":{world:?}"#));
        self.key = Some(world.into());
        self
    }
}

/// A raw record value (for decoding rules) on `side`, stamped at `t`.
fn raw(side: Side, t: Millis, value: &str) -> Rec {
    Rec {
        side,
        key: Some("w".into()),
        value: value.into(),
        record_ms: Some(T0 + t),
    }
}

/// Renders a time as ms after T0 (readable expectations).
fn at(ms: Millis) -> String {
    format!("{}", ms - T0)
}

fn render(outcome: &Outcome, outputs: &[Output], lines: &mut Vec<String>) {
    match outcome {
        Outcome::Tracked | Outcome::Ack | Outcome::Untracked => {}
        Outcome::Duplicate => lines.push("duplicate".into()),
        Outcome::Cut => lines.push("cut".into()),
        Outcome::Invalid(i) => lines.push(format!("invalid {}", i.reason.label())),
        Outcome::NeedsRun(k) => lines.push(format!("needs run {k}")),
    }
    for o in outputs {
        lines.push(match o {
            Output::Detected(d) => format!(
                "detected {} {}/{} {:?} phase={} blocked_by={} at={} key={}",
                d.kind.as_str(),
                d.world_id,
                d.run_id,
                d.sequences,
                d.phase.map_or("null", |p| p.as_str()),
                d.blocked_by.map_or("-".into(), |b| b.to_string()),
                at(d.detected_at),
                d.idempotency_key
            ),
            Output::Resolved(r) => format!(
                "resolved {} {}/{} {:?} at={} key={}",
                r.kind.as_str(),
                r.world_id,
                r.run_id,
                r.sequences,
                at(r.resolved_at),
                r.idempotency_key
            ),
            Output::Signal(s) => format!(
                "{} {}/{} episode={} at={} key={}",
                s.action.as_str(),
                s.world_id,
                s.run_id,
                s.episode,
                at(s.at),
                s.idempotency_key
            ),
            Output::Escalated {
                run,
                episode,
                at: t,
            } => {
                format!("escalated {run} episode={episode} at={}", at(*t))
            }
            Output::Released {
                run,
                sequence,
                at: t,
            } => {
                format!("released {run} [{sequence}] at={}", at(*t))
            }
            Output::Latency {
                phase,
                ms,
                clock_skew,
            } => format!(
                "latency {ms} {}{}",
                phase.as_str(),
                if *clock_skew { " skew" } else { "" }
            ),
            Output::RunDropped { run, .. } => format!("dropped {run}"),
        });
    }
}

/// Applies `records` in order to a task under `policy`, then moves stream time to `end` ms
/// (when given, as the live wall clock or an audit's `--end-time` would), and compares every
/// output with `expected` (one line each, in order; indentation ignored).
fn check_with(policy: Policy, records: &[Rec], end: Option<Millis>, expected: &str) -> Task {
    let mut task = Task::new(policy);
    let mut lines = Vec::new();
    let mut out = Vec::new();
    for (offset, r) in records.iter().enumerate() {
        let record = RawRecord {
            side: r.side,
            partition: 0,
            offset: offset as i64,
            timestamp_ms: r.record_ms,
            key: r.key.as_deref().map(str::as_bytes),
            value: Some(r.value.as_bytes()),
        };
        let outcome = task.process(&record, &mut out);
        render(&outcome, &out, &mut lines);
        out.clear();
    }
    if let Some(end) = end {
        task.punctuate(T0 + end, &mut out);
        render(&Outcome::Tracked, &out, &mut lines);
    }
    let want: Vec<&str> = expected
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(lines, want, "\ngot:\n{}\n", lines.join("\n"));
    task
}

fn check(records: &[Rec], end: Option<Millis>, expected: &str) -> Task {
    check_with(Policy::default(), records, end, expected)
}

// ---- findings and their deadlines ---------------------------------------------------------

#[test]
fn a_clean_run_has_latencies_and_nothing_else() {
    check(
        &[
            act(0, "r", 1),
            ack(30, "r", 1),
            act(50, "r", 2),
            ack(90, "r", 2),
        ],
        Some(60_000),
        "latency 30 freeze
         latency 40 freeze",
    );
}

#[test]
fn an_ack_exactly_at_its_deadline_is_on_time() {
    check(
        &[act(0, "r", 1), ack(3000, "r", 1)],
        Some(60_000),
        "latency 3000 freeze",
    );
}

#[test]
fn ack_missing_is_detected_at_its_deadline_and_resolved_by_a_late_ack() {
    check(
        &[act(0, "r", 1), ack(3001, "r", 1)],
        None,
        "detected ack_missing w/r [1] phase=freeze blocked_by=- at=3000 key=ackwatch:gap:w:r:ack_missing:1:1772442003000:detected
         pause w/r episode=1 at=3000 key=ackwatch:signal:w:r:pause:1:1772442003000
         latency 3001 freeze
         resolved ack_missing w/r [1] at=3001 key=ackwatch:gap:w:r:ack_missing:1:1772442003000:resolved
         resume w/r episode=1 at=3001 key=ackwatch:signal:w:r:resume:1:1772442003000",
    );
}

#[test]
fn a_deadline_not_passed_at_the_end_of_a_bounded_input_is_pending() {
    let task = check(&[act(0, "r", 1)], None, "");
    let pending = task.pending();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].due, T0 + 3000);
}

#[test]
fn a_gap_is_detected_after_the_first_later_sequence_and_resolved_by_the_late_activation() {
    // The run starts 4 s after the partition's first record: its missing sequence 1 counts.
    check(
        &[
            act(0, "other", 1),
            ack(10, "other", 1),
            act(4000, "r", 2),
            ack(4010, "r", 2),
            act(7001, "r", 1).stamped(7001),
            ack(7020, "r", 1),
        ],
        None,
        "latency 10 freeze
         latency 10 freeze
         detected activation_gap w/r [1] phase=null blocked_by=- at=7000 key=ackwatch:gap:w:r:activation_gap:1:1772442007000:detected
         pause w/r episode=1 at=7000 key=ackwatch:signal:w:r:pause:1:1772442007000
         resolved activation_gap w/r [1] at=7001 key=ackwatch:gap:w:r:activation_gap:1:1772442007000:resolved
         latency 19 freeze
         resume w/r episode=1 at=7020 key=ackwatch:signal:w:r:resume:1:1772442007000",
    );
}

#[test]
fn the_leading_gap_exemption_ends_gap_timeout_after_the_partitions_first_record() {
    // A run whose first record is within gap_timeout (3000 ms) of the partition's first
    // record may have begun before the input did: its missing first sequences are exempt.
    check(
        &[
            act(0, "other", 1),
            ack(5, "other", 1),
            act(3000, "r", 2),
            ack(3010, "r", 2),
        ],
        Some(20_000),
        "latency 5 freeze
         latency 10 freeze",
    );
    // One millisecond later it is not exempt.
    check(
        &[act(0, "other", 1), ack(5, "other", 1), act(3001, "r", 2), ack(3010, "r", 2)],
        Some(20_000),
        "latency 5 freeze
         latency 9 freeze
         detected activation_gap w/r [1] phase=null blocked_by=- at=6001 key=ackwatch:gap:w:r:activation_gap:1:1772442006001:detected
         pause w/r episode=1 at=6001 key=ackwatch:signal:w:r:pause:1:1772442006001",
    );
}

#[test]
fn an_orphan_ack_is_a_finding_that_pauses_nothing() {
    check(
        &[ack(0, "r", 1), act(3500, "r", 1)],
        None,
        "detected orphan_ack w/r [1] phase=null blocked_by=- at=3000 key=ackwatch:gap:w:r:orphan_ack:1:1772442003000:detected
         latency 0 freeze skew
         resolved orphan_ack w/r [1] at=3500 key=ackwatch:gap:w:r:orphan_ack:1:1772442003000:resolved",
    );
}

#[test]
fn a_conflict_never_resolves_and_carries_the_first_activations_phase() {
    check(
        &[
            act(0, "r", 1),
            act_with(100, "r", 1, r#""phase":"unfreeze","etag":"other""#),
            ack(150, "r", 1),
        ],
        Some(10_000),
        "detected sequence_conflict w/r [1] phase=freeze blocked_by=- at=100 key=ackwatch:gap:w:r:sequence_conflict:1:1772442000100:detected
         pause w/r episode=1 at=100 key=ackwatch:signal:w:r:pause:1:1772442000100
         latency 150 freeze",
    );
}

// ---- duplicates and totals -----------------------------------------------------------------

#[test]
fn a_repeated_activation_and_a_second_gateways_ack_are_duplicates() {
    let task = check(
        &[
            act(0, "r", 1),
            act(40, "r", 1),
            ack(60, "r", 1),
            ack(90, "r", 1),
        ],
        Some(10_000),
        "duplicate
         latency 60 freeze
         duplicate",
    );
    let c = task.counters();
    assert_eq!((c.tracked, c.acks, c.duplicates), (1, 1, 2));
}

// ---- blocked ACKs --------------------------------------------------------------------------

/// The partition's first record long before the runs, so no run is exempt from gaps.
fn warm() -> Rec {
    raw(
        Side::Activation,
        -60_000,
        r#"{"specversion":"1.0","type":"policy_updated","data":{"world_id":"w"}}"#,
    )
}

#[test]
fn an_ack_missing_behind_a_gap_is_blocked_and_opens_no_episode_of_its_own() {
    // Sequence 2 never arrives; the Gateway holds 3's ACK behind it. At their common deadline
    // the ack_missing of 3 fires first (while the gap is pending), blocked, pausing nothing;
    // the gap pauses the run.
    check(
        &[warm(), act(0, "r", 1), ack(10, "r", 1), act(200, "r", 3)],
        Some(4000),
        "latency 10 freeze
         detected ack_missing w/r [3] phase=freeze blocked_by=2 at=3200 key=ackwatch:gap:w:r:ack_missing:3:1772442003200:detected
         detected activation_gap w/r [2] phase=null blocked_by=- at=3200 key=ackwatch:gap:w:r:activation_gap:2:1772442003200:detected
         pause w/r episode=1 at=3200 key=ackwatch:signal:w:r:pause:1:1772442003200",
    );
}

#[test]
fn a_blocked_ack_missing_is_released_ack_timeout_after_its_blocker_arrives() {
    let policy = Policy {
        gap_timeout_ms: 5000,
        ..Policy::default()
    };
    // ack_missing(3) at 3200 is blocked by the pending gap of 2 (due 5200), so nothing pauses
    // yet; 2 arrives at 4000 and is acknowledged, 3's ACK does not follow by 7000: released, and
    // the run pauses then.
    check_with(
        policy,
        &[warm(), act(0, "r", 1), ack(10, "r", 1), act(200, "r", 3), act(4000, "r", 2), ack(4010, "r", 2)],
        Some(8000),
        "latency 10 freeze
         detected ack_missing w/r [3] phase=freeze blocked_by=2 at=3200 key=ackwatch:gap:w:r:ack_missing:3:1772442003200:detected
         latency 10 freeze
         released w/r [3] at=7000
         pause w/r episode=1 at=7000 key=ackwatch:signal:w:r:pause:1:1772442007000",
    );
}

#[test]
fn a_blocked_ack_missing_resolved_before_its_release_never_pauses() {
    let policy = Policy {
        gap_timeout_ms: 5000,
        ..Policy::default()
    };
    check_with(
        policy,
        &[warm(), act(0, "r", 1), ack(10, "r", 1), act(200, "r", 3), act(4000, "r", 2), ack(4010, "r", 2), ack(4020, "r", 3)],
        Some(20_000),
        "latency 10 freeze
         detected ack_missing w/r [3] phase=freeze blocked_by=2 at=3200 key=ackwatch:gap:w:r:ack_missing:3:1772442003200:detected
         latency 10 freeze
         latency 3820 freeze
         resolved ack_missing w/r [3] at=4020 key=ackwatch:gap:w:r:ack_missing:3:1772442003200:resolved",
    );
}

#[test]
fn sequences_exempt_from_gaps_block_nothing() {
    // The run began before the input (exempt): 1 is not missing, so 3's ack_missing is not
    // blocked by it.
    check(
        &[act(200, "r", 3)],
        Some(4000),
        "detected ack_missing w/r [3] phase=freeze blocked_by=- at=3200 key=ackwatch:gap:w:r:ack_missing:3:1772442003200:detected
         pause w/r episode=1 at=3200 key=ackwatch:signal:w:r:pause:1:1772442003200",
    );
}

// ---- signals and episodes ------------------------------------------------------------------

#[test]
fn a_resume_after_a_late_fill_waits_for_the_filled_sequences_ack() {
    check(
        &[
            warm(),
            act(0, "r", 1),
            ack(10, "r", 1),
            act(200, "r", 3),
            ack(250, "r", 3).stamped(3300),
            act(3400, "r", 2),
            ack(3450, "r", 2),
        ],
        None,
        "latency 10 freeze
         latency 50 freeze
         detected activation_gap w/r [2] phase=null blocked_by=- at=3200 key=ackwatch:gap:w:r:activation_gap:2:1772442003200:detected
         pause w/r episode=1 at=3200 key=ackwatch:signal:w:r:pause:1:1772442003200
         resolved activation_gap w/r [2] at=3400 key=ackwatch:gap:w:r:activation_gap:2:1772442003200:resolved
         latency 50 freeze
         resume w/r episode=1 at=3450 key=ackwatch:signal:w:r:resume:1:1772442003200",
    );
}

#[test]
fn escalation_without_auto_rollback_sends_no_rollback() {
    check(
        &[act(0, "r", 1)],
        Some(40_000),
        "detected ack_missing w/r [1] phase=freeze blocked_by=- at=3000 key=ackwatch:gap:w:r:ack_missing:1:1772442003000:detected
         pause w/r episode=1 at=3000 key=ackwatch:signal:w:r:pause:1:1772442003000
         escalated w/r episode=1 at=33000",
    );
}

#[test]
fn auto_rollback_rolls_back_once_and_for_good() {
    let policy = Policy {
        auto_rollback: true,
        ..Policy::default()
    };
    check_with(
        policy,
        &[act(0, "r", 1), ack(40_000, "r", 1), act(40_100, "r", 2)],
        Some(50_000),
        "detected ack_missing w/r [1] phase=freeze blocked_by=- at=3000 key=ackwatch:gap:w:r:ack_missing:1:1772442003000:detected
         pause w/r episode=1 at=3000 key=ackwatch:signal:w:r:pause:1:1772442003000
         rollback w/r episode=1 at=33000 key=ackwatch:signal:w:r:rollback:1:1772442003000
         latency 40000 freeze
         resolved ack_missing w/r [1] at=40000 key=ackwatch:gap:w:r:ack_missing:1:1772442003000:resolved
         detected ack_missing w/r [2] phase=freeze blocked_by=- at=43100 key=ackwatch:gap:w:r:ack_missing:2:1772442043100:detected",
    );
}

#[test]
fn a_rollback_is_decided_once_by_the_findings_that_count_then() {
    let policy = Policy {
        auto_rollback: true,
        gap_timeout_ms: 5000,
        ..Policy::default()
    };
    // The gap of 2 pauses the run at 5200; 2 arrives at 6000 and is acknowledged, so only the
    // blocked ack_missing of 3 (released only at 9000) is open... until it is released: at
    // the rollback decision (35200) it counts, so the run is rolled back.
    check_with(
        policy,
        &[warm(), act(0, "r", 1), ack(10, "r", 1), act(200, "r", 3), act(6000, "r", 2), ack(6010, "r", 2)],
        Some(40_000),
        "latency 10 freeze
         detected ack_missing w/r [3] phase=freeze blocked_by=2 at=3200 key=ackwatch:gap:w:r:ack_missing:3:1772442003200:detected
         detected activation_gap w/r [2] phase=null blocked_by=- at=5200 key=ackwatch:gap:w:r:activation_gap:2:1772442005200:detected
         pause w/r episode=1 at=5200 key=ackwatch:signal:w:r:pause:1:1772442005200
         resolved activation_gap w/r [2] at=6000 key=ackwatch:gap:w:r:activation_gap:2:1772442005200:resolved
         latency 10 freeze
         released w/r [3] at=9000
         rollback w/r episode=1 at=35200 key=ackwatch:signal:w:r:rollback:1:1772442005200",
    );
    // With 3 still blocked at the decision (its blocker arrives only at 34000, released at
    // 37000), nothing counts then: no rollback, and none later in this episode.
    check_with(
        policy,
        &[warm(), act(0, "r", 1), ack(10, "r", 1), act(200, "r", 3), act(34_000, "r", 2), ack(34_010, "r", 2)],
        Some(80_000),
        "latency 10 freeze
         detected ack_missing w/r [3] phase=freeze blocked_by=2 at=3200 key=ackwatch:gap:w:r:ack_missing:3:1772442003200:detected
         detected activation_gap w/r [2] phase=null blocked_by=- at=5200 key=ackwatch:gap:w:r:activation_gap:2:1772442005200:detected
         pause w/r episode=1 at=5200 key=ackwatch:signal:w:r:pause:1:1772442005200
         resolved activation_gap w/r [2] at=34000 key=ackwatch:gap:w:r:activation_gap:2:1772442005200:resolved
         latency 10 freeze
         released w/r [3] at=37000",
    );
}

#[test]
fn one_event_shares_one_phase() {
    // Two ack_missing findings at one deadline but of different phases: two events.
    check(
        &[act(0, "r", 1), act_with(0, "r", 2, r#""phase":"unfreeze""#)],
        Some(4000),
        "detected ack_missing w/r [1] phase=freeze blocked_by=- at=3000 key=ackwatch:gap:w:r:ack_missing:1:1772442003000:detected
         pause w/r episode=1 at=3000 key=ackwatch:signal:w:r:pause:1:1772442003000
         detected ack_missing w/r [2] phase=unfreeze blocked_by=- at=3000 key=ackwatch:gap:w:r:ack_missing:2:1772442003000:detected",
    );
}

// ---- retention and keys --------------------------------------------------------------------

#[test]
fn retention_drops_a_run_and_a_recreated_run_never_reuses_its_keys() {
    let policy = Policy {
        run_retention_ms: 60_000,
        ..Policy::default()
    };
    check_with(
        policy,
        &[act(0, "r", 1), ack(4000, "r", 1), act(200_000, "r", 1), ack(204_000, "r", 1)],
        None,
        "detected ack_missing w/r [1] phase=freeze blocked_by=- at=3000 key=ackwatch:gap:w:r:ack_missing:1:1772442003000:detected
         pause w/r episode=1 at=3000 key=ackwatch:signal:w:r:pause:1:1772442003000
         latency 4000 freeze
         resolved ack_missing w/r [1] at=4000 key=ackwatch:gap:w:r:ack_missing:1:1772442003000:resolved
         resume w/r episode=1 at=4000 key=ackwatch:signal:w:r:resume:1:1772442003000
         dropped w/r
         detected ack_missing w/r [1] phase=freeze blocked_by=- at=203000 key=ackwatch:gap:w:r:ack_missing:1:1772442203000:detected
         pause w/r episode=1 at=203000 key=ackwatch:signal:w:r:pause:1:1772442203000
         latency 4000 freeze
         resolved ack_missing w/r [1] at=204000 key=ackwatch:gap:w:r:ack_missing:1:1772442203000:resolved
         resume w/r episode=1 at=204000 key=ackwatch:signal:w:r:resume:1:1772442203000",
    );
}

#[test]
fn ids_are_escaped_inside_keys() {
    check(
        &[act(0, "r:1%", 1).world("w:a%")],
        Some(4000),
        "detected ack_missing w:a%/r:1% [1] phase=freeze blocked_by=- at=3000 key=ackwatch:gap:w%3Aa%25:r%3A1%25:ack_missing:1:1772442003000:detected
         pause w:a%/r:1% episode=1 at=3000 key=ackwatch:signal:w%3Aa%25:r%3A1%25:pause:1:1772442003000",
    );
}

// ---- inputs: phases, times, sizes ----------------------------------------------------------

#[test]
fn an_activation_without_a_phase_is_tracked_as_unknown_and_any_ack_phase_is_accepted() {
    check(
        &[
            act_with(0, "r", 1, ""),
            raw(
                Side::Ack,
                30,
                r#"{"type":"ActivationAck","world_id":"w","run_id":"r","sequence":1,"phase":"unknown","ack_ts":"2026-03-02T09:00:00.030Z"}"#,
            ),
            act_with(40, "r", 2, ""),
        ],
        Some(4000),
        "latency 30 unknown
         detected ack_missing w/r [2] phase=unknown blocked_by=- at=3040 key=ackwatch:gap:w:r:ack_missing:2:1772442003040:detected
         pause w/r episode=1 at=3040 key=ackwatch:signal:w:r:pause:1:1772442003040",
    );
    // Any other phase makes a tracked activation invalid.
    check(
        &[act_with(0, "r", 1, r#""phase":"unknown""#)],
        None,
        "invalid mistyped_field",
    );
}

#[test]
fn a_whole_second_time_is_refined_by_the_cloudevents_time_or_the_record_timestamp() {
    let ce = |ts: &str, time: &str| {
        format!(
            r#"{{"specversion":"1.0","type":"activation_updated","time":"{time}","data":{{"world_id":"w","run_id":"r","sequence":1,"requires_ack":true,"phase":"freeze","ts":"{ts}"}}}}"#
        )
    };
    let ack_at = |t: &str| {
        format!(
            r#"{{"type":"ActivationAck","world_id":"w","run_id":"r","sequence":1,"ack_ts":"{t}"}}"#
        )
    };
    // ts cut to 09:00:01 beside time 09:00:01.003: the event time is 01.003.
    check(
        &[
            raw(
                Side::Activation,
                1004,
                &ce("2026-03-02T09:00:01Z", "2026-03-02T09:00:01.003+00:00"),
            ),
            raw(Side::Ack, 1030, &ack_at("2026-03-02T09:00:01.030Z")),
        ],
        None,
        "latency 27 freeze",
    );
    // No time in range: the record timestamp (01.400) is the first candidate within the second.
    check(
        &[
            raw(
                Side::Activation,
                1400,
                &ce("2026-03-02T09:00:01Z", "2026-03-02T09:00:05Z"),
            ),
            raw(Side::Ack, 1430, &ack_at("2026-03-02T09:00:01.430Z")),
        ],
        None,
        "latency 30 freeze",
    );
    // Neither in range: the whole second stands.
    check(
        &[
            raw(
                Side::Activation,
                2400,
                &ce("2026-03-02T09:00:01Z", "2026-03-02T09:00:05Z"),
            ),
            raw(Side::Ack, 2430, &ack_at("2026-03-02T09:00:01.430Z")),
        ],
        None,
        "latency 430 freeze",
    );
}

#[test]
fn an_event_time_ahead_of_its_record_is_clamped_and_counted() {
    // A producer dated 9999: clamped to its record timestamp + max_clock_lead_ms (1000), so
    // the clean runs around it keep their deadlines.
    let ahead = raw(
        Side::Activation,
        100,
        r#"{"type":"ActivationUpdated","world_id":"w","run_id":"x","sequence":1,"requires_ack":true,"ts":"9999-12-31T23:59:59Z"}"#,
    );
    let task = check(
        &[act(0, "r", 1), ahead, ack(100, "r", 1), ack(1100, "x", 1)],
        None,
        "latency 100 freeze
         latency 0 unknown",
    );
    assert_eq!(task.counters().clamped.activation, 1);
    assert_eq!(task.meta().stream_time, Some(T0 + 1100));
}

#[test]
fn records_over_the_size_bound_are_classified_by_their_envelope_type() {
    let padding = "x".repeat(200 * 1024);
    let policy_updated = format!(
        r#"{{"specversion":"1.0","id":"1","type":"policy_updated","data":{{"world_id":"w","blob":"{padding}"}}}}"#
    );
    let activation = format!(
        r#"{{"specversion":"1.0","type":"activation_updated","data":{{"world_id":"w","run_id":"r","sequence":1,"requires_ack":true,"blob":"{padding}"}}}}"#
    );
    let unreadable = format!("{{\"blob\":\"{padding}");
    let task = check(
        &[
            raw(Side::Activation, 0, &policy_updated),
            raw(Side::Activation, 1, &activation),
            raw(Side::Activation, 2, &unreadable),
        ],
        None,
        "invalid too_large
         invalid too_large",
    );
    assert_eq!(task.counters().untracked, 1);
}

#[test]
fn a_missing_range_is_raised_as_one_event_and_resolved_sequence_by_sequence() {
    // 1 arrives, then 5: 2, 3 and 4 are one missing range (one timer, one event); 3 arrives in
    // the middle (the range splits), then 2 and 4.
    // Another run's records move stream time past the gap deadline before the fills come.
    let mut records = vec![
        warm(),
        act(0, "r", 1),
        ack(10, "r", 1),
        act(100, "r", 5),
        ack(110, "r", 5),
    ];
    records.extend([act(3150, "o", 1), ack(3160, "o", 1)]);
    records.push(act(200, "r", 3).stamped(3200));
    records.extend([
        act(210, "r", 2).stamped(3300),
        act(220, "r", 4).stamped(3400),
    ]);
    check(
        &records,
        None,
        "latency 10 freeze
         latency 10 freeze
         detected activation_gap w/r [2, 3, 4] phase=null blocked_by=- at=3100 key=ackwatch:gap:w:r:activation_gap:2:1772442003100:detected
         pause w/r episode=1 at=3100 key=ackwatch:signal:w:r:pause:1:1772442003100
         latency 10 freeze
         resolved activation_gap w/r [3] at=200 key=ackwatch:gap:w:r:activation_gap:3:1772442003100:resolved
         resolved activation_gap w/r [2] at=210 key=ackwatch:gap:w:r:activation_gap:2:1772442003100:resolved
         resolved activation_gap w/r [4] at=220 key=ackwatch:gap:w:r:activation_gap:4:1772442003100:resolved",
    );
}
