//! The order id: 28 decimal digits that carry everything needed to route a call.
//!
//! `V UUUU yyMMddHHmmss SSSSSSSSSS C`: layout version, trading unit, creation time
//! (UTC, to the second), the unit's own sequence number and a Damm check digit.
//! Because the unit is *in* the id ("late binding"), every call after a create goes
//! straight to the right unit without a lookup table, and a unit added later never
//! moves an existing order.

use std::fmt;

use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc};

/// Width of the id in digits.
pub const ORDER_ID_LEN: usize = 28;
/// The only layout this engine writes and reads.
pub const LAYOUT_VERSION: u8 = 1;
/// Largest unit number that fits the 4-digit field.
pub const MAX_UNIT: u16 = 9_999;
/// Largest sequence that fits the 10-digit field.
pub const MAX_SEQUENCE: u64 = 9_999_999_999;

/// The standard order-10 Damm quasigroup (row = interim digit, column = next digit).
const DAMM: [[u8; 10]; 10] = [
    [0, 3, 1, 7, 5, 9, 8, 6, 4, 2],
    [7, 0, 9, 2, 1, 5, 4, 8, 6, 3],
    [4, 2, 0, 6, 8, 7, 1, 3, 5, 9],
    [1, 7, 5, 0, 9, 8, 3, 4, 2, 6],
    [6, 1, 2, 3, 0, 4, 5, 9, 7, 8],
    [3, 6, 7, 4, 2, 0, 9, 5, 8, 1],
    [5, 8, 6, 9, 7, 2, 0, 1, 3, 4],
    [8, 9, 4, 5, 3, 6, 2, 0, 1, 7],
    [9, 4, 3, 8, 6, 1, 7, 2, 0, 5],
    [2, 5, 8, 1, 4, 3, 6, 7, 9, 0],
];

/// The Damm check digit of a run of ASCII digits.
fn damm_digit(digits: &[u8]) -> u8 {
    digits
        .iter()
        .fold(0, |interim, d| DAMM[interim as usize][(d - b'0') as usize])
}

/// Why a string is not an order id. Every variant is answered `400 invalid_order_id`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderIdError {
    #[error("an order id has exactly {ORDER_ID_LEN} digits")]
    Length,
    #[error("an order id contains only the digits 0-9")]
    NotDigits,
    #[error("the check digit does not match (mistyped id?)")]
    CheckDigit,
    #[error("unknown order id layout version {0}")]
    Version(u8),
    #[error("the time field is not a valid UTC time")]
    Time,
}

/// A valid order id. Holding one means the digits, check digit and time are valid;
/// whether the order exists is for its unit to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrderId {
    unit: u16,
    /// Creation time in whole seconds since the Unix epoch (UTC).
    created_secs: i64,
    sequence: u64,
}

impl OrderId {
    /// Builds the id of an order created on `unit` at `created_secs` with `sequence`.
    /// Returns `None` when a field does not fit its digits (unit > 9999, sequence
    /// > 10 digits, or a time outside 2000-2099).
    pub fn new(unit: u16, created_secs: i64, sequence: u64) -> Option<Self> {
        let time = DateTime::<Utc>::from_timestamp(created_secs, 0)?;
        let in_range =
            unit <= MAX_UNIT && sequence <= MAX_SEQUENCE && (2000..=2099).contains(&time.year());
        in_range.then_some(Self {
            unit,
            created_secs,
            sequence,
        })
    }

    pub fn parse(s: &str) -> Result<Self, OrderIdError> {
        let b = s.as_bytes();
        if b.len() != ORDER_ID_LEN {
            return Err(OrderIdError::Length);
        }
        if !b.iter().all(u8::is_ascii_digit) {
            return Err(OrderIdError::NotDigits);
        }
        // Damm over all 28 digits is 0 exactly when the 28th is the check digit of the 27.
        if damm_digit(b) != 0 {
            return Err(OrderIdError::CheckDigit);
        }
        let num = |from: usize, to: usize| -> u64 {
            b[from..to]
                .iter()
                .fold(0, |n, d| n * 10 + u64::from(d - b'0'))
        };
        let version = num(0, 1) as u8;
        if version != LAYOUT_VERSION {
            return Err(OrderIdError::Version(version));
        }
        let field = |from: usize| num(from, from + 2) as u32;
        let time = NaiveDate::from_ymd_opt(2000 + field(5) as i32, field(7), field(9))
            .and_then(|d| d.and_hms_opt(field(11), field(13), field(15)))
            .ok_or(OrderIdError::Time)?;
        Ok(Self {
            unit: num(1, 5) as u16,
            created_secs: time.and_utc().timestamp(),
            sequence: num(17, 27),
        })
    }

    pub fn unit(&self) -> u16 {
        self.unit
    }

    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    pub fn created_secs(&self) -> i64 {
        self.created_secs
    }

