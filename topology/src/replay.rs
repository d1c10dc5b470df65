//! The engine over a bounded input (the audit of files or of a cluster's retained topics), run
//! as the live processor runs it: one [`StreamTask`] per partition, the two topics of a
//! partition merged by record timestamp. No I/O: the caller reads the records.

use std::collections::BTreeMap;

use crate::output::Output;
use crate::partition_group::Buffered;
use crate::policy::Policy;
use crate::report::{Report, ReportBuilder};
use crate::side::Side;
use crate::stream_task::{Step, StreamTask};
use crate::time::Millis;

pub struct Replay<'o> {
    policy: Policy,
    tasks: BTreeMap<i32, StreamTask>,
    outputs: Vec<Output>,
    pub report: ReportBuilder,
    observe: &'o mut dyn FnMut(&Output),
}

/// Whether the input has more records to come: until it ends, a bounded input gives no high
/// watermark, so a task waits for both topics to have a head before it processes either.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Input {
    Open,
    Ended,
}

impl<'o> Replay<'o> {
    /// A replay under `policy`; `observe` sees every engine output as it happens (gap events and
    /// signals carry the idempotency keys the live processor emits).
    pub fn new(policy: Policy, observe: &'o mut dyn FnMut(&Output)) -> Self {
        Replay {
            policy,
            tasks: BTreeMap::new(),
            outputs: Vec::new(),
            report: ReportBuilder::default(),
            observe,
        }
    }

    /// Takes one record of `partition` and processes what the merge releases.
    pub fn push(&mut self, side: Side, partition: i32, record: Buffered) {
        let policy = self.policy;
        self.report.partitions_seen[side].insert(partition);
        let task = self
            .tasks
            .entry(partition)
            .or_insert_with(|| StreamTask::bounded(partition, policy));
        task.push(side, record);
        drain(
            task,
            Input::Open,
            &mut self.outputs,
            &mut self.report,
            self.observe,
        );
    }

    /// The input ended: every buffered record is processed, then (with `end_ms`) deadlines
    /// before it fire, as they did live; the rest are pending at the end.
    pub fn finish(mut self, end_ms: Option<Millis>) -> Report {
        for (_, mut task) in std::mem::take(&mut self.tasks) {
            drain(
                &mut task,
                Input::Ended,
                &mut self.outputs,
                &mut self.report,
                self.observe,
            );
            if let Some(end) = end_ms {
                task.engine.punctuate(end, &mut self.outputs);
                deliver(&mut self.outputs, &mut self.report, self.observe);
            }
            self.report.finish_task(&task.engine);
        }
        self.report.build()
    }
}

fn drain(
    task: &mut StreamTask,
    input: Input,
    outputs: &mut Vec<Output>,
    report: &mut ReportBuilder,
    observe: &mut dyn FnMut(&Output),
) {
    loop {
        match task.step(0, |_| input == Input::Ended, None, outputs) {
            Step::Processed { .. } => deliver(outputs, report, observe),
            Step::NeedsRun(_) => unreachable!("a replay never evicts runs"),
            Step::Wait | Step::Empty => return,
        }
    }
}

fn deliver(
    outputs: &mut Vec<Output>,
    report: &mut ReportBuilder,
    observe: &mut dyn FnMut(&Output),
) {
    for output in outputs.drain(..) {
        observe(&output);
        report.observe(&output);
    }
}
