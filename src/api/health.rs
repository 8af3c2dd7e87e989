//! Liveness and readiness.

use actix_web::{HttpResponse, get, web};

use super::AppState;
use super::dto::Readiness as ReadinessBody;
use crate::actors::dispatcher::Readiness;
use crate::error::{ApiError, ErrorCode};

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200)))]
#[get("/healthz")]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// At least one unit can take creates.
#[utoipa::path(
    get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, body = ReadinessBody),
        (status = 503, description = "`no_unit_available`", body = crate::error::ErrorResponse),
    )
)]
#[get("/readyz")]
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let n =
        state.dispatcher.send(Readiness).await.map_err(|_| {
            ApiError::new(ErrorCode::NoUnitAvailable, "the dispatcher is not running")
        })?;
    if n == 0 {
        return Err(ApiError::new(
            ErrorCode::NoUnitAvailable,
            "no unit can take creates",
        ));
    }
    Ok(HttpResponse::Ok().json(ReadinessBody {
        status: "ready".into(),
        units_taking_creates: n,
    }))
}
