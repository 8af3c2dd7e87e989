#!/usr/bin/env bash
# Creates/s with two engine processes in front of the same four units,
# against one process, in one run (issue 23: "report the two-process
# figure"). Closed loop, creates only; the two processes each get half the
# connections from a generator of their own.
#
# Usage: bash bench/two_processes.sh   (DURATION=15 CONNS=256)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-15}
CONNS=${CONNS:-256}

# shellcheck source=bench/lib.sh
source bench/lib.sh
cargo build --release -q --bin order-engine --bin order-loadgen

start_mariadb
# Creates/s of one generator run against $1 with $2 connections, into $3.
run() { ./target/release/order-loadgen --url "http://127.0.0.1:$1" --mix create=100 \
  --connections "$2" --duration "${DURATION}s" --warmup 0s --json "$3" >/dev/null 2>&1; }
rate() { python3 -c "import json; r=json.load(open('$1')); print(round(r['throughput_per_sec']), r['errors'])"; }

echo "== one engine process, $CONNS connections"
start_engine
FIRST=$PORT
run "$FIRST" "$CONNS" "$WORK/one.json"
echo "   creates/s, errors: $(rate "$WORK/one.json")"

echo "== two engine processes on the same units, $((CONNS / 2)) connections each"
SECOND=$(free_port)
sed "s/^port = $FIRST\$/port = $SECOND/" "$WORK/engine.toml" >"$WORK/engine2.toml"
"${ENGINE_BIN:-./target/release/order-engine}" --config "$WORK/engine2.toml" >"$WORK/engine2.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 600); do curl -sf "http://127.0.0.1:$SECOND/readyz" >/dev/null && break; sleep 0.1; done
run "$FIRST" $((CONNS / 2)) "$WORK/a.json" &
A=$!
run "$SECOND" $((CONNS / 2)) "$WORK/b.json"
wait "$A"
read -r a ea <<<"$(rate "$WORK/a.json")"
read -r b eb <<<"$(rate "$WORK/b.json")"
echo "   creates/s: $a + $b = $((a + b)), errors $ea + $eb"
