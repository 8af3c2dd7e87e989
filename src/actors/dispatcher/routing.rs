//! The routing table as the dispatcher sees it: units and their operator
//! settings, the merchant -> partition map, recent creates per unit, and the
//! key ring (which units are homes of idempotency keys).
//!
//! Every dispatcher shard (one per HTTP worker thread) reads the same table
//! on every create, so nothing a create does takes a lock on it: a table is
//! read-only once built, a change builds the next one and swaps it in whole
//! (`table.rs`), a unit's recent creates are atomic counters shared by every
//! version of the table, the random choice uses the thread's own generator.

use crate::domain::replication::ConsistencyToken;
use crate::storage::Replication;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Addr;

use crate::actors::EngineError;
use crate::actors::health::{HealthBoard, UnitHealth};
use crate::actors::unit::UnitActor;
use crate::config::{PartitionSettings, Temperature, UnitMode, UnitSettings};
use crate::domain::circuit::CircuitState;
use crate::domain::key_homes::KeyRing;
use crate::domain::selection::{Candidate, SlidingCount, choose};
use crate::domain::values::{MerchantId, OutTradeNo};

pub type Key = (MerchantId, OutTradeNo);

/// The routing table shared by the dispatcher's shards.
pub(super) type SharedRouting = Arc<Routing>;

/// A unit as the dispatcher routes to it.
#[derive(Clone)]
pub struct UnitRoute {
    pub settings: UnitSettings,
    /// The unit's actor; `None` while its database could not be opened
    /// (at start-up, or when the table gained or moved it): its calls then
    /// answer `503` and starting it is retried.
    pub addr: Option<Addr<UnitActor>>,
    /// Shared by every version of the table, so a change keeps the count.
    pub(super) recent: Arc<SlidingCount>,
    /// The running store's replica measurement and commit position (`None`
    /// while the unit does not run): the route's own, so that a token is
    /// never read from an actor the table does not hold.
    pub replication: Option<Arc<Replication>>,
    /// The unit's entry on the health board, held here so that choosing a
    /// unit for a create reads its circuit without a look-up in the board's
    /// map (whose shard lock both HTTP workers took, four times per create).
    health: Arc<UnitHealth>,
}

impl UnitRoute {
    pub fn new(
        settings: UnitSettings,
        addr: Addr<UnitActor>,
        replication: Arc<Replication>,
        window: Duration,
        health: Arc<UnitHealth>,
    ) -> Self {
        Self {
            settings,
            addr: Some(addr),
            replication: Some(replication),
            recent: Arc::new(SlidingCount::new(window)),
            health,
        }
    }

    /// A unit whose database could not be opened yet.
    pub fn unstarted(settings: UnitSettings, window: Duration, health: Arc<UnitHealth>) -> Self {
        Self {
            settings,
            addr: None,
            replication: None,
            recent: Arc::new(SlidingCount::new(window)),
            health,
        }
    }

    /// The same unit on another database (its actor `addr`): its create
    /// count and health carry over.
    pub fn repointed(
        &self,
        settings: UnitSettings,
        addr: Option<Addr<UnitActor>>,
        replication: Option<Arc<Replication>>,
    ) -> Self {
        Self {
            settings,
            addr,
            replication,
            ..self.clone()
        }
    }

    /// This route with other settings (the same actor).
    pub fn with_settings(&self, settings: UnitSettings) -> Self {
        Self {
            settings,
            ..self.clone()
        }
    }

    /// The unit's entry on the health board.
    pub fn health(&self) -> Arc<UnitHealth> {
        self.health.clone()
    }

    /// The token a write in this unit answers: with the unit's commit
    /// position when the write committed something (`wrote`) and the unit
    /// has a replica to wait for; otherwise without, which sends a read
    /// that presents it to the primary.
    pub fn token(&self, wrote: bool) -> ConsistencyToken {
        let position = wrote
            .then_some(self.replication.as_ref())
            .flatten()
            .and_then(|r| r.position());
        ConsistencyToken {
            unit: self.settings.id,
            position,
        }
    }

    /// Whether the operator lets this unit take new orders (and it runs).
    pub fn takes_creates(&self) -> bool {
        self.addr.is_some()
            && self.settings.mode == UnitMode::Open
            && self.settings.temperature != Temperature::Cold
            && self.settings.weight > 0
    }
}

