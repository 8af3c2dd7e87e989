//! The dispatcher actor: the only way into the units.
//!
//! A create chooses a unit (the merchant's partition, then weighted power of
//! two choices on recent creates) and the unit writes its own number into the
//! new order id. Every other call parses the unit out of the id and goes
//! straight there; reads and updates never move to another unit. Look-ups by
//! merchant key and user lists fan out to every unit in parallel.
//!
//! The routing table lives in an `Rc<RefCell<..>>` owned by this actor: handler
//! futures run on the actor's own thread, so they can consult it between
//! awaits (never holding the borrow across one) without a round trip.
//!
//! Seams for the supervisor issue: `Routing::candidates` is where circuit state
//! and health will filter units, and `create` is where retry on definite
//! failures will loop.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::future::join_all;
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::key_lock::KeyLocks;
use super::unit::{
    CloseOrder, CloseUnit, CreateOrder, CreateOutcome, FindByKey, GetOrder, ListRefunds,
    ListUserOrders, PayOrder, RefundOrder, UnitActor,
};
use crate::config::{PartitionSettings, Settings, Temperature, UnitMode, UnitSettings};
use crate::domain::selection::{Candidate, SlidingCount, choose};
use crate::domain::values::{MerchantId, OutTradeNo, UserId};
use crate::domain::{NewOrder, Order, OrderId, Refund};
use crate::error::EngineError;
use crate::storage::{StoreError, UserCursor};

/// A unit as the dispatcher routes to it.
pub struct UnitRoute {
    pub settings: UnitSettings,
    pub addr: Addr<UnitActor>,
    recent: SlidingCount,
}

impl UnitRoute {
    pub fn new(settings: UnitSettings, addr: Addr<UnitActor>, window: Duration) -> Self {
        Self {
            settings,
            addr,
            recent: SlidingCount::new(window),
        }
    }

    /// Whether the operator lets this unit take new orders.
    fn takes_creates(&self) -> bool {
        self.settings.mode == UnitMode::Open
            && self.settings.temperature != Temperature::Cold
            && self.settings.weight > 0
    }
}

struct Routing {
    units: BTreeMap<u16, UnitRoute>,
    merchants: BTreeMap<String, String>,
    partitions: BTreeMap<String, PartitionSettings>,
    default_partition: String,
    started: Instant,
    rng: StdRng,
}

impl Routing {
    fn partition_of(&self, merchant: &MerchantId) -> &str {
        self.merchants
            .get(merchant.as_str())
            .unwrap_or(&self.default_partition)
    }

    /// Units of `partition` that may take a create now, minus those in `tried`.
    fn candidates(&self, partition: &str, tried: &[u16]) -> Vec<Candidate> {
        let now = self.started.elapsed();
        self.units
            .values()
            .filter(|u| u.settings.partition == partition && u.takes_creates())
            .filter(|u| !tried.contains(&u.settings.id))
            .map(|u| Candidate {
                unit: u.settings.id,
                weight: u.settings.weight,
                recent: u.recent.count(now),
            })
            .collect()
    }

    /// Picks the unit for a create by `merchant`: its partition first, then the
    /// partitions it may spill into, in order. Counts the create against the unit.
    fn choose_for_create(
        &mut self,
        merchant: &MerchantId,
        tried: &[u16],
    ) -> Option<(u16, Addr<UnitActor>)> {
        let home = self.partition_of(merchant).to_string();
        let spill = self
            .partitions
            .get(&home)
            .map(|p| p.spill_to.clone())
            .unwrap_or_default();
        let unit = std::iter::once(home)
            .chain(spill)
            .find_map(|p| choose(&self.candidates(&p, tried), &mut self.rng))?;
        let now = self.started.elapsed();
        let route = self.units.get_mut(&unit)?;
        route.recent.record(now);
        Some((unit, route.addr.clone()))
    }

    /// The unit that holds `id`'s order.
    fn route(&self, unit: u16) -> Result<Addr<UnitActor>, EngineError> {
        match self.units.get(&unit) {
            None => Err(EngineError::NotFound),
            Some(u) if u.settings.mode == UnitMode::Disabled => {
                Err(EngineError::UnitUnavailable { unit })
            }
            Some(u) => Ok(u.addr.clone()),
        }
    }

    /// Units asked by fan-out look-ups: every unit the operator has not disabled.
    fn lookup_targets(&self) -> Vec<(u16, Addr<UnitActor>)> {
        self.units
            .values()
            .filter(|u| u.settings.mode != UnitMode::Disabled)
            .map(|u| (u.settings.id, u.addr.clone()))
            .collect()
    }
}

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

/// How many units could take a create now (for `/readyz`).
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Readiness;

/// Close every unit's pools (graceful shutdown, after the HTTP server drained).
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseAll;

pub struct Dispatcher {
    routing: Rc<RefCell<Routing>>,
    key_locks: KeyLocks<(MerchantId, OutTradeNo)>,
    /// Upper bound on one call to a unit.
    unit_timeout: Duration,
}

