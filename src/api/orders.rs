//! Order handlers. Each one parses, sends one message to the dispatcher and
//! maps the reply: no SQL and no business rules here. Routes are registered
//! in `routes.rs`; the `#[utoipa::path]` on each handler is its entry in the
//! OpenAPI document (`openapi.rs` adds what every route shares).

use actix_web::http::{StatusCode, header};
use actix_web::{HttpResponse, web};
use serde::Deserialize;
use utoipa::IntoParams;

use super::dto::{
    CloseRequest, CreateOrderRequest, OrderBody, PayRequest, RefundBody, RefundList, RefundRequest,
    RefundResponse, UserOrdersPage,
};
use super::error::{ApiError, ErrorResponse, UnitTag};
use super::extract::{CONSISTENCY_TOKEN, IfMatch, JsonBody, OrderIdPath, TokenHeader};
use super::state::AppState;
use crate::actors::dispatcher::{
    Close, Create, Get, ListRefunds, ListUserOrders, LookupByKey, Pay, Refund, Written,
};
use crate::domain::replication::ConsistencyToken;
use crate::domain::values::{MerchantId, OutTradeNo, UserId};
use crate::domain::{Consistency, Order, UserCursor};

/// An order reply: the order, with its version as the `ETag`.
pub(super) fn order_response(
    status: StatusCode,
    order: Order,
    sections: Option<&[String]>,
) -> HttpResponse {
    let version = order.version;
    HttpResponse::build(status)
        .insert_header((header::ETAG, format!("\"{version}\"")))
        .json(OrderBody::new(order, sections))
}

/// Adds a write's consistency token to its reply.
pub(super) fn with_token(mut res: HttpResponse, token: &ConsistencyToken) -> HttpResponse {
    let value = header::HeaderValue::from_str(&token.encode())
        .expect("a token is digits, ':', '-' and ','");
    res.headers_mut().insert(CONSISTENCY_TOKEN.clone(), value);
    res
}

/// Create an order in a trading unit chosen for it.
#[utoipa::path(
    post, path = "/v1/orders", tag = "orders",
    request_body = CreateOrderRequest,
    responses(
        (status = 201, description = "Created", body = OrderBody, headers(
            ("Location" = String, description = "`/v1/orders/{order_id}`"),
            ("ETag" = String, description = "The order's version, quoted"),
            ("X-Consistency-Token" = String, description = "The write's consistency token: present it on an eventual read to see this write"),
        )),
        (status = 200, description = "An identical request created this order before", body = OrderBody,
            headers(("ETag" = String, description = "The order's version, quoted"), ("X-Consistency-Token" = String, description = "The write's consistency token: present it on an eventual read to see this write"))),
        (status = 400, description = "`validation_failed` or `malformed_json`", body = ErrorResponse),
        (status = 409, description = "`idempotency_conflict`: same key, different body", body = ErrorResponse),
        (status = 413, description = "`payload_too_large`", body = ErrorResponse),
        (status = 503, description = "`no_unit_available`, or `unit_unavailable` when an earlier attempt of this key is in doubt", body = ErrorResponse),
    )
)]
pub async fn create_order(
    state: web::Data<AppState>,
    body: JsonBody<CreateOrderRequest>,
) -> Result<HttpResponse, ApiError> {
    let request = body.0.into_domain()?;
    let Written {
        value: created,
        token,
    } = state.ask(Create { request }).await?;
    if created.replayed {
        let res = order_response(StatusCode::OK, created.order, None);
        return Ok(with_token(res, &token));
    }
    let location = ["/v1/orders/", &created.order.id.text()].concat();
    let unit = created.order.id.unit();
    let mut res = with_token(
        order_response(StatusCode::CREATED, created.order, None),
        &token,
    );
    res.extensions_mut().insert(UnitTag(unit));
    res.headers_mut().insert(
        header::LOCATION,
        header::HeaderValue::from_str(&location).expect("an order id is a valid header value"),
    );
    Ok(res)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct GetOrderQuery {
    /// `strong` (default) reads the primary; `eventual` may read a replica
    /// (one at most `storage.replica_max_lag_ms` behind, or, with
    /// `X-Consistency-Token`, one that has applied that write).
    pub consistency: Option<ConsistencyParam>,
    /// Comma-separated section names; empty leaves `sections` out.
    pub sections: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConsistencyParam {
    Strong,
    Eventual,
}

/// Read an order.
#[utoipa::path(
    get, path = "/v1/orders/{order_id}", tag = "orders",
    params(("order_id" = String, Path), GetOrderQuery, ("X-Consistency-Token" = Option<String>, Header)),
    responses(
        (status = 200, body = OrderBody, headers(("ETag" = String, description = "The order's version, quoted"))),
        (status = 400, description = "`invalid_order_id` or `validation_failed`", body = ErrorResponse),
        (status = 404, description = "`order_not_found`", body = ErrorResponse),
        (status = 503, description = "`unit_unavailable`", body = ErrorResponse),
    )
)]
pub async fn get_order(
    state: web::Data<AppState>,
    id: OrderIdPath,
    query: web::Query<GetOrderQuery>,
    token: TokenHeader,
) -> Result<HttpResponse, ApiError> {
    let consistency = match query.consistency {
        Some(ConsistencyParam::Eventual) => Consistency::Eventual,
        _ => Consistency::Strong,
    };
    let order = state
        .ask(Get {
            id: id.0,
            consistency,
            token: token.0,
        })
        .await?;
    let names: Option<Vec<String>> = query.sections.as_ref().map(|s| {
        s.split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(String::from)
            .collect()
    });
    Ok(order_response(StatusCode::OK, order, names.as_deref()))
}

