//! The unit's outbox relay: every `events.poll_ms`, while it holds the
//! unit's relay lease (one engine process at a time), it publishes the
//! oldest unpublished events to the sink in record order, marks them
//! published once the sink has them, prunes published records past their
//! retention, and reports how far behind it is. One round at a time; a
//! round that fails leaves the events unpublished for the next.

use actix::prelude::*;
use metrics::{counter, gauge};

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
        /// Why the round stopped publishing early (the sink failed).
        failed: Option<String>,
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
            let failed = match done {
                Ok(Round::NotHolder) => {
                    oldest.set(f64::NAN);
                    None
                }
                Ok(Round::Held {
                    published,
                    oldest_ms,
                    failed,
                }) => {
                    counter!(m::EVENTS_PUBLISHED, "unit" => unit.clone()).increment(published);
                    let age = oldest_ms.map_or(0, |t| (now_ms() - t).max(0));
                    oldest.set(age as f64 / 1000.0);
                    failed
                }
                Err(e) => Some(e),
            };
            // Logged when it starts failing and when it recovers, not
            // every round; every failed round is counted.
            let unit_id = act.store.unit();
            match failed {
                Some(e) => {
                    counter!(m::RELAY_ERRORS, "unit" => unit).increment(1);
                    if !act.relay_failing {
                        tracing::warn!(unit = unit_id, error = %e, "events not published: retrying every poll");
                    }
                    act.relay_failing = true;
                }
                None if act.relay_failing => {
                    tracing::info!(unit = unit_id, "events published again");
                    act.relay_failing = false;
                }
                None => {}
            }
        });
    }
}

async fn round(store: &UnitStore, relay: &RelayOptions) -> Result<Round, String> {
    let lease = store.hold_relay_lease(&relay.holder, relay.lease_ms as i64);
    let held = lease.await.map_err(|e| e.to_string())?;
    store.keep_created(held);
    if !held {
        return Ok(Round::NotHolder);
    }
    let (published, failed) = match publish(store, relay).await {
        Ok(n) => (n, None),
        Err((n, e)) => (n, Some(e)),
    };
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
        failed,
    })
}

/// Publishes up to `BATCHES_PER_ROUND` batches: how many events, and the
/// error that stopped it early, if one did (the backlog is measured and
/// pruned all the same). The lease is kept before each batch after the
/// first (a round trip only every third of the lease), so that a long
/// round, a backlog draining, stops once another process may have taken
/// the unit over, rather than publishing beside it.
async fn publish(store: &UnitStore, relay: &RelayOptions) -> Result<u64, (u64, String)> {
    let batch = i64::from(relay.batch);
    let mut published = 0;
    for n in 0..BATCHES_PER_ROUND {
        if n > 0 {
            let lease = store.hold_relay_lease(&relay.holder, relay.lease_ms as i64);
            if !lease.await.map_err(|e| (published, e.to_string()))? {
                break;
            }
        }
        let events = store
            .unpublished_events(batch)
            .await
            .map_err(|e| (published, e.to_string()))?;
        if events.is_empty() {
            break;
        }
        let sent = relay.sink.publish(store.unit(), &events).await;
        sent.map_err(|e| (published, e))?;
        let mut records: Vec<i64> = events.iter().map(|e| e.record_id).collect();
        records.dedup();
        store
            .mark_published(&records)
            .await
            .map_err(|e| (published, e.to_string()))?;
        published += events.len() as u64;
        if (records.len() as i64) < batch {
            break;
        }
    }
    Ok(published)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::config::StorageSettings;
    use crate::relay::{FileSink, Sink};

    /// A round that finds its lease taken over between two batches stops
    /// there, leaving the rest to the new holder.
    #[tokio::test]
    async fn a_round_stops_when_another_process_has_taken_the_lease() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/unit.db", dir.path().display());
        let settings = StorageSettings::default();
        let a = UnitStore::open(1, &url, &[], &settings).await.unwrap();
        let b = UnitStore::open(1, &url, &[], &settings).await.unwrap();
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        for seq in 1..=6 {
            sqlx::query(
                "INSERT INTO outbox (order_seq, order_version, event_type, payload, created_at_ms) \
                 VALUES (?, 2, 'order.paid', ?, 0)",
            )
            .bind(seq)
            .bind(format!(r#"{{"order_id":"o{seq}","changes":[]}}"#))
            .execute(&pool)
            .await
            .unwrap();
        }
        let file = dir.path().join("events.jsonl");
        let relay = RelayOptions {
            sink: Arc::new(Sink::File(FileSink::new(&file))),
            holder: "a".into(),
            poll: Duration::from_millis(50),
            batch: 2,
            lease_ms: 900,
            retain_published_ms: 3_600_000,
        };
        assert!(a.hold_relay_lease("a", 900).await.unwrap());
        // a's lease runs out (a process that stalled) and b takes the unit.
        tokio::time::sleep(Duration::from_millis(950)).await;
        assert!(b.hold_relay_lease("b", 900).await.unwrap());

        let published = publish(&a, &relay).await.unwrap();
        assert_eq!(published, 2, "the first batch only");
        let lines = std::fs::read_to_string(&file).unwrap().lines().count();
        assert_eq!(lines, 2);
        assert_eq!(b.unpublished_events(10).await.unwrap().len(), 4);
        pool.close().await;
    }
}
