//! The dispatcher's side of the units' key records: claiming a key at one
//! of its homes, settling another create's claim, and looking a key's order
//! up through its homes. The protocol is `docs/idempotency.md`; the create
//! path that runs it is `create.rs`.

use futures_util::future::join_all;
use metrics::counter;

use super::calls::UnitCalls;
use super::routing::{Key, Routing};
use crate::actors::EngineError;
use crate::actors::unit::{ClaimKey, FindByKey, ReadMark, ReplaceMark, SettleKey};
use crate::domain::Order;
use crate::domain::key_homes::{Attempt, Homes, Mark};
use crate::metrics as m;

/// Why a key's record could not be made ours.
pub(super) enum NotClaimed {
    /// The key already names an order (in the unit that holds it).
    Exists(Box<Order>),
    /// A unit that may hold the key's order, or its record, did not answer.
    Unsure(u16),
}

/// The key records of one key, as seen through the routing table.
pub(super) struct KeyRecords<'a> {
    pub routing: &'a Routing,
    pub calls: &'a UnitCalls,
    pub key: &'a Key,
}

impl KeyRecords<'_> {
    /// Makes `ours` the key's record at home `home`: written where there is
    /// none, or in place of a fence or of a claim whose create is settled as
    /// dead. A record that names an order ends the claim with that order.
    pub async fn claim_at(&self, home: u16, ours: Mark) -> Result<(), NotClaimed> {
        let Mark::Claim { attempt: mine, .. } = ours else {
            unreachable!("only claims are claimed at homes")
        };
        let ask = ClaimKey {
            key: self.key.clone(),
            mark: ours,
        };
        let mut seen = self.call(home, ask).await?;
        // Each round either ends or replaces a record another create wrote
        // since the last; a few rounds settle any real contention.
        for _ in 0..4 {
            match seen {
                mark if mark == ours => return Ok(()),
                Mark::Slot { .. } => return Err(self.order_in(home).await),
                Mark::Fence => {}
                // Our own claim for a unit we left (we are dead there).
                Mark::Claim { attempt, .. } if attempt == mine => {}
                Mark::Claim { unit, attempt } => self.dead_at(unit, attempt).await?,
            }
            let replace = ReplaceMark {
                key: self.key.clone(),
                from: seen,
                to: ours,
            };
            if self.call(home, replace).await? {
                return Ok(());
            }
            let read = ReadMark {
                key: self.key.clone(),
            };
            match self.call(home, read).await? {
                Some(mark) => seen = mark,
                None => return Err(NotClaimed::Unsure(home)),
            }
        }
        Err(NotClaimed::Unsure(home))
    }

    /// Replaces our claim at `home` (for the unit we left) with `to`; false
    /// when the record is no longer ours (or the home did not answer).
    pub async fn move_claim(&self, home: u16, from: Mark, to: Mark) -> bool {
        let replace = ReplaceMark {
            key: self.key.clone(),
            from,
            to,
        };
        matches!(self.call(home, replace).await, Ok(true))
    }

    /// Settles the key in `unit`, where another create's claim says it may
    /// write the order: `Ok` once that create can no longer write it there
    /// (the unit is fenced, or holds another record), the order when it did.
    async fn dead_at(&self, unit: u16, attempt: Attempt) -> Result<(), NotClaimed> {
        let settle = SettleKey {
            key: self.key.clone(),
            attempt,
        };
        let settled = match self.call(unit, settle).await {
            Ok(s) => s,
            Err(e) => {
                counter!(m::KEY_SETTLES, "outcome" => "unresolved").increment(1);
                return Err(e);
            }
        };
        match (settled.mark, settled.order) {
            (Mark::Slot { .. }, Some(order)) => {
                counter!(m::KEY_SETTLES, "outcome" => "found").increment(1);
                Err(NotClaimed::Exists(Box::new(order)))
            }
            // A slot without its order: never written so (one transaction).
            (Mark::Slot { .. }, None) => Err(NotClaimed::Unsure(unit)),
            (Mark::Fence | Mark::Claim { .. }, _) => {
                counter!(m::KEY_SETTLES, "outcome" => "fenced").increment(1);
                Ok(())
            }
        }
    }

    /// The key's order in `unit`, whose record is the order's slot.
    async fn order_in(&self, unit: u16) -> NotClaimed {
        let find = FindByKey {
            merchant_id: self.key.0.clone(),
            out_trade_no: self.key.1.clone(),
        };
        match self.call(unit, find).await {
            Ok(Some(order)) => NotClaimed::Exists(Box::new(order)),
            Ok(None) => NotClaimed::Unsure(unit),
            Err(e) => e,
        }
    }

    /// Settles our own create in `unit` after its outcome was unknown: the
    /// order it wrote (or another create's order for the key there), or
    /// `None` once the unit is fenced against it.
    pub async fn settle_own(
        &self,
        unit: u16,
        attempt: Attempt,
    ) -> Result<Option<Order>, NotClaimed> {
        let settle = SettleKey {
            key: self.key.clone(),
            attempt,
        };
        let settled = self.call(unit, settle).await?;
        match (settled.mark, settled.order) {
            (Mark::Slot { .. }, Some(order)) => Ok(Some(order)),
            (Mark::Slot { .. }, None) => Err(NotClaimed::Unsure(unit)),
            (Mark::Fence | Mark::Claim { .. }, _) => Ok(None),
        }
    }

    /// The key's order, found through its homes: a majority of homes must
    /// answer, and every order a record names must be read, or the answer
    /// is "unavailable", never a false "not found".
    pub async fn lookup(&self, homes: &Homes) -> Result<Order, EngineError> {
        let reads = homes.units.iter().map(|&h| {
            let read = ReadMark {
                key: self.key.clone(),
            };
            async move { (h, self.call(h, read).await) }
        });
        let mut answered = 0;
        // A home that did not answer matters only without a majority; a
        // record naming a unit that cannot be read always does.
        let (mut silent_home, mut unread_holder) = (None, None);
        for (home, mark) in join_all(reads).await {
            let holder = match mark {
                Ok(Some(Mark::Slot { .. })) => home,
                Ok(Some(Mark::Claim { unit, .. })) => unit,
                Ok(None | Some(Mark::Fence)) => {
                    answered += 1;
                    continue;
                }
                Err(_) => {
                    silent_home.get_or_insert(home);
                    continue;
                }
            };
            answered += 1;
            let find = FindByKey {
                merchant_id: self.key.0.clone(),
                out_trade_no: self.key.1.clone(),
            };
            match self.call(holder, find).await {
                Ok(Some(order)) => return Ok(order),
                // A claim whose create has not written (or never will).
                Ok(None) => {}
                Err(_) => {
                    unread_holder.get_or_insert(holder);
                }
            }
        }
        match (unread_holder, silent_home) {
            (None, _) if answered >= homes.quorum() => Err(EngineError::NotFound),
            (Some(unit), _) | (None, Some(unit)) => Err(EngineError::UnitUnavailable { unit }),
            (None, None) => Err(EngineError::UnitUnavailable {
                unit: homes.units[0],
            }),
        }
    }

    /// Sends `msg` to `unit` (failing fast on a disabled unit or an open
    /// circuit); any failure to answer is `Unsure(unit)`.
    async fn call<M, R>(&self, unit: u16, msg: M) -> Result<R, NotClaimed>
    where
        M: actix::Message<Result = Result<R, crate::storage::StoreError>> + Send + 'static,
        R: Send + 'static,
        crate::actors::unit::UnitActor: actix::Handler<M>,
    {
        let addr = self
            .routing
            .route(unit)
            .map_err(|_| NotClaimed::Unsure(unit))?;
        self.calls
            .call(unit, &addr, msg, true, self.calls.timeout)
            .await
            .map_err(|_| NotClaimed::Unsure(unit))
    }
}

/// Our attempt's claim for `target`.
pub(super) fn claim_for(target: u16, attempt: Attempt) -> Mark {
    Mark::Claim {
        unit: target,
        attempt,
    }
}
