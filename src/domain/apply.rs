//! The rules for applying a batch of pays, closes or refunds to the orders
//! they name, in memory, once storage has locked and read those orders.
//!
//! A unit writes many such calls in one transaction (group commit), so these
//! functions answer each call as if it had run alone, one after another in
//! arrival order: each call sees its order (and, for refunds, the refund ids
//! taken) as the calls before it in the batch left them. Storage then writes
//! what changed: the orders in [`Applied::changed`], the refunds in
//! [`AppliedRefunds::written`] and the events in [`Applied::events`].

use std::collections::HashMap;

use super::events::{FieldChange, order_changes, refund_added};
use super::order::{Change, NewRefund, Order, Refund, RuleError};
use super::order_id::OrderId;
use super::values::{Amount, PaymentRef, RefundId, SectionName, SectionValue};

/// The change event of an order paid, closed or refunded.
pub const PAID: &str = "order.paid";
pub const CLOSED: &str = "order.closed";
pub const REFUNDED: &str = "order.refunded";
pub const SECTIONS_CHANGED: &str = "order.sections_changed";

/// A pay or close of one order.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    pub id: OrderId,
    pub action: UpdateAction,
    /// `If-Match`: the version the caller saw.
    pub expected_version: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum UpdateAction {
    /// `created -> paid`.
    Pay {
        payment_ref: PaymentRef,
        amount: Amount,
    },
    /// `created -> closed`.
    Close,
    /// One section set to a value (`None`: removed), in any status.
    SetSection {
        name: SectionName,
        value: Option<SectionValue>,
    },
}

impl UpdateAction {
    /// The event a change of this kind writes.
    pub fn event(&self) -> &'static str {
        match self {
            Self::Pay { .. } => PAID,
            Self::Close => CLOSED,
            Self::SetSection { .. } => SECTIONS_CHANGED,
        }
    }
}

/// A refund of one order.
#[derive(Debug, Clone, PartialEq)]
pub struct RefundUpdate {
    pub id: OrderId,
    pub refund: NewRefund,
    pub expected_version: Option<i64>,
}

/// A pay's or close's answer: the order after it, and whether it changed
/// (`false`: an idempotent replay).
#[derive(Debug, Clone, PartialEq)]
pub struct Updated {
    pub order: Order,
    pub changed: bool,
}

/// A refund's answer: the refund, the order after it, and whether the refund
/// is new (`false`: a replay of the same `refund_id` and body).
#[derive(Debug, Clone, PartialEq)]
pub struct Refunded {
    pub refund: Refund,
    pub order: Order,
    pub created: bool,
}

/// Why one call of a batch changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No order with exactly this id among the locked orders.
    #[error("order not found")]
    NotFound,
    #[error(transparent)]
    Rule(#[from] RuleError),
}

/// One change of an order, as its event records it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeEvent {
    /// The order as the change left it.
    pub order: Order,
    /// The event's type.
    pub kind: &'static str,
    /// What changed (`events.rs`).
    pub changes: Vec<FieldChange>,
}

/// What a batch did: one answer per call, in call order, and what to write.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied<A> {
    pub answers: Vec<Result<A, Refusal>>,
    /// Orders that changed, each once, in the order they first changed.
    pub changed: Vec<OrderId>,
    /// One event per change, in call order.
    pub events: Vec<ChangeEvent>,
    /// Orders whose sections changed (their sections are written too).
    pub sections_changed: Vec<OrderId>,
}

impl<A> Applied<A> {
    fn with_capacity(n: usize) -> Self {
        Self {
            answers: Vec::with_capacity(n),
            changed: Vec::new(),
            events: Vec::new(),
            sections_changed: Vec::new(),
        }
    }

    fn record_change(
        &mut self,
        before: &Order,
        after: &Order,
        kind: &'static str,
    ) -> &mut ChangeEvent {
        if !self.changed.contains(&after.id) {
            self.changed.push(after.id);
        }
        self.events.push(ChangeEvent {
            order: after.clone(),
            kind,
            changes: order_changes(before, after),
        });
        self.events.last_mut().expect("just pushed")
    }

    /// Whether the batch changed anything (else there is nothing to commit).
    pub fn wrote(&self) -> bool {
        !self.changed.is_empty()
    }
}

/// What a batch of refunds did; `written` are the new refund rows.
#[derive(Debug, Clone, PartialEq)]
pub struct AppliedRefunds {
    pub applied: Applied<Refunded>,
    pub written: Vec<Refund>,
}

