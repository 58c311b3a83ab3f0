#!/usr/bin/env bash
# Runs keel's whole test suite: unit tests, openraft's storage conformance suite on RocksDB,
# the cluster tests with real keel processes, and the fault suite's short runs. Installs the
# build dependencies it needs (scripts/deps.sh) when run as root on Debian/Ubuntu.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/deps.sh

# Cluster tests start several keel processes each; two at a time fit a 2-core machine.
cargo test --workspace --all-targets -- --test-threads="${KEEL_TEST_THREADS:-2}"

# The fault suite's short mode, about 90 s each (KEEL_SKIP_FAULTS=1 skips them): every fault
# on the default network, then delays through the proxies (the regression run for slow links,
# which once froze replication because RPC deadlines were one heartbeat).
if [[ -z "${KEEL_SKIP_FAULTS:-}" ]]; then
  scripts/faults.sh --short
  scripts/faults.sh --short --net proxy --nemesis delay,partition,kill --seed 5
fi
