#!/usr/bin/env bash
# The live processor on a real broker (BENCHMARKS.md): throughput against a bare rdkafka
# consumer on the same topics, memory with 100,000 runs, detection delay while caught up.
#   scripts/bench-live.sh [RECORDS]     (default 1,000,000)
exec bash "$(dirname "${BASH_SOURCE[0]}")/with-broker.sh" bench_live "${1:-1000000}"
