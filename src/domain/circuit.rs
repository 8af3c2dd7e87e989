//! A unit's circuit breaker: `closed -> open -> half_open -> closed`.
//!
//! Closed: calls flow; it opens after `consecutive_failures` failures in a row,
//! or when over `failure_rate` of at least `min_calls` calls in the window
//! failed. Open: calls fail fast for `open_for` (doubling each time a half-open
//! trial fails, capped at `max_open_for`). Half-open: a few trial calls and the
//! prober's probes go through; `close_after` successes close it, one failure
//! opens it again.
//!
//! Time is passed in (a `Duration` since an arbitrary start) so the logic is
//! plain and testable.

use std::time::Duration;

use super::selection::SlidingCount;

#[derive(Debug, Clone)]
pub struct CircuitConfig {
    pub consecutive_failures: u32,
    /// Failure ratio (0-1) that opens the circuit once `min_calls` were seen.
    pub failure_rate: f64,
    pub window: Duration,
    pub min_calls: u64,
    pub open_for: Duration,
    pub max_open_for: Duration,
    pub close_after: u32,
    /// Live calls let through at once while half-open.
    pub half_open_permits: u32,
}

impl Default for CircuitConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_rate: 0.5,
            window: Duration::from_secs(10),
            min_calls: 20,
            open_for: Duration::from_secs(5),
            max_open_for: Duration::from_secs(60),
            close_after: 3,
            half_open_permits: 3,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    /// 0 closed, 1 half-open, 2 open: the value exported as a gauge.
    pub fn as_level(self) -> u8 {
        match self {
            Self::Closed => 0,
            Self::HalfOpen => 1,
            Self::Open => 2,
        }
    }
}

#[derive(Debug)]
pub struct CircuitBreaker {
    config: CircuitConfig,
    state: CircuitState,
    consecutive_failures: u32,
    calls: SlidingCount,
    failures: SlidingCount,
    open_until: Duration,
    /// How long the next opening lasts (doubles on failed trials).
    next_open_for: Duration,
    half_open_successes: u32,
}

impl CircuitBreaker {
    pub fn new(config: CircuitConfig) -> Self {
        Self {
            calls: SlidingCount::new(config.window),
            failures: SlidingCount::new(config.window),
            state: CircuitState::Closed,
            consecutive_failures: 0,
            open_until: Duration::ZERO,
            next_open_for: config.open_for,
            half_open_successes: 0,
            config,
        }
    }

    pub fn config(&self) -> &CircuitConfig {
        &self.config
    }

    /// The state at `now` (an open circuit whose time is up becomes half-open).
    pub fn state(&mut self, now: Duration) -> CircuitState {
        if self.state == CircuitState::Open && now >= self.open_until {
            self.state = CircuitState::HalfOpen;
            self.half_open_successes = 0;
        }
        self.state
    }

    pub fn on_success(&mut self, now: Duration) {
        self.on_successes(now, 1);
    }

    /// `n` successes at once (live calls are folded in periodically).
    pub fn on_successes(&mut self, now: Duration, n: u32) {
        if n == 0 {
            return;
        }
        self.calls.record_n(now, u64::from(n));
        self.consecutive_failures = 0;
        if self.state(now) == CircuitState::HalfOpen {
            self.half_open_successes += n;
            if self.half_open_successes >= self.config.close_after {
                self.state = CircuitState::Closed;
                self.next_open_for = self.config.open_for;
            }
        }
    }

    pub fn on_failure(&mut self, now: Duration) {
        self.calls.record(now);
        self.failures.record(now);
        self.consecutive_failures += 1;
        match self.state(now) {
            CircuitState::Open => {}
            CircuitState::HalfOpen => {
                // The trial failed: back off longer.
                self.next_open_for = (self.next_open_for * 2).min(self.config.max_open_for);
                self.open(now);
            }
            CircuitState::Closed => {
                let calls = self.calls.count(now);
                let failures = self.failures.count(now);
                let rate_trips = calls >= self.config.min_calls
                    && failures as f64 > self.config.failure_rate * calls as f64;
                if self.consecutive_failures >= self.config.consecutive_failures || rate_trips {
                    self.open(now);
                }
            }
        }
    }

    fn open(&mut self, now: Duration) {
        self.state = CircuitState::Open;
        self.open_until = now + self.next_open_for;
        self.half_open_successes = 0;
    }

