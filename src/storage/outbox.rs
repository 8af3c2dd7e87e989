//! The transactional outbox: every change to an order leaves a record in the
//! unit's `outbox` table, in the transaction that makes the change, for a
//! relay to publish.
//!
//! - A pay, close or refund writes one record per changed order, holding the
//!   event as JSON: the order as that change left it.
//! - A create batch writes **one** record for all the orders it created
//!   (`order.created`, payload `{"order_seqs":[...]}`). An order's `created`
//!   event shows only what a create fixes for good (id, merchant, key,
//!   amount, time) and the initial state (status `created`, nothing paid,
//!   version 1), so it is rendered from the order's row whenever it is read,
//!   whatever happened to the order since. One row per created order cost
//!   MariaDB about a third of a create's work (its own row, index entry and
//!   ~250 bytes of JSON per order).
//!
//! `events.rs` reads records back as events.

use std::fmt::Write as _;

use sqlx::{AnyConnection, AssertSqlSafe};

use super::error::StoreError;
use super::sql::{multi_row, seq_param};
use crate::domain::shapes;
use crate::domain::{Order, OrderId, OrderStatus};

/// The event type of a create; its records name the orders it created.
pub const CREATED: &str = "order.created";

const INSERT_HEAD: &str =
    "INSERT INTO outbox (order_seq, order_version, event_type, payload, created_at_ms) VALUES ";
const ROW: &str = "(?, ?, ?, ?, ?)";

/// A change event's payload, serialized straight from the order (one
/// allocation, where a `json!` map took one per field).
#[derive(serde::Serialize)]
pub(super) struct Event<'a> {
    r#type: &'a str,
    #[serde(serialize_with = "as_display")]
    order_id: OrderId,
    merchant_id: &'a str,
    out_trade_no: &'a str,
    status: &'a str,
    amount: i64,
    paid_amount: i64,
    refunded_amount: i64,
    version: i64,
    at_ms: i64,
}

impl<'a> Event<'a> {
    /// `order` as the change `event_type` left it.
    pub(super) fn of(order: &'a Order, event_type: &'a str) -> Self {
        Event {
            r#type: event_type,
            order_id: order.id,
            merchant_id: order.merchant_id.as_str(),
            out_trade_no: order.out_trade_no.as_str(),
            status: order.status.as_str(),
            amount: order.amount.get(),
            paid_amount: order.paid_amount,
            refunded_amount: order.refunded_amount,
            version: order.version,
            at_ms: order.updated_at_ms,
        }
    }

    /// `order` as its create left it, from the order at any later version.
    pub(super) fn created(order: &'a Order) -> Self {
        Event {
            status: OrderStatus::Created.as_str(),
            paid_amount: 0,
            refunded_amount: 0,
            version: 1,
            at_ms: order.created_at_ms,
            ..Self::of(order, CREATED)
        }
    }

    pub(super) fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an event serializes")
    }
}

fn as_display<S: serde::Serializer>(id: &OrderId, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(id)
}

/// The record of a create batch: one row naming every order in `orders`, in
/// the caller's transaction.
pub(super) async fn write_created(
    conn: &mut AnyConnection,
    orders: impl ExactSizeIterator<Item = &Order> + Clone,
) -> Result<(), StoreError> {
    let first = orders
        .clone()
        .next()
        .expect("a batch of at least one order");
    let mut payload = String::with_capacity(16 + 11 * orders.len());
    payload.push_str("{\"order_seqs\":[");
    for (i, order) in orders.enumerate() {
        let sep = if i == 0 { "" } else { "," };
        write!(payload, "{sep}{}", order.id.sequence()).expect("writing to a String");
    }
    payload.push_str("]}");
    sqlx::query(AssertSqlSafe(multi_row(INSERT_HEAD, ROW, 1)))
        .bind(seq_param(first.id.sequence()))
        .bind(first.version)
        .bind(CREATED)
        .bind(payload)
        .bind(first.created_at_ms)
        .execute(conn)
        .await
        .map_err(StoreError::before_commit)?;
    Ok(())
}

/// Appends one record per change event (one statement per shape-sized
/// chunk), in the caller's transaction.
pub(super) async fn write_events(
    conn: &mut AnyConnection,
    events: &[(Order, &'static str)],
) -> Result<(), StoreError> {
    for chunk in shapes::split(events) {
        let sql = multi_row(INSERT_HEAD, ROW, chunk.len());
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for (order, event_type) in chunk {
            query = query
                .bind(seq_param(order.id.sequence()))
                .bind(order.version)
                .bind(*event_type)
                .bind(Event::of(order, event_type).to_json())
                .bind(order.updated_at_ms);
        }
        query
            .execute(&mut *conn)
            .await
            .map_err(StoreError::before_commit)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::NewOrder;
    use crate::domain::values::{
        Amount, Currency, MerchantId, OutTradeNo, PaymentRef, Sections, UserId,
    };

    fn order() -> Order {
        NewOrder {
            merchant_id: MerchantId::parse("m-1").unwrap(),
            out_trade_no: OutTradeNo::parse("o-1").unwrap(),
            user_id: UserId::parse("u-1").unwrap(),
            amount: Amount::new(500).unwrap(),
            currency: Currency::parse("CNY").unwrap(),
            description: None,
            sections: Sections::default(),
        }
        .into_order(
            OrderId::new(3, 1_700_000_000, 42).unwrap(),
            1_700_000_000_123,
        )
    }

    #[test]
    fn a_created_event_shows_the_order_as_its_create_left_it() {
        let new = order();
        let at_create = Event::of(&new, CREATED).to_json();
        assert_eq!(Event::created(&new).to_json(), at_create);
        // Paid and partly refunded later: the created event does not change.
        let mut later = new.clone();
        later.status = OrderStatus::Paid;
        later.paid_amount = 500;
        later.refunded_amount = 100;
        later.payment_ref = Some(PaymentRef::parse("p-1").unwrap());
        later.version = 3;
        later.updated_at_ms += 60_000;
        assert_eq!(Event::created(&later).to_json(), at_create);
        assert_ne!(Event::of(&later, "order.refunded").to_json(), at_create);
    }
}
