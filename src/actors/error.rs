//! The errors the engine's actors answer with. The API maps each to a stable
//! error code (`api::error`); here they say what happened, not how HTTP
//! shows it.

use crate::domain::RuleError;
use crate::storage::StoreError;

/// Errors the engine (dispatcher and units) answers with.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("order not found")]
    NotFound,
    #[error(transparent)]
    Rule(#[from] RuleError),
    #[error(
        "this (merchant_id, out_trade_no) already names an order created from a different request"
    )]
    IdempotencyConflict,
    #[error("no trading unit can take the order now")]
    NoUnitAvailable,
    #[error("trading unit {unit} is unavailable")]
    UnitUnavailable { unit: u16 },
    #[error("no unit {unit} in the routing table")]
    UnitNotFound { unit: u16 },
    #[error(
        "unit {unit} moves to another database only while it is disabled (disable it, let calls in flight finish, copy its database, then move it)"
    )]
    UnitNotDisabled { unit: u16 },
    #[error(
        "a unit moves to another database only where the routing table is kept (admin.state_file or admin.control_url): after a restart it would go back to the old one"
    )]
    TableNotKept,
    #[error("the routing table is at version {version}, not the one If-Match names")]
    TableMoved { version: u64 },
    #[error("{message}")]
    InvalidChange {
        field: Option<&'static str>,
        message: String,
    },
    #[error("the change could not be kept: {0}")]
    TableNotSaved(String),
    #[error("the unit could not be started, so it did not join the table: {0}")]
    UnitNotStarted(String),
    #[error("unit {unit} cannot fail over: {message}")]
    NoReplica { unit: u16, message: String },
    #[error("unit {unit}: failover step {step} failed: {message}")]
    FailoverFailed {
        unit: u16,
        step: &'static str,
        message: String,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

impl EngineError {
    /// Maps a unit's storage error for a call routed to `unit`.
    pub fn from_store(unit: u16, e: StoreError) -> Self {
        match e {
            StoreError::NotFound => Self::NotFound,
            StoreError::Rule(r) => Self::Rule(r),
            StoreError::Unavailable(_)
            | StoreError::InDoubt(_)
            | StoreError::Restarted { .. }
            | StoreError::SequenceExhausted
            | StoreError::SequenceReused { .. } => Self::UnitUnavailable { unit },
            StoreError::Internal(m) => Self::Internal(m),
        }
    }

    /// The unit a failed call went to, when it names one.
    pub fn unit(&self) -> Option<u16> {
        match self {
            Self::UnitUnavailable { unit } => Some(*unit),
            _ => None,
        }
    }
}
