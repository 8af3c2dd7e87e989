//! Calls that ask many units at once: a key's order (a merchant's look-up,
//! and the create path's check that a key is new), and a page of a user's
//! orders merged from every unit's page.

use actix::Addr;
use futures_util::future::join_all;

use super::calls::UnitCalls;
use super::messages::UserPage;
use super::routing::Key;
use crate::actors::EngineError;
use crate::actors::unit::{self, FindByKey, UnitActor};
use crate::domain::{Order, UserCursor};

/// What a fan-out look-up of one key saw.
pub(super) struct KeySearch {
    pub found: Option<Order>,
    /// Units that could not answer.
    pub unanswered: Vec<u16>,
}

/// Asks every unit in `targets` for `key`'s order, in parallel.
pub(super) async fn find_key(
    calls: &UnitCalls,
    targets: &[(u16, Addr<UnitActor>)],
    key: &Key,
) -> KeySearch {
    let msg = FindByKey {
        merchant_id: key.0.clone(),
        out_trade_no: key.1.clone(),
    };
    let answers = join_all(
        targets
            .iter()
            .map(|(unit, addr)| calls.call(*unit, addr, msg.clone(), true, calls.timeout)),
    )
    .await;
    let mut search = KeySearch {
        found: None,
        unanswered: Vec::new(),
    };
    for ((unit, _), answer) in targets.iter().zip(answers) {
        match answer {
            Ok(Some(order)) => search.found = Some(order),
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(unit, error = %e, "unit did not answer a key look-up");
                search.unanswered.push(*unit);
            }
        }
    }
    search
}

/// The order `key` names in any of `targets`. When none has it but one did
/// not answer, "not found" would not be trustworthy: that unit is unavailable.
pub(super) async fn lookup(
    calls: UnitCalls,
    targets: Vec<(u16, Addr<UnitActor>)>,
    key: Key,
) -> Result<Order, EngineError> {
    let search = find_key(&calls, &targets, &key).await;
    match (search.found, search.unanswered.first()) {
        (Some(order), _) => Ok(order),
        (None, Some(&unit)) => Err(EngineError::UnitUnavailable { unit }),
        (None, None) => Err(EngineError::NotFound),
    }
}

/// The first `ask.limit` orders of the user's newest-first list after
/// `ask.after`, over every unit in `targets`: each unit gives its first
/// `limit + 1` (one more tells whether another page exists), and the
/// merge keeps the newest `limit`. The sort key `(created_at, order_id)` is
/// unique, so pages never skip or repeat an order.
pub(super) async fn list_user(
    calls: UnitCalls,
    targets: Vec<(u16, Addr<UnitActor>)>,
    ask: unit::ListUserOrders,
) -> Result<UserPage, EngineError> {
    let limit = ask.limit as usize;
    let ask = unit::ListUserOrders {
        limit: ask.limit + 1,
        ..ask
    };
    let pages = join_all(
        targets
            .iter()
            .map(|(unit, addr)| calls.forward(*unit, addr, ask.clone())),
    )
    .await;
    let mut orders = Vec::new();
    for page in pages {
        orders.extend(page?.orders);
    }
    orders.sort_by_key(|o| std::cmp::Reverse((o.created_at_ms, o.id)));
    let more = orders.len() > limit;
    orders.truncate(limit);
    let next = more.then(|| orders.last()).flatten().map(|o| UserCursor {
        created_at_ms: o.created_at_ms,
        order_id: o.id,
    });
    Ok(UserPage { orders, next })
}
