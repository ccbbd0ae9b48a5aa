#!/usr/bin/env bash
# A profile (not a test): instructions per call, counted by valgrind's callgrind, which is stable on a noisy
# machine where timings are not. For the bare tonic server (the ceiling), usermeta's cached GetMyMetadata, its
# cached Envoy Check and the bare server answering Check with usermeta's answer, in the default configuration (no RUST_LOG): each server runs under callgrind twice, once
# answering N requests and once 2N (h2load -c 1 -m PROFILE_STREAMS, after one warm-up call that fills the cache),
# and the difference of the two totals over N is what one more call costs, start-up and shutdown subtracted.
# Prints a markdown table. Knobs: PROFILE_REQUESTS (N, default 2000), PROFILE_STREAMS (8), KEEP=dir keeps the
# callgrind files there (for callgrind_annotate; they are made with --dump-instr=no).
set -euo pipefail
cd "$(dirname "$0")/.."
unset RUST_LOG

N=${PROFILE_REQUESTS:-2000}
M=${PROFILE_STREAMS:-8}
command -v h2load >/dev/null || { apt-get update -qq && apt-get install -y -qq nghttp2-client >/dev/null; }
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
cargo build --release --locked -p usermeta -p usermeta-bench --bins
bin=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d)
keep=${KEEP:-}
[[ -n $keep ]] && mkdir -p "$keep"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 "${2:-1200}"); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "nothing listens on $1"; exit 1; }

zitadel_port=$(free_port); control_port=$(free_port)
"$bin/bench_zitadel" "127.0.0.1:$zitadel_port" "127.0.0.1:$control_port" 4 4 "$work/fixture.json" &
pids+=($!)
wait_port "$control_port"
field() { python3 -c "import json,sys; d=json.load(open('$work/fixture.json')); print(eval(sys.argv[1]))" "$1"; }
zitadel_url=$(field 'd["url"]'); user_id=$(field 'd["user_id"]'); field 'd["service_pat"]' >"$work/pat"
hot=$(field 'd["tokens"][0]')
printf '\0\0\0\0\0' >"$work/empty-request.bin"
"$bin/bench_check_request" "$hot" "$work/check-request.bin"

# One server under callgrind, one warm-up call, `n` calls; prints the run's total instructions.
instructions() { # name n what(ceiling|usermeta|check|check-ceiling)
  local name=$1 n=$2 port authz_port pid out=$work/$1.callgrind path data
  port=$(free_port); authz_port=$(free_port)
  if [[ $3 == ceiling || $3 == check-ceiling ]]; then
    valgrind --tool=callgrind --dump-instr=no --callgrind-out-file="$out" \
      "$bin/bench_ceiling" "127.0.0.1:$port" "$user_id" 2>"$work/$name.valgrind" &
  else
    USERMETA_EXT_AUTHZ=true USERMETA_EXT_AUTHZ_HEADERS=ContractNumber=x-user-contract-number \
      USERMETA_LISTEN="127.0.0.1:$port" USERMETA_EXT_AUTHZ_LISTEN="127.0.0.1:$authz_port" \
      USERMETA_ZITADEL_URL="$zitadel_url" USERMETA_SERVICE_PAT_FILE="$work/pat" \
      valgrind --tool=callgrind --dump-instr=no --callgrind-out-file="$out" \
      "$bin/usermeta" serve 2>"$work/$name.valgrind" &
  fi
  pid=$!; pids+=("$pid")
  wait_port "$port"
  [[ $3 == usermeta || $3 == check ]] && wait_port "$authz_port"
  path=usermeta.v1.UserMetadataService/GetMyMetadata; data=$work/empty-request.bin
  [[ $3 == check* ]] && { path=envoy.service.auth.v3.Authorization/Check; data=$work/check-request.bin; }
  [[ $3 == check ]] && port=$authz_port
  for count in 1 "$n"; do
    h2load -n "$count" -c 1 -m "$(( count < M ? count : M ))" -t 1 -d "$data" -H 'content-type: application/grpc' \
      -H 'te: trailers' -H "authorization: Bearer $hot" "http://127.0.0.1:$port/$path" >"$work/$name.out"
    grep -q " 0 failed, 0 errored" "$work/$name.out" || { cat "$work/$name.out"; echo "$name had errors"; exit 1; }
  done
  kill -TERM "$pid"; wait "$pid" || true
  [[ -n $keep ]] && cp "$out" "$keep/$name.callgrind"
  awk '/^(summary|totals):/ {print $2; exit}' "$out"
}

printf '| server | instructions per call | of it above the ceiling |\n|---|---:|---:|\n'
ceiling_per_call=""
for what in ceiling usermeta check check-ceiling; do
  one=$(instructions "$what-n" "$N" "$what")
  two=$(instructions "$what-2n" $((2 * N)) "$what")
  per_call=$(( (two - one) / N ))
  [[ $what == ceiling ]] && ceiling_per_call=$per_call
  label=$what
  [[ $what == ceiling ]] && label="bare tonic server (ceiling), GetMyMetadata"
  [[ $what == usermeta ]] && label="usermeta, cached GetMyMetadata"
  [[ $what == check ]] && label="usermeta, cached Check (Envoy ext_authz)"
  [[ $what == check-ceiling ]] && label="bare tonic server answering Check with usermeta's answer (the Check ceiling)"
  printf '| %s | %d | %d |\n' "$label" "$per_call" $((per_call - ceiling_per_call))
done
echo
echo "callgrind, $N and $((2 * N)) calls a run (h2load -c 1 -m $M), the difference over $N; default configuration."
