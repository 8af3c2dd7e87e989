//! The health snapshot: written by the supervisor, read by the dispatcher on
//! every call without a message round trip (atomics in a `DashMap`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU32, AtomicU64, Ordering};

use dashmap::DashMap;

use crate::domain::circuit::CircuitState;

/// One unit's published health.
#[derive(Debug, Default)]
pub struct UnitHealth {
    /// `CircuitState::as_level`.
    circuit: AtomicU8,
    /// Live calls still allowed through a half-open circuit.
    half_open_permits: AtomicU32,
    /// Last probe answered correctly and in time.
    pub probe_ok: AtomicBool,
    /// Last probe round trip, in microseconds (-1: no probe yet).
    pub probe_latency_us: AtomicI64,
    /// Exponentially weighted live call latency, in microseconds.
    pub call_latency_us: AtomicU64,
    /// Times the unit actor was restarted.
    pub restarts: AtomicU64,
    /// Milliseconds until an open circuit lets a trial through.
    pub retry_in_ms: AtomicU64,
    /// Live calls that succeeded since the supervisor last folded them in,
    /// and their summed latency in microseconds. Successes through a closed
    /// circuit are counted here instead of sent one message each.
    live_ok: AtomicU64,
    live_latency_us: AtomicU64,
    /// Why the unit does not run, while it does not (passwords masked).
    pub start_error: std::sync::Mutex<Option<String>>,
    /// The unit is disabled, and no transaction of this process can change
    /// its database any more (it may be copied).
    pub writes_fenced: AtomicBool,
    /// The unit's last failover in this process.
    failover: std::sync::Mutex<Option<FailoverRecord>>,
}

/// A failover this process ran, as `GET /admin/units` shows it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct FailoverRecord {
    /// `planned` or `emergency`.
    pub mode: &'static str,
    pub at_ms: i64,
    /// Password masked.
    pub old_primary_url: String,
    /// `false` while a dead old primary waits to be fenced when it answers.
    pub old_primary_fenced: bool,
    /// Whether the new primary's commits wait for a replica (semi-sync):
    /// `false` when no re-pointed replica attached in time, and the unit
    /// runs asynchronously until the operator turns it on.
    pub semi_sync: bool,
}

impl UnitHealth {
    pub fn set_failover(&self, record: FailoverRecord) {
        *self.failover.lock().expect("failover lock") = Some(record);
    }

    /// The old primary of the last failover is fenced now.
    pub fn old_primary_fenced(&self) {
        if let Some(r) = self.failover.lock().expect("failover lock").as_mut() {
            r.old_primary_fenced = true;
        }
    }

    pub fn last_failover(&self) -> Option<FailoverRecord> {
        self.failover.lock().expect("failover lock").clone()
    }

    /// Counts a successful live call (folded in by the supervisor).
    pub fn count_success(&self, latency_us: u64) {
        self.live_ok.fetch_add(1, Ordering::Relaxed);
        self.live_latency_us
            .fetch_add(latency_us, Ordering::Relaxed);
    }

    /// Takes the successes counted since the last call: `(calls, mean latency in µs)`.
    pub fn take_successes(&self) -> (u64, u64) {
        let n = self.live_ok.swap(0, Ordering::Relaxed);
        let sum = self.live_latency_us.swap(0, Ordering::Relaxed);
        (n, sum.checked_div(n).unwrap_or(0))
    }

    pub fn circuit(&self) -> CircuitState {
        match self.circuit.load(Ordering::Acquire) {
            0 => CircuitState::Closed,
            1 => CircuitState::HalfOpen,
            _ => CircuitState::Open,
        }
    }
}

/// Whether a call may go to a unit now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// The circuit is open (or half-open with no trial left): fail fast.
    Rejected,
}

#[derive(Debug, Default)]
pub struct HealthBoard {
    units: DashMap<u16, Arc<UnitHealth>>,
    /// Partitions where too few units look healthy to trust health.
    panic: DashMap<String, bool>,
    prober_suspected: AtomicBool,
}

impl HealthBoard {
    pub fn new(units: impl IntoIterator<Item = u16>) -> Self {
        let board = Self::default();
        for u in units {
            let h = UnitHealth::default();
            h.probe_latency_us.store(-1, Ordering::Relaxed);
            h.probe_ok.store(true, Ordering::Relaxed);
            board.units.insert(u, Arc::new(h));
        }
        board
    }

