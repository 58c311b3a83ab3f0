#!/usr/bin/env bash
# keel's Jepsen-style fault suite: a cluster of real keel processes in network namespaces,
# concurrent clients, a nemesis, a linearizability checker and an HTML report.
#
#   scripts/faults.sh --short                         about 2 minutes (CI runs this)
#   scripts/faults.sh --duration 600 --nemesis partition,kill --seed 42 [--nodes 5]
#
# Any other flag goes to keel-faults (see `keel-faults --help`). As root the nodes live in
# network namespaces with iptables faults (iptables and libfaketime are installed with apt
# when missing); otherwise, or with --net proxy, behind userspace TCP proxies on loopback,
# which also inject delay and jitter (--nemesis delay). Reports are written under
# fault-results/run-*/ (index.html, latency.svg, history.json, results.json).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keel-target}"

need=()
command -v iptables >/dev/null || need+=(iptables)
[[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1 ]] || need+=(faketime)
command -v ip >/dev/null || need+=(iproute2)
if ((${#need[@]})) && [[ $(id -u) == 0 ]]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

args=()
for arg in "$@"; do
  if [[ $arg == --short ]]; then
    args+=(--duration 75 --fault-secs 6 --quiet-secs 4 --clients 5)
  else
    args+=("$arg")
  fi
done

cargo build --quiet --bin keel && cargo build --quiet -p keel-faults
cleanup() { pkill -KILL -f "keel serve --listen (10.77.0.|127.0.0.1:178)" 2>/dev/null || true; }
trap cleanup EXIT
cleanup
"$CARGO_TARGET_DIR/debug/keel-faults" --keel-bin "$CARGO_TARGET_DIR/debug/keel" "${args[@]}"
