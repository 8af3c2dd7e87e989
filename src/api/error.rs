//! The error contract: every stable error code with its HTTP status and its
//! meaning, as one table (the `error_codes!` rows below), and the mapping
//! from the engine's errors into it.
//!
//! The table generates the enum, the code's string, its status, and the
//! list `/openapi.json` and the README show (a test compares the README's
//! table with this one). Callers branch on `code`, so codes never change
//! meaning; new ones may be added. A 5xx other than 503 is a bug.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::{Serialize, Serializer};
use utoipa::ToSchema;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};

use crate::actors::EngineError;
use crate::domain::RuleError;

/// Seconds a caller should wait before retrying a 429 or 503.
pub const RETRY_AFTER_SECS: u32 = 1;

/// One row per code: `Variant = "code", status, "meaning"`.
macro_rules! error_codes {
    ($($variant:ident = $code:literal, $status:literal, $meaning:literal;)*) => {
        /// A stable, machine-readable error code.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($variant,)*
        }

        impl ErrorCode {
            /// Every code, in the table's order.
            pub const ALL: &[ErrorCode] = &[$(Self::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $code,)*
                }
            }

            fn status_u16(self) -> u16 {
                match self {
                    $(Self::$variant => $status,)*
                }
            }

            /// When a caller gets it, in the README's words.
            pub fn meaning(self) -> &'static str {
                match self {
                    $(Self::$variant => $meaning,)*
                }
            }
        }
    };
}

error_codes! {
    ValidationFailed = "validation_failed", 400,
        "a field breaks its rule (`field` names it), an unknown field, a wrong type, or a bad path, query or header value";
    MalformedJson = "malformed_json", 400, "the body is not JSON";
    InvalidOrderId = "invalid_order_id", 400,
        "wrong length, non-digits, bad check digit, impossible time";
    InvalidChange = "invalid_change", 400,
        "an admin change the routing table cannot take (an unknown partition, a setting not changeable live); `field` names it";
    Unauthorized = "unauthorized", 401,
        "an admin call without the right `Authorization: Bearer <token>`";
    RouteNotFound = "not_found", 404, "no route has this path";
    OrderNotFound = "order_not_found", 404,
        "no such order (including ids of units not in the routing table)";
    UnitNotFound = "unit_not_found", 404, "an admin call names a unit not in the routing table";
    MethodNotAllowed = "method_not_allowed", 405,
        "the path exists but not with this method (`Allow` lists the methods it has)";
    IdempotencyConflict = "idempotency_conflict", 409,
        "same `(merchant_id, out_trade_no)` or `refund_id` with a different body";
    UnitNotDisabled = "unit_not_disabled", 409,
        "`PATCH /admin/units/{id}` names another database for a unit that is not `disabled` (disable it first)";
    TableNotKept = "table_not_kept", 409,
        "`PATCH /admin/units/{id}` names another database, but this engine keeps no routing table (no `admin.state_file` or `admin.control_url`): a restart would go back to the old one";
    NoReplica = "no_replica", 409,
        "`POST /admin/units/{id}/failover` for a unit with no replica to promote (no `replica_urls` and no `to`, or an embedded SQLite unit)";
    InvalidTransition = "invalid_transition", 409,
        "e.g. pay a closed order, close a paid one, pay again with another ref";
    AmountMismatch = "amount_mismatch", 409, "the payment amount is not the order amount";
    RefundExceedsPaid = "refund_exceeds_paid", 409, "refunds would add up past `paid_amount`";
    VersionMismatch = "version_mismatch", 412,
        "`If-Match` names a version the order (or, on the admin API, the routing table) is no longer at";
    PayloadTooLarge = "payload_too_large", 413, "body over 64 KiB";
    Overloaded = "overloaded", 429,
        "admission control: more than `server.max_in_flight` requests at once (with `Retry-After`)";
    Internal = "internal_error", 500,
        "a bug: never expected; please report it with the `X-Request-Id`";
    NoUnitAvailable = "no_unit_available", 503,
        "no unit in the merchant's partition can take a create (with `Retry-After`)";
    UnitUnavailable = "unit_unavailable", 503,
        "the order's unit cannot answer now (with `Retry-After`)";
    TableNotSaved = "table_not_saved", 503,
        "an admin change could not be written where the routing table is kept (the state file, or the control store when it is unreachable); nothing changed, unless the message says the store did not confirm it (with `Retry-After`)";
    UnitNotStarted = "unit_not_started", 503,
        "`POST /admin/units`, or a `PATCH` moving a unit: the unit's (new) database could not be opened, created or migrated in time; nothing changed (with `Retry-After`)";
    FailoverFailed = "failover_failed", 503,
        "a failover step failed (the message names it). Before the promotion the unit goes on on its old primary; after it, the unit stays unavailable until the call is repeated (with `Retry-After`)";
}

