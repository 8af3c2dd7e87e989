//! What a unit store keeps about its replica, shared by its clones: the
//! replica's last measurement, the heartbeats it is measured against, and
//! the newest commit position (what consistency tokens carry). The reads
//! and checks that use them are in `replica.rs`.

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

/// Shared by a store's clones: the newest commit position seen and the
/// replica's measurement.
#[derive(Debug, Default)]
pub struct Replication {
    /// Position at or past every commit this store acknowledged (MySQL with
    /// a replica only).
    position: Mutex<Option<Position>>,
    heartbeats: Mutex<VecDeque<i64>>,
    health: Mutex<Option<(ReplicaHealth, Instant)>>,
}

impl Replication {
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

    /// The replica's last measurement.
    pub fn health(&self) -> ReplicaHealth {
        match &*self.health.lock().expect("health lock") {
            Some((h, _)) => h.clone(),
            None => ReplicaHealth::Unknown,
        }
    }

    pub(super) fn record(&self, health: ReplicaHealth) {
        *self.health.lock().expect("health lock") = Some((health, Instant::now()));
    }

    /// Whether eventual reads may go to the replica: measured recently,
    /// reachable and at most `max_lag` behind.
    pub(super) fn fresh(&self, max_lag: Duration) -> bool {
        match &*self.health.lock().expect("health lock") {
            Some((ReplicaHealth::Reachable { lag_ms }, at)) => {
                at.elapsed() < CHECK_STALE_AFTER && *lag_ms <= max_lag.as_millis() as i64
            }
            _ => false,
        }
    }
}
