//! Reading a unit's outbox back as events (schema version 1:
//! `docs/events.md`): one per change, in commit order, which is what a
//! relay publishes. A create batch's record names its orders; their
//! `created` events are rendered from the orders' rows.

use serde_json::{Value, json};
use sqlx::Row;

use super::error::StoreError;
use super::outbox::CREATED;
use super::store::UnitStore;
use crate::domain::events::{CreatedEvent, SCHEMA_VERSION};
use crate::domain::{shapes, timestamp};

const SELECT_RECORDS: &str = "SELECT id, order_version, event_type, payload, created_at_ms \
     FROM outbox WHERE id > ? ORDER BY id LIMIT ?";
/// What a relay publishes next: the oldest unpublished records, by id.
/// Events of one order are in version order by id: a change waits for the
/// order's row lock, so it takes its record id after the change before it
/// committed.
const SELECT_UNPUBLISHED: &str = "SELECT id, order_version, event_type, payload, created_at_ms \
     FROM outbox WHERE published_at_ms IS NULL ORDER BY id LIMIT ?";

/// One change event, as a relay publishes it.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEvent {
    /// The outbox row it came from; a create batch's row holds several events.
    pub record_id: i64,
    /// `<order_id>.<version>`: what the broker and consumers de-duplicate by.
    pub event_id: String,
    pub order_id: String,
    pub event_type: String,
    /// The event as published (JSON): `schema_version`, `event_id`,
    /// `order_id`, `unit`, `version`, `type`, `occurred_at`, and `changes`
    /// (or, for `order.created`, `order`).
    pub json: String,
}

impl OutboxEvent {
    fn new(record_id: i64, event_type: String, event: &Value) -> Self {
        let text = |k: &str| event[k].as_str().unwrap_or_default().to_owned();
        Self {
            record_id,
            event_id: text("event_id"),
            order_id: text("order_id"),
            event_type,
            json: event.to_string(),
        }
    }

    /// The event as a JSON value.
    pub fn payload(&self) -> Value {
        serde_json::from_str(&self.json).expect("an event is JSON")
    }
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
        version: i64,
        at_ms: i64,
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
        let query = sqlx::query(SELECT_RECORDS)
            .bind(after_record)
            .bind(limit.max(0));
        self.events_of(self.read_all(query).await?).await
    }

    /// The events of the oldest unpublished records, at most `limit`
    /// records (what a relay publishes next).
    pub async fn unpublished_events(&self, limit: i64) -> Result<Vec<OutboxEvent>, StoreError> {
        let query = sqlx::query(SELECT_UNPUBLISHED).bind(limit.max(0));
        self.events_of(self.read_all(query).await?).await
    }

    async fn events_of(
        &self,
        rows: Vec<sqlx::any::AnyRow>,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        let undecodable =
            |e: String| StoreError::Internal(format!("unit {}: outbox record: {e}", self.unit));
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
        let mut missing = Vec::new();
        for order in self.created.take(&seqs, &mut missing) {
            created.insert(order.id.sequence(), order);
        }
        for chunk in shapes::split(&missing) {
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
                        let first = order.as_created();
                        let event = CreatedEvent::new(self.unit, &first);
                        events.push(OutboxEvent {
                            record_id: id,
                            json: serde_json::to_string(&event).expect("an event is JSON"),
                            event_id: event.event_id,
                            order_id: event.order_id,
                            event_type: CREATED.to_owned(),
                        });
                    }
                }
                Record::Change {
                    id,
                    event_type,
                    version,
                    at_ms,
                    payload,
                } => {
                    let event = change_event(self.unit, &event_type, version, at_ms, payload);
                    events.push(OutboxEvent::new(id, event_type, &event));
                }
            }
        }
        Ok(events)
    }
}

/// What every event carries; `event_id` names the order's version, so a
/// republished event has the id it had (what the broker and consumers
/// de-duplicate by).
fn envelope(order_id: &str, unit: u16, event_type: &str, version: i64, at_ms: i64) -> Value {
    json!({
        "schema_version": SCHEMA_VERSION,
        "event_id": format!("{order_id}.{version}"),
        "order_id": order_id,
        "unit": unit,
        "version": version,
        "type": event_type,
        "occurred_at": timestamp(at_ms),
    })
}

/// A change's event, from its record: `{"order_id", "changes"}`. Records
/// written before events had diffs hold the order as the change left it:
/// their event carries it as `order`.
fn change_event(unit: u16, event_type: &str, version: i64, at_ms: i64, payload: Value) -> Value {
    let order_id = payload["order_id"].as_str().unwrap_or_default();
    let mut event = envelope(order_id, unit, event_type, version, at_ms);
    match payload.get("changes") {
        Some(changes) => event["changes"] = changes.clone(),
        None => event["order"] = payload,
    }
    event
}

fn decode_record(row: &sqlx::any::AnyRow) -> Result<Record, String> {
    let get_err = |e: sqlx::Error| e.to_string();
    let id: i64 = row.try_get("id").map_err(get_err)?;
    let version: i64 = row.try_get("order_version").map_err(get_err)?;
    let at_ms: i64 = row.try_get("created_at_ms").map_err(get_err)?;
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
            version,
            at_ms,
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
