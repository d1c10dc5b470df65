//! The live processor against a real broker, in one run (BENCHMARKS.md, issue #5):
//! 1. throughput: RECORDS generated records (100,000 concurrently open runs, 5% faults) on two
//!    partitions; a bare rdkafka consumer reads both topics, then `ackwatch run` processes them;
//!    the figure is ackwatch's records/s over the bare consumer's, which reads everything once
//!    before and once after ackwatch (the faster read counts) (`ACKWATCH_BENCH_THREADS=1,2`:
//!    ackwatch once per `num_stream_threads` value, each with a fresh application id); and the
//!    CPU seconds per million records of each, from `/proc/<pid>/stat` for ackwatch and
//!    `getrusage` for the bare consumer (its cheaper read counts);
//! 2. memory: ackwatch's RSS once it holds those runs;
//! 3. detection delay while caught up: 30 s of paced traffic with faults, then emitted_at minus
//!    detected_at of every `ActivationGapDetected`.
//!
//! With `ACKWATCH_BENCH_TRAFFIC=distinct|jumps` only the memory figure, on traffic of
//! RECORDS / 2 runs made for it (see `memory_traffic_of`).
//!
//! `scripts/bench-live.sh` builds the binary, starts a broker and runs this:
//!
//! ```text
//! ACKWATCH_TEST_BOOTSTRAP=host:port target/release/examples/bench_live [RECORDS]
//! ```

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ackwatch::audit::kcat::KcatRecord;
use ackwatch::sim::{generate, TrafficSpec};
use ackwatch_topology::time::parse_rfc3339_ms;
use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message};

#[global_allocator]
static GLOBAL: ackwatch::Allocator = mimalloc::MiMalloc;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

struct Topics {
    activation: String,
    ack: String,
    gap: String,
    signal: String,
    dlq: String,
}

fn client(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    c
}

async fn create_topics(bootstrap: &str, topics: &Topics, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = client(bootstrap).create()?;
    let new: Vec<NewTopic> = [
        (&topics.activation, partitions),
        (&topics.ack, partitions),
        (&topics.gap, 1),
        (&topics.signal, 1),
        (&topics.dlq, 1),
    ]
    .into_iter()
    .map(|(t, p)| NewTopic::new(t, p, TopicReplication::Fixed(1)))
    .collect();
    for r in admin
        .create_topics(new.iter(), &AdminOptions::new())
        .await?
    {
        r.map_err(|(t, e)| anyhow::anyhow!("create {t}: {e}"))?;
    }
    Ok(())
}

async fn produce(bootstrap: &str, topics: &Topics, records: &[KcatRecord]) -> anyhow::Result<()> {
    let producer: FutureProducer = client(bootstrap)
        .set("linger.ms", "20")
        .set("compression.type", "lz4")
        .create()?;
    let mut pending = Vec::new();
    for r in records {
        let topic = if r.topic == "activation" {
            &topics.activation
        } else {
            &topics.ack
        };
        let record = FutureRecord::to(topic)
            .partition(r.partition)
            .key(r.key.as_deref().unwrap_or_default())
            .payload(r.payload.as_deref().unwrap_or_default())
            .timestamp(r.ts.unwrap_or_default());
        pending.push(producer.send_result(record).map_err(|(e, _)| e)?);
        if pending.len() >= 50_000 {
            for d in pending.drain(..) {
                d.await?.map_err(|(e, _)| e)?;
            }
        }
    }
    for d in pending {
        d.await?.map_err(|(e, _)| e)?;
    }
    Ok(())
}

