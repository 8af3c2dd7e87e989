//! A failover's limits, its steps as they are done (logged, counted and
//! timed; the answer lists them), and the errors that name the step that
//! failed.

use std::time::{Duration, Instant};

use metrics::counter;
use tokio::sync::Mutex;

use crate::actors::EngineError;
use crate::actors::dispatcher::messages::{FailoverMode, StepTook};
use crate::metrics as m;

/// How long failover steps may take (from the storage settings).
#[derive(Debug)]
pub(in crate::actors::dispatcher) struct FailoverLimits {
    /// Each server operation.
    pub step: Duration,
    /// The replica catching up.
    pub catch_up: Duration,
    /// One failover at a time in this process.
    pub running: Mutex<()>,
}

pub(super) struct Steps {
    pub unit: u16,
    mode: FailoverMode,
    started: Instant,
    last: Instant,
    pub done: Vec<StepTook>,
}

impl Steps {
    pub fn new(unit: u16, mode: FailoverMode) -> Self {
        let now = Instant::now();
        Self {
            unit,
            mode,
            started: now,
            last: now,
            done: Vec::new(),
        }
    }

    pub fn done(&mut self, step: &'static str, detail: &str) {
        let ms = self.last.elapsed().as_millis() as u64;
        self.last = Instant::now();
        tracing::warn!(
            unit = self.unit,
            mode = self.mode.as_str(),
            step,
            ms,
            detail,
            "failover step done"
        );
        counter!(m::FAILOVER_STEPS, "unit" => self.unit.to_string(), "step" => step).increment(1);
        self.done.push(StepTook { step, ms });
    }

    pub fn finish(&self, outcome: &'static str) {
        counter!(
            m::FAILOVERS,
            "unit" => self.unit.to_string(),
            "mode" => self.mode.as_str(),
            "outcome" => outcome
        )
        .increment(1);
        tracing::warn!(
            unit = self.unit,
            mode = self.mode.as_str(),
            outcome,
            ms = self.started.elapsed().as_millis() as u64,
            "failover over"
        );
    }
}

/// `503 failover_failed`, naming the step.
pub(super) fn failed(
    unit: u16,
    step: &'static str,
    message: impl std::fmt::Display,
) -> EngineError {
    EngineError::FailoverFailed {
        unit,
        step,
        message: message.to_string(),
    }
}

/// `400 invalid_change` on `to`.
pub(super) fn invalid_to(message: String) -> EngineError {
    EngineError::InvalidChange {
        field: Some("to"),
        message,
    }
}
