//! Orders in one unit's database: creating them (a batch in one
//! transaction, with one outbox record), and every read: by id, by
//! idempotency key, and a user's page.

use sqlx::{AnyConnection, AssertSqlSafe};

use super::claims::{Key, KeyClaim, write_records};
use super::error::StoreError;
use super::outbox;
use super::sql::{
    multi_row, order_columns, order_from_row, orders_named, padded, read_columns, select_by_seqs,
    seq_param, sequences,
};
use super::store::UnitStore;
use crate::domain::key_homes::{Attempt, Mark};
use crate::domain::shapes;
use crate::domain::values::{MerchantId, OutTradeNo, UserId};
use crate::domain::{Consistency, Order, OrderId, UserCursor};

pub(super) const SELECT_BY_SEQ: &str =
    concat!("SELECT ", read_columns!(), " FROM orders WHERE seq = ?");
const SELECT_BY_KEY: &str = concat!(
    "SELECT ",
    read_columns!(),
    " FROM orders WHERE merchant_id = ? AND out_trade_no = ?"
);
const SELECT_USER_PAGE: &str = concat!(
    "SELECT ",
    read_columns!(),
    " FROM orders WHERE user_id = ? AND (created_at_ms < ? OR (created_at_ms = ? AND seq < ?)) \
     ORDER BY created_at_ms DESC, seq DESC LIMIT ?"
);
const INSERT_ORDERS_HEAD: &str = concat!("INSERT INTO orders (", order_columns!(), ") VALUES ");
const ORDER_ROW: &str = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

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
    /// The unit has another record of the key (a fence, or a home's claim
    /// for another create): no order for it may be written here.
    Blocked(Mark),
}

/// One unit's part of a user's order list.
#[derive(Debug)]
pub struct Page {
    pub orders: Vec<Order>,
}

impl UnitStore {
    /// Inserts a new order, its key's slot for `attempt` and its `created`
    /// event in one transaction.
    pub async fn insert_order(
        &self,
        order: &Order,
        attempt: Attempt,
    ) -> Result<InsertOutcome, StoreError> {
        match self.insert_orders(&[(order.clone(), attempt)]).await? {
            BatchOutcome::Inserted => Ok(InsertOutcome::Inserted),
            BatchOutcome::KeyTaken => {
                let key = (order.merchant_id.clone(), order.out_trade_no.clone());
                if let Some(existing) = self.find_by_key(&key.0, &key.1).await? {
                    return Ok(InsertOutcome::KeyExists(Box::new(existing)));
                }
                match self.read_mark(&key).await? {
                    Some(mark) => self.insert_in_place_of(order, attempt, &key, mark).await,
                    None => Err(StoreError::SequenceReused {
                        unit: self.unit,
                        seq: order.id.sequence(),
                    }),
                }
            }
        }
    }

    /// Inserts the order with its slot in place of the key's record `seen`
    /// when that may be replaced (a fence, or the attempt's own claim, and
    /// the attempt was never settled here); otherwise `Blocked`.
    async fn insert_in_place_of(
        &self,
        order: &Order,
        attempt: Attempt,
        key: &Key,
        seen: Mark,
    ) -> Result<InsertOutcome, StoreError> {
        let mut tx = self.begin_write().await?;
        let orders = [(order.clone(), attempt)];
        let (taken, written) = self
            .bounded(async {
                if !self.take_record(tx.get(), key, seen, attempt).await? {
                    return Ok((false, false));
                }
                Ok((true, write_created(tx.get(), &orders).await?))
            })
            .await?;
        if !written {
            self.rollback_write(tx).await;
            return match self.find_by_key(&key.0, &key.1).await? {
                Some(existing) => Ok(InsertOutcome::KeyExists(Box::new(existing))),
                None if !taken => Ok(InsertOutcome::Blocked(seen)),
                // The record was ours to take, and no order has the key:
                // the order's sequence number is taken.
                None => Err(StoreError::SequenceReused {
                    unit: self.unit,
                    seq: order.id.sequence(),
                }),
            };
        }
        self.commit_write(tx).await?;
        Ok(InsertOutcome::Inserted)
    }

