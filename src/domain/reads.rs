//! What a read asks for, beyond the order id: which copy of a unit's data it
//! may use, and where a page of a user's orders starts. Every layer passes
//! these along, so they live here.

use super::order_id::OrderId;

/// Which copy of the unit's data a read may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// The primary: sees every acknowledged change.
    #[default]
    Strong,
    /// A replica when the unit has one (falls back to the primary).
    Eventual,
}

/// Position in a user's newest-first order list: `(created_at_ms, order_id)`,
/// a unique sort key, so pages never skip or repeat an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct UserCursor {
    pub created_at_ms: i64,
    pub order_id: OrderId,
}

impl UserCursor {
    /// The cursor as callers see it: opaque text.
    pub fn encode(&self) -> String {
        format!("{:x}.{}", self.created_at_ms, self.order_id)
    }

    /// A cursor [`Self::encode`] wrote; `None` for anything else. Exactly
    /// `^[0-9a-f]{1,15}\.[0-9]{28}$` with a valid order id (15 hex digits
    /// hold every time an order id can carry).
    pub fn decode(s: &str) -> Option<Self> {
        let (ms, id) = s.split_once('.')?;
        let hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
        if !(1..=15).contains(&ms.len()) || !ms.bytes().all(hex) {
            return None;
        }
        Some(Self {
            created_at_ms: i64::from_str_radix(ms, 16).ok()?,
            order_id: OrderId::parse(id).ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_anything_else() {
        let c = UserCursor {
            created_at_ms: 1_795_000_000_123,
            order_id: OrderId::parse("1000326112214301500000000425").unwrap(),
        };
        assert_eq!(UserCursor::decode(&c.encode()), Some(c));
        let id = "1000326112214301500000000425";
        for bad in [
            "zz.1".to_string(),
            String::new(),
            ".".into(),
            format!("-1.{id}"),
            format!("A.{id}"),
            format!("{}.{id}", "f".repeat(16)),
            "1a".into(),
        ] {
            assert_eq!(UserCursor::decode(&bad), None, "{bad:?}");
        }
    }
}
