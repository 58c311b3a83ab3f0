#!/usr/bin/env bash
# Where the time goes: CPU per operation on each node of a local 3-node release cluster under
# one `keel bench` workload, and a `perf` profile of the leader and of a follower broken down
# by area (HTTP, Raft core, apply, RocksDB write, fsync, ...).
#
#   scripts/bench-profile.sh [WORKLOAD] [CLIENTS] [SECONDS]     (default: put 64 10)
#
# Writes bench-results/profile/{leader,follower}.folded (for inferno, speedscope or
# flamegraph.pl) and prints the breakdowns. Needs perf (Debian: linux-perf, installed if
# missing) and permission to profile other processes (root, or kernel.perf_event_paranoid <= 1).
set -euo pipefail
cd "$(dirname "$0")/.."
WORKLOAD=${1:-put}
CLIENTS=${2:-64}
SECONDS_TO_RUN=${3:-10}
OUT=bench-results/profile
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keel-target}"
export KEEL_PROFILE=release KEEL_BASE_PORT=7760 KEEL_CLUSTER_DATA=bench-results/keel-cluster
export KEEL_USER=${KEEL_USER:-admin} KEEL_PASSWORD=${KEEL_PASSWORD:-keel-admin}
export KEEL_WORKER_THREADS=${KEEL_WORKER_THREADS:-1}
ENDPOINTS=127.0.0.1:7761,127.0.0.1:7762,127.0.0.1:7763
if (( SECONDS_TO_RUN < 4 )); then
  echo "bench-profile: run for at least 4 seconds" >&2
  exit 2
fi

if ! command -v perf >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null
fi
cargo build --release --quiet --bin keel
KEEL="$CARGO_TARGET_DIR/release/keel"
mkdir -p "$OUT"
rm -f "$OUT"/*.data "$OUT"/*.data.old "$OUT"/*.err
scripts/cluster.sh clean >/dev/null 2>&1 || true
trap 'scripts/cluster.sh clean >/dev/null 2>&1 || true' EXIT
scripts/cluster.sh start

pid_of() { cat "$KEEL_CLUSTER_DATA/node$1.pid"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
leader=$(scripts/cluster.sh leader)
follower=$(( leader % 3 + 1 ))

# A short warm-up, so connections, caches and the first snapshot are not what is measured.
warmup=$("$KEEL" bench --endpoints "$ENDPOINTS" --workload "$WORKLOAD" --clients "$CLIENTS" --seconds 2)
warmup_ops=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["ops"])' "$warmup")
declare -A before
for n in 1 2 3; do before[$n]=$(cpu_ticks "$(pid_of $n)"); done
"$KEEL" bench --endpoints "$ENDPOINTS" --workload "$WORKLOAD" --clients "$CLIENTS" \
  --seconds "$SECONDS_TO_RUN" --first-key "$warmup_ops" >"$OUT/bench.json" &
bench=$!
sleep 1
profile_seconds=$(( SECONDS_TO_RUN - 2 ))
declare -A recorders
for role in leader follower; do
  node=${!role}
  perf record -q -F 499 -g --call-graph dwarf,16384 -p "$(pid_of "$node")" \
    -o "$OUT/$role.data" -- sleep "$profile_seconds" 2>"$OUT/$role.err" &
  recorders[$role]=$!
done
wait "$bench"
for role in leader follower; do
  if ! wait "${recorders[$role]}"; then
    echo "bench-profile: perf record failed on the $role:" >&2
    cat "$OUT/$role.err" >&2
    exit 1
  fi
done
ops=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["ops"])' "$OUT/bench.json")
if (( ops == 0 )); then
  echo "bench-profile: the load generator completed no operation: $(cat "$OUT/bench.json")" >&2
  exit 1
fi
hz=$(getconf CLK_TCK)

echo
echo "$WORKLOAD with $CLIENTS clients for ${SECONDS_TO_RUN}s: $(cat "$OUT/bench.json")"
for n in 1 2 3; do
  ticks=$(( $(cpu_ticks "$(pid_of $n)") - ${before[$n]} ))
  role=follower; [[ $n == "$leader" ]] && role=leader
  echo "node $n ($role): $(python3 -c "print(round($ticks * 1e6 / $hz / $ops, 1))") us of CPU per operation"
done
for role in leader follower; do
  echo
  echo "== $role (node ${!role})"
  perf script -i "$OUT/$role.data" 2>/dev/null >"$OUT/$role.perf.txt"
  python3 scripts/profile-report.py "$OUT/$role.perf.txt" "$OUT/$role.folded"
  rm -f "$OUT/$role.perf.txt"
done
