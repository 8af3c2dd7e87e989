//! Validated values: once you hold one, it is valid ("parse, don't validate").
//!
//! Each `parse` names the rule it enforces so that the API can answer
//! `400 validation_failed` with the offending field and a readable message.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;

/// Smallest and largest order amount, in minor units (fen, cents).
pub const MIN_AMOUNT: i64 = 1;
pub const MAX_AMOUNT: i64 = 1_000_000_000_000;
/// Identifier length bounds and alphabet (`[A-Za-z0-9_.:-]`).
pub const MAX_IDENTIFIER_LEN: usize = 64;
pub const IDENTIFIER_PATTERN: &str = "^[A-Za-z0-9_.:-]{1,64}$";
/// Free-text bound for `description` and refund `reason`, in characters.
pub const MAX_TEXT_CHARS: usize = 256;
/// The most an order's sections may take as JSON, all together: section
/// updates add to them one body (64 KiB) at a time, and a row past this
/// would near the database's limits (a 16 MiB column and packet).
pub const MAX_SECTIONS_BYTES: usize = 1 << 20;

/// A rule a value broke; the API adds the field name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

pub fn is_identifier(s: &str) -> bool {
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

            pub fn into_string(self) -> String {
                self.0
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

/// Named JSON sections of an order (items, shipping, ...): a JSON object whose
/// keys are identifiers. Sections can be read one at a time.
///
/// Each section's value is kept as the JSON text it arrived in (checked to be
/// JSON, never built into a tree): a create stores it and answers with it as
/// it came, number for number. Sections are held sorted by name; a name given
/// twice keeps its last value, as a JSON object parser would.
#[derive(Debug, Clone, Default)]
pub struct Sections(Vec<(String, Box<RawValue>)>);

/// A JSON object's entries as they arrived, values unparsed: what
/// [`Sections::parse`] checks.
#[derive(Debug, Default)]
pub struct SectionEntries(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for SectionEntries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = SectionEntries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of named sections")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(SectionEntries(entries))
            }
        }
        deserializer.deserialize_map(Entries)
    }
}

impl Sections {
    pub fn parse(entries: SectionEntries) -> Result<Self, Invalid> {
        if let Some((k, _)) = entries.0.iter().find(|(k, _)| !is_identifier(k)) {
            return Err(Invalid(format!(
                "section name {k:?} must be 1-{MAX_IDENTIFIER_LEN} characters of [A-Za-z0-9_.:-]"
            )));
        }
        for (k, v) in &entries.0 {
            readable(v).map_err(|e| Invalid(format!("section {k:?}: {e}")))?;
        }
        Ok(Self::from_stored(entries))
    }

    /// Sections read back from storage, which only ever holds validated ones.
    pub fn from_stored(SectionEntries(mut entries): SectionEntries) -> Self {
        // A stable sort keeps a name's entries in arrival order; the last wins.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                std::mem::swap(later, kept);
            }
            same
        });
        Self(entries)
    }

    /// Parses the JSON object text `json` (as storage holds it).
    pub fn from_json(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json).map(Self::from_stored)
    }

    /// The sections as one compact JSON object (as storage holds it).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("JSON text serializes")
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How long these sections are as one JSON object ([`Self::to_json`]).
    pub fn json_len(&self) -> usize {
        let entries: usize = self
            .0
            .iter()
            .map(|(k, v)| k.len() + 3 + v.get().len())
            .sum();
        2 + entries + self.0.len().saturating_sub(1)
    }

    /// Keeps only the named sections; names that do not exist are ignored.
    pub fn retain_named(&mut self, names: &[String]) {
        self.0.retain(|(k, _)| names.iter().any(|n| n == k));
    }

    /// The section `name`'s value, if the order has it.
    pub fn get(&self, name: &str) -> Option<&RawValue> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(name))
            .ok()
            .map(|i| &*self.0[i].1)
    }

    /// These sections with `name` set to `value` (`None`: removed).
    pub fn with(&self, name: &SectionName, value: Option<&SectionValue>) -> Self {
        let mut next = self.0.clone();
        let at = next.binary_search_by(|(k, _)| k.as_str().cmp(name.as_str()));
        match (at, value) {
            (Ok(i), Some(v)) => next[i].1 = v.0.clone(),
            (Ok(i), None) => {
                next.remove(i);
            }
            (Err(i), Some(v)) => next.insert(i, (name.as_str().to_owned(), v.0.clone())),
            (Err(_), None) => {}
        }
        Self(next)
    }
}

