//! The upstream producers ackwatch watches, simulated, with the ground truth of what they did
//! wrong: the traffic of `ackwatch loadgen` and `ackwatch demo`.
//!
//! - **WorldService** runs 2-phase apply runs per world, back to back: a freeze event per
//!   strategy/side, then an unfreeze event per strategy/side; sequences from 1 per run,
//!   `requires_ack=true`, CloudEvents envelopes as in `tests/fixtures/wire/` (record timestamp
//!   3 ms after the event time). Between runs it publishes untracked upserts and policy events.
//! - **Gateways** consume each world's activations in order and ACK them after a latency. A
//!   Gateway that receives a later sequence while an earlier one is missing buffers it, waits its
//!   own gap timeout, then skips the missing one (its real behaviour). Each Gateway's clock is
//!   off by a fixed skew, which moves its `ack_ts`.
//! - **Faults**, per sequence at the profile's rates: dropped ACK, late ACK, lost activation,
//!   duplicate (redelivered) activation or ACK, an extra ACK from a second Gateway, a conflicting
//!   activation for the same sequence; poison records between runs.
//!
//! **Ground truth.** Every fault is injected with a margin of at least [`MARGIN_MS`] from the
//! timeout that decides it, so which (kind, run, sequence) is a finding, its `detected_at` and
//! its `resolved_at` follow from the injected faults alone. The signals depend on the order in
//! which detections and resolutions happen, and with Gateway clock skew that order is not the
//! event-time order: a [`Referee`] applies SPEC §4's definitions to the records as they leave
//! the simulation (stream time per partition = the largest event time in record-timestamp
//! order; a deadline fires when stream time passes it) and SPEC §3's episodes in that order.
//! It is a second, deliberately naive reading of the SPEC, written without the engine's code.
//!
//! Generation is incremental (a discrete-event simulation over worlds), so memory is bounded by
//! the records in flight, not by the duration; seeded, so a run is reproducible.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use ackwatch_topology::time::format_rfc3339_ms;
use ackwatch_topology::{FindingKind, Millis, Policy};
use serde::{Deserialize, Serialize};

use crate::kcat::KcatRecord;

/// Every injected fault keeps at least this distance from the timeout that decides it, and
/// every on-time ACK arrives at least this long before its deadline.
pub const MARGIN_MS: Millis = 500;
/// A Gateway's own gap timeout: how long it waits for a missing sequence before skipping it.
pub const GATEWAY_GAP_TIMEOUT_MS: Millis = 800;
/// Runs that start within this long of the traffic's start never lose their first sequence:
/// SPEC §2 exempts a leading gap of a run that may have begun before the input did.
const LEADING_GAP_QUIET_MS: Millis = 10_000;
/// Worlds a simulation may run (ids and per-world state). Cost: one small state per world.
pub const SIM_WORLDS_MAX: usize = 1_000_000;

/// Fault rates in sequences per 10,000 (one fault at most per sequence), and per-run extras.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Faults {
    pub dropped_ack: u32,
    pub late_ack: u32,
    pub lost_activation: u32,
    pub duplicate_activation: u32,
    pub duplicate_ack: u32,
    pub extra_gateway_ack: u32,
    pub conflict: u32,
    /// Poison records (not JSON, mistyped sequence, key that is not the world) per 10,000 runs.
    pub poison_per_run: u32,
    /// Largest clock skew of a Gateway against WorldService, either way, in ms.
    pub max_skew_ms: Millis,
}

impl Faults {
    pub const PROFILES: [&'static str; 4] = ["none", "default", "heavy", "duplicates"];

    /// A named fault profile: `none`, `default` (a visible mix), `heavy`, `duplicates` (noise
    /// that must raise nothing: duplicates, extra Gateways, skew, poison).
    pub fn profile(name: &str) -> Option<Faults> {
        let none = Faults {
            dropped_ack: 0,
            late_ack: 0,
            lost_activation: 0,
            duplicate_activation: 0,
            duplicate_ack: 0,
            extra_gateway_ack: 0,
            conflict: 0,
            poison_per_run: 0,
            max_skew_ms: 0,
        };
        Some(match name {
            "none" => none,
            "default" => Faults {
                dropped_ack: 100,
                late_ack: 150,
                lost_activation: 80,
                duplicate_activation: 100,
                duplicate_ack: 100,
                extra_gateway_ack: 200,
                conflict: 20,
                poison_per_run: 200,
                max_skew_ms: 150,
            },
            "heavy" => Faults {
                dropped_ack: 400,
                late_ack: 500,
                lost_activation: 300,
                duplicate_activation: 300,
                duplicate_ack: 300,
                extra_gateway_ack: 500,
                conflict: 100,
                poison_per_run: 1000,
                max_skew_ms: 300,
            },
            "duplicates" => Faults {
                duplicate_activation: 1000,
                duplicate_ack: 1000,
                extra_gateway_ack: 2000,
                poison_per_run: 1000,
                max_skew_ms: 300,
                ..none
            },
            _ => return None,
        })
    }
}

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimSpec {
    pub worlds: usize,
    /// Target records per second over all worlds (activations and ACKs, about half each).
    pub rate: u64,
    /// Apply runs start during this long; the runs under way then finish.
    pub duration_ms: Millis,
    /// Event time of the first run.
    pub start_ms: Millis,
    pub seed: u64,
    /// Partitions of the input topics; a world's records go to `hash(world) % partitions`.
    pub partitions: i32,
    pub faults: Faults,
    pub gateways: u32,
    /// World ids are this prefix and a number.
    pub world_prefix: String,
    /// The policy the truth is derived for (timeouts, rollback).
    pub policy: Policy,
    /// Scripted faults by (world index, run number of that world from 0, sequence); they
    /// replace the rate-based pick for those sequences.
    pub script: BTreeMap<(usize, u32, u64), Fault>,
}

/// One entry of a fault script (`--fault-script FILE`: a JSON array of these).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptEntry {
    /// The number in the world id (`world_3` is 3).
    world: usize,
    /// The world's n-th apply run, from 0.
    run: u32,
    sequence: u64,
    fault: Fault,
}

