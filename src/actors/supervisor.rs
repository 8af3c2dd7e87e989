//! The supervisor actor owns health. Every `probe_interval` it sends each unit
//! a synthetic order (a real write, read and commit in that unit's database);
//! it folds in the outcomes of live calls that the dispatcher reports; it runs
//! each unit's circuit breaker; and it publishes the result on the
//! [`HealthBoard`] that the dispatcher reads without a round trip.
//!
//! Two guards keep health checking from causing an outage by itself:
//! - **prober self-suspicion**: when every probe of a round fails at once, the
//!   likelier story is a broken prober or network than every database dying
//!   together, so the round is not applied (the last known state stands) and
//!   `prober_suspected` is raised. Live call failures still open circuits.
//! - **panic threshold** (Envoy's idea): when fewer than the threshold share of
//!   the open units a partition's creates can reach (its own and those of the
//!   partitions it spills into) look healthy, the dispatcher stops trusting
//!   health for that partition and spreads creates over all of them. Counting
//!   the spill targets keeps a one-unit partition with a healthy fallback out
//!   of panic when its unit dies.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::future::join_all;

use super::health::{HealthBoard, UnitHealth};
use super::unit::{CheckReplica, Probe, UnitActor};
use crate::config::{PartitionSettings, SupervisorSettings, UnitMode};
use crate::domain::circuit::{CircuitBreaker, CircuitState};
use crate::metrics as m;
use metrics::{counter, gauge, histogram};

/// A live call's outcome, reported by the dispatcher. `ok` means the unit
/// answered (a business "no" is still an answer); `false` means it could not.
/// Successes through a closed circuit are not sent: they are counted on the
/// [`HealthBoard`] and folded in every `LIVE_FOLD_EVERY`.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Report {
    pub unit: u16,
    pub ok: bool,
    pub latency: Duration,
}

/// A unit's routing attributes changed (or it was added).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Watch {
    pub unit: u16,
    pub addr: Addr<UnitActor>,
    pub partition: String,
    pub mode: UnitMode,
    /// Whether the table lets it take creates (open, not cold, weight > 0):
    /// panic mode counts only those.
    pub takes_creates: bool,
}

/// The partitions' spill rules changed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetSpill {
    pub partitions: BTreeMap<String, PartitionSettings>,
}

struct Watched {
    addr: Addr<UnitActor>,
    partition: String,
    mode: UnitMode,
    takes_creates: bool,
    breaker: CircuitBreaker,
}

pub struct Supervisor {
    board: Arc<HealthBoard>,
    units: BTreeMap<u16, Watched>,
    settings: SupervisorSettings,
    /// Spill targets per partition (what a partition's creates can reach).
    partitions: BTreeMap<String, PartitionSettings>,
    started: Instant,
    round_in_flight: bool,
    next_token: i64,
}

impl Supervisor {
    pub fn new(
        board: Arc<HealthBoard>,
        settings: SupervisorSettings,
        partitions: BTreeMap<String, PartitionSettings>,
    ) -> Self {
        Self {
            board,
            units: BTreeMap::new(),
            settings,
            partitions,
            started: Instant::now(),
            round_in_flight: false,
            next_token: 1,
        }
    }

    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// Folds the live successes counted on the board into `unit`'s breaker
    /// and its latency average; true when that changed the circuit's state.
    fn fold_live(&mut self, unit: u16, now: Duration) -> bool {
        let (Some(w), Some(h)) = (self.units.get_mut(&unit), self.board.unit(unit)) else {
            return false;
        };
        let (n, mean_us) = h.take_successes();
        if n == 0 {
            return false;
        }
        let before = w.breaker.state(now);
        w.breaker
            .on_successes(now, u32::try_from(n).unwrap_or(u32::MAX));
        record_latency(&h, mean_us);
        w.breaker.state(now) != before
    }

