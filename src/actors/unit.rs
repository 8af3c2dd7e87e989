//! The unit actor: one per trading unit. It owns the unit's database pools and
//! its sequence generator, and knows nothing about other units, so a unit's
//! trouble stays inside the unit (fault containment).
//!
//! Creates (`group_commit`), gets, key look-ups, pays, closes and refunds
//! (`call_batch`) queue in the actor and go to the database in batches it runs
//! in its own context; the other handlers return `ResponseFuture`s that clone the store
//! into the future. Either way the database work of many requests overlaps,
//! while the actor itself only hands work out. Units share a few threads
//! (`server.unit_threads`): a unit whose database is slow only has more
//! futures waiting, which costs its neighbours on the thread nothing. A panic
//! ends alone too: in a `ResponseFuture` it ends that call's task (tokio
//! catches a panic per task), and in the batches the actor runs in its own
//! context it is caught and restarts the actor with fresh state (see
//! `spawn_contained`).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use actix::prelude::*;
use futures_util::FutureExt;
use metrics::{counter, gauge};
use tokio::sync::oneshot;

use super::call_batch::{BatchAnswers, CallBatcher, answer_all, answer_each};
use super::group_commit::{Batcher, may_start_batch, run_batch};
use super::health::UnitHealth;
use crate::config::GroupCommitSettings;
use crate::metrics as m;

use crate::domain::key_filter::KeyFilter;
use crate::domain::values::{MerchantId, OutTradeNo, PaymentRef, UserId};
use crate::domain::{NewOrder, NewRefund, Order, OrderId, Refund};
use crate::storage::sequence::SequenceGenerator;
use crate::storage::{
    Consistency, OrderUpdate, Page, RefundRequest, StoreError, UnitStore, UserCursor,
};

/// What a create did in this unit.
#[derive(Debug)]
pub enum CreateOutcome {
    Created(Order),
    /// The same request was seen before: here is the order it created.
    Replayed(Order),
    /// The key is taken by an order created from a different request.
    KeyConflict,
}

/// Create a new order in this unit (or recognise a replay of one).
#[derive(Message)]
#[rtype(result = "Result<CreateOutcome, StoreError>")]
pub struct CreateOrder {
    pub request: NewOrder,
}

/// Read one order.
#[derive(Message)]
#[rtype(result = "Result<Order, StoreError>")]
pub struct GetOrder {
    pub id: OrderId,
    pub consistency: Consistency,
}

/// Find the order with this idempotency key, if this unit has it.
#[derive(Message, Clone)]
#[rtype(result = "Result<Option<Order>, StoreError>")]
pub struct FindByKey {
    pub merchant_id: MerchantId,
    pub out_trade_no: OutTradeNo,
}

/// `created -> paid`. Returns the order and whether it changed.
#[derive(Message)]
#[rtype(result = "Result<(Order, bool), StoreError>")]
pub struct PayOrder {
    pub id: OrderId,
    pub payment_ref: PaymentRef,
    pub amount: crate::domain::values::Amount,
    pub expected_version: Option<i64>,
}

/// `created -> closed`. Returns the order and whether it changed.
#[derive(Message)]
#[rtype(result = "Result<(Order, bool), StoreError>")]
pub struct CloseOrder {
    pub id: OrderId,
    pub expected_version: Option<i64>,
}

/// Refund part or all of a paid order. Returns the refund, the order after it,
/// and whether the refund is new.
#[derive(Message)]
#[rtype(result = "Result<(Refund, Order, bool), StoreError>")]
pub struct RefundOrder {
    pub id: OrderId,
    pub refund: NewRefund,
    pub expected_version: Option<i64>,
}

/// The refunds of an order, oldest first.
#[derive(Message)]
#[rtype(result = "Result<Vec<Refund>, StoreError>")]
pub struct ListRefunds {
    pub id: OrderId,
}

/// This unit's part of a user's newest-first order list.
#[derive(Message, Clone)]
#[rtype(result = "Result<Page, StoreError>")]
pub struct ListUserOrders {
    pub user_id: UserId,
    pub after: Option<UserCursor>,
    pub limit: u32,
}

