#!/usr/bin/env bash
# The benchmark (not a test): builds release binaries and, on this machine in one run, measures usermeta in its
# DEFAULT configuration (no RUST_LOG: the default log level, metrics and OTLP export off; only the request budget
# toward ZITADEL is off, see start_usermeta):
#   (a) a bare tonic server answering GetMyMetadata with a same-size message: the ceiling;
#   (b) usermeta's cached GetMyMetadata; with the same h2load settings, alternating (a) and (b);
#   (c) usermeta's cached Envoy external authorization Check, in the same rounds, beside the same bare tonic
#       server answering Check (envoy-types' generated server) with usermeta's answer: the Check ceiling;
#   (a) to (c) at every load shape of SHAPES (h2load -c CLIENTS -m STREAMS), one row per shape;
#   GetMyMetadata with source TOKEN, a new JWT (minted by the fixture, validated locally) every request, beside
#   the cached userinfo path through the same tool (bench_load), counting every ZITADEL call during the load;
#   the cold path (every request a token usermeta has not seen, so each one asks ZITADEL) against the
#   stand-in's userinfo called directly with new tokens the same way;
#   upstream calls per load (and for coalescing, distinct tokens) and peak RSS, also with 100k cached tokens;
#   how long a write through one of three replicas (sharing a real redis-server) takes to be served by the
#   others: p50, p99 and max.
# Prints markdown tables (with a chart of each shape's ratio to the ceiling) and writes them to
# crates/usermeta-bench/RESULTS.md, which the book's performance chapter includes. Knobs: SHAPES ("c:m ..."),
# REQUESTS, CLIENTS, STREAMS (the management and TOKEN loads' shape), ROUNDS, COLD_REQUESTS, MANAGEMENT_REQUESTS,
# TOKEN_REQUESTS, FILL, PROPAGATION_WRITES; QUICK=1 is a smoke run (few requests, one round) whose table is printed, not written.
set -euo pipefail
cd "$(dirname "$0")/.."
unset RUST_LOG  # the default configuration, whatever the calling shell has set

QUICK=${QUICK:-}
if [[ -n $QUICK ]]; then
  REQUESTS=${REQUESTS:-5000} ROUNDS=${ROUNDS:-1} FILL=${FILL:-2000} TOKEN_REQUESTS=${TOKEN_REQUESTS:-1000}
  PROPAGATION_WRITES=${PROPAGATION_WRITES:-50}
fi
SHAPES=${SHAPES:-"1:1 16:8 16:32 64:16"}
REQUESTS=${REQUESTS:-100000}
CLIENTS=${CLIENTS:-16}
STREAMS=${STREAMS:-8}
ROUNDS=${ROUNDS:-5}
FILL=${FILL:-100000}
TOKEN_REQUESTS=${TOKEN_REQUESTS:-10000}
PROPAGATION_WRITES=${PROPAGATION_WRITES:-500}
TOKEN_WARMUP=$((TOKEN_REQUESTS / 5 + 1))
JWT_AUDIENCE=usermeta-bench
COLD_REQUESTS=${COLD_REQUESTS:-$((REQUESTS / 10))}
MANAGEMENT_REQUESTS=${MANAGEMENT_REQUESTS:-$((REQUESTS / 10))}
COLD_WARMUP=2000
# Tokens: 0 the cached loads, 1 coalescing, 2-21 distinct tokens, then a fresh one for every cold request.
COLD_FIRST=22
tokens_needed=$((COLD_FIRST + 2 * COLD_WARMUP + 2 * ROUNDS * COLD_REQUESTS))
token_count=$(( (FILL > tokens_needed ? FILL : tokens_needed) + 200 ))

command -v h2load >/dev/null || { apt-get update -qq && apt-get install -y -qq nghttp2-client >/dev/null; }
source scripts/grpcurl-env.sh
cargo build --release --locked -p usermeta -p usermeta-bench --bins
bin=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 "${2:-200}"); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "nothing listens on $1"; exit 1; }
peak_rss_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }

