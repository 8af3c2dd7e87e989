//! The control database: one routing table shared by every engine process
//! in front of the same units. It holds the whole table as one JSON
//! document with its version; a change replaces it only if the version is
//! still the one the change was built on (compare-and-set), and logs who
//! changed what in the same transaction. What the document means is the
//! caller's business (`config::TableState`).

use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::{ConnectOptions, MySqlPool, Row};

use crate::config::mask_url;

const TABLE_NAME: &str = "routing";

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS routing_table (\
     name VARCHAR(32) NOT NULL PRIMARY KEY, \
     version BIGINT UNSIGNED NOT NULL, \
     body MEDIUMTEXT NOT NULL, \
     changed_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)) ENGINE=InnoDB";
const CREATE_LOG: &str = "CREATE TABLE IF NOT EXISTS routing_changes (\
     version BIGINT UNSIGNED NOT NULL PRIMARY KEY, \
     changed_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), \
     who VARCHAR(255) NOT NULL, \
     what TEXT NOT NULL) ENGINE=InnoDB";
const SCHEMA_EXISTS: &str = "SELECT 1 FROM information_schema.schemata WHERE schema_name = ?";
const SELECT_VERSION: &str = "SELECT version FROM routing_table WHERE name = ?";
const SELECT_TABLE: &str = "SELECT version, body FROM routing_table WHERE name = ?";
/// The table under a shared lock: waits for a transaction still changing it.
const SELECT_TABLE_LOCKED: &str =
    "SELECT version, body FROM routing_table WHERE name = ? LOCK IN SHARE MODE";
const SEED: &str = "INSERT IGNORE INTO routing_table (name, version, body) VALUES (?, ?, ?)";
const SWAP: &str = "UPDATE routing_table SET version = ?, body = ?, changed_at = CURRENT_TIMESTAMP(6) \
     WHERE name = ? AND version = ?";
const LOG: &str = "INSERT INTO routing_changes (version, who, what) VALUES (?, ?, ?)";

/// Longest a call to the control database may take (a hung server must not
/// hold an operator's change, or a process's poll, for longer).
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a change whose commit went unanswered is asked after.
const SETTLE_FOR: Duration = Duration::from_secs(2);

/// Why the control database did not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ControlError {
    /// Nothing was changed.
    #[error("the control store is unreachable: {0}")]
    Unreachable(String),
    /// The change was sent but its commit was not confirmed: it may or may
    /// not have been applied (the next poll tells).
    #[error("the control store did not confirm the change (it may have been applied): {0}")]
    InDoubt(String),
}

/// What a compare-and-set did.
#[derive(Debug, PartialEq, Eq)]
pub enum Swapped {
    Done,
    /// The table was no longer at the version the change was built on.
    Moved,
}

#[derive(Clone)]
pub struct ControlStore {
    pool: MySqlPool,
}

impl ControlStore {
    /// Connects to `url` (creating its database and tables when missing).
    pub async fn open(url: &str) -> Result<Self, ControlError> {
        let unreachable = |e: &dyn std::fmt::Display| {
            ControlError::Unreachable(format!("{}: {e}", mask_url(url)))
        };
        let options: MySqlConnectOptions = url.parse().map_err(|e| unreachable(&e))?;
        let database = options
            .get_database()
            .map(str::to_owned)
            .ok_or_else(|| unreachable(&"the URL names no database"))?;
        let created = bounded(async {
            let mut conn = options.clone().database("").connect().await?;
            let exists = sqlx::query(SCHEMA_EXISTS)
                .bind(&database)
                .fetch_optional(&mut conn)
                .await?
                .is_some();
            if !exists {
                // Backquotes cannot be escaped in a name: they are dropped.
                let create = format!(
                    "CREATE DATABASE IF NOT EXISTS `{}`",
                    database.replace('`', "")
                );
                sqlx::query(sqlx::AssertSqlSafe(create))
                    .execute(&mut conn)
                    .await?;
            }
            Ok(())
        })
        .await;
        created.map_err(|e| unreachable(&e))?;
        let pool = MySqlPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(CALL_TIMEOUT)
            .connect_lazy_with(options);
        let store = Self { pool };
        for ddl in [CREATE_TABLE, CREATE_LOG] {
            bounded(sqlx::query(ddl).execute(&store.pool))
                .await
                .map_err(|e| unreachable(&e))?;
        }
        Ok(store)
    }

