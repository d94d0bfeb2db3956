//! The replay cache of answered AuthnRequest IDs: each request ID is answered once.
//!
//! On SQLite (one node by nature: the database is a local file) the check is made in memory
//! and the ID is persisted write-behind, then reloaded at start-up, so a sign-in costs no
//! synchronous commit. On PostgreSQL several nodes answer requests, so the check is the
//! database's unique key, committed before the response leaves.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::store::{Backend, ReplayGuard, Store, StoreError, WriteBehind};

/// Entries kept in memory before expired ones are swept out.
const SWEEP_ABOVE: usize = 50_000;

/// Where the check is made.
#[derive(Debug)]
enum Mode {
    Shared,
    Local(Mutex<HashMap<(String, String), i64>>),
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
                let seen = store
                    .live_request_ids(now_ms)
                    .await?
                    .into_iter()
                    .map(|g| ((g.sp_entity_id, g.request_id), g.expires_at))
                    .collect();
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
                    if seen.len() > SWEEP_ABOVE {
                        seen.retain(|_, expires| *expires > now_ms);
                    }
                    let key = (guard.sp_entity_id.clone(), guard.request_id.clone());
                    match seen.get(&key) {
                        Some(expires) if *expires > now_ms => false,
                        _ => {
                            seen.insert(key, guard.expires_at);
                            true
                        }
                    }
                };
                if fresh {
                    self.writes.record_request_id(guard.clone()).await;
                }
                Ok(fresh)
            }
        }
    }
}
