//! `ackwatch demo`: ackwatch doing its job in one command, with nothing installed.
//!
//! librdkafka's in-process mock cluster stands in for Kafka; the simulator (src/simulator.rs)
//! plays WorldService and the Gateways with a visible fault mix, paced at its event times; the
//! real processor (`runtime::run_with`, the code path of `ackwatch run`) watches them and
//! serves `/metrics`. Findings and signals are shown as they reach their topics, with a compact
//! table of worlds on a terminal (plain lines otherwise), and the demo closes by comparing what
//! was detected with the injected ground truth: detected, missed, spurious.
//!
//! The mock cluster keeps only the newest few thousand records of a partition, so the demo runs
//! at a modest rate, producer and processor side by side; nothing is benchmarked against it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ackwatch_topology::time::{format_rfc3339_ms, parse_rfc3339_ms};
use ackwatch_topology::{FindingKind, Millis};
use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::{Message, Offset, TopicPartitionList};

use super::loadgen::Pacing;
use super::{compare, finding_facts, signal_facts, Comparison, Faults, SimSpec, Truth};
use crate::runtime::wall_ms;
use crate::runtime::{run_with, RunOptions};
use crate::settings::Settings;

/// Input partitions of the demo's topics.
const DEMO_PARTITIONS: i32 = 2;
/// Outputs shown in the terminal's event list (older ones scroll away).
const EVENT_LINES_SHOWN_MAX: usize = 12;
/// Worlds listed in the terminal's table (the busiest first).
const TABLE_WORLDS_MAX: usize = 12;

pub struct DemoOptions {
    pub duration_ms: Millis,
    pub seed: u64,
    pub faults: String,
    pub worlds: usize,
    pub rate: u64,
    pub http_listen: String,
}

/// One output read back from the gap or signal topic.
#[derive(Clone, Debug)]
enum Seen {
    Detected {
        kind: FindingKind,
        world: String,
        run: String,
        sequences: Vec<u64>,
        at: Millis,
    },
    Resolved {
        kind: FindingKind,
        world: String,
        run: String,
        sequences: Vec<u64>,
        at: Millis,
    },
    Signal {
        action: String,
        world: String,
        run: String,
        episode: u32,
        at: Millis,
    },
}

fn parse_output(value: &[u8]) -> Option<Seen> {
    let v: serde_json::Value = serde_json::from_slice(value).ok()?;
    let text = |k: &str| v[k].as_str().map(str::to_string);
    let time = |k: &str| v[k].as_str().and_then(parse_rfc3339_ms);
    let kind = || {
        let k = v["kind"].as_str()?;
        FindingKind::ALL.into_iter().find(|f| f.as_str() == k)
    };
    let sequences = || -> Option<Vec<u64>> {
        v["sequences"]
            .as_array()?
            .iter()
            .map(|s| s.as_u64())
            .collect()
    };
    Some(match v["type"].as_str()? {
        "ActivationGapDetected" => Seen::Detected {
            kind: kind()?,
            world: text("world_id")?,
            run: text("run_id")?,
            sequences: sequences()?,
            at: time("detected_at")?,
        },
        "ActivationGapResolved" => Seen::Resolved {
            kind: kind()?,
            world: text("world_id")?,
            run: text("run_id")?,
            sequences: sequences()?,
            at: time("resolved_at")?,
        },
        _ => Seen::Signal {
            action: text("action")?,
            world: text("world_id")?,
            run: text("run_id")?,
            episode: v["episode"].as_u64()? as u32,
            at: time("at")?,
        },
    })
}

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let clock = |at: &Millis| format_rfc3339_ms(*at)[11..23].to_string();
        match self {
            Seen::Detected {
                kind,
                world,
                run,
                sequences,
                at,
            } => write!(
                f,
                "{}  FINDING   {:<17} {world}/{run} sequences {sequences:?}",
                clock(at),
                kind.as_str()
            ),
            Seen::Resolved {
                kind,
                world,
                run,
                sequences,
                at,
            } => write!(
                f,
                "{}  resolved  {:<17} {world}/{run} sequences {sequences:?}",
                clock(at),
                kind.as_str()
            ),
            Seen::Signal {
                action,
                world,
                run,
                episode,
                at,
            } => write!(
                f,
                "{}  SIGNAL    {:<17} {world}/{run} episode {episode}",
                clock(at),
                action.to_uppercase()
            ),
        }
    }
}

