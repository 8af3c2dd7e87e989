//! Starting a unit: its database opened (created and migrated when new) on
//! one of the unit threads, its actor started there under
//! `actix::Supervisor`, and its database checked to be this unit's. The
//! same path serves start-up and a unit that joins the live table
//! (`POST /admin/units`, or another process's change picked up from the
//! control store).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use actix::{Addr, ArbiterHandle};
use tokio::sync::oneshot;

use super::routing::UnitRoute;
use crate::actors::health::HealthBoard;
use crate::actors::unit::{CloseUnit, RelayOptions, SettleMeta, UnitActor, UnitOptions};
use crate::config::{Settings, StorageSettings, UnitSettings};
use crate::domain::circuit::CircuitState;
use crate::domain::key_homes::KeyRing;
use crate::metrics as m;
use crate::storage::failover::FENCE_MARK;
use crate::storage::{Dialect, OpenError, Replication, UnitStore};

/// Why a unit could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("unit {0}: its thread stopped during start-up")]
    ArbiterGone(u16),
    /// The database answered, but is not this unit's, or not this
    /// deployment's.
    #[error("unit {unit}: {message}")]
    Refused { unit: u16, message: String },
    /// Opening or checking the database failed or took too long; it may
    /// work later.
    #[error("unit {unit}: {message}")]
    Unavailable { unit: u16, message: String },
}

/// Longest a unit may take to open (connect, create, migrate) and be
/// checked before the change that wanted it gives up: a database that
/// hangs must not hold the routing table's changes.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts units on the unit threads, in turn.
#[derive(Clone)]
pub struct UnitLauncher {
    storage: StorageSettings,
    options: UnitOptions,
    arbiters: Arc<Vec<ArbiterHandle>>,
    next: Arc<AtomicUsize>,
    board: Arc<HealthBoard>,
    window: Duration,
}

impl UnitLauncher {
    pub fn new(
        settings: &Settings,
        arbiters: Vec<ArbiterHandle>,
        board: Arc<HealthBoard>,
        relay: Option<RelayOptions>,
    ) -> Self {
        Self {
            storage: settings.storage.clone(),
            options: UnitOptions {
                sequence_step: settings.sequence.step,
                prefetch_at_percent: settings.sequence.prefetch_at_percent,
                mailbox: settings.dispatcher.unit_mailbox,
                group_commit: settings.group_commit.clone(),
                relay,
            },
            arbiters: Arc::new(arbiters),
            next: Arc::new(AtomicUsize::new(0)),
            board,
            window: Duration::from_secs(settings.dispatcher.recent_window_secs),
        }
    }

    /// `unit` as a unit that does not run yet (its database could not be
    /// opened, `why`): its circuit shows open until it starts.
    pub fn unstarted(&self, unit: UnitSettings, why: &LaunchError) -> UnitRoute {
        let id = unit.id;
        self.board.add_unit(id);
        self.board.set_circuit(id, CircuitState::Open, 0, 0);
        let health = self.board.unit(id).expect("added above");
        *health.start_error.lock().expect("not poisoned") = Some(why.to_string());
        // What the supervisor publishes for a unit it watches (it does not
        // watch one that does not run): down, circuit open.
        let label = id.to_string();
        metrics::gauge!(m::UNIT_UP, "unit" => label.clone()).set(0.0);
        metrics::gauge!(m::CIRCUIT_STATE, "unit" => label)
            .set(f64::from(CircuitState::Open.as_level()));
        UnitRoute::unstarted(unit, self.window, health)
    }

    /// Marks unit `id` as running again (its circuit closed, no error).
    pub fn started(&self, id: u16) {
        self.board.set_circuit(id, CircuitState::Closed, 0, 0);
        if let Some(h) = self.board.unit(id) {
            *h.start_error.lock().expect("not poisoned") = None;
        }
    }

