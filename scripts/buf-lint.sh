#!/usr/bin/env bash
# Lints the contract with buf (buf.yaml: STANDARD + COMMENTS) and checks it is `buf format`-clean.
# buf comes from the npm registry, pinned; npx caches it, so later runs start fast. Needs Node.js and npm.
set -euo pipefail
cd "$(dirname "$0")/.."

BUF_VERSION=1.75.0
buf() { npx --yes --loglevel=error "@bufbuild/buf@$BUF_VERSION" "$@" </dev/null; }

echo "-- buf $(buf --version)"
echo "-- files in the module:"
files=$(buf ls-files)
sed 's/^/   /' <<<"$files"
grep -qx 'proto/usermeta/v1/usermeta.proto' <<<"$files" || { echo "FAIL: buf does not see the contract"; exit 1; }

echo "-- buf lint (STANDARD, COMMENTS)"
buf lint
echo "   ok"
echo "-- buf format --diff --exit-code"
buf format --diff --exit-code
echo "   ok"

# interop/go/buf.gen.yaml is documentation users copy (CI's Go client is built with protoc, interop/go/build.sh); this
# step runs before the interop step installs the real Go plugins, so stand-in plugins that answer with no files
# check that buf accepts the template and runs both plugins on the contract.
echo "-- buf generate --template interop/go/buf.gen.yaml (stand-in protoc-gen-go and protoc-gen-go-grpc)"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for plugin in protoc-gen-go protoc-gen-go-grpc; do
  printf '#!/bin/sh\ncat >"%s/%s.request"\n' "$scratch" "$plugin" >"$scratch/$plugin"
  chmod +x "$scratch/$plugin"
done
PATH="$scratch:$PATH" buf generate --template interop/go/buf.gen.yaml -o "$scratch/out"
for plugin in protoc-gen-go protoc-gen-go-grpc; do
  [[ -s "$scratch/$plugin.request" ]] || { echo "FAIL: buf did not run $plugin"; exit 1; }
  grep -q 'usermeta/v1/usermeta.proto' "$scratch/$plugin.request" || { echo "FAIL: $plugin did not get the contract"; exit 1; }
  grep -q 'example.com/usermeta-client/gen/usermeta/v1;usermetav1' "$scratch/$plugin.request" \
    || { echo "FAIL: managed mode did not set go_package for $plugin"; exit 1; }
  echo "   ok   $plugin got usermeta/v1/usermeta.proto with go_package .../gen/usermeta/v1;usermetav1"
done

echo "-- buf lint rejects a broken copy (a camelCase field, an undocumented message)"
mkdir -p "$scratch/broken/usermeta/v1"
sed -e 's/string user_id = 1;/string userId = 1;/' -e 's|^// KeyFilter narrows.*$||' \
  proto/usermeta/v1/usermeta.proto >"$scratch/broken/usermeta/v1/usermeta.proto"
cp buf.yaml "$scratch/buf.yaml"
sed -i 's|path: proto|path: broken|' "$scratch/buf.yaml"
if (cd "$scratch" && buf lint) >"$scratch/lint.out" 2>&1; then
  echo "FAIL: buf lint accepted the broken copy"; exit 1
fi
grep -q 'should be lower_snake_case' "$scratch/lint.out" && grep -q 'Message "KeyFilter" should have a non-empty comment' "$scratch/lint.out" \
  || { echo "FAIL: buf lint rejected the broken copy for other reasons:"; cat "$scratch/lint.out"; exit 1; }
echo "   ok   rejected"
echo "buf-lint: ok"