/// Whether two JSON texts are equal as JSON (however spaced, keys in any
/// order). Texts that cannot be read as values are equal only as text.
fn same_json(a: &RawValue, b: &RawValue) -> bool {
    fn value(raw: &RawValue) -> Option<Value> {
        serde_json::from_str(raw.get()).ok()
    }
    a.get() == b.get() || matches!((value(a), value(b)), (Some(x), Some(y)) if x == y)
}

/// Checks that `raw`, which its capture checked only for syntax, reads
/// back as a JSON value: every number within a double's range, every
/// string whole Unicode (no lone surrogate escape), nested at most 128
/// deep. An order's events and diffs read its sections as values, so a
/// section that does not read back would fail every later change of the
/// order. Read without building the value.
fn readable(raw: &RawValue) -> Result<(), serde_json::Error> {
    struct Readable;
    impl<'de> Deserialize<'de> for Readable {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer.deserialize_any(Readable)
        }
    }
    impl<'de> Visitor<'de> for Readable {
        type Value = Readable;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_bool<E>(self, _: bool) -> Result<Readable, E> {
            Ok(Readable)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Readable, E> {
            Ok(Readable)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Readable, E> {
            Ok(Readable)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Readable, E> {
            Ok(Readable)
        }
        fn visit_str<E>(self, _: &str) -> Result<Readable, E> {
            Ok(Readable)
        }
        fn visit_unit<E>(self) -> Result<Readable, E> {
            Ok(Readable)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Readable, A::Error> {
            while seq.next_element::<Readable>()?.is_some() {}
            Ok(Readable)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Readable, A::Error> {
            while map.next_entry::<Readable, Readable>()?.is_some() {}
            Ok(Readable)
        }
    }
    serde_json::from_str::<Readable>(raw.get()).map(|_| ())
}

/// The name of one section (`PUT /v1/orders/{id}/sections/{name}`): an
/// identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectionName(String);

impl SectionName {
    pub fn parse(name: &str) -> Result<Self, Invalid> {
        if is_identifier(name) {
            Ok(Self(name.to_owned()))
        } else {
            Err(Invalid(format!(
                "section name {name:?} must be 1-{MAX_IDENTIFIER_LEN} characters of [A-Za-z0-9_.:-]"
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One section's value: any JSON, kept as the text it arrived in.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(transparent)]
pub struct SectionValue(Box<RawValue>);

impl SectionValue {
    pub fn get(&self) -> &RawValue {
        &self.0
    }

    /// Checks that the value reads back as JSON (see `readable`); its
    /// capture checked only its syntax.
    pub fn check(&self) -> Result<(), Invalid> {
        readable(&self.0).map_err(|e| Invalid(e.to_string()))
    }

    /// Whether this is, as JSON, the value `stored`.
    pub fn same_as(&self, stored: &RawValue) -> bool {
        same_json(&self.0, stored)
    }
}

/// Equal as JSON (see [`Sections`]' equality).
impl PartialEq for SectionValue {
    fn eq(&self, other: &Self) -> bool {
        same_json(&self.0, &other.0)
    }
}

impl Serialize for Sections {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

/// Equal as JSON: the same names with equal values, however each value was
/// spaced or its keys ordered (texts that differ are compared parsed).
impl PartialEq for Sections {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(&other.0)
                .all(|((k1, v1), (k2, v2))| k1 == k2 && same_json(v1, v2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_section_must_read_back_as_a_json_value() {
        let raw = |s: &str| RawValue::from_string(s.to_owned()).unwrap();
        for good in [
            "1",
            "-9223372036854775808",
            "18446744073709551615",
            "1e308",
            "-0.0",
            r#""\ud83d\ude00""#,
            r#"{"a":[1,{"b":null}],"c":"x"}"#,
        ] {
            assert!(readable(&raw(good)).is_ok(), "{good}");
        }
        // The capture takes these as text; they do not read back.
        for bad in ["1e400", "[-1e999]", r#""\ud800""#, r#"{"\udc00":1}"#] {
            assert!(readable(&raw(bad)).is_err(), "{bad}");
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        if let Ok(text) = RawValue::from_string(deep) {
            assert!(readable(&text).is_err(), "200 deep");
        }
        let one_bad = r#"{"ok":1,"bad":1e400}"#;
        let entries: SectionEntries = serde_json::from_str(one_bad).unwrap();
        let err = Sections::parse(entries).unwrap_err();
        assert!(err.0.contains("\"bad\""), "{}", err.0);
        // The sections' length is their JSON's.
        for json in [
            r#"{}"#,
            r#"{"a":1}"#,
            r#"{"a":[1, 2],"bb":{"c":"d"},"e":null}"#,
        ] {
            let sections = Sections::from_json(json).unwrap();
            assert_eq!(sections.json_len(), sections.to_json().len(), "{json}");
        }
        // Texts that cannot be read back are equal only as text.
        assert!(!same_json(&raw("1e400"), &raw("2e400")));
        assert!(same_json(&raw("1e400"), &raw("1e400")));
    }
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

    fn sections(json: &str) -> Result<Sections, Invalid> {
        Sections::parse(serde_json::from_str(json).expect("a JSON object"))
    }

    #[test]
    fn sections_filter_by_name() {
        let mut s = sections(r#"{"x": 1, "shipping": {"city": "SZ"}, "items": [1]}"#).unwrap();
        assert_eq!(
            s.to_json(),
            r#"{"items":[1],"shipping":{"city": "SZ"},"x":1}"#
        );
        s.retain_named(&["items".into(), "nope".into()]);
        assert_eq!(s.to_json(), r#"{"items":[1]}"#);
        assert!(sections(r#"{"bad name": 1}"#).is_err());
        assert!(serde_json::from_str::<SectionEntries>("[1, 2]").is_err());
    }

    #[test]
    fn sections_keep_their_values_as_sent() {
        // A big integer would lose digits as an f64 in a parsed tree.
        let s = sections(r#"{"n": 123456789012345678901234567890, "t": "请快点"}"#).unwrap();
        let text = s.to_json();
        assert_eq!(text, r#"{"n":123456789012345678901234567890,"t":"请快点"}"#);
        assert_eq!(Sections::from_json(&text).unwrap().to_json(), text);
    }

    #[test]
    fn a_section_named_twice_keeps_its_last_value() {
        let s = sections(r#"{"a": 1, "b": 2, "a": 3}"#).unwrap();
        assert_eq!(s.to_json(), r#"{"a":3,"b":2}"#);
    }

    #[test]
    fn sections_are_equal_as_json_not_as_text() {
        let a = sections(r#"{"items": [{"sku": "c1", "qty": 2}], "note": "x"}"#).unwrap();
        let b = sections(r#"{"note":"x","items":[{"qty":2,"sku":"c1"}]}"#).unwrap();
        assert_eq!(a, b);
        let c = sections(r#"{"items": [{"sku": "c1", "qty": 3}], "note": "x"}"#).unwrap();
        assert_ne!(a, c);
        assert_ne!(
            a,
            sections(r#"{"items": [{"sku": "c1", "qty": 2}]}"#).unwrap()
        );
        assert_eq!(Sections::default(), sections("{}").unwrap());
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
