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
    let report = FileAudit { inputs: args.inputs, topics: settings.topics, policy: settings.policy, progress: !args.quiet }.run()?;
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.output {
        std::fs::write(path, &json).map_err(|e| anyhow::anyhow!("cannot write report to {}: {e}", path.display()))?;
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
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
