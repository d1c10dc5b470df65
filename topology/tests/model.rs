//! The engine against a small, independent reference model of semantics §2 and §4.
//!
//! The model does not simulate timers: it evaluates each definition directly over the whole
//! record sequence in processing order ("raised iff stream time passed the deadline before the
//! missing thing arrived"). Generated traffic has drops, late and early ACKs, duplicates from
//! several Gateways, conflicting activations, lost activations, producer clock skew, records that
//! reach the broker late, and untracked events.

use std::collections::{BTreeMap, BTreeSet};

use ackwatch_topology::partition_group::Buffered;
use ackwatch_topology::stream_task::{Step, StreamTask};
use ackwatch_topology::{
    Action, FindingKind, Output, PerSide, Phase, Policy, RawRecord, RunKey, RunState, Side, Task,
    TaskMeta,
};
use proptest::prelude::*;

/// A tiny deterministic RNG so one `u64` seed describes a whole scenario.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }
}

#[derive(Clone, Debug)]
enum Event {
    Act {
        run: RunKey,
        seq: u64,
        etag: String,
        phase: &'static str,
    },
    Ack {
        run: RunKey,
        seq: u64,
    },
    Untracked {
        world: String,
    },
}

#[derive(Clone, Debug)]
struct Rec {
    source: Side,
    event: Event,
    /// The event time the producer meant; written whole (or, in CloudEvents, with `ts` cut to
    /// the second beside the exact `time`, as QMTL's WorldService does).
    event_ms: i64,
    record_ms: i64,
    /// CloudEvents only: `ts`/`ack_ts` cut to the whole second, the exact time in `time`.
    truncated: bool,
}

impl Rec {
    /// semantics §1 "Clocks ahead", evaluated directly: the event time the engine must use.
    fn effective_ms(&self, policy: &Policy) -> i64 {
        self.event_ms.min(self.record_ms + policy.max_clock_lead_ms)
    }

