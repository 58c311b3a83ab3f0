#!/usr/bin/env bash
# Runs keel: with no arguments, a ready single-node cluster on 127.0.0.1:7799 with its data in
# ./keel-data. Arguments go to `keel serve` (see `scripts/run.sh --help`). Installs the build
# dependencies first when run as root on a fresh machine; the first build compiles RocksDB.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
source "$here/scripts/deps.sh"
cargo build --release --quiet --manifest-path "$here/Cargo.toml" --bin keel
exec "$CARGO_TARGET_DIR/release/keel" serve "$@"
