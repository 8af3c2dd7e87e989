//! What a unit's outbox relay needs of the unit's database: a lease (one
//! relay per unit at a time, across engine processes), marking records
//! published, pruning published ones after their retention, and how far
//! behind the relay is. Reading the events is `events.rs`.

use std::sync::atomic::Ordering;

use sqlx::{AssertSqlSafe, Row};

use super::error::StoreError;
use super::sql::multi_row;
use super::store::{UnitStore, now_ms};
use crate::domain::shapes;

const TAKE_LEASE: &str = "UPDATE relay_lease SET holder = ?, expires_at_ms = ? \
     WHERE id = 1 AND (holder = ? OR expires_at_ms < ?)";
const LEASE_HOLDER: &str = "SELECT holder FROM relay_lease WHERE id = 1";
/// Published records past their retention, oldest first: a plain read on
/// `ix_outbox_unpublished`, then a delete by primary key. (One `DELETE ...
/// WHERE id IN (SELECT ...)` read the outbox under shared next-key locks,
/// up to its end, and so held up every create's outbox insert meanwhile:
/// measured, most creates timed out under load.)
const PRUNABLE: &str = "SELECT id FROM outbox WHERE published_at_ms IS NOT NULL \
     AND published_at_ms < ? ORDER BY published_at_ms LIMIT ?";
/// The oldest unpublished record's time (index `ix_outbox_unpublished`).
const OLDEST_UNPUBLISHED: &str = "SELECT created_at_ms FROM outbox \
     WHERE published_at_ms IS NULL ORDER BY id LIMIT 1";

impl UnitStore {
    /// Takes or keeps the unit's relay lease for `holder` until `ttl_ms`
    /// from now; answers whether `holder` holds it. Another holder's lease
    /// is taken only once it has expired (by this process's clock). While
    /// this process's writes to the unit are fenced (the unit is disabled,
    /// or failing over) it neither takes nor keeps the lease.
    ///
    /// Renewed at most every third of `ttl_ms`: within that, the lease
    /// this process last renewed has two thirds of its time left, so no
    /// other holder can have taken it (the round trip, and its commit,
    /// would be repeated every poll otherwise).
    pub async fn hold_relay_lease(&self, holder: &str, ttl_ms: i64) -> Result<bool, StoreError> {
        if self.fenced.load(Ordering::Acquire) {
            self.lease_renewed_ms.store(0, Ordering::Relaxed);
            return Ok(false);
        }
        let now = now_ms();
        if now - self.lease_renewed_ms.load(Ordering::Relaxed) < ttl_ms / 3 {
            return Ok(true);
        }
        self.lease_renewed_ms.store(0, Ordering::Relaxed);
        let held = self
            .bounded(async {
                sqlx::query(TAKE_LEASE)
                    .bind(holder)
                    .bind(now + ttl_ms)
                    .bind(holder)
                    .bind(now)
                    .execute(&self.write)
                    .await
                    .map_err(StoreError::before_commit)?;
                // Read back: MySQL counts an update that changed nothing as no row.
                let row = sqlx::query(LEASE_HOLDER)
                    .fetch_one(&self.write)
                    .await
                    .map_err(StoreError::before_commit)?;
                let held: String = row.try_get("holder").map_err(StoreError::before_commit)?;
                Ok(held == holder)
            })
            .await?;
        if held {
            self.lease_renewed_ms.store(now, Ordering::Relaxed);
        }
        Ok(held)
    }

    /// Marks the records `ids` published (after the sink took their events).
    pub async fn mark_published(&self, ids: &[i64]) -> Result<(), StoreError> {
        let now = now_ms();
        for chunk in shapes::split(ids) {
            let head = "UPDATE outbox SET published_at_ms = ? WHERE id IN (";
            let sql = format!("{})", multi_row(head, "?", chunk.len()));
            let mut query = sqlx::query(AssertSqlSafe(sql)).bind(now);
            for id in chunk {
                query = query.bind(*id);
            }
            self.bounded(async {
                query
                    .execute(&self.write)
                    .await
                    .map_err(StoreError::before_commit)
            })
            .await?;
        }
        Ok(())
    }

    /// Deletes up to `limit` records published before `before_ms`;
    /// answers how many.
    pub async fn prune_published(&self, before_ms: i64, limit: i64) -> Result<u64, StoreError> {
        let query = sqlx::query(PRUNABLE).bind(before_ms).bind(limit);
        let ids = self
            .read_all(query)
            .await?
            .iter()
            .map(|r| r.try_get::<i64, _>("id"))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        let mut deleted = 0;
        for chunk in shapes::split(&ids) {
            let sql = format!(
                "{})",
                multi_row("DELETE FROM outbox WHERE id IN (", "?", chunk.len())
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for id in chunk {
                query = query.bind(*id);
            }
            deleted += self
                .bounded(async {
                    query
                        .execute(&self.write)
                        .await
                        .map(|r| r.rows_affected())
                        .map_err(StoreError::before_commit)
                })
                .await?;
        }
        Ok(deleted)
    }

    /// When the oldest unpublished record was written (`None`: none waits).
    pub async fn oldest_unpublished_ms(&self) -> Result<Option<i64>, StoreError> {
        let rows = self.read_all(sqlx::query(OLDEST_UNPUBLISHED)).await?;
        rows.first()
            .map(|r| r.try_get::<i64, _>("created_at_ms"))
            .transpose()
            .map_err(|e| StoreError::Internal(e.to_string()))
    }
}
