//! WebAuthn passkeys and the server-side state of their ceremonies (see `crate::mfa::passkey`).

use super::{events, Store, StoreError};
use crate::events::NewEvent;

/// A registered passkey. `credential` is webauthn-rs's `Passkey` as JSON.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PasskeyRow {
    pub id: String,
    pub user_id: String,
    /// The credential ID, base64url (unique across users).
    pub credential_id: String,
    pub label: String,
    pub credential: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}

/// A ceremony in progress, stored by the hash of the token the browser holds.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CeremonyRow {
    pub id_hash: String,
    pub kind: String,
    pub user_id: Option<String>,
    pub pending_hash: Option<String>,
    /// webauthn-rs's registration or authentication state as JSON.
    pub state: String,
    pub created_at: i64,
    pub expires_at: i64,
}

const PASSKEY_COLUMNS: &str =
    "id, user_id, credential_id, label, credential, created_at, last_used_at";

impl Store {
    /// A user's passkeys, oldest first.
    pub async fn list_passkeys(&self, user_id: &str) -> Result<Vec<PasskeyRow>, StoreError> {
        Ok(sqlx::query_as::<_, PasskeyRow>(&format!(
            "SELECT {PASSKEY_COLUMNS} FROM mfa_passkeys WHERE user_id = $1 \
             ORDER BY created_at, id"
        ))
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The passkey with this credential ID, whoever it belongs to.
    pub async fn find_passkey_by_credential(
        &self,
        credential_id: &str,
    ) -> Result<Option<PasskeyRow>, StoreError> {
        Ok(sqlx::query_as::<_, PasskeyRow>(&format!(
            "SELECT {PASSKEY_COLUMNS} FROM mfa_passkeys WHERE credential_id = $1"
        ))
        .bind(credential_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Stores a new passkey and its event in one transaction; `Conflict("passkey")` when the
    /// credential ID is registered already.
    pub async fn insert_passkey(
        &self,
        row: &PasskeyRow,
        event: &NewEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO mfa_passkeys (id, user_id, credential_id, label, credential, \
             created_at, last_used_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&row.id)
        .bind(&row.user_id)
        .bind(&row.credential_id)
        .bind(&row.label)
        .bind(&row.credential)
        .bind(row.created_at)
        .bind(row.last_used_at)
        .execute(&mut *tx)
        .await;
        match inserted {
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                return Err(StoreError::Conflict("passkey"));
            }
            other => {
                other?;
            }
        }
        events::insert(&mut *tx, event).await?;
        tx.commit().await?;
        // The user's factors changed: what a sign-in asks of them may change too.
        self.note_change();
        Ok(())
    }

    /// Writes a passkey's credential (its new signature counter) and when it was last used.
    pub async fn touch_passkey(
        &self,
        id: &str,
        credential: &str,
        used_at_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE mfa_passkeys SET credential = $2, last_used_at = $3 WHERE id = $1")
            .bind(id)
            .bind(credential)
            .bind(used_at_ms)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Deletes one of a user's passkeys and records the event; false when the user has no
    /// passkey with that id.
    pub async fn delete_passkey(
        &self,
        user_id: &str,
        id: &str,
        event: &NewEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("DELETE FROM mfa_passkeys WHERE id = $1 AND user_id = $2")
            .bind(id)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        events::insert(&mut *tx, event).await?;
        tx.commit().await?;
        self.note_change();
        Ok(true)
    }

    /// Stores a ceremony's state, replacing any earlier one of the same sign-in (or, outside
    /// a sign-in, of the same user and kind): one live challenge each, so a page that asks
    /// again replaces its challenge and repeated starts cannot pile up rows.
    pub async fn insert_ceremony(&self, row: &CeremonyRow) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        match &row.pending_hash {
            Some(pending_hash) => {
                sqlx::query("DELETE FROM mfa_passkey_ceremonies WHERE pending_hash = $1")
                    .bind(pending_hash)
                    .execute(&mut *tx)
                    .await?;
            }
            None => {
                sqlx::query(
                    "DELETE FROM mfa_passkey_ceremonies WHERE user_id = $1 AND kind = $2 \
                     AND pending_hash IS NULL",
                )
                .bind(&row.user_id)
                .bind(&row.kind)
                .execute(&mut *tx)
                .await?;
            }
        }
        sqlx::query(
            "INSERT INTO mfa_passkey_ceremonies (id_hash, kind, user_id, pending_hash, state, \
             created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&row.id_hash)
        .bind(&row.kind)
        .bind(&row.user_id)
        .bind(&row.pending_hash)
        .bind(&row.state)
        .bind(row.created_at)
        .bind(row.expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Takes a ceremony: deletes it and returns what it held, so it is finished at most once
    /// even when two nodes receive the same answer. Expired rows are returned too (the caller
    /// tells "expired" from "unknown or used").
    pub async fn take_ceremony(&self, id_hash: &str) -> Result<Option<CeremonyRow>, StoreError> {
        Ok(sqlx::query_as::<_, CeremonyRow>(
            "DELETE FROM mfa_passkey_ceremonies WHERE id_hash = $1 RETURNING id_hash, kind, \
             user_id, pending_hash, state, created_at, expires_at",
        )
        .bind(id_hash)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Deletes expired ceremonies, in bounded batches (the janitor).
    pub async fn purge_expired_ceremonies(&self, now_ms: i64) -> Result<u64, StoreError> {
        self.delete_in_batches(
            "DELETE FROM mfa_passkey_ceremonies WHERE id_hash IN \
             (SELECT id_hash FROM mfa_passkey_ceremonies WHERE expires_at <= $1 LIMIT $2)",
            now_ms,
        )
        .await
    }
}