/// What the outputs say so far, per world (for the table) and as comparable facts.
#[derive(Default)]
struct View {
    findings: BTreeMap<(FindingKind, String, String, u64), (Millis, Option<Millis>)>,
    signals: BTreeMap<(String, String, String, u32), Millis>,
    paused: BTreeSet<(String, String)>,
    rolled_back: BTreeSet<(String, String)>,
    events: Vec<String>,
}

impl View {
    fn apply(&mut self, seen: &Seen) {
        self.events.push(seen.to_string());
        match seen {
            Seen::Detected {
                kind,
                world,
                run,
                sequences,
                at,
            } => {
                for s in sequences {
                    self.findings
                        .entry((*kind, world.clone(), run.clone(), *s))
                        .or_insert((*at, None));
                }
            }
            Seen::Resolved {
                kind,
                world,
                run,
                sequences,
                at,
            } => {
                for s in sequences {
                    if let Some(f) = self
                        .findings
                        .get_mut(&(*kind, world.clone(), run.clone(), *s))
                    {
                        f.1 = Some(*at);
                    }
                }
            }
            Seen::Signal {
                action,
                world,
                run,
                episode,
                at,
            } => {
                self.signals
                    .insert((action.clone(), world.clone(), run.clone(), *episode), *at);
                let key = (world.clone(), run.clone());
                match action.as_str() {
                    "pause" => {
                        self.paused.insert(key);
                    }
                    "resume" => {
                        self.paused.remove(&key);
                    }
                    _ => {
                        self.paused.remove(&key);
                        self.rolled_back.insert(key);
                    }
                }
            }
        }
    }

    fn table(&self) -> String {
        let mut worlds: BTreeMap<&str, (usize, usize, usize)> = BTreeMap::new();
        for ((_, world, _, _), (_, resolved)) in &self.findings {
            let w = worlds.entry(world).or_default();
            w.0 += 1;
            w.1 += resolved.is_none() as usize;
        }
        for (world, _) in &self.paused {
            worlds.entry(world).or_default().2 += 1;
        }
        let mut rows: Vec<_> = worlds.into_iter().collect();
        rows.sort_by_key(|(w, (all, open, paused))| {
            (std::cmp::Reverse((*paused, *open, *all)), w.to_string())
        });
        let mut out = format!(
            "{:<12} {:>8} {:>6} {:>12}\n",
            "world", "findings", "open", "paused runs"
        );
        for (world, (all, open, paused)) in rows.iter().take(TABLE_WORLDS_MAX) {
            out += &format!("{world:<12} {all:>8} {open:>6} {paused:>12}\n");
        }
        out
    }
}

fn viewer(settings: &Settings) -> anyhow::Result<BaseConsumer> {
    let consumer: BaseConsumer = settings
        .kafka
        .client_config()
        .set("group.id", "ackwatch-demo-viewer")
        .set("enable.auto.commit", "false")
        .create()
        .context("cannot create the demo's output reader")?;
    let mut list = TopicPartitionList::new();
    for topic in [&settings.topics.gap, &settings.topics.signal] {
        list.add_partition_offset(topic, 0, Offset::Beginning)?;
    }
    consumer.assign(&list)?;
    drop(list);
    Ok(consumer)
}

/// The latest moment the truth names: once the wall clock minus `lateness_ms` passes it, every
/// prescribed output is due.
fn last_due(truth: &Truth) -> Millis {
    let findings = truth
        .live_findings
        .iter()
        .flat_map(|f| [Some(f.detected_at_ms), f.resolved_at_ms]);
    let signals = truth.live_signals.iter().map(|s| Some(s.at_ms));
    findings.chain(signals).flatten().max().unwrap_or(0)
}

