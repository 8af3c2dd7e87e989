//! The create path: idempotency across units, unit choice, and order retry.
//!
//! Retrying a create on another unit mints a new order id, so it is only done
//! when the failed attempt certainly did not commit ([`CallError::is_definite`]:
//! circuit open, pool timeout, connection refused, any error before `COMMIT`).
//! When the outcome is unknown (the connection broke or timed out at
//! `COMMIT`), the unit that may have committed is asked first, with a read
//! that waits for in-flight transactions on the key. If it cannot answer, the
//! caller gets `503` and the key is remembered as in doubt at that unit, so
//! the caller's retry asks there before creating anywhere.

use std::time::Instant;

use actix::Addr;

use super::calls::{CallError, UnitCalls};
use super::fanout::find_key;
use super::messages::Created;
use super::routing::{Key, SharedRouting};
use crate::actors::EngineError;
use crate::actors::key_lock::KeyLocks;
use crate::actors::unit::{CreateOrder, CreateOutcome, SettleKey, UnitActor};
use crate::domain::key_filter::KeyHash;
use crate::domain::{NewOrder, Order};
use crate::metrics as m;
use metrics::counter;

pub(super) struct CreateContext {
    pub routing: SharedRouting,
    pub locks: KeyLocks<KeyHash>,
    pub calls: UnitCalls,
    pub max_attempts: u32,
}

fn answer(request: &NewOrder, existing: Order, replayed: bool) -> Result<Created, EngineError> {
    if request.is_replay_of(&existing) {
        Ok(Created {
            order: existing,
            replayed,
        })
    } else {
        Err(EngineError::IdempotencyConflict)
    }
}

impl CreateContext {
    pub async fn create(self, request: NewOrder) -> Result<Created, EngineError> {
        // The key is hashed once, for its lock and every unit's key filter,
        // and copied only when a unit must be asked for it (rarely).
        let hash = KeyHash::of(request.merchant_id.as_str(), request.out_trade_no.as_str());
        let key = || -> Key { (request.merchant_id.clone(), request.out_trade_no.clone()) };
        // Concurrent creates of one key in this process run one after another
        // (two keys with one 128-bit hash would too, harmlessly).
        let _serialized = self.locks.lock(hash).await;
        let deadline = Instant::now() + self.calls.timeout;

        if !self.routing.in_doubt.is_empty()
            && let Some(existing) = self.settle_remembered(&key()).await?
        {
            return answer(&request, existing, true);
        }
        // The key may already name an order in any unit (a replay that the
        // random choice would send elsewhere): ask the others first. The unit
        // the first attempt goes to is not asked: its unique index answers.
        let first = self
            .routing
            .choose_for_create(&request.merchant_id, &[], &self.calls.board);
        // Units whose key filter rules the key out are not asked.
        let targets = self
            .routing
            .key_lookup_targets(hash, first.as_ref().map(|f| f.0));
        if !targets.is_empty()
            && let Some(existing) = find_key(&self.calls, &targets, &key()).await.found
        {
            return answer(&request, existing, true);
        }

        let mut first = first;
        let mut tried = Vec::new();
        while tried.len() < self.max_attempts as usize {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            let choice = first.take().or_else(|| {
                self.routing
                    .choose_for_create(&request.merchant_id, &tried, &self.calls.board)
            });
            let Some((unit, addr)) = choice else {
                break;
            };
            tried.push(unit);
            self.routing.note_key(unit, hash);
            let attempt = CreateOrder {
                request: request.clone(),
            };
            let failure = match self
                .calls
                .call(unit, &addr, attempt, false, remaining)
                .await
            {
                Ok(CreateOutcome::Created(order)) => {
                    tracing::debug!(unit, order_id = %order.id, "order created");
                    self.calls.count_create(unit);
                    return Ok(Created {
                        order,
                        replayed: false,
                    });
                }
                Ok(CreateOutcome::Replayed(order)) => return answer(&request, order, true),
                Ok(CreateOutcome::KeyConflict) => return Err(EngineError::IdempotencyConflict),
                Err(e) => e,
            };
            if failure.is_definite() {
                tracing::warn!(unit, reason = failure.reason(), error = %failure, "create failed before commit; retrying on another unit");
                counter!(m::CREATE_RETRIES, "reason" => failure.reason()).increment(1);
                continue;
            }
            tracing::warn!(unit, reason = failure.reason(), error = %failure, "create outcome unknown; asking the unit");
            match self.settle(unit, &addr, &key()).await {
                Ok(Some(order)) => {
                    counter!(m::CREATE_IN_DOUBT, "outcome" => "found").increment(1);
                    self.calls.count_create(unit);
                    return answer(&request, order, false);
                }
                Ok(None) => {
                    // It did not commit: safe to go elsewhere.
                    counter!(m::CREATE_IN_DOUBT, "outcome" => "absent").increment(1);
                    counter!(m::CREATE_RETRIES, "reason" => "in_doubt_absent").increment(1);
                    continue;
                }
                Err(_) => {
                    counter!(m::CREATE_IN_DOUBT, "outcome" => "unresolved").increment(1);
                    self.routing.in_doubt.remember(key(), unit);
                    return Err(EngineError::UnitUnavailable { unit });
                }
            }
        }
        Err(EngineError::NoUnitAvailable)
    }

    /// Asks `unit` for the key's order, waiting out in-flight commits.
    async fn settle(
        &self,
        unit: u16,
        addr: &Addr<UnitActor>,
        key: &Key,
    ) -> Result<Option<Order>, CallError> {
        let msg = SettleKey {
            merchant_id: key.0.clone(),
            out_trade_no: key.1.clone(),
        };
        self.calls
            .call(unit, addr, msg, true, self.calls.timeout)
            .await
    }

    /// If an earlier create of `key` ended in doubt, settles it first: the
    /// order it made, or `None` once the unit says it made none.
    async fn settle_remembered(&self, key: &Key) -> Result<Option<Order>, EngineError> {
        let Some(unit) = self.routing.in_doubt.unit_of(key) else {
            return Ok(None);
        };
        let addr = self.routing.route(unit)?;
        match self.settle(unit, &addr, key).await {
            Ok(found) => {
                tracing::info!(unit, found = found.is_some(), "in-doubt create settled");
                self.routing.in_doubt.forget(key);
                Ok(found)
            }
            // Still no answer: creating elsewhere could duplicate the order.
            Err(_) => Err(EngineError::UnitUnavailable { unit }),
        }
    }
}
