//! The dispatcher actor: the only way into the units.
//!
//! A create chooses a healthy unit (the merchant's partition, then weighted
//! power of two choices on recent creates) and the unit writes its own number
//! into the new order id; failed creates are retried elsewhere only when
//! certainly uncommitted (`create.rs`). Every other call parses the unit out of
//! the id and goes straight there; reads and updates never move to another
//! unit, and a unit whose circuit is open fails them fast. Look-ups by
//! merchant key and user lists fan out to every unit in parallel.
//!
//! The dispatcher runs sharded: one instance per HTTP worker thread (started
//! on that worker's arbiter, so a request reaches it without a thread hop),
//! plus one on the system arbiter for status and shutdown. The shards share
//! one routing table (read without a lock, `routing.rs`) and one set of
//! per-key locks (a mutex held for a map operation only, never across an
//! await).
//! Health comes from the supervisor's [`HealthBoard`] without a round trip.

mod calls;
mod create;
mod routing;
mod status;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::future::join_all;

pub use calls::{CallError, UnitCalls};
pub use routing::UnitRoute;
pub use status::{EngineStatus, PartitionStatus, UnitStatus};

use self::create::{CreateContext, find_key};
use self::routing::{InDoubt, Routing, SharedRouting};
use super::health::HealthBoard;
use super::key_lock::KeyLocks;
use super::supervisor::Supervisor;
use super::unit::{
    CloseOrder, CloseUnit, GetOrder, ListRefunds, ListUserOrders, PayOrder, RefundOrder, UnitActor,
};
use crate::config::Settings;
use crate::domain::key_filter::KeyHash;
use crate::domain::values::{MerchantId, OutTradeNo, UserId};
use crate::domain::{NewOrder, Order, OrderId, Refund};
use crate::error::EngineError;
use crate::storage::{StoreError, UserCursor};

/// A create's result: the order and whether it already existed.
#[derive(Debug)]
pub struct Created {
    pub order: Order,
    pub replayed: bool,
}

/// Create an order (idempotent on `(merchant_id, out_trade_no)`).
#[derive(Message)]
#[rtype(result = "Result<Created, EngineError>")]
pub struct Create {
    pub request: NewOrder,
}

/// Read an order from its unit.
#[derive(Message)]
#[rtype(result = "Result<Order, EngineError>")]
pub struct Get {
    pub id: OrderId,
    pub consistency: crate::storage::Consistency,
}

/// Pay an order; `(order, changed)`.
#[derive(Message)]
#[rtype(result = "Result<(Order, bool), EngineError>")]
pub struct Pay(pub PayOrder);

/// Close an order; `(order, changed)`.
#[derive(Message)]
#[rtype(result = "Result<(Order, bool), EngineError>")]
pub struct Close(pub CloseOrder);

/// Refund an order; `(refund, order, created)`.
#[derive(Message)]
#[rtype(result = "Result<(Refund, Order, bool), EngineError>")]
pub struct RefundCall(pub RefundOrder);

/// An order's refunds.
#[derive(Message)]
#[rtype(result = "Result<Vec<Refund>, EngineError>")]
pub struct Refunds(pub ListRefunds);

/// Find an order by the merchant's own number, asking every unit.
#[derive(Message)]
#[rtype(result = "Result<Order, EngineError>")]
pub struct LookupByKey {
    pub merchant_id: MerchantId,
    pub out_trade_no: OutTradeNo,
}

/// A page of a user's orders across all units, newest first.
#[derive(Message)]
#[rtype(result = "Result<UserPage, EngineError>")]
pub struct ListUser {
    pub user_id: UserId,
    pub after: Option<UserCursor>,
    pub limit: u32,
}

#[derive(Debug)]
pub struct UserPage {
    pub orders: Vec<Order>,
    pub next: Option<UserCursor>,
}

/// The routing table with live health (for `/readyz` and `/admin/units`).
#[derive(Message)]
#[rtype(result = "EngineStatus")]
pub struct Status;

/// Close every unit's pools (graceful shutdown, after the HTTP server drained).
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseAll;

/// One dispatcher shard; `clone()` makes another shard over the same state.
#[derive(Clone)]
pub struct Dispatcher {
    routing: SharedRouting,
    key_locks: KeyLocks<KeyHash>,
    calls: UnitCalls,
    max_attempts: u32,
}

impl Dispatcher {
    pub fn new(
        settings: &Settings,
        units: Vec<UnitRoute>,
        board: Arc<HealthBoard>,
        supervisor: Addr<Supervisor>,
    ) -> Self {
        Self {
            routing: Arc::new(Routing {
                units: units.into_iter().map(|u| (u.settings.id, u)).collect(),
                merchants: settings.merchants.clone(),
                partitions: settings.partitions.clone(),
                default_partition: settings.dispatcher.default_partition.clone(),
                started: Instant::now(),
                in_doubt: InDoubt::new(Duration::from_secs(settings.dispatcher.in_doubt_ttl_secs)),
            }),
            key_locks: KeyLocks::default(),
            calls: UnitCalls {
                board,
                supervisor,
                timeout: Duration::from_millis(settings.server.request_timeout_ms),
                metrics: Arc::new(
                    settings
                        .units
                        .iter()
                        .map(|u| (u.id, crate::metrics::UnitCallMetrics::new(u.id)))
                        .collect(),
                ),
            },
            max_attempts: settings.dispatcher.max_attempts,
        }
    }

