//! A unit's records of idempotency keys (`key_claims`), and the settings
//! every engine process must agree on (`engine_meta`). What a record means
//! is `domain::key_homes::Mark`; the protocol that writes them is the
//! dispatcher's `create.rs`, argued in `docs/idempotency.md`.
//!
//! Every change here is a compare-and-set on the key's one row: a record is
//! written only where none is ("claim", "fence", and the slot written with
//! an order in `orders.rs`), and replaced only while it still holds what the
//! caller saw. Rows are never deleted: a unit that holds any record of a key
//! can never take that key's order afterwards (the slot insert would meet
//! it), which is what settling relies on.

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AssertSqlSafe, Row};

use super::connect::Dialect;
use super::error::StoreError;
use super::sql::{multi_row, order_columns, order_from_row, padded, read_columns};
use super::store::UnitStore;
use super::updates::BatchAnswers;
use crate::domain::Order;
use crate::domain::key_homes::{Attempt, Mark};
use crate::domain::shapes;
use crate::domain::values::{MerchantId, OutTradeNo};

/// An idempotency key: `(merchant_id, out_trade_no)`.
pub type Key = (MerchantId, OutTradeNo);

const INSERT_HEAD: &str =
    "INSERT INTO key_claims (merchant_id, out_trade_no, unit, attempt) VALUES ";
const ROW: &str = "(?, ?, ?, ?)";
const IF_ABSENT_MYSQL: &str = " ON DUPLICATE KEY UPDATE attempt = attempt";
const IF_ABSENT_SQLITE: &str = " ON CONFLICT DO NOTHING";
const SELECT_MARK: &str =
    "SELECT unit, attempt FROM key_claims WHERE merchant_id = ? AND out_trade_no = ?";
const REPLACE: &str = "UPDATE key_claims SET unit = ?, attempt = ? \
     WHERE merchant_id = ? AND out_trade_no = ? AND unit = ? AND attempt = ?";
const SELECT_ORDER_BY_KEY: &str = concat!(
    "SELECT ",
    read_columns!(),
    " FROM orders WHERE merchant_id = ? AND out_trade_no = ?"
);
const FENCE_ATTEMPT_MYSQL: &str = "INSERT INTO key_fences (merchant_id, out_trade_no, attempt) \
     VALUES (?, ?, ?) ON DUPLICATE KEY UPDATE attempt = attempt";
const FENCE_ATTEMPT_SQLITE: &str = "INSERT INTO key_fences (merchant_id, out_trade_no, attempt) \
     VALUES (?, ?, ?) ON CONFLICT DO NOTHING";
const FENCED_MYSQL: &str = "SELECT attempt FROM key_fences \
     WHERE merchant_id = ? AND out_trade_no = ? AND attempt = ? FOR UPDATE";
const FENCED_SQLITE: &str =
    "SELECT attempt FROM key_fences WHERE merchant_id = ? AND out_trade_no = ? AND attempt = ?";
const META_IF_ABSENT_MYSQL: &str = "INSERT INTO engine_meta (name, value) VALUES (?, ?) \
     ON DUPLICATE KEY UPDATE value = value";
const META_IF_ABSENT_SQLITE: &str =
    "INSERT INTO engine_meta (name, value) VALUES (?, ?) ON CONFLICT DO NOTHING";
const SELECT_META: &str = "SELECT value FROM engine_meta WHERE name = ?";

/// A record to write for a key where the unit has none.
#[derive(Debug, Clone)]
pub struct KeyClaim {
    pub key: Key,
    pub mark: Mark,
}

/// What settling a key in the unit found: its record (a fence when there
/// was none; now there is one) and, when the record is a slot, the order.
#[derive(Debug)]
pub struct Settled {
    pub mark: Mark,
    pub order: Option<Order>,
}

