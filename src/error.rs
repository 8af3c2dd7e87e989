//! The error contract: every stable error code with its HTTP status, in one
//! table, and the mapping from engine errors into it.
//!
//! Callers branch on `code`, so codes never change meaning; new ones may be
//! added. A 5xx other than 503 is a bug.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::RuleError;
use crate::storage::StoreError;

/// Seconds a caller should wait before retrying a 503.
pub const RETRY_AFTER_SECS: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    ValidationFailed,
    InvalidOrderId,
    MalformedJson,
    Unauthorized,
    OrderNotFound,
    RouteNotFound,
    MethodNotAllowed,
    IdempotencyConflict,
    InvalidTransition,
    AmountMismatch,
    RefundExceedsPaid,
    VersionMismatch,
    PayloadTooLarge,
    UnsupportedMediaType,
    Overloaded,
    NoUnitAvailable,
    UnitUnavailable,
    Internal,
}

impl ErrorCode {
    /// Every code, for the OpenAPI document and tests.
    pub const ALL: [ErrorCode; 18] = [
        Self::ValidationFailed,
        Self::InvalidOrderId,
        Self::MalformedJson,
        Self::Unauthorized,
        Self::OrderNotFound,
        Self::RouteNotFound,
        Self::MethodNotAllowed,
        Self::IdempotencyConflict,
        Self::InvalidTransition,
        Self::AmountMismatch,
        Self::RefundExceedsPaid,
        Self::VersionMismatch,
        Self::PayloadTooLarge,
        Self::UnsupportedMediaType,
        Self::Overloaded,
        Self::NoUnitAvailable,
        Self::UnitUnavailable,
        Self::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ValidationFailed => "validation_failed",
            Self::InvalidOrderId => "invalid_order_id",
            Self::MalformedJson => "malformed_json",
            Self::Unauthorized => "unauthorized",
            Self::OrderNotFound => "order_not_found",
            Self::RouteNotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::IdempotencyConflict => "idempotency_conflict",
            Self::InvalidTransition => "invalid_transition",
            Self::AmountMismatch => "amount_mismatch",
            Self::RefundExceedsPaid => "refund_exceeds_paid",
            Self::VersionMismatch => "version_mismatch",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Overloaded => "overloaded",
            Self::NoUnitAvailable => "no_unit_available",
            Self::UnitUnavailable => "unit_unavailable",
            Self::Internal => "internal_error",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Self::ValidationFailed | Self::InvalidOrderId | Self::MalformedJson => {
                StatusCode::BAD_REQUEST
            }
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::OrderNotFound | Self::RouteNotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::IdempotencyConflict
            | Self::InvalidTransition
            | Self::AmountMismatch
            | Self::RefundExceedsPaid => StatusCode::CONFLICT,
            Self::VersionMismatch => StatusCode::PRECONDITION_FAILED,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            Self::NoUnitAvailable | Self::UnitUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

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
            code: ErrorCode::ValidationFailed,
            message: message.into(),
            field: Some(field.into()),
            unit: None,
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
    /// Stable, machine-readable: branch on this.
    #[schema(example = "validation_failed")]
    pub code: String,
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
        if matches!(self.code.status().as_u16(), 429 | 503) {
            res.insert_header((header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS)));
        }
        let mut res = res.json(ErrorResponse {
            error: ErrorDetail {
                code: self.code.as_str().to_string(),
                message: self.message.clone(),
                field: self.field.clone(),
            },
        });
        if let Some(unit) = self.unit {
            res.extensions_mut()
                .insert(crate::api::middleware::UnitTag(unit));
        }
        res
    }
}

/// Errors the engine (dispatcher and units) answers with.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("order not found")]
    NotFound,
    #[error(transparent)]
    Rule(#[from] RuleError),
    #[error(
        "this (merchant_id, out_trade_no) already names an order created from a different request"
    )]
    IdempotencyConflict,
    #[error("no trading unit can take the order now")]
    NoUnitAvailable,
    #[error("trading unit {unit} is unavailable")]
    UnitUnavailable { unit: u16 },
    #[error("internal error: {0}")]
    Internal(String),
}

impl EngineError {
    /// Maps a unit's storage error for a call routed to `unit`.
    pub fn from_store(unit: u16, e: StoreError) -> Self {
        match e {
            StoreError::NotFound => Self::NotFound,
            StoreError::Rule(r) => Self::Rule(r),
            StoreError::Unavailable(_)
            | StoreError::InDoubt(_)
            | StoreError::Restarted { .. }
            | StoreError::SequenceExhausted
            | StoreError::SequenceReused { .. } => Self::UnitUnavailable { unit },
            StoreError::Internal(m) => Self::Internal(m),
        }
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
            },
            EngineError::IdempotencyConflict => ErrorCode::IdempotencyConflict,
            EngineError::NoUnitAvailable => ErrorCode::NoUnitAvailable,
            EngineError::UnitUnavailable { .. } => ErrorCode::UnitUnavailable,
            EngineError::Internal(_) => ErrorCode::Internal,
        };
        if code == ErrorCode::Internal {
            tracing::error!(error = %e, "internal error");
        }
        let unit = match e {
            EngineError::UnitUnavailable { unit } => Some(unit),
            _ => None,
        };
        ApiError {
            unit,
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
        for c in ErrorCode::ALL {
            if c.status().is_server_error() && c != ErrorCode::Internal {
                assert_eq!(c.status(), StatusCode::SERVICE_UNAVAILABLE, "{c:?}");
            }
        }
    }
}