    fn probe_round(&mut self, ctx: &mut Context<Self>) {
        self.publish();
        // Replicas are measured whatever the primary's state (with the
        // primary down, eventual reads rely on them); a unit runs one check
        // at a time, and none of it holds up the probes.
        for w in self.units.values() {
            w.addr.do_send(CheckReplica);
        }
        if self.round_in_flight {
            return; // the last round has not finished: never pile probes up
        }
        let now = self.now();
        let timeout = Duration::from_millis(self.settings.probe_timeout_ms);
        let token = self.next_token;
        self.next_token += 1;
        let probes: Vec<_> = self
            .units
            .iter_mut()
            .filter(|(_, w)| w.mode != UnitMode::Disabled)
            .filter_map(|(id, w)| (w.breaker.state(now) != CircuitState::Open).then_some((id, w)))
            .map(|(id, w)| {
                let (id, addr) = (*id, w.addr.clone());
                async move {
                    let t0 = Instant::now();
                    let answer = addr.send(Probe { token }).timeout(timeout).await;
                    (id, t0.elapsed(), matches!(answer, Ok(Ok(()))))
                }
            })
            .collect();
        if probes.is_empty() {
            return;
        }
        self.round_in_flight = true;
        ctx.spawn(join_all(probes).into_actor(self).map(|results, act, _| {
            act.round_in_flight = false;
            act.fold_round(results);
        }));
    }

    fn fold_round(&mut self, results: Vec<(u16, Duration, bool)>) {
        let slow = Duration::from_millis(self.settings.slow_probe_ms);
        let passed = |latency: &Duration, answered: &bool| *answered && *latency <= slow;
        let all_failed = results.len() >= 2 && results.iter().all(|(_, l, a)| !passed(l, a));
        if all_failed != self.board.prober_suspected() {
            if all_failed {
                tracing::warn!(
                    units = results.len(),
                    "every probe failed in one round: suspecting the prober, keeping the last known health"
                );
            } else {
                tracing::info!("probes pass again: prober no longer suspected");
            }
        }
        self.board.set_prober_suspected(all_failed);
        let now = self.now();
        for (id, latency, answered) in results {
            let Some(w) = self.units.get_mut(&id) else {
                continue;
            };
            let ok = passed(&latency, &answered);
            let label = id.to_string();
            let outcome = if ok { "ok" } else { "failed" };
            counter!(m::PROBES, "unit" => label.clone(), "outcome" => outcome).increment(1);
            histogram!(m::PROBE_DURATION, "unit" => label).record(latency.as_secs_f64());
            if let Some(h) = self.board.unit(id) {
                h.probe_ok.store(ok, Ordering::Relaxed);
                h.probe_latency_us
                    .store(latency.as_micros() as i64, Ordering::Relaxed);
            }
            if all_failed {
                continue;
            }
            if ok {
                w.breaker.on_success(now);
            } else {
                tracing::debug!(unit = id, ?latency, answered, "probe failed");
                w.breaker.on_failure(now);
            }
        }
        self.publish();
    }

    /// Publishes every circuit and each partition's panic mode.
    fn publish(&mut self) {
        let now = self.now();
        let permits = self.settings.half_open_permits;
        // (open units, healthy open units) per partition.
        let mut own: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for (id, w) in self.units.iter_mut() {
            let state = w.breaker.state(now);
            let before = self.board.circuit(*id);
            let label = id.to_string();
            if before != state {
                tracing::warn!(
                    unit = id,
                    from = before.as_str(),
                    to = state.as_str(),
                    "circuit changed"
                );
                counter!(m::CIRCUIT_TRANSITIONS, "unit" => label.clone(), "to" => state.as_str())
                    .increment(1);
            }
            let up = if state == CircuitState::Closed {
                1.0
            } else {
                0.0
            };
            gauge!(m::CIRCUIT_STATE, "unit" => label.clone()).set(f64::from(state.as_level()));
            gauge!(m::UNIT_UP, "unit" => label).set(up);
            let retry_in = w.breaker.retry_in(now).as_millis() as u64;
            self.board.set_circuit(*id, state, permits, retry_in);
            let entry = own.entry(w.partition.clone()).or_default();
            if w.takes_creates {
                entry.0 += 1;
                entry.1 += usize::from(state == CircuitState::Closed);
            }
        }
        let reach = |p: &str| -> (usize, usize) {
            let spill = self
                .partitions
                .get(p)
                .map(|s| s.spill_to.as_slice())
                .unwrap_or_default();
            std::iter::once(p)
                .chain(spill.iter().map(String::as_str))
                .filter_map(|q| own.get(q))
                .fold((0, 0), |acc, (t, h)| (acc.0 + t, acc.1 + h))
        };
        // Partitions no unit is in any more leave panic mode too.
        let emptied: Vec<String> = self
            .board
            .panic_partitions()
            .into_iter()
            .filter(|(p, _)| !own.contains_key(p))
            .map(|(p, _)| p)
            .collect();
        let partitions: Vec<(String, (usize, usize))> = own
            .keys()
            .chain(&emptied)
            .map(|p| (p.clone(), reach(p)))
            .collect();
        let threshold = usize::from(self.settings.panic_threshold_percent);
        for (partition, (total, healthy)) in partitions {
            let partition = partition.as_str();
            let panic = total > 0 && healthy * 100 < threshold * total;
            if panic != self.board.in_panic(partition) {
                if panic {
                    tracing::warn!(
                        partition,
                        healthy,
                        total,
                        "panic mode: too few healthy units, ignoring health for creates"
                    );
                } else {
                    tracing::info!(partition, healthy, total, "panic mode over");
                }
            }
            self.board.set_panic(partition, panic);
            gauge!(m::PANIC_MODE, "partition" => partition.to_string()).set(if panic {
                1.0
            } else {
                0.0
            });
        }
        gauge!(m::PROBER_SUSPECTED).set(if self.board.prober_suspected() {
            1.0
        } else {
            0.0
        });
    }
}

