//! The admin API, on its own listener. Every call needs
//! `Authorization: Bearer <token>` (see `auth.rs`), its own OpenAPI
//! document (`openapi.rs`) included.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};

use super::auth::Authorized;
use super::dto::{
    AddUnitRequest, FailoverRequest, MerchantRequest, PartitionRequest, UnitPatchRequest,
};
use super::error::{ApiError, ErrorResponse};
use super::extract::{IfMatch, JsonBody};
use super::state::AppState;
use crate::actors::dispatcher::{
    AddUnit, AdminStatus, EngineStatus, Failover, FailoverReport, GetMerchant, ListPartitions,
    MerchantRoute, PartitionTable, PatchUnit, SetMerchant, SetPartition, UnitChanged,
};
use crate::domain::order_id::MAX_UNIT;
use crate::domain::values::{MerchantId, is_identifier};

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
    _: Authorized,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let status = state.tell(AdminStatus).await?;
    Ok(HttpResponse::Ok().json(status))
}

/// Changes one unit's routing settings: `mode`, `partition`, `temperature`,
/// `weight`, or moves it to another database server (`primary_url`,
/// `replica_url`: a copy of its database, checked to hold this unit's
/// orders, while the unit is `disabled`; the unit's next calls go there,
/// calls in flight finish on the old server, and its sequence continues
/// past every order the new one holds). This engine process's next creates follow it; the answer
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
        (status = 400, description = "`validation_failed` (a malformed body, header or URL) or `invalid_change` (`field` names the setting; `primary_url`: a database another unit uses, or one that is not a copy of this unit's)", body = ErrorResponse),
        (status = 401, description = "`unauthorized`", body = ErrorResponse),
        (status = 404, description = "`unit_not_found`", body = ErrorResponse),
        (status = 409, description = "`unit_not_disabled` (another database for a unit that is not `disabled`) or `table_not_kept` (another database, and no state file or control store keeps the table)", body = ErrorResponse),
        (status = 412, description = "`version_mismatch`: the table is no longer at the `If-Match` version", body = ErrorResponse),
        (status = 503, description = "`table_not_saved` (the change could not be kept) or `unit_not_started` (the new database cannot be reached or migrated); nothing changed", body = ErrorResponse),
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
    let unit = unit_id(&id)?;
    let answer = state
        .tell(PatchUnit {
            unit,
            patch,
            if_match: if_match.table_version(),
            who: who(&req),
        })
        .await??;
    Ok(changed(answer.version, &answer))
}

/// Adds a unit to the routing table: its database is opened (created
/// when it does not exist yet), migrated and checked to be no other unit's,
/// its actor started, and only then does it join the table and take
/// creates by its weight. Its order ids carry its id; its sequence starts
/// fresh; no existing order moves. It is not a home of idempotency keys
/// (the key ring is fixed), so it holds the key records only of its own
/// orders.
#[utoipa::path(
    post, path = "/admin/units", tag = "admin",
    security(("bearer" = [])),
    params(("If-Match" = Option<String>, Header)),
    request_body = AddUnitRequest,
    responses(
        (status = 201, body = UnitChanged, headers(("ETag" = String, description = "The routing table's new version, quoted."))),
        (status = 400, description = "`validation_failed` (a malformed body, id or URL) or `invalid_change` (`field` names it: an id in use, an unknown partition, a database another unit or deployment uses)", body = ErrorResponse),
        (status = 401, description = "`unauthorized`", body = ErrorResponse),
        (status = 412, description = "`version_mismatch`: the table is no longer at the `If-Match` version", body = ErrorResponse),
        (status = 503, description = "`unit_not_started` (its database cannot be reached or migrated) or `table_not_saved`; the unit did not join", body = ErrorResponse),
    )
)]
pub async fn add_unit(
    _: Authorized,
    req: HttpRequest,
    state: web::Data<AppState>,
    if_match: IfMatch,
    body: JsonBody<AddUnitRequest>,
) -> Result<HttpResponse, ApiError> {
    let (id, entry) = body.0.into_unit()?;
    let answer = state
        .tell(AddUnit {
            id,
            entry,
            if_match: if_match.table_version(),
            who: who(&req),
        })
        .await??;
    Ok(HttpResponse::Created()
        .insert_header((header::ETAG, format!("\"{}\"", answer.version)))
        .json(answer))
}

