//! Why a storage call did not succeed, and the classification of sqlx
//! errors that order retry rests on.

use crate::domain::RuleError;
use crate::domain::apply::Refusal;

/// Why a storage call did not succeed. The split between `Unavailable` and
/// `InDoubt` is what makes order retry safe: only the first is known not to
/// have committed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("order not found")]
    NotFound,
    #[error(transparent)]
    Rule(#[from] RuleError),
    /// The unit could not do the work and nothing was committed.
    #[error("unit unavailable: {0}")]
    Unavailable(String),
    /// `COMMIT` was sent but its outcome is unknown.
    #[error("commit outcome unknown: {0}")]
    InDoubt(String),
    /// The unit actor restarted (after a caught panic or broken state) while
    /// the call waited or ran. That says nothing about the unit's database, so
    /// it does not count against the unit's circuit. `in_doubt`: the call's
    /// writes may have reached `COMMIT`; otherwise nothing was written.
    #[error("the unit actor restarted during the call (outcome in doubt: {in_doubt})")]
    Restarted { in_doubt: bool },
    /// The sequence handed out a number an order already has: the unit's state
    /// is broken (nothing was written; the unit actor restarts and re-syncs).
    #[error("unit {unit}: sequence {seq} was handed out twice")]
    SequenceReused { unit: u16, seq: u64 },
    /// The unit has handed out every number its order id can hold.
    #[error("the unit's order sequence is exhausted")]
    SequenceExhausted,
    /// A bug or corrupt data: not the unit's availability.
    #[error("storage error: {0}")]
    Internal(String),
}

impl StoreError {
    /// Classifies an error from a statement before `COMMIT`.
    pub(super) fn before_commit(e: sqlx::Error) -> Self {
        if is_transient(&e) {
            Self::Unavailable(e.to_string())
        } else {
            Self::Internal(e.to_string())
        }
    }

    /// Classifies an error from `COMMIT` itself: a broken connection there
    /// leaves the transaction's outcome unknown.
    pub(super) fn at_commit(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::Database(ref d) if !is_transient(&e) => Self::Internal(d.to_string()),
            // The server said no (deadlock, read-only, ...): it did not commit.
            sqlx::Error::Database(_) => Self::Unavailable(e.to_string()),
            _ => Self::InDoubt(e.to_string()),
        }
    }
}

/// Errors that say "the unit cannot do this now" rather than "this is a bug".
fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => {
            if let Some(my) = d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
                // Shutdown in progress, too many connections, lock wait timeout,
                // deadlock, read-only server, query interrupted, a database
                // fenced by a failover (a trigger's SIGNAL), server gone,
                // lost connection, killed connection.
                matches!(
                    my.number(),
                    1040 | 1053 | 1205 | 1213 | 1290 | 1317 | 1644 | 1792 | 1927 | 2006 | 2013
                )
            } else if let Some(lite) = d.try_downcast_ref::<sqlx::sqlite::SqliteError>() {
                // Primary result codes: BUSY, LOCKED, IOERR, FULL, CANTOPEN.
                let primary = sqlx::error::DatabaseError::code(lite)
                    .and_then(|c| c.parse::<i32>().ok())
                    .unwrap_or(0)
                    & 0xff;
                matches!(primary, 5 | 6 | 10 | 13 | 14)
            } else {
                false
            }
        }
        _ => false,
    }
}

impl StoreError {
    /// An answer about the data (the order is not there, a rule said no): the
    /// connection that found it is sound, and its transaction can be rolled
    /// back and the connection reused.
    pub(super) fn is_answer(&self) -> bool {
        matches!(self, Self::NotFound | Self::Rule(_))
    }
}

impl From<Refusal> for StoreError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::NotFound => Self::NotFound,
            Refusal::Rule(rule) => Self::Rule(rule),
        }
    }
}
