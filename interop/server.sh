# Sourced by the interop scripts: starts `usermeta dev` for them, unless one is already given.
#
#   usermeta_dev_start   when USERMETA_ADDR is unset: starts `usermeta dev --listen 127.0.0.1:0`, waits for its
#                        banner and exports USERMETA_ADDR, USER_TOKEN, ADMIN_TOKEN and DEMO_USER_ID from it;
#                        when USERMETA_ADDR is set: uses that server (the caller exported the rest too).
#   usermeta_dev_stop    stops the server usermeta_dev_start started (SIGTERM, must exit 0), checks that no
#                        token reached its logs, and removes its files. Safe to call twice; use it in a trap.
#
# The binary is $USERMETA_BIN, or else this checkout's release build (built here if needed).
# The demo tokens are throw-away tokens of usermeta dev's in-process ZITADEL stand-in; they are still not printed.

interop_repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
usermeta_pid=""
usermeta_workdir=""

usermeta_bin() {
  if [[ -n "${USERMETA_BIN:-}" ]]; then
    echo "$USERMETA_BIN"
    return
  fi
  (cd "$interop_repo_root" && cargo build --release --locked --quiet) >&2
  local target_dir=${CARGO_TARGET_DIR:-target}
  [[ "$target_dir" = /* ]] || target_dir="$interop_repo_root/$target_dir"
  echo "$target_dir/release/usermeta"
}

usermeta_dev_start() {
  if [[ -n "${USERMETA_ADDR:-}" ]]; then
    : "${USER_TOKEN:?USERMETA_ADDR is set, so USER_TOKEN must be too}" "${ADMIN_TOKEN:?}" "${DEMO_USER_ID:?}"
    echo "-- using the usermeta at $USERMETA_ADDR"
    return
  fi
  local bin
  bin=$(usermeta_bin)
  [[ -x "$bin" ]] || { echo "FAIL: no usermeta binary at $bin (set USERMETA_BIN)"; return 1; }
  usermeta_workdir=$(mktemp -d)
  "$bin" dev --listen 127.0.0.1:0 >"$usermeta_workdir/banner" 2>"$usermeta_workdir/logs" </dev/null &
  usermeta_pid=$!
  local _
  for _ in $(seq 1 100); do
    grep -q 'Stop with Ctrl-C' "$usermeta_workdir/banner" && break
    kill -0 "$usermeta_pid" 2>/dev/null || break
    sleep 0.1
  done
  if ! grep -q 'Stop with Ctrl-C' "$usermeta_workdir/banner"; then
    echo "FAIL: usermeta dev did not start"
    cat "$usermeta_workdir/logs"
    return 1
  fi
  USERMETA_ADDR=$(sed -n 's/^  gRPC (plaintext): *//p' "$usermeta_workdir/banner")
  USER_TOKEN=$(sed -n 's/^  export USER_TOKEN=//p' "$usermeta_workdir/banner")
  ADMIN_TOKEN=$(sed -n 's/^  export ADMIN_TOKEN=//p' "$usermeta_workdir/banner")
  DEMO_USER_ID=$(sed -n 's/^Demo user  \([0-9]*\).*/\1/p' "$usermeta_workdir/banner")
  export USERMETA_ADDR USER_TOKEN ADMIN_TOKEN DEMO_USER_ID
  [[ -n "$USERMETA_ADDR" && -n "$USER_TOKEN" && -n "$ADMIN_TOKEN" && -n "$DEMO_USER_ID" ]] \
    || { echo "FAIL: could not read the address, tokens and demo user id from usermeta dev's banner"; return 1; }
  echo "-- started usermeta dev ($bin) at $USERMETA_ADDR, pid $usermeta_pid; demo user $DEMO_USER_ID"
}

usermeta_dev_stop() {
  local status=0
  if [[ -n "$usermeta_pid" ]]; then
    if kill -TERM "$usermeta_pid" 2>/dev/null; then
      wait "$usermeta_pid" || status=$?
      if [[ $status -ne 0 ]]; then
        echo "FAIL: usermeta dev exited with $status after SIGTERM"; cat "$usermeta_workdir/logs"
      fi
    fi
    local token
    for token in "${USER_TOKEN:-}" "${ADMIN_TOKEN:-}"; do
      if [[ -n "$token" ]] && grep -qF "$token" "$usermeta_workdir/logs"; then
        echo "FAIL: a token appeared in usermeta's logs"; status=1
      fi
    done
    echo "-- stopped usermeta dev (pid $usermeta_pid)"
    usermeta_pid=""
  fi
  [[ -z "$usermeta_workdir" ]] || rm -rf "$usermeta_workdir"
  usermeta_workdir=""
  return $status
}
