//! The admin token. Every admin call needs `Authorization: Bearer <token>`
//! (the scheme in any case, RFC 7235). The comparison tells an attacker
//! nothing by its timing: both sides are hashed with SHA-256 first, so what
//! is compared is always 32 bytes, whatever the token's length, and those
//! are compared without an early exit.

use actix_web::HttpRequest;
use actix_web::http::header::AUTHORIZATION;
use sha2::{Digest, Sha256};

use super::error::{ApiError, ErrorCode};

/// The admin token's digest, as app data of the admin listener.
pub struct AdminToken {
    digest: [u8; 32],
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(***)")
    }
}

/// An admin call that carried the token: as a handler's first argument it
/// is checked before any other (the body is not read for a caller without
/// the token).
pub struct Authorized;

impl actix_web::FromRequest for Authorized {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let checked = match req.app_data::<actix_web::web::Data<AdminToken>>() {
            Some(token) => token.authorize(req).map(|()| Authorized),
            None => Err(ApiError::new(
                ErrorCode::Unauthorized,
                "the admin API is off on this listener",
            )),
        };
        std::future::ready(checked)
    }
}

impl AdminToken {
    /// `token` must not be empty (an empty token turns the admin API off).
    pub fn new(token: &str) -> Self {
        assert!(
            !token.is_empty(),
            "an empty admin token turns the admin API off"
        );
        Self {
            digest: Sha256::digest(token.as_bytes()).into(),
        }
    }

    /// Ok when `req` carries this token.
    pub fn authorize(&self, req: &HttpRequest) -> Result<(), ApiError> {
        let presented = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token);
        match presented {
            Some(t) if self.matches(t) => Ok(()),
            _ => Err(ApiError::new(
                ErrorCode::Unauthorized,
                "send Authorization: Bearer <admin token>",
            )),
        }
    }

    fn matches(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        constant_time_eq(&digest, &self.digest)
    }
}

/// The credentials of a `Bearer` authorization, the scheme matched in any
/// case (RFC 7235 2.1).
fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Compares without an early exit, so timing does not reveal a prefix match.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn with(header: &str) -> HttpRequest {
        TestRequest::default()
            .insert_header((AUTHORIZATION, header))
            .to_http_request()
    }

    #[test]
    fn the_bearer_scheme_matches_in_any_case() {
        let token = AdminToken::new("s3cret");
        for ok in [
            "Bearer s3cret",
            "bearer s3cret",
            "BEARER  s3cret ",
            " Bearer s3cret",
        ] {
            assert!(token.authorize(&with(ok)).is_ok(), "{ok:?}");
        }
        for bad in [
            "Bearer s3cre",
            "Bearer s3cret2",
            "Basic s3cret",
            "Bearers3cret",
            "Bearer",
            "s3cret",
        ] {
            let e = token.authorize(&with(bad)).unwrap_err();
            assert_eq!(e.code, ErrorCode::Unauthorized, "{bad:?}");
        }
        assert!(
            token
                .authorize(&TestRequest::default().to_http_request())
                .is_err()
        );
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        assert_eq!(
            format!("{:?}", AdminToken::new("s3cret")),
            "AdminToken(***)"
        );
    }
}
