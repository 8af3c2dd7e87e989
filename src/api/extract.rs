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

use super::error::{ApiError, ErrorCode};
use crate::domain::OrderId;
use crate::domain::replication::ConsistencyToken;
use crate::domain::values::SectionValue;

/// Largest accepted request body.
pub const BODY_LIMIT: usize = 64 * 1024;

/// A JSON body of type `T`.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned + 'static> FromRequest for JsonBody<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let body = read_body(req, payload);
        Box::pin(async move { parse_json(&body.await?).map(JsonBody) })
    }
}

/// A body that is one JSON value of any kind (a section's value), kept as
/// its text.
pub struct JsonValueBody(pub SectionValue);

impl FromRequest for JsonValueBody {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let body = read_body(req, payload);
        Box::pin(async move {
            let body = body.await?;
            if body.iter().all(u8::is_ascii_whitespace) {
                return Err(ApiError::validation(
                    "body",
                    "the body is the section's value: any JSON value (null included)",
                ));
            }
            let value: SectionValue = serde_json::from_slice(&body).map_err(|e| {
                ApiError::new(
                    ErrorCode::MalformedJson,
                    format!("the body is not valid JSON: {e}"),
                )
            })?;
            value
                .check()
                .map_err(|e| ApiError::validation("body", e.0))?;
            Ok(JsonValueBody(value))
        })
    }
}

/// The request's body, at most [`BODY_LIMIT`] bytes.
fn read_body(
    req: &HttpRequest,
    payload: &mut Payload,
) -> impl std::future::Future<Output = Result<BytesMut, ApiError>> + 'static {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let mut payload = payload.take();
    async move {
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
        Ok(body)
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
    // Every body is an object: serde's derive would also take an array,
    // field by field in order.
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                Ok(_) => ApiError::new(
                    ErrorCode::ValidationFailed,
                    "the body must be a JSON object",
                ),
                Err(e) => ApiError::new(
                    ErrorCode::MalformedJson,
                    format!("the body is not valid JSON: {e}"),
                ),
            },
        );
    }
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

/// The header a write's consistency token travels in, both ways.
pub static CONSISTENCY_TOKEN: header::HeaderName =
    header::HeaderName::from_static("x-consistency-token");

/// The optional `X-Consistency-Token` of a read (read-your-writes): a token
/// a write answered (empty: none). Anything else is `400 validation_failed`.
pub struct TokenHeader(pub Option<ConsistencyToken>);

impl FromRequest for TokenHeader {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let parsed = match req.headers().get(&CONSISTENCY_TOKEN) {
            // An empty header is no token (as a proxy may leave it).
            None => Ok(TokenHeader(None)),
            Some(v) if v.as_bytes().trim_ascii().is_empty() => Ok(TokenHeader(None)),
            Some(v) => v
                .to_str()
                .ok()
                .and_then(ConsistencyToken::decode)
                .map(|t| TokenHeader(Some(t)))
                .ok_or_else(|| {
                    ApiError::validation(
                        "X-Consistency-Token",
                        "X-Consistency-Token must be a token a write answered",
                    )
                }),
        };
        ready(parsed)
    }
}

/// The optional `If-Match: <version>` header: a version (no leading zero),
/// bare or quoted, optionally weak (`W/`), exactly as the OpenAPI document's
/// `IF_MATCH_PATTERN` says.
pub struct IfMatch(pub Option<i64>);

impl IfMatch {
    /// The routing table version it names (admin changes).
    pub fn table_version(&self) -> Option<u64> {
        self.0.and_then(|v| u64::try_from(v).ok())
    }
}

/// The version an `If-Match` value names.
fn parse_if_match(value: &str) -> Option<i64> {
    let v = value.trim();
    let v = v.strip_prefix("W/").unwrap_or(v);
    let v = match v.strip_prefix('"') {
        Some(quoted) => quoted.strip_suffix('"')?,
        None => v,
    };
    let digits_ok =
        (1..=18).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_digit()) && !v.starts_with('0');
    digits_ok.then(|| v.parse().ok()).flatten()
}

impl FromRequest for IfMatch {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let parsed = match req.headers().get(header::IF_MATCH) {
            None => Ok(IfMatch(None)),
            Some(v) => v
                .to_str()
                .ok()
                .and_then(parse_if_match)
                .map(|v| IfMatch(Some(v)))
                .ok_or_else(|| {
                    ApiError::validation("If-Match", "If-Match must be a version (an integer >= 1)")
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
    fn if_match_takes_a_version_bare_quoted_or_weak() {
        for (value, version) in [("3", 3), ("\"3\"", 3), ("W/\"42\"", 42), (" 7 ", 7)] {
            assert_eq!(parse_if_match(value), Some(version), "{value:?}");
        }
        for bad in [
            "0",
            "007",
            "\"3",
            "3\"",
            "\"\"3\"\"",
            "W/",
            "abc",
            "-1",
            "*",
            "1234567890123456789",
        ] {
            assert_eq!(parse_if_match(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_body_is_an_object_and_amounts_are_whole_numbers() {
        let e = err(r#"["m","o","u",1,"CNY",null,null]"#);
        assert_eq!(e.code, ErrorCode::ValidationFailed, "{}", e.message);
        assert_eq!(err("[1,").code, ErrorCode::MalformedJson);
        assert_eq!(err("7").code, ErrorCode::ValidationFailed);
        let order = |amount: &str| {
            let body = format!(
                r#"{{"merchant_id":"m","out_trade_no":"o","user_id":"u","amount":{amount},"currency":"CNY"}}"#
            );
            parse_json::<CreateOrderRequest>(body.as_bytes()).map(|r| r.amount.0)
        };
        assert_eq!(order("1999").unwrap(), 1999);
        assert_eq!(order("1999.0").unwrap(), 1999);
        assert_eq!(order("1.999e3").unwrap(), 1999);
        for bad in ["19.99", "1e300", "\"12\""] {
            let e = order(bad).unwrap_err();
            assert_eq!(
                (e.code, e.field.as_deref()),
                (ErrorCode::ValidationFailed, Some("amount")),
                "{bad}"
            );
        }
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

    #[test]
    fn a_consistency_token_is_one_a_write_answered_or_none() {
        let token = |v: Option<&str>| {
            let mut req = actix_web::test::TestRequest::get();
            if let Some(v) = v {
                req = req.insert_header(("x-consistency-token", v));
            }
            let req = req.to_http_request();
            TokenHeader::from_request(&req, &mut Payload::None)
                .into_inner()
                .map(|t| t.0)
        };
        assert_eq!(token(None).unwrap(), None);
        assert_eq!(token(Some("")).unwrap(), None, "empty: no token");
        let t = token(Some("3:0-1-42")).unwrap().unwrap();
        assert_eq!(t.encode(), "3:0-1-42");
        for bad in ["3", "x:0-1-1", "3:0-1"] {
            let e = token(Some(bad)).unwrap_err();
            assert_eq!(e.field.as_deref(), Some("X-Consistency-Token"), "{bad}");
        }
        // The longest numbers the OpenAPI pattern admits are read.
        assert!(token(Some("9999:999999999-999999999-999999999999999999,1-2-3")).is_ok());
    }
}
