//! The promotion: the old primary fenced, the replica to promote chosen,
//! caught up and promoted (see `mod.rs` for the whole failover).

use super::copies::{self, Candidate, Look};
use super::steps::{FailoverLimits, Steps, failed};
use crate::actors::EngineError;
use crate::actors::dispatcher::messages::{Failover, FailoverMode};
use crate::config::mask_url;
use crate::domain::replication::Position;
use crate::storage::failover::Server;

/// A promotion done: of which copy, whether the old primary is fenced,
/// the promoted server's position (`None`: promoted by an earlier call),
/// and the unit's replicas given up (they did not answer).
pub(super) struct Promotion {
    pub to: usize,
    pub fenced: bool,
    pub position: Option<Position>,
    pub dropped: Vec<usize>,
}

/// What a failover that stops before its repoint leaves behind.
pub(super) enum GiveUp {
    /// Nothing is promoted: the unit goes on on its old primary
    /// (`unfence_old`: what was done of its fence is undone).
    Undo { unfence_old: bool },
    /// The replica may be promoted already: nothing is undone, and
    /// repeating the call goes on from where it stopped.
    Keep,
}

/// Fences the old primary, chooses the replica to promote (`to`, or the
/// most advanced), lets it apply what it must, and promotes it.
#[allow(clippy::too_many_arguments)]
pub(super) async fn promote(
    old: &Server,
    old_primary: &str,
    copies: &mut [Candidate],
    to: Option<usize>,
    reason: &str,
    msg: &Failover,
    limits: &FailoverLimits,
    steps: &mut Steps,
) -> Result<Promotion, (EngineError, GiveUp)> {
    let unit = steps.unit;
    let give_up =
        |step, e: String, unfence_old| (failed(unit, step, e), GiveUp::Undo { unfence_old });
    let fenced = match old.fence(reason).await {
        Ok(position) => {
            steps.done("fence_old_primary", &format!("final position {position}"));
            Some(position)
        }
        // Planned: the primary must be fenced. Emergency: one that cannot
        // be reached is fenced later; one that answers but could not be
        // fenced may still be committing, and promoting beside it would
        // lose what it acknowledges.
        Err(e) if msg.mode == FailoverMode::Planned || !e.unreachable => {
            return Err(give_up("fence_old_primary", e.to_string(), true));
        }
        Err(e) => {
            tracing::warn!(unit, error = %e, "old primary not reachable: fencing it once it answers");
            None
        }
    };
    // Fenced now, so undone if the failover gives up before the promotion.
    let fenced_now = fenced.is_some();
    let mut dropped = Vec::new();
    let (chosen, target) = match fenced {
        // Its position is final: the chosen replica (still receiving)
        // applies up to it, whatever it had received so far.
        Some(last) => {
            let chosen = to
                .or_else(|| copies::most_advanced_copy(copies))
                .or_else(|| copies.iter().position(|c| c.received().is_some()));
            match chosen {
                Some(chosen) => (chosen, last),
                None => return Err(give_up("catch_up", "no replica to promote".into(), true)),
            }
        }
        None => match settle_received(copies, to, msg.skip_unreachable_replicas).await {
            Ok((chosen, given_up)) => {
                dropped = given_up;
                let target = copies[chosen].received().cloned().unwrap_or_default();
                (chosen, target)
            }
            Err(e) => return Err(give_up("catch_up", e, fenced_now)),
        },
    };
    let new = &copies[chosen].server;
    match new.wait_applied(&target, limits.catch_up).await {
        Ok(()) => steps.done(
            "catch_up",
            &format!("{} applied {target}", mask_url(&copies[chosen].url)),
        ),
        Err(e) => return Err(give_up("catch_up", e.to_string(), fenced_now)),
    }
    match new.promote(&mask_url(old_primary)).await {
        Ok(position) => {
            steps.done("promote", &format!("position {position}"));
            Ok(Promotion {
                to: chosen,
                fenced: fenced_now,
                position: Some(position),
                dropped,
            })
        }
        // Still a replica: nothing was promoted, the unit goes back.
        // Otherwise the promotion may have gone through: keep everything.
        Err(e) => match new.received().await {
            Ok(Some(_)) => Err(give_up("promote", e.to_string(), fenced_now)),
            _ => Err((failed(unit, "promote", e), GiveUp::Keep)),
        },
    }
}

/// Emergency with the old primary out of reach: every replica stops
/// receiving, so what each received is final; the one to promote must hold
/// everything any of them received. A replica that does not answer may
/// hold acknowledged commits no other has: the failover stops, unless the
/// caller gives such replicas up (they are answered as `dropped`).
async fn settle_received(
    copies: &mut [Candidate],
    to: Option<usize>,
    skip_unreachable: bool,
) -> Result<(usize, Vec<usize>), String> {
    let stops = copies.iter().map(|c| async {
        match &c.look {
            Look::Replicating(_) => match c.server.stop_receiving().await {
                Ok(()) => (true, c.server.received().await),
                Err(e) => (false, Err(e)),
            },
            _ => (false, Ok(None)),
        }
    });
    let stopped = futures_util::future::join_all(stops).await;
    for (c, (was_stopped, received)) in copies.iter_mut().zip(stopped) {
        c.stopped = was_stopped;
        match received {
            Ok(Some(p)) => c.look = Look::Replicating(p),
            Ok(None) if was_stopped => {
                c.look = Look::Standalone;
            }
            Ok(None) => {}
            Err(e) => c.look = Look::Unreachable(e),
        }
    }
    let silent: Vec<usize> = (0..copies.len())
        .filter(|i| copies[*i].listed && matches!(copies[*i].look, Look::Unreachable(_)))
        .collect();
    if !silent.is_empty() && !skip_unreachable {
        let named: Vec<String> = silent
            .iter()
            .map(|i| copies::describe(&copies[*i]))
            .collect();
        return Err(format!(
            "a replica did not answer ({}): it may hold commits the old primary acknowledged \
             that no other replica has. Bring it back, or repeat with \
             skip_unreachable_replicas (it is then dropped from the unit)",
            named.join("; ")
        ));
    }
    let most = copies::most_advanced_copy(copies).ok_or_else(|| {
        let seen: Vec<String> = copies.iter().map(copies::describe).collect();
        format!(
            "no replica holds everything the others received: {}",
            seen.join("; ")
        )
    })?;
    let chosen = match to {
        Some(i) => {
            let (mine, most_p) = (copies[i].received(), copies[most].received());
            match (mine, most_p) {
                (Some(mine), Some(best)) if mine.covers(best) => i,
                _ => {
                    return Err(format!(
                        "{} has not received everything {} has: promoting it would lose commits. \
                         Name that one in `to`, or leave `to` out",
                        copies::describe(&copies[i]),
                        copies::describe(&copies[most])
                    ));
                }
            }
        }
        None => most,
    };
    Ok((chosen, silent))
}
