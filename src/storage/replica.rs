//! A unit's replicas: how far behind each is, eventual reads that respect
//! that (the fresh replica least behind), and read-your-writes through
//! replication positions.
//!
//! Replica pools connect lazily, so a replica that cannot be reached never
//! stops a unit from starting: it is only ever skipped. Lag is measured by
//! [`UnitStore::check_replicas`] against the heartbeats the primary's
//! probes write (see `domain::replication::lag_ms`).

use sqlx::{AnyPool, Row};

use super::error::StoreError;
use super::orders::SELECT_BY_SEQ;
use super::replication::{ReplicaHealth, Replication, ServedBy};
use super::sql::{order_from_row, seq_param};
use super::store::{UnitStore, now_ms};
use crate::domain::replication::{Position, lag_ms};
use crate::domain::{Order, OrderId};

/// What one replica attempt found.
enum Attempt {
    Found(Box<Order>),
    Absent,
    /// It has not applied the token's position within the wait.
    Behind,
}

const REPLICA_CHECK: &str = "SELECT (SELECT written_at_ms FROM probe WHERE id = 1) AS beat, \
     (SELECT value FROM engine_meta WHERE name = 'unit_id') AS unit_id";
const GTID_WAIT: &str = "SELECT CAST(MASTER_GTID_WAIT(?, ?) AS SIGNED) AS waited";

impl UnitStore {
    /// The replica's measurement and the commit position, shared by every
    /// clone of this store.
    pub fn replication(&self) -> std::sync::Arc<Replication> {
        self.replication.clone()
    }

    /// Measures every replica at once: reachable, holding this unit's
    /// database, and how far behind. Each is bounded by the replica read
    /// budget; never fails (the outcomes are recorded and returned, in the
    /// order the unit names its replicas).
    pub async fn check_replicas(&self) -> Vec<ReplicaHealth> {
        let checks = self.replicas.iter().map(|r| self.check_replica(r));
        let health = futures_util::future::join_all(checks).await;
        for (i, h) in health.iter().enumerate() {
            if *h != ReplicaHealth::Unknown {
                self.replication.record(i, h.clone());
            }
        }
        health
    }

    async fn check_replica(&self, replica: &AnyPool) -> ReplicaHealth {
        let read = async {
            let row = sqlx::query(REPLICA_CHECK).fetch_one(replica).await?;
            let beat: Option<i64> = row.try_get("beat")?;
            let unit: Option<String> = row.try_get("unit_id")?;
            Ok::<_, sqlx::Error>((beat.unwrap_or(0), unit))
        };
        match tokio::time::timeout(self.replica_policy.read_timeout, read).await {
            Err(_) => ReplicaHealth::Unreachable {
                error: format!("no answer within {:?}", self.replica_policy.read_timeout),
            },
            Ok(Err(e)) => ReplicaHealth::Unreachable {
                error: e.to_string(),
            },
            Ok(Ok((_, unit))) if unit.as_deref() != Some(&self.unit.to_string()) => {
                ReplicaHealth::Unreachable {
                    error: format!(
                        "it holds unit_id {unit:?}, not {}: not a replica of this unit",
                        self.unit
                    ),
                }
            }
            Ok(Ok((beat, _))) => {
                let written = self.replication.heartbeats();
                if written.is_empty() {
                    return ReplicaHealth::Unknown; // nothing to measure against yet
                }
                ReplicaHealth::Reachable {
                    lag_ms: lag_ms(&written, beat, now_ms()),
                }
            }
        }
    }

    /// An eventual read: the fresh replica least behind (and, with
    /// `wait_for`, once it has applied that position), within its own
    /// budget; otherwise the primary. When the primary cannot answer a read
    /// without a token, the replica least behind answers however far behind
    /// it is: an eventual read asks for availability over freshness.
    pub async fn get_eventual(
        &self,
        id: OrderId,
        wait_for: Option<&Position>,
    ) -> Result<(Order, ServedBy), StoreError> {
        if self.replicas.is_empty() {
            return Ok((self.get_primary(id).await?, ServedBy::Primary));
        }
        let freshest = self.replication.freshest(self.replica_policy.max_lag);
        let tried = freshest.is_some();
        if let Some(replica) = freshest.and_then(|i| self.replicas.get(i)) {
            let attempt = self.read_replica(replica, id, wait_for);
            match tokio::time::timeout(self.replica_policy.read_timeout, attempt).await {
                Ok(Ok(Attempt::Found(order))) => return Ok((*order, ServedBy::Replica)),
                // Not there yet, or behind the token: the primary decides.
                Ok(Ok(Attempt::Absent | Attempt::Behind)) => {}
                Ok(Err(_)) | Err(_) => {}
            }
        }
        match self.get_primary(id).await {
            Err(e @ (StoreError::Unavailable(_) | StoreError::InDoubt(_)))
                if !tried && wait_for.is_none() =>
            {
                let replica = &self.replicas[self.replication.best_known()];
                let attempt = self.read_replica(replica, id, None);
                match tokio::time::timeout(self.replica_policy.read_timeout, attempt).await {
                    Ok(Ok(Attempt::Found(order))) => Ok((*order, ServedBy::Replica)),
                    _ => Err(e),
                }
            }
            other => other.map(|order| (order, ServedBy::Primary)),
        }
    }

    /// One read on the replica, after waiting (at most the wait budget) for
    /// it to apply `wait_for`.
    async fn read_replica(
        &self,
        replica: &AnyPool,
        id: OrderId,
        wait_for: Option<&Position>,
    ) -> Result<Attempt, sqlx::Error> {
        let mut conn = replica.acquire().await?;
        if let Some(position) = wait_for {
            let waited: i64 = sqlx::query(GTID_WAIT)
                .bind(position.to_string())
                .bind(self.replica_policy.wait.as_secs_f64())
                .fetch_one(&mut *conn)
                .await?
                .try_get("waited")?;
            if waited != 0 {
                return Ok(Attempt::Behind);
            }
        }
        let row = sqlx::query(SELECT_BY_SEQ)
            .bind(seq_param(id.sequence()))
            .fetch_optional(&mut *conn)
            .await?;
        let order = match row.map(|r| order_from_row(self.unit, &r)).transpose() {
            Ok(order) => order,
            Err(_) => return Ok(Attempt::Absent), // let the primary answer
        };
        Ok(match order {
            Some(o) if o.id == id => Attempt::Found(Box::new(o)),
            _ => Attempt::Absent,
        })
    }
}
