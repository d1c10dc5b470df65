//! Settled runs leave memory and nothing is lost (docs/semantics.md §5 "Memory"), on the real
//! broker: 2,000 runs settle and are evicted to the store after their commit; records of
//! evicted runs (a conflicting activation, a new sequence whose ACK never comes) load them back
//! and raise exactly what the audit raises; `/runs` answers for evicted runs from the store; a
//! restart loads the store run by run and evicts the settled ones again; with a settled-run
//! cache (`runtime.settled_cache_bytes`) settled runs stay in memory up to its budget and the
//! rest leave. Without eviction the resident count would stay at 2,000; without loading back,
//! the conflicts would be new runs and raise nothing.

mod support;

use std::time::Duration;

use ackwatch::audit::kcat::KcatRecord;
use ackwatch_topology::time::format_rfc3339_ms;
use support::facts::*;
use support::{LiveTopics, Processor};

const RUNS: usize = 2000;
const WORLD: &str = "ev_w";

fn record(topic: &str, ts: i64, payload: String) -> KcatRecord {
    KcatRecord {
        topic: topic.into(),
        partition: 0,
        offset: 0,
        tstype: None,
        ts: Some(ts),
        broker: None,
        key: Some(WORLD.into()),
        payload: Some(payload),
        headers: None,
    }
}

fn activation(run: usize, seq: u64, etag: &str, ts: i64) -> KcatRecord {
    record(
        "activation",
        ts,
        format!(
            r#"{{"type":"ActivationUpdated","version":1,"world_id":"{WORLD}","run_id":"r{run}","requires_ack":true,"sequence":{seq},"phase":"freeze","etag":"{etag}","ts":"{}"}}"#,
            format_rfc3339_ms(ts)
        ),
    )
}

fn ack(run: usize, seq: u64, ts: i64) -> KcatRecord {
    record(
        "control.activation.ack",
        ts,
        format!(
            r#"{{"type":"ActivationAck","version":1,"world_id":"{WORLD}","run_id":"r{run}","sequence":{seq},"phase":"freeze","ack_ts":"{}"}}"#,
            format_rfc3339_ms(ts)
        ),
    )
}

/// Waits until metric `name` satisfies `ok`, failing with the value seen and the log.
/// Runs `first..first + RUNS`, each one activation ACKed 100 ms later (so each settles), from `t0`.
fn settled_runs(first: usize, t0: i64) -> Vec<KcatRecord> {
    (first..first + RUNS)
        .flat_map(|run| {
            let ts = t0 + (run - first) as i64 / 10;
            [activation(run, 1, "e1", ts), ack(run, 1, ts + 100)]
        })
        .collect()
}

