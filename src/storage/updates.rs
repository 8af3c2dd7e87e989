//! Pays, closes and section updates: many orders' changes in one
//! transaction.
//!
//! The transaction (1) locks the orders (`SELECT ... FOR UPDATE` on MySQL;
//! SQLite's single writer holds the database lock), (2) applies the calls in
//! memory with the pure rules of `domain::apply`, (3) writes the changed
//! orders in one statement under those locks, and (4) their events to the
//! outbox, then commits. So concurrent changes of one order are serialized,
//! and an order's change and its event commit together or not at all.

use std::collections::HashMap;

use sqlx::{AnyConnection, AssertSqlSafe};

use super::connect::Dialect;
use super::error::StoreError;
use super::outbox::write_events;
use super::sql::{orders_named, padded, select_by_seqs, seq_param, sequences};
use super::store::{UnitStore, WriteTx, now_ms};
use crate::domain::apply::{Update, Updated, apply_updates};
use crate::domain::shapes;
use crate::domain::{Order, OrderId};

/// One answer per call of a batch, or the batch's own error.
pub type BatchAnswers<R> = Result<Vec<Result<R, StoreError>>, StoreError>;

impl UnitStore {
    /// Applies one pay or close under the row lock.
    pub async fn update_order(&self, update: Update) -> Result<Updated, StoreError> {
        let mut answers = self.update_orders(vec![update]).await?;
        answers.pop().expect("one answer per update")
    }

    /// Applies pays and closes to several orders in one transaction: one
    /// query locks the orders, each change sees its order as the changes
    /// before it in `updates` left it, and one statement writes the changed
    /// orders, another their events. Each update gets the answer it would
    /// get alone; an error of the whole call is every update's (none was
    /// applied, or with `InDoubt`, none is known to be).
    pub async fn update_orders(&self, updates: Vec<Update>) -> BatchAnswers<Updated> {
        if updates.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin_write().await?;
        let now = now_ms();
        let done = self
            .bounded(async {
                let ids: Vec<OrderId> = updates.iter().map(|u| u.id).collect();
                let mut orders = self.lock_orders(tx.get(), &ids).await?;
                let applied = apply_updates(&mut orders, updates, now);
                if applied.wrote() {
                    let written: Vec<&Order> =
                        applied.changed.iter().map(|id| &orders[id]).collect();
                    write_order_changes(tx.get(), &written).await?;
                    for id in &applied.sections_changed {
                        write_sections(tx.get(), &orders[id]).await?;
                    }
                    write_events(tx.get(), &applied.events).await?;
                }
                let wrote = applied.wrote();
                let answers = applied
                    .answers
                    .into_iter()
                    .map(|a| a.map_err(StoreError::from));
                Ok((answers.collect(), wrote))
            })
            .await;
        self.end_write(tx, done).await
    }

    /// Locks the orders `ids` name for the rest of the transaction and reads
    /// them (an id that names no order is absent).
    pub(super) async fn lock_orders(
        &self,
        tx: &mut AnyConnection,
        ids: &[OrderId],
    ) -> Result<HashMap<OrderId, Order>, StoreError> {
        let lock = match self.dialect {
            Dialect::MySql => " FOR UPDATE",
            Dialect::Sqlite => "", // BEGIN IMMEDIATE already holds the lock
        };
        let rows = select_by_seqs(&sequences(ids), lock)
            .fetch_all(tx)
            .await
            .map_err(StoreError::before_commit)?;
        Ok(orders_named(self.unit, &rows, ids)?
            .into_iter()
            .map(|o| (o.id, o))
            .collect())
    }

    /// Ends a batch's transaction: commits it when it `wrote`, rolls it back
    /// when it wrote nothing, and on an error as [`Self::abandon_write`].
    pub(super) async fn end_write<T>(
        &self,
        tx: WriteTx<'_>,
        done: Result<(T, bool), StoreError>,
    ) -> Result<T, StoreError> {
        match done {
            Ok((answers, true)) => {
                self.commit_write(tx).await?;
                Ok(answers)
            }
            Ok((answers, false)) => {
                self.rollback_write(tx).await; // nothing written
                Ok(answers)
            }
            Err(e) => Err(self.abandon_write(tx, e).await),
        }
    }

    /// Ends a write that failed with `error`: an answer about the data
    /// rolls back and keeps the connection; anything else drops it.
    async fn abandon_write(&self, tx: WriteTx<'_>, error: StoreError) -> StoreError {
        if error.is_answer() {
            self.rollback_write(tx).await;
        }
        error
    }
}

/// Writes an order's sections (and the sections as created), under the
/// row lock the caller's transaction holds: a section update's other
/// changes are written with the batch's.
async fn write_sections(tx: &mut AnyConnection, order: &Order) -> Result<(), StoreError> {
    sqlx::query("UPDATE orders SET sections = ?, created_sections = ? WHERE seq = ?")
        .bind(order.sections.to_json())
        .bind(order.created_sections.as_ref().map(|s| s.to_json()))
        .bind(seq_param(order.id.sequence()))
        .execute(tx)
        .await
        .map_err(StoreError::before_commit)?;
    Ok(())
}

/// Writes several changed orders in one statement, under the row locks the
/// caller's transaction holds (which is what guards their versions).
pub(super) async fn write_order_changes(
    tx: &mut AnyConnection,
    orders: &[&Order],
) -> Result<(), StoreError> {
    // Padded to a shape by repeating the last order: a repeated `WHEN` is
    // never reached (the first one matches) and a repeated `IN` value adds
    // no row.
    let rows = shapes::at_least(orders.len());
    let mut sql = String::from("UPDATE orders SET ");
    let columns = [
        "status",
        "paid_amount",
        "refunded_amount",
        "payment_ref",
        "version",
        "updated_at_ms",
    ];
    for (i, column) in columns.iter().enumerate() {
        sql.push_str(if i == 0 { "" } else { ", " });
        sql.push_str(column);
        sql.push_str(" = CASE seq");
        for _ in 0..rows {
            sql.push_str(" WHEN ? THEN ?");
        }
        sql.push_str(" END");
    }
    sql.push_str(" WHERE seq IN (");
    for i in 0..rows {
        sql.push_str(if i == 0 { "?" } else { ", ?" });
    }
    sql.push(')');
    let seq = |o: &Order| seq_param(o.id.sequence());
    let mut query = sqlx::query(AssertSqlSafe(sql));
    for o in padded(orders) {
        query = query.bind(seq(o)).bind(o.status.as_str());
    }
    for o in padded(orders) {
        query = query.bind(seq(o)).bind(o.paid_amount);
    }
    for o in padded(orders) {
        query = query.bind(seq(o)).bind(o.refunded_amount);
    }
    for o in padded(orders) {
        let payment_ref = o.payment_ref.as_ref().map(|p| p.as_str().to_owned());
        query = query.bind(seq(o)).bind(payment_ref);
    }
    for o in padded(orders) {
        query = query.bind(seq(o)).bind(o.version);
    }
    for o in padded(orders) {
        query = query.bind(seq(o)).bind(o.updated_at_ms);
    }
    for o in padded(orders) {
        query = query.bind(seq(o));
    }
    let done = query.execute(tx).await.map_err(StoreError::before_commit)?;
    if done.rows_affected() == orders.len() as u64 {
        Ok(())
    } else {
        // Impossible while the row locks are held; refuse rather than lose an update.
        Err(StoreError::Internal(format!(
            "{} of {} orders changed under their row locks",
            orders.len() as u64 - done.rows_affected(),
            orders.len()
        )))
    }
}
