//! Failing a unit over to one of its replicas
//! (`POST /admin/units/{id}/failover`).
//!
//! **Planned** (the old primary answers): this process stops writing to
//! the unit; the old primary is fenced (`storage::failover`: triggers that
//! refuse every write, for every user and every engine process, installed
//! once the transactions in flight there have ended), so its binlog
//! position is final; the chosen replica (`to`, or the one that has
//! received the most) applies up to it; it is promoted; the unit's other
//! replicas are re-pointed at it (`copies.rs`); the unit is repointed at it
//! through the routing table, which every other process follows.
//!
//! **Emergency** (the old primary is dead): the same, except that every
//! replica stops receiving first (so what each received is final and none
//! acknowledges another commit of the old primary), and the replica that
//! received the most is promoted after applying it. With semi-synchronous
//! replication that never falls back to asynchronous, every acknowledged
//! commit is on at least one replica, so on the most advanced one: which
//! is why every replica must answer (or be given up explicitly with
//! `skip_unreachable_replicas`). The old primary, when it cannot be fenced
//! now, is fenced in the background as soon as it answers. Until then
//! nothing names it: the table points at the promoted server, and a unit
//! never starts on a fenced database.
//!
//! A step that fails before the promotion undoes what was done (the old
//! primary unfenced, replication restarted, this process writing again)
//! and answers `503 failover_failed`; one that fails after it leaves the
//! unit fenced and the replica promoted, and the call can be repeated.

mod copies;
mod promote;
mod steps;

use std::sync::Arc;
use std::time::Duration;

use copies::{Candidate, Look, Pick};
use promote::{GiveUp, Promotion, promote};
pub(super) use steps::FailoverLimits;
use steps::{Steps, failed, invalid_to};

