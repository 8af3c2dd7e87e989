//! Wire types: what callers send and receive, and their conversion to and from
//! domain types. These definitions also generate the OpenAPI schemas, so the
//! document describes exactly what the server accepts (`deny_unknown_fields`
//! becomes `additionalProperties: false`; the bounds below are tested against
//! the domain's constants).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::ApiError;
use crate::actors::dispatcher::FailoverMode;
use crate::config::{
    MAX_REPLICAS, MAX_WEIGHT, Temperature, UnitEntry, UnitMode, UnitPatch, check_db_url,
};
use crate::domain::order_id::MAX_UNIT;
use crate::domain::values::{
    Amount, Currency, Invalid, MerchantId, OutTradeNo, PaymentRef, RefundId, SectionEntries,
    Sections, Text, UserId,
};
use crate::domain::{NewOrder, NewRefund, Order, OrderStatus, Refund};

/// A JSON integer as JSON Schema's `integer` means it: any number whose value
/// is whole (`1999`, `1999.0`, `1.999e3`). Amounts are at most 10^12, far
/// inside the integers an `f64` holds exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WholeNumber(pub i64);

impl<'de> Deserialize<'de> for WholeNumber {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = serde_json::Number::deserialize(d)?;
        let whole = n.as_i64().or_else(|| {
            let f = n.as_f64()?;
            // Inside i64's range, an f64 with no fraction converts exactly.
            (f.fract() == 0.0 && f.abs() < 9.2e18).then_some(f as i64)
        });
        whole.map(WholeNumber).ok_or_else(|| {
            serde::de::Error::custom(format!("invalid value: {n}, expected a whole number"))
        })
    }
}

/// `PATCH /admin/units/{id}`: the fields named are set, the rest kept
/// (none: nothing changes).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UnitPatchRequest {
    pub mode: Option<UnitMode>,
    /// A partition the routing table knows (this document lists them).
    #[schema(example = "standard")]
    pub partition: Option<String>,
    pub temperature: Option<Temperature>,
    /// Share of creates against the partition's other units; 0 takes none.
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 1_000_000_i64, example = 100)]
    pub weight: Option<WholeNumber>,
    /// Repoint the unit to another server holding its database (a copy or
    /// a promoted replica: it must hold this unit's orders): the unit's
    /// next calls go there, calls in flight finish on the old one.
    #[schema(example = "mysql://orders:secret@10.0.0.6:3306/orderengine_unit_2")]
    pub primary_url: Option<String>,
    /// The unit's one replica; `null` removes its replicas (absent: they
    /// stay). Not with `replica_urls`.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub replica_url: Option<Option<String>>,
    /// All of the unit's replicas (`[]`: none). Not with `replica_url`.
    #[schema(max_items = 4)]
    pub replica_urls: Option<Vec<String>>,
}

/// A field that is present, `null` or not: absent stays `None`.
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

impl UnitPatchRequest {
    pub fn into_patch(self) -> Result<UnitPatch, ApiError> {
        let weight = self.weight.map(weight).transpose()?;
        if let Some(url) = &self.primary_url {
            check_db_url(url).map_err(|m| ApiError::validation("primary_url", m))?;
        }
        let replica_urls = match (self.replica_url, self.replica_urls) {
            (Some(_), Some(_)) => {
                return Err(ApiError::validation(
                    "replica_urls",
                    "name the replicas once: `replica_url` or `replica_urls`, not both",
                ));
            }
            (Some(one), None) => Some(one.into_iter().collect()),
            (None, many) => many,
        };
        if let Some(urls) = &replica_urls {
            check_replica_list(urls)?;
        }
        Ok(UnitPatch {
            mode: self.mode,
            partition: self.partition,
            temperature: self.temperature,
            weight,
            primary_url: self.primary_url,
            replica_urls,
        })
    }
}

