//! The OpenAPI documents: the public listener's (`GET /openapi.json`) and the
//! admin listener's (`GET /openapi.json` there, with the token).
//!
//! Most of each document is generated from the handlers' `#[utoipa::path]`
//! and the DTOs. What is the same for many operations is added here, once,
//! so that it cannot be forgotten on one: the exact schema of each path,
//! query and header parameter (by name), the `429` and `X-Request-Id` that
//! the middleware adds to every public reply, and `Retry-After` on every
//! `429` and `503`. `tests/openapi/` runs a schema-driven fuzzer against a
//! running engine to prove the document exact.

use std::sync::OnceLock;

use actix_web::{HttpResponse, web};
use serde_json::{Value, json};
use utoipa::OpenApi;

use super::auth::Authorized;
use super::state::AppState;

use super::dto::{
    AddUnitRequest, CloseRequest, CreateOrderRequest, FailoverRequest, MerchantRequest, OrderBody,
    OrderStatusBody, PartitionRequest, PayRequest, RefundBody, RefundList, RefundRequest,
    RefundResponse, UnitPatchRequest, UserOrdersPage,
};
use super::error::{ApiError, ErrorCode, ErrorDetail, ErrorResponse, RETRY_AFTER_SECS};
use super::orders::ConsistencyParam;
use super::{admin, health, orders, sections};
use crate::actors::dispatcher::{
    EngineStatus, FailoverMode, FailoverReport, ListPartitions, MerchantRoute, PartitionEntry,
    PartitionReadiness, PartitionStatus, PartitionTable, Readiness, ReplicaOutcome, ReplicaStatus,
    StepTook, TableStore, UnitChanged, UnitStatus,
};
use crate::actors::health::FailoverRecord;
use crate::config::{NO_SPILL_INTO, Temperature, UnitMode};
use crate::domain::order_id::{MAX_UNIT, ORDER_ID_LEN};
use crate::domain::values::{IDENTIFIER_PATTERN, MAX_IDENTIFIER_LEN};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "order-engine",
        description = "Create, pay, close, refund and query orders stored in trading units. \
                       Every non-2xx reply has the body `{\"error\":{\"code\",\"message\",\"field\"}}`; \
                       `ErrorCode` lists the codes. A method a path does not serve answers \
                       `405 method_not_allowed` with `Allow`."
    ),
    paths(
        orders::create_order,
        orders::get_order,
        orders::pay_order,
        orders::close_order,
        orders::refund_order,
        orders::list_refunds,
        sections::put_section,
        sections::delete_section,
        orders::lookup_by_merchant,
        orders::list_user_orders,
        health::healthz,
        health::readyz,
        public_document,
        health::metrics_text,
    ),
    components(schemas(
        ErrorResponse,
        ErrorDetail,
        ErrorCode,
        ConsistencyParam,
        OrderStatusBody,
        CreateOrderRequest,
        PayRequest,
        CloseRequest,
        RefundRequest,
        OrderBody,
        RefundBody,
        RefundResponse,
        RefundList,
        UserOrdersPage,
        Readiness,
        PartitionReadiness,
    ))
)]
struct PublicDoc;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "order-engine admin",
        description = "The admin listener. Every call needs `Authorization: Bearer <token>`."
    ),
    paths(
        admin::list_units,
        admin::add_unit,
        admin::patch_unit,
        admin::failover_unit,
        admin::get_merchant,
        admin::put_merchant,
        admin::list_partitions,
        admin::put_partition,
        admin_document
    ),
    components(schemas(
        AddUnitRequest,
        UnitPatchRequest,
        MerchantRequest,
        PartitionRequest,
        MerchantRoute,
        PartitionTable,
        PartitionEntry,
        UnitChanged,
        ErrorResponse,
        ErrorDetail,
        ErrorCode,
        EngineStatus,
        PartitionStatus,
        UnitStatus,
        TableStore,
        UnitMode,
        Temperature,
        FailoverRequest,
        FailoverReport,
        FailoverMode,
        StepTook,
        ReplicaOutcome,
        ReplicaStatus,
        FailoverRecord,
    ))
)]
struct AdminDoc;

/// The public listener's OpenAPI document.
#[utoipa::path(
    get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "This document", body = Object))
)]
pub async fn public_document() -> HttpResponse {
    HttpResponse::Ok().json(public())
}

