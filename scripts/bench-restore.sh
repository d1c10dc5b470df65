#!/usr/bin/env bash
# Restore from the changelog on a real broker (BENCHMARKS.md): examples/bench_restore.rs.
#   scripts/bench-restore.sh [RECORDS]     (default 1,000,000)
exec bash "$(dirname "${BASH_SOURCE[0]}")/with-broker.sh" bench_restore "${1:-1000000}"
