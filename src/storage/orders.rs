//! Orders and refunds in one unit's database.
//!
//! Every change runs in one transaction that (1) locks the order row
//! (`SELECT ... FOR UPDATE` on MySQL; SQLite's single writer holds the database
//! lock), (2) asks the pure state machine for the next row, (3) writes it with a
//! version guard, and (4) writes the change event to the outbox (`outbox.rs`;
//! a create batch writes one record for all its orders). So concurrent
//! pays, closes and refunds of one order are serialized, and a refund, its order
//! update and its event commit together or not at all.

use std::collections::HashMap;

use sqlx::AnyConnection;
use sqlx::any::AnyRow;
use sqlx::{Any, AssertSqlSafe, Row};

use super::outbox::{self, write_events};
use super::{Dialect, StoreError, UnitStore, WriteTx, now_ms, shapes};
use crate::domain::values::{
    Amount, Currency, MerchantId, OutTradeNo, PaymentRef, RefundId, Sections, Text, UserId,
};
use crate::domain::{Change, NewRefund, Order, OrderId, OrderStatus, Refund, RuleError};

macro_rules! order_columns {
    () => {
        "seq, merchant_id, out_trade_no, user_id, amount, currency, description, status, \
         paid_amount, refunded_amount, payment_ref, version, created_at_ms, updated_at_ms, sections"
    };
}

const SELECT_BY_SEQ: &str = concat!("SELECT ", order_columns!(), " FROM orders WHERE seq = ?");
const SELECT_BY_KEY: &str = concat!(
    "SELECT ",
    order_columns!(),
    " FROM orders WHERE merchant_id = ? AND out_trade_no = ?"
);
const SELECT_BY_KEY_LOCKING: &str = concat!(
    "SELECT ",
    order_columns!(),
    " FROM orders WHERE merchant_id = ? AND out_trade_no = ? LOCK IN SHARE MODE"
);
const SELECT_USER_PAGE: &str = concat!(
    "SELECT ",
    order_columns!(),
    " FROM orders WHERE user_id = ? AND (created_at_ms < ? OR (created_at_ms = ? AND seq < ?)) \
     ORDER BY created_at_ms DESC, seq DESC LIMIT ?"
);
// Keyset pages over the unique index (both dialects compare bytewise).
const SCAN_KEYS_FIRST: &str = "SELECT merchant_id, out_trade_no FROM orders \
     ORDER BY merchant_id, out_trade_no LIMIT ?";
const SCAN_KEYS_AFTER: &str = "SELECT merchant_id, out_trade_no FROM orders \
     WHERE merchant_id > ? OR (merchant_id = ? AND out_trade_no > ?) \
     ORDER BY merchant_id, out_trade_no LIMIT ?";
const INSERT_ORDERS_HEAD: &str = concat!("INSERT INTO orders (", order_columns!(), ") VALUES ");
const ORDER_ROW: &str = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

/// `head` followed by `n` copies of the placeholder `row`: a multi-row insert.
/// Only placeholders are spliced in, never data.
pub(super) fn multi_row(head: &str, row: &str, n: usize) -> String {
    let mut sql = String::with_capacity(head.len() + n * (row.len() + 2));
    sql.push_str(head);
    for i in 0..n {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(row);
    }
    sql
}
const SELECT_REFUNDS: &str = "SELECT refund_id, amount, reason, created_at_ms FROM refunds \
     WHERE order_seq = ? ORDER BY id";
const INSERT_REFUNDS_HEAD: &str =
    "INSERT INTO refunds (order_seq, refund_id, amount, reason, created_at_ms) VALUES ";
const REFUND_ROW: &str = "(?, ?, ?, ?, ?)";

/// Which copy of the unit's data a read may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// The primary: sees every acknowledged change.
    #[default]
    Strong,
    /// A replica when the unit has one (falls back to the primary).
    Eventual,
}

/// One pay or close of a batch (see [`UnitStore::update_orders`]): the order,
/// its event, and the change the state machine makes to it.
pub struct OrderUpdate<'a> {
    pub id: OrderId,
    pub event: &'static str,
    pub change: ChangeFn<'a>,
}

/// One refund of a batch (see [`UnitStore::refund_orders`]).
pub struct RefundRequest {
    pub id: OrderId,
    pub refund: NewRefund,
    pub expected_version: Option<i64>,
}

