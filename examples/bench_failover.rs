//! Failover time on a real broker (BENCHMARKS.md, issue #17): two `ackwatch run` instances of one
//! group on two partitions, each owning one with 100,000 runs (200,000 runs of generated traffic,
//! 5% faults, settled into both stores and changelogs); paced records keep arriving on the
//! second instance's partition only; the second instance is killed with SIGKILL and the figure is
//! the time from the kill to the first record its partition's new owner processes (the owner's
//! `ackwatch_records_total` growing; nothing else reaches it), polled every 5 ms.
//!
//! Scenarios (`ACKWATCH_BENCH_SCENARIOS`, comma-separated; all by default):
//! - `standby0`: the first instance takes the partition over after the session timeout and
//!   restores its whole changelog;
//! - `standby1`: the same with `num_standby_replicas = 1`: its warm copy restores only the tail;
//! - `restart`: static membership (the default) and the killed instance started again at once
//!   with the same `instance_id` and state dir (what a StatefulSet does): it gets its partition
//!   back without a rebalance and restores from its own checkpoint.
//!
//! `ACKWATCH_BENCH_RUNS` (default 3) runs of each; `ACKWATCH_BENCH_SESSION_MS` (default 10000)
//! is the consumer's `session.timeout.ms`. `scripts/bench-failover.sh` builds the binary, starts a
//! broker and runs this.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ackwatch::sim::{generate, TrafficSpec};
use ackwatch_topology::time::parse_rfc3339_ms;
use anyhow::{ensure, Context};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::ClientConfig;

/// Runs per partition: what the killed owner holds.
const RUNS_PER_PARTITION: usize = 100_000;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn client(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    c
}

struct Instance {
    child: Child,
    http: String,
    config: PathBuf,
    log: PathBuf,
}

