#!/usr/bin/env bash
# keel as the broker of undermoon's unmodified coordinator, with real server proxies and real
# Redis: the interop check behind the README's undermoon section. Not part of scripts/test.sh
# (the first run builds undermoon, about 8 minutes on 2 cores).
#
#   scripts/undermoon-interop.sh          # build what is missing, start, check, fail over, scale out, clean up
#   KEEP=1 scripts/undermoon-interop.sh   # leave everything running (then: scripts/undermoon-interop.sh stop)
#   scripts/undermoon-interop.sh stop     # kill what a KEEP=1 run left running
#
# What it needs and gets when missing: redis-server, redis-cli, jq (apt; the system redis
# service is disabled), Rust 1.70 through rustup (undermoon 6598dfa does not compile with
# current Rust: E0275 in warp's nested filters; with 1.70 it builds unchanged from its
# Cargo.lock), undermoon cloned from GitHub and built into interop-results/, keel's debug
# binary. Layout: keel on 127.0.0.1:7799; a logging HTTP relay on 7798 in front of it that
# the coordinator uses (every request and answer goes to logs/relay.log; RELAY=0 points the
# coordinator straight at keel); server proxies 7001..7007 on "hosts" h1..h7, proxy i
# fronting Redis 60(2i-1) and 60(2i); the coordinator on 6699. Exits non-zero on a failure.
set -uo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
ROOT=${ROOT:-$REPO/interop-results}
UNDERMOON_COMMIT=6598dfa
UM_SRC=${UM_SRC:-$ROOT/undermoon}
UM_BIN=${UM_BIN:-$ROOT/undermoon-target/release}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keel-target}"
KEEL_BIN_GIVEN=${KEEL_BIN:+1}
KEEL_BIN=${KEEL_BIN:-$CARGO_TARGET_DIR/debug/keel}
LOGS=$ROOT/logs
RUN=$ROOT/run
PIDS=$RUN/pids
RELAY=${RELAY:-1}
KEEL=127.0.0.1:7799
API=http://$KEEL/api/v3
CLUSTER=mycluster

prepare() {
  if ! command -v redis-server >/dev/null || ! command -v jq >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools jq >/dev/null
    systemctl disable --now redis-server >/dev/null 2>&1 || service redis-server stop >/dev/null 2>&1 || true
  fi
  if [[ ! -x $UM_BIN/coordinator || ! -x $UM_BIN/server_proxy ]]; then
    [[ -d $UM_SRC/.git ]] || git clone -q https://github.com/doyoubi/undermoon "$UM_SRC"
    git -C "$UM_SRC" checkout -q "$UNDERMOON_COMMIT"
    rustup toolchain list | grep -q '^1.70' || rustup toolchain install 1.70 --profile minimal
    (cd "$UM_SRC" && RUSTUP_TOOLCHAIN=1.70 CARGO_TARGET_DIR="$ROOT/undermoon-target" \
      cargo build --release --bin coordinator --bin server_proxy) || exit 1
  fi
  [[ -n ${KEEL_BIN_GIVEN:-} ]] || cargo build --quiet --manifest-path "$REPO/Cargo.toml" --bin keel || exit 1
}

stop_all() {
  [[ -f $PIDS ]] || return 0
  while read -r pid name; do
    kill -9 "$pid" 2>/dev/null && echo "stopped $name ($pid)"
  done < "$PIDS"
  rm -f "$PIDS"
}

if [[ ${1:-} == stop ]]; then stop_all; exit 0; fi
mkdir -p "$ROOT"
prepare

PASS=0; FAIL=0
ok()   { echo "PASS: $*"; PASS=$((PASS+1)); }
bad()  { echo "FAIL: $*"; FAIL=$((FAIL+1)); }
step() { echo; echo "== $*"; }

finish() {
  echo
  echo "$PASS passed, $FAIL failed"
  if [[ -z ${KEEP:-} ]]; then stop_all >/dev/null; echo "all processes stopped"; fi
  ((FAIL == 0))
}
trap finish EXIT

for b in "$UM_BIN/coordinator" "$UM_BIN/server_proxy" "$KEEL_BIN"; do
  [[ -x $b ]] || { echo "missing $b (see the build notes at the top)"; exit 1; }
done
stop_all >/dev/null
mkdir -p "$LOGS" "$RUN"
rm -rf "$ROOT/keel-data" "$RUN"/redis-* "$RUN"/proxy-*.toml "$RUN/coordinator.toml"
: > "$PIDS"
for f in keel relay coordinator; do : > "$LOGS/$f.log"; done
rm -f "$LOGS"/proxy-*.log "$LOGS"/redis-*.log