/// What the state machine does to an order at a time (`Order::pay`, ...).
pub type ChangeFn<'a> = Box<dyn FnOnce(&Order, i64) -> Result<Change, RuleError> + 'a>;

/// The result of inserting a batch of new orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOutcome {
    Inserted,
    /// A unique key (idempotency key or sequence) was taken: nothing was written.
    KeyTaken,
}

/// The result of inserting a new order.
#[derive(Debug)]
pub enum InsertOutcome {
    Inserted,
    /// An order with this `(merchant_id, out_trade_no)` already exists in the unit.
    KeyExists(Box<Order>),
}

/// Position in a user's newest-first order list: `(created_at_ms, order_id)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct UserCursor {
    pub created_at_ms: i64,
    pub order_id: OrderId,
}

/// One unit's part of a user's order list.
#[derive(Debug)]
pub struct Page {
    pub orders: Vec<Order>,
}

pub(super) fn seq_param(seq: u64) -> i64 {
    // Sequences are at most 10 digits, so they always fit.
    i64::try_from(seq).expect("sequence fits i64")
}

impl UnitStore {
    fn order_from_row(&self, row: &AnyRow) -> Result<Order, StoreError> {
        decode_order(self.unit, row).map_err(|e| {
            StoreError::Internal(format!("unit {}: undecodable order row: {e}", self.unit))
        })
    }

    /// Inserts a new order and its `created` event in one transaction.
    pub async fn insert_order(&self, order: &Order) -> Result<InsertOutcome, StoreError> {
        match self.insert_orders(std::slice::from_ref(order)).await? {
            BatchOutcome::Inserted => Ok(InsertOutcome::Inserted),
            BatchOutcome::KeyTaken => match self
                .find_by_key(&order.merchant_id, &order.out_trade_no)
                .await?
            {
                Some(existing) => Ok(InsertOutcome::KeyExists(Box::new(existing))),
                None => Err(StoreError::SequenceReused {
                    unit: self.unit,
                    seq: order.id.sequence(),
                }),
            },
        }
    }

    /// Inserts several new orders and their `created` events in one
    /// transaction (group commit): all of them or none. `KeyTaken` when any
    /// unique key was already taken; then nothing was written, and the caller
    /// inserts them one by one to give each its own answer.
    pub async fn insert_orders(&self, orders: &[Order]) -> Result<BatchOutcome, StoreError> {
        let mut tx = self.begin_write().await?;
        // An error from here on drops `tx`, which rolls the batch back.
        if !self.bounded(write_created(tx.get(), orders)).await? {
            // The failed statement was undone; the rollback ends the
            // transaction and its locks before the connection is reused.
            self.rollback_write(tx).await;
            return Ok(BatchOutcome::KeyTaken);
        }
        self.commit_write(tx).await?;
        Ok(BatchOutcome::Inserted)
    }

    /// The order with this idempotency key, read from the primary.
    pub async fn find_by_key(
        &self,
        merchant_id: &MerchantId,
        out_trade_no: &OutTradeNo,
    ) -> Result<Option<Order>, StoreError> {
        let row = self
            .bounded(async {
                let mut conn = self.read_connection().await?;
                let row = sqlx::query(SELECT_BY_KEY)
                    .bind(merchant_id.as_str())
                    .bind(out_trade_no.as_str())
                    .fetch_optional(conn.get())
                    .await;
                conn.finish(row)
            })
            .await?;
        row.map(|r| self.order_from_row(&r)).transpose()
    }

    /// The orders holding any of `keys` (one query; absent keys are simply
    /// missing from the result). The list is padded to a shape by repeating
    /// the last key.
    pub async fn find_by_keys(
        &self,
        keys: &[(MerchantId, OutTradeNo)],
    ) -> Result<Vec<Order>, StoreError> {
        let mut sql = String::from(concat!("SELECT ", order_columns!(), " FROM orders WHERE "));
        for i in 0..shapes::at_least(keys.len()) {
            sql.push_str(if i == 0 { "" } else { " OR " });
            // Each disjunct is a point on the unique index.
            sql.push_str("(merchant_id = ? AND out_trade_no = ?)");
        }
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for (merchant, out_trade_no) in padded(keys) {
            query = query.bind(merchant.as_str()).bind(out_trade_no.as_str());
        }
        let rows = self.read_all(query).await?;
        rows.iter().map(|r| self.order_from_row(r)).collect()
    }

