#!/usr/bin/env bash
# Runs the README's first command exactly as the README prints it (the first line of its first `sh` block),
# from the repository root, as a newcomer would: waits for the banner, runs the ready-to-paste grpcurl line
# the banner prints, and checks that it shows the demo user's ContractNumber. Reuses the release build CI
# already made. Fails naming what broke: the command, the banner, or the line.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/grpcurl-env.sh

command=$(awk '/^```sh$/ {inside=1; next} inside && NF {print; exit}' README.md)
[[ -n $command ]] || { echo "FAIL: README.md has no \`\`\`sh block with a command"; exit 1; }
echo "-- the README's first command: $command"
[[ $command == "cargo run --release -- dev" ]] \
  || echo "note: the README's first command is no longer \`cargo run --release -- dev\`; running it as written"

workdir=$(mktemp -d)
out="$workdir/out.txt"
# setsid: the command's own process group, so cargo and the server it starts stop together.
setsid bash -c "$command" >"$out" 2>&1 &
pid=$!
trap 'kill -- -"$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$workdir"' EXIT

# A build may come first (none when CI's release build is fresh): up to 20 minutes.
for _ in $(seq 1 12000); do
  grep -q 'Stop with Ctrl-C' "$out" && break
  kill -0 "$pid" 2>/dev/null || { echo "FAIL: \`$command\` exited before its banner:"; cat "$out"; exit 1; }
  sleep 0.1
done
grep -q 'Stop with Ctrl-C' "$out" || { echo "FAIL: \`$command\` printed no banner in 20 minutes:"; cat "$out"; exit 1; }

ready=$(grep -A1 'ready to paste' "$out" | tail -1 | sed 's/^ *//')
[[ $ready == grpcurl* ]] || { echo "FAIL: the banner has no ready-to-paste grpcurl line:"; cat "$out"; exit 1; }
echo "-- the banner's ready-to-paste line: ${ready%%Bearer*}Bearer …"
answer=$(eval "$ready") || { echo "FAIL: the ready-to-paste line failed:"; cat "$out"; exit 1; }
grep -q '"text": "1234"' <<<"$answer" || { echo "FAIL: the ready-to-paste line did not show ContractNumber 1234: $answer"; exit 1; }
echo "readme first command: ok"
