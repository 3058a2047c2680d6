#!/usr/bin/env bash
# Runs every check CI runs: formatting, lints, the whole test suite against a
# real nats-server (installed into .tools/ on first use, with nats-py for the
# Python worker's test, and Chromium from the distribution's packages for the
# web console's browser test), then a short chaos
# run (docs/reliability.md) and the benchmark's smoke run (docs/performance.md).
set -euo pipefail

usage() {
  cat <<'EOF'
usage: ./scripts/test.sh [--chaos "ARGS"]

  --chaos "ARGS"  arguments of the chaos run (default: --duration 75s, about 2 minutes);
                  also taken from $JETCRON_CHAOS_ARGS. A long run on demand:
                    ./scripts/test.sh --chaos "--duration 30m --seed 7 --cluster"
                    JETCRON_CHAOS_ARGS="--duration 30m --seed 7 --cluster" ./scripts/test.sh
                  `cargo run -p jetcron-chaos -- --help` lists every chaos option.
EOF
}

chaos_args="${JETCRON_CHAOS_ARGS:---duration 75s}"
while [ $# -gt 0 ]; do
  case "$1" in
    --chaos)
      [ $# -ge 2 ] || { usage >&2; exit 2; }
      chaos_args="$2"
      shift 2
      ;;
    -h | --help)
      usage
      exit 0
      ;;
    *)
      echo "test.sh: unknown argument '$1'" >&2
      usage >&2
      exit 2
      ;;
  esac
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/install-nats-server.sh
# For tests/tests/protocol.rs, which runs the Python example worker.
./scripts/install-nats-py.sh
# For tests/tests/console.rs, which drives the web console in headless Chromium.
./scripts/install-chromium.sh
export NATS_SERVER_BIN="$PWD/.tools/nats-server/bin/nats-server"
# A clean build gains nothing from incremental caches, which would take
# another 3 GB of disk (set CARGO_INCREMENTAL=1 to keep them).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --all-targets --locked
# The examples in the crates' documentation (the embedded worker's) compile.
cargo test --workspace --doc --locked
# The chaos run starts the scheduler and worker binaries built next to it.
cargo build --workspace --bins --locked
# shellcheck disable=SC2086 # the chaos arguments are separate words
cargo run -p jetcron-chaos --locked -- $chaos_args
# The benchmark's smoke run: every scenario once with tiny counts, against the
# release binaries it finds next to itself (docs/performance.md).
cargo build --release --locked -p jetcron-scheduler -p jetcron-worker
cargo run --release -p jetcron-bench --locked -- --smoke
