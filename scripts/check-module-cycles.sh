#!/usr/bin/env bash
# CI: no module of a crate imports a module that imports it back (layers point down). Checks every crate of the
# workspace at depth 2 (top-level modules and their children), then makes sure the check notices a cycle.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 scripts/check_module_cycles.py --depth 2 src crates/*/src

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch/src/low"
printf 'mod high;\nmod low;\n' >"$scratch/src/lib.rs"
printf 'use crate::low::Thing;\npub struct Other;\n' >"$scratch/src/high.rs"
printf 'pub struct Thing(crate::high::Other);\n' >"$scratch/src/low/mod.rs"
if python3 scripts/check_module_cycles.py --depth 2 "$scratch/src" >/dev/null; then
  echo "the cycle check passed a tree with a cycle (high <-> low)"; exit 1
fi
echo "ok: a planted cycle is reported"
