# Shared settings for ackwatch's scripts; sourced, not run.
export KAFKA_VERSION="${KAFKA_VERSION:-4.1.1}"
export ACKWATCH_CACHE="${ACKWATCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ackwatch}"
# Bump the suffix when scripts/kafka/pom.xml changes, so every machine refetches.
export KAFKA_LIBS="$ACKWATCH_CACHE/kafka-$KAFKA_VERSION-r2/libs"
