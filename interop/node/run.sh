#!/usr/bin/env bash
# Runs client.js as a test: installs the locked dependencies (npm ci), then calls `usermeta dev` (started here, or
# the one USERMETA_ADDR names, as interop/run.sh sets it).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../server.sh"

if [[ ! -d "$here/node_modules" ]] || ! cmp -s "$here/package-lock.json" "$here/node_modules/.package-lock.json.copy"; then
  echo "-- npm ci (package-lock.json)"
  (cd "$here" && npm ci --loglevel=error --no-audit --no-fund </dev/null)
  cp "$here/package-lock.json" "$here/node_modules/.package-lock.json.copy"
fi
trap 'status=$?; [[ $status -eq 0 || -z "$usermeta_workdir" ]] || { echo "--- usermeta logs"; cat "$usermeta_workdir/logs"; }; usermeta_dev_stop || true' EXIT
usermeta_dev_start
node "$here/client.js" </dev/null
usermeta_dev_stop
trap - EXIT
