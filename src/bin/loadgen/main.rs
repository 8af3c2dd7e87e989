//! order-loadgen: drives an order-engine over HTTP and reports latency
//! percentiles (HDR histograms), throughput and status codes.
//!
//! - `--rate R` (open loop): requests are *scheduled* at R per second whatever
//!   the server does, and latency is measured from the scheduled send time, so
//!   a stalled server cannot hide its tail (no coordinated omission).
//! - otherwise (closed loop): `--connections N` callers each send the next
//!   request when the last one answered.
//!
//! Always bounded: by `--duration` and/or `--requests`; a warm-up period is
//! run first and left out of the numbers.

mod http;
mod report;
mod workload;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::sync::Semaphore;

use report::{RunConfig, Stats};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use workload::{Mix, Orders};

/// Load generator for order-engine (only ever point it at a server you run).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The engine's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Open loop: requests per second to schedule. Without it: closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Closed loop: concurrent callers. Open loop: most requests in flight.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Operation mix in percent.
    #[arg(long, default_value = "create=100")]
    mix: Mix,
    /// How long to measure, e.g. 30s, 500ms, 2m.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// How many requests to measure.
    #[arg(long)]
    requests: Option<u64>,
    /// Run this long first, without measuring.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    warmup: Duration,
    /// Write the report as JSON to this file (`-` for standard output).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write a CSV line per 100 ms of send time (requests, errors, slowest
    /// answer) to this file: when in the run the slow answers were.
    #[arg(long)]
    timeline: Option<PathBuf>,
    /// Tokio worker threads for the generator.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

/// Nothing runs longer than this, whatever the arguments say.
const HARD_LIMIT: Duration = Duration::from_secs(3_600);

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (ms, s, m)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// Everything the request tasks share.
struct Shared {
    client: http::Client,
    orders: Orders,
    mix: Mix,
    /// Nothing to learn from replies when every request is a create.
    only_creates: bool,
    stats: Mutex<Stats>,
    /// Set when the warm-up is over: only then are results recorded.
    measuring: AtomicBool,
    measured_started: Mutex<Option<Instant>>,
    sent: AtomicU64,
    /// End of the measured period.
    deadline: std::sync::OnceLock<Instant>,
}

impl Shared {
    /// Sends one request; `since` is when it should have been sent (the
    /// open loop's schedule, when `scheduled`) or now (closed loop).
    async fn one(&self, since: Instant, scheduled: bool) {
        let ticket = rand::random_range(0..100);
        let req = self.orders.request(self.mix.pick(ticket));
        let method = if req.body.is_some() { "POST" } else { "GET" };
        let lag = scheduled.then(|| since.elapsed());
        let result = self
            .client
            .send(method, &req.path, req.body.as_deref())
            .await;
        let latency = since.elapsed();
        let status = match result {
            Ok(res) => {
                if !self.only_creates {
                    self.orders.learn(req.op, res.status, &res.body);
                }
                Some(res.status)
            }
            Err(_) => None,
        };
        // Answers after the time limit fall outside the measured period.
        let in_time = self.deadline.get().is_none_or(|end| Instant::now() <= *end);
        if in_time && self.measuring.load(Ordering::Acquire) {
            let mut stats = self.stats.lock().unwrap();
            stats.record(req.op, status, since, latency);
            if let Some(lag) = lag {
                stats.record_send_lag(lag);
            }
        }
    }
}

#[derive(Clone, Copy)]
struct Limits {
    end: Instant,
    requests: Option<u64>,
}

impl Limits {
    fn done(&self, shared: &Shared) -> bool {
        Instant::now() >= self.end
            || self.requests.is_some_and(|n| {
                shared.measuring.load(Ordering::Acquire)
                    && shared.stats.lock().unwrap().count() >= n
            })
    }
}

async fn closed_loop(shared: Arc<Shared>, connections: usize, limits: Limits) {
    let callers = (0..connections).map(|_| {
        let shared = shared.clone();
        tokio::spawn(async move {
            while !limits.done(&shared) {
                shared.one(Instant::now(), false).await;
                shared.sent.fetch_add(1, Ordering::Relaxed);
            }
        })
    });
    for c in callers.collect::<Vec<_>>() {
        let _ = c.await;
    }
}

