//! One trading unit's database. Both back ends (MySQL/MariaDB in production,
//! SQLite as the embedded default) run through sqlx's `Any` driver, so the
//! queries are one code path; the few statements that differ by dialect are
//! chosen by [`Dialect`]. See `docs/storage.md` for why it is built this way.
//!
//! - `open.rs`: connect, create, migrate; `connect.rs`: dialects and pool
//!   options; `store.rs`: the pools and lanes (`lane.rs`) and the statement
//!   timeouts every call runs under; `error.rs`: what failed, and whether it
//!   may have committed.
//! - `orders.rs`: creates and reads; `updates.rs`: pays and closes;
//!   `refunds.rs`: refunds; `outbox.rs` and `events.rs`: change events;
//!   `claims.rs`: the units' records of idempotency keys;
//!   `sequence.rs`: the order sequence; `probe.rs`: health probes;
//!   `replica.rs`: replica lag, eventual and read-your-writes reads
//!   (`replication.rs`: what the store keeps about its replicas);
//!   `sql.rs`: what their statements share.
//! - `failover.rs`: fencing, catching up and promoting a unit's servers,
//!   and `rejoin.rs`: re-pointing its other replicas at the promoted one;
//!   `control.rs`: the control database several engine processes share
//!   the routing table through (not a unit's).

mod claims;
mod connect;
mod control;
mod created;
mod error;
mod events;
pub mod failover;
mod lane;
mod open;
mod orders;
mod outbox;
mod probe;
mod refunds;
pub mod rejoin;
mod relay;
mod replica;
mod replication;
pub mod sequence;
mod sql;
mod store;
mod updates;

pub use claims::{Key, KeyClaim, Settled};
pub use connect::Dialect;
pub use control::{ControlError, ControlStore, Swapped};
pub use error::StoreError;
pub use events::OutboxEvent;
pub use open::OpenError;
pub use orders::{BatchOutcome, InsertOutcome, Page};
pub use replication::{ReplicaHealth, Replication, ServedBy};
pub use store::{PoolStats, UnitStore, now_ms};
pub use updates::BatchAnswers;
