//! The routing table with live health, as operators see it on the admin
//! listener, and the readiness the public `/readyz` shows: whether creates
//! can be taken, per partition, and nothing about where units live.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use serde::Serialize;
use utoipa::ToSchema;

use super::routing::{Routing, UnitRoute};
use crate::actors::health::{FailoverRecord, HealthBoard};
use crate::config::{Temperature, UnitMode, mask_url, mask_urls};
use crate::domain::circuit::CircuitState;
use crate::storage::ReplicaHealth;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UnitStatus {
    pub id: u16,
    pub partition: String,
    pub mode: UnitMode,
    pub temperature: Temperature,
    pub weight: u32,
    /// Password masked.
    pub primary_url: String,
    /// The first of `replica_urls` (password masked).
    pub replica_url: Option<String>,
    /// Every replica of the unit (passwords masked).
    pub replica_urls: Vec<String>,
    /// `healthy` when the circuit is closed.
    #[schema(example = "healthy")]
    pub health: String,
    /// `closed`, `half_open` or `open`.
    #[schema(example = "closed")]
    pub circuit: String,
    /// Milliseconds until an open circuit lets a trial through.
    pub circuit_retry_in_ms: u64,
    /// Whether the last probe wrote, read and committed in time.
    pub probe_ok: bool,
    pub probe_latency_ms: Option<f64>,
    /// Smoothed latency of live calls.
    pub call_latency_ms: f64,
    /// Creates routed here in the recent window, and that as a rate.
    pub recent_creates: u64,
    pub create_rate_per_sec: f64,
    /// Whether the unit can take a create right now.
    pub takes_creates: bool,
    /// Whether the unit runs: `false` while its database could not be
    /// opened (at start-up, or since the table gained or moved it); its
    /// calls answer `503` and starting it is retried.
    pub running: bool,
    /// Why it does not run (the last try), while it does not.
    pub start_error: Option<String>,
    /// The unit is disabled and this process can no longer change its
    /// database (`server.request_timeout_ms` after the change, plus two
    /// statement timeouts for transactions that had begun): once every
    /// process says so, the database may be copied to move the unit.
    pub writes_fenced: bool,
    pub restarts: u64,
    /// Whether the unit is in the key ring: a home of idempotency keys,
    /// whose records creates of those keys write and read.
    pub key_home: bool,
    /// The first replica's last check (units with replicas).
    pub replica: Option<ReplicaStatus>,
    /// Each replica's last check, in the order of `replica_urls`.
    pub replicas: Vec<ReplicaStatus>,
    /// The unit's last failover run by this process.
    pub last_failover: Option<FailoverRecord>,
}

/// A replica as eventual reads see it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReplicaStatus {
    /// Password masked.
    pub url: String,
    /// `null` until it was first checked.
    pub reachable: Option<bool>,
    /// How far behind its primary it is (from the probes' heartbeats).
    pub lag_ms: Option<i64>,
    /// Why it was not reachable (the last check).
    pub error: Option<String>,
}