async fn open_loop(shared: Arc<Shared>, rate: f64, in_flight: usize, limits: Limits) {
    let permits = Arc::new(Semaphore::new(in_flight));
    let start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0u64.. {
        let intended = start + interval.mul_f64(i as f64);
        // tokio's timer ticks once a millisecond, so requests leave up to a
        // millisecond late, and that counts as latency (the report says how
        // much). A finer clock cost more CPU in wake-ups than it saved on
        // two shared cores (docs/performance.md).
        tokio::time::sleep_until(intended.into()).await;
        if limits.done(&shared) {
            break;
        }
        let (task_shared, permits) = (shared.clone(), permits.clone());
        tasks.spawn(async move {
            // Waiting for a free slot counts: latency runs from the intended time.
            let _permit = permits.acquire_owned().await;
            task_shared.one(intended, true).await;
        });
        shared.sent.fetch_add(1, Ordering::Relaxed);
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

/// A progress line: a bar on a terminal, plain lines every 5 s otherwise.
async fn progress(shared: Arc<Shared>, warmup_end: Instant, end: Instant, stop: Arc<AtomicBool>) {
    let tty = std::io::stderr().is_terminal();
    let every = if tty {
        Duration::from_millis(250)
    } else {
        Duration::from_secs(5)
    };
    let started = Instant::now();
    let total = end
        .saturating_duration_since(started)
        .as_secs_f64()
        .max(1e-9);
    let mut last = (Instant::now(), 0u64);
    while !stop.load(Ordering::Acquire) {
        tokio::time::sleep(every).await;
        let sent = shared.sent.load(Ordering::Relaxed);
        let rate = (sent - last.1) as f64 / last.0.elapsed().as_secs_f64().max(1e-9);
        last = (Instant::now(), sent);
        let (done, errors) = {
            let s = shared.stats.lock().unwrap();
            (s.count(), s.errors())
        };
        let phase = if Instant::now() < warmup_end {
            "warm-up"
        } else {
            "measuring"
        };
        let frac = (started.elapsed().as_secs_f64() / total).min(1.0);
        if tty {
            let filled = (frac * 30.0) as usize;
            eprint!(
                "\r[{}{}] {:>3.0}% {phase:<9} {rate:>9.0} req/s  measured {done}  errors {errors}   ",
                "#".repeat(filled),
                " ".repeat(30 - filled),
                frac * 100.0
            );
        } else {
            eprintln!(
                "{:>3.0}% {phase}: {rate:.0} req/s, measured {done}, errors {errors}",
                frac * 100.0
            );
        }
    }
    if tty {
        eprintln!();
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if args.duration.is_none() && args.requests.is_none() {
        eprintln!("order-loadgen: give --duration and/or --requests (every run is bounded)");
        return std::process::ExitCode::from(2);
    }
    if args.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) || args.connections == 0 {
        eprintln!("order-loadgen: --rate must be > 0 and --connections >= 1");
        return std::process::ExitCode::from(2);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(args))
}

async fn run(args: Args) -> std::process::ExitCode {
    let client = match http::Client::new(&args.url, Duration::from_secs(30)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("order-loadgen: --url {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let run_id = format!(
        "lg{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_millis()
    );
    let shared = Arc::new(Shared {
        client,
        orders: Orders::new(run_id),
        mix: args.mix.clone(),
        only_creates: args.mix.only_creates(),
        stats: Mutex::default(),
        measuring: AtomicBool::new(false),
        measured_started: Mutex::new(None),
        sent: AtomicU64::new(0),
        deadline: std::sync::OnceLock::new(),
    });
    // Every connection opens before the clock starts, as a fixed client pool
    // would. Opened on demand, a slow moment of the server (more requests in
    // flight) made the open loop open hundreds at once, and the server then
    // spent that moment on handshakes.
    let opened = shared.client.open(args.connections, 64).await;
    if opened < args.connections {
        eprintln!(
            "order-loadgen: opened {opened} of {} connections (the rest open when needed)",
            args.connections
        );
    }
    let start = Instant::now();
    let warmup_end = start + args.warmup;
    let measure_for = args.duration.unwrap_or(HARD_LIMIT).min(HARD_LIMIT);
    let limits = Limits {
        end: warmup_end + measure_for,
        requests: args.requests,
    };
    let _ = shared.deadline.set(limits.end);

    let flip = {
        let shared = shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(warmup_end.into()).await;
            let now = Instant::now();
            *shared.measured_started.lock().unwrap() = Some(now);
            shared.stats.lock().unwrap().start(now);
            shared.measuring.store(true, Ordering::Release);
        })
    };
    let stop = Arc::new(AtomicBool::new(false));
    let bar = tokio::spawn(progress(
        shared.clone(),
        warmup_end,
        limits.end,
        stop.clone(),
    ));
    match args.rate {
        Some(rate) => open_loop(shared.clone(), rate, args.connections, limits).await,
        None => closed_loop(shared.clone(), args.connections, limits).await,
    }
    // The measured period ends with the last answer (or the time limit).
    let measured = shared
        .measured_started
        .lock()
        .unwrap()
        .map(|t| t.elapsed().min(measure_for))
        .unwrap_or_default();
    stop.store(true, Ordering::Release);
    bar.abort();
    let _ = bar.await;
    flip.abort();
    let config = RunConfig {
        url: args.url.clone(),
        mode: if args.rate.is_some() {
            "open"
        } else {
            "closed"
        }
        .into(),
        rate_per_sec: args.rate,
        connections: args.connections,
        mix: args.mix.describe(),
        duration_secs: args.duration.map(|d| d.as_secs_f64()),
        requests_limit: args.requests,
        warmup_secs: args.warmup.as_secs_f64(),
    };
    let report = shared.stats.lock().unwrap().report(config, measured);
    print!("{}", report.text());
    if let Some(path) = &args.timeline
        && let Err(e) = std::fs::write(path, report.timeline_csv())
    {
        eprintln!("order-loadgen: cannot write {}: {e}", path.display());
        return std::process::ExitCode::FAILURE;
    }
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report).expect("report serializes");
        if path.as_os_str() == "-" {
            println!("{json}");
        } else if let Err(e) = std::fs::write(path, json) {
            eprintln!("order-loadgen: cannot write {}: {e}", path.display());
            return std::process::ExitCode::FAILURE;
        }
    }
    std::process::ExitCode::SUCCESS
}
