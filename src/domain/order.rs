//! Orders, refunds and the order state machine.
//!
//! ```text
//! created --pay--> paid --refund (sum == paid)--> refunded
//!    \                \--refund (sum <  paid)--> paid (refunded_amount > 0)
//!     \--close--> closed
//! ```
//!
//! The transitions are pure: storage loads the row under a lock, asks the state
//! machine what the new row is (`apply.rs` for a batch of calls), and writes
//! it while it still holds the lock. `If-Match` is checked here
//! ([`Order::check_version`]).

use std::borrow::Cow;

use super::order_id::OrderId;
use super::values::{
    Amount, Currency, MAX_SECTIONS_BYTES, MerchantId, OutTradeNo, PaymentRef, RefundId,
    SectionName, SectionValue, Sections, Text, UserId,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderStatus {
    Created,
    Paid,
    Refunded,
    Closed,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Paid => "paid",
            Self::Refunded => "refunded",
            Self::Closed => "closed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "created" => Self::Created,
            "paid" => Self::Paid,
            "refunded" => Self::Refunded,
            "closed" => Self::Closed,
            _ => return None,
        })
    }
}

/// The fields a create request fixes, of a `NewOrder` or an `Order` (with
/// the sections it was created with).
macro_rules! request_fields {
    ($o:expr, $sections:expr) => {
        (
            &$o.merchant_id,
            &$o.out_trade_no,
            &$o.user_id,
            &$o.amount,
            &$o.currency,
            &$o.description,
            $sections,
        )
    };
}

/// A create request, validated. `(merchant_id, out_trade_no)` is its idempotency key.
#[derive(Debug, Clone, PartialEq)]
pub struct NewOrder {
    pub merchant_id: MerchantId,
    pub out_trade_no: OutTradeNo,
    pub user_id: UserId,
    pub amount: Amount,
    pub currency: Currency,
    pub description: Option<Text>,
    pub sections: Sections,
}

impl NewOrder {
    /// True when `order` was created by an identical request: a replay gets the
    /// existing order back, a different body under the same key is a conflict.
    pub fn is_replay_of(&self, order: &Order) -> bool {
        request_fields!(self, &self.sections) == order.request()
    }

    /// The order this request creates, with id `id` at time `now_ms`.
    pub fn into_order(self, id: OrderId, now_ms: i64) -> Order {
        Order {
            id,
            merchant_id: self.merchant_id,
            out_trade_no: self.out_trade_no,
            user_id: self.user_id,
            amount: self.amount,
            currency: self.currency,
            description: self.description,
            status: OrderStatus::Created,
            paid_amount: 0,
            refunded_amount: 0,
            payment_ref: None,
            version: 1,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
            sections: self.sections,
            created_sections: None,
        }
    }
}

/// What a create request fixes in its order, compared to tell a replay.
type RequestFields<'a> = (
    &'a MerchantId,
    &'a OutTradeNo,
    &'a UserId,
    &'a Amount,
    &'a Currency,
    &'a Option<Text>,
    &'a Sections,
);

#[derive(Debug, Clone, PartialEq)]
pub struct Order {
    pub id: OrderId,
    pub merchant_id: MerchantId,
    pub out_trade_no: OutTradeNo,
    pub user_id: UserId,
    pub amount: Amount,
    pub currency: Currency,
    pub description: Option<Text>,
    pub status: OrderStatus,
    pub paid_amount: i64,
    pub refunded_amount: i64,
    pub payment_ref: Option<PaymentRef>,
    pub version: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub sections: Sections,
    /// The sections as the create made them, once a section update changed
    /// them (`None` while they are as created): what tells a replay of the
    /// create.
    pub created_sections: Option<Sections>,
}

/// A business rule refused the change; nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("cannot {action} an order that is {}", from.as_str())]
    InvalidTransition {
        from: OrderStatus,
        action: &'static str,
    },
    #[error("the order is already paid with another payment_ref")]
    PaidWithOtherRef,
    #[error("the payment amount must equal the order amount ({expected})")]
    AmountMismatch { expected: i64 },
    #[error("refunds would total {requested}, more than the paid amount {paid}")]
    RefundExceedsPaid { requested: i64, paid: i64 },
    #[error("the order is at version {current}, not {expected}")]
    VersionMismatch { current: i64, expected: i64 },
    #[error("refund_id is already used for a refund with a different body")]
    RefundIdConflict,
    #[error("the order's sections would take {bytes} bytes as JSON, more than {limit}")]
    SectionsTooLarge { bytes: usize, limit: usize },
}

