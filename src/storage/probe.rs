//! Health checks and self-repair for one unit's database.

use sqlx::Row;

use super::error::StoreError;
use super::store::{UnitStore, now_ms};

const PROBE_WRITE: &str = "UPDATE probe SET token = ?, written_at_ms = ? WHERE id = 1";
/// Outbox records not yet published by a relay (one per pay, close or
/// refund, one per create batch), as the span of ids from the oldest
/// unpublished record to the newest: two index look-ups, where a
/// `COUNT(*)` would scan the whole backlog (measured: a stall of ~100 ms of
/// database time per unit with a few hundred thousand events). An upper
/// bound when events were published out of order or ids have gaps.
const OUTBOX_BACKLOG_SQL: &str = "SELECT COALESCE((SELECT MAX(id) FROM outbox) - \
     (SELECT MIN(id) FROM outbox WHERE published_at_ms IS NULL) + 1, 0) AS n";
const PROBE_READ: &str = "SELECT token FROM probe WHERE id = 1";
/// Moves the order sequence past every stored order, in case it was reset.
const REPAIR_SEQUENCE: &str = "UPDATE sequences SET next_value = \
     (SELECT COALESCE(MAX(seq), 0) + 1 FROM orders) \
     WHERE name = 'order' AND next_value <= (SELECT COALESCE(MAX(seq), 0) FROM orders)";

impl UnitStore {
    /// The supervisor's synthetic order: writes a token, reads it back and
    /// commits, through the same pool and lock path as a create.
    pub async fn probe(&self, token: i64) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let beat = now_ms();
        let read: i64 = self
            .bounded(async {
                sqlx::query(PROBE_WRITE)
                    .bind(token)
                    .bind(beat)
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::before_commit)?;
                sqlx::query(PROBE_READ)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(StoreError::before_commit)?
                    .try_get("token")
                    .map_err(|e| StoreError::Internal(e.to_string()))
            })
            .await?;
        self.commit(tx).await?;
        // The write is also the replica's heartbeat (see `replica.rs`).
        self.replication.heartbeat_written(beat);
        if read == token {
            Ok(())
        } else {
            Err(StoreError::Internal(format!(
                "unit {}: probe wrote {token} but read {read}",
                self.unit
            )))
        }
    }

    /// Records waiting in the outbox.
    pub async fn outbox_backlog(&self) -> Result<i64, StoreError> {
        self.bounded(async {
            let mut conn = self.read_connection().await?;
            let n = sqlx::query(OUTBOX_BACKLOG_SQL)
                .fetch_one(conn.get())
                .await
                .and_then(|r| r.try_get::<i64, _>("n"));
            conn.finish(n)
        })
        .await
    }

    /// Makes sure the sequence will never hand out a number an order already
    /// has (after a restore from backup, or a hand-edited table). Returns
    /// whether it had to move the sequence.
    pub async fn repair_sequence(&self) -> Result<bool, StoreError> {
        let done = self
            .bounded(async {
                sqlx::query(REPAIR_SEQUENCE)
                    .execute(&self.write)
                    .await
                    .map_err(StoreError::before_commit)
            })
            .await?;
        Ok(done.rows_affected() > 0)
    }
}
