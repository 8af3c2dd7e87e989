//! Opening a unit's database: connect (creating the database when missing),
//! migrate, and set up the pools and lanes.

use std::sync::Arc;
use std::time::Duration;

use sqlx::Any;
use sqlx::any::install_default_drivers;
use sqlx::migrate::MigrateDatabase;

use super::connect::{Dialect, pool_options, prepare_url};
use super::lane::Lane;
use super::replication::{ReplicaPolicy, Replication};
use super::store::UnitStore;
use crate::config::{StorageSettings, mask_url};

static MYSQL_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("src/storage/migrations/mysql");
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("src/storage/migrations/sqlite");

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
        replica_urls: &[String],
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
        if !exists && let Err(e) = Any::create_database(&url).await {
            // Another engine process starting at the same moment may have
            // created it first; that is no failure.
            if !Any::database_exists(&url).await.unwrap_or(false) {
                return Err(connect_err(primary_url, e.to_string()));
            }
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
        // Two engine processes starting at once on a new database race on
        // its migrations (the loser hits a duplicate entry); the migrations
        // are idempotent, so the loser runs them again once the winner is done.
        let mut tries = 0;
        while let Err(e) = migrator.run(&write).await {
            tries += 1;
            if tries == 5 {
                return Err(OpenError::Migrate {
                    unit,
                    url: mask_url(primary_url),
                    message: e.to_string(),
                });
            }
            tokio::time::sleep(Duration::from_millis(200 * tries)).await;
        }
        // Lazily: a replica that cannot be reached never stops the unit
        // from starting; eventual reads skip it until it answers.
        let mut replicas = Vec::with_capacity(replica_urls.len());
        for r in replica_urls {
            let url = prepare_url(r, Dialect::of_url(r)).map_err(|m| connect_err(r, m))?;
            let opts = pool_options(dialect, settings, settings.max_connections)
                .acquire_timeout(Duration::from_millis(settings.replica_read_timeout_ms));
            replicas.push(
                opts.connect_lazy(&url)
                    .map_err(|e| connect_err(r, e.to_string()))?,
            );
        }
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
            replication: Arc::new(Replication::new(replicas.len())),
            replicas,
            replica_policy: ReplicaPolicy {
                max_lag: Duration::from_millis(settings.replica_max_lag_ms),
                read_timeout: Duration::from_millis(settings.replica_read_timeout_ms),
                wait: Duration::from_millis(settings.replica_wait_ms),
            },
            write_lane,
            read_lane,
            statement_timeout: Duration::from_millis(settings.statement_timeout_ms),
            waiting: Arc::default(),
            max_connections: dialect.most_connections(settings.max_connections),
            fenced: Arc::default(),
            created: Arc::default(),
            lease_renewed_ms: Arc::default(),
        })
    }
}
