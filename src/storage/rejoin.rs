//! After a promotion: the unit's other replicas re-pointed at the promoted
//! server, and its commits made to wait for one of them again
//! (semi-synchronous replication), so that an acknowledged commit is on a
//! replica as it was before the failover.

use std::time::{Duration, Instant};

use sqlx::{AssertSqlSafe, Row};

use super::failover::{Server, ServerError, position};
use crate::config::host_port;
use crate::domain::replication::{BinlogState, Position};

/// What re-pointing a replica came to.
pub enum Rejoin {
    /// It replicates from the new primary.
    Replicating,
    /// It applied what the new primary lacks (its position): left alone.
    Ahead(Position),
}

impl Server {
    /// Replicates from `primary` from now on (GTID, from what this server
    /// has applied): what it had received and not applied is dropped and
    /// fetched again from the new primary. The replication user and
    /// password stay what they were (the promoted server was a replica of
    /// the same primary, so it has the same users). Once replication is
    /// stopped, what this server applied is final: if the new primary's
    /// binlog (`primary_log`) lacks some of it, the histories parted and it
    /// is left alone (`Ahead`; a replica restarted just
    /// before may have applied from its relay log after it was looked at).
    /// Done once its IO thread runs (connected); an error it reports, or no
    /// connection within the step time, is the answer.
    pub async fn replicate_from(
        &self,
        primary: &str,
        primary_log: &BinlogState,
    ) -> Result<Rejoin, ServerError> {
        let (host, port) = host_port(primary)
            .filter(|(h, _)| {
                h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-_:".contains(c))
            })
            .ok_or_else(|| self.error("the new primary's URL names no usable host"))?;
        let change = format!(
            "CHANGE MASTER TO MASTER_HOST = '{host}', MASTER_PORT = {port}, \
             MASTER_USE_GTID = slave_pos"
        );
        let ahead = self
            .with(self.timeout * 4, async move |c| {
                sqlx::raw_sql("STOP SLAVE").execute(&mut *c).await?;
                let applied = position(c, "@@gtid_slave_pos").await?;
                if !primary_log.holds(&applied) {
                    return Ok(Some(applied));
                }
                sqlx::raw_sql(AssertSqlSafe(change))
                    .execute(&mut *c)
                    .await?;
                sqlx::raw_sql("START SLAVE").execute(&mut *c).await?;
                Ok(None)
            })
            .await?;
        if let Some(applied) = ahead {
            return Ok(Rejoin::Ahead(applied));
        }
        let deadline = Instant::now() + self.timeout;
        loop {
            let (running, errno, error) = self
                .with(self.timeout, async |c| {
                    let row = sqlx::raw_sql("SHOW SLAVE STATUS")
                        .fetch_one(&mut *c)
                        .await?;
                    Ok((
                        row.try_get::<String, _>("Slave_IO_Running")?,
                        row.try_get_unchecked::<u64, _>("Last_IO_Errno")?,
                        row.try_get::<String, _>("Last_IO_Error")?,
                    ))
                })
                .await?;
            if running == "Yes" {
                return Ok(Rejoin::Replicating);
            }
            if errno != 0 {
                return Err(self.error(format!("replication does not run: {error}")));
            }
            if Instant::now() >= deadline {
                return Err(self.error(format!(
                    "not connected to the new primary within {:?} (IO thread: {running})",
                    self.timeout
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What this server logged (`@@gtid_binlog_state`): a promoted server's
    /// is what its replicas must not be past.
    pub async fn binlog_state(&self) -> Result<BinlogState, ServerError> {
        let text: String = self
            .with(self.timeout, async |c| {
                sqlx::query("SELECT CAST(@@gtid_binlog_state AS CHAR) AS s")
                    .fetch_one(c)
                    .await?
                    .try_get("s")
            })
            .await?;
        BinlogState::parse(&text)
            .ok_or_else(|| self.error(format!("unreadable binlog state {text:?}")))
    }

    /// Makes commits wait for a replica's acknowledgement again, once one
    /// of the re-pointed replicas is attached as a semi-synchronous client
    /// (waiting at most `limit`): turning it on with none attached would
    /// hold every commit for the whole timeout. Answers whether it is on.
    pub async fn wait_for_replicas(&self, limit: Duration) -> Result<bool, ServerError> {
        let deadline = Instant::now() + limit;
        loop {
            let clients = self
                .with(self.timeout, async |c| {
                    let row = sqlx::query("SHOW STATUS LIKE 'Rpl_semi_sync_master_clients'")
                        .fetch_optional(&mut *c)
                        .await?;
                    let n = row.map(|r| r.try_get::<String, _>(1)).transpose()?;
                    Ok(n.and_then(|n| n.parse::<u64>().ok()).unwrap_or(0))
                })
                .await?;
            if clients > 0 {
                break;
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.with(self.timeout, async |c| {
            sqlx::raw_sql("SET GLOBAL rpl_semi_sync_master_enabled = 1")
                .execute(c)
                .await
                .map(drop)
        })
        .await?;
        Ok(true)
    }
}