impl UnitStore {
    /// Writes each claim's record where the unit has none for its key, in
    /// one transaction, and answers each with the record the key now has
    /// (the claim itself, or what was there before).
    pub async fn claim_keys(&self, claims: Vec<KeyClaim>) -> BatchAnswers<Mark> {
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        // Fresh keys (nearly always): one plain insert, nothing to read back.
        let mut tx = self.begin_write().await?;
        if self
            .bounded(write_records(tx.get(), self.unit, &[], &claims))
            .await?
        {
            self.commit_write(tx).await?;
            return Ok(claims.iter().map(|c| Ok(c.mark)).collect());
        }
        self.rollback_write(tx).await;
        // Some key has a record: write where none is, and read them all.
        let mut tx = self.begin_write().await?;
        let marks = self
            .bounded(async {
                let conn = tx.get();
                for chunk in shapes::split(&claims) {
                    self.insert_if_absent(conn, chunk).await?;
                }
                let keys: Vec<&Key> = claims.iter().map(|c| &c.key).collect();
                self.marks_locked(conn, &keys).await
            })
            .await?;
        self.commit_write(tx).await?;
        Ok(claims
            .iter()
            .map(|c| {
                marks
                    .iter()
                    .find(|(k, _)| k == &c.key)
                    .map(|(_, m)| *m)
                    .ok_or_else(|| {
                        StoreError::Internal(format!(
                            "unit {}: a claimed key has no record",
                            self.unit
                        ))
                    })
            })
            .collect())
    }

    /// Replaces the key's record `from` with `to`; false when the record
    /// is no longer `from` (someone else changed it first).
    pub async fn replace_mark(&self, key: &Key, from: Mark, to: Mark) -> Result<bool, StoreError> {
        let (from_unit, from_attempt) = from.to_row(self.unit);
        let (to_unit, to_attempt) = to.to_row(self.unit);
        let mut tx = self.begin_write().await?;
        let changed = self
            .bounded(async {
                sqlx::query(REPLACE)
                    .bind(i32::from(to_unit))
                    .bind(to_attempt)
                    .bind(key.0.as_str())
                    .bind(key.1.as_str())
                    .bind(i32::from(from_unit))
                    .bind(from_attempt)
                    .execute(tx.get())
                    .await
                    .map_err(StoreError::before_commit)
            })
            .await?
            .rows_affected();
        self.commit_write(tx).await?;
        Ok(changed == 1)
    }

    /// Settles create attempt `attempt` of the key in this unit: lists it
    /// as fenced, fences the key unless the unit already has a record
    /// (waiting for any transaction writing one), and answers the record
    /// (with the order, when it is a slot). Afterwards `attempt` can never
    /// write the key's order here, unless the answer says an order is here.
    pub async fn settle_key(&self, key: &Key, attempt: Attempt) -> Result<Settled, StoreError> {
        let fence_attempt = match self.dialect {
            Dialect::MySql => FENCE_ATTEMPT_MYSQL,
            Dialect::Sqlite => FENCE_ATTEMPT_SQLITE,
        };
        let mut tx = self.begin_write().await?;
        let settled = self
            .bounded(async {
                let conn = tx.get();
                sqlx::query(fence_attempt)
                    .bind(key.0.as_str())
                    .bind(key.1.as_str())
                    .bind(attempt.0)
                    .execute(&mut *conn)
                    .await
                    .map_err(StoreError::before_commit)?;
                let fence = KeyClaim {
                    key: key.clone(),
                    mark: Mark::Fence,
                };
                self.insert_if_absent(conn, std::slice::from_ref(&fence))
                    .await?;
                let mut marks = self.marks_locked(conn, &[key]).await?;
                let (_, mark) = marks.pop().ok_or_else(|| {
                    StoreError::Internal(format!("unit {}: a fenced key has no record", self.unit))
                })?;
                let order = match mark {
                    Mark::Slot { .. } => sqlx::query(SELECT_ORDER_BY_KEY)
                        .bind(key.0.as_str())
                        .bind(key.1.as_str())
                        .fetch_optional(&mut *conn)
                        .await
                        .map_err(StoreError::before_commit)?
                        .map(|r| order_from_row(self.unit, &r))
                        .transpose()?,
                    Mark::Fence | Mark::Claim { .. } => None,
                };
                Ok(Settled { mark, order })
            })
            .await?;
        self.commit_write(tx).await?;
        Ok(settled)
    }

