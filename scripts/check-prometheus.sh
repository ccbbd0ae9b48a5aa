#!/usr/bin/env bash
# deploy/prometheus/ and deploy/grafana/usermeta.json against a real Prometheus (Debian's package, installed when
# missing; run here as a plain process, never as a service). Checks, one ok line each:
#   1. `promtool check rules` on both rule files, and `promtool test rules` (every alert firing and silent);
#   2. Prometheus loads both rule files and scrapes a real usermeta (release build, against the stand-in
#      ZITADEL, with Redis, the webhook and the ext_authz listener on, metrics on);
#   3. a short load takes every path the rules and the dashboard look at: cold and cached reads, a denial,
#      writes, a batch, a search, a WatchMetadata stream that reaches its end, Checks allowed and denied, tokens
#      the request budget refuses, webhook events applied and refused, a message on the fleet's channel that is
#      not believed, then ZITADEL gone (calls failing UNAVAILABLE, Checks answered 503, a breaker open);
#   4. through Prometheus' HTTP API, every recording rule has data, and every expression of the rules and of the
#      dashboard evaluates, naming only series, labels and values usermeta emits
#      (scripts/check_prometheus_queries.py).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/processes.sh
source scripts/grpcurl-env.sh
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
command -v redis-server >/dev/null || fail "redis-server is needed (Debian: apt-get install redis-server)"
rules=(deploy/prometheus/recording-rules.yaml deploy/prometheus/alerts.yaml)

promtool check rules "${rules[@]}" >"$work/promtool-check.log" 2>&1 || { cat "$work/promtool-check.log"; fail "promtool check rules"; }
promtool test rules deploy/prometheus/rules.test.yaml >"$work/promtool-test.log" 2>&1 || { cat "$work/promtool-test.log"; fail "promtool test rules"; }
echo "ok   1. promtool check rules and promtool test rules ($(grep -c '^- name:' deploy/prometheus/rules.test.yaml) tests) pass ($(prometheus --version 2>&1 | head -1))"

echo "-- building usermeta and the stand-in (release)"
cargo build --release --locked --quiet -p usermeta
cargo build --release --locked --quiet -p zitadel-standin --example serve
bin=${CARGO_TARGET_DIR:-target}/release

start_standin
alice_id=$(seed user_id); alice_token=$(seed user_token); contract_id=$(seed contract_user_id)

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no >"$work/redis.log" 2>&1 </dev/null &
pids+=($!)
wait_port "$redis_port" redis-server

webhook_key=observability-check-signing-key
echo "$webhook_key" >"$work/webhook.key"
grpc_port=$(free_port); authz_port=$(free_port); metrics_port=$(free_port); webhook_port=$(free_port)
# A small request budget, so a handful of unknown tokens spends it; breakers that open after two failed
# requests within a second and stay open, and no retries, so ZITADEL's absence shows within a few calls; streams that end
# after 2 s.
USERMETA_LISTEN="127.0.0.1:$grpc_port" USERMETA_ZITADEL_URL=$(seed url) USERMETA_SERVICE_PAT_FILE="$work/service.pat" \
  USERMETA_METRICS_LISTEN="127.0.0.1:$metrics_port" USERMETA_SELF_WRITABLE_KEYS=profile. \
  USERMETA_EXT_AUTHZ=true USERMETA_EXT_AUTHZ_LISTEN="127.0.0.1:$authz_port" \
  USERMETA_REDIS_URL="redis://127.0.0.1:$redis_port" \
  USERMETA_WEBHOOK_LISTEN="127.0.0.1:$webhook_port" USERMETA_WEBHOOK_SIGNING_KEY_FILE="$work/webhook.key" \
  USERMETA_UPSTREAM_RATE_LIMIT=5 USERMETA_UPSTREAM_BURST=10 \
  USERMETA_BREAKER_FAILURES=2 USERMETA_BREAKER_WINDOW=1s USERMETA_BREAKER_COOLDOWN=10m USERMETA_RETRY_MAX_ATTEMPTS=1 \
  USERMETA_WATCH_MAX_DURATION=2s \
  "$bin/usermeta" serve >"$work/usermeta.log" 2>&1 </dev/null &
pids+=($!)
for port in "$grpc_port" "$authz_port" "$metrics_port" "$webhook_port"; do wait_port "$port" usermeta; done

prometheus_port=$(free_port)
cat >"$work/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
$(for file in "${rules[@]}"; do echo "  - $PWD/$file"; done)
scrape_configs:
  - job_name: usermeta
    static_configs:
      - targets: ["127.0.0.1:$metrics_port"]
EOF
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
  --web.listen-address="127.0.0.1:$prometheus_port" >"$work/prometheus.log" 2>&1 </dev/null &
