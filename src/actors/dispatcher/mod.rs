//! The dispatcher actor: the only way into the units.
//!
//! A create chooses a healthy unit (the merchant's partition, then weighted
//! power of two choices on recent creates) and the unit writes its own number
//! into the new order id; failed creates are retried elsewhere only when
//! certainly uncommitted (`create.rs`). Every other call parses the unit out
//! of the id and goes straight there; reads and updates never move to another
//! unit, and a unit whose circuit is open fails them fast (`calls.rs`).
//! A look-up by merchant key asks the key's home units (`keys.rs`); user
//! lists fan out to every unit in parallel (`fanout.rs`). The routing table is `routing.rs`; what operators and
//! `/readyz` see of it, `status.rs`.
//!
//! **Why an actor.** The product brief fixes the shape (HTTP front end ->
//! dispatcher actor -> unit actors), and an actor is what the front end
//! sends its messages to. What the actor adds beyond that is little, and it
//! keeps it so on purpose: its handlers keep no state between messages (each
//! clones shared handles into the future it returns), so the mailbox is the
//! only thing between a request and its unit, and it bounds how many
//! requests a worker queues (16,384; past that, senders wait). There is one
//! shard per HTTP worker thread, started on that worker's arbiter so that a
//! request reaches it without a thread hop, plus one on the system arbiter
//! for status and shutdown. The shards share one routing table (read
//! without a lock) and one set of per-key locks (a mutex held for a map
//! operation only, never across an await). Health comes from the
//! supervisor's [`HealthBoard`] without a round trip.

mod calls;
mod create;
mod edits;
mod failover;
mod fanout;
mod keeper;
mod keys;
mod launch;
mod messages;
mod routing;
mod status;
mod table;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::future::join_all;

pub use calls::{CallError, UnitCalls};
pub use keeper::{Keeper, shared_table};
pub use launch::{LaunchError, UnitLauncher};
pub use messages::{
    AddUnit, AdminStatus, Close, CloseAll, Create, Created, Failover, FailoverMode, FailoverReport,
    Get, GetMerchant, ListPartitions, ListRefunds, ListUserOrders, LookupByKey, PatchUnit, Pay,
    Refund, ReplicaOutcome, SetMerchant, SetPartition, SetSection, Status, StepTook, UnitChanged,
    UserPage, Written,
};
pub use routing::UnitRoute;
pub use status::{
    EngineStatus, MerchantRoute, PartitionEntry, PartitionReadiness, PartitionStatus,
    PartitionTable, Readiness, ReplicaStatus, TableStore, UnitStatus,
};

use self::create::CreateContext;
use self::keys::KeyRecords;
use self::routing::Routing;
pub use self::table::SavedTable;
use self::table::{RoutingTable, Start};
use super::EngineError;
use super::key_lock::KeyLocks;
use super::supervisor::Supervisor;
use super::unit::{self, CloseUnit, UnitActor};
use crate::config::Settings;
use crate::domain::apply::{Refunded, Updated};
use crate::domain::key_homes::{KeyRing, StableKeyHash};
use crate::domain::{Consistency, Order, OrderId};
use crate::metrics as m;
use crate::storage::StoreError;

/// One dispatcher shard; `clone()` makes another shard over the same state.
#[derive(Clone)]
pub struct Dispatcher {
    table: Arc<RoutingTable>,
    key_locks: KeyLocks<StableKeyHash>,
    calls: UnitCalls,
    max_attempts: u32,
    failover: Arc<failover::FailoverLimits>,
}

