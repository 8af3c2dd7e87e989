//! The unit's order sequence, in segments (Leaf "segment" mode).
//!
//! A segment of `step` numbers is reserved in one transaction
//! (`UPDATE sequences SET next_value = next_value + step`), then handed out from
//! memory. Once `prefetch_at_percent` of the current segment is used, the next
//! one is reserved in the background (double buffer), so a create does not wait
//! for the database in steady state.
//!
//! Why it never repeats a number: a segment is reserved by an atomic increment
//! in the unit's own database, so two engine processes (or one restarted
//! process) always get disjoint segments. Numbers left in a segment when a
//! process stops are skipped: gaps are fine, reuse is not.

use std::ops::Range;
use std::sync::Arc;

use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use super::error::StoreError;
use super::store::UnitStore;
use crate::domain::order_id::MAX_SEQUENCE;

const ADVANCE: &str = "UPDATE sequences SET next_value = next_value + ? WHERE name = ?";
const READ: &str = "SELECT next_value FROM sequences WHERE name = ?";

/// The name of the order sequence's row in `sequences`.
pub const ORDER_SEQUENCE: &str = "order";

impl UnitStore {
    /// Reserves the next `step` numbers of sequence `name`.
    pub async fn reserve_segment(&self, name: &str, step: u64) -> Result<Range<u64>, StoreError> {
        let step_param = i64::try_from(step).map_err(|_| StoreError::SequenceExhausted)?;
        let mut tx = self.begin().await?;
        let next: i64 = self
            .bounded(async {
                let updated = sqlx::query(ADVANCE)
                    .bind(step_param)
                    .bind(name)
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::before_commit)?;
                if updated.rows_affected() != 1 {
                    return Err(StoreError::Internal(format!(
                        "unit {}: no sequence row {name:?}",
                        self.unit
                    )));
                }
                sqlx::query_scalar(READ)
                    .bind(name)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(StoreError::before_commit)
            })
            .await?;
        // An unknown commit outcome only loses the segment (a gap), never reuses it.
        self.commit(tx).await?;
        let end = u64::try_from(next).map_err(|_| StoreError::SequenceExhausted)?;
        Ok(end - step..end)
    }
}

/// Hands out the unit's order sequence numbers. Shared by the unit's in-flight
/// creates; cheap to clone.
#[derive(Clone)]
pub struct SequenceGenerator {
    inner: Arc<Inner>,
}

struct Inner {
    store: UnitStore,
    step: u64,
    /// Numbers used from the current segment before the next is prefetched.
    prefetch_after: u64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The sequence was checked against the stored orders (first segment only).
    synced: bool,
    current: Range<u64>,
    used_in_current: u64,
    next: Option<Range<u64>>,
    prefetch: Option<JoinHandle<Result<Range<u64>, StoreError>>>,
}

impl SequenceGenerator {
    pub fn new(store: UnitStore, step: u64, prefetch_at_percent: u8) -> Self {
        let prefetch_after = (step * u64::from(prefetch_at_percent) / 100).max(1);
        Self {
            inner: Arc::new(Inner {
                store,
                step,
                prefetch_after,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// The next number. Waits for the database only when no segment is ready.
    pub async fn next(&self) -> Result<u64, StoreError> {
        let mut st = self.inner.state.lock().await;
        if !st.synced {
            // A fresh generator (start or restart) first makes sure the sequence
            // is past every stored order, whatever happened to the table.
            if self.inner.store.repair_sequence().await? {
                tracing::warn!(
                    unit = self.inner.store.unit(),
                    "order sequence was behind the stored orders; moved it forward"
                );
            }
            st.synced = true;
        }
        if st.current.is_empty() {
            let segment = match (st.next.take(), st.prefetch.take()) {
                (Some(ready), _) => ready,
                (None, Some(pending)) => match pending.await {
                    Ok(Ok(segment)) => segment,
                    // The background fetch failed: try once more in the foreground.
                    _ => self.reserve().await?,
                },
                (None, None) => self.reserve().await?,
            };
            st.current = segment;
            st.used_in_current = 0;
        }
        let value = st.current.start;
        if value > MAX_SEQUENCE {
            return Err(StoreError::SequenceExhausted);
        }
        st.current.start += 1;
        st.used_in_current += 1;
        self.maybe_prefetch(&mut st);
        Ok(value)
    }

    fn maybe_prefetch(&self, st: &mut State) {
        if let Some(done) = st.prefetch.take_if(|p| p.is_finished()) {
            // Collect a finished fetch without blocking; a failed one is retried below.
            if let Some(Ok(Ok(segment))) = futures_util::FutureExt::now_or_never(done) {
                st.next = Some(segment);
            }
        }
        if st.next.is_none()
            && st.prefetch.is_none()
            && st.used_in_current >= self.inner.prefetch_after
        {
            let this = self.clone();
            st.prefetch = Some(tokio::spawn(async move { this.reserve().await }));
        }
    }

    async fn reserve(&self) -> Result<Range<u64>, StoreError> {
        let reserved = self
            .inner
            .store
            .reserve_segment(ORDER_SEQUENCE, self.inner.step)
            .await;
        let outcome = if reserved.is_ok() { "ok" } else { "failed" };
        let unit = self.inner.store.unit().to_string();
        metrics::counter!(crate::metrics::SEGMENT_FETCHES, "unit" => unit, "outcome" => outcome)
            .increment(1);
        let segment = reserved?;
        tracing::debug!(
            unit = self.inner.store.unit(),
            start = segment.start,
            end = segment.end,
            "sequence segment reserved"
        );
        Ok(segment)
    }
}
