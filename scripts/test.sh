#!/usr/bin/env bash
# Runs keel's whole test suite: unit tests, openraft's storage conformance suite on RocksDB,
# and the cluster tests with real keel processes. Installs the build dependencies it needs
# (libclang for RocksDB's bindings) when run as root on Debian/Ubuntu.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
[[ -n "$(ls /usr/lib/llvm-*/lib/libclang*.so* 2>/dev/null)" ]] || need+=(libclang-dev clang)
command -v curl >/dev/null || need+=(curl)
if ((${#need[@]})); then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "missing build dependencies: ${need[*]} (install them, e.g. apt-get install ${need[*]})" >&2
    exit 1
  fi
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keel-target}"
# Cluster tests start several keel processes each; two at a time fit a 2-core machine.
cargo test --workspace --all-targets -- --test-threads="${KEEL_TEST_THREADS:-2}"

# The fault suite's short mode, about 90 s each (KEEL_SKIP_FAULTS=1 skips them): every fault
# on the default network, then delays through the proxies (the regression run for slow links,
# which once froze replication because RPC deadlines were one heartbeat).
if [[ -z "${KEEL_SKIP_FAULTS:-}" ]]; then
  scripts/faults.sh --short
  scripts/faults.sh --short --net proxy --nemesis delay,partition,kill --seed 5
fi