/// How a demo ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// What ackwatch detected equals the ground truth.
    Exact,
    /// It differs (the summary says where).
    Differs,
    /// Ctrl-C before the last deadlines: the comparison is incomplete.
    Interrupted,
}

/// Runs the demo: an embedded cluster, the processor on it, the simulated producers, and the
/// screen until the last deadline passed (or Ctrl-C); then the comparison with the truth.
pub fn run(options: DemoOptions) -> anyhow::Result<Ended> {
    let faults = Faults::profile(&options.faults).with_context(|| {
        format!(
            "--faults {:?}: not one of {:?}",
            options.faults,
            Faults::PROFILES
        )
    })?;
    let (listen, moved) = super::demo_status::free_listen(&options.http_listen)?;
    if let Some(note) = moved {
        println!("{note}");
    }
    let (mock, _state, settings) = embedded_cluster(&listen)?;
    println!(
        "ackwatch demo: mock Kafka at {}, {} worlds at about {} records/s for {} s, faults \"{}\"; metrics on http://{}/metrics",
        settings.kafka.bootstrap_servers,
        options.worlds,
        options.rate,
        options.duration_ms / 1000,
        options.faults,
        settings.http.listen
    );
    let stop_processor = Arc::new(AtomicBool::new(false));
    let processor = spawn_processor(&settings, stop_processor.clone())?;
    let interrupted = watch_ctrl_c();
    let spec = SimSpec {
        worlds: options.worlds,
        rate: options.rate,
        duration_ms: options.duration_ms,
        start_ms: wall_ms() + 2000,
        seed: options.seed,
        partitions: DEMO_PARTITIONS,
        faults,
        world_prefix: "world_".into(),
        ..SimSpec::default()
    };
    let produced = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let producer = {
        let settings = settings.clone();
        let interrupted = interrupted.clone();
        let produced = produced.clone();
        std::thread::Builder::new()
            .name("demo-producer".into())
            .spawn(move || {
                super::loadgen::produce(&settings, spec, Pacing::AtRecordTime, &interrupted, |p| {
                    produced.store(p.records, Ordering::Relaxed)
                })
            })?
    };
    let consumer = viewer(&settings)?;
    let watched = watch(&settings, &consumer, producer, &produced, &interrupted)?;
    stop_processor.store(true, Ordering::SeqCst);
    let processed = processor
        .join()
        .map_err(|_| anyhow::anyhow!("the processor panicked"))?;
    processed.context("the processor failed")?;
    let Some(truth) = watched.truth else {
        return Ok(Ended::Interrupted);
    };
    let (findings, signals) = closing_comparison(&truth, &watched.view, watched.cut);
    println!(
        "\n{}",
        summary_text(watched.produced, &truth, &findings, &signals)
    );
    drop(consumer);
    drop(mock);
    Ok(if interrupted.load(Ordering::SeqCst) {
        Ended::Interrupted
    } else if findings.is_exact() && signals.is_exact() {
        Ended::Exact
    } else {
        Ended::Differs
    })
}

/// librdkafka's mock cluster with every topic the processor uses (it serves no admin
/// requests, so the demo creates them), a state directory, and the processor's settings.
fn embedded_cluster(
    listen: &str,
) -> anyhow::Result<(
    MockCluster<'static, DefaultProducerContext>,
    tempfile::TempDir,
    Settings,
)> {
    let mock = MockCluster::<'static, DefaultProducerContext>::new(1)
        .context("cannot start librdkafka's mock cluster")?;
    let state = tempfile::tempdir().context("cannot create a state directory")?;
    let mut settings = Settings::default();
    settings.kafka.bootstrap_servers = mock.bootstrap_servers();
    settings.runtime.application_id = "ackwatch-demo".into();
    settings.runtime.state_dir = state.path().to_path_buf();
    settings.runtime.commit_interval_ms = 200;
    settings.http.listen = listen.to_string();
    settings.validate()?;
    let t = &settings.topics;
    for (topic, partitions) in [
        (t.activation.as_str(), DEMO_PARTITIONS),
        (t.ack.as_str(), DEMO_PARTITIONS),
        (t.gap.as_str(), 1),
        (t.signal.as_str(), 1),
        (t.dead_letter.as_str(), 1),
        (
            &crate::runtime::changelog::topic_name(&settings.runtime.application_id),
            DEMO_PARTITIONS,
        ),
    ] {
        mock.create_topic(topic, partitions, 1)
            .with_context(|| format!("cannot create {topic} on the mock cluster"))?;
    }
    Ok((mock, state, settings))
}

