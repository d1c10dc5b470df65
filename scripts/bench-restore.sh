#!/usr/bin/env bash
# Restore from the changelog on a real broker (BENCHMARKS.md): starts a broker on 127.0.0.1
# unless ACKWATCH_TEST_BOOTSTRAP is set, then runs examples/bench_restore.rs.
#   scripts/bench-restore.sh [RECORDS]     (default 1,000,000)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh >/dev/null
if [ -z "${ACKWATCH_TEST_BOOTSTRAP:-}" ]; then
  dir="$(mktemp -d -t ackwatch-bench.XXXXXX)"
  trap 'bash scripts/kafka-broker.sh stop "$dir"; rm -rf "$dir"' EXIT
  ACKWATCH_TEST_BOOTSTRAP="$(bash scripts/kafka-broker.sh start "$dir")"
  export ACKWATCH_TEST_BOOTSTRAP
fi
cargo run --release --quiet --example bench_restore -- "${1:-1000000}"