/// The admin listener's OpenAPI document.
#[utoipa::path(
    get, path = "/openapi.json", tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "This document", body = Object),
        (status = 401, description = "`unauthorized`", body = ErrorResponse),
    )
)]
pub async fn admin_document(
    _: Authorized,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    // A unit may be moved only into a partition the table knows: the
    // document names them, as the routing table has them now.
    let status = state.tell(ListPartitions).await?;
    let mut doc = admin().clone();
    let names: Vec<Value> = status.partitions.iter().map(|p| json!(p.name)).collect();
    let mut or_absent = names.clone();
    or_absent.push(Value::Null); // absent: the partition stays
    at(
        &mut doc,
        "/components/schemas/UnitPatchRequest/properties/partition",
    )["enum"] = json!(or_absent);
    // A unit is added under an id no unit has.
    let ids: Vec<u16> = status
        .partitions
        .iter()
        .flat_map(|p| p.units.clone())
        .collect();
    at(&mut doc, "/components/schemas/AddUnitRequest/properties/id")["not"] =
        json!({ "enum": ids });
    for schema in ["MerchantRequest", "AddUnitRequest"] {
        let path = format!("/components/schemas/{schema}/properties/partition");
        at(&mut doc, &path)["enum"] = json!(names);
    }
    let targets: Vec<&Value> = names
        .iter()
        .filter(|n| !NO_SPILL_INTO.iter().any(|x| *n == x))
        .collect();
    let spill = at(
        &mut doc,
        "/components/schemas/PartitionRequest/properties/spill_to",
    );
    spill["items"]["enum"] = json!(targets);
    spill["uniqueItems"] = json!(true);
    Ok(HttpResponse::Ok().json(doc))
}

/// The public listener's document.
pub fn public() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = serde_json::to_value(PublicDoc::openapi()).expect("the document serializes");
        shape_parameters(&mut doc);
        shape_bodies(&mut doc);
        link_created_orders(&mut doc);
        add_shared_replies(&mut doc, true);
        doc
    })
}

/// The admin listener's document.
pub fn admin() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = serde_json::to_value(AdminDoc::openapi()).expect("the document serializes");
        doc["components"]["securitySchemes"] = json!({
            "bearer": {"type": "http", "scheme": "bearer"}
        });
        shape_parameters(&mut doc);
        // No body (or `{}`) changes nothing.
        at(&mut doc, "/paths/~1admin~1units~1{id}/patch/requestBody")["required"] = json!(false);
        add_shared_replies(&mut doc, false);
        doc
    })
}

/// An `If-Match` value the server accepts: a version (1 to 18 digits, no
/// leading zero), bare or quoted, optionally weak (`W/`).
pub const IF_MATCH_PATTERN: &str = r#"^(W/)?("[1-9][0-9]{0,17}"|[1-9][0-9]{0,17})$"#;
/// A user-list cursor: what `next_cursor` holds (opaque to callers).
/// A consistency token (`domain::replication::ConsistencyToken`): a unit,
/// then a MariaDB position (GTIDs `domain-server-seq`), possibly empty.
/// Empty is no token.
pub const TOKEN_PATTERN: &str =
    r"^([0-9]{1,4}:([0-9]{1,9}-[0-9]{1,9}-[0-9]{1,18}(,[0-9]{1,9}-[0-9]{1,9}-[0-9]{1,18})*)?)?$";
pub const CURSOR_PATTERN: &str = r"^[0-9a-f]{1,15}\.[0-9]{28}$";