/// The supervisor's synthetic order: a write, read and commit in the unit's database.
#[derive(Message)]
#[rtype(result = "Result<(), StoreError>")]
pub struct Probe {
    pub token: i64,
}

/// Settles a create whose commit outcome is unknown: finds the key's order,
/// waiting for any in-flight transaction on it.
#[derive(Message, Clone)]
#[rtype(result = "Result<Option<Order>, StoreError>")]
pub struct SettleKey {
    pub merchant_id: MerchantId,
    pub out_trade_no: OutTradeNo,
}

/// Sent by the actor's own handlers when they find its state broken: the
/// actor stops and its supervisor restarts it with fresh state.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Broken {
    pub reason: String,
}

/// Close the unit's pools (shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseUnit;

/// How a unit actor runs (from the settings).
#[derive(Debug, Clone)]
pub struct UnitOptions {
    pub sequence_step: u64,
    pub prefetch_at_percent: u8,
    pub mailbox: usize,
    pub group_commit: GroupCommitSettings,
}

/// Group-commit counters of a unit: batches written and orders in them.
#[derive(Message)]
#[rtype(result = "(u64, u64)")]
pub struct BatchStats;

pub struct UnitActor {
    store: UnitStore,
    health: Option<Arc<UnitHealth>>,
    /// The keys this unit may hold; loaded here, read by the dispatcher.
    filter: Option<Arc<KeyFilter>>,
    sequence: SequenceGenerator,
    options: UnitOptions,
    batcher: Batcher,
    /// Creates per batch (the handle, not a registry look-up per batch).
    batch_size: metrics::Histogram,
    lookups: CallBatcher<Key, Option<Order>>,
    gets: CallBatcher<OrderId, Order>,
    /// Pays and closes.
    updates: CallBatcher<OrderUpdate<'static>, (Order, bool)>,
    refunds: CallBatcher<RefundRequest, (Refund, Order, bool)>,
}

async fn read_keys(store: UnitStore, keys: Vec<Key>) -> Result<Vec<Order>, StoreError> {
    store.find_by_keys(&keys).await
}

fn pick_by_key(
    (merchant, out_trade_no): &Key,
    orders: &[Order],
) -> Result<Option<Order>, StoreError> {
    Ok(orders
        .iter()
        .find(|o| &o.merchant_id == merchant && &o.out_trade_no == out_trade_no)
        .cloned())
}

async fn read_orders(store: UnitStore, ids: Vec<OrderId>) -> Result<Vec<Order>, StoreError> {
    store.get_many(&ids).await
}

fn pick_by_id(id: &OrderId, orders: &[Order]) -> Result<Order, StoreError> {
    orders
        .iter()
        .find(|o| o.id == *id)
        .cloned()
        .ok_or(StoreError::NotFound)
}

async fn write_updates(
    store: UnitStore,
    updates: Vec<OrderUpdate<'static>>,
) -> BatchAnswers<(Order, bool)> {
    store.update_orders(updates).await
}

async fn write_refunds(
    store: UnitStore,
    refunds: Vec<RefundRequest>,
) -> BatchAnswers<(Refund, Order, bool)> {
    store.refund_orders(refunds).await
}

type Key = (MerchantId, OutTradeNo);

impl UnitActor {
    pub fn new(
        store: UnitStore,
        options: UnitOptions,
        health: Option<Arc<UnitHealth>>,
        filter: Option<Arc<KeyFilter>>,
    ) -> Self {
        Self {
            health,
            filter,
            sequence: SequenceGenerator::new(
                store.clone(),
                options.sequence_step,
                options.prefetch_at_percent,
            ),
            batch_size: metrics::histogram!(
                crate::metrics::CREATE_BATCH_SIZE,
                "unit" => store.unit().to_string()
            ),
            store,
            options,
            batcher: Batcher::default(),
            lookups: CallBatcher::default(),
            gets: CallBatcher::default(),
            updates: CallBatcher::default(),
            refunds: CallBatcher::default(),
        }
    }

