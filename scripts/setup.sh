#!/usr/bin/env bash
# Installs what ackwatch needs on a fresh Debian machine of this kind, idempotently:
#   - Debian packages: libclang-dev (RocksDB's bindgen), librdkafka's TLS/SASL/OIDC/zstd headers, kcat, prometheus-alertmanager, prometheus (promtool),
#     and the small tools the scripts use (curl, python3, time)
#   - the Apache Kafka broker jars from Maven Central, into a cache directory
# Safe to run repeatedly; each step is skipped when already done.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/env.sh"

need_pkgs=()
command -v kcat >/dev/null 2>&1 || need_pkgs+=(kcat)
command -v prometheus-alertmanager >/dev/null 2>&1 || need_pkgs+=(prometheus-alertmanager)
command -v promtool >/dev/null 2>&1 || need_pkgs+=(prometheus)
dpkg -s libclang-dev >/dev/null 2>&1 || need_pkgs+=(libclang-dev)
# librdkafka's optional parts (Cargo.toml's rdkafka features): TLS, SASL GSSAPI (Kerberos),
# OIDC token fetching, zstd; pkg-config finds them.
for pkg in libssl-dev libsasl2-dev libsasl2-modules-gssapi-mit libcurl4-openssl-dev libzstd-dev zlib1g-dev pkg-config; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_pkgs+=("$pkg")
done
command -v cmake >/dev/null 2>&1 || need_pkgs+=(cmake)
command -v curl >/dev/null 2>&1 || need_pkgs+=(curl)
command -v python3 >/dev/null 2>&1 || need_pkgs+=(python3)
command -v /usr/bin/time >/dev/null 2>&1 || need_pkgs+=(time)
command -v mvn >/dev/null 2>&1 || need_pkgs+=(maven)
command -v java >/dev/null 2>&1 || need_pkgs+=(openjdk-17-jre-headless)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_pkgs[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  # The Debian packages ship services; nothing here starts them (no init in CI), we run them ourselves.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; this machine kind ships Rust via rustup (see README)" >&2
  exit 1
fi

# Kafka broker jars (KRaft, single node) for the real-broker tests.
if [ ! -f "$KAFKA_LIBS/.complete" ]; then
  echo "setup: fetching Apache Kafka $KAFKA_VERSION jars from Maven Central into $KAFKA_LIBS"
  mkdir -p "$KAFKA_LIBS"
  mvn -q -B -f "$here/kafka/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
    dependency:copy-dependencies -DoutputDirectory="$KAFKA_LIBS" -DincludeScope=runtime
  touch "$KAFKA_LIBS/.complete"
fi
echo "setup: ok (kafka $KAFKA_VERSION jars in $KAFKA_LIBS)"
