//! The create path: one key, one order, across units and engine processes.
//!
//! A create first makes its claim the key's record at a majority of the
//! key's home units (`keys.rs`), settling any other create's claim it finds
//! there, and only then writes the order, with the key's slot, in the unit
//! it chose. Any two creates of a key meet at a home, and a unit that is
//! down hides no key, so neither a replay through another process nor a
//! unit outage can make a second order. `docs/idempotency.md` has the
//! states and the argument.
//!
//! Retrying elsewhere keeps the create's identity (its attempt) and moves
//! its claims, which is safe once the failed unit certainly holds nothing of
//! it (`CallError::is_definite`, or a fence written by settling it). When
//! the unit cannot say, the caller gets `503` with `Retry-After`, and its
//! retry finds the claims and settles them there.

use std::time::Instant;

use metrics::counter;

use super::calls::UnitCalls;
use super::keys::{KeyRecords, NotClaimed, claim_for};
use super::messages::Created;
use super::routing::{Key, SharedRouting};
use crate::actors::EngineError;
use crate::actors::key_lock::KeyLocks;
use crate::actors::unit::{CreateOrder, CreateOutcome};
use crate::domain::key_homes::{Attempt, Homes, Mark, StableKeyHash};
use crate::domain::{NewOrder, Order};
use crate::metrics as m;

pub(super) struct CreateContext {
    pub routing: SharedRouting,
    pub locks: KeyLocks<StableKeyHash>,
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

/// The homes where our claim stands, and the unit it names.
struct Claims {
    homes: Vec<u16>,
    target: Option<u16>,
    /// Our claim left in a unit we then wrote to (for its slot to take the
    /// claim's place), with the claim: fenced once we leave that unit.
    stale: Option<(u16, Mark)>,
}

/// The engine cannot be sure of the key: `503` with `Retry-After`.
fn uncertain(reason: &'static str, unit: u16) -> EngineError {
    counter!(m::CREATE_UNCERTAIN, "reason" => reason).increment(1);
    EngineError::UnitUnavailable { unit }
}

impl CreateContext {
    pub async fn create(self, request: NewOrder) -> Result<Created, EngineError> {
        let key: Key = (request.merchant_id.clone(), request.out_trade_no.clone());
        let hash = StableKeyHash::of(key.0.as_str(), key.1.as_str());
        // Concurrent creates of one key in this process run one after another.
        let _serialized = self.locks.lock(hash).await;
        let deadline = Instant::now() + self.calls.timeout;
        let homes = self.routing.ring.homes(hash);
        let records = KeyRecords {
            routing: &self.routing,
            calls: &self.calls,
            key: &key,
        };
        let attempt = Attempt::random();
        let mut claims = Claims {
            homes: Vec::new(),
            target: None,
            stale: None,
        };
        let mut tried = Vec::new();
        while tried.len() < self.max_attempts as usize {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            let Some((target, addr)) =
                self.routing
                    .choose_for_create(&request.merchant_id, &tried, &self.calls.board)
            else {
                break;
            };
            match self
                .claim(&records, &homes, attempt, target, &mut claims)
                .await
            {
                Ok(()) => {}
                Err(NotClaimed::Exists(order)) => return answer(&request, *order, true),
                Err(NotClaimed::Unsure(unit)) => {
                    self.release(&records, attempt, &claims).await;
                    return Err(uncertain("no_quorum", unit));
                }
            }
            tried.push(target);
            let write = CreateOrder {
                request: request.clone(),
                attempt,
            };
            let failure = match self
                .calls
                .call(target, &addr, write, false, remaining)
                .await
            {
                Ok(CreateOutcome::Created(order)) => {
                    tracing::debug!(unit = target, order_id = %order.id, "order created");
                    self.calls.count_create(target);
                    return Ok(Created {
                        order,
                        replayed: false,
                    });
                }
                Ok(CreateOutcome::Replayed(order)) => return answer(&request, order, true),
                Ok(CreateOutcome::KeyConflict) => return Err(EngineError::IdempotencyConflict),
                Ok(CreateOutcome::Blocked(mark)) => {
                    // The unit's record of the key is not ours to replace:
                    // nothing was written; our claims move elsewhere.
                    tracing::info!(
                        unit = target,
                        ?mark,
                        "create blocked by the unit's record of the key"
                    );
                    counter!(m::CREATE_RETRIES, "reason" => "blocked").increment(1);
                    continue;
                }
                Err(e) => e,
            };
            if failure.is_definite() {
                tracing::warn!(unit = target, reason = failure.reason(), error = %failure, "create failed before commit; retrying on another unit");
                counter!(m::CREATE_RETRIES, "reason" => failure.reason()).increment(1);
                continue;
            }
            tracing::warn!(unit = target, reason = failure.reason(), error = %failure, "create outcome unknown; settling it in the unit");
            match records.settle_own(target, attempt).await {
                Ok(Some(order)) => {
                    counter!(m::CREATE_IN_DOUBT, "outcome" => "found").increment(1);
                    self.calls.count_create(target);
                    return answer(&request, order, false);
                }
                Ok(None) => {
                    // Fenced: it never committed there, and now never will.
                    counter!(m::CREATE_IN_DOUBT, "outcome" => "absent").increment(1);
                    counter!(m::CREATE_RETRIES, "reason" => "in_doubt_absent").increment(1);
                }
                Err(_) => {
                    // It may have committed: our claims keep naming the unit,
                    // so the caller's retry settles it there first.
                    counter!(m::CREATE_IN_DOUBT, "outcome" => "unresolved").increment(1);
                    return Err(uncertain("in_doubt", target));
                }
            }
        }
        self.release(&records, attempt, &claims).await;
        Err(EngineError::NoUnitAvailable)
    }

