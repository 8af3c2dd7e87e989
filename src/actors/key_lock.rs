//! Per-key async locks, used by the dispatcher so that two concurrent creates
//! with the same `(merchant_id, out_trade_no)` in this process run one after
//! the other: the second then finds the first's order instead of racing it
//! onto another unit.
//!
//! The dispatcher runs as several actors (one per HTTP worker thread), so the
//! map is shared behind a mutex held only for a map operation, never across an
//! await; an entry lives only while somebody holds or waits for its lock.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex as StdMutex, MutexGuard, PoisonError};

use tokio::sync::{Mutex, OwnedMutexGuard};

/// Key -> its lock, for keys somebody holds or waits for.
type LockMap<K> = Arc<StdMutex<HashMap<K, Arc<Mutex<()>>>>>;

fn lock_map<K>(map: &LockMap<K>) -> MutexGuard<'_, HashMap<K, Arc<Mutex<()>>>> {
    map.lock().unwrap_or_else(PoisonError::into_inner)
}

pub struct KeyLocks<K: Eq + Hash + Clone> {
    map: LockMap<K>,
}

impl<K: Eq + Hash + Clone> Clone for KeyLocks<K> {
    fn clone(&self) -> Self {
        Self {
            map: self.map.clone(),
        }
    }
}

impl<K: Eq + Hash + Clone> Default for KeyLocks<K> {
    fn default() -> Self {
        Self {
            map: Arc::default(),
        }
    }
}

/// Holds the lock of one key; dropping it lets the next waiter in.
pub struct KeyGuard<K: Eq + Hash + Clone> {
    guard: Option<OwnedMutexGuard<()>>,
    key: K,
    map: LockMap<K>,
}

impl<K: Eq + Hash + Clone> KeyLocks<K> {
    pub async fn lock(&self, key: K) -> KeyGuard<K> {
        let mutex = lock_map(&self.map).entry(key.clone()).or_default().clone();
        let guard = mutex.lock_owned().await;
        KeyGuard {
            guard: Some(guard),
            key,
            map: self.map.clone(),
        }
    }

    /// Keys with a holder or waiters (for tests).
    pub fn len(&self) -> usize {
        lock_map(&self.map).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<K: Eq + Hash + Clone> Drop for KeyGuard<K> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = lock_map(&self.map);
        // Only the map holds the mutex now: nobody waits, so forget the key.
        if map
            .get(&self.key)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[actix_web::test]
    async fn same_key_waits_other_keys_do_not() {
        let locks = KeyLocks::<&str>::default();
        let a = locks.lock("a").await;
        // Another key is free at once.
        let b = tokio::time::timeout(Duration::from_millis(50), locks.lock("b")).await;
        assert!(b.is_ok());
        drop(b);
        // The same key waits until the holder lets go.
        let second = locks.clone();
        let waiter = actix_web::rt::spawn(async move {
            let _g = second.lock("a").await;
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        drop(a);
        waiter.await.unwrap();
        assert!(locks.is_empty(), "entries are removed when unused");
    }
}
