#!/usr/bin/env bash
# Lints the contract with buf (buf.yaml: STANDARD + COMMENTS) and checks it is `buf format`-clean.
# buf comes from the npm registry, pinned; npx caches it, so later runs start fast. Needs Node.js and npm.
#
# buf.yaml takes google/rpc/status.proto from the BSR (buf.build/googleapis/googleapis), which CI cannot reach.
# So buf runs in a scratch workspace: the contract, buf.yaml's lint and breaking rules, and as a second module
# google/rpc/status.proto from npm's google-proto-files (the package the Node client loads it from).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

BUF_VERSION=1.75.0
GOOGLE_PROTO_FILES_VERSION=5.0.3
buf() { npx --yes --loglevel=error "@bufbuild/buf@$BUF_VERSION" "$@" </dev/null; }

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
workspace=$scratch/workspace
mkdir -p "$workspace/googleapis/google/rpc" "$workspace/interop/go"
cp -r "$repo/proto" "$workspace/proto"
cp "$repo/interop/go/buf.gen.yaml" "$workspace/interop/go/"
(cd "$scratch" && npm pack --silent --loglevel=error "google-proto-files@$GOOGLE_PROTO_FILES_VERSION" >/dev/null </dev/null \
  && tar -xzf "google-proto-files-$GOOGLE_PROTO_FILES_VERSION.tgz")
cp "$scratch/package/google/rpc/status.proto" "$workspace/googleapis/google/rpc/"
# buf.yaml with the BSR dependency replaced by the local module, which only the contract's rules skip.
python3 - "$repo/buf.yaml" "$workspace/buf.yaml" <<'PY'
import sys
lines = open(sys.argv[1]).read().splitlines()
out, skipping = [], False
for line in lines:
    if line.startswith("deps:"):
        skipping = True
        continue
    if skipping and line.startswith("  - "):
        continue
    skipping = False
    out.append(line)
    if line == "  - path: proto":
        out.append("  - path: googleapis")
        out.append("    lint:")
        out.append("      use: [MINIMAL]")
open(sys.argv[2], "w").write("\n".join(out) + "\n")
PY
grep -q 'buf.build/googleapis/googleapis' "$repo/buf.yaml" || { echo "FAIL: buf.yaml no longer names googleapis"; exit 1; }
cd "$workspace"

echo "-- buf $(buf --version)"
echo "-- files in the module:"
files=$(buf ls-files)
sed 's/^/   /' <<<"$files"
grep -qx 'proto/usermeta/v1/usermeta.proto' <<<"$files" || { echo "FAIL: buf does not see the contract"; exit 1; }

echo "-- buf lint (STANDARD, COMMENTS)"
buf lint proto
echo "   ok"
echo "-- buf format --diff --exit-code"
buf format --diff --exit-code proto
echo "   ok"

# interop/go/buf.gen.yaml is documentation users copy (CI's Go client is built with protoc, interop/go/build.sh); this
# step runs before the interop step installs the real Go plugins, so stand-in plugins that answer with no files
# check that buf accepts the template and runs both plugins on the contract.
echo "-- buf generate --template interop/go/buf.gen.yaml (stand-in protoc-gen-go and protoc-gen-go-grpc)"
for plugin in protoc-gen-go protoc-gen-go-grpc; do
  printf '#!/bin/sh\ncat >"%s/%s.request"\n' "$scratch" "$plugin" >"$scratch/$plugin"
  chmod +x "$scratch/$plugin"
done
PATH="$scratch:$PATH" buf generate --template interop/go/buf.gen.yaml -o "$scratch/out" proto
for plugin in protoc-gen-go protoc-gen-go-grpc; do
  [[ -s "$scratch/$plugin.request" ]] || { echo "FAIL: buf did not run $plugin"; exit 1; }
  grep -q 'usermeta/v1/usermeta.proto' "$scratch/$plugin.request" || { echo "FAIL: $plugin did not get the contract"; exit 1; }
  grep -q 'example.com/usermeta-client/gen/usermeta/v1;usermetav1' "$scratch/$plugin.request" \
    || { echo "FAIL: managed mode did not set go_package for $plugin"; exit 1; }
  grep -q 'google.golang.org/genproto/googleapis/rpc/status' "$scratch/$plugin.request" \
    && ! grep -q 'example.com/usermeta-client/gen/google' "$scratch/$plugin.request" \
    || { echo "FAIL: managed mode changed google/rpc/status.proto's go_package for $plugin"; exit 1; }
  echo "   ok   $plugin got usermeta/v1/usermeta.proto with go_package .../gen/usermeta/v1;usermetav1"
done

echo "-- buf lint rejects a broken copy (a camelCase field, an undocumented message)"
mkdir -p "$scratch/broken/usermeta/v1"
sed -e 's/string user_id = 1;/string userId = 1;/' -e 's|^// KeyFilter narrows.*$||' \
  proto/usermeta/v1/usermeta.proto >"$scratch/broken/usermeta/v1/usermeta.proto"
cp -r googleapis "$scratch/googleapis"
sed 's|path: proto|path: broken|' buf.yaml >"$scratch/buf.yaml"
if (cd "$scratch" && buf lint broken) >"$scratch/lint.out" 2>&1; then
  echo "FAIL: buf lint accepted the broken copy"; exit 1
fi
grep -q 'should be lower_snake_case' "$scratch/lint.out" && grep -q 'Message "KeyFilter" should have a non-empty comment' "$scratch/lint.out" \
  || { echo "FAIL: buf lint rejected the broken copy for other reasons:"; cat "$scratch/lint.out"; exit 1; }
echo "   ok   rejected"
echo "buf-lint: ok"