fn unit_id(id: &str) -> Result<u16, ApiError> {
    id.parse::<u16>()
        .ok()
        .filter(|u| *u <= MAX_UNIT && !id.starts_with('+'))
        .ok_or_else(|| ApiError::validation("id", format!("a unit id is 0 to {MAX_UNIT}")))
}

/// Promotes one of the unit's replicas (`to`, or the one that has received
/// the most) to its primary. `planned` (the primary answers): the primary
/// is fenced (no write from any engine process can commit there any more),
/// the replica applies everything it committed, is promoted, and the unit
/// is repointed at it. `emergency` (the primary is dead): every replica
/// stops receiving, the most advanced applies what it received (with
/// semi-synchronous replication, every acknowledged commit), is promoted
/// and the unit repointed; the old primary is fenced as soon as it
/// answers. The unit's other replicas are re-pointed at the new primary
/// and stay its replicas. The unit's calls answer `503` with `Retry-After`
/// while it switches; other units are not touched. Every step is logged
/// and counted; the answer lists them.
#[utoipa::path(
    post, path = "/admin/units/{id}/failover", tag = "admin",
    security(("bearer" = [])),
    params(("id" = u16, Path)),
    request_body = FailoverRequest,
    responses(
        (status = 200, body = FailoverReport),
        (status = 400, description = "`validation_failed` (a malformed body, id or URL) or `invalid_change` (`to` names the primary itself, or a server that does not hold this unit's database)", body = ErrorResponse),
        (status = 401, description = "`unauthorized`", body = ErrorResponse),
        (status = 404, description = "`unit_not_found`", body = ErrorResponse),
        (status = 409, description = "`no_replica` (nothing to promote) or `table_not_kept` (no state file or control store would keep the new primary)", body = ErrorResponse),
        (status = 503, description = "`failover_failed`: a step failed (the message names it)", body = ErrorResponse),
    )
)]
pub async fn failover_unit(
    _: Authorized,
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: JsonBody<FailoverRequest>,
) -> Result<HttpResponse, ApiError> {
    let (mode, to, skip_unreachable_replicas) = body.0.into_parts()?;
    let unit = unit_id(&id)?;
    let report = state
        .tell(Failover {
            unit,
            mode,
            to,
            skip_unreachable_replicas,
            who: who(&req),
        })
        .await??;
    Ok(changed(report.version, &report))
}

/// The caller, for the change log.
fn who(req: &HttpRequest) -> String {
    req.peer_addr()
        .map_or_else(|| "unknown".to_owned(), |a| a.to_string())
}

/// The answer to a change: `body`, with the table's version as `ETag`.
fn changed<T: serde::Serialize>(version: u64, body: &T) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::ETAG, format!("\"{version}\"")))
        .json(body)
}

fn merchant_id(raw: &str) -> Result<String, ApiError> {
    MerchantId::parse(raw.to_owned())
        .map(|m| m.as_str().to_owned())
        .map_err(|e| ApiError::validation("merchant_id", format!("merchant_id {}", e.0)))
}

/// The partition a merchant's creates go to.
#[utoipa::path(
    get, path = "/admin/merchants/{merchant_id}", tag = "admin",
    security(("bearer" = [])),
    params(("merchant_id" = String, Path)),
    responses(
        (status = 200, body = MerchantRoute),
        (status = 400, description = "`validation_failed`", body = ErrorResponse),
        (status = 401, description = "`unauthorized`", body = ErrorResponse),
    )
)]
pub async fn get_merchant(
    _: Authorized,
    state: web::Data<AppState>,
    merchant: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let merchant = merchant_id(&merchant)?;
    Ok(HttpResponse::Ok().json(state.tell(GetMerchant { merchant }).await?))
}

