#!/bin/sh
# Writes empty stand-ins for every crate root and declared target of the workspace in the
# current directory, which holds only the manifests and Cargo.lock, so that `cargo build`
# builds the dependencies (RocksDB, librdkafka) alone. deploy/Dockerfile runs it in its
# dependency layer, which is then reused until a manifest or the lock file changes;
# scripts/check-deploy.sh runs it on a copy of the manifests and asks cargo to load the result.
set -eu
mkdir -p src topology/src state/src benches
printf 'fn main() {}\n' > src/main.rs
: > src/lib.rs
: > topology/src/lib.rs
: > state/src/lib.rs
# Every [[bench]] of the root manifest (cargo refuses a workspace with a declared target missing).
sed -n '/^\[\[bench\]\]/,/^name/s/^name *= *"\(.*\)"/\1/p' Cargo.toml | while read -r bench; do
  printf 'fn main() {}\n' > "benches/$bench.rs"
done
