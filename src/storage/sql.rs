//! SQL shared by the statements of every kind: the order columns, multi-row
//! statements, lists padded to a statement shape, and decoding rows into
//! domain values.

use sqlx::any::AnyRow;
use sqlx::{Any, AssertSqlSafe, Row};

use super::error::StoreError;
use crate::domain::shapes;
use crate::domain::values::{
    Amount, Currency, MerchantId, OutTradeNo, PaymentRef, Sections, Text, UserId,
};
use crate::domain::{Order, OrderId, OrderStatus};

/// The `orders` columns, in the order every statement reads and writes them.
macro_rules! order_columns {
    () => {
        "seq, merchant_id, out_trade_no, user_id, amount, currency, description, status, \
         paid_amount, refunded_amount, payment_ref, version, created_at_ms, updated_at_ms, sections"
    };
}
pub(super) use order_columns;

/// What every read of an order selects: the columns a create writes, and
/// the sections as created once a section update changed them.
macro_rules! read_columns {
    () => {
        concat!(order_columns!(), ", created_sections")
    };
}
pub(super) use read_columns;

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

pub(super) fn seq_param(seq: u64) -> i64 {
    // Sequences are at most 10 digits, so they always fit.
    i64::try_from(seq).expect("sequence fits i64")
}

pub(super) fn get<'r, T>(row: &'r AnyRow, column: &str) -> Result<T, String>
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
        created_sections: get::<Option<String>>(row, "created_sections")?
            .map(|s| Sections::from_json(&s))
            .transpose()
            .map_err(|e| format!("created_sections: {e}"))?,
    })
}

/// `items`, then its last item repeated up to the next shape: a padded
/// `IN` or `OR` list asks for nothing more.
pub(super) fn padded<T>(items: &[T]) -> impl Iterator<Item = &T> {
    let last = items.last().expect("a list of at least one");
    let padding = shapes::at_least(items.len()) - items.len();
    items.iter().chain(std::iter::repeat_n(last, padding))
}

pub(super) fn sequences(ids: &[OrderId]) -> Vec<u64> {
    ids.iter().map(OrderId::sequence).collect()
}

/// The orders with sequences `seqs`, with `suffix` (` FOR UPDATE`). The
/// `IN` list is padded to a shape.
pub(super) fn select_by_seqs(
    seqs: &[u64],
    suffix: &'static str,
) -> sqlx::query::Query<'static, Any, sqlx::any::AnyArguments> {
    let mut sql = String::from(concat!(
        "SELECT ",
        read_columns!(),
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

/// Decodes an order row of `unit`; a row that is not a valid order is a
/// bug or corrupt data, never the unit's availability.
pub(super) fn order_from_row(unit: u16, row: &AnyRow) -> Result<Order, StoreError> {
    decode_order(unit, row)
        .map_err(|e| StoreError::Internal(format!("unit {unit}: undecodable order row: {e}")))
}

/// The orders in `rows` that `ids` name: the sequence matched, and the time
/// must too, or the id names another order.
pub(super) fn orders_named(
    unit: u16,
    rows: &[AnyRow],
    ids: &[OrderId],
) -> Result<Vec<Order>, StoreError> {
    let orders: Vec<Order> = rows
        .iter()
        .map(|r| order_from_row(unit, r))
        .collect::<Result<_, _>>()?;
    Ok(orders.into_iter().filter(|o| ids.contains(&o.id)).collect())
}