spawn() { # spawn NAME LOGFILE CMD...: start in background, remember the pid
  local name=$1 log=$2; shift 2
  "$@" >> "$log" 2>&1 &
  echo "$! $name" >> "$PIDS"
  disown $!
}

wait_port() { # wait_port PORT [SECONDS]
  local i
  for ((i = 0; i < ${2:-20} * 10; i++)); do
    (echo > /dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "port $1 did not open" >&2; return 1
}

# poll SECONDS CMD...: retry CMD once a second until it succeeds
poll() {
  local t=$1 i; shift
  for ((i = 0; i < t; i++)); do "$@" && return 0; sleep 1; done
  return 1
}

redis_pair() { echo "60$(printf %02d $((2*$1-1))) 60$(printf %02d $((2*$1)))"; }

start_proxy() { # start_proxy i: its two redis nodes and the server proxy on 700i
  local i=$1 port
  for port in $(redis_pair "$i"); do
    mkdir -p "$RUN/redis-$port"
    spawn "redis-$port" "$LOGS/redis-$port.log" redis-server --port "$port" --bind 127.0.0.1 \
      --save "" --appendonly no --dir "$RUN/redis-$port"
    wait_port "$port"
  done
  sed -e "s/^address = .*/address = \"127.0.0.1:700$i\"/" \
      -e "s/^announce_address = .*/announce_address = \"127.0.0.1:700$i\"/" \
      "$UM_SRC/conf/server-proxy.toml" > "$RUN/proxy-$i.toml"
  RUST_LOG=undermoon=info,server_proxy=info \
    spawn "proxy-700$i" "$LOGS/proxy-700$i.log" "$UM_BIN/server_proxy" "$RUN/proxy-$i.toml"
  wait_port "700$i"
}

register_proxy() { # register_proxy i
  local i=$1 a b
  read -r a b <<< "$(redis_pair "$i")"
  local body="{\"proxy_address\":\"127.0.0.1:700$i\",\"nodes\":[\"127.0.0.1:$a\",\"127.0.0.1:$b\"],\"host\":\"h$i\"}"
  local out; out=$(curl -sS -w ' %{http_code}' -XPOST -H 'content-type: application/json' "$API/proxies/meta" -d "$body")
  echo "POST /proxies/meta $body -> $out"
  [[ $out == *" 2"?? ]]
}

epoch()          { curl -sS "$API/epoch"; }
cluster_json()   { curl -sS "$API/clusters/meta/$CLUSTER"; }
cluster_epoch()  { cluster_json | jq -r '.cluster.epoch'; }
cluster_proxies(){ cluster_json | jq -r '[.cluster.nodes[].proxy_address] | unique | .[]'; }
proxy_epoch()    { redis-cli -p "${1##*:}" UMCTL GETEPOCH 2>/dev/null; }

# every proxy of the cluster answers GETEPOCH >= the cluster's epoch
proxies_synced() {
  local want p e; want=$(cluster_epoch)
  for p in $(cluster_proxies); do
    e=$(proxy_epoch "$p"); [[ $e =~ ^[0-9]+$ && $e -ge $want ]] || return 1
  done
}

show_proxies() {
  local p
  for p in $(cluster_proxies); do echo "  $p GETEPOCH=$(proxy_epoch "$p")"; done
  echo "  keel /epoch=$(epoch) cluster epoch=$(cluster_epoch)"
}

# ------------------------------------------------------------------ start
step "1. keel on $KEEL"
KEEL_LOG=${KEEL_LOG:-info,openraft=warn} \
  spawn keel "$LOGS/keel.log" "$KEEL_BIN" serve --listen "$KEEL" --data-dir "$ROOT/keel-data"
wait_port 7799 || exit 1
poll 20 curl -sf "$API/epoch" -o /dev/null && ok "keel answers /api/v3/epoch: $(epoch)" || { bad "keel not ready"; exit 1; }

BROKER=$KEEL
if [[ $RELAY == 1 ]]; then
  spawn relay "$LOGS/relay-stderr.log" python3 "$REPO/scripts/http-log-relay.py" 7798 "$KEEL" "$LOGS/relay.log"
  wait_port 7798 || exit 1
  BROKER=127.0.0.1:7798
fi

step "2. 5 server proxies (7001-7005) with 10 redis nodes (6001-6010), registered on hosts h1..h5"
for i in 1 2 3 4 5; do start_proxy "$i" || exit 1; done
for i in 1 2 3 4 5; do register_proxy "$i" || bad "register 700$i"; done
curl -sS "$API/proxies/addresses?offset=0&limit=20"; echo

step "3. create $CLUSTER with 8 nodes"
curl -sS -w ' %{http_code}\n' -XPOST -H 'content-type: application/json' "$API/clusters/meta/$CLUSTER" -d '{"node_number":8}'
cluster_json | jq -c '.cluster.nodes[] | {address, proxy_address, role: .repl.role, slots: [.slots[].range_list]}'
IN_CLUSTER=$(cluster_proxies | tr '\n' ' ')
SPARE=$(comm -23 <(printf '127.0.0.1:700%s\n' 1 2 3 4 5) <(cluster_proxies | sort) | tr '\n' ' ')
echo "in cluster: $IN_CLUSTER  spare: $SPARE"

step "4. coordinator -> broker $BROKER"
sed -e "s/^broker_address = .*/broker_address = \"$BROKER\"/" "$UM_SRC/conf/coordinator.toml" > "$RUN/coordinator.toml"
RUST_LOG=${COORD_LOG:-undermoon=info,coordinator=info} \
  spawn coordinator "$LOGS/coordinator.log" "$UM_BIN/coordinator" "$RUN/coordinator.toml"
wait_port 6699 10 || echo "(coordinator has no listening port yet)"

if poll 30 proxies_synced; then ok "coordinator pushed metadata: every cluster proxy's GETEPOCH >= cluster epoch"
else bad "proxies did not reach the cluster epoch in 30 s"; fi
show_proxies

FIRST=$(cluster_proxies | head -1)
echo "-- redis-cli -p ${FIRST##*:} cluster nodes"
redis-cli -p "${FIRST##*:}" cluster nodes
n=$(redis-cli -p "${FIRST##*:}" cluster nodes | grep -c master)
[[ $n -eq 4 ]] && ok "cluster nodes shows 4 masters" || bad "cluster nodes shows $n masters"

for k in foo k1 k2 k3 k4 k5 k6 k7 k8; do
  redis-cli -c -p "${FIRST##*:}" set "$k" "v-$k" > /dev/null
done
got=$(redis-cli -c -p "${FIRST##*:}" get foo)
[[ $got == v-foo ]] && ok "redis-cli -c set/get foo through proxy $FIRST" || bad "get foo answered '$got'"
allok=1
for p in $IN_CLUSTER; do
  for k in k1 k2 k3 k4 k5 k6 k7 k8; do
    [[ $(redis-cli -c -p "${p##*:}" get "$k") == "v-$k" ]] || allok=0
  done
done
((allok)) && ok "9 keys readable through every cluster proxy (with redirection)" || bad "some keys unreadable"

# replication is set up by the proxies (SLAVEOF) after the coordinator pushes metadata; redis 7
# delays a diskless full sync by 5 s, so wait for every replica's link before killing a master.
repl_up() {
  local n
  for n in $(cluster_json | jq -r '.cluster.nodes[] | select(.repl.role == "replica") | .address'); do
    redis-cli -p "${n##*:}" info replication | grep -q 'master_link_status:up' || return 1
  done
}
if poll 30 repl_up; then ok "every replica redis reports master_link_status:up"; else bad "replication links not up"; fi
sleep 1

# ------------------------------------------------------------------ failover
step "5. failover: kill -9 one cluster proxy; spare: $SPARE"
VICTIM=$(cluster_proxies | tail -1)
VPID=$(awk -v n="proxy-${VICTIM##*:}" '$2 == n {print $1}' "$PIDS")
E0=$(cluster_epoch)
echo "killing $VICTIM (pid $VPID), cluster epoch $E0"
kill -9 "$VPID"
replaced() { ! cluster_proxies | grep -qx "$VICTIM"; }
if poll 90 replaced; then
  ok "keel replaced $VICTIM in $CLUSTER (coordinator reported and called failover)"
else
  bad "$VICTIM still in $CLUSTER after 90 s"
fi
echo "-- GET /failures: $(curl -sS "$API/failures")"
echo "-- GET /proxies/failed/addresses: $(curl -sS "$API/proxies/failed/addresses")"
cluster_json | jq -c '.cluster.epoch, (.cluster.nodes[] | {address, proxy_address, role: .repl.role, slots: [.slots[].range_list]})'
for p in $SPARE; do
  if cluster_proxies | grep -qx "$p"; then
    if poll 30 proxies_synced; then ok "replacement $p and peers took the new metadata"; else bad "new metadata not pushed in 30 s"; fi
  fi
done
show_proxies
grep -E "failover|replace|failure" "$LOGS/coordinator.log" | tail -5
SURV=$(cluster_proxies | head -1)
got=$(redis-cli -c -p "${SURV##*:}" get foo)
[[ $got == v-foo ]] && ok "get foo after failover (via $SURV) = $got" || bad "get foo after failover = '$got'"
allok=1
for k in k1 k2 k3 k4 k5 k6 k7 k8; do
  [[ $(redis-cli -c -p "${SURV##*:}" get "$k") == "v-$k" ]] || allok=0
done
((allok)) && ok "all keys readable after failover" || bad "some keys lost or unreadable after failover"
redis-cli -c -p "${SURV##*:}" set after-failover yes > /dev/null
[[ $(redis-cli -c -p "${SURV##*:}" get after-failover) == yes ]] && ok "writes work after failover" || bad "write after failover"

# ------------------------------------------------------------------ scale out
step "6. scale out to 12 nodes: proxies 7006, 7007 (hosts h6, h7)"
for i in 6 7; do start_proxy "$i" || exit 1; register_proxy "$i" || bad "register 700$i"; done
curl -sS -w ' %{http_code}\n' -XPOST "$API/clusters/migrations/auto/$CLUSTER/12"
echo "-- info: $(curl -sS "$API/clusters/info/$CLUSTER")"
migrated() { [[ $(curl -sS "$API/clusters/info/$CLUSTER" | jq -r '.is_migrating') == false ]]; }
sleep 2
if poll 180 migrated; then ok "migration committed: is_migrating=false"; else bad "still migrating after 180 s"; fi
echo "-- info: $(curl -sS "$API/clusters/info/$CLUSTER")"
cluster_json | jq -c '.cluster.epoch, (.cluster.nodes[] | {address, proxy_address, role: .repl.role, slots: [.slots[] | {range_list, tag}]})'
n=$(cluster_proxies | wc -l)
[[ $n -eq 6 ]] && ok "cluster spans 6 proxies" || bad "cluster spans $n proxies"
if poll 30 proxies_synced; then ok "every proxy took the post-migration metadata"; else bad "post-migration metadata not pushed"; fi
show_proxies
echo "-- coordinator's commits (PUT /clusters/migrations) by answer status:"
grep ' PUT /api/v3/clusters/migrations ' "$LOGS/relay.log" | grep -oE ' -> [0-9]+ ' | sort | uniq -c
allok=1
for k in foo k1 k2 k3 k4 k5 k6 k7 k8; do
  [[ $(redis-cli -c -p "${SURV##*:}" get "$k") == "v-$k" ]] || { allok=0; echo "  $k -> $(redis-cli -c -p "${SURV##*:}" get "$k")"; }
done
((allok)) && ok "all keys readable after scale-out" || bad "keys missing after scale-out"
NEW=$(cluster_proxies | grep -E '700[67]' | head -1)
[[ -n $NEW ]] && echo "-- cluster nodes via new proxy $NEW" && redis-cli -p "${NEW##*:}" cluster nodes

step "7. after the failover: how long /failures keeps listing $VICTIM, and the coordinator's repeated failover calls"
E1=$(epoch)
gone() { [[ $(curl -sS "$API/failures" | jq -r '.addresses | length') == 0 ]]; }
if poll 75 gone; then ok "/failures emptied"; else bad "/failures still lists $VICTIM after 75 s"; fi
echo "-- POST /proxies/failover/$VICTIM calls from the coordinator, by answer:"
grep " POST /api/v3/proxies/failover/$VICTIM " "$LOGS/relay.log" | sed -E 's/^[0-9:]+ //; s/ [0-9]+ms / /' | cut -c1-120 | sort | uniq -c
echo "-- global epoch before/after that wait: $E1 / $(epoch)"

step "8. error answers keel gave the coordinator (status >= 400 in relay.log)"
grep -E ' -> [45][0-9][0-9] ' "$LOGS/relay.log" | cut -d' ' -f2- | sed -E 's/ [0-9]+ms / /' | cut -c1-400 | sort | uniq -c | sort -rn | head -20
step "coordinator errors/warnings"
grep -E "ERROR|WARN" "$LOGS/coordinator.log" | sed -E 's/^\[[^ ]+ /[/' | cut -c1-300 | sort | uniq -c | sort -rn | head -20