/// CPU seconds (user + system) this process used so far, all threads (librdkafka's included).
fn own_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes the struct it is given and nothing else.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// A bare rdkafka consumer in a group, reading both topics until `count` records arrived;
/// touches every payload so the comparison is fair. Returns records/s (first to last record)
/// and the CPU seconds this process spent from the consumer's creation to its last record
/// (nothing else runs in it meanwhile).
fn bare_consumer(
    bootstrap: &str,
    topics: &Topics,
    count: usize,
    round: u32,
) -> anyhow::Result<(f64, f64)> {
    let cpu_before = own_cpu_seconds();
    let consumer: BaseConsumer = client(bootstrap)
        .set("group.id", format!("bare-{}-{round}", std::process::id()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[&topics.activation, &topics.ack])?;
    let mut seen = 0usize;
    let mut bytes = 0usize;
    let mut first = None;
    while seen < count {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m?;
            first.get_or_insert_with(Instant::now);
            bytes += m.payload().map_or(0, <[u8]>::len) + m.key().map_or(0, <[u8]>::len);
            seen += 1;
        }
    }
    let elapsed = first.unwrap().elapsed().as_secs_f64();
    let cpu = own_cpu_seconds() - cpu_before;
    eprintln!(
        "bare consumer (round {round}): {seen} records, {} MiB in {elapsed:.2} s, {cpu:.2} CPU-s",
        bytes >> 20
    );
    Ok((seen as f64 / elapsed, cpu))
}

fn http_get(address: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

fn metric_sum(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn rss_kb(child: &Child) -> (u64, u64) {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn start_ackwatch(
    bootstrap: &str,
    topics: &Topics,
    dir: &std::path::Path,
    threads: u32,
) -> anyhow::Result<(Child, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let http = format!("127.0.0.1:{port}");
    let config = dir.join("ackwatch.toml");
    std::fs::write(
        &config,
        format!(
            "[topics]\nactivation = {:?}\nack = {:?}\ngap = {:?}\nsignal = {:?}\ndead_letter = {:?}\n\
             [kafka]\nbootstrap_servers = {bootstrap:?}\n[runtime]\nmax_task_idle_ms = {idle}\napplication_id = \"bench-{}-t{threads}\"\nstate_dir = {:?}\nnum_stream_threads = {threads}\n\
             [http]\nlisten = {http:?}\n",
            topics.activation,
            topics.ack,
            topics.gap,
            topics.signal,
            topics.dlq,
            std::process::id(),
            dir.join(format!("state-{threads}")).display().to_string(),
            idle = std::env::var("ACKWATCH_BENCH_IDLE_MS").unwrap_or_else(|_| "1000".into()),
        ),
    )?;
    // ACKWATCH_BENCH_BINARY=PATH runs that binary instead (interleaved A/B runs of two builds).
    let binary: PathBuf = match std::env::var_os("ACKWATCH_BENCH_BINARY") {
        Some(path) => path.into(),
        None => std::env::current_exe()?
            .parent()
            .and_then(|p| p.parent())
            .context("target dir")?
            .join("ackwatch"),
    };
    // ACKWATCH_BENCH_PERF=FILE records a perf profile of the processor into FILE.
    let mut command = match std::env::var("ACKWATCH_BENCH_PERF") {
        Ok(out) => {
            let mut c = Command::new("perf");
            c.args(["record", "-F", "2000", "-g", "-o", &out, "--"])
                .arg(&binary);
            c
        }
        Err(_) => Command::new(&binary),
    };
    let child = command
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("ackwatch.log"))?)
        .spawn()
        .with_context(|| {
            format!(
                "start {} (build it: cargo build --release)",
                binary.display()
            )
        })?;
    Ok((child, http))
}

/// CPU seconds (user, system) a process used so far, from /proc.
fn cpu_seconds(child: &Child) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, r)| r)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 100.0
    };
    (ticks(11), ticks(12))
}

/// Waits until ackwatch has processed `records`; returns them and the seconds since its first.
fn throughput(http: &str, records: usize, dir: &std::path::Path) -> anyhow::Result<(f64, f64)> {
    let mut first = None;
    let started = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let Some(metrics) = http_get(http, "/metrics") else {
            continue;
        };
        let done = metric_sum(&metrics, "ackwatch_records_total{");
        if done > 0.0 {
            first.get_or_insert_with(Instant::now);
        }
        if done as usize >= records {
            return Ok((done, first.unwrap().elapsed().as_secs_f64()));
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "ackwatch did not finish; see {}",
            dir.display()
        );
    }
}

