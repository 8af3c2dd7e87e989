//! Fills the unit's key filter with the idempotency keys its database holds,
//! so that creates in other units can skip asking this one for keys it
//! cannot hold (see `domain::key_filter` and the dispatcher's `routing.rs`).

use std::time::Duration;

use actix::prelude::*;

use super::actor::UnitActor;

impl UnitActor {
    /// Loads the unit's existing keys into its key filter, a page at a time,
    /// then marks it ready. On a database error it resumes after a second
    /// from where it stopped; until it is ready, creates ask this unit as
    /// before. Keys created meanwhile are added by the dispatcher.
    pub(super) fn load_keys(
        &mut self,
        ctx: &mut Context<Self>,
        mut after: Option<(String, String)>,
    ) {
        let Some(filter) = self.filter.clone() else {
            return;
        };
        if filter.is_ready() {
            return;
        }
        const PAGE: u32 = 10_000;
        let store = self.store.clone();
        let work = async move {
            let started = std::time::Instant::now();
            loop {
                let page = match store.scan_keys(after.as_ref(), PAGE).await {
                    Ok(page) => page,
                    Err(e) => return Err((after, e)),
                };
                for (merchant, key) in &page {
                    filter.insert(merchant, key);
                }
                let last_page = page.len() < PAGE as usize;
                after = page.into_iter().last().or(after);
                if last_page {
                    filter.set_ready();
                    return Ok((filter.len(), started.elapsed()));
                }
            }
        };
        self.spawn_contained(ctx, work, |loaded, act, ctx| match loaded {
            Ok((keys, took)) => {
                tracing::info!(unit = act.store.unit(), keys, ?took, "key filter loaded");
            }
            Err((after, e)) => {
                tracing::warn!(unit = act.store.unit(), error = %e, "loading the key filter failed; retrying in 1 s");
                ctx.run_later(Duration::from_secs(1), move |act, ctx| {
                    act.load_keys(ctx, after)
                });
            }
        });
    }
}
