//! The admin API, on its own listener. Every call needs
//! `Authorization: Bearer <token>` (see `auth.rs`), its own OpenAPI
//! document (`openapi.rs`) included.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};

use super::auth::{AdminToken, Authorized};
use super::dto::UnitPatchRequest;
use super::error::{ApiError, ErrorResponse};
use super::extract::{IfMatch, JsonBody};
use super::state::AppState;
use crate::actors::dispatcher::{AdminStatus, EngineStatus, PatchUnit, UnitChanged};
use crate::domain::order_id::MAX_UNIT;

/// The routing table with live state: mode, health, circuit, latency, create rate.
#[utoipa::path(
    get, path = "/admin/units", tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, body = EngineStatus),
        (status = 401, description = "`unauthorized`", body = ErrorResponse),
    )
)]
pub async fn list_units(
    req: HttpRequest,
    token: web::Data<AdminToken>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    token.authorize(&req)?;
    let status = state.tell(AdminStatus).await?;
    Ok(HttpResponse::Ok().json(status))
}

/// Changes one unit's routing settings: `mode`, `partition`, `temperature`,
/// `weight`. This engine process's next creates follow it; the answer
/// carries the table's new version (also as `ETag`), and `If-Match` makes
/// the change conditional on the version the operator saw. No field (or no
/// body) changes nothing.
#[utoipa::path(
    patch, path = "/admin/units/{id}", tag = "admin",
    security(("bearer" = [])),
    params(("id" = u16, Path), ("If-Match" = Option<String>, Header)),
    request_body = UnitPatchRequest,
    responses(
        (status = 200, body = UnitChanged, headers(("ETag" = String, description = "The routing table's new version, quoted."))),
        (status = 400, description = "`validation_failed` (a malformed body or header) or `invalid_change` (`field` names the setting)", body = ErrorResponse),
        (status = 401, description = "`unauthorized`", body = ErrorResponse),
        (status = 404, description = "`unit_not_found`", body = ErrorResponse),
        (status = 412, description = "`version_mismatch`: the table is no longer at the `If-Match` version", body = ErrorResponse),
        (status = 503, description = "`table_not_saved`: the change could not be kept; nothing changed", body = ErrorResponse),
    )
)]
pub async fn patch_unit(
    _: Authorized,
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
    if_match: IfMatch,
    body: JsonBody<UnitPatchRequest>,
) -> Result<HttpResponse, ApiError> {
    let patch = body.0.into_patch()?;
    let unit = id
        .parse::<u16>()
        .ok()
        .filter(|u| *u <= MAX_UNIT && !id.starts_with('+'))
        .ok_or_else(|| ApiError::validation("id", format!("a unit id is 0 to {MAX_UNIT}")))?;
    let who = req
        .peer_addr()
        .map_or_else(|| "unknown".to_owned(), |a| a.to_string());
    let changed = state
        .tell(PatchUnit {
            unit,
            patch,
            if_match: if_match.0.and_then(|v| u64::try_from(v).ok()),
            who,
        })
        .await??;
    Ok(HttpResponse::Ok()
        .insert_header((header::ETAG, format!("\"{}\"", changed.version)))
        .json(changed))
}
