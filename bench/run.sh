#!/usr/bin/env bash
# Engine creates/s over HTTP against MariaDB's own single-row insert benchmark
# (sysbench oltp_insert) on the same server, in one run on one machine:
#
#   1. start a durable MariaDB (innodb_flush_log_at_trx_commit=1) in a temp dir,
#      sized for a write benchmark on SSD (2 GiB redo log, io_capacity 2000),
#      and time the disk's own fdatasync there (the floor under commit latency)
#      and what waking a thread on the other core costs (what a create pays
#      for below the peak)
#   2. sysbench oltp_insert against it (the reference: inserts/s)
#   3. the engine (release build) with 4 units on that server, once MariaDB
#      has written back the pages sysbench left dirty (as clean a start as
#      sysbench had)
#   4. order-loadgen closed loop, creates only: the engine's peak creates/s,
#      and the engine's and MariaDB's CPU time per create (from /proc)
#   5. order-loadgen open loop at 50% of that peak: p50 / p99 latency, its
#      slowest moments, and the disk's own fdatasync at the same time
#   Each engine run also prints how busy the cores were and how much CPU the
#   hypervisor stole meanwhile (on a shared host the tail follows the steal).
#
# Usage: bash bench/run.sh   (DURATION=20 THREADS="32 64" CONNS="64 128 256" SETTLE_SECS=120)
# ENGINE_BIN=path runs another build of the engine; ORDERENGINE__* variables
# reach the engine (e.g. ORDERENGINE__GROUP_COMMIT__WINDOW_US=400;
# ORDERENGINE__EVENTS__RELAY=true publishes change events, to a file, or with
# BENCH_NATS=1 to a nats-server the bench starts).
# Everything listens on loopback; everything stops when the script ends.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-20}
THREADS=${THREADS:-"32 64"}
CONNS=${CONNS:-"64 128 256"}
# 0: the engine starts on whatever sysbench left dirty (to see what that costs).
SETTLE_SECS=${SETTLE_SECS:-120}

# shellcheck source=bench/lib.sh
source bench/lib.sh
install_missing sysbench
cargo build --release -q --bin order-engine --bin order-loadgen

echo "== MariaDB (durable: innodb_flush_log_at_trx_commit=1)"
start_mariadb
mariadb -e "CREATE DATABASE sbtest"
DISK=$(disk_sync_latency 10 "$WORK")
echo "   disk: 4 KiB write + fdatasync, one at a time for 10 s: $DISK"
WAKE=$(wake_latency)
echo "   waking a thread: $WAKE"

echo "== sysbench oltp_insert (reference)"
SB=(sysbench oltp_insert --db-driver=mysql --mysql-host=127.0.0.1 --mysql-port="$DB_PORT"
    --mysql-user=root --mysql-db=sbtest --tables=4 --table-size=10000)
"${SB[@]}" prepare >/dev/null
SYSBENCH=0
for t in $THREADS; do
  out=$("${SB[@]}" --threads="$t" --time="$DURATION" run)
  eps=$(echo "$out" | sed -n 's/.*events\/s (eps): *\([0-9.]*\).*/\1/p; s/.*transactions: *[0-9]* *(\([0-9.]*\) per sec.).*/\1/p' | head -1)
  echo "   $t threads: $eps inserts/s"
  SYSBENCH=$(python3 -c "print(max($SYSBENCH, $eps))")
done

if [ "$SETTLE_SECS" -gt 0 ]; then
  echo "== MariaDB writes back what sysbench left dirty: $(settle_mariadb "$SETTLE_SECS")"
fi

echo "== order-engine: 4 units on the same server"
start_engine

