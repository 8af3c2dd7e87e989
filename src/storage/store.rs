//! A unit's pools and lanes, and the helpers every statement runs through:
//! a connection for a read, a write transaction, the statement timeout
//! before `COMMIT` (a definite failure) and at it (in doubt).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use sqlx::any::AnyRow;
use sqlx::{Any, AnyConnection, AnyPool, Row};

use super::connect::Dialect;
use super::created::CreatedOrders;
use super::error::StoreError;
use super::lane::{Lane, LaneConnection};
use super::replication::{ReplicaPolicy, Replication};
use crate::domain::replication::Position;

/// `COMMIT`, and the GTID it was given, in one round trip (MariaDB).
const COMMIT_WITH_GTID: &str = "COMMIT; SELECT @@last_gtid";

/// A connection for one strong read (see [`UnitStore::read_connection`]).
pub(super) enum ReadConnection<'a> {
    /// MySQL: no ping when it goes back, so a read is one round trip.
    Lane(LaneConnection<'a>),
    /// SQLite: the read pool.
    Pool(sqlx::pool::PoolConnection<Any>),
}

impl ReadConnection<'_> {
    pub(super) fn get(&mut self) -> &mut AnyConnection {
        match self {
            Self::Lane(c) => c.get(),
            Self::Pool(c) => c,
        }
    }

    /// Ends the read with what its statement returned. A lane connection goes
    /// back only when the server answered (rows, none, or a database error);
    /// after anything else it is closed.
    pub(super) fn finish<T>(self, outcome: Result<T, sqlx::Error>) -> Result<T, StoreError> {
        if let Self::Lane(c) = self
            && matches!(
                outcome,
                Ok(_) | Err(sqlx::Error::Database(_) | sqlx::Error::RowNotFound)
            )
        {
            c.release();
        }
        outcome.map_err(StoreError::before_commit)
    }
}

/// A write transaction (see [`UnitStore::begin_write`]).
pub(super) enum WriteTx<'a> {
    /// MySQL: a write-lane connection (`autocommit = 0`), where the first
    /// statement opens the transaction: no `BEGIN`, and no ping after it.
    Lane(LaneConnection<'a>),
    /// SQLite: a pool transaction (`BEGIN IMMEDIATE`).
    Pool(sqlx::Transaction<'static, Any>),
}

impl WriteTx<'_> {
    pub(super) fn get(&mut self) -> &mut AnyConnection {
        match self {
            Self::Lane(c) => c.get(),
            Self::Pool(tx) => tx,
        }
    }
}

/// The pools of one unit. Cheap to clone (pools are shared handles).
#[derive(Debug, Clone)]
pub struct UnitStore {
    pub(super) unit: u16,
    pub(super) dialect: Dialect,
    /// Transactions. On SQLite one connection: SQLite has one writer anyway, and a
    /// single connection avoids lock-upgrade failures between our own writers.
    pub(super) write: AnyPool,
    /// Strong reads: the primary.
    pub(super) read: AnyPool,
    /// Eventual reads: the replicas configured (each connected lazily).
    pub(super) replicas: Vec<AnyPool>,
    pub(super) replica_policy: ReplicaPolicy,
    /// The replicas' measurements and the newest commit position.
    pub(super) replication: Arc<Replication>,
    /// MySQL: the connections create batches, pays, closes and refunds run
    /// on (see `lane.rs`).
    pub(super) write_lane: Option<Arc<Lane>>,
    /// MySQL: the connections strong reads run on (see `lane.rs`).
    pub(super) read_lane: Option<Arc<Lane>>,
    /// Bound on the statements of one call (see `bounded` and `commit`).
    pub(super) statement_timeout: Duration,
    /// Calls waiting for a connection (writes: including the BEGIN round trip).
    pub(super) waiting: Arc<AtomicI64>,
    pub(super) max_connections: u32,
    /// No transaction that changes orders or key records may start: the
    /// unit is disabled (and may be being copied to another server).
    pub(super) fenced: Arc<AtomicBool>,
    /// Orders just created, for the relay (see `created.rs`).
    pub(super) created: Arc<CreatedOrders>,
    /// When this process last renewed the unit's relay lease (ms; 0: it
    /// does not hold it as far as it knows).
    pub(super) lease_renewed_ms: Arc<AtomicI64>,
}