/// Parses a fault script: `[{"world": 3, "run": 0, "sequence": 2, "fault": "dropped_ack"}, ...]`
/// with faults `dropped_ack`, `late_ack`, `lost_activation`, `duplicate_activation`,
/// `duplicate_ack`, `extra_gateway_ack`, `conflict`.
pub fn parse_script(json: &str) -> anyhow::Result<BTreeMap<(usize, u32, u64), Fault>> {
    let entries: Vec<ScriptEntry> = serde_json::from_str(json).map_err(|e| {
        anyhow::anyhow!("fault script: {e} (expected a JSON array of {{\"world\", \"run\", \"sequence\", \"fault\"}})")
    })?;
    let mut script = BTreeMap::new();
    for (i, e) in entries.into_iter().enumerate() {
        anyhow::ensure!(
            e.sequence >= 1,
            "fault script entry {i}: sequences start at 1"
        );
        anyhow::ensure!(
            e.fault != Fault::None,
            "fault script entry {i}: \"none\" is not a fault"
        );
        anyhow::ensure!(
            script
                .insert((e.world, e.run, e.sequence), e.fault)
                .is_none(),
            "fault script entry {i}: world {} run {} sequence {} has a fault already",
            e.world,
            e.run,
            e.sequence
        );
    }
    Ok(script)
}

impl Default for SimSpec {
    fn default() -> Self {
        SimSpec {
            worlds: 20,
            rate: 100,
            duration_ms: 30_000,
            start_ms: 1_772_442_000_000,
            seed: 1,
            partitions: 1,
            faults: Faults::profile("default").expect("known profile"),
            gateways: 2,
            world_prefix: "world_".into(),
            policy: Policy::default(),
            script: BTreeMap::new(),
        }
    }
}

impl SimSpec {
    /// Checks what the types cannot; the error names the setting.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=SIM_WORLDS_MAX).contains(&self.worlds),
            "--worlds must be between 1 and {SIM_WORLDS_MAX}"
        );
        anyhow::ensure!(self.rate >= 1, "--rate must be at least 1 record/s");
        anyhow::ensure!(self.partitions >= 1, "--partitions must be at least 1");
        anyhow::ensure!(
            (1..=16).contains(&self.gateways),
            "--gateways must be between 1 and 16"
        );
        if let Some(&(w, run, seq)) = self.script.keys().find(|(w, _, _)| *w >= self.worlds) {
            anyhow::bail!(
                "fault script: world {w} (run {run}, sequence {seq}) is not one of the {} worlds",
                self.worlds
            );
        }
        let p = &self.policy;
        anyhow::ensure!(
            p.ack_timeout_ms >= 2 * MARGIN_MS + GATEWAY_GAP_TIMEOUT_MS + 200
                && p.gap_timeout_ms >= 2 * MARGIN_MS,
            "the simulator's margins need ack_timeout_ms >= {} and gap_timeout_ms >= {}",
            2 * MARGIN_MS + GATEWAY_GAP_TIMEOUT_MS + 200,
            2 * MARGIN_MS
        );
        Ok(())
    }

    /// Milliseconds between two events of one world's run, so all worlds together produce
    /// about `rate` records per second.
    fn step_ms(&self) -> Millis {
        ((2 * self.worlds as u64 * 1000) / self.rate.max(1)).max(1) as Millis
    }
}

/// One finding SPEC.md prescribes for the injected faults, per sequence.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TruthFinding {
    pub kind: FindingKind,
    pub world_id: String,
    pub run_id: String,
    pub sequence: u64,
    pub detected_at_ms: Millis,
    pub resolved_at_ms: Option<Millis>,
}

/// One signal SPEC.md prescribes (see [`Truth::signals`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TruthSignal {
    pub world_id: String,
    pub run_id: String,
    pub action: String,
    pub episode: u32,
    pub at_ms: Millis,
}

/// What the simulator did wrong on purpose, and what SPEC.md says follows, for a bounded
/// replay of the records (`ackwatch audit`) and for a live run that outlasts the traffic.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Truth {
    /// A replay: findings raised (their deadline passed by a later record's event time).
    pub findings: Vec<TruthFinding>,
    /// A replay: findings whose deadline no record passed (SPEC §4 `pending_at_end`).
    pub pending_at_end: Vec<TruthFinding>,
    pub signals: Vec<TruthSignal>,
    /// Live, once the wall clock passed every deadline: every finding, and the signals.
    pub live_findings: Vec<TruthFinding>,
    pub live_signals: Vec<TruthSignal>,
    /// Poison records produced (each must be dead-lettered).
    pub poison_records: u64,
    /// Records produced, counted as the SPEC counts them.
    pub tracked: u64,
    pub acks: u64,
    pub untracked: u64,
    pub duplicates: u64,
    pub policy: Policy,
    /// Scripted faults that did not happen (the run was shorter, started after the traffic
    /// ended, or a lost first sequence at the start, which SPEC §2 exempts), as "world run seq".
    pub script_unapplied: Vec<String>,
}

