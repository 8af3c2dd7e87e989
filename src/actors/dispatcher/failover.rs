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

use tokio::sync::Mutex;

use super::messages::{Failover, FailoverMode, FailoverReport, StepTook};
use super::routing::{Routing, UnitRoute};
use super::table::{Edit, RoutingTable, Start};
use crate::actors::EngineError;
use crate::actors::health::{FailoverRecord, UnitHealth};
use crate::actors::unit::FenceWrites;
use crate::config::{UnitMode, mask_url};
use crate::domain::replication::Position;
use crate::metrics as m;
use crate::storage::failover::Server;
use crate::storage::now_ms;
use metrics::counter;

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

/// Runs a failover (one at a time in this process) and repoints the
/// unit through `routing`.
pub(super) async fn run(
    routing: &RoutingTable,
    limits: &FailoverLimits,
    msg: Failover,
) -> Result<FailoverReport, EngineError> {
    let _one_at_a_time = limits.running.lock().await;
    let (unit, mode) = (msg.unit, msg.mode);
    let table = routing.load();
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
        return Err(invalid_to("`to` names the unit's primary itself".into()));
    }
    if !routing.keeps_table() {
        return Err(EngineError::TableNotKept);
    }
    let old_primary = settings.primary_url.clone();
    let (old, new) = (
        Server::new(&old_primary, limits.step),
        Server::new(&candidate, limits.step),
    );
    let check = |e| failed(unit, "check_replica", e);
    match new.unit_id().await.map_err(check)? {
        Some(id) if id == unit.to_string() => {}
        held => {
            return Err(invalid_to(format!(
                "{} holds unit_id {held:?}, not {unit}: not a replica of this unit",
                mask_url(&candidate)
            )));
        }
    }
    // A server that no longer replicates is promoted already: by this
    // failover, repeated after its repoint failed (it names this
    // primary), or it is no replica to promote.
    let promoted_before = match new.received().await.map_err(check)? {
        Some(_) => false,
        None if new.promoted_from().await.map_err(check)? == Some(mask_url(&old_primary)) => true,
        None => {
            return Err(invalid_to(format!(
                "{} does not replicate: it is no replica to promote",
                mask_url(&candidate)
            )));
        }
    };

    let mut steps = Steps::new(unit, mode);
    tracing::warn!(
        unit,
        mode = mode.as_str(),
        who = msg.who,
        to = mask_url(&candidate),
        promoted_before,
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
    let (fenced, position) = if promoted_before {
        // Fenced then, or fenced now if it answers (again).
        let fenced = old.fence(&reason).await.is_ok();
        steps.done("promote", "promoted by an earlier call");
        (fenced, None)
    } else {
        let promoted = promote(&old, &new, &old_primary, &reason, mode, limits, &mut steps).await;
        match promoted {
            Ok((fenced, position)) => (fenced, Some(position.to_string())),
            Err((e, give_up)) => {
                if let GiveUp::Undo { unfence_old } = give_up {
                    undo(&route, &old, &new, unfence_old).await;
                }
                steps.finish("failed");
                return Err(e);
            }
        }
    };

    let mut moved = settings.clone();
    moved.primary_url.clone_from(&candidate);
    moved.replica_url = None;
    let after = routing
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
            // repeated, which goes on from here.
            steps.finish("failed");
            return Err(failed(unit, "repoint", e));
        }
    };
    steps.done("repoint", &format!("table version {}", after.version));
    steps.finish("ok");

    let health = route.health();
    health.set_failover(FailoverRecord {
        mode: mode.as_str(),
        at_ms: now_ms(),
        old_primary_url: mask_url(&old_primary),
        old_primary_fenced: fenced,
    });
    if !fenced {
        tokio::spawn(fence_when_back(old, reason, unit, health));
    }
    Ok(FailoverReport {
        unit,
        mode,
        version: after.version,
        primary_url: mask_url(&candidate),
        old_primary_url: mask_url(&old_primary),
        old_primary_fenced: fenced,
        position,
        steps: steps.done.clone(),
    })
}

