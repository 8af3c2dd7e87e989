//! Failing a unit over to its replica (`POST /admin/units/{id}/failover`).
//!
//! **Planned** (the old primary answers): this process stops writing to
//! the unit; the old primary is fenced (`storage::failover`: triggers that
//! refuse every write, for every user and every engine process, installed
//! once the transactions in flight there have ended), so its binlog
//! position is final; the replica applies up to it; it is promoted; the
//! unit is repointed at it through the routing table, which every other
//! process follows.
//!
//! **Emergency** (the old primary is dead): the same, except that the
//! replica applies what it had received (with semi-synchronous
//! replication that never falls back to asynchronous, every acknowledged
//! commit), and the old primary, when it cannot be fenced now, is fenced
//! in the background as soon as it answers again. Until then nothing
//! names it: the table points at the promoted server, and a unit never
//! starts on a fenced database.
//!
//! A step that fails before the promotion undoes what was done (the old
//! primary unfenced, this process writing again) and answers `503
//! failover_failed`; one that fails after it leaves the unit fenced and
//! the replica promoted, and the call can be repeated.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use utoipa::ToSchema;

use super::Dispatcher;
use super::messages::Failover;
use super::routing::{Routing, UnitRoute};
use super::table::{Edit, Start};
use crate::actors::EngineError;
use crate::actors::health::{FailoverRecord, UnitHealth};
use crate::actors::unit::FenceWrites;
use crate::config::{UnitMode, mask_url};
use crate::metrics as m;
use crate::storage::failover::Server;
use crate::storage::now_ms;
use metrics::counter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailoverMode {
    /// The old primary answers: it is fenced first, and the replica
    /// catches up with it exactly.
    Planned,
    /// The old primary is dead: the replica applies what it received.
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

/// How long failover steps may take (from the storage settings).
#[derive(Debug)]
pub(super) struct FailoverLimits {
    /// Each server operation.
    pub step: Duration,
    /// The replica catching up.
    pub catch_up: Duration,
    /// One failover at a time in this process.
    pub running: Mutex<()>,
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
    /// The promoted server's GTID position when it took over.
    pub position: String,
    pub steps: Vec<StepTook>,
}

/// Steps as they are done: logged, counted, timed.
struct Steps {
    unit: u16,
    mode: FailoverMode,
    started: Instant,
    last: Instant,
    done: Vec<StepTook>,
}

impl Steps {
    fn new(unit: u16, mode: FailoverMode) -> Self {
        let now = Instant::now();
        Self {
            unit,
            mode,
            started: now,
            last: now,
            done: Vec::new(),
        }
    }

    fn done(&mut self, step: &'static str, detail: &str) {
        let ms = self.last.elapsed().as_millis() as u64;
        self.last = Instant::now();
        tracing::warn!(
            unit = self.unit,
            mode = self.mode.as_str(),
            step,
            ms,
            detail,
            "failover step done"
        );
        counter!(m::FAILOVER_STEPS, "unit" => self.unit.to_string(), "step" => step).increment(1);
        self.done.push(StepTook { step, ms });
    }

    fn finish(&self, outcome: &'static str) {
        counter!(
            m::FAILOVERS,
            "unit" => self.unit.to_string(),
            "mode" => self.mode.as_str(),
            "outcome" => outcome
        )
        .increment(1);
        tracing::warn!(
            unit = self.unit,
            mode = self.mode.as_str(),
            outcome,
            ms = self.started.elapsed().as_millis() as u64,
            "failover over"
        );
    }
}

fn failed(unit: u16, step: &'static str, message: impl std::fmt::Display) -> EngineError {
    EngineError::FailoverFailed {
        unit,
        step,
        message: message.to_string(),
    }
}

impl Dispatcher {
    pub(super) async fn failover(&self, msg: Failover) -> Result<FailoverReport, EngineError> {
        let limits = self.failover.clone();
        let _one_at_a_time = limits.running.lock().await;
        let (unit, mode) = (msg.unit, msg.mode);
        let table = self.table.load();
        let route = table
            .units
            .get(&unit)
            .ok_or(EngineError::UnitNotFound { unit })?
            .clone();
        let settings = route.settings.clone();
        if settings.primary_url.starts_with("sqlite:") {
            return Err(EngineError::NoReplica {
                unit,
                message: "an embedded SQLite unit has no replicas".into(),
            });
        }
        let candidate = msg
            .to
            .clone()
            .or_else(|| settings.replica_url.clone())
            .ok_or_else(|| EngineError::NoReplica {
                unit,
                message: "the unit has no replica_url, and the call names none in `to`".into(),
            })?;
        if candidate == settings.primary_url {
            return Err(EngineError::InvalidChange {
                field: Some("to"),
                message: "`to` names the unit's primary itself".into(),
            });
        }
        if !self.table.keeps_table() {
            return Err(EngineError::TableNotKept);
        }
        let (old, new) = (
            Server::new(&settings.primary_url, limits.step),
            Server::new(&candidate, limits.step),
        );
        match new.unit_id().await {
            Ok(Some(id)) if id == unit.to_string() => {}
            Ok(held) => {
                return Err(EngineError::InvalidChange {
                    field: Some("to"),
                    message: format!(
                        "{} holds unit_id {held:?}, not {unit}: not a replica of this unit",
                        mask_url(&candidate)
                    ),
                });
            }
            Err(e) => return Err(failed(unit, "check_replica", e)),
        }

        let mut steps = Steps::new(unit, mode);
        tracing::warn!(
            unit,
            mode = mode.as_str(),
            who = msg.who,
            to = mask_url(&candidate),
            "failover started"
        );
        fence_here(&route, true).await;
        steps.done(
            "fence_writes",
            "this process writes nothing more to the unit",
        );

        let reason = format!(
            "unit {unit} failed over ({}) to {} at {}",
            mode.as_str(),
            mask_url(&candidate),
            now_ms()
        );
        let fenced = match old.fence(&reason).await {
            Ok(position) => {
                steps.done("fence_old_primary", &format!("final position {position}"));
                Some(position)
            }
            Err(e) if mode == FailoverMode::Planned => {
                undo(&route, &old, false).await;
                steps.finish("failed");
                return Err(failed(unit, "fence_old_primary", e));
            }
            Err(e) => {
                tracing::warn!(unit, error = %e, "old primary not fenced now: fencing it once it answers");
                None
            }
        };

        // Planned, or an old primary that still answered: everything it
        // committed. Otherwise: everything the replica received from it.
        let target = match &fenced {
            Some(position) => Ok(position.clone()),
            None => new.replica_positions().await.map(|(received, _)| received),
        };
        let caught_up = match target {
            Ok(t) => new.wait_applied(&t, limits.catch_up).await.map(|()| t),
            Err(e) => Err(e),
        };
        let target = match caught_up {
            Ok(t) => t,
            Err(e) => {
                undo(&route, &old, fenced.is_some()).await;
                steps.finish("failed");
                return Err(failed(unit, "catch_up", e));
            }
        };
        steps.done("catch_up", &format!("applied {target}"));

        let position = match new.promote().await {
            Ok(p) => p,
            Err(e) => {
                undo(&route, &old, fenced.is_some()).await;
                steps.finish("failed");
                return Err(failed(unit, "promote", e));
            }
        };
        steps.done("promote", &format!("position {position}"));

        let mut moved = settings.clone();
        moved.primary_url.clone_from(&candidate);
        moved.replica_url = None;
        let old_primary = settings.primary_url.clone();
        let after = self
            .table
            .change_starting(
                None,
                &msg.who,
                |t| {
                    still_on(t, unit, &old_primary)?;
                    Ok(Some(Start::Repoint(moved.clone())))
                },
                |t, started| fail_over(t, unit, &old_primary, started),
            )
            .await;
        let after = match after {
            Ok(t) => t,
            Err(e) => {
                // The replica is promoted and the old primary fenced (or
                // dead): the unit stays unavailable until the call is
                // repeated.
                steps.finish("failed");
                return Err(failed(unit, "repoint", e));
            }
        };
        steps.done("repoint", &format!("table version {}", after.version));
        steps.finish("ok");

        let health = route.health();
        let record = FailoverRecord {
            mode: mode.as_str(),
            at_ms: now_ms(),
            old_primary_url: mask_url(&old_primary),
            old_primary_fenced: fenced.is_some(),
        };
        health.set_failover(record);
        if fenced.is_none() {
            tokio::spawn(fence_when_back(old, reason, unit, health));
        }
        Ok(FailoverReport {
            unit,
            mode,
            version: after.version,
            primary_url: mask_url(&candidate),
            old_primary_url: mask_url(&old_primary),
            old_primary_fenced: fenced.is_some(),
            position: position.to_string(),
            steps: steps.done.clone(),
        })
    }
}

/// Stops (or allows again) this process's writes to the unit's database.
async fn fence_here(route: &UnitRoute, on: bool) {
    if let Some(addr) = &route.addr {
        let _ = addr
            .send(FenceWrites {
                on,
                after: Duration::ZERO,
            })
            .await;
    }
}

/// A failover that could not promote: the unit goes on as it was.
async fn undo(route: &UnitRoute, old: &Server, unfence_old: bool) {
    if unfence_old && let Err(e) = old.unfence().await {
        tracing::error!(unit = route.settings.id, error = %e, "could not unfence the old primary");
    }
    if route.settings.mode != UnitMode::Disabled {
        fence_here(route, false).await;
    }
}

/// The unit must still be on the primary the failover replaces.
fn still_on(table: &Routing, unit: u16, old_primary: &str) -> Result<(), EngineError> {
    let route = table
        .units
        .get(&unit)
        .ok_or(EngineError::UnitNotFound { unit })?;
    if route.settings.primary_url == old_primary {
        Ok(())
    } else {
        Err(EngineError::InvalidChange {
            field: Some("to"),
            message: "the unit moved to another database meanwhile".into(),
        })
    }
}

/// The table with unit `unit` on the promoted server (`started`), its
/// other settings as they are now.
fn fail_over(table: &Routing, unit: u16, old_primary: &str, started: Option<&UnitRoute>) -> Edit {
    still_on(table, unit, old_primary)?;
    let started = started.expect("the promoted server's actor was started");
    let mut next = table.clone();
    let entry = next.units.get_mut(&unit).expect("checked above");
    let mut settings = entry.settings.clone();
    settings
        .primary_url
        .clone_from(&started.settings.primary_url);
    settings.replica_url = None;
    *entry = started.repointed(settings, started.addr.clone());
    Ok(Some(next))
}

/// Fences a dead old primary as soon as it answers again (every second,
/// for as long as this process runs).
async fn fence_when_back(old: Server, reason: String, unit: u16, health: Arc<UnitHealth>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        match old.fence(&reason).await {
            Ok(position) => {
                tracing::warn!(unit, %position, "the old primary answered and is fenced");
                counter!(m::FAILOVER_STEPS, "unit" => unit.to_string(), "step" => "fence_old_primary")
                    .increment(1);
                health.old_primary_fenced();
                return;
            }
            Err(e) => tracing::debug!(unit, error = %e, "old primary still not answering"),
        }
    }
}
