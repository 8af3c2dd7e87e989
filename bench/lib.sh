# Shared by the benchmark scripts (sourced, not run): missing packages, a
# durable MariaDB in a temp dir on a free loopback port, the engine on it, and
# clean-up on exit.
# Sets WORK, PIDS, DB_PORT, DB_PID, PORT, ENGINE_PID; defines mariadb().

WORK=$(mktemp -d /tmp/orderengine-bench-XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do while kill -0 "$p" 2>/dev/null; do sleep 0.1; done; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# Installs with apt whatever is missing: MariaDB's server and python3 always,
# plus the commands named (each from the Debian package of the same name).
install_missing() {
  local need=() c
  command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || need+=(mariadb-server)
  for c in python3 "$@"; do command -v "$c" >/dev/null 2>&1 || need+=("$c"); done
  if [ ${#need[@]} -gt 0 ]; then
    local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
  fi
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# CPU seconds a process has used (user + system), from /proc.
cpu_secs() { python3 -c "import os; f=open('/proc/$1/stat').read().rsplit(')',1)[1].split(); print((int(f[11])+int(f[12]))/os.sysconf('SC_CLK_TCK'))"; }

# The machine's CPU counters (/proc/stat: user nice system idle iowait irq
# softirq steal) as one line; `cpu_report BEFORE AFTER` prints how busy the
# cores were between two such lines and how much the hypervisor stole.
cpu_counters() { head -1 /proc/stat; }
cpu_report() {
  python3 - "$1" "$2" <<'PY'
import sys
a, b = ([int(x) for x in s.split()[1:9]] for s in sys.argv[1:3])
d = [y - x for x, y in zip(a, b)]
total = sum(d) or 1
print(f"cores {100 * (total - d[3] - d[4] - d[7]) / total:.0f}% busy, {100 * d[7] / total:.0f}% stolen by the hypervisor")
PY
}

# The disk's own commit latency: 4 KiB write + fdatasync in DIR for SECS
# seconds, one at a time (what a durable commit waits for, without MariaDB).
# With PAUSE_MS, it pauses that long between syncs (a light probe to run
# beside a benchmark) and also lists when the syncs over 20 ms began; with
# SKIP_SECS, it starts counting that long after it starts (so that its own
# start-up falls in a benchmark's warm-up), and times are from then.
disk_sync_latency() {
  python3 - "$1" "$2" "${3:-0}" "${4:-0}" <<'PY'
import os, sys, time
secs, path = float(sys.argv[1]), os.path.join(sys.argv[2], "sync-probe.dat")
pause, skip = float(sys.argv[3]) / 1e3, float(sys.argv[4])
fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
lat, slow, off = [], [], 0
time.sleep(skip)
start = time.monotonic()
while time.monotonic() < start + secs:
    os.pwrite(fd, b"x" * 4096, off)
    off = (off + 4096) % (64 << 20)
    t = time.perf_counter()
    os.fdatasync(fd)
    ms = (time.perf_counter() - t) * 1e3
    lat.append(ms)
    if ms > 20:
        slow.append(f"{time.monotonic() - start - ms / 1e3:.1f}s: {ms:.0f} ms")
    time.sleep(pause)
os.close(fd)
os.unlink(path)
lat.sort()
q = lambda p: lat[min(len(lat) - 1, int(len(lat) * p))]
print(f"{len(lat)} syncs: p50 {q(.5):.2f} ms, p99 {q(.99):.2f} ms, p99.9 {q(.999):.2f} ms, "
      f"max {lat[-1]:.1f} ms, {sum(x > 50 for x in lat)} over 50 ms")
if pause:
    print("syncs over 20 ms began at: " + (", ".join(slow) or "none"))
PY
}

# What it costs here to wake a thread on the other core: two processes pass
# a byte back and forth over pipes, first both on one core, then one on each
# (ROUNDS round trips each, at most 2 s). On a virtual machine whose idle
# vCPU halts, the second wakes a halted vCPU every time, and the waker pays
# for it in CPU time; below the peak many of the engine's, MariaDB's and the
# generator's wake-ups are of that kind (see docs/performance.md).
# Prints wall and waker CPU per round trip.
wake_latency() {
  python3 - "${1:-3000}" <<'PY'
import os, resource, sys, time
rounds = int(sys.argv[1])
def trip(a, b):
    (ping_r, ping_w), (pong_r, pong_w) = os.pipe(), os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(ping_w)
            os.close(pong_r)
            os.sched_setaffinity(0, {b})
            while os.read(ping_r, 1) == b"x":
                os.write(pong_w, b"x")
        finally:
            os._exit(0)
    os.close(ping_r)
    os.close(pong_w)
    os.sched_setaffinity(0, {a})
    cpu0, t0, n = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter(), 0
    while n < rounds and time.perf_counter() - t0 < 2:
        try:
            os.write(ping_w, b"x")
            reply = os.read(pong_r, 1)
        except BrokenPipeError:
            reply = b""
        if reply != b"x":
            break  # the child is gone
        n += 1
    wall, cpu1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    os.close(ping_w)  # the child reads end-of-file and exits
    os.waitpid(child, 0)
    os.close(pong_r)
    if n == 0:
        return "not measured"
    cpu = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
    return f"{wall / n * 1e6:.0f} us ({cpu / n * 1e6:.0f} us of CPU)"
cores = sorted(os.sched_getaffinity(0))
if len(cores) < 2:
    print("one core: nothing to wake elsewhere")
else:
    print(f"same core {trip(cores[0], cores[0])}, across cores {trip(cores[0], cores[1])} per round trip")
PY
}

# Writes back every dirty page in MariaDB's buffer pool (bounded by SECS), so
# the next benchmark starts on a server as clean as the first one did: pages
# left dirty by one run are otherwise flushed during the next, on the same
# disk as its commits. Prints what it did.
settle_mariadb() {
  local secs=$1 pct dirty start=$SECONDS
  pct=$(mariadb -N -e "SELECT @@innodb_max_dirty_pages_pct")
  dirty=$(mariadb -N -e "SHOW GLOBAL STATUS LIKE 'Innodb_buffer_pool_pages_dirty'" | awk '{print $2}')
  local before=$dirty
  mariadb -e "SET GLOBAL innodb_max_dirty_pages_pct = 0"
  while [ "$dirty" -gt 0 ] && [ $((SECONDS - start)) -lt "$secs" ]; do
    sleep 1
    dirty=$(mariadb -N -e "SHOW GLOBAL STATUS LIKE 'Innodb_buffer_pool_pages_dirty'" | awk '{print $2}')
  done
  mariadb -e "SET GLOBAL innodb_max_dirty_pages_pct = $pct"
  echo "$before dirty pages -> $dirty in $((SECONDS - start)) s"
}

# Durable (innodb_flush_log_at_trx_commit=1), sized for a write benchmark on
# SSD: 2 GiB redo log, io_capacity 2000 (see docs/performance.md).
start_mariadb() {
  local mariadbd as_root=()
  mariadbd=$(command -v mariadbd || echo /usr/sbin/mariadbd)
  [ "$(id -u)" -eq 0 ] && as_root=(--user=root)
  DB_PORT=$(free_port)
  mkdir -p "$WORK/tmp"
  mariadb-install-db --no-defaults --datadir="$WORK/data" --tmpdir="$WORK/tmp" \
    --auth-root-authentication-method=normal --skip-test-db "${as_root[@]}" >"$WORK/install.log" 2>&1
  "$mariadbd" --no-defaults --datadir="$WORK/data" --tmpdir="$WORK/tmp" --socket="$WORK/mysqld.sock" \
    --port="$DB_PORT" --bind-address=127.0.0.1 --skip-grant-tables --skip-log-bin \
    --innodb-flush-log-at-trx-commit=1 --innodb-buffer-pool-size=1G \
    --innodb-log-file-size=2G --innodb-io-capacity=2000 --innodb-io-capacity-max=4000 \
    --max-connections=2000 "${as_root[@]}" >"$WORK/mariadb.log" 2>&1 &
  DB_PID=$!
  PIDS+=($!)
  for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/"$DB_PORT") 2>/dev/null && break; sleep 0.1; done
}
mariadb() { command mariadb -h127.0.0.1 -P"$DB_PORT" -uroot "$@"; }

# MariaDB's statement and row counters (`db_work`), and `db_work_per BEFORE
# AFTER N`: how many of each it did per create, to see where its CPU went.
DB_WORK_VARS="Com_commit Com_insert Com_select Com_update Questions Handler_write Handler_read_key Handler_read_next Handler_update Handler_delete"
db_work() {
  local names
  names=$(printf "'%s'," $DB_WORK_VARS)
  mariadb -N -e "SHOW GLOBAL STATUS WHERE Variable_name IN (${names%,})" | awk '{printf "%s=%s ", $1, $2}'
}
db_work_per() {
  python3 - "$1" "$2" "$3" <<'PY'
import sys
parse = lambda s: dict(kv.split("=") for kv in s.split())
a, b, n = parse(sys.argv[1]), parse(sys.argv[2]), float(sys.argv[3])
print(", ".join(f"{k} {(int(b[k]) - int(a[k])) / n:.2f}" for k in sorted(b)))
PY
}

# The engine's histogram of successful creates (`le count` per line), and
# `engine_quantiles BEFORE AFTER`: its p50 / p90 / p99 between two of them,
# interpolated inside a bucket as Prometheus' `histogram_quantile` does.
create_buckets() {
  curl -sf "http://127.0.0.1:$PORT/metrics" | grep '^orderengine_request_duration_seconds_bucket{' |
    grep 'op="create"' | grep 'outcome="ok"' | sed 's/.*le="\([^"]*\)".* \([^ ]*\)$/\1 \2/' ||
    true # none, or no engine: engine_quantiles then says "not found"
}
engine_quantiles() {
  python3 - "$1" "$2" <<'PY'
import sys
def load(path):
    rows = [line.split() for line in open(path) if line.strip()]
    return sorted((float("inf") if le == "+Inf" else float(le), float(n)) for le, n in rows)
a, b = load(sys.argv[1]), load(sys.argv[2])
a = a or [(le, 0.0) for le, _ in b]  # no create had been counted yet
if not b or len(a) != len(b):
    print("not found in /metrics"); sys.exit()
d = [(le, nb - na) for (le, na), (_, nb) in zip(a, b)]
total = d[-1][1]
def q(p):
    rank, lo, below = p * total, 0.0, 0.0
    for le, n in d:
        if n >= rank:
            return lo if le == float("inf") else lo + (le - lo) * (rank - below) / max(n - below, 1e-9)
        lo, below = le, n
print(", ".join(f"p{int(p * 100)} {q(p) * 1e3:.2f} ms" for p in (0.5, 0.9, 0.99)) + f" ({total:.0f} creates)")
PY
}

# BENCH_NATS=1: a nats-server with JetStream of the bench's own (free port,
# store under WORK), and the engine's relay publishing to it.
start_nats() {
  install_missing nats-server
  NATS_PORT=$(free_port)
  nats-server -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$WORK/nats" >"$WORK/nats.log" 2>&1 &
  NATS_PID=$!
  PIDS+=($!)
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$NATS_PORT") 2>/dev/null && break; sleep 0.1; done
  export ORDERENGINE__EVENTS__NATS_URL="nats://127.0.0.1:$NATS_PORT"
}

# The engine with 4 units on that server; any command prefix (e.g. valgrind)
# goes in front of the binary. ENGINE_BIN runs another build (to compare two).
start_engine() {
  if [ "${BENCH_NATS:-0}" = 1 ] && [ -z "${NATS_PORT:-}" ]; then start_nats; fi
  PORT=$(free_port)
  cat > "$WORK/engine.toml" <<TOML
[server]
port = $PORT
max_in_flight = 100000
[storage]
max_connections = 32
[log]
level = "warn"
[events]
file = "$WORK/events.jsonl"   # with ORDERENGINE__EVENTS__RELAY=true
TOML
  for u in 1 2 3 4; do
    printf '[[units]]\nid = %d\nprimary_url = "mysql://root@127.0.0.1:%d/orderengine_unit_%d"\n' \
      "$u" "$DB_PORT" "$u" >> "$WORK/engine.toml"
  done
  "$@" "${ENGINE_BIN:-./target/release/order-engine}" --config "$WORK/engine.toml" >"$WORK/engine.log" 2>&1 &
  ENGINE_PID=$!
  PIDS+=($!)
  for _ in $(seq 600); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.1; done
  curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null || { echo "the engine did not become ready:"; tail -20 "$WORK/engine.log"; exit 1; }
}