/// `POST /admin/units/{id}/failover`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FailoverRequest {
    /// `planned`: the primary answers (it is fenced, the replica catches
    /// up with it exactly); `emergency`: the primary is dead (the replica
    /// applies what it received; the old primary is fenced once it answers).
    pub mode: FailoverMode,
    /// The replica to promote; default: the one of the unit's
    /// `replica_urls` that has received the most.
    #[schema(example = "mysql://orders:secret@10.0.0.7:3306/orderengine_unit_2")]
    pub to: Option<String>,
    /// Emergency only matters: a replica that does not answer may hold
    /// commits the old primary acknowledged that no other has, so the
    /// failover stops unless this is `true`; such replicas are then
    /// dropped from the unit. Default `false`.
    #[serde(default)]
    pub skip_unreachable_replicas: bool,
}

impl FailoverRequest {
    pub fn into_parts(self) -> Result<(FailoverMode, Option<String>, bool), ApiError> {
        if let Some(url) = &self.to {
            check_db_url(url).map_err(|m| ApiError::validation("to", m))?;
        }
        Ok((self.mode, self.to, self.skip_unreachable_replicas))
    }
}

/// Each replica URL usable, and not too many (the rest is checked
/// against the unit's primary when the change is made).
fn check_replica_list(urls: &[String]) -> Result<(), ApiError> {
    if urls.len() > MAX_REPLICAS {
        return Err(ApiError::validation(
            "replica_urls",
            format!(
                "a unit has at most {MAX_REPLICAS} replicas, not {}",
                urls.len()
            ),
        ));
    }
    for url in urls {
        check_db_url(url).map_err(|m| ApiError::validation("replica_urls", m))?;
    }
    Ok(())
}

fn weight(WholeNumber(w): WholeNumber) -> Result<u32, ApiError> {
    u32::try_from(w)
        .ok()
        .filter(|w| *w <= MAX_WEIGHT)
        .ok_or_else(|| ApiError::validation("weight", format!("weight must be 0 to {MAX_WEIGHT}")))
}

/// `POST /admin/units`: a unit to add. Its database is created when it does
/// not exist yet, and migrated. (No `Debug`: the URLs may hold passwords.)
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddUnitRequest {
    /// A unit id no unit has (it is written into every order id of the unit).
    #[schema(value_type = i64, minimum = 0, maximum = 9999, example = 5)]
    pub id: WholeNumber,
    /// A partition the routing table knows (this document lists them).
    #[schema(example = "standard")]
    pub partition: String,
    /// `open` when absent.
    pub mode: Option<UnitMode>,
    /// `hot` when absent.
    pub temperature: Option<Temperature>,
    /// 100 when absent.
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 1_000_000_i64, example = 100)]
    pub weight: Option<WholeNumber>,
    /// `mysql://user:password@host:port/database` or `sqlite://path`.
    #[schema(example = "mysql://orders:secret@10.0.0.5:3306/orderengine_unit_5")]
    pub primary_url: String,
    /// The unit's one replica. Not with `replica_urls`.
    pub replica_url: Option<String>,
    /// The unit's replicas. Not with `replica_url`.
    #[schema(max_items = 4)]
    pub replica_urls: Option<Vec<String>>,
}

impl AddUnitRequest {
    pub fn into_unit(self) -> Result<(u16, UnitEntry), ApiError> {
        let id = u16::try_from(self.id.0)
            .ok()
            .filter(|id| *id <= MAX_UNIT)
            .ok_or_else(|| ApiError::validation("id", format!("a unit id is 0 to {MAX_UNIT}")))?;
        check_db_url(&self.primary_url).map_err(|m| ApiError::validation("primary_url", m))?;
        let replica_urls = match (self.replica_url, self.replica_urls) {
            (Some(_), Some(_)) => {
                return Err(ApiError::validation(
                    "replica_urls",
                    "name the replicas once: `replica_url` or `replica_urls`, not both",
                ));
            }
            (one, None) => one.into_iter().collect(),
            (None, Some(many)) => many,
        };
        check_replica_list(&replica_urls)?;
        let entry = UnitEntry {
            partition: self.partition,
            mode: self.mode.unwrap_or_default(),
            temperature: self.temperature.unwrap_or_default(),
            weight: self.weight.map(weight).transpose()?.unwrap_or(100),
            primary_url: self.primary_url,
            replica_urls,
        };
        Ok((id, entry))
    }
}

