//! Order handlers. Each one parses, sends one message to the dispatcher and
//! maps the reply: no SQL and no business rules here.

use actix_web::http::header;
use actix_web::{HttpResponse, get, post, web};
use serde::Deserialize;
use utoipa::IntoParams;

use super::AppState;
use super::dto::{
    CloseRequest, CreateOrderRequest, OrderBody, PayRequest, RefundBody, RefundList, RefundRequest,
    RefundResponse, UserOrdersPage,
};
use super::extract::{IfMatch, JsonBody, OrderIdPath};
use crate::actors::dispatcher::{
    Close, Create, Get, ListUser, LookupByKey, Pay, RefundCall, Refunds,
};
use crate::actors::unit::{CloseOrder, ListRefunds, PayOrder, RefundOrder};
use crate::domain::values::{MerchantId, OutTradeNo, UserId};
use crate::domain::{Order, OrderId};
use crate::error::{ApiError, ErrorCode};
use crate::storage::{Consistency, UserCursor};

/// Sends `msg` to the dispatcher; a dispatcher that cannot take it is a 503.
async fn ask<M>(state: &AppState, msg: M) -> Result<M::Result, ApiError>
where
    M: actix::Message + Send + 'static,
    M::Result: Send,
    crate::actors::dispatcher::Dispatcher: actix::Handler<M>,
{
    state
        .dispatcher
        .send(msg)
        .await
        .map_err(|_| ApiError::new(ErrorCode::NoUnitAvailable, "the dispatcher is not running"))
}

fn order_response(status: actix_web::http::StatusCode, order: Order) -> HttpResponse {
    let version = order.version;
    HttpResponse::build(status)
        .insert_header((header::ETAG, format!("\"{version}\"")))
        .json(OrderBody::new(order, None))
}

/// Create an order in a trading unit chosen for it.
#[utoipa::path(
    post, path = "/v1/orders", tag = "orders",
    request_body = CreateOrderRequest,
    responses(
        (status = 201, description = "Created; `Location` names the order", body = OrderBody),
        (status = 200, description = "An identical request created this order before", body = OrderBody),
        (status = 400, description = "`validation_failed` or `malformed_json`", body = crate::error::ErrorResponse),
        (status = 409, description = "`idempotency_conflict`: same key, different body", body = crate::error::ErrorResponse),
        (status = 413, description = "`payload_too_large`", body = crate::error::ErrorResponse),
        (status = 503, description = "`no_unit_available` (with `Retry-After`)", body = crate::error::ErrorResponse),
    )
)]
#[post("/v1/orders")]
pub async fn create_order(
    state: web::Data<AppState>,
    body: JsonBody<CreateOrderRequest>,
) -> Result<HttpResponse, ApiError> {
    let request = body.0.into_domain()?;
    let created = ask(&state, Create { request }).await??;
    if created.replayed {
        return Ok(order_response(
            actix_web::http::StatusCode::OK,
            created.order,
        ));
    }
    let location = ["/v1/orders/", &created.order.id.text()].concat();
    let unit = created.order.id.unit();
    let mut res = order_response(actix_web::http::StatusCode::CREATED, created.order);
    res.extensions_mut()
        .insert(super::middleware::UnitTag(unit));
    res.headers_mut().insert(
        header::LOCATION,
        header::HeaderValue::from_str(&location).expect("an order id is a valid header value"),
    );
    Ok(res)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GetOrderQuery {
    /// `strong` (default) reads the primary; `eventual` may read a replica.
    #[param(inline, value_type = Option<String>, pattern = "^(strong|eventual)$")]
    pub consistency: Option<ConsistencyParam>,
    /// Comma-separated section names; empty leaves `sections` out.
    pub sections: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsistencyParam {
    Strong,
    Eventual,
}

/// Read an order.
#[utoipa::path(
    get, path = "/v1/orders/{order_id}", tag = "orders",
    params(("order_id" = String, Path, description = "28-digit order id"), GetOrderQuery),
    responses(
        (status = 200, body = OrderBody),
        (status = 400, description = "`invalid_order_id`", body = crate::error::ErrorResponse),
        (status = 404, description = "`order_not_found`", body = crate::error::ErrorResponse),
        (status = 503, description = "`unit_unavailable`", body = crate::error::ErrorResponse),
    )
)]
#[get("/v1/orders/{order_id}")]
pub async fn get_order(
    state: web::Data<AppState>,
    id: OrderIdPath,
    query: web::Query<GetOrderQuery>,
) -> Result<HttpResponse, ApiError> {
    let consistency = match query.consistency {
        Some(ConsistencyParam::Eventual) => Consistency::Eventual,
        _ => Consistency::Strong,
    };
    let order = ask(
        &state,
        Get {
            id: id.0,
            consistency,
        },
    )
    .await??;
    let names: Option<Vec<String>> = query.sections.as_ref().map(|s| {
        s.split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(String::from)
            .collect()
    });
    let version = order.version;
    Ok(HttpResponse::Ok()
        .insert_header((header::ETAG, format!("\"{version}\"")))
        .json(OrderBody::new(order, names.as_deref())))
}

