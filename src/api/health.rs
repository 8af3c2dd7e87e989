//! Liveness and readiness.

use actix_web::{HttpResponse, get, web};

use super::AppState;
use crate::actors::dispatcher::{EngineStatus, Status};
use crate::error::{ApiError, ErrorCode};

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200)))]
#[get("/healthz")]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// Ready when at least one unit can take creates; the body shows each unit's
/// health, circuit and latency, and each partition's panic mode.
#[utoipa::path(
    get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, body = EngineStatus),
        (status = 503, description = "`no_unit_available`", body = crate::error::ErrorResponse),
    )
)]
#[get("/readyz")]
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let status =
        state.dispatcher.send(Status).await.map_err(|_| {
            ApiError::new(ErrorCode::NoUnitAvailable, "the dispatcher is not running")
        })?;
    if !status.ready {
        return Err(ApiError::new(
            ErrorCode::NoUnitAvailable,
            "no unit can take creates",
        ));
    }
    Ok(HttpResponse::Ok().json(status))
}
