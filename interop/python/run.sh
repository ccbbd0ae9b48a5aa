#!/usr/bin/env bash
# Runs client.py as a test: makes the venv and stubs (generate.sh), then calls `usermeta dev` (started here, or the
# one USERMETA_ADDR names, as interop/run.sh sets it).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../server.sh"

bash "$here/generate.sh"
trap 'status=$?; [[ $status -eq 0 || -z "$usermeta_workdir" ]] || { echo "--- usermeta logs"; cat "$usermeta_workdir/logs"; }; usermeta_dev_stop || true' EXIT
usermeta_dev_start
"$here/.venv/bin/python" "$here/client.py" </dev/null
usermeta_dev_stop
trap - EXIT
