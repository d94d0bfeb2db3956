//! Second factors: the TOTP authenticator and recovery codes of each user, and the
//! per-user MFA flags.

use super::{events, Store, StoreError};
use crate::events::NewEvent;

/// A user's TOTP authenticator (the secret sealed with the data key).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TotpRow {
    pub user_id: String,
    pub secret: String,
    /// `None` while enrolment waits for the confirming code.
    pub confirmed_at: Option<i64>,
    /// The last accepted time step (RFC 6238 §5.2: a code is accepted once).
    pub last_step: i64,
    pub last_used_at: Option<i64>,
    pub created_at: i64,
}

/// What second factors a user has, for pages and the sign-in flow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FactorCounts {
    /// A confirmed TOTP authenticator.
    pub totp: bool,
    /// Registered passkeys.
    pub passkeys: i64,
    /// Unused recovery codes left.
    pub recovery_codes: i64,
}

impl Store {
    /// The user's TOTP authenticator, confirmed or waiting for its confirming code.
    pub async fn totp(&self, user_id: &str) -> Result<Option<TotpRow>, StoreError> {
        Ok(sqlx::query_as::<_, TotpRow>(
            "SELECT user_id, secret, confirmed_at, last_step, last_used_at, created_at \
             FROM mfa_totp WHERE user_id = $1",
        )
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Starts (or restarts) a TOTP enrolment with a new unconfirmed secret. A confirmed
    /// authenticator is never replaced this way: it must be removed first.
    pub async fn begin_totp_enrolment(
        &self,
        user_id: &str,
        sealed_secret: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM mfa_totp WHERE user_id = $1 AND confirmed_at IS NULL")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query(
            "INSERT INTO mfa_totp (user_id, secret, created_at) \
             SELECT $1, $2, $3 WHERE NOT EXISTS (SELECT 1 FROM mfa_totp WHERE user_id = $4)",
        )
        .bind(user_id)
        .bind(sealed_secret)
        .bind(now_ms)
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// Takes a TOTP code's time step: true only if `step` is later than every step accepted
    /// before (so a code, or an older one, is accepted once, even by two nodes at once), and
    /// confirms an enrolment (with `event`, in the same transaction) when it was waiting.
    pub async fn take_totp_step(
        &self,
        user_id: &str,
        step: i64,
        now_ms: i64,
        event: Option<&NewEvent>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE mfa_totp SET last_step = $1, last_used_at = $2, \
             confirmed_at = COALESCE(confirmed_at, $3) WHERE user_id = $4 AND last_step < $5",
        )
        .bind(step)
        .bind(now_ms)
        .bind(now_ms)
        .bind(user_id)
        .bind(step)
        .execute(&mut *tx)
        .await?;
        let taken = done.rows_affected() == 1;
        if taken {
            if let Some(event) = event {
                events::insert(&mut *tx, event).await?;
            }
        }
        tx.commit().await?;
        Ok(taken)
    }

    /// Replaces the user's recovery codes with new digests.
    pub async fn replace_recovery_codes(
        &self,
        user_id: &str,
        digests: &[String],
        now_ms: i64,
        event: &NewEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM mfa_recovery_codes WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        for digest in digests {
            sqlx::query(
                "INSERT INTO mfa_recovery_codes (user_id, code_hash, created_at) VALUES ($1, $2, $3)",
            )
            .bind(user_id)
            .bind(digest)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        }
        events::insert(&mut *tx, event).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Uses a recovery code: true only the first time (the update is the check, so two
    /// sign-ins racing with one code cannot both pass).
    pub async fn use_recovery_code(
        &self,
        user_id: &str,
        digest: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE mfa_recovery_codes SET used_at = $1 \
             WHERE user_id = $2 AND code_hash = $3 AND used_at IS NULL",
        )
        .bind(now_ms)
        .bind(user_id)
        .bind(digest)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The user's confirmed TOTP and unused recovery codes.
    pub async fn factor_counts(&self, user_id: &str) -> Result<FactorCounts, StoreError> {
        let (totp, recovery_codes): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM mfa_totp WHERE user_id = $1 AND confirmed_at IS NOT NULL), \
                    (SELECT COUNT(*) FROM mfa_recovery_codes WHERE user_id = $2 AND used_at IS NULL)",
        )
        .bind(user_id)
        .bind(user_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(FactorCounts {
            totp: totp > 0,
            // Counted once the passkey table lands (migration 0012).
            passkeys: 0,
            recovery_codes,
        })
    }

    /// Removes the user's TOTP authenticator (confirmed or not), with its event.
    pub async fn delete_totp(&self, user_id: &str, event: &NewEvent) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("DELETE FROM mfa_totp WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        events::insert(&mut *tx, event).await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// Removes every second factor of a user (TOTP, recovery codes, and the tables later
    /// factors add) with the event, in one transaction.
    pub async fn reset_factors(&self, user_id: &str, event: &NewEvent) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for table in ["mfa_totp", "mfa_recovery_codes"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE user_id = $1"))
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
        }
        events::insert(&mut *tx, event).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Sets whether the user must change their password at the next sign-in, with its event.
    pub async fn set_must_change_password(
        &self,
        user_id: &str,
        must: bool,
        event: Option<&NewEvent>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE users SET must_change_password = $1 WHERE id = $2")
            .bind(i64::from(must))
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        if let Some(event) = event {
            events::insert(&mut *tx, event).await?;
        }
        tx.commit().await?;
        self.note_change();
        Ok(())
    }

    /// Sets whether the `chosen` MFA policy requires a second factor of the user.
    pub async fn set_mfa_required(
        &self,
        user_id: &str,
        required: bool,
        event: &NewEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE users SET mfa_required = $1 WHERE id = $2")
            .bind(i64::from(required))
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        events::insert(&mut *tx, event).await?;
        tx.commit().await?;
        self.note_change();
        Ok(())
    }
}