#[derive(Clone)]
pub(super) struct Routing {
    /// Starts at the version the table was loaded with; +1 per change.
    pub version: u64,
    pub units: BTreeMap<u16, UnitRoute>,
    pub merchants: BTreeMap<String, String>,
    pub partitions: BTreeMap<String, PartitionSettings>,
    pub default_partition: String,
    pub started: Instant,
    /// The units that are homes of idempotency keys.
    pub ring: KeyRing,
}

impl Routing {
    pub fn partition_of(&self, merchant: &MerchantId) -> &str {
        self.partition_of_str(merchant.as_str())
    }

    /// The partition of the merchant named `merchant`.
    pub fn partition_of_str(&self, merchant: &str) -> &str {
        self.merchants
            .get(merchant)
            .unwrap_or(&self.default_partition)
    }

    /// Units of `partition` that may take a create now, minus those in `tried`.
    /// Units whose circuit is not closed are left out unless `trust_health` is
    /// off (the merchant's partition is in panic mode).
    fn candidates(&self, partition: &str, tried: &[u16], trust_health: bool) -> Vec<Candidate> {
        let now = self.started.elapsed();
        self.units
            .values()
            .filter(|u| u.settings.partition == partition && u.takes_creates())
            .filter(|u| !tried.contains(&u.settings.id))
            .filter(|u| !trust_health || u.health.circuit() == CircuitState::Closed)
            .map(|u| Candidate {
                unit: u.settings.id,
                weight: u.settings.weight,
                recent: u.recent.count(now),
            })
            .collect()
    }

    /// Picks the unit for a create by `merchant`: its partition first, then the
    /// partitions it may spill into, in order. Counts the create against the unit.
    pub fn choose_for_create(
        &self,
        merchant: &MerchantId,
        tried: &[u16],
        board: &HealthBoard,
    ) -> Option<(u16, Addr<UnitActor>)> {
        let home = self.partition_of(merchant);
        let spill = self
            .partitions
            .get(home)
            .map_or(&[][..], |p| p.spill_to.as_slice());
        let trust_health = !board.in_panic(home);
        let mut rng = rand::rng();
        let unit = std::iter::once(home)
            .chain(spill.iter().map(String::as_str))
            .find_map(|p| choose(&self.candidates(p, tried, trust_health), &mut rng))?;
        let route = self.units.get(&unit)?;
        route.recent.record(self.started.elapsed());
        Some((unit, route.addr.clone()?))
    }

    /// Every partition the table knows: the default, configured ones (with
    /// spill rules), those merchants are mapped to or creates spill into,
    /// and those units are in.
    pub fn known_partitions(&self) -> std::collections::BTreeSet<&str> {
        std::iter::once(self.default_partition.as_str())
            .chain(self.partitions.keys().map(String::as_str))
            .chain(
                self.partitions
                    .values()
                    .flat_map(|p| p.spill_to.iter().map(String::as_str)),
            )
            .chain(self.merchants.values().map(String::as_str))
            .chain(self.units.values().map(|u| u.settings.partition.as_str()))
            .collect()
    }

    /// The token of a write in `unit` (see [`UnitRoute::token`]).
    pub fn token(&self, unit: u16, wrote: bool) -> ConsistencyToken {
        match self.units.get(&unit) {
            Some(route) => route.token(wrote),
            None => ConsistencyToken {
                unit,
                position: None,
            },
        }
    }

    /// The unit that holds an order of unit `unit`.
    pub fn route(&self, unit: u16) -> Result<Addr<UnitActor>, EngineError> {
        match self.units.get(&unit) {
            None => Err(EngineError::NotFound),
            Some(u) if u.settings.mode == UnitMode::Disabled => {
                Err(EngineError::UnitUnavailable { unit })
            }
            Some(u) => u.addr.clone().ok_or(EngineError::UnitUnavailable { unit }),
        }
    }

    /// Every unit, for lists that read them all: `None` for a unit the
    /// operator disabled or that does not run (it is not asked, and the
    /// list says so).
    pub fn all_units(&self) -> Vec<(u16, Option<Addr<UnitActor>>)> {
        self.units
            .values()
            .map(|u| {
                let asked = u.settings.mode != UnitMode::Disabled;
                (u.settings.id, u.addr.clone().filter(|_| asked))
            })
            .collect()
    }
}
