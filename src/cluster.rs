//! Several nodes on one database: the work only one node may do at a time.
//!
//! The delta import of attributes, the password-expiry scan and the janitor's purges are
//! cluster-wide chores: run by every node they would do the work, and its Graph requests,
//! once per node. One node holds the [`SINGLETON_WORK`] lease and does them; it renews the
//! lease every third of its length, and when it stops renewing (it died, or lost the
//! database) another node takes the lease over within one lease.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::{Store, WorkLease};

/// The lease of the cluster-wide chores.
pub const SINGLETON_WORK: &str = "singleton-work";

/// Whether this node holds the cluster-wide chores, shared by the tasks that do them.
#[derive(Debug, Clone, Default)]
pub struct Duty {
    held: Arc<std::sync::Mutex<Option<WorkLease>>>,
}

impl Duty {
    /// Whether this node should do the cluster-wide chores now.
    pub fn held(&self) -> bool {
        self.lock().is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<WorkLease>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes or renews the lease every third of `lease` until `stop`, then gives it up so
    /// another node need not wait for it to run out.
    pub async fn keep(self, store: Store, node: String, lease: Duration, stop: CancellationToken) {
        let ttl = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        loop {
            // The stored expiry is wall-clock time shared by all nodes: read at the edge.
            let now = chrono::Utc::now().timestamp_millis();
            let current = *self.lock();
            let next = match current {
                Some(held) => store.renew_work_lease(SINGLETON_WORK, held, now, ttl).await,
                None => {
                    store
                        .acquire_work_lease(SINGLETON_WORK, &node, now, ttl)
                        .await
                }
            };
            match next {
                Ok(next) => {
                    if next.is_some() != current.is_some() {
                        tracing::info!(
                            node = %node,
                            held = next.is_some(),
                            "cluster-wide chores (delta import, expiry scan, janitor) {}",
                            if next.is_some() { "taken by this node" } else { "passed to another node" }
                        );
                    }
                    *self.lock() = next;
                }
                Err(err) => {
                    // Unknown whether it is still held: stop doing the chores until it is
                    // known, since another node may take them once the lease runs out.
                    tracing::warn!(%err, "could not renew the lease of the cluster-wide chores");
                    if current.is_some_and(|c| c.expires_at - ttl / 6 < now) {
                        *self.lock() = None;
                    }
                }
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(lease / 3) => {}
            }
        }
        let held = self.lock().take();
        if let Some(held) = held {
            if let Err(err) = store.release_work_lease(SINGLETON_WORK, held).await {
                tracing::warn!(%err, "could not give up the lease of the cluster-wide chores");
            }
        }
    }
}