    /// Notes why unit `id` still does not run.
    pub fn still_down(&self, id: u16, why: &LaunchError) {
        if let Some(h) = self.board.unit(id) {
            *h.start_error.lock().expect("not poisoned") = Some(why.to_string());
        }
    }

    /// The health board each started unit gets an entry on.
    pub fn board(&self) -> &Arc<HealthBoard> {
        &self.board
    }

    /// Opens `unit`'s database and starts its actor; checks that the
    /// database is this unit's (a database records the unit it belongs to
    /// the first time it is used, so that two units never share one).
    pub async fn start(&self, unit: UnitSettings) -> Result<UnitRoute, LaunchError> {
        let id = unit.id;
        let (addr, replication) = self.open(&unit).await?;
        check(&addr, id, "unit_id", &id.to_string(), Settle::IfAbsent).await?;
        let health = self.board.unit(id).expect("added when opened");
        Ok(UnitRoute::new(unit, addr, replication, self.window, health))
    }

    /// Starts `unit` on a database that must record it already (a unit
    /// not at its config's database: added or moved through the admin API).
    pub async fn start_existing(&self, unit: UnitSettings) -> Result<UnitRoute, LaunchError> {
        let id = unit.id;
        let (addr, replication) = self.open(&unit).await?;
        check(&addr, id, "unit_id", &id.to_string(), Settle::Never).await?;
        let health = self.board.unit(id).expect("added when opened");
        Ok(UnitRoute::new(unit, addr, replication, self.window, health))
    }

    /// Starts `unit` for a table that already runs on `ring`: the unit is
    /// given the ring (it is not one of its units, so no key's homes move),
    /// and refused if its database holds another.
    pub async fn join(&self, unit: UnitSettings, ring: &KeyRing) -> Result<UnitRoute, LaunchError> {
        let route = self.start(unit).await?;
        let (id, addr) = (route.settings.id, route.addr.as_ref().expect("started"));
        check(addr, id, "key_ring", &ring.encode(), Settle::IfAbsent).await?;
        Ok(route)
    }

    /// Starts a unit another engine process added (the shared table gained
    /// it): its database must record this unit and `ring` already (that
    /// process started it first), so that a URL that reaches another
    /// server from here is refused instead of becoming a second database
    /// of the unit.
    pub async fn pick_up(
        &self,
        unit: UnitSettings,
        ring: &KeyRing,
    ) -> Result<UnitRoute, LaunchError> {
        let id = unit.id;
        let (addr, replication) = self.open(&unit).await?;
        check(&addr, id, "unit_id", &id.to_string(), Settle::Never).await?;
        check(&addr, id, "key_ring", &ring.encode(), Settle::Never).await?;
        let health = self.board.unit(id).expect("added when opened");
        Ok(UnitRoute::new(unit, addr, replication, self.window, health))
    }

    /// Starts `route`'s unit anew on the database `settings` names (another
    /// server holding a copy of its database): refused unless that database
    /// already records this unit and `ring`, so that a unit is never
    /// repointed to an empty database or to another unit's. The new actor's
    /// sequence starts past every order the database holds.
    pub async fn repoint(
        &self,
        route: &UnitRoute,
        settings: UnitSettings,
        ring: &KeyRing,
    ) -> Result<UnitRoute, LaunchError> {
        let id = settings.id;
        let (addr, replication) = self.open(&settings).await?;
        check(&addr, id, "unit_id", &id.to_string(), Settle::Never).await?;
        check(&addr, id, "key_ring", &ring.encode(), Settle::Never).await?;
        Ok(route.repointed(settings, Some(addr), Some(replication)))
    }

