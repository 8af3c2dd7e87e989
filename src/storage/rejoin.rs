//! After a promotion: the unit's other replicas re-pointed at the promoted
//! server, and its commits made to wait for one of them again
//! (semi-synchronous replication), so that an acknowledged commit is on a
//! replica as it was before the failover.

use std::time::{Duration, Instant};

use sqlx::{AssertSqlSafe, Row};

use super::failover::{Server, ServerError};

impl Server {
    /// Replicates from `primary` from now on (GTID, from what this server
    /// has applied): what it had received and not applied is dropped and
    /// fetched again from the new primary. The replication user and
    /// password stay what they were (the promoted server was a replica of
    /// the same primary, so it has the same users).
    pub async fn replicate_from(&self, primary: &str) -> Result<(), ServerError> {
        let (host, port) =
            host_port(primary).ok_or_else(|| self.error("the new primary's URL names no host"))?;
        let change = format!(
            "CHANGE MASTER TO MASTER_HOST = '{}', MASTER_PORT = {port}, \
             MASTER_USE_GTID = slave_pos",
            host.replace('\\', "\\\\").replace('\'', "\\'")
        );
        self.with(self.timeout * 4, async move |c| {
            sqlx::raw_sql("STOP SLAVE").execute(&mut *c).await?;
            sqlx::raw_sql(AssertSqlSafe(change))
                .execute(&mut *c)
                .await?;
            sqlx::raw_sql("START SLAVE")
                .execute(&mut *c)
                .await
                .map(drop)
        })
        .await
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

/// The host and port a MariaDB URL names (`mysql://user:pw@host:port/db`;
/// port 3306 when absent).
fn host_port(url: &str) -> Option<(String, u16)> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = match hostport.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6.split_once(']')?;
            (host, after.strip_prefix(':'))
        }
        None => match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        },
    };
    let port = port.map_or(Some(3306), |p| p.parse().ok())?;
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::host_port;

    #[test]
    fn finds_host_and_port() {
        let hp = |u| host_port(u).map(|(h, p)| format!("{h} {p}"));
        assert_eq!(
            hp("mysql://root:p@ss@127.0.0.1:3307/u1").as_deref(),
            Some("127.0.0.1 3307")
        );
        assert_eq!(
            hp("mysql://db.example/u1").as_deref(),
            Some("db.example 3306")
        );
        assert_eq!(hp("mysql://u@[::1]:3310/u1").as_deref(), Some("::1 3310"));
        assert_eq!(hp("mysql://u@h:x/u1"), None);
        assert_eq!(hp("mysql:///u1"), None);
    }
}
