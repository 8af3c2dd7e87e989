#!/usr/bin/env bash
# How fast the outbox relay drains a backlog once its broker comes back
# (issue 26: "when the broker comes back the backlog drains in order").
# The engine relays to a NATS port where no broker listens while a closed
# loop creates for LOAD seconds; then nats-server starts on that port and
# the script times how long the relay takes to publish as many events as
# the backlog held, with creates going on meanwhile at RATE/s (0: none).
#
# Usage: bash bench/relay_drain.sh   (LOAD=15 CONNS=256 RATE=0)
set -euo pipefail
cd "$(dirname "$0")/.."

LOAD=${LOAD:-15}
CONNS=${CONNS:-256}
RATE=${RATE:-0}

# shellcheck source=bench/lib.sh
source bench/lib.sh
install_missing curl nats-server
cargo build --release -q --bin order-engine --bin order-loadgen
start_mariadb
NATS_PORT=$(free_port)
export ORDERENGINE__EVENTS__RELAY=true ORDERENGINE__EVENTS__NATS_URL="nats://127.0.0.1:$NATS_PORT"
start_engine

published() {
  curl -sf "http://127.0.0.1:$PORT/metrics" |
    awk '$1 ~ /^orderengine_events_published_total({|$)/ { s += $2 } END { print s + 0 }'
}
created() { python3 -c "import json; r=json.load(open('$1')); print(r['ops']['create']['count'] - r['errors'])"; }

echo "== ${LOAD} s of creates (${CONNS} connections) with the broker down"
./target/release/order-loadgen --url "http://127.0.0.1:$PORT" --mix create=100 \
  --connections "$CONNS" --duration "${LOAD}s" --warmup 0s --json "$WORK/outage.json" >/dev/null 2>"$WORK/loadgen.err"
backlog=$(created "$WORK/outage.json")
echo "   backlog: $backlog created events, $(published) published"

during=()
if [ "$RATE" != 0 ]; then
  ./target/release/order-loadgen --url "http://127.0.0.1:$PORT" --mix create=100 --rate "$RATE" \
    --connections 1024 --duration 120s --warmup 0s --json "$WORK/during.json" >/dev/null 2>>"$WORK/loadgen.err" &
  during=($!)
  PIDS+=($!)
fi
nats-server -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$WORK/nats" >"$WORK/nats.log" 2>&1 &
NATS_PID=$!
PIDS+=($!)
t0=$(date +%s.%N)
e0=$(cpu_secs "$ENGINE_PID"); d0=$(cpu_secs "$DB_PID")
echo "== broker started$([ "$RATE" != 0 ] && echo ", creates going on at $RATE/s")"
while [ "$(published)" -lt "$backlog" ]; do
  if python3 -c "import sys; sys.exit(0 if $(date +%s.%N) - $t0 > 300 else 1)"; then
    echo "FAILED: $(published) of the backlog's $backlog events published after 300 s"
    exit 1
  fi
  sleep 0.2
done
t1=$(date +%s.%N)
e1=$(cpu_secs "$ENGINE_PID"); d1=$(cpu_secs "$DB_PID"); b1=$(cpu_secs "$NATS_PID")
[ ${#during[@]} -eq 0 ] || kill "${during[@]}" 2>/dev/null || true
python3 -c "
t, n = $t1 - $t0, $backlog
print(f'== result: the backlog\'s {n} events published {t:.1f} s after the broker started '
      f'(connecting included): {n / t:,.0f} events/s; CPU us per event: engine {($e1 - $e0) / n * 1e6:.0f}, '
      f'MariaDB {($d1 - $d0) / n * 1e6:.0f}, nats-server {$b1 / n * 1e6:.0f} (creates going on included)')"
