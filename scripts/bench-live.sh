#!/usr/bin/env bash
# The live processor on a real broker (BENCHMARKS.md): throughput against a bare rdkafka
# consumer on the same topics, memory with 100,000 runs, detection delay while caught up.
# Starts a broker on 127.0.0.1 unless ACKWATCH_TEST_BOOTSTRAP is set.
#   scripts/bench-live.sh [RECORDS]     (default 1,000,000)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh >/dev/null
if [ -z "${ACKWATCH_TEST_BOOTSTRAP:-}" ]; then
  dir="$(mktemp -d -t ackwatch-bench.XXXXXX)"
  trap 'bash scripts/kafka-broker.sh stop "$dir"; rm -rf "$dir"' EXIT
  ACKWATCH_TEST_BOOTSTRAP="$(bash scripts/kafka-broker.sh start "$dir")"
  export ACKWATCH_TEST_BOOTSTRAP
fi
cargo build --release --quiet --bin ackwatch --example bench_live
"${CARGO_TARGET_DIR:-target}/release/examples/bench_live" "${1:-1000000}"