zitadel_port=$(free_port); control_port=$(free_port)
"$bin/bench_zitadel" "127.0.0.1:$zitadel_port" "127.0.0.1:$control_port" "$token_count" "$FILL" "$work/fixture.json" \
  $((TOKEN_WARMUP + ROUNDS * TOKEN_REQUESTS)) "$JWT_AUDIENCE" &
pids+=($!)
wait_port "$control_port" 12000  # the fixture (FILL users, the JWTs: RSA signatures) is made first
field() { python3 -c "import json,sys; d=json.load(open('$work/fixture.json')); print(eval(sys.argv[1]))" "$1"; }
zitadel_url=$(field 'd["url"]'); user_id=$(field 'd["user_id"]'); field 'd["service_pat"]' >"$work/pat"
token() { field "d['tokens'][$1]"; }
userinfo_calls() { curl -s "http://127.0.0.1:$control_port/userinfo_requests"; }
all_calls() { curl -s "http://127.0.0.1:$control_port/all_requests"; }  # every request the stand-in received
counter=userinfo_calls  # what record() counts during a run

# Every instance also serves Envoy's Check (on a listener of its own), passing ContractNumber upstream.
export USERMETA_EXT_AUTHZ=true USERMETA_EXT_AUTHZ_HEADERS=ContractNumber=x-user-contract-number
# The bench user is an admin: the management loads list and write the target user's metadata.
export USERMETA_ADMINS="$user_id"
started=""
# The request budget toward ZITADEL is off (USERMETA_UPSTREAM_RATE_LIMIT=0): the stand-in has no rate limit, and
# the cold, management and propagation loads measure usermeta's own throughput, thousands of ZITADEL calls a
# second. The cached loads never consult the budget either way.
start_usermeta() { # port, cache ttl, ext_authz port [management API]; sets $started to the pid (no subshell, so cleanup keeps track)
  USERMETA_ZITADEL_API="${4:-auto}" USERMETA_UPSTREAM_RATE_LIMIT=0 \
  USERMETA_LISTEN="127.0.0.1:$1" USERMETA_EXT_AUTHZ_LISTEN="127.0.0.1:$3" USERMETA_ZITADEL_URL="$zitadel_url" \
    USERMETA_SERVICE_PAT_FILE="$work/pat" USERMETA_CACHE_TTL="$2" USERMETA_CACHE_CAPACITY=$((FILL + 1000)) \
    "$bin/usermeta" serve 2>>"$work/usermeta.log" &
  started=$!; pids+=("$started"); wait_port "$1"; wait_port "$3"
}
cached_port=$(free_port); cached_authz_port=$(free_port)
start_usermeta "$cached_port" 60s "$cached_authz_port"; cached_pid=$started
cold_port=$(free_port); start_usermeta "$cold_port" 60s "$(free_port)"; cold_pid=$started
# The management API, v1 beside v2, against the same stand-in: every ListMetadata and SetMetadata reaches it.
v1_port=$(free_port); start_usermeta "$v1_port" 60s "$(free_port)" v1
v2_port=$(free_port); start_usermeta "$v2_port" 60s "$(free_port)" v2
target_user_id=$(field 'd["target_user_id"]')
"$bin/bench_frames" "$target_user_id" "$work"   # list.bin and set.bin: gRPC frames of the management loads
ceiling_port=$(free_port)
"$bin/bench_ceiling" "127.0.0.1:$ceiling_port" "$user_id" & ceiling_pid=$!; pids+=($ceiling_pid)
wait_port "$ceiling_port"

