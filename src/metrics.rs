//! The live processor's Prometheus metrics (docs/semantics.md §3). Labelled by topic, kind, outcome, reason,
//! action or partition; never by world or run (unbounded label values would grow without limit).
//!
//! Counters are bumped where the occurrence happens; gauges that summarise task state (open
//! findings, pending ACKs, lag) are refreshed by the processing loop, so a scrape never waits
//! for processing or restore.

use ackwatch_topology::decode::InvalidReason;
use ackwatch_topology::partitioning::Partitioner;
use ackwatch_topology::Phase;
use ackwatch_topology::{Action, FindingKind, OutcomeLabel};
use prometheus::{
    exponential_buckets, Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// The RFC's and runbooks' name: ACK latency by phase.
    pub ack_latency_ms: HistogramVec,
    pub records: IntCounterVec,
    pub invalid: IntCounterVec,
    pub dead_letters: IntCounter,
    pub dead_letters_cut: IntCounter,
    pub dead_letters_stubbed: IntCounter,
    pub findings_raised: IntCounterVec,
    pub findings_resolved: IntCounterVec,
    /// By `FindingKind::ALL` position.
    pub findings_open: Vec<ThreadGauge>,
    pub pending_acks: ThreadGauge,
    /// Milliseconds in, seconds out.
    pub pending_ack_oldest_age: ThreadGauge,
    pub signals: IntCounterVec,
    pub escalations: IntCounter,
    /// Seconds.
    pub detection_delay: Histogram,
    pub consumer_lag: IntGaugeVec,
    pub consumer_lag_seconds: GaugeVec,
    /// 1 for the instance's state (src/runtime/state.rs), 0 for the others.
    pub instance_state: IntGaugeVec,
    pub assigned_partitions: ThreadGauge,
    pub runs: ThreadGauge,
    pub runs_resident: ThreadGauge,
    pub settled_cache_bytes: ThreadGauge,
    pub runs_evicted: IntCounter,
    pub runs_loaded: IntCounter,
    pub commits: IntCounter,
    /// The memtables of every store (one budget for the process).
    pub rocksdb_memtables: IntGauge,
    pub commit_failures: IntCounter,
    /// Seconds.
    pub commit_duration: Histogram,
    pub changelog_records: IntCounter,
    pub restoring_tasks: ThreadGauge,
    pub restore_records: IntCounter,
    pub restore_bytes: IntCounter,
    pub restore_remaining_records: ThreadGauge,
    /// Partitions this instance keeps a standby copy of (`runtime/standby.rs`).
    pub standby_partitions: IntGauge,
    pub standby_records: IntCounter,
    pub standby_failures: IntCounter,
    pub retention_tombstones_deferred: ThreadGauge,
    pub task_idle_exceeded: IntCounter,
    pub limit_cut: IntCounterVec,
    pub buffer_paused_partitions: IntGauge,
    pub kafka_errors: IntCounterVec,
    pub alerts_firing: IntGauge,
    pub alert_posts: IntCounterVec,
    /// Whether the brokers can be reached; owns `ackwatch_kafka_all_brokers_down`.
    pub brokers: crate::runtime::brokers::BrokerHealth,
    pub worldservice_posts: IntCounterVec,
    pub worldservice_signals: IntCounterVec,
    pub stores_wiped: IntCounter,
    pub stores_rebuilt: IntCounter,
    pub fatal_errors: IntCounter,
    pub misplaced_records: IntCounterVec,
    pub partitioners_disagree: ThreadGauge,
    pub clamped_records: IntCounterVec,
    pub transactions_aborted: IntCounter,
    pub task_starts_deferred: IntCounter,
    pub assignments_lost: IntCounter,
    pub producers_replaced: IntCounter,
    /// Input partitions that cannot make progress; owns `ackwatch_partition_stalled`.
    pub stalls: crate::runtime::stalls::Stalls,
}

/// How a [`ThreadGauge`] combines the stream threads' parts.
#[derive(Clone, Copy, Debug)]
pub enum Combine {
    Sum,
    Max,
}

/// A gauge of the instance made of one part per stream thread (`runtime.num_stream_threads`):
/// each thread sets its own part, and the exported value (sum or maximum of the parts) is
/// recomputed under one lock, so threads never overwrite each other's contribution.
pub struct ThreadGauge {
    export: Export,
    combine: Combine,
    parts: std::sync::Mutex<std::collections::BTreeMap<usize, i64>>,
}

