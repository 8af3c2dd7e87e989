//! Liveness, readiness and metrics, on the public listener. Readiness says
//! whether creates can be taken and, per partition, how many units can take
//! them: nothing about where units live (that is the admin listener's).

use actix_web::HttpResponse;
use actix_web::web;
use metrics_exporter_prometheus::PrometheusHandle;

use super::error::{ApiError, ErrorCode, ErrorResponse};
use super::state::AppState;
use crate::actors::dispatcher::{Readiness, Status};

/// The process is up.
#[utoipa::path(
    get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Always `{\"status\":\"ok\"}`", body = Object,
        example = json!({"status": "ok"})))
)]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// Ready when at least one unit can take creates.
#[utoipa::path(
    get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, body = Readiness),
        (status = 503, description = "`no_unit_available`: no unit can take creates", body = ErrorResponse),
    )
)]
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let readiness = state.tell(Status).await?;
    if !readiness.ready {
        return Err(ApiError::new(
            ErrorCode::NoUnitAvailable,
            "no unit can take creates",
        ));
    }
    Ok(HttpResponse::Ok().json(readiness))
}

/// Prometheus text format.
#[utoipa::path(
    get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String,
        content_type = "text/plain; version=0.0.4; charset=utf-8"))
)]
pub async fn metrics_text(handle: web::Data<PrometheusHandle>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(handle.render())
}