impl Truth {
    /// The truth as comparable facts (see [`finding_facts`], [`signal_facts`]): the replay's
    /// findings and signals, or (`live`) those of a live run that outlasted every deadline.
    pub fn facts(&self, live: bool) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
        self.facts_until(live, None)
    }

    /// [`Self::facts`] of what was due before `cut` (a live run stopped early): findings
    /// detected and signals given before it, resolutions before it.
    pub fn facts_until(
        &self,
        live: bool,
        cut: Option<Millis>,
    ) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
        let due = |t: Millis| cut.is_none_or(|c| t < c);
        let (findings, signals) = if live {
            (&self.live_findings, &self.live_signals)
        } else {
            (&self.findings, &self.signals)
        };
        (
            finding_facts(findings.iter().filter(|f| due(f.detected_at_ms)).map(|f| {
                let (world, run) = (f.world_id.as_str(), f.run_id.as_str());
                let resolved = f.resolved_at_ms.filter(|r| due(*r));
                (f.kind, world, run, f.sequence, f.detected_at_ms, resolved)
            })),
            signal_facts(signals.iter().filter(|s| due(s.at_ms)).map(|s| {
                let (world, run) = (s.world_id.as_str(), s.run_id.as_str());
                (s.action.as_str(), world, run, s.episode, s.at_ms)
            })),
        )
    }
}

/// Detected versus prescribed, keyed by (kind, world, run, sequence) for findings and by
/// (action, world, run, episode) for signals; times compared too.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Comparison {
    pub detected: usize,
    pub missed: Vec<String>,
    pub spurious: Vec<String>,
    /// Present on both sides with another time or resolution.
    pub differing: Vec<String>,
}

impl Comparison {
    pub fn is_exact(&self) -> bool {
        self.missed.is_empty() && self.spurious.is_empty() && self.differing.is_empty()
    }
}

/// Compares facts given as `key -> value` maps (see [`finding_facts`], [`signal_facts`]).
pub fn compare(want: &BTreeMap<String, String>, got: &BTreeMap<String, String>) -> Comparison {
    let mut c = Comparison::default();
    for (key, value) in want {
        match got.get(key) {
            None => c.missed.push(format!("{key} {value}")),
            Some(v) if v != value => c.differing.push(format!("{key}: want {value}, got {v}")),
            Some(_) => c.detected += 1,
        }
    }
    for (key, value) in got {
        if !want.contains_key(key) {
            c.spurious.push(format!("{key} {value}"));
        }
    }
    c
}

/// Findings as comparable facts: `kind world/run #seq` -> `detected_at resolved_at`.
pub fn finding_facts<'a>(
    findings: impl IntoIterator<Item = (FindingKind, &'a str, &'a str, u64, Millis, Option<Millis>)>,
) -> BTreeMap<String, String> {
    findings
        .into_iter()
        .map(|(kind, world, run, seq, detected, resolved)| {
            (
                format!("{} {world}/{run} #{seq}", kind.as_str()),
                format!(
                    "detected {} resolved {}",
                    format_rfc3339_ms(detected),
                    resolved.map_or_else(|| "never".to_string(), format_rfc3339_ms)
                ),
            )
        })
        .collect()
}

