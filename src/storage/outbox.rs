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
//! [`UnitStore::outbox_events`] reads records back as one event per change,
//! in commit order within each order, which is what a relay publishes.

use std::fmt::Write as _;

use serde_json::Value;
use sqlx::{AnyConnection, AssertSqlSafe, Row};

use super::orders::{multi_row, seq_param};
use super::{StoreError, UnitStore, shapes};
use crate::domain::{Order, OrderId, OrderStatus};

/// The event type of a create; its records name the orders it created.
pub const CREATED: &str = "order.created";

const INSERT_HEAD: &str =
    "INSERT INTO outbox (order_seq, order_version, event_type, payload, created_at_ms) VALUES ";
const ROW: &str = "(?, ?, ?, ?, ?)";
const SELECT_RECORDS: &str = "SELECT id, order_seq, event_type, payload FROM outbox \
     WHERE id > ? ORDER BY id LIMIT ?";

/// A change event's payload, serialized straight from the order (one
/// allocation, where a `json!` map took one per field).
#[derive(serde::Serialize)]
struct Event<'a> {
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
    fn of(order: &'a Order, event_type: &'a str) -> Self {
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
    fn created(order: &'a Order) -> Self {
        Event {
            status: OrderStatus::Created.as_str(),
            paid_amount: 0,
            refunded_amount: 0,
            version: 1,
            at_ms: order.created_at_ms,
            ..Self::of(order, CREATED)
        }
    }

    fn to_json(&self) -> String {
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
    orders: &[Order],
) -> Result<(), StoreError> {
    let first = orders.first().expect("a batch of at least one order");
    let mut payload = String::with_capacity(16 + 11 * orders.len());
    payload.push_str("{\"order_seqs\":[");
    for (i, order) in orders.iter().enumerate() {
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
    events: &[(&Order, &'static str)],
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

/// One change event, as a relay publishes it.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEvent {
    /// The outbox row it came from; a create batch's row holds several events.
    pub record_id: i64,
    pub event_type: String,
    /// The event: `type`, `order_id`, `merchant_id`, `out_trade_no`,
    /// `status`, `amount`, `paid_amount`, `refunded_amount`, `version`, `at_ms`.
    pub payload: Value,
}

/// A record of a create batch names orders by sequence; the others hold their event.
enum Record {
    Created {
        id: i64,
        seqs: Vec<u64>,
    },
    Change {
        id: i64,
        event_type: String,
        payload: Value,
    },
}

impl UnitStore {
    /// The events of the outbox records after `after_record` (a record id;
    /// 0 for the first), at most `limit` records, in record order, and the
    /// events of a create batch in the order of its orders. Read from the
    /// primary, published or not: what to skip is the relay's cursor.
    pub async fn outbox_events(
        &self,
        after_record: i64,
        limit: i64,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        let undecodable =
            |e: String| StoreError::Internal(format!("unit {}: outbox record: {e}", self.unit));
        let rows = self
            .read_all(
                sqlx::query(SELECT_RECORDS)
                    .bind(after_record)
                    .bind(limit.max(0)),
            )
            .await?;
        let records = rows
            .iter()
            .map(|row| decode_record(row).map_err(undecodable))
            .collect::<Result<Vec<_>, _>>()?;

        // The orders the create records name, in one read per shape-sized chunk.
        let seqs: Vec<u64> = records
            .iter()
            .flat_map(|r| match r {
                Record::Created { seqs, .. } => seqs.as_slice(),
                Record::Change { .. } => &[],
            })
            .copied()
            .collect();
        let mut created = std::collections::HashMap::with_capacity(seqs.len());
        for chunk in shapes::split(&seqs) {
            for order in self.get_by_seqs(chunk).await? {
                created.insert(order.id.sequence(), order);
            }
        }

        let mut events = Vec::with_capacity(records.len().max(seqs.len()));
        for record in records {
            match record {
                Record::Created { id, seqs } => {
                    for seq in seqs {
                        let order = created.get(&seq).ok_or_else(|| {
                            undecodable(format!("record {id} names order {seq}, which is missing"))
                        })?;
                        events.push(OutboxEvent {
                            record_id: id,
                            event_type: CREATED.to_owned(),
                            payload: serde_json::to_value(Event::created(order))
                                .expect("an event serializes"),
                        });
                    }
                }
                Record::Change {
                    id,
                    event_type,
                    payload,
                } => events.push(OutboxEvent {
                    record_id: id,
                    event_type,
                    payload,
                }),
            }
        }
        Ok(events)
    }
}

fn decode_record(row: &sqlx::any::AnyRow) -> Result<Record, String> {
    let get_err = |e: sqlx::Error| e.to_string();
    let id: i64 = row.try_get("id").map_err(get_err)?;
    let event_type: String = row.try_get("event_type").map_err(get_err)?;
    let payload: String = row.try_get("payload").map_err(get_err)?;
    let payload: Value =
        serde_json::from_str(&payload).map_err(|e| format!("record {id}: payload: {e}"))?;
    // Created records written before batches had their own record hold
    // their event, like any change.
    let Some(seqs) = payload.get("order_seqs").filter(|_| event_type == CREATED) else {
        return Ok(Record::Change {
            id,
            event_type,
            payload,
        });
    };
    let seqs = seqs
        .as_array()
        .and_then(|seqs| seqs.iter().map(Value::as_u64).collect::<Option<Vec<_>>>())
        .filter(|seqs| !seqs.is_empty())
        .ok_or_else(|| format!("record {id}: order_seqs is not a list of sequences"))?;
    Ok(Record::Created { id, seqs })
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