fn replica_status(route: &UnitRoute) -> Vec<ReplicaStatus> {
    let health = route
        .replication
        .as_ref()
        .map(|r| r.health())
        .unwrap_or_default();
    let urls = &route.settings.replica_urls;
    urls.iter()
        .enumerate()
        .map(|(i, url)| {
            let url = mask_url(url);
            match health.get(i).cloned().unwrap_or(ReplicaHealth::Unknown) {
                ReplicaHealth::Unknown => ReplicaStatus {
                    url,
                    reachable: None,
                    lag_ms: None,
                    error: None,
                },
                ReplicaHealth::Reachable { lag_ms } => ReplicaStatus {
                    url,
                    reachable: Some(true),
                    lag_ms: Some(lag_ms),
                    error: None,
                },
                ReplicaHealth::Unreachable { error } => ReplicaStatus {
                    url,
                    reachable: Some(false),
                    lag_ms: None,
                    error: Some(error),
                },
            }
        })
        .collect()
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PartitionStatus {
    pub name: String,
    pub units: Vec<u16>,
    /// Too few units look healthy: health is ignored for creates here.
    pub panic: bool,
}

/// Where the routing table is kept, and whether this process reaches it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TableStore {
    /// `memory` (changes last until the process stops), `file`
    /// (`admin.state_file`) or `control_store` (`admin.control_url`, shared
    /// by every engine process).
    #[schema(example = "control_store")]
    pub kind: &'static str,
    /// Whether the last exchange with the control store worked (only for a
    /// control store). While it does not, this process routes by the last
    /// table it has and refuses changes (`503 table_not_saved`).
    pub reachable: Option<bool>,
    /// Since the last exchange with the control store that worked.
    pub last_contact_ms_ago: Option<u64>,
    /// What went wrong with the last exchange.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EngineStatus {
    /// The routing table's version (`If-Match` on a change names it).
    pub version: u64,
    /// Where the table is kept.
    pub table_store: TableStore,
    /// At least one unit can take creates.
    pub ready: bool,
    /// Every probe of the last round failed while something else did not:
    /// the prober, not the units, is suspected, and health is frozen.
    pub prober_suspected: bool,
    pub partitions: Vec<PartitionStatus>,
    pub units: Vec<UnitStatus>,
}

/// Public readiness: no unit ids, URLs or settings.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Readiness {
    /// At least one unit can take creates.
    pub ready: bool,
    pub partitions: Vec<PartitionReadiness>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PartitionReadiness {
    #[schema(example = "standard")]
    pub name: String,
    /// Units in the partition.
    pub units: usize,
    /// Of those, units that can take a create now.
    pub taking_creates: usize,
    /// Too few units look healthy: health is ignored for creates here.
    pub panic: bool,
}

/// Units by partition.
fn by_partition(routing: &Routing) -> BTreeMap<&str, Vec<u16>> {
    let mut map: BTreeMap<&str, Vec<u16>> = BTreeMap::new();
    for u in routing.units.values() {
        map.entry(&u.settings.partition)
            .or_default()
            .push(u.settings.id);
    }
    map
}

/// Units by partition, for every partition the table knows (those without
/// units yet are still places a unit or merchant may be moved to).
fn every_partition(routing: &Routing) -> BTreeMap<&str, Vec<u16>> {
    let mut all = by_partition(routing);
    for name in routing.known_partitions() {
        all.entry(name).or_default();
    }
    all
}

/// Whether `u` can take a create now: its operator lets it, and its circuit
/// is closed or its partition ignores health (panic mode).
fn taking_creates(u: &UnitRoute, board: &HealthBoard) -> bool {
    u.takes_creates()
        && (board.circuit(u.settings.id) == CircuitState::Closed
            || board.in_panic(&u.settings.partition))
}

/// Whether each partition can take creates now (read from the table and
/// the board directly: `/readyz` is polled, and needs no URLs masked).
pub(super) fn readiness(routing: &Routing, board: &HealthBoard) -> Readiness {
    let partitions: Vec<PartitionReadiness> = by_partition(routing)
        .into_iter()
        .map(|(name, units)| PartitionReadiness {
            taking_creates: units
                .iter()
                .filter(|id| taking_creates(&routing.units[*id], board))
                .count(),
            units: units.len(),
            panic: board.in_panic(name),
            name: name.to_string(),
        })
        .collect();
    Readiness {
        ready: partitions.iter().any(|p| p.taking_creates > 0),
        partitions,
    }
}