/// What a change does to an order.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The order is already in the requested state (an idempotent replay).
    Unchanged,
    /// The order as it must be written.
    Next(Box<Order>),
}

impl Order {
    /// True when `order` was created by an identical request (see
    /// [`NewOrder::is_replay_of`]).
    pub fn has_the_request_of(&self, order: &Order) -> bool {
        self.request() == order.request()
    }

    fn request(&self) -> RequestFields<'_> {
        request_fields!(
            self,
            self.created_sections.as_ref().unwrap_or(&self.sections)
        )
    }
}

impl Order {
    /// The order as its create left it, from the order at any later
    /// version (what its `order.created` event shows): itself while no
    /// change has followed the create (version 1), the usual case for a
    /// relay publishing creates as they come.
    pub fn as_created(&self) -> Cow<'_, Order> {
        if self.version == 1 {
            return Cow::Borrowed(self);
        }
        Cow::Owned(Order {
            status: OrderStatus::Created,
            paid_amount: 0,
            refunded_amount: 0,
            payment_ref: None,
            version: 1,
            updated_at_ms: self.created_at_ms,
            sections: self
                .created_sections
                .clone()
                .unwrap_or_else(|| self.sections.clone()),
            created_sections: None,
            ..self.clone()
        })
    }

    /// `If-Match` semantics: refuse a change when the caller saw another version.
    pub fn check_version(&self, expected: Option<i64>) -> Result<(), RuleError> {
        match expected {
            Some(v) if v != self.version => Err(RuleError::VersionMismatch {
                current: self.version,
                expected: v,
            }),
            _ => Ok(()),
        }
    }

    fn next(&self, now_ms: i64, edit: impl FnOnce(&mut Order)) -> Change {
        let mut next = self.clone();
        edit(&mut next);
        next.version += 1;
        next.updated_at_ms = now_ms.max(self.updated_at_ms);
        Change::Next(Box::new(next))
    }

    pub fn pay(
        &self,
        payment_ref: &PaymentRef,
        amount: Amount,
        expected_version: Option<i64>,
        now_ms: i64,
    ) -> Result<Change, RuleError> {
        match self.status {
            OrderStatus::Paid | OrderStatus::Refunded
                if self.payment_ref.as_ref() == Some(payment_ref) && amount == self.amount =>
            {
                Ok(Change::Unchanged)
            }
            OrderStatus::Paid | OrderStatus::Refunded => Err(RuleError::PaidWithOtherRef),
            OrderStatus::Closed => Err(RuleError::InvalidTransition {
                from: self.status,
                action: "pay",
            }),
            OrderStatus::Created if amount != self.amount => Err(RuleError::AmountMismatch {
                expected: self.amount.get(),
            }),
            OrderStatus::Created => {
                self.check_version(expected_version)?;
                Ok(self.next(now_ms, |o| {
                    o.status = OrderStatus::Paid;
                    o.paid_amount = amount.get();
                    o.payment_ref = Some(payment_ref.clone());
                }))
            }
        }
    }

    pub fn close(&self, expected_version: Option<i64>, now_ms: i64) -> Result<Change, RuleError> {
        match self.status {
            OrderStatus::Closed => Ok(Change::Unchanged),
            OrderStatus::Created => {
                self.check_version(expected_version)?;
                Ok(self.next(now_ms, |o| o.status = OrderStatus::Closed))
            }
            from => Err(RuleError::InvalidTransition {
                from,
                action: "close",
            }),
        }
    }

    /// Sets section `name` to `value` (`None`: removes it), in any status.
    /// Setting a section to the value it has (or removing one the order
    /// does not have) changes nothing.
    pub fn set_section(
        &self,
        name: &SectionName,
        value: Option<&SectionValue>,
        expected_version: Option<i64>,
        now_ms: i64,
    ) -> Result<Change, RuleError> {
        let same = match (self.sections.get(name.as_str()), value) {
            (None, None) => true,
            (Some(now), Some(v)) => SectionValue::same_as(v, now),
            _ => false,
        };
        if same {
            return Ok(Change::Unchanged);
        }
        self.check_version(expected_version)?;
        let sections = self.sections.with(name, value);
        let bytes = sections.json_len();
        if bytes > MAX_SECTIONS_BYTES && bytes > self.sections.json_len() {
            return Err(RuleError::SectionsTooLarge {
                bytes,
                limit: MAX_SECTIONS_BYTES,
            });
        }
        Ok(self.next(now_ms, |o| {
            if o.created_sections.is_none() {
                o.created_sections = Some(o.sections.clone());
            }
            o.sections = sections;
        }))
    }

    /// A new refund of `amount` (idempotent replays are recognised by the caller,
    /// which holds the refund rows).
    pub fn refund(
        &self,
        amount: Amount,
        expected_version: Option<i64>,
        now_ms: i64,
    ) -> Result<Order, RuleError> {
        if self.status != OrderStatus::Paid {
            return Err(RuleError::InvalidTransition {
                from: self.status,
                action: "refund",
            });
        }
        let requested = self.refunded_amount + amount.get();
        if requested > self.paid_amount {
            return Err(RuleError::RefundExceedsPaid {
                requested,
                paid: self.paid_amount,
            });
        }
        self.check_version(expected_version)?;
        match self.next(now_ms, |o| {
            o.refunded_amount = requested;
            if requested == o.paid_amount {
                o.status = OrderStatus::Refunded;
            }
        }) {
            Change::Next(o) => Ok(*o),
            Change::Unchanged => unreachable!("next always changes"),
        }
    }
}

