use std::path::PathBuf;
use std::process::ExitCode;

use ackwatch::audit::{summary, FileAudit};
use ackwatch::settings::Settings;
use clap::{Parser, Subcommand, ValueEnum};

#[global_allocator]
static GLOBAL: ackwatch::Allocator = mimalloc::MiMalloc;

/// ackwatch watches ControlBus activation ACKs: missing ACKs, sequence gaps, orphan ACKs and
/// conflicts, ACK latency, and pause/rollback/resume signals for WorldService.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replay retained records (kcat -J files, or a cluster over a time window) with fresh state
    /// and report what docs/semantics.md prescribes (and, for a cluster, where live outputs differ).
    Audit(AuditArgs),
    /// Run the live processor: join the consumer group, emit gap events, signals and metrics.
    Run(ConfigArgs),
    /// Validate the configuration and the cluster it names (reachable, topics, co-partitioning).
    Check(ConfigArgs),
    /// Print the processing topology (sources, processor, store, sinks).
    Topology(ConfigArgs),
    /// Produce simulated WorldService and Gateway traffic with known faults, and its ground truth.
    Loadgen(LoadgenArgs),
    /// See ackwatch work on an embedded Kafka: simulated traffic with faults, the live processor,
    /// findings and signals as they happen, and a comparison with the ground truth at the end.
    Demo(DemoArgs),
}

#[derive(clap::Args)]
struct SimArgs {
    /// Worlds, each running apply runs back to back.
    #[arg(long, default_value_t = 100)]
    worlds: usize,
    /// Records per second over all worlds (activations and ACKs).
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// How long new apply runs start (e.g. 30s, 5m); the runs under way then finish.
    #[arg(long, default_value = "60s")]
    duration: String,
    /// Fault profile: none, default, heavy, duplicates.
    #[arg(long, default_value = "default")]
    faults: String,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Gateways acknowledging (each with its own clock skew).
    #[arg(long, default_value_t = 2)]
    gateways: u32,
    /// Faults at given sequences, in addition to (and instead of) the profile's random ones:
    /// a JSON array of {"world": 3, "run": 0, "sequence": 2, "fault": "dropped_ack"}.
    #[arg(long)]
    fault_script: Option<PathBuf>,
}

#[derive(clap::Args)]
struct LoadgenArgs {
    #[command(flatten)]
    sim: SimArgs,
    /// Produce to this cluster (topics from --config, or the defaults).
    #[arg(long, visible_alias = "bootstrap-server", conflicts_with = "output", required_unless_present = "output")]
    bootstrap_servers: Option<String>,
    /// Write kcat -J lines to this file instead of producing.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Partitions of the file's records (a cluster's topics say how many they have).
    #[arg(long, default_value_t = 1)]
    partitions: i32,
    /// Write the ground truth (the findings and signals the injected faults call for) to this JSON file.
    #[arg(long)]
    truth: Option<PathBuf>,
    /// Produce as fast as possible instead of at the records' timestamps.
    #[arg(long)]
    no_pace: bool,
    /// Event time of the first record (RFC 3339, or `-1h` for an hour ago). Default: now.
    #[arg(long, allow_hyphen_values = true)]
    start_time: Option<String>,
    /// TOML configuration: [topics], [policy] (the truth follows it) and [kafka.properties].
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(clap::Args)]
struct DemoArgs {
    /// How long new apply runs start; the demo ends once their last deadlines passed.
    #[arg(long, default_value = "30s")]
    duration: String,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Fault profile: none, default, heavy, duplicates.
    #[arg(long, default_value = "heavy")]
    faults: String,
    #[arg(long, default_value_t = 8)]
    worlds: usize,
    /// Records per second (the mock cluster keeps only the newest records; keep this modest).
    #[arg(long, default_value_t = 80)]
    rate: u64,
    /// Where the processor serves /metrics, /healthz, /readyz, /runs.
    #[arg(long, default_value = "127.0.0.1:9464")]
    http: String,
}

#[derive(clap::Args)]
struct ConfigArgs {
    /// TOML configuration; `ACKWATCH__SECTION__KEY` environment variables override it.
    #[arg(long)]
    config: Option<PathBuf>,
}

fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,librdkafka=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(ackwatch::secrets::stderr);
    if std::io::stderr().is_terminal() {
        builder.init();
    } else {
        builder.json().flatten_event(true).init();
    }
}

