#!/usr/bin/env bash
# Creates every topic ackwatch reads and writes, when missing, with its partition count, cleanup
# policy and retention; then checks that the two input topics are co-partitioned (docs/semantics.md §1).
# Existing topics are left as they are (the inputs belong to WorldService and the Gateways).
#
#   deploy/create-topics.sh --bootstrap-server HOST:PORT [--partitions N] [--replication-factor R]
#                           [--command-config CLIENT.properties]
#
# Topic names and retentions come from the environment (defaults = ackwatch's defaults):
#   ACTIVATION_TOPIC=activation  ACK_TOPIC=control.activation.ack  GAP_TOPIC=control.activation.gap
#   SIGNAL_TOPIC=control.activation.signal  DLQ_TOPIC=ackwatch.dlq  APPLICATION_ID=ackwatch
#   INPUT_RETENTION_MS (7 days: `ackwatch audit` can only prove what is retained; the RFC's Q4
#   leaves 1 h vs 24 h open, and an audit a week later needs more), OUTPUT_RETENTION_MS (30 days:
#   gap events and signals are the record of what ackwatch did), DLQ_RETENTION_MS (14 days).
# KAFKA_TOPICS is the kafka-topics command to use (default: kafka-topics.sh on PATH).
set -euo pipefail

bootstrap="" partitions=6 replication=3 command_config=()
while [ $# -gt 0 ]; do
  case "$1" in
    --bootstrap-server) bootstrap="$2"; shift 2 ;;
    --partitions) partitions="$2"; shift 2 ;;
    --replication-factor) replication="$2"; shift 2 ;;
    --command-config) command_config=(--command-config "$2"); shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "create-topics: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ -n "$bootstrap" ] || { echo "create-topics: --bootstrap-server is required" >&2; exit 2; }
[[ "$partitions" =~ ^[1-9][0-9]*$ ]] || { echo "create-topics: --partitions must be a positive integer" >&2; exit 2; }

read -r -a kafka_topics <<< "${KAFKA_TOPICS:-kafka-topics.sh}"
activation="${ACTIVATION_TOPIC:-activation}"
ack="${ACK_TOPIC:-control.activation.ack}"
gap="${GAP_TOPIC:-control.activation.gap}"
signal="${SIGNAL_TOPIC:-control.activation.signal}"
dlq="${DLQ_TOPIC:-ackwatch.dlq}"
changelog="${APPLICATION_ID:-ackwatch}-runs-changelog"
input_retention="${INPUT_RETENTION_MS:-604800000}"
output_retention="${OUTPUT_RETENTION_MS:-2592000000}"
dlq_retention="${DLQ_RETENTION_MS:-1209600000}"

topics() { "${kafka_topics[@]}" --bootstrap-server "$bootstrap" "${command_config[@]}" "$@"; }

create() { # name, then --config key=value ...
  local name="$1"; shift
  echo "create-topics: $name"
  topics --create --if-not-exists --topic "$name" --partitions "$partitions" \
    --replication-factor "$replication" "$@"
}

# Inputs: keyed by world_id, co-partitioned, time-retained for audits.
create "$activation" --config cleanup.policy=delete --config retention.ms="$input_retention"
create "$ack" --config cleanup.policy=delete --config retention.ms="$input_retention"
# Outputs, keyed by world_id.
create "$gap" --config cleanup.policy=delete --config retention.ms="$output_retention"
create "$signal" --config cleanup.policy=delete --config retention.ms="$output_retention"
create "$dlq" --config cleanup.policy=delete --config retention.ms="$dlq_retention"
# ackwatch's changelog: one partition per input partition, compacted (latest state per run;
# tombstones of dropped runs kept a day so a restoring instance sees them). ackwatch creates it
# itself when missing; creating it here lets an operator pick its replication up front.
create "$changelog" --config cleanup.policy=compact --config delete.retention.ms=86400000 \
  --config min.compaction.lag.ms=60000

count() { topics --describe --topic "$1" | sed -n 's/.*PartitionCount: *\([0-9]*\).*/\1/p' | head -1; }
a="$(count "$activation")" k="$(count "$ack")" c="$(count "$changelog")"
if [ "$a" != "$k" ]; then
  echo "create-topics: $activation has $a partitions but $ack has $k: ackwatch needs them co-partitioned (same count)" >&2
  exit 1
fi
if [ "$c" != "$a" ]; then
  echo "create-topics: $changelog has $c partitions but the inputs have $a: ackwatch refuses to start with it; delete it (ackwatch recreates it and restores from scratch) or restore the input partition count" >&2
  exit 1
fi
echo "create-topics: ok ($activation and $ack co-partitioned with $a partitions)"
