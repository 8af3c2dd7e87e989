//! What the RPC front end asks the dispatcher, and what it answers. Each
//! handler in `api/` sends exactly one of these.

use actix::Message;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::status::{EngineStatus, MerchantRoute, PartitionTable, Readiness, UnitStatus};
use crate::actors::EngineError;
use crate::config::{UnitEntry, UnitPatch};
use crate::domain::apply::{Refunded, Updated};
use crate::domain::replication::ConsistencyToken;
use crate::domain::values::{
    Amount, MerchantId, OutTradeNo, PaymentRef, SectionName, SectionValue, UserId,
};
use crate::domain::{Consistency, NewOrder, NewRefund, Order, OrderId, UserCursor};

/// Create an order (idempotent on `(merchant_id, out_trade_no)`).
#[derive(Message)]
#[rtype(result = "Result<Written<Created>, EngineError>")]
pub struct Create {
    pub request: NewOrder,
}

/// A create's answer: the order, and whether an earlier identical request
/// had created it (a replay: `200`, not `201`).
#[derive(Debug)]
pub struct Created {
    pub order: Order,
    pub replayed: bool,
}

/// A write's answer, with the consistency token a read-your-writes read
/// presents (see `domain::replication`).
#[derive(Debug)]
pub struct Written<T> {
    pub value: T,
    pub token: ConsistencyToken,
}

/// Read an order from its unit.
#[derive(Message)]
#[rtype(result = "Result<Order, EngineError>")]
pub struct Get {
    pub id: OrderId,
    pub consistency: Consistency,
    /// A write's token: an eventual read then sees that write (a token
    /// of another unit asks nothing of this read).
    pub token: Option<ConsistencyToken>,
}

/// Pay an order (`created -> paid`).
#[derive(Message)]
#[rtype(result = "Result<Written<Updated>, EngineError>")]
pub struct Pay {
    pub id: OrderId,
    pub payment_ref: PaymentRef,
    pub amount: Amount,
    /// `If-Match`: the version the caller saw.
    pub expected_version: Option<i64>,
}

/// Set (`value`) or remove (`None`) one named section of an order.
#[derive(Message)]
#[rtype(result = "Result<Written<Updated>, EngineError>")]
pub struct SetSection {
    pub id: OrderId,
    pub name: SectionName,
    pub value: Option<SectionValue>,
    /// `If-Match`: the version the caller saw.
    pub expected_version: Option<i64>,
}

/// Close an unpaid order (`created -> closed`).
#[derive(Message)]
#[rtype(result = "Result<Written<Updated>, EngineError>")]
pub struct Close {
    pub id: OrderId,
    pub expected_version: Option<i64>,
}

/// Refund part or all of a paid order.
#[derive(Message)]
#[rtype(result = "Result<Written<Refunded>, EngineError>")]
pub struct Refund {
    pub id: OrderId,
    pub refund: NewRefund,
    pub expected_version: Option<i64>,
}

/// An order's refunds, oldest first (`crate::domain::Refund`: in this
/// module `Refund` is the message).
#[derive(Message)]
#[rtype(result = "Result<Vec<crate::domain::Refund>, EngineError>")]
pub struct ListRefunds {
    pub id: OrderId,
}

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
pub struct ListUserOrders {
    pub user_id: UserId,
    pub after: Option<UserCursor>,
    pub limit: u32,
}

#[derive(Debug)]
pub struct UserPage {
    pub orders: Vec<Order>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<UserCursor>,
    /// Units that could not be read (disabled, or not answering): their
    /// orders are missing from this page, and the cursor does not revisit them.
    pub unavailable: Vec<u16>,
}

/// Whether creates can be taken, per partition (public `/readyz`).
#[derive(Message)]
#[rtype(result = "Readiness")]
pub struct Status;

/// The routing table with live health (admin `GET /admin/units`).
#[derive(Message)]
#[rtype(result = "EngineStatus")]
pub struct AdminStatus;

/// Close every unit's pools (graceful shutdown, after the HTTP server drained).
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseAll;

/// An operator's change to one unit (admin `PATCH /admin/units/{id}`).
#[derive(Message)]
#[rtype(result = "Result<UnitChanged, EngineError>")]
pub struct PatchUnit {
    pub unit: u16,
    pub patch: UnitPatch,
    /// Apply only if the table is still at this version.
    pub if_match: Option<u64>,
    /// Who asked (for the log): the caller's address.
    pub who: String,
}

