#!/usr/bin/env bash
# The soak (a benchmark-style run, not a test): usermeta's release binary in its default configuration (but for
# the request budget toward ZITADEL, off: the stand-in has no rate limit) under
# mixed load from many users and tokens against a stand-in ZITADEL, while a schedule injects 300 ms latency,
# 5xx blips, 429 with Retry-After, dropped connections and a ZITADEL restart on the same address with the same
# state (crates/usermeta-bench/src/bin/bench_soak.rs). Reports acknowledged writes lost, answers naming the
# wrong user or value, reads older than an acknowledged write (all must be 0), the status codes per phase, how
# long errors went on after each fault, and RSS at the start and the end; exits 1 when anything was lost or
# wrong. Knobs: SOAK_SECONDS (default 600), SOAK_WORKERS (default 32).
set -euo pipefail
cd "$(dirname "$0")/.."
unset RUST_LOG
SOAK_SECONDS=${SOAK_SECONDS:-600}
SOAK_WORKERS=${SOAK_WORKERS:-32}
cargo build --release --locked --quiet -p usermeta -p usermeta-bench --bin usermeta --bin bench_soak
bin=${CARGO_TARGET_DIR:-target}/release
log=${SOAK_LOG:-$(mktemp)}
[[ -n ${SOAK_LOG:-} ]] || trap 'rm -f "$log"' EXIT
if ! "$bin/bench_soak" "$bin/usermeta" "$SOAK_SECONDS" "$SOAK_WORKERS" "$log"; then
  echo "--- usermeta's log (last 40 lines)"; tail -n 40 "$log"; exit 1
fi
