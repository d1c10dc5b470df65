//! Input partitions that cannot make progress (docs/semantics.md §4 "Stalled partitions"): a
//! partition the consumer does not advance on although the broker holds records after its
//! position is a blind spot — its deadlines never fire by the wall clock (the task is never
//! confirmed caught up) and its records are never judged. One is reported in
//! `ackwatch_partition_stalled{topic,partition}`, in `/healthz` (503 with the reason), and in
//! one log line when it starts and one when it ends.
//!
//! A side is stalled when, for `STALL_TIMEOUT`, its task was running, the brokers answered, the
//! partition was not paused by its full buffer, the broker's high watermark was past the
//! task's position, and the position did not move. Causes seen: a transaction of another
//! producer left open (read_committed readers stop at it until it ends or times out), a
//! record the client cannot decode, a client stuck on one partition.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::IntGaugeVec;

/// How long a partition may make no progress while behind before it is reported stalled.
/// Cost: a blind partition is reported this late; shorter would report a slow catch-up or a
/// transaction that commits a little late.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// One side of a task, watched for progress.
#[derive(Clone, Debug)]
pub struct Progress {
    position: i64,
    since: Instant,
    stalled: bool,
}

/// What one look at a side saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observed {
    /// The task's position: after the last record fetched (or the consumer's position when it
    /// is further, past transaction markers).
    pub position: i64,
    /// The broker's high watermark as the client last saw it.
    pub high: Option<i64>,
    /// Whether progress can be expected: task running, brokers up, partition not paused.
    pub expected: bool,
}

/// What changed at a look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    None,
    /// Stalled since `for_` ago.
    Stalled {
        for_: Duration,
    },
    Recovered,
}

impl Progress {
    pub fn new(position: i64, now: Instant) -> Self {
        Progress {
            position,
            since: now,
            stalled: false,
        }
    }

    /// Looks at the side at `now`; says whether it just stalled or recovered.
    pub fn observe(&mut self, seen: Observed, now: Instant, timeout: Duration) -> Change {
        let behind = seen.high.is_some_and(|high| high > seen.position);
        if !seen.expected || !behind || seen.position != self.position {
            self.position = seen.position;
            self.since = now;
            return if std::mem::replace(&mut self.stalled, false) {
                Change::Recovered
            } else {
                Change::None
            };
        }
        let for_ = now.duration_since(self.since);
        if !self.stalled && for_ >= timeout {
            self.stalled = true;
            return Change::Stalled { for_ };
        }
        Change::None
    }
}

/// The stalled partitions of the process, for `/healthz` and the gauge.
pub struct Stalls {
    reasons: Mutex<BTreeMap<(String, i32), String>>,
    gauge: IntGaugeVec,
}

impl Stalls {
    pub fn new(gauge: IntGaugeVec) -> Self {
        Stalls {
            reasons: Mutex::new(BTreeMap::new()),
            gauge,
        }
    }

    fn reasons(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, i32), String>> {
        self.reasons
            .lock()
            .expect("never poisoned: no panic under it")
    }

    pub fn set(&self, topic: &str, partition: i32, reason: String) {
        self.reasons()
            .insert((topic.to_string(), partition), reason);
        self.gauge
            .with_label_values(&[topic, &partition.to_string()])
            .set(1);
    }

    /// The partition progresses again, or is no longer this process's.
    pub fn clear(&self, topic: &str, partition: i32) {
        if self
            .reasons()
            .remove(&(topic.to_string(), partition))
            .is_some()
        {
            self.gauge
                .with_label_values(&[topic, &partition.to_string()])
                .set(0);
        }
    }

    /// One line per stalled partition: `topic[partition]: reason`.
    pub fn describe(&self) -> Vec<String> {
        self.reasons()
            .iter()
            .map(|((topic, partition), reason)| format!("{topic}[{partition}]: {reason}"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (seconds since the start, position, high watermark, progress expected) → change.
    fn check(looks: &[(u64, i64, Option<i64>, bool)], expected: &[Change]) {
        let start = Instant::now();
        let timeout = Duration::from_secs(30);
        let mut progress = Progress::new(0, start);
        let got: Vec<Change> = looks
            .iter()
            .map(|&(at, position, high, expected)| {
                let seen = Observed {
                    position,
                    high,
                    expected,
                };
                progress.observe(seen, start + Duration::from_secs(at), timeout)
            })
            .collect();
        assert_eq!(got, expected, "{looks:?}");
    }

    #[test]
    fn a_partition_behind_without_progress_stalls_once_and_recovers() {
        use Change::*;
        let stalled = |s| Stalled {
            for_: Duration::from_secs(s),
        };
        // Behind and stuck at 5 from the start: stalled at 30 s, reported once.
        check(
            &[
                (10, 5, Some(9), true),
                (40, 5, Some(9), true),
                (50, 5, Some(12), true),
            ],
            &[None, stalled(30), None],
        );
        // Progress restarts the clock; caught up never stalls.
        check(
            &[
                (0, 5, Some(9), true),
                (25, 6, Some(9), true),
                (50, 6, Some(9), true),
                (60, 6, Some(9), true),
            ],
            &[None, None, None, stalled(35)],
        );
        check(
            &[(0, 9, Some(9), true), (100, 9, Some(9), true)],
            &[None, None],
        );
        // Paused, restoring or in an outage: no stall, and the clock restarts after it.
        check(
            &[
                (0, 5, Some(9), false),
                (40, 5, Some(9), false),
                (60, 5, Some(9), true),
            ],
            &[None, None, None],
        );
        // No watermark known yet: not behind.
        check(
            &[(0, 5, Option::None, true), (100, 5, Option::None, true)],
            &[None, None],
        );
        // A stalled partition that moves, or catches up, recovers.
        check(
            &[
                (0, 5, Some(9), true),
                (30, 5, Some(9), true),
                (31, 6, Some(9), true),
            ],
            &[None, stalled(30), Recovered],
        );
    }
}
