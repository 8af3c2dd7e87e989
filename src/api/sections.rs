//! Section handlers: replace or remove one named section of an order
//! (`PUT`/`DELETE /v1/orders/{order_id}/sections/{section}`). Like every
//! update: `If-Match`, a new version, an `order.sections_changed` event in
//! the same transaction, and a consistency token.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};

use super::dto::OrderBody;
use super::error::{ApiError, ErrorResponse};
use super::extract::{IfMatch, JsonValueBody, OrderIdPath};
use super::orders::{order_response, with_token};
use super::state::AppState;
use crate::actors::dispatcher::SetSection;
use crate::domain::values::{SectionName, SectionValue};

fn section_name(req: &HttpRequest) -> Result<SectionName, ApiError> {
    let raw = req.match_info().get("section").unwrap_or_default();
    SectionName::parse(raw).map_err(|e| ApiError::validation("section", e.0))
}

async fn set(
    state: &AppState,
    id: OrderIdPath,
    name: SectionName,
    value: Option<SectionValue>,
    if_match: IfMatch,
) -> Result<HttpResponse, ApiError> {
    let set = state
        .ask(SetSection {
            id: id.0,
            name,
            value,
            expected_version: if_match.0,
        })
        .await?;
    Ok(with_token(
        order_response(StatusCode::OK, set.value.order, None),
        &set.token,
    ))
}

/// Replace one named section (the body is its value: any JSON). Setting
/// the value it has changes nothing (`200`, same version).
#[utoipa::path(
    put, path = "/v1/orders/{order_id}/sections/{section}", tag = "orders",
    params(
        ("order_id" = String, Path),
        ("section" = String, Path),
        ("If-Match" = Option<String>, Header),
    ),
    request_body(content = serde_json::Value, description = "The section's value: any JSON that reads back as a value (numbers within a double's range, no lone surrogate escape, nested at most 128 deep); an order's sections take at most 1 MiB of JSON in all"),
    responses(
        (status = 200, body = OrderBody, headers(("ETag" = String, description = "The order's version, quoted"), ("X-Consistency-Token" = String, description = "The write's consistency token: present it on an eventual read to see this write"))),
        (status = 400, description = "`invalid_order_id`, `validation_failed` or `malformed_json`", body = ErrorResponse),
        (status = 404, description = "`order_not_found`", body = ErrorResponse),
        (status = 412, description = "`version_mismatch`", body = ErrorResponse),
        (status = 413, description = "`payload_too_large`", body = ErrorResponse),
        (status = 503, description = "`unit_unavailable`", body = ErrorResponse),
    )
)]
pub async fn put_section(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: OrderIdPath,
    if_match: IfMatch,
    body: JsonValueBody,
) -> Result<HttpResponse, ApiError> {
    let name = section_name(&req)?;
    set(&state, id, name, Some(body.0), if_match).await
}

/// Remove one named section. Removing one the order does not have
/// changes nothing (`200`, same version).
#[utoipa::path(
    delete, path = "/v1/orders/{order_id}/sections/{section}", tag = "orders",
    params(
        ("order_id" = String, Path),
        ("section" = String, Path),
        ("If-Match" = Option<String>, Header),
    ),
    responses(
        (status = 200, body = OrderBody, headers(("ETag" = String, description = "The order's version, quoted"), ("X-Consistency-Token" = String, description = "The write's consistency token: present it on an eventual read to see this write"))),
        (status = 400, description = "`invalid_order_id` or `validation_failed`", body = ErrorResponse),
        (status = 404, description = "`order_not_found`", body = ErrorResponse),
        (status = 412, description = "`version_mismatch`", body = ErrorResponse),
        (status = 503, description = "`unit_unavailable`", body = ErrorResponse),
    )
)]
pub async fn delete_section(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: OrderIdPath,
    if_match: IfMatch,
) -> Result<HttpResponse, ApiError> {
    let name = section_name(&req)?;
    set(&state, id, name, None, if_match).await
}