/// Maps a merchant's creates to a partition from now on (a key merchant's
/// own partition, say). Its existing orders stay where they are, reachable
/// as before.
#[utoipa::path(
    put, path = "/admin/merchants/{merchant_id}", tag = "admin",
    security(("bearer" = [])),
    params(("merchant_id" = String, Path), ("If-Match" = Option<String>, Header)),
    request_body = MerchantRequest,
    responses(
        (status = 200, body = MerchantRoute, headers(("ETag" = String, description = "The routing table's new version, quoted."))),
        (status = 400, description = "`validation_failed` or `invalid_change` (an unknown partition)", body = ErrorResponse),
        (status = 401, description = "`unauthorized`", body = ErrorResponse),
        (status = 412, description = "`version_mismatch`: the table is no longer at the `If-Match` version", body = ErrorResponse),
        (status = 503, description = "`table_not_saved`: the change could not be kept; nothing changed", body = ErrorResponse),
    )
)]
pub async fn put_merchant(
    _: Authorized,
    req: HttpRequest,
    state: web::Data<AppState>,
    merchant: web::Path<String>,
    if_match: IfMatch,
    body: JsonBody<MerchantRequest>,
) -> Result<HttpResponse, ApiError> {
    let merchant = merchant_id(&merchant)?;
    let route = state
        .tell(SetMerchant {
            merchant,
            partition: body.0.partition,
            if_match: if_match.table_version(),
            who: who(&req),
        })
        .await??;
    Ok(changed(route.version, &route))
}

/// The partitions the routing table knows, with their spill rules and units.
#[utoipa::path(
    get, path = "/admin/partitions", tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, body = PartitionTable),
        (status = 401, description = "`unauthorized`", body = ErrorResponse),
    )
)]
pub async fn list_partitions(
    _: Authorized,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.tell(ListPartitions).await?))
}

/// Sets the partitions a partition's creates spill into when none of its
/// own units can take them (a new name makes a new partition, which units
/// and merchants may then be moved into).
#[utoipa::path(
    put, path = "/admin/partitions/{name}", tag = "admin",
    security(("bearer" = [])),
    params(("name" = String, Path), ("If-Match" = Option<String>, Header)),
    request_body = PartitionRequest,
    responses(
        (status = 200, body = PartitionTable, headers(("ETag" = String, description = "The routing table's new version, quoted."))),
        (status = 400, description = "`validation_failed` or `invalid_change` (`field` names it: an unknown partition, a spill into `canary` or `cold`, a partition named twice)", body = ErrorResponse),
        (status = 401, description = "`unauthorized`", body = ErrorResponse),
        (status = 412, description = "`version_mismatch`: the table is no longer at the `If-Match` version", body = ErrorResponse),
        (status = 503, description = "`table_not_saved`: the change could not be kept; nothing changed", body = ErrorResponse),
    )
)]
pub async fn put_partition(
    _: Authorized,
    req: HttpRequest,
    state: web::Data<AppState>,
    name: web::Path<String>,
    if_match: IfMatch,
    body: JsonBody<PartitionRequest>,
) -> Result<HttpResponse, ApiError> {
    let name = name.into_inner();
    if !is_identifier(&name) {
        return Err(ApiError::validation(
            "name",
            "a partition name is 1-64 characters of [A-Za-z0-9_.:-]",
        ));
    }
    let table = state
        .tell(SetPartition {
            name,
            spill_to: body.0.spill_to,
            if_match: if_match.table_version(),
            who: who(&req),
        })
        .await??;
    Ok(changed(table.version, &table))
}
