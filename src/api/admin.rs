//! The admin API, on its own listener. Every call needs
//! `Authorization: Bearer <token>`, compared in constant time.

use actix_web::{HttpRequest, HttpResponse, get, web};

use crate::actors::dispatcher::{EngineStatus, Status};
use crate::error::{ApiError, ErrorCode};

use super::AppState;

/// The admin token, as app data of the admin listener.
pub struct AdminToken(pub String);

/// Compares without an early exit, so timing does not reveal a prefix match.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorize(req: &HttpRequest, token: &AdminToken) -> Result<(), ApiError> {
    let presented = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !token.0.is_empty() && constant_time_eq(presented.as_bytes(), token.0.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::Unauthorized,
            "send Authorization: Bearer <admin token>",
        ))
    }
}

/// The routing table with live state: mode, health, circuit, latency, create rate.
#[utoipa::path(
    get, path = "/admin/units", tag = "admin",
    security(("bearer" = [])),
    responses((status = 200, body = EngineStatus), (status = 401, body = crate::error::ErrorResponse))
)]
#[get("/admin/units")]
pub async fn list_units(
    req: HttpRequest,
    token: web::Data<AdminToken>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &token)?;
    let status =
        state.dispatcher.send(Status).await.map_err(|_| {
            ApiError::new(ErrorCode::NoUnitAvailable, "the dispatcher is not running")
        })?;
    Ok(HttpResponse::Ok().json(status))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(list_units)
        .default_service(web::to(super::not_found));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_exactly() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
