#!/usr/bin/env bash
# Runs `usermeta dev` as a newcomer would and drives it with the real grpcurl through server reflection only:
# the printed "ready to paste" line must show ContractNumber 1234, and every RPC plus health must answer.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked
workdir=$(mktemp -d)
banner="$workdir/banner.txt"
logs="$workdir/logs.txt"
./target/release/usermeta dev --listen 127.0.0.1:0 >"$banner" 2>"$logs" &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$workdir"' EXIT

for _ in $(seq 1 100); do
  grep -q 'Stop with Ctrl-C' "$banner" && break
  sleep 0.1
done
grep -q 'Stop with Ctrl-C' "$banner" || { echo "usermeta dev did not start"; cat "$banner" "$logs"; exit 1; }

fail() { echo "FAIL: $*"; echo "--- banner"; cat "$banner"; echo "--- logs"; cat "$logs"; exit 1; }
addr=$(sed -n 's/^  gRPC (plaintext): *//p' "$banner")
user_token=$(sed -n 's/^  export USER_TOKEN=//p' "$banner")
admin_token=$(sed -n 's/^  export ADMIN_TOKEN=//p' "$banner")
user_id=$(sed -n 's/^Demo user  \([0-9]*\).*/\1/p' "$banner")

echo "-- the printed grpcurl line"
ready=$(grep -A1 'ready to paste' "$banner" | tail -1)
answer=$(eval "$ready")
echo "$answer"
grep -q '"text": "1234"' <<<"$answer" || fail "the ready-to-paste line did not show ContractNumber 1234"

echo "-- reflection and health"
services=$(grpcurl -plaintext "$addr" list)
for service in usermeta.v1.UserMetadataService grpc.health.v1.Health; do
  grep -qx "$service" <<<"$services" || fail "reflection does not list $service"
done
grpcurl -plaintext "$addr" describe usermeta.v1.UserMetadataService >/dev/null
grpcurl -plaintext "$addr" grpc.health.v1.Health/Check | grep -q SERVING || fail "health is not SERVING"

call() { local token=$1 method=$2 data=$3; grpcurl -plaintext -H "authorization: Bearer $token" -d "$data" "$addr" "usermeta.v1.UserMetadataService/$method"; }

echo "-- SetMetadata, then GetMyMetadata sees it"
call "$user_token" SetMetadata '{"entries":[{"key":"profile.language","value":{"text":"de"}}]}' | grep -q updateTime || fail "SetMetadata"
call "$user_token" GetMyMetadata '{"keys":["profile.language"],"source":"METADATA_SOURCE_AUTH_API"}' | grep -q '"text": "de"' || fail "GetMyMetadata after SetMetadata"

echo "-- ListMetadata of another user, as the admin"
call "$admin_token" ListMetadata "{\"user_id\":\"$user_id\",\"page_size\":1}" | grep -q nextPageToken || fail "ListMetadata paging"

echo "-- WatchMetadata streams a write as it happens"
watched="$workdir/watched.txt"
grpcurl -plaintext -max-time 5 -H "authorization: Bearer $user_token" -d '{"key_prefix":"profile."}' \
  "$addr" usermeta.v1.UserMetadataService/WatchMetadata >"$watched" 2>&1 &
watcher=$!
sleep 1
call "$user_token" SetMetadata '{"entries":[{"key":"profile.theme","value":{"text":"dark"}}]}' >/dev/null || fail "SetMetadata while watching"
wait "$watcher" || true
grep -q '"kind": "CHANGE_KIND_SET"' "$watched" && grep -q '"text": "dark"' "$watched" \
  || fail "WatchMetadata did not stream the write: $(cat "$watched")"

echo "-- DeleteMetadata"
call "$user_token" DeleteMetadata '{"keys":["profile.language"]}' | grep -q updateTime || fail "DeleteMetadata"

echo "-- an invalid request explains itself, with decoded details"
if error=$(call "$user_token" SetMetadata '{"entries":[{"key":"","value":{"text":"x"}}]}' 2>&1); then
  fail "an empty key was accepted"
fi
grep -q 'InvalidArgument' <<<"$error" && grep -q 'google.rpc.BadRequest' <<<"$error" && grep -q 'entries\[0\].key' <<<"$error" \
  || fail "unexpected error output: $error"

echo "-- no token in the logs"
for secret in "$user_token" "$admin_token"; do
  ! grep -qF "$secret" "$logs" || fail "a token appeared in the logs"
done

echo "-- SIGTERM stops it cleanly"
kill -TERM "$pid"
wait "$pid" || fail "usermeta dev exited with $? after SIGTERM"
trap 'rm -rf "$workdir"' EXIT
echo "smoke: ok"