impl Dispatcher {
    /// The dispatcher over `units` (whose settings already carry the
    /// operator's saved changes, `saved`); `launcher` starts units that
    /// join later.
    pub fn new(
        settings: &Settings,
        units: Vec<UnitRoute>,
        ring: KeyRing,
        saved: SavedTable,
        launcher: UnitLauncher,
        supervisor: Addr<Supervisor>,
    ) -> Self {
        let board = launcher.board().clone();
        let routing = Routing {
            version: saved.version,
            units: units.into_iter().map(|u| (u.settings.id, u)).collect(),
            merchants: settings.merchants.clone(),
            partitions: settings.partitions.clone(),
            default_partition: settings.dispatcher.default_partition.clone(),
            started: Instant::now(),
            ring,
        };
        let timeout = Duration::from_millis(settings.server.request_timeout_ms);
        let table = RoutingTable::new(routing, saved, launcher, supervisor.clone(), timeout);
        Self {
            table: Arc::new(table),
            key_locks: KeyLocks::default(),
            calls: UnitCalls {
                board,
                supervisor,
                timeout,
                metrics: Arc::new(
                    settings
                        .units
                        .iter()
                        .map(|u| (u.id, m::UnitCallMetrics::new(u.id)))
                        .collect(),
                ),
            },
            max_attempts: settings.dispatcher.max_attempts,
            failover: Arc::new(failover::FailoverLimits {
                step: Duration::from_millis(settings.storage.connect_timeout_ms),
                catch_up: Duration::from_millis(settings.storage.failover_catch_up_ms),
                running: Default::default(),
            }),
        }
    }

    /// Keeps the table up to date for as long as the process runs: asks
    /// the control store (if any) for a newer table every `poll`, and
    /// starts units of the table that do not run yet.
    pub fn keep_table(&self, poll: Duration) -> impl Future<Output = ()> + 'static {
        let table = self.table.clone();
        async move {
            futures_util::future::join(table.clone().poll(poll), table.start_pending()).await;
        }
    }

    /// Sends a write to the unit that holds `id`'s order and answers it
    /// with its consistency token (`wrote`: whether the answer says the
    /// write committed something).
    fn write<M, R>(
        &self,
        id: OrderId,
        msg: M,
        wrote: fn(&R) -> bool,
    ) -> ResponseFuture<Result<Written<R>, EngineError>>
    where
        M: Message<Result = Result<R, StoreError>> + Send + 'static,
        R: Send + 'static,
        UnitActor: Handler<M>,
    {
        let routing = self.table.load();
        let answer = self.forward(id, msg);
        Box::pin(async move {
            let value = answer.await?;
            let token = routing.token(id.unit(), wrote(&value));
            Ok(Written { value, token })
        })
    }

    /// Sends `msg` to the unit that holds `id`'s order.
    fn forward<M, R>(&self, id: OrderId, msg: M) -> ResponseFuture<Result<R, EngineError>>
    where
        M: Message<Result = Result<R, StoreError>> + Send + 'static,
        R: Send + 'static,
        UnitActor: Handler<M>,
    {
        let unit = id.unit();
        let addr = self.table.load().route(unit);
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
    type Result = ResponseFuture<Result<Written<Created>, EngineError>>;

    fn handle(&mut self, msg: Create, _ctx: &mut Self::Context) -> Self::Result {
        let routing = self.table.load();
        let create = CreateContext {
            routing: routing.clone(),
            locks: self.key_locks.clone(),
            calls: self.calls.clone(),
            max_attempts: self.max_attempts,
        };
        Box::pin(async move {
            let created = create.create(msg.request).await?;
            let token = routing.token(created.order.id.unit(), !created.replayed);
            Ok(Written {
                value: created,
                token,
            })
        })
    }
}

impl Handler<Get> for Dispatcher {
    type Result = ResponseFuture<Result<Order, EngineError>>;

    fn handle(&mut self, msg: Get, _ctx: &mut Self::Context) -> Self::Result {
        let unit = msg.id.unit();
        // A token of this unit without a position names a write whose
        // position is unknown: only the primary surely has it.
        let (consistency, wait_for) = match msg.token.filter(|t| t.unit == unit) {
            Some(t) if t.position.is_none() => (Consistency::Strong, None),
            Some(t) => (msg.consistency, t.position),
            None => (msg.consistency, None),
        };
        let get = unit::GetOrder {
            id: msg.id,
            consistency,
            wait_for,
        };
        if consistency == Consistency::Eventual {
            let routing = self.table.load();
            if routing
                .units
                .get(&unit)
                .is_some_and(|r| !r.settings.replica_urls.is_empty())
            {
                let (addr, calls) = (routing.route(unit), self.calls.clone());
                return Box::pin(async move { calls.read_beside_circuit(unit, &addr?, get).await });
            }
        }
        self.forward(msg.id, get)
    }
}

