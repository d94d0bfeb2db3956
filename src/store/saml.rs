//! Sign-in sessions, AuthnRequests waiting for a login, and the replay cache of request IDs.

use sqlx::Executor;

use super::users::{UserRow, USER_COLUMNS, USER_JOINS};
use super::{events, Store, StoreError};
use crate::events::NewEvent;

/// An idbridge sign-in session (the cookie holds the token; only its hash is stored).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SessionRow {
    pub id_hash: String,
    pub user_id: String,
    pub session_index: String,
    pub authn_instant: i64,
    pub created_at: i64,
    pub expires_at: i64,
    /// When the user last passed a second factor (`None`: password only).
    pub mfa_at: Option<i64>,
}

/// An AuthnRequest parked while the user signs in.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PendingRequestRow {
    pub id_hash: String,
    pub sp_entity_id: String,
    pub request_id: Option<String>,
    pub acs_url: String,
    pub relay_state: Option<String>,
    pub force_authn: i64,
    pub login_hint: Option<String>,
    pub browser_hash: String,
    pub created_at: i64,
    pub expires_at: i64,
    /// The user who passed the first factor, once they have.
    pub user_id: Option<String>,
    /// When the first factor passed (the assertion's AuthnInstant).
    pub authn_at: Option<i64>,
    /// When a second factor passed.
    pub mfa_at: Option<i64>,
    /// Whether the request asked for multi-factor authentication (1) or not (0).
    pub mfa_requested: i64,
}

/// A live session together with its user (one query on the sign-in hot path).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SessionUserRow {
    pub session_index: String,
    pub authn_instant: i64,
    pub session_expires_at: i64,
    pub session_mfa_at: Option<i64>,
    #[sqlx(flatten)]
    pub user: UserRow,
}

/// A request ID to remember so the request is answered once (the replay cache).
#[derive(Debug, Clone)]
pub struct ReplayGuard {
    pub sp_entity_id: String,
    pub request_id: String,
    pub expires_at: i64,
}

async fn insert_replay_guard<'e, E: Executor<'e, Database = sqlx::Any>>(
    executor: E,
    guard: &ReplayGuard,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO saml_seen_requests (sp_entity_id, request_id, expires_at) VALUES ($1, $2, $3)",
    )
    .bind(&guard.sp_entity_id)
    .bind(&guard.request_id)
    .bind(guard.expires_at)
    .execute(executor)
    .await?;
    Ok(())
}