/// The demo's screen is for findings: the processor logs only warnings unless RUST_LOG says.
/// Colour only on a terminal: redirected to a file, the lines carry no ANSI codes.
fn init_logging_quiet() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "warn,librdkafka=error".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(ackwatch::secrets::stderr)
        .init();
}

/// The C libraries' allocations (librdkafka's queues and buffers, RocksDB's) go through glibc's
/// malloc, which gives each thread that allocates an arena of its own (up to 8 per core) and
/// keeps what was freed in them. With two arenas the RSS after a catch-up of a million runs
/// varied less (three runs each: 276–289 MiB against 263–307 MiB; BENCHMARKS.md); the few
/// threads that allocate often do not contend. Rust's own allocations use mimalloc and are not affected. An
/// operator's `MALLOC_ARENA_MAX` wins.
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called before any thread starts.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

/// `ackwatch check`: every problem of the configuration's world in one run (the configuration
/// itself first: without it nothing else can be checked).
fn check(args: ConfigArgs) -> anyhow::Result<()> {
    let settings = Settings::load(args.config.as_deref())?;
    println!("ok: configuration is valid");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut lines, mut problems) = runtime.block_on(ackwatch::runtime::inspect_local(&settings));
    match runtime.block_on(ackwatch::runtime::inspect_cluster(
        &settings,
        ackwatch::runtime::ChangelogCheck::Report,
    )) {
        Ok(found) => {
            lines.extend(found.lines);
            problems.extend(found.problems);
        }
        Err(e) => problems.push(format!("{e:#}")),
    }
    for line in &lines {
        println!("{}", ackwatch::secrets::scrub(line));
    }
    for problem in &problems {
        println!("problem: {}", ackwatch::secrets::scrub(problem));
    }
    if !problems.is_empty() {
        anyhow::bail!("{} problem(s) found (listed above)", problems.len());
    }
    Ok(())
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Format {
    Text,
    Json,
    /// A self-contained page (timelines, latency by phase, tables); best with --output.
    Html,
}

/// A policy flag's value: milliseconds, or a duration like `3s`, `5m`.
fn policy_duration_ms(text: &str) -> Result<i64, String> {
    ackwatch_topology::time::parse_duration_ms(text, 1)
}

#[derive(clap::Args)]
struct AuditArgs {
    /// kcat -J files (one record per line); records of both input topics, any partitions.
    #[arg(long = "input", num_args = 1.., required_unless_present = "bootstrap_servers", conflicts_with = "bootstrap_servers")]
    inputs: Vec<PathBuf>,
    /// Audit the retained topics of this cluster instead (with --from and --to); no consumer
    /// group is joined and no offset committed. Live outputs in the window are compared too.
    #[arg(long, visible_alias = "bootstrap-server", requires_all = ["from", "to"])]
    bootstrap_servers: Option<String>,
    /// Start of the cluster window: an RFC 3339 time, `now`, or a duration before now (`-10m`);
    /// findings and signals are reported from here.
    #[arg(long, allow_hyphen_values = true)]
    from: Option<String>,
    /// End of the cluster window (the same forms as --from, e.g. `now`); the replay ends here,
    /// as live stream time did.
    #[arg(long, allow_hyphen_values = true)]
    to: Option<String>,
    /// Records read before --from so runs that began earlier are understood (e.g. 5m, 1h).
    #[arg(long, default_value = "5m")]
    warmup: String,
    /// Only this world's records (cluster audits); with --run, the world of the run explained.
    #[arg(long)]
    world: Option<String>,
    /// Explain one run: print its timeline (every record, deadline, finding and signal, in
    /// order) after the report's headline; with --format json, the report's `timeline`.
    #[arg(long, requires = "world")]
    run: Option<String>,
    /// What to print on standard output.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    /// Also write the JSON report (docs/semantics.md §6) to this file.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Exit with status 3 when the report has findings (`findings`), open findings at the end
    /// (`open`), or never; a warning that the input is one-sided fails `findings` and `open`.
    #[arg(long, value_enum, default_value = "never")]
    fail_on: ackwatch::audit::FailOn,
    /// TOML configuration (the `[policy]` and `[topics]` sections are used).
    #[arg(long)]
    config: Option<PathBuf>,
    /// An activation without an ACK after this long is `ack_missing` (milliseconds, or e.g. 3s;
    /// default: the configuration's policy.ack_timeout_ms, 3000).
    #[arg(long, value_parser = policy_duration_ms)]
    ack_timeout_ms: Option<i64>,
    /// A sequence missing this long after a later one is `activation_gap` (ms, or e.g. 3s).
    #[arg(long, value_parser = policy_duration_ms)]
    gap_timeout_ms: Option<i64>,
    /// An ACK without its activation after this long is `orphan_ack` (ms, or e.g. 3s).
    #[arg(long, value_parser = policy_duration_ms)]
    orphan_timeout_ms: Option<i64>,
    /// A paused run still failing this long after the pause is rolled back or escalated (ms,
    /// or e.g. 30s).
    #[arg(long, value_parser = policy_duration_ms)]
    rollback_after_ms: Option<i64>,
    /// Request rollbacks instead of escalating to an operator.
    #[arg(long)]
    auto_rollback: bool,
    /// The replayed window ends at this time (RFC 3339, `now`, or `-10m`; e.g. when the live
    /// processor stopped): deadlines before it are findings, not pending_at_end. Default: the
    /// largest event time read.
    #[arg(long, allow_hyphen_values = true)]
    end_time: Option<String>,
    /// No progress bar, even on a terminal.
    #[arg(long)]
    quiet: bool,
}

