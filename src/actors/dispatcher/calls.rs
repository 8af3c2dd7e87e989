//! One call from the dispatcher to one unit: circuit admission before it,
//! an outcome report to the supervisor after it, and the classification that
//! decides whether a failed create may be retried elsewhere.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Addr, Handler, MailboxError, Message};

use crate::actors::EngineError;
use crate::actors::health::{Admission, HealthBoard};
use crate::actors::supervisor::{Report, Supervisor};
use crate::actors::unit::UnitActor;
use crate::domain::circuit::CircuitState;
use crate::metrics as m;
use crate::storage::StoreError;
use metrics::{counter, histogram};

/// Why a call to a unit did not return a value.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The circuit is open: the call was not sent.
    #[error("circuit open")]
    Rejected,
    #[error(transparent)]
    Store(StoreError),
    /// No answer in time: the unit may still be working on it.
    #[error("no answer in time")]
    Timeout,
    /// The unit actor is gone (stopped or crashed) while the call was out.
    #[error("unit actor gone")]
    Gone,
}

impl CallError {
    /// True when the failed call certainly did not commit anything, so a create
    /// may be retried on another unit. Anything else is in doubt.
    pub fn is_definite(&self) -> bool {
        match self {
            Self::Rejected => true,
            Self::Store(e) => !matches!(
                e,
                StoreError::InDoubt(_) | StoreError::Restarted { in_doubt: true }
            ),
            Self::Timeout | Self::Gone => false,
        }
    }

    pub fn into_engine(self, unit: u16) -> EngineError {
        match self {
            Self::Store(e) => EngineError::from_store(unit, e),
            Self::Rejected | Self::Timeout | Self::Gone => EngineError::UnitUnavailable { unit },
        }
    }

    /// A short label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Rejected => "circuit_open",
            Self::Store(StoreError::Unavailable(_)) => "unavailable",
            Self::Store(StoreError::InDoubt(_)) => "in_doubt",
            Self::Store(StoreError::Restarted { .. }) => "actor_restarted",
            Self::Store(StoreError::SequenceExhausted) => "sequence_exhausted",
            Self::Store(StoreError::SequenceReused { .. }) => "sequence_reused",
            Self::Store(_) => "error",
            Self::Timeout => "timeout",
            Self::Gone => "actor_gone",
        }
    }
}

/// What every unit call needs: where to check circuits and report outcomes.
#[derive(Clone)]
pub struct UnitCalls {
    pub board: Arc<HealthBoard>,
    pub supervisor: Addr<Supervisor>,
    pub timeout: Duration,
    /// Metric handles per unit (units added later fall back to the macros).
    pub metrics: Arc<HashMap<u16, m::UnitCallMetrics>>,
}

impl UnitCalls {
    /// Sends `msg` to `unit`. With `admit`, an open circuit fails fast instead.
    pub async fn call<M, R>(
        &self,
        unit: u16,
        addr: &Addr<UnitActor>,
        msg: M,
        admit: bool,
        timeout: Duration,
    ) -> Result<R, CallError>
    where
        M: Message<Result = Result<R, StoreError>> + Send + 'static,
        R: Send + 'static,
        UnitActor: Handler<M>,
    {
        if admit && self.board.admit(unit) == Admission::Rejected {
            return Err(CallError::Rejected);
        }
        let started = Instant::now();
        let result = match addr.send(msg).timeout(timeout).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(CallError::Store(e)),
            Err(MailboxError::Timeout) => Err(CallError::Timeout),
            Err(MailboxError::Closed) => Err(CallError::Gone),
        };
        // A business answer ("not found", "refund exceeds paid") is still an answer.
        let ok = matches!(
            result,
            Ok(_) | Err(CallError::Store(StoreError::NotFound | StoreError::Rule(_)))
        );
        let latency = started.elapsed();
        let outcome = match &result {
            _ if ok => "ok",
            Err(CallError::Store(StoreError::Internal(_))) => "error",
            _ => "unavailable",
        };
        let handles = self.metrics.get(&unit);
        match (handles, outcome) {
            (Some(h), "ok") => h.ok.increment(1),
            (Some(h), "error") => h.error.increment(1),
            (Some(h), _) => h.unavailable.increment(1),
            (None, _) => {
                let label = unit.to_string();
                counter!(m::UNIT_CALLS, "unit" => label.clone(), "outcome" => outcome).increment(1);
            }
        }
        match handles {
            Some(h) => h.duration.record(latency.as_secs_f64()),
            None => histogram!(m::UNIT_CALL_DURATION, "unit" => unit.to_string())
                .record(latency.as_secs_f64()),
        }
        // Successes through a closed circuit are only counted; anything that
        // can change a circuit (a failure, a half-open trial) is sent at once.
        // A restart of the unit actor says nothing about the unit's database:
        // the circuit neither counts it nor is told of it.
        let restarted = matches!(result, Err(CallError::Store(StoreError::Restarted { .. })));
        match self.board.unit(unit) {
            Some(h) if ok && h.circuit() == CircuitState::Closed => {
                h.count_success(latency.as_micros() as u64)
            }
            _ if restarted => {}
            _ => self.supervisor.do_send(Report { unit, ok, latency }),
        }
        result
    }

    /// Counts an order created in `unit`.
    pub fn count_create(&self, unit: u16) {
        match self.metrics.get(&unit) {
            Some(h) => h.creates.increment(1),
            None => counter!(m::CREATES, "unit" => unit.to_string()).increment(1),
        }
    }

    /// An eventual read of a unit with a replica, which may answer while
    /// the primary's circuit is open: not admitted by that circuit, and
    /// its outcome says nothing of the primary (not reported to it).
    pub async fn read_beside_circuit<M, R>(
        &self,
        unit: u16,
        addr: &Addr<UnitActor>,
        msg: M,
    ) -> Result<R, EngineError>
    where
        M: Message<Result = Result<R, StoreError>> + Send + 'static,
        R: Send + 'static,
        UnitActor: Handler<M>,
    {
        let answer = match addr.send(msg).timeout(self.timeout).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => CallError::Store(e),
            Err(MailboxError::Timeout) => CallError::Timeout,
            Err(MailboxError::Closed) => CallError::Gone,
        };
        Err(answer.into_engine(unit))
    }

    /// `call` with admission and the default timeout, mapped to engine errors.
    pub async fn forward<M, R>(
        &self,
        unit: u16,
        addr: &Addr<UnitActor>,
        msg: M,
    ) -> Result<R, EngineError>
    where
        M: Message<Result = Result<R, StoreError>> + Send + 'static,
        R: Send + 'static,
        UnitActor: Handler<M>,
    {
        self.call(unit, addr, msg, true, self.timeout)
            .await
            .map_err(|e| e.into_engine(unit))
    }
}