/// A unit's connections to its primary at one moment: its pools and, on
/// MySQL, its write and read lanes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    pub open: u32,
    pub idle: u32,
    pub waiting: i64,
    pub max: u32,
}

impl UnitStore {
    /// Keeps the orders create batches commit for this process's relay
    /// from now on, or (`false`) stops and forgets them (`created.rs`).
    pub fn keep_created(&self, on: bool) {
        self.created.set_active(on);
    }

    pub fn unit(&self) -> u16 {
        self.unit
    }

    /// Longest a call's statements, and then its `COMMIT`, may take: a
    /// transaction that began is over at most twice this later.
    pub fn statement_timeout(&self) -> Duration {
        self.statement_timeout
    }

    /// Stops (or allows again) every transaction that changes orders or
    /// key records; one that started before goes on to its end.
    pub fn fence_writes(&self, on: bool) {
        self.fenced.store(on, Ordering::Release);
    }

    /// Whether eventual reads have a replica to go to.
    pub fn has_replica(&self) -> bool {
        !self.replicas.is_empty()
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Open, idle and waited-for connections over the unit's primary pools
    /// (not the lanes: see [`UnitStore::write_connections`]).
    pub fn pool_stats(&self) -> PoolStats {
        let pools: &[&AnyPool] = match self.dialect {
            Dialect::MySql => &[&self.write],
            Dialect::Sqlite => &[&self.write, &self.read],
        };
        let lanes = || [&self.write_lane, &self.read_lane].into_iter().flatten();
        PoolStats {
            open: pools.iter().map(|p| p.size()).sum::<u32>()
                + lanes().map(|l| l.open()).sum::<u32>(),
            idle: pools.iter().map(|p| p.num_idle() as u32).sum::<u32>()
                + lanes().map(|l| l.idle_count()).sum::<u32>(),
            waiting: self.waiting.load(Ordering::Relaxed).max(0),
            max: self.max_connections,
        }
    }

    /// Connections open in the write lane (MySQL; at most as many as create
    /// batches and updates ran at once, up to `max_connections`).
    pub fn write_connections(&self) -> u32 {
        self.write_lane.as_deref().map_or(0, Lane::open)
    }

    /// Connections open in the read lane (MySQL; at most as many as reads ran
    /// at once, up to `max_connections`).
    pub fn read_connections(&self) -> u32 {
        self.read_lane.as_deref().map_or(0, Lane::open)
    }

    /// A connection for a strong read, counted as waiting until it is handed
    /// over: from the read lane on MySQL, from the read pool on SQLite.
    pub(super) async fn read_connection(&self) -> Result<ReadConnection<'_>, StoreError> {
        let _waiting = self.count_waiting();
        match &self.read_lane {
            Some(lane) => lane.take().await.map(ReadConnection::Lane),
            None => self.read.acquire().await.map(ReadConnection::Pool),
        }
        .map_err(StoreError::before_commit)
    }

    /// Closes every pool, waiting for checked-out connections to come back,
    /// for at most one statement timeout: a database that stopped answering
    /// leaves connections that never come back (sqlx pings each one it gets
    /// back before pooling it), and shutdown must not wait for them. Those
    /// are dropped with the unit's thread.
    pub async fn close(&self) {
        let close = async {
            for lane in [&self.write_lane, &self.read_lane].into_iter().flatten() {
                lane.close().await;
            }
            self.write.close().await;
            self.read.close().await;
            for r in &self.replicas {
                r.close().await;
            }
        };
        if tokio::time::timeout(self.statement_timeout, close)
            .await
            .is_err()
        {
            tracing::warn!(
                unit = self.unit,
                waited = ?self.statement_timeout,
                "connections still busy at shutdown; dropping them"
            );
        }
    }

