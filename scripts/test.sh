#!/usr/bin/env bash
# Runs keel's whole test suite: unit tests, openraft's storage conformance suite on RocksDB,
# the cluster tests with real keel processes, and the fault suite's short runs. Installs the
# build dependencies it needs (scripts/deps.sh) when run as root on Debian/Ubuntu.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/deps.sh

# Cluster tests start several keel processes each; two at a time fit a 2-core machine.
cargo test --workspace --all-targets -- --test-threads="${KEEL_TEST_THREADS:-2}"

# The README's undermoon walk-through, against a fresh single node built by the tests above.
demo_dir=$(mktemp -d)
"$CARGO_TARGET_DIR/debug/keel" serve --listen 127.0.0.1:7798 --data-dir "$demo_dir/data" \
  >"$demo_dir/keel.log" 2>&1 &
demo_pid=$!
trap 'kill "$demo_pid" 2>/dev/null || true; rm -rf "$demo_dir"' EXIT
for _ in $(seq 1 100); do curl -sf http://127.0.0.1:7798/v1/bootstrap >/dev/null && break; sleep 0.1; done
if ! KEEL=127.0.0.1:7798 scripts/undermoon-demo.sh 2>"$demo_dir/demo.log"; then
  cat "$demo_dir/demo.log" "$demo_dir/keel.log" >&2
  exit 1
fi
kill "$demo_pid"
echo "undermoon demo: ok"

# The fault suite's short mode, about 90 s each (KEEL_SKIP_FAULTS=1 skips them): every fault
# on the default network, then delays through the proxies (the regression run for slow links,
# which once froze replication because RPC deadlines were one heartbeat).
if [[ -z "${KEEL_SKIP_FAULTS:-}" ]]; then
  scripts/faults.sh --short
  scripts/faults.sh --short --net proxy --nemesis delay,partition,kill --seed 5
fi
