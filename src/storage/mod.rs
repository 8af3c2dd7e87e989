//! One trading unit's database: connection pools, migrations and error
//! classification. The SQL for orders is in `orders.rs`, the segment allocator
//! in `sequence.rs`.
//!
//! Both back ends (MySQL/MariaDB in production, SQLite as the embedded default)
//! run through sqlx's `Any` driver, so the queries are one code path; the few
//! statements that differ by dialect are chosen by [`Dialect`].

mod lane;
mod orders;
mod outbox;
mod probe;
pub mod sequence;
pub mod shapes;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::migrate::MigrateDatabase;
use sqlx::{Any, AnyConnection, AnyPool};

pub use orders::{
    BatchOutcome, Consistency, InsertOutcome, OrderUpdate, Page, RefundRequest, UserCursor,
};
pub use outbox::OutboxEvent;

use self::lane::{Lane, LaneConnection};
use crate::config::{StorageSettings, mask_url};
use crate::domain::RuleError;

static MYSQL_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("src/storage/migrations/mysql");
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("src/storage/migrations/sqlite");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    MySql,
    Sqlite,
}

impl Dialect {
    pub fn of_url(url: &str) -> Self {
        if url.starts_with("sqlite:") {
            Self::Sqlite
        } else {
            Self::MySql
        }
    }

    /// The most connections a unit opens to its primary with
    /// `max_connections` configured: on MySQL its pool and its write and read
    /// lanes, each bounded by it; on SQLite one writer and the read pool.
    pub fn most_connections(self, max_connections: u32) -> u32 {
        match self {
            Self::MySql => 3 * max_connections,
            Self::Sqlite => max_connections + 1,
        }
    }
}

/// Why a storage call did not succeed. The split between `Unavailable` and
/// `InDoubt` is what makes order retry safe: only the first is known not to
/// have committed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("order not found")]
    NotFound,
    #[error(transparent)]
    Rule(#[from] RuleError),
    /// The unit could not do the work and nothing was committed.
    #[error("unit unavailable: {0}")]
    Unavailable(String),
    /// `COMMIT` was sent but its outcome is unknown.
    #[error("commit outcome unknown: {0}")]
    InDoubt(String),
    /// The unit actor restarted (after a caught panic or broken state) while
    /// the call waited or ran. That says nothing about the unit's database, so
    /// it does not count against the unit's circuit. `in_doubt`: the call's
    /// writes may have reached `COMMIT`; otherwise nothing was written.
    #[error("the unit actor restarted during the call (outcome in doubt: {in_doubt})")]
    Restarted { in_doubt: bool },
    /// The sequence handed out a number an order already has: the unit's state
    /// is broken (nothing was written; the unit actor restarts and re-syncs).
    #[error("unit {unit}: sequence {seq} was handed out twice")]
    SequenceReused { unit: u16, seq: u64 },
    /// The unit has handed out every number its order id can hold.
    #[error("the unit's order sequence is exhausted")]
    SequenceExhausted,
    /// A bug or corrupt data: not the unit's availability.
    #[error("storage error: {0}")]
    Internal(String),
}

impl StoreError {
    /// Classifies an error from a statement before `COMMIT`.
    pub(crate) fn before_commit(e: sqlx::Error) -> Self {
        if is_transient(&e) {
            Self::Unavailable(e.to_string())
        } else {
            Self::Internal(e.to_string())
        }
    }

    /// Classifies an error from `COMMIT` itself: a broken connection there
    /// leaves the transaction's outcome unknown.
    pub(crate) fn at_commit(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::Database(ref d) if !is_transient(&e) => Self::Internal(d.to_string()),
            // The server said no (deadlock, read-only, ...): it did not commit.
            sqlx::Error::Database(_) => Self::Unavailable(e.to_string()),
            _ => Self::InDoubt(e.to_string()),
        }
    }
}