/// `PUT /admin/merchants/{merchant_id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MerchantRequest {
    /// A partition the routing table knows (this document lists them).
    #[schema(example = "standard")]
    pub partition: String,
}

/// `PUT /admin/partitions/{name}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PartitionRequest {
    /// Partitions to spill creates into, in order, when none of this one's
    /// units can take them: known partitions, each once, never `canary` or
    /// `cold`. Empty: never spill.
    #[schema(example = json!(["standard"]))]
    pub spill_to: Vec<String>,
}

fn field<T>(name: &str, r: Result<T, Invalid>) -> Result<T, ApiError> {
    r.map_err(|e| ApiError::validation(name, format!("{name} {}", e.0)))
}

fn optional_text(name: &str, value: Option<String>) -> Result<Option<Text>, ApiError> {
    value.map(|v| field(name, Text::parse(v))).transpose()
}

/// `POST /v1/orders`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrderRequest {
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = "^[A-Za-z0-9_.:-]{1,64}$",
        example = "m-1001"
    )]
    pub merchant_id: String,
    /// The merchant's own order number; with `merchant_id`, the idempotency key.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = "^[A-Za-z0-9_.:-]{1,64}$",
        example = "20261122-0001"
    )]
    pub out_trade_no: String,
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = "^[A-Za-z0-9_.:-]{1,64}$",
        example = "u-42"
    )]
    pub user_id: String,
    /// Minor units (fen, cents).
    #[schema(value_type = i64, minimum = 1, maximum = 1_000_000_000_000_i64, example = 1999)]
    pub amount: WholeNumber,
    #[schema(
        min_length = 3,
        max_length = 3,
        pattern = "^[A-Z]{3}$",
        example = "CNY"
    )]
    pub currency: String,
    #[serde(default)]
    #[schema(max_length = 256, example = "2 coffees")]
    pub description: Option<String>,
    /// Named JSON sections (items, shipping, ...), readable one at a time;
    /// each is stored and returned as the JSON text it was sent in. Each
    /// value must read back as JSON: numbers within a double's range, no
    /// lone surrogate escape, nested at most 128 deep.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub sections: Option<SectionEntries>,
}

impl CreateOrderRequest {
    pub fn into_domain(self) -> Result<NewOrder, ApiError> {
        Ok(NewOrder {
            merchant_id: field("merchant_id", MerchantId::parse(self.merchant_id))?,
            out_trade_no: field("out_trade_no", OutTradeNo::parse(self.out_trade_no))?,
            user_id: field("user_id", UserId::parse(self.user_id))?,
            amount: field("amount", Amount::new(self.amount.0))?,
            currency: field("currency", Currency::parse(&self.currency))?,
            description: optional_text("description", self.description)?,
            sections: field(
                "sections",
                Sections::parse(self.sections.unwrap_or_default()),
            )?,
        })
    }
}

/// `POST /v1/orders/{order_id}/pay`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PayRequest {
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = "^[A-Za-z0-9_.:-]{1,64}$",
        example = "wx-8842"
    )]
    pub payment_ref: String,
    /// Must equal the order amount.
    #[schema(value_type = i64, minimum = 1, maximum = 1_000_000_000_000_i64, example = 1999)]
    pub amount: WholeNumber,
}

impl PayRequest {
    pub fn into_domain(self) -> Result<(PaymentRef, Amount), ApiError> {
        Ok((
            field("payment_ref", PaymentRef::parse(self.payment_ref))?,
            field("amount", Amount::new(self.amount.0))?,
        ))
    }
}

/// `POST /v1/orders/{order_id}/close` (an empty object; an empty body is accepted too).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloseRequest {}

/// `POST /v1/orders/{order_id}/refunds`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundRequest {
    /// Makes the refund idempotent: the same id and body again returns the same refund.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = "^[A-Za-z0-9_.:-]{1,64}$",
        example = "r-1"
    )]
    pub refund_id: String,
    #[schema(value_type = i64, minimum = 1, maximum = 1_000_000_000_000_i64, example = 500)]
    pub amount: WholeNumber,
    #[serde(default)]
    #[schema(max_length = 256, example = "one coffee cold")]
    pub reason: Option<String>,
}

