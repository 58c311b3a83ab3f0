#!/usr/bin/env bash
# keel and etcd side by side on this machine: two 3-member clusters on loopback, both with
# durable fsync, driven by the same load generator (`keel bench`) over HTTP/JSON: keel through
# /v1/kv, etcd through its /v3/kv/* JSON gateway. Both clusters stay up for the whole run and
# every row runs on both back to back, who goes first alternating: this host's speed drifts by
# 20-40 % within minutes, and rows measured minutes apart made the ratios swing with it. The
# cluster not being measured is paused meanwhile (see `only`).
#
#   scripts/bench.sh [SECONDS_PER_RUN]       (default 5)
#
# BENCH_WORKLOADS, BENCH_CLIENTS and BENCH_BROKER_CLIENTS pick the rows; BENCH_ROUNDS=N measures
# each keel/etcd row N times and reports medians.
# Workloads: put (unique 8-byte keys, 256-byte values), get (linearizable, one key),
# stale-get (serializable/stale), mixed (90 % get / 10 % put), at 1, 16, 64 and 256 clients;
# for keel alone also the undermoon broker (create cluster, read, failover, re-register, delete).
# Results go to bench-results/ (results.jsonl, table.txt, throughput.svg, every node's log);
# the table with the keel/etcd ratio per row is printed at the end. Installs Debian's
# etcd-server if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-5}
CLIENTS=${BENCH_CLIENTS:-"1 16 64 256"}
WORKLOADS=${BENCH_WORKLOADS:-"put get stale-get mixed"}
# Each keel/etcd row measured this many times, alternating (the host's speed drifts by 20-40 %
# within minutes, so one pair of runs gives a noisy ratio).
ROUNDS=${BENCH_ROUNDS:-1}
if ! [[ $ROUNDS =~ ^[1-9][0-9]*$ ]]; then
  echo "bench: BENCH_ROUNDS must be a whole number of at least 1, not '$ROUNDS'" >&2
  exit 2
fi
# Empty skips the broker rows (unset runs them).
BROKER_CLIENTS=${BENCH_BROKER_CLIENTS-"1 16 64"}
OUT=bench-results
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keel-target}"
export KEEL_PROFILE=release KEEL_BASE_PORT=7760 KEEL_CLUSTER_DATA=$OUT/keel-cluster
export KEEL_USER=${KEEL_USER:-admin} KEEL_PASSWORD=${KEEL_PASSWORD:-keel-admin}
# Three nodes share this machine's cores, so each keel node runs one worker thread (measured:
# -12% CPU per write, +7% put@64). etcd keeps its default GOMAXPROCS: GOMAXPROCS=1 cost it 22%
# of its put@64 throughput. Both keep fsync on every commit.
export KEEL_WORKER_THREADS=${KEEL_WORKER_THREADS:-1}
mkdir -p "$OUT"
: >"$OUT/results.jsonl"

if ! command -v etcd >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null
fi
cargo build --release --quiet --bin keel
KEEL="$CARGO_TARGET_DIR/release/keel"

KEEL_ENDPOINTS=127.0.0.1:7761,127.0.0.1:7762,127.0.0.1:7763
ETCD_ENDPOINTS=127.0.0.1:2371,127.0.0.1:2372,127.0.0.1:2373

# The processes of each system's cluster.
declare -A members
# The cluster not being measured is paused (SIGSTOP): idle but running, each system cost the
# other 13-25 % of its put (64) throughput (keel 19 300-19 600 op/s alone, 16 700-16 900 beside
# an idle etcd, 13 500 beside an etcd that had just taken writes; etcd 6 300-7 100 alone,
# 5 100-6 000 beside an idle keel), through wake-ups and the work left from its last row.
only() {
  local target=$1 other=keel
  [[ $target == keel ]] && other=etcd
  # shellcheck disable=SC2086 # word splitting of the pid lists is intended
  kill -STOP ${members[$other]} 2>/dev/null || true # etcd is gone for the broker rows
  # shellcheck disable=SC2086
  kill -CONT ${members[$target]}
}

# Waits (at most 15 s) until the measured cluster is quiet: under 10 % of a core over half a
# second, so that a row does not start while the previous one is still being flushed.
settle() {
  local target=$1 stats=() before after quiet
  for pid in ${members[$target]}; do stats+=("/proc/$pid/stat"); done
  quiet=$(( $(getconf CLK_TCK) / 20 ))
  for _ in $(seq 1 30); do
    before=$(cat "${stats[@]}" | awk '{s += $14 + $15} END {print s}')
    sleep 0.5
    after=$(cat "${stats[@]}" | awk '{s += $14 + $15} END {print s}')
    (( after - before < quiet )) && return
  done
  echo "bench: $target was still busy after 15 s; measuring anyway" >&2
}

