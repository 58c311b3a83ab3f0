#!/usr/bin/env bash
# Runs a bootstrapped 3-node keel cluster of real processes on 127.0.0.1.
#
#   scripts/cluster.sh start|stop|status|leader|kill ID|restart ID|clean
#
# `leader` prints the ID (1..N) of the node that leads, as the first running node that answers
# sees it.
# Node N serves its API (and Raft traffic) on port ${KEEL_BASE_PORT:-7700}+N and keeps its data
# in ./cluster-data/nodeN. Credentials come from KEEL_USER / KEEL_PASSWORD (defaults below).
# `start` returns once the cluster has a leader and every node is a voter; on existing data it
# restarts the same cluster. KEEL_BIN picks the binary; otherwise it is built with the
# KEEL_PROFILE cargo profile (default: dev, whose dependencies are optimized; use release for
# benchmarks).
set -euo pipefail

# The data directory as the caller means it, before the script moves to the repository.
DATA=$(realpath -m "${KEEL_CLUSTER_DATA:-./cluster-data}")
cd "$(dirname "$0")/.."
NODES=${KEEL_NODES:-3}
BASE_PORT=${KEEL_BASE_PORT:-7700}
export KEEL_USER=${KEEL_USER:-admin}
export KEEL_PASSWORD=${KEEL_PASSWORD:-keel-admin}
TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/keel-target}

bin() {
  if [[ -n "${KEEL_BIN:-}" ]]; then echo "$KEEL_BIN"; return; fi
  local profile=${KEEL_PROFILE:-dev} dir=debug
  [[ $profile == dev ]] || dir=$profile
  CARGO_TARGET_DIR=$TARGET_DIR cargo build --profile "$profile" --quiet --bin keel >&2
  echo "$TARGET_DIR/$dir/keel"
}

port() { echo $((BASE_PORT + $1)); }
pidfile() { echo "$DATA/node$1.pid"; }
auth() { echo "$KEEL_USER:$KEEL_PASSWORD"; }

# Whether process $2 is node $1's keel (one spelling of the data directory, whatever the
# caller's, is what tells).
is_node() {
  [[ $2 =~ ^[0-9]+$ && -r /proc/$2/cmdline ]] &&
    grep -qF -- "--data-dir $DATA/node$1 " < <(tr '\0' ' ' <"/proc/$2/cmdline")
}

# A pid file is trusted only while its process is this node's keel (after a reboot or a crash
# the pid may belong to anything); a node whose pid file is gone or stale is found by its
# command line, and the file is written again.
running() {
  local f pid; f=$(pidfile "$1")
  pid=$(cat "$f" 2>/dev/null || true)
  is_node "$1" "$pid" && return 0
  pid=$(pgrep -f -- "--data-dir $DATA/node$1 " | head -1 || true)
  is_node "$1" "$pid" || return 1
  echo "$pid" >"$f"
}

# Every call is bounded: a paused or hung node must not hang the script.
http() { curl --max-time 5 "$@"; }

node_id() {
  # Base 10, so that 08 is 8 and 01 is node 1's own files.
  if [[ ! ${1:-} =~ ^[0-9]{1,4}$ ]] || (( 10#$1 < 1 || 10#$1 > NODES )); then
    echo "cluster.sh: node id must be 1 to $NODES, not '${1:-}'" >&2
    exit 2
  fi
  echo "$((10#$1))"
}

launch() {
  local id=$1 mode=$2
  mkdir -p "$DATA/node$id"
  if running "$id"; then return; fi
  "$KEEL" serve --listen "127.0.0.1:$(port "$id")" --data-dir "$DATA/node$id" --bootstrap "$mode" \
    ${KEEL_EXTRA_ARGS:-} >>"$DATA/node$id.log" 2>&1 &
  echo $! >"$(pidfile "$id")"
}

wait_http() {
  for _ in $(seq 1 100); do
    http -sf "http://127.0.0.1:$(port "$1")/v1/bootstrap" >/dev/null && return 0
    sleep 0.1
  done
  echo "node $1 did not start; see $DATA/node$1.log" >&2
  return 1
}

bootstrap_state() {
  http -sf "http://127.0.0.1:$(port "$1")/v1/bootstrap" | sed -n 's/.*"state":"\([a-z_]*\)".*/\1/p'
}

wait_state_completed() {
  for _ in $(seq 1 600); do
    case $(bootstrap_state "$1") in
      completed) return 0 ;;
      error) echo "node $1 bootstrap failed:" >&2; http -s "http://127.0.0.1:$(port "$1")/v1/bootstrap" >&2; return 1 ;;
    esac
    sleep 0.1
  done
  echo "node $1 did not finish bootstrapping" >&2
  return 1
}

