//! One handler per message. Creates, gets, key look-ups, pays, closes and
//! refunds queue for a batch (`batching.rs`); the rest run alone, as
//! `ResponseFuture`s that clone the store in.

use std::sync::atomic::Ordering;

use actix::prelude::*;
use tokio::sync::oneshot;

use super::actor::UnitActor;
use super::batching::{pick_by_id, pick_by_key, read_keys, read_orders};
use super::group_commit::{Batch, run_batch};
use super::messages::{
    BatchCounts, BatchStats, CheckReplica, ClaimKey, CloseOrder, CloseUnit, CreateOrder,
    CreateOutcome, FenceWrites, FindByKey, GetOrder, ListRefunds, ListUserOrders, PayOrder, Probe,
    ReadMark, RefundOrder, ReplaceMark, SetOrderSection, SettleKey, SettleMeta,
};
use crate::domain::apply::{RefundUpdate, Refunded, Update, UpdateAction, Updated};
use crate::domain::key_homes::Mark;
use crate::domain::{Consistency, Order, Refund};
use crate::metrics as m;
use crate::storage::{KeyClaim, Page, ReplicaHealth, Settled, StoreError};
use metrics::counter;

impl Handler<CreateOrder> for UnitActor {
    type Result = ResponseFuture<Result<CreateOutcome, StoreError>>;

    fn handle(&mut self, msg: CreateOrder, ctx: &mut Self::Context) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        if self.options.group_commit.enabled {
            self.batcher.push(msg.request, msg.attempt, tx);
            self.flush(ctx, false);
        } else {
            self.batch_size.record(1.0);
            let work = run_batch(
                self.store.clone(),
                self.sequence.clone(),
                Batch::create(msg.request, msg.attempt, tx),
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
    /// a replica to go to goes alone (see `storage/replica.rs`).
    fn handle(&mut self, msg: GetOrder, ctx: &mut Self::Context) -> Self::Result {
        if msg.consistency == Consistency::Eventual && self.store.has_replica() {
            let store = self.store.clone();
            return Box::pin(async move {
                let (order, served_by) = store.get_eventual(msg.id, msg.wait_for.as_ref()).await?;
                let unit = store.unit().to_string();
                counter!(m::EVENTUAL_READS, "unit" => unit, "served_by" => served_by.as_str())
                    .increment(1);
                Ok(order)
            });
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

impl Handler<SetOrderSection> for UnitActor {
    type Result = ResponseFuture<Result<Updated, StoreError>>;

    fn handle(&mut self, msg: SetOrderSection, ctx: &mut Self::Context) -> Self::Result {
        let update = Update {
            id: msg.id,
            action: UpdateAction::SetSection {
                name: msg.name,
                value: msg.value,
            },
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

impl Handler<CheckReplica> for UnitActor {
    type Result = ();

    fn handle(&mut self, _msg: CheckReplica, ctx: &mut Self::Context) {
        if self.checking_replica || self.closed || !self.store.has_replica() {
            return;
        }
        self.checking_replica = true;
        let store = self.store.clone();
        let check = async move { store.check_replicas().await };
        ctx.spawn(check.into_actor(self).map(|health, act, _| {
            act.checking_replica = false;
            if act.closed {
                return;
            }
            for (i, h) in health.into_iter().enumerate() {
                let lag = match h {
                    ReplicaHealth::Unknown => continue,
                    ReplicaHealth::Reachable { lag_ms } => Some(lag_ms),
                    ReplicaHealth::Unreachable { .. } => None,
                };
                crate::metrics::record_replica(act.store.unit(), i, lag);
            }
        }));
    }
}

impl Handler<SettleKey> for UnitActor {
    type Result = ResponseFuture<Result<Settled, StoreError>>;

    fn handle(&mut self, msg: SettleKey, _ctx: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        Box::pin(async move { store.settle_key(&msg.key, msg.attempt).await })
    }
}

impl Handler<ClaimKey> for UnitActor {
    type Result = ResponseFuture<Result<Mark, StoreError>>;

    fn handle(&mut self, msg: ClaimKey, ctx: &mut Self::Context) -> Self::Result {
        let claim = KeyClaim {
            key: msg.key,
            mark: msg.mark,
        };
        let (tx, rx) = oneshot::channel();
        self.batcher.push_claim(claim, tx);
        self.flush(ctx, false);
        Box::pin(async move {
            rx.await
                .unwrap_or(Err(StoreError::Restarted { in_doubt: true }))
        })
    }
}

impl Handler<ReplaceMark> for UnitActor {
    type Result = ResponseFuture<Result<bool, StoreError>>;

    fn handle(&mut self, msg: ReplaceMark, _ctx: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        Box::pin(async move { store.replace_mark(&msg.key, msg.from, msg.to).await })
    }
}

impl Handler<ReadMark> for UnitActor {
    type Result = ResponseFuture<Result<Option<Mark>, StoreError>>;

    fn handle(&mut self, msg: ReadMark, _ctx: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        Box::pin(async move { store.read_mark(&msg.key).await })
    }
}

impl Handler<SettleMeta> for UnitActor {
    type Result = ResponseFuture<Result<Option<String>, StoreError>>;

    fn handle(&mut self, msg: SettleMeta, _ctx: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        Box::pin(async move {
            match msg.proposed {
                Some(proposed) => store.settle_meta(msg.name, &proposed).await.map(Some),
                None => store.read_meta(msg.name).await,
            }
        })
    }
}

impl Handler<FenceWrites> for UnitActor {
    type Result = ();

    fn handle(&mut self, msg: FenceWrites, ctx: &mut Self::Context) {
        if let Some(waiting) = self.fence.take() {
            ctx.cancel_future(waiting);
        }
        let unit = self.store.unit();
        let fenced = |act: &Self, on: bool| {
            if let Some(h) = &act.health {
                h.writes_fenced.store(on, Ordering::Release);
            }
        };
        if !msg.on {
            self.store.fence_writes(false);
            fenced(self, false);
            return;
        }
        // No new write transaction after `after`; the ones that began
        // before are over (committed, failed or timed out) two statement
        // timeouts later, and only then is the database said to be fenced.
        let drained = self.store.statement_timeout() * 2;
        self.fence = Some(ctx.run_later(msg.after, move |act, ctx| {
            act.store.fence_writes(true);
            act.fence = Some(ctx.run_later(drained, move |act, _| {
                act.fence = None;
                fenced(act, true);
                tracing::info!(
                    unit,
                    "unit disabled: its database takes no more writes from this process"
                );
            }));
        }));
    }
}

impl Handler<CloseUnit> for UnitActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _msg: CloseUnit, ctx: &mut Self::Context) -> Self::Result {
        // A supervised actor that stopped here would only be restarted: it
        // stops once nothing holds its address and nothing runs in it.
        self.closed = true;
        for timer in [self.gauges.take(), self.relay.take()]
            .into_iter()
            .flatten()
        {
            ctx.cancel_future(timer);
        }
        let store = self.store.clone();
        Box::pin(async move {
            store.close().await;
            tracing::info!(unit = store.unit(), "unit pools closed");
        })
    }
}
