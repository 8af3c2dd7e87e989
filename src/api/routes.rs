//! Every route of both listeners, one resource per path: a method the path
//! does not serve answers `405 method_not_allowed` with `Allow`, and a path
//! no route has answers `404 not_found`, both with the error body.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};

use super::error::{ApiError, ErrorCode};
use super::{admin, health, openapi, orders, sections};

/// A path's resource; other methods than `allow` answer `405`.
fn resource(path: &str, allow: &'static str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(move |req: HttpRequest| async move {
        method_not_allowed(&req, allow)
    }))
}

/// Registers every public route on an actix-web app.
pub fn configure(cfg: &mut web::ServiceConfig) {
    use web::{get, post};
    cfg.app_data(
        web::QueryConfig::default()
            .error_handler(|e, _| ApiError::validation("query", e.to_string()).into()),
    )
    .app_data(
        web::PathConfig::default()
            .error_handler(|e, _| ApiError::validation("path", e.to_string()).into()),
    )
    .service(resource("/v1/orders", "POST").route(post().to(orders::create_order)))
    .service(resource("/v1/orders/{order_id}", "GET").route(get().to(orders::get_order)))
    .service(resource("/v1/orders/{order_id}/pay", "POST").route(post().to(orders::pay_order)))
    .service(resource("/v1/orders/{order_id}/close", "POST").route(post().to(orders::close_order)))
    .service(
        resource("/v1/orders/{order_id}/refunds", "GET, POST")
            .route(get().to(orders::list_refunds))
            .route(post().to(orders::refund_order)),
    )
    .service(
        resource("/v1/orders/{order_id}/sections/{section}", "PUT, DELETE")
            .route(web::put().to(sections::put_section))
            .route(web::delete().to(sections::delete_section)),
    )
    .service(
        resource("/v1/merchants/{merchant_id}/orders/{out_trade_no}", "GET")
            .route(get().to(orders::lookup_by_merchant)),
    )
    .service(
        resource("/v1/users/{user_id}/orders", "GET").route(get().to(orders::list_user_orders)),
    )
    .service(resource("/healthz", "GET").route(get().to(health::healthz)))
    .service(resource("/readyz", "GET").route(get().to(health::readyz)))
    .service(resource("/openapi.json", "GET").route(get().to(openapi::public_document)))
    .service(resource("/metrics", "GET").route(get().to(health::metrics_text)))
    .default_service(web::to(not_found));
}

/// Registers every admin route (the admin listener).
pub fn configure_admin(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::PathConfig::default()
            .error_handler(|e, _| ApiError::validation("path", e.to_string()).into()),
    )
    .service(
        resource("/admin/units", "GET, POST")
            .route(web::get().to(admin::list_units))
            .route(web::post().to(admin::add_unit)),
    )
    .service(resource("/admin/units/{id}", "PATCH").route(web::patch().to(admin::patch_unit)))
    .service(
        resource("/admin/units/{id}/failover", "POST").route(web::post().to(admin::failover_unit)),
    )
    .service(
        resource("/admin/merchants/{merchant_id}", "GET, PUT")
            .route(web::get().to(admin::get_merchant))
            .route(web::put().to(admin::put_merchant)),
    )
    .service(resource("/admin/partitions", "GET").route(web::get().to(admin::list_partitions)))
    .service(resource("/admin/partitions/{name}", "PUT").route(web::put().to(admin::put_partition)))
    .service(resource("/openapi.json", "GET").route(web::get().to(openapi::admin_document)))
    .default_service(web::to(not_found));
}

async fn not_found(req: HttpRequest) -> HttpResponse {
    ApiError::new(
        ErrorCode::RouteNotFound,
        format!("no route for {} {}", req.method(), req.path()),
    )
    .error_response()
}

fn method_not_allowed(req: &HttpRequest, allow: &'static str) -> HttpResponse {
    let mut res = ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!(
            "{} does not serve {}; it serves {allow}",
            req.path(),
            req.method()
        ),
    )
    .error_response();
    res.headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(allow));
    res
}