fn wait_metric(processor: &Processor, http: &str, name: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let started = std::time::Instant::now();
    loop {
        let value = support::metric(http, name);
        if let Some(v) = value.filter(|v| ok(*v)) {
            return v;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "{name} = {value:?}\n{}",
            processor.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn settled_runs_are_evicted_and_loaded_back_without_losing_a_finding() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let topics = rt.block_on(LiveTopics::create("eviction", 1));
    let app = support::unique("app-eviction");
    let config_with = |extra: &str| {
        support::live_config(dir.path(), &topics, &app, "i1", "at_least_once", extra)
    };
    let (config, http) = config_with("settled_cache_bytes = 0");
    let mut all = Vec::new();
    let mut processor = Processor::start(&config, &http);
    processor.wait_ready(Duration::from_secs(60));

    // 2,000 runs, each activation ACKed 100 ms later: all settle, all leave memory.
    let settled = settled_runs(0, now_ms());
    rt.block_on(support::produce_kcat(&settled, &topics));
    all.extend(settled);
    wait_metric(&processor, &http, "ackwatch_runs_evicted_total", |v| {
        v >= RUNS as f64
    });
    wait_metric(&processor, &http, "ackwatch_runs", |v| v == RUNS as f64);
    wait_metric(&processor, &http, "ackwatch_runs_resident", |v| v == 0.0);

    // Queries answer for evicted runs from the store.
    let (status, body) = support::http_get(&http, &format!("/runs/{WORLD}/r7")).unwrap();
    assert_eq!(status, 200, "{body}");
    let view: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (view["tracked"].as_u64(), view["acked"].as_u64()),
        (Some(1), Some(1))
    );
    let (status, body) = support::http_get(&http, &format!("/runs/{WORLD}")).unwrap();
    assert_eq!(status, 200, "{body}");
    let listed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(listed["runs_total"].as_u64(), Some(RUNS as u64), "{body}");

    // Records of evicted runs: 50 conflicting activations (only the loaded state knows the
    // first etag) and 50 new sequences whose ACK never comes.
    let t1 = now_ms();
    let faults: Vec<KcatRecord> = (0..50)
        .map(|i| activation(i * 3, 1, "e2", t1 + i as i64))
        .chain((0..50).map(|i| activation(1000 + i * 3, 2, "e1", t1 + 100 + i as i64)))
        .collect();
    rt.block_on(support::produce_kcat(&faults, &topics));
    all.extend(faults);
    wait_metric(&processor, &http, "ackwatch_runs_loaded_total", |v| {
        v >= 100.0
    });
    // The ack_missing deadlines (3 s) pass while the run is loaded; every finding is open.
    let open_missing = "ackwatch_findings_open{kind=\"ack_missing\"}";
    wait_metric(&processor, &http, open_missing, |v| v == 50.0);
    assert_eq!(
        support::metric(&http, "ackwatch_findings_open{kind=\"sequence_conflict\"}"),
        Some(50.0)
    );
    assert!(
        processor.terminate(Duration::from_secs(30)).success(),
        "{}",
        processor.log_text()
    );

    // A restart loads the store run by run: the unsettled 100 stay, the rest leave again.
    let mut processor = Processor::start(&config, &http);
    processor.wait_ready(Duration::from_secs(60));
    wait_metric(&processor, &http, "ackwatch_runs_evicted_total", |v| {
        v >= (RUNS - 100) as f64
    });
    wait_metric(&processor, &http, "ackwatch_runs", |v| v == RUNS as f64);
    wait_metric(&processor, &http, "ackwatch_runs_resident", |v| v == 100.0);
    let t2 = now_ms();
    let after_restart: Vec<KcatRecord> = (0..20)
        .map(|i| activation(1500 + i, 1, "e3", t2 + i as i64))
        .collect();
    rt.block_on(support::produce_kcat(&after_restart, &topics));
    all.extend(after_restart);
    wait_metric(&processor, &http, "ackwatch_runs_loaded_total", |v| {
        v >= 20.0
    });
    wait_metric(
        &processor,
        &http,
        "ackwatch_findings_open{kind=\"sequence_conflict\"}",
        |v| v == 70.0,
    );
    assert!(
        processor.terminate(Duration::from_secs(30)).success(),
        "{}",
        processor.log_text()
    );

    // With a cache of 100 kB: 2,000 more runs settle; some stay in memory, the rest leave.
    let cache_bytes = 100_000.0;
    let (config, http) = config_with("settled_cache_bytes = 100000");
    let mut processor = Processor::start(&config, &http);
    processor.wait_ready(Duration::from_secs(60));
    let unsettled = wait_metric(&processor, &http, "ackwatch_runs_resident", |v| v == 120.0);
    let cached = settled_runs(RUNS, now_ms());
    rt.block_on(support::produce_kcat(&cached, &topics));
    all.extend(cached);
    wait_metric(&processor, &http, "ackwatch_runs", |v| v == 2.0 * RUNS as f64);
    std::thread::sleep(Duration::from_secs(1)); // a few commits after the last record
    let bytes = wait_metric(&processor, &http, "ackwatch_settled_cache_bytes", |v| v > 0.0);
    assert!(bytes <= cache_bytes, "the cache holds {bytes} bytes");
    let resident = support::metric(&http, "ackwatch_runs_resident").unwrap();
    assert!(
        resident > unsettled && resident < unsettled + RUNS as f64 / 2.0,
        "{resident} runs in memory: {unsettled} unsettled and part of the {RUNS} settled"
    );
    let logs = processor.log_text();
    assert!(
        processor.terminate(Duration::from_secs(30)).success(),
        "{logs}"
    );
    assert_same_facts(&topics, &all, dir.path(), false, &logs);
}
