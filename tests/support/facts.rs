//! Shared by the live tests: kcat files, the audit's reference facts, the live outputs in the
//! same shapes, paced traffic.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use ackwatch::audit::kcat::{parse_line, KcatRecord};
use ackwatch::audit::FileAudit;
use ackwatch::settings::Topics;
use ackwatch_topology::{Output, Policy};
use serde_json::{json, Value};

use super::{read_topic, LiveTopics, OutRecord};

pub const OUTPUT_TIMEOUT: Duration = Duration::from_secs(90);
pub const QUIET: Duration = Duration::from_millis(2500);

pub fn read_kcat(path: &Path) -> Vec<KcatRecord> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let r = parse_line(l).unwrap();
            KcatRecord {
                topic: r.topic.to_string(),
                partition: r.partition,
                offset: r.offset,
                tstype: None,
                ts: r.timestamp_ms,
                broker: None,
                key: r.key.map(|k| k.to_string()),
                payload: r.payload.map(|p| p.to_string()),
                headers: None,
            }
        })
        .collect()
}

/// Reads the gap and signal topics until they hold at least as many records as the audit's
/// facts of each kind (then until quiet), with read_committed under exactly_once_v2.
pub fn read_outputs(
    topics: &LiveTopics,
    want: &Reference,
    read_committed: bool,
) -> (Vec<OutRecord>, Vec<OutRecord>) {
    let gap_count = want
        .keys
        .iter()
        .filter(|k| k.starts_with("ackwatch:gap:"))
        .count();
    let gap = read_topic(
        &topics.gap,
        read_committed,
        gap_count,
        QUIET,
        OUTPUT_TIMEOUT,
    );
    let signal = read_topic(
        &topics.signal,
        read_committed,
        want.keys.len() - gap_count,
        QUIET,
        OUTPUT_TIMEOUT,
    );
    (gap, signal)
}

