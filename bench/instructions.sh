#!/usr/bin/env bash
# The engine's user-space instructions per create, counted by callgrind: the
# same binary and load give the same count whatever else the machine is doing,
# so an A/B of two builds needs one run each, where timing needs many.
#
#   1. start a durable MariaDB in a temp dir (as bench/run.sh does)
#   2. run the release engine under `valgrind --tool=callgrind`, 4 units
#   3. warm up with 1,000 creates, zero the counters, send REQUESTS creates
#      (closed loop, 32 connections), dump the counters
#   4. print instructions per create and creates per batch (batch size moves
#      the count: compare runs whose batch sizes are close)
#
# Usage: bash bench/instructions.sh          (REQUESTS=3000; OUT=dir keeps the
#        callgrind file for callgrind_annotate)
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS=${REQUESTS:-3000}

# shellcheck source=bench/lib.sh
source bench/lib.sh
install_missing valgrind
cargo build --release -q --bin order-engine --bin order-loadgen
start_mariadb
start_engine valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.%p" --dump-instr=no

LG=(./target/release/order-loadgen --url "http://127.0.0.1:$PORT" --mix create=100 --connections 32 --warmup 0s)
batches() { curl -s "http://127.0.0.1:$PORT/metrics" | awk '/^orderengine_unit_create_batch_size_count/ { s += $2 } END { print s }'; }
"${LG[@]}" --requests 1000 >/dev/null 2>&1
b0=$(batches)
callgrind_control -z "$ENGINE_PID" >/dev/null 2>&1
"${LG[@]}" --requests "$REQUESTS" --json "$WORK/run.json" >/dev/null 2>&1
callgrind_control -d "$ENGINE_PID" >/dev/null 2>&1
b1=$(batches)
n=$(python3 -c "import json; print(json.load(open('$WORK/run.json'))['ops']['create']['count'])")
errors=$(python3 -c "import json; print(json.load(open('$WORK/run.json'))['errors'])")
file=$(ls "$WORK"/callgrind.*.1)
total=$(callgrind_annotate "$file" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
[ -n "${OUT:-}" ] && mkdir -p "$OUT" && cp "$file" "$OUT/"
python3 -c "print(f'{$n} creates ({$errors} errors) in {$b1 - $b0} batches ({$n / max($b1 - $b0, 1):.1f} per batch): {$total / $n:,.0f} instructions per create (engine, user space)')"
