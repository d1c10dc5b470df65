#!/usr/bin/env bash
# Failover time on a real broker (BENCHMARKS.md): examples/bench_failover.rs, kill -9 of an
# owner holding 100,000 runs to the first record its successor processes.
#   scripts/bench-failover.sh     (ACKWATCH_BENCH_SCENARIOS, ACKWATCH_BENCH_RUNS, ACKWATCH_BENCH_SESSION_MS)
exec bash "$(dirname "${BASH_SOURCE[0]}")/with-broker.sh" bench_failover