pub fn write_kcat(path: &Path, records: &[KcatRecord]) {
    let text: Vec<String> = records
        .iter()
        .map(|r| serde_json::to_string(r).unwrap())
        .collect();
    std::fs::write(path, text.join("\n") + "\n").unwrap();
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// What the audit says the live processor emits: idempotency keys of gap events and signals
/// (sorted, with repeats), and the findings flattened as the expected files write them.
pub struct Reference {
    pub keys: Vec<String>,
    pub findings: Vec<Value>,
    pub signals: Vec<Value>,
    /// Invalid input records (the audit's count; 0 for the live outputs' shape).
    pub invalid: u64,
    pub tracked: u64,
}

pub fn reference(input: &Path, policy: Policy, end_ms: i64) -> Reference {
    let mut keys = Vec::new();
    let audit = FileAudit {
        inputs: vec![input.to_path_buf()],
        topics: Topics::default(),
        policy,
        progress: false,
        end_ms: Some(end_ms),
    };
    let report = audit
        .run_with(&mut |o| match o {
            Output::Detected(d) => keys.push(d.idempotency_key.clone()),
            Output::Resolved(r) => keys.push(r.idempotency_key.clone()),
            Output::Signal(s) => keys.push(s.idempotency_key.clone()),
            _ => {}
        })
        .unwrap();
    keys.sort();
    let mut findings: Vec<Value> = report
        .findings
        .iter()
        .flat_map(|f| {
            f.sequences.iter().map(move |s| {
                json!([
                    f.kind.as_str(),
                    f.world_id,
                    f.run_id,
                    s,
                    f.resolved_at.is_some()
                ])
            })
        })
        .collect();
    findings.sort_by_key(Value::to_string);
    let mut signals: Vec<Value> = report
        .signals
        .iter()
        .map(|s| json!([s.action.as_str(), s.world_id, s.run_id]))
        .collect();
    signals.sort_by_key(Value::to_string);
    Reference {
        keys,
        findings,
        signals,
        invalid: report.totals.invalid,
        tracked: report.totals.tracked,
    }
}

/// The live outputs in the same shapes; checks each record's envelope on the way.
pub fn observed(gap: &[OutRecord], signal: &[OutRecord]) -> Reference {
    let mut keys = Vec::new();
    let mut detected = BTreeMap::new();
    let mut resolved = std::collections::BTreeSet::new();
    for r in gap.iter().chain(signal) {
        let v = r.json();
        assert_eq!(v["version"], 1, "{v}");
        assert_eq!(
            r.key.as_deref(),
            v["world_id"].as_str(),
            "keyed by world_id: {v}"
        );
        assert_eq!(
            r.header("ackwatch.idempotency_key"),
            v["idempotency_key"].as_str(),
            "{v}"
        );
        assert!(r.header("ackwatch.emitted_at").is_some(), "{v}");
        keys.push(v["idempotency_key"].as_str().unwrap().to_string());
    }
    for r in gap {
        let v = r.json();
        for s in v["sequences"].as_array().unwrap() {
            let id = (
                v["kind"].to_string(),
                v["world_id"].to_string(),
                v["run_id"].to_string(),
                s.as_u64().unwrap(),
            );
            match v["type"].as_str().unwrap() {
                "ActivationGapDetected" => {
                    detected.insert(
                        id,
                        (
                            v["kind"].clone(),
                            v["world_id"].clone(),
                            v["run_id"].clone(),
                            s.clone(),
                        ),
                    );
                }
                "ActivationGapResolved" => {
                    resolved.insert(id);
                }
                other => panic!("unexpected gap event type {other}"),
            }
        }
    }
    let mut findings: Vec<Value> = detected
        .iter()
        .map(|(id, (k, w, r, s))| json!([k, w, r, s, resolved.contains(id)]))
        .collect();
    findings.sort_by_key(Value::to_string);
    let mut signals: Vec<Value> = signal
        .iter()
        .map(|r| {
            let v = r.json();
            json!([v["action"], v["world_id"], v["run_id"]])
        })
        .collect();
    signals.sort_by_key(Value::to_string);
    signals.dedup();
    keys.sort();
    Reference {
        keys,
        findings,
        signals,
        invalid: 0,
        tracked: 0,
    }
}

/// Polls `f` every 100 ms for up to 30 s.
pub fn wait_for<T>(mut f: impl FnMut() -> Option<T>) -> T {
    let started = std::time::Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "condition not met within 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls `done` every 200 ms for up to `timeout`; the failure names `what` was awaited.
pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(started.elapsed() < timeout, "not within {timeout:?}: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Generated traffic (with dropped, late and lost messages) whose event times are the wall
/// clock: `start_ms` is when the first record is due.
pub fn traffic(
    records: usize,
    partitions: i32,
    seed: u64,
    start_ms: i64,
    world_prefix: &'static str,
) -> Vec<KcatRecord> {
    let spec = ackwatch::sim::TrafficSpec {
        concurrent_runs: 400,
        records,
        fault_percent: 10,
        partitions,
        seed,
        start_ms,
        world_prefix,
    };
    ackwatch::sim::generate(&spec)
}

/// Produces each record once the wall clock reaches its timestamp, as the real producers do.
pub fn produce_paced(records: Vec<KcatRecord>, topics: LiveTopics) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let rt = runtime();
        let mut i = 0;
        while i < records.len() {
            let due = records[i].ts.unwrap();
            let wait = due - now_ms();
            if wait > 0 {
                std::thread::sleep(Duration::from_millis(wait as u64));
            }
            let now = now_ms();
            let batch_end = records[i..]
                .iter()
                .position(|r| r.ts.unwrap() > now)
                .map_or(records.len(), |n| i + n);
            rt.block_on(super::produce_kcat(&records[i..batch_end], &topics));
            i = batch_end;
        }
    })
}

/// A small seeded generator for kill moments; the seed is printed so a failure can be replayed.
pub fn kill_moments(count: usize) -> Vec<Duration> {
    let seed = std::env::var("ACKWATCH_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| now_ms() as u64);
    eprintln!("kill moments seed: {seed} (set ACKWATCH_TEST_SEED to replay)");
    let mut x = seed | 1;
    (0..count)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            Duration::from_millis(300 + x % 3000)
        })
        .collect()
}