    /// The id as text: what `to_string()` gives, without the formatter.
    pub fn text(&self) -> String {
        String::from_utf8(self.digits().to_vec()).expect("ASCII digits")
    }

    /// The 28 ASCII digits. Every reply and every event carries the id, so
    /// this writes into a fixed buffer instead of going through `format!`.
    pub fn digits(&self) -> [u8; ORDER_ID_LEN] {
        let t = DateTime::<Utc>::from_timestamp(self.created_secs, 0)
            .expect("OrderId holds a time checked at construction");
        let mut out = [b'0'; ORDER_ID_LEN];
        let mut put = |at: usize, width: usize, n: u64| {
            super::write_decimal(&mut out[at..at + width], n);
        };
        put(0, 1, u64::from(LAYOUT_VERSION));
        put(1, 4, u64::from(self.unit));
        put(5, 2, (t.year() % 100) as u64);
        put(7, 2, u64::from(t.month()));
        put(9, 2, u64::from(t.day()));
        put(11, 2, u64::from(t.hour()));
        put(13, 2, u64::from(t.minute()));
        put(15, 2, u64::from(t.second()));
        put(17, 10, self.sequence);
        out[27] = b'0' + damm_digit(&out[..27]);
        out
    }
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = self.digits();
        f.pad(std::str::from_utf8(&digits).expect("ASCII digits"))
    }
}

impl std::str::FromStr for OrderId {
    type Err = OrderIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EXAMPLE: &str = "1000326112214301500000000425";

    #[test]
    fn parses_the_documented_example() {
        let id = OrderId::parse(EXAMPLE).unwrap();
        assert_eq!(id.unit(), 3);
        assert_eq!(id.sequence(), 42);
        let t = DateTime::<Utc>::from_timestamp(id.created_secs(), 0).unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-22T14:30:15+00:00");
        assert_eq!(id.to_string(), EXAMPLE);
        assert_eq!(id.text(), EXAMPLE);
    }

    #[test]
    fn rejects_malformed_ids() {
        assert_eq!(OrderId::parse("123"), Err(OrderIdError::Length));
        assert_eq!(
            OrderId::parse("100032611221430150000000042a"),
            Err(OrderIdError::NotDigits)
        );
        assert_eq!(
            OrderId::parse("1000326112214301500000000426"),
            Err(OrderIdError::CheckDigit)
        );
        // Month 13 with a correct check digit is still not an id.
        let body = "100032613221430150000000042";
        let bad_month = format!("{body}{}", damm_digit(body.as_bytes()));
        assert_eq!(OrderId::parse(&bad_month), Err(OrderIdError::Time));
        let body = "200032611221430150000000042";
        let v2 = format!("{body}{}", damm_digit(body.as_bytes()));
        assert_eq!(OrderId::parse(&v2), Err(OrderIdError::Version(2)));
    }

    #[test]
    fn refuses_fields_that_do_not_fit() {
        let now = 1_795_000_000;
        assert!(OrderId::new(10_000, now, 1).is_none());
        assert!(OrderId::new(1, now, MAX_SEQUENCE + 1).is_none());
        assert!(OrderId::new(1, 4_200_000_000, 1).is_none()); // year 2103
        assert!(OrderId::new(MAX_UNIT, now, MAX_SEQUENCE).is_some());
    }

    fn any_id() -> impl Strategy<Value = OrderId> {
        // 2000-01-01 .. 2099-12-31 in seconds.
        (
            0..=MAX_UNIT,
            946_684_800i64..4_102_444_799,
            0..=MAX_SEQUENCE,
        )
            .prop_map(|(u, t, s)| OrderId::new(u, t, s).unwrap())
    }

    proptest! {
        #[test]
        fn round_trips(id in any_id()) {
            let s = id.to_string();
            prop_assert_eq!(s.len(), ORDER_ID_LEN);
            prop_assert_eq!(OrderId::parse(&s), Ok(id));
        }

        #[test]
        fn every_single_digit_change_is_rejected(id in any_id(), pos in 0..ORDER_ID_LEN, delta in 1u8..10) {
            let mut b = id.to_string().into_bytes();
            b[pos] = b'0' + (b[pos] - b'0' + delta) % 10;
            prop_assert!(OrderId::parse(std::str::from_utf8(&b).unwrap()).is_err());
        }

        #[test]
        fn every_adjacent_swap_is_rejected(id in any_id(), pos in 0..ORDER_ID_LEN - 1) {
            let mut b = id.to_string().into_bytes();
            prop_assume!(b[pos] != b[pos + 1]);
            b.swap(pos, pos + 1);
            prop_assert!(OrderId::parse(std::str::from_utf8(&b).unwrap()).is_err());
        }
    }
}