/// Pay an order (`created -> paid`). Paying again with the same `payment_ref` is a no-op.
#[utoipa::path(
    post, path = "/v1/orders/{order_id}/pay", tag = "orders",
    params(("order_id" = String, Path), ("If-Match" = Option<i64>, Header, description = "expected version")),
    request_body = PayRequest,
    responses(
        (status = 200, body = OrderBody),
        (status = 409, description = "`invalid_transition` or `amount_mismatch`", body = crate::error::ErrorResponse),
        (status = 412, description = "`version_mismatch`", body = crate::error::ErrorResponse),
    )
)]
#[post("/v1/orders/{order_id}/pay")]
pub async fn pay_order(
    state: web::Data<AppState>,
    id: OrderIdPath,
    if_match: IfMatch,
    body: JsonBody<PayRequest>,
) -> Result<HttpResponse, ApiError> {
    let (payment_ref, amount) = body.0.into_domain()?;
    let msg = PayOrder {
        id: id.0,
        payment_ref,
        amount,
        expected_version: if_match.0,
    };
    let (order, _changed) = ask(&state, Pay(msg)).await??;
    Ok(order_response(actix_web::http::StatusCode::OK, order))
}

/// Close an unpaid order (`created -> closed`). Closing a closed order is a no-op.
#[utoipa::path(
    post, path = "/v1/orders/{order_id}/close", tag = "orders",
    params(("order_id" = String, Path), ("If-Match" = Option<i64>, Header, description = "expected version")),
    request_body = CloseRequest,
    responses(
        (status = 200, body = OrderBody),
        (status = 409, description = "`invalid_transition`", body = crate::error::ErrorResponse),
        (status = 412, description = "`version_mismatch`", body = crate::error::ErrorResponse),
    )
)]
#[post("/v1/orders/{order_id}/close")]
pub async fn close_order(
    state: web::Data<AppState>,
    id: OrderIdPath,
    if_match: IfMatch,
    _body: JsonBody<CloseRequest>,
) -> Result<HttpResponse, ApiError> {
    let msg = CloseOrder {
        id: id.0,
        expected_version: if_match.0,
    };
    let (order, _changed) = ask(&state, Close(msg)).await??;
    Ok(order_response(actix_web::http::StatusCode::OK, order))
}

/// Refund part or all of a paid order. Idempotent by `refund_id`.
#[utoipa::path(
    post, path = "/v1/orders/{order_id}/refunds", tag = "orders",
    params(("order_id" = String, Path), ("If-Match" = Option<i64>, Header, description = "expected version")),
    request_body = RefundRequest,
    responses(
        (status = 201, body = RefundResponse),
        (status = 200, description = "This refund_id and body were refunded before", body = RefundResponse),
        (status = 409, description = "`invalid_transition`, `refund_exceeds_paid` or `idempotency_conflict`", body = crate::error::ErrorResponse),
        (status = 412, description = "`version_mismatch`", body = crate::error::ErrorResponse),
    )
)]
#[post("/v1/orders/{order_id}/refunds")]
pub async fn refund_order(
    state: web::Data<AppState>,
    id: OrderIdPath,
    if_match: IfMatch,
    body: JsonBody<RefundRequest>,
) -> Result<HttpResponse, ApiError> {
    let msg = RefundOrder {
        id: id.0,
        refund: body.0.into_domain()?,
        expected_version: if_match.0,
    };
    let (refund, order, created) = ask(&state, RefundCall(msg)).await??;
    let status = if created {
        actix_web::http::StatusCode::CREATED
    } else {
        actix_web::http::StatusCode::OK
    };
    Ok(HttpResponse::build(status).json(RefundResponse {
        refund: refund.into(),
        order: OrderBody::new(order, None),
    }))
}

