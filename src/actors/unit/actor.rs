//! The unit actor's state, its start (mailbox, gauges), its
//! restart with fresh state, and the one place where work it runs in its own
//! context is started: [`UnitActor::spawn_contained`], which catches panics.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use actix::prelude::*;
use futures_util::FutureExt;
use metrics::{counter, gauge};

use super::call_batch::CallBatcher;
use super::group_commit::Batcher;
use crate::actors::health::UnitHealth;
use crate::config::GroupCommitSettings;
use crate::domain::apply::{RefundUpdate, Refunded, Update, Updated};
use crate::domain::values::{MerchantId, OutTradeNo};
use crate::domain::{Order, OrderId};
use crate::metrics as m;
use crate::relay::Sink;
use crate::storage::sequence::SequenceGenerator;
use crate::storage::{StoreError, UnitStore};

/// An idempotency key: `(merchant_id, out_trade_no)`.
pub(super) type Key = (MerchantId, OutTradeNo);

/// How a unit actor runs (from the settings).
#[derive(Debug, Clone)]
pub struct UnitOptions {
    pub sequence_step: u64,
    pub prefetch_at_percent: u8,
    pub mailbox: usize,
    pub group_commit: GroupCommitSettings,
    /// The outbox relay (`None`: events stay in the outbox).
    pub relay: Option<RelayOptions>,
}

/// How a unit's relay runs (from `[events]`).
#[derive(Debug, Clone)]
pub struct RelayOptions {
    pub sink: Arc<Sink>,
    /// This process, as the lease names it.
    pub holder: String,
    pub poll: Duration,
    pub batch: u32,
    pub lease_ms: u64,
    pub retain_published_ms: u64,
}

pub struct UnitActor {
    pub(super) store: UnitStore,
    pub(super) health: Option<Arc<UnitHealth>>,
    pub(super) sequence: SequenceGenerator,
    pub(super) options: UnitOptions,
    /// Creates waiting for a batch, and the batches running.
    pub(super) batcher: Batcher,
    /// Creates per batch (the handle, not a registry look-up per batch).
    pub(super) batch_size: metrics::Histogram,
    pub(super) lookups: CallBatcher<Key, Option<Order>>,
    pub(super) gets: CallBatcher<OrderId, Order>,
    /// Pays and closes.
    pub(super) updates: CallBatcher<Update, Updated>,
    pub(super) refunds: CallBatcher<RefundUpdate, Refunded>,
    /// The gauges' timer, cancelled when the unit is closed: an actor with
    /// a timer never stops, and a closed one (a unit moved to another
    /// database, or refused) must not publish over its successor.
    pub(super) gauges: Option<SpawnHandle>,
    pub(super) closed: bool,
    /// A write fence waiting for calls in flight (cancelled by the next).
    pub(super) fence: Option<SpawnHandle>,
    /// A replica check is running (checks never pile up).
    pub(super) checking_replica: bool,
    /// A relay round is running (rounds never pile up).
    pub(super) relaying: bool,
    /// The relay's last round failed (logged once, until one succeeds).
    pub(super) relay_failing: bool,
    /// The relay's timer, cancelled when the unit is closed.
    pub(super) relay: Option<SpawnHandle>,
}

impl UnitActor {
    pub fn new(store: UnitStore, options: UnitOptions, health: Option<Arc<UnitHealth>>) -> Self {
        Self {
            health,
            sequence: SequenceGenerator::new(
                store.clone(),
                options.sequence_step,
                options.prefetch_at_percent,
            ),
            batch_size: metrics::histogram!(
                m::CREATE_BATCH_SIZE,
                "unit" => store.unit().to_string()
            ),
            store,
            options,
            batcher: Batcher::default(),
            lookups: CallBatcher::default(),
            gets: CallBatcher::default(),
            updates: CallBatcher::default(),
            refunds: CallBatcher::default(),
            gauges: None,
            closed: false,
            fence: None,
            checking_replica: false,
            relaying: false,
            relay_failing: false,
            relay: None,
        }
    }

    /// Spawns `work` in the actor's own context, then runs `then` on the
    /// actor. A panic in `work` is caught: actix does not catch panics, and an
    /// uncaught one would end the actor's task, and the unit with it, for
    /// good. A caught one is logged and counted, and the actor restarts with
    /// fresh state; the callers whose replies the panic dropped hear "in
    /// doubt", and the dispatcher settles their keys.
    pub(super) fn spawn_contained<F>(
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

    /// The unit's state is broken (its sequence handed out a number an order
    /// already has): stop, and the Supervisor restarts the actor with fresh
    /// state, whose new generator first moves past every stored order.
    pub(super) fn restart_broken(&mut self, ctx: &mut Context<Self>, reason: &str) {
        tracing::error!(
            unit = self.store.unit(),
            reason,
            "unit state broken: restarting the unit actor"
        );
        ctx.stop();
    }

    /// Publishes the unit's pool gauges, and every 15th call
    /// its outbox backlog (a query).
    fn publish_gauges(&mut self, ctx: &mut Context<Self>, tick: u64) {
        let unit = self.store.unit().to_string();
        let stats = self.store.pool_stats();
        let gauge_of = |state: &'static str| gauge!(m::POOL_CONNECTIONS, "unit" => unit.clone(), "state" => state);
        gauge_of("idle").set(f64::from(stats.idle));
        gauge_of("in_use").set(f64::from(stats.open.saturating_sub(stats.idle)));
        gauge!(m::POOL_WAITING, "unit" => unit.clone()).set(stats.waiting as f64);
        gauge!(m::POOL_MAX, "unit" => unit.clone()).set(f64::from(stats.max));
        if tick.is_multiple_of(15) {
            let store = self.store.clone();
            let work = async move {
                if let Ok(n) = store.outbox_backlog().await {
                    gauge!(m::OUTBOX_BACKLOG, "unit" => unit).set(n as f64);
                }
            };
            self.spawn_contained(ctx, work, |(), _, _| {});
        }
    }
}

impl Actor for UnitActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Bounded on purpose: when a unit is slow, callers wait here (backpressure)
        // instead of queueing without limit.
        ctx.set_mailbox_capacity(self.options.mailbox);
        if self.closed {
            return;
        }
        tracing::info!(unit = self.store.unit(), "unit actor started");
        let mut tick = 0u64;
        self.gauges = Some(ctx.run_interval(Duration::from_secs(1), move |act, ctx| {
            act.publish_gauges(ctx, tick);
            tick += 1;
        }));
        if let Some(relay) = &self.options.relay {
            self.relay = Some(ctx.run_interval(relay.poll, |act, ctx| act.relay_round(ctx)));
        }
    }
}

impl Supervised for UnitActor {
    /// A restarted actor starts from fresh state: a new generator reserves a new
    /// segment (the old one's remainder is skipped, never reused).
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        tracing::warn!(unit = self.store.unit(), "unit actor restarting");
        if self.fence.take().is_some() {
            // A restart drops the waiting fence: put it up now instead (the
            // restart ended every transaction this actor had begun).
            self.store.fence_writes(true);
            if let Some(h) = &self.health {
                h.writes_fenced.store(true, Ordering::Release);
            }
        }
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
        // Work of the old context (a relay round, a replica check) was
        // dropped with it.
        self.relaying = false;
        self.checking_replica = false;
        let restarted = StoreError::Restarted { in_doubt: false };
        self.lookups.reset(&restarted);
        self.gets.reset(&restarted);
        self.updates.reset(&restarted);
        self.refunds.reset(&restarted);
    }
}