    /// Inserts several new orders, each with its key's slot for its
    /// attempt, and their `created` events in one transaction (group
    /// commit): all of them or none. `KeyTaken` when any unique key was
    /// already taken or a key already has a record here; then nothing was
    /// written, and the caller inserts them one by one to give each its own
    /// answer.
    pub async fn insert_orders(
        &self,
        orders: &[(Order, Attempt)],
    ) -> Result<BatchOutcome, StoreError> {
        self.insert_batch(orders, &[]).await
    }

    /// [`Self::insert_orders`], with the records of `claims` (keys this unit
    /// is a home of) written in the same statement as the orders' slots:
    /// all of it or none (`KeyTaken` also when a claimed key has a record).
    pub async fn insert_batch(
        &self,
        orders: &[(Order, Attempt)],
        claims: &[KeyClaim],
    ) -> Result<BatchOutcome, StoreError> {
        let mut tx = self.begin_write().await?;
        // An error from here on drops `tx`, which rolls the batch back.
        let written = self.bounded(async {
            Ok(write_records(tx.get(), self.unit, orders, claims).await?
                && write_created(tx.get(), orders).await?)
        });
        if !written.await? {
            // The failed statement was undone; the rollback ends the
            // transaction and its locks before the connection is reused.
            self.rollback_write(tx).await;
            return Ok(BatchOutcome::KeyTaken);
        }
        self.commit_write(tx).await?;
        self.created.keep(orders.iter().map(|(o, _)| o));
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
        row.map(|r| order_from_row(self.unit, &r)).transpose()
    }

    /// The orders holding any of `keys` (one query; absent keys are simply
    /// missing from the result). The list is padded to a shape by repeating
    /// the last key.
    pub async fn find_by_keys(
        &self,
        keys: &[(MerchantId, OutTradeNo)],
    ) -> Result<Vec<Order>, StoreError> {
        let mut sql = String::from(concat!("SELECT ", read_columns!(), " FROM orders WHERE "));
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
        rows.iter().map(|r| order_from_row(self.unit, r)).collect()
    }

    /// Reads an order: from the primary (`Strong`), or as
    /// [`Self::get_eventual`]. `NotFound` when the unit has no order with
    /// exactly this id.
    pub async fn get(&self, id: OrderId, consistency: Consistency) -> Result<Order, StoreError> {
        match consistency {
            Consistency::Strong => self.get_primary(id).await,
            Consistency::Eventual => self.get_eventual(id, None).await.map(|(order, _)| order),
        }
    }

    /// Reads an order from the primary.
    pub async fn get_primary(&self, id: OrderId) -> Result<Order, StoreError> {
        let row = self
            .bounded(async {
                let mut conn = self.read_connection().await?;
                let row = sqlx::query(SELECT_BY_SEQ)
                    .bind(seq_param(id.sequence()))
                    .fetch_optional(conn.get())
                    .await;
                conn.finish(row)
            })
            .await?;
        let order = row
            .map(|r| order_from_row(self.unit, &r))
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
        orders_named(self.unit, &rows, ids)
    }

    /// Reads the orders with these sequences from the primary in one query
    /// (at most `shapes::MAX_ROWS`); a sequence with no order is absent.
    pub(super) async fn get_by_seqs(&self, seqs: &[u64]) -> Result<Vec<Order>, StoreError> {
        let rows = self.read_all(select_by_seqs(seqs, "")).await?;
        rows.iter().map(|r| order_from_row(self.unit, r)).collect()
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
            .map(|r| order_from_row(self.unit, r))
            .collect::<Result<_, _>>()?;
        Ok(Page { orders })
    }
}

/// Inserts new orders and their `created` events, in the caller's transaction.
/// `false` when a unique key was taken (the caller rolls back).
async fn write_created(
    conn: &mut AnyConnection,
    orders: &[(Order, Attempt)],
) -> Result<bool, StoreError> {
    for chunk in shapes::split(orders) {
        let sql = multi_row(INSERT_ORDERS_HEAD, ORDER_ROW, chunk.len());
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for (order, _) in chunk {
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
    outbox::write_created(conn, orders.iter().map(|(o, _)| o)).await?;
    Ok(true)
}
