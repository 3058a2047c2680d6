#!/usr/bin/env bash
# Runs every check CI runs: formatting, lints, and the whole test suite
# against a real nats-server (installed into .tools/ on first use).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/install-nats-server.sh
export NATS_SERVER_BIN="$PWD/.tools/nats-server/bin/nats-server"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --all-targets --locked