impl Handler<Pay> for Dispatcher {
    type Result = ResponseFuture<Result<Written<Updated>, EngineError>>;

    fn handle(&mut self, msg: Pay, _ctx: &mut Self::Context) -> Self::Result {
        let pay = unit::PayOrder {
            id: msg.id,
            payment_ref: msg.payment_ref,
            amount: msg.amount,
            expected_version: msg.expected_version,
        };
        self.write(msg.id, pay, |u: &Updated| u.changed)
    }
}

impl Handler<Close> for Dispatcher {
    type Result = ResponseFuture<Result<Written<Updated>, EngineError>>;

    fn handle(&mut self, msg: Close, _ctx: &mut Self::Context) -> Self::Result {
        let close = unit::CloseOrder {
            id: msg.id,
            expected_version: msg.expected_version,
        };
        self.write(msg.id, close, |u: &Updated| u.changed)
    }
}

impl Handler<SetSection> for Dispatcher {
    type Result = ResponseFuture<Result<Written<Updated>, EngineError>>;

    fn handle(&mut self, msg: SetSection, _ctx: &mut Self::Context) -> Self::Result {
        let set = unit::SetOrderSection {
            id: msg.id,
            name: msg.name,
            value: msg.value,
            expected_version: msg.expected_version,
        };
        self.write(msg.id, set, |u: &Updated| u.changed)
    }
}

impl Handler<Refund> for Dispatcher {
    type Result = ResponseFuture<Result<Written<Refunded>, EngineError>>;

    fn handle(&mut self, msg: Refund, _ctx: &mut Self::Context) -> Self::Result {
        let refund = unit::RefundOrder {
            id: msg.id,
            refund: msg.refund,
            expected_version: msg.expected_version,
        };
        self.write(msg.id, refund, |r: &Refunded| r.created)
    }
}

impl Handler<ListRefunds> for Dispatcher {
    type Result = ResponseFuture<Result<Vec<crate::domain::Refund>, EngineError>>;

    fn handle(&mut self, msg: ListRefunds, _ctx: &mut Self::Context) -> Self::Result {
        self.forward(msg.id, unit::ListRefunds { id: msg.id })
    }
}

impl Handler<LookupByKey> for Dispatcher {
    type Result = ResponseFuture<Result<Order, EngineError>>;

    fn handle(&mut self, msg: LookupByKey, _ctx: &mut Self::Context) -> Self::Result {
        let (routing, calls) = (self.table.load(), self.calls.clone());
        let key = (msg.merchant_id, msg.out_trade_no);
        Box::pin(async move {
            let hash = StableKeyHash::of(key.0.as_str(), key.1.as_str());
            let records = KeyRecords {
                routing: &routing,
                calls: &calls,
                key: &key,
            };
            records.lookup(&routing.ring.homes(hash)).await
        })
    }
}

impl Handler<ListUserOrders> for Dispatcher {
    type Result = ResponseFuture<Result<UserPage, EngineError>>;

    fn handle(&mut self, msg: ListUserOrders, _ctx: &mut Self::Context) -> Self::Result {
        let targets = self.table.load().all_units();
        let ask = unit::ListUserOrders {
            user_id: msg.user_id,
            after: msg.after,
            limit: msg.limit,
        };
        Box::pin(fanout::list_user(self.calls.clone(), targets, ask))
    }
}

impl Handler<Status> for Dispatcher {
    type Result = MessageResult<Status>;

    fn handle(&mut self, _msg: Status, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(status::readiness(&self.table.load(), &self.calls.board))
    }
}

impl Handler<AdminStatus> for Dispatcher {
    type Result = MessageResult<AdminStatus>;

    fn handle(&mut self, _msg: AdminStatus, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.snapshot(&self.table.load()))
    }
}

impl Handler<CloseAll> for Dispatcher {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _msg: CloseAll, _ctx: &mut Self::Context) -> Self::Result {
        let addrs: Vec<_> = self
            .table
            .load()
            .units
            .values()
            .filter_map(|u| u.addr.clone())
            .collect();
        Box::pin(async move {
            join_all(addrs.iter().map(|a| a.send(CloseUnit))).await;
        })
    }
}

