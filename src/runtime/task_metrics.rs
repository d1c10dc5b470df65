//! What a stream thread's tasks export on `/metrics` besides what processing counts as it goes:
//! the gauges summarising task state (open findings, pending ACKs, runs in memory and known,
//! lag), the engine's cumulative counters, and stalled input partitions (`stalls.rs`), refreshed
//! every `METRICS_REFRESH_INTERVAL` by the thread's loop.

use std::collections::BTreeMap;
use std::time::Instant;

use ackwatch_topology::{FindingKind, Millis, PerSide, Side};
use rdkafka::consumer::{BaseConsumer, Consumer};

use super::stalls::{Change, Observed, STALL_TIMEOUT};
use super::stream_thread::Ctx;
use super::task::AssignedTask;
use super::task_manager::TaskManager;
use crate::events::{PartitionProgressing, PartitionStalled, TaskIdleExceeded};

impl TaskManager {
    /// Refreshes the gauges that summarise task state (open findings, pending ACKs, lag, runs)
    /// and the counters the engine keeps cumulatively.
    /// Consumer lag in records and in time (`lag.rs`) of every running task's inputs; the
    /// series of partitions this thread no longer runs are removed, so a partition that moved
    /// away while behind does not stay behind on this instance's dashboard (and alert).
    fn refresh_lag(&mut self, consumer: &BaseConsumer<Ctx>) {
        let now = super::wall_ms();
        let metrics = self.metrics.clone();
        let mut exported = std::collections::BTreeSet::new();
        for assigned in self.tasks.values_mut() {
            let Some(task) = assigned.running_mut() else { continue };
            let partition = task.partition();
            for side in Side::BOTH {
                let Some(high) = self.watermarks.cached_high(consumer, side, partition) else {
                    continue;
                };
                let next = task.offsets.processed_next[side];
                if task.lag[side].observe(high, next, now) {
                    metrics.limit_cut.with_label_values(&["lag_samples"]).inc();
                }
                let labels = [self.watermarks.topic(side), &partition.to_string()];
                metrics.consumer_lag.with_label_values(&labels).set((high - next).max(0));
                let lag_s = task.lag[side].lag_ms(next, now) as f64 / 1000.0;
                metrics.consumer_lag_seconds.with_label_values(&labels).set(lag_s);
                exported.insert((side, partition));
            }
        }
        for &(side, partition) in self.lag_exported.difference(&exported) {
            let labels = [self.watermarks.topic(side), &partition.to_string()];
            let _ = metrics.consumer_lag.remove_label_values(&labels);
            let _ = metrics.consumer_lag_seconds.remove_label_values(&labels);
        }
        self.lag_exported = exported;
    }

    pub fn refresh_metrics(&mut self, consumer: &BaseConsumer<Ctx>) {
        let mut open = [0i64; 4];
        let mut pending_acks = 0i64;
        let mut oldest: Option<Millis> = None;
        let mut runs = 0i64;
        let mut stream_time: Option<Millis> = None;
        let metrics = self.metrics.clone();
        let topics = PerSide::from_fn(|side| self.watermarks.topic(side).to_string());
        for task in self.running_mut() {
            let engine = &task.core.engine;
            runs += engine.run_count() as i64;
            stream_time = stream_time.max(engine.meta().stream_time);
            for (_, run) in engine.runs() {
                open[FindingKind::ActivationGap.index()] += run.open_gaps().count() as i64;
                for seq in run.sequences.values() {
                    for (i, f) in seq.findings.iter().enumerate() {
                        open[i] += f.is_some_and(|f| f.is_open()) as i64;
                    }
                    // Pending: the deadline has not passed (an ack_missing is a finding).
                    if let Some(a) = seq.activation.as_ref().filter(|_| seq.awaits_ack()) {
                        pending_acks += 1;
                        oldest = Some(oldest.map_or(a.event_ms, |o: Millis| o.min(a.event_ms)));
                    }
                }
            }
            for (limit, n) in &engine.counters().limit_cut {
                let seen = task.seen_limit_cut.entry(limit).or_default();
                metrics
                    .limit_cut
                    .with_label_values(&[limit])
                    .inc_by(n - *seen);
                *seen = *n;
            }
            for side in Side::BOTH {
                let clamped = engine.counters().clamped[side];
                metrics
                    .clamped_records
                    .with_label_values(&[topics[side].as_str()])
                    .inc_by(clamped - task.seen_clamped[side]);
                task.seen_clamped[side] = clamped;
            }
            let idle = task.core.group.idle_exceeded;
            if idle > task.seen_idle_exceeded {
                TaskIdleExceeded {
                    partition: task.partition(),
                    times: idle - task.seen_idle_exceeded,
                }
                .emit(&metrics);
            }
            task.seen_idle_exceeded = idle;
        }
        let thread = self.thread;
        for (gauge, open) in metrics.findings_open.iter().zip(open) {
            gauge.set(thread, open);
        }
        metrics.pending_acks.set(thread, pending_acks);
        metrics.pending_ack_oldest_age.set(
            thread,
            match (oldest, stream_time) {
                (Some(o), Some(st)) => (st - o).max(0),
                _ => 0,
            },
        );
        metrics.runs.set(thread, runs);
        metrics.runs_resident.set(
            thread,
            self.running()
                .map(|t| t.core.engine.resident_count() as i64)
                .sum(),
        );
        metrics.retention_tombstones_deferred.set(
            thread,
            self.running()
                .map(|t| t.core.engine.deferred_tombstones() as i64)
                .sum(),
        );
        self.refresh_lag(consumer);
        self.watch_progress(consumer);
    }

    /// Looks for input partitions that make no progress although behind (`stalls.rs`).
    fn watch_progress(&mut self, consumer: &BaseConsumer<Ctx>) {
        let positions: BTreeMap<(String, i32), i64> = consumer
            .position()
            .map(|list| {
                list.elements()
                    .iter()
                    .filter_map(|e| {
                        let offset = e.offset().to_raw().filter(|o| *o >= 0)?;
                        Some(((e.topic().to_string(), e.partition()), offset))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let brokers_up = !self.metrics.brokers.is_down();
        let now = Instant::now();
        let (watermarks, metrics) = (&self.watermarks, &self.metrics);
        for task in self
            .tasks
            .values_mut()
            .filter_map(AssignedTask::running_mut)
        {
            let partition = task.partition();
            for side in Side::BOTH {
                let topic = watermarks.topic(side);
                let fetched = task.offsets.fetched_next[side];
                let position = positions
                    .get(&(topic.to_string(), partition))
                    .map_or(fetched, |p| fetched.max(*p));
                let high = watermarks.cached_high(consumer, side, partition);
                let seen = Observed {
                    position,
                    high,
                    expected: brokers_up && !task.paused[side],
                };
                match task.progress[side].observe(seen, now, STALL_TIMEOUT) {
                    Change::None => {}
                    Change::Stalled { for_ } => PartitionStalled {
                        topic,
                        partition,
                        position,
                        high: high.unwrap_or(position),
                        for_,
                    }
                    .emit(metrics),
                    Change::Recovered => PartitionProgressing { topic, partition }.emit(metrics),
                }
            }
        }
    }
}
