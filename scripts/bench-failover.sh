#!/usr/bin/env bash
# Write unavailability after kill -9 of the leader, on a local 3-node cluster of real
# processes: the time from the kill to the first write acknowledged through a survivor.
#
#   scripts/bench-failover.sh [ROUNDS]     (default 5)
#
# FAILOVER_SIGNAL=TERM stops the leader as a rolling restart does instead: it hands
# leadership over before it goes. FAILOVER_SIGNAL=STOP pauses it (a hung process, or one cut
# off): the first write through a survivor is then sent to the paused leader and must move
# on to the next one; the paused node is resumed after each round and follows again.
#
# Prints the time to the first leader after `cluster.sh start`, one line per round, and the
# median. The cluster runs on ports 7751..7753 with its data under bench-results/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
SIGNAL=${FAILOVER_SIGNAL:-KILL}
export KEEL_PROFILE=release
export KEEL_BASE_PORT=${KEEL_BASE_PORT:-7750}
export KEEL_CLUSTER_DATA=${KEEL_CLUSTER_DATA:-./bench-results/failover-cluster}
export KEEL_USER=${KEEL_USER:-admin} KEEL_PASSWORD=${KEEL_PASSWORD:-keel-admin}
AUTH="$KEEL_USER:$KEEL_PASSWORD"
port() { echo $((KEEL_BASE_PORT + $1)); }

scripts/cluster.sh clean >/dev/null 2>&1 || true
trap 'scripts/cluster.sh clean >/dev/null 2>&1 || true' EXIT
scripts/cluster.sh start

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
results=()
for round in $(seq 1 "$ROUNDS"); do
  leader=$(scripts/cluster.sh leader)
  survivor=$(( leader % 3 + 1 ))
  curl -sf -u "$AUTH" -X PUT "http://127.0.0.1:$(port "$survivor")/v1/kv/failover/warm" -d '{"value":"x"}' >/dev/null
  pid=$(cat "$KEEL_CLUSTER_DATA/node$leader.pid")
  t0=$(now_ms)
  kill -"$SIGNAL" "$pid"
  until [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 10 -u "$AUTH" -X PUT \
      "http://127.0.0.1:$(port "$survivor")/v1/kv/failover/$round" -d '{"value":"x"}') == 200 ]]; do :; done
  t1=$(now_ms)
  results+=($((t1 - t0)))
  echo "round $round: SIG$SIGNAL to node $leader, first write acknowledged after $((t1 - t0)) ms"
  if [[ $SIGNAL == STOP ]]; then
    kill -CONT "$pid"
  else
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    scripts/cluster.sh kill "$leader"
    scripts/cluster.sh restart "$leader" >/dev/null
  fi
  sleep 2
done
median=$(printf '%s\n' "${results[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
echo "median write unavailability after SIG$SIGNAL to the leader: ${median} ms over $ROUNDS rounds"