pids+=($!)
wait_port "$prometheus_port" Prometheus
prom="http://127.0.0.1:$prometheus_port"
# promql EXPR: the first value of an instant query, or nothing.
promql() {
  curl -s --get "$prom/api/v1/query" --data-urlencode "query=$1" \
    | python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else "")'
}
for _ in $(seq 1 100); do [[ $(promql 'up{job="usermeta"}') == 1 ]] && break; sleep 0.2; done
[[ $(promql 'up{job="usermeta"}') == 1 ]] || fail "Prometheus does not scrape usermeta"
echo "ok   2. Prometheus scrapes usermeta (gRPC $grpc_port, ext_authz $authz_port, webhook $webhook_port, metrics $metrics_port) with both rule files"

call() { # token method data: the call's output, errors included; never fails
  grpcurl -plaintext -max-time 5 -H "authorization: Bearer $1" -d "$3" "127.0.0.1:$grpc_port" "usermeta.v1.UserMetadataService/$2" 2>&1 || true
}
# check TOKEN: one Envoy Check of GET / with the token (none when empty), through curl as a raw gRPC call
# (envoy-types ships no descriptor set for grpcurl's reflection).
check() {
  python3 - "$1" >"$work/check.bin" <<'EOF'
import sys
def field(tag, payload):
    length, size = b"", len(payload)
    while True:
        byte, size = size & 0x7F, size >> 7
        length += bytes([byte | (0x80 if size else 0)])
        if not size:
            break
    return bytes([tag << 3 | 2]) + length + payload
headers = field(3, field(1, b"authorization") + field(2, b"Bearer " + sys.argv[1].encode())) if sys.argv[1] else b""
http = field(2, b"GET") + headers + field(4, b"/") + field(5, b"api.example")
message = field(1, field(4, field(2, http)))       # CheckRequest.attributes.request.http
sys.stdout.buffer.write(b"\0" + len(message).to_bytes(4, "big") + message)
EOF
  curl -s --http2-prior-knowledge -o /dev/null -H 'content-type: application/grpc' -H 'te: trailers' \
    --data-binary @"$work/check.bin" "http://127.0.0.1:$authz_port/envoy.service.auth.v3.Authorization/Check" || true
}
# event KEY_LINE: POSTs a user.metadata.set event for alice, signed with KEY_LINE; prints the HTTP status.
event() {
  python3 - "$1" "$alice_id" >"$work/event.args" <<'EOF'
import base64, hashlib, hmac, json, sys, time
key, user = sys.argv[1:]
body = json.dumps({"aggregateID": user, "aggregateType": "user", "resourceOwner": "1", "instanceID": "1",
                   "version": "v2", "sequence": int(time.time() * 1000), "event_type": "user.metadata.set",
                   "created_at": "2026-01-01T00:00:00Z", "userID": user,
                   "event_payload": {"key": "profile.color", "value": base64.b64encode(b"blue").decode()}})
t = int(time.time())
signature = hmac.new(key.encode(), f"{t}.{body}".encode(), hashlib.sha256).hexdigest()
print(f"t={t},v1={signature}")
print(body)
EOF
  curl -s -o /dev/null -w '%{http_code}' -X POST -H 'content-type: application/json' \
    -H "zitadel-signature: $(sed -n 1p "$work/event.args")" --data-binary "$(sed -n 2p "$work/event.args")" \
    "http://127.0.0.1:$webhook_port/zitadel/events"
}

echo "-- load: reads, a denial, writes, a batch, a search, a stream, Checks, unknown tokens, events, Redis"
call "$alice_token" GetMyMetadata '{}' | grep -q '{' || fail "GetMyMetadata (cold)"
call "$alice_token" GetMyMetadata '{}' | grep -q '{' || fail "GetMyMetadata (cached)"
call "$alice_token" ListMetadata "{\"user_id\":\"$contract_id\"}" | grep -q PermissionDenied || fail "ListMetadata of another user was not denied"
grpcurl -plaintext -max-time 4 -H "authorization: Bearer $alice_token" -d '{"key_prefix":"profile."}' \
  "127.0.0.1:$grpc_port" usermeta.v1.UserMetadataService/WatchMetadata >"$work/watch.log" 2>&1 &
watcher=$!
sleep 0.5
call "$alice_token" SetMetadata '{"entries":[{"key":"profile.language","value":{"text":"de"}}]}' | grep -q updateTime || fail "SetMetadata"
call "$alice_token" DeleteMetadata '{"keys":["profile.language"]}' | grep -q updateTime || fail "DeleteMetadata"
call "$alice_token" BatchGetMetadata "{\"user_ids\":[\"$alice_id\",\"$contract_id\"]}" >/dev/null
call "$alice_token" FindUsersByMetadata '{"key":"ContractNumber","value":{"text":"1234"}}' >/dev/null
wait "$watcher" || true
check "$alice_token"; check ""; check "not-a-token-zitadel-knows"
callers=()
for n in $(seq 1 20); do call "unknown-token-$n" GetMyMetadata '{}' >/dev/null & callers+=($!); done
wait "${callers[@]}"
[[ $(event "$webhook_key") == 200 ]] || fail "a signed event was not applied"
[[ $(event wrong-key) != 200 ]] || fail "an event with a bad signature was applied"
redis-cli -p "$redis_port" PUBLISH usermeta.v2.changes not-a-message >/dev/null

