#!/usr/bin/env bash
# loadgen's produce rate into a real broker (BENCHMARKS.md, issue #6): a fresh Kafka broker on
# 127.0.0.1, the input topics created by deploy/create-topics.sh (2 partitions), then
# `ackwatch loadgen --no-pace` with 10,000 worlds and the default fault mix for 10 s of traffic
# schedule (about 2,000,000 records), timed by loadgen itself (produce until the broker
# acknowledged every record).
#   scripts/bench-loadgen.sh [extra loadgen arguments]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh >/dev/null
source scripts/env.sh
target="${CARGO_TARGET_DIR:-target}"
cargo build --release --quiet --bin ackwatch
dir="$(mktemp -d -t ackwatch-bench-loadgen.XXXXXX)"
trap 'bash scripts/kafka-broker.sh stop "$dir"; rm -rf "$dir"' EXIT
bootstrap="$(bash scripts/kafka-broker.sh start "$dir")"
KAFKA_TOPICS="java -cp $KAFKA_LIBS/* org.apache.kafka.tools.TopicCommand" \
  bash deploy/create-topics.sh --bootstrap-server "$bootstrap" --partitions 2 --replication-factor 1 >/dev/null
/usr/bin/time -f "loadgen process: %e s wall, %U s user, %S s system, max RSS %M kB" \
  "$target/release/ackwatch" loadgen --bootstrap-servers "$bootstrap" --no-pace \
  --worlds 10000 --rate 200000 --duration 10s --faults default --truth "$dir/truth.json" "$@"