/// Errors that say "the unit cannot do this now" rather than "this is a bug".
fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => {
            if let Some(my) = d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
                // Shutdown in progress, too many connections, lock wait timeout,
                // deadlock, read-only server, query interrupted, server gone,
                // lost connection, killed connection.
                matches!(
                    my.number(),
                    1040 | 1053 | 1205 | 1213 | 1290 | 1317 | 1792 | 1927 | 2006 | 2013
                )
            } else if let Some(lite) = d.try_downcast_ref::<sqlx::sqlite::SqliteError>() {
                // Primary result codes: BUSY, LOCKED, IOERR, FULL, CANTOPEN.
                let primary = sqlx::error::DatabaseError::code(lite)
                    .and_then(|c| c.parse::<i32>().ok())
                    .unwrap_or(0)
                    & 0xff;
                matches!(primary, 5 | 6 | 10 | 13 | 14)
            } else {
                false
            }
        }
        _ => false,
    }
}

impl StoreError {
    /// An answer about the data (the order is not there, a rule said no): the
    /// connection that found it is sound, and its transaction can be rolled
    /// back and the connection reused.
    pub(crate) fn is_answer(&self) -> bool {
        matches!(self, Self::NotFound | Self::Rule(_))
    }
}

/// A connection for one strong read (see [`UnitStore::read_connection`]).
pub(crate) enum ReadConnection<'a> {
    /// MySQL: no ping when it goes back, so a read is one round trip.
    Lane(LaneConnection<'a>),
    /// SQLite: the read pool.
    Pool(sqlx::pool::PoolConnection<Any>),
}

impl ReadConnection<'_> {
    pub(crate) fn get(&mut self) -> &mut AnyConnection {
        match self {
            Self::Lane(c) => c.get(),
            Self::Pool(c) => c,
        }
    }

    /// Ends the read with what its statement returned. A lane connection goes
    /// back only when the server answered (rows, none, or a database error);
    /// after anything else it is closed.
    pub(crate) fn finish<T>(self, outcome: Result<T, sqlx::Error>) -> Result<T, StoreError> {
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
pub(crate) enum WriteTx<'a> {
    /// MySQL: a write-lane connection (`autocommit = 0`), where the first
    /// statement opens the transaction: no `BEGIN`, and no ping after it.
    Lane(LaneConnection<'a>),
    /// SQLite: a pool transaction (`BEGIN IMMEDIATE`).
    Pool(sqlx::Transaction<'static, Any>),
}

impl WriteTx<'_> {
    pub(crate) fn get(&mut self) -> &mut AnyConnection {
        match self {
            Self::Lane(c) => c.get(),
            Self::Pool(tx) => tx,
        }
    }
}

/// The pools of one unit. Cheap to clone (pools are shared handles).
#[derive(Debug, Clone)]
pub struct UnitStore {
    unit: u16,
    dialect: Dialect,
    /// Transactions. On SQLite one connection: SQLite has one writer anyway, and a
    /// single connection avoids lock-upgrade failures between our own writers.
    write: AnyPool,
    /// Strong reads: the primary.
    read: AnyPool,
    /// Eventual reads: a replica when configured.
    replica: Option<AnyPool>,
    /// MySQL: the connections create batches, pays, closes and refunds run
    /// on (see `lane.rs`).
    write_lane: Option<Arc<Lane>>,
    /// MySQL: the connections strong reads run on (see `lane.rs`).
    read_lane: Option<Arc<Lane>>,
    /// Bound on the statements of one call (see `bounded` and `commit`).
    statement_timeout: Duration,
    /// Calls waiting for a connection (writes: including the BEGIN round trip).
    waiting: Arc<AtomicI64>,
    max_connections: u32,
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

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("unit {unit}: cannot open database {url}: {message}")]
    Connect {
        unit: u16,
        url: String,
        message: String,
    },
    #[error("unit {unit}: migrating database {url} failed: {message}")]
    Migrate {
        unit: u16,
        url: String,
        message: String,
    },
}