/// The schema of a parameter, by name: every route that has one shares it.
fn parameter_schema(name: &str) -> Option<(Value, &'static str)> {
    let identifier = || {
        json!({"type": "string", "minLength": 1, "maxLength": MAX_IDENTIFIER_LEN,
               "pattern": IDENTIFIER_PATTERN})
    };
    Some(match name {
        "order_id" => (
            json!({"type": "string", "minLength": ORDER_ID_LEN, "maxLength": ORDER_ID_LEN,
                   "pattern": format!("^[0-9]{{{ORDER_ID_LEN}}}$"), "format": "order-id"}),
            "28 digits: layout version, unit, UTC time (yyMMddHHmmss), the unit's sequence, \
             and a Damm check digit over the others (format `order-id`). A mistyped id is \
             `400 invalid_order_id`; an id of a unit not in the routing table, \
             `404 order_not_found`.",
        ),
        "merchant_id" => (identifier(), "The merchant."),
        "out_trade_no" => (identifier(), "The merchant's own order number."),
        "user_id" => (identifier(), "The user."),
        "If-Match" => (
            json!({"type": "string", "pattern": IF_MATCH_PATTERN}),
            "The version the caller saw (an order's `ETag`; on the admin API, the routing \
             table's `version`): the change is made only if it is still current, else \
             `412 version_mismatch`.",
        ),
        "X-Consistency-Token" => (
            json!({"type": "string", "pattern": TOKEN_PATTERN}),
            "A consistency token a write answered (opaque). With `consistency=eventual` the \
             read is served by a replica only once it has applied that write, otherwise by \
             the primary; a token of another unit, or an empty value, asks nothing of this \
             read. Any other value is `400 validation_failed`.",
        ),
        "id" => (
            json!({"type": "integer", "minimum": 0, "maximum": MAX_UNIT}),
            "The unit's id.",
        ),
        "name" => (identifier(), "The partition."),
        "section" => (identifier(), "The section's name."),
        "cursor" => (
            json!({"type": "string", "pattern": CURSOR_PATTERN, "format": "order-cursor"}),
            "`next_cursor` from the previous page (format `order-cursor`); any other value is \
             `400 validation_failed`.",
        ),
        "limit" => (
            json!({"type": "integer", "minimum": 1, "maximum": orders::MAX_PAGE}),
            "Orders per page, 1-100 (default 20).",
        ),
        _ => return None,
    })
}

fn operations(doc: &mut Value) -> impl Iterator<Item = &mut Value> {
    doc["paths"]
        .as_object_mut()
        .into_iter()
        .flat_map(|paths| paths.values_mut())
        .filter_map(Value::as_object_mut)
        .flat_map(|ops| ops.values_mut())
}

/// Gives every named parameter its exact schema.
fn shape_parameters(doc: &mut Value) {
    for op in operations(doc) {
        let parameters = op.get_mut("parameters").and_then(Value::as_array_mut);
        for p in parameters.into_iter().flatten() {
            let name = p["name"].as_str().unwrap_or_default().to_owned();
            if let Some((schema, description)) = parameter_schema(&name) {
                p["schema"] = schema;
                p["description"] = json!(description);
            }
        }
    }
}

/// What the derived body schemas cannot say: section names are identifiers.
fn shape_bodies(doc: &mut Value) {
    let sections = json!({
        "type": ["object", "null"],
        "propertyNames": {"pattern": IDENTIFIER_PATTERN, "minLength": 1,
                          "maxLength": MAX_IDENTIFIER_LEN},
        "additionalProperties": true,
        "description": "Named JSON sections (items, shipping, ...): names are identifiers, \
                        values any JSON; each is stored and returned as the JSON text it was \
                        sent in. Absent or null: none.",
    });
    *at(
        doc,
        "/components/schemas/CreateOrderRequest/properties/sections",
    ) = sections;
    *at(
        doc,
        "/components/schemas/UserOrdersPage/properties/next_cursor",
    ) = json!({
        "type": "string", "pattern": CURSOR_PATTERN, "format": "order-cursor",
        "description": "Pass as `?cursor=` for the next page; absent on the last page.",
    });
    // Closing takes no fields: an empty body reads as `{}`.
    at(
        doc,
        "/paths/~1v1~1orders~1{order_id}~1close/post/requestBody",
    )["required"] = json!(false);
}

/// The node at `pointer`, which the generated document must have (indexing
/// would quietly add a node, and a renamed schema or path with it).
fn at<'a>(doc: &'a mut Value, pointer: &str) -> &'a mut Value {
    doc.pointer_mut(pointer)
        .unwrap_or_else(|| panic!("the generated OpenAPI document has no {pointer}"))
}

