//! Validated values: once you hold one, it is valid ("parse, don't validate").
//!
//! Each `parse` names the rule it enforces so that the API can answer
//! `400 validation_failed` with the offending field and a readable message.

use std::fmt;

use serde_json::{Map, Value};

/// Smallest and largest order amount, in minor units (fen, cents).
pub const MIN_AMOUNT: i64 = 1;
pub const MAX_AMOUNT: i64 = 1_000_000_000_000;
/// Identifier length bounds and alphabet (`[A-Za-z0-9_.:-]`).
pub const MAX_IDENTIFIER_LEN: usize = 64;
pub const IDENTIFIER_PATTERN: &str = "^[A-Za-z0-9_.:-]{1,64}$";
/// Free-text bound for `description` and refund `reason`, in characters.
pub const MAX_TEXT_CHARS: usize = 256;

/// A rule a value broke; the API adds the field name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn is_identifier(s: &str) -> bool {
    (1..=MAX_IDENTIFIER_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub fn parse(s: impl Into<String>) -> Result<Self, Invalid> {
                let s = s.into();
                if is_identifier(&s) {
                    Ok(Self(s))
                } else {
                    Err(Invalid(format!(
                        "must be 1-{MAX_IDENTIFIER_LEN} characters of [A-Za-z0-9_.:-]"
                    )))
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

identifier!(
    /// The merchant that owns an order; decides the order's partition.
    MerchantId
);
identifier!(
    /// The merchant's own order number; with the merchant, the idempotency key.
    OutTradeNo
);
identifier!(
    /// The paying user.
    UserId
);
identifier!(
    /// The payment channel's reference for a payment.
    PaymentRef
);
identifier!(
    /// The caller's id for a refund; makes refunds idempotent.
    RefundId
);

/// An amount of money in minor units, `1 <= amount <= 10^12`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(i64);

impl Amount {
    pub fn new(minor_units: i64) -> Result<Self, Invalid> {
        if (MIN_AMOUNT..=MAX_AMOUNT).contains(&minor_units) {
            Ok(Self(minor_units))
        } else {
            Err(Invalid(format!(
                "must be an integer number of minor units between {MIN_AMOUNT} and {MAX_AMOUNT}"
            )))
        }
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

/// An ISO-4217-style currency code: three upper-case ASCII letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency([u8; 3]);

impl Currency {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        match s.as_bytes() {
            &[a, b, c] if [a, b, c].iter().all(u8::is_ascii_uppercase) => Ok(Self([a, b, c])),
            _ => Err(Invalid("must be three upper-case letters, e.g. CNY".into())),
        }
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("ASCII by construction")
    }
}

/// Free text of at most 256 characters (description, refund reason).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Text(String);

impl Text {
    pub fn parse(s: impl Into<String>) -> Result<Self, Invalid> {
        let s = s.into();
        if s.chars().count() <= MAX_TEXT_CHARS {
            Ok(Self(s))
        } else {
            Err(Invalid(format!(
                "must be at most {MAX_TEXT_CHARS} characters"
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// Named JSON sections of an order (items, shipping, ...): a JSON object whose keys
/// are identifiers. Sections can be read one at a time.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Sections(Map<String, Value>);

impl Sections {
    pub fn parse(map: Map<String, Value>) -> Result<Self, Invalid> {
        match map.keys().find(|k| !is_identifier(k)) {
            Some(k) => Err(Invalid(format!(
                "section name {k:?} must be 1-{MAX_IDENTIFIER_LEN} characters of [A-Za-z0-9_.:-]"
            ))),
            None => Ok(Self(map)),
        }
    }

    /// Sections read back from storage, which only ever holds validated ones.
    pub fn from_stored(map: Map<String, Value>) -> Self {
        Self(map)
    }

    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }

    pub fn into_map(self) -> Map<String, Value> {
        self.0
    }

    /// Keeps only the named sections; names that do not exist are ignored.
    pub fn retain_named(&mut self, names: &[String]) {
        self.0.retain(|k, _| names.iter().any(|n| n == k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn identifiers_follow_the_contract() {
        assert!(MerchantId::parse("m-1001").is_ok());
        assert!(OutTradeNo::parse("20261122-0001:a_b.c").is_ok());
        assert!(MerchantId::parse("").is_err());
        assert!(MerchantId::parse("a".repeat(65)).is_err());
        assert!(MerchantId::parse("a".repeat(64)).is_ok());
        assert!(UserId::parse("u 42").is_err());
        assert!(UserId::parse("用户").is_err());
    }

    #[test]
    fn amounts_are_bounded() {
        assert!(Amount::new(0).is_err());
        assert!(Amount::new(-5).is_err());
        assert!(Amount::new(1).is_ok());
        assert!(Amount::new(MAX_AMOUNT).is_ok());
        assert!(Amount::new(MAX_AMOUNT + 1).is_err());
    }

    #[test]
    fn currency_is_three_upper_case_letters() {
        assert_eq!(Currency::parse("CNY").unwrap().as_str(), "CNY");
        for bad in ["cny", "CN", "CNYY", "C1Y", ""] {
            assert!(Currency::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn text_counts_characters_not_bytes() {
        assert!(Text::parse("咖".repeat(256)).is_ok());
        assert!(Text::parse("咖".repeat(257)).is_err());
    }

    #[test]
    fn sections_filter_by_name() {
        let map = serde_json::json!({"items": [1], "shipping": {"city": "SZ"}, "x": 1});
        let mut s = Sections::parse(map.as_object().unwrap().clone()).unwrap();
        s.retain_named(&["items".into(), "nope".into()]);
        assert_eq!(s.as_map().keys().collect::<Vec<_>>(), vec!["items"]);
        let bad = serde_json::json!({"bad name": 1});
        assert!(Sections::parse(bad.as_object().unwrap().clone()).is_err());
    }

    proptest! {
        #[test]
        fn identifier_accepts_exactly_its_alphabet(s in "\\PC{0,70}") {
            let ok = !s.is_empty() && s.len() <= 64
                && s.chars().all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c));
            prop_assert_eq!(MerchantId::parse(s.clone()).is_ok(), ok);
        }
    }
}
