#!/usr/bin/env bash
# Sets up what is missing, starts one Kafka broker and one Alertmanager on 127.0.0.1 for the
# whole run (unless ACKWATCH_TEST_BOOTSTRAP points at an existing cluster), runs every test of
# the workspace, and stops what it started. Extra arguments go to `cargo test`.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."
bash scripts/setup.sh
# The deploy bundle, offline: rules and their unit tests, manifests against their schemas, ...
bash scripts/check-deploy.sh

run_dir="$(mktemp -d -t ackwatch-test.XXXXXX)"
cleanup() {
  [ -n "${started_kafka:-}" ] && bash scripts/kafka-broker.sh stop "$run_dir/kafka" || true
  [ -n "${started_am:-}" ] && bash scripts/alertmanager.sh stop "$run_dir/alertmanager" || true
  rm -rf "$run_dir"
}
trap cleanup EXIT

if [ -z "${ACKWATCH_TEST_BOOTSTRAP:-}" ]; then
  started_kafka=1
  ACKWATCH_TEST_BOOTSTRAP="$(bash scripts/kafka-broker.sh start "$run_dir/kafka")"
  export ACKWATCH_TEST_BOOTSTRAP ACKWATCH_TEST_KAFKA_DIR="$run_dir/kafka"
fi
if [ -z "${ACKWATCH_TEST_ALERTMANAGER:-}" ]; then
  started_am=1
  ACKWATCH_TEST_ALERTMANAGER="$(bash scripts/alertmanager.sh start "$run_dir/alertmanager")"
  export ACKWATCH_TEST_ALERTMANAGER ACKWATCH_TEST_ALERTMANAGER_DIR="$run_dir/alertmanager"
fi
echo "test: kafka at $ACKWATCH_TEST_BOOTSTRAP, alertmanager at $ACKWATCH_TEST_ALERTMANAGER"
cargo test --release --workspace "$@"
