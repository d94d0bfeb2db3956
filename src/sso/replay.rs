//! The replay cache of answered AuthnRequest IDs: each request ID is answered once.
//!
//! On SQLite (one node by nature: the database is a local file) the check is made in memory
//! and the ID is persisted write-behind, then reloaded at start-up, so a sign-in costs no
//! synchronous commit. On PostgreSQL several nodes answer requests, so the check is the
//! database's unique key, committed before the response leaves.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Mutex;

use crate::store::{Backend, ReplayGuard, Store, StoreError, WriteBehind};

/// (SP entity ID, request ID).
type Key = (String, String);

/// Where the check is made.
#[derive(Debug)]
enum Mode {
    Shared,
    Local(Mutex<Seen>),
}

/// The answered IDs with their expiry, and the same IDs ordered by expiry so that forgetting
/// expired ones costs O(log n) per ID, amortised, instead of a scan of the whole map: at a
/// sustained rate the map holds rate × request lifetime entries, and scanning it on every
/// sign-in made each one slower as the rate grew.
#[derive(Debug, Default)]
struct Seen {
    expires: HashMap<Key, i64>,
    by_expiry: BinaryHeap<Reverse<(i64, Key)>>,
}

impl Seen {
    fn insert(&mut self, key: Key, expires_at: i64) {
        self.by_expiry.push(Reverse((expires_at, key.clone())));
        self.expires.insert(key, expires_at);
    }

    /// Forgets every ID expired at `now_ms`.
    fn expire(&mut self, now_ms: i64) {
        while let Some(Reverse((at, _))) = self.by_expiry.peek() {
            if *at > now_ms {
                break;
            }
            let Some(Reverse((at, key))) = self.by_expiry.pop() else {
                break;
            };
            // A key answered again after it expired has a later expiry: keep that one.
            if self.expires.get(&key) == Some(&at) {
                self.expires.remove(&key);
            }
        }
    }
}

/// Remembers answered request IDs until they would be stale anyway.
#[derive(Debug)]
pub struct ReplayCache {
    store: Store,
    writes: WriteBehind,
    mode: Mode,
}

impl ReplayCache {
    /// Builds the cache for the store's backend, reloading live IDs on SQLite.
    pub async fn load(store: Store, writes: WriteBehind, now_ms: i64) -> Result<Self, StoreError> {
        let mode = match store.backend() {
            Backend::Postgres => Mode::Shared,
            Backend::Sqlite => {
                let mut seen = Seen::default();
                for g in store.live_request_ids(now_ms).await? {
                    seen.insert((g.sp_entity_id, g.request_id), g.expires_at);
                }
                Mode::Local(Mutex::new(seen))
            }
        };
        Ok(Self {
            store,
            writes,
            mode,
        })
    }

    /// Records the ID; false when it was answered before (a replay).
    pub async fn first_use(&self, guard: &ReplayGuard, now_ms: i64) -> Result<bool, StoreError> {
        match &self.mode {
            Mode::Shared => {
                match self
                    .store
                    .remember_request_id(&guard.sp_entity_id, &guard.request_id, guard.expires_at)
                    .await
                {
                    Ok(()) => Ok(true),
                    Err(StoreError::Conflict(_)) => Ok(false),
                    Err(other) => Err(other),
                }
            }
            Mode::Local(seen) => {
                let fresh = {
                    let mut seen = seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    seen.expire(now_ms);
                    let key = (guard.sp_entity_id.clone(), guard.request_id.clone());
                    if seen.expires.contains_key(&key) {
                        false
                    } else {
                        seen.insert(key, guard.expires_at);
                        true
                    }
                };
                if fresh {
                    self.writes.record_request_id(guard.clone()).await;
                }
                Ok(fresh)
            }
        }
    }

    /// How many answered IDs are held in memory (SQLite; 0 on PostgreSQL).
    pub fn remembered(&self) -> usize {
        match &self.mode {
            Mode::Shared => 0,
            Mode::Local(seen) => seen
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .expires
                .len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: usize) -> Key {
        ("sp".to_string(), format!("id-{i}"))
    }

    #[test]
    fn expired_ids_are_forgotten_in_expiry_order() {
        let mut seen = Seen::default();
        for i in 0..1000 {
            seen.insert(key(i), 1_000 + i as i64);
        }
        seen.expire(1_499);
        assert_eq!(seen.expires.len(), 500);
        assert!(!seen.expires.contains_key(&key(499)));
        assert!(seen.expires.contains_key(&key(500)));
        // Re-answered after expiry: the later expiry stands when the old heap entry pops.
        seen.insert(key(0), 5_000);
        seen.expire(2_000);
        assert_eq!(seen.expires.len(), 1);
        assert_eq!(seen.expires.get(&key(0)), Some(&5_000));
        assert_eq!(seen.by_expiry.len(), 1);
    }

    #[test]
    fn the_cost_of_a_check_does_not_grow_with_the_ids_held() {
        // 200,000 live IDs, then 1,000 checks that each expire one: every call pops only what
        // expired, so the heap shrinks by exactly one per call.
        let mut seen = Seen::default();
        for i in 0..200_000 {
            seen.insert(key(i), i as i64);
        }
        for now in 0..1_000 {
            let before = seen.by_expiry.len();
            seen.expire(now);
            assert_eq!(before - seen.by_expiry.len(), 1);
        }
        assert_eq!(seen.expires.len(), 199_000);
    }
}
