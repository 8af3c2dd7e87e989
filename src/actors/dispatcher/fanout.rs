//! A page of a user's orders, merged from every unit's page.

use actix::Addr;
use futures_util::future::join_all;

use super::calls::UnitCalls;
use super::messages::UserPage;
use crate::actors::EngineError;
use crate::actors::unit::{self, UnitActor};
use crate::domain::UserCursor;

/// The first `ask.limit` orders of the user's newest-first list after
/// `ask.after`, over every unit in `targets`: each unit gives its first
/// `limit + 1` (one more tells whether another page exists), and the
/// merge keeps the newest `limit`. The sort key `(created_at, order_id)` is
/// unique, so pages never skip or repeat an order of the units read. A
/// unit that is disabled or does not answer is named in the page's
/// `unavailable` (its orders are missing from it); when no unit answers,
/// the list is unavailable.
pub(super) async fn list_user(
    calls: UnitCalls,
    targets: Vec<(u16, Option<Addr<UnitActor>>)>,
    ask: unit::ListUserOrders,
) -> Result<UserPage, EngineError> {
    let limit = ask.limit as usize;
    let ask = unit::ListUserOrders {
        limit: ask.limit + 1,
        ..ask
    };
    let pages = join_all(targets.iter().map(|(unit, addr)| {
        let (ask, calls) = (ask.clone(), &calls);
        async move {
            match addr {
                Some(addr) => calls.forward(*unit, addr, ask).await,
                None => Err(EngineError::UnitUnavailable { unit: *unit }),
            }
        }
    }))
    .await;
    let mut orders = Vec::new();
    let mut unavailable = Vec::new();
    let mut first_error = None;
    for ((unit, _), page) in targets.iter().zip(pages) {
        match page {
            Ok(page) => orders.extend(page.orders),
            Err(e) => {
                tracing::debug!(unit, error = %e, "a unit's part of a user list is missing");
                unavailable.push(*unit);
                first_error.get_or_insert(e);
            }
        }
    }
    if unavailable.len() == targets.len()
        && let Some(e) = first_error
    {
        return Err(e);
    }
    orders.sort_by_key(|o| std::cmp::Reverse((o.created_at_ms, o.id)));
    let more = orders.len() > limit;
    orders.truncate(limit);
    let next = more.then(|| orders.last()).flatten().map(|o| UserCursor {
        created_at_ms: o.created_at_ms,
        order_id: o.id,
    });
    Ok(UserPage {
        orders,
        next,
        unavailable,
    })
}
