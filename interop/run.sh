#!/usr/bin/env bash
# The interop test: starts one `usermeta dev` and runs every client example against it, each checking health, all
# four RPCs and decoded error details: grpcurl (reflection, no proto files), Python (grpcio, generated stubs) and
# Node.js (@grpc/grpc-js, proto loaded at run time). Then makes sure each client fails on a wrong answer, so a
# green run means the checks ran. Stops the server on any exit.
#
#   bash interop/run.sh      (USERMETA_BIN=path/to/usermeta to test a given binary; else this checkout's release
#                             build, built if needed)
# Needs grpcurl, python3 and Node.js with npm; installs the Python and npm packages itself (pinned, git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
source interop/server.sh

# Install first, so that the server is not kept waiting by pip and npm.
echo "== preparing the clients"
bash interop/python/generate.sh
if [[ ! -d interop/node/node_modules ]] || ! cmp -s interop/node/package-lock.json interop/node/node_modules/.package-lock.json.copy; then
  echo "-- npm ci (interop/node/package-lock.json)"
  (cd interop/node && npm ci --loglevel=error --no-audit --no-fund </dev/null)
  cp interop/node/package-lock.json interop/node/node_modules/.package-lock.json.copy
fi

trap 'status=$?; [[ $status -eq 0 || -z "$usermeta_workdir" ]] || { echo "--- usermeta logs"; cat "$usermeta_workdir/logs"; }; usermeta_dev_stop || true' EXIT
usermeta_dev_start

echo
bash interop/grpcurl.sh
echo
bash interop/python/run.sh
echo
bash interop/node/run.sh

echo
echo "== each client fails on a wrong answer (a demo user id that is not the token's)"
for client in "bash interop/grpcurl.sh" "bash interop/python/run.sh" "bash interop/node/run.sh"; do
  if output=$(DEMO_USER_ID=0 $client 2>&1); then
    echo "   FAIL $client passed although the answer did not match"; exit 1
  fi
  grep -q 'FAIL user_id is the demo user' <<<"$output" \
    || { echo "   FAIL $client failed for another reason:"; echo "$output"; exit 1; }
  echo "   ok   $client noticed"
done

echo
usermeta_dev_stop
trap - EXIT
echo "interop: 3 passed, 0 failed"