    /// Runs the work of a call that has not sent `COMMIT`: running out of time
    /// here is a definite failure (the transaction is dropped, so rolled back).
    pub(super) async fn bounded<T>(
        &self,
        work: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.statement_timeout, work)
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Unavailable(format!(
                    "unit {}: no answer within {:?}",
                    self.unit, self.statement_timeout
                )))
            })
    }

    /// Commits: an error or a timeout here leaves the outcome unknown.
    pub(super) async fn commit(
        &self,
        tx: sqlx::Transaction<'static, Any>,
    ) -> Result<(), StoreError> {
        self.at_commit(tx.commit()).await
    }

    /// Runs `commit`, the call that sends `COMMIT`: an error or a timeout here
    /// leaves the outcome unknown.
    pub(super) async fn at_commit<T>(
        &self,
        commit: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.statement_timeout, commit).await {
            Ok(r) => r.map_err(StoreError::at_commit),
            Err(_) => Err(StoreError::InDoubt(format!(
                "unit {}: COMMIT not answered within {:?}",
                self.unit, self.statement_timeout
            ))),
        }
    }

    /// Counts the caller as waiting for a connection for as long as the guard lives.
    pub(super) fn count_waiting(&self) -> WaitGuard<'_> {
        WaitGuard::new(&self.waiting)
    }

    /// Starts a transaction that changes orders: on the write lane (MySQL),
    /// or as [`Self::begin`]. An error before [`Self::commit_write`] drops
    /// it, which rolls it back (a lane connection is closed); an answer that
    /// leaves the connection sound ends it with [`Self::rollback_write`].
    pub(super) async fn begin_write(&self) -> Result<WriteTx<'_>, StoreError> {
        if self.fenced.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable(format!(
                "unit {} is disabled: its database takes no writes",
                self.unit
            )));
        }
        let Some(lane) = &self.write_lane else {
            return self.begin().await.map(WriteTx::Pool);
        };
        let _waiting = self.count_waiting();
        self.bounded(async { lane.take().await.map_err(StoreError::before_commit) })
            .await
            .map(WriteTx::Lane)
    }

    /// Sends `COMMIT` (an error or a timeout leaves the outcome unknown). A
    /// lane connection goes back only after an answered `COMMIT`. With a
    /// replica, the commit's GTID comes back in the same round trip and
    /// advances the store's position (what consistency tokens carry).
    pub(super) async fn commit_write(&self, tx: WriteTx<'_>) -> Result<(), StoreError> {
        match tx {
            WriteTx::Pool(tx) => self.commit(tx).await,
            WriteTx::Lane(mut conn) if !self.replicas.is_empty() => {
                let rows = self
                    .at_commit(sqlx::raw_sql(COMMIT_WITH_GTID).fetch_all(conn.get()))
                    .await?;
                conn.release();
                let gtid = rows.first().and_then(|r| r.try_get::<String, _>(0).ok());
                if let Some(p) = gtid.as_deref().and_then(Position::parse) {
                    self.replication.advance(&p);
                }
                Ok(())
            }
            WriteTx::Lane(mut conn) => {
                self.at_commit(sqlx::raw_sql("COMMIT").execute(conn.get()))
                    .await?;
                conn.release();
                Ok(())
            }
        }
    }

    /// Ends a transaction with nothing to keep, and its locks. A lane
    /// connection goes back only after an answered `ROLLBACK`.
    pub(super) async fn rollback_write(&self, tx: WriteTx<'_>) {
        match tx {
            WriteTx::Pool(tx) => drop(tx), // sqlx rolls it back
            WriteTx::Lane(mut conn) => {
                let ended = self
                    .bounded(async {
                        let rollback = sqlx::raw_sql("ROLLBACK").execute(conn.get()).await;
                        rollback.map_err(StoreError::before_commit)
                    })
                    .await;
                if ended.is_ok() {
                    conn.release();
                }
            }
        }
    }

    /// Runs a read on the primary, bounded by the statement timeout.
    pub(super) async fn read_all(
        &self,
        query: sqlx::query::Query<'_, Any, sqlx::any::AnyArguments>,
    ) -> Result<Vec<AnyRow>, StoreError> {
        self.bounded(async {
            let mut conn = self.read_connection().await?;
            let rows = query.fetch_all(conn.get()).await;
            conn.finish(rows)
        })
        .await
    }

    /// Starts a write transaction. SQLite takes the write lock up front so that a
    /// read-then-write transaction cannot fail to upgrade its lock.
    pub(super) async fn begin(&self) -> Result<sqlx::Transaction<'static, Any>, StoreError> {
        let _waiting = self.count_waiting();
        self.bounded(async {
            match self.dialect {
                Dialect::MySql => self.write.begin().await,
                Dialect::Sqlite => self.write.begin_with("BEGIN IMMEDIATE").await,
            }
            .map_err(StoreError::before_commit)
        })
        .await
    }
}

/// Counts one waiter for as long as it lives.
pub(super) struct WaitGuard<'a>(&'a AtomicI64);

impl<'a> WaitGuard<'a> {
    fn new(counter: &'a AtomicI64) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Milliseconds since the Unix epoch, UTC.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