type ProcessorThread = std::thread::JoinHandle<anyhow::Result<()>>;
type ProducerThread = std::thread::JoinHandle<anyhow::Result<(super::loadgen::Produced, Truth)>>;

/// The live processor on the embedded cluster, stopped by `stop`.
fn spawn_processor(settings: &Settings, stop: Arc<AtomicBool>) -> anyhow::Result<ProcessorThread> {
    let settings = settings.clone();
    Ok(std::thread::Builder::new()
        .name("demo-processor".into())
        .spawn(move || {
            run_with(
                settings,
                RunOptions {
                    stop: Some(stop),
                    embedded_cluster: true,
                },
            )
        })?)
}

/// A flag set at Ctrl-C.
fn watch_ctrl_c() -> Arc<AtomicBool> {
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    std::thread::spawn(move || {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            rt.block_on(async {
                let _ = tokio::signal::ctrl_c().await;
            });
            flag.store(true, Ordering::SeqCst);
        }
    });
    interrupted
}

/// What the demo saw until it ended.
struct Watched {
    view: View,
    produced: u64,
    truth: Option<Truth>,
    /// Set at Ctrl-C: facts due before it are compared.
    cut: Option<Millis>,
}

/// Shows the outputs as they come until the last deadline of the traffic passed and the output
/// topics went quiet, or (after Ctrl-C) until they went quiet.
fn watch(
    settings: &Settings,
    consumer: &BaseConsumer,
    producer: ProducerThread,
    produced: &std::sync::atomic::AtomicU64,
    interrupted: &AtomicBool,
) -> anyhow::Result<Watched> {
    let terminal = std::io::stdout().is_terminal();
    let started = Instant::now();
    // The status line: at once, then every second on a terminal and every 5 s in a file.
    let status_every = Duration::from_secs(if terminal { 1 } else { 5 });
    let mut last_status: Option<Instant> = None;
    let mut status = String::new();
    let mut watched = Watched {
        view: View::default(),
        produced: 0,
        truth: None,
        cut: None,
    };
    let mut producer = Some(producer);
    let lateness = settings.runtime.lateness_ms as Millis;
    let mut last_draw: Option<Instant> = None;
    let mut last_output = Instant::now();
    loop {
        if watched.cut.is_none() && interrupted.load(Ordering::SeqCst) {
            println!("interrupted: comparing what was due before now");
            watched.cut = Some(wall_ms() - lateness);
        }
        if watched.cut.is_some() && last_output.elapsed() > Duration::from_millis(1500) {
            break;
        }
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            if let Some(seen) = m.payload().and_then(parse_output) {
                last_output = Instant::now();
                if !terminal {
                    println!("{seen}");
                }
                watched.view.apply(&seen);
            }
        }
        if producer.as_ref().is_some_and(|p| p.is_finished()) {
            let joined = producer.take().expect("present").join();
            let (done, truth) = joined.expect("producer thread")?;
            watched.produced = done.records;
            watched.truth = Some(truth);
        }
        if last_status.is_none_or(|at| at.elapsed() >= status_every) {
            last_status = Some(Instant::now());
            let scraped = super::demo_status::scrape(&settings.http.listen);
            let view = &watched.view;
            status = super::demo_status::status_line(
                started.elapsed(),
                produced.load(Ordering::Relaxed).max(watched.produced),
                scraped.as_ref(),
                view.findings.len(),
                view.signals.len(),
            );
            if !terminal {
                println!("{status}");
            }
        }
        if terminal && last_draw.is_none_or(|at| at.elapsed() >= Duration::from_millis(500)) {
            last_draw = Some(Instant::now());
            draw(settings, &watched, &status);
        }
        if let (Some(t), None) = (&watched.truth, watched.cut) {
            let due = last_due(t) + lateness + 1500;
            if wall_ms() > due && last_output.elapsed() > Duration::from_secs(2) {
                break;
            }
        }
    }
    if let Some(p) = producer.take() {
        // Interrupted: the producer stops at its next record; its truth covers what it sent.
        if let Ok(Ok((done, truth))) = p.join() {
            watched.produced = done.records;
            watched.truth = Some(truth);
        }
    }
    Ok(watched)
}

