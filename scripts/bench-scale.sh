#!/usr/bin/env bash
# keel with a million keys: memory, restart recovery, and snapshot size and transfer, on a
# local 3-node release cluster of real processes with fsync on every commit.
#
#   scripts/bench-scale.sh [KEYS]          (default 1000000; 256-byte values, 8-byte keys)
#
# Prints: load rate; RSS and data size per node; the time from restarting a node (kill -9)
# until it answers a linearizable read and has applied the leader's commit index; and the
# time a follower that missed more than a snapshot's worth of entries (so the leader purged
# them) takes to catch up from a snapshot (the leader writes it to a file for the transfer),
# that node's peak memory while it did (VmHWM), and the snapshot file's size. KEEL_EXTRA_ARGS
# reaches the nodes (e.g. "--snapshot-every 25000" to be sure the missed entries are purged).
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${1:-1000000}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keel-target}"
export KEEL_PROFILE=release KEEL_BASE_PORT=7740 KEEL_CLUSTER_DATA=./bench-results/scale-cluster
export KEEL_USER=${KEEL_USER:-admin} KEEL_PASSWORD=${KEEL_PASSWORD:-keel-admin}
AUTH="$KEEL_USER:$KEEL_PASSWORD"
ENDPOINTS=127.0.0.1:7741,127.0.0.1:7742,127.0.0.1:7743
port() { echo $((KEEL_BASE_PORT + $1)); }
now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc; }
cluster_field() { curl -sf -u "$AUTH" "http://127.0.0.1:$(port "$1")/v1/cluster" | python3 -c "import json,sys; print(json.load(sys.stdin)$2)"; }
metric() { curl -sf -u "$AUTH" "http://127.0.0.1:$(port "$1")/metrics" | awk -v name="$2" '$1 == name { print $2 }'; }

cargo build --release --quiet --bin keel
# cluster.sh runs this binary as it is: left to itself it would run `cargo build` on every
# restart, and that check (0.15-0.22 s here) landed inside the restart times measured below.
export KEEL_BIN="$CARGO_TARGET_DIR/release/keel"
KEEL=$KEEL_BIN
scripts/cluster.sh clean >/dev/null 2>&1 || true
trap 'scripts/cluster.sh clean >/dev/null 2>&1 || true' EXIT
scripts/cluster.sh start

echo "== loading $KEYS keys (64 clients)"
"$KEEL" bench --endpoints "$ENDPOINTS" --workload put --clients 64 --seconds 100000 --ops "$KEYS"

rss_mib() { echo $(( $(ps -o rss= -p "$(cat "$KEEL_CLUSTER_DATA/node$1.pid")") / 1024 )); }
echo "== memory and disk per node"
declare -A loaded
for id in 1 2 3; do loaded[$id]=$(rss_mib "$id"); done
# Nodes hand freed heap memory back every 30 s (src/memory.rs).
sleep 35
for id in 1 2 3; do
  echo "node $id: RSS ${loaded[$id]} MiB right after the load, $(rss_mib "$id") MiB 35 s later;" \
    "data $(du -sm "$KEEL_CLUSTER_DATA/node$id" | cut -f1) MiB"
done

follower=1
[[ $(cluster_field 1 '["this_node"]["role"]') == leader ]] && follower=2

echo "== restart recovery: kill -9 node $follower, start it, wait for a linearizable read and the leader's commit index"
scripts/cluster.sh kill "$follower" >/dev/null
t0=$(now)
scripts/cluster.sh restart "$follower" >/dev/null
until curl -sf -u "$AUTH" "http://127.0.0.1:$(port "$follower")/v1/kv/bench/00000000" >/dev/null; do sleep 0.05; done
echo "node $follower serves a linearizable read $(since "$t0") s after start"

echo "== snapshot transfer: node $follower misses more than a snapshot's worth of entries"
before=$(cluster_field "$follower" '["applied_index"]')
scripts/cluster.sh kill "$follower" >/dev/null
other=$(( follower % 3 + 1 ))
# Writes until the leader purged the log past what the follower applied, so that only a
# snapshot can bring it up to date (a purge follows a snapshot, every --snapshot-every writes,
# and keeps the last 5 000 entries; concurrent writes share entries, so how many writes that
# takes varies).
for _ in $(seq 1 40); do
  "$KEEL" bench --endpoints "127.0.0.1:$(port "$other")" --workload put --clients 64 --seconds 100000 --ops 25000 >/dev/null
  if (( $(metric "$other" keel_raft_purged_index) > before )); then break; fi
done
target=$(cluster_field "$other" '["commit_index"]')
t0=$(now)
scripts/cluster.sh restart "$follower" >/dev/null
until [[ $(cluster_field "$follower" '["applied_index"]' 2>/dev/null || echo 0) -ge $target ]]; do sleep 0.1; done
how="by log replication"
if (( $(metric "$follower" keel_raft_snapshots_installed_total) > 0 )); then
  how="by a snapshot from the leader (index $(cluster_field "$follower" '["snapshot_index"]'), beyond the $before it had applied)"
fi
echo "node $follower applied the leader's commit index $target $(since "$t0") s after start, $how"
# A snapshot is written to a file only once a follower needs it (so writing it is in the figure
# above), and the file goes once a newer snapshot replaces it: its size comes from the log line
# of the node that wrote it.
for id in 1 2 3; do
  bytes=$(grep 'wrote the snapshot to a file' "$KEEL_CLUSTER_DATA/node$id.log" | tail -1 |
    grep -o 'bytes=[0-9]*' | cut -d= -f2 || true)
  if [[ -n $bytes ]]; then
    echo "node $id wrote the snapshot file it sent: $((bytes >> 20)) MiB ($bytes bytes)"
  fi
done
pid=$(cat "$KEEL_CLUSTER_DATA/node$follower.pid")
echo "node $follower peak RSS since its start: $(( $(awk '/VmHWM/ {print $2}' "/proc/$pid/status") / 1024 )) MiB"