/// Signals as comparable facts: `action world/run episode` -> `at`.
pub fn signal_facts<'a>(
    signals: impl IntoIterator<Item = (&'a str, &'a str, &'a str, u32, Millis)>,
) -> BTreeMap<String, String> {
    signals
        .into_iter()
        .map(|(action, world, run, episode, at)| {
            (
                format!("{action} {world}/{run} episode {episode}"),
                format_rfc3339_ms(at),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Generation.

/// splitmix64: small, fast, seeded; shared by the benchmark traffic (src/sim.rs).
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn range(&mut self, lo: Millis, hi: Millis) -> Millis {
        lo + self.below((hi - lo + 1) as u64) as Millis
    }
    /// True with probability `per_10k` / 10,000.
    fn chance(&mut self, per_10k: u32) -> bool {
        self.below(10_000) < per_10k as u64
    }
}

/// A fault of one sequence (by rate from [`Faults`], or by script: [`parse_script`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    None,
    DroppedAck,
    LateAck,
    LostActivation,
    DuplicateActivation,
    DuplicateAck,
    ExtraGatewayAck,
    Conflict,
}

fn pick_fault(rng: &mut Rng, f: &Faults, first_seq_protected: bool) -> Fault {
    let table = [
        (f.dropped_ack, Fault::DroppedAck),
        (f.late_ack, Fault::LateAck),
        (f.lost_activation, Fault::LostActivation),
        (f.duplicate_activation, Fault::DuplicateActivation),
        (f.duplicate_ack, Fault::DuplicateAck),
        (f.extra_gateway_ack, Fault::ExtraGatewayAck),
        (f.conflict, Fault::Conflict),
    ];
    let mut roll = rng.below(10_000) as u32;
    for (rate, fault) in table {
        if roll < rate {
            if fault == Fault::LostActivation && first_seq_protected {
                return Fault::None;
            }
            return fault;
        }
        roll -= rate.min(roll);
    }
    Fault::None
}

/// What a record does to the truth when it is processed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Effect {
    None,
    /// It raises this finding (a conflicting activation: detected at its own event time).
    Detects(usize),
    /// It resolves this finding (a late ACK).
    Resolves(usize),
}

/// One record waiting in the simulation's clock order.
struct Pending {
    /// Record timestamp (the produce time).
    at_ms: Millis,
    /// Order at equal timestamps: activations before ACKs (SPEC §4), then creation order.
    is_ack: bool,
    order: u64,
    /// Event time of a tracked activation or ACK (what moves stream time); None otherwise.
    event_ms: Option<Millis>,
    effect: Effect,
    /// Boxed: the heap moves entries on every push and pop; a pointer is cheaper to move.
    record: Box<KcatRecord>,
}

impl Pending {
    fn key(&self) -> (Millis, bool, u64) {
        (self.at_ms, self.is_ack, self.order)
    }
}
impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

/// A deadline waiting for stream time: (deadline, 0 finding / 1 rollback, sequence, id).
/// Findings fire before a rollback at the same deadline, like the engine's timers.
type Deadline = Reverse<(Millis, u8, u64, usize)>;

/// A run's episode as SPEC §3 defines it.
#[derive(Clone, Debug, Default)]
struct Episode {
    open: usize,
    episode: u32,
    paused_at: Option<Millis>,
    rolled_back: bool,
}

/// Applies SPEC §2–§4 to the records in processing order: per partition, stream time and the
/// deadlines it passes; per run, open findings and episodes.
#[derive(Clone, Debug, Default)]
pub struct Referee {
    policy: Policy,
    findings: Vec<TruthFinding>,
    partition_of_finding: Vec<i32>,
    raised: Vec<bool>,
    deadlines: BTreeMap<i32, BinaryHeap<Deadline>>,
    stream_time: BTreeMap<i32, Millis>,
    /// Rollback deadlines: id -> (world, run, episode).
    rollbacks: Vec<(String, String, u32)>,
    runs: BTreeMap<(String, String), Episode>,
    signals: Vec<TruthSignal>,
}

impl Referee {
    fn new(policy: Policy) -> Self {
        Referee {
            policy,
            ..Referee::default()
        }
    }

    /// A finding that follows from an injected fault; `deadline`: it fires when stream time
    /// passes its `detected_at` (otherwise a record's effect raises it).
    fn add(&mut self, finding: TruthFinding, partition: i32, deadline: bool) -> usize {
        let id = self.findings.len();
        if deadline {
            self.deadlines.entry(partition).or_default().push(Reverse((
                finding.detected_at_ms,
                0,
                finding.sequence,
                id,
            )));
        }
        self.findings.push(finding);
        self.partition_of_finding.push(partition);
        self.raised.push(false);
        id
    }

    /// One record processed: deadlines its event time passes fire first, then its effect.
    fn process(&mut self, partition: i32, event_ms: Option<Millis>, effect: Effect) {
        if let Some(e) = event_ms {
            let st = self.stream_time.entry(partition).or_insert(Millis::MIN);
            *st = (*st).max(e);
            let st = *st;
            self.fire(partition, |due| due < st);
        }
        match effect {
            Effect::None => {}
            Effect::Detects(id) => self.raise(partition, id),
            Effect::Resolves(id) => self.resolve(id),
        }
    }

    fn fire(&mut self, partition: i32, passed: impl Fn(Millis) -> bool) {
        loop {
            let Some(heap) = self.deadlines.get_mut(&partition) else {
                return;
            };
            match heap.peek() {
                Some(Reverse((due, _, _, _))) if passed(*due) => {}
                _ => return,
            }
            let Reverse((due, what, _, id)) = heap.pop().expect("peeked");
            if what == 0 {
                self.raise(partition, id);
            } else {
                self.rollback(id, due);
            }
        }
    }

    fn raise(&mut self, partition: i32, id: usize) {
        self.raised[id] = true;
        let f = &self.findings[id];
        let (world, run, at) = (f.world_id.clone(), f.run_id.clone(), f.detected_at_ms);
        let pausing = f.kind != FindingKind::OrphanAck;
        let policy = self.policy;
        let episode = self.runs.entry((world.clone(), run.clone())).or_default();
        episode.open += 1;
        if pausing && episode.paused_at.is_none() && !episode.rolled_back {
            episode.episode += 1;
            episode.paused_at = Some(at);
            let number = episode.episode;
            self.signal(&world, &run, "pause", number, at);
            if policy.auto_rollback {
                let rollback_id = self.rollbacks.len();
                self.rollbacks.push((world, run, number));
                let due = at + policy.rollback_after_ms as Millis;
                self.deadlines.entry(partition).or_default().push(Reverse((
                    due,
                    1,
                    0,
                    rollback_id,
                )));
            }
        }
    }

    fn resolve(&mut self, id: usize) {
        let f = &self.findings[id];
        assert!(
            self.raised[id],
            "a finding resolves only after it was raised"
        );
        let (world, run) = (f.world_id.clone(), f.run_id.clone());
        let at = f
            .resolved_at_ms
            .expect("a resolving record has the finding's resolution");
        let episode = self
            .runs
            .get_mut(&(world.clone(), run.clone()))
            .expect("raised");
        episode.open -= 1;
        if episode.open == 0 && episode.paused_at.is_some() && !episode.rolled_back {
            episode.paused_at = None;
            let number = episode.episode;
            self.signal(&world, &run, "resume", number, at);
        }
    }

    fn rollback(&mut self, id: usize, due: Millis) {
        let (world, run, number) = self.rollbacks[id].clone();
        let episode = self
            .runs
            .get_mut(&(world.clone(), run.clone()))
            .expect("paused");
        if episode.paused_at.is_some() && episode.episode == number && !episode.rolled_back {
            episode.rolled_back = true; // final: no pause or resume after it
            episode.paused_at = None;
            self.signal(&world, &run, "rollback", number, due);
        }
    }

    fn signal(&mut self, world: &str, run: &str, action: &str, episode: u32, at_ms: Millis) {
        self.signals.push(TruthSignal {
            world_id: world.to_string(),
            run_id: run.to_string(),
            action: action.to_string(),
            episode,
            at_ms,
        });
    }

    /// (raised, pending, signals) as they stand.
    fn outcome(&self) -> (Vec<TruthFinding>, Vec<TruthFinding>, Vec<TruthSignal>) {
        let (mut raised, mut pending) = (Vec::new(), Vec::new());
        for (f, r) in self.findings.iter().zip(&self.raised) {
            if *r { &mut raised } else { &mut pending }.push(f.clone());
        }
        raised.sort();
        pending.sort();
        let mut signals = self.signals.clone();
        signals.sort_by(|a, b| {
            (a.at_ms, &a.world_id, &a.run_id, a.episode).cmp(&(
                b.at_ms,
                &b.world_id,
                &b.run_id,
                b.episode,
            ))
        });
        (raised, pending, signals)
    }

    /// Live, the wall clock passes every deadline once the traffic is over.
    fn outcome_live(&self) -> (Vec<TruthFinding>, Vec<TruthSignal>) {
        let mut live = self.clone();
        let partitions: Vec<i32> = live.deadlines.keys().copied().collect();
        for p in partitions {
            live.fire(p, |_| true);
        }
        let (raised, pending, signals) = live.outcome();
        debug_assert!(pending.is_empty());
        (raised, signals)
    }
}

/// One activation of a run, as WorldService publishes it.
struct Step {
    seq: u64,
    phase: &'static str,
    strategy: String,
    side: &'static str,
    version: u64,
    t: Millis,
    fault: Fault,
}

/// The simulation: an iterator of records in record-timestamp order; the truth is complete
/// once the iterator is exhausted ([`Simulation::truth`]).
pub struct Simulation {
    spec: SimSpec,
    rng: Rng,
    /// (next run start, world index), earliest first.
    worlds: BinaryHeap<Reverse<(Millis, usize)>>,
    runs_started: Vec<u32>,
    versions: Vec<u64>,
    skews: Vec<Millis>,
    records: BinaryHeap<Reverse<Pending>>,
    order: u64,
    offsets: BTreeMap<(i32, bool), i64>,
    referee: Referee,
    counts: Truth,
    end_ms: Millis,
    /// Scripted faults not applied yet, and those refused.
    script: BTreeMap<(usize, u32, u64), Fault>,
    script_refused: Vec<String>,
}

impl Simulation {
    pub fn new(spec: SimSpec) -> anyhow::Result<Simulation> {
        spec.validate()?;
        let mut rng = Rng(spec.seed ^ 0xACC0_A7C4);
        let step = spec.step_ms();
        let mut worlds = BinaryHeap::new();
        for w in 0..spec.worlds {
            // Stagger the worlds over one run's length so the rate is even from the start.
            let offset = rng.below((step * 8) as u64) as Millis;
            worlds.push(Reverse((spec.start_ms + offset, w)));
        }
        let skews = (0..spec.gateways)
            .map(|_| {
                let max = spec.faults.max_skew_ms;
                if max == 0 {
                    0
                } else {
                    rng.range(-max, max)
                }
            })
            .collect();
        Ok(Simulation {
            end_ms: spec.start_ms + spec.duration_ms,
            runs_started: vec![0; spec.worlds],
            versions: vec![100; spec.worlds],
            referee: Referee::new(spec.policy),
            counts: Truth::default(),
            script: spec.script.clone(),
            script_refused: Vec::new(),
            spec,
            rng,
            worlds,
            skews,
            records: BinaryHeap::new(),
            order: 0,
            offsets: BTreeMap::new(),
        })
    }

    /// The truth of the records produced so far: complete once the iterator returned `None`.
    pub fn truth(&self) -> Truth {
        let (findings, pending_at_end, signals) = self.referee.outcome();
        let (live_findings, live_signals) = self.referee.outcome_live();
        Truth {
            findings,
            pending_at_end,
            signals,
            live_findings,
            live_signals,
            policy: self.spec.policy,
            script_unapplied: self
                .script_refused
                .iter()
                .cloned()
                .chain(self.script.keys().map(|(w, r, s)| format!("{w} {r} {s}")))
                .collect(),
            ..self.counts.clone()
        }
    }

    fn world_id(&self, w: usize) -> String {
        format!("{}{w}", self.spec.world_prefix)
    }

    /// The partition of a world's records: FNV-1a of the id, modulo the partitions.
    pub fn partition_of(world: &str, partitions: i32) -> i32 {
        (fnv(world) % partitions.max(1) as u64) as i32
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        at_ms: Millis,
        activation_topic: bool,
        key: Option<String>,
        world: &str,
        payload: String,
        event_ms: Option<Millis>,
        effect: Effect,
    ) {
        let partition = Self::partition_of(world, self.spec.partitions);
        self.order += 1;
        self.records.push(Reverse(Pending {
            at_ms,
            is_ack: !activation_topic,
            order: self.order,
            event_ms,
            effect,
            record: Box::new(KcatRecord {
                topic: if activation_topic {
                    "activation"
                } else {
                    "control.activation.ack"
                }
                .to_string(),
                partition,
                offset: 0, // assigned when the record leaves the simulation, in its order
                tstype: Some("create".into()),
                ts: Some(at_ms),
                broker: Some(1),
                key,
                payload: Some(payload),
                headers: None,
            }),
        }));
    }

    fn finding(
        &mut self,
        kind: FindingKind,
        world: &str,
        run: &str,
        seq: u64,
        detected: Millis,
        resolved: Option<Millis>,
        by_deadline: bool,
    ) -> usize {
        let partition = Self::partition_of(world, self.spec.partitions);
        self.referee.add(
            TruthFinding {
                kind,
                world_id: world.to_string(),
                run_id: run.to_string(),
                sequence: seq,
                detected_at_ms: detected,
                resolved_at_ms: resolved,
            },
            partition,
            by_deadline,
        )
    }

    /// Generates one apply run of world `w` starting at `t0`; returns when the world's next
    /// run starts.
    fn generate_run(&mut self, w: usize, t0: Millis) -> Millis {
        let step = self.spec.step_ms();
        let world = self.world_id(w);
        let key = Some(world.clone());
        let run_no = self.runs_started[w];
        self.runs_started[w] += 1;
        let run = format!("r{run_no:x}-{:08x}", self.rng.next() as u32);
        let gateway = (self.rng.below(self.spec.gateways as u64)) as usize;
        let policy = self.spec.policy;
        let ack_timeout = policy.ack_timeout_ms as Millis;
        let gap_timeout = policy.gap_timeout_ms as Millis;
        let protect_first = t0 < self.spec.start_ms + LEADING_GAP_QUIET_MS;

        // WorldService's run: freeze each strategy/side, then unfreeze each.
        let strategies = 2 + self.rng.below(3) as usize;
        let mut steps = Vec::with_capacity(strategies * 2);
        for (i, phase) in ["freeze", "unfreeze"].into_iter().enumerate() {
            for k in 0..strategies {
                let seq = (i * strategies + k + 1) as u64;
                self.versions[w] += 1;
                let protected = protect_first && seq == 1;
                let fault = match self.script.remove(&(w, run_no, seq)) {
                    Some(Fault::LostActivation) if protected => {
                        self.script_refused.push(format!("{w} {run_no} {seq}"));
                        Fault::None
                    }
                    Some(scripted) => scripted,
                    None => pick_fault(&mut self.rng, &self.spec.faults, protected),
                };
                steps.push(Step {
                    seq,
                    phase,
                    strategy: format!("s{k:02x}"),
                    side: if k % 2 == 0 { "long" } else { "short" },
                    version: self.versions[w],
                    t: t0 + (seq as Millis - 1) * step,
                    fault,
                });
            }
        }

        // What WorldService publishes.
        for s in &steps {
            if s.fault == Fault::LostActivation {
                continue;
            }
            let value = activation(&world, &run, s, &s.strategy, &mut self.rng);
            self.push(
                s.t + 3,
                true,
                key.clone(),
                &world,
                value.clone(),
                Some(s.t),
                Effect::None,
            );
            self.counts.tracked += 1;
            match s.fault {
                Fault::DuplicateActivation => {
                    let again = s.t + self.rng.range(10, step.max(20));
                    self.push(
                        again + 3,
                        true,
                        key.clone(),
                        &world,
                        value,
                        Some(s.t),
                        Effect::None,
                    );
                    self.counts.duplicates += 1;
                }
                Fault::Conflict => {
                    // Another activation claims the sequence (another etag): never resolves.
                    let at = s.t + self.rng.range(10, 400);
                    let other = Step {
                        strategy: format!("{}x", s.strategy),
                        t: at,
                        ..*s
                    };
                    let value = activation(&world, &run, &other, &other.strategy, &mut self.rng);
                    let id = self.finding(
                        FindingKind::SequenceConflict,
                        &world,
                        &run,
                        s.seq,
                        at,
                        None,
                        false,
                    );
                    self.push(
                        at + 3,
                        true,
                        key.clone(),
                        &world,
                        value,
                        Some(at),
                        Effect::Detects(id),
                    );
                    self.counts.tracked += 1;
                }
                _ => {}
            }
        }

        // Lost activations: a gap for each, if a later sequence of the run was published.
        for s in steps.iter().filter(|s| s.fault == Fault::LostActivation) {
            if let Some(later) = steps
                .iter()
                .find(|l| l.seq > s.seq && l.fault != Fault::LostActivation)
            {
                self.finding(
                    FindingKind::ActivationGap,
                    &world,
                    &run,
                    s.seq,
                    later.t + gap_timeout,
                    None,
                    true,
                );
            }
        }

        // The Gateway applies in order; a missing sequence holds the later ones for its own
        // gap timeout (from when it saw the first later one), then it skips it.
        let skew = self.skews[gateway];
        let mut ready_ms = Millis::MIN; // nothing is applied before this (a skip wait)
        let mut waited_below = 0u64; // lost sequences below this were waited for already
        for s in &steps {
            if s.fault == Fault::LostActivation {
                continue;
            }
            let received = s.t + 3 + self.rng.range(2, 20);
            let new_gap = steps.iter().any(|m| {
                m.fault == Fault::LostActivation && m.seq >= waited_below && m.seq < s.seq
            });
            if new_gap {
                ready_ms = ready_ms.max(received + GATEWAY_GAP_TIMEOUT_MS);
                waited_below = s.seq;
            }
            let applied = received.max(ready_ms);
            match s.fault {
                Fault::DroppedAck => {
                    self.finding(
                        FindingKind::AckMissing,
                        &world,
                        &run,
                        s.seq,
                        s.t + ack_timeout,
                        None,
                        true,
                    );
                }
                Fault::LateAck => {
                    let real = s.t + ack_timeout + self.rng.range(MARGIN_MS, MARGIN_MS + 2500);
                    let event = real + skew;
                    let id = self.finding(
                        FindingKind::AckMissing,
                        &world,
                        &run,
                        s.seq,
                        s.t + ack_timeout,
                        Some(event),
                        true,
                    );
                    self.ack(&world, &run, s, real, event, Effect::Resolves(id));
                    self.counts.acks += 1;
                }
                _ => {
                    let real = applied + self.rng.range(15, 80);
                    debug_assert!(real + skew.abs() <= s.t + ack_timeout - MARGIN_MS);
                    self.ack(&world, &run, s, real, real + skew, Effect::None);
                    self.counts.acks += 1;
                    if s.fault == Fault::DuplicateAck {
                        let again = real + self.rng.range(5, 200);
                        self.ack(&world, &run, s, again, real + skew, Effect::None);
                        self.counts.duplicates += 1;
                    }
                    if s.fault == Fault::ExtraGatewayAck && self.spec.gateways > 1 {
                        let other = (gateway + 1) % self.spec.gateways as usize;
                        let real2 = real + self.rng.range(1, 300);
                        self.ack(
                            &world,
                            &run,
                            s,
                            real2,
                            real2 + self.skews[other],
                            Effect::None,
                        );
                        self.counts.duplicates += 1;
                    }
                }
            }
        }

        // Between runs: untracked events, now and then a poison record.
        let end = steps.last().map_or(t0, |s| s.t);
        let between = end + step;
        if self.rng.chance(5000) {
            let value = untracked(&world, between, &mut self.rng);
            self.push(
                between + 3,
                true,
                key.clone(),
                &world,
                value,
                None,
                Effect::None,
            );
            self.counts.untracked += 1;
        }
        if self.rng.chance(self.spec.faults.poison_per_run) {
            let (poison_key, value) = poison(&world, &run, between, &mut self.rng);
            self.push(
                between + 4,
                true,
                poison_key,
                &world,
                value,
                None,
                Effect::None,
            );
            self.counts.poison_records += 1;
        }
        between + step
    }

    /// An ACK record of the run's Gateway: produced at `real`, `ack_ts` at `event` (its clock).
    fn ack(
        &mut self,
        world: &str,
        run: &str,
        s: &Step,
        real: Millis,
        event: Millis,
        effect: Effect,
    ) {
        let value = ack(world, run, s, event, &mut self.rng);
        self.push(
            real + 1,
            false,
            Some(world.to_string()),
            world,
            value,
            Some(event),
            effect,
        );
    }
}

impl Iterator for Simulation {
    type Item = KcatRecord;

    /// The next record in record-timestamp order, with its offset in its topic partition.
    fn next(&mut self) -> Option<KcatRecord> {
        loop {
            let next_run = self.worlds.peek().map(|Reverse((t, _))| *t);
            let can_start = next_run.is_some_and(|t| t < self.end_ms);
            let head = self.records.peek().map(|Reverse(p)| p.at_ms);
            // A run starting at t emits nothing before t, so records before it are final.
            if let Some(h) = head {
                if !can_start || h < next_run.unwrap_or(Millis::MAX) {
                    let Reverse(p) = self.records.pop().expect("peeked");
                    let mut record = *p.record;
                    self.referee.process(record.partition, p.event_ms, p.effect);
                    let offset = self
                        .offsets
                        .entry((record.partition, record.topic == "activation"))
                        .or_insert(0);
                    record.offset = *offset;
                    *offset += 1;
                    return Some(record);
                }
            }
            if !can_start {
                return None;
            }
            let Reverse((t, w)) = self.worlds.pop().expect("peeked");
            let next = self.generate_run(w, t);
            self.worlds.push(Reverse((next, w)));
        }
    }
}

pub(crate) fn uuid(rng: &mut Rng) -> String {
    let (a, b) = (rng.next(), rng.next());
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

fn activation(world: &str, run: &str, s: &Step, strategy: &str, rng: &mut Rng) -> String {
    let frozen = s.phase == "freeze";
    let etag = format!("act:{world}:{strategy}:{}:{}", s.side, s.version);
    format!(
        concat!(
            r#"{{"specversion": "1.0", "id": "{id}", "source": "qmtl.services.worldservice", "type": "activation_updated", "time": "{time}", "datacontenttype": "application/json", "#,
            r#""data": {{"world_id": "{w}", "etag": "{etag}", "run_id": "{r}", "ts": "{ts}", "state_hash": "blake3:{v:04x}", "version": {v}, "strategy_id": "{strategy}", "side": "{side}", "#,
            r#""active": {active}, "weight": {weight}, "freeze": {frozen}, "drain": {frozen}, "phase": "{phase}", "requires_ack": true, "sequence": {seq}, "#,
            r#""idempotency_key": "activation_updated:{w}:{etag}:{r}:{v}"}}, "correlation_id": "activation:{w}:{r}"}}"#
        ),
        id = uuid(rng),
        time = format_rfc3339_ms(s.t + 3),
        ts = format_rfc3339_ms(s.t),
        w = world,
        r = run,
        etag = etag,
        v = s.version,
        strategy = strategy,
        side = s.side,
        seq = s.seq,
        active = !frozen,
        weight = if frozen { "0.0" } else { "1.0" },
        frozen = frozen,
        phase = s.phase,
    )
}

fn ack(world: &str, run: &str, s: &Step, event: Millis, rng: &mut Rng) -> String {
    format!(
        concat!(
            r#"{{"specversion": "1.0", "id": "{id}", "source": "qmtl.services.gateway", "type": "activation_ack", "time": "{ts}", "datacontenttype": "application/json", "#,
            r#""data": {{"type": "ActivationAck", "version": 1, "world_id": "{w}", "run_id": "{r}", "sequence": {seq}, "phase": "{phase}", "etag": "act:{w}:{strategy}:{side}:{v}", "#,
            r#""ts": "{ts}", "ack_ts": "{ts}", "idempotency_key": "activation_ack:{w}:{r}:{seq}:{phase}:1"}}, "correlation_id": "activation:{w}:{r}"}}"#
        ),
        id = uuid(rng),
        ts = format_rfc3339_ms(event),
        w = world,
        r = run,
        strategy = s.strategy,
        side = s.side,
        v = s.version,
        seq = s.seq,
        phase = s.phase,
    )
}

fn untracked(world: &str, t: Millis, rng: &mut Rng) -> String {
    if rng.chance(5000) {
        format!(
            r#"{{"specversion": "1.0", "id": "{}", "source": "qmtl.services.worldservice", "type": "policy_updated", "time": "{ts}", "data": {{"world_id": "{world}", "policy_version": {}, "checksum": "blake3:pp", "status": "ACTIVE", "ts": "{ts}", "version": 1}}}}"#,
            uuid(rng),
            rng.below(100),
            ts = format_rfc3339_ms(t),
        )
    } else {
        format!(
            r#"{{"specversion": "1.0", "id": "{}", "source": "qmtl.services.worldservice", "type": "activation_updated", "time": "{ts}", "data": {{"world_id": "{world}", "etag": "act:{world}:upsert:long:1", "run_id": "", "ts": "{ts}", "state_hash": "blake3:aa", "version": 1, "strategy_id": "upsert", "side": "long", "active": true, "weight": 1.0}}}}"#,
            uuid(rng),
            ts = format_rfc3339_ms(t),
        )
    }
}

/// A record no valid producer writes: (key, value).
fn poison(world: &str, run: &str, t: Millis, rng: &mut Rng) -> (Option<String>, String) {
    let ts = format_rfc3339_ms(t);
    match rng.below(3) {
        0 => (
            Some(world.to_string()),
            format!("{{\"type\": \"ActivationUpdated\", \"world_id\": \"{world}\", "),
        ),
        1 => (
            Some(world.to_string()),
            format!(
                r#"{{"type": "ActivationUpdated", "version": 1, "world_id": "{world}", "run_id": "{run}", "requires_ack": true, "sequence": "seven", "phase": "freeze", "ts": "{ts}"}}"#
            ),
        ),
        _ => (
            Some(format!("{world}-elsewhere")),
            format!(
                r#"{{"type": "ActivationUpdated", "version": 1, "world_id": "{world}", "run_id": "{run}-p", "requires_ack": true, "sequence": 1, "phase": "freeze", "etag": "x", "ts": "{ts}"}}"#
            ),
        ),
    }
}

/// FNV-1a of a text: a stable hash for partitioning simulated worlds.
pub(crate) fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// Records of a whole simulation and its truth (for files and tests; a live producer iterates
/// [`Simulation`] instead, to keep memory bounded).
pub fn simulate(spec: SimSpec) -> anyhow::Result<(Vec<KcatRecord>, Truth)> {
    let mut sim = Simulation::new(spec)?;
    let records: Vec<KcatRecord> = sim.by_ref().collect();
    Ok((records, sim.truth()))
}

/// The worlds and runs a set of truth findings touches (for summaries).
pub fn runs_touched(findings: &[TruthFinding]) -> BTreeSet<(String, String)> {
    findings
        .iter()
        .map(|f| (f.world_id.clone(), f.run_id.clone()))
        .collect()
}

/// What a replay's report says against the truth: findings raised, findings pending at the end,
/// signals, and dead letters. `end_ms`: where the replay ended (the report's last event time
/// for a bounded input); findings due at or after it are expected as pending.
pub struct ReportCheck {
    pub findings: Comparison,
    pub pending: Comparison,
    pub signals: Comparison,
    pub poison_expected: u64,
    pub invalid_reported: u64,
}

impl ReportCheck {
    pub fn is_exact(&self) -> bool {
        self.findings.is_exact()
            && self.pending.is_exact()
            && self.signals.is_exact()
            && self.poison_expected == self.invalid_reported
    }
}

impl std::fmt::Display for ReportCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (what, c) in [
            ("findings", &self.findings),
            ("pending at end", &self.pending),
            ("signals", &self.signals),
        ] {
            writeln!(
                f,
                "{what}: {} detected, {} missed, {} spurious, {} differing",
                c.detected,
                c.missed.len(),
                c.spurious.len(),
                c.differing.len()
            )?;
            for line in c.missed.iter().take(10) {
                writeln!(f, "  missed: {line}")?;
            }
            for line in c.spurious.iter().take(10) {
                writeln!(f, "  spurious: {line}")?;
            }
            for line in c.differing.iter().take(10) {
                writeln!(f, "  differing: {line}")?;
            }
        }
        writeln!(
            f,
            "poison records: {} produced, {} dead-lettered",
            self.poison_expected, self.invalid_reported
        )
    }
}