    /// Runs a read on the primary, bounded by the statement timeout.
    pub(super) async fn read_all(
        &self,
        query: sqlx::query::Query<'_, Any, sqlx::any::AnyArguments>,
    ) -> Result<Vec<AnyRow>, StoreError> {
        self.bounded(async {
            let mut conn = self.read_connection().await?;
            let rows = query.fetch_all(conn.get()).await;
            conn.finish(rows)
        })
        .await
    }

    /// A page of the unit's idempotency keys in index order, after `after`
    /// (for loading the unit's key filter).
    pub async fn scan_keys(
        &self,
        after: Option<&(String, String)>,
        limit: u32,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let query = match after {
            None => sqlx::query(SCAN_KEYS_FIRST),
            Some((merchant, key)) => sqlx::query(SCAN_KEYS_AFTER)
                .bind(merchant.clone())
                .bind(merchant.clone())
                .bind(key.clone()),
        }
        .bind(i64::from(limit));
        let rows = self.read_all(query).await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(|e| StoreError::Internal(format!("unit {}: undecodable key: {e}", self.unit)))
    }

    /// Like `find_by_key`, but waits for any transaction that holds the key's
    /// index entry to finish, so an in-flight commit of this key is seen. Used
    /// to settle a create whose `COMMIT` outcome was unknown.
    pub async fn find_by_key_settled(
        &self,
        merchant_id: &MerchantId,
        out_trade_no: &OutTradeNo,
    ) -> Result<Option<Order>, StoreError> {
        let mut tx = self.begin().await?;
        let row = self
            .bounded(async {
                let sql = match self.dialect {
                    Dialect::MySql => SELECT_BY_KEY_LOCKING,
                    // The single write connection already runs after every writer.
                    Dialect::Sqlite => SELECT_BY_KEY,
                };
                sqlx::query(sql)
                    .bind(merchant_id.as_str())
                    .bind(out_trade_no.as_str())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(StoreError::before_commit)
            })
            .await?;
        drop(tx);
        row.map(|r| self.order_from_row(&r)).transpose()
    }

    /// Reads an order. `NotFound` when the unit has no order with exactly this id.
    pub async fn get(&self, id: OrderId, consistency: Consistency) -> Result<Order, StoreError> {
        let query = || sqlx::query(SELECT_BY_SEQ).bind(seq_param(id.sequence()));
        let row = self
            .bounded(async {
                if let (Consistency::Eventual, Some(replica)) = (consistency, &self.replica) {
                    // When the replica cannot answer, the primary can.
                    if let Ok(row) = query().fetch_optional(replica).await {
                        return Ok(row);
                    }
                }
                let mut conn = self.read_connection().await?;
                let row = query().fetch_optional(conn.get()).await;
                conn.finish(row)
            })
            .await?;
        let order = row
            .map(|r| self.order_from_row(&r))
            .transpose()?
            .ok_or(StoreError::NotFound)?;
        // The sequence matched; the time must too, or the id names another order.
        if order.id == id {
            Ok(order)
        } else {
            Err(StoreError::NotFound)
        }
    }

