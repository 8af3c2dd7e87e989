//! The server operations a failover is made of (MariaDB only): fence a
//! unit's database so that it can never take a write again, see how far a
//! replica has received and applied, wait for it, and promote it.
//!
//! These run on their own connections to the servers named by URL, not on
//! a unit's pools: the old primary may be dead, and the replica is not a
//! unit's primary yet.

use std::time::Duration;

use sqlx::mysql::MySqlConnection;
use sqlx::{AssertSqlSafe, Connection, Row};

use crate::config::mask_url;
use crate::domain::replication::Position;

/// Every table of a unit's database a write could change. A fenced
/// database refuses writes to each of them, for every user (triggers bind
/// users that `read_only` does not: those with `READ ONLY ADMIN`).
const FENCED_TABLES: [&str; 9] = [
    "orders",
    "refunds",
    "outbox",
    "sequences",
    "probe",
    "key_claims",
    "key_fences",
    "engine_meta",
    "relay_lease",
];
const EVENTS: [(&str, &str); 3] = [("INSERT", "ins"), ("UPDATE", "upd"), ("DELETE", "del")];

/// Recorded in a fenced database's `engine_meta`: a unit never starts on
/// a database that holds it.
pub const FENCE_MARK: &str = "replaced_by_failover";

/// Recorded in a promoted database's `engine_meta`: the primary it
/// replaced, so that a failover that promoted it and then could not
/// repoint the unit can be finished by repeating it.
const PROMOTED_MARK: &str = "promoted_by_failover";

/// The message a write to a fenced database fails with (SQLSTATE 45000,
/// error 1644): a definite failure, nothing was written.
const FENCE_MESSAGE: &str =
    "order-engine: this database was replaced by a failover; it takes no writes";

/// What a failover step found wrong; the message names the server (with
/// its password masked).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{server}: {message}")]
pub struct ServerError {
    pub server: String,
    pub message: String,
    /// No connection could be made at all (within the step's time): the
    /// server is down or cut off, and this changed nothing there.
    pub unreachable: bool,
}

/// One server a failover works on.
pub struct Server {
    pub(super) url: String,
    pub(super) timeout: Duration,
}

impl Server {
    /// `timeout` bounds each operation (a catch-up wait has its own).
    pub fn new(url: &str, timeout: Duration) -> Self {
        Self {
            url: url.to_owned(),
            timeout,
        }
    }

    pub fn error(&self, message: impl std::fmt::Display) -> ServerError {
        ServerError {
            server: mask_url(&self.url),
            message: message.to_string(),
            unreachable: false,
        }
    }

    /// Runs `work` on a new connection: connecting is bounded by the step
    /// time, `work` by `limit`.
    pub(super) async fn with<T>(
        &self,
        limit: Duration,
        work: impl AsyncFnOnce(&mut MySqlConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, ServerError> {
        let connect = tokio::time::timeout(self.timeout, MySqlConnection::connect(&self.url));
        let mut conn = match connect.await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                let e = self.error(e);
                return Err(ServerError {
                    unreachable: true,
                    ..e
                });
            }
            Err(_) => {
                let e = self.error(format!("no connection within {:?}", self.timeout));
                return Err(ServerError {
                    unreachable: true,
                    ..e
                });
            }
        };
        let out = match tokio::time::timeout(limit, work(&mut conn)).await {
            Ok(r) => r.map_err(|e| self.error(e)),
            Err(_) => Err(self.error(format!("no answer within {limit:?}"))),
        };
        let _ = conn.close().await;
        out
    }

    /// A value of the unit's `engine_meta` on this server.
    async fn meta(&self, name: &'static str) -> Result<Option<String>, ServerError> {
        self.with(self.timeout, async |c| {
            let row = sqlx::query("SELECT value FROM engine_meta WHERE name = ?")
                .bind(name)
                .fetch_optional(&mut *c)
                .await?;
            row.map(|r| r.try_get::<String, _>("value")).transpose()
        })
        .await
    }

