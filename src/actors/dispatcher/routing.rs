//! The routing table as the dispatcher sees it: units and their operator
//! settings, the merchant -> partition map, recent creates per unit, and keys
//! whose create had an unknown outcome.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use actix::Addr;
use rand::rngs::StdRng;

use crate::actors::health::{HealthBoard, UnitHealth};
use crate::actors::unit::UnitActor;
use crate::config::{PartitionSettings, Temperature, UnitMode, UnitSettings};
use crate::domain::circuit::CircuitState;
use crate::domain::key_filter::{KeyFilter, KeyHash};
use crate::domain::selection::{Candidate, SlidingCount, choose};
use crate::domain::values::{MerchantId, OutTradeNo};
use crate::error::EngineError;
use crate::metrics::KeyLookupMetrics;

pub type Key = (MerchantId, OutTradeNo);

/// The routing table shared by the dispatcher's shards. The lock is held for a
/// table operation only, never across an await.
#[derive(Clone)]
pub(super) struct SharedRouting(Arc<Mutex<Routing>>);

impl SharedRouting {
    pub fn new(routing: Routing) -> Self {
        Self(Arc::new(Mutex::new(routing)))
    }

    pub fn get(&self) -> MutexGuard<'_, Routing> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A unit as the dispatcher routes to it.
pub struct UnitRoute {
    pub settings: UnitSettings,
    pub addr: Addr<UnitActor>,
    pub(super) recent: SlidingCount,
    /// The keys the unit may hold (`None`: the filter is off; always ask).
    pub(super) filter: Option<Arc<KeyFilter>>,
    /// How often creates asked this unit for a key, or skipped it.
    lookups: KeyLookupMetrics,
    /// The unit's entry on the health board, held here so that choosing a
    /// unit for a create reads its circuit without a look-up in the board's
    /// map (whose shard lock both HTTP workers took, four times per create).
    health: Arc<UnitHealth>,
}

impl UnitRoute {
    pub fn new(
        settings: UnitSettings,
        addr: Addr<UnitActor>,
        window: Duration,
        filter: Option<Arc<KeyFilter>>,
        health: Arc<UnitHealth>,
    ) -> Self {
        Self {
            lookups: KeyLookupMetrics::for_unit(settings.id),
            settings,
            addr,
            recent: SlidingCount::new(window),
            filter,
            health,
        }
    }

    /// Whether the unit may hold `key`: false only when its loaded filter
    /// rules the key out.
    fn may_hold(&self, key: KeyHash) -> bool {
        self.filter
            .as_ref()
            .is_none_or(|f| !f.is_ready() || f.may_contain_hash(key))
    }

    /// Whether the operator lets this unit take new orders.
    pub fn takes_creates(&self) -> bool {
        self.settings.mode == UnitMode::Open
            && self.settings.temperature != Temperature::Cold
            && self.settings.weight > 0
    }
}

pub(super) struct Routing {
    pub units: BTreeMap<u16, UnitRoute>,
    pub merchants: BTreeMap<String, String>,
    pub partitions: BTreeMap<String, PartitionSettings>,
    pub default_partition: String,
    pub started: Instant,
    pub rng: StdRng,
    /// key -> (unit whose commit outcome is unknown, forget after)
    pub in_doubt: HashMap<Key, (u16, Instant)>,
    pub in_doubt_ttl: Duration,
}

impl Routing {
    pub fn partition_of(&self, merchant: &MerchantId) -> &str {
        self.merchants
            .get(merchant.as_str())
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
        &mut self,
        merchant: &MerchantId,
        tried: &[u16],
        board: &HealthBoard,
    ) -> Option<(u16, Addr<UnitActor>)> {
        let home = self.partition_of(merchant).to_string();
        let spill = self
            .partitions
            .get(&home)
            .map(|p| p.spill_to.clone())
            .unwrap_or_default();
        let trust_health = !board.in_panic(&home);
        let unit = std::iter::once(home).chain(spill).find_map(|p| {
            let candidates = self.candidates(&p, tried, trust_health);
            choose(&candidates, &mut self.rng)
        })?;
        let now = self.started.elapsed();
        let route = self.units.get_mut(&unit)?;
        route.recent.record(now);
        Some((unit, route.addr.clone()))
    }

    /// The unit that holds an order of unit `unit`.
    pub fn route(&self, unit: u16) -> Result<Addr<UnitActor>, EngineError> {
        match self.units.get(&unit) {
            None => Err(EngineError::NotFound),
            Some(u) if u.settings.mode == UnitMode::Disabled => {
                Err(EngineError::UnitUnavailable { unit })
            }
            Some(u) => Ok(u.addr.clone()),
        }
    }

    /// Units asked by fan-out look-ups: every unit the operator has not disabled.
    pub fn lookup_targets(&self) -> Vec<(u16, Addr<UnitActor>)> {
        self.units
            .values()
            .filter(|u| u.settings.mode != UnitMode::Disabled)
            .map(|u| (u.settings.id, u.addr.clone()))
            .collect()
    }

    /// The units a new order's key must be looked up in before it is created
    /// in `target`: every other unit not disabled whose key filter does not
    /// rule the key out. Also returns how many were ruled out.
    pub fn key_lookup_targets(
        &self,
        key: KeyHash,
        target: Option<u16>,
    ) -> Vec<(u16, Addr<UnitActor>)> {
        self.units
            .values()
            .filter(|u| u.settings.mode != UnitMode::Disabled && Some(u.settings.id) != target)
            .filter(|u| {
                let ask = u.may_hold(key);
                let counter = if ask {
                    &u.lookups.asked
                } else {
                    &u.lookups.skipped
                };
                counter.increment(1);
                ask
            })
            .map(|u| (u.settings.id, u.addr.clone()))
            .collect()
    }

    /// Records that `key` is about to be written in `unit` (before the
    /// insert, so no later look-up can miss it).
    pub fn note_key(&self, unit: u16, key: KeyHash) {
        if let Some(f) = self.units.get(&unit).and_then(|u| u.filter.as_ref()) {
            f.insert_hash(key);
        }
    }

    pub fn remember_in_doubt(&mut self, key: Key, unit: u16) {
        let until = Instant::now() + self.in_doubt_ttl;
        self.in_doubt.insert(key, (unit, until));
    }

    /// The unit where a create of `key` may have committed, if one is remembered.
    pub fn in_doubt_unit(&mut self, key: &Key) -> Option<u16> {
        let now = Instant::now();
        self.in_doubt.retain(|_, (_, until)| *until > now);
        self.in_doubt.get(key).map(|(unit, _)| *unit)
    }

    pub fn forget_in_doubt(&mut self, key: &Key) {
        self.in_doubt.remove(key);
    }
}
