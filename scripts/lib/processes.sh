# Sourced by the scripts that run usermeta, the stand-in and friends as processes: a scratch directory $work,
# the processes started ($pids, killed on exit; the last 40 lines of every log in $work are shown when the
# script fails), and helpers to wait for them.
work=$(mktemp -d)
pids=()
cleanup() {
  local status=$?
  if [[ $status -ne 0 ]]; then
    for log in "$work"/*.log; do [[ -s "$log" ]] && { echo "--- $(basename "$log")"; tail -n 40 "$log"; }; done
  fi
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
  exit $status
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # port what
  local _
  for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
  fail "$2 does not listen on $1"
}
wait_file() { # file pid what
  local _
  for _ in $(seq 1 100); do [[ -s "$1" ]] && return 0; kill -0 "$2" 2>/dev/null || break; sleep 0.1; done
  fail "$3 did not start"
}

# The seeded stand-in ZITADEL (crates/zitadel-standin/examples/serve.rs, built in $bin): alice (no metadata)
# and road.runner (ContractNumber=1234), with tokens; `seed FIELD` reads its JSON line, $standin_pid is its pid.
start_standin() {
  "$bin/examples/serve" >"$work/seed.json" 2>"$work/standin.log" </dev/null &
  standin_pid=$!; pids+=("$standin_pid")
  wait_file "$work/seed.json" "$standin_pid" "the stand-in"
  seed pat >"$work/service.pat"
}
seed() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$work/seed.json" "$1"; }