impl Instance {
    fn start(config: &Path, http: &str, log: &Path) -> anyhow::Result<Instance> {
        let binary = std::env::current_exe()?
            .parent()
            .and_then(|p| p.parent())
            .context("target dir")?
            .join("ackwatch");
        let child = Command::new(&binary)
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?)
            .spawn()
            .with_context(|| format!("start {} (cargo build --release)", binary.display()))?;
        Ok(Instance {
            child,
            http: http.into(),
            config: config.into(),
            log: log.into(),
        })
    }

    fn get(&self, path: &str) -> Option<(u16, String)> {
        use std::io::{Read, Write};
        let address = self.http.parse().ok()?;
        let mut stream =
            std::net::TcpStream::connect_timeout(&address, Duration::from_secs(2)).ok()?;
        write!(stream, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        let status = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, body.to_string()))
    }

    fn metric(&self, prefix: &str) -> f64 {
        self.get("/metrics").map_or(0.0, |(_, text)| {
            text.lines()
                .filter(|l| l.starts_with(prefix))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        })
    }

    fn records(&self) -> f64 {
        self.metric("ackwatch_records_total{")
    }

    fn owned(&self) -> Vec<i64> {
        self.get("/runs/no_such_world")
            .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
            .and_then(|v| {
                v["owned_partitions"]
                    .as_array()
                    .map(|a| a.iter().filter_map(serde_json::Value::as_i64).collect())
            })
            .unwrap_or_default()
    }

    /// Its log lines with `message` = `what`, each with its time in ms.
    fn log_lines(&self, what: &str) -> Vec<(i64, serde_json::Value)> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"] == what)
            .filter_map(|v| Some((parse_rfc3339_ms(v["timestamp"].as_str()?)?, v)))
            .collect()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
    let started = Instant::now();
    while !done() {
        ensure!(
            started.elapsed() < timeout,
            "timed out waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

struct Figures {
    /// Kill to the first record processed by the partition's new owner.
    first_record_ms: i64,
    /// Kill to the new owner's `partitions assigned`.
    assigned_ms: i64,
    restore_ms: i64,
    restore_records: i64,
    changelog_end: i64,
}

fn topics_of(name: &str) -> [String; 5] {
    ["activation", "ack", "gap", "signal", "dlq"].map(|t| format!("{name}-{t}"))
}

fn config_text(
    bootstrap: &str,
    topics: &[String; 5],
    app: &str,
    instance: &str,
    state: &Path,
    http: &str,
    standby: u32,
) -> String {
    let session_ms = std::env::var("ACKWATCH_BENCH_SESSION_MS").unwrap_or_else(|_| "10000".into());
    format!(
        "[topics]\nactivation = {:?}\nack = {:?}\ngap = {:?}\nsignal = {:?}\ndead_letter = {:?}\n\
         [kafka]\nbootstrap_servers = {bootstrap:?}\n\
         [kafka.properties]\n\"session.timeout.ms\" = {session_ms:?}\n\"heartbeat.interval.ms\" = \"1000\"\n\
         [runtime]\napplication_id = {app:?}\ninstance_id = {instance:?}\nstate_dir = {:?}\n\
         num_standby_replicas = {standby}\n[http]\nlisten = {http:?}\n",
        topics[0], topics[1], topics[2], topics[3], topics[4], state.display().to_string(),
    )
}

fn one_run(bootstrap: &str, scenario: &str, round: usize) -> anyhow::Result<Figures> {
    let name = format!("fo-{}-{scenario}-{round}", std::process::id());
    let topics = topics_of(&name);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let admin: AdminClient<DefaultClientContext> = client(bootstrap).create()?;
        let new: Vec<NewTopic> = topics
            .iter()
            .enumerate()
            .map(|(i, t)| NewTopic::new(t, if i < 2 { 2 } else { 1 }, TopicReplication::Fixed(1)))
            .collect();
        for r in admin
            .create_topics(new.iter(), &AdminOptions::new())
            .await?
        {
            r.map_err(|(t, e)| anyhow::anyhow!("create {t}: {e}"))?;
        }
        anyhow::Ok(())
    })?;
    let dir = tempfile::tempdir()?;
    let standby = u32::from(scenario == "standby1");
    let start = |instance: &str| -> anyhow::Result<Instance> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let http = format!("127.0.0.1:{port}");
        let config = dir.path().join(format!("{instance}.toml"));
        let state = dir.path().join(format!("state-{instance}"));
        std::fs::write(
            &config,
            config_text(bootstrap, &topics, &name, instance, &state, &http, standby),
        )?;
        Instance::start(&config, &http, &dir.path().join(format!("{instance}.log")))
    };
    let first = start("i1")?;
    wait_until("i1 owns both partitions", Duration::from_secs(60), || {
        first.owned().len() == 2
    })?;
    let mut second = start("i2")?;
    wait_until(
        "each instance owns one partition",
        Duration::from_secs(90),
        || first.owned().len() == 1 && second.owned().len() == 1,
    )?;
    let victim_partition = second.owned()[0] as i32;

    let producer: ThreadedProducer<DefaultProducerContext> = client(bootstrap)
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .create()?;
    let produce = |r: &ackwatch::audit::kcat::KcatRecord, ts: i64| -> anyhow::Result<()> {
        let topic = if r.topic == "activation" {
            &topics[0]
        } else {
            &topics[1]
        };
        let mut record = BaseRecord::to(topic)
            .partition(r.partition)
            .key(r.key.as_deref().unwrap_or_default())
            .payload(r.payload.as_deref().unwrap_or_default())
            .timestamp(ts);
        loop {
            match producer.send(record) {
                Ok(()) => return Ok(()),
                Err((e, back))
                    if e.rdkafka_error_code()
                        == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) =>
                {
                    record = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    };
    let bulk = generate(&TrafficSpec {
        concurrent_runs: 2 * RUNS_PER_PARTITION,
        records: 4 * RUNS_PER_PARTITION,
        fault_percent: 5,
        partitions: 2,
        seed: 11 + round as u64,
        start_ms: now_ms() - 7_200_000,
        world_prefix: "world_",
    });
    for r in &bulk {
        produce(r, r.ts.unwrap_or_default())?;
    }
    producer.flush(Duration::from_secs(60))?;
    let total = bulk.len() as f64;
    wait_until(
        "both instances processed the bulk traffic",
        Duration::from_secs(300),
        || first.records() + second.records() >= total,
    )?;
    // Commits (every second) and, with a standby, its copy following the changelog: settled
    // when the standby's record count stops growing for 3 s.
    let mut last = (-1.0, Instant::now());
    wait_until("the stores settle", Duration::from_secs(120), || {
        let now = first.metric("ackwatch_standby_records_total");
        if now != last.0 {
            last = (now, Instant::now());
        }
        (standby == 0 || now > 0.0) && last.1.elapsed() > Duration::from_secs(3)
    })?;

    // Paced records on the victim's partition only, one every 2 ms, until the run ends.
    let paced: Vec<_> = generate(&TrafficSpec {
        concurrent_runs: 2000,
        records: 40_000,
        fault_percent: 0,
        partitions: 2,
        seed: 99,
        start_ms: now_ms(),
        world_prefix: "paced_",
    })
    .into_iter()
    .filter(|r| r.partition == victim_partition)
    .collect();
    let stop = AtomicBool::new(false);
    let figures = std::thread::scope(|scope| -> anyhow::Result<Figures> {
        let paced_thread = scope.spawn(|| -> anyhow::Result<()> {
            for r in &paced {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                produce(r, now_ms())?;
                std::thread::sleep(Duration::from_millis(2));
            }
            Ok(())
        });
        let before = second.records();
        wait_until(
            "the victim processes paced records",
            Duration::from_secs(30),
            || second.records() > before,
        )?;
        let (config, log) = (second.config.clone(), second.log.clone());
        let killed_at = now_ms();
        second.child.kill()?;
        second.child.wait()?;
        let restarted;
        let successor = if scenario == "restart" {
            let http = second.http.clone();
            let restarted_log = log.with_extension("restarted.log");
            restarted = Instance::start(&config, &http, &restarted_log)?;
            &restarted
        } else {
            &first
        };
        let baseline = if scenario == "restart" {
            0.0
        } else {
            first.records()
        };
        let started = Instant::now();
        while successor.records() <= baseline {
            ensure!(
                started.elapsed() < Duration::from_secs(180),
                "no successor processed a record"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let first_record_ms = now_ms() - killed_at;
        stop.store(true, Ordering::Relaxed);
        paced_thread.join().expect("paced producer")?;
        let assigned_ms = successor
            .log_lines("partitions assigned")
            .into_iter()
            .find(|(at, _)| *at >= killed_at)
            .map_or(-1, |(at, _)| at - killed_at);
        let restore = successor
            .log_lines("task restored")
            .into_iter()
            .filter(|(at, v)| *at >= killed_at && v["partition"] == victim_partition)
            .last();
        let field = |k: &str| {
            restore
                .as_ref()
                .and_then(|(_, v)| v[k].as_i64())
                .unwrap_or(-1)
        };
        Ok(Figures {
            first_record_ms,
            assigned_ms,
            restore_ms: field("duration_ms"),
            restore_records: field("records"),
            changelog_end: field("to_offset"),
        })
    })?;
    Ok(figures)
}

fn main() -> anyhow::Result<()> {
    let bootstrap = std::env::var("ACKWATCH_TEST_BOOTSTRAP").context(
        "ACKWATCH_TEST_BOOTSTRAP=host:port of the broker (scripts/bench-failover.sh starts one)",
    )?;
    let scenarios = std::env::var("ACKWATCH_BENCH_SCENARIOS")
        .unwrap_or_else(|_| "standby0,standby1,restart".into());
    let runs: usize = std::env::var("ACKWATCH_BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    println!("| scenario | run | kill → first record | kill → assigned | restore | restored records / changelog end |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for scenario in scenarios.split(',') {
        for round in 0..runs {
            let f = one_run(&bootstrap, scenario, round)
                .with_context(|| format!("scenario {scenario}, run {round}"))?;
            println!(
                "| {scenario} | {round} | {} ms | {} ms | {} ms | {} / {} |",
                f.first_record_ms, f.assigned_ms, f.restore_ms, f.restore_records, f.changelog_end
            );
        }
    }
    Ok(())
}
