#!/usr/bin/env bash
# Runs a benchmark example against a real broker: starts one on 127.0.0.1 (stopped after)
# unless ACKWATCH_TEST_BOOTSTRAP is set, builds the ackwatch binary and the example, runs it.
#   scripts/with-broker.sh EXAMPLE [ARGS...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
example="${1:?usage: with-broker.sh EXAMPLE [ARGS...]}"; shift
bash scripts/setup.sh >/dev/null
if [ -z "${ACKWATCH_TEST_BOOTSTRAP:-}" ]; then
  dir="$(mktemp -d -t ackwatch-bench.XXXXXX)"
  trap 'bash scripts/kafka-broker.sh stop "$dir"; rm -rf "$dir"' EXIT
  ACKWATCH_TEST_BOOTSTRAP="$(bash scripts/kafka-broker.sh start "$dir")"
  export ACKWATCH_TEST_BOOTSTRAP
fi
cargo build --release --quiet --bin ackwatch --example "$example"
"${CARGO_TARGET_DIR:-target}/release/examples/$example" "$@"
