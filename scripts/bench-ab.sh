#!/usr/bin/env bash
# Interleaved A/B runs of scripts/bench-live.sh with two (or more) ackwatch binaries, as
# BENCHMARKS.md's issue #19 figures were taken: round 1 A, B, round 2 A, B, ... Each run starts
# a fresh broker; the figures go to standard output, each run's log to $OUT (default a temp dir).
#   scripts/bench-ab.sh BINARY_A BINARY_B [...]    (ROUNDS=3, THREADS=1, RECORDS=1000000)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ $# -ge 2 ] || { echo "usage: scripts/bench-ab.sh BINARY_A BINARY_B [...]" >&2; exit 2; }
out="${OUT:-$(mktemp -d -t ackwatch-ab.XXXXXX)}"
unset ACKWATCH_TEST_BOOTSTRAP
for round in $(seq 1 "${ROUNDS:-3}"); do
  for binary in "$@"; do
    echo "=== round $round $binary $(date -u +%H:%M:%S)"
    ACKWATCH_BENCH_BINARY="$binary" ACKWATCH_BENCH_THREADS="${THREADS:-1}" \
      bash scripts/bench-live.sh "${RECORDS:-1000000}" 2>"$out/round-$round-$(basename "$binary").log"
  done
done