/// The order's refunds, oldest first.
#[utoipa::path(
    get, path = "/v1/orders/{order_id}/refunds", tag = "orders",
    params(("order_id" = String, Path)),
    responses((status = 200, body = RefundList), (status = 404, body = crate::error::ErrorResponse))
)]
#[get("/v1/orders/{order_id}/refunds")]
pub async fn list_refunds(
    state: web::Data<AppState>,
    id: OrderIdPath,
) -> Result<HttpResponse, ApiError> {
    let refunds = ask(&state, Refunds(ListRefunds { id: id.0 })).await??;
    Ok(HttpResponse::Ok().json(RefundList {
        refunds: refunds.into_iter().map(RefundBody::from).collect(),
    }))
}

/// Find an order by the merchant's own number (asks every unit in parallel).
#[utoipa::path(
    get, path = "/v1/merchants/{merchant_id}/orders/{out_trade_no}", tag = "orders",
    params(("merchant_id" = String, Path), ("out_trade_no" = String, Path)),
    responses(
        (status = 200, body = OrderBody),
        (status = 404, description = "`order_not_found`", body = crate::error::ErrorResponse),
        (status = 503, description = "`unit_unavailable`: a unit that could hold it did not answer", body = crate::error::ErrorResponse),
    )
)]
#[get("/v1/merchants/{merchant_id}/orders/{out_trade_no}")]
pub async fn lookup_by_merchant(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (merchant_id, out_trade_no) = path.into_inner();
    let msg = LookupByKey {
        merchant_id: MerchantId::parse(merchant_id)
            .map_err(|e| ApiError::validation("merchant_id", e.0))?,
        out_trade_no: OutTradeNo::parse(out_trade_no)
            .map_err(|e| ApiError::validation("out_trade_no", e.0))?,
    };
    let order = ask(&state, msg).await??;
    Ok(order_response(actix_web::http::StatusCode::OK, order))
}

/// Default and largest page size for user lists.
pub const DEFAULT_PAGE: u32 = 20;
pub const MAX_PAGE: u32 = 100;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UserOrdersQuery {
    /// 1-100, default 20.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// `next_cursor` from the previous page.
    pub cursor: Option<String>,
}

/// Encodes a list position; opaque to callers.
fn encode_cursor(c: &UserCursor) -> String {
    format!("{:x}.{}", c.created_at_ms, c.order_id)
}

fn decode_cursor(s: &str) -> Option<UserCursor> {
    let (ms, id) = s.split_once('.')?;
    Some(UserCursor {
        created_at_ms: i64::from_str_radix(ms, 16).ok()?,
        order_id: OrderId::parse(id).ok()?,
    })
}

/// A user's orders across all units, newest first, with stable pagination.
#[utoipa::path(
    get, path = "/v1/users/{user_id}/orders", tag = "orders",
    params(("user_id" = String, Path), UserOrdersQuery),
    responses((status = 200, body = UserOrdersPage), (status = 503, body = crate::error::ErrorResponse))
)]
#[get("/v1/users/{user_id}/orders")]
pub async fn list_user_orders(
    state: web::Data<AppState>,
    user_id: web::Path<String>,
    query: web::Query<UserOrdersQuery>,
) -> Result<HttpResponse, ApiError> {
    let user_id =
        UserId::parse(user_id.into_inner()).map_err(|e| ApiError::validation("user_id", e.0))?;
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::validation(
            "limit",
            format!("limit must be 1-{MAX_PAGE}"),
        ));
    }
    let after = match &query.cursor {
        None => None,
        Some(c) => Some(decode_cursor(c).ok_or_else(|| {
            ApiError::validation("cursor", "cursor is not one this server issued")
        })?),
    };
    let page = ask(
        &state,
        ListUser {
            user_id,
            after,
            limit,
        },
    )
    .await??;
    Ok(HttpResponse::Ok().json(UserOrdersPage {
        orders: page
            .orders
            .into_iter()
            .map(|o| OrderBody::new(o, None))
            .collect(),
        next_cursor: page.next.as_ref().map(encode_cursor),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips() {
        let c = UserCursor {
            created_at_ms: 1_795_000_000_123,
            order_id: OrderId::parse("1000326112214301500000000425").unwrap(),
        };
        assert_eq!(decode_cursor(&encode_cursor(&c)), Some(c));
        assert_eq!(decode_cursor("zz.1"), None);
    }
}