LG=(./target/release/order-loadgen --url "http://127.0.0.1:$PORT" --mix create=100)
PEAK=0
# Connections the kernel dropped because an accept queue was full: each costs
# a 1 s SYN retransmit, which shows as a max latency of ~1 s.
listen_overflows() { awk '/^TcpExt:/ { if (!n) { split($0, k); n = 1 } else { for (i = 2; i <= NF; i++) if (k[i] == "ListenOverflows") print $i } }' /proc/net/netstat; }
OVERFLOWS0=$(listen_overflows)
for c in $CONNS; do
  e0=$(cpu_secs "$ENGINE_PID"); d0=$(cpu_secs "$DB_PID"); s0=$(cpu_counters); q0=$(db_work)
  "${LG[@]}" --connections "$c" --duration "${DURATION}s" --warmup 0s --json "$WORK/peak-$c.json" >"$WORK/peak-$c.txt"
  e1=$(cpu_secs "$ENGINE_PID"); d1=$(cpu_secs "$DB_PID"); s1=$(cpu_counters); q1=$(db_work)
  # Only answered creates count: an error reply is no create (a run whose
  # creates mostly timed out once read as a record peak).
  read -r tput errs n <<<"$(python3 -c "import json; r=json.load(open('$WORK/peak-$c.json')); n=r['ops']['create']['count']; ok=max(n-r['errors'], 1); print(round(r['throughput_per_sec']*ok/max(n, 1), 1), r['errors'], ok)")"
  # Per create, over the whole run: where the CPU went.
  per=$(python3 -c "print(f'engine {($e1-$e0)/$n*1e6:.0f} us, MariaDB {($d1-$d0)/$n*1e6:.0f} us of CPU per create')")
  echo "   closed loop, $c connections: $tput creates/s, $errs errors ($per; $(cpu_report "$s0" "$s1"))"
  echo "     MariaDB's work per create: $(db_work_per "$q0" "$q1" "$n")"
  PEAK=$(python3 -c "print(max($PEAK, $tput))")
done

HALF=$(python3 -c "print(round($PEAK / 2))")
echo "== open loop at 50% of peak: $HALF creates/s"
s0=$(cpu_counters)
# Beside it, from the end of the warm-up, a light probe of the disk's own
# fdatasync (one every 10 ms): a commit cannot be faster than the disk.
disk_sync_latency "$DURATION" "$WORK" 10 3 >"$WORK/half-disk.txt" &
PROBE=$!
# The engine's histogram from about the end of the generator's warm-up (3 s
# once its connections are open, which takes well under 0.5 s here).
(sleep 3.5; create_buckets >"$WORK/half-buckets-0.txt") &
BUCKETS=$!
"${LG[@]}" --rate "$HALF" --connections 1024 --duration "${DURATION}s" --warmup 3s \
  --json "$WORK/half.json" --timeline "$WORK/half-timeline.csv" | sed 's/^/   /'
HALF_CPU=$(cpu_report "$s0" "$(cpu_counters)")
wait "$BUCKETS"
create_buckets >"$WORK/half-buckets-1.txt"
wait "$PROBE"
echo "   slowest moments (100 ms of send time, seconds into the measured period): $(
  sort -t, -k4 -g -r "$WORK/half-timeline.csv" | grep -v '^at' | head -5 |
    awk -F, '{ printf "%s%.1fs: %.0f ms", sep, $1, $4; sep = ", " }')"
echo "   the disk meanwhile: $(sed -n 1p "$WORK/half-disk.txt")"
echo "   $(sed -n 2p "$WORK/half-disk.txt")"
echo "   during the open loop: $HALF_CPU"
echo "   the engine's own view (its request histogram, from a request's arrival to its answer, after the warm-up): $(
  engine_quantiles "$WORK/half-buckets-0.txt" "$WORK/half-buckets-1.txt")"

# Past ~75% of the redo log InnoDB flushes hard, which shows in the tail.
AGE=$(mariadb -N -e "SHOW GLOBAL STATUS LIKE 'Innodb_checkpoint_age'" | awk '{print int($2/1048576)}')
LOG=$(mariadb -N -e "SELECT @@innodb_log_file_size" | awk '{print int($1/1048576)}')
echo "   MariaDB checkpoint age at the end: $AGE MiB of a $LOG MiB redo log"
echo "   listen queue overflows on this machine during the engine runs: $(( $(listen_overflows) - OVERFLOWS0 ))"

python3 - "$SYSBENCH" "$PEAK" "$WORK/half.json" "$DISK" "$HALF_CPU" "$WAKE" <<'PY'
import json, sys
sb, peak, half = float(sys.argv[1]), float(sys.argv[2]), json.load(open(sys.argv[3]))
c = half["ops"]["create"]
print("== result")
print(f"   sysbench oltp_insert : {sb:10.1f} inserts/s")
print(f"   engine (HTTP)        : {peak:10.1f} creates/s  = {peak / sb:.2f}x sysbench (bar: 1.5x)")
print(f"   at {half['config']['rate_per_sec']:.0f}/s (50% peak): p50 {c['p50_ms']:.2f} ms, p99 {c['p99_ms']:.2f} ms (bar: 10 ms), errors {half['errors']}; {sys.argv[5]}")
print(f"   disk fdatasync alone : {sys.argv[4]}")
print(f"   waking a thread      : {sys.argv[6]}")
PY