impl UnitStore {
    /// Connects to the unit's database (creating it when missing) and migrates it.
    pub async fn open(
        unit: u16,
        primary_url: &str,
        replica_url: Option<&str>,
        settings: &StorageSettings,
    ) -> Result<Self, OpenError> {
        install_default_drivers();
        let dialect = Dialect::of_url(primary_url);
        let connect_err = |url: &str, message: String| OpenError::Connect {
            unit,
            url: mask_url(url),
            message,
        };
        let url = prepare_url(primary_url, dialect).map_err(|m| connect_err(primary_url, m))?;
        let timeout = Duration::from_millis(settings.connect_timeout_ms);
        let exists = tokio::time::timeout(timeout, Any::database_exists(&url))
            .await
            .map_err(|_| connect_err(primary_url, "timed out".into()))?
            .map_err(|e| connect_err(primary_url, e.to_string()))?;
        if !exists {
            Any::create_database(&url)
                .await
                .map_err(|e| connect_err(primary_url, e.to_string()))?;
        }

        let connect = |url: String, max: u32| async move {
            let opts = pool_options(dialect, settings, max);
            tokio::time::timeout(timeout, opts.connect(&url))
                .await
                .map_err(|_| "timed out".to_string())?
                .map_err(|e| e.to_string())
        };
        let (write, read) = match dialect {
            Dialect::MySql => {
                let pool = connect(url.clone(), settings.max_connections)
                    .await
                    .map_err(|m| connect_err(primary_url, m))?;
                (pool.clone(), pool)
            }
            Dialect::Sqlite => (
                connect(url.clone(), 1)
                    .await
                    .map_err(|m| connect_err(primary_url, m))?,
                connect(url.clone(), settings.max_connections)
                    .await
                    .map_err(|m| connect_err(primary_url, m))?,
            ),
        };
        let migrator = match dialect {
            Dialect::MySql => &MYSQL_MIGRATIONS,
            Dialect::Sqlite => &SQLITE_MIGRATIONS,
        };
        migrator.run(&write).await.map_err(|e| OpenError::Migrate {
            unit,
            url: mask_url(primary_url),
            message: e.to_string(),
        })?;
        let replica = match replica_url {
            Some(r) => {
                let url = prepare_url(r, Dialect::of_url(r)).map_err(|m| connect_err(r, m))?;
                Some(
                    connect(url, settings.max_connections)
                        .await
                        .map_err(|m| connect_err(r, m))?,
                )
            }
            None => None,
        };
        let max = settings.max_connections;
        let (write_lane, read_lane) = match dialect {
            Dialect::MySql => (
                Some(Arc::new(Lane::for_writes(url.clone(), max))),
                Some(Arc::new(Lane::for_reads(url, max))),
            ),
            Dialect::Sqlite => (None, None),
        };
        Ok(Self {
            unit,
            dialect,
            write,
            read,
            replica,
            write_lane,
            read_lane,
            statement_timeout: Duration::from_millis(settings.statement_timeout_ms),
            waiting: Arc::default(),
            max_connections: dialect.most_connections(settings.max_connections),
        })
    }

    pub fn unit(&self) -> u16 {
        self.unit
    }

