//! What a unit store keeps about its replicas, shared by its clones: each
//! replica's last measurement, the heartbeats they are measured against,
//! and the newest commit position (what consistency tokens carry). The
//! reads and checks that use them are in `replica.rs`.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::domain::replication::Position;

/// Heartbeats remembered for measuring lag (one per probe interval).
const HEARTBEATS_KEPT: usize = 64;

/// A replica measured longer ago than this is not trusted to be fresh.
const CHECK_STALE_AFTER: Duration = Duration::from_secs(10);

/// What replica reads do: bounds and budgets (from the storage settings).
#[derive(Debug, Clone, Copy)]
pub struct ReplicaPolicy {
    /// Eventual reads skip a replica measured further behind.
    pub max_lag: Duration,
    /// Budget of the replica attempt of one read (the primary, if it comes
    /// to that, gets its own statement timeout).
    pub read_timeout: Duration,
    /// How long a read with a consistency token waits for the replica to
    /// apply it before going to the primary.
    pub wait: Duration,
}

/// A replica's last measurement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaHealth {
    /// Not measured yet (no heartbeat written, or no check run).
    Unknown,
    Reachable {
        lag_ms: i64,
    },
    Unreachable {
        error: String,
    },
}

/// Which copy answered an eventual read (the `served_by` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServedBy {
    Replica,
    Primary,
}

impl ServedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Replica => "replica",
            Self::Primary => "primary",
        }
    }
}

/// Shared by a store's clones: the newest commit position seen and each
/// replica's measurement (in the order the unit names its replicas).
#[derive(Debug, Default)]
pub struct Replication {
    /// Position at or past every commit this store acknowledged (MySQL with
    /// a replica only).
    position: Mutex<Option<Position>>,
    heartbeats: Mutex<VecDeque<i64>>,
    health: Mutex<Vec<Option<(ReplicaHealth, Instant)>>>,
}

impl Replication {
    /// For a unit with `replicas` replicas.
    pub fn new(replicas: usize) -> Self {
        Self {
            health: Mutex::new(vec![None; replicas]),
            ..Self::default()
        }
    }

    /// A position at or past every commit acknowledged so far.
    pub fn position(&self) -> Option<Position> {
        self.position.lock().expect("position lock").clone()
    }

    pub(super) fn advance(&self, to: &Position) {
        let mut held = self.position.lock().expect("position lock");
        held.get_or_insert_with(Position::default).merge(to);
    }

    /// The heartbeats kept, oldest first.
    pub(super) fn heartbeats(&self) -> Vec<i64> {
        let beats = self.heartbeats.lock().expect("heartbeat lock");
        beats.iter().copied().collect()
    }

    pub(super) fn heartbeat_written(&self, at_ms: i64) {
        let mut beats = self.heartbeats.lock().expect("heartbeat lock");
        if beats.len() == HEARTBEATS_KEPT {
            beats.pop_front();
        }
        beats.push_back(at_ms);
    }

    /// Each replica's last measurement.
    pub fn health(&self) -> Vec<ReplicaHealth> {
        let health = self.health.lock().expect("health lock");
        health
            .iter()
            .map(|h| {
                h.as_ref()
                    .map_or(ReplicaHealth::Unknown, |(h, _)| h.clone())
            })
            .collect()
    }

    pub(super) fn record(&self, replica: usize, health: ReplicaHealth) {
        if let Some(slot) = self.health.lock().expect("health lock").get_mut(replica) {
            *slot = Some((health, Instant::now()));
        }
    }

    /// The replica eventual reads go to: of those measured recently,
    /// reachable and at most `max_lag` behind, the one least behind.
    pub(super) fn freshest(&self, max_lag: Duration) -> Option<usize> {
        self.least_behind(|lag_ms, at| {
            at.elapsed() < CHECK_STALE_AFTER && lag_ms <= max_lag.as_millis() as i64
        })
    }

    /// The replica least behind at its last measurement, however long ago
    /// and however far behind (the first when none was reachable): what
    /// answers an eventual read the primary could not.
    pub(super) fn best_known(&self) -> usize {
        self.least_behind(|_, _| true).unwrap_or(0)
    }

    fn least_behind(&self, usable: impl Fn(i64, Instant) -> bool) -> Option<usize> {
        let health = self.health.lock().expect("health lock");
        health
            .iter()
            .enumerate()
            .filter_map(|(i, h)| match h {
                Some((ReplicaHealth::Reachable { lag_ms }, at)) if usable(*lag_ms, *at) => {
                    Some((*lag_ms, i))
                }
                _ => None,
            })
            .min()
            .map(|(_, i)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_go_to_the_fresh_replica_least_behind() {
        let r = Replication::new(3);
        assert_eq!(r.freshest(Duration::from_secs(1)), None);
        assert_eq!(r.best_known(), 0);
        r.record(0, ReplicaHealth::Reachable { lag_ms: 400 });
        r.record(
            1,
            ReplicaHealth::Unreachable {
                error: "down".into(),
            },
        );
        r.record(2, ReplicaHealth::Reachable { lag_ms: 30 });
        assert_eq!(r.freshest(Duration::from_secs(1)), Some(2));
        r.record(2, ReplicaHealth::Reachable { lag_ms: 5_000 });
        assert_eq!(r.freshest(Duration::from_secs(1)), Some(0));
        assert_eq!(r.freshest(Duration::from_millis(100)), None);
        assert_eq!(r.best_known(), 0);
        r.record(7, ReplicaHealth::Unknown); // no such replica: ignored
        assert_eq!(r.health().len(), 3);
    }
}