/// The wall clock, for relative times on the command line.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A time flag's value (RFC 3339, `now`, `-10m`), read against one `now` per invocation.
fn time_flag(flag: &str, value: &str, now_ms: i64) -> anyhow::Result<i64> {
    ackwatch_topology::time::parse_time_ms(value, now_ms).map_err(|e| anyhow::anyhow!("{flag}: {e}"))
}

/// An audit made: `Some(why)` when its report meets `--fail-on`.
type Verdict = Option<String>;

fn audit(args: AuditArgs) -> anyhow::Result<Verdict> {
    let mut settings = Settings::load(args.config.as_deref())?;
    let policy = &mut settings.policy;
    if let Some(v) = args.ack_timeout_ms {
        policy.ack_timeout_ms = v;
    }
    if let Some(v) = args.gap_timeout_ms {
        policy.gap_timeout_ms = v;
    }
    if let Some(v) = args.orphan_timeout_ms {
        policy.orphan_timeout_ms = v;
    }
    if let Some(v) = args.rollback_after_ms {
        policy.rollback_after_ms = v;
    }
    policy.auto_rollback |= args.auto_rollback;
    policy.validate()?;
    let now = now_ms();
    let end_ms = match &args.end_time {
        Some(t) => Some(time_flag("--end-time", t, now)?),
        None => None,
    };
    if let Some(bootstrap) = &args.bootstrap_servers {
        return cluster_audit(&args, settings, bootstrap.clone(), now);
    }
    anyhow::ensure!(
        args.world.is_none() || args.run.is_some(),
        "--world alone selects a cluster audit's records; with --input, name a run too (--world W --run R) to print its timeline"
    );
    let run = args
        .world
        .as_deref()
        .zip(args.run.as_deref())
        .map(|(w, r)| ackwatch_topology::RunKey::new(w, r));
    let mut latencies: std::collections::BTreeMap<&'static str, Vec<u64>> = Default::default();
    let audited = FileAudit {
        inputs: args.inputs.clone(),
        topics: settings.topics.clone(),
        policy: settings.policy,
        progress: !args.quiet,
        end_ms,
    }
    .run_explained(run, &mut |output| {
        if let ackwatch_topology::Output::Latency { phase, ms, .. } = output {
            latencies.entry(phase.as_str()).or_default().push(*ms);
        }
    })?;
    let report = &audited.report;
    let mut provenance =
        ackwatch::audit::provenance::Provenance::new(settings.policy, &settings.topics);
    provenance.inputs = audited.inputs.clone();
    provenance.end_time = end_ms.map(ackwatch_topology::time::format_rfc3339_ms);
    provenance.world_id = args.world.clone();
    provenance.run_id = args.run.clone();
    let latency_by_phase = latencies
        .into_iter()
        .map(|(p, s)| (p.to_string(), ackwatch::audit::cluster::histogram(&s)))
        .collect();
    let timeline = audited.timeline.as_ref();
    let html = || {
        ackwatch::audit::html::render(&ackwatch::audit::html::Page {
            title: "ackwatch audit".into(),
            subtitle: format!(
                "replay of {}",
                args.inputs
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            provenance: &provenance,
            report,
            latency_by_phase: &latency_by_phase,
            live: None,
            timeline,
        })
    };
    let json = || {
        serde_json::to_string_pretty(&ackwatch::audit::FileReport {
            provenance: &provenance,
            report,
            timeline,
        })
    };
    let text = || {
        let mut s = provenance.text();
        s += &summary(report);
        if let Some(t) = timeline {
            s += &t.text();
        }
        s
    };
    let short = || {
        let mut s = ackwatch::audit::short_summary(report);
        if let Some(t) = timeline {
            s += &t.text();
        }
        s
    };
    write_outputs(&args, json, html, text, short)?;
    // Loud in every format: also on standard error, whatever went to standard output.
    for warning in &report.warnings {
        eprintln!("warning: {warning}");
    }
    Ok(ackwatch::audit::failed(args.fail_on, report))
}

/// `--output` gets the JSON report, or the page with `--format html`; standard output gets
/// what `--format` says (with the page in a file: a short summary, not the whole report).
fn write_outputs(
    args: &AuditArgs,
    json: impl Fn() -> serde_json::Result<String>,
    html: impl Fn() -> String,
    text: impl Fn() -> String,
    short: impl Fn() -> String,
) -> anyhow::Result<()> {
    if let Some(path) = &args.output {
        let content = if args.format == Format::Html {
            html()
        } else {
            json()?
        };
        std::fs::write(path, content)
            .map_err(|e| anyhow::anyhow!("cannot write report to {}: {e}", path.display()))?;
    }
    match args.format {
        Format::Json => println!("{}", json()?),
        Format::Text => print!("{}", text()),
        Format::Html if args.output.is_none() => print!("{}", html()),
        Format::Html => print!(
            "{}page written to {}\n",
            short(),
            args.output.as_deref().expect("matched above").display()
        ),
    }
    Ok(())
}

fn cluster_audit(
    args: &AuditArgs,
    mut settings: Settings,
    bootstrap: String,
    now: i64,
) -> anyhow::Result<Verdict> {
    let time = |flag: &str, value: &Option<String>| -> anyhow::Result<i64> {
        time_flag(flag, value.as_deref().unwrap_or_default(), now)
    };
    settings.kafka.bootstrap_servers = bootstrap;
    let audit = ackwatch::audit::cluster::ClusterAudit {
        from_ms: time("--from", &args.from)?,
        to_ms: time("--to", &args.to)?,
        warmup_ms: ackwatch::sim::loadgen::parse_duration_ms(&args.warmup)
            .map_err(|e| anyhow::anyhow!("--warmup: {e}"))?,
        world: args.world.clone(),
        run: args.run.clone(),
        warmup: args.warmup.clone(),
        progress: !args.quiet,
        settings,
    };
    let result = audit.run()?;
    let html = || {
        ackwatch::audit::html::render(&ackwatch::audit::html::Page {
            title: "ackwatch cluster audit".into(),
            subtitle: format!(
                "{} to {} on {} (read from {}){}",
                result.window.from,
                result.window.to,
                audit.settings.kafka.bootstrap_servers,
                result.window.read_from,
                result
                    .window
                    .world_id
                    .as_deref()
                    .map_or(String::new(), |w| format!(", world {w}"))
            ),
            provenance: &result.provenance,
            report: &result.report,
            latency_by_phase: &result.latency_by_phase,
            live: Some((
                result.live_outputs_compared,
                &result.live_differences,
                result.live_differences_total,
            )),
            timeline: result.timeline.as_ref(),
        })
    };
    let text = || {
        let mut s = result.provenance.text();
        s += &ackwatch::audit::cluster::summary(&result);
        if let Some(t) = &result.timeline {
            s += &t.text();
        }
        s
    };
    let short = || {
        let mut s = ackwatch::audit::short_summary(&result.report);
        s += &format!(
            "live outputs in the window: {} compared, {} differences from the replay\n",
            result.live_outputs_compared, result.live_differences_total
        );
        if let Some(t) = &result.timeline {
            s += &t.text();
        }
        s
    };
    write_outputs(
        args,
        || serde_json::to_string_pretty(&result),
        html,
        text,
        short,
    )?;
    for warning in &result.report.warnings {
        eprintln!("warning: {warning}");
    }
    Ok(ackwatch::audit::failed(args.fail_on, &result.report))
}

fn sim_spec(
    args: &SimArgs,
    settings: &Settings,
    start_ms: i64,
    partitions: i32,
) -> anyhow::Result<ackwatch::sim::SimSpec> {
    use ackwatch::sim::{Faults, SimSpec};
    Ok(SimSpec {
        worlds: args.worlds,
        rate: args.rate,
        duration_ms: ackwatch::sim::loadgen::parse_duration_ms(&args.duration)
            .map_err(|e| anyhow::anyhow!("--duration: {e}"))?,
        start_ms,
        seed: args.seed,
        partitions,
        faults: Faults::profile(&args.faults).ok_or_else(|| {
            anyhow::anyhow!(
                "--faults {:?}: not one of {:?}",
                args.faults,
                Faults::PROFILES
            )
        })?,
        gateways: args.gateways,
        world_prefix: "world_".into(),
        policy: settings.policy,
        script: match &args.fault_script {
            Some(path) => ackwatch::sim::parse_script(
                &std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("--fault-script {}: {e}", path.display()))?,
            )?,
            None => Default::default(),
        },
    })
}