    /// Whether eventual reads have a replica to go to.
    pub fn has_replica(&self) -> bool {
        self.replica.is_some()
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
    pub(crate) async fn read_connection(&self) -> Result<ReadConnection<'_>, StoreError> {
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
            if let Some(r) = &self.replica {
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
    pub(crate) async fn bounded<T>(
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
    pub(crate) async fn commit(
        &self,
        tx: sqlx::Transaction<'static, Any>,
    ) -> Result<(), StoreError> {
        self.at_commit(tx.commit()).await
    }

    /// Runs `commit`, the call that sends `COMMIT`: an error or a timeout here
    /// leaves the outcome unknown.
    pub(crate) async fn at_commit<T>(
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
    pub(crate) fn count_waiting(&self) -> WaitGuard<'_> {
        WaitGuard::new(&self.waiting)
    }

    /// Starts a transaction that changes orders: on the write lane (MySQL),
    /// or as [`Self::begin`]. An error before [`Self::commit_write`] drops
    /// it, which rolls it back (a lane connection is closed); an answer that
    /// leaves the connection sound ends it with [`Self::rollback_write`].
    pub(crate) async fn begin_write(&self) -> Result<WriteTx<'_>, StoreError> {
        let Some(lane) = &self.write_lane else {
            return self.begin().await.map(WriteTx::Pool);
        };
        let _waiting = self.count_waiting();
        self.bounded(async { lane.take().await.map_err(StoreError::before_commit) })
            .await
            .map(WriteTx::Lane)
    }

    /// Sends `COMMIT` (an error or a timeout leaves the outcome unknown). A
    /// lane connection goes back only after an answered `COMMIT`.
    pub(crate) async fn commit_write(&self, tx: WriteTx<'_>) -> Result<(), StoreError> {
        match tx {
            WriteTx::Pool(tx) => self.commit(tx).await,
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
    pub(crate) async fn rollback_write(&self, tx: WriteTx<'_>) {
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

    /// Starts a write transaction. SQLite takes the write lock up front so that a
    /// read-then-write transaction cannot fail to upgrade its lock.
    async fn begin(&self) -> Result<sqlx::Transaction<'static, Any>, StoreError> {
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
pub(crate) struct WaitGuard<'a>(&'a AtomicI64);

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

/// A MySQL connection idle for longer is pinged before its next use (pool and
/// lanes alike): the server (restarted, failed over) or a firewall may have
/// closed it meanwhile. Short, because while a unit's circuit is open its
/// connections sit idle, and the first calls after its server came back must
/// not fail on connections the old server left behind (in half-open, one
/// failure opens the circuit again). Busy connections are reused within
/// milliseconds and never pinged.
pub(crate) const PING_AFTER_IDLE: Duration = Duration::from_secs(1);

fn pool_options(dialect: Dialect, settings: &StorageSettings, max: u32) -> AnyPoolOptions {
    // No ping before each use: it would double the round trips of a call.
    // A connection that died meanwhile fails its first statement with an I/O
    // error, which is a definite failure (nothing committed) and is retried.
    let opts = AnyPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_millis(settings.acquire_timeout_ms))
        .test_before_acquire(false);
    match dialect {
        Dialect::MySql => opts.before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_AFTER_IDLE {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        }),
        // WAL lets readers run beside the writer; FULL sync because an
        // acknowledged order must survive a power cut; busy_timeout because
        // another engine process may hold the write lock for a moment.
        Dialect::Sqlite => opts.after_connect(|conn, _| {
            Box::pin(async move {
                sqlx::raw_sql(
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                     PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON;",
                )
                .execute(conn)
                .await
                .map(|_| ())
            })
        }),
    }
}

/// Makes a configured URL connectable: SQLite files are created on first use
/// (and their directory with them).
fn prepare_url(url: &str, dialect: Dialect) -> Result<String, String> {
    match dialect {
        Dialect::MySql => Ok(url.to_string()),
        Dialect::Sqlite => {
            let rest = url
                .strip_prefix("sqlite://")
                .or_else(|| url.strip_prefix("sqlite:"))
                .unwrap_or(url);
            let path = rest.split('?').next().unwrap_or_default();
            if let Some(dir) = Path::new(path)
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
            {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("cannot create directory {}: {e}", dir.display()))?;
            }
            Ok(if rest.contains("mode=") {
                url.to_string()
            } else if rest.contains('?') {
                format!("{url}&mode=rwc")
            } else {
                format!("{url}?mode=rwc")
            })
        }
    }
}

/// Milliseconds since the Unix epoch, UTC.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
