#!/usr/bin/env bash
# Runs jetcron locally: a nats-server with JetStream, one scheduler, two
# workers, and a sample sharded job whose results stream to this terminal.
# The scheduler serves the web console on 127.0.0.1:8080 (JETCRON_DEV_HTTP
# for another address), with an operator token made for this run.
# Ctrl-C stops everything. Set JETCRON_DEV_PORT to use another port.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/install-nats-server.sh
cargo build --bins --locked

port="${JETCRON_DEV_PORT:-4222}"
export NATS_URL="nats://127.0.0.1:$port"
run="$(mktemp -d -t jetcron-dev.XXXXXX)"
bin=target/debug
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  echo "stopped; logs were in $run"
}
trap cleanup EXIT
trap "exit 130" INT TERM

# max_file_store is set: left out, the server lets its streams reserve at
# most 75% of the disk's free space and refuses jetcron's bounded streams on
# a nearly full disk.
cat >"$run/nats.conf" <<EOF
listen: "127.0.0.1:$port"
jetstream {
  store_dir: "$run/store"
  max_file_store: 64GB
}
EOF
.tools/nats-server/bin/nats-server -c "$run/nats.conf" >"$run/nats.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done

http="${JETCRON_DEV_HTTP:-127.0.0.1:8080}"
token="dev-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
"$bin/jetcron-scheduler" --id scheduler-1 --http-addr "$http" --console-token "operator:$token" \
  >"$run/scheduler-1.log" 2>&1 &
pids+=($!)
for w in 1 2; do
  "$bin/jetcron-worker" --id "worker-$w" --group default --concurrency 4 --allow-shell >"$run/worker-$w.log" 2>&1 &
  pids+=($!)
done

# The API answers once the scheduler is up.
for _ in $(seq 100); do
  "$bin/jetcron" job put -f examples/hello.json 2>/dev/null && break
  sleep 0.2
done
echo "NATS at $NATS_URL; logs in $run"
echo "web console at http://$http/ (token: $token)"
echo "watching results and events (Ctrl-C to stop everything):"
"$bin/jetcron" watch