/// Applies pays and closes in order to `orders` (the locked orders by id),
/// leaving each order as the last change left it.
pub fn apply_updates(
    orders: &mut HashMap<OrderId, Order>,
    updates: Vec<Update>,
    now_ms: i64,
) -> Applied<Updated> {
    let mut applied = Applied::with_capacity(updates.len());
    for u in updates {
        let (answer, before) = match apply_update(orders, &u, now_ms) {
            Ok((updated, before)) => (Ok(updated), before),
            Err(refused) => (Err(refused), None),
        };
        if let (Ok(updated), Some(before)) = (&answer, &before) {
            applied.record_change(before, &updated.order, u.action.event());
            let sections = matches!(u.action, UpdateAction::SetSection { .. });
            if sections && !applied.sections_changed.contains(&updated.order.id) {
                applied.sections_changed.push(updated.order.id);
            }
        }
        applied.answers.push(answer);
    }
    applied
}

/// One pay, close or section update; with the order as it was before, when
/// it changed.
fn apply_update(
    orders: &mut HashMap<OrderId, Order>,
    u: &Update,
    now_ms: i64,
) -> Result<(Updated, Option<Order>), Refusal> {
    let order = orders.get_mut(&u.id).ok_or(Refusal::NotFound)?;
    let change = match &u.action {
        UpdateAction::Pay {
            payment_ref,
            amount,
        } => order.pay(payment_ref, *amount, u.expected_version, now_ms)?,
        UpdateAction::Close => order.close(u.expected_version, now_ms)?,
        UpdateAction::SetSection { name, value } => {
            order.set_section(name, value.as_ref(), u.expected_version, now_ms)?
        }
    };
    Ok(match change {
        Change::Unchanged => (
            Updated {
                order: order.clone(),
                changed: false,
            },
            None,
        ),
        Change::Next(next) => {
            let before = std::mem::replace(order, *next);
            let updated = Updated {
                order: order.clone(),
                changed: true,
            };
            (updated, Some(before))
        }
    })
}

/// Applies refunds in order to `orders` (the locked orders by id), given the
/// refunds already recorded under the ids the batch asks for (`taken`, by
/// order sequence and refund id). A refund id seen again, in `taken` or
/// earlier in the batch, is a replay when its body is the same and a
/// conflict when not.
pub fn apply_refunds(
    orders: &mut HashMap<OrderId, Order>,
    mut taken: HashMap<(u64, RefundId), Refund>,
    requests: Vec<RefundUpdate>,
    now_ms: i64,
) -> AppliedRefunds {
    let mut applied = Applied::with_capacity(requests.len());
    let mut written = Vec::new();
    for r in requests {
        let (answer, before) = match apply_refund(orders, &mut taken, r, now_ms) {
            Ok((done, before)) => (Ok(done), before),
            Err(refused) => (Err(refused), None),
        };
        if let (Ok(done), Some(before)) = (&answer, &before) {
            let event = applied.record_change(before, &done.order, REFUNDED);
            event.changes.push(refund_added(&done.refund));
            written.push(done.refund.clone());
        }
        applied.answers.push(answer);
    }
    AppliedRefunds { applied, written }
}

