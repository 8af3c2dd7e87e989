//! The unit actor: one per trading unit. It owns the unit's database pools and
//! its sequence generator, and knows nothing about other units, so a unit's
//! trouble stays inside the unit (fault containment).
//!
//! Handlers return `ResponseFuture`s that clone the store into the future: the
//! database work of many requests overlaps, while the actor itself only hands
//! work out. The actor runs on its own arbiter (thread), so one slow unit does
//! not slow the others' bookkeeping.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use std::time::Duration;

use actix::prelude::*;
use metrics::{counter, gauge};

use super::health::UnitHealth;
use crate::metrics as m;

use crate::domain::values::{MerchantId, OutTradeNo, PaymentRef, UserId};
use crate::domain::{NewOrder, NewRefund, Order, OrderId, Refund};
use crate::storage::sequence::SequenceGenerator;
use crate::storage::{Consistency, InsertOutcome, Page, StoreError, UnitStore, UserCursor, now_ms};

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
struct Broken {
    reason: String,
}

/// Close the unit's pools (shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseUnit;

pub struct UnitActor {
    store: UnitStore,
    health: Option<Arc<UnitHealth>>,
    sequence: SequenceGenerator,
    sequence_step: u64,
    prefetch_at_percent: u8,
    mailbox: usize,
}

impl UnitActor {
    pub fn new(
        store: UnitStore,
        sequence_step: u64,
        prefetch_at_percent: u8,
        mailbox: usize,
        health: Option<Arc<UnitHealth>>,
    ) -> Self {
        Self {
            health,
            sequence: SequenceGenerator::new(store.clone(), sequence_step, prefetch_at_percent),
            store,
            sequence_step,
            prefetch_at_percent,
            mailbox,
        }
    }
}

impl Actor for UnitActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Bounded on purpose: when a unit is slow, callers wait here (backpressure)
        // instead of queueing without limit.
        ctx.set_mailbox_capacity(self.mailbox);
        tracing::info!(unit = self.store.unit(), "unit actor started");
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
            if tick.is_multiple_of(15) {
                let store = act.store.clone();
                ctx.spawn(
                    async move {
                        if let Ok(n) = store.outbox_backlog().await {
                            gauge!(m::OUTBOX_BACKLOG, "unit" => unit).set(n as f64);
                        }
                    }
                    .into_actor(act),
                );
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
            self.sequence_step,
            self.prefetch_at_percent,
        );
    }
}

impl Handler<CreateOrder> for UnitActor {
    type Result = ResponseFuture<Result<CreateOutcome, StoreError>>;

    fn handle(&mut self, msg: CreateOrder, ctx: &mut Self::Context) -> Self::Result {
        let (store, sequence) = (self.store.clone(), self.sequence.clone());
        let me = ctx.address();
        Box::pin(async move {
            let seq = sequence.next().await?;
            let now = now_ms();
            let id = OrderId::new(store.unit(), now.div_euclid(1000), seq)
                .ok_or(StoreError::SequenceExhausted)?;
            let request = msg.request;
            let order = request.clone().into_order(id, now);
            let inserted = store.insert_order(&order).await;
            if let Err(e @ StoreError::SequenceReused { .. }) = &inserted {
                me.do_send(Broken {
                    reason: e.to_string(),
                });
            }
            Ok(match inserted? {
                InsertOutcome::Inserted => CreateOutcome::Created(order),
                InsertOutcome::KeyExists(existing) if request.is_replay_of(&existing) => {
                    CreateOutcome::Replayed(*existing)
                }
                InsertOutcome::KeyExists(_) => CreateOutcome::KeyConflict,
            })
        })
    }
}

impl Handler<GetOrder> for UnitActor {
    type Result = ResponseFuture<Result<Order, StoreError>>;

    fn handle(&mut self, msg: GetOrder, _ctx: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        Box::pin(async move { store.get(msg.id, msg.consistency).await })
    }
}

impl Handler<FindByKey> for UnitActor {
    type Result = ResponseFuture<Result<Option<Order>, StoreError>>;

    fn handle(&mut self, msg: FindByKey, _ctx: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        Box::pin(async move { store.find_by_key(&msg.merchant_id, &msg.out_trade_no).await })
    }
}

impl Handler<PayOrder> for UnitActor {
    type Result = ResponseFuture<Result<(Order, bool), StoreError>>;

    fn handle(&mut self, msg: PayOrder, _ctx: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        Box::pin(async move {
            store
                .update_order(msg.id, "order.paid", |order, now| {
                    order.pay(&msg.payment_ref, msg.amount, msg.expected_version, now)
                })
                .await
        })
    }
}

impl Handler<CloseOrder> for UnitActor {
    type Result = ResponseFuture<Result<(Order, bool), StoreError>>;

    fn handle(&mut self, msg: CloseOrder, _ctx: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        Box::pin(async move {
            store
                .update_order(msg.id, "order.closed", |order, now| {
                    order.close(msg.expected_version, now)
                })
                .await
        })
    }
}

impl Handler<RefundOrder> for UnitActor {
    type Result = ResponseFuture<Result<(Refund, Order, bool), StoreError>>;

    fn handle(&mut self, msg: RefundOrder, _ctx: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        Box::pin(async move {
            store
                .refund(msg.id, &msg.refund, msg.expected_version)
                .await
        })
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
