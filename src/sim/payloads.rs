//! The records the simulated producers write, shaped like the real ones (`tests/fixtures/wire/`:
//! QMTL's CloudEvents envelopes), the seeded RNG behind every simulation, and the flat
//! benchmark traffic (`generate`) built from the same payloads.

use ackwatch_topology::partitioning::Partitioner;
use ackwatch_topology::time::format_rfc3339_ms;
use ackwatch_topology::{Millis, RawRecord, Side};

use super::traffic::Step;
use super::Fault;
use crate::audit::kcat::KcatRecord;

/// splitmix64: small, fast, seeded; every simulation's and the benchmark traffic's randomness.
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
    pub(crate) fn range(&mut self, lo: Millis, hi: Millis) -> Millis {
        lo + self.below((hi - lo + 1) as u64) as Millis
    }
    /// True with probability `per_10k` / 10,000.
    pub(crate) fn chance(&mut self, per_10k: u32) -> bool {
        self.below(10_000) < per_10k as u64
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

pub(super) fn activation(
    world: &str,
    run: &str,
    s: &Step,
    strategy: &str,
    rng: &mut Rng,
) -> String {
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

pub(super) fn ack(world: &str, run: &str, s: &Step, event: Millis, rng: &mut Rng) -> String {
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

pub(super) fn untracked(world: &str, t: Millis, rng: &mut Rng) -> String {
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
pub(super) fn poison(world: &str, run: &str, t: Millis, rng: &mut Rng) -> (Option<String>, String) {
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

/// The benchmarks' traffic: flat and regular, every world's run issuing one activation per
/// round, with a fault rate (dropped ACK, late ACK, lost activation). No ground truth; the
/// same payloads as the simulation. Seeded, so a figure can be reproduced.
#[derive(Clone, Debug)]
pub struct TrafficSpec {
    /// Runs open at the same time (one per world).
    pub concurrent_runs: usize,
    /// Records to produce in all, about (activations and ACKs).
    pub records: usize,
    /// Percent of sequences with a fault (split between dropped ACK, late ACK, lost activation).
    pub fault_percent: u64,
    pub partitions: i32,
    pub seed: u64,
    pub start_ms: Millis,
    /// World ids are this prefix and a number; another prefix gives another set of runs.
    pub world_prefix: &'static str,
}

impl Default for TrafficSpec {
    fn default() -> Self {
        TrafficSpec {
            concurrent_runs: 10_000,
            records: 1_000_000,
            fault_percent: 5,
            partitions: 1,
            seed: 1,
            start_ms: 1_772_442_000_000,
            world_prefix: "world_",
        }
    }
}

/// Records of both topics, each topic in offset order per partition, sorted by record timestamp.
pub fn generate(spec: &TrafficSpec) -> Vec<KcatRecord> {
    // Each round, every world issues one activation of its current run; runs have 8 sequences.
    const SEQUENCES_PER_RUN: u64 = 8;
    const ROUND_MS: Millis = 1000;
    let mut rng = Rng(spec.seed);
    let mut events: Vec<(Millis, Side, String, String, i32)> =
        Vec::with_capacity(spec.records + 16);
    let mut round = 0u64;
    while events.len() < spec.records {
        for w in 0..spec.concurrent_runs {
            let world = format!("{}{w}", spec.world_prefix);
            let seq = round % SEQUENCES_PER_RUN + 1;
            let run = format!("run{:x}", round / SEQUENCES_PER_RUN);
            let step = Step {
                seq,
                phase: if seq <= SEQUENCES_PER_RUN / 2 {
                    "freeze"
                } else {
                    "unfreeze"
                },
                strategy: format!("s{seq}"),
                side: "long",
                version: 100 + seq,
                t: spec.start_ms
                    + round as Millis * ROUND_MS
                    + (w as Millis * ROUND_MS) / spec.concurrent_runs as Millis,
                fault: Fault::None,
            };
            let partition = Partitioner::Murmur2.partition(world.as_bytes(), spec.partitions);
            // 0: dropped ACK, 1: late ACK, 2: lost activation, 99: none.
            let fault = if rng.below(100) < spec.fault_percent {
                rng.below(3)
            } else {
                99
            };
            if fault != 2 {
                let value = activation(&world, &run, &step, &step.strategy, &mut rng);
                events.push((step.t, Side::Activation, world.clone(), value, partition));
            }
            if fault != 0 {
                let latency = if fault == 1 {
                    3000 + rng.below(4000) as Millis
                } else {
                    20 + rng.below(60) as Millis
                };
                let ack_t = step.t + latency;
                let value = ack(&world, &run, &step, ack_t, &mut rng);
                events.push((ack_t, Side::Ack, world.clone(), value, partition));
            }
        }
        round += 1;
    }
    events.sort_by_key(|e| (e.0, e.1));
    let mut offsets = vec![[0i64; 2]; spec.partitions as usize];
    events
        .into_iter()
        .map(|(t, side, key, payload, partition)| {
            let next = &mut offsets[partition as usize][usize::from(side == Side::Ack)];
            let offset = *next;
            *next += 1;
            KcatRecord {
                topic: match side {
                    Side::Activation => "activation",
                    Side::Ack => "control.activation.ack",
                }
                .to_string(),
                partition,
                offset,
                tstype: Some("create".into()),
                ts: Some(t + 1),
                broker: Some(1),
                key: Some(key),
                payload: Some(payload),
                headers: None,
            }
        })
        .collect()
}

/// A generated record held in memory as the engine takes it (benchmarks feed these).
pub struct OwnedRecord {
    pub side: Side,
    pub offset: i64,
    pub timestamp_ms: Millis,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

impl OwnedRecord {
    pub fn from_kcat(record: &KcatRecord) -> Self {
        OwnedRecord {
            side: if record.topic == "activation" {
                Side::Activation
            } else {
                Side::Ack
            },
            offset: record.offset,
            timestamp_ms: record.ts.expect("generated records have timestamps"),
            key: record
                .key
                .clone()
                .expect("generated records have keys")
                .into_bytes(),
            value: record
                .payload
                .clone()
                .expect("generated records have values")
                .into_bytes(),
        }
    }

    pub fn as_raw(&self) -> RawRecord<'_> {
        RawRecord {
            side: self.side,
            partition: 0,
            offset: self.offset,
            timestamp_ms: Some(self.timestamp_ms),
            key: Some(&self.key),
            value: Some(&self.value),
        }
    }
}