fn loadgen(args: LoadgenArgs) -> anyhow::Result<()> {
    use ackwatch::sim::loadgen;
    let mut settings = Settings::load(args.config.as_deref())?;
    let start_ms = match &args.start_time {
        Some(t) => time_flag("--start-time", t, now_ms())?,
        None => now_ms(),
    };
    let (done, truth) = if let Some(path) = &args.output {
        let spec = sim_spec(&args.sim, &settings, start_ms, args.partitions)?;
        loadgen::write_kcat(path, spec)?
    } else {
        settings.kafka.bootstrap_servers =
            args.bootstrap_servers.clone().expect("required by clap");
        let partitions = loadgen::input_partitions(&settings)?;
        let spec = sim_spec(&args.sim, &settings, start_ms, partitions)?;
        let stop = std::sync::atomic::AtomicBool::new(false);
        let pacing = if args.no_pace {
            loadgen::Pacing::FlatOut
        } else {
            loadgen::Pacing::AtRecordTime
        };
        loadgen::produce(&settings, spec, pacing, &stop, |p| {
            eprintln!("loadgen: {} records, {:.0} records/s", p.records, p.rate())
        })?
    };
    println!(
        "loadgen: {} records ({} MiB of values) in {:.2} s: {:.0} records/s",
        done.records,
        done.bytes >> 20,
        done.elapsed.as_secs_f64(),
        done.rate()
    );
    println!("{}", loadgen::truth_summary(&truth));
    for entry in &truth.script_unapplied {
        eprintln!("loadgen: scripted fault (world run sequence) {entry} did not apply: no such sequence in the traffic, or a lost first sequence at the start (exempt, semantics §2)");
    }
    if let Some(path) = &args.truth {
        loadgen::write_truth(path, &truth)?;
        println!("truth written to {}", path.display());
    }
    Ok(())
}