    fn payload(&self, cloud_events: bool) -> (String, String) {
        let exact = ackwatch_topology::time::format_rfc3339_ms(self.event_ms);
        let truncated = cloud_events && self.truncated;
        let ts = if truncated {
            format!("{}Z", &exact[..19])
        } else {
            exact.clone()
        };
        let time = if truncated {
            format!(r#","time":"{exact}""#)
        } else {
            String::new()
        };
        match &self.event {
            Event::Act {
                run,
                seq,
                etag,
                phase,
            } => {
                let phase = if phase.is_empty() {
                    String::new()
                } else {
                    format!(r#""phase":"{phase}","#)
                };
                let fields = format!(
                    r#""world_id":"{}","run_id":"{}","sequence":{seq},"requires_ack":true,{phase}"etag":"{etag}","ts":"{ts}""#,
                    run.world_id, run.run_id
                );
                let value = if cloud_events {
                    format!(
                        r#"{{"specversion":"1.0","type":"activation_updated"{time},"data":{{{fields}}}}}"#
                    )
                } else {
                    format!(r#"{{"type":"ActivationUpdated","version":1,{fields}}}"#)
                };
                (run.world_id.to_string(), value)
            }
            Event::Ack { run, seq } => {
                // The Gateway writes "unknown" for an activation without a phase; any phase
                // is informational.
                let fields = format!(
                    r#""world_id":"{}","run_id":"{}","sequence":{seq},"phase":"{}","ack_ts":"{ts}""#,
                    run.world_id,
                    run.run_id,
                    ["freeze", "unfreeze", "unknown", "drain"][(*seq % 4) as usize]
                );
                let value = if cloud_events {
                    format!(
                        r#"{{"specversion":"1.0","type":"activation_ack"{time},"data":{{{fields}}}}}"#
                    )
                } else {
                    format!(r#"{{"type":"ActivationAck","version":1,{fields}}}"#)
                };
                (run.world_id.to_string(), value)
            }
            Event::Untracked { world } => (
                world.clone(),
                format!(
                    r#"{{"specversion":"1.0","type":"policy_updated","data":{{"world_id":"{world}"}}}}"#
                ),
            ),
        }
    }
}

struct Scenario {
    policy: Policy,
    /// Each topic's records in offset order.
    topics: [Vec<Rec>; 2],
    cloud_events: bool,
}

fn generate(seed: u64) -> Scenario {
    let mut rng = Rng(seed);
    let policy = Policy {
        ack_timeout_ms: [500, 1000, 3000][rng.below(3) as usize],
        gap_timeout_ms: [500, 1000, 3000][rng.below(3) as usize],
        orphan_timeout_ms: [500, 1000, 3000][rng.below(3) as usize],
        rollback_after_ms: [2000, 5000, 30_000][rng.below(3) as usize],
        auto_rollback: rng.chance(50),
        sequence_start: 1,
        ..Policy::default()
    };
    let mut records = vec![];
    let base = 1_772_442_000_000i64;
    for w in 0..rng.range(1, 3) {
        let world = format!("w{w}");
        let mut run_start = base + rng.range(0, 3000);
        for r in 0..rng.range(1, 3) {
            let run = RunKey::new(&world, &format!("r{r}"));
            let n = rng.range(1, 7) as u64;
            let first = if rng.chance(15) {
                rng.range(2, 4) as u64
            } else {
                1
            };
            let step = rng.range(50, 900);
            for seq in first..first + n {
                let t = run_start + (seq - first) as i64 * step;
                let phase = if rng.chance(10) {
                    "" // an activation without a phase is tracked all the same
                } else if seq < first + n / 2 {
                    "freeze"
                } else {
                    "unfreeze"
                };
                let etag = format!("act:{world}:{seq}");
                let lost_activation = rng.chance(8);
                // When the activation reaches the broker late, the Gateway mostly applies (and
                // ACKs) it only then.
                let mut applied = t;
                if !lost_activation {
                    let first = act(&run, seq, &etag, phase, t, &mut rng);
                    if first.record_ms - t >= 500 && rng.chance(70) {
                        applied = first.record_ms;
                    }
                    records.push(first);
                    if rng.chance(5) {
                        records.push(act(
                            &run,
                            seq,
                            &etag,
                            phase,
                            t + rng.range(0, 300),
                            &mut rng,
                        ));
                    }
                    if rng.chance(4) {
                        records.push(act(
                            &run,
                            seq,
                            &format!("{etag}:other"),
                            phase,
                            t + rng.range(0, 300),
                            &mut rng,
                        ));
                    }
                }
                if rng.chance(10) {
                    continue; // dropped ACK
                }
                let latency = match rng.below(100) {
                    0..=69 => rng.range(5, 150),
                    70..=84 => rng.range(policy.ack_timeout_ms - 200, policy.ack_timeout_ms + 200),
                    85..=94 => rng.range(2000, 7000),
                    _ => -rng.range(1, 400), // Gateway clock behind WorldService's
                };
                let acked = if applied == t {
                    t + latency
                } else {
                    applied + rng.range(5, 60)
                };
                records.push(ack(&run, seq, acked, &mut rng));
                if rng.chance(10) {
                    records.push(ack(&run, seq, acked + rng.range(0, 500), &mut rng));
                    // a second Gateway
                }
            }
            run_start += rng.range(0, 8000);
        }
        if rng.chance(50) {
            let t = base + rng.range(0, 10_000);
            records.push(Rec {
                source: Side::Activation,
                event: Event::Untracked {
                    world: world.clone(),
                },
                event_ms: t,
                record_ms: t,
                truncated: false,
            });
        }
    }
    // Each topic in the order the broker appended: by record timestamp, with a few neighbours
    // swapped (several producers, CreateTime not monotone).
    let mut topics: [Vec<Rec>; 2] = [vec![], vec![]];
    for rec in records {
        let side = if rec.source == Side::Activation { 0 } else { 1 };
        topics[side].push(rec);
    }
    for topic in &mut topics {
        topic.sort_by_key(|r| r.record_ms);
        for i in 1..topic.len() {
            if rng.chance(5) {
                topic.swap(i - 1, i);
            }
        }
    }
    Scenario {
        policy,
        topics,
        cloud_events: rng.chance(50),
    }
}

/// The delay between an event and its record's timestamp: mostly small, sometimes late, and
/// now and then negative by seconds to minutes (the producer's clock runs ahead).
fn record_delay(rng: &mut Rng) -> i64 {
    match rng.below(100) {
        0..=4 => rng.range(500, 5000),
        5..=7 => -rng.range(1500, 600_000),
        _ => rng.range(0, 30),
    }
}

fn act(run: &RunKey, seq: u64, etag: &str, phase: &'static str, t: i64, rng: &mut Rng) -> Rec {
    Rec {
        source: Side::Activation,
        event: Event::Act {
            run: run.clone(),
            seq,
            etag: etag.into(),
            phase,
        },
        event_ms: t,
        record_ms: t + record_delay(rng),
        truncated: rng.chance(50),
    }
}

fn ack(run: &RunKey, seq: u64, t: i64, rng: &mut Rng) -> Rec {
    Rec {
        source: Side::Ack,
        event: Event::Ack {
            run: run.clone(),
            seq,
        },
        event_ms: t,
        record_ms: t + record_delay(rng),
        truncated: rng.chance(50),
    }
}

/// Processing order by the documented rule, written independently of `PartitionGroup`.
fn merge(topics: &[Vec<Rec>; 2]) -> Vec<Rec> {
    let (mut i, mut j) = (0, 0);
    let mut out = vec![];
    while i < topics[0].len() || j < topics[1].len() {
        let take_activation = match (topics[0].get(i), topics[1].get(j)) {
            (Some(a), Some(k)) => a.record_ms <= k.record_ms,
            (Some(_), None) => true,
            _ => false,
        };
        if take_activation {
            out.push(topics[0][i].clone());
            i += 1;
        } else {
            out.push(topics[1][j].clone());
            j += 1;
        }
    }
    out
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Clone)]
struct Finding {
    kind: FindingKind,
    run: RunKey,
    seq: u64,
    detected_at: i64,
    resolved_at: Option<i64>,
    /// `ack_missing` and `sequence_conflict`: the first activation's phase; else none.
    phase: Option<Phase>,
    /// A blocked `ack_missing`: the lowest missing earlier sequence when it was raised.
    blocked_by: Option<u64>,
}

/// When a blocked `ack_missing` became an ordinary finding (its blocker arrived and its ACK
/// did not follow within `ack_timeout_ms`): (run, sequence) -> release time.
type Releases = BTreeMap<(RunKey, u64), i64>;

#[derive(Debug, Default, PartialEq)]
struct Expected {
    findings: BTreeSet<Finding>,
    pending: BTreeSet<(FindingKind, RunKey, u64, i64)>,
    /// (tracked, acked, max latency) per run.
    runs: BTreeMap<RunKey, (u64, u64, Option<u64>)>,
    releases: Releases,
}

fn phase_of(text: &str) -> Phase {
    match text {
        "freeze" => Phase::Freeze,
        "unfreeze" => Phase::Unfreeze,
        _ => Phase::Unknown,
    }
}

/// semantics §2 evaluated directly.
fn model(policy: &Policy, order: &[Rec]) -> Expected {
    if order.is_empty() {
        return Expected::default();
    }
    let eff: Vec<i64> = order.iter().map(|r| r.effective_ms(policy)).collect();
    // Stream time after position p: the largest event time of a tracked activation or ack so far.
    let mut max_e = vec![i64::MIN; order.len()];
    let mut m = i64::MIN;
    for (p, r) in order.iter().enumerate() {
        if !matches!(r.event, Event::Untracked { .. }) {
            m = m.max(eff[p]);
        }
        max_e[p] = m;
    }
    // Where a deadline set by the record at `after` fires, as the number of records applied
    // by then: right after that record if stream time already passed it, else just before the
    // first later record whose event time passes it.
    let fire_point = |after: usize, due: i64| -> Option<usize> {
        if max_e[after] > due {
            return Some(after + 1);
        }
        max_e[after + 1..]
            .iter()
            .position(|&st| st > due)
            .map(|i| after + 1 + i)
    };
    let last = order.len() - 1;
    let first_acts: BTreeMap<(RunKey, u64), usize> =
        firsts(order, |e| matches!(e, Event::Act { .. }));
    let first_acks: BTreeMap<(RunKey, u64), usize> =
        firsts(order, |e| matches!(e, Event::Ack { .. }));
    let phase_at = |p: usize| match &order[p].event {
        Event::Act { phase, .. } => phase_of(phase),
        _ => unreachable!("an activation"),
    };
    let mut exp = Expected::default();
    let mut judge = |kind, run: &RunKey, seq, due: i64, until: Option<usize>, phase, blocked_by| {
        let end = until.unwrap_or(last);
        if max_e[end] > due {
            let resolved_at = until.map(|p| eff[p]);
            exp.findings.insert(Finding {
                kind,
                run: run.clone(),
                seq,
                detected_at: due,
                resolved_at,
                phase,
                blocked_by,
            });
        } else if until.is_none() {
            exp.pending.insert((kind, run.clone(), seq, due));
        }
    };
    // Gaps first (blockers come from them), per run: the lowest sequence tracked as missing.
    let task_first = order[0].record_ms;
    let runs: BTreeSet<RunKey> = first_acts
        .keys()
        .chain(first_acks.keys())
        .map(|(r, _)| r.clone())
        .collect();
    let mut lowest_tracked: BTreeMap<RunKey, u64> = BTreeMap::new();
    for run in &runs {
        let acts: Vec<(usize, u64)> = order
            .iter()
            .enumerate()
            .filter_map(|(p, r)| match &r.event {
                Event::Act { run: rr, seq, .. } if rr == run => Some((p, *seq)),
                _ => None,
            })
            .collect();
        let Some(&(_, first_seq)) = acts.first() else {
            continue;
        };
        let run_first = order.iter().find(|r| matches!(&r.event, Event::Act { run: rr, .. } | Event::Ack { run: rr, .. } if rr == run)).unwrap().record_ms;
        let exempt = run_first <= task_first + policy.gap_timeout_ms;
        let lower = if exempt {
            first_seq
        } else {
            policy.sequence_start
        };
        lowest_tracked.insert(run.clone(), lower);
        let max_seq = acts.iter().map(|a| a.1).max().unwrap();
        for s in lower..max_seq {
            let Some(&(j, _)) = acts.iter().find(|(_, q)| *q > s) else {
                continue;
            };
            let own = first_acts.get(&(run.clone(), s)).copied();
            if own.is_some_and(|p| p < j) {
                continue;
            }
            judge(
                FindingKind::ActivationGap,
                run,
                s,
                eff[j] + policy.gap_timeout_ms,
                own,
                None,
                None,
            );
        }
    }
    for ((run, seq), &pa) in &first_acts {
        let pk = first_acks.get(&(run.clone(), *seq)).copied();
        if pk.is_some_and(|pk| pk < pa) {
            continue;
        }
        let due = eff[pa] + policy.ack_timeout_ms;
        // Blocked: when it fires, a lower sequence (one tracked as missing) has not arrived.
        let fired = fire_point(pa, due).filter(|&f| pk.is_none_or(|pk| f <= pk));
        let lower = lowest_tracked.get(run).copied().unwrap_or(u64::MAX);
        let blocked_by = fired.and_then(|f| {
            (lower..*seq).find(|m| {
                first_acts
                    .get(&(run.clone(), *m))
                    .is_none_or(|&arrived| arrived >= f)
            })
        });
        // Released: its blocker arrived while it was open, and `ack_timeout_ms` after that
        // arrival passed before its ACK.
        if let (Some(f), Some(m)) = (fired, blocked_by) {
            if let Some(&q) = first_acts.get(&(run.clone(), m)) {
                let release_due = eff[q] + policy.ack_timeout_ms;
                let open_at_arrival = pk.is_none_or(|pk| pk > q) && q >= f;
                let released_at = fire_point(q, release_due);
                if open_at_arrival && released_at.is_some_and(|r| pk.is_none_or(|pk| r <= pk)) {
                    exp.releases.insert((run.clone(), *seq), release_due);
                }
            }
        }
        judge(
            FindingKind::AckMissing,
            run,
            *seq,
            due,
            pk,
            Some(phase_at(pa)),
            blocked_by,
        );
    }
    for ((run, seq), &pk) in &first_acks {
        let pa = first_acts.get(&(run.clone(), *seq)).copied();
        if pa.is_none_or(|pa| pa > pk) {
            judge(
                FindingKind::OrphanAck,
                run,
                *seq,
                eff[pk] + policy.orphan_timeout_ms,
                pa,
                None,
                None,
            );
        }
    }
    // Conflicts: a later activation differing from the first in etag or phase.
    for ((run, seq), &pa) in &first_acts {
        let Event::Act {
            etag: e0,
            phase: p0,
            ..
        } = &order[pa].event
        else {
            unreachable!()
        };
        if let Some(p) = (pa + 1..order.len()).find(|&p| {
            matches!(&order[p].event, Event::Act { run: rr, seq: q, etag, phase } if rr == run && q == seq && (etag != e0 || phase != p0))
        }) {
            exp.findings.insert(Finding {
                kind: FindingKind::SequenceConflict,
                run: run.clone(),
                seq: *seq,
                detected_at: eff[p],
                resolved_at: None,
                phase: Some(phase_of(p0)),
                blocked_by: None,
            });
        }
    }
    // Runs: tracked, acked, max latency.
    for run in &runs {
        let mut tracked = 0;
        let mut latencies = vec![];
        for ((r, seq), &pa) in &first_acts {
            if r != run {
                continue;
            }
            tracked += 1;
            if let Some(&pk) = first_acks.get(&(r.clone(), *seq)) {
                latencies.push((eff[pk] - eff[pa]).max(0) as u64);
            }
        }
        exp.runs.insert(
            run.clone(),
            (
                tracked,
                latencies.len() as u64,
                latencies.iter().copied().max(),
            ),
        );
    }
    exp
}

fn firsts(order: &[Rec], want: impl Fn(&Event) -> bool) -> BTreeMap<(RunKey, u64), usize> {
    let mut map = BTreeMap::new();
    for (p, r) in order.iter().enumerate() {
        if want(&r.event) {
            if let Event::Act { run, seq, .. } | Event::Ack { run, seq } = &r.event {
                map.entry((run.clone(), *seq)).or_insert(p);
            }
        }
    }
    map
}

/// Runs the engine through a `StreamTask` (its partition group and the step the runtime and
/// the audit take), delivering records in the given interleaving.
fn run_engine(s: &Scenario, delivery: &[Side]) -> (Task, Vec<Output>) {
    let buffered = |side: Side, i: usize, r: &Rec| {
        let (key, value) = r.payload(s.cloud_events);
        let record = Buffered {
            offset: i as i64,
            timestamp_ms: Some(r.record_ms),
            key: Some(key.into_bytes().into()),
            value: Some(value.into_bytes().into()),
        };
        (side, record)
    };
    let mut records: PerSide<std::collections::VecDeque<(Side, Buffered)>> =
        PerSide::from_fn(|side| {
            s.topics[side_index(side)]
                .iter()
                .enumerate()
                .map(|(i, r)| buffered(side, i, r))
                .collect()
        });
    let mut task = StreamTask::bounded(0, s.policy);
    let mut outputs = vec![];
    let drain = |task: &mut StreamTask, ended: bool, outputs: &mut Vec<Output>| loop {
        match task.step(0, |_| ended, None, outputs) {
            Step::Processed { .. } => {}
            Step::Wait | Step::Empty => break,
            Step::NeedsRun(_) => unreachable!("nothing is evicted"),
        }
    };
    for &side in delivery {
        if let Some((side, record)) = records[side].pop_front() {
            task.push(side, record);
            drain(&mut task, false, &mut outputs);
        }
    }
    for side in Side::BOTH {
        for (side, record) in records[side].drain(..) {
            task.push(side, record);
        }
    }
    drain(&mut task, true, &mut outputs);
    (task.engine, outputs)
}

fn side_index(side: Side) -> usize {
    match side {
        Side::Activation => 0,
        Side::Ack => 1,
    }
}

fn actual(task: &Task, outputs: &[Output]) -> Expected {
    type Facts = (i64, Option<i64>, Option<Phase>, Option<u64>);
    let mut got = Expected::default();
    let mut findings: BTreeMap<(FindingKind, RunKey, u64), Facts> = BTreeMap::new();
    for o in outputs {
        match o {
            Output::Detected(d) => {
                for &seq in &d.sequences {
                    let run = RunKey::new(&d.world_id, &d.run_id);
                    let facts = (d.detected_at, None, d.phase, d.blocked_by);
                    assert!(
                        findings.insert((d.kind, run, seq), facts).is_none(),
                        "raised twice: {d:?}"
                    );
                }
            }
            Output::Resolved(r) => {
                let run = RunKey::new(&r.world_id, &r.run_id);
                let f = findings
                    .get_mut(&(r.kind, run, r.sequences[0]))
                    .expect("resolved before detected");
                assert_eq!((f.2, f.3), (r.phase, r.blocked_by), "resolution: {r:?}");
                assert!(
                    f.1.replace(r.resolved_at).is_none(),
                    "resolved twice: {r:?}"
                );
            }
            Output::Released { run, sequence, at } => {
                assert!(
                    got.releases.insert((run.clone(), *sequence), *at).is_none(),
                    "released twice: {o:?}"
                );
            }
            _ => {}
        }
    }
    got.findings = findings
        .into_iter()
        .map(|((kind, run, seq), (d, r, phase, blocked_by))| Finding {
            kind,
            run,
            seq,
            detected_at: d,
            resolved_at: r,
            phase,
            blocked_by,
        })
        .collect();
    got.pending = task
        .pending()
        .into_iter()
        .map(|p| (p.kind, p.run, p.sequence, p.due))
        .collect();
    for (run, state) in task.runs() {
        let s = state.summary();
        got.runs.insert(
            run.clone(),
            (s.tracked, s.acked, s.latencies_ms.last().copied()),
        );
    }
    got
}

/// Signal invariants of semantics §3 against the model's findings. A finding counts towards an
/// episode from its detection (a blocked `ack_missing`: from its release, if ever) until its
/// resolution; `orphan_ack` never counts.
fn check_signals(policy: &Policy, order: &[Rec], expected: &Expected, outputs: &[Output]) {
    let mut by_run: BTreeMap<RunKey, Vec<(Action, u32, i64)>> = BTreeMap::new();
    for o in outputs {
        if let Output::Signal(s) = o {
            by_run
                .entry(RunKey::new(&s.world_id, &s.run_id))
                .or_default()
                .push((s.action, s.episode, s.at));
        }
    }
    // When each counting finding starts counting.
    let counts_from = |f: &Finding| -> Option<i64> {
        if !f.kind.pauses() {
            return None;
        }
        match f.blocked_by {
            None => Some(f.detected_at),
            Some(_) => expected.releases.get(&(f.run.clone(), f.seq)).copied(),
        }
    };
    let runs: BTreeSet<RunKey> = expected
        .findings
        .iter()
        .map(|f| f.run.clone())
        .chain(by_run.keys().cloned())
        .collect();
    for run in runs {
        let signals = by_run.get(&run).cloned().unwrap_or_default();
        let findings: Vec<&Finding> = expected.findings.iter().filter(|f| f.run == run).collect();
        let counting: Vec<(&Finding, i64)> = findings
            .iter()
            .filter_map(|f| counts_from(f).map(|from| (*f, from)))
            .collect();
        assert_eq!(
            counting.is_empty(),
            signals.is_empty(),
            "{run}: signals {signals:?} vs findings {findings:?}"
        );
        // A resume happens at the record that made it allowed: one that resolved a finding, or
        // the first ACK of a late-filled sequence (its gap resolved).
        let filled_acks: Vec<i64> = findings
            .iter()
            .filter(|f| f.kind == FindingKind::ActivationGap && f.resolved_at.is_some())
            .filter_map(|f| {
                order.iter().find_map(|r| match &r.event {
                    Event::Ack { run: rr, seq } if *rr == run && *seq == f.seq => {
                        Some(r.effective_ms(policy))
                    }
                    _ => None,
                })
            })
            .collect();
        let mut episode = 0;
        let mut open_episode = false;
        let mut pause_at = 0;
        for &(action, ep, at) in &signals {
            match action {
                Action::Pause => {
                    assert!(!open_episode, "{run}: pause inside an episode");
                    episode += 1;
                    assert_eq!(ep, episode, "{run}: episodes count up");
                    assert!(
                        counting.iter().any(|(_, from)| *from == at),
                        "{run}: pause at {at} is no counting finding's start"
                    );
                    open_episode = true;
                    pause_at = at;
                }
                Action::Resume => {
                    assert!(
                        open_episode && ep == episode,
                        "{run}: resume outside its episode"
                    );
                    assert!(
                        findings.iter().any(|f| f.resolved_at == Some(at))
                            || filled_acks.contains(&at),
                        "{run}: resume at {at} resolved nothing and acknowledged no late fill"
                    );
                    open_episode = false;
                }
                Action::Rollback => {
                    assert!(
                        policy.auto_rollback,
                        "{run}: rollback without auto_rollback"
                    );
                    assert!(
                        open_episode && ep == episode,
                        "{run}: rollback outside its episode"
                    );
                    assert_eq!(
                        at,
                        pause_at + policy.rollback_after_ms,
                        "{run}: rollback time"
                    );
                    // (Resolutions are by event time, which need not follow processing order,
                    // so only the start of counting is compared.)
                    assert!(
                        counting.iter().any(|(_, from)| *from <= at),
                        "{run}: rollback at {at} with no finding counting by then"
                    );
                    assert_eq!(
                        signals.last(),
                        Some(&(action, ep, at)),
                        "{run}: a rollback is final"
                    );
                    open_episode = false;
                }
            }
        }
        let all_resolved = findings.iter().all(|f| f.resolved_at.is_some());
        let rolled_back = signals.iter().any(|s| s.0 == Action::Rollback);
        let late_fill_unacked = expected
            .pending
            .iter()
            .any(|(kind, r, _, _)| *kind == FindingKind::AckMissing && *r == run);
        // An episode still open at the end has something unresolved (or waits for the ACK of
        // a late-filled sequence); a counting finding still open keeps it open.
        if open_episode {
            assert!(
                !all_resolved || late_fill_unacked,
                "{run}: paused at the end with every finding resolved: {findings:?} {signals:?}"
            );
        }
        if counting.iter().any(|(f, _)| f.resolved_at.is_none()) && !rolled_back {
            assert!(
                open_episode,
                "{run}: resumed with a counting finding open: {findings:?} {signals:?}"
            );
        }
    }
}

fn delivery_order(seed: u64, s: &Scenario) -> Vec<Side> {
    let mut rng = Rng(seed);
    let mut order = vec![];
    let (mut a, mut k) = (s.topics[0].len(), s.topics[1].len());
    while a + k > 0 {
        if k == 0 || (a > 0 && rng.chance(50)) {
            order.push(Side::Activation);
            a -= 1;
        } else {
            order.push(Side::Ack);
            k -= 1;
        }
    }
    order
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]

    #[test]
    fn engine_agrees_with_the_reference_model(seed in any::<u64>()) {
        let s = generate(seed);
        let order = merge(&s.topics);
        let expected = model(&s.policy, &order);
        let (task, outputs) = run_engine(&s, &delivery_order(seed, &s));
        let got = actual(&task, &outputs);
        prop_assert_eq!(&got.findings, &expected.findings, "seed {}", seed);
        prop_assert_eq!(&got.pending, &expected.pending, "seed {}", seed);
        prop_assert_eq!(&got.runs, &expected.runs, "seed {}", seed);
        prop_assert_eq!(&got.releases, &expected.releases, "seed {}", seed);
        check_signals(&s.policy, &order, &expected, &outputs);
    }

    /// Only timestamps decide: any interleaving of the two topics' deliveries gives the same outputs.
    #[test]
    fn outputs_do_not_depend_on_delivery_interleaving(seed in any::<u64>(), other in any::<u64>()) {
        let s = generate(seed);
        let (_, first) = run_engine(&s, &delivery_order(seed, &s));
        let (_, second) = run_engine(&s, &delivery_order(other, &s));
        let all_activations_first: Vec<Side> = s.topics[0].iter().map(|_| Side::Activation).chain(s.topics[1].iter().map(|_| Side::Ack)).collect();
        let (_, third) = run_engine(&s, &all_activations_first);
        prop_assert_eq!(&first, &second);
        prop_assert_eq!(&first, &third);
    }

    /// Stopping anywhere, storing the state and restoring it into a new task continues exactly
    /// as the uninterrupted task does: same outputs, same final state.
    #[test]
    fn restore_continues_exactly(seed in any::<u64>(), cut_permille in 0u64..1000) {
        let s = generate(seed);
        let order = merge(&s.topics);
        let cut = (order.len() as u64 * cut_permille / 1000) as usize;
        let raw: Vec<(String, String, Rec)> = order.iter().map(|r| { let (k, v) = r.payload(s.cloud_events); (k, v, r.clone()) }).collect();
        let feed = |task: &mut Task, items: &[(String, String, Rec)], out: &mut Vec<Output>| {
            for (k, v, r) in items {
                task.process(&RawRecord { side: r.source, partition: 0, offset: 0, timestamp_ms: Some(r.record_ms), key: Some(k.as_bytes()), value: Some(v.as_bytes()) }, out);
            }
        };
        let mut whole = Task::new(s.policy);
        let mut whole_out = vec![];
        feed(&mut whole, &raw[..cut], &mut whole_out);
        let stored: Vec<(RunKey, String)> = whole.runs().map(|(k, v)| (k.clone(), serde_json::to_string(v).unwrap())).collect();
        let meta: TaskMeta = serde_json::from_str(&serde_json::to_string(&whole.meta()).unwrap()).unwrap();
        whole_out.clear();
        feed(&mut whole, &raw[cut..], &mut whole_out);

        let mut restored = Task::new(s.policy);
        restored.restore_meta(meta);
        for (k, v) in stored {
            restored.restore_run(k, serde_json::from_str::<RunState>(&v).unwrap());
        }
        let mut restored_out = vec![];
        feed(&mut restored, &raw[cut..], &mut restored_out);
        prop_assert_eq!(&restored_out, &whole_out);
        let mut a: Vec<_> = whole.runs().map(|(k, v)| (k.clone(), v.clone())).collect();
        let mut b: Vec<_> = restored.runs().map(|(k, v)| (k.clone(), v.clone())).collect();
        a.sort_by(|x, y| x.0.cmp(&y.0));
        b.sort_by(|x, y| x.0.cmp(&y.0));
        prop_assert_eq!(a, b);
        prop_assert_eq!(whole.pending(), restored.pending());
    }
}

/// Evicting settled runs after commits (their state kept only in a store, here a map of
/// serialized states) and loading them back on `NeedsRun` changes no output and no state.
/// Returns how many loads and drops of evicted runs happened, so the test can show it exercised both.
fn check_eviction(seed: u64, commit_every: usize, pass: EvictionPass) -> (usize, usize) {
    let mut s = generate(seed);
    // Short retention, so runs are also dropped (while resident and while evicted).
    s.policy.run_retention_ms = s.policy.rollback_after_ms.max(s.policy.ack_timeout_ms) + 1000;
    let order = merge(&s.topics);
    let raw: Vec<(String, String, Rec)> = order
        .iter()
        .map(|r| {
            let (k, v) = r.payload(s.cloud_events);
            (k, v, r.clone())
        })
        .collect();
    let record = |(k, v, r): &(String, String, Rec)| (r.source, r.record_ms, k.clone(), v.clone());

    let mut plain = Task::new(s.policy);
    let mut plain_out = vec![];
    for item in &raw {
        let (source, ts, k, v) = record(item);
        plain.process(
            &RawRecord {
                side: source,
                partition: 0,
                offset: 0,
                timestamp_ms: Some(ts),
                key: Some(k.as_bytes()),
                value: Some(v.as_bytes()),
            },
            &mut plain_out,
        );
    }
    // The task's count of sequences held (what `TASK_SEQUENCES_MAX` caps) is their sum.
    let plain_sequences = plain.sequence_count();
    let held: usize = plain.runs().map(|(_, r)| r.sequences.len()).sum();
    assert_eq!(plain_sequences, held as u64, "seed {seed}");
    // A far punctuation at the end, so retention drops happen.
    plain.punctuate(2_000_000_000_000, &mut plain_out);

    let mut task = Task::new(s.policy);
    let mut store: BTreeMap<RunKey, String> = BTreeMap::new();
    let mut out = vec![];
    let mut loads = 0;
    let commit = |task: &mut Task, store: &mut BTreeMap<RunKey, String>| {
        let (changes, _) = task.take_changes();
        let mut keys = vec![];
        let mut settled = vec![];
        for (key, state) in changes {
            match state {
                Some(state) => {
                    store.insert(key.clone(), serde_json::to_string(state).unwrap());
                    if state.is_settled() {
                        settled.push(key.clone());
                    }
                }
                None => {
                    store.remove(&key);
                }
            }
            keys.push(key);
        }
        match pass {
            EvictionPass::EveryCommit => {
                task.evict_settled(keys);
            }
            // As the live runtime does it: the settled runs join the cache, the oldest
            // batches leave past its budget unless changed since.
            EvictionPass::Cached(budget) => {
                task.evict_settled_beyond(settled, budget);
            }
        }
    };
    for (i, item) in raw.iter().enumerate() {
        let (source, ts, k, v) = record(item);
        let rec = RawRecord {
            side: source,
            partition: 0,
            offset: 0,
            timestamp_ms: Some(ts),
            key: Some(k.as_bytes()),
            value: Some(v.as_bytes()),
        };
        if let ackwatch_topology::Outcome::NeedsRun(key) = task.process(&rec, &mut out) {
            match store.get(&key) {
                Some(json) => {
                    task.restore_run(key, serde_json::from_str::<RunState>(json).unwrap())
                }
                None => task.run_not_stored(key),
            }
            loads += 1;
            let again = task.process(&rec, &mut out);
            assert!(!matches!(again, ackwatch_topology::Outcome::NeedsRun(_)));
        }
        if i % commit_every == 0 {
            commit(&mut task, &mut store);
        }
    }
    commit(&mut task, &mut store);
    commit(&mut task, &mut store);
    assert_eq!(
        task.sequence_count(),
        plain_sequences,
        "seed {seed}: evicted runs' sequences still count"
    );
    task.punctuate(2_000_000_000_000, &mut out);
    assert_eq!(task.sequence_count(), plain.sequence_count(), "seed {seed}");
    // Dropped-run summaries are absent for runs dropped while evicted; all else is equal.
    let evicted_drops = out
        .iter()
        .filter(|o| matches!(o, Output::RunDropped { summary: None, .. }))
        .count();
    let strip = |o: &Output| match o {
        Output::RunDropped { run, .. } => Output::RunDropped {
            run: run.clone(),
            summary: None,
        },
        other => other.clone(),
    };
    let a: Vec<Output> = plain_out.iter().map(strip).collect();
    let b: Vec<Output> = out.iter().map(strip).collect();
    assert_eq!(a, b, "seed {seed}, loads {loads}");
    assert_eq!(plain.pending(), task.pending());
    assert_eq!(plain.run_count(), task.run_count());
    assert_eq!(plain.counters(), task.counters());
    (loads, evicted_drops)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]

    #[test]
    fn eviction_changes_nothing(seed in any::<u64>(), commit_every in 1usize..12) {
        for pass in EvictionPass::ALL {
            check_eviction(seed, commit_every, pass);
        }
    }
}

/// When the runs of a commit leave memory.
#[derive(Clone, Copy, Debug)]
enum EvictionPass {
    /// `evict_settled` of each commit's runs.
    EveryCommit,
    /// `evict_settled_beyond` with this budget in bytes: settled runs cached, the least
    /// recently committed leaving first (0: all at their commit; a few runs' worth).
    Cached(usize),
}

impl EvictionPass {
    const ALL: [EvictionPass; 3] = [
        EvictionPass::EveryCommit,
        EvictionPass::Cached(0),
        EvictionPass::Cached(800),
    ];
}

#[test]
fn eviction_property_exercises_loads_and_evicted_drops() {
    for pass in EvictionPass::ALL {
        let (mut loads, mut drops) = (0, 0);
        for seed in 0..300 {
            let (l, d) = check_eviction(seed, 1 + (seed as usize % 5), pass);
            loads += l;
            drops += d;
        }
        assert!(
            loads > 50 && drops > 50,
            "{pass:?}: loads {loads}, drops of evicted runs {drops}"
        );
    }
}

/// The generated scenarios reach every rule the model checks: blocked findings and their
/// release, phase-less activations, clamped clocks, truncated times, and resumes that waited
/// for a late-filled sequence's ACK (otherwise the properties above could pass vacuously).
#[test]
fn scenarios_exercise_every_rule() {
    let (mut blocked, mut released, mut unknown_phase, mut clamped, mut waited) = (0, 0, 0, 0, 0);
    for seed in 0..400u64 {
        let s = generate(seed);
        let order = merge(&s.topics);
        let expected = model(&s.policy, &order);
        blocked += expected
            .findings
            .iter()
            .filter(|f| f.blocked_by.is_some())
            .count();
        released += expected.releases.len();
        unknown_phase += expected
            .findings
            .iter()
            .filter(|f| f.phase == Some(Phase::Unknown))
            .count();
        clamped += order
            .iter()
            .filter(|r| r.effective_ms(&s.policy) < r.event_ms)
            .count();
        let (_, outputs) = run_engine(&s, &delivery_order(seed, &s));
        let resolved: BTreeSet<i64> = expected
            .findings
            .iter()
            .filter_map(|f| f.resolved_at)
            .collect();
        waited += outputs
            .iter()
            .filter(|o| matches!(o, Output::Signal(sig) if sig.action == Action::Resume && !resolved.contains(&sig.at)))
            .count();
    }
    assert!(
        blocked > 0 && released > 0 && unknown_phase > 0 && clamped > 0 && waited > 0,
        "blocked {blocked}, released {released}, unknown phase {unknown_phase}, clamped {clamped}, waited {waited}"
    );
    eprintln!("blocked {blocked}, released {released}, unknown phase {unknown_phase}, clamped {clamped}, waited {waited}");
}
