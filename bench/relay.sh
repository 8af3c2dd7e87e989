#!/usr/bin/env bash
# What the outbox relay costs the create path (issue 26: "must not cost the
# create path more than 15%"), measured as an A/B on one MariaDB in one run:
# the engine's closed-loop creates/s with the relay off, then on, then off
# again, ... (interleaved, so that a noisy neighbour slows both alike). Each
# run starts a fresh engine on fresh unit databases once MariaDB has written
# back the last run's dirty pages; a relay run also waits for the outbox to
# drain after the load, so that a relay that fell behind cannot look cheap.
#
# Usage: bash bench/relay.sh   (ROUNDS=3 DURATION=15 CONNS=256 SETTLE_SECS=30
#                               VARIANTS="off file nats")
# off: relay off; file: relay on, to a JSON-lines file; nats: relay on, to a
# nats-server of the bench's own (on the same cores). ENGINE_BIN as in run.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-15}
CONNS=${CONNS:-256}
SETTLE_SECS=${SETTLE_SECS:-30}
VARIANTS=${VARIANTS:-"off file"}

# shellcheck source=bench/lib.sh
source bench/lib.sh
install_missing curl
cargo build --release -q --bin order-engine --bin order-loadgen
start_mariadb
case " $VARIANTS " in *" nats "*) start_nats; NATS_URL=$ORDERENGINE__EVENTS__NATS_URL ;; esac
unset ORDERENGINE__EVENTS__NATS_URL ORDERENGINE__EVENTS__RELAY

metric_sum() { # the sum of a metric's series on the engine's /metrics
  curl -sf "http://127.0.0.1:$PORT/metrics" | awk -v m="$1" '$1 ~ "^"m"({|$)" { s += $2 } END { print s + 0 }'
}
broker_secs() { if [ -n "${NATS_PID:-}" ]; then cpu_secs "$NATS_PID"; else echo 0; fi; }
stop_engine() {
  kill "$ENGINE_PID"
  while kill -0 "$ENGINE_PID" 2>/dev/null; do sleep 0.1; done
}

UNDRAINED=0
RESULTS=$WORK/results.txt
: >"$RESULTS"
for round in $(seq "$ROUNDS"); do
  for v in $VARIANTS; do
    for u in 1 2 3 4; do mariadb -e "DROP DATABASE IF EXISTS orderengine_unit_$u"; done
    rm -f "$WORK/events.jsonl"
    settled=$(settle_mariadb "$SETTLE_SECS")
    case $v in
      off) env=(ORDERENGINE__EVENTS__RELAY=false) ;;
      file) env=(ORDERENGINE__EVENTS__RELAY=true) ;;
      nats) env=(ORDERENGINE__EVENTS__RELAY=true ORDERENGINE__EVENTS__NATS_URL="$NATS_URL") ;;
      *) echo "unknown variant $v (off, file or nats)"; exit 1 ;;
    esac
    export "${env[@]}"
    start_engine
    e0=$(cpu_secs "$ENGINE_PID"); d0=$(cpu_secs "$DB_PID"); s0=$(cpu_counters); b0=$(broker_secs)
    ./target/release/order-loadgen --url "http://127.0.0.1:$PORT" --mix create=100 \
      --connections "$CONNS" --duration "${DURATION}s" --warmup 0s --json "$WORK/run.json" >/dev/null 2>"$WORK/loadgen.err"
    e1=$(cpu_secs "$ENGINE_PID"); d1=$(cpu_secs "$DB_PID"); s1=$(cpu_counters); b1=$(broker_secs)
    read -r tput n <<<"$(python3 -c "import json; r=json.load(open('$WORK/run.json')); n=r['ops']['create']['count']; ok=max(n-r['errors'], 1); print(round(r['throughput_per_sec']*ok/max(n, 1)), ok)")"
    drain="-"
    if [ "$v" != off ]; then
      # Every create's event published (at least one per create): how long after the load.
      t0=$SECONDS
      while [ "$(metric_sum orderengine_events_published_total)" -lt "$n" ] && [ $((SECONDS - t0)) -lt 120 ]; do sleep 0.2; done
      published=$(metric_sum orderengine_events_published_total)
      drain="$((SECONDS - t0)) s ($published events)"
      if [ "$published" -lt "$n" ]; then
        drain="$drain: NOT DRAINED, $((n - published)) creates' events unpublished after 120 s"
        UNDRAINED=$((UNDRAINED + 1))
      fi
    fi
    per=$(python3 -c "print(f'{($e1-$e0)/$n*1e6:.0f} / {($d1-$d0)/$n*1e6:.0f} / {($b1-$b0)/$n*1e6:.0f}')")
    printf '   round %d %-4s %6d creates/s  engine / MariaDB / nats-server CPU us per create %s  %s  drained after %s  (settle: %s)\n' \
      "$round" "$v" "$tput" "$per" "$(cpu_report "$s0" "$s1")" "$drain" "$settled"
    echo "$v $tput" >>"$RESULTS"
    stop_engine
    unset ORDERENGINE__EVENTS__RELAY ORDERENGINE__EVENTS__NATS_URL
  done
done

python3 - "$RESULTS" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    v, t = line.split()
    runs.setdefault(v, []).append(float(t))
print("== result (median of each variant's runs)")
base = statistics.median(runs.get("off", [0])) or None
for v, ts in runs.items():
    med = statistics.median(ts)
    cost = f", {100 * (1 - med / base):+.0f}% cost against off" if base and v != "off" else ""
    print(f"   {v:4}: {med:8.0f} creates/s (runs: {', '.join(f'{t:.0f}' for t in ts)}){cost}")
PY
if [ "$UNDRAINED" -gt 0 ]; then
  echo "FAILED: $UNDRAINED relay run(s) did not publish every create's event (see above)"
  exit 1
fi
