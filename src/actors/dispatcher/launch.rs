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
use crate::actors::unit::{CloseUnit, SettleMeta, UnitActor, UnitOptions};
use crate::config::{Settings, StorageSettings, UnitSettings};
use crate::domain::key_homes::KeyRing;
use crate::storage::{Dialect, OpenError, UnitStore};

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
}

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
    pub fn new(settings: &Settings, arbiters: Vec<ArbiterHandle>, board: Arc<HealthBoard>) -> Self {
        Self {
            storage: settings.storage.clone(),
            options: UnitOptions {
                sequence_step: settings.sequence.step,
                prefetch_at_percent: settings.sequence.prefetch_at_percent,
                mailbox: settings.dispatcher.unit_mailbox,
                group_commit: settings.group_commit.clone(),
            },
            arbiters: Arc::new(arbiters),
            next: Arc::new(AtomicUsize::new(0)),
            board,
            window: Duration::from_secs(settings.dispatcher.recent_window_secs),
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
        let most =
            Dialect::of_url(&unit.primary_url).most_connections(self.storage.max_connections);
        crate::metrics::init_unit(id, most);
        crate::metrics::init_partition(&unit.partition);
        self.board.add_unit(id);
        let health = self.board.unit(id);
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % self.arbiters.len();
        let (tx, rx) = oneshot::channel();
        let (storage, options) = (self.storage.clone(), self.options.clone());
        let (primary, replica) = (unit.primary_url.clone(), unit.replica_url.clone());
        let spawned = self.arbiters[turn].spawn(async move {
            let opened = UnitStore::open(id, &primary, replica.as_deref(), &storage)
                .await
                .map(|store| {
                    actix::Supervisor::start(move |_| UnitActor::new(store, options, health))
                });
            let _ = tx.send(opened);
        });
        if !spawned {
            return Err(LaunchError::ArbiterGone(id));
        }
        let addr = rx.await.map_err(|_| LaunchError::ArbiterGone(id))??;
        if let Err(e) = settle(&addr, id, "unit_id", &id.to_string()).await {
            let _ = addr.send(CloseUnit).await;
            return Err(e);
        }
        let health = self.board.unit(id).expect("added above");
        Ok(UnitRoute::new(unit, addr, self.window, health))
    }

    /// Starts `unit` for a table that already runs on `ring`: the unit is
    /// given the ring (it is not one of its units, so no key's homes move),
    /// and refused if its database holds another.
    pub async fn join(&self, unit: UnitSettings, ring: &KeyRing) -> Result<UnitRoute, LaunchError> {
        let route = self.start(unit).await?;
        if let Err(e) = settle(&route.addr, route.settings.id, "key_ring", &ring.encode()).await {
            let _ = route.addr.send(CloseUnit).await;
            return Err(e);
        }
        Ok(route)
    }
}

/// Records `value` as the unit's `name` unless it holds one already, and
/// checks that what it holds is `value`.
async fn settle(
    addr: &Addr<UnitActor>,
    unit: u16,
    name: &'static str,
    value: &str,
) -> Result<(), LaunchError> {
    let msg = SettleMeta {
        name,
        proposed: Some(value.to_owned()),
    };
    let refused = |message: String| LaunchError::Refused { unit, message };
    match addr.send(msg).await {
        Ok(Ok(Some(held))) if held == value => Ok(()),
        Ok(Ok(held)) => Err(refused(format!(
            "its database holds {name} {held:?}, not {value:?}: it belongs to another unit or deployment"
        ))),
        Ok(Err(e)) => Err(refused(format!("cannot read its {name}: {e}"))),
        Err(e) => Err(refused(format!("cannot read its {name}: {e}"))),
    }
}
