//! How the unit actor batches its calls: reads of one kind (gets, key
//! look-ups) share a query, writes of one kind (pays and closes, refunds)
//! share a transaction, and creates go in group-commit batches. The queues
//! are `call_batch.rs` and `group_commit.rs`; this is where batches leave
//! them and their answers come back.

use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;

use super::actor::{Key, UnitActor};
use super::call_batch::{CallBatcher, answer_all, answer_each};
use super::group_commit::{may_start_batch, run_batch};
use crate::domain::apply::{RefundUpdate, Refunded, Update, Updated};
use crate::domain::{Order, OrderId};
use crate::storage::{BatchAnswers, StoreError, UnitStore};

pub(super) async fn read_keys(store: UnitStore, keys: Vec<Key>) -> Result<Vec<Order>, StoreError> {
    store.find_by_keys(&keys).await
}

pub(super) fn pick_by_key(
    (merchant, out_trade_no): &Key,
    orders: &[Order],
) -> Result<Option<Order>, StoreError> {
    Ok(orders
        .iter()
        .find(|o| &o.merchant_id == merchant && &o.out_trade_no == out_trade_no)
        .cloned())
}

pub(super) async fn read_orders(
    store: UnitStore,
    ids: Vec<OrderId>,
) -> Result<Vec<Order>, StoreError> {
    store.get_many(&ids).await
}

pub(super) fn pick_by_id(id: &OrderId, orders: &[Order]) -> Result<Order, StoreError> {
    orders
        .iter()
        .find(|o| o.id == *id)
        .cloned()
        .ok_or(StoreError::NotFound)
}

async fn write_updates(store: UnitStore, updates: Vec<Update>) -> BatchAnswers<Updated> {
    store.update_orders(updates).await
}

async fn write_refunds(store: UnitStore, refunds: Vec<RefundUpdate>) -> BatchAnswers<Refunded> {
    store.refund_orders(refunds).await
}

impl UnitActor {
    /// Reads batch within the create batches' limits.
    fn call_batch_limits(&self) -> (usize, usize) {
        let gc = &self.options.group_commit;
        (gc.max_batch, gc.max_in_flight_batches)
    }

    /// Queues a read of one kind (see [`Self::flush_reads`]); the caller
    /// hears its own answer, or that the actor restarted.
    pub(super) fn queue_read<Q: Clone + 'static, R: 'static, F>(
        &mut self,
        ctx: &mut Context<Self>,
        queue: fn(&mut Self) -> &mut CallBatcher<Q, R>,
        read: fn(UnitStore, Vec<Q>) -> F,
        pick: fn(&Q, &[Order]) -> Result<R, StoreError>,
        call: Q,
    ) -> ResponseFuture<Result<R, StoreError>>
    where
        F: Future<Output = Result<Vec<Order>, StoreError>> + 'static,
    {
        let (tx, rx) = oneshot::channel();
        queue(self).push(call, tx);
        self.flush_reads(ctx, queue, read, pick);
        Box::pin(async move {
            rx.await
                .unwrap_or(Err(StoreError::Restarted { in_doubt: false }))
        })
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
    pub(super) fn update(
        &mut self,
        ctx: &mut Context<Self>,
        update: Update,
    ) -> ResponseFuture<Result<Updated, StoreError>> {
        self.queue_write(ctx, |act| &mut act.updates, write_updates, update)
    }

    /// Queues a refund.
    pub(super) fn refund(
        &mut self,
        ctx: &mut Context<Self>,
        refund: RefundUpdate,
    ) -> ResponseFuture<Result<Refunded, StoreError>> {
        self.queue_write(ctx, |act| &mut act.refunds, write_refunds, refund)
    }

    /// Starts batches while there are queued creates and room for another
    /// transaction: the first at once, another beside it only once
    /// `overlap_at` creates wait. With a window, a partial batch waits for
    /// company first.
    pub(super) fn flush(&mut self, ctx: &mut Context<Self>, window_over: bool) {
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
            if !batch.creates.is_empty() {
                self.batch_size.record(batch.creates.len() as f64);
            }
            let work = run_batch(self.store.clone(), self.sequence.clone(), batch);
            self.spawn_contained(ctx, work, |ran, act, ctx| {
                act.batcher.in_flight -= 1;
                match ran {
                    Ok(()) => act.flush(ctx, false),
                    Err(broken) => act.restart_broken(ctx, &broken.reason),
                }
            });
        }
    }
}
