//! The transactional outbox: every change to an order leaves a record in the
//! unit's `outbox` table, in the transaction that makes the change, for a
//! relay to publish.
//!
//! - A pay, close, refund or section update writes one record per change,
//!   holding the order's id and what changed (`{"order_id", "changes"}`:
//!   the flattened diff of `domain::events`).
//! - A create batch writes **one** record for all the orders it created
//!   (`order.created`, payload `{"order_seqs":[...]}`). An order's `created`
//!   event shows the order as its create left it (`Order::as_created`),
//!   which its row still tells whatever happened to it since, so it is
//!   rendered from the row whenever it is read. One row per created order cost
//!   MariaDB about a third of a create's work (its own row, index entry and
//!   ~250 bytes of JSON per order).
//!
//! `events.rs` reads records back as events.

use std::fmt::Write as _;

use sqlx::{AnyConnection, AssertSqlSafe};

use super::error::StoreError;
use super::sql::{multi_row, seq_param};
use crate::domain::apply::ChangeEvent;
use crate::domain::events::FieldChange;
use crate::domain::shapes;
use crate::domain::{Order, OrderId};

/// The event type of a create; its records name the orders it created.
pub const CREATED: &str = "order.created";

const INSERT_HEAD: &str =
    "INSERT INTO outbox (order_seq, order_version, event_type, payload, created_at_ms) VALUES ";
const ROW: &str = "(?, ?, ?, ?, ?)";

/// A change's record: its order and what changed (the event around it is
/// rendered when the record is read: `events.rs`).
#[derive(serde::Serialize)]
struct ChangeRecord<'a> {
    #[serde(serialize_with = "as_display")]
    order_id: OrderId,
    changes: &'a [FieldChange],
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
    events: &[ChangeEvent],
) -> Result<(), StoreError> {
    for chunk in shapes::split(events) {
        let sql = multi_row(INSERT_HEAD, ROW, chunk.len());
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for event in chunk {
            let record = ChangeRecord {
                order_id: event.order.id,
                changes: &event.changes,
            };
            query = query
                .bind(seq_param(event.order.id.sequence()))
                .bind(event.order.version)
                .bind(event.kind)
                .bind(serde_json::to_string(&record).expect("a record serializes"))
                .bind(event.order.updated_at_ms);
        }
        query
            .execute(&mut *conn)
            .await
            .map_err(StoreError::before_commit)?;
    }
    Ok(())
}
