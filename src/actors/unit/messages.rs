//! What a unit actor is asked, and what it answers. Only the dispatcher
//! (and the supervisor's probes) send these: a unit knows nothing of other
//! units.

use actix::Message;

use crate::domain::apply::{Refunded, Updated};
use crate::domain::key_homes::{Attempt, Mark};
use crate::domain::replication::Position;
use crate::domain::values::{
    Amount, MerchantId, OutTradeNo, PaymentRef, SectionName, SectionValue, UserId,
};
use crate::domain::{Consistency, NewOrder, NewRefund, Order, OrderId, Refund, UserCursor};
use crate::storage::{Key, Page, Settled, StoreError};

/// What a create did in this unit.
#[derive(Debug)]
pub enum CreateOutcome {
    Created(Order),
    /// The same request was seen before: here is the order it created.
    Replayed(Order),
    /// The key is taken by an order created from a different request.
    KeyConflict,
    /// The unit has another record of the key (a fence, or a home's claim
    /// for another create): nothing was written.
    Blocked(Mark),
}

/// Create a new order in this unit (or recognise a replay of one).
#[derive(Message)]
#[rtype(result = "Result<CreateOutcome, StoreError>")]
pub struct CreateOrder {
    pub request: NewOrder,
    /// Written with the order as the key's slot in this unit.
    pub attempt: Attempt,
}

/// Read one order.
#[derive(Message)]
#[rtype(result = "Result<Order, StoreError>")]
pub struct GetOrder {
    pub id: OrderId,
    pub consistency: Consistency,
    /// An eventual read is served by a replica only once it has applied
    /// this position (a consistency token's).
    pub wait_for: Option<Position>,
}

/// Find the order with this idempotency key, if this unit has it.
#[derive(Message, Clone)]
#[rtype(result = "Result<Option<Order>, StoreError>")]
pub struct FindByKey {
    pub merchant_id: MerchantId,
    pub out_trade_no: OutTradeNo,
}

/// Settles the key in this unit: fences it unless the unit has a record of
/// it (waiting for a transaction writing one), and answers the record, with
/// the order when the record is a slot. Afterwards no create can write the
/// key's order here unless the answer says one did.
#[derive(Message, Clone)]
#[rtype(result = "Result<Settled, StoreError>")]
pub struct SettleKey {
    pub key: Key,
    /// The create attempt being settled (listed as fenced here).
    pub attempt: Attempt,
}

/// Writes `mark` as the key's record unless the unit has one; answers the
/// record the key now has.
#[derive(Message, Clone)]
#[rtype(result = "Result<Mark, StoreError>")]
pub struct ClaimKey {
    pub key: Key,
    pub mark: Mark,
}

/// Replaces the key's record `from` with `to`; false when it is no longer `from`.
#[derive(Message, Clone)]
#[rtype(result = "Result<bool, StoreError>")]
pub struct ReplaceMark {
    pub key: Key,
    pub from: Mark,
    pub to: Mark,
}

/// The key's record in this unit, if any.
#[derive(Message, Clone)]
#[rtype(result = "Result<Option<Mark>, StoreError>")]
pub struct ReadMark {
    pub key: Key,
}

/// The setting `name` as the unit's database has it, stored as `proposed`
/// when it has none (`proposed: None` only reads it).
#[derive(Message, Clone)]
#[rtype(result = "Result<Option<String>, StoreError>")]
pub struct SettleMeta {
    pub name: &'static str,
    pub proposed: Option<String>,
}

/// `created -> paid`.
#[derive(Message)]
#[rtype(result = "Result<Updated, StoreError>")]
pub struct PayOrder {
    pub id: OrderId,
    pub payment_ref: PaymentRef,
    pub amount: Amount,
    pub expected_version: Option<i64>,
}

/// `created -> closed`.
#[derive(Message)]
#[rtype(result = "Result<Updated, StoreError>")]
pub struct CloseOrder {
    pub id: OrderId,
    pub expected_version: Option<i64>,
}

/// Set (or, with `value: None`, remove) one section of an order.
#[derive(Message)]
#[rtype(result = "Result<Updated, StoreError>")]
pub struct SetOrderSection {
    pub id: OrderId,
    pub name: SectionName,
    pub value: Option<SectionValue>,
    pub expected_version: Option<i64>,
}

/// Refund part or all of a paid order.
#[derive(Message)]
#[rtype(result = "Result<Refunded, StoreError>")]
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

/// The unit is disabled (`on`): after `after` (calls in flight finish),
/// its database takes no more writes from this actor; re-opened (`!on`):
/// at once. A later message cancels an earlier one still waiting.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FenceWrites {
    pub on: bool,
    pub after: std::time::Duration,
}

/// Measure the unit's replicas (lag, reachable) and publish it; a check
/// still running makes this a no-op.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CheckReplica;

/// Close the unit's pools (shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseUnit;

/// Group-commit counters of a unit since it started.
#[derive(Message)]
#[rtype(result = "BatchCounts")]
pub struct BatchStats;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchCounts {
    /// Create transactions written.
    pub batches: u64,
    /// Orders in them.
    pub orders: u64,
}
