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
echo "-- buf format --diff --exit-code"
buf format --diff --exit-code
echo "buf-lint: ok"
