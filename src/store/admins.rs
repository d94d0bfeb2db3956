use super::{events, Store, StoreError};
use crate::events::NewEvent;

/// An admin account of the console and API.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AdminRow {
    pub id: String,
    pub username: String,
    pub password_hash: String,
    pub role: String,
    pub must_change_password: i64,
    pub created_at: i64,
    /// When the account was disabled (`None`: active).
    pub disabled_at: Option<i64>,
}

const ADMIN_COLUMNS: &str =
    "id, username, password_hash, role, must_change_password, created_at, disabled_at";

/// What a change to an admin account did; the last-admin rule is checked in the change's
/// own transaction, so two admins disabling each other at once cannot both succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminChange {
    /// Changed, with its event.
    Done,
    /// No such admin.
    NotFound,
    /// Refused: it would leave no active admin with the role `admin`.
    LastAdmin,
}

/// A change to one admin account.
#[derive(Debug, Clone, Copy)]
pub enum AdminUpdate<'a> {
    /// Disabled at this time: sessions end.
    Disable(i64),
    /// Enabled again.
    Enable,
    /// Given this role.
    Role(&'a str),
    /// Deleted: sessions and second factor go with it, the API keys it created are revoked
    /// (by `by`, at the time).
    Delete { by: &'a str, now_ms: i64 },
    /// A new one-time password hash (to be changed at next sign-in): sessions end, and the
    /// second factor is removed when `remove_mfa`.
    ResetPassword { hash: &'a str, remove_mfa: bool },
}

impl AdminUpdate<'_> {
    /// Whether the admin stops being an active full admin by this change.
    fn removes_full_admin(&self) -> bool {
        match self {
            AdminUpdate::Disable(_) | AdminUpdate::Delete { .. } => true,
            AdminUpdate::Role(role) => *role != "admin",
            AdminUpdate::Enable | AdminUpdate::ResetPassword { .. } => false,
        }
    }
}

impl Store {
    /// Counts admin accounts (zero means first start).
    pub async fn count_admins(&self) -> Result<i64, StoreError> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM admins")
            .fetch_one(&self.pool)
            .await?;
        Ok(n)
    }

    /// Creates an admin account and records the event in one transaction.
    pub async fn insert_admin(&self, admin: &AdminRow, event: &NewEvent) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO admins (id, username, password_hash, role, must_change_password, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&admin.id)
        .bind(&admin.username)
        .bind(&admin.password_hash)
        .bind(&admin.role)
        .bind(admin.must_change_password)
        .bind(admin.created_at)
        .execute(&mut *tx)
        .await?;
        events::insert(&mut *tx, event).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Finds an admin by username.
    pub async fn find_admin(&self, username: &str) -> Result<Option<AdminRow>, StoreError> {
        Ok(sqlx::query_as::<_, AdminRow>(&format!(
            "SELECT {ADMIN_COLUMNS} FROM admins WHERE username = $1"
        ))
        .bind(username)
        .fetch_optional(&self.pool)
        .await?)
    }
}

/// A live console session with its admin.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AdminSessionRow {
    pub id_hash: String,
    pub admin_id: String,
    pub csrf_token: String,
    pub created_at: i64,
    pub last_seen_at: i64,
    pub expires_at: i64,
    pub username: String,
    pub role: String,
    pub must_change_password: i64,
    /// The second-factor step the session still owes (`code` or `enrol`), if any.
    pub pending_step: Option<String>,
}

/// A console session about to start.
#[derive(Debug, Clone, Copy)]
pub struct NewAdminSession<'a> {
    pub id_hash: &'a str,
    pub admin_id: &'a str,
    pub csrf_token: &'a str,
    pub now_ms: i64,
    pub expires_at: i64,
    pub client_ip: Option<&'a str>,
    /// The second-factor step still owed (`code` or `enrol`), if any.
    pub pending_step: Option<&'a str>,
}

/// An API key (never the key itself).
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct ApiKeyRow {
    pub id: String,
    pub name: String,
    #[serde(skip)]
    pub key_hash: String,
    pub prefix: String,
    pub role: String,
    pub created_by: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub revoked_by: Option<String>,
}

const API_KEY_COLUMNS: &str = "id, name, key_hash, prefix, role, created_by, created_at, \
    last_used_at, revoked_at, revoked_by";

