//! Synthetic ControlBus traffic for benchmarks: WorldService apply runs with CloudEvents envelopes
//! shaped like `tests/fixtures/wire/`, Gateway ACKs with a latency distribution, and a fault rate
//! (dropped ACKs, late ACKs, lost activations). Seeded, so a figure can be reproduced.
//!
//! Not yet the full simulator with ground truth of the demo/loadgen issue; it is the same shape.

use ackwatch_topology::time::format_rfc3339_ms;
use ackwatch_topology::{Millis, RawRecord, Source};

use crate::kcat::KcatRecord;
use crate::simulator::{fnv, uuid, Rng};

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
    let mut rng = Rng(spec.seed);
    let mut events: Vec<(Millis, bool, String, String, i32)> =
        Vec::with_capacity(spec.records + 16);
    // Each round, every world issues one activation of its current run; runs have 8 sequences.
    const SEQUENCES_PER_RUN: u64 = 8;
    let round_ms: Millis = 1000;
    let mut round = 0u64;
    while events.len() < spec.records {
        for w in 0..spec.concurrent_runs {
            let world = format!("{}{w}", spec.world_prefix);
            let seq = round % SEQUENCES_PER_RUN + 1;
            let run = format!("run{:x}", round / SEQUENCES_PER_RUN);
            let t = spec.start_ms
                + round as Millis * round_ms
                + (w as Millis * round_ms) / spec.concurrent_runs as Millis;
            let partition = (fnv(&world) % spec.partitions as u64) as i32;
            let fault = rng.below(100) < spec.fault_percent;
            let kind = if fault { rng.below(3) } else { 99 };
            let phase = if seq <= SEQUENCES_PER_RUN / 2 {
                "freeze"
            } else {
                "unfreeze"
            };
            if kind != 2 {
                events.push((
                    t,
                    true,
                    world.clone(),
                    activation(&world, &run, seq, phase, t, &mut rng),
                    partition,
                ));
            }
            if kind != 0 {
                let latency = if kind == 1 {
                    3000 + rng.below(4000) as Millis
                } else {
                    20 + rng.below(60) as Millis
                };
                let ack_t = t + latency;
                events.push((
                    ack_t,
                    false,
                    world.clone(),
                    ack(&world, &run, seq, phase, ack_t, &mut rng),
                    partition,
                ));
            }
        }
        round += 1;
    }
    events.sort_by_key(|e| (e.0, !e.1));
    let mut offsets = vec![[0i64; 2]; spec.partitions as usize];
    events
        .into_iter()
        .map(|(t, is_activation, key, payload, partition)| {
            let side = usize::from(!is_activation);
            let offset = offsets[partition as usize][side];
            offsets[partition as usize][side] += 1;
            KcatRecord {
                topic: if is_activation {
                    "activation"
                } else {
                    "control.activation.ack"
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

fn activation(world: &str, run: &str, seq: u64, phase: &str, t: Millis, rng: &mut Rng) -> String {
    let version = 100 + seq;
    let frozen = phase == "freeze";
    format!(
        concat!(
            r#"{{"specversion": "1.0", "id": "{id}", "source": "qmtl.services.worldservice", "type": "activation_updated", "time": "{time}", "datacontenttype": "application/json", "#,
            r#""data": {{"world_id": "{w}", "etag": "act:{w}:s{seq}:long:{v}", "run_id": "{r}", "ts": "{ts}", "state_hash": "blake3:{v:04}", "version": {v}, "strategy_id": "s{seq}", "side": "long", "#,
            r#""active": {active}, "weight": {weight}, "freeze": {frozen}, "drain": {frozen}, "phase": "{phase}", "requires_ack": true, "sequence": {seq}, "#,
            r#""idempotency_key": "activation_updated:{w}:act:{w}:s{seq}:long:{v}:{r}:{v}"}}, "correlation_id": "activation:{w}:{r}"}}"#
        ),
        id = uuid(rng),
        time = format_rfc3339_ms(t + 1),
        ts = format_rfc3339_ms(t),
        w = world,
        r = run,
        v = version,
        seq = seq,
        active = !frozen,
        weight = if frozen { "0.0" } else { "1.0" },
        frozen = frozen,
        phase = phase,
    )
}

fn ack(world: &str, run: &str, seq: u64, phase: &str, t: Millis, rng: &mut Rng) -> String {
    format!(
        concat!(
            r#"{{"specversion": "1.0", "id": "{id}", "source": "qmtl.services.gateway", "type": "activation_ack", "time": "{ts}", "datacontenttype": "application/json", "#,
            r#""data": {{"type": "ActivationAck", "version": 1, "world_id": "{w}", "run_id": "{r}", "sequence": {seq}, "phase": "{phase}", "etag": "act:{w}:s{seq}:long:{v}", "#,
            r#""ts": "{ts}", "ack_ts": "{ts}", "idempotency_key": "activation_ack:{w}:{r}:{seq}:{phase}:1"}}, "correlation_id": "activation:{w}:{r}"}}"#
        ),
        id = uuid(rng),
        ts = format_rfc3339_ms(t),
        w = world,
        r = run,
        v = 100 + seq,
        seq = seq,
        phase = phase,
    )
}

/// A generated record held in memory as the engine takes it (benchmarks feed these).
pub struct OwnedRecord {
    pub source: Source,
    pub offset: i64,
    pub timestamp_ms: Millis,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

impl OwnedRecord {
    pub fn from_kcat(record: &KcatRecord) -> Self {
        OwnedRecord {
            source: if record.topic == "activation" {
                Source::Activation
            } else {
                Source::Ack
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
            source: self.source,
            partition: 0,
            offset: self.offset,
            timestamp_ms: Some(self.timestamp_ms),
            key: Some(&self.key),
            value: Some(&self.value),
        }
    }
}
