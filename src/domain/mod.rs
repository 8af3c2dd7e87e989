//! Pure domain logic: ids, validated values, the order state machine, the
//! rules for applying a batch of changes, unit selection, circuit breaking,
//! idempotency keys' homes and batch sizes. No I/O here, so all of it is unit-tested
//! beside the code.

pub mod apply;
pub mod circuit;
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

/// Writes `n` into `out` as zero-padded decimal digits, as many as `out`
/// holds (higher digits are dropped): ids and timestamps are written this way
/// into fixed buffers, not through `format!`.
pub fn write_decimal(out: &mut [u8], mut n: u64) {
    for d in out.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
}