    /// Sends `msg` to the unit that holds `id`'s order.
    fn forward<M, R>(&self, id: OrderId, msg: M) -> ResponseFuture<Result<R, EngineError>>
    where
        M: Message<Result = Result<R, StoreError>> + Send + 'static,
        R: Send + 'static,
        UnitActor: Handler<M>,
    {
        let unit = id.unit();
        let addr = self.routing.route(unit);
        let calls = self.calls.clone();
        Box::pin(async move { calls.forward(unit, &addr?, msg).await })
    }
}

impl Actor for Dispatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Every request passes through here; the mailbox only bounds bursts.
        ctx.set_mailbox_capacity(16_384);
    }
}

impl Handler<Create> for Dispatcher {
    type Result = ResponseFuture<Result<Created, EngineError>>;

    fn handle(&mut self, msg: Create, _ctx: &mut Self::Context) -> Self::Result {
        let create = CreateContext {
            routing: self.routing.clone(),
            locks: self.key_locks.clone(),
            calls: self.calls.clone(),
            max_attempts: self.max_attempts,
        };
        Box::pin(create.create(msg.request))
    }
}

impl Handler<Get> for Dispatcher {
    type Result = ResponseFuture<Result<Order, EngineError>>;

    fn handle(&mut self, msg: Get, _ctx: &mut Self::Context) -> Self::Result {
        self.forward(
            msg.id,
            GetOrder {
                id: msg.id,
                consistency: msg.consistency,
            },
        )
    }
}

impl Handler<Pay> for Dispatcher {
    type Result = ResponseFuture<Result<(Order, bool), EngineError>>;

    fn handle(&mut self, msg: Pay, _ctx: &mut Self::Context) -> Self::Result {
        self.forward(msg.0.id, msg.0)
    }
}

impl Handler<Close> for Dispatcher {
    type Result = ResponseFuture<Result<(Order, bool), EngineError>>;

    fn handle(&mut self, msg: Close, _ctx: &mut Self::Context) -> Self::Result {
        self.forward(msg.0.id, msg.0)
    }
}

impl Handler<RefundCall> for Dispatcher {
    type Result = ResponseFuture<Result<(Refund, Order, bool), EngineError>>;

    fn handle(&mut self, msg: RefundCall, _ctx: &mut Self::Context) -> Self::Result {
        self.forward(msg.0.id, msg.0)
    }
}

impl Handler<Refunds> for Dispatcher {
    type Result = ResponseFuture<Result<Vec<Refund>, EngineError>>;

    fn handle(&mut self, msg: Refunds, _ctx: &mut Self::Context) -> Self::Result {
        self.forward(msg.0.id, msg.0)
    }
}

impl Handler<LookupByKey> for Dispatcher {
    type Result = ResponseFuture<Result<Order, EngineError>>;

    fn handle(&mut self, msg: LookupByKey, _ctx: &mut Self::Context) -> Self::Result {
        let targets = self.routing.lookup_targets();
        let calls = self.calls.clone();
        Box::pin(async move {
            let search = find_key(&calls, &targets, &(msg.merchant_id, msg.out_trade_no)).await;
            match (search.found, search.unanswered.first()) {
                (Some(order), _) => Ok(order),
                // A unit that could hold the order did not answer: "not found"
                // would not be trustworthy.
                (None, Some(&unit)) => Err(EngineError::UnitUnavailable { unit }),
                (None, None) => Err(EngineError::NotFound),
            }
        })
    }
}

impl Handler<ListUser> for Dispatcher {
    type Result = ResponseFuture<Result<UserPage, EngineError>>;

    fn handle(&mut self, msg: ListUser, _ctx: &mut Self::Context) -> Self::Result {
        let targets = self.routing.lookup_targets();
        let calls = self.calls.clone();
        Box::pin(async move {
            let limit = msg.limit as usize;
            // One more than a page from each unit tells whether another page exists.
            let ask = ListUserOrders {
                user_id: msg.user_id,
                after: msg.after,
                limit: msg.limit + 1,
            };
            let pages = join_all(
                targets
                    .iter()
                    .map(|(unit, addr)| calls.forward(*unit, addr, ask.clone())),
            )
            .await;
            let mut orders = Vec::new();
            for page in pages {
                orders.extend(page?.orders);
            }
            orders.sort_by_key(|o| std::cmp::Reverse((o.created_at_ms, o.id)));
            let more = orders.len() > limit;
            orders.truncate(limit);
            let next = more.then(|| orders.last()).flatten().map(|o| UserCursor {
                created_at_ms: o.created_at_ms,
                order_id: o.id,
            });
            Ok(UserPage { orders, next })
        })
    }
}

impl Handler<Status> for Dispatcher {
    type Result = MessageResult<Status>;

    fn handle(&mut self, _msg: Status, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(status::snapshot(&self.routing, &self.calls.board))
    }
}

impl Handler<CloseAll> for Dispatcher {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _msg: CloseAll, _ctx: &mut Self::Context) -> Self::Result {
        let addrs: Vec<_> = self
            .routing
            .units
            .values()
            .map(|u| u.addr.clone())
            .collect();
        Box::pin(async move {
            join_all(addrs.iter().map(|a| a.send(CloseUnit))).await;
        })
    }
}

/// Units by partition, for status views.
fn by_partition(routing: &Routing) -> BTreeMap<&str, Vec<u16>> {
    let mut map: BTreeMap<&str, Vec<u16>> = BTreeMap::new();
    for u in routing.units.values() {
        map.entry(&u.settings.partition)
            .or_default()
            .push(u.settings.id);
    }
    map
}
