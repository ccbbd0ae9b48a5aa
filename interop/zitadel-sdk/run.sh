#!/usr/bin/env bash
# The stand-in ZITADEL's v2 user and organisation services against ZITADEL's official Python SDK (PyPI zitadel-client, pinned in
# requirements.txt): builds and starts crates/zitadel-standin/examples/serve.rs (127.0.0.1:0, seeded), runs
# client.py through the SDK's Connect calls, then checks that client.py fails on a wrong answer (so a green run
# means the checks ran). Stops the stand-in on any exit.
#
#   bash interop/zitadel-sdk/run.sh
# Needs python3 (3.9+) with venv, and cargo. The venv lives in target/zitadel-sdk-venv (git-ignored); when
# `python3 -m venv` is missing (Debian without python3-venv) it installs python3-venv: as root, or through
# `sudo -n`.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$repo/target}
[[ "$target_dir" = /* ]] || target_dir="$repo/$target_dir"
venv=$target_dir/zitadel-sdk-venv

# Rebuild the venv when requirements.txt changed since it was made.
if [[ ! -x "$venv/bin/python" ]] || ! cmp -s "$here/requirements.txt" "$venv/requirements.txt"; then
  echo "-- creating $venv from requirements.txt"
  rm -rf "$venv"
  mkdir -p "$target_dir"
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    rm -rf "$venv"
    if [[ $(id -u) -eq 0 ]]; then
      as_root=()
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
      as_root=(sudo -n)
    else
      echo "FAIL: python3 -m venv does not work; install it with: sudo apt-get update && sudo apt-get install -y python3-venv" >&2
      exit 1
    fi
    echo "-- installing python3-venv"
    "${as_root[@]}" apt-get update -qq </dev/null
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv </dev/null >/dev/null
    python3 -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt" </dev/null
  cp "$here/requirements.txt" "$venv/requirements.txt"
fi

echo "-- building the stand-in (cargo build -p zitadel-standin --example serve)"
(cd "$repo" && cargo build --locked --quiet -p zitadel-standin --example serve)
workdir=$(mktemp -d)
standin_pid=""
stop_standin() {
  if [[ -n "$standin_pid" ]]; then
    kill -TERM "$standin_pid" 2>/dev/null || true
    wait "$standin_pid" 2>/dev/null || true
    standin_pid=""
  fi
}
trap 'stop_standin; rm -rf "$workdir"' EXIT
# Starts a freshly seeded stand-in and exports its seed line as STANDIN_SEED.
start_standin() {
  stop_standin
  : >"$workdir/seed"
  "$target_dir/debug/examples/serve" >"$workdir/seed" 2>"$workdir/logs" </dev/null &
  standin_pid=$!
  local _
  for _ in $(seq 1 100); do
    [[ -s "$workdir/seed" ]] && break
    kill -0 "$standin_pid" 2>/dev/null || break
    sleep 0.1
  done
  if [[ ! -s "$workdir/seed" ]]; then
    echo "FAIL: the stand-in did not start"; cat "$workdir/logs"; return 1
  fi
  STANDIN_SEED=$(head -n 1 "$workdir/seed")
  export STANDIN_SEED
  echo "-- stand-in at $(sed -n 's/.*"url":"\([^"]*\)".*/\1/p' <<<"$STANDIN_SEED"), pid $standin_pid"
}
# authlib warns about its own deprecated module on import; not ours to fix.
python=("$venv/bin/python" -W "ignore:authlib.jose module is deprecated")

start_standin
"${python[@]}" "$here/client.py" </dev/null

echo "-- client.py must fail on a wrong answer (an expected user id that is not the seeded one)"
start_standin
if output=$(EXPECT_USER_ID=0 "${python[@]}" "$here/client.py" 2>&1 </dev/null); then
  echo "FAIL: client.py passed although the answer did not match"; exit 1
elif grep -q 'FAIL user_id is the seeded user' <<<"$output"; then
  echo "   ok   it noticed"
else
  echo "FAIL: client.py failed for another reason:"; echo "$output"; exit 1
fi
stop_standin
echo "zitadel-sdk: passed"