/// Links from a create's reply to what can be done with the order next, so
/// that a client generator (and the fuzzer's stateful phase) can follow an
/// order from its create.
fn link_created_orders(doc: &mut Value) {
    let by_id = |operation: &str, description: &str| {
        json!({"operationId": operation, "description": description,
               "parameters": {"order_id": "$response.body#/order_id"}})
    };
    let links = json!({
        "GetOrder": by_id("get_order", "Read the order."),
        "PayOrder": by_id("pay_order", "Pay the order."),
        "CloseOrder": by_id("close_order", "Close the order."),
        "RefundOrder": by_id("refund_order", "Refund the order once it is paid."),
        "ListRefunds": by_id("list_refunds", "The order's refunds."),
        "LookupByMerchant": {
            "operationId": "lookup_by_merchant",
            "description": "Find the order by the merchant's own number.",
            "parameters": {"merchant_id": "$response.body#/merchant_id",
                           "out_trade_no": "$response.body#/out_trade_no"},
        },
        "ListUserOrders": {
            "operationId": "list_user_orders",
            "description": "The user's orders.",
            "parameters": {"user_id": "$response.body#/user_id"},
        },
    });
    for status in ["201", "200"] {
        at(doc, &format!("/paths/~1v1~1orders/post/responses/{status}"))["links"] = links.clone();
    }
}

/// Adds what every reply shares: `Retry-After` on `429` and `503`, and on
/// the public listener (whose middleware does both) `X-Request-Id` on every
/// reply and `429 overloaded` on every operation.
fn add_shared_replies(doc: &mut Value, public: bool) {
    let retry_after = json!({
        "description": format!("Seconds to wait before retrying ({RETRY_AFTER_SECS})."),
        "schema": {"type": "integer"},
        "required": true,
    });
    let request_id = json!({
        "description": "The caller's `X-Request-Id` when it is 1-64 characters of \
                        `[A-Za-z0-9_.:-]`, else a generated one.",
        "schema": {"type": "string"},
        "required": true,
    });
    for op in operations(doc) {
        let responses = &mut op["responses"];
        if public {
            responses["429"] = json!({
                "description": "`overloaded`: more than `server.max_in_flight` requests at once",
                "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
            });
        }
        for (status, reply) in responses.as_object_mut().into_iter().flatten() {
            if status == "429" || status == "503" {
                reply["headers"]["Retry-After"] = retry_after.clone();
            }
            if public {
                reply["headers"]["X-Request-Id"] = request_id.clone();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_code_is_listed() {
        let codes = &public()["components"]["schemas"]["ErrorCode"]["enum"];
        let listed: Vec<&str> = codes
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        let ours: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(listed, ours);
    }

    #[test]
    fn every_parameter_has_an_exact_schema_and_admin_routes_are_not_public() {
        for doc in [public(), admin()] {
            for (path, ops) in doc["paths"].as_object().unwrap() {
                for (method, op) in ops.as_object().unwrap() {
                    for p in op["parameters"].as_array().into_iter().flatten() {
                        let name = p["name"].as_str().unwrap();
                        if name == "consistency" || name == "sections" {
                            continue; // an enum, and any list of names
                        }
                        assert!(
                            parameter_schema(name).is_some(),
                            "{method} {path}: parameter {name} has no exact schema"
                        );
                    }
                    assert!(op["responses"].as_object().unwrap().len() >= 2 || path == "/healthz");
                }
            }
        }
        let public_paths = public()["paths"].as_object().unwrap();
        assert!(public_paths.keys().all(|p| !p.starts_with("/admin")));
        assert!(admin()["paths"].get("/admin/units").is_some());
    }

    #[test]
    fn every_link_names_an_operation_and_its_parameters() {
        let doc = public();
        let mut operations = std::collections::HashMap::new();
        for ops in doc["paths"].as_object().unwrap().values() {
            for op in ops.as_object().unwrap().values() {
                let params: Vec<&str> = op["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| p["name"].as_str().unwrap())
                    .collect();
                operations.insert(op["operationId"].as_str().unwrap(), params);
            }
        }
        let links = doc["paths"]["/v1/orders"]["post"]["responses"]["201"]["links"]
            .as_object()
            .unwrap();
        assert_eq!(links.len(), 7);
        for (name, link) in links {
            let params = &operations[link["operationId"].as_str().unwrap()];
            for p in link["parameters"].as_object().unwrap().keys() {
                assert!(params.contains(&p.as_str()), "{name}: no parameter {p}");
            }
        }
    }

    #[test]
    fn the_patterns_match_what_the_server_accepts() {
        use crate::domain::UserCursor;
        let cursor = UserCursor {
            created_at_ms: 1_795_000_000_123,
            order_id: crate::domain::OrderId::parse("1000326112214301500000000425").unwrap(),
        }
        .encode();
        let (ms, id) = cursor.split_once('.').unwrap();
        assert!(
            ms.len() <= 15 && id.len() == 28,
            "{cursor} fits {CURSOR_PATTERN}"
        );
    }
}
