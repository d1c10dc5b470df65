//! The simulation itself: WorldService's apply runs and the Gateways' ACKs with their faults,
//! generated world by world as a discrete-event simulation and handed out in record-timestamp
//! order, each record's effect on the truth applied by the [`Referee`] as it leaves.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use ackwatch_topology::{FindingKind, Millis};

use ackwatch_topology::partitioning::Partitioner;

use super::payloads::{ack, activation, poison, untracked, Rng};
use super::truth::{Effect, Referee, Truth, TruthFinding};
use super::{pick_fault, Fault, SimSpec, GATEWAY_GAP_TIMEOUT_MS, LEADING_GAP_QUIET_MS, MARGIN_MS};
use crate::audit::kcat::KcatRecord;

/// One record waiting in the simulation's clock order.
struct Pending {
    /// Record timestamp (the produce time).
    at_ms: Millis,
    /// Order at equal timestamps: activations before ACKs (docs/semantics.md §4), then creation order.
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

/// One activation of a run, as WorldService publishes it.
pub(crate) struct Step {
    pub(crate) seq: u64,
    pub(crate) phase: &'static str,
    pub(crate) strategy: String,
    pub(crate) side: &'static str,
    pub(crate) version: u64,
    pub(crate) t: Millis,
    pub(crate) fault: Fault,
}

/// The names of the run being generated.
struct RunNames {
    world: String,
    /// The records' key (the world id).
    key: Option<String>,
    run: String,
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
    /// Where a world's records go: murmur2, as QMTL's (Java-compatible) producers place keys,
    /// so simulated traffic co-partitions like the real one.
    pub fn partition_of(world: &str, partitions: i32) -> i32 {
        Partitioner::Murmur2.partition(world.as_bytes(), partitions)
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
        let world = self.world_id(w);
        let run_no = self.runs_started[w];
        self.runs_started[w] += 1;
        let r = RunNames {
            key: Some(world.clone()),
            run: format!("r{run_no:x}-{:08x}", self.rng.next() as u32),
            world,
        };
        let gateway = (self.rng.below(self.spec.gateways as u64)) as usize;
        let steps = self.plan_run(w, run_no, t0);
        self.publish_activations(&r, &steps);
        self.expect_gaps(&r, &steps);
        self.gateway_acks(&r, &steps, gateway);
        let end = steps.last().map_or(t0, |s| s.t);
        let between = end + self.spec.step_ms();
        self.between_runs(&r, between);
        between + self.spec.step_ms()
    }

    /// WorldService's run: freeze each strategy/side, then unfreeze each; each step's fault.
    fn plan_run(&mut self, w: usize, run_no: u32, t0: Millis) -> Vec<Step> {
        let step = self.spec.step_ms();
        let protect_first = t0 < self.spec.start_ms + LEADING_GAP_QUIET_MS;
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

        steps
    }

    /// What WorldService publishes: each activation (not the lost ones), duplicates and
    /// conflicting activations.
    fn publish_activations(&mut self, r: &RunNames, steps: &[Step]) {
        let step = self.spec.step_ms();
        for s in steps {
            if s.fault == Fault::LostActivation {
                continue;
            }
            let value = activation(&r.world, &r.run, s, &s.strategy, &mut self.rng);
            self.push(
                s.t + 3,
                true,
                r.key.clone(),
                &r.world,
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
                        r.key.clone(),
                        &r.world,
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
                    let value =
                        activation(&r.world, &r.run, &other, &other.strategy, &mut self.rng);
                    let id = self.finding(
                        FindingKind::SequenceConflict,
                        &r.world,
                        &r.run,
                        s.seq,
                        at,
                        None,
                        false,
                    );
                    self.push(
                        at + 3,
                        true,
                        r.key.clone(),
                        &r.world,
                        value,
                        Some(at),
                        Effect::Detects(id),
                    );
                    self.counts.tracked += 1;
                }
                _ => {}
            }
        }
    }

    /// Lost activations: a gap for each, if a later sequence of the run was published.
    fn expect_gaps(&mut self, r: &RunNames, steps: &[Step]) {
        let gap_timeout = self.spec.policy.gap_timeout_ms as Millis;
        for s in steps.iter().filter(|s| s.fault == Fault::LostActivation) {
            if let Some(later) = steps
                .iter()
                .find(|l| l.seq > s.seq && l.fault != Fault::LostActivation)
            {
                self.finding(
                    FindingKind::ActivationGap,
                    &r.world,
                    &r.run,
                    s.seq,
                    later.t + gap_timeout,
                    None,
                    true,
                );
            }
        }
    }

    /// The Gateway applies in order; a missing sequence holds the later ones for its own
    /// gap timeout (from when it saw the first later one), then it skips it.
    fn gateway_acks(&mut self, r: &RunNames, steps: &[Step], gateway: usize) {
        let ack_timeout = self.spec.policy.ack_timeout_ms as Millis;
        let skew = self.skews[gateway];
        let mut ready_ms = Millis::MIN; // nothing is applied before this (a skip wait)
        let mut waited_below = 0u64; // lost sequences below this were waited for already
        for s in steps {
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
                        &r.world,
                        &r.run,
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
                        &r.world,
                        &r.run,
                        s.seq,
                        s.t + ack_timeout,
                        Some(event),
                        true,
                    );
                    self.ack(&r.world, &r.run, s, real, event, Effect::Resolves(id));
                    self.counts.acks += 1;
                }
                _ => {
                    let real = applied + self.rng.range(15, 80);
                    debug_assert!(real + skew.abs() <= s.t + ack_timeout - MARGIN_MS);
                    self.ack(&r.world, &r.run, s, real, real + skew, Effect::None);
                    self.counts.acks += 1;
                    if s.fault == Fault::DuplicateAck {
                        let again = real + self.rng.range(5, 200);
                        self.ack(&r.world, &r.run, s, again, real + skew, Effect::None);
                        self.counts.duplicates += 1;
                    }
                    if s.fault == Fault::ExtraGatewayAck && self.spec.gateways > 1 {
                        let other = (gateway + 1) % self.spec.gateways as usize;
                        let real2 = real + self.rng.range(1, 300);
                        self.ack(
                            &r.world,
                            &r.run,
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
    }

    /// Between runs: untracked events, now and then a poison record.
    fn between_runs(&mut self, r: &RunNames, between: Millis) {
        if self.rng.chance(5000) {
            let value = untracked(&r.world, between, &mut self.rng);
            self.push(
                between + 3,
                true,
                r.key.clone(),
                &r.world,
                value,
                None,
                Effect::None,
            );
            self.counts.untracked += 1;
        }
        if self.rng.chance(self.spec.faults.poison_per_run) {
            let (poison_key, value) = poison(&r.world, &r.run, between, &mut self.rng);
            self.push(
                between + 4,
                true,
                poison_key,
                &r.world,
                value,
                None,
                Effect::None,
            );
            self.counts.poison_records += 1;
        }
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
