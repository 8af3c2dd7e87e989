//! The orders a unit's create batches just committed, kept for the unit's
//! relay while this process holds the relay lease: their `order.created`
//! events are rendered from here instead of reading every new order back
//! from the database (that read-back was most of what publishing cost
//! MariaDB). An order not found here is read from the database, so this
//! only ever saves work: it is dropped whole when full (a relay that fell
//! behind, or records another process published) and when this process
//! does not hold the lease.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::domain::order::Order;

/// Orders kept at most per unit (about a second of creates at full speed,
/// a few MiB; the relay takes them every poll).
const CAPACITY: usize = 16_384;

#[derive(Debug, Default)]
pub struct CreatedOrders {
    /// This process relays the unit: keep what commits.
    active: AtomicBool,
    /// By sequence.
    orders: Mutex<HashMap<u64, Order>>,
}

impl CreatedOrders {
    /// Starts or stops keeping orders (stopping forgets those kept).
    pub fn set_active(&self, active: bool) {
        if self.active.swap(active, Ordering::Relaxed) && !active {
            self.orders.lock().expect("created orders").clear();
        }
    }

    /// Keeps the orders of a committed batch.
    pub fn keep<'a>(&self, orders: impl ExactSizeIterator<Item = &'a Order>) {
        if !self.active.load(Ordering::Relaxed) {
            return;
        }
        let mut kept = self.orders.lock().expect("created orders");
        if kept.len() + orders.len() > CAPACITY {
            kept.clear();
        }
        kept.extend(orders.map(|o| (o.id.sequence(), o.clone())));
    }

    /// Takes the kept orders of `seqs`; the rest are left in `missing`.
    pub fn take(&self, seqs: &[u64], missing: &mut Vec<u64>) -> Vec<Order> {
        let mut kept = self.orders.lock().expect("created orders");
        let mut found = Vec::with_capacity(seqs.len());
        for seq in seqs {
            match kept.remove(seq) {
                Some(o) => found.push(o),
                None => missing.push(*seq),
            }
        }
        found
    }
}
