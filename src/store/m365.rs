//! The Microsoft 365 connection, OAuth consent in progress, links of local users to M365
//! users, and import runs.

use super::{events, Store, StoreError};
use crate::events::NewEvent;

/// The connection to the tenant (at most one row).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ConnectionRow {
    pub mode: String,
    pub state: String,
    pub tenant_id: Option<String>,
    pub default_domain: Option<String>,
    pub connected_at: Option<i64>,
    pub connected_by: Option<String>,
    pub access_token_enc: Option<String>,
    pub access_token_expires_at: Option<i64>,
    pub refresh_token_enc: Option<String>,
    pub last_error: Option<String>,
    pub updated_at: i64,
    /// Space-separated Graph permissions the token grants; `None` when unreadable.
    pub granted_permissions: Option<String>,
}

/// A local user's link to the M365 user it was imported from.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LinkRow {
    pub user_id: String,
    pub tenant_id: String,
    pub m365_object_id: String,
    pub user_principal_name: String,
    pub immutable_id: Option<String>,
    pub linked_at: i64,
}

/// One import run with its counters.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct ImportRunRow {
    pub id: String,
    pub started_by: String,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub state: String,
    pub total: i64,
    pub imported: i64,
    pub failed: i64,
    pub message: Option<String>,
}

/// What happened to one user in an import run.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct ImportResultRow {
    pub run_id: String,
    pub m365_object_id: String,
    pub user_principal_name: Option<String>,
    pub outcome: String,
    pub message: Option<String>,
    pub user_id: Option<String>,
    pub at: i64,
}

const CONNECTION_COLUMNS: &str = "mode, state, tenant_id, default_domain, connected_at, \
    connected_by, access_token_enc, access_token_expires_at, refresh_token_enc, last_error, updated_at, \
    granted_permissions";