/// Pay an order (`created -> paid`). Paying again with the same `payment_ref` is a no-op.
#[utoipa::path(
    post, path = "/v1/orders/{order_id}/pay", tag = "orders",
    params(("order_id" = String, Path), ("If-Match" = Option<String>, Header)),
    request_body = PayRequest,
    responses(
        (status = 200, body = OrderBody, headers(("ETag" = String, description = "The order's version, quoted"), ("X-Consistency-Token" = String, description = "The write's consistency token: present it on an eventual read to see this write"))),
        (status = 400, description = "`invalid_order_id`, `validation_failed` or `malformed_json`", body = ErrorResponse),
        (status = 404, description = "`order_not_found`", body = ErrorResponse),
        (status = 409, description = "`invalid_transition` or `amount_mismatch`", body = ErrorResponse),
        (status = 412, description = "`version_mismatch`", body = ErrorResponse),
        (status = 413, description = "`payload_too_large`", body = ErrorResponse),
        (status = 503, description = "`unit_unavailable`", body = ErrorResponse),
    )
)]
pub async fn pay_order(
    state: web::Data<AppState>,
    id: OrderIdPath,
    if_match: IfMatch,
    body: JsonBody<PayRequest>,
) -> Result<HttpResponse, ApiError> {
    let (payment_ref, amount) = body.0.into_domain()?;
    let paid = state
        .ask(Pay {
            id: id.0,
            payment_ref,
            amount,
            expected_version: if_match.0,
        })
        .await?;
    Ok(with_token(
        order_response(StatusCode::OK, paid.value.order, None),
        &paid.token,
    ))
}

/// Close an unpaid order (`created -> closed`). Closing a closed order is a no-op.
#[utoipa::path(
    post, path = "/v1/orders/{order_id}/close", tag = "orders",
    params(("order_id" = String, Path), ("If-Match" = Option<String>, Header)),
    request_body = CloseRequest,
    responses(
        (status = 200, body = OrderBody, headers(("ETag" = String, description = "The order's version, quoted"), ("X-Consistency-Token" = String, description = "The write's consistency token: present it on an eventual read to see this write"))),
        (status = 400, description = "`invalid_order_id`, `validation_failed` or `malformed_json`", body = ErrorResponse),
        (status = 404, description = "`order_not_found`", body = ErrorResponse),
        (status = 409, description = "`invalid_transition`", body = ErrorResponse),
        (status = 412, description = "`version_mismatch`", body = ErrorResponse),
        (status = 413, description = "`payload_too_large`", body = ErrorResponse),
        (status = 503, description = "`unit_unavailable`", body = ErrorResponse),
    )
)]
pub async fn close_order(
    state: web::Data<AppState>,
    id: OrderIdPath,
    if_match: IfMatch,
    _body: JsonBody<CloseRequest>,
) -> Result<HttpResponse, ApiError> {
    let closed = state
        .ask(Close {
            id: id.0,
            expected_version: if_match.0,
        })
        .await?;
    Ok(with_token(
        order_response(StatusCode::OK, closed.value.order, None),
        &closed.token,
    ))
}