impl Dispatcher {
    /// The table with live health, for operators.
    fn snapshot(&self, table: &Routing) -> EngineStatus {
        status::snapshot(table, &self.calls.board, self.table.store())
    }

    /// Unit `unit` as operators see it in `table`, with the table's version.
    fn changed_unit(&self, table: &Routing, unit: u16) -> UnitChanged {
        let unit = self
            .snapshot(table)
            .units
            .into_iter()
            .find(|u| u.id == unit)
            .expect("the changed unit is in the table");
        UnitChanged {
            version: table.version,
            unit,
        }
    }
}

impl Handler<PatchUnit> for Dispatcher {
    type Result = ResponseFuture<Result<UnitChanged, EngineError>>;

    fn handle(&mut self, msg: PatchUnit, _ctx: &mut Self::Context) -> Self::Result {
        let this = self.clone();
        Box::pin(async move {
            let (unit, patch) = (msg.unit, &msg.patch);
            let table = this
                .table
                .change_starting(
                    msg.if_match,
                    &msg.who,
                    |t| {
                        // What the table cannot take is refused first,
                        // whatever the version.
                        edits::patch_unit(t, unit, patch, None)?;
                        Ok(edits::repoint(t, unit, patch)?.map(Start::Repoint))
                    },
                    |t, moved| edits::patch_unit(t, unit, patch, moved),
                )
                .await?;
            Ok(this.changed_unit(&table, unit))
        })
    }
}

impl Handler<Failover> for Dispatcher {
    type Result = ResponseFuture<Result<FailoverReport, EngineError>>;

    fn handle(&mut self, msg: Failover, _ctx: &mut Self::Context) -> Self::Result {
        let this = self.clone();
        Box::pin(async move { failover::run(&this.table, &this.failover, msg).await })
    }
}

impl Handler<AddUnit> for Dispatcher {
    type Result = ResponseFuture<Result<UnitChanged, EngineError>>;

    fn handle(&mut self, msg: AddUnit, _ctx: &mut Self::Context) -> Self::Result {
        let this = self.clone();
        Box::pin(async move {
            let (id, entry) = (msg.id, &msg.entry);
            let table = this
                .table
                .change_starting(
                    msg.if_match,
                    &msg.who,
                    |t| {
                        edits::check_new_unit(t, id, entry)?;
                        Ok(Some(Start::Join(entry.settings(id))))
                    },
                    |t, started| {
                        edits::check_new_unit(t, id, entry)?;
                        let mut next = t.clone();
                        next.units
                            .insert(id, started.expect("a unit was started").clone());
                        Ok(Some(next))
                    },
                )
                .await?;
            Ok(this.changed_unit(&table, id))
        })
    }
}

impl Handler<GetMerchant> for Dispatcher {
    type Result = MessageResult<GetMerchant>;

    fn handle(&mut self, msg: GetMerchant, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(status::merchant(&self.table.load(), &msg.merchant))
    }
}

impl Handler<SetMerchant> for Dispatcher {
    type Result = ResponseFuture<Result<MerchantRoute, EngineError>>;

    fn handle(&mut self, msg: SetMerchant, _ctx: &mut Self::Context) -> Self::Result {
        let table = self.table.clone();
        Box::pin(async move {
            let now = table
                .change(msg.if_match, &msg.who, |t| {
                    edits::set_merchant(t, &msg.merchant, &msg.partition)
                })
                .await?;
            Ok(status::merchant(&now, &msg.merchant))
        })
    }
}

impl Handler<ListPartitions> for Dispatcher {
    type Result = MessageResult<ListPartitions>;

    fn handle(&mut self, _msg: ListPartitions, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(status::partitions(&self.table.load()))
    }
}

impl Handler<SetPartition> for Dispatcher {
    type Result = ResponseFuture<Result<PartitionTable, EngineError>>;

    fn handle(&mut self, msg: SetPartition, _ctx: &mut Self::Context) -> Self::Result {
        let table = self.table.clone();
        Box::pin(async move {
            let now = table
                .change(msg.if_match, &msg.who, |t| {
                    edits::set_spill(t, &msg.name, &msg.spill_to)
                })
                .await?;
            Ok(status::partitions(&now))
        })
    }
}