    /// Loads the unit's existing keys into its key filter, a page at a time,
    /// then marks it ready. On a database error it resumes after a second
    /// from where it stopped; until it is ready, creates ask this unit as
    /// before. Keys created meanwhile are added by the dispatcher.
    fn load_keys(&mut self, ctx: &mut Context<Self>, mut after: Option<(String, String)>) {
        let Some(filter) = self.filter.clone() else {
            return;
        };
        if filter.is_ready() {
            return;
        }
        const PAGE: u32 = 10_000;
        let store = self.store.clone();
        let work = async move {
            let started = std::time::Instant::now();
            loop {
                let page = match store.scan_keys(after.as_ref(), PAGE).await {
                    Ok(page) => page,
                    Err(e) => return Err((after, e)),
                };
                for (merchant, key) in &page {
                    filter.insert(merchant, key);
                }
                let last_page = page.len() < PAGE as usize;
                after = page.into_iter().last().or(after);
                if last_page {
                    filter.set_ready();
                    return Ok((filter.len(), started.elapsed()));
                }
            }
        };
        self.spawn_contained(ctx, work, |loaded, act, ctx| match loaded {
            Ok((keys, took)) => {
                tracing::info!(unit = act.store.unit(), keys, ?took, "key filter loaded");
            }
            Err((after, e)) => {
                tracing::warn!(unit = act.store.unit(), error = %e, "loading the key filter failed; retrying in 1 s");
                ctx.run_later(Duration::from_secs(1), move |act, ctx| {
                    act.load_keys(ctx, after)
                });
            }
        });
    }