echo "-- ZITADEL goes away"
kill "$standin_pid"; wait "$standin_pid" 2>/dev/null || true
sleep 2   # the request budget refills, the breakers forget the good requests
for _ in 1 2 3; do call "$alice_token" ListMetadata "{\"user_id\":\"$alice_id\"}" >/dev/null; done
check "a-token-while-zitadel-is-gone"
for _ in $(seq 1 50); do [[ $(promql 'max(usermeta_upstream_breaker_open)') == 1 ]] && break; sleep 0.2; done
[[ $(promql 'max(usermeta_upstream_breaker_open)') == 1 ]] || fail "no breaker open in Prometheus after ZITADEL went away"
# Two more scrapes and rule evaluations after the last call.
sleep 3
seen() { [[ -n $(promql "$1") ]] || fail "the load did not show in Prometheus: $1"; }
seen 'usermeta_cache_lookups_total{result="hit"} > 0'
seen 'usermeta_grpc_requests_total{code="PERMISSION_DENIED"} > 0'
seen 'usermeta_grpc_requests_total{method="usermeta.v1.UserMetadataService/SetMetadata",code="OK"} > 0'
seen 'usermeta_watch_streams_ended_total > 0'
seen 'usermeta_ext_authz_decisions_total{decision="allow"} > 0'
seen 'usermeta_ext_authz_decisions_total{decision="unauthenticated"} > 0'
seen 'usermeta_ext_authz_decisions_total{decision="unavailable"} > 0'
seen 'usermeta_upstream_budget_requests_total{outcome="refused"} > 0'
seen 'usermeta_webhook_events_total{outcome="applied"} > 0'
seen 'usermeta_webhook_events_total{outcome="bad_signature"} > 0'
seen 'usermeta_shared_invalidations_rejected_total > 0'
seen 'usermeta_upstream_requests_total{status="error"} > 0'
seen 'usermeta_grpc_requests_total{code="UNAVAILABLE"} > 0'
echo "ok   3. the load showed in Prometheus: cache hits, a denial, writes, a stream ended, Checks allowed, denied and answered 503, budget refusals, events applied and refused, a rejected Redis message, ZITADEL unreachable, a breaker open"

python3 scripts/check_prometheus_queries.py "$prom" deploy/grafana/usermeta.json "${rules[@]##*/}" \
  || fail "an expression of the rules or the dashboard does not check out against usermeta (above)"
echo "ok   4. every recording rule has data; every rule and dashboard expression evaluates and names only what usermeta emits"

# A check that cannot fail proves nothing: broken copies of the dashboard must be refused, each for its reason.
must_fail() { # what old new expected-output: the dashboard with old replaced by new is refused, saying so
  python3 - deploy/grafana/usermeta.json "$2" "$3" >"$work/broken.json" <<'EOF'
import sys
source, old, new = sys.argv[1:]
text = open(source).read()
assert old in text, f"the dashboard no longer holds {old}; update scripts/check-prometheus.sh"
sys.stdout.write(text.replace(old, new, 1))
EOF
  if python3 scripts/check_prometheus_queries.py "$prom" "$work/broken.json" "${rules[@]##*/}" >"$work/broken.out" 2>&1; then
    cat "$work/broken.out"; fail "the query check accepted a dashboard with $1"
  fi
  grep -qF "$4" "$work/broken.out" || { cat "$work/broken.out"; fail "a dashboard with $1 was refused for another reason"; }
}
must_fail "a metric usermeta does not emit" usermeta_caller_cache_entries usermeta_caller_cache_size "usermeta emits no series usermeta_caller_cache_size"
must_fail "a label usermeta does not emit" 'by (decision)' 'by (verdict)' "usermeta emits no label verdict"
must_fail "a label value usermeta does not emit" 'method=\"envoy.service.auth.v3.Authorization/Check\"' 'method=\"envoy.service.auth.v3.Authorization/Chek\"' 'usermeta emits no method="envoy.service.auth.v3.Authorization/Chek"'
must_fail "an expression Prometheus refuses" 'histogram_quantile(0.99,' 'histogram_quantile(0.99,,' "bad_data"
echo "ok   5. the query check refuses a dashboard naming a metric, a label or a value usermeta does not emit, or a broken expression"
echo "check-prometheus: ok"