    /// The table's version; `None` before it was seeded.
    pub async fn version(&self) -> Result<Option<u64>, ControlError> {
        let row = bounded(
            sqlx::query(SELECT_VERSION)
                .bind(TABLE_NAME)
                .fetch_optional(&self.pool),
        )
        .await
        .map_err(unreachable)?;
        row.map(|r| r.try_get::<u64, _>("version"))
            .transpose()
            .map_err(unreachable)
    }

    /// The table's version and document; `None` before it was seeded.
    pub async fn load(&self) -> Result<Option<(u64, String)>, ControlError> {
        let row = bounded(
            sqlx::query(SELECT_TABLE)
                .bind(TABLE_NAME)
                .fetch_optional(&self.pool),
        )
        .await
        .map_err(unreachable)?;
        row.map(|r| Ok((r.try_get("version")?, r.try_get("body")?)))
            .transpose()
            .map_err(|e: sqlx::Error| unreachable(e))
    }

    /// Stores the first table (`version`, `body`) unless there is one
    /// already; whether this call stored it.
    pub async fn seed(&self, version: u64, body: &str, who: &str) -> Result<bool, ControlError> {
        let mut tx = bounded(self.pool.begin()).await.map_err(unreachable)?;
        let seeded = bounded(async {
            let seeded = sqlx::query(SEED)
                .bind(TABLE_NAME)
                .bind(version)
                .bind(body)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
            if seeded {
                log(&mut tx, version, who, "seeded from the config").await?;
            }
            Ok(seeded)
        })
        .await
        .map_err(unreachable)?;
        commit(tx).await?;
        Ok(seeded)
    }

    /// Replaces the table with `body` at `from + 1`, if it is still at
    /// `from`, logging `who` changed `what`.
    pub async fn swap(
        &self,
        from: u64,
        body: &str,
        who: &str,
        what: &str,
    ) -> Result<Swapped, ControlError> {
        let mut tx = bounded(self.pool.begin()).await.map_err(unreachable)?;
        let swapped = bounded(async {
            let swapped = sqlx::query(SWAP)
                .bind(from + 1)
                .bind(body)
                .bind(TABLE_NAME)
                .bind(from)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
            if swapped {
                log(&mut tx, from + 1, who, what).await?;
            }
            Ok(swapped)
        })
        .await
        .map_err(unreachable)?;
        if !swapped {
            return Ok(Swapped::Moved);
        }
        if let Err(doubt) = commit(tx).await {
            return self.settle(from + 1, body).await.ok_or(doubt);
        }
        Ok(Swapped::Done)
    }

    /// Whether a change to `version` holding `body`, whose commit went
    /// unanswered, was made: the table read under a shared lock, which
    /// waits for the unanswered transaction to end either way (committed,
    /// or rolled back once the server sees its connection gone). `Moved`
    /// when it was not made (the caller builds it again on what the table
    /// is). Asked again for up to [`SETTLE_FOR`] while the store does not
    /// answer; `None` if it never does. Without this, the operator was told
    /// to repeat a change that had been made: a failover repeated that way
    /// fails over the unit's new primary.
    async fn settle(&self, version: u64, body: &str) -> Option<Swapped> {
        let deadline = tokio::time::Instant::now() + SETTLE_FOR;
        loop {
            let query = sqlx::query(SELECT_TABLE_LOCKED).bind(TABLE_NAME);
            match bounded(query.fetch_optional(&self.pool)).await {
                Ok(Some(row)) => {
                    let now: u64 = row.try_get("version").ok()?;
                    let held: String = row.try_get("body").ok()?;
                    let made = now == version && held == body;
                    return Some(if made { Swapped::Done } else { Swapped::Moved });
                }
                Ok(None) => return None,
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(_) => return None,
            }
        }
    }

    /// Closes the connections.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

async fn log(
    tx: &mut sqlx::Transaction<'static, sqlx::MySql>,
    version: u64,
    who: &str,
    what: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(LOG)
        .bind(version)
        .bind(who.chars().take(255).collect::<String>())
        .bind(what)
        .execute(&mut **tx)
        .await
        .map(|_| ())
}

/// Commits `tx`: an error here may have committed.
async fn commit(tx: sqlx::Transaction<'static, sqlx::MySql>) -> Result<(), ControlError> {
    bounded(tx.commit())
        .await
        .map_err(|e| ControlError::InDoubt(e.to_string()))
}

fn unreachable(e: impl std::fmt::Display) -> ControlError {
    ControlError::Unreachable(e.to_string())
}

/// `call`, or a timeout error after [`CALL_TIMEOUT`].
async fn bounded<T>(
    call: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| {
            let late = std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in time");
            Err(sqlx::Error::Io(late))
        })
}
