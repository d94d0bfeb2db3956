//! Password-reset links: stored by token hash, used once, dying with any password change.

use sqlx::{Any, Executor};

use super::{events, Store, StoreError};
use crate::events::NewEvent;

/// Why a reset link stopped working before it expired.
pub const ENDED_USED: &str = "used";
/// Every link of a user ends when their password changes (by any path).
pub const ENDED_PASSWORD_CHANGED: &str = "password_changed";

/// A stored reset link.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ResetTokenRow {
    pub id_hash: String,
    pub user_id: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub ended_at: Option<i64>,
    /// [`ENDED_USED`] or [`ENDED_PASSWORD_CHANGED`].
    pub ended: Option<String>,
}

/// Ends every live reset link of a user (in the transaction of a password change).
pub(super) async fn end_reset_tokens<'e, E>(
    executor: E,
    user_id: &str,
    reason: &str,
    now_ms: i64,
) -> Result<(), StoreError>
where
    E: Executor<'e, Database = Any>,
{
    sqlx::query(
        "UPDATE password_reset_tokens SET ended_at = $2, ended = $3 \
         WHERE user_id = $1 AND ended_at IS NULL",
    )
    .bind(user_id)
    .bind(now_ms)
    .bind(reason)
    .execute(executor)
    .await?;
    Ok(())
}

impl Store {
    /// Stores a new reset link and records its event in one transaction.
    pub async fn insert_reset_token(
        &self,
        row: &ResetTokenRow,
        event: &NewEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO password_reset_tokens (id_hash, user_id, created_at, expires_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(&row.id_hash)
        .bind(&row.user_id)
        .bind(row.created_at)
        .bind(row.expires_at)
        .execute(&mut *tx)
        .await?;
        events::insert(&mut *tx, event).await?;
        tx.commit().await?;
        Ok(())
    }

    /// How many reset links a user was sent since `since_ms` (a cap on mail per account).
    pub async fn count_reset_tokens_since(
        &self,
        user_id: &str,
        since_ms: i64,
    ) -> Result<i64, StoreError> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM password_reset_tokens WHERE user_id = $1 AND created_at >= $2",
        )
        .bind(user_id)
        .bind(since_ms)
        .fetch_one(&self.pool)
        .await?;
        Ok(n)
    }

    /// A reset link by token hash, whatever its state.
    pub async fn find_reset_token(
        &self,
        id_hash: &str,
    ) -> Result<Option<ResetTokenRow>, StoreError> {
        Ok(sqlx::query_as::<_, ResetTokenRow>(
            "SELECT id_hash, user_id, created_at, expires_at, ended_at, ended \
             FROM password_reset_tokens WHERE id_hash = $1",
        )
        .bind(id_hash)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Takes a live link for its one use: true for exactly one caller, however many race.
    pub async fn claim_reset_token(&self, id_hash: &str, now_ms: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE password_reset_tokens SET ended_at = $2, ended = $3 \
             WHERE id_hash = $1 AND ended_at IS NULL AND expires_at > $2",
        )
        .bind(id_hash)
        .bind(now_ms)
        .bind(ENDED_USED)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Deletes links that expired before `before_ms` (the janitor).
    pub async fn purge_reset_tokens(&self, before_ms: i64) -> Result<u64, StoreError> {
        self.delete_in_batches(
            "DELETE FROM password_reset_tokens WHERE id_hash IN \
             (SELECT id_hash FROM password_reset_tokens WHERE expires_at <= $1 LIMIT $2)",
            before_ms,
        )
        .await
    }
}
