//! Writes synthetic ControlBus traffic as kcat -J lines to stdout, for the audit benchmark:
//! `cargo run --release --example gen_kcat -- RECORDS [CONCURRENT_RUNS] [FAULT_PERCENT] [SEED]`.

use std::io::{BufWriter, Write};

use ackwatch::sim::{generate, TrafficSpec};

fn main() -> std::io::Result<()> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numeric arguments"))
        .collect();
    let spec = TrafficSpec {
        records: args.first().copied().unwrap_or(1_000_000) as usize,
        concurrent_runs: args.get(1).copied().unwrap_or(10_000) as usize,
        fault_percent: args.get(2).copied().unwrap_or(5),
        seed: args.get(3).copied().unwrap_or(1),
        ..TrafficSpec::default()
    };
    let mut out = BufWriter::new(std::io::stdout().lock());
    for record in generate(&spec) {
        serde_json::to_writer(&mut out, &record)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}