impl Store {
    /// The connection row, if the tenant was ever connected.
    pub async fn m365_connection(&self) -> Result<Option<ConnectionRow>, StoreError> {
        Ok(sqlx::query_as::<_, ConnectionRow>(&format!(
            "SELECT {CONNECTION_COLUMNS} FROM m365_connection WHERE id = 1"
        ))
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Writes the whole connection row and its event in one transaction.
    pub async fn save_m365_connection(
        &self,
        row: &ConnectionRow,
        event: Option<&NewEvent>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO m365_connection (id, mode, state, tenant_id, default_domain, connected_at, \
             connected_by, access_token_enc, access_token_expires_at, refresh_token_enc, last_error, \
             updated_at, granted_permissions) VALUES (1, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
             ON CONFLICT (id) DO UPDATE SET mode = $1, state = $2, tenant_id = $3, \
             default_domain = $4, connected_at = $5, connected_by = $6, access_token_enc = $7, \
             access_token_expires_at = $8, refresh_token_enc = $9, last_error = $10, updated_at = $11, \
             granted_permissions = $12",
        )
        .bind(&row.mode)
        .bind(&row.state)
        .bind(&row.tenant_id)
        .bind(&row.default_domain)
        .bind(row.connected_at)
        .bind(&row.connected_by)
        .bind(&row.access_token_enc)
        .bind(row.access_token_expires_at)
        .bind(&row.refresh_token_enc)
        .bind(&row.last_error)
        .bind(row.updated_at)
        .bind(&row.granted_permissions)
        .execute(&mut *tx)
        .await?;
        if let Some(event) = event {
            events::insert(&mut *tx, event).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Stores refreshed tokens, and nothing else, only while the connection is still the
    /// connected one they were refreshed for (same `connected_at`). A refresh that raced a
    /// deactivation, a reconnect or a refused refresh changes nothing: writing the whole row
    /// back would undo what was committed meanwhile. Returns whether it was stored.
    pub async fn save_refreshed_m365_tokens(
        &self,
        row: &ConnectionRow,
        refreshed_for: Option<i64>,
    ) -> Result<bool, StoreError> {
        let stored = sqlx::query(
            "UPDATE m365_connection SET access_token_enc = $1, access_token_expires_at = $2, \
             refresh_token_enc = $3, granted_permissions = $4, last_error = NULL, updated_at = $5 \
             WHERE id = 1 AND state = 'connected' AND COALESCE(connected_at, -1) = COALESCE($6, -1)",
        )
        .bind(&row.access_token_enc)
        .bind(row.access_token_expires_at)
        .bind(&row.refresh_token_enc)
        .bind(&row.granted_permissions)
        .bind(row.updated_at)
        .bind(refreshed_for)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(stored > 0)
    }

    /// Marks the connection as needing a new consent (its refresh was refused), with the
    /// event, only while it is still the connected one that was refreshed (see
    /// [`Store::save_refreshed_m365_tokens`]). Returns whether it was marked.
    pub async fn mark_m365_reauthorize(
        &self,
        reason: &str,
        refreshed_for: Option<i64>,
        now_ms: i64,
        event: &NewEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let marked = sqlx::query(
            "UPDATE m365_connection SET state = 'reauthorize', last_error = $1, \
             access_token_enc = NULL, access_token_expires_at = NULL, updated_at = $2 \
             WHERE id = 1 AND state = 'connected' AND COALESCE(connected_at, -1) = COALESCE($3, -1)",
        )
        .bind(reason)
        .bind(now_ms)
        .bind(refreshed_for)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if marked == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        events::insert(&mut *tx, event).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Deactivates the connection: tokens are dropped and every binding is cleared, in one
    /// transaction with the event. Returns how many bindings were cleared.
    pub async fn deactivate_m365(&self, now_ms: i64, event: &NewEvent) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE m365_connection SET state = 'deactivated', access_token_enc = NULL, \
             access_token_expires_at = NULL, refresh_token_enc = NULL, updated_at = $1 WHERE id = 1",
        )
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        let cleared = sqlx::query("DELETE FROM m365_bindings")
            .execute(&mut *tx)
            .await?
            .rows_affected();
        // Ownership of the M365 accounts is released: nothing more is sent.
        sqlx::query("DELETE FROM m365_outbox")
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM m365_delta_state")
            .execute(&mut *tx)
            .await?;
        events::insert(&mut *tx, event).await?;
        tx.commit().await?;
        self.note_change();
        Ok(cleared)
    }

    /// Remembers an OAuth state with its sealed PKCE verifier.
    pub async fn insert_oauth_state(
        &self,
        state_hash: &str,
        verifier_enc: &str,
        actor: &str,
        now_ms: i64,
        expires_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO m365_oauth_states (state_hash, pkce_verifier_enc, actor, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(state_hash)
        .bind(verifier_enc)
        .bind(actor)
        .bind(now_ms)
        .bind(expires_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Takes (deletes and returns) a live OAuth state: (sealed verifier, actor). Single use.
    ///
    /// One `DELETE … RETURNING` statement: a SELECT-then-DELETE transaction would upgrade a
    /// read lock to a write lock, which SQLite refuses at once (not after the busy timeout)
    /// when another connection wrote in between.
    pub async fn take_oauth_state(
        &self,
        state_hash: &str,
        now_ms: i64,
    ) -> Result<Option<(String, String)>, StoreError> {
        let row: Option<(String, String, i64)> = sqlx::query_as(
            "DELETE FROM m365_oauth_states WHERE state_hash = $1 \
             RETURNING pkce_verifier_enc, actor, expires_at",
        )
        .bind(state_hash)
        .fetch_optional(&self.pool)
        .await?;
        sqlx::query("DELETE FROM m365_oauth_states WHERE expires_at <= $1")
            .bind(now_ms)
            .execute(&self.pool)
            .await?;
        Ok(row
            .filter(|(_, _, expires)| *expires > now_ms)
            .map(|(v, a, _)| (v, a)))
    }

    /// All links of local users to M365 users.
    pub async fn m365_links(&self) -> Result<Vec<LinkRow>, StoreError> {
        Ok(sqlx::query_as::<_, LinkRow>(
            "SELECT user_id, tenant_id, m365_object_id, user_principal_name, immutable_id, linked_at \
             FROM m365_links",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// (M365 object ID, local username, bound?) for every M365 user known here (imported, or
    /// created by binding), in one query.
    pub async fn m365_link_summary(&self) -> Result<Vec<(String, String, bool)>, StoreError> {
        // Imported users, and users whose M365 account binding created (they have no link).
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT l.m365_object_id, u.username, \
             CASE WHEN b.state = 'bound' THEN 1 ELSE 0 END \
             FROM m365_links l JOIN users u ON u.id = l.user_id \
             LEFT JOIN m365_bindings b ON b.user_id = l.user_id \
             UNION ALL \
             SELECT b.m365_object_id, u.username, CASE WHEN b.state = 'bound' THEN 1 ELSE 0 END \
             FROM m365_bindings b JOIN users u ON u.id = b.user_id \
             WHERE b.m365_object_id IS NOT NULL \
             AND NOT EXISTS (SELECT 1 FROM m365_links l WHERE l.user_id = b.user_id)",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(o, u, b)| (o, u, b != 0)).collect())
    }

    /// The M365 object ids of bound users (they carry their immutable ID there).
    pub async fn bound_m365_object_ids(&self) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT m365_object_id FROM m365_bindings WHERE state = 'bound' \
             AND m365_object_id IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// User ids with a Microsoft 365 binding.
    pub async fn bound_user_ids(&self) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = sqlx::query_as("SELECT user_id FROM m365_bindings")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }
}

/// Inserts a link inside the caller's transaction (with the user it belongs to).
pub(super) async fn insert_link<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    executor: E,
    link: &LinkRow,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO m365_links (user_id, tenant_id, m365_object_id, user_principal_name, \
             immutable_id, linked_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&link.user_id)
    .bind(&link.tenant_id)
    .bind(&link.m365_object_id)
    .bind(&link.user_principal_name)
    .bind(&link.immutable_id)
    .bind(link.linked_at)
    .execute(executor)
    .await?;
    Ok(())
}

impl Store {
    /// Starts an import run on the node named `node` (its heartbeat starts now).
    pub async fn insert_import_run(
        &self,
        run: &ImportRunRow,
        node: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO m365_import_runs (id, started_by, started_at, state, total, node, \
             heartbeat_at) VALUES ($1, $2, $3, $4, $5, $6, $3)",
        )
        .bind(&run.id)
        .bind(&run.started_by)
        .bind(run.started_at)
        .bind(&run.state)
        .bind(run.total)
        .bind(node)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Beats a running import's heartbeat: its node is alive and still at it.
    pub async fn beat_import_run(&self, run_id: &str, now_ms: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE m365_import_runs SET heartbeat_at = $2 WHERE id = $1 AND state = 'running'",
        )
        .bind(run_id)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Ends the runs whose node stopped beating their heartbeat before `stale_before_ms` (it
    /// died mid-run) as failed; returns each run's id and node.
    pub async fn fail_abandoned_import_runs(
        &self,
        stale_before_ms: i64,
        now_ms: i64,
    ) -> Result<Vec<(String, Option<String>)>, StoreError> {
        Ok(sqlx::query_as(
            "UPDATE m365_import_runs SET state = 'failed', finished_at = $2, \
             message = 'interrupted: the node running it (' || COALESCE(node, 'unknown') || \
             ') stopped; start the import again (users already imported are skipped)' \
             WHERE state = 'running' AND COALESCE(heartbeat_at, started_at) < $1 \
             RETURNING id, node",
        )
        .bind(stale_before_ms)
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Records the outcomes of some users of a run (with the events of those that failed) and
    /// moves the run's counters in one transaction: `imported` and `failed` by the outcomes,
    /// `total` by `more_total` (a run listing the tenant page by page learns its total as it
    /// goes).
    pub async fn add_import_results(
        &self,
        run_id: &str,
        results: &[ImportResultRow],
        events: &[&NewEvent],
        more_total: i64,
    ) -> Result<(), StoreError> {
        const WIDTH: usize = 7;
        let mut tx = self.pool.begin().await?;
        for chunk in results.chunks(super::rows_per_statement(WIDTH)) {
            let sql = format!(
                "INSERT INTO m365_import_results (run_id, m365_object_id, user_principal_name, \
                 outcome, message, user_id, at) VALUES {}",
                super::values_tuples(self.backend, chunk.len(), WIDTH)
            );
            let mut query = sqlx::query(&sql);
            for result in chunk {
                query = query
                    .bind(&result.run_id)
                    .bind(&result.m365_object_id)
                    .bind(&result.user_principal_name)
                    .bind(&result.outcome)
                    .bind(&result.message)
                    .bind(&result.user_id)
                    .bind(result.at);
            }
            query.execute(&mut *tx).await?;
        }
        let imported = results.iter().filter(|r| r.outcome == "imported").count() as i64;
        let failed = results.len() as i64 - imported;
        sqlx::query(
            "UPDATE m365_import_runs SET imported = imported + $2, failed = failed + $3, \
             total = total + $4 WHERE id = $1",
        )
        .bind(run_id)
        .bind(imported)
        .bind(failed)
        .bind(more_total)
        .execute(&mut *tx)
        .await?;
        events::insert_many(&mut tx, self.backend, events).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Ends an import run and records its event.
    pub async fn finish_import_run(
        &self,
        run_id: &str,
        state: &str,
        message: Option<&str>,
        now_ms: i64,
        event: &NewEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE m365_import_runs SET state = $2, message = $3, finished_at = $4 WHERE id = $1",
        )
        .bind(run_id)
        .bind(state)
        .bind(message)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        events::insert(&mut *tx, event).await?;
        tx.commit().await?;
        Ok(())
    }

    /// An import run by id.
    pub async fn import_run(&self, run_id: &str) -> Result<Option<ImportRunRow>, StoreError> {
        Ok(sqlx::query_as::<_, ImportRunRow>(
            "SELECT id, started_by, started_at, finished_at, state, total, imported, failed, message \
             FROM m365_import_runs WHERE id = $1",
        )
        .bind(run_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// The per-user results of an import run, in order.
    pub async fn import_results(&self, run_id: &str) -> Result<Vec<ImportResultRow>, StoreError> {
        Ok(sqlx::query_as::<_, ImportResultRow>(
            "SELECT run_id, m365_object_id, user_principal_name, outcome, message, user_id, at \
             FROM m365_import_results WHERE run_id = $1 ORDER BY at, m365_object_id",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?)
    }
}

impl Store {
    /// Sets an import run's total: a background run is created before the tenant is listed,
    /// so its total is known only once the selection is resolved.
    pub async fn set_import_run_total(&self, run_id: &str, total: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE m365_import_runs SET total = $2 WHERE id = $1")
            .bind(run_id)
            .bind(total)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The newest import runs, newest first.
    pub async fn recent_import_runs(&self, limit: i64) -> Result<Vec<ImportRunRow>, StoreError> {
        Ok(sqlx::query_as::<_, ImportRunRow>(
            "SELECT id, started_by, started_at, finished_at, state, total, imported, failed, message \
             FROM m365_import_runs ORDER BY started_at DESC, id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Marks runs left `running` by a stopped server as failed (their task is gone): those of
    /// the node named `node`, or every run (SQLite: one process owns the database).
    pub async fn fail_interrupted_import_runs(
        &self,
        node: Option<&str>,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "UPDATE m365_import_runs SET state = 'failed', finished_at = $1, \
             message = 'interrupted by a server stop; start the import again (users already imported are skipped)' \
             WHERE state = 'running' AND ($2 IS NULL OR node = $2)",
        )
        .bind(now_ms)
        .bind(node)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }
}
