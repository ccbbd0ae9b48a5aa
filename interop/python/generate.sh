#!/usr/bin/env bash
# Generates the Python stubs of proto/usermeta/v1/usermeta.proto into interop/python/gen/ (git-ignored), in a venv
# at interop/python/.venv/ (git-ignored) holding requirements.txt. Run it again after the contract changes.
#
#   bash interop/python/generate.sh
#   interop/python/.venv/bin/python interop/python/client.py     (with USERMETA_ADDR etc. set; see run.sh)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
proto_root=$(cd "$here/../../proto" && pwd)
venv=$here/.venv
out=$here/gen

# Rebuild the venv when requirements.txt changed since it was made.
if [[ ! -x "$venv/bin/python" ]] || ! cmp -s "$here/requirements.txt" "$venv/requirements.txt"; then
  echo "-- creating $venv from requirements.txt"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt" </dev/null
  cp "$here/requirements.txt" "$venv/requirements.txt"
fi

echo "-- generating stubs into $out"
rm -rf "$out"
mkdir -p "$out"
# grpc_tools.protoc brings protoc and the well-known types (google/protobuf/timestamp.proto) along;
# googleapis-common-protos ships google/rpc/status.proto beside its google.rpc.status_pb2, which the stubs import.
googleapis=$("$venv/bin/python" -c 'import google.rpc, os; print(os.path.dirname(os.path.dirname(list(google.rpc.__path__)[0])))')
"$venv/bin/python" -m grpc_tools.protoc \
  --proto_path="$proto_root" --proto_path="$googleapis" \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  usermeta/v1/usermeta.proto
find "$out" -name '*.py*' | sort | sed 's/^/   /'
