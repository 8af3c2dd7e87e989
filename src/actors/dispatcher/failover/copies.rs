//! The servers a failover works with besides the old primary: the unit's
//! replicas (and `to`, when it names another), what each one is, which one
//! to promote, and, once it is promoted, the others re-pointed at it.

use std::time::Duration;

use futures_util::future::join_all;

use super::steps::{failed, invalid_to};
use crate::actors::EngineError;
use crate::actors::dispatcher::messages::ReplicaOutcome;
use crate::config::{mask_url, same_server};
use crate::domain::replication::{BinlogState, Position, most_advanced};
use crate::storage::failover::{Server, ServerError};
use crate::storage::rejoin::Rejoin;

/// What a server turned out to be.
pub(super) enum Look {
    /// A replica of the unit; what it has received from the primary.
    Replicating(Position),
    /// Promoted by an earlier call of this failover (it names the primary
    /// the failover replaces).
    Promoted,
    /// Holds the unit's database but replicates nothing.
    Standalone,
    /// Holds another unit's database (the `unit_id` it holds).
    Foreign(Option<String>),
    /// Could not be asked (down, cut off, or it failed to answer).
    Unreachable(ServerError),
}

pub(super) struct Candidate {
    pub url: String,
    pub server: Server,
    /// One of the unit's `replica_urls` (`to` may name another server).
    pub listed: bool,
    pub look: Look,
    /// This failover stopped its replication (restarted if it gives up).
    pub stopped: bool,
}

impl Candidate {
    pub fn received(&self) -> Option<&Position> {
        match &self.look {
            Look::Replicating(p) => Some(p),
            _ => None,
        }
    }
}

/// Looks at the unit's replicas and `to`, all at once.
pub(super) async fn survey(
    unit: u16,
    listed: &[String],
    to: Option<&str>,
    old_primary: &str,
    step: Duration,
) -> Vec<Candidate> {
    let mut urls: Vec<(String, bool)> = listed.iter().map(|u| (u.clone(), true)).collect();
    if let Some(to) = to
        && !listed.iter().any(|u| same_server(u, to))
    {
        urls.push((to.to_owned(), false));
    }
    join_all(urls.into_iter().map(|(url, listed)| async move {
        let server = Server::new(&url, step);
        let look = look(&server, unit, old_primary).await;
        Candidate {
            url,
            server,
            listed,
            look,
            stopped: false,
        }
    }))
    .await
}

async fn look(server: &Server, unit: u16, old_primary: &str) -> Look {
    let held = match server.unit_id().await {
        Ok(held) => held,
        Err(e) => return Look::Unreachable(e),
    };
    if held.as_deref() != Some(unit.to_string().as_str()) {
        return Look::Foreign(held);
    }
    match server.received().await {
        Ok(Some(received)) => Look::Replicating(received),
        Ok(None) => match server.promoted_from().await {
            Ok(Some(from)) if from == mask_url(old_primary) => Look::Promoted,
            Ok(_) => Look::Standalone,
            Err(e) => Look::Unreachable(e),
        },
        Err(e) => Look::Unreachable(e),
    }
}

/// Which server to promote, as far as it can be told before the old
/// primary is fenced.
pub(super) enum Pick {
    /// An earlier call promoted it: the failover goes on from there.
    Promoted(usize),
    /// The caller's `to`.
    To(usize),
    /// The most advanced replica, chosen once what they received is final.
    MostAdvanced,
}

pub(super) fn pick(unit: u16, copies: &[Candidate], to: Option<&str>) -> Result<Pick, EngineError> {
    if let Some(i) = copies.iter().position(|c| matches!(c.look, Look::Promoted)) {
        return match to {
            Some(to) if !same_server(to, &copies[i].url) => Err(invalid_to(format!(
                "{} was promoted by an earlier call of this failover: repeat it without `to`, or with that server",
                mask_url(&copies[i].url)
            ))),
            _ => Ok(Pick::Promoted(i)),
        };
    }
    if let Some(to) = to {
        let i = copies
            .iter()
            .position(|c| same_server(&c.url, to))
            .expect("the survey looks at `to`");
        let named = mask_url(to);
        return match &copies[i].look {
            Look::Replicating(_) => Ok(Pick::To(i)),
            Look::Foreign(held) => Err(invalid_to(format!(
                "{named} holds unit_id {held:?}, not {unit}: not a replica of this unit"
            ))),
            Look::Standalone => Err(invalid_to(format!(
                "{named} does not replicate: it is no replica to promote"
            ))),
            Look::Unreachable(e) => Err(failed(unit, "check_replica", e)),
            Look::Promoted => unreachable!("handled above"),
        };
    }
    if copies.iter().any(|c| c.received().is_some()) {
        return Ok(Pick::MostAdvanced);
    }
    let why: Vec<String> = copies.iter().map(describe).collect();
    Err(failed(
        unit,
        "check_replica",
        format!("no replica of the unit to promote: {}", why.join("; ")),
    ))
}