    /// Reads several orders of this unit from the primary in one query; an id
    /// that names no order is simply absent from the answer.
    pub async fn get_many(&self, ids: &[OrderId]) -> Result<Vec<Order>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = self.read_all(select_by_seqs(&sequences(ids), "")).await?;
        self.orders_named(&rows, ids)
    }

    /// Reads the orders with these sequences from the primary in one query
    /// (at most `shapes::MAX_ROWS`); a sequence with no order is absent.
    pub(super) async fn get_by_seqs(&self, seqs: &[u64]) -> Result<Vec<Order>, StoreError> {
        let rows = self.read_all(select_by_seqs(seqs, "")).await?;
        rows.iter().map(|r| self.order_from_row(r)).collect()
    }

    /// The orders in `rows` that `ids` name: the sequence matched, and the
    /// time must too, or the id names another order.
    fn orders_named(&self, rows: &[AnyRow], ids: &[OrderId]) -> Result<Vec<Order>, StoreError> {
        let orders: Vec<Order> = rows
            .iter()
            .map(|r| self.order_from_row(r))
            .collect::<Result<_, _>>()?;
        Ok(orders.into_iter().filter(|o| ids.contains(&o.id)).collect())
    }

    /// Applies a pay/close style change under the row lock. Returns the order
    /// after the call and whether it changed.
    pub async fn update_order(
        &self,
        id: OrderId,
        event: &'static str,
        change: impl FnOnce(&Order, i64) -> Result<Change, RuleError>,
    ) -> Result<(Order, bool), StoreError> {
        let update = OrderUpdate {
            id,
            event,
            change: Box::new(change),
        };
        let mut answers = self.update_orders(vec![update]).await?;
        answers.pop().expect("one answer per update")
    }

    /// Applies pay/close style changes to several orders in one transaction:
    /// one query locks the orders, each change sees its order as the changes
    /// before it in `updates` left it, and one statement writes the changed
    /// orders, another their events. Each update gets the answer
    /// [`Self::update_order`] would give it alone; an error of the whole call
    /// is every update's (none was applied, or with `InDoubt`, none is known
    /// to be).
    pub async fn update_orders(
        &self,
        updates: Vec<OrderUpdate<'_>>,
    ) -> Result<Vec<Result<(Order, bool), StoreError>>, StoreError> {
        if updates.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin_write().await?;
        let now = now_ms();
        let done = self
            .bounded(async {
                let ids: Vec<OrderId> = updates.iter().map(|u| u.id).collect();
                let mut orders = self.lock_orders(tx.get(), &ids).await?;
                let mut changed: Vec<OrderId> = Vec::new();
                let mut events: Vec<(Order, &'static str)> = Vec::new();
                let answers: Vec<_> = updates
                    .into_iter()
                    .map(|u| {
                        let order = orders.get_mut(&u.id).ok_or(StoreError::NotFound)?;
                        match (u.change)(order, now)? {
                            Change::Unchanged => Ok((order.clone(), false)),
                            Change::Next(next) => {
                                *order = *next;
                                if !changed.contains(&u.id) {
                                    changed.push(u.id);
                                }
                                events.push((order.clone(), u.event));
                                Ok((order.clone(), true))
                            }
                        }
                    })
                    .collect();
                if !changed.is_empty() {
                    let written: Vec<&Order> = changed.iter().map(|id| &orders[id]).collect();
                    write_order_changes(tx.get(), &written).await?;
                    let events: Vec<_> = events.iter().map(|(o, e)| (o, *e)).collect();
                    write_events(tx.get(), &events).await?;
                }
                Ok((answers, !changed.is_empty()))
            })
            .await;
        self.end_write(tx, done).await
    }

    /// Locks the orders `ids` name for the rest of the transaction and reads
    /// them (an id that names no order is absent).
    async fn lock_orders(
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
        Ok(self
            .orders_named(&rows, ids)?
            .into_iter()
            .map(|o| (o.id, o))
            .collect())
    }

    /// Ends a batch's transaction: commits it when it `wrote`, rolls it back
    /// when it wrote nothing, and on an error as [`Self::abandon_write`].
    async fn end_write<T>(
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

    /// Records a refund: the refund row, the order's new amounts/status/version
    /// and the event commit in one transaction. A replay of the same `refund_id`
    /// and body returns the existing refund with `created == false`.
    pub async fn refund(
        &self,
        id: OrderId,
        request: &NewRefund,
        expected_version: Option<i64>,
    ) -> Result<(Refund, Order, bool), StoreError> {
        let request = RefundRequest {
            id,
            refund: request.clone(),
            expected_version,
        };
        let mut answers = self.refund_orders(vec![request]).await?;
        answers.pop().expect("one answer per refund")
    }

    /// Records several refunds in one transaction, as [`Self::update_orders`]
    /// does pays: one query locks their orders, one finds the refund ids
    /// already taken, each refund sees its order (and the refunds) as the
    /// ones before it left them, and one statement each writes the refund
    /// rows, the changed orders and their events. Each refund gets the answer
    /// it would get alone; an error of the whole call is every refund's.
    pub async fn refund_orders(
        &self,
        requests: Vec<RefundRequest>,
    ) -> Result<Vec<Result<(Refund, Order, bool), StoreError>>, StoreError> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin_write().await?;
        let now = now_ms();
        let done = self
            .bounded(async {
                let ids: Vec<OrderId> = requests.iter().map(|r| r.id).collect();
                let mut orders = self.lock_orders(tx.get(), &ids).await?;
                let mut refunds = self.refunds_taken(tx.get(), &requests).await?;
                let mut changed: Vec<OrderId> = Vec::new();
                let mut written: Vec<Refund> = Vec::new();
                let answers: Vec<_> = requests
                    .into_iter()
                    .map(|r| {
                        let order = orders.get_mut(&r.id).ok_or(StoreError::NotFound)?;
                        let key = (r.id.sequence(), r.refund.refund_id.clone());
                        if let Some(taken) = refunds.get(&key) {
                            return if r.refund.is_replay_of(taken) {
                                let taken = Refund {
                                    order_id: r.id,
                                    ..taken.clone()
                                };
                                Ok((taken, order.clone(), false))
                            } else {
                                Err(RuleError::RefundIdConflict.into())
                            };
                        }
                        *order = order.refund(r.refund.amount, r.expected_version, now)?;
                        let refund = Refund {
                            order_id: r.id,
                            refund_id: r.refund.refund_id,
                            amount: r.refund.amount,
                            reason: r.refund.reason,
                            created_at_ms: order.updated_at_ms,
                        };
                        refunds.insert(key, refund.clone());
                        written.push(refund.clone());
                        if !changed.contains(&r.id) {
                            changed.push(r.id);
                        }
                        Ok((refund, order.clone(), true))
                    })
                    .collect();
                if !written.is_empty() {
                    write_refunds(tx.get(), &written).await?;
                    // One event per new refund, with the order as it left it.
                    let events: Vec<(&Order, &'static str)> = answers
                        .iter()
                        .filter_map(|a| match a {
                            Ok((_, order, true)) => Some((order, "order.refunded")),
                            _ => None,
                        })
                        .collect();
                    let changed: Vec<&Order> = changed.iter().map(|id| &orders[id]).collect();
                    write_order_changes(tx.get(), &changed).await?;
                    write_events(tx.get(), &events).await?;
                }
                Ok((answers, !written.is_empty()))
            })
            .await;
        self.end_write(tx, done).await
    }

    /// The refunds already recorded under the ids `requests` ask for, by
    /// order sequence and refund id (the list padded to a shape).
    async fn refunds_taken(
        &self,
        tx: &mut AnyConnection,
        requests: &[RefundRequest],
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

    /// Up to `limit` of the user's orders in this unit that sort after `after`
    /// in newest-first `(created_at, order_id)` order.
    pub async fn list_user_orders(
        &self,
        user_id: &UserId,
        after: Option<UserCursor>,
        limit: u32,
    ) -> Result<Page, StoreError> {
        // Within one unit, ids created in the same millisecond order by sequence;
        // against another unit's cursor the unit number (which leads the id) decides.
        let (before_ms, before_seq) = match after {
            None => (i64::MAX, i64::MAX),
            Some(c) => {
                let seq = match self.unit.cmp(&c.order_id.unit()) {
                    std::cmp::Ordering::Less => i64::MAX,
                    std::cmp::Ordering::Equal => seq_param(c.order_id.sequence()),
                    std::cmp::Ordering::Greater => 0,
                };
                (c.created_at_ms, seq)
            }
        };
        let rows = self
            .bounded(async {
                let mut conn = self.read_connection().await?;
                let rows = sqlx::query(SELECT_USER_PAGE)
                    .bind(user_id.as_str())
                    .bind(before_ms)
                    .bind(before_ms)
                    .bind(before_seq)
                    .bind(i64::from(limit))
                    .fetch_all(conn.get())
                    .await;
                conn.finish(rows)
            })
            .await?;
        let orders = rows
            .iter()
            .map(|r| self.order_from_row(r))
            .collect::<Result<_, _>>()?;
        Ok(Page { orders })
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

fn get<'r, T>(row: &'r AnyRow, column: &str) -> Result<T, String>
where
    T: sqlx::Decode<'r, Any> + sqlx::Type<Any>,
{
    row.try_get(column).map_err(|e| format!("{column}: {e}"))
}

fn decode_order(unit: u16, row: &AnyRow) -> Result<Order, String> {
    let seq: i64 = get(row, "seq")?;
    let created_at_ms: i64 = get(row, "created_at_ms")?;
    let sections: String = get(row, "sections")?;
    let sections = Sections::from_json(&sections).map_err(|e| format!("sections: {e}"))?;
    let status: String = get(row, "status")?;
    Ok(Order {
        id: OrderId::new(unit, created_at_ms.div_euclid(1000), seq as u64)
            .ok_or("seq/created_at do not form an order id")?,
        merchant_id: MerchantId::parse(get::<String>(row, "merchant_id")?).map_err(|e| e.0)?,
        out_trade_no: OutTradeNo::parse(get::<String>(row, "out_trade_no")?).map_err(|e| e.0)?,
        user_id: UserId::parse(get::<String>(row, "user_id")?).map_err(|e| e.0)?,
        amount: Amount::new(get(row, "amount")?).map_err(|e| e.0)?,
        currency: Currency::parse(&get::<String>(row, "currency")?).map_err(|e| e.0)?,
        description: get::<Option<String>>(row, "description")?
            .map(Text::parse)
            .transpose()
            .map_err(|e| e.0)?,
        status: OrderStatus::parse(&status).ok_or_else(|| format!("status {status:?}"))?,
        paid_amount: get(row, "paid_amount")?,
        refunded_amount: get(row, "refunded_amount")?,
        payment_ref: get::<Option<String>>(row, "payment_ref")?
            .map(PaymentRef::parse)
            .transpose()
            .map_err(|e| e.0)?,
        version: get(row, "version")?,
        created_at_ms,
        updated_at_ms: get(row, "updated_at_ms")?,
        sections,
    })
}

/// `items`, then its last item repeated up to the next shape: a padded
/// `IN` or `OR` list asks for nothing more.
fn padded<T>(items: &[T]) -> impl Iterator<Item = &T> {
    let last = items.last().expect("a list of at least one");
    let padding = shapes::at_least(items.len()) - items.len();
    items.iter().chain(std::iter::repeat_n(last, padding))
}

fn sequences(ids: &[OrderId]) -> Vec<u64> {
    ids.iter().map(OrderId::sequence).collect()
}

/// The orders with sequences `seqs`, with `suffix` (` FOR UPDATE`). The
/// `IN` list is padded to a shape.
fn select_by_seqs(
    seqs: &[u64],
    suffix: &'static str,
) -> sqlx::query::Query<'static, Any, sqlx::any::AnyArguments> {
    let mut sql = String::from(concat!(
        "SELECT ",
        order_columns!(),
        " FROM orders WHERE seq IN ("
    ));
    for i in 0..shapes::at_least(seqs.len()) {
        sql.push_str(if i == 0 { "?" } else { ", ?" });
    }
    sql.push(')');
    sql.push_str(suffix);
    let mut query = sqlx::query(AssertSqlSafe(sql));
    for &seq in padded(seqs) {
        query = query.bind(seq_param(seq));
    }
    query
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

/// Writes several changed orders in one statement, under the row locks the
/// caller's transaction holds (which is what guards their versions).
async fn write_order_changes(tx: &mut AnyConnection, orders: &[&Order]) -> Result<(), StoreError> {
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

/// Inserts new orders and their `created` events, in the caller's transaction.
/// `false` when a unique key was taken (the caller rolls back).
async fn write_created(conn: &mut AnyConnection, orders: &[Order]) -> Result<bool, StoreError> {
    for chunk in shapes::split(orders) {
        let sql = multi_row(INSERT_ORDERS_HEAD, ORDER_ROW, chunk.len());
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for order in chunk {
            let sections = order.sections.to_json();
            query = query
                .bind(seq_param(order.id.sequence()))
                .bind(order.merchant_id.as_str().to_owned())
                .bind(order.out_trade_no.as_str().to_owned())
                .bind(order.user_id.as_str().to_owned())
                .bind(order.amount.get())
                .bind(order.currency.as_str().to_owned())
                .bind(order.description.as_ref().map(|d| d.as_str().to_owned()))
                .bind(order.status.as_str())
                .bind(order.paid_amount)
                .bind(order.refunded_amount)
                .bind(order.payment_ref.as_ref().map(|p| p.as_str().to_owned()))
                .bind(order.version)
                .bind(order.created_at_ms)
                .bind(order.updated_at_ms)
                .bind(sections);
        }
        match query.execute(&mut *conn).await {
            Ok(_) => {}
            Err(sqlx::Error::Database(d)) if d.is_unique_violation() => return Ok(false),
            Err(e) => return Err(StoreError::before_commit(e)),
        }
    }
    outbox::write_created(conn, orders).await?;
    Ok(true)
}