impl ErrorCode {
    pub fn status(self) -> StatusCode {
        StatusCode::from_u16(self.status_u16()).expect("the table holds valid statuses")
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// In the OpenAPI document: the list of codes, each with its status and
/// meaning in the description.
impl utoipa::PartialSchema for ErrorCode {
    fn schema() -> RefOr<Schema> {
        let rows: Vec<String> = Self::ALL
            .iter()
            .map(|c| format!("- `{}` ({}): {}", c.as_str(), c.status_u16(), c.meaning()))
            .collect();
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(Self::ALL.iter().map(|c| c.as_str())))
            .description(Some(format!(
                "Stable, machine-readable: branch on this. New codes may be added.\n\n{}",
                rows.join("\n")
            )))
            .into()
    }
}

impl ToSchema for ErrorCode {}

/// The unit a call went to, left in the response's extensions by handlers
/// and errors so that the access log can name it.
#[derive(Debug, Clone, Copy)]
pub struct UnitTag(pub u16);

/// An error as the caller sees it: `{"error":{"code","message","field"}}`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub field: Option<String>,
    /// The unit the failed call went to, for the access log.
    pub unit: Option<u16>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            field: None,
            unit: None,
        }
    }

    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: Some(field.into()),
            ..Self::new(ErrorCode::ValidationFailed, message)
        }
    }
}

/// The body of every non-2xx reply.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorResponse {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    /// For people; may change.
    pub message: String,
    /// The offending field, for validation errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.code.status()
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code());
        if matches!(self.code.status_u16(), 429 | 503) {
            res.insert_header((header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS)));
        }
        let mut res = res.json(ErrorResponse {
            error: ErrorDetail {
                code: self.code,
                message: self.message.clone(),
                field: self.field.clone(),
            },
        });
        if let Some(unit) = self.unit {
            res.extensions_mut().insert(UnitTag(unit));
        }
        res
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let code = match &e {
            EngineError::NotFound => ErrorCode::OrderNotFound,
            EngineError::Rule(r) => match r {
                RuleError::InvalidTransition { .. } | RuleError::PaidWithOtherRef => {
                    ErrorCode::InvalidTransition
                }
                RuleError::AmountMismatch { .. } => ErrorCode::AmountMismatch,
                RuleError::RefundExceedsPaid { .. } => ErrorCode::RefundExceedsPaid,
                RuleError::VersionMismatch { .. } => ErrorCode::VersionMismatch,
                RuleError::RefundIdConflict => ErrorCode::IdempotencyConflict,
                RuleError::SectionsTooLarge { .. } => ErrorCode::ValidationFailed,
            },
            EngineError::IdempotencyConflict => ErrorCode::IdempotencyConflict,
            EngineError::NoUnitAvailable => ErrorCode::NoUnitAvailable,
            EngineError::UnitUnavailable { .. } => ErrorCode::UnitUnavailable,
            EngineError::UnitNotFound { .. } => ErrorCode::UnitNotFound,
            EngineError::UnitNotDisabled { .. } => ErrorCode::UnitNotDisabled,
            EngineError::TableNotKept => ErrorCode::TableNotKept,
            EngineError::TableMoved { .. } => ErrorCode::VersionMismatch,
            EngineError::InvalidChange { .. } => ErrorCode::InvalidChange,
            EngineError::TableNotSaved(_) => ErrorCode::TableNotSaved,
            EngineError::UnitNotStarted(_) => ErrorCode::UnitNotStarted,
            EngineError::NoReplica { .. } => ErrorCode::NoReplica,
            EngineError::FailoverFailed { .. } => ErrorCode::FailoverFailed,
            EngineError::Internal(_) => ErrorCode::Internal,
        };
        if code == ErrorCode::Internal {
            tracing::error!(error = %e, "internal error");
        }
        let field = match &e {
            EngineError::InvalidChange { field, .. } => field.map(str::to_owned),
            _ => None,
        };
        ApiError {
            unit: e.unit(),
            field,
            ..ApiError::new(code, e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_only_503_is_an_expected_5xx() {
        let mut names: Vec<_> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ErrorCode::ALL.len());
        for &c in ErrorCode::ALL {
            assert!(c.status().is_client_error() || c.status().is_server_error());
            if c.status().is_server_error() && c != ErrorCode::Internal {
                assert_eq!(c.status(), StatusCode::SERVICE_UNAVAILABLE, "{c:?}");
            }
            assert!(!c.meaning().contains('|'), "{c:?}: a table cell");
        }
    }

    /// The README's error table is this table, row for row.
    #[test]
    fn the_readme_lists_every_code_as_the_code_does() {
        let readme = include_str!("../../README.md");
        let header = "| code | status | meaning |";
        let table: Vec<&str> = readme
            .lines()
            .skip_while(|l| l.trim() != header)
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .collect();
        let ours: Vec<String> = ErrorCode::ALL
            .iter()
            .map(|c| {
                format!(
                    "| `{}` | {} | {} |",
                    c.as_str(),
                    c.status_u16(),
                    c.meaning()
                )
            })
            .collect();
        assert_eq!(
            table, ours,
            "README.md's error table differs from src/api/error.rs"
        );
    }
}