    pub fn unit(&self, unit: u16) -> Option<Arc<UnitHealth>> {
        self.units.get(&unit).map(|h| h.clone())
    }

    pub fn add_unit(&self, unit: u16) {
        self.units.entry(unit).or_insert_with(|| {
            let h = UnitHealth::default();
            h.probe_latency_us.store(-1, Ordering::Relaxed);
            h.probe_ok.store(true, Ordering::Relaxed);
            Arc::new(h)
        });
    }

    pub fn circuit(&self, unit: u16) -> CircuitState {
        self.units
            .get(&unit)
            .map(|h| h.circuit())
            .unwrap_or(CircuitState::Closed)
    }

    /// Publishes a unit's circuit state; entering half-open grants `permits` trials.
    pub fn set_circuit(&self, unit: u16, state: CircuitState, permits: u32, retry_in_ms: u64) {
        if let Some(h) = self.units.get(&unit) {
            let before = h.circuit.swap(state.as_level(), Ordering::AcqRel);
            if state == CircuitState::HalfOpen && before != state.as_level() {
                h.half_open_permits.store(permits, Ordering::Release);
            }
            h.retry_in_ms.store(retry_in_ms, Ordering::Relaxed);
        }
    }

    /// Admission for a read or update of an order in `unit`. Half-open units let
    /// a few trial calls through; open ones fail fast.
    pub fn admit(&self, unit: u16) -> Admission {
        let Some(h) = self.units.get(&unit) else {
            return Admission::Allowed;
        };
        match h.circuit() {
            CircuitState::Closed => Admission::Allowed,
            CircuitState::Open => Admission::Rejected,
            CircuitState::HalfOpen => {
                let took =
                    h.half_open_permits
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| p.checked_sub(1));
                if took.is_ok() {
                    Admission::Allowed
                } else {
                    Admission::Rejected
                }
            }
        }
    }

    pub fn in_panic(&self, partition: &str) -> bool {
        self.panic.get(partition).is_some_and(|p| *p)
    }

    pub fn set_panic(&self, partition: &str, on: bool) {
        self.panic.insert(partition.to_string(), on);
    }

    pub fn panic_partitions(&self) -> Vec<(String, bool)> {
        let mut v: Vec<_> = self
            .panic
            .iter()
            .map(|e| (e.key().clone(), *e.value()))
            .collect();
        v.sort();
        v
    }

    pub fn prober_suspected(&self) -> bool {
        self.prober_suspected.load(Ordering::Acquire)
    }

    pub fn set_prober_suspected(&self, on: bool) {
        self.prober_suspected.store(on, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_successes_are_taken_once_with_their_mean_latency() {
        let board = HealthBoard::new([1]);
        let h = board.unit(1).unwrap();
        assert_eq!(h.take_successes(), (0, 0));
        h.count_success(100);
        h.count_success(300);
        assert_eq!(h.take_successes(), (2, 200));
        assert_eq!(h.take_successes(), (0, 0), "taking resets the count");
    }

    #[test]
    fn half_open_lets_a_few_trials_through() {
        let board = HealthBoard::new([1, 2]);
        assert_eq!(board.admit(1), Admission::Allowed);
        board.set_circuit(1, CircuitState::Open, 2, 5_000);
        assert_eq!(board.admit(1), Admission::Rejected);
        assert_eq!(
            board.admit(2),
            Admission::Allowed,
            "other units are unaffected"
        );
        board.set_circuit(1, CircuitState::HalfOpen, 2, 0);
        assert_eq!(board.admit(1), Admission::Allowed);
        assert_eq!(board.admit(1), Admission::Allowed);
        assert_eq!(board.admit(1), Admission::Rejected);
        // Re-publishing the same state does not refill the trials.
        board.set_circuit(1, CircuitState::HalfOpen, 2, 0);
        assert_eq!(board.admit(1), Admission::Rejected);
        board.set_circuit(1, CircuitState::Closed, 2, 0);
        assert_eq!(board.admit(1), Admission::Allowed);
    }
}
