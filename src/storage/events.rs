//! Reading a unit's outbox back as events: one per change, in commit order,
//! which is what a relay publishes. A create batch's record names its
//! orders; their `created` events are rendered from the orders' rows.

use serde_json::Value;
use sqlx::Row;

use super::error::StoreError;
use super::outbox::{CREATED, Event};
use super::store::UnitStore;
use crate::domain::shapes;

const SELECT_RECORDS: &str = "SELECT id, order_seq, event_type, payload FROM outbox \
     WHERE id > ? ORDER BY id LIMIT ?";

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
