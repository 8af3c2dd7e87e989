//! Group commit for one unit's creates.
//!
//! Each create costs the database one commit (one fsync on MariaDB with
//! `innodb_flush_log_at_trx_commit=1`); many creates in one transaction share
//! it. The unit actor runs at most `max_in_flight_batches` create transactions
//! at once; creates that arrive while they run queue here and leave together
//! (up to `max_batch`) as soon as one finishes. An idle unit therefore adds no
//! latency, and a busy one writes many orders per commit ("natural"
//! batching). A batch also waits up to `window_us` for company when the
//! unit's create rate says company comes within it and grows the batch by a
//! quarter or more: at high rates a create's own transaction costs the
//! database more than the wait costs the caller.
//!
//! Every caller gets the answer it would get alone: a batch whose multi-row
//! insert hits a taken unique key is rolled back and its orders are inserted
//! one by one (a replay gets its order, a conflict its 409, the neighbours
//! their new orders); any other failure is the same failure for every order of
//! the batch (they all committed or none did).

use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::call_batch::answer_each;
use super::messages::CreateOutcome;
use crate::domain::key_homes::{Attempt, Mark};
use crate::domain::shapes;
use crate::domain::{NewOrder, Order, OrderId};
use crate::storage::sequence::SequenceGenerator;
use crate::storage::{BatchOutcome, InsertOutcome, KeyClaim, StoreError, UnitStore, now_ms};

pub type Reply = oneshot::Sender<Result<CreateOutcome, StoreError>>;
pub type ClaimReply = oneshot::Sender<Result<Mark, StoreError>>;

/// How often a unit measures its create rate again.
const RATE_PERIOD: Duration = Duration::from_millis(10);

/// Creates waiting for a batch, and the batches running.
#[derive(Default)]
pub struct Batcher {
    pending: Vec<(NewOrder, Attempt, Reply)>,
    /// Claims of keys this unit is a home of: they ride in the next create
    /// transaction (its key-record insert), so they cost no commit of their own.
    claims: Vec<(KeyClaim, ClaimReply)>,
    pub in_flight: usize,
    pub timer_set: bool,
    /// Batches written and orders in them, since start.
    pub batches: u64,
    pub orders: u64,
    rate: ArrivalRate,
}

/// Creates per second, measured over periods of at least [`RATE_PERIOD`]
/// that end at an arrival (so a silence counts once the next create comes).
#[derive(Default)]
struct ArrivalRate {
    since: Option<Instant>,
    arrivals: u32,
    per_sec: f64,
}

impl ArrivalRate {
    fn arrived(&mut self, now: Instant) {
        self.arrivals += 1;
        let since = *self.since.get_or_insert(now);
        let elapsed = now.saturating_duration_since(since);
        if elapsed >= RATE_PERIOD {
            self.per_sec = f64::from(self.arrivals) / elapsed.as_secs_f64();
            self.arrivals = 0;
            self.since = Some(now);
        }
    }
}

impl Batcher {
    pub fn push(&mut self, request: NewOrder, attempt: Attempt, reply: Reply) {
        self.rate.arrived(Instant::now());
        self.pending.push((request, attempt, reply));
    }

    /// Whether the next batch should wait up to `window` for company: at the
    /// unit's recent rate at least one more create comes within the window,
    /// and that many would grow the batch by at least a quarter. So a slow
    /// unit's creates go at once, and so do batches that are full or large
    /// already (a busy unit's, which fill while the previous batch runs).
    pub fn waits_for_company(&self, window: Duration, max_batch: usize) -> bool {
        worth_waiting(self.rate.per_sec, window, self.pending.len(), max_batch)
    }

    pub fn push_claim(&mut self, claim: KeyClaim, reply: ClaimReply) {
        self.claims.push((claim, reply));
    }

    /// Creates and claims waiting.
    pub fn pending(&self) -> usize {
        self.pending.len() + self.claims.len()
    }

    /// Takes the next batch: as many creates and claims as wait, at most
    /// `max` of each, in statement shapes (`shapes::pair`; the rest wait
    /// for the next batch).
    pub fn take(&mut self, max: usize) -> Batch {
        let (n, c) = shapes::pair(self.pending.len().min(max), self.claims.len().min(max));
        if n > 0 {
            self.batches += 1;
            self.orders += n as u64;
        }
        Batch {
            creates: self.pending.drain(..n).collect(),
            claims: self.claims.drain(..c).collect(),
        }
    }

    /// Answers every queued create with `error` (the actor is restarting:
    /// none of them reached the database).
    pub fn fail_pending(&mut self, error: StoreError) {
        for (_, _, reply) in self.pending.drain(..) {
            let _ = reply.send(Err(error.clone()));
        }
        for (_, reply) in self.claims.drain(..) {
            let _ = reply.send(Err(error.clone()));
        }
    }
}