fn demo(args: DemoArgs) -> anyhow::Result<ackwatch::sim::demo::Ended> {
    ackwatch::sim::demo::run(ackwatch::sim::demo::DemoOptions {
        duration_ms: ackwatch::sim::loadgen::parse_duration_ms(&args.duration)
            .map_err(|e| anyhow::anyhow!("--duration: {e}"))?,
        seed: args.seed,
        faults: args.faults,
        worlds: args.worlds,
        rate: args.rate,
        http_listen: args.http,
    })
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Audit(args) => match audit(args) {
            Ok(Some(why)) => {
                eprintln!(
                    "audit: --fail-on: {why}; exit status {}",
                    ackwatch::audit::AUDIT_FAILED_EXIT
                );
                return ExitCode::from(ackwatch::audit::AUDIT_FAILED_EXIT);
            }
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        },
        Command::Run(args) => {
            init_logging();
            Settings::load(args.config.as_deref()).and_then(ackwatch::runtime::run)
        }
        Command::Check(args) => check(args),
        Command::Topology(args) => Settings::load(args.config.as_deref())
            .map(|s| print!("{}", ackwatch::runtime::describe(&s))),
        Command::Loadgen(args) => loadgen(args),
        Command::Demo(args) => {
            init_logging_quiet();
            match demo(args) {
                Ok(ackwatch::sim::demo::Ended::Exact) => Ok(()),
                Ok(ackwatch::sim::demo::Ended::Differs) => Err(anyhow::anyhow!(
                    "what ackwatch detected differs from the ground truth (see above)"
                )),
                Ok(ackwatch::sim::demo::Ended::Interrupted) => {
                    eprintln!("demo interrupted: the comparison above covers only what was due");
                    return ExitCode::from(130);
                }
                Err(e) => Err(e),
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", ackwatch::secrets::scrub(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}
