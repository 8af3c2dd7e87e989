//! The unit's outbox relay: every `events.poll_ms`, while it holds the
//! unit's relay lease (one engine process at a time), it publishes the
//! oldest unpublished events to the sink in record order, marks them
//! published once the sink has them, prunes published records past their
//! retention, and reports how far behind it is. One round at a time; a
//! round that fails leaves the events unpublished for the next.

use actix::prelude::*;
use metrics::{counter, gauge};
use serde_json::Value;

use super::actor::{RelayOptions, UnitActor};
use crate::metrics as m;
use crate::storage::{StoreError, UnitStore, now_ms};

/// Batches one round publishes at most (then the next round goes on).
const BATCHES_PER_ROUND: usize = 16;
/// Published records one round deletes at most.
const PRUNE_PER_ROUND: i64 = 1_000;

/// What a round did.
enum Round {
    /// Another process holds the lease.
    NotHolder,
    Held {
        published: u64,
        oldest_ms: Option<i64>,
    },
}

impl UnitActor {
    /// Starts a relay round unless one is running.
    pub(super) fn relay_round(&mut self, ctx: &mut Context<Self>) {
        let Some(relay) = self.options.relay.clone() else {
            return;
        };
        if self.relaying || self.closed {
            return;
        }
        self.relaying = true;
        let store = self.store.clone();
        let work = async move { round(&store, &relay).await };
        self.spawn_contained(ctx, work, |done, act, _| {
            act.relaying = false;
            if act.closed {
                return;
            }
            let unit = act.store.unit().to_string();
            let oldest = gauge!(m::OUTBOX_OLDEST, "unit" => unit.clone());
            match done {
                Ok(Round::NotHolder) => oldest.set(f64::NAN),
                Ok(Round::Held {
                    published,
                    oldest_ms,
                }) => {
                    counter!(m::EVENTS_PUBLISHED, "unit" => unit).increment(published);
                    let age = oldest_ms.map_or(0, |t| (now_ms() - t).max(0));
                    oldest.set(age as f64 / 1000.0);
                }
                Err(e) => {
                    counter!(m::RELAY_ERRORS, "unit" => unit).increment(1);
                    tracing::warn!(unit = act.store.unit(), error = %e, "events not published this round");
                }
            }
        });
    }
}

async fn round(store: &UnitStore, relay: &RelayOptions) -> Result<Round, String> {
    let lease = store.hold_relay_lease(&relay.holder, relay.lease_ms as i64);
    if !lease.await.map_err(|e| e.to_string())? {
        return Ok(Round::NotHolder);
    }
    let batch = i64::from(relay.batch);
    let mut published = 0;
    for _ in 0..BATCHES_PER_ROUND {
        let events = store
            .unpublished_events(batch)
            .await
            .map_err(|e| e.to_string())?;
        if events.is_empty() {
            break;
        }
        let payloads: Vec<Value> = events.iter().map(|e| e.payload.clone()).collect();
        relay.sink.publish(&payloads).await?;
        let mut records: Vec<i64> = events.iter().map(|e| e.record_id).collect();
        records.dedup();
        store
            .mark_published(&records)
            .await
            .map_err(|e| e.to_string())?;
        published += events.len() as u64;
        if (records.len() as i64) < batch {
            break;
        }
    }
    let before = now_ms() - relay.retain_published_ms as i64;
    store
        .prune_published(before, PRUNE_PER_ROUND)
        .await
        .map_err(|e: StoreError| e.to_string())?;
    let oldest_ms = store
        .oldest_unpublished_ms()
        .await
        .map_err(|e| e.to_string())?;
    Ok(Round::Held {
        published,
        oldest_ms,
    })
}