wait_leader() {
  for _ in $(seq 1 300); do
    for id in $(seq 1 "$NODES"); do
      local answer code
      answer=$(http -s -w '\n%{http_code}' -u "$(auth)" "http://127.0.0.1:$(port "$id")/v1/cluster" 2>/dev/null) || continue
      code=${answer##*$'\n'}
      if [[ $code == 401 ]]; then
        echo "node $id refused KEEL_USER/KEEL_PASSWORD: they are not this cluster's credentials" >&2
        return 1
      fi
      [[ $code == 200 && $answer == *'"leader":'[0-9]* ]] && return 0
    done
    sleep 0.1
  done
  echo "no leader elected" >&2
  return 1
}

start() {
  KEEL=$(bin)
  # All nodes new, or all members already: a node that lost its data next to members that
  # kept theirs would be started as a cluster of its own.
  local members=0 fresh=1
  for id in $(seq 1 "$NODES"); do [[ -f "$DATA/node$id/identity.json" ]] && members=$((members + 1)); done
  if (( members > 0 && members < NODES )); then
    echo "cluster.sh: $members of $NODES nodes under $DATA have data: restore the others' data" \
      "directories, or join new nodes by hand (README), or clean" >&2
    exit 1
  fi
  (( members == NODES )) && fresh=0
  local t0; t0=$(date +%s.%N)
  for id in $(seq 1 "$NODES"); do launch "$id" api; done
  for id in $(seq 1 "$NODES"); do wait_http "$id"; done
  if [[ $fresh == 1 ]]; then
    http -sf -X POST "http://127.0.0.1:$(port 1)/v1/bootstrap/create_cluster" -H 'content-type: application/json' \
      -d "{\"cluster\":{\"name\":\"keel-local\"},\"credentials\":{\"username\":\"$KEEL_USER\",\"password\":\"$KEEL_PASSWORD\"}}" >/dev/null
    wait_state_completed 1
    for id in $(seq 2 "$NODES"); do
      http -sf -X POST "http://127.0.0.1:$(port "$id")/v1/bootstrap/join_cluster" -H 'content-type: application/json' \
        -d "{\"cluster\":{\"nodes\":[\"127.0.0.1:$(port 1)\"]},\"credentials\":{\"username\":\"$KEEL_USER\",\"password\":\"$KEEL_PASSWORD\"}}" >/dev/null
      wait_state_completed "$id"
    done
  fi
  wait_leader
  local t1; t1=$(date +%s.%N)
  echo "cluster up in $(echo "$t1 - $t0" | bc)s: nodes on ports $(port 1)..$(port "$NODES"), user $KEEL_USER password $KEEL_PASSWORD"
}

stop_node() {
  local id=$1 signal=${2:-TERM}
  if running "$id"; then
    local pid; pid=$(cat "$(pidfile "$id")")
    kill "-$signal" "$pid" 2>/dev/null || true
    # A node stops within its drain time (5 s) and leadership handover; one that does not is
    # killed, so that it never runs on untracked.
    for _ in $(seq 1 200); do running "$id" || break; sleep 0.05; done
    if running "$id"; then
      echo "node $id did not stop in 10 s; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do running "$id" || break; sleep 0.05; done
    fi
  fi
  rm -f "$(pidfile "$id")"
}

status() {
  for id in $(seq 1 "$NODES"); do
    if running "$id"; then
      echo "node $id (port $(port "$id")): $(http -s -u "$(auth)" "http://127.0.0.1:$(port "$id")/v1/cluster" || echo unreachable)"
    else
      echo "node $id (port $(port "$id")): stopped"
    fi
  done
}

leader() {
  for id in $(seq 1 "$NODES"); do
    running "$id" || continue
    http -sf -u "$(auth)" "http://127.0.0.1:$(port "$id")/v1/cluster" 2>/dev/null | python3 -c '
import json, sys
try:
    info = json.load(sys.stdin)
    addr = next(m["addr"] for m in info["members"] if m["uid"] == info["leader"])
except (ValueError, KeyError, StopIteration):
    sys.exit(1)
print(int(addr.rsplit(":", 1)[1]) - int(sys.argv[1]))' "$BASE_PORT" && return
  done
  echo "cluster.sh: no running node knows a leader" >&2
  return 1
}

case ${1:-} in
  start) start ;;
  stop) for id in $(seq 1 "$NODES"); do stop_node "$id"; done ;;
  status) status ;;
  leader) leader ;;
  kill) id=$(node_id "${2:-}"); stop_node "$id" KILL ;;
  restart) id=$(node_id "${2:-}"); stop_node "$id"; KEEL=$(bin); launch "$id" api; wait_http "$id" ;;
  clean) for id in $(seq 1 "$NODES"); do stop_node "$id" KILL; done; rm -rf "$DATA" ;;
  *) echo "usage: $0 start|stop|status|leader|kill ID|restart ID|clean" >&2; exit 2 ;;
esac