/// Refund part or all of a paid order. Idempotent by `refund_id`.
#[utoipa::path(
    post, path = "/v1/orders/{order_id}/refunds", tag = "orders",
    params(("order_id" = String, Path), ("If-Match" = Option<String>, Header)),
    request_body = RefundRequest,
    responses(
        (status = 201, description = "Refunded", body = RefundResponse, headers(("X-Consistency-Token" = String, description = "The write's consistency token: present it on an eventual read to see this write"))),
        (status = 200, description = "This refund_id and body were refunded before", body = RefundResponse, headers(("X-Consistency-Token" = String, description = "The write's consistency token: present it on an eventual read to see this write"))),
        (status = 400, description = "`invalid_order_id`, `validation_failed` or `malformed_json`", body = ErrorResponse),
        (status = 404, description = "`order_not_found`", body = ErrorResponse),
        (status = 409, description = "`invalid_transition`, `refund_exceeds_paid` or `idempotency_conflict`", body = ErrorResponse),
        (status = 412, description = "`version_mismatch`", body = ErrorResponse),
        (status = 413, description = "`payload_too_large`", body = ErrorResponse),
        (status = 503, description = "`unit_unavailable`", body = ErrorResponse),
    )
)]
pub async fn refund_order(
    state: web::Data<AppState>,
    id: OrderIdPath,
    if_match: IfMatch,
    body: JsonBody<RefundRequest>,
) -> Result<HttpResponse, ApiError> {
    let refunded = state
        .ask(Refund {
            id: id.0,
            refund: body.0.into_domain()?,
            expected_version: if_match.0,
        })
        .await?;
    let Written {
        value: refunded,
        token,
    } = refunded;
    let status = if refunded.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let res = HttpResponse::build(status).json(RefundResponse {
        refund: refunded.refund.into(),
        order: OrderBody::new(refunded.order, None),
    });
    Ok(with_token(res, &token))
}

/// The order's refunds, oldest first.
#[utoipa::path(
    get, path = "/v1/orders/{order_id}/refunds", tag = "orders",
    params(("order_id" = String, Path)),
    responses(
        (status = 200, body = RefundList),
        (status = 400, description = "`invalid_order_id`", body = ErrorResponse),
        (status = 404, description = "`order_not_found`", body = ErrorResponse),
        (status = 503, description = "`unit_unavailable`", body = ErrorResponse),
    )
)]
pub async fn list_refunds(
    state: web::Data<AppState>,
    id: OrderIdPath,
) -> Result<HttpResponse, ApiError> {
    let refunds = state.ask(ListRefunds { id: id.0 }).await?;
    Ok(HttpResponse::Ok().json(RefundList {
        refunds: refunds.into_iter().map(RefundBody::from).collect(),
    }))
}

/// Find an order by the merchant's own number (asks every unit in parallel).
#[utoipa::path(
    get, path = "/v1/merchants/{merchant_id}/orders/{out_trade_no}", tag = "orders",
    params(("merchant_id" = String, Path), ("out_trade_no" = String, Path)),
    responses(
        (status = 200, body = OrderBody, headers(("ETag" = String, description = "The order's version, quoted"))),
        (status = 400, description = "`validation_failed`", body = ErrorResponse),
        (status = 404, description = "`order_not_found`", body = ErrorResponse),
        (status = 503, description = "`unit_unavailable`: a unit that could hold it did not answer", body = ErrorResponse),
    )
)]
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
    let order = state.ask(msg).await?;
    Ok(order_response(StatusCode::OK, order, None))
}

/// Default and largest page size for user lists.
pub const DEFAULT_PAGE: u32 = 20;
pub const MAX_PAGE: u32 = 100;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UserOrdersQuery {
    /// 1-100, default 20.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// `next_cursor` from the previous page.
    pub cursor: Option<String>,
}

/// A user's orders across all units, newest first, with stable pagination.
#[utoipa::path(
    get, path = "/v1/users/{user_id}/orders", tag = "orders",
    params(("user_id" = String, Path), UserOrdersQuery),
    responses(
        (status = 200, body = UserOrdersPage),
        (status = 400, description = "`validation_failed`", body = ErrorResponse),
        (status = 503, description = "`unit_unavailable`", body = ErrorResponse),
    )
)]
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
        Some(c) => Some(UserCursor::decode(c).ok_or_else(|| {
            ApiError::validation("cursor", "cursor is not one this server issued")
        })?),
    };
    let page = state
        .ask(ListUserOrders {
            user_id,
            after,
            limit,
        })
        .await?;
    Ok(HttpResponse::Ok().json(UserOrdersPage {
        orders: page
            .orders
            .into_iter()
            .map(|o| OrderBody::new(o, None))
            .collect(),
        next_cursor: page.next.as_ref().map(UserCursor::encode),
        unavailable_units: page.unavailable,
    }))
}
