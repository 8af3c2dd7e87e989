//! The unit actor: one per trading unit. It owns the unit's database pools and
//! its sequence generator, and knows nothing about other units, so a unit's
//! trouble stays inside the unit (fault containment).
//!
//! Creates (`group_commit.rs`), gets, key look-ups, pays, closes and refunds
//! (`call_batch.rs`) queue in the actor and go to the database in batches it
//! runs in its own context (`batching.rs`); the other handlers
//! (`handlers.rs`) return `ResponseFuture`s that clone the store into the
//! future. Either way the database work of many requests overlaps, while the
//! actor itself only hands work out. Units share a few threads
//! (`server.unit_threads`): a unit whose database is slow only has more
//! futures waiting, which costs its neighbours on the thread nothing. A panic
//! ends alone too: in a `ResponseFuture` it ends that call's task (tokio
//! catches a panic per task), and in the batches the actor runs in its own
//! context it is caught and restarts the actor with fresh state
//! (`actor.rs`, `spawn_contained`).

mod actor;
mod batching;
mod call_batch;
mod group_commit;
mod handlers;
mod messages;
mod relay;

pub use actor::{RelayOptions, UnitActor, UnitOptions};
pub use messages::{
    BatchCounts, BatchStats, CheckReplica, ClaimKey, CloseOrder, CloseUnit, CreateOrder,
    CreateOutcome, FenceWrites, FindByKey, GetOrder, ListRefunds, ListUserOrders, PayOrder, Probe,
    ReadMark, RefundOrder, ReplaceMark, SetOrderSection, SettleKey, SettleMeta,
};
