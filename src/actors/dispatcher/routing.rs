//! The routing table as the dispatcher sees it: units and their operator
//! settings, the merchant -> partition map, recent creates per unit, and keys
//! whose create had an unknown outcome.
//!
//! Every dispatcher shard (one per HTTP worker thread) reads the same table
//! on every create, so nothing a create does takes a lock on it: the table
//! is read-only, a unit's recent creates are atomic counters, the random
//! choice uses the thread's own generator, and the in-doubt keys (rare) sit
//! behind their own lock, which a create skips while there are none.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use actix::Addr;

use crate::actors::EngineError;
use crate::actors::health::{HealthBoard, UnitHealth};
use crate::actors::unit::UnitActor;
use crate::config::{PartitionSettings, Temperature, UnitMode, UnitSettings};
use crate::domain::circuit::CircuitState;
use crate::domain::key_filter::{KeyFilter, KeyHash};
use crate::domain::selection::{Candidate, SlidingCount, choose};
use crate::domain::values::{MerchantId, OutTradeNo};
use crate::metrics::KeyLookupMetrics;

pub type Key = (MerchantId, OutTradeNo);

/// The routing table shared by the dispatcher's shards.
pub(super) type SharedRouting = Arc<Routing>;

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
    pub in_doubt: InDoubt,
}

/// Keys whose create ended with an unknown outcome, each with the unit that
/// may have committed it, remembered for a while.
pub(super) struct InDoubt {
    /// key -> (unit, forget after)
    keys: Mutex<HashMap<Key, (u16, Instant)>>,
    /// How many keys `keys` holds, read without its lock.
    len: AtomicUsize,
    ttl: Duration,
}

impl InDoubt {
    pub fn new(ttl: Duration) -> Self {
        Self {
            keys: Mutex::default(),
            len: AtomicUsize::new(0),
            ttl,
        }
    }

    fn keys(&self) -> MutexGuard<'_, HashMap<Key, (u16, Instant)>> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn remember(&self, key: Key, unit: u16) {
        let now = Instant::now();
        let mut keys = self.keys();
        keys.retain(|_, (_, until)| *until > now);
        keys.insert(key, (unit, now + self.ttl));
        self.len.store(keys.len(), Ordering::Release);
    }

    /// Whether no key is remembered (read without the lock).
    pub fn is_empty(&self) -> bool {
        self.len.load(Ordering::Acquire) == 0
    }

    /// The unit where a create of `key` may have committed, if one is remembered.
    pub fn unit_of(&self, key: &Key) -> Option<u16> {
        if self.is_empty() {
            return None;
        }
        let mut keys = self.keys();
        match keys.get(key) {
            Some(&(unit, until)) if until > Instant::now() => Some(unit),
            Some(_) => {
                keys.remove(key);
                self.len.store(keys.len(), Ordering::Release);
                None
            }
            None => None,
        }
    }

    pub fn forget(&self, key: &Key) {
        let mut keys = self.keys();
        keys.remove(key);
        self.len.store(keys.len(), Ordering::Release);
    }
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
}
