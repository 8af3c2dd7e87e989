//! Refunds: many in one transaction, like pays (see `updates.rs`), plus the
//! refund rows. A refund row, its order's new amounts, status and version,
//! and its event commit together or not at all.

use std::collections::HashMap;

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AssertSqlSafe};

use super::error::StoreError;
use super::outbox::write_events;
use super::sql::{get, multi_row, padded, seq_param};
use super::store::{UnitStore, now_ms};
use super::updates::{BatchAnswers, write_order_changes};
use crate::domain::apply::{RefundUpdate, Refunded, apply_refunds};
use crate::domain::shapes;
use crate::domain::values::{Amount, RefundId, Text};
use crate::domain::{Consistency, Order, OrderId, Refund};

const SELECT_REFUNDS: &str = "SELECT refund_id, amount, reason, created_at_ms FROM refunds \
     WHERE order_seq = ? ORDER BY id";
const INSERT_REFUNDS_HEAD: &str =
    "INSERT INTO refunds (order_seq, refund_id, amount, reason, created_at_ms) VALUES ";
const REFUND_ROW: &str = "(?, ?, ?, ?, ?)";

impl UnitStore {
    /// Records one refund (see [`Self::refund_orders`]). A replay of the same
    /// `refund_id` and body returns the existing refund, not created.
    pub async fn refund(&self, request: RefundUpdate) -> Result<Refunded, StoreError> {
        let mut answers = self.refund_orders(vec![request]).await?;
        answers.pop().expect("one answer per refund")
    }

    /// Records several refunds in one transaction, as
    /// [`Self::update_orders`] does pays: one query locks their orders, one
    /// finds the refund ids already taken, each refund sees its order (and
    /// the refunds) as the ones before it left them, and one statement each
    /// writes the refund rows, the changed orders and their events. Each
    /// refund gets the answer it would get alone; an error of the whole call
    /// is every refund's.
    pub async fn refund_orders(&self, requests: Vec<RefundUpdate>) -> BatchAnswers<Refunded> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin_write().await?;
        let now = now_ms();
        let done = self
            .bounded(async {
                let ids: Vec<OrderId> = requests.iter().map(|r| r.id).collect();
                let mut orders = self.lock_orders(tx.get(), &ids).await?;
                let taken = self.refunds_taken(tx.get(), &requests).await?;
                let done = apply_refunds(&mut orders, taken, requests, now);
                let wrote = done.applied.wrote();
                if wrote {
                    write_refunds(tx.get(), &done.written).await?;
                    let changed: Vec<&Order> =
                        done.applied.changed.iter().map(|id| &orders[id]).collect();
                    write_order_changes(tx.get(), &changed).await?;
                    write_events(tx.get(), &done.applied.events).await?;
                }
                let answers = done.applied.answers.into_iter();
                Ok((
                    answers.map(|a| a.map_err(StoreError::from)).collect(),
                    wrote,
                ))
            })
            .await;
        self.end_write(tx, done).await
    }

    /// The refunds already recorded under the ids `requests` ask for, by
    /// order sequence and refund id (the list padded to a shape).
    async fn refunds_taken(
        &self,
        tx: &mut AnyConnection,
        requests: &[RefundUpdate],
    ) -> Result<HashMap<(u64, RefundId), Refund>, StoreError> {
        let mut sql = String::from(
            "SELECT order_seq, refund_id, amount, reason, created_at_ms FROM refunds WHERE ",
        );
        for i in 0..shapes::at_least(requests.len()) {
            sql.push_str(if i == 0 { "" } else { " OR " });
            // Each disjunct is a point on the unique index.
            sql.push_str("(order_seq = ? AND refund_id = ?)");
        }
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for r in padded(requests) {
            query = query
                .bind(seq_param(r.id.sequence()))
                .bind(r.refund.refund_id.as_str());
        }
        let rows = query
            .fetch_all(tx)
            .await
            .map_err(StoreError::before_commit)?;
        let mut taken = HashMap::new();
        for row in &rows {
            let seq: i64 = get(row, "order_seq").map_err(StoreError::Internal)?;
            // Any id with this sequence: the caller puts its own in.
            let Some(r) = requests.iter().find(|r| seq_param(r.id.sequence()) == seq) else {
                continue;
            };
            let refund = self.refund_from_row(r.id, row)?;
            taken.insert((r.id.sequence(), refund.refund_id.clone()), refund);
        }
        Ok(taken)
    }

    /// The order's refunds, oldest first. `NotFound` when the order is not here.
    pub async fn list_refunds(&self, id: OrderId) -> Result<Vec<Refund>, StoreError> {
        self.get(id, Consistency::Strong).await?;
        let rows = self
            .bounded(async {
                let mut conn = self.read_connection().await?;
                let rows = sqlx::query(SELECT_REFUNDS)
                    .bind(seq_param(id.sequence()))
                    .fetch_all(conn.get())
                    .await;
                conn.finish(rows)
            })
            .await?;
        rows.iter().map(|r| self.refund_from_row(id, r)).collect()
    }

    fn refund_from_row(&self, order_id: OrderId, row: &AnyRow) -> Result<Refund, StoreError> {
        let decode = || -> Result<Refund, String> {
            Ok(Refund {
                order_id,
                refund_id: RefundId::parse(get::<String>(row, "refund_id")?).map_err(|e| e.0)?,
                amount: Amount::new(get(row, "amount")?).map_err(|e| e.0)?,
                reason: get::<Option<String>>(row, "reason")?
                    .map(Text::parse)
                    .transpose()
                    .map_err(|e| e.0)?,
                created_at_ms: get(row, "created_at_ms")?,
            })
        };
        decode().map_err(|e| {
            StoreError::Internal(format!("unit {}: undecodable refund row: {e}", self.unit))
        })
    }
}

/// Inserts new refunds (one statement per shape-sized chunk), in the
/// caller's transaction.
async fn write_refunds(tx: &mut AnyConnection, refunds: &[Refund]) -> Result<(), StoreError> {
    for chunk in shapes::split(refunds) {
        let sql = multi_row(INSERT_REFUNDS_HEAD, REFUND_ROW, chunk.len());
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for r in chunk {
            query = query
                .bind(seq_param(r.order_id.sequence()))
                .bind(r.refund_id.as_str().to_owned())
                .bind(r.amount.get())
                .bind(r.reason.as_ref().map(|t| t.as_str().to_owned()))
                .bind(r.created_at_ms);
        }
        query
            .execute(&mut *tx)
            .await
            .map_err(StoreError::before_commit)?;
    }
    Ok(())
}