pub(super) fn snapshot(routing: &Routing, board: &HealthBoard, store: TableStore) -> EngineStatus {
    let now = routing.started.elapsed();
    let units: Vec<UnitStatus> = routing
        .units
        .values()
        .map(|u| {
            let s = &u.settings;
            let h = board.unit(s.id);
            let circuit = board.circuit(s.id);
            let window = u.recent.window().as_secs_f64().max(1.0);
            let recent = u.recent.count(now);
            let replicas = replica_status(u);
            UnitStatus {
                id: s.id,
                partition: s.partition.clone(),
                mode: s.mode,
                temperature: s.temperature,
                weight: s.weight,
                primary_url: mask_url(&s.primary_url),
                replica_url: s.replica_urls.first().map(|r| mask_url(r)),
                replica_urls: mask_urls(&s.replica_urls),
                health: if circuit == CircuitState::Closed {
                    "healthy"
                } else {
                    "unhealthy"
                }
                .into(),
                circuit: circuit.as_str().into(),
                circuit_retry_in_ms: h
                    .as_ref()
                    .map_or(0, |h| h.retry_in_ms.load(Ordering::Relaxed)),
                probe_ok: h
                    .as_ref()
                    .is_none_or(|h| h.probe_ok.load(Ordering::Relaxed)),
                probe_latency_ms: h
                    .as_ref()
                    .map(|h| h.probe_latency_us.load(Ordering::Relaxed))
                    .filter(|us| *us >= 0)
                    .map(|us| us as f64 / 1000.0),
                call_latency_ms: h.as_ref().map_or(0.0, |h| {
                    h.call_latency_us.load(Ordering::Relaxed) as f64 / 1000.0
                }),
                recent_creates: recent,
                create_rate_per_sec: recent as f64 / window,
                takes_creates: taking_creates(u, board),
                running: u.addr.is_some(),
                start_error: h
                    .as_ref()
                    .and_then(|h| h.start_error.lock().expect("not poisoned").clone()),
                writes_fenced: h
                    .as_ref()
                    .is_some_and(|h| h.writes_fenced.load(Ordering::Acquire)),
                restarts: h.as_ref().map_or(0, |h| h.restarts.load(Ordering::Relaxed)),
                key_home: routing.ring.units().contains(&u.settings.id),
                replica: replicas.first().cloned(),
                replicas,
                last_failover: h.as_ref().and_then(|h| h.last_failover()),
            }
        })
        .collect();
    let partitions = every_partition(routing)
        .into_iter()
        .map(|(name, units)| PartitionStatus {
            panic: board.in_panic(name),
            name: name.to_string(),
            units,
        })
        .collect();
    EngineStatus {
        version: routing.version,
        table_store: store,
        ready: units.iter().any(|u| u.takes_creates),
        prober_suspected: board.prober_suspected(),
        partitions,
        units,
    }
}

/// Where a merchant's creates go.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MerchantRoute {
    /// The routing table's version.
    pub version: u64,
    #[schema(example = "m-1")]
    pub merchant_id: String,
    #[schema(example = "standard")]
    pub partition: String,
    /// False when the merchant is not mapped and takes the default partition.
    pub mapped: bool,
}

/// Every partition the routing table knows.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PartitionTable {
    /// The routing table's version.
    pub version: u64,
    pub default_partition: String,
    pub partitions: Vec<PartitionEntry>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PartitionEntry {
    #[schema(example = "standard")]
    pub name: String,
    /// Partitions this one's creates spill into, in order, when none of its
    /// own units can take them.
    pub spill_to: Vec<String>,
    /// Units in the partition.
    pub units: Vec<u16>,
}

/// Where `merchant`'s creates go.
pub(super) fn merchant(routing: &Routing, merchant: &str) -> MerchantRoute {
    MerchantRoute {
        version: routing.version,
        merchant_id: merchant.to_owned(),
        partition: routing.partition_of_str(merchant).to_owned(),
        mapped: routing.merchants.contains_key(merchant),
    }
}

/// Every partition the table knows, with its spill rules and units.
pub(super) fn partitions(routing: &Routing) -> PartitionTable {
    PartitionTable {
        version: routing.version,
        default_partition: routing.default_partition.clone(),
        partitions: every_partition(routing)
            .into_iter()
            .map(|(name, units)| PartitionEntry {
                name: name.to_owned(),
                spill_to: routing
                    .partitions
                    .get(name)
                    .map(|p| p.spill_to.clone())
                    .unwrap_or_default(),
                units,
            })
            .collect(),
    }
}