impl Store {
    /// Reads a live session and its user.
    pub async fn find_session_user(
        &self,
        id_hash: &str,
        now_ms: i64,
    ) -> Result<Option<SessionUserRow>, StoreError> {
        Ok(sqlx::query_as::<_, SessionUserRow>(&format!(
            "SELECT s.session_index, s.authn_instant, s.expires_at AS session_expires_at, \
             s.mfa_at AS session_mfa_at, {USER_COLUMNS} FROM sso_sessions s JOIN users u ON u.id = s.user_id {USER_JOINS} \
             WHERE s.id_hash = $1 AND s.expires_at > $2"
        ))
        .bind(id_hash)
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Remembers a request ID until it expires; `Conflict` means it was seen before (a replay). until it expires; `Conflict` means it was seen before (a replay).
    pub async fn remember_request_id(
        &self,
        sp_entity_id: &str,
        request_id: &str,
        expires_at_ms: i64,
    ) -> Result<(), StoreError> {
        let guard = ReplayGuard {
            sp_entity_id: sp_entity_id.into(),
            request_id: request_id.into(),
            expires_at: expires_at_ms,
        };
        insert_replay_guard(&self.pool, &guard).await
    }

    /// Answered request IDs that have not expired (to reload the replay cache at start).
    pub async fn live_request_ids(&self, now_ms: i64) -> Result<Vec<ReplayGuard>, StoreError> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT sp_entity_id, request_id, expires_at FROM saml_seen_requests WHERE expires_at > $1",
        )
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(sp_entity_id, request_id, expires_at)| ReplayGuard {
                sp_entity_id,
                request_id,
                expires_at,
            })
            .collect())
    }

    /// Parks an AuthnRequest for the login form.
    pub async fn insert_pending_request(&self, row: &PendingRequestRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO saml_pending_requests (id_hash, sp_entity_id, request_id, acs_url, \
             relay_state, force_authn, login_hint, browser_hash, created_at, expires_at, \
             user_id, authn_at, mfa_at, mfa_requested) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(&row.id_hash)
        .bind(&row.sp_entity_id)
        .bind(&row.request_id)
        .bind(&row.acs_url)
        .bind(&row.relay_state)
        .bind(row.force_authn)
        .bind(&row.login_hint)
        .bind(&row.browser_hash)
        .bind(row.created_at)
        .bind(row.expires_at)
        .bind(&row.user_id)
        .bind(row.authn_at)
        .bind(row.mfa_at)
        .bind(row.mfa_requested)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records on a parked request that `user_id` passed the first factor at `at_ms` (and,
    /// for a passkey with user verification, a second factor too). Only an unclaimed request
    /// takes a user: a sign-in cannot switch accounts halfway.
    pub async fn set_pending_user(
        &self,
        id_hash: &str,
        user_id: &str,
        at_ms: i64,
        mfa_at_ms: Option<i64>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE saml_pending_requests SET user_id = $1, authn_at = $2, mfa_at = $3 \
             WHERE id_hash = $4 AND (user_id IS NULL OR user_id = $5)",
        )
        .bind(user_id)
        .bind(at_ms)
        .bind(mfa_at_ms)
        .bind(id_hash)
        .bind(user_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records on a parked request that its user passed a second factor at `at_ms`, with the
    /// event; false when the request is gone or belongs to another user.
    pub async fn set_pending_mfa(
        &self,
        id_hash: &str,
        user_id: &str,
        at_ms: i64,
        event: &NewEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE saml_pending_requests SET mfa_at = $1 WHERE id_hash = $2 AND user_id = $3",
        )
        .bind(at_ms)
        .bind(id_hash)
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
        let updated = done.rows_affected() == 1;
        if updated {
            events::insert(&mut *tx, event).await?;
        }
        tx.commit().await?;
        Ok(updated)
    }

    /// Reads a parked request that has not expired.
    pub async fn find_pending_request(
        &self,
        id_hash: &str,
        now_ms: i64,
    ) -> Result<Option<PendingRequestRow>, StoreError> {
        Ok(sqlx::query_as::<_, PendingRequestRow>(
            "SELECT id_hash, sp_entity_id, request_id, acs_url, relay_state, force_authn, \
             login_hint, browser_hash, created_at, expires_at, user_id, authn_at, mfa_at, \
             mfa_requested FROM saml_pending_requests WHERE id_hash = $1 AND expires_at > $2",
        )
        .bind(id_hash)
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Deletes a parked request; false if it was already used (so it is answered only once).
    pub async fn take_pending_request(&self, id_hash: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM saml_pending_requests WHERE id_hash = $1")
            .bind(id_hash)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Creates a sign-in session and records the sign-in event in one transaction.
    pub async fn insert_session(
        &self,
        row: &SessionRow,
        event: &NewEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO sso_sessions (id_hash, user_id, session_index, authn_instant, created_at, \
             expires_at, mfa_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&row.id_hash)
        .bind(&row.user_id)
        .bind(&row.session_index)
        .bind(row.authn_instant)
        .bind(row.created_at)
        .bind(row.expires_at)
        .bind(row.mfa_at)
        .execute(&mut *tx)
        .await?;
        events::insert(&mut *tx, event).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Reads a live session.
    pub async fn find_session(
        &self,
        id_hash: &str,
        now_ms: i64,
    ) -> Result<Option<SessionRow>, StoreError> {
        Ok(sqlx::query_as::<_, SessionRow>(
            "SELECT id_hash, user_id, session_index, authn_instant, created_at, expires_at, \
             mfa_at FROM sso_sessions WHERE id_hash = $1 AND expires_at > $2",
        )
        .bind(id_hash)
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Ends a session (if any) and records the event.
    pub async fn delete_session(
        &self,
        id_hash: &str,
        event: &NewEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("DELETE FROM sso_sessions WHERE id_hash = $1")
            .bind(id_hash)
            .execute(&mut *tx)
            .await?;
        events::insert(&mut *tx, event).await?;
        tx.commit().await?;
        self.note_change();
        Ok(done.rows_affected() == 1)
    }

    /// Ends every session of a user with one of the given SessionIndex values.
    pub async fn delete_sessions_by_index(
        &self,
        user_id: &str,
        session_index: &str,
    ) -> Result<u64, StoreError> {
        let done =
            sqlx::query("DELETE FROM sso_sessions WHERE user_id = $1 AND session_index = $2")
                .bind(user_id)
                .bind(session_index)
                .execute(&self.pool)
                .await?;
        self.note_change();
        Ok(done.rows_affected())
    }

    /// Deletes expired sessions, parked requests and replay-cache entries, in bounded batches.
    pub async fn purge_expired_saml_state(&self, now_ms: i64) -> Result<u64, StoreError> {
        let mut removed = 0;
        for (table, key) in [
            ("sso_sessions", "id_hash"),
            ("saml_pending_requests", "id_hash"),
            ("saml_seen_requests", "sp_entity_id, request_id"),
        ] {
            let sql = format!(
                "DELETE FROM {table} WHERE ({key}) IN \
                 (SELECT {key} FROM {table} WHERE expires_at <= $1 LIMIT $2)"
            );
            removed += self.delete_in_batches(&sql, now_ms).await?;
        }
        // No change to note: cached sessions carry their expiry and are not served past it.
        Ok(removed)
    }
}