fn percentile(sorted: &[i64], p: usize) -> i64 {
    sorted[((p * sorted.len()).div_ceil(100)).max(1) - 1]
}

/// `ACKWATCH_BENCH_TRAFFIC` (issue #15 item 6): `distinct` = RUNS runs of one activation and
/// its ACK 50 ms later; `jumps` = RUNS runs whose sequence jumps from 1 to 2^31 (neither ACKed).
/// 10,000 worlds, each on partition `world % 2`; event times from two hours ago, 1 ms apart.
fn memory_traffic_of(kind: &str, runs: usize) -> anyhow::Result<Vec<KcatRecord>> {
    let t0 = now_ms() - 7_200_000;
    let record = |topic: &str, world: usize, ts: i64, payload: String| KcatRecord {
        topic: topic.into(),
        partition: (world % 2) as i32,
        offset: 0,
        tstype: None,
        ts: Some(ts),
        broker: None,
        key: Some(format!("world_{world}")),
        payload: Some(payload),
        headers: None,
    };
    let activation = |world: usize, run: usize, seq: u64, ts: i64| {
        let time = ackwatch_topology::time::format_rfc3339_ms(ts);
        record(
            "activation",
            world,
            ts,
            format!(
                r#"{{"type":"ActivationUpdated","version":1,"world_id":"world_{world}","run_id":"run{run}","requires_ack":true,"sequence":{seq},"phase":"freeze","etag":"e{seq}","ts":"{time}"}}"#
            ),
        )
    };
    let mut out = Vec::with_capacity(runs * 2);
    for run in 0..runs {
        let (world, ts) = (run % 10_000, t0 + run as i64);
        match kind {
            "distinct" => {
                out.push(activation(world, run, 1, ts));
                let time = ackwatch_topology::time::format_rfc3339_ms(ts + 50);
                out.push(record("control.activation.ack", world, ts + 50, format!(
                    r#"{{"type":"ActivationAck","version":1,"world_id":"world_{world}","run_id":"run{run}","sequence":1,"phase":"freeze","ack_ts":"{time}"}}"#
                )));
            }
            "jumps" => {
                out.push(activation(world, run, 1, ts));
                out.push(activation(world, run, 1 << 31, ts + 1));
            }
            other => anyhow::bail!("ACKWATCH_BENCH_TRAFFIC={other}: expected distinct or jumps"),
        }
    }
    // Each partition in event-time order, as producers write them.
    out.sort_by_key(|r| (r.partition, r.ts));
    Ok(out)
}