impl RefundRequest {
    pub fn into_domain(self) -> Result<NewRefund, ApiError> {
        Ok(NewRefund {
            refund_id: field("refund_id", RefundId::parse(self.refund_id))?,
            amount: field("amount", Amount::new(self.amount.0))?,
            reason: optional_text("reason", self.reason)?,
        })
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatusBody {
    Created,
    Paid,
    Refunded,
    Closed,
}

impl From<OrderStatus> for OrderStatusBody {
    fn from(s: OrderStatus) -> Self {
        match s {
            OrderStatus::Created => Self::Created,
            OrderStatus::Paid => Self::Paid,
            OrderStatus::Refunded => Self::Refunded,
            OrderStatus::Closed => Self::Closed,
        }
    }
}

/// An order as callers see it.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderBody {
    /// 28 digits: version, unit, UTC time, sequence, Damm check digit.
    #[schema(example = "1000326112214301500000000425")]
    pub order_id: String,
    pub unit: u16,
    pub merchant_id: String,
    pub out_trade_no: String,
    pub user_id: String,
    pub amount: i64,
    pub currency: String,
    pub description: Option<String>,
    pub status: OrderStatusBody,
    pub paid_amount: i64,
    pub refunded_amount: i64,
    pub payment_ref: Option<String>,
    /// Starts at 1, +1 on every change; send it back in `If-Match`.
    pub version: i64,
    #[schema(example = "2026-11-22T14:30:15.123Z")]
    pub created_at: String,
    pub updated_at: String,
    /// Omitted when `?sections=` is empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub sections: Option<Sections>,
}

pub use crate::domain::timestamp;

impl OrderBody {
    /// The order with only the named sections (`None`: all of them; an empty
    /// list: the `sections` field is left out).
    pub fn new(order: Order, sections: Option<&[String]>) -> Self {
        let mut s = order.sections;
        let sections = match sections {
            Some([]) => None,
            Some(names) => {
                s.retain_named(names);
                Some(s)
            }
            None => Some(s),
        };
        Self {
            order_id: order.id.text(),
            unit: order.id.unit(),
            merchant_id: order.merchant_id.into_string(),
            out_trade_no: order.out_trade_no.into_string(),
            user_id: order.user_id.into_string(),
            amount: order.amount.get(),
            currency: order.currency.as_str().to_string(),
            description: order.description.map(Text::into_string),
            status: order.status.into(),
            paid_amount: order.paid_amount,
            refunded_amount: order.refunded_amount,
            payment_ref: order.payment_ref.map(PaymentRef::into_string),
            version: order.version,
            created_at: timestamp(order.created_at_ms),
            updated_at: timestamp(order.updated_at_ms),
            sections,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RefundBody {
    pub refund_id: String,
    pub order_id: String,
    pub amount: i64,
    pub reason: Option<String>,
    pub created_at: String,
}

impl From<Refund> for RefundBody {
    fn from(r: Refund) -> Self {
        Self {
            refund_id: r.refund_id.into_string(),
            order_id: r.order_id.text(),
            amount: r.amount.get(),
            reason: r.reason.map(Text::into_string),
            created_at: timestamp(r.created_at_ms),
        }
    }
}

/// Reply to a refund: the refund and the order after it.
#[derive(Debug, Serialize, ToSchema)]
pub struct RefundResponse {
    pub refund: RefundBody,
    pub order: OrderBody,
}

/// An order's refunds, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct RefundList {
    pub refunds: Vec<RefundBody>,
}

/// A page of a user's orders, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserOrdersPage {
    pub orders: Vec<OrderBody>,
    /// Pass as `?cursor=` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    /// Units that could not be read for this page (disabled by the
    /// operator, or not answering): their orders are missing from it, and
    /// the cursor does not revisit them. Absent when every unit answered.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(required = false)]
    pub unavailable_units: Vec<u16>,
}
