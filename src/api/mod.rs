//! The RPC front end: HTTP/1.1 + JSON. Thin by design: parse and validate, send
//! one message to the dispatcher, map the reply (see `orders.rs`).

pub mod admin;
pub mod dto;
pub mod extract;
mod health;
pub mod middleware;
pub mod orders;

use actix::Addr;
use actix_web::{HttpRequest, HttpResponse, web};
use metrics_exporter_prometheus::PrometheusHandle;
use utoipa::OpenApi;

use crate::actors::dispatcher::Dispatcher;
use crate::error::{ApiError, ErrorCode};

/// What every handler can reach: the dispatcher, and nothing else.
pub struct AppState {
    pub dispatcher: Addr<Dispatcher>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "order-engine",
        description = "Create, pay, close, refund and query orders stored in trading units. \
                       Every non-2xx reply has the body `{\"error\":{\"code\",\"message\",\"field\"}}`."
    ),
    paths(
        orders::create_order,
        orders::get_order,
        orders::pay_order,
        orders::close_order,
        orders::refund_order,
        orders::list_refunds,
        orders::lookup_by_merchant,
        orders::list_user_orders,
        health::healthz,
        health::readyz,
        admin::list_units,
    ),
    components(schemas(crate::error::ErrorResponse, crate::error::ErrorDetail))
)]
pub struct ApiDoc;

/// Registers every public route on an actix-web app.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::QueryConfig::default()
            .error_handler(|e, _| ApiError::validation("query", e.to_string()).into()),
    )
    .app_data(
        web::PathConfig::default()
            .error_handler(|e, _| ApiError::validation("path", e.to_string()).into()),
    )
    .service(orders::create_order)
    .service(orders::get_order)
    .service(orders::pay_order)
    .service(orders::close_order)
    .service(orders::refund_order)
    .service(orders::list_refunds)
    .service(orders::lookup_by_merchant)
    .service(orders::list_user_orders)
    .service(health::healthz)
    .service(health::readyz)
    .route("/openapi.json", web::get().to(openapi_json))
    .route("/metrics", web::get().to(metrics_text))
    .default_service(web::to(not_found));
}

/// Prometheus text format.
async fn metrics_text(handle: web::Data<PrometheusHandle>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(handle.render())
}

async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}

pub(crate) async fn not_found(req: HttpRequest) -> HttpResponse {
    use actix_web::ResponseError;
    ApiError::new(
        ErrorCode::RouteNotFound,
        format!("no route for {} {}", req.method(), req.path()),
    )
    .error_response()
}