/// How often live successes counted on the board are folded into the breakers.
const LIVE_FOLD_EVERY: Duration = Duration::from_millis(100);

/// Moves a unit's live latency average towards `sample_us` (EWMA, weight 1/8:
/// smooth enough to read, quick to move).
fn record_latency(h: &UnitHealth, sample_us: u64) {
    let old = h.call_latency_us.load(Ordering::Relaxed);
    let new = if old == 0 {
        sample_us
    } else {
        old - old / 8 + sample_us / 8
    };
    h.call_latency_us.store(new, Ordering::Relaxed);
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // No mailbox capacity to set: every message here comes with
        // `do_send`, which queues whatever the capacity, so that a failure
        // report is never dropped and never makes a caller wait. A burst of
        // failures grows the mailbox for as long as it lasts.
        let every = Duration::from_millis(self.settings.probe_interval_ms.max(10));
        ctx.run_interval(every, |act, ctx| act.probe_round(ctx));
        ctx.run_interval(LIVE_FOLD_EVERY, |act, _| {
            let now = act.now();
            let units: Vec<u16> = act.units.keys().copied().collect();
            let mut changed = false;
            for u in units {
                changed |= act.fold_live(u, now);
            }
            if changed {
                act.publish();
            }
        });
    }
}

impl Handler<Watch> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: Watch, _ctx: &mut Self::Context) {
        self.board.add_unit(msg.unit);
        let circuit = self.settings.circuit();
        let w = self.units.entry(msg.unit).or_insert_with(|| Watched {
            addr: msg.addr.clone(),
            partition: msg.partition.clone(),
            mode: msg.mode,
            takes_creates: msg.takes_creates,
            breaker: CircuitBreaker::new(circuit),
        });
        if w.addr != msg.addr {
            // Another actor (the unit moved to another database, or started
            // after it could not): the old one's failures say nothing of it.
            w.breaker = CircuitBreaker::new(self.settings.circuit());
        }
        w.addr = msg.addr;
        w.partition = msg.partition;
        w.mode = msg.mode;
        w.takes_creates = msg.takes_creates;
        self.publish();
    }
}

/// A unit that no longer runs (its database could not be opened after it
/// moved): no more probes, and it no longer counts for panic mode.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unwatch {
    pub unit: u16,
}

impl Handler<Unwatch> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: Unwatch, _ctx: &mut Self::Context) {
        self.units.remove(&msg.unit);
        self.publish();
    }
}

impl Handler<SetSpill> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: SetSpill, _ctx: &mut Self::Context) {
        self.partitions = msg.partitions;
        self.publish();
    }
}

impl Handler<Report> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: Report, _ctx: &mut Self::Context) {
        let now = self.now();
        let Some(before) = self.units.get_mut(&msg.unit).map(|w| w.breaker.state(now)) else {
            return;
        };
        // Successes counted since the last fold came first: a failure after
        // them does not continue an earlier run of failures.
        self.fold_live(msg.unit, now);
        let Some(w) = self.units.get_mut(&msg.unit) else {
            return;
        };
        if msg.ok {
            w.breaker.on_success(now);
        } else {
            w.breaker.on_failure(now);
        }
        let after = w.breaker.state(now);
        if let Some(h) = self.board.unit(msg.unit) {
            record_latency(&h, msg.latency.as_micros() as u64);
        }
        if before != after {
            self.publish();
        }
    }
}
