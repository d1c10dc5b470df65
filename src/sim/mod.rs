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
//! event-time order: a [`Referee`] applies semantics §4's definitions to the records as they leave
//! the simulation (stream time per partition = the largest event time in record-timestamp
//! order; a deadline fires when stream time passes it) and semantics §3's episodes in that order.
//! It is a second, deliberately naive reading of the behaviour rules (docs/semantics.md),
//! written without the engine's code.
//!
//! Generation is incremental (a discrete-event simulation over worlds), so memory is bounded by
//! the records in flight, not by the duration; seeded, so a run is reproducible.

mod payloads;
mod traffic;
mod truth;

pub mod demo;
mod demo_status;
pub mod loadgen;

use std::collections::{BTreeMap, BTreeSet};

use ackwatch_topology::{Millis, Policy};
use serde::{Deserialize, Serialize};

use crate::audit::kcat::KcatRecord;
pub(crate) use payloads::Rng;
pub use payloads::{generate, OwnedRecord, TrafficSpec};
pub use traffic::Simulation;
pub use truth::{
    check_report, compare, finding_facts, signal_facts, Comparison, Reading, Referee, ReportCheck,
    Truth, TruthFinding, TruthSignal,
};

/// Every injected fault keeps at least this distance from the timeout that decides it, and
/// every on-time ACK arrives at least this long before its deadline.
pub const MARGIN_MS: Millis = 500;
/// A Gateway's own gap timeout: how long it waits for a missing sequence before skipping it.
pub const GATEWAY_GAP_TIMEOUT_MS: Millis = 800;
/// Runs that start within this long of the traffic's start never lose their first sequence:
/// semantics §2 exempts a leading gap of a run that may have begun before the input did.
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