    /// Spawns `work` in the actor's own context, then runs `then` on the
    /// actor. A panic in `work` is caught: actix does not catch panics, and an
    /// uncaught one would end the actor's task, and the unit with it, for
    /// good. A caught one is logged and counted, and the actor restarts with
    /// fresh state as on [`Broken`]; the callers whose replies the panic
    /// dropped hear "in doubt", and the dispatcher settles their keys.
    fn spawn_contained<F>(
        &mut self,
        ctx: &mut Context<Self>,
        work: F,
        then: impl FnOnce(F::Output, &mut Self, &mut Context<Self>) + 'static,
    ) where
        F: Future + 'static,
    {
        let unit = self.store.unit();
        // Unwind safety: after a panic the actor restarts from fresh state,
        // and nothing the work shared with it is used again as it was.
        let work = AssertUnwindSafe(work).catch_unwind();
        ctx.spawn(work.into_actor(self).map(move |done, act, ctx| match done {
            Ok(out) => then(out, act, ctx),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .copied()
                    .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("(not a string)");
                tracing::error!(
                    unit,
                    panic = what,
                    "unit actor work panicked: restarting the unit actor"
                );
                counter!(m::UNIT_PANICS, "unit" => unit.to_string()).increment(1);
                ctx.stop(); // the Supervisor restarts it (`restarting` resets the state)
            }
        }));
    }

    /// Reads batch within the create batches' limits.
    fn call_batch_limits(&self) -> (usize, usize) {
        let gc = &self.options.group_commit;
        (gc.max_batch, gc.max_in_flight_batches)
    }

    /// Asks for the queued reads of one kind (gets or key look-ups), many
    /// per query: `queue` picks the kind's queue out of the actor, `read`
    /// asks for one batch's rows, and `pick` finds each call's answer among
    /// them.
    fn flush_reads<Q: Clone + 'static, R: 'static, F>(
        &mut self,
        ctx: &mut Context<Self>,
        queue: fn(&mut Self) -> &mut CallBatcher<Q, R>,
        read: fn(UnitStore, Vec<Q>) -> F,
        pick: fn(&Q, &[Order]) -> Result<R, StoreError>,
    ) where
        F: Future<Output = Result<Vec<Order>, StoreError>> + 'static,
    {
        let (max_batch, max_in_flight) = self.call_batch_limits();
        while let Some(batch) = queue(self).take(max_batch, max_in_flight) {
            let asked: Vec<Q> = batch.iter().map(|(q, _)| q.clone()).collect();
            let rows = read(self.store.clone(), asked);
            let work = async move { answer_all(batch, &rows.await, pick) };
            self.spawn_contained(ctx, work, move |(), act, ctx| {
                queue(act).done();
                act.flush_reads(ctx, queue, read, pick);
            });
        }
    }

    /// Writes the queued calls of one kind (pays and closes, or refunds),
    /// many per transaction (each alone when group commit is off): `queue`
    /// picks the kind's queue out of the actor, `write` writes one batch and
    /// answers each of its calls.
    fn flush_writes<Q: 'static, R: 'static, F>(
        &mut self,
        ctx: &mut Context<Self>,
        queue: fn(&mut Self) -> &mut CallBatcher<Q, R>,
        write: fn(UnitStore, Vec<Q>) -> F,
    ) where
        F: Future<Output = BatchAnswers<R>> + 'static,
    {
        let gc = &self.options.group_commit;
        let (max_batch, max_in_flight) = if gc.enabled {
            (gc.max_batch, gc.max_in_flight_batches)
        } else {
            (1, usize::MAX)
        };
        while let Some(batch) = queue(self).take(max_batch, max_in_flight) {
            let (calls, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
            let written = write(self.store.clone(), calls);
            let work = async move { answer_each(replies, written.await) };
            self.spawn_contained(ctx, work, move |(), act, ctx| {
                queue(act).done();
                act.flush_writes(ctx, queue, write);
            });
        }
    }

    /// Queues a write (see [`Self::flush_writes`]); the caller hears its own
    /// answer, or that the actor restarted while it was being written.
    fn queue_write<Q: 'static, R: 'static, F>(
        &mut self,
        ctx: &mut Context<Self>,
        queue: fn(&mut Self) -> &mut CallBatcher<Q, R>,
        write: fn(UnitStore, Vec<Q>) -> F,
        call: Q,
    ) -> ResponseFuture<Result<R, StoreError>>
    where
        F: Future<Output = BatchAnswers<R>> + 'static,
    {
        let (tx, rx) = oneshot::channel();
        queue(self).push(call, tx);
        self.flush_writes(ctx, queue, write);
        Box::pin(async move {
            rx.await
                .unwrap_or(Err(StoreError::Restarted { in_doubt: true }))
        })
    }

    /// Queues a pay or close.
    fn update(
        &mut self,
        update: OrderUpdate<'static>,
        ctx: &mut Context<Self>,
    ) -> ResponseFuture<Result<(Order, bool), StoreError>> {
        self.queue_write(ctx, |act| &mut act.updates, write_updates, update)
    }

    /// Starts batches while there are queued creates and room for another
    /// transaction: the first at once, another beside it only once
    /// `overlap_at` creates wait. With a window, a partial batch waits for
    /// company first.
    fn flush(&mut self, ctx: &mut Context<Self>, window_over: bool) {
        let gc = &self.options.group_commit;
        let (max_batch, max_in_flight) = (gc.max_batch, gc.max_in_flight_batches);
        let overlap_at = gc.overlap_at.min(max_batch);
        let window = Duration::from_micros(gc.window_us);
        while may_start_batch(
            self.batcher.pending(),
            self.batcher.in_flight,
            max_in_flight,
            overlap_at,
        ) {
            if !window_over && self.batcher.waits_for_company(window, max_batch) {
                if !self.batcher.timer_set {
                    self.batcher.timer_set = true;
                    ctx.run_later(window, |act, ctx| {
                        act.batcher.timer_set = false;
                        act.flush(ctx, true);
                    });
                }
                return;
            }
            let batch = self.batcher.take(max_batch);
            self.batcher.in_flight += 1;
            self.batch_size.record(batch.len() as f64);
            let work = run_batch(
                self.store.clone(),
                self.sequence.clone(),
                batch,
                ctx.address(),
            );
            self.spawn_contained(ctx, work, |(), act, ctx| {
                act.batcher.in_flight -= 1;
                act.flush(ctx, false);
            });
        }
    }
}

