//! Fault injection for tests: makes the create batch that holds a chosen
//! `out_trade_no` panic, so a test can prove that a unit actor whose work
//! panics is restarted instead of lost. Only code in the engine's own process
//! can arm it (nothing on the wire does); unarmed, it costs one relaxed atomic
//! load per batch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

static ARMED: AtomicBool = AtomicBool::new(false);
static KEYS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// The next create batch holding `out_trade_no` panics, once, before it
/// writes anything.
#[doc(hidden)]
pub fn panic_on_create_of(out_trade_no: &str) {
    let mut keys = KEYS.lock().unwrap_or_else(PoisonError::into_inner);
    keys.push(out_trade_no.to_owned());
    ARMED.store(true, Ordering::Release);
}

/// Panics when one of `keys` was armed (disarming it).
pub(crate) fn check_create<'a>(keys: impl IntoIterator<Item = &'a str>) {
    if !ARMED.load(Ordering::Relaxed) {
        return;
    }
    let hit = {
        let mut armed = KEYS.lock().unwrap_or_else(PoisonError::into_inner);
        let hit = keys
            .into_iter()
            .find_map(|k| armed.iter().position(|a| a == k))
            .map(|i| armed.swap_remove(i));
        ARMED.store(!armed.is_empty(), Ordering::Release);
        hit
    };
    if let Some(key) = hit {
        panic!("injected fault: the create batch holding {key} panics");
    }
}