    /// The unit whose database this server holds.
    pub async fn unit_id(&self) -> Result<Option<String>, ServerError> {
        self.meta("unit_id").await
    }

    /// The primary (its URL, password masked) a failover promoted this
    /// server to replace, if one did.
    pub async fn promoted_from(&self) -> Result<Option<String>, ServerError> {
        self.meta(PROMOTED_MARK).await
    }

    /// Fences the unit's database on this server: marks it replaced and
    /// installs triggers that refuse every write to its tables, outside
    /// the binlog (so that no replica takes them), then makes the server
    /// `read_only`. Creating a trigger waits for the transactions writing
    /// its table to end, so once this returns, nothing more will commit
    /// here: the answer is the server's final binlog position. Fencing a
    /// fenced database again changes nothing and answers the same.
    pub async fn fence(&self, reason: &str) -> Result<Position, ServerError> {
        let reason = reason.to_owned();
        let pos = self
            .with(self.timeout * 6, async move |c| {
                sqlx::raw_sql("SET SESSION sql_log_bin = 0; SET SESSION lock_wait_timeout = 5")
                    .execute(&mut *c)
                    .await?;
                let marked = sqlx::query("SELECT 1 FROM engine_meta WHERE name = ?")
                    .bind(FENCE_MARK)
                    .fetch_optional(&mut *c)
                    .await?
                    .is_some();
                if !marked {
                    sqlx::query("INSERT INTO engine_meta (name, value) VALUES (?, ?)")
                        .bind(FENCE_MARK)
                        .bind(&reason)
                        .execute(&mut *c)
                        .await?;
                }
                for table in FENCED_TABLES {
                    for (event, tag) in EVENTS {
                        let sql = format!(
                            "CREATE TRIGGER IF NOT EXISTS oe_fence_{table}_{tag} BEFORE {event} \
                             ON {table} FOR EACH ROW SIGNAL SQLSTATE '45000' \
                             SET MESSAGE_TEXT = '{FENCE_MESSAGE}'"
                        );
                        sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut *c).await?;
                    }
                }
                position(c, "@@gtid_binlog_pos").await
            })
            .await?;
        // Belt and braces for users without READ ONLY ADMIN; the triggers
        // are what holds.
        if let Err(e) = self
            .with(self.timeout, async |c| {
                sqlx::raw_sql("SET GLOBAL read_only = 1").execute(c).await
            })
            .await
        {
            tracing::warn!(error = %e, "could not make the fenced server read_only");
        }
        Ok(pos)
    }

    /// Undoes [`Self::fence`], or what of it was done (a failover that
    /// could not finish).
    pub async fn unfence(&self) -> Result<(), ServerError> {
        self.with(self.timeout * 6, async |c| {
            sqlx::raw_sql("SET SESSION sql_log_bin = 0")
                .execute(&mut *c)
                .await?;
            for table in FENCED_TABLES {
                for (_, tag) in EVENTS {
                    let sql = format!("DROP TRIGGER IF EXISTS oe_fence_{table}_{tag}");
                    sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut *c).await?;
                }
            }
            sqlx::query("DELETE FROM engine_meta WHERE name = ?")
                .bind(FENCE_MARK)
                .execute(&mut *c)
                .await?;
            sqlx::raw_sql("SET GLOBAL read_only = 0")
                .execute(&mut *c)
                .await?;
            Ok(())
        })
        .await
    }

    /// Everything this replica has of its primary's: what it received
    /// (`Gtid_IO_Pos`) and what it applied (`@@gtid_slave_pos`; after a
    /// restart, `Gtid_IO_Pos` is empty until its IO thread connects again).
    /// `None` when it is no replica (no replication configured).
    pub async fn received(&self) -> Result<Option<Position>, ServerError> {
        let seen = self
            .with(self.timeout, async |c| {
                let status = sqlx::raw_sql("SHOW SLAVE STATUS")
                    .fetch_optional(&mut *c)
                    .await?;
                let Some(io) = status
                    .map(|row| row.try_get::<String, _>("Gtid_IO_Pos"))
                    .transpose()?
                else {
                    return Ok(None);
                };
                let applied = position_text(c, "@@gtid_slave_pos").await?;
                Ok(Some((io, applied)))
            })
            .await?;
        let Some((io, applied)) = seen else {
            return Ok(None);
        };
        let parse = |t: &str| {
            Position::parse(t).ok_or_else(|| self.error(format!("unreadable position {t:?}")))
        };
        let mut received = parse(&io)?;
        received.merge(&parse(&applied)?);
        Ok(Some(received))
    }

    /// Stops taking events from the primary (`STOP SLAVE IO_THREAD`): what
    /// it received is then final, and it acknowledges no more of the old
    /// primary's commits.
    pub async fn stop_receiving(&self) -> Result<(), ServerError> {
        self.with(self.timeout * 2, async |c| {
            sqlx::raw_sql("STOP SLAVE IO_THREAD")
                .execute(c)
                .await
                .map(drop)
        })
        .await
    }

    /// Takes events from the primary again (a failover that gave up).
    pub async fn resume_receiving(&self) -> Result<(), ServerError> {
        self.with(self.timeout * 2, async |c| {
            sqlx::raw_sql("START SLAVE").execute(c).await.map(drop)
        })
        .await
    }

    /// Waits, at most `limit`, until this server has applied `position`.
    pub async fn wait_applied(
        &self,
        position: &Position,
        limit: Duration,
    ) -> Result<(), ServerError> {
        if position.is_empty() {
            return Ok(());
        }
        let text = position.to_string();
        let waited: i64 = self
            .with(limit + self.timeout, async |c| {
                sqlx::query("SELECT CAST(MASTER_GTID_WAIT(?, ?) AS SIGNED) AS w")
                    .bind(&text)
                    .bind(limit.as_secs_f64())
                    .fetch_one(c)
                    .await?
                    .try_get("w")
            })
            .await?;
        if waited == 0 {
            Ok(())
        } else {
            Err(self.error(format!("did not apply {text} within {limit:?}")))
        }
    }

    /// Makes this replica a primary: replication stopped and forgotten,
    /// writes allowed, and semi-synchronous waiting off (a primary with no
    /// replica that waits for one, with the timeout out of reach, would
    /// never acknowledge a commit; it is turned on again once a replica is
    /// attached: see `rejoin.rs`). The mark naming the replaced primary comes
    /// before the reset: a promotion that stops half-way either still
    /// replicates (and is done again) or holds the mark (and a repeated
    /// failover goes on to the repoint). Answers its position.
    pub async fn promote(&self, replaces: &str) -> Result<Position, ServerError> {
        let replaces = replaces.to_owned();
        self.with(self.timeout * 4, async move |c| {
            sqlx::raw_sql("STOP SLAVE").execute(&mut *c).await?;
            sqlx::query(
                "INSERT INTO engine_meta (name, value) VALUES (?, ?) \
                 ON DUPLICATE KEY UPDATE value = VALUES(value)",
            )
            .bind(PROMOTED_MARK)
            .bind(&replaces)
            .execute(&mut *c)
            .await?;
            sqlx::raw_sql(
                "RESET SLAVE ALL; SET GLOBAL rpl_semi_sync_master_enabled = 0; \
                 SET GLOBAL read_only = 0",
            )
            .execute(&mut *c)
            .await?;
            position(c, "@@gtid_current_pos").await
        })
        .await
    }
}

async fn position_text(c: &mut MySqlConnection, var: &'static str) -> Result<String, sqlx::Error> {
    let sql = format!("SELECT CAST({var} AS CHAR) AS pos");
    sqlx::query(AssertSqlSafe(sql))
        .fetch_one(c)
        .await?
        .try_get("pos")
}

pub(super) async fn position(
    c: &mut MySqlConnection,
    var: &'static str,
) -> Result<Position, sqlx::Error> {
    let text = position_text(c, var).await?;
    Position::parse(&text)
        .ok_or_else(|| sqlx::Error::Protocol(format!("unreadable position {text:?}")))
}