/// The replica that has received the most (the first such); `None` when
/// none replicates, or no one holds everything the others received.
pub(super) fn most_advanced_copy(copies: &[Candidate]) -> Option<usize> {
    let replicating: Vec<(usize, &Position)> = copies
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.received().map(|p| (i, p)))
        .collect();
    let positions: Vec<&Position> = replicating.iter().map(|(_, p)| *p).collect();
    most_advanced(&positions).map(|k| replicating[k].0)
}

/// A server as a failover's message names it.
pub(super) fn describe(c: &Candidate) -> String {
    let url = mask_url(&c.url);
    match &c.look {
        Look::Replicating(p) => format!("{url} received {p}"),
        Look::Promoted => format!("{url} is promoted"),
        Look::Standalone => format!("{url} does not replicate"),
        Look::Foreign(held) => format!("{url} holds unit_id {held:?}"),
        Look::Unreachable(e) => e.to_string(),
    }
}

/// Re-points every other replica of the unit at the promoted server, then
/// makes the promoted server's commits wait for one of them again. Left
/// out of the unit (`dropped`): the replicas `dropped` names, a replica
/// that has received what the promoted server's binlog (`log`) lacks (its
/// history parted from the new primary's: it must be rebuilt), and, when
/// the old primary is not fenced, one that cannot be asked (what it holds
/// is unknown). Answers what became of each (by its place in `copies`),
/// and whether commits wait for a replica.
pub(super) async fn rejoin(
    copies: &[Candidate],
    promoted: usize,
    log: &BinlogState,
    dropped: &[usize],
    old_fenced: bool,
    wait: Duration,
) -> (Vec<(usize, ReplicaOutcome)>, bool) {
    let new_primary = &copies[promoted].url;
    let others = copies
        .iter()
        .enumerate()
        .filter(|(i, c)| *i != promoted && c.listed);
    let outcomes = join_all(others.map(|(i, c)| async move {
        let url = mask_url(&c.url);
        let outcome = match &c.look {
            _ if dropped.contains(&i) => ReplicaOutcome::dropped(url, describe(c)),
            Look::Replicating(received) if !log.holds(received) => ReplicaOutcome::dropped(
                url,
                format!(
                    "{}, which the new primary (binlog {log}) lacks: rebuild it",
                    describe(c)
                ),
            ),
            Look::Unreachable(e) if !old_fenced => ReplicaOutcome::dropped(
                url,
                format!("{e}: what it holds is unknown (the old primary is not fenced)"),
            ),
            Look::Foreign(_) | Look::Standalone => ReplicaOutcome::not_repointed(url, describe(c)),
            _ => match c.server.replicate_from(new_primary, log).await {
                Ok(Rejoin::Replicating) => ReplicaOutcome::repointed(url),
                Ok(Rejoin::Ahead(applied)) => ReplicaOutcome::dropped(
                    url.clone(),
                    format!(
                        "{url} applied {applied}, which the new primary (binlog {log}) lacks: \
                         rebuild it"
                    ),
                ),
                Err(e) => ReplicaOutcome::not_repointed(url, e.to_string()),
            },
        };
        (i, outcome)
    }))
    .await;
    let mut semi_sync = false;
    if outcomes.iter().any(|(_, o)| o.outcome == "repointed") {
        match copies[promoted].server.wait_for_replicas(wait).await {
            Ok(on) => semi_sync = on,
            Err(e) => tracing::warn!(error = %e, "could not turn semi-synchronous waiting on"),
        }
    }
    (outcomes, semi_sync)
}
