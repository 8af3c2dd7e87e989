//! The admin API, on its own listener. Every call needs
//! `Authorization: Bearer <token>` (see `auth.rs`), its own OpenAPI
//! document (`openapi.rs`) included.

use actix_web::{HttpRequest, HttpResponse, web};

use super::auth::AdminToken;
use super::error::{ApiError, ErrorResponse};
use super::state::AppState;
use crate::actors::dispatcher::{AdminStatus, EngineStatus};

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