/// A unit joins the routing table (admin `POST /admin/units`).
#[derive(Message)]
#[rtype(result = "Result<UnitChanged, EngineError>")]
pub struct AddUnit {
    pub id: u16,
    pub entry: UnitEntry,
    pub if_match: Option<u64>,
    pub who: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailoverMode {
    /// The old primary answers: it is fenced first, and the replica
    /// catches up with it exactly.
    Planned,
    /// The old primary is dead: the most advanced replica applies what it
    /// received.
    Emergency,
}

impl FailoverMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Planned => "planned",
            Self::Emergency => "emergency",
        }
    }
}

/// A step and how long it took.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StepTook {
    pub step: &'static str,
    pub ms: u64,
}

/// What a failover did.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FailoverReport {
    pub unit: u16,
    pub mode: FailoverMode,
    /// The routing table's version after the repoint.
    pub version: u64,
    /// The unit's primary now (password masked).
    pub primary_url: String,
    /// The primary it replaced (password masked).
    pub old_primary_url: String,
    /// Whether the old primary is fenced already; if not (it did not
    /// answer), it is fenced in the background as soon as it does.
    pub old_primary_fenced: bool,
    /// The promoted server's GTID position when it took over (`null` when
    /// an earlier call promoted it).
    pub position: Option<String>,
    pub steps: Vec<StepTook>,
    /// What became of the unit's other replicas.
    pub replicas: Vec<ReplicaOutcome>,
    /// Whether the new primary's commits wait for a replica's
    /// acknowledgement (semi-synchronous), as the old one's did: on once a
    /// re-pointed replica attached.
    pub semi_sync: bool,
}

/// One of the unit's other replicas after a failover.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReplicaOutcome {
    /// Password masked.
    pub url: String,
    /// `repointed` (it replicates the new primary and stays a replica of
    /// the unit), `not_repointed` (it stays in the unit's `replica_urls`
    /// but still needs re-pointing: `error` says why) or `dropped` (it did
    /// not answer in an emergency failover run with
    /// `skip_unreachable_replicas`: it may hold commits the new primary
    /// lacks, so it is out of the unit and must be rebuilt).
    #[schema(example = "repointed")]
    pub outcome: &'static str,
    pub error: Option<String>,
}

impl ReplicaOutcome {
    pub fn repointed(url: String) -> Self {
        Self {
            url,
            outcome: "repointed",
            error: None,
        }
    }

    pub fn not_repointed(url: String, error: String) -> Self {
        Self {
            url,
            outcome: "not_repointed",
            error: Some(error),
        }
    }

    pub fn dropped(url: String, error: String) -> Self {
        Self {
            url,
            outcome: "dropped",
            error: Some(error),
        }
    }
}

/// Promote the unit's replica to its primary (admin
/// `POST /admin/units/{id}/failover`).
#[derive(Message)]
#[rtype(result = "Result<FailoverReport, EngineError>")]
pub struct Failover {
    pub unit: u16,
    pub mode: FailoverMode,
    /// The replica to promote (default: the unit's most advanced one).
    pub to: Option<String>,
    /// Emergency: promote even though some of the unit's replicas do not
    /// answer (they are dropped from the unit).
    pub skip_unreachable_replicas: bool,
    pub who: String,
}

/// The routing table's version after a change, and the changed unit.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UnitChanged {
    pub version: u64,
    pub unit: UnitStatus,
}

/// A merchant's partition (admin `GET /admin/merchants/{merchant_id}`).
#[derive(Message)]
#[rtype(result = "MerchantRoute")]
pub struct GetMerchant {
    pub merchant: String,
}

/// Maps a merchant's creates to a partition (admin `PUT /admin/merchants/{merchant_id}`).
#[derive(Message)]
#[rtype(result = "Result<MerchantRoute, EngineError>")]
pub struct SetMerchant {
    pub merchant: String,
    pub partition: String,
    pub if_match: Option<u64>,
    pub who: String,
}

/// The partitions and their spill rules (admin `GET /admin/partitions`).
#[derive(Message)]
#[rtype(result = "PartitionTable")]
pub struct ListPartitions;

/// Sets a partition's spill rules, creating the partition if new (admin
/// `PUT /admin/partitions/{name}`).
#[derive(Message)]
#[rtype(result = "Result<PartitionTable, EngineError>")]
pub struct SetPartition {
    pub name: String,
    pub spill_to: Vec<String>,
    pub if_match: Option<u64>,
    pub who: String,
}
