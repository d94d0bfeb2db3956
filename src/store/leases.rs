//! Leases of shared work: fencing tokens, and the work one node does at a time.
//!
//! Every lease carries a token from one strictly increasing counter. Writes that finish leased
//! work name the token they were claimed under, so they change nothing once another node has
//! taken the work over: a node that stalled past its lease cannot undo newer work.

use sqlx::{Any, Executor};

use super::{Store, StoreError};

/// A lease on singleton work, as held by this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkLease {
    /// The fencing token of this holding.
    pub token: i64,
    /// Until when it is held unless renewed (ms since the epoch).
    pub expires_at: i64,
}

/// Takes the next fencing token (in the caller's transaction).
pub(super) async fn next_token<'e, E: Executor<'e, Database = Any>>(
    executor: E,
) -> Result<i64, StoreError> {
    let (n,): (i64,) = sqlx::query_as("UPDATE lease_tokens SET n = n + 1 WHERE id = 1 RETURNING n")
        .fetch_one(executor)
        .await?;
    Ok(n)
}

impl Store {
    /// Takes the lease `name` for `owner` until `now_ms + ttl_ms` if nobody holds it, it
    /// expired, or `owner` holds it already (a renewal that came too late, or a restart).
    /// `None` while another node holds it.
    pub async fn acquire_work_lease(
        &self,
        name: &str,
        owner: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Option<WorkLease>, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO work_leases (name, owner, token, expires_at) VALUES ($1, NULL, 0, 0) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .execute(&mut *tx)
        .await?;
        let token = next_token(&mut *tx).await?;
        // On PostgreSQL the row lock makes a second node wait here and then see the first
        // node's lease: exactly one of two concurrent takers gets it.
        let taken = sqlx::query(
            "UPDATE work_leases SET owner = $2, token = $3, expires_at = $4 \
             WHERE name = $1 AND (owner IS NULL OR owner = $2 OR expires_at < $5)",
        )
        .bind(name)
        .bind(owner)
        .bind(token)
        .bind(now_ms + ttl_ms)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if taken == 0 {
            tx.rollback().await?;
            return Ok(None);
        }
        tx.commit().await?;
        Ok(Some(WorkLease {
            token,
            expires_at: now_ms + ttl_ms,
        }))
    }

    /// Extends a lease still held under `lease.token`; `None` once it was lost.
    pub async fn renew_work_lease(
        &self,
        name: &str,
        lease: WorkLease,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Option<WorkLease>, StoreError> {
        let renewed = sqlx::query(
            "UPDATE work_leases SET expires_at = $3 WHERE name = $1 AND token = $2 \
             AND expires_at >= $4",
        )
        .bind(name)
        .bind(lease.token)
        .bind(now_ms + ttl_ms)
        .bind(now_ms)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok((renewed > 0).then_some(WorkLease {
            token: lease.token,
            expires_at: now_ms + ttl_ms,
        }))
    }

    /// Gives a lease up at once (a clean stop), so another node need not wait for it.
    pub async fn release_work_lease(&self, name: &str, lease: WorkLease) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE work_leases SET owner = NULL, expires_at = 0 WHERE name = $1 AND token = $2",
        )
        .bind(name)
        .bind(lease.token)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Who holds each lease and until when (for status views and tests).
    pub async fn work_leases(&self) -> Result<Vec<(String, Option<String>, i64)>, StoreError> {
        Ok(
            sqlx::query_as("SELECT name, owner, expires_at FROM work_leases ORDER BY name")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Releases every lease `owner` holds, outbox jobs included: called when a node starts,
    /// since whatever a node of that name held before its start belongs to a process that is
    /// gone. Its jobs are due again at once instead of after their lease. On SQLite (one process
    /// by nature) every lease is released, whatever its owner. Returns the jobs released.
    pub async fn release_leases_of(&self, owner: &str) -> Result<u64, StoreError> {
        let any_owner = self.backend == super::Backend::Sqlite;
        let mut tx = self.pool.begin().await?;
        let jobs = sqlx::query(
            "UPDATE m365_outbox SET lease_until = NULL, lease_owner = NULL, lease_token = NULL \
             WHERE lease_until IS NOT NULL AND ($2 = 1 OR lease_owner = $1)",
        )
        .bind(owner)
        .bind(i64::from(any_owner))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query(
            "UPDATE work_leases SET owner = NULL, expires_at = 0 WHERE $2 = 1 OR owner = $1",
        )
        .bind(owner)
        .bind(i64::from(any_owner))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(jobs)
    }
}