    /// In the caller's transaction: makes `attempt`'s slot the key's record
    /// in place of `seen` (a fence, or `attempt`'s own claim), unless
    /// `attempt` was settled here. True when it did.
    pub(super) async fn take_record(
        &self,
        conn: &mut AnyConnection,
        key: &Key,
        seen: Mark,
        attempt: Attempt,
    ) -> Result<bool, StoreError> {
        let replaceable = match seen {
            Mark::Fence => true,
            Mark::Claim { attempt: a, .. } => a == attempt,
            Mark::Slot { .. } => false,
        };
        if !replaceable {
            return Ok(false);
        }
        // The record's row is locked first (by the compare-and-set), then
        // the settled list is read under lock: settling takes the list
        // first and the record second, so the two meet on row locks at any
        // isolation level (a deadlock between them fails before COMMIT).
        // The caller rolls back when this answers false.
        let (from_unit, from_attempt) = seen.to_row(self.unit);
        let changed = sqlx::query(REPLACE)
            .bind(i32::from(self.unit))
            .bind(attempt.0)
            .bind(key.0.as_str())
            .bind(key.1.as_str())
            .bind(i32::from(from_unit))
            .bind(from_attempt)
            .execute(&mut *conn)
            .await
            .map_err(StoreError::before_commit)?
            .rows_affected();
        if changed != 1 {
            return Ok(false);
        }
        let fenced = match self.dialect {
            Dialect::MySql => FENCED_MYSQL,
            Dialect::Sqlite => FENCED_SQLITE,
        };
        let listed = sqlx::query(fenced)
            .bind(key.0.as_str())
            .bind(key.1.as_str())
            .bind(attempt.0)
            .fetch_optional(&mut *conn)
            .await
            .map_err(StoreError::before_commit)?;
        Ok(listed.is_none())
    }

    /// The key's record in this unit, if any (read from the primary).
    pub async fn read_mark(&self, key: &Key) -> Result<Option<Mark>, StoreError> {
        let row = self
            .bounded(async {
                let mut conn = self.read_connection().await?;
                let row = sqlx::query(SELECT_MARK)
                    .bind(key.0.as_str())
                    .bind(key.1.as_str())
                    .fetch_optional(conn.get())
                    .await;
                conn.finish(row)
            })
            .await?;
        row.map(|r| self.mark_from_row(&r)).transpose()
    }

    /// The setting `name`, stored as `proposed` unless the unit has one:
    /// whoever comes first fixes it, and everyone gets what was fixed.
    pub async fn settle_meta(&self, name: &str, proposed: &str) -> Result<String, StoreError> {
        let sql = match self.dialect {
            Dialect::MySql => META_IF_ABSENT_MYSQL,
            Dialect::Sqlite => META_IF_ABSENT_SQLITE,
        };
        let mut tx = self.begin_write().await?;
        let value = self
            .bounded(async {
                let conn = tx.get();
                sqlx::query(sql)
                    .bind(name.to_owned())
                    .bind(proposed.to_owned())
                    .execute(&mut *conn)
                    .await
                    .map_err(StoreError::before_commit)?;
                let row = sqlx::query(SELECT_META)
                    .bind(name.to_owned())
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(StoreError::before_commit)?;
                row.try_get::<String, _>(0)
                    .map_err(|e| StoreError::Internal(format!("engine_meta.value: {e}")))
            })
            .await?;
        self.commit_write(tx).await?;
        Ok(value)
    }

    /// The setting `name`, if the unit has one.
    pub async fn read_meta(&self, name: &str) -> Result<Option<String>, StoreError> {
        let rows = self
            .read_all(sqlx::query(SELECT_META).bind(name.to_owned()))
            .await?;
        rows.first()
            .map(|r| r.try_get::<String, _>(0))
            .transpose()
            .map_err(|e| StoreError::Internal(format!("engine_meta.value: {e}")))
    }

    /// Inserts the records of `claims` whose keys have none here.
    async fn insert_if_absent(
        &self,
        conn: &mut AnyConnection,
        claims: &[KeyClaim],
    ) -> Result<(), StoreError> {
        let if_absent = match self.dialect {
            Dialect::MySql => IF_ABSENT_MYSQL,
            Dialect::Sqlite => IF_ABSENT_SQLITE,
        };
        insert_records(conn, &record_rows(self.unit, &[], claims), if_absent).await?;
        Ok(())
    }

