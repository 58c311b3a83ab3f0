#!/usr/bin/env bash
# A walk through keel as undermoon's broker, with curl: register server proxies, create a
# Redis cluster, read what the coordinator reads, fail a proxy over, scale out and commit the
# migrations the way the coordinator would. Every call is printed before it runs.
#
#   scripts/run.sh &                 # a single keel node on 127.0.0.1:7799, or any cluster
#   scripts/undermoon-demo.sh        # KEEL=host:port picks another node
#
# On a cluster created with credentials, either start keel with `--open-routes undermoon`
# (undermoon's coordinator sends none) or set KEEL_AUTH=user:password for this script.
# The proxy addresses are made up (10.77.1.x): keel only stores them. Run it on a fresh
# node; a second run finds the proxies and the cluster already there (409 ALREADY_EXISTED).
set -euo pipefail

API="http://${KEEL:-127.0.0.1:7799}/api/v3"
CLUSTER=${DEMO_CLUSTER:-demo}
auth=()
[[ -n "${KEEL_AUTH:-}" ]] && auth=(--user "$KEEL_AUTH")

# call METHOD PATH [JSON]: prints the request and the answer; fails on a non-2xx answer.
call() {
  local method=$1 path=$2 body=${3:-}
  echo "\$ curl -X $method $API$path${body:+ -d '$body'}" >&2
  local args=(-sS -X "$method" "${auth[@]}" -w '\n%{http_code}' "$API$path")
  [[ -n $body ]] && args+=(-H 'content-type: application/json' -d "$body")
  local answer status
  answer=$(curl "${args[@]}")
  status=${answer##*$'\n'}
  answer=${answer%$'\n'*}
  echo "  -> $status ${answer:0:300}" >&2
  [[ $status == 2* ]] || { echo "unexpected status $status" >&2; return 1; }
  printf '%s' "$answer"
}

# field JSON PYTHON-EXPRESSION: evaluates an expression over the parsed JSON `j`.
field() { python3 -c "import json,sys; j=json.load(sys.stdin); print($2)" <<<"$1"; }

# A node that was just started may still be electing itself: wait until the broker answers.
for _ in $(seq 1 300); do
  curl -sf "${auth[@]}" "$API/epoch" >/dev/null && break
  sleep 0.1
done

echo "== 1. Register 6 server proxies on 3 hosts (each proxy fronts 2 Redis nodes)" >&2
for host in 1 2 3; do
  for i in 1 2; do
    call POST /proxies/meta "{\"proxy_address\":\"10.77.1.$host:70$i\",\"nodes\":[\"10.77.1.$host:60${i}0\",\"10.77.1.$host:60${i}1\"]}" >/dev/null
  done
done
call GET "/proxies/addresses?offset=0&limit=10" >/dev/null

echo "== 2. Create an 8-node cluster: 4 proxies in 2 chunks, each chunk on two hosts" >&2
call POST "/clusters/meta/$CLUSTER" '{"node_number":8}' >/dev/null
cluster=$(call GET "/clusters/meta/$CLUSTER")
field "$cluster" '"\n".join("  %s %-16s %-7s %s" % (n["proxy_address"], n["address"], n["repl"]["role"], n["slots"][0]["range_list"] if n["slots"] else "") for n in j["cluster"]["nodes"])' >&2
epoch=$(field "$cluster" 'j["cluster"]["epoch"]')

echo "== 3. A coordinator reports a proxy down and fails it over" >&2
failed=$(field "$cluster" 'j["cluster"]["nodes"][0]["proxy_address"]')
call POST "/failures/$failed/demo-coordinator" >/dev/null
call GET /failures >/dev/null
replacement=$(call POST "/proxies/failover/$failed")
echo "  $failed was replaced by $(field "$replacement" 'j["proxy"]["address"] if j["proxy"] else None')" >&2
call GET "/clusters/meta/$CLUSTER?epoch_gt=$epoch&timeout=5" >/dev/null

echo "== 4. Register two more proxies, scale out by 4 nodes and start the migrations" >&2
for host in 2 3; do
  call POST /proxies/meta "{\"proxy_address\":\"10.77.1.$host:703\",\"nodes\":[\"10.77.1.$host:6030\",\"10.77.1.$host:6031\"]}" >/dev/null
done
call PATCH "/clusters/nodes/$CLUSTER" '{"node_number":4}' >/dev/null
call POST "/clusters/migrations/expand/$CLUSTER" >/dev/null
call GET "/clusters/info/$CLUSTER" >/dev/null

echo "== 5. Commit each migration, as the coordinator does once the proxies moved the slots" >&2
cluster=$(call GET "/clusters/meta/$CLUSTER")
field "$cluster" '"\n".join(json.dumps({"cluster_name": j["cluster"]["name"], "slot_range": s}) for n in j["cluster"]["nodes"] for s in n["slots"] if "Migrating" in s["tag"])' |
  while read -r task; do
    call PUT /clusters/migrations "$task" >/dev/null
  done
call GET "/clusters/info/$CLUSTER" >/dev/null
call GET /epoch >/dev/null
echo "== Done: see the README's undermoon section for pointing undermoon's coordinator at keel." >&2
