#!/usr/bin/env bash
# `ackwatch audit` end to end on a synthetic kcat -J file (CloudEvents envelopes, 10,000
# concurrently open runs, 5% faults): records/s and peak RSS, as BENCHMARKS.md reports them.
#   scripts/bench-audit.sh [RECORDS]     (default 1,000,000)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
records="${1:-1000000}"
bash scripts/setup.sh >/dev/null
cargo build --release --quiet --bin ackwatch --example gen_kcat
target="${CARGO_TARGET_DIR:-target}/release"
file="$(mktemp -t ackwatch-bench.XXXXXX.jsonl)"
trap 'rm -f "$file"' EXIT
"$target/examples/gen_kcat" "$records" 10000 5 1 > "$file"
lines=$(wc -l < "$file"); bytes=$(stat -c %s "$file")
echo "input: $lines records, $((bytes / 1048576)) MiB"
/usr/bin/time -f "%e s elapsed, %M KiB peak RSS" "$target/ackwatch" audit --quiet --input "$file" --format json --output /dev/null > /dev/null 2> "$file.time"
cat "$file.time"
secs=$(awk '{print $1; exit}' "$file.time")
python3 -c "print(f'audit: {int($lines / $secs):,} records/s')"
rm -f "$file.time"