# Requests made so far per system: the next run's first key, so that every put writes a new key.
# Counting from 0 in each run made every row after the first overwrite the keys of the rows
# before it.
declare -A requests_made=([keel]=0 [etcd]=0)
bench() {
  local target=$1
  shift
  local result count sent=0
  result=$("$KEEL" bench --target "$target" --first-key "${requests_made[$target]}" "$@")
  # A failed put took its key too.
  for field in ops warmup_ops errors; do
    count=$(grep -o "\"$field\":[0-9]*" <<<"$result" | cut -d: -f2)
    sent=$(( sent + ${count:-0} ))
  done
  requests_made[$target]=$(( ${requests_made[$target]} + sent ))
  echo "$result"
}

measure() {
  local target=$1 endpoints=$2 workload=$3 clients=$4
  only "$target"
  # A few writes first: a cluster just resumed may hold an election or catch a member up.
  bench "$target" --endpoints "$endpoints" --workload put --clients 3 --ops 30 >/dev/null
  settle "$target"
  # One second unmeasured first: a row's first requests open its connections.
  bench "$target" --endpoints "$endpoints" --workload "$workload" --clients "$clients" \
    --warmup 1 --seconds "$SECONDS_PER_RUN" | tee -a "$OUT/results.jsonl"
}

# Checked before either cluster starts: an etcd member still running from an earlier run would
# hold a port (the new member then exits at once) and could even answer this run's requests.
for port in 2371 2372 2373 2381 2382 2383; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "bench: port $port is in use (an etcd left from an earlier run?); stop it and run again" >&2
    exit 1
  fi
done

# keel
scripts/cluster.sh clean >/dev/null 2>&1 || true
scripts/cluster.sh start

# etcd (fsyncs its WAL by default)
ETCD_DATA=$OUT/etcd-cluster
rm -rf "$ETCD_DATA"
cluster="e1=http://127.0.0.1:2381,e2=http://127.0.0.1:2382,e3=http://127.0.0.1:2383"
pids=()
for n in 1 2 3; do
  etcd --name "e$n" --data-dir "$ETCD_DATA/e$n" \
    --listen-client-urls "http://127.0.0.1:237$n" --advertise-client-urls "http://127.0.0.1:237$n" \
    --listen-peer-urls "http://127.0.0.1:238$n" --initial-advertise-peer-urls "http://127.0.0.1:238$n" \
    --initial-cluster "$cluster" --initial-cluster-state new --log-level error \
    >"$ETCD_DATA.e$n.log" 2>&1 &
  pids+=($!)
done
# On exit, however the run ends, both clusters go; keel's node logs stay (as etcd's do), so
# that an odd row can be looked into.
stop_clusters() {
  # A stopped process takes its SIGTERM only once continued.
  # shellcheck disable=SC2086
  kill -CONT "${pids[@]}" ${members[keel]:-} 2>/dev/null || true
  kill "${pids[@]}" 2>/dev/null || true
  # Gone before the script ends, so that a run straight after this one finds the ports free.
  wait "${pids[@]}" 2>/dev/null || true
  for n in 1 2 3; do
    cp -f "$KEEL_CLUSTER_DATA/node$n.log" "$OUT/keel-node$n.log" 2>/dev/null || true
  done
  scripts/cluster.sh clean >/dev/null 2>&1 || true
}
trap stop_clusters EXIT
etcd_ready=
for _ in $(seq 1 100); do
  if curl -sf -X POST http://127.0.0.1:2371/v3/kv/put -d '{"key":"cmVhZHk=","value":"MQ=="}' >/dev/null; then
    etcd_ready=1
    break
  fi
  sleep 0.2
done
if [[ -z $etcd_ready ]]; then
  echo "bench: etcd did not answer within 20 s; its logs are $ETCD_DATA.e1.log .. e3.log" >&2
  exit 1
fi
members[etcd]="${pids[*]}"
members[keel]=$(cat "$KEEL_CLUSTER_DATA"/node{1,2,3}.pid | tr '\n' ' ')

# Who goes first alternates by row and by round, so that the host's drift within a row favours
# neither. With several rounds the report gives the median of the rounds' ratios.
pair=0
for workload in $WORKLOADS; do
  for clients in $CLIENTS; do
    for _ in $(seq 1 "$ROUNDS"); do
      if (( pair++ % 2 == 0 )); then
        measure keel "$KEEL_ENDPOINTS" "$workload" "$clients"
        measure etcd "$ETCD_ENDPOINTS" "$workload" "$clients"
      else
        measure etcd "$ETCD_ENDPOINTS" "$workload" "$clients"
        measure keel "$KEEL_ENDPOINTS" "$workload" "$clients"
      fi
    done
  done
done
kill -CONT "${pids[@]}" 2>/dev/null || true
kill "${pids[@]}" 2>/dev/null || true
for clients in $BROKER_CLIENTS; do
  measure keel "$KEEL_ENDPOINTS" broker "$clients"
done
stop_clusters

python3 scripts/bench-report.py "$OUT"