use super::messages::{Failover, FailoverReport};
use super::routing::{Routing, UnitRoute};
use super::table::{Edit, RoutingTable, Start};
use crate::actors::EngineError;
use crate::actors::health::{FailoverRecord, UnitHealth};
use crate::actors::unit::FenceWrites;
use crate::config::{UnitMode, mask_url};
use crate::metrics as m;
use crate::storage::failover::Server;
use crate::storage::now_ms;
use metrics::counter;

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
    if settings.replica_urls.is_empty() && msg.to.is_none() {
        return Err(EngineError::NoReplica {
            unit,
            message: "the unit has no replica_urls, and the call names none in `to`".into(),
        });
    }
    if msg.to.as_deref() == Some(settings.primary_url.as_str()) {
        return Err(invalid_to("`to` names the unit's primary itself".into()));
    }
    if !routing.keeps_table() {
        return Err(EngineError::TableNotKept);
    }
    let old_primary = settings.primary_url.clone();
    let old = Server::new(&old_primary, limits.step);
    let mut copies = copies::survey(
        unit,
        &settings.replica_urls,
        msg.to.as_deref(),
        &old_primary,
        limits.step,
    )
    .await;
    let mut steps = Steps::new(unit, mode);
    // No replica to promote is a failed failover like any other
    // (`OrderEngineFailoverFailed` watches the count).
    let pick = copies::pick(unit, &copies, msg.to.as_deref()).inspect_err(|e| {
        if matches!(e, EngineError::FailoverFailed { .. }) {
            steps.finish("failed");
        }
    })?;

    tracing::warn!(
        unit,
        mode = mode.as_str(),
        who = msg.who,
        to = msg.to.as_deref().map(mask_url),
        replicas = copies.len(),
        "failover started"
    );
    fence_here(&route, true).await;
    steps.done(
        "fence_writes",
        "this process writes nothing more to the unit",
    );
    let reason = format!(
        "unit {unit} failed over ({}) at {}",
        mode.as_str(),
        now_ms()
    );
    let promotion = match pick {
        Pick::Promoted(i) => {
            // Fenced then, or fenced now if it answers (again).
            let fenced = old.fence(&reason).await.is_ok();
            steps.done("promote", "promoted by an earlier call");
            let silent = |c: &Candidate| c.listed && matches!(c.look, Look::Unreachable(_));
            let dropped = match msg.skip_unreachable_replicas {
                true => (0..copies.len()).filter(|k| silent(&copies[*k])).collect(),
                false => Vec::new(),
            };
            Ok(Promotion {
                to: i,
                fenced,
                position: None,
                dropped,
            })
        }
        Pick::To(i) => {
            let to = Some(i);
            promote(
                &old,
                &old_primary,
                &mut copies,
                to,
                &reason,
                &msg,
                limits,
                &mut steps,
            )
            .await
        }
        Pick::MostAdvanced => {
            promote(
                &old,
                &old_primary,
                &mut copies,
                None,
                &reason,
                &msg,
                limits,
                &mut steps,
            )
            .await
        }
    };
    let promoted = match promotion {
        Ok(p) => p,
        Err((e, give_up)) => {
            if let GiveUp::Undo { unfence_old } = give_up {
                undo(routing, unit, &old, &copies, unfence_old).await;
            }
            steps.finish("failed");
            return Err(e);
        }
    };
    let candidate = copies[promoted.to].url.clone();
    // From here on a replica is promoted. If this call fails before the
    // repoint, the table still names the old primary, and other processes
    // would write to it once it answers: it is fenced in the background
    // then, as after a failover that succeeds.
    let fence_later = || {
        if !promoted.fenced {
            let old = Server::new(&old_primary, limits.step);
            tokio::spawn(fence_when_back(old, reason.clone(), unit, route.health()));
        }
    };

    // What the promoted server logged, per server: a replica past it in
    // the old primary's history parted from it (the promoted server's own
    // writes since have higher numbers, but are not that history).
    let log = match copies[promoted.to].server.binlog_state().await {
        Ok(log) => log,
        Err(e) => {
            fence_later();
            steps.finish("failed");
            return Err(failed(unit, "repoint_replicas", e));
        }
    };
    let (outcomes, semi_sync) = copies::rejoin(
        &copies,
        promoted.to,
        &log,
        &promoted.dropped,
        promoted.fenced,
        limits.step,
    )
    .await;
    if !outcomes.is_empty() {
        let repointed = outcomes
            .iter()
            .filter(|(_, r)| r.outcome == "repointed")
            .count();
        steps.done(
            "repoint_replicas",
            &format!(
                "{repointed} of {} re-pointed; semi-synchronous: {semi_sync}",
                outcomes.len()
            ),
        );
    }
    let mut moved = settings.clone();
    moved.primary_url.clone_from(&candidate);
    moved.replica_urls = outcomes
        .iter()
        .filter(|(_, r)| r.outcome != "dropped")
        .map(|(i, _)| copies[*i].url.clone())
        .collect();
    let replicas: Vec<_> = outcomes.into_iter().map(|(_, r)| r).collect();
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
            // dead: fenced once it answers): the unit stays unavailable
            // until the call is repeated, which goes on from here.
            fence_later();
            steps.finish("failed");
            let promoted = mask_url(&candidate);
            return Err(failed(
                unit,
                "repoint",
                format!(
                    "{e}. {promoted} is promoted: repeat the call (naming it in `to` if it is \
                     not one of the unit's replicas)"
                ),
            ));
        }
    };
    steps.done("repoint", &format!("table version {}", after.version));
    steps.finish("ok");

    let health = route.health();
    health.set_failover(FailoverRecord {
        mode: mode.as_str(),
        at_ms: now_ms(),
        old_primary_url: mask_url(&old_primary),
        old_primary_fenced: promoted.fenced,
        semi_sync,
    });
    if !promoted.fenced {
        tokio::spawn(fence_when_back(old, reason, unit, health));
    }
    Ok(FailoverReport {
        unit,
        mode,
        version: after.version,
        primary_url: mask_url(&candidate),
        old_primary_url: mask_url(&old_primary),
        old_primary_fenced: promoted.fenced,
        position: promoted.position.map(|p| p.to_string()),
        steps: steps.done.clone(),
        replicas,
        semi_sync,
    })
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
async fn undo(
    routing: &RoutingTable,
    unit: u16,
    old: &Server,
    copies: &[Candidate],
    unfence_old: bool,
) {
    if unfence_old && let Err(e) = old.unfence().await {
        tracing::error!(unit, error = %e, "could not unfence the old primary");
    }
    let replicas = copies
        .iter()
        .filter(|c| c.stopped || matches!(c.look, Look::Replicating(_)));
    for c in replicas {
        if let Err(e) = c.server.resume_receiving().await {
            tracing::error!(unit, error = %e, "could not restart replication on a replica");
        }
    }
    // As the table is now, not as it was when the failover began: a unit
    // disabled meanwhile stays fenced here (its fence is pending).
    let now = routing.load();
    if let Some(route) = now.units.get(&unit)
        && route.settings.mode != UnitMode::Disabled
    {
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
    settings
        .replica_urls
        .clone_from(&started.settings.replica_urls);
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
