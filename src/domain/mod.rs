//! Pure domain logic: ids, validated values, the order state machine and unit
//! selection. No I/O here, so all of it is unit-tested beside the code.

pub mod circuit;
pub mod key_filter;
pub mod order;
pub mod order_id;
pub mod selection;
pub mod values;

pub use order::{Change, NewOrder, NewRefund, Order, OrderStatus, Refund, RuleError};
pub use order_id::OrderId;
