//! The replay cache of answered AuthnRequest IDs: each request ID is answered once.
//!
//! On SQLite (one node by nature: the database is a local file) the check is made in memory
//! and the ID is persisted write-behind, then reloaded at start-up, so a sign-in costs no
//! synchronous commit. On PostgreSQL several nodes answer requests, so the check is the
//! database's unique key, committed before the response leaves.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use openssl::sha::Sha256;

use crate::store::{Backend, ReplayGuard, Store, StoreError, WriteBehind};

/// Width of one expiry bucket.
const BUCKET_MS: i64 = 60_000;

/// Where the check is made.
#[derive(Debug)]
enum Mode {
    Shared,
    Local(Mutex<Seen>),
}

/// Why a request ID could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The in-memory cache holds its configured maximum of live IDs: forgetting one early
    /// would let its request be replayed, so new requests wait instead (HTTP 503).
    #[error("the replay cache holds its maximum of {0} live request IDs")]
    Full(usize),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The answered IDs, in buckets by expiry minute, oldest first.
///
/// Expiry drops whole buckets, so forgetting costs O(1) per request amortised whatever the
/// rate (a scan of every ID on each sign-in made each one slower as the rate grew). A check
/// probes one set per live minute (about 16 with the default request lifetime). An ID is a
/// 128-bit digest of (SP, request ID): 16 bytes a slot whatever the request ID's length, so
/// the memory is bounded by `max_ids` × about 40 bytes. An ID stays up to one bucket longer
/// than its expiry, which only refuses a request that is stale anyway.
#[derive(Debug)]
struct Seen {
    buckets: VecDeque<(i64, HashSet<u128>)>,
    len: usize,
    max_ids: usize,
}

impl Seen {
    fn new(max_ids: usize) -> Self {
        Self {
            buckets: VecDeque::new(),
            len: 0,
            max_ids,
        }
    }

    fn digest(sp_entity_id: &str, request_id: &str) -> u128 {
        let mut sha = Sha256::new();
        sha.update(sp_entity_id.as_bytes());
        sha.update(&[0]);
        sha.update(request_id.as_bytes());
        let full = sha.finish();
        let mut half = [0u8; 16];
        half.copy_from_slice(full.get(..16).unwrap_or(&[0u8; 16]));
        u128::from_le_bytes(half)
    }

    fn contains(&self, id: u128) -> bool {
        self.buckets.iter().any(|(_, ids)| ids.contains(&id))
    }

    /// Adds an ID; false when the cache is full.
    fn insert(&mut self, id: u128, expires_at: i64) -> bool {
        if self.len >= self.max_ids {
            return false;
        }
        let minute = expires_at.div_euclid(BUCKET_MS);
        let at = self.buckets.partition_point(|(m, _)| *m < minute);
        match self.buckets.get_mut(at) {
            Some((m, ids)) if *m == minute => {
                ids.insert(id);
            }
            _ => self.buckets.insert(at, (minute, HashSet::from([id]))),
        }
        self.len += 1;
        true
    }

    /// Forgets every bucket whose IDs have all expired at `now_ms`.
    fn expire(&mut self, now_ms: i64) {
        while let Some((minute, _)) = self.buckets.front() {
            if (minute + 1) * BUCKET_MS > now_ms {
                break;
            }
            if let Some((_, ids)) = self.buckets.pop_front() {
                self.len -= ids.len();
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
    /// Builds the cache for the store's backend, reloading live IDs on SQLite; at most
    /// `max_ids` live IDs are held in memory.
    pub async fn load(
        store: Store,
        writes: WriteBehind,
        max_ids: usize,
        now_ms: i64,
    ) -> Result<Self, StoreError> {
        let mode = match store.backend() {
            Backend::Postgres => Mode::Shared,
            Backend::Sqlite => {
                let mut seen = Seen::new(max_ids);
                for g in store.live_request_ids(now_ms).await? {
                    let id = Seen::digest(&g.sp_entity_id, &g.request_id);
                    if !seen.contains(id) && !seen.insert(id, g.expires_at) {
                        tracing::warn!(max_ids, "the replay cache is full at start-up");
                        break;
                    }
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
    pub async fn first_use(&self, guard: &ReplayGuard, now_ms: i64) -> Result<bool, ReplayError> {
        match &self.mode {
            Mode::Shared => {
                match self
                    .store
                    .remember_request_id(&guard.sp_entity_id, &guard.request_id, guard.expires_at)
                    .await
                {
                    Ok(()) => Ok(true),
                    Err(StoreError::Conflict(_)) => Ok(false),
                    Err(other) => Err(other.into()),
                }
            }
            Mode::Local(seen) => {
                let id = Seen::digest(&guard.sp_entity_id, &guard.request_id);
                let fresh = {
                    let mut seen = seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    seen.expire(now_ms);
                    if seen.contains(id) {
                        false
                    } else if seen.insert(id, guard.expires_at) {
                        true
                    } else {
                        return Err(ReplayError::Full(seen.max_ids));
                    }
                };
                if fresh {
                    self.writes.record_request_id(guard.clone()).await;
                }
                Ok(fresh)
            }
        }
    }

    /// How many answered IDs are held in memory (SQLite; 0 on PostgreSQL, where the database
    /// holds them).
    pub fn remembered(&self) -> usize {
        match &self.mode {
            Mode::Shared => 0,
            Mode::Local(seen) => seen.lock().unwrap_or_else(|p| p.into_inner()).len,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: usize) -> u128 {
        Seen::digest("sp", &format!("id-{i}"))
    }

    #[test]
    fn expired_ids_are_forgotten_a_minute_at_a_time() {
        let mut seen = Seen::new(10_000);
        for i in 0..1000 {
            assert!(seen.insert(id(i), i as i64 * 1_000));
        }
        assert_eq!(seen.buckets.len(), 17);
        // At 120 s the buckets of minutes 0 and 1 have expired entirely.
        seen.expire(120_000);
        assert_eq!(seen.len, 880);
        assert!(!seen.contains(id(119)));
        assert!(seen.contains(id(120)));
        // Minute 2 is kept while any of its IDs may still be live.
        seen.expire(179_999);
        assert!(seen.contains(id(179)));
        seen.expire(2_000_000);
        assert_eq!(seen.len, 0);
        assert!(seen.buckets.is_empty());
    }

    #[test]
    fn the_cache_refuses_beyond_its_bound_instead_of_forgetting() {
        let mut seen = Seen::new(3);
        assert!(seen.insert(id(1), 1));
        assert!(seen.insert(id(2), 1));
        assert!(seen.insert(id(3), 1));
        assert!(!seen.insert(id(4), 1), "full: refused");
        assert!(seen.contains(id(1)), "nothing was forgotten early");
        seen.expire(BUCKET_MS);
        assert!(
            seen.insert(id(4), BUCKET_MS * 2),
            "room again once IDs expire"
        );
    }

    #[test]
    fn the_cost_of_a_check_does_not_grow_with_the_ids_held() {
        // 600,000 live IDs over 14 minutes (714 SSO/s): every expiry drops whole buckets and
        // a check probes one set per minute, so the work per check is bounded by the minutes.
        let mut seen = Seen::new(1_000_000);
        for i in 0..600_000 {
            seen.insert(id(i), (i as i64) * 14 / 10);
        }
        assert!(seen.buckets.len() <= 15);
        let before = seen.len;
        seen.expire(60_000);
        assert_eq!(
            before - seen.len,
            42_858,
            "one bucket: the first minute's IDs"
        );
        assert!(!seen.contains(id(1_000_000)));
    }
}