printf '\0\0\0\0\0' >"$work/empty-request.bin"   # a gRPC frame holding an empty GetMyMetadataRequest
hot=$(token 0)
"$bin/bench_check_request" "$hot" "$work/check-request.bin"   # a gRPC frame holding Envoy's CheckRequest
# Each run is a row of runs.tsv: name, req/s, p50 ms, p99 ms, data bytes, requests, userinfo calls during it.
record() { # name out log calls-before
  local row
  grep -q " 0 failed, 0 errored" "$work/$1.out" || { cat "$work/$1.out"; echo "load run $1 had errors"; exit 1; }
  row=$(python3 crates/usermeta-bench/stats.py "$work/$1.out" "$work/$1.log")
  printf '%s\t%s\t%s\n' "$1" "$row" $(( $($counter) - $2 )) >>"$work/runs.tsv"
}
# h2load: one load tool, one set of settings; per-request latencies go to a log for percentiles.
load() { # name url token [requests clients streams]
  local name=$1 url=$2 tok=$3 n=${4:-$REQUESTS} c=${5:-$CLIENTS} m=${6:-$STREAMS} grpc=() before
  [[ $url == */usermeta.v1.* ]] && grpc=(-d "$work/empty-request.bin" -H 'content-type: application/grpc' -H 'te: trailers')
  [[ $url == */envoy.service.auth.v3.* ]] && grpc=(-d "$work/check-request.bin" -H 'content-type: application/grpc' -H 'te: trailers')
  [[ $url == */ListMetadata ]] && grpc=(-d "$work/list.bin" -H 'content-type: application/grpc' -H 'te: trailers')
  [[ $url == */SetMetadata ]] && grpc=(-d "$work/set.bin" -H 'content-type: application/grpc' -H 'te: trailers')
  before=$($counter)
  h2load -n "$n" -c "$c" -m "$m" -t 1 "${grpc[@]}" -H "authorization: Bearer $tok" --log-file="$work/$name.log" "$url" >"$work/$name.out"
  record "$name" "$before"
}
# The cold path: one request at a time, each with the next unused token (h2load sends one token only).
cold() { # name usermeta|userinfo target first-token requests [same]
  local before
  before=$($counter)
  "$bin/bench_cold" "$2" "$3" "$work/fixture.json" "$4" "$5" "$work/$1.out" "$work/$1.log" ${6:+"$6"}
  record "$1" "$before"
}
grpc_url() { echo "http://127.0.0.1:$1/usermeta.v1.UserMetadataService/GetMyMetadata"; }
check_url() { echo "http://127.0.0.1:$1/envoy.service.auth.v3.Authorization/Check"; }
rpc_url() { echo "http://127.0.0.1:$1/usermeta.v1.UserMetadataService/$2"; }

# Sanity: usermeta really answers with the bench user's metadata (h2load cannot see gRPC status codes).
grpcurl -plaintext -H "authorization: Bearer $hot" "127.0.0.1:$cached_port" usermeta.v1.UserMetadataService/GetMyMetadata | grep -q '"text": "1234"'
grpcurl -plaintext "127.0.0.1:$ceiling_port" usermeta.v1.UserMetadataService/GetMyMetadata 2>/dev/null | grep -q 1234 \
  || true  # the ceiling has no reflection; h2load's byte counts below compare the message sizes instead
# Check allows the bench user and passes the contract header (no reflection for it: the helper asks once).
"$bin/bench_check_request" "$hot" "$work/check-request.bin" "127.0.0.1:$cached_authz_port"
"$bin/bench_check_request" "$hot" "$work/check-request.bin" "127.0.0.1:$ceiling_port"

