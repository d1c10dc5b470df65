#!/usr/bin/env bash
# Renders an audit page and takes a screenshot of it with headless Chromium (Debian's chromium
# package, installed here when missing), so the page can be looked at as a picture:
#   bash scripts/screenshot-audit.sh [INPUT.kcat.jsonl] [OUT.png]
# Default input: the blocked-ACKs scenario of tests/fixtures (findings, signals, latency by
# phase); default output: target/audit-page.png. Uses the release binary (cargo build --release).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."
input="${1:-tests/fixtures/scenarios/blocked_acks.kcat.jsonl}"
png="${2:-${CARGO_TARGET_DIR:-target}/audit-page.png}"
if ! command -v chromium >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
cargo build --release --bin ackwatch -q
bin="${CARGO_TARGET_DIR:-target}/release/ackwatch"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$bin" audit --input "$input" --format html --output "$work/audit.html"
mkdir -p "$(dirname "$png")"
# Without the background-networking flags Chromium keeps trying hosts this machine cannot reach.
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$work/profile" --hide-scrollbars --window-size=1280,2400 \
  --screenshot="$png" "file://$work/audit.html" 2>"$work/chromium.log" \
  || { cat "$work/chromium.log" >&2; exit 1; }
echo "screenshot: $png"