/// Compares live outputs with the audit of the same records: every fact emitted, none invented,
/// each key always with the same bytes; repeats allowed only under at_least_once.
pub fn assert_same_facts(
    topics: &LiveTopics,
    records: &[KcatRecord],
    dir: &Path,
    exactly_once: bool,
    logs: &str,
) {
    let file = dir.join("traffic.kcat.jsonl");
    write_kcat(&file, records);
    let want = reference(&file, Policy::default(), now_ms());
    assert_eq!(want.invalid, 0, "generated traffic is valid");
    assert!(
        want.tracked as usize * 3 > records.len(),
        "generated traffic is mostly tracked activations and ACKs"
    );
    let (gap, signal) = read_outputs(topics, &want, exactly_once);
    let mut bytes_by_key: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for r in gap.iter().chain(&signal) {
        let key = r.header("ackwatch.idempotency_key").unwrap().to_string();
        let first = bytes_by_key
            .entry(key.clone())
            .or_insert_with(|| r.value.clone());
        assert_eq!(first, &r.value, "key {key} emitted with different contents");
    }
    let got = observed(&gap, &signal);
    assert!(!want.keys.is_empty(), "the traffic has faults, so findings");
    if exactly_once {
        assert_eq!(
            got.keys, want.keys,
            "exactly_once_v2: every fact once\n{logs}"
        );
    } else {
        let mut unique = got.keys.clone();
        unique.dedup();
        let missing: Vec<&String> = want
            .keys
            .iter()
            .filter(|k| unique.binary_search(k).is_err())
            .collect();
        let invented: Vec<&String> = unique
            .iter()
            .filter(|k| want.keys.binary_search(k).is_err())
            .collect();
        assert!(
            missing.is_empty() && invented.is_empty(),
            "{} of {} facts missing, {} invented\nmissing {:?}\ninvented {:?}\n{logs}",
            missing.len(),
            want.keys.len(),
            invented.len(),
            &missing[..missing.len().min(20)],
            &invented[..invented.len().min(20)],
        );
        assert_eq!(
            unique.len(),
            want.keys.len(),
            "the audit emits each fact once"
        );
    }
}

pub fn remove_if_present(dir: &Path) {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            panic!("cannot remove {}: {e}", dir.display())
        }
        _ => {}
    }
}

/// Reads the gap and signal topics until at least `min` records in all and then quiet;
/// returns how many they hold.
pub fn read_outputs_at_least(topics: &LiveTopics, min: usize) -> usize {
    read_topic(&topics.gap, false, min, QUIET, OUTPUT_TIMEOUT).len()
        + read_topic(&topics.signal, false, 0, QUIET, OUTPUT_TIMEOUT).len()
}

/// A JSON audit report's findings (one fact per sequence, with detected_at and resolved_at) and
/// signals (with episode and `at`) as the simulator's comparable facts.
pub fn report_facts(
    report: &serde_json::Value,
) -> (
    std::collections::BTreeMap<String, String>,
    std::collections::BTreeMap<String, String>,
) {
    use ackwatch::sim::{finding_facts, signal_facts};
    let time = |v: &serde_json::Value| {
        ackwatch_topology::time::parse_rfc3339_ms(v.as_str().unwrap()).unwrap()
    };
    let kind = |n: &str| {
        ackwatch_topology::FindingKind::ALL
            .into_iter()
            .find(|k| k.as_str() == n)
            .unwrap()
    };
    let mut findings = Vec::new();
    for row in report["findings"].as_array().unwrap() {
        for seq in row["sequences"].as_array().unwrap() {
            findings.push((
                kind(row["kind"].as_str().unwrap()),
                row["world_id"].as_str().unwrap().to_string(),
                row["run_id"].as_str().unwrap().to_string(),
                seq.as_u64().unwrap(),
                time(&row["detected_at"]),
                (!row["resolved_at"].is_null()).then(|| time(&row["resolved_at"])),
            ));
        }
    }
    let signals: Vec<(String, String, String, u32, i64)> = report["signals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["action"].as_str().unwrap().to_string(),
                s["world_id"].as_str().unwrap().to_string(),
                s["run_id"].as_str().unwrap().to_string(),
                s["episode"].as_u64().unwrap() as u32,
                time(&s["at"]),
            )
        })
        .collect();
    (
        finding_facts(
            findings
                .iter()
                .map(|(k, w, r, s, d, res)| (*k, w.as_str(), r.as_str(), *s, *d, *res)),
        ),
        signal_facts(
            signals
                .iter()
                .map(|(a, w, r, e, at)| (a.as_str(), w.as_str(), r.as_str(), *e, *at)),
        ),
    )
}

/// A tracked freeze activation stamped now (wall clock): live tests need a run the wall clock
/// has not passed retention or deadlines of.
pub fn fresh_activation(world: &str, run: &str) -> KcatRecord {
    let now = now_ms();
    KcatRecord {
        topic: "activation".into(),
        partition: 0,
        offset: 0,
        tstype: None,
        ts: Some(now),
        broker: None,
        key: Some(world.into()),
        payload: Some(format!(
            r#"{{"type":"ActivationUpdated","version":1,"world_id":"{world}","run_id":"{run}","requires_ack":true,"sequence":1,"phase":"freeze","ts":"{}"}}"#,
            ackwatch_topology::time::format_rfc3339_ms(now)
        )),
        headers: None,
    }
}
