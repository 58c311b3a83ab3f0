#!/usr/bin/env bash
# keel's Jepsen-style fault suite: a cluster of real keel processes in network namespaces,
# concurrent clients, a nemesis, a linearizability checker and an HTML report.
#
#   scripts/faults.sh --short                         about 2 minutes (CI runs this)
#   scripts/faults.sh --duration 600 --nemesis partition,kill --seed 42 [--nodes 5]
#
# Any other flag goes to keel-faults (see `keel-faults --help`). Needs root (namespaces,
# iptables); installs iptables and libfaketime with apt when missing. Reports are written
# under fault-results/run-*/ (index.html, latency.svg, history.json, results.json).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keel-target}"

if [[ $(id -u) != 0 ]]; then
  echo "faults.sh needs root for network namespaces and iptables" >&2
  exit 2
fi
need=()
command -v iptables >/dev/null || need+=(iptables)
[[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1 ]] || need+=(faketime)
command -v ip >/dev/null || need+=(iproute2)
if ((${#need[@]})); then
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
cleanup() { pkill -KILL -f "keel serve --listen 10.77.0." 2>/dev/null || true; }
trap cleanup EXIT
cleanup
"$CARGO_TARGET_DIR/debug/keel-faults" --keel-bin "$CARGO_TARGET_DIR/debug/keel" "${args[@]}"
