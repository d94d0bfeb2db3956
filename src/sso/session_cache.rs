//! Sessions with their user, kept in memory so a sign-in with a session reads no database.
//!
//! An entry is only good while the store's change epoch stays where it was when the entry was
//! read: any write to a user, a binding or a session ending moves it (at once for this process,
//! within the poll interval for the CLI and other nodes), and the whole cache is dropped. A new
//! session moves nothing, since no cached entry can be affected by it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::directory::User;
use crate::store::SessionRow;

/// A cached session and its user, as read together.
pub type CachedSession = Arc<(SessionRow, User)>;

/// The cache; at most `max` entries, then it starts over.
#[derive(Debug)]
pub struct SessionCache {
    inner: Mutex<Entries>,
    max: usize,
}

#[derive(Debug, Default)]
struct Entries {
    epoch: u64,
    by_hash: HashMap<String, CachedSession>,
}

impl SessionCache {
    /// An empty cache holding at most `max` sessions.
    pub fn new(max: usize) -> Self {
        Self {
            inner: Mutex::new(Entries::default()),
            max,
        }
    }

    /// The session with this token hash, if cached at `epoch` and not expired at `now_ms`.
    pub fn get(&self, id_hash: &str, epoch: u64, now_ms: i64) -> Option<CachedSession> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.epoch != epoch {
            inner.by_hash.clear();
            inner.epoch = epoch;
            return None;
        }
        inner
            .by_hash
            .get(id_hash)
            .filter(|entry| entry.0.expires_at > now_ms)
            .cloned()
    }

    /// Keeps a session read from the database when the epoch was `epoch` (read before the
    /// query, so a change committed meanwhile leaves the entry already stale).
    pub fn put(&self, epoch: u64, entry: CachedSession) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.epoch != epoch {
            if epoch < inner.epoch {
                return;
            }
            inner.by_hash.clear();
            inner.epoch = epoch;
        }
        if inner.by_hash.len() >= self.max {
            inner.by_hash.clear();
        }
        inner.by_hash.insert(entry.0.id_hash.clone(), entry);
    }
}