impl Store {
    /// Every admin account, by username.
    pub async fn list_admins(&self) -> Result<Vec<AdminRow>, StoreError> {
        Ok(sqlx::query_as::<_, AdminRow>(&format!(
            "SELECT {ADMIN_COLUMNS} FROM admins ORDER BY username"
        ))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Changes one admin account with its event, unless that would leave no active admin
    /// with the role `admin`.
    pub async fn update_admin(
        &self,
        admin_id: &str,
        update: AdminUpdate<'_>,
        events: &[NewEvent],
    ) -> Result<AdminChange, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Touching every active full admin's row first takes their row locks (PostgreSQL) or
        // the write lock (SQLite): a concurrent change waits here and then counts what this
        // one left.
        sqlx::query("UPDATE admins SET role = role WHERE role = 'admin' AND disabled_at IS NULL")
            .execute(&mut *tx)
            .await?;
        let found: Option<(String, Option<i64>)> =
            sqlx::query_as("SELECT role, disabled_at FROM admins WHERE id = $1")
                .bind(admin_id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((role, disabled_at)) = found else {
            return Ok(AdminChange::NotFound);
        };
        if role == "admin" && disabled_at.is_none() && update.removes_full_admin() {
            let (others,): (i64,) = sqlx::query_as(
                "SELECT COUNT(*) FROM admins WHERE role = 'admin' AND disabled_at IS NULL \
                 AND id <> $1",
            )
            .bind(admin_id)
            .fetch_one(&mut *tx)
            .await?;
            if others == 0 {
                return Ok(AdminChange::LastAdmin);
            }
        }
        let end_sessions = match update {
            AdminUpdate::Disable(now_ms) => {
                sqlx::query("UPDATE admins SET disabled_at = $2 WHERE id = $1")
                    .bind(admin_id)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await?;
                true
            }
            AdminUpdate::Enable => {
                sqlx::query("UPDATE admins SET disabled_at = NULL WHERE id = $1")
                    .bind(admin_id)
                    .execute(&mut *tx)
                    .await?;
                false
            }
            AdminUpdate::Role(role) => {
                sqlx::query("UPDATE admins SET role = $2 WHERE id = $1")
                    .bind(admin_id)
                    .bind(role)
                    .execute(&mut *tx)
                    .await?;
                // Sessions carry the role they were read with on each request; none to end.
                false
            }
            AdminUpdate::Delete { by, now_ms } => {
                let (username,): (String,) =
                    sqlx::query_as("SELECT username FROM admins WHERE id = $1")
                        .bind(admin_id)
                        .fetch_one(&mut *tx)
                        .await?;
                sqlx::query(
                    "UPDATE api_keys SET revoked_at = $1, revoked_by = $2 \
                     WHERE created_by = $3 AND revoked_at IS NULL",
                )
                .bind(now_ms)
                .bind(by)
                .bind(format!("admin:{username}"))
                .execute(&mut *tx)
                .await?;
                for table in [
                    "admin_mfa_totp",
                    "admin_mfa_recovery_codes",
                    "admin_sessions",
                ] {
                    sqlx::query(&format!("DELETE FROM {table} WHERE admin_id = $1"))
                        .bind(admin_id)
                        .execute(&mut *tx)
                        .await?;
                }
                sqlx::query("DELETE FROM admins WHERE id = $1")
                    .bind(admin_id)
                    .execute(&mut *tx)
                    .await?;
                false
            }
            AdminUpdate::ResetPassword { hash, remove_mfa } => {
                sqlx::query(
                    "UPDATE admins SET password_hash = $2, must_change_password = 1 WHERE id = $1",
                )
                .bind(admin_id)
                .bind(hash)
                .execute(&mut *tx)
                .await?;
                if remove_mfa {
                    for table in ["admin_mfa_totp", "admin_mfa_recovery_codes"] {
                        sqlx::query(&format!("DELETE FROM {table} WHERE admin_id = $1"))
                            .bind(admin_id)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                true
            }
        };
        if end_sessions {
            sqlx::query("DELETE FROM admin_sessions WHERE admin_id = $1")
                .bind(admin_id)
                .execute(&mut *tx)
                .await?;
        }
        for event in events {
            events::insert(&mut *tx, event).await?;
        }
        tx.commit().await?;
        Ok(AdminChange::Done)
    }

    /// Whether the admin who created an API key (`created_by`, `admin:NAME`) is disabled.
    pub async fn api_key_creator_disabled(&self, created_by: &str) -> Result<bool, StoreError> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM admins WHERE 'admin:' || username = $1 \
             AND disabled_at IS NOT NULL",
        )
        .bind(created_by)
        .fetch_one(&self.pool)
        .await?;
        Ok(n > 0)
    }

    /// Sets an admin's password (clearing the must-change flag) and ends their other sessions.
    pub async fn set_admin_password(
        &self,
        admin_id: &str,
        hash: &str,
        keep_session: Option<&str>,
        now_ms: i64,
        event: &NewEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE admins SET password_hash = $2, must_change_password = 0, \
             password_changed_at = $3 WHERE id = $1",
        )
        .bind(admin_id)
        .bind(hash)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM admin_sessions WHERE admin_id = $1 AND ($2 IS NULL OR id_hash <> $2)",
        )
        .bind(admin_id)
        .bind(keep_session)
        .execute(&mut *tx)
        .await?;
        events::insert(&mut *tx, event).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Starts a console session (with its event, if it is complete already).
    pub async fn insert_admin_session(
        &self,
        session: &NewAdminSession<'_>,
        event: Option<&NewEvent>,
    ) -> Result<(), StoreError> {
        let NewAdminSession {
            id_hash,
            admin_id,
            csrf_token,
            now_ms,
            expires_at,
            client_ip,
            pending_step,
        } = *session;
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO admin_sessions (id_hash, admin_id, csrf_token, created_at, last_seen_at, \
             expires_at, client_ip, pending_step) VALUES ($1, $2, $3, $4, $4, $5, $6, $7)",
        )
        .bind(id_hash)
        .bind(admin_id)
        .bind(csrf_token)
        .bind(now_ms)
        .bind(expires_at)
        .bind(client_ip)
        .bind(pending_step)
        .execute(&mut *tx)
        .await?;
        if let Some(event) = event {
            events::insert(&mut *tx, event).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A console session with its admin, if it exists.
    pub async fn find_admin_session(
        &self,
        id_hash: &str,
    ) -> Result<Option<AdminSessionRow>, StoreError> {
        Ok(sqlx::query_as::<_, AdminSessionRow>(
            "SELECT s.id_hash, s.admin_id, s.csrf_token, s.created_at, s.last_seen_at, \
             s.expires_at, a.username, a.role, a.must_change_password, s.pending_step \
             FROM admin_sessions s JOIN admins a ON a.id = s.admin_id \
             WHERE s.id_hash = $1 AND a.disabled_at IS NULL",
        )
        .bind(id_hash)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Completes a session's second-factor step (with its event): it becomes a full session
    /// until `expires_at`.
    pub async fn complete_admin_session(
        &self,
        id_hash: &str,
        expires_at: i64,
        event: &NewEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE admin_sessions SET pending_step = NULL, expires_at = $2 WHERE id_hash = $1",
        )
        .bind(id_hash)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        events::insert(&mut *tx, event).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records activity on a session (for the idle timeout).
    pub async fn touch_admin_session(&self, id_hash: &str, now_ms: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE admin_sessions SET last_seen_at = $2 WHERE id_hash = $1")
            .bind(id_hash)
            .bind(now_ms)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Ends a console session (with an event when one is given).
    pub async fn delete_admin_session(
        &self,
        id_hash: &str,
        event: Option<&NewEvent>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM admin_sessions WHERE id_hash = $1")
            .bind(id_hash)
            .execute(&mut *tx)
            .await?;
        if let Some(event) = event {
            events::insert(&mut *tx, event).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Removes expired console sessions.
    pub async fn purge_admin_sessions(&self, now_ms: i64, idle_ms: i64) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("DELETE FROM admin_sessions WHERE expires_at < $1 OR last_seen_at < $2")
                .bind(now_ms)
                .bind(now_ms - idle_ms)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }

    /// Stores a new API key (its hash) and records the event.
    pub async fn insert_api_key(
        &self,
        key: &ApiKeyRow,
        event: &NewEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(&format!(
            "INSERT INTO api_keys ({API_KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        ))
        .bind(&key.id)
        .bind(&key.name)
        .bind(&key.key_hash)
        .bind(&key.prefix)
        .bind(&key.role)
        .bind(&key.created_by)
        .bind(key.created_at)
        .bind(key.last_used_at)
        .bind(key.revoked_at)
        .bind(&key.revoked_by)
        .execute(&mut *tx)
        .await?;
        events::insert(&mut *tx, event).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The API key with this hash, if any (revoked ones included; the caller checks).
    pub async fn find_api_key(&self, key_hash: &str) -> Result<Option<ApiKeyRow>, StoreError> {
        Ok(sqlx::query_as::<_, ApiKeyRow>(&format!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE key_hash = $1"
        ))
        .bind(key_hash)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Every API key, newest first.
    pub async fn list_api_keys(&self) -> Result<Vec<ApiKeyRow>, StoreError> {
        Ok(sqlx::query_as::<_, ApiKeyRow>(&format!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys ORDER BY created_at DESC"
        ))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Revokes a key; false when there is no such live key.
    pub async fn revoke_api_key(
        &self,
        id: &str,
        by: &str,
        now_ms: i64,
        event: &NewEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let n = sqlx::query(
            "UPDATE api_keys SET revoked_at = $2, revoked_by = $3 WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(id)
        .bind(now_ms)
        .bind(by)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n > 0 {
            events::insert(&mut *tx, event).await?;
        }
        tx.commit().await?;
        Ok(n > 0)
    }

    /// Records the use of a key (at most about once a minute matters; callers may skip).
    pub async fn touch_api_key(&self, id: &str, now_ms: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE api_keys SET last_used_at = $2 WHERE id = $1")
            .bind(id)
            .bind(now_ms)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