    /// Opens `unit`'s database (creating and migrating it when needed) and
    /// starts its actor, both on one of the unit threads, so that the
    /// unit's connections belong to the thread that uses them.
    async fn open(
        &self,
        unit: &UnitSettings,
    ) -> Result<(Addr<UnitActor>, Arc<Replication>), LaunchError> {
        let id = unit.id;
        let most =
            Dialect::of_url(&unit.primary_url).most_connections(self.storage.max_connections);
        crate::metrics::init_unit(id, most);
        crate::metrics::set_replicas(id, unit.replica_urls.len());
        crate::metrics::init_partition(&unit.partition);
        self.board.add_unit(id);
        let health = self.board.unit(id);
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % self.arbiters.len();
        let (tx, rx) = oneshot::channel();
        let (storage, options) = (self.storage.clone(), self.options.clone());
        let (primary, replicas) = (unit.primary_url.clone(), unit.replica_urls.clone());
        let spawned = self.arbiters[turn].spawn(async move {
            let opened = UnitStore::open(id, &primary, &replicas, &storage)
                .await
                .map(|store| {
                    let replication = store.replication();
                    let addr =
                        actix::Supervisor::start(move |_| UnitActor::new(store, options, health));
                    (addr, replication)
                });
            if let Err(Ok((late, _))) = tx.send(opened) {
                // Nobody waits for it any more (it took too long).
                late.do_send(CloseUnit);
            }
        });
        if !spawned {
            return Err(LaunchError::ArbiterGone(id));
        }
        let addr = match tokio::time::timeout(LAUNCH_TIMEOUT, rx).await {
            Ok(opened) => opened.map_err(|_| LaunchError::ArbiterGone(id))??,
            Err(_) => {
                return Err(LaunchError::Unavailable {
                    unit: id,
                    message: format!("its database did not open within {LAUNCH_TIMEOUT:?}"),
                });
            }
        };
        refuse_fenced(&addr.0, id).await?;
        Ok(addr)
    }
}

/// Refuses a database a failover replaced (`storage::failover`): it takes
/// no writes, and what it holds may be older than the unit's data.
async fn refuse_fenced(addr: &Addr<UnitActor>, unit: u16) -> Result<(), LaunchError> {
    let msg = SettleMeta {
        name: FENCE_MARK,
        proposed: None,
    };
    let refused = match addr.send(msg).await {
        Ok(Ok(None)) => return Ok(()),
        Ok(Ok(Some(why))) => LaunchError::Refused {
            unit,
            message: format!("its database was replaced by a failover ({why}); it takes no writes"),
        },
        Ok(Err(e)) => LaunchError::Unavailable {
            unit,
            message: format!("cannot read its {FENCE_MARK}: {e}"),
        },
        Err(e) => LaunchError::Unavailable {
            unit,
            message: format!("cannot read its {FENCE_MARK}: {e}"),
        },
    };
    let _ = addr.send(CloseUnit).await;
    Err(refused)
}

/// Whether a check may record the value in a database that has none.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Settle {
    IfAbsent,
    Never,
}

/// Checks that the unit's database holds `value` as its `name` (recording
/// it first when absent and `settle` allows); a unit that fails the check
/// is closed.
async fn check(
    addr: &Addr<UnitActor>,
    unit: u16,
    name: &'static str,
    value: &str,
    settle: Settle,
) -> Result<(), LaunchError> {
    let msg = SettleMeta {
        name,
        proposed: (settle == Settle::IfAbsent).then(|| value.to_owned()),
    };
    let refused = |message: String| LaunchError::Refused { unit, message };
    let checked = match addr.send(msg).await {
        Ok(Ok(Some(held))) if held == value => Ok(()),
        Ok(Ok(Some(held))) => Err(refused(format!(
            "its database holds {name} {held:?}, not {value:?}: it belongs to another unit or deployment"
        ))),
        Ok(Ok(None)) => Err(refused(format!(
            "its database holds no {name}: it is not a copy of this unit's database"
        ))),
        Ok(Err(e)) => Err(LaunchError::Unavailable {
            unit,
            message: format!("cannot read its {name}: {e}"),
        }),
        Err(e) => Err(LaunchError::Unavailable {
            unit,
            message: format!("cannot read its {name}: {e}"),
        }),
    };
    if checked.is_err() {
        let _ = addr.send(CloseUnit).await;
    }
    checked
}
