#!/usr/bin/env bash
# Which of two keel builds needs less CPU per operation. Both run as 3-node clusters on this
# machine at the same time, each loaded by its own `keel bench` with the same workload, so they
# compete for the same cores: the build that spends less per operation does more of them. Run
# side by side, both see every swing of the host's speed, which runs taken one after the other
# do not: there the same binary against itself measured up to 8 % apart over 3 pairs. Side by
# side, the same binary against itself came out at 0.985 and 0.997 (A/B of all operations over
# 2 passes of 4 rounds of 8 s), so differences of about 3 % and more show.
#
#   scripts/bench-ab.sh A_BIN B_BIN [ROUNDS] [SECONDS]     (default 4 rounds of 8 s)
#
# Each build gets a fresh cluster twice, once on either set of ports (7801-7803, 7901-7903) and
# started first once, so that neither placement favours one. Prints each round's throughputs and
# A/B, and the A/B of all operations. BENCH_WORKLOAD (default put) and BENCH_CLIENTS (64 per
# cluster) pick the load; A_ENV and B_ENV (e.g. "RUST_LOG=debug") go into one build's nodes'
# environment. Both clusters are loaded by A's `keel bench`. Data and node logs go under
# bench-results/ab/ (cluster.sh's output in NAME.log, shown if a cluster fails to start).
set -euo pipefail
cd "$(dirname "$0")/.."
if (( $# < 2 )); then
  echo "usage: scripts/bench-ab.sh A_BIN B_BIN [ROUNDS] [SECONDS]" >&2
  exit 2
fi
A_BIN=$(realpath "$1")
B_BIN=$(realpath "$2")
ROUNDS=${3:-4}
SECONDS_PER_ROUND=${4:-8}
WORKLOAD=${BENCH_WORKLOAD:-put}
CLIENTS=${BENCH_CLIENTS:-64}
export KEEL_USER=${KEEL_USER:-admin} KEEL_PASSWORD=${KEEL_PASSWORD:-keel-admin}
# As in bench.sh: three nodes share this machine's cores.
export KEEL_WORKER_THREADS=${KEEL_WORKER_THREADS:-1}
OUT=bench-results/ab
mkdir -p "$OUT"

# cluster ACTION BIN ENV BASE_PORT NAME; cluster.sh's output goes to $OUT/NAME.log, shown if it fails.
cluster() {
  if ! env ${3:+$3} KEEL_BIN="$2" KEEL_BASE_PORT="$4" KEEL_CLUSTER_DATA="$OUT/$5" \
    scripts/cluster.sh "$1" >"$OUT/$5.log" 2>&1; then
    echo "bench-ab: scripts/cluster.sh $1 failed for $5 ($2); the end of its output ($OUT/$5.log):" >&2
    tail -n 20 "$OUT/$5.log" >&2
    # Shown here: the exit trap removes the cluster's directory with its node logs.
    for log in "$OUT/$5"/node*.log; do
      [[ -f $log ]] && { echo "--- $log" >&2; tail -n 5 "$log" >&2; }
    done
    exit 1
  fi
}
stop_all() {
  for name in a-7800 a-7900 b-7800 b-7900; do
    KEEL_BASE_PORT=${name#*-} KEEL_CLUSTER_DATA="$OUT/$name" scripts/cluster.sh clean >/dev/null 2>&1 || true
  done
}
trap stop_all EXIT
endpoints() { echo "127.0.0.1:$(($1 + 1)),127.0.0.1:$(($1 + 2)),127.0.0.1:$(($1 + 3))"; }

ops_of() { grep -o '"ops":[0-9]*' "$1" | cut -d: -f2; }
total_a=0
total_b=0
# pass 1: A on 7800 and started first; pass 2: B on 7800 and started first.
declare -A bin=([a]=$A_BIN [b]=$B_BIN) env=([a]=${A_ENV:-} [b]=${B_ENV:-}) port
for pass in 1 2; do
  if (( pass == 1 )); then order="a b" port=([a]=7800 [b]=7900); else order="b a" port=([a]=7900 [b]=7800); fi
  stop_all
  for side in $order; do
    cluster start "${bin[$side]}" "${env[$side]}" "${port[$side]}" "$side-${port[$side]}"
  done
  first_key=0
  for side in a b; do
    # A few writes first: a fresh cluster may still hold its first election.
    "$A_BIN" bench --endpoints "$(endpoints "${port[$side]}")" --workload put --clients 3 --ops 30 >/dev/null
  done
  for round in $(seq 1 "$ROUNDS"); do
    sleep 1
    pids=()
    for side in a b; do
      "$A_BIN" bench --endpoints "$(endpoints "${port[$side]}")" --workload "$WORKLOAD" \
        --clients "$CLIENTS" --seconds "$SECONDS_PER_ROUND" --first-key "$first_key" \
        >"$OUT/$side.json" &
      pids+=($!)
    done
    # Each by its pid, so that a failed run stops the script rather than reading as 0 ops.
    for pid in "${pids[@]}"; do wait "$pid"; done
    ops_a=$(ops_of "$OUT/a.json")
    ops_b=$(ops_of "$OUT/b.json")
    first_key=$(( first_key + (ops_a > ops_b ? ops_a : ops_b) ))
    total_a=$(( total_a + ops_a ))
    total_b=$(( total_b + ops_b ))
    awk -v p="$pass" -v r="$round" -v a="$ops_a" -v b="$ops_b" -v s="$SECONDS_PER_ROUND" \
      'BEGIN { printf "pass %d round %d: A %.0f op/s, B %.0f op/s, A/B %.3f\n", p, r, a / s, b / s, a / b }'
  done
done
awk -v a="$total_a" -v b="$total_b" 'BEGIN { printf "A/B over all rounds: %.3f\n", a / b }'