/// Redraws the screen: the newest outputs, the busiest worlds, the counts.
fn draw(settings: &Settings, watched: &Watched, status: &str) {
    let view = &watched.view;
    let shown = view.events.len().saturating_sub(EVENT_LINES_SHOWN_MAX);
    let mut screen = String::from("\x1b[H\x1b[2J");
    screen += &format!(
        "ackwatch demo — findings and signals as ackwatch emits them (metrics: http://{}/metrics)\n\n",
        settings.http.listen
    );
    screen += status;
    screen += "\n\n";
    for line in &view.events[shown..] {
        screen += line;
        screen += "\n";
    }
    screen += "\n";
    screen += &view.table();
    screen += &format!(
        "\n{} findings, {} signals so far{}\n",
        view.findings.len(),
        view.signals.len(),
        if watched.truth.is_some() {
            "; traffic done, waiting for the last deadlines"
        } else {
            ""
        }
    );
    print!("{screen}");
    let _ = std::io::stdout().flush();
}

/// Detected against prescribed; with `cut` (an interrupted demo) only what was due before it:
/// findings detected and signals given before it, resolutions before it.
fn closing_comparison(truth: &Truth, view: &View, cut: Option<Millis>) -> (Comparison, Comparison) {
    let due = |t: Millis| cut.is_none_or(|c| t < c);
    let resolved = |r: Option<Millis>| r.filter(|r| due(*r));
    let (want_findings, want_signals) = truth.facts_until(super::Reading::Live, cut);
    let got_findings = finding_facts(
        view.findings
            .iter()
            .filter(|(_, (d, _))| due(*d))
            .map(|((k, w, r, s), (d, res))| (*k, w.as_str(), r.as_str(), *s, *d, resolved(*res))),
    );
    let got_signals = signal_facts(
        view.signals
            .iter()
            .filter(|(_, at)| due(**at))
            .map(|((a, w, r, e), at)| (a.as_str(), w.as_str(), r.as_str(), *e, *at)),
    );
    (
        compare(&want_findings, &got_findings),
        compare(&want_signals, &got_signals),
    )
}

fn summary_text(
    produced: u64,
    truth: &Truth,
    findings: &Comparison,
    signals: &Comparison,
) -> String {
    let mut out = format!(
        "ground truth comparison ({produced} records produced; {}):\n",
        super::loadgen::truth_summary(truth)
    );
    for (what, c) in [("findings", findings), ("signals", signals)] {
        out += &format!(
            "  {what}: {} detected, {} missed, {} spurious, {} with another time or resolution\n",
            c.detected,
            c.missed.len(),
            c.spurious.len(),
            c.differing.len()
        );
        for line in c.missed.iter().take(5) {
            out += &format!("    missed: {line}\n");
        }
        for line in c.spurious.iter().take(5) {
            out += &format!("    spurious: {line}\n");
        }
        for line in c.differing.iter().take(5) {
            out += &format!("    differing: {line}\n");
        }
    }
    out
}
