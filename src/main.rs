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
    /// Replay retained records (kcat -J files) with fresh state and report what SPEC.md prescribes.
    Audit(AuditArgs),
    /// Run the live processor: join the consumer group, emit gap events, signals and metrics.
    Run(ConfigArgs),
    /// Validate the configuration and the cluster it names (reachable, topics, co-partitioning).
    Check(ConfigArgs),
    /// Print the processing topology (sources, processor, store, sinks).
    Topology(ConfigArgs),
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
        .with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        builder.init();
    } else {
        builder.json().flatten_event(true).init();
    }
}

fn check(args: ConfigArgs) -> anyhow::Result<()> {
    let settings = Settings::load(args.config.as_deref())?;
    println!("ok: configuration is valid");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (_, lines) = runtime.block_on(ackwatch::runtime::check_cluster(&settings, false))?;
    for line in lines {
        println!("{line}");
    }
    Ok(())
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Format {
    Text,
    Json,
}

#[derive(clap::Args)]
struct AuditArgs {
    /// kcat -J files (one record per line); records of both input topics, any partitions.
    #[arg(long = "input", required = true, num_args = 1..)]
    inputs: Vec<PathBuf>,
    /// What to print on standard output.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    /// Also write the JSON report (SPEC §5) to this file.
    #[arg(long)]
    output: Option<PathBuf>,
    /// TOML configuration (the `[policy]` and `[topics]` sections are used).
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    ack_timeout_ms: Option<i64>,
    #[arg(long)]
    gap_timeout_ms: Option<i64>,
    #[arg(long)]
    orphan_timeout_ms: Option<i64>,
    #[arg(long)]
    rollback_after_ms: Option<i64>,
    /// Request rollbacks instead of escalating to an operator.
    #[arg(long)]
    auto_rollback: bool,
    /// The replayed window ends at this RFC 3339 time (e.g. when the live processor stopped):
    /// deadlines before it are findings, not pending_at_end. Default: the largest event time read.
    #[arg(long)]
    end_time: Option<String>,
    /// No progress bar, even on a terminal.
    #[arg(long)]
    quiet: bool,
}

fn audit(args: AuditArgs) -> anyhow::Result<()> {
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
    let end_ms = match &args.end_time {
        Some(t) => Some(ackwatch_topology::time::parse_rfc3339_ms(t).ok_or_else(|| {
            anyhow::anyhow!("--end-time {t:?} is not an RFC 3339 time like 2026-03-02T09:00:00Z")
        })?),
        None => None,
    };
    let report = FileAudit {
        inputs: args.inputs,
        topics: settings.topics,
        policy: settings.policy,
        progress: !args.quiet,
        end_ms,
    }
    .run()?;
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.output {
        std::fs::write(path, &json)
            .map_err(|e| anyhow::anyhow!("cannot write report to {}: {e}", path.display()))?;
    }
    match args.format {
        Format::Json => println!("{json}"),
        Format::Text => print!("{}", summary(&report)),
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Audit(args) => audit(args),
        Command::Run(args) => {
            init_logging();
            Settings::load(args.config.as_deref()).and_then(ackwatch::runtime::run)
        }
        Command::Check(args) => check(args),
        Command::Topology(args) => Settings::load(args.config.as_deref())
            .map(|s| print!("{}", ackwatch::runtime::describe(&s))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
