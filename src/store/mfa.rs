//! Second factors: the TOTP authenticator and recovery codes of each user, and the
//! per-user MFA flags.

use super::{events, Store, StoreError};
use crate::events::NewEvent;

/// Whose second factor: a directory user's or a console admin's (their own tables, the same
/// shape).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FactorOwner<'a> {
    /// A user of the directory, by id.
    User(&'a str),
    /// An admin account of the console, by id.
    Admin(&'a str),
}

impl<'a> FactorOwner<'a> {
    /// (TOTP table, recovery-code table, owner column).
    fn tables(self) -> (&'static str, &'static str, &'static str) {
        match self {
            FactorOwner::User(_) => ("mfa_totp", "mfa_recovery_codes", "user_id"),
            FactorOwner::Admin(_) => ("admin_mfa_totp", "admin_mfa_recovery_codes", "admin_id"),
        }
    }

    fn id(self) -> &'a str {
        match self {
            FactorOwner::User(id) | FactorOwner::Admin(id) => id,
        }
    }
}

/// A TOTP authenticator (the secret sealed with the data key).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TotpRow {
    /// The user's or admin's id.
    pub owner_id: String,
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
    /// The TOTP authenticator, confirmed or waiting for its confirming code.
    pub async fn totp(&self, owner: FactorOwner<'_>) -> Result<Option<TotpRow>, StoreError> {
        let (table, _, column) = owner.tables();
        Ok(sqlx::query_as::<_, TotpRow>(&format!(
            "SELECT {column} AS owner_id, secret, confirmed_at, last_step, last_used_at, \
             created_at FROM {table} WHERE {column} = $1"
        ))
        .bind(owner.id())
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Starts (or restarts) a TOTP enrolment with a new unconfirmed secret. A confirmed
    /// authenticator is never replaced this way: it must be removed first.
    pub async fn begin_totp_enrolment(
        &self,
        owner: FactorOwner<'_>,
        sealed_secret: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let (table, _, column) = owner.tables();
        let user_id = owner.id();
        let mut tx = self.pool.begin().await?;
        sqlx::query(&format!(
            "DELETE FROM {table} WHERE {column} = $1 AND confirmed_at IS NULL"
        ))
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
        let done = sqlx::query(&format!(
            "INSERT INTO {table} ({column}, secret, created_at) \
             SELECT $1, $2, $3 WHERE NOT EXISTS (SELECT 1 FROM {table} WHERE {column} = $4)"
        ))
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
        owner: FactorOwner<'_>,
        step: i64,
        now_ms: i64,
        event: Option<&NewEvent>,
    ) -> Result<bool, StoreError> {
        let (table, _, column) = owner.tables();
        let user_id = owner.id();
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(&format!(
            "UPDATE {table} SET last_step = $1, last_used_at = $2, \
             confirmed_at = COALESCE(confirmed_at, $3) WHERE {column} = $4 AND last_step < $5"
        ))
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
        owner: FactorOwner<'_>,
        digests: &[String],
        now_ms: i64,
        event: &NewEvent,
    ) -> Result<(), StoreError> {
        let (_, table, column) = owner.tables();
        let user_id = owner.id();
        let mut tx = self.pool.begin().await?;
        sqlx::query(&format!("DELETE FROM {table} WHERE {column} = $1"))
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        for digest in digests {
            sqlx::query(&format!(
                "INSERT INTO {table} ({column}, code_hash, created_at) VALUES ($1, $2, $3)"
            ))
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
        owner: FactorOwner<'_>,
        digest: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let (_, table, column) = owner.tables();
        let done = sqlx::query(&format!(
            "UPDATE {table} SET used_at = $1 \
             WHERE {column} = $2 AND code_hash = $3 AND used_at IS NULL"
        ))
        .bind(now_ms)
        .bind(owner.id())
        .bind(digest)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The user's confirmed TOTP and unused recovery codes.
    pub async fn factor_counts(&self, user_id: &str) -> Result<FactorCounts, StoreError> {
        let (totp, recovery_codes, passkeys): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM mfa_totp WHERE user_id = $1 AND confirmed_at IS NOT NULL), \
                    (SELECT COUNT(*) FROM mfa_recovery_codes WHERE user_id = $2 AND used_at IS NULL), \
                    (SELECT COUNT(*) FROM mfa_passkeys WHERE user_id = $3)",
        )
        .bind(user_id)
        .bind(user_id)
        .bind(user_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(FactorCounts {
            totp: totp > 0,
            passkeys,
            recovery_codes,
        })
    }

    /// An admin's confirmed TOTP and unused recovery codes (admins have no passkeys).
    pub async fn admin_factor_counts(&self, admin_id: &str) -> Result<FactorCounts, StoreError> {
        let (totp, recovery_codes): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM admin_mfa_totp \
                     WHERE admin_id = $1 AND confirmed_at IS NOT NULL), \
                    (SELECT COUNT(*) FROM admin_mfa_recovery_codes \
                     WHERE admin_id = $2 AND used_at IS NULL)",
        )
        .bind(admin_id)
        .bind(admin_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(FactorCounts {
            totp: totp > 0,
            passkeys: 0,
            recovery_codes,
        })
    }

    /// Removes the TOTP authenticator (confirmed or not), with its event.
    pub async fn delete_totp(
        &self,
        owner: FactorOwner<'_>,
        event: &NewEvent,
    ) -> Result<bool, StoreError> {
        let (table, _, column) = owner.tables();
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(&format!("DELETE FROM {table} WHERE {column} = $1"))
            .bind(owner.id())
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
        for table in [
            "mfa_totp",
            "mfa_recovery_codes",
            "mfa_passkeys",
            "mfa_passkey_ceremonies",
        ] {
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
