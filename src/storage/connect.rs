//! How a unit connects to its database: the dialect a URL names, pool
//! options per dialect, and making a configured URL connectable.

use std::path::Path;
use std::time::Duration;

use sqlx::any::AnyPoolOptions;

use crate::config::StorageSettings;

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

/// A MySQL connection idle for longer is pinged before its next use (pool and
/// lanes alike): the server (restarted, failed over) or a firewall may have
/// closed it meanwhile. Short, because while a unit's circuit is open its
/// connections sit idle, and the first calls after its server came back must
/// not fail on connections the old server left behind (in half-open, one
/// failure opens the circuit again). Busy connections are reused within
/// milliseconds and never pinged.
pub(super) const PING_AFTER_IDLE: Duration = Duration::from_secs(1);

pub(super) fn pool_options(
    dialect: Dialect,
    settings: &StorageSettings,
    max: u32,
) -> AnyPoolOptions {
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
pub(super) fn prepare_url(url: &str, dialect: Dialect) -> Result<String, String> {
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