/// The memory figure alone: ackwatch processes every record, settles for 5 s, and its RSS is read.
async fn memory_only(
    bootstrap: &str,
    topics: &Topics,
    kind: &str,
    records: usize,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut child, http) = start_ackwatch(bootstrap, topics, dir.path(), 1)?;
    let (total, elapsed) = throughput(&http, records, dir.path())?;
    std::thread::sleep(Duration::from_secs(5));
    let metrics = http_get(&http, "/metrics").unwrap_or_default();
    let (rss, hwm) = rss_kb(&child);
    println!(
        "memory ({kind}): {total} records in {elapsed:.1} s; {} runs known, {} in memory, {} evicted; RSS {} MiB, peak {} MiB",
        metric_sum(&metrics, "ackwatch_runs "),
        metric_sum(&metrics, "ackwatch_runs_resident "),
        metric_sum(&metrics, "ackwatch_runs_evicted_total "),
        rss / 1024,
        hwm / 1024
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    child.wait()?;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let records: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let bootstrap = std::env::var("ACKWATCH_TEST_BOOTSTRAP")
        .map_err(|_| anyhow::anyhow!("set ACKWATCH_TEST_BOOTSTRAP=host:port"))?;
    let base = format!("bench-live-{}", std::process::id());
    let topics = Topics {
        activation: format!("{base}.activation"),
        ack: format!("{base}.ack"),
        gap: format!("{base}.gap"),
        signal: format!("{base}.signal"),
        dlq: format!("{base}.dlq"),
    };
    create_topics(&bootstrap, &topics, 2).await?;
    let spec = TrafficSpec {
        concurrent_runs: 100_000,
        records,
        fault_percent: 5,
        partitions: 2,
        seed: 5,
        start_ms: now_ms() - 7_200_000,
        world_prefix: "world_",
    };
    let memory_traffic = std::env::var("ACKWATCH_BENCH_TRAFFIC").ok();
    let traffic = match memory_traffic.as_deref() {
        None => generate(&spec),
        Some(kind) => memory_traffic_of(kind, records / 2)?,
    };
    let records = traffic.len();
    let produced = Instant::now();
    produce(&bootstrap, &topics, &traffic).await?;
    eprintln!(
        "produced {} records in {:.1} s",
        traffic.len(),
        produced.elapsed().as_secs_f64()
    );
    drop(traffic);

    if let Some(kind) = memory_traffic {
        return memory_only(&bootstrap, &topics, &kind, records).await;
    }

    // The bare consumer reads twice, before and after ackwatch (its rate swings with the
    // broker's warm-up and page cache); ratios are against the faster of the two reads.
    let (bare_before, bare_cpu_before) = bare_consumer(&bootstrap, &topics, records.min(spec.records), 1)?;

    let dir = tempfile::tempdir()?;
    eprintln!("ackwatch log: {}/ackwatch.log", dir.path().display());
    // ACKWATCH_BENCH_THREADS=1,2 measures the throughput with each num_stream_threads in turn
    // (a fresh application id each, so each reads everything); the last one goes on.
    let thread_counts: Vec<u32> = std::env::var("ACKWATCH_BENCH_THREADS")
        .unwrap_or_else(|_| "1".into())
        .split(',')
        .map(|t| t.trim().parse())
        .collect::<Result<_, _>>()
        .context("ACKWATCH_BENCH_THREADS: comma-separated thread counts")?;
    let mut running = None;
    let mut rates = Vec::new();
    for (i, &threads) in thread_counts.iter().enumerate() {
        let (mut child, http) = start_ackwatch(&bootstrap, &topics, dir.path(), threads)?;
        let (total, elapsed) = throughput(&http, records, dir.path())?;
        let (user, system) = cpu_seconds(&child);
        eprintln!("ackwatch ({threads} stream threads) cpu: user {user:.2} s, system {system:.2} s ({total} records in {elapsed:.2} s since its first)");
        rates.push((threads, total / elapsed, (user + system) / total * 1e6));
        if i + 1 < thread_counts.len() {
            child.kill()?;
            child.wait()?;
        } else {
            running = Some((child, http));
        }
    }
    let (bare_after, bare_cpu_after) = bare_consumer(&bootstrap, &topics, records.min(spec.records), 2)?;
    let bare = bare_before.max(bare_after);
    // CPU per million records: the bare consumer's cheaper read counts (the ratio is conservative).
    let read = records.min(spec.records) as f64 / 1e6;
    let bare_cpu = bare_cpu_before.min(bare_cpu_after) / read;
    for (threads, rate, cpu) in rates {
        println!("throughput: bare consumer {bare:.0} records/s (reads: {bare_before:.0} before, {bare_after:.0} after); ackwatch ({threads} stream threads) {rate:.0} records/s; ratio {:.2}", rate / bare);
        println!(
            "cpu per million records: bare consumer {bare_cpu:.2} s (reads: {:.2}, {:.2}); ackwatch ({threads} stream threads) {cpu:.2} s; ratio {:.2}",
            bare_cpu_before / read,
            bare_cpu_after / read,
            cpu / bare_cpu
        );
    }
    let (mut child, http) = running.context("ACKWATCH_BENCH_THREADS names no thread count")?;
    std::thread::sleep(Duration::from_secs(3));
    let metrics = http_get(&http, "/metrics").unwrap_or_default();
    let (rss, hwm) = rss_kb(&child);
    for prefix in [
        "ackwatch_commit_duration_seconds_sum",
        "ackwatch_commit_duration_seconds_count",
        "ackwatch_task_idle_exceeded_total",
        "ackwatch_changelog_records_total",
        "ackwatch_rocksdb_memtable_bytes",
        "ackwatch_runs_loaded_total",
    ] {
        eprintln!("{prefix} {}", metric_sum(&metrics, prefix));
    }
    println!(
        "memory: {} runs held, {} in memory ({} settled-cache bytes); RSS {} MiB, peak {} MiB",
        metric_sum(&metrics, "ackwatch_runs "),
        metric_sum(&metrics, "ackwatch_runs_resident "),
        metric_sum(&metrics, "ackwatch_settled_cache_bytes "),
        rss / 1024,
        hwm / 1024
    );

    // Detection delay while caught up: paced traffic under other world names.
    let live_spec = TrafficSpec {
        concurrent_runs: 300,
        records: 18_000,
        fault_percent: 10,
        partitions: 2,
        seed: 9,
        start_ms: now_ms() + 1000,
        world_prefix: "live_",
    };
    let live = generate(&live_spec);
    let mut i = 0;
    while i < live.len() {
        let wait = live[i].ts.unwrap() - now_ms();
        if wait > 0 {
            tokio::time::sleep(Duration::from_millis(wait as u64)).await;
        }
        let now = now_ms();
        let end = live[i..]
            .iter()
            .position(|r| r.ts.unwrap() > now)
            .map_or(live.len(), |n| i + n);
        produce(&bootstrap, &topics, &live[i..end]).await?;
        i = end;
    }
    tokio::time::sleep(Duration::from_secs(12)).await;
    let reader: BaseConsumer = client(&bootstrap)
        .set("group.id", format!("reader-{}", std::process::id()))
        .set("auto.offset.reset", "earliest")
        .create()?;
    let mut list = rdkafka::TopicPartitionList::new();
    list.add_partition_offset(&topics.gap, 0, rdkafka::Offset::Beginning)?;
    reader.assign(&list)?;
    drop(list);
    let mut delays = Vec::new();
    let mut idle = Instant::now();
    while idle.elapsed() < Duration::from_secs(10) {
        let Some(m) = reader.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m?;
        idle = Instant::now();
        let value: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or_default())?;
        if value["type"] != "ActivationGapDetected"
            || !value["world_id"]
                .as_str()
                .unwrap_or("")
                .starts_with("live_")
        {
            continue;
        }
        let detected = parse_rfc3339_ms(value["detected_at"].as_str().unwrap()).unwrap();
        let emitted = m
            .headers()
            .and_then(|h| {
                h.iter()
                    .find(|h| h.key == "ackwatch.emitted_at")
                    .and_then(|h| h.value)
            })
            .and_then(|v| parse_rfc3339_ms(std::str::from_utf8(v).ok()?))
            .context("emitted_at header")?;
        delays.push(emitted - detected);
    }
    delays.sort_unstable();
    if let Some(m) = http_get(&http, "/metrics") {
        for l in m
            .lines()
            .filter(|l| l.starts_with("ackwatch_invalid_records_total") && !l.ends_with(" 0"))
        {
            eprintln!("{l}");
        }
    }
    if delays.is_empty() {
        if std::env::var("ACKWATCH_BENCH_KEEP").is_ok() {
            eprintln!("kept {}", dir.keep().display());
        }
        anyhow::bail!("no live findings read");
    }
    println!(
        "detection delay (emitted - detected_at, lateness_ms 500): {} findings; p50 {} ms, p99 {} ms, max {} ms",
        delays.len(),
        percentile(&delays, 50),
        percentile(&delays, 99),
        delays.last().unwrap()
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    child.wait()?;
    if std::env::var("ACKWATCH_BENCH_KEEP").is_ok() {
        let kept = dir.keep();
        eprintln!("kept {}", kept.display());
    }
    Ok(())
}