    /// How long until an open circuit lets a trial through (zero otherwise).
    pub fn retry_in(&self, now: Duration) -> Duration {
        match self.state {
            CircuitState::Open => self.open_until.saturating_sub(now),
            _ => Duration::ZERO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn opens_after_consecutive_failures_and_recovers_through_half_open() {
        let mut cb = CircuitBreaker::new(CircuitConfig::default());
        for i in 0..4 {
            cb.on_failure(ms(i));
            assert_eq!(cb.state(ms(i)), CircuitState::Closed);
        }
        cb.on_failure(ms(5));
        assert_eq!(cb.state(ms(5)), CircuitState::Open);
        assert_eq!(cb.state(ms(5_004)), CircuitState::Open);
        assert_eq!(cb.state(ms(5_005)), CircuitState::HalfOpen);
        cb.on_success(ms(5_100));
        cb.on_success(ms(5_200));
        assert_eq!(cb.state(ms(5_250)), CircuitState::HalfOpen);
        cb.on_success(ms(5_300));
        assert_eq!(cb.state(ms(5_300)), CircuitState::Closed);
    }

    #[test]
    fn successes_counted_together_act_like_one_by_one() {
        let mut cb = CircuitBreaker::new(CircuitConfig::default());
        for i in 0..4 {
            cb.on_failure(ms(i));
        }
        // A folded-in batch of successes ends the run of failures...
        cb.on_successes(ms(10), 7);
        cb.on_failure(ms(11));
        assert_eq!(cb.state(ms(11)), CircuitState::Closed, "the run restarted");
        // ...counts toward the failure rate's call count...
        assert_eq!(cb.calls.count(ms(12)), 12);
        // ...and closes a half-open circuit once there are enough.
        for i in 12..16 {
            cb.on_failure(ms(i));
        }
        assert_eq!(cb.state(ms(16)), CircuitState::Open);
        let half = ms(16 + 5_000);
        assert_eq!(cb.state(half), CircuitState::HalfOpen);
        cb.on_successes(half, 0);
        assert_eq!(
            cb.state(half),
            CircuitState::HalfOpen,
            "zero changes nothing"
        );
        cb.on_successes(half, 3);
        assert_eq!(cb.state(half), CircuitState::Closed);
    }

    #[test]
    fn failed_trials_double_the_open_time_up_to_the_cap() {
        let mut cb = CircuitBreaker::new(CircuitConfig::default());
        let mut now = ms(0);
        for _ in 0..5 {
            cb.on_failure(now);
        }
        let mut expected = 5_000;
        for _ in 0..6 {
            assert_eq!(cb.retry_in(now), ms(expected));
            now += ms(expected);
            assert_eq!(cb.state(now), CircuitState::HalfOpen);
            cb.on_failure(now);
            expected = (expected * 2).min(60_000);
        }
        assert_eq!(cb.retry_in(now), ms(60_000));
        // Closing resets the back-off.
        now += ms(60_000);
        for _ in 0..3 {
            cb.on_success(now);
        }
        assert_eq!(cb.state(now), CircuitState::Closed);
        for _ in 0..5 {
            cb.on_failure(now);
        }
        assert_eq!(cb.retry_in(now), ms(5_000));
    }

    #[test]
    fn a_failure_rate_over_half_opens_only_with_enough_calls() {
        let mut cb = CircuitBreaker::new(CircuitConfig::default());
        // Alternate so there are never 5 failures in a row.
        for i in 0..19 {
            if i % 3 == 0 {
                cb.on_success(ms(i));
            } else {
                cb.on_failure(ms(i));
            }
        }
        assert_eq!(
            cb.state(ms(19)),
            CircuitState::Closed,
            "fewer than 20 calls"
        );
        cb.on_failure(ms(20));
        assert_eq!(cb.state(ms(20)), CircuitState::Open);
    }

    #[test]
    fn old_failures_leave_the_window() {
        let mut cb = CircuitBreaker::new(CircuitConfig::default());
        for i in 0..15 {
            cb.on_failure(ms(i * 1000));
            cb.on_success(ms(i * 1000 + 1));
        }
        assert_eq!(
            cb.state(ms(15_000)),
            CircuitState::Closed,
            "50% is not over 50%"
        );
    }
}