    /// The records of `keys`, read under lock in the caller's transaction
    /// (so each is the latest committed, and stays so until it ends).
    async fn marks_locked(
        &self,
        conn: &mut AnyConnection,
        keys: &[&Key],
    ) -> Result<Vec<(Key, Mark)>, StoreError> {
        let mut sql =
            String::from("SELECT merchant_id, out_trade_no, unit, attempt FROM key_claims WHERE ");
        for i in 0..shapes::at_least(keys.len()) {
            sql.push_str(if i == 0 { "" } else { " OR " });
            sql.push_str("(merchant_id = ? AND out_trade_no = ?)");
        }
        if self.dialect == Dialect::MySql {
            sql.push_str(" FOR UPDATE");
        }
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for key in padded(keys) {
            query = query.bind(key.0.as_str()).bind(key.1.as_str());
        }
        let rows = query
            .fetch_all(conn)
            .await
            .map_err(StoreError::before_commit)?;
        rows.iter()
            .map(|r| {
                let key = (
                    MerchantId::parse(r.try_get::<String, _>(0).map_err(undecodable)?)
                        .map_err(|e| StoreError::Internal(e.0))?,
                    OutTradeNo::parse(r.try_get::<String, _>(1).map_err(undecodable)?)
                        .map_err(|e| StoreError::Internal(e.0))?,
                );
                Ok((key, self.mark_from_row(r)?))
            })
            .collect()
    }

    fn mark_from_row(&self, row: &AnyRow) -> Result<Mark, StoreError> {
        let unit: i32 = row.try_get("unit").map_err(undecodable)?;
        let attempt: i64 = row.try_get("attempt").map_err(undecodable)?;
        let unit = u16::try_from(unit)
            .map_err(|_| StoreError::Internal(format!("key_claims.unit {unit} out of range")))?;
        Ok(Mark::from_row(self.unit, unit, attempt))
    }
}

fn undecodable(e: sqlx::Error) -> StoreError {
    StoreError::Internal(format!("undecodable key record: {e}"))
}

/// The slot rows of new orders and the records of claims, in the caller's
/// transaction (before the orders): `false` when a key already has a
/// record here.
pub(super) async fn write_records(
    conn: &mut AnyConnection,
    unit: u16,
    orders: &[(Order, Attempt)],
    claims: &[KeyClaim],
) -> Result<bool, StoreError> {
    insert_records(conn, &record_rows(unit, orders, claims), "").await
}

/// A record row: key, the unit it names, attempt.
type RecordRow<'a> = (&'a MerchantId, &'a OutTradeNo, u16, i64);

/// The rows of new orders' slots and of claims, as unit `unit` stores them.
fn record_rows<'a>(
    unit: u16,
    orders: &'a [(Order, Attempt)],
    claims: &'a [KeyClaim],
) -> Vec<RecordRow<'a>> {
    orders
        .iter()
        .map(|(o, attempt)| (&o.merchant_id, &o.out_trade_no, unit, attempt.0))
        .chain(claims.iter().map(|c| {
            let (named, attempt) = c.mark.to_row(unit);
            (&c.key.0, &c.key.1, named, attempt)
        }))
        .collect()
}

/// One multi-row insert per statement shape of `rows`, each followed by
/// `suffix` (empty, or "only where absent"): `false` on a taken key (that
/// statement was undone).
async fn insert_records(
    conn: &mut AnyConnection,
    rows: &[RecordRow<'_>],
    suffix: &str,
) -> Result<bool, StoreError> {
    for chunk in shapes::split(rows) {
        let mut sql = multi_row(INSERT_HEAD, ROW, chunk.len());
        sql.push_str(suffix);
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for &(merchant, out_trade_no, unit, attempt) in chunk {
            query = query
                .bind(merchant.as_str().to_owned())
                .bind(out_trade_no.as_str().to_owned())
                .bind(i32::from(unit))
                .bind(attempt);
        }
        match query.execute(&mut *conn).await {
            Ok(_) => {}
            Err(sqlx::Error::Database(d)) if d.is_unique_violation() => return Ok(false),
            Err(e) => return Err(StoreError::before_commit(e)),
        }
    }
    Ok(true)
}
