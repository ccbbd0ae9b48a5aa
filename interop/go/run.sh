#!/usr/bin/env bash
# Runs the Go client as a test: builds it (build.sh: Debian's Go toolchain and libraries, installed when missing;
# quick when nothing changed), then calls `usermeta dev` (started here, or the one USERMETA_ADDR names, as
# interop/run.sh sets it).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=SCRIPTDIR/../server.sh
source "$here/../server.sh"

bash "$here/build.sh"
trap 'status=$?; [[ $status -eq 0 || -z "$usermeta_workdir" ]] || { echo "--- usermeta logs"; cat "$usermeta_workdir/logs"; }; usermeta_dev_stop || true' EXIT
usermeta_dev_start
"$here/.build/client" </dev/null
usermeta_dev_stop
trap - EXIT
