//! Failed sign-in counters and locks (see `crate::throttle`).

use super::{Store, StoreError};

/// A counter after a failure was added to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureCount {
    /// Failures decided in the current window.
    pub failures: i64,
    /// Attempts admitted and not yet decided, this one included.
    pub pending: i64,
    /// Unix ms until which the key is locked (0: never locked).
    pub locked_until: i64,
}

impl Store {
    /// The latest `locked_until` (Unix ms) of the given keys; 0 when none is stored.
    pub async fn throttle_locked_until(&self, keys: &[&str]) -> Result<i64, StoreError> {
        let mut latest = 0;
        // One primary-key read per key (two at most): cheaper than building an IN list.
        for key in keys {
            let row: Option<(i64,)> =
                sqlx::query_as("SELECT locked_until FROM sign_in_throttle WHERE key = $1")
                    .bind(*key)
                    .fetch_optional(&self.pool)
                    .await?;
            if let Some((until,)) = row {
                latest = latest.max(until);
            }
        }
        Ok(latest)
    }

    /// Counts an attempt in flight on `key`; the window restarts when it began at or before
    /// `window_expired_ms`.
    pub async fn throttle_add_attempt(
        &self,
        key: &str,
        now_ms: i64,
        window_expired_ms: i64,
    ) -> Result<FailureCount, StoreError> {
        let (failures, pending, locked_until): (i64, i64, i64) = sqlx::query_as(
            "INSERT INTO sign_in_throttle (key, failures, pending, window_start, locked_until) \
             VALUES ($1, 0, 1, $2, 0) \
             ON CONFLICT (key) DO UPDATE SET \
               failures = CASE WHEN sign_in_throttle.window_start <= $3 THEN 0 \
                          ELSE sign_in_throttle.failures END, \
               pending = CASE WHEN sign_in_throttle.window_start <= $3 THEN 1 \
                         ELSE sign_in_throttle.pending + 1 END, \
               window_start = CASE WHEN sign_in_throttle.window_start <= $3 THEN $2 \
                              ELSE sign_in_throttle.window_start END \
             RETURNING failures, pending, locked_until",
        )
        .bind(key)
        .bind(now_ms)
        .bind(window_expired_ms)
        .fetch_one(&self.pool)
        .await?;
        Ok(FailureCount {
            failures,
            pending,
            locked_until,
        })
    }

    /// Decides an attempt in flight on `key` as a failure.
    pub async fn throttle_add_failure(&self, key: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE sign_in_throttle SET failures = failures + 1, \
             pending = CASE WHEN pending > 0 THEN pending - 1 ELSE 0 END WHERE key = $1",
        )
        .bind(key)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn throttle_lock(
        &self,
        key: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE sign_in_throttle SET locked_until = $2, failures = 0, pending = 0, \
             window_start = $3 WHERE key = $1",
        )
        .bind(key)
        .bind(until_ms)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Takes an attempt in flight back from `key` (it succeeded, or was not checked).
    pub async fn throttle_release(&self, key: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE sign_in_throttle SET pending = pending - 1 WHERE key = $1 AND pending > 0",
        )
        .bind(key)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets a key's failures and lock; true when there was something to forget.
    pub async fn throttle_clear(&self, key: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM sign_in_throttle WHERE key = $1")
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Deletes counters whose window and lock both ended before `before_ms`.
    pub async fn purge_throttle(&self, before_ms: i64) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "DELETE FROM sign_in_throttle WHERE window_start < $1 AND locked_until < $1",
        )
        .bind(before_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Deletes events older than `before_ms` (the retention setting).
    pub async fn purge_events_before(&self, before_ms: i64) -> Result<u64, StoreError> {
        self.delete_in_batches(
            "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE at < $1 LIMIT $2)",
            before_ms,
        )
        .await
    }
}
