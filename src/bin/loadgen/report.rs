//! Measurements and the report: HDR histograms per operation, counts per
//! status code, throughput over the measured period (warm-up excluded).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::workload::Op;

/// Latencies are recorded in microseconds, 1 µs to 5 minutes, 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 300_000_000, 3).expect("valid bounds")
}

/// A duration as a histogram value: microseconds, within the bounds.
fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, 300_000_000)
}

/// The value at quantile `q`, in milliseconds.
fn ms_at(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

#[derive(Default)]
pub struct Stats {
    by_op: BTreeMap<Op, Histogram<u64>>,
    all: Option<Histogram<u64>>,
    /// HTTP status -> count; transport failures under 0.
    pub status: BTreeMap<u16, u64>,
    pub transport_errors: u64,
    timeline: Timeline,
    /// Open loop: how late the generator itself sent each measured request
    /// (from its scheduled time to the write). It counts in the latency, so
    /// it says how much of the latency is the generator's own.
    send_lag: Option<Histogram<u64>>,
}

/// The measured requests by when they were (meant to be) sent, in slots of
/// [`SLOT`]: a server that stalls for a moment shows as a few slots whose
/// requests all waited, which one set of percentiles cannot tell from a
/// server that is slow all the time.
#[derive(Default)]
struct Timeline {
    /// When the measured period began; requests sent before it count in
    /// the first slot.
    start: Option<Instant>,
    slots: Vec<Slot>,
}

/// The width of a timeline slot.
pub const SLOT: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Slot {
    /// Start of the slot, seconds into the measured period.
    pub at_secs: f64,
    pub requests: u64,
    pub errors: u64,
    pub max_ms: f64,
}

impl Timeline {
    fn record(&mut self, sent: Instant, latency: Duration, error: bool) {
        let start = *self.start.get_or_insert(sent);
        let index = (sent.saturating_duration_since(start).as_nanos() / SLOT.as_nanos()) as usize;
        if self.slots.len() <= index {
            self.slots.resize_with(index + 1, Slot::default);
        }
        let slot = &mut self.slots[index];
        slot.requests += 1;
        slot.errors += u64::from(error);
        slot.max_ms = slot.max_ms.max(latency.as_secs_f64() * 1000.0);
    }

    fn slots(&self) -> Vec<Slot> {
        let width = SLOT.as_secs_f64();
        let at = |i: usize| (i as f64 * width * 1000.0).round() / 1000.0;
        self.slots
            .iter()
            .enumerate()
            .map(|(i, s)| Slot {
                at_secs: at(i),
                ..*s
            })
            .collect()
    }
}

impl Stats {
    /// Marks the start of the measured period (for the timeline).
    pub fn start(&mut self, at: Instant) {
        self.timeline.start = Some(at);
    }

    /// One measured answer: `sent` is when the request was meant to go
    /// (the open loop's schedule) or went (closed loop).
    pub fn record(&mut self, op: Op, status: Option<u16>, sent: Instant, latency: Duration) {
        self.timeline
            .record(sent, latency, status.is_none_or(|s| s >= 400));
        let us = micros(latency);
        self.by_op
            .entry(op)
            .or_insert_with(histogram)
            .saturating_record(us);
        self.all.get_or_insert_with(histogram).saturating_record(us);
        match status {
            Some(s) => *self.status.entry(s).or_default() += 1,
            None => self.transport_errors += 1,
        }
    }

    /// How late a measured request went out (open loop only).
    pub fn record_send_lag(&mut self, lag: Duration) {
        self.send_lag
            .get_or_insert_with(histogram)
            .saturating_record(micros(lag));
    }

    pub fn count(&self) -> u64 {
        self.all.as_ref().map_or(0, Histogram::len)
    }

    pub fn errors(&self) -> u64 {
        self.transport_errors
            + self
                .status
                .iter()
                .filter(|(s, _)| **s >= 400)
                .map(|(_, n)| n)
                .sum::<u64>()
    }

    pub fn report(&self, config: RunConfig, measured: Duration) -> Report {
        let secs = measured.as_secs_f64().max(1e-9);
        let summary = |h: &Histogram<u64>| OpReport {
            count: h.len(),
            rate_per_sec: h.len() as f64 / secs,
            p50_ms: ms_at(h, 0.5),
            p90_ms: ms_at(h, 0.9),
            p99_ms: ms_at(h, 0.99),
            p999_ms: ms_at(h, 0.999),
            max_ms: h.max() as f64 / 1000.0,
            mean_ms: h.mean() / 1000.0,
        };
        Report {
            config,
            measured_secs: secs,
            requests: self.count(),
            throughput_per_sec: self.count() as f64 / secs,
            errors: self.errors(),
            transport_errors: self.transport_errors,
            status: self
                .status
                .iter()
                .map(|(s, n)| (s.to_string(), *n))
                .collect(),
            all: self.all.as_ref().map(summary),
            ops: self
                .by_op
                .iter()
                .map(|(op, h)| (op.name().to_string(), summary(h)))
                .collect(),
            timeline: self.timeline.slots(),
            send_lag: self.send_lag.as_ref().map(|h| SendLag {
                p50_ms: ms_at(h, 0.5),
                p99_ms: ms_at(h, 0.99),
                max_ms: h.max() as f64 / 1000.0,
            }),
        }
    }
}

/// How late the open loop sent its requests, from their scheduled times.
#[derive(Debug, Clone, Serialize)]
pub struct SendLag {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunConfig {
    pub url: String,
    pub mode: String,
    pub rate_per_sec: Option<f64>,
    pub connections: usize,
    pub mix: String,
    pub duration_secs: Option<f64>,
    pub requests_limit: Option<u64>,
    pub warmup_secs: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct OpReport {
    pub count: u64,
    pub rate_per_sec: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub config: RunConfig,
    pub measured_secs: f64,
    pub requests: u64,
    pub throughput_per_sec: f64,
    /// Responses >= 400 plus transport failures.
    pub errors: u64,
    pub transport_errors: u64,
    pub status: BTreeMap<String, u64>,
    pub all: Option<OpReport>,
    pub ops: BTreeMap<String, OpReport>,
    /// Per [`SLOT`] of send time; written by `--timeline`, not in `--json`.
    #[serde(skip)]
    pub timeline: Vec<Slot>,
    /// Open loop only: the generator's own lateness, part of every latency.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_lag: Option<SendLag>,
}

impl Report {
    /// The timeline as CSV: one line per slot of send time.
    pub fn timeline_csv(&self) -> String {
        let mut out = String::from("at_secs,requests,errors,max_ms\n");
        for s in &self.timeline {
            out += &format!(
                "{:.1},{},{},{:.3}\n",
                s.at_secs, s.requests, s.errors, s.max_ms
            );
        }
        out
    }

    pub fn text(&self) -> String {
        let c = &self.config;
        let mut out = format!(
            "order-loadgen: {} loop against {}, {} connections{}, mix {}\n",
            c.mode,
            c.url,
            c.connections,
            c.rate_per_sec
                .map(|r| format!(", {r}/s offered"))
                .unwrap_or_default(),
            c.mix
        );
        out += &format!(
            "measured {:.1}s (after {:.1}s warm-up): {} requests, {:.1}/s, {} errors\n",
            self.measured_secs, c.warmup_secs, self.requests, self.throughput_per_sec, self.errors
        );
        out += &format!(
            "{:<8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
            "op", "count", "rate/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
        );
        let rows = self
            .ops
            .iter()
            .map(|(k, v)| (k.as_str(), v))
            .chain(self.all.as_ref().map(|a| ("all", a)));
        for (name, r) in rows {
            out += &format!(
                "{:<8} {:>9} {:>9.1} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}\n",
                name, r.count, r.rate_per_sec, r.p50_ms, r.p90_ms, r.p99_ms, r.p999_ms, r.max_ms
            );
        }
        let worst = self
            .timeline
            .iter()
            .max_by(|a, b| a.max_ms.total_cmp(&b.max_ms));
        if let Some(w) = worst {
            out += &format!(
                "slowest moment: requests sent {:.1}-{:.1}s in waited up to {:.2} ms ({} of them)\n",
                w.at_secs,
                w.at_secs + SLOT.as_secs_f64(),
                w.max_ms,
                w.requests
            );
        }
        if let Some(lag) = &self.send_lag {
            out += &format!(
                "the generator sent late by (part of the latency above): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms\n",
                lag.p50_ms, lag.p99_ms, lag.max_ms
            );
        }
        let statuses: Vec<_> = self
            .status
            .iter()
            .map(|(s, n)| format!("{s}: {n}"))
            .collect();
        out += &format!(
            "status   {}{}\n",
            statuses.join(", "),
            if self.transport_errors > 0 {
                format!(", transport errors: {}", self.transport_errors)
            } else {
                String::new()
            }
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run's configuration as the report shows it (the numbers here are
    /// not what the tests look at).
    fn config(mode: &str) -> RunConfig {
        RunConfig {
            url: "u".into(),
            mode: mode.into(),
            rate_per_sec: None,
            connections: 1,
            mix: "create=100".into(),
            duration_secs: Some(1.0),
            requests_limit: None,
            warmup_secs: 0.0,
        }
    }

    #[test]
    fn percentiles_and_errors() {
        let mut s = Stats::default();
        let t0 = Instant::now();
        for ms in 1..=100 {
            s.record(Op::Create, Some(201), t0, Duration::from_millis(ms));
        }
        s.record(Op::Get, Some(503), t0, Duration::from_millis(5));
        s.record(Op::Get, None, t0, Duration::from_millis(5));
        let r = s.report(config("closed"), Duration::from_secs(2));
        let create = &r.ops["create"];
        assert_eq!(create.count, 100);
        assert!((create.p50_ms - 50.0).abs() < 0.5, "{}", create.p50_ms);
        assert!((create.p99_ms - 99.0).abs() < 0.5, "{}", create.p99_ms);
        assert_eq!((r.requests, r.errors, r.transport_errors), (102, 2, 1));
        assert!((r.throughput_per_sec - 51.0).abs() < 1e-9);
        assert!(r.text().contains("503: 1"));
    }

    #[test]
    fn an_open_loop_reports_how_late_the_generator_sent() {
        let t0 = Instant::now();
        let mut closed = Stats::default();
        closed.record(Op::Create, Some(201), t0, Duration::from_millis(2));
        let r = closed.report(config("closed"), Duration::from_secs(1));
        assert!(r.send_lag.is_none());
        assert!(!r.text().contains("sent late"), "{}", r.text());

        let mut open = Stats::default();
        for us in 1..=100 {
            open.record(Op::Create, Some(201), t0, Duration::from_millis(3));
            open.record_send_lag(Duration::from_micros(us * 10));
        }
        let r = open.report(config("open"), Duration::from_secs(1));
        let lag = r.send_lag.as_ref().expect("lag measured");
        assert!((lag.p50_ms - 0.5).abs() < 0.01, "{}", lag.p50_ms);
        assert!((lag.max_ms - 1.0).abs() < 0.01, "{}", lag.max_ms);
        assert!(
            r.text()
                .contains("the generator sent late by (part of the latency above): p50 0.50 ms"),
            "{}",
            r.text()
        );
        let json = serde_json::to_value(&r).unwrap();
        assert!(json["send_lag"]["p99_ms"].as_f64().unwrap() > 0.9);
    }

    #[test]
    fn the_timeline_shows_when_the_slow_answers_were_sent() {
        let mut s = Stats::default();
        let t0 = Instant::now();
        s.start(t0);
        let at = |ms| t0 + Duration::from_millis(ms);
        // 0.0-0.1 s: quick; 0.2-0.3 s: a stall; nothing sent in 0.1-0.2 s.
        s.record(Op::Create, Some(201), at(10), Duration::from_millis(2));
        s.record(Op::Create, Some(201), at(90), Duration::from_millis(3));
        s.record(Op::Create, Some(201), at(210), Duration::from_millis(250));
        s.record(Op::Create, Some(503), at(299), Duration::from_millis(170));
        s.record(Op::Create, None, at(250), Duration::from_millis(1));
        let r = s.report(
            RunConfig {
                rate_per_sec: Some(50.0),
                connections: 8,
                duration_secs: Some(0.3),
                ..config("open")
            },
            Duration::from_millis(300),
        );
        let slot = |at_secs, requests, errors, max_ms| Slot {
            at_secs,
            requests,
            errors,
            max_ms,
        };
        assert_eq!(
            r.timeline,
            [
                slot(0.0, 2, 0, 3.0),
                slot(0.1, 0, 0, 0.0),
                slot(0.2, 3, 2, 250.0)
            ]
        );
        assert_eq!(
            r.timeline_csv(),
            "at_secs,requests,errors,max_ms\n0.0,2,0,3.000\n0.1,0,0,0.000\n0.2,3,2,250.000\n"
        );
        assert!(
            r.text()
                .contains("requests sent 0.2-0.3s in waited up to 250.00 ms (3 of them)"),
            "{}",
            r.text()
        );
    }
}