impl Dispatcher {
    pub fn new(settings: &Settings, units: Vec<UnitRoute>) -> Self {
        Self {
            routing: Rc::new(RefCell::new(Routing {
                units: units.into_iter().map(|u| (u.settings.id, u)).collect(),
                merchants: settings.merchants.clone(),
                partitions: settings.partitions.clone(),
                default_partition: settings.dispatcher.default_partition.clone(),
                started: Instant::now(),
                rng: StdRng::from_os_rng(),
            })),
            key_locks: KeyLocks::default(),
            unit_timeout: Duration::from_millis(settings.server.request_timeout_ms),
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
        let addr = self.routing.borrow().route(unit);
        let timeout = self.unit_timeout;
        Box::pin(async move { call_unit(unit, &addr?, msg, timeout).await })
    }
}

/// One call to one unit, with the engine's error mapping. A unit that does not
/// answer in time is unavailable for this call.
async fn call_unit<M, R>(
    unit: u16,
    addr: &Addr<UnitActor>,
    msg: M,
    timeout: Duration,
) -> Result<R, EngineError>
where
    M: Message<Result = Result<R, StoreError>> + Send + 'static,
    R: Send + 'static,
    UnitActor: Handler<M>,
{
    addr.send(msg)
        .timeout(timeout)
        .await
        .map_err(|_| EngineError::UnitUnavailable { unit })?
        .map_err(|e| EngineError::from_store(unit, e))
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
        let routing = self.routing.clone();
        let locks = self.key_locks.clone();
        let timeout = self.unit_timeout;
        Box::pin(async move {
            let request = msg.request;
            let key = (request.merchant_id.clone(), request.out_trade_no.clone());
            let _serialized = locks.lock(key.clone()).await;

            // The key may already name an order in any unit (a replay that the
            // random choice below would send elsewhere): ask them all first.
            let targets = routing.borrow().lookup_targets();
            if let Some(existing) = find_key(&targets, &key, timeout).await.found {
                return if request.is_replay_of(&existing) {
                    Ok(Created {
                        order: existing,
                        replayed: true,
                    })
                } else {
                    Err(EngineError::IdempotencyConflict)
                };
            }

            let (unit, addr) = routing
                .borrow_mut()
                .choose_for_create(&request.merchant_id, &[])
                .ok_or(EngineError::NoUnitAvailable)?;
            match call_unit(unit, &addr, CreateOrder { request }, timeout).await? {
                CreateOutcome::Created(order) => {
                    tracing::debug!(unit, order_id = %order.id, "order created");
                    Ok(Created {
                        order,
                        replayed: false,
                    })
                }
                CreateOutcome::Replayed(order) => Ok(Created {
                    order,
                    replayed: true,
                }),
                CreateOutcome::KeyConflict => Err(EngineError::IdempotencyConflict),
            }
        })
    }
}

/// What a fan-out look-up of one key saw.
struct KeySearch {
    found: Option<Order>,
    /// Units that could not answer.
    unanswered: Vec<u16>,
}

async fn find_key(
    targets: &[(u16, Addr<UnitActor>)],
    key: &(MerchantId, OutTradeNo),
    timeout: Duration,
) -> KeySearch {
    let msg = FindByKey {
        merchant_id: key.0.clone(),
        out_trade_no: key.1.clone(),
    };
    let answers = join_all(
        targets
            .iter()
            .map(|(unit, addr)| call_unit(*unit, addr, msg.clone(), timeout)),
    )
    .await;
    let mut search = KeySearch {
        found: None,
        unanswered: Vec::new(),
    };
    for ((unit, _), answer) in targets.iter().zip(answers) {
        match answer {
            Ok(Some(order)) => search.found = Some(order),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(unit, error = %e, "unit did not answer a key look-up");
                search.unanswered.push(*unit);
            }
        }
    }
    search
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
        let targets = self.routing.borrow().lookup_targets();
        let timeout = self.unit_timeout;
        Box::pin(async move {
            let search = find_key(&targets, &(msg.merchant_id, msg.out_trade_no), timeout).await;
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
        let targets = self.routing.borrow().lookup_targets();
        let timeout = self.unit_timeout;
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
                    .map(|(unit, addr)| call_unit(*unit, addr, ask.clone(), timeout)),
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

impl Handler<Readiness> for Dispatcher {
    type Result = usize;

    fn handle(&mut self, _msg: Readiness, _ctx: &mut Self::Context) -> usize {
        let routing = self.routing.borrow();
        routing.units.values().filter(|u| u.takes_creates()).count()
    }
}

impl Handler<CloseAll> for Dispatcher {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _msg: CloseAll, _ctx: &mut Self::Context) -> Self::Result {
        let addrs: Vec<_> = self
            .routing
            .borrow()
            .units
            .values()
            .map(|u| u.addr.clone())
            .collect();
        Box::pin(async move {
            join_all(addrs.iter().map(|a| a.send(CloseUnit))).await;
        })
    }
}