/// How a [`ThreadGauge`]'s combined value is exported: as it is, or (a duration the threads
/// measure in milliseconds) in seconds, Prometheus' base unit.
enum Export {
    AsIs(IntGauge),
    MillisAsSeconds(Gauge),
}

impl ThreadGauge {
    fn new(gauge: IntGauge, combine: Combine) -> ThreadGauge {
        ThreadGauge::exporting(Export::AsIs(gauge), combine)
    }

    /// A gauge whose parts are milliseconds, exported in seconds.
    fn seconds(gauge: Gauge, combine: Combine) -> ThreadGauge {
        ThreadGauge::exporting(Export::MillisAsSeconds(gauge), combine)
    }

    fn exporting(export: Export, combine: Combine) -> ThreadGauge {
        ThreadGauge {
            export,
            combine,
            parts: Default::default(),
        }
    }

    /// Sets stream thread `thread`'s part.
    pub fn set(&self, thread: usize, value: i64) {
        let mut parts = self.parts.lock().expect("not poisoned");
        parts.insert(thread, value);
        let values = parts.values().copied();
        let combined = match self.combine {
            Combine::Sum => values.sum(),
            Combine::Max => values.max().unwrap_or(0),
        };
        match &self.export {
            Export::AsIs(g) => g.set(combined),
            Export::MillisAsSeconds(g) => g.set(combined as f64 / 1000.0),
        }
    }

    /// The combined value, in the parts' unit.
    pub fn get(&self) -> i64 {
        match &self.export {
            Export::AsIs(g) => g.get(),
            Export::MillisAsSeconds(g) => (g.get() * 1000.0).round() as i64,
        }
    }
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

fn float_gauge(registry: &Registry, name: &str, help: &str) -> Gauge {
    let g = Gauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

fn float_gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("valid metric");
    registry
        .register(Box::new(h.clone()))
        .expect("unique metric");
    h
}

/// Buckets of `controlbus_apply_ack_latency_ms`, in ms. Boundaries sit where operators draw
/// lines: the RFC's 3000 ms ACK timeout and the runbooks' 5000 ms freeze-phase alert
/// (`ControlBusApplyAckLatencyHigh`), so both count exactly instead of by interpolation.
pub const ACK_LATENCY_BUCKETS_MS: [f64; 17] = [
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 3000.0, 5000.0, 10000.0,
    30000.0, 60000.0, 300000.0,
];

/// Buckets in seconds from 1 ms to about 65 s (ackwatch's own durations are in base units).
fn seconds_buckets() -> Vec<f64> {
    exponential_buckets(0.001, 2.0, 17).expect("valid buckets")
}

/// `ackwatch_build_info{version,revision} 1` (join it to any series to see what runs), and
/// the process's own `process_*` metrics (resident memory, CPU seconds, open file
/// descriptors, start time) from the Prometheus client's collector.
fn register_build_and_process(r: &Registry) {
    let build_info = gauge_vec(
        r,
        "ackwatch_build_info",
        "Always 1: the ackwatch version and the commit it was built from",
        &["version", "revision"],
    );
    build_info
        .with_label_values(&[
            crate::audit::provenance::VERSION,
            crate::audit::provenance::REVISION,
        ])
        .set(1);
    #[cfg(target_os = "linux")]
    r.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))
    .expect("unique metric");
}