    /// Makes our claim for `target` the key's record at enough of its homes
    /// (moving the claims we hold from the unit we left, then claiming
    /// more), or says why not. Homes are tried best first; a home that
    /// cannot answer is passed over, which is safe: any create that wrote an
    /// order holds a majority, so we would meet it at another home.
    async fn claim(
        &self,
        records: &KeyRecords<'_>,
        homes: &Homes,
        attempt: Attempt,
        target: u16,
        claims: &mut Claims,
    ) -> Result<(), NotClaimed> {
        let ours = claim_for(target, attempt);
        if let Some(left) = claims.target.replace(target)
            && left != target
        {
            // We are dead in `left`: a claim of ours left there is fenced.
            if let Some((unit, stale)) = claims.stale.take_if(|(unit, _)| *unit == left) {
                records.move_claim(unit, stale, Mark::Fence).await;
            }
            let before = std::mem::take(&mut claims.homes);
            for home in before {
                let held = claim_for(left, attempt);
                if home == target {
                    // Our claim in the new unit stays: the order's slot
                    // takes its place there (it is our attempt's).
                    claims.stale = Some((home, held));
                } else if records.move_claim(home, held, ours).await {
                    claims.homes.push(home);
                }
            }
        }
        let need = homes.claims_needed(target);
        let mut unsure = None;
        for &home in &homes.units {
            if claims.homes.len() >= need {
                return Ok(());
            }
            if home == target || claims.homes.contains(&home) {
                continue;
            }
            match records.claim_at(home, ours).await {
                Ok(()) => claims.homes.push(home),
                Err(NotClaimed::Exists(order)) => return Err(NotClaimed::Exists(order)),
                Err(NotClaimed::Unsure(unit)) => {
                    unsure.get_or_insert(unit);
                }
            }
        }
        if claims.homes.len() >= need {
            Ok(())
        } else {
            Err(NotClaimed::Unsure(unsure.unwrap_or_else(|| homes.units[0])))
        }
    }

    /// Gives up our claims once no unit can hold our order (every unit we
    /// wrote to failed before commit, or was fenced against us): each
    /// becomes a fence, which the next create of the key replaces without
    /// asking the unit it named (records are never deleted). Best effort: a
    /// claim left standing only makes that create settle it first.
    async fn release(&self, records: &KeyRecords<'_>, attempt: Attempt, claims: &Claims) {
        let Some(target) = claims.target else {
            return;
        };
        for &home in &claims.homes {
            records
                .move_claim(home, claim_for(target, attempt), Mark::Fence)
                .await;
        }
        if let Some((unit, stale)) = claims.stale {
            records.move_claim(unit, stale, Mark::Fence).await;
        }
    }
}
