//! Choosing the unit for a create: weighted power of two choices over recent load.
//!
//! Picking one unit at random by weight balances in expectation, but bursts pile
//! up on unlucky units. Picking two at random and keeping the one with fewer
//! creates in the last few seconds (relative to its weight) keeps units even
//! with no coordination beyond a local counter: the paper's "hot-spot balancing".

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;

/// A unit that may take this create, with what selection needs to know about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub unit: u16,
    /// Relative share of creates; 0 means "takes none".
    pub weight: u32,
    /// Creates sent to the unit in the recent window.
    pub recent: u64,
}

/// Picks a unit among `candidates`, or `None` when none has a positive weight.
pub fn choose(candidates: &[Candidate], rng: &mut impl Rng) -> Option<u16> {
    let total: u64 = candidates.iter().map(|c| u64::from(c.weight)).sum();
    if total == 0 {
        return None;
    }
    let first = pick_weighted(candidates, total, rng);
    let others = candidates.iter().filter(|c| c.unit != first.unit);
    let rest_total: u64 = others.clone().map(|c| u64::from(c.weight)).sum();
    if rest_total == 0 {
        return Some(first.unit);
    }
    let rest: Vec<Candidate> = others.copied().collect();
    let second = *pick_weighted(&rest, rest_total, rng);
    // Less load per unit of weight wins: recent_a / w_a <= recent_b / w_b.
    let load = |c: &Candidate, other: &Candidate| u128::from(c.recent) * u128::from(other.weight);
    Some(if load(first, &second) <= load(&second, first) {
        first.unit
    } else {
        second.unit
    })
}

fn pick_weighted<'a>(candidates: &'a [Candidate], total: u64, rng: &mut impl Rng) -> &'a Candidate {
    let mut ticket = rng.random_range(0..total);
    for c in candidates {
        let w = u64::from(c.weight);
        if ticket < w {
            return c;
        }
        ticket -= w;
    }
    unreachable!("ticket < total weight")
}

/// Events in a sliding window of `SLOTS` time slots: a ring of counters that
/// any thread bumps without a lock (both HTTP workers count their creates
/// here). An entry packs its slot number (high bits) with its count (low
/// `COUNT_BITS`); a bump that finds an older slot there starts the entry over.
#[derive(Debug)]
pub struct SlidingCount {
    slot_ms: u64,
    ring: [AtomicU64; SLOTS],
}

const SLOTS: usize = 10;
/// Events one slot can count (16.7 million); more are not counted.
const COUNT_BITS: u32 = 24;
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;

impl SlidingCount {
    /// A window of `window` split into ten slots.
    pub fn new(window: Duration) -> Self {
        let slot = (window / SLOTS as u32).max(Duration::from_millis(1));
        Self {
            slot_ms: slot.as_millis() as u64,
            ring: Default::default(),
        }
    }

    fn slot_of(&self, since_start: Duration) -> u64 {
        since_start.as_millis() as u64 / self.slot_ms
    }

    /// The length of the window.
    pub fn window(&self) -> Duration {
        Duration::from_millis(self.slot_ms * SLOTS as u64)
    }

    /// Records one event at `now` (time since an arbitrary fixed start).
    pub fn record(&self, now: Duration) {
        self.record_n(now, 1);
    }

    /// Records `n` events at once.
    pub fn record_n(&self, now: Duration, n: u64) {
        let slot = self.slot_of(now);
        let entry = &self.ring[slot as usize % SLOTS];
        // `None` (no change) when the entry already counts a later slot: the
        // event is a full window old.
        let _ = entry.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |packed| {
            let count = match (packed >> COUNT_BITS).cmp(&slot) {
                std::cmp::Ordering::Equal => packed & COUNT_MAX,
                std::cmp::Ordering::Less => 0,
                std::cmp::Ordering::Greater => return None,
            };
            Some(slot << COUNT_BITS | count.saturating_add(n).min(COUNT_MAX))
        });
    }

    /// Events in the window ending at `now`.
    pub fn count(&self, now: Duration) -> u64 {
        let slot = self.slot_of(now);
        self.ring
            .iter()
            .map(|e| e.load(Ordering::Relaxed))
            .filter(|packed| {
                let s = packed >> COUNT_BITS;
                s + SLOTS as u64 > slot && s <= slot
            })
            .map(|packed| packed & COUNT_MAX)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn cand(unit: u16, weight: u32, recent: u64) -> Candidate {
        Candidate {
            unit,
            weight,
            recent,
        }
    }

    #[test]
    fn nothing_to_choose_from() {
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(choose(&[], &mut rng), None);
        assert_eq!(choose(&[cand(1, 0, 0)], &mut rng), None);
        assert_eq!(choose(&[cand(1, 0, 0), cand(2, 5, 9)], &mut rng), Some(2));
    }

    #[test]
    fn two_choices_keep_units_even() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut counts = [0u64; 4];
        for _ in 0..4_000 {
            let cands: Vec<_> = (0..4).map(|u| cand(u, 100, counts[u as usize])).collect();
            counts[choose(&cands, &mut rng).unwrap() as usize] += 1;
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(max - min <= 2, "uneven: {counts:?}");
    }

    #[test]
    fn weights_set_the_shares() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut counts = [0u64; 2];
        for _ in 0..3_000 {
            let cands = [cand(0, 200, counts[0]), cand(1, 100, counts[1])];
            counts[choose(&cands, &mut rng).unwrap() as usize] += 1;
        }
        let share = counts[0] as f64 / 3_000.0;
        assert!((0.64..0.70).contains(&share), "share {share}: {counts:?}");
    }

    #[test]
    fn sliding_count_forgets_old_slots() {
        let w = SlidingCount::new(Duration::from_secs(10));
        let s = Duration::from_secs;
        w.record(s(0));
        w.record(s(0));
        w.record(s(5));
        assert_eq!(w.count(s(5)), 3);
        assert_eq!(w.count(s(10)), 1); // the two at t=0 left the window
        assert_eq!(w.count(s(16)), 0);
        w.record(s(25)); // reuses the ring slot of t=5
        assert_eq!(w.count(s(25)), 1);
        w.record(s(15)); // a window older than what its ring slot holds: dropped
        assert_eq!(w.count(s(25)), 1);
    }

    #[test]
    fn sliding_count_adds_up_bumps_from_many_threads() {
        let w = SlidingCount::new(Duration::from_secs(10));
        let now = Duration::from_millis(1_500);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| (0..10_000).for_each(|_| w.record(now)));
            }
        });
        assert_eq!(w.count(now), 40_000);
    }
}