impl Metrics {
    pub fn new(topics: [&str; 2]) -> Metrics {
        let r = Registry::new();
        let ack_latency_ms = HistogramVec::new(
            HistogramOpts::new(
                "controlbus_apply_ack_latency_ms",
                "ACK latency: first ACK event time minus activation event time, ms",
            )
            .buckets(ACK_LATENCY_BUCKETS_MS.to_vec()),
            &["phase"],
        )
        .expect("valid metric");
        r.register(Box::new(ack_latency_ms.clone()))
            .expect("unique metric");
        register_build_and_process(&r);
        let m = Metrics {
            ack_latency_ms,
            records: counter_vec(
                &r,
                "ackwatch_records_total",
                "Input records by topic and outcome",
                &["topic", "outcome"],
            ),
            invalid: counter_vec(
                &r,
                "ackwatch_invalid_records_total",
                "Invalid input records by reason",
                &["reason"],
            ),
            dead_letters: counter(
                &r,
                "ackwatch_dead_letters_total",
                "Records written to the dead-letter topic",
            ),
            dead_letters_cut: counter(
                &r,
                "ackwatch_dead_letters_cut_total",
                "Dead letters whose key, value or detail was cut to the dead-letter limits",
            ),
            dead_letters_stubbed: counter(
                &r,
                "ackwatch_dead_letters_stubbed_total",
                "Dead letters replaced by a stub (reason and origin only) because they were refused as too large",
            ),
            findings_raised: counter_vec(
                &r,
                "ackwatch_findings_raised_total",
                "Sequences found missing, by kind",
                &["kind"],
            ),
            findings_resolved: counter_vec(
                &r,
                "ackwatch_findings_resolved_total",
                "Sequences resolved, by kind",
                &["kind"],
            ),
            findings_open: {
                let open = gauge_vec(
                    &r,
                    "ackwatch_findings_open",
                    "Open findings (sequences) of owned runs, by kind",
                    &["kind"],
                );
                FindingKind::ALL
                    .iter()
                    .map(|k| ThreadGauge::new(open.with_label_values(&[k.as_str()]), Combine::Sum))
                    .collect()
            },
            pending_acks: ThreadGauge::new(gauge(
                &r,
                "ackwatch_pending_acks",
                "Tracked activations waiting for their ACK",
            ), Combine::Sum),
            pending_ack_oldest_age: ThreadGauge::seconds(float_gauge(
                &r,
                "ackwatch_pending_ack_oldest_age_seconds",
                "Age of the oldest pending ACK by stream time, seconds",
            ), Combine::Max),
            signals: counter_vec(
                &r,
                "ackwatch_signals_total",
                "Signals emitted to WorldService, by action",
                &["action"],
            ),
            escalations: counter(
                &r,
                "ackwatch_escalations_total",
                "Paused runs past rollback_after_ms without auto_rollback",
            ),
            detection_delay: histogram(
                &r,
                "ackwatch_detection_delay_seconds",
                "Wall-clock emission time minus detected_at of gap findings, seconds",
                seconds_buckets(),
            ),
            consumer_lag: gauge_vec(
                &r,
                "ackwatch_consumer_lag",
                "Records between the processed position and the high watermark",
                &["topic", "partition"],
            ),
            instance_state: {
                let states = gauge_vec(
                    &r,
                    "ackwatch_state",
                    "1 for the instance's Kafka Streams-like state (CREATED, REBALANCING, RUNNING, PENDING_SHUTDOWN, NOT_RUNNING, ERROR)",
                    &["state"],
                );
                for state in crate::runtime::state::InstanceState::ALL {
                    states.with_label_values(&[state.as_str()]).set(0);
                }
                states
            },
            consumer_lag_seconds: float_gauge_vec(
                &r,
                "ackwatch_consumer_lag_seconds",
                "How long the next record to process has waited at least, by this instance's clock; 0 when caught up",
                &["topic", "partition"],
            ),
            assigned_partitions: ThreadGauge::new(gauge(
                &r,
                "ackwatch_assigned_partitions",
                "Input partition pairs (tasks) owned by this instance",
            ), Combine::Sum),
            runs: ThreadGauge::new(gauge(&r, "ackwatch_runs", "Runs known to this instance's tasks, in memory or evicted to the store"), Combine::Sum),
            runs_resident: ThreadGauge::new(gauge(&r, "ackwatch_runs_resident", "Runs held in memory: unsettled, changed since the last commit, or settled and cached (runtime.settled_cache_bytes)"), Combine::Sum),
            settled_cache_bytes: ThreadGauge::new(gauge(&r, "ackwatch_settled_cache_bytes", "Bytes of settled runs kept in memory after their commit (an upper bound; runtime.settled_cache_bytes bounds it)"), Combine::Sum),
            runs_evicted: counter(&r, "ackwatch_runs_evicted_total", "Settled runs evicted from memory to the store after a commit or at task start"),
            runs_loaded: counter(&r, "ackwatch_runs_loaded_total", "Evicted runs loaded back from the store for a record of theirs"),
            commits: counter(&r, "ackwatch_commits_total", "Completed commits"),
            rocksdb_memtables: gauge(&r, "ackwatch_rocksdb_memtable_bytes", "Bytes of the memtables of every store of the instance"),
            commit_failures: counter(
                &r,
                "ackwatch_commit_failures_total",
                "Commits that failed (the process exits)",
            ),
            commit_duration: histogram(
                &r,
                "ackwatch_commit_duration_seconds",
                "Commit duration, seconds",
                seconds_buckets(),
            ),
            changelog_records: counter(
                &r,
                "ackwatch_changelog_records_total",
                "Records written to the changelog topic",
            ),
            restoring_tasks: ThreadGauge::new(gauge(
                &r,
                "ackwatch_restoring_tasks",
                "Tasks restoring their store from the changelog",
            ), Combine::Sum),
            restore_records: counter(
                &r,
                "ackwatch_restore_records_total",
                "Changelog records applied by restores",
            ),
            restore_bytes: counter(
                &r,
                "ackwatch_restore_bytes_total",
                "Changelog bytes (keys and values) applied by restores",
            ),
            restore_remaining_records: ThreadGauge::new(gauge(
                &r,
                "ackwatch_restore_remaining_records",
                "Changelog offsets left in the running restore",
            ), Combine::Sum),
            standby_partitions: gauge(
                &r,
                "ackwatch_standby_partitions",
                "Partitions of other instances whose store this instance keeps warm (runtime.num_standby_replicas)",
            ),
            standby_records: counter(
                &r,
                "ackwatch_standby_records_total",
                "Changelog records applied to standby copies",
            ),
            standby_failures: counter(
                &r,
                "ackwatch_standby_failures_total",
                "Standby updates that failed (the group could not be described, or a restore failed)",
            ),
            retention_tombstones_deferred: ThreadGauge::new(gauge(
                &r,
                "ackwatch_retention_tombstones_deferred",
                "Tombstones of runs dropped by retention not written to the store and changelog yet \
                 (at most RETENTION_TOMBSTONES_PER_COMMIT_MAX per commit)",
            ), Combine::Sum),
            task_idle_exceeded: counter(
                &r,
                "ackwatch_task_idle_exceeded_total",
                "Waits for a lagging partition that ran past max_task_idle_ms",
            ),
            limit_cut: counter_vec(
                &r,
                "ackwatch_limit_cut_total",
                "What a named limit cut",
                &["limit"],
            ),
            buffer_paused_partitions: gauge(
                &r,
                "ackwatch_buffer_paused_partitions",
                "Input partitions paused because their task buffer is full",
            ),
            kafka_errors: counter_vec(
                &r,
                "ackwatch_kafka_errors_total",
                "Errors reported by the Kafka client, by code",
                &["code"],
            ),
            alerts_firing: gauge(
                &r,
                "ackwatch_alerts_firing",
                "Alerts firing (open finding kinds of runs)",
            ),
            alert_posts: counter_vec(
                &r,
                "ackwatch_alert_posts_total",
                "Posts to Alertmanager by URL and result",
                &["url", "result"],
            ),
            brokers: crate::runtime::brokers::BrokerHealth::new(gauge(
                &r,
                "ackwatch_kafka_all_brokers_down",
                "1 from a client's report that it reaches no broker until a broker answers a request",
            )),
            worldservice_posts: counter_vec(
                &r,
                "ackwatch_worldservice_posts_total",
                "HTTP posts of signals to WorldService, by result (ok, rejected, error)",
                &["result"],
            ),
            worldservice_signals: counter_vec(
                &r,
                "ackwatch_worldservice_signals_total",
                "Signals handled by the WorldService delivery, by outcome (delivered, rejected, expired)",
                &["outcome"],
            ),
            stores_wiped: counter(
                &r,
                "ackwatch_stores_wiped_total",
                "Local stores that could not be used and were wiped (then restored from the changelog)",
            ),
            stores_rebuilt: counter(
                &r,
                "ackwatch_stores_rebuilt_total",
                "Local stores rebuilt from the changelog's beginning because they disagreed with their checkpoint",
            ),
            fatal_errors: counter(
                &r,
                "ackwatch_fatal_errors_total",
                "Fatal errors (the process exits non-zero)",
            ),
            misplaced_records: counter_vec(
                &r,
                "ackwatch_misplaced_records_total",
                "Tracked records on another partition than the partitioner would place their key, \
                 by topic and partitioner (murmur2: Java clients; crc32: librdkafka's default)",
                &["topic", "partitioner"],
            ),
            partitioners_disagree: ThreadGauge::new(
                gauge(
                    &r,
                    "ackwatch_partitioners_disagree",
                    "1 when the input topics follow different partitioners (the join is broken)",
                ),
                Combine::Max,
            ),
            clamped_records: counter_vec(
                &r,
                "ackwatch_clamped_records_total",
                "Records whose event time was clamped to record timestamp (or wall clock) + \
                 max_clock_lead_ms, by topic",
                &["topic"],
            ),
            transactions_aborted: counter(
                &r,
                "ackwatch_transactions_aborted_total",
                "exactly_once_v2 transactions the broker refused and ackwatch aborted (the tasks \
                 restarted from their last commit)",
            ),
            task_starts_deferred: counter(
                &r,
                "ackwatch_task_starts_deferred_total",
                "Task starts put off because the broker did not answer",
            ),
            assignments_lost: counter(
                &r,
                "ackwatch_assignments_lost_total",
                "Assignments lost by an expired group session (tasks closed without a commit)",
            ),
            stalls: crate::runtime::stalls::Stalls::new(gauge_vec(
                &r,
                "ackwatch_partition_stalled",
                "1 while an input partition makes no progress although the broker holds records \
                 after its position (see /healthz for the reason)",
                &["topic", "partition"],
            )),
            producers_replaced: counter(
                &r,
                "ackwatch_producers_replaced_total",
                "exactly_once_v2 producers replaced after a fencing (the tasks restarted from \
                 their last commit)",
            ),
            registry: r,
        };
        // Every label value known up front, so dashboards see zeros rather than gaps.
        for topic in topics {
            for outcome in OutcomeLabel::ALL {
                m.records.with_label_values(&[topic, outcome.as_str()]);
            }
            m.clamped_records.with_label_values(&[topic]);
            for partitioner in Partitioner::ALL {
                m.misplaced_records
                    .with_label_values(&[topic, partitioner.as_str()]);
            }
        }
        for reason in InvalidReason::LABELS {
            m.invalid.with_label_values(&[reason]);
        }
        for kind in FindingKind::ALL {
            m.findings_raised.with_label_values(&[kind.as_str()]);
            m.findings_resolved.with_label_values(&[kind.as_str()]);
        }
        for action in Action::ALL {
            m.signals.with_label_values(&[action.as_str()]);
        }
        for result in ["ok", "rejected", "error"] {
            m.worldservice_posts.with_label_values(&[result]);
        }
        for outcome in ["delivered", "rejected", "expired"] {
            m.worldservice_signals.with_label_values(&[outcome]);
        }
        for phase in Phase::ALL {
            m.ack_latency_ms.with_label_values(&[phase.as_str()]);
        }
        m
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding cannot fail");
        String::from_utf8(buffer).expect("text format is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rfc_histogram_and_every_label_are_exposed_from_the_start() {
        let m = Metrics::new(["activation", "control.activation.ack"]);
        m.ack_latency_ms
            .with_label_values(&["freeze"])
            .observe(12.0);
        let text = m.render();
        for needle in [
            "controlbus_apply_ack_latency_ms_bucket{phase=\"freeze\",le=\"10\"} 0",
            "controlbus_apply_ack_latency_ms_bucket{phase=\"freeze\",le=\"25\"} 1",
            "controlbus_apply_ack_latency_ms_bucket{phase=\"freeze\",le=\"5000\"} 1",
            "controlbus_apply_ack_latency_ms_count{phase=\"unfreeze\"} 0",
            "ackwatch_records_total{outcome=\"duplicate\",topic=\"control.activation.ack\"} 0",
            "ackwatch_invalid_records_total{reason=\"key_mismatch\"} 0",
            "ackwatch_findings_open{kind=\"sequence_conflict\"} 0",
            "ackwatch_signals_total{action=\"rollback\"} 0",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }

    #[test]
    fn thread_gauges_combine_every_threads_last_part() {
        let check = |combine: Combine, sets: &[(usize, i64)], expected: i64| {
            let gauge = ThreadGauge::new(IntGauge::new("g", "g").unwrap(), combine);
            for &(thread, value) in sets {
                gauge.set(thread, value);
            }
            assert_eq!(gauge.get(), expected, "{combine:?} {sets:?}");
        };
        check(Combine::Sum, &[], 0);
        check(Combine::Sum, &[(0, 3)], 3);
        check(Combine::Sum, &[(0, 3), (1, 4)], 7);
        // A thread's new part replaces its old one, whatever the others did in between.
        check(Combine::Sum, &[(0, 3), (1, 4), (0, 1)], 5);
        check(Combine::Max, &[(0, 3), (1, 9), (1, 2)], 3);
        check(Combine::Max, &[(2, -1)], -1);
    }

    #[test]
    fn a_duration_gauge_takes_milliseconds_and_exports_seconds() {
        let exported = Gauge::new("g_seconds", "g").unwrap();
        let gauge = ThreadGauge::seconds(exported.clone(), Combine::Max);
        gauge.set(0, 1500);
        gauge.set(1, 250);
        assert_eq!(exported.get(), 1.5);
        assert_eq!(gauge.get(), 1500);
    }
}