: >"$work/runs.tsv"
warmup=$((REQUESTS < 20000 ? REQUESTS : 20000))
load warmup-ceiling "$(grpc_url "$ceiling_port")" "$hot" "$warmup"
load warmup-usermeta "$(grpc_url "$cached_port")" "$hot" "$warmup"
load warmup-check "$(check_url "$cached_authz_port")" "$hot" "$warmup"
load warmup-check-ceiling "$(check_url "$ceiling_port")" "$hot" "$warmup"
# Every shape in turn; within a shape, rounds alternate the ceiling, GetMyMetadata, Check and the Check ceiling.
for shape in $SHAPES; do
  c=${shape%:*} m=${shape#*:}
  # One connection, one stream in flight: fewer requests, so the run takes about as long as the others.
  n=$(( c * m >= 16 ? REQUESTS : REQUESTS / 5 ))
  for round in $(seq 1 "$ROUNDS"); do
    load "ceiling@c${c}m${m}-$round" "$(grpc_url "$ceiling_port")" "$hot" "$n" "$c" "$m"
    load "usermeta-cached@c${c}m${m}-$round" "$(grpc_url "$cached_port")" "$hot" "$n" "$c" "$m"
    load "check-cached@c${c}m${m}-$round" "$(check_url "$cached_authz_port")" "$hot" "$n" "$c" "$m"
    load "check-ceiling@c${c}m${m}-$round" "$(check_url "$ceiling_port")" "$hot" "$n" "$c" "$m"
  done
done

# GetMyMetadata with source TOKEN: an instance that validates JWTs locally (USERMETA_JWT_AUDIENCE), every
# request a JWT it has not seen; beside it the cached userinfo path (token 0) through the same tool. Counted:
# every request the stand-in receives during the load (keys included), which must be none once keys are cached.
jwt_port=$(free_port)
USERMETA_JWT_AUDIENCE=$JWT_AUDIENCE start_usermeta "$jwt_port" 60s "$(free_port)"
token_load() { # name instance-port userinfo|token first requests [same]
  local before
  before=$($counter)
  "$bin/bench_load" "127.0.0.1:$2" "$work/fixture.json" "$3" "$4" "$5" "$CLIENTS" "$STREAMS" \
    "$work/$1.out" "$work/$1.log" ${6:+"$6"}
  record "$1" "$before"
}
counter=all_calls
token_load warmup-token "$jwt_port" token 0 "$TOKEN_WARMUP"
next_jwt=$TOKEN_WARMUP
for round in $(seq 1 "$ROUNDS"); do
  token_load "token-source-$round" "$jwt_port" token "$next_jwt" "$TOKEN_REQUESTS"; next_jwt=$((next_jwt + TOKEN_REQUESTS))
  token_load "userinfo-same-tool-$round" "$cached_port" userinfo 0 "$TOKEN_REQUESTS" same
done
counter=userinfo_calls

# Cold path: every request carries a token this instance has not seen (its cache is on, as in production),
# so each is a userinfo call; beside it the stand-in's userinfo, called directly with fresh tokens too.
# One request at a time, so the medians compare the work on the path, not queueing under saturation.
userinfo_url="http://127.0.0.1:$zitadel_port/oidc/v1/userinfo"
next=$COLD_FIRST
cold warmup-cold usermeta "127.0.0.1:$cold_port" "$next" "$COLD_WARMUP"; next=$((next + COLD_WARMUP))
cold warmup-direct userinfo "$userinfo_url" "$next" "$COLD_WARMUP"; next=$((next + COLD_WARMUP))
for round in $(seq 1 "$ROUNDS"); do
  cold "zitadel-direct-$round" userinfo "$userinfo_url" "$next" "$COLD_REQUESTS"; next=$((next + COLD_REQUESTS))
  cold "usermeta-cold-$round" usermeta "127.0.0.1:$cold_port" "$next" "$COLD_REQUESTS"; next=$((next + COLD_REQUESTS))
  # The same tool on the cached path (token 0, cached above): the gRPC round trip without the lookup.
  cold "usermeta-serial-$round" usermeta "127.0.0.1:$cached_port" 0 "$COLD_REQUESTS" same
done
cold_rss=$(peak_rss_kib "$cold_pid")

# Management loads: an admin's ListMetadata and SetMetadata of one user, through v1 and through v2, in the same
# rounds. h2load sees no gRPC status, so each instance first answers once through grpcurl.
for port in "$v1_port" "$v2_port"; do
  grpcurl -plaintext -H "authorization: Bearer $hot" -d "{\"user_id\":\"$target_user_id\"}" "127.0.0.1:$port" \
    usermeta.v1.UserMetadataService/ListMetadata | grep -q ContractNumber
  grpcurl -plaintext -H "authorization: Bearer $hot" \
    -d "{\"user_id\":\"$target_user_id\",\"entries\":[{\"key\":\"bench.counter\",\"value\":{\"text\":\"1\"}}]}" \
    "127.0.0.1:$port" usermeta.v1.UserMetadataService/SetMetadata | grep -q updateTime
done
for api in v1 v2; do port_var="${api}_port"; load "warmup-$api-list" "$(rpc_url "${!port_var}" ListMetadata)" "$hot" 2000; done
for round in $(seq 1 "$ROUNDS"); do
  for api in v1 v2; do
    port_var="${api}_port"
    load "$api-list-$round" "$(rpc_url "${!port_var}" ListMetadata)" "$hot" "$MANAGEMENT_REQUESTS"
    load "$api-set-$round" "$(rpc_url "${!port_var}" SetMetadata)" "$hot" "$MANAGEMENT_REQUESTS"
  done
done

# Coalescing: 100 concurrent first requests with one new token.
calls_before=$(userinfo_calls)
load coalesce "$(grpc_url "$cached_port")" "$(token 1)" 100 100 1
coalesced=$(( $(userinfo_calls) - calls_before ))
# Distinct tokens: 20 tokens, 200 requests each, twice over, within one TTL.
calls_before=$(userinfo_calls)
for pass in 1 2; do for i in $(seq 2 21); do load "distinct-$pass-$i" "$(grpc_url "$cached_port")" "$(token "$i")" 200 4 4; done; done
distinct=$(( $(userinfo_calls) - calls_before ))
cached_rss=$(peak_rss_kib "$cached_pid"); ceiling_rss=$(peak_rss_kib "$ceiling_pid")

# Memory with FILL cached tokens, on fresh instances: tokens of one user (as every login and refresh gives a
# user another), and one token each of FILL distinct users.
filled_rss=""
fill() { # token list; sets $filled_rss to the instance's peak RSS (no subshell, so cleanup keeps track)
  local port pid failures
  port=$(free_port); start_usermeta "$port" 600s "$(free_port)"; pid=$started
  failures=$("$bin/bench_fill" "127.0.0.1:$port" "$work/fixture.json" "$1" "$FILL" 64)
  [[ $failures == 0 ]] || { echo "$failures of $FILL fill calls ($1) failed"; exit 1; }
  filled_rss=$(peak_rss_kib "$pid"); kill "$pid"
}
fill tokens; fill_rss=$filled_rss
fill distinct_tokens; fill_distinct_rss=$filled_rss

# Propagation: three replicas sharing invalidation through a real redis-server; each of PROPAGATION_WRITES
# writes goes through one replica in turn, and the time until each other replica serves it is measured
# (bench_propagation: both others have the old value cached when the write starts).
command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }
redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no >/dev/null 2>&1 </dev/null &
pids+=($!); wait_port "$redis_port"
fleet=()
for _ in 1 2 3; do
  port=$(free_port)
  USERMETA_REDIS_URL="redis://127.0.0.1:$redis_port" start_usermeta "$port" 60s "$(free_port)"
  fleet+=("127.0.0.1:$port")
done
propagation=$("$bin/bench_propagation" "$hot" "$PROPAGATION_WRITES" "$(IFS=,; echo "${fleet[*]}")")
echo "propagation: $propagation"

results=crates/usermeta-bench/RESULTS.md
[[ -n $QUICK ]] && results=/dev/null  # a smoke run's numbers mean little
python3 crates/usermeta-bench/report.py "$work/runs.tsv" --shapes "$SHAPES" --token-requests "$TOKEN_REQUESTS" \
  --rounds "$ROUNDS" --requests "$REQUESTS" --clients "$CLIENTS" --streams "$STREAMS" --cold-requests "$COLD_REQUESTS" \
  --management-requests "$MANAGEMENT_REQUESTS" \
  --coalesced "$coalesced" --distinct "$distinct" \
  --cached-rss "$cached_rss" --ceiling-rss "$ceiling_rss" --cold-rss "$cold_rss" \
  --fill "$FILL" --fill-rss "$fill_rss" --fill-distinct-rss "$fill_distinct_rss" --propagation "$propagation" \
  | tee "$results"
