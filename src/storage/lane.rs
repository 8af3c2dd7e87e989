//! Connections of a MySQL/MariaDB unit kept outside sqlx's pool: a lane.
//!
//! sqlx pings every pooled connection when it goes back to its pool, so on a
//! pooled connection a read costs two round trips, a create batch five
//! (`BEGIN`, the orders insert, the outbox insert, `COMMIT`, the ping) and a
//! pay six. Each round trip is a wake-up on both sides, and at a few creates
//! per batch they are most of the CPU a create costs. A lane hands out its
//! connections with no ping; whoever took one gives it back only once the
//! server answered its last statement, and otherwise drops it (closed, not
//! reused).
//!
//! A unit has two lanes:
//!
//! - **writes** (create batches, pays, closes, refunds), on connections opened
//!   with `autocommit = 0`: the first statement opens the transaction, so a
//!   batch is three round trips (insert, insert, `COMMIT`) and a pay four
//!   (`SELECT ... FOR UPDATE`, update, outbox insert, `COMMIT`). Nothing is
//!   committed before `COMMIT`, exactly as after `BEGIN`, so an error or
//!   silence before it is still a definite failure. A connection goes back
//!   only after its transaction ended with an answered `COMMIT` or
//!   `ROLLBACK`; closing it makes the server roll back whatever it held;
//! - **reads**, on plain autocommit connections: one statement, one round trip.
//!
//! `max` (the pool's `max_connections`) bounds each lane.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sqlx::{AnyConnection, Connection};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::connect::PING_AFTER_IDLE;

pub(super) struct Lane {
    url: String,
    /// Run once on each new connection (`SET autocommit = 0` for creates).
    init: Option<&'static str>,
    /// One permit per connection in use or being opened.
    permits: Arc<Semaphore>,
    idle: Mutex<Vec<(AnyConnection, Instant)>>,
    /// Connections open: idle here or in use by a batch.
    open: AtomicU32,
}

impl std::fmt::Debug for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lane")
            .field("open", &self.open())
            .field("idle", &self.idle_count())
            .finish()
    }
}

impl Lane {
    /// The lane create batches and updates run on.
    pub(super) fn for_writes(url: String, max: u32) -> Self {
        Self::new(url, Some("SET autocommit = 0"), max)
    }

    /// The lane reads run on.
    pub(super) fn for_reads(url: String, max: u32) -> Self {
        Self::new(url, None, max)
    }

    fn new(url: String, init: Option<&'static str>, max: u32) -> Self {
        Self {
            url,
            init,
            permits: Arc::new(Semaphore::new(max.max(1) as usize)),
            idle: Mutex::default(),
            open: AtomicU32::new(0),
        }
    }

    pub(super) fn open(&self) -> u32 {
        self.open.load(Ordering::Relaxed)
    }

    pub(super) fn idle_count(&self) -> u32 {
        self.idle_list().len() as u32
    }

    fn idle_list(&self) -> std::sync::MutexGuard<'_, Vec<(AnyConnection, Instant)>> {
        // The list is only pushed to and popped from: a panic elsewhere
        // cannot leave it half-changed.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently used idle connection, or a new one. The caller
    /// bounds the wait.
    pub(super) async fn take(&self) -> Result<LaneConnection<'_>, sqlx::Error> {
        let permit =
            (self.permits.clone().acquire_owned().await).map_err(|_| sqlx::Error::PoolClosed)?;
        loop {
            let Some((mut conn, since)) = self.idle_list().pop() else {
                break;
            };
            if since.elapsed() < PING_AFTER_IDLE || conn.ping().await.is_ok() {
                return Ok(LaneConnection::new(self, conn, permit));
            }
            self.open.fetch_sub(1, Ordering::Relaxed);
        }
        let mut conn = AnyConnection::connect(&self.url).await?;
        if let Some(init) = self.init {
            sqlx::raw_sql(init).execute(&mut conn).await?;
        }
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(LaneConnection::new(self, conn, permit))
    }

    /// Closes the idle connections (at shutdown, after the last batch).
    pub(super) async fn close(&self) {
        self.permits.close();
        let idle: Vec<_> = self.idle_list().drain(..).collect();
        for (conn, _) in idle {
            self.open.fetch_sub(1, Ordering::Relaxed);
            let _ = conn.close().await;
        }
    }
}

/// A lane connection in use. Dropped without [`LaneConnection::release`], it
/// is closed, not reused.
pub(super) struct LaneConnection<'a> {
    lane: &'a Lane,
    conn: Option<AnyConnection>,
    _permit: OwnedSemaphorePermit,
}

impl<'a> LaneConnection<'a> {
    fn new(lane: &'a Lane, conn: AnyConnection, permit: OwnedSemaphorePermit) -> Self {
        Self {
            lane,
            conn: Some(conn),
            _permit: permit,
        }
    }

    pub(super) fn get(&mut self) -> &mut AnyConnection {
        self.conn
            .as_mut()
            .expect("present until released or dropped")
    }

    /// Gives the connection back for its next user: only once the server
    /// answered its last statement (on the write lane: a `COMMIT` or
    /// `ROLLBACK`, so that no transaction is left open).
    pub(super) fn release(mut self) {
        if let Some(conn) = self.conn.take() {
            self.lane.idle_list().push((conn, Instant::now()));
        }
    }
}

impl Drop for LaneConnection<'_> {
    /// A connection dropped unreleased broke or was abandoned mid-statement.
    /// The idle ones most likely share its fate (the server went away), so
    /// they are dropped too, and the next users connect afresh.
    fn drop(&mut self) {
        if self.conn.take().is_some() {
            self.lane.open.fetch_sub(1, Ordering::Relaxed);
            let idle: Vec<_> = self.lane.idle_list().drain(..).collect();
            self.lane
                .open
                .fetch_sub(idle.len() as u32, Ordering::Relaxed);
        }
    }
}