/// A refund request, validated. `refund_id` makes it idempotent per order.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRefund {
    pub refund_id: RefundId,
    pub amount: Amount,
    pub reason: Option<Text>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Refund {
    pub order_id: OrderId,
    pub refund_id: RefundId,
    pub amount: Amount,
    pub reason: Option<Text>,
    pub created_at_ms: i64,
}

impl NewRefund {
    pub fn is_replay_of(&self, refund: &Refund) -> bool {
        self.refund_id == refund.refund_id
            && self.amount == refund.amount
            && self.reason == refund.reason
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(status: OrderStatus) -> Order {
        Order {
            id: OrderId::new(1, 1_795_000_000, 7).unwrap(),
            merchant_id: MerchantId::parse("m").unwrap(),
            out_trade_no: OutTradeNo::parse("o").unwrap(),
            user_id: UserId::parse("u").unwrap(),
            amount: Amount::new(100).unwrap(),
            currency: Currency::parse("CNY").unwrap(),
            description: None,
            status,
            paid_amount: if status == OrderStatus::Created {
                0
            } else {
                100
            },
            refunded_amount: 0,
            payment_ref: (status == OrderStatus::Paid).then(|| PaymentRef::parse("p1").unwrap()),
            version: 1,
            created_at_ms: 0,
            updated_at_ms: 0,
            sections: Sections::default(),
            created_sections: None,
        }
    }

    #[test]
    fn a_created_event_carries_the_order_as_events_show_it() {
        let mut o = order(OrderStatus::Created);
        o.sections = Sections::from_json(r#"{"items": [{"qty": 2}], "a.b": null}"#).unwrap();
        let event = super::super::events::CreatedEvent::new(1, &o);
        let e = serde_json::to_value(&event).unwrap();
        assert_eq!(e["order"], super::super::events::order_view(&o));
        assert_eq!(e["order"]["sections"]["items"][0]["qty"], 2);
        assert_eq!(e["order"]["refunds"], serde_json::json!({}));
        assert_eq!(e["event_id"], format!("{}.1", o.id));
        assert_eq!(e["order_id"], o.id.to_string());
        assert_eq!(e["type"], "order.created");
        assert_eq!(e["schema_version"], 1);
        assert_eq!(e["version"], 1);
        assert_eq!(e["unit"], 1);
    }

    fn value(json: &str) -> SectionValue {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_section_is_set_and_removed_and_the_create_still_replays() {
        let o = order(OrderStatus::Paid);
        let ship = SectionName::parse("shipping").unwrap();
        let city = value(r#"{"city": "Shenzhen"}"#);
        let Change::Next(set) = o.set_section(&ship, Some(&city), Some(1), 5).unwrap() else {
            panic!("a new section changes the order");
        };
        assert_eq!((set.version, set.updated_at_ms), (2, 5));
        assert_eq!(
            set.sections.get("shipping").unwrap().get(),
            r#"{"city": "Shenzhen"}"#
        );
        assert_eq!(set.created_sections, Some(Sections::default()));
        // The same value, however spaced: nothing changes, whatever If-Match.
        let same = value(r#"{ "city":"Shenzhen" }"#);
        assert_eq!(
            set.set_section(&ship, Some(&same), Some(9), 6),
            Ok(Change::Unchanged)
        );
        // Another value needs the version it saw.
        let other = value(r#"{"city": "Guangzhou"}"#);
        assert!(matches!(
            set.set_section(&ship, Some(&other), Some(1), 6),
            Err(RuleError::VersionMismatch {
                current: 2,
                expected: 1
            })
        ));
        let Change::Next(gone) = set.set_section(&ship, None, None, 7).unwrap() else {
            panic!("removing a section changes the order");
        };
        assert!(gone.sections.is_empty());
        assert_eq!(gone.version, 3);
        assert_eq!(
            gone.set_section(&ship, None, None, 8),
            Ok(Change::Unchanged)
        );
        // The create's request is still told from another.
        assert!(set.has_the_request_of(&o) && o.has_the_request_of(&set));
        let mut edited = o.clone();
        edited.sections = set.sections.clone();
        assert!(!set.has_the_request_of(&edited));
        // Its created event shows the order as created, whatever came after.
        let created = Order {
            status: OrderStatus::Created,
            paid_amount: 0,
            payment_ref: None,
            ..o.clone()
        };
        assert_eq!(*gone.as_created(), created);
        assert!(matches!(created.as_created(), Cow::Borrowed(o) if *o == created));
    }

    fn next(c: Change) -> Order {
        match c {
            Change::Next(o) => *o,
            Change::Unchanged => panic!("expected a change"),
        }
    }

    #[test]
    fn pay_then_replay_then_other_ref() {
        let p1 = PaymentRef::parse("p1").unwrap();
        let paid = next(
            order(OrderStatus::Created)
                .pay(&p1, Amount::new(100).unwrap(), None, 5)
                .unwrap(),
        );
        assert_eq!(paid.status, OrderStatus::Paid);
        assert_eq!(
            (paid.paid_amount, paid.version, paid.updated_at_ms),
            (100, 2, 5)
        );
        assert_eq!(
            paid.pay(&p1, Amount::new(100).unwrap(), Some(1), 6),
            Ok(Change::Unchanged)
        );
        let p2 = PaymentRef::parse("p2").unwrap();
        assert_eq!(
            paid.pay(&p2, Amount::new(100).unwrap(), None, 6),
            Err(RuleError::PaidWithOtherRef)
        );
    }

    #[test]
    fn pay_checks_amount_status_and_version() {
        let p = PaymentRef::parse("p").unwrap();
        let created = order(OrderStatus::Created);
        assert_eq!(
            created.pay(&p, Amount::new(99).unwrap(), None, 0),
            Err(RuleError::AmountMismatch { expected: 100 })
        );
        assert!(matches!(
            created.pay(&p, Amount::new(100).unwrap(), Some(3), 0),
            Err(RuleError::VersionMismatch {
                current: 1,
                expected: 3
            })
        ));
        assert!(matches!(
            order(OrderStatus::Closed).pay(&p, Amount::new(100).unwrap(), None, 0),
            Err(RuleError::InvalidTransition { .. })
        ));
    }

    #[test]
    fn close_is_idempotent_and_refuses_paid_orders() {
        let closed = next(order(OrderStatus::Created).close(None, 1).unwrap());
        assert_eq!(closed.status, OrderStatus::Closed);
        assert_eq!(closed.close(None, 2), Ok(Change::Unchanged));
        assert!(order(OrderStatus::Paid).close(None, 1).is_err());
    }

    #[test]
    fn refunds_add_up_to_the_paid_amount_and_no_further() {
        let ten = Amount::new(10).unwrap();
        let mut o = order(OrderStatus::Paid);
        for i in 1..=10 {
            o = o.refund(ten, None, i).unwrap();
            assert_eq!(o.refunded_amount, 10 * i);
        }
        assert_eq!(o.status, OrderStatus::Refunded);
        assert_eq!(o.version, 11);
        assert!(matches!(
            o.refund(ten, None, 11),
            Err(RuleError::InvalidTransition { .. })
        ));
        let partly = order(OrderStatus::Paid)
            .refund(Amount::new(60).unwrap(), None, 1)
            .unwrap();
        assert_eq!(partly.status, OrderStatus::Paid);
        assert_eq!(
            partly.refund(Amount::new(50).unwrap(), None, 2),
            Err(RuleError::RefundExceedsPaid {
                requested: 110,
                paid: 100
            })
        );
        assert!(order(OrderStatus::Created).refund(ten, None, 1).is_err());
    }
}
