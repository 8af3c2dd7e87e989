//! One handler per message. Creates, gets, key look-ups, pays, closes and
//! refunds queue for a batch (`batching.rs`); the rest run alone, as
//! `ResponseFuture`s that clone the store in.

use actix::prelude::*;
use tokio::sync::oneshot;

use super::actor::UnitActor;
use super::batching::{pick_by_id, pick_by_key, read_keys, read_orders};
use super::group_commit::run_batch;
use super::messages::{
    BatchCounts, BatchStats, CloseOrder, CloseUnit, CreateOrder, CreateOutcome, FindByKey,
    GetOrder, ListRefunds, ListUserOrders, PayOrder, Probe, RefundOrder, SettleKey,
};
use crate::domain::apply::{RefundUpdate, Refunded, Update, UpdateAction, Updated};
use crate::domain::{Consistency, Order, Refund};
use crate::storage::{Page, StoreError};

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
            );
            self.spawn_contained(ctx, work, |ran, act, ctx| {
                if let Err(broken) = ran {
                    act.restart_broken(ctx, &broken.reason);
                }
            });
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
        MessageResult(BatchCounts {
            batches: self.batcher.batches,
            orders: self.batcher.orders,
        })
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
        self.queue_read(ctx, |act| &mut act.gets, read_orders, pick_by_id, msg.id)
    }
}

impl Handler<FindByKey> for UnitActor {
    type Result = ResponseFuture<Result<Option<Order>, StoreError>>;

    /// Look-ups batch (see `call_batch.rs`): while `max_in_flight_batches`
    /// queries run, new keys queue and are asked together in one query.
    fn handle(&mut self, msg: FindByKey, ctx: &mut Self::Context) -> Self::Result {
        let key = (msg.merchant_id, msg.out_trade_no);
        self.queue_read(ctx, |act| &mut act.lookups, read_keys, pick_by_key, key)
    }
}

impl Handler<PayOrder> for UnitActor {
    type Result = ResponseFuture<Result<Updated, StoreError>>;

    fn handle(&mut self, msg: PayOrder, ctx: &mut Self::Context) -> Self::Result {
        let update = Update {
            id: msg.id,
            action: UpdateAction::Pay {
                payment_ref: msg.payment_ref,
                amount: msg.amount,
            },
            expected_version: msg.expected_version,
        };
        self.update(ctx, update)
    }
}

impl Handler<CloseOrder> for UnitActor {
    type Result = ResponseFuture<Result<Updated, StoreError>>;

    fn handle(&mut self, msg: CloseOrder, ctx: &mut Self::Context) -> Self::Result {
        let update = Update {
            id: msg.id,
            action: UpdateAction::Close,
            expected_version: msg.expected_version,
        };
        self.update(ctx, update)
    }
}

impl Handler<RefundOrder> for UnitActor {
    type Result = ResponseFuture<Result<Refunded, StoreError>>;

    fn handle(&mut self, msg: RefundOrder, ctx: &mut Self::Context) -> Self::Result {
        let refund = RefundUpdate {
            id: msg.id,
            refund: msg.refund,
            expected_version: msg.expected_version,
        };
        self.refund(ctx, refund)
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
