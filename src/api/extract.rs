//! Request extraction with the error contract: bodies over 64 KiB are `413`,
//! broken JSON is `400 malformed_json`, a wrong type, missing or unknown field
//! is `400 validation_failed` naming the field, and bad path/query/header
//! values get the same JSON error body as everything else.

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::web::BytesMut;
use actix_web::{FromRequest, HttpRequest};
use futures_util::StreamExt;
use futures_util::future::{LocalBoxFuture, Ready, ready};
use serde::de::DeserializeOwned;

use crate::domain::OrderId;
use crate::error::{ApiError, ErrorCode};

/// Largest accepted request body.
pub const BODY_LIMIT: usize = 64 * 1024;

/// A JSON body of type `T`.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned + 'static> FromRequest for JsonBody<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let mut payload = payload.take();
        Box::pin(async move {
            if declared.is_some_and(|n| n > BODY_LIMIT) {
                return Err(too_large());
            }
            let mut body = BytesMut::new();
            while let Some(chunk) = payload.next().await {
                let chunk =
                    chunk.map_err(|e| ApiError::new(ErrorCode::MalformedJson, e.to_string()))?;
                if body.len() + chunk.len() > BODY_LIMIT {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
            parse_json(&body).map(JsonBody)
        })
    }
}

fn too_large() -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("request bodies are limited to {BODY_LIMIT} bytes"),
    )
}

/// Parses `body` as `T`; an empty body reads as `{}`.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    // Good bodies take the plain parser; only a bad one is parsed again
    // with path tracking, which costs about as much as the parse itself.
    let plain = match serde_json::from_slice(body) {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    let de = &mut serde_json::Deserializer::from_slice(body);
    let err = match serde_path_to_error::deserialize::<_, T>(de) {
        // The value parsed, so what the plain parser refused is what follows it.
        Ok(_) => {
            return Err(ApiError::new(
                ErrorCode::MalformedJson,
                format!("the body is not valid JSON: {plain}"),
            ));
        }
        Err(e) => e,
    };
    let path = err.path().to_string();
    let inner = err.into_inner();
    match inner.classify() {
        serde_json::error::Category::Data => {
            let message = inner.to_string();
            // The path names the offending value; a missing field is named only
            // in the message (its path is the enclosing object).
            let missing = message
                .strip_prefix("missing field `")
                .and_then(|rest| rest.split('`').next());
            let field = match (missing, path.as_str()) {
                (Some(name), ".") => Some(name.to_string()),
                (Some(name), parent) => Some(format!("{parent}.{name}")),
                (None, ".") => None,
                (None, p) => Some(p.to_string()),
            };
            Err(ApiError {
                field,
                ..ApiError::new(ErrorCode::ValidationFailed, strip_position(&message))
            })
        }
        _ => Err(ApiError::new(
            ErrorCode::MalformedJson,
            format!("the body is not valid JSON: {inner}"),
        )),
    }
}

/// serde_json appends " at line L column C"; keep the message about the value.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// The `{order_id}` path segment, parsed: a mistyped id never reaches a unit.
pub struct OrderIdPath(pub OrderId);

impl FromRequest for OrderIdPath {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let raw = req.match_info().get("order_id").unwrap_or_default();
        ready(OrderId::parse(raw).map(OrderIdPath).map_err(|e| {
            ApiError::new(ErrorCode::InvalidOrderId, format!("invalid order id: {e}"))
        }))
    }
}

/// The optional `If-Match: <version>` header (quoted or not).
pub struct IfMatch(pub Option<i64>);

impl FromRequest for IfMatch {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let parsed = match req.headers().get(header::IF_MATCH) {
            None => Ok(IfMatch(None)),
            Some(v) => v
                .to_str()
                .ok()
                .map(|s| s.trim().trim_start_matches("W/").trim_matches('"'))
                .and_then(|s| s.parse::<i64>().ok())
                .filter(|v| *v >= 1)
                .map(|v| IfMatch(Some(v)))
                .ok_or_else(|| {
                    ApiError::validation(
                        "If-Match",
                        "If-Match must be an order version (an integer >= 1)",
                    )
                }),
        };
        ready(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::dto::{CloseRequest, CreateOrderRequest};

    fn err(body: &str) -> ApiError {
        parse_json::<CreateOrderRequest>(body.as_bytes()).unwrap_err()
    }

    #[test]
    fn classifies_body_errors() {
        let e = err("{not json");
        assert_eq!(e.code, ErrorCode::MalformedJson);

        let e = err(
            r#"{"merchant_id":"m","out_trade_no":"o","user_id":"u","amount":"12","currency":"CNY"}"#,
        );
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::ValidationFailed, Some("amount"))
        );

        let e = err(
            r#"{"merchant_id":"m","out_trade_no":"o","user_id":"u","amount":1,"currency":"CNY","colour":"red"}"#,
        );
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::ValidationFailed, Some("colour"))
        );

        let e = err(r#"{"merchant_id":"m","user_id":"u","amount":1,"currency":"CNY"}"#);
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::ValidationFailed, Some("out_trade_no"))
        );

        // A whole order followed by anything else is not one JSON value.
        let e = err(
            r#"{"merchant_id":"m","out_trade_no":"o","user_id":"u","amount":1,"currency":"CNY"} {}"#,
        );
        assert_eq!(e.code, ErrorCode::MalformedJson, "{}", e.message);
        assert!(e.message.contains("trailing"), "{}", e.message);
    }

    #[test]
    fn empty_body_is_an_empty_object() {
        assert!(parse_json::<CloseRequest>(b"").is_ok());
        assert!(parse_json::<CloseRequest>(b" {} ").is_ok());
        assert_eq!(
            parse_json::<CloseRequest>(br#"{"x":1}"#).unwrap_err().code,
            ErrorCode::ValidationFailed
        );
    }
}
