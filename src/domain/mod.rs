//! Pure domain logic: ids, validated values, the order state machine, the
//! rules for applying a batch of changes, unit selection, circuit breaking,
//! idempotency keys' homes and batch sizes. No I/O here, so all of it is unit-tested
//! beside the code.

pub mod apply;
pub mod circuit;
pub mod events;
pub mod key_homes;
pub mod order;
pub mod order_id;
pub mod reads;
pub mod replication;
pub mod selection;
pub mod shapes;
pub mod values;

pub use order::{Change, NewOrder, NewRefund, Order, OrderStatus, Refund, RuleError};
pub use order_id::OrderId;
pub use reads::{Consistency, UserCursor};

use chrono::{DateTime, Datelike, SecondsFormat, Timelike, Utc};

/// Writes `n` into `out` as zero-padded decimal digits, as many as `out`
/// holds (higher digits are dropped): ids and timestamps are written this way
/// into fixed buffers, not through `format!`.
pub fn write_decimal(out: &mut [u8], mut n: u64) {
    for d in out.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// `2026-11-22T14:30:15.123Z` (RFC 3339, UTC, milliseconds). Written digit
/// by digit: every order in every answer has two, and the general formatter
/// (~700 instructions each) cost about as much as the rest of the reply's
/// fields together.
pub fn timestamp(ms: i64) -> String {
    let t = DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default();
    if !(0..=9999).contains(&t.year()) {
        return t.to_rfc3339_opts(SecondsFormat::Millis, true);
    }
    let mut out = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, n: u32| {
        write_decimal(&mut out[at..at + width], u64::from(n));
    };
    put(0, 4, t.year() as u32);
    put(5, 2, t.month());
    put(8, 2, t.day());
    put(11, 2, t.hour());
    put(14, 2, t.minute());
    put(17, 2, t.second());
    put(20, 3, t.timestamp_subsec_millis());
    String::from_utf8(out.to_vec()).expect("ASCII digits")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chrono_timestamp(ms: i64) -> String {
        DateTime::<Utc>::from_timestamp_millis(ms)
            .unwrap()
            .to_rfc3339_opts(SecondsFormat::Millis, true)
    }

    #[test]
    fn timestamps_are_rfc3339_in_utc_with_milliseconds() {
        assert_eq!(timestamp(1_795_357_815_123), "2026-11-22T14:30:15.123Z");
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(timestamp(-1), "1969-12-31T23:59:59.999Z");
        // Past year 9999 the general formatter writes it.
        let far = 253_402_300_800_000; // 10000-01-01
        assert_eq!(timestamp(far), chrono_timestamp(far));
    }

    proptest! {
        #[test]
        fn timestamps_match_chrono(ms in -62_000_000_000_000_i64..300_000_000_000_000) {
            prop_assert_eq!(timestamp(ms), chrono_timestamp(ms));
        }
    }
}