/// One refund; with the order as it was before, when the refund is new.
fn apply_refund(
    orders: &mut HashMap<OrderId, Order>,
    taken: &mut HashMap<(u64, RefundId), Refund>,
    r: RefundUpdate,
    now_ms: i64,
) -> Result<(Refunded, Option<Order>), Refusal> {
    let order = orders.get_mut(&r.id).ok_or(Refusal::NotFound)?;
    let key = (r.id.sequence(), r.refund.refund_id.clone());
    if let Some(existing) = taken.get(&key) {
        return if r.refund.is_replay_of(existing) {
            Ok((
                Refunded {
                    // Stored refunds are found by sequence: name the caller's id.
                    refund: Refund {
                        order_id: r.id,
                        ..existing.clone()
                    },
                    order: order.clone(),
                    created: false,
                },
                None,
            ))
        } else {
            Err(RuleError::RefundIdConflict.into())
        };
    }
    let next = order.refund(r.refund.amount, r.expected_version, now_ms)?;
    let before = std::mem::replace(order, next);
    let refund = Refund {
        order_id: r.id,
        refund_id: r.refund.refund_id,
        amount: r.refund.amount,
        reason: r.refund.reason,
        created_at_ms: order.updated_at_ms,
    };
    taken.insert(key, refund.clone());
    let done = Refunded {
        refund,
        order: order.clone(),
        created: true,
    };
    Ok((done, Some(before)))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::domain::order::{NewOrder, OrderStatus};
    use crate::domain::values::{Currency, MerchantId, OutTradeNo, Sections, Text, UserId};

    const AMOUNT: i64 = 100;

    fn order(seq: u64) -> Order {
        NewOrder {
            merchant_id: MerchantId::parse("m").unwrap(),
            out_trade_no: OutTradeNo::parse(format!("o-{seq}")).unwrap(),
            user_id: UserId::parse("u").unwrap(),
            amount: Amount::new(AMOUNT).unwrap(),
            currency: Currency::parse("CNY").unwrap(),
            description: None,
            sections: Sections::default(),
        }
        .into_order(
            OrderId::new(1, 1_795_000_000, seq).unwrap(),
            1_795_000_000_000,
        )
    }

    fn world(n: u64) -> HashMap<OrderId, Order> {
        (1..=n).map(order).map(|o| (o.id, o)).collect()
    }

    fn id(seq: u64) -> OrderId {
        OrderId::new(1, 1_795_000_000, seq).unwrap()
    }

    /// Pays and closes of orders 1-3, or of order 9 (absent), with refs
    /// p0/p1, the right or a wrong amount, and maybe a version.
    fn update() -> impl Strategy<Value = Update> {
        let action = prop_oneof![
            (0..2u8, prop::bool::weighted(0.8)).prop_map(|(r, right)| UpdateAction::Pay {
                payment_ref: PaymentRef::parse(format!("p{r}")).unwrap(),
                amount: Amount::new(if right { AMOUNT } else { AMOUNT + 1 }).unwrap(),
            }),
            Just(UpdateAction::Close),
        ];
        let seq = prop_oneof![9 => 1..=3u64, 1 => Just(9u64)];
        (seq, action, prop::option::weighted(0.2, 1..4i64)).prop_map(
            |(seq, action, expected_version)| Update {
                id: id(seq),
                action,
                expected_version,
            },
        )
    }

    /// Refunds of orders 1-2 (paid) or 9 (absent), with refund ids r0-r3,
    /// amounts 1-60, maybe a reason and maybe a version (2-5).
    fn refund() -> impl Strategy<Value = RefundUpdate> {
        let seq = prop_oneof![9 => 1..=2u64, 1 => Just(9u64)];
        let version = prop::option::weighted(0.2, 2..6i64);
        (seq, 0..4u8, 1..=60i64, prop::bool::ANY, version).prop_map(
            |(seq, r, amount, why, expected_version)| RefundUpdate {
                id: id(seq),
                refund: NewRefund {
                    refund_id: RefundId::parse(format!("r{r}")).unwrap(),
                    amount: Amount::new(amount).unwrap(),
                    reason: why.then(|| Text::parse("cold").unwrap()),
                },
                expected_version,
            },
        )
    }

    /// The refunds `done` wrote, as the next batch finds them taken.
    fn taken_after(done: &AppliedRefunds) -> HashMap<(u64, RefundId), Refund> {
        done.written
            .iter()
            .map(|r| ((r.order_id.sequence(), r.refund_id.clone()), r.clone()))
            .collect()
    }

    fn paid_world() -> HashMap<OrderId, Order> {
        let mut orders = world(2);
        let pays = (1..=2)
            .map(|seq| Update {
                id: id(seq),
                action: UpdateAction::Pay {
                    payment_ref: PaymentRef::parse("p").unwrap(),
                    amount: Amount::new(AMOUNT).unwrap(),
                },
                expected_version: None,
            })
            .collect();
        apply_updates(&mut orders, pays, 1);
        orders
    }

    proptest! {
        /// A batch answers every call as the same calls one at a time would.
        #[test]
        fn a_batch_of_updates_answers_as_calls_one_at_a_time(
            updates in prop::collection::vec(update(), 1..24)
        ) {
            let mut batched = world(3);
            let together = apply_updates(&mut batched, updates.clone(), 7);
            let mut alone = world(3);
            let one_by_one: Vec<_> = updates
                .into_iter()
                .flat_map(|u| apply_updates(&mut alone, vec![u], 7).answers)
                .collect();
            prop_assert_eq!(&together.answers, &one_by_one);
            prop_assert_eq!(&batched, &alone);
        }

        /// Each change bumps its order's version by one and leaves one event
        /// showing the order as it left it; unchanged answers write nothing.
        #[test]
        fn every_change_has_one_event_and_one_version(
            updates in prop::collection::vec(update(), 1..24)
        ) {
            let before = world(3);
            let mut orders = before.clone();
            let applied = apply_updates(&mut orders, updates, 7);
            let changes = applied.answers.iter().filter(|a| matches!(a, Ok(u) if u.changed)).count();
            prop_assert_eq!(applied.events.len(), changes);
            for (seq, o) in [(1, &orders[&id(1)]), (2, &orders[&id(2)]), (3, &orders[&id(3)])] {
                let events: Vec<_> = applied.events.iter().map(|e| &e.order).filter(|e| e.id == id(seq)).collect();
                prop_assert_eq!(o.version, 1 + events.len() as i64);
                prop_assert_eq!(applied.changed.contains(&id(seq)), !events.is_empty());
                for (i, e) in events.iter().enumerate() {
                    prop_assert_eq!(e.version, 2 + i as i64);
                }
                if let Some(last) = events.last() {
                    prop_assert_eq!(*last, o);
                }
            }
            prop_assert_eq!(applied.wrote(), changes > 0);
        }

        /// Refunds never add up past the paid amount; a refund id is written
        /// at most once per order, and every answer under it after the first
        /// is the same refund (a replay) or a conflict, in the same batch or
        /// in a later one (which finds it taken).
        #[test]
        fn refunds_never_exceed_the_paid_amount(
            first in prop::collection::vec(refund(), 1..24),
            second in prop::collection::vec(refund(), 1..24),
        ) {
            let mut orders = paid_world();
            let one = apply_refunds(&mut orders, HashMap::new(), first.clone(), 9);
            let two = apply_refunds(&mut orders, taken_after(&one), second.clone(), 10);
            let written: Vec<&Refund> = one.written.iter().chain(&two.written).collect();
            for seq in 1..=2 {
                let o = &orders[&id(seq)];
                let total: i64 = written.iter()
                    .filter(|r| r.order_id == id(seq))
                    .map(|r| r.amount.get())
                    .sum();
                prop_assert!(o.refunded_amount <= o.paid_amount);
                prop_assert_eq!(o.refunded_amount, total);
                prop_assert_eq!(o.status == OrderStatus::Refunded, total == AMOUNT);
            }
            let mut seen: HashMap<(OrderId, RefundId), &Refund> = HashMap::new();
            for r in &written {
                prop_assert!(seen.insert((r.order_id, r.refund_id.clone()), r).is_none());
            }
            let answers = one.applied.answers.iter().chain(&two.applied.answers);
            for (request, answer) in first.iter().chain(&second).zip(answers) {
                match answer {
                    Ok(a) => {
                        let stored = seen[&(request.id, request.refund.refund_id.clone())];
                        prop_assert_eq!(&a.refund, stored);
                    }
                    Err(Refusal::Rule(RuleError::RefundIdConflict)) => {
                        let stored = seen.get(&(request.id, request.refund.refund_id.clone()));
                        prop_assert!(stored.is_some_and(|s| !request.refund.is_replay_of(s)));
                    }
                    Err(_) => {}
                }
            }
            let created = one.applied.answers.iter().chain(&two.applied.answers)
                .filter(|a| matches!(a, Ok(r) if r.created))
                .count();
            prop_assert_eq!(created, written.len());
            prop_assert_eq!(one.applied.events.len(), one.written.len());
            prop_assert_eq!(two.applied.events.len(), two.written.len());
        }

        /// Refunds batched answer as refunds one at a time (each later one
        /// seeing the refund ids the earlier ones took).
        #[test]
        fn a_batch_of_refunds_answers_as_refunds_one_at_a_time(
            requests in prop::collection::vec(refund(), 1..24)
        ) {
            let mut batched = paid_world();
            let together = apply_refunds(&mut batched, HashMap::new(), requests.clone(), 9);
            let mut alone = paid_world();
            let mut taken = HashMap::new();
            let mut one_by_one = Vec::new();
            for r in requests {
                let done = apply_refunds(&mut alone, taken.clone(), vec![r], 9);
                for w in &done.written {
                    taken.insert((w.order_id.sequence(), w.refund_id.clone()), w.clone());
                }
                one_by_one.extend(done.applied.answers);
            }
            prop_assert_eq!(&together.applied.answers, &one_by_one);
            prop_assert_eq!(&batched, &alone);
        }
    }

    #[test]
    fn a_refund_id_taken_before_the_batch_is_a_replay_or_a_conflict() {
        let mut orders = paid_world();
        let first = RefundUpdate {
            id: id(1),
            refund: NewRefund {
                refund_id: RefundId::parse("r").unwrap(),
                amount: Amount::new(30).unwrap(),
                reason: None,
            },
            expected_version: None,
        };
        let done = apply_refunds(&mut orders, HashMap::new(), vec![first.clone()], 9);
        let taken: HashMap<_, _> = done
            .written
            .iter()
            .map(|r| ((r.order_id.sequence(), r.refund_id.clone()), r.clone()))
            .collect();
        let mut other = first.clone();
        other.refund.amount = Amount::new(31).unwrap();
        let again = apply_refunds(&mut orders, taken, vec![first, other], 10);
        assert!(matches!(&again.applied.answers[0], Ok(r) if !r.created));
        assert_eq!(
            again.applied.answers[1],
            Err(Refusal::Rule(RuleError::RefundIdConflict))
        );
        assert!(again.written.is_empty() && !again.applied.wrote());
        assert_eq!(orders[&id(1)].refunded_amount, 30);
    }
}