/// Checks an audit report (SPEC §5) against the truth of the traffic it replayed.
pub fn check_report(truth: &Truth, report: &ackwatch_topology::report::Report) -> ReportCheck {
    use ackwatch_topology::time::parse_rfc3339_ms;
    let time = |s: &str| parse_rfc3339_ms(s).expect("report times are RFC 3339");
    let pending = &truth.pending_at_end;
    let (want_findings, want_signals) = truth.facts(false);
    let got_findings = finding_facts(report.findings.iter().flat_map(|row| {
        row.sequences.iter().map(move |&seq| {
            (
                row.kind,
                row.world_id.as_str(),
                row.run_id.as_str(),
                seq,
                time(&row.detected_at),
                row.resolved_at.as_deref().map(time),
            )
        })
    }));
    let pending_key = |kind: FindingKind, world: &str, run: &str, seq: u64| {
        (
            format!("{} {world}/{run} #{seq}", kind.as_str()),
            String::new(),
        )
    };
    let want_pending: BTreeMap<String, String> = pending
        .iter()
        .map(|f| pending_key(f.kind, &f.world_id, &f.run_id, f.sequence))
        .collect();
    let got_pending: BTreeMap<String, String> = report
        .pending_at_end
        .iter()
        .flat_map(|p| {
            p.sequences
                .iter()
                .map(move |&seq| pending_key(p.kind, &p.world_id, &p.run_id, seq))
        })
        .collect();
    let got_signals = signal_facts(report.signals.iter().map(|s| {
        (
            s.action.as_str(),
            s.world_id.as_str(),
            s.run_id.as_str(),
            s.episode,
            time(&s.at),
        )
    }));
    ReportCheck {
        findings: compare(&want_findings, &got_findings),
        pending: compare(&want_pending, &got_pending),
        signals: compare(&want_signals, &got_signals),
        poison_expected: truth.poison_records,
        invalid_reported: report.totals.invalid,
    }
}
