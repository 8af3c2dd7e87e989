//! Group commit for one unit's creates.
//!
//! Each create costs the database one commit (one fsync on MariaDB with
//! `innodb_flush_log_at_trx_commit=1`); many creates in one transaction share
//! it. The unit actor runs at most `max_in_flight_batches` create transactions
//! at once; creates that arrive while they run queue here and leave together
//! (up to `max_batch`) as soon as one finishes. An idle unit therefore adds no
//! latency, and a busy one writes many orders per commit ("natural"
//! batching; `window_us` can add a deliberate wait).
//!
//! Every caller gets the answer it would get alone: a batch whose multi-row
//! insert hits a taken unique key is rolled back and its orders are inserted
//! one by one (a replay gets its order, a conflict its 409, the neighbours
//! their new orders); any other failure is the same failure for every order of
//! the batch (they all committed or none did).

use actix::Addr;
use metrics::histogram;
use tokio::sync::oneshot;

use super::unit::{Broken, CreateOutcome, UnitActor};
use crate::domain::{NewOrder, Order, OrderId};
use crate::metrics as m;
use crate::storage::sequence::SequenceGenerator;
use crate::storage::{BatchOutcome, InsertOutcome, StoreError, UnitStore, now_ms, shapes};

pub type Reply = oneshot::Sender<Result<CreateOutcome, StoreError>>;

/// Creates waiting for a batch, and the batches running.
#[derive(Default)]
pub struct Batcher {
    pending: Vec<(NewOrder, Reply)>,
    pub in_flight: usize,
    pub timer_set: bool,
    /// Batches written and orders in them, since start.
    pub batches: u64,
    pub orders: u64,
}

impl Batcher {
    pub fn push(&mut self, request: NewOrder, reply: Reply) {
        self.pending.push((request, reply));
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Takes the next batch: as many creates as wait, at most `max`, rounded
    /// down to a statement shape (the rest wait for the next batch).
    pub fn take(&mut self, max: usize) -> Vec<(NewOrder, Reply)> {
        let n = shapes::at_most(self.pending.len().min(max));
        self.batches += 1;
        self.orders += n as u64;
        self.pending.drain(..n).collect()
    }

    /// Answers every queued create with `error` (the actor is restarting:
    /// none of them reached the database).
    pub fn fail_pending(&mut self, error: StoreError) {
        for (_, reply) in self.pending.drain(..) {
            let _ = reply.send(Err(error.clone()));
        }
    }
}

/// Whether a unit starts another create batch now: when creates wait and
/// fewer than `max_in_flight` batches run, the first at once, and one beside
/// running batches only once `overlap_at` creates wait (below that they wait
/// for the running batch and go together: fewer, fuller statements).
pub fn may_start_batch(
    pending: usize,
    in_flight: usize,
    max_in_flight: usize,
    overlap_at: usize,
) -> bool {
    pending > 0 && in_flight < max_in_flight && (in_flight == 0 || pending >= overlap_at)
}

/// Writes one batch and answers each of its callers.
pub async fn run_batch(
    store: UnitStore,
    sequence: SequenceGenerator,
    batch: Vec<(NewOrder, Reply)>,
    me: Addr<UnitActor>,
) {
    histogram!(m::CREATE_BATCH_SIZE, "unit" => store.unit().to_string()).record(batch.len() as f64);
    let now = now_ms();
    let mut orders = Vec::with_capacity(batch.len());
    let mut waiting = Vec::with_capacity(batch.len());
    for (request, reply) in batch {
        let id = match sequence.next().await {
            Ok(seq) => OrderId::new(store.unit(), now.div_euclid(1000), seq)
                .ok_or(StoreError::SequenceExhausted),
            Err(e) => Err(e),
        };
        match id {
            Ok(id) => {
                orders.push(request.clone().into_order(id, now));
                waiting.push((request, reply));
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }
    if orders.is_empty() {
        return;
    }
    crate::fault::check_create(orders.iter().map(|o| o.out_trade_no.as_str()));
    if orders.len() == 1 {
        // Alone: the single-order path answers replays and conflicts itself.
        let (request, reply) = waiting.pop().expect("one order, one waiter");
        let _ = reply.send(insert_one(&store, &orders[0], &request, &me).await);
        return;
    }
    match store.insert_orders(&orders).await {
        Ok(BatchOutcome::Inserted) => {
            for (order, (_, reply)) in orders.into_iter().zip(waiting) {
                let _ = reply.send(Ok(CreateOutcome::Created(order)));
            }
        }
        Ok(BatchOutcome::KeyTaken) => {
            // Nothing was written: give each order the answer it gets alone.
            for (order, (request, reply)) in orders.iter().zip(waiting) {
                let _ = reply.send(insert_one(&store, order, &request, &me).await);
            }
        }
        Err(e) => {
            for (_, reply) in waiting {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

/// Inserts one order; a reused sequence number means the unit's state is
/// broken, and the actor is told to restart.
pub async fn insert_one(
    store: &UnitStore,
    order: &Order,
    request: &NewOrder,
    me: &Addr<UnitActor>,
) -> Result<CreateOutcome, StoreError> {
    let inserted = store.insert_order(order).await;
    if let Err(e @ StoreError::SequenceReused { .. }) = &inserted {
        me.do_send(Broken {
            reason: e.to_string(),
        });
    }
    Ok(match inserted? {
        InsertOutcome::Inserted => CreateOutcome::Created(order.clone()),
        InsertOutcome::KeyExists(existing) if request.is_replay_of(&existing) => {
            CreateOutcome::Replayed(*existing)
        }
        InsertOutcome::KeyExists(_) => CreateOutcome::KeyConflict,
    })
}

#[cfg(test)]
mod tests {
    use super::may_start_batch;

    #[test]
    fn a_second_batch_waits_for_enough_company() {
        // Idle unit: the first create goes at once.
        assert!(may_start_batch(1, 0, 2, 16));
        assert!(!may_start_batch(0, 0, 2, 16), "nothing to write");
        // One batch running: a few creates wait for it, many start another.
        assert!(!may_start_batch(15, 1, 2, 16));
        assert!(may_start_batch(16, 1, 2, 16));
        // Never more than max_in_flight.
        assert!(!may_start_batch(64, 2, 2, 16));
        // overlap_at 1 is plain "up to max_in_flight at once".
        assert!(may_start_batch(1, 1, 2, 1));
    }
}