impl Actor for UnitActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Bounded on purpose: when a unit is slow, callers wait here (backpressure)
        // instead of queueing without limit.
        ctx.set_mailbox_capacity(self.options.mailbox);
        tracing::info!(unit = self.store.unit(), "unit actor started");
        self.load_keys(ctx, None);
        // Pool gauges every second; the outbox backlog (a COUNT) every 15 s.
        let mut tick = 0u64;
        ctx.run_interval(Duration::from_secs(1), move |act, ctx| {
            let unit = act.store.unit().to_string();
            let stats = act.store.pool_stats();
            let gauge_of = |state: &'static str| {
                gauge!(m::POOL_CONNECTIONS, "unit" => unit.clone(), "state" => state)
            };
            gauge_of("idle").set(f64::from(stats.idle));
            gauge_of("in_use").set(f64::from(stats.open.saturating_sub(stats.idle)));
            gauge!(m::POOL_WAITING, "unit" => unit.clone()).set(stats.waiting as f64);
            gauge!(m::POOL_MAX, "unit" => unit.clone()).set(f64::from(stats.max));
            if let Some(f) = &act.filter {
                gauge!(m::KEY_FILTER_KEYS, "unit" => unit.clone()).set(f.len() as f64);
                gauge!(m::KEY_FILTER_READY, "unit" => unit.clone())
                    .set(if f.is_ready() { 1.0 } else { 0.0 });
            }
            if tick.is_multiple_of(15) {
                let store = act.store.clone();
                let work = async move {
                    if let Ok(n) = store.outbox_backlog().await {
                        gauge!(m::OUTBOX_BACKLOG, "unit" => unit).set(n as f64);
                    }
                };
                act.spawn_contained(ctx, work, |(), _, _| {});
            }
            tick += 1;
        });
    }
}

impl Supervised for UnitActor {
    /// A restarted actor starts from fresh state: a new generator reserves a new
    /// segment (the old one's remainder is skipped, never reused).
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        tracing::warn!(unit = self.store.unit(), "unit actor restarting");
        if let Some(h) = &self.health {
            h.restarts.fetch_add(1, Ordering::Relaxed);
        }
        counter!(m::UNIT_RESTARTS, "unit" => self.store.unit().to_string()).increment(1);
        self.sequence = SequenceGenerator::new(
            self.store.clone(),
            self.options.sequence_step,
            self.options.prefetch_at_percent,
        );
        // Queued creates never reached the database; running batches were
        // dropped with the old context, and their callers hear "in doubt".
        self.batcher
            .fail_pending(StoreError::Restarted { in_doubt: false });
        self.batcher.in_flight = 0;
        self.batcher.timer_set = false;
        let restarted = StoreError::Restarted { in_doubt: false };
        self.lookups.reset(&restarted);
        self.gets.reset(&restarted);
        self.updates.reset(&restarted);
        self.refunds.reset(&restarted);
    }
}

impl Handler<CreateOrder> for UnitActor {
    type Result = ResponseFuture<Result<CreateOutcome, StoreError>>;

    fn handle(&mut self, msg: CreateOrder, ctx: &mut Self::Context) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        if self.options.group_commit.enabled {
            self.batcher.push(msg.request, tx);
            self.flush(ctx, false);
        } else {
            self.batch_size.record(1.0);
            let work = run_batch(
                self.store.clone(),
                self.sequence.clone(),
                vec![(msg.request, tx)],
                ctx.address(),
            );
            self.spawn_contained(ctx, work, |(), _, _| {});
        }
        Box::pin(async move {
            rx.await
                .unwrap_or(Err(StoreError::Restarted { in_doubt: true }))
        })
    }
}

impl Handler<BatchStats> for UnitActor {
    type Result = MessageResult<BatchStats>;

    fn handle(&mut self, _msg: BatchStats, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult((self.batcher.batches, self.batcher.orders))
    }
}

impl Handler<GetOrder> for UnitActor {
    type Result = ResponseFuture<Result<Order, StoreError>>;

    /// Reads from the primary batch like key look-ups; an eventual read with
    /// a replica to go to goes alone.
    fn handle(&mut self, msg: GetOrder, ctx: &mut Self::Context) -> Self::Result {
        if msg.consistency == Consistency::Eventual && self.store.has_replica() {
            let store = self.store.clone();
            return Box::pin(async move { store.get(msg.id, msg.consistency).await });
        }
        let (tx, rx) = oneshot::channel();
        self.gets.push(msg.id, tx);
        self.flush_reads(ctx, |act| &mut act.gets, read_orders, pick_by_id);
        Box::pin(async move {
            rx.await
                .unwrap_or(Err(StoreError::Restarted { in_doubt: false }))
        })
    }
}

