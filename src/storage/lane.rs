//! The connections a MySQL/MariaDB unit writes its create batches on.
//!
//! On a pooled connection a create batch costs five round trips: `BEGIN`, the
//! orders insert, the outbox insert, `COMMIT`, and the ping sqlx sends every
//! time a connection goes back to its pool. At a few creates per batch those
//! round trips, each a wake-up on both sides, are most of the CPU a create
//! costs. So create batches run on a few connections of their own, opened with
//! `autocommit = 0`: the first insert opens the transaction, and a batch is
//! three round trips (insert, insert, `COMMIT`).
//!
//! Nothing is committed before `COMMIT`, exactly as after `BEGIN`, so an error
//! or silence before it is still a definite failure. A connection goes back
//! to the lane only after its transaction ended with an answered `COMMIT` or
//! `ROLLBACK`; after anything else it is dropped, and closing it makes the
//! server roll back whatever it held. The unit actor runs at most
//! `group_commit.max_in_flight_batches` batches at once, so that is how many
//! connections the lane opens; `max` (the pool's `max_connections`) bounds it
//! for any other caller of the store.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::{AnyConnection, Connection};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A connection idle for longer is pinged before use: the server or a
/// firewall may have closed it meanwhile.
const PING_AFTER_IDLE: Duration = Duration::from_secs(30);

pub(crate) struct CreateLane {
    url: String,
    /// One permit per connection in use or being opened.
    permits: Arc<Semaphore>,
    idle: Mutex<Vec<(AnyConnection, Instant)>>,
    /// Connections open: idle here or in use by a batch.
    open: AtomicU32,
}

impl std::fmt::Debug for CreateLane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateLane")
            .field("open", &self.open())
            .field("idle", &self.idle_count())
            .finish()
    }
}

impl CreateLane {
    pub(crate) fn new(url: String, max: u32) -> Self {
        Self {
            url,
            permits: Arc::new(Semaphore::new(max.max(1) as usize)),
            idle: Mutex::default(),
            open: AtomicU32::new(0),
        }
    }

    pub(crate) fn open(&self) -> u32 {
        self.open.load(Ordering::Relaxed)
    }

    pub(crate) fn idle_count(&self) -> u32 {
        self.idle_list().len() as u32
    }

    fn idle_list(&self) -> std::sync::MutexGuard<'_, Vec<(AnyConnection, Instant)>> {
        // The list is only pushed to and popped from: a panic elsewhere
        // cannot leave it half-changed.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently used idle connection, or a new one. The caller
    /// bounds the wait.
    pub(crate) async fn take(&self) -> Result<LaneConnection<'_>, sqlx::Error> {
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
        sqlx::raw_sql("SET autocommit = 0")
            .execute(&mut conn)
            .await?;
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(LaneConnection::new(self, conn, permit))
    }

    /// Closes the idle connections (at shutdown, after the last batch).
    pub(crate) async fn close(&self) {
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
pub(crate) struct LaneConnection<'a> {
    lane: &'a CreateLane,
    conn: Option<AnyConnection>,
    _permit: OwnedSemaphorePermit,
}

impl<'a> LaneConnection<'a> {
    fn new(lane: &'a CreateLane, conn: AnyConnection, permit: OwnedSemaphorePermit) -> Self {
        Self {
            lane,
            conn: Some(conn),
            _permit: permit,
        }
    }

    pub(crate) fn get(&mut self) -> &mut AnyConnection {
        self.conn
            .as_mut()
            .expect("present until released or dropped")
    }

    /// Gives the connection back for the next batch: only once its
    /// transaction ended with an answered `COMMIT` or `ROLLBACK`.
    pub(crate) fn release(mut self) {
        if let Some(conn) = self.conn.take() {
            self.lane.idle_list().push((conn, Instant::now()));
        }
    }
}

impl Drop for LaneConnection<'_> {
    fn drop(&mut self) {
        if self.conn.take().is_some() {
            self.lane.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
