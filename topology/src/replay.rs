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
use crate::timeline::Timeline;
use crate::RunKey;

pub struct Replay<'o> {
    policy: Policy,
    tasks: BTreeMap<i32, StreamTask>,
    outputs: Vec<Output>,
    pub report: ReportBuilder,
    observe: &'o mut dyn FnMut(&Output),
    /// The run whose timeline is kept (`--world W --run R`), if any.
    timeline: Option<Timeline>,
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
            timeline: None,
        }
    }

    /// Also keeps `run`'s timeline ([`Timeline`]), returned by [`Self::finish_with_timeline`].
    pub fn with_timeline(mut self, run: RunKey) -> Self {
        self.timeline = Some(Timeline::new(run));
        self
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
        let mut sinks = Sinks {
            outputs: &mut self.outputs,
            report: &mut self.report,
            observe: self.observe,
            timeline: self.timeline.as_mut(),
        };
        drain(task, Input::Open, &mut sinks);
    }

    /// The input ended: every buffered record is processed, then (with `end_ms`) deadlines
    /// before it fire, as they did live; the rest are pending at the end.
    pub fn finish(self, end_ms: Option<Millis>) -> Report {
        self.finish_with_timeline(end_ms).0
    }

    /// [`Self::finish`], and the timeline asked for by [`Self::with_timeline`].
    pub fn finish_with_timeline(mut self, end_ms: Option<Millis>) -> (Report, Option<Timeline>) {
        for (_, mut task) in std::mem::take(&mut self.tasks) {
            let mut sinks = Sinks {
                outputs: &mut self.outputs,
                report: &mut self.report,
                observe: self.observe,
                timeline: self.timeline.as_mut(),
            };
            drain(&mut task, Input::Ended, &mut sinks);
            if let Some(end) = end_ms {
                if sinks.timeline.is_some() {
                    // One deadline at a time, so a timeline shows each deadline the end sets
                    // and passes (a rollback decision after a pause); the outputs are the same.
                    // An index entry may be early (docs of `Task::next_due`): a step past
                    // stream time makes the task re-index it.
                    while let Some(due) = task.engine.next_due().filter(|due| *due < end) {
                        let now = task.engine.meta().stream_time.unwrap_or(Millis::MIN);
                        // A deadline fires once stream time is past it.
                        let past = due.max(now).saturating_add(1).min(end);
                        task.engine.punctuate(past, sinks.outputs);
                        sinks.deliver(&task);
                    }
                }
                task.engine.punctuate(end, sinks.outputs);
                sinks.deliver(&task);
            }
            if let Some(timeline) = sinks.timeline {
                timeline.finish(task.partition, &task.engine);
            }
            self.report.finish_task(&task.engine);
        }
        (self.report.build(), self.timeline)
    }
}

/// Where a step's outputs go.
struct Sinks<'a, 'o> {
    outputs: &'a mut Vec<Output>,
    report: &'a mut ReportBuilder,
    observe: &'a mut (dyn FnMut(&Output) + 'o),
    timeline: Option<&'a mut Timeline>,
}

impl Sinks<'_, '_> {
    fn deliver(&mut self, task: &StreamTask) {
        for output in self.outputs.drain(..) {
            (self.observe)(&output);
            self.report.observe(&output);
            if let Some(timeline) = self.timeline.as_deref_mut() {
                timeline.output(&output);
            }
        }
        if let Some(timeline) = self.timeline.as_deref_mut() {
            timeline.deadlines(task.partition, &task.engine);
            timeline.end_step();
        }
    }
}

fn drain(task: &mut StreamTask, input: Input, sinks: &mut Sinks<'_, '_>) {
    loop {
        match task.step(0, |_| input == Input::Ended, None, sinks.outputs) {
            Step::Processed {
                side,
                record,
                outcome,
            } => {
                let raw = record.as_raw(side, task.partition);
                if let crate::output::Outcome::Invalid(invalid) = &outcome {
                    sinks.report.invalid(crate::report::InvalidRow::of(&raw, invalid));
                }
                if let Some(timeline) = sinks.timeline.as_deref_mut() {
                    timeline.record(&raw, &outcome, task.engine.policy().max_record_bytes);
                }
                sinks.deliver(task);
            }
            Step::NeedsRun(_) => unreachable!("a replay never evicts runs"),
            Step::Wait | Step::Empty => return,
        }
    }
}