/// What a failover that stops before its repoint leaves behind.
enum GiveUp {
    /// Nothing is promoted: the unit goes on on its old primary
    /// (`unfence_old`: what was done of its fence is undone).
    Undo { unfence_old: bool },
    /// The replica may be promoted already: nothing is undone, and
    /// repeating the call goes on from where it stopped.
    Keep,
}

/// Fences the old primary, lets the replica apply what it must, and
/// promotes it. Answers whether the old primary is fenced, and the
/// promoted server's position.
async fn promote(
    old: &Server,
    new: &Server,
    old_primary: &str,
    reason: &str,
    mode: FailoverMode,
    limits: &FailoverLimits,
    steps: &mut Steps,
) -> Result<(bool, Position), (EngineError, GiveUp)> {
    let unit = steps.unit;
    let give_up = |step, e, unfence_old| (failed(unit, step, e), GiveUp::Undo { unfence_old });
    let fenced = match old.fence(reason).await {
        Ok(position) => {
            steps.done("fence_old_primary", &format!("final position {position}"));
            Some(position)
        }
        // Planned: the primary must be fenced. Emergency: one that cannot
        // be reached is fenced later; one that answers but could not be
        // fenced may still be committing, and promoting beside it would
        // lose what it acknowledges.
        Err(e) if mode == FailoverMode::Planned || !e.unreachable => {
            return Err(give_up("fence_old_primary", e, true));
        }
        Err(e) => {
            tracing::warn!(unit, error = %e, "old primary not reachable: fencing it once it answers");
            None
        }
    };
    let unfence_old = fenced.is_some();
    // Nothing more arrives: what it received is final, and the old
    // primary cannot have another commit acknowledged by it.
    if let Err(e) = new.stop_receiving().await {
        return Err(give_up("catch_up", e, unfence_old));
    }
    let target = match &fenced {
        Some(position) => Ok(position.clone()),
        None => match new.received().await {
            Ok(Some(received)) => Ok(received),
            Ok(None) => Err(new.error("stopped replicating")),
            Err(e) => Err(e),
        },
    };
    let caught_up = match target {
        Ok(t) => new.wait_applied(&t, limits.catch_up).await.map(|()| t),
        Err(e) => Err(e),
    };
    match caught_up {
        Ok(t) => steps.done("catch_up", &format!("applied {t}")),
        Err(e) => return Err(give_up("catch_up", e, unfence_old)),
    }
    match new.promote(&mask_url(old_primary)).await {
        Ok(position) => {
            steps.done("promote", &format!("position {position}"));
            Ok((fenced.is_some(), position))
        }
        // Still a replica: nothing was promoted, the unit goes back.
        // Otherwise the promotion may have gone through: keep everything.
        Err(e) => match new.received().await {
            Ok(Some(_)) => Err(give_up("promote", e, unfence_old)),
            _ => Err((failed(unit, "promote", e), GiveUp::Keep)),
        },
    }
}

fn invalid_to(message: String) -> EngineError {
    EngineError::InvalidChange {
        field: Some("to"),
        message,
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
async fn undo(route: &UnitRoute, old: &Server, new: &Server, unfence_old: bool) {
    let unit = route.settings.id;
    if unfence_old && let Err(e) = old.unfence().await {
        tracing::error!(unit, error = %e, "could not unfence the old primary");
    }
    if let Err(e) = new.resume_receiving().await {
        tracing::error!(unit, error = %e, "could not restart replication on the replica");
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
        Err(invalid_to(
            "the unit moved to another database meanwhile".into(),
        ))
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
    *entry = started.with_settings(settings);
    Ok(Some(next))
}

/// Fences a dead old primary as soon as it answers again (every second,
/// for as long as this process runs).
async fn fence_when_back(old: Server, reason: String, unit: u16, health: Arc<UnitHealth>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Rebuilt as a replica meanwhile (of the new primary): it is no
        // longer the old primary, and must not be fenced.
        if let Ok(Some(_)) = old.received().await {
            tracing::warn!(
                unit,
                "the old primary came back as a replica: not fencing it"
            );
            return;
        }
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