/// See [`Batcher::waits_for_company`]: `per_sec` creates arrive per second.
fn worth_waiting(per_sec: f64, window: Duration, pending: usize, max_batch: usize) -> bool {
    let company = per_sec * window.as_secs_f64();
    pending < max_batch && company >= 1.0 && company * 4.0 >= pending as f64
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

/// The unit's state is broken: its sequence handed out a number an order
/// already has. The actor restarts with a fresh generator.
#[derive(Debug)]
pub struct Broken {
    pub reason: String,
}

/// One transaction's worth: creates, and claims of keys this unit is a home of.
pub struct Batch {
    pub creates: Vec<(NewOrder, Attempt, Reply)>,
    pub claims: Vec<(KeyClaim, ClaimReply)>,
}

impl Batch {
    /// A batch of one create (group commit off).
    pub fn create(request: NewOrder, attempt: Attempt, reply: Reply) -> Self {
        Self {
            creates: vec![(request, attempt, reply)],
            claims: Vec::new(),
        }
    }
}

/// Writes one batch and answers each of its callers. `Err` when the batch
/// found the unit's state broken (its callers are answered all the same).
pub async fn run_batch(
    store: UnitStore,
    sequence: SequenceGenerator,
    batch: Batch,
) -> Result<(), Broken> {
    let Batch {
        creates: batch,
        claims,
    } = batch;
    let (claims, claim_replies): (Vec<KeyClaim>, Vec<ClaimReply>) = claims.into_iter().unzip();
    let now = now_ms();
    let mut orders = Vec::with_capacity(batch.len());
    let mut waiting = Vec::with_capacity(batch.len());
    for (request, attempt, reply) in batch {
        let id = match sequence.next().await {
            Ok(seq) => OrderId::new(store.unit(), now.div_euclid(1000), seq)
                .ok_or(StoreError::SequenceExhausted),
            Err(e) => Err(e),
        };
        match id {
            Ok(id) => {
                orders.push((request.into_order(id, now), attempt));
                waiting.push(reply);
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }
    if orders.is_empty() {
        answer_each(claim_replies, store.claim_keys(claims).await);
        return Ok(());
    }
    crate::fault::check_create(orders.iter().map(|(o, _)| o.out_trade_no.as_str()));
    if orders.len() == 1 && claims.is_empty() {
        // Alone: the single-order path answers replays and conflicts itself.
        let (order, attempt) = orders.pop().expect("one order");
        let reply = waiting.pop().expect("one waiter");
        let answer = insert_one(&store, order, attempt).await;
        let broken = broken_by(&answer);
        let _ = reply.send(answer);
        return broken.map_or(Ok(()), Err);
    }
    let mut broken = None;
    match store.insert_batch(&orders, &claims).await {
        Ok(BatchOutcome::Inserted) => {
            for ((order, _), reply) in orders.into_iter().zip(waiting) {
                let _ = reply.send(Ok(CreateOutcome::Created(order)));
            }
            for (claim, reply) in claims.into_iter().zip(claim_replies) {
                let _ = reply.send(Ok(claim.mark));
            }
        }
        Ok(BatchOutcome::KeyTaken) => {
            // Nothing was written: give each claim and order the answer it
            // gets alone.
            answer_each(claim_replies, store.claim_keys(claims).await);
            for ((order, attempt), reply) in orders.into_iter().zip(waiting) {
                let answer = insert_one(&store, order, attempt).await;
                broken = broken.or_else(|| broken_by(&answer));
                let _ = reply.send(answer);
            }
        }
        Err(e) => {
            for reply in waiting {
                let _ = reply.send(Err(e.clone()));
            }
            for reply in claim_replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
    broken.map_or(Ok(()), Err)
}

/// A reused sequence number means the unit's state is broken.
fn broken_by(answer: &Result<CreateOutcome, StoreError>) -> Option<Broken> {
    match answer {
        Err(e @ StoreError::SequenceReused { .. }) => Some(Broken {
            reason: e.to_string(),
        }),
        _ => None,
    }
}

/// Inserts one order alone: a replay gets its order, a conflict its answer,
/// and a key this unit must not hold the record that blocks it.
async fn insert_one(
    store: &UnitStore,
    order: Order,
    attempt: Attempt,
) -> Result<CreateOutcome, StoreError> {
    Ok(match store.insert_order(&order, attempt).await? {
        InsertOutcome::Inserted => CreateOutcome::Created(order),
        InsertOutcome::KeyExists(existing) if order.has_the_request_of(&existing) => {
            CreateOutcome::Replayed(*existing)
        }
        InsertOutcome::KeyExists(_) => CreateOutcome::KeyConflict,
        InsertOutcome::Blocked(mark) => CreateOutcome::Blocked(mark),
    })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{ArrivalRate, may_start_batch, worth_waiting};

    #[test]
    fn the_rate_is_measured_over_periods_and_a_silence_counts() {
        let start = Instant::now();
        let mut rate = ArrivalRate::default();
        // One create every 100 us for 20 ms: 10,000/s.
        for i in 0..=200 {
            rate.arrived(start + Duration::from_micros(100 * i));
        }
        assert!(
            (9_000.0..=11_000.0).contains(&rate.per_sec),
            "{}",
            rate.per_sec
        );
        // Then one create after a second of silence: the rate falls at once.
        rate.arrived(start + Duration::from_millis(1_020));
        assert!(rate.per_sec < 10.0, "{}", rate.per_sec);
    }

    #[test]
    fn a_batch_waits_only_for_company_that_comes_and_matters() {
        let window = Duration::from_micros(200);
        // 10,000/s: two more creates in 200 us.
        assert!(
            worth_waiting(10_000.0, window, 1, 64),
            "a lone create waits"
        );
        assert!(
            worth_waiting(10_000.0, window, 8, 64),
            "two more grow 8 by a quarter"
        );
        assert!(
            !worth_waiting(10_000.0, window, 9, 64),
            "a large batch goes"
        );
        assert!(!worth_waiting(1e9, window, 64, 64), "a full batch goes");
        // 1,000/s: company is not expected within the window.
        assert!(!worth_waiting(1_000.0, window, 1, 64));
        // No window, no wait.
        assert!(!worth_waiting(1e9, Duration::ZERO, 1, 64));
    }

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