impl Handler<FindByKey> for UnitActor {
    type Result = ResponseFuture<Result<Option<Order>, StoreError>>;

    /// Look-ups batch (see `call_batch`): while `max_in_flight_batches`
    /// queries run, new keys queue and are asked together in one query.
    fn handle(&mut self, msg: FindByKey, ctx: &mut Self::Context) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.lookups.push((msg.merchant_id, msg.out_trade_no), tx);
        self.flush_reads(ctx, |act| &mut act.lookups, read_keys, pick_by_key);
        Box::pin(async move {
            rx.await
                .unwrap_or(Err(StoreError::Restarted { in_doubt: false }))
        })
    }
}

impl Handler<PayOrder> for UnitActor {
    type Result = ResponseFuture<Result<(Order, bool), StoreError>>;

    fn handle(&mut self, msg: PayOrder, ctx: &mut Self::Context) -> Self::Result {
        let update = OrderUpdate {
            id: msg.id,
            event: "order.paid",
            change: Box::new(move |order, now| {
                order.pay(&msg.payment_ref, msg.amount, msg.expected_version, now)
            }),
        };
        self.update(update, ctx)
    }
}

impl Handler<CloseOrder> for UnitActor {
    type Result = ResponseFuture<Result<(Order, bool), StoreError>>;

    fn handle(&mut self, msg: CloseOrder, ctx: &mut Self::Context) -> Self::Result {
        let update = OrderUpdate {
            id: msg.id,
            event: "order.closed",
            change: Box::new(move |order, now| order.close(msg.expected_version, now)),
        };
        self.update(update, ctx)
    }
}

impl Handler<RefundOrder> for UnitActor {
    type Result = ResponseFuture<Result<(Refund, Order, bool), StoreError>>;

    fn handle(&mut self, msg: RefundOrder, ctx: &mut Self::Context) -> Self::Result {
        let refund = RefundRequest {
            id: msg.id,
            refund: msg.refund,
            expected_version: msg.expected_version,
        };
        self.queue_write(ctx, |act| &mut act.refunds, write_refunds, refund)
    }
}

impl Handler<ListRefunds> for UnitActor {
    type Result = ResponseFuture<Result<Vec<Refund>, StoreError>>;

    fn handle(&mut self, msg: ListRefunds, _ctx: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        Box::pin(async move { store.list_refunds(msg.id).await })
    }
}

impl Handler<ListUserOrders> for UnitActor {
    type Result = ResponseFuture<Result<Page, StoreError>>;

    fn handle(&mut self, msg: ListUserOrders, _ctx: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        Box::pin(async move {
            store
                .list_user_orders(&msg.user_id, msg.after, msg.limit)
                .await
        })
    }
}

impl Handler<Probe> for UnitActor {
    type Result = ResponseFuture<Result<(), StoreError>>;

    fn handle(&mut self, msg: Probe, _ctx: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        Box::pin(async move { store.probe(msg.token).await })
    }
}

impl Handler<SettleKey> for UnitActor {
    type Result = ResponseFuture<Result<Option<Order>, StoreError>>;

    fn handle(&mut self, msg: SettleKey, _ctx: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        Box::pin(async move {
            store
                .find_by_key_settled(&msg.merchant_id, &msg.out_trade_no)
                .await
        })
    }
}

impl Handler<Broken> for UnitActor {
    type Result = ();

    fn handle(&mut self, msg: Broken, ctx: &mut Self::Context) {
        tracing::error!(unit = self.store.unit(), reason = %msg.reason, "unit state broken: restarting the unit actor");
        ctx.stop(); // the Supervisor restarts it (`restarting` resets the state)
    }
}

impl Handler<CloseUnit> for UnitActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _msg: CloseUnit, _ctx: &mut Self::Context) -> Self::Result {
        // The actor itself stops with its arbiter: a supervised actor that stopped
        // here would only be restarted.
        let store = self.store.clone();
        Box::pin(async move {
            store.close().await;
            tracing::info!(unit = store.unit(), "unit pools closed");
        })
    }
}
