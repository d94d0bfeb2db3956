//! Binding and sync: binding rows, the outbox of changes for Microsoft 365, the attribute
//! export selection and the delta-query position.

use sqlx::{Any, Executor};

use super::{events, Store, StoreError};
use crate::binding::{BindingState, BindingStep};
use crate::events::NewEvent;

/// The `fields` marker of a password job that also ends the user's Microsoft 365 sessions.
pub const REVOKE_SESSIONS: &str = "revokeSignInSessions";

/// What a sync job delivers to Microsoft 365.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    /// Create or adopt the user's M365 account (then everything is sent).
    Bind,
    /// Changed attributes (their names in `fields`).
    Attributes,
    /// A new password (sealed in `secret_enc`); for a federated user only what a password
    /// change means besides the password (unblocking, signing out).
    Password,
    /// `accountEnabled` as it should now be (suspension, unbind, expiry).
    Account,
    /// Sign the user out of Microsoft 365 (`revokeSignInSessions`), on its own: a retry of
    /// the part of a password change that failed.
    RevokeSessions,
}

impl JobKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Bind => "bind",
            JobKind::Attributes => "attributes",
            JobKind::Password => "password",
            JobKind::Account => "account",
            JobKind::RevokeSessions => "revoke_sessions",
        }
    }

    /// From the stored name.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "bind" => JobKind::Bind,
            "attributes" => JobKind::Attributes,
            "password" => JobKind::Password,
            "account" => JobKind::Account,
            "revoke_sessions" => JobKind::RevokeSessions,
            _ => return None,
        })
    }
}

impl std::fmt::Display for JobKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change to deliver, written in the transaction of the change itself.
#[derive(Debug, Clone)]
pub struct OutboxJob {
    pub kind: JobKind,
    /// For `attributes`: the changed attribute names (JSON array).
    pub fields: Option<String>,
    /// For `password`: the new password, sealed.
    pub secret_enc: Option<String>,
}

impl OutboxJob {
    /// An `attributes` job for these attribute names.
    pub fn attributes(fields: &[&str]) -> Self {
        Self {
            kind: JobKind::Attributes,
            fields: Some(serde_json::Value::from(fields.to_vec()).to_string()),
            secret_enc: None,
        }
    }

    /// An `account` job: send accountEnabled as it should now be.
    pub fn account() -> Self {
        Self {
            kind: JobKind::Account,
            fields: None,
            secret_enc: None,
        }
    }

    /// A `revoke_sessions` job: sign the user out of Microsoft 365.
    pub fn revoke_sessions() -> Self {
        Self {
            kind: JobKind::RevokeSessions,
            fields: None,
            secret_enc: None,
        }
    }

    /// A `bind` job.
    pub fn bind() -> Self {
        Self {
            kind: JobKind::Bind,
            fields: None,
            secret_enc: None,
        }
    }

    /// A `password` job carrying the sealed password; `end_sessions` also signs the user out
    /// of Microsoft 365 (a password change, seed 003), unlike the first push at sign-in.
    pub fn password(sealed: String, end_sessions: bool) -> Self {
        Self {
            kind: JobKind::Password,
            fields: end_sessions.then(|| serde_json::json!([REVOKE_SESSIONS]).to_string()),
            secret_enc: Some(sealed),
        }
    }
}

/// A part of a delivered job that still has to reach Microsoft 365 on its own (the manager
/// of a bound user, the session revocation of a password change), or that Graph refused:
/// written as its own job when the job it came from is completed.
#[derive(Debug, Clone)]
pub struct FollowUp {
    /// Whose job it is (a manager's bind queues jobs for their reports).
    pub user_id: String,
    pub job: OutboxJob,
    /// Why the part failed; `None` for a part that was not tried yet.
    pub error: Option<String>,
    /// Failed for good (shown as a failed change, with the event), not retried by itself.
    pub failed: bool,
    /// Deliveries already spent on it.
    pub attempts: i64,
    pub next_attempt_at: i64,
    /// The `m365_sync_failed` event of a failed part.
    pub event: Option<NewEvent>,
}

/// A delivered job, with what it changes and the parts it leaves.
#[derive(Debug, Clone)]
pub struct Completion {
    pub job_id: i64,
    /// The fencing token the job was claimed under: the completion is void without it.
    pub lease_token: Option<i64>,
    pub user_id: String,
    pub effect: JobEffect,
    pub event: Option<NewEvent>,
    pub follow_ups: Vec<FollowUp>,
}

/// A queued or failed job, as the worker and the status views read it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxRow {
    pub id: i64,
    pub user_id: String,
    /// The stored [`JobKind`] name.
    pub kind: String,
    pub fields: Option<String>,
    pub secret_enc: Option<String>,
    pub state: String,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub last_error: Option<String>,
    pub created_at: i64,
    /// The fencing token of the claim this row was read under (`None` when not claimed):
    /// writes that finish the job are conditional on it.
    pub lease_token: Option<i64>,
}

impl OutboxRow {
    /// The job's kind; `None` for a name this version does not know.
    pub fn job_kind(&self) -> Option<JobKind> {
        JobKind::parse(&self.kind)
    }
}

/// A user's binding with what sync needs to know.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BindingRow {
    pub user_id: String,
    pub immutable_id: String,
    pub user_principal_name: String,
    pub m365_object_id: Option<String>,
    #[sqlx(try_from = "String")]
    pub state: BindingState,
    pub bound_at: i64,
    pub last_sync_at: Option<i64>,
    pub last_error: Option<String>,
    pub password_pushed: i64,
    pub account_enabled: Option<i64>,
}

/// How a delivered bind ended.
#[derive(Debug, Clone)]
pub struct BindOutcome {
    pub m365_object_id: String,
    pub immutable_id: String,
    pub user_principal_name: String,
    pub account_enabled: bool,
    /// The M365 user was created here (with a random password, so the real one is not there).
    pub created: bool,
}

/// A user to bind: the immutable ID to use if the M365 user has none yet.
#[derive(Debug, Clone)]
pub struct BindRequest {
    pub user_id: String,
    pub user_principal_name: String,
    pub immutable_id_candidate: String,
    /// The M365 object the user was imported from (same tenant), if any.
    pub m365_object_id: Option<String>,
}

/// Counters for the sync status views.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncCounts {
    pub queued: i64,
    pub failed: i64,
    pub bound: i64,
    pub pending: i64,
    pub bind_failed: i64,
    pub unbound: i64,
}

/// The outbox at a glance, for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct OutboxDepth {
    pub queued: i64,
    pub failed: i64,
    /// When the oldest queued job was written (ms since the epoch); None when none waits.
    pub oldest_queued_at: Option<i64>,
}

const BINDING_COLUMNS: &str = "user_id, immutable_id, user_principal_name, m365_object_id, \
    state, bound_at, last_sync_at, last_error, password_pushed, account_enabled";
const OUTBOX_COLUMNS: &str = "id, user_id, kind, fields, secret_enc, state, attempts, \
    next_attempt_at, last_error, created_at, lease_token";

/// Queues `job` for `user_id` if the user is bound (or being bound); a no-op otherwise.
pub(super) async fn enqueue_if_bound<'e, E: Executor<'e, Database = Any>>(
    executor: E,
    user_id: &str,
    job: &OutboxJob,
    now_ms: i64,
) -> Result<(), StoreError> {
    sqlx::query(&format!(
        "INSERT INTO m365_outbox (user_id, kind, fields, secret_enc, next_attempt_at, created_at, \
         updated_at) SELECT user_id, $2, $3, $4, $5, $5, $5 FROM m365_bindings \
         WHERE user_id = $1 AND state IN {}",
        BindingState::sql_list(BindingState::receives_changes)
    ))
    .bind(user_id)
    .bind(job.kind.as_str())
    .bind(&job.fields)
    .bind(&job.secret_enc)
    .bind(now_ms)
    .execute(executor)
    .await?;
    Ok(())
}

async fn enqueue<'e, E: Executor<'e, Database = Any>>(
    executor: E,
    user_id: &str,
    job: &OutboxJob,
    now_ms: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO m365_outbox (user_id, kind, fields, secret_enc, next_attempt_at, created_at, \
         updated_at) VALUES ($1, $2, $3, $4, $5, $5, $5)",
    )
    .bind(user_id)
    .bind(job.kind.as_str())
    .bind(&job.fields)
    .bind(&job.secret_enc)
    .bind(now_ms)
    .execute(executor)
    .await?;
    Ok(())
}

impl Store {
    /// The binding of a user (in any state).
    pub async fn binding(&self, user_id: &str) -> Result<Option<BindingRow>, StoreError> {
        Ok(sqlx::query_as::<_, BindingRow>(&format!(
            "SELECT {BINDING_COLUMNS} FROM m365_bindings WHERE user_id = $1"
        ))
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// The link of a user imported from Microsoft 365, if any.
    pub async fn m365_link(&self, user_id: &str) -> Result<Option<super::LinkRow>, StoreError> {
        Ok(sqlx::query_as::<_, super::LinkRow>(
            "SELECT user_id, tenant_id, m365_object_id, user_principal_name, immutable_id, \
             linked_at FROM m365_links WHERE user_id = $1",
        )
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Ids of users that are not bound and not being bound.
    pub async fn unbound_user_ids(&self) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = sqlx::query_as(&format!(
            "SELECT u.id FROM users u LEFT JOIN m365_bindings b ON b.user_id = u.id \
             WHERE b.user_id IS NULL OR b.state NOT IN {} ORDER BY u.username_key",
            BindingState::sql_list(BindingState::receives_changes)
        ))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// The binding whose M365 user has this object id.
    pub async fn binding_by_object_id(
        &self,
        object_id: &str,
    ) -> Result<Option<BindingRow>, StoreError> {
        Ok(sqlx::query_as::<_, BindingRow>(&format!(
            "SELECT {BINDING_COLUMNS} FROM m365_bindings WHERE m365_object_id = $1"
        ))
        .bind(object_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Marks users as being bound and queues their bind jobs, with one event each, in one
    /// transaction of a few multi-row statements (a statement per user made binding a large
    /// directory cost a database round trip per row). A user bound before keeps its immutable
    /// ID and M365 object; a user named twice is bound once.
    pub async fn bind_users(
        &self,
        requests: &[BindRequest],
        now_ms: i64,
        events: &[NewEvent],
    ) -> Result<(), StoreError> {
        const BINDING_WIDTH: usize = 6;
        const JOB_WIDTH: usize = 5;
        let bind_requested = BindingState::after(None, BindingStep::BindRequested)
            .unwrap_or(BindingState::Pending)
            .as_str();
        // One row per user: a multi-row upsert may not touch the same row twice.
        let mut seen = std::collections::HashSet::new();
        let requests: Vec<&BindRequest> = requests
            .iter()
            .filter(|r| seen.insert(r.user_id.as_str()))
            .collect();
        let mut tx = self.pool.begin().await?;
        for chunk in requests.chunks(super::rows_per_statement(BINDING_WIDTH)) {
            let sql = format!(
                "INSERT INTO m365_bindings (user_id, immutable_id, user_principal_name, \
                 m365_object_id, state, bound_at) VALUES {} \
                 ON CONFLICT (user_id) DO UPDATE SET state = excluded.state, last_error = NULL, \
                 m365_object_id = COALESCE(m365_bindings.m365_object_id, excluded.m365_object_id)",
                super::values_tuples(self.backend, chunk.len(), BINDING_WIDTH)
            );
            let mut query = sqlx::query(&sql);
            for request in chunk {
                query = query
                    .bind(&request.user_id)
                    .bind(&request.immutable_id_candidate)
                    .bind(&request.user_principal_name)
                    .bind(&request.m365_object_id)
                    .bind(bind_requested)
                    .bind(now_ms);
            }
            query.execute(&mut *tx).await?;
        }
        for chunk in requests.chunks(super::rows_per_statement(JOB_WIDTH)) {
            let sql = format!(
                "INSERT INTO m365_outbox (user_id, kind, next_attempt_at, created_at, updated_at) \
                 VALUES {}",
                super::values_tuples(self.backend, chunk.len(), JOB_WIDTH)
            );
            let mut query = sqlx::query(&sql);
            for request in chunk {
                query = query
                    .bind(&request.user_id)
                    .bind(JobKind::Bind.as_str())
                    .bind(now_ms)
                    .bind(now_ms)
                    .bind(now_ms);
            }
            query.execute(&mut *tx).await?;
        }
        let events: Vec<&NewEvent> = events.iter().collect();
        events::insert_many(&mut tx, self.backend, &events).await?;
        tx.commit().await?;
        self.note_change();
        Ok(())
    }

    /// Unbinds users: SAML sign-in stops at once and an `account` job blocks the M365 user.
    pub async fn unbind_users(
        &self,
        user_ids: &[String],
        now_ms: i64,
        events: &[NewEvent],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for user_id in user_ids {
            sqlx::query(&format!(
                "UPDATE m365_bindings SET state = {} WHERE user_id = $1",
                BindingState::sql_after(BindingStep::Unbound)
            ))
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
            enqueue(&mut *tx, user_id, &OutboxJob::account(), now_ms).await?;
        }
        for event in events {
            events::insert(&mut *tx, event).await?;
        }
        tx.commit().await?;
        self.note_change();
        Ok(())
    }

    /// Claims up to `limit` due jobs for `owner` until `now_ms + lease_ms`, at most one per
    /// user and only each user's oldest queued job, so a user's changes reach Microsoft 365 in
    /// the order they were made whichever node delivers them. The claim has a fresh fencing
    /// token (every row returned carries it): renewing, completing, postponing and failing
    /// the jobs name it, so they change nothing once the lease was lost to another node.
    ///
    /// On PostgreSQL the candidates are locked `FOR UPDATE SKIP LOCKED`: nodes claiming at the
    /// same moment take different jobs instead of waiting for each other. SQLite has one
    /// writer at a time, so the same statement without the locking clause is already atomic.
    pub async fn claim_outbox_jobs(
        &self,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
        limit: i64,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        let lock = match self.backend {
            super::Backend::Postgres => "FOR UPDATE SKIP LOCKED",
            super::Backend::Sqlite => "",
        };
        // A read first: the worker asks at every poll and nearly always nothing is due, and a
        // write transaction each time would take SQLite's one write lock from the CLI and
        // the sign-ins for nothing.
        let due: Option<(i64,)> = sqlx::query_as(
            "SELECT id FROM m365_outbox WHERE state = 'queued' AND next_attempt_at <= $1 \
             AND (lease_until IS NULL OR lease_until < $1) LIMIT 1",
        )
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await?;
        if due.is_none() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await?;
        let token = super::leases::next_token(&mut *tx).await?;
        let mut rows = sqlx::query_as::<_, OutboxRow>(&format!(
            "UPDATE m365_outbox SET lease_owner = $1, lease_token = $2, lease_until = $3 \
             WHERE id IN (SELECT o.id FROM m365_outbox o WHERE o.state = 'queued' \
                 AND o.next_attempt_at <= $4 AND (o.lease_until IS NULL OR o.lease_until < $4) \
                 AND NOT EXISTS (SELECT 1 FROM m365_outbox p WHERE p.user_id = o.user_id \
                     AND p.state = 'queued' AND p.id < o.id) \
                 ORDER BY o.id LIMIT $5 {lock}) \
             RETURNING {OUTBOX_COLUMNS}"
        ))
        .bind(owner)
        .bind(token)
        .bind(now_ms + lease_ms)
        .bind(now_ms)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.sort_by_key(|r| r.id);
        Ok(rows)
    }

    /// Extends the lease of the jobs claimed under `token` that are still held; returns how
    /// many are. A job another node took over (its lease had run out) is not extended.
    pub async fn renew_outbox_lease(&self, token: i64, until_ms: i64) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "UPDATE m365_outbox SET lease_until = $2 WHERE lease_token = $1 AND state = 'queued'",
        )
        .bind(token)
        .bind(until_ms)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Gives back every job still held under the claim `token` (a round dropped at shutdown):
    /// due again at once for any node. Returns how many.
    pub async fn release_claim(&self, token: i64) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "UPDATE m365_outbox SET lease_until = NULL, lease_owner = NULL, lease_token = NULL \
             WHERE lease_token = $1",
        )
        .bind(token)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Gives a claimed job back without counting an attempt (the round stopped before sending
    /// it): due again at once for any node.
    pub async fn release_job(&self, job_id: i64, token: Option<i64>) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE m365_outbox SET lease_until = NULL, lease_owner = NULL, lease_token = NULL \
             WHERE id = $1 AND lease_token = $2",
        )
        .bind(job_id)
        .bind(token)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Queues one job for a bound (or being bound) user, outside any other change.
    pub async fn queue_job_if_bound(
        &self,
        user_id: &str,
        job: &OutboxJob,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        enqueue_if_bound(&self.pool, user_id, job, now_ms).await
    }

    /// Whether a password job is already waiting for the user.
    pub async fn has_queued_password(&self, user_id: &str) -> Result<bool, StoreError> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM m365_outbox WHERE user_id = $1 AND state = 'queued' \
             AND kind = 'password'",
        )
        .bind(user_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(n > 0)
    }

    /// Whether the user has jobs still waiting (queued, not failed).
    pub async fn has_queued_jobs(&self, user_id: &str) -> Result<bool, StoreError> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM m365_outbox WHERE user_id = $1 AND state = 'queued'",
        )
        .bind(user_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(n > 0)
    }

    /// Jobs were delivered (or had nothing to do): each is deleted, with any sealed password,
    /// the binding records the sync, and the parts left are written as jobs of their own, in
    /// one transaction. A job no longer held under its claim's token is left alone.
    pub async fn complete_jobs(&self, done: &[Completion], now_ms: i64) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let (mut delivered, mut failed) = (0, 0);
        for completion in done {
            // Lost to another node meanwhile: that node's delivery is the one that counts.
            if !complete_one(&mut tx, completion, now_ms).await? {
                tracing::warn!(
                    job = completion.job_id,
                    "a delivered change's lease had passed to another node; its outcome is not recorded here"
                );
                continue;
            }
            if let Some(event) = &completion.event {
                events::insert(&mut *tx, event).await?;
            }
            for follow_up in &completion.follow_ups {
                insert_follow_up(&mut tx, follow_up, now_ms).await?;
            }
            delivered += 1;
            failed += completion.follow_ups.iter().filter(|f| f.failed).count() as i64;
        }
        super::activity::tally_sync(&mut tx, now_ms, delivered, failed).await?;
        tx.commit().await?;
        self.note_change();
        Ok(())
    }

    /// Bound users whose manager is one of `manager_ids`: (user id, manager id).
    pub async fn bound_reports_of(
        &self,
        manager_ids: &[String],
    ) -> Result<Vec<(String, String)>, StoreError> {
        if manager_ids.is_empty() {
            return Ok(Vec::new());
        }
        let placeholders: Vec<String> = (1..=manager_ids.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT u.id, u.manager_id FROM users u JOIN m365_bindings b ON b.user_id = u.id \
             WHERE b.state = 'bound' AND u.manager_id IN ({})",
            placeholders.join(", ")
        );
        let mut query = sqlx::query_as::<_, (String, String)>(&sql);
        for id in manager_ids {
            query = query.bind(id);
        }
        Ok(query.fetch_all(&self.pool).await?)
    }

    /// How many bind jobs wait (all users): large binds read the tenant's user list instead
    /// of looking users up one by one.
    pub async fn queued_bind_count(&self) -> Result<i64, StoreError> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM m365_outbox WHERE state = 'queued' AND kind = 'bind'",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(n)
    }

    /// How many M365 users idbridge knows of (imported or bound): a first estimate of the
    /// tenant's size before it was ever listed.
    pub async fn known_m365_user_count(&self) -> Result<i64, StoreError> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM m365_links) + (SELECT COUNT(*) FROM m365_bindings)",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(n)
    }

    /// Asks whichever server process or node sees it first to run `name` (e.g. `import`).
    pub async fn request_worker(&self, name: &str, now_ms: i64) -> Result<(), StoreError> {
        request_worker(&self.pool, name, now_ms).await
    }

    /// Takes a request made with [`Store::request_worker`]: true for exactly one taker.
    pub async fn take_worker_request(&self, name: &str) -> Result<bool, StoreError> {
        // Read first: the worker asks at every poll, and nearly always nothing is waiting.
        let waiting: Option<(i64,)> =
            sqlx::query_as("SELECT requested_at FROM m365_worker_requests WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
        if waiting.is_none() {
            return Ok(false);
        }
        Ok(
            sqlx::query("DELETE FROM m365_worker_requests WHERE name = $1")
                .bind(name)
                .execute(&self.pool)
                .await?
                .rows_affected()
                > 0,
        )
    }

    /// A delivery failed but may work later: the lease is released and the job waits. Only
    /// while the claim `token` still holds the job.
    pub async fn postpone_job(
        &self,
        job_id: i64,
        token: Option<i64>,
        count_attempt: bool,
        next_attempt_at: i64,
        error: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE m365_outbox SET lease_until = NULL, lease_owner = NULL, lease_token = NULL, \
             next_attempt_at = $2, last_error = $3, attempts = attempts + $4, updated_at = $5 \
             WHERE id = $1 AND lease_token = $6",
        )
        .bind(job_id)
        .bind(next_attempt_at)
        .bind(error)
        .bind(i64::from(count_attempt))
        .bind(now_ms)
        .bind(token)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A job failed for good: it stays visible as failed (its sealed password erased), the
    /// binding shows the message, a failed bind marks the binding failed, and the event is
    /// recorded, in one transaction; nothing when the job's claim was lost meanwhile.
    pub async fn fail_job(
        &self,
        job: &OutboxRow,
        error: &str,
        now_ms: i64,
        event: &NewEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let held = sqlx::query(
            "UPDATE m365_outbox SET state = 'failed', lease_until = NULL, lease_owner = NULL, \
             lease_token = NULL, secret_enc = NULL, last_error = $2, attempts = attempts + 1, \
             updated_at = $3 WHERE id = $1 AND lease_token = $4",
        )
        .bind(job.id)
        .bind(error)
        .bind(now_ms)
        .bind(job.lease_token)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if held == 0 {
            // Another node holds the job now: its outcome is the one recorded.
            tx.rollback().await?;
            return Ok(());
        }
        let binding_state = if job.job_kind() == Some(JobKind::Bind) {
            BindingState::sql_after(BindingStep::BindFailed)
        } else {
            "state".into()
        };
        sqlx::query(&format!(
            "UPDATE m365_bindings SET last_error = $2, state = {binding_state} WHERE user_id = $1"
        ))
        .bind(&job.user_id)
        .bind(error)
        .execute(&mut *tx)
        .await?;
        events::insert(&mut *tx, event).await?;
        super::activity::tally_sync(&mut tx, now_ms, 0, 1).await?;
        tx.commit().await?;
        self.note_change();
        Ok(())
    }

    /// Marks a binding failed without a job (the M365 user was deleted in Microsoft 365).
    pub async fn mark_binding_lost(&self, user_id: &str, error: &str) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "UPDATE m365_bindings SET state = {}, last_error = $2 \
             WHERE user_id = $1 AND state IN {}",
            BindingState::sql_after(BindingStep::AccountLost),
            BindingState::sql_moved_by(BindingStep::AccountLost)
        ))
        .bind(user_id)
        .bind(error)
        .execute(&self.pool)
        .await?;
        self.note_change();
        Ok(())
    }

    /// Failed jobs, newest first (all users, or one).
    pub async fn failed_jobs(&self, user_id: Option<&str>) -> Result<Vec<OutboxRow>, StoreError> {
        Ok(sqlx::query_as::<_, OutboxRow>(&format!(
            "SELECT {OUTBOX_COLUMNS} FROM m365_outbox WHERE state = 'failed' \
             AND ($1 IS NULL OR user_id = $1) ORDER BY id DESC LIMIT 1000"
        ))
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Queued jobs of one user, oldest first.
    pub async fn queued_jobs(&self, user_id: &str) -> Result<Vec<OutboxRow>, StoreError> {
        Ok(sqlx::query_as::<_, OutboxRow>(&format!(
            "SELECT {OUTBOX_COLUMNS} FROM m365_outbox WHERE state = 'queued' AND user_id = $1 \
             ORDER BY id"
        ))
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Queues failed jobs again (all, or one user's); their bindings leave the failed state.
    pub async fn retry_failed_jobs(
        &self,
        user_id: Option<&str>,
        now_ms: i64,
        event: &NewEvent,
    ) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(&format!(
            "UPDATE m365_bindings SET state = {}, last_error = NULL WHERE state IN {} \
             AND ($1 IS NULL OR user_id = $1) AND user_id IN \
             (SELECT user_id FROM m365_outbox WHERE state = 'failed' AND kind = 'bind')",
            BindingState::sql_after(BindingStep::Retried),
            BindingState::sql_moved_by(BindingStep::Retried)
        ))
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
        let n = sqlx::query(
            "UPDATE m365_outbox SET state = 'queued', attempts = 0, next_attempt_at = $2, \
             updated_at = $2 WHERE state = 'failed' AND ($1 IS NULL OR user_id = $1)",
        )
        .bind(user_id)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        events::insert(&mut *tx, event).await?;
        tx.commit().await?;
        self.note_change();
        Ok(n)
    }

    /// Jobs by state and the oldest queued one: one grouped scan of the outbox, which holds
    /// only undelivered jobs (delivered ones are deleted).
    pub async fn outbox_depth(&self) -> Result<OutboxDepth, StoreError> {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT state, COUNT(*), MIN(created_at) FROM m365_outbox GROUP BY state",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut depth = OutboxDepth::default();
        for (state, n, oldest) in rows {
            match state.as_str() {
                "queued" => {
                    depth.queued = n;
                    depth.oldest_queued_at = Some(oldest);
                }
                "failed" => depth.failed = n,
                _ => {}
            }
        }
        Ok(depth)
    }

    /// Counts of jobs and bindings by state.
    pub async fn sync_counts(&self) -> Result<SyncCounts, StoreError> {
        let jobs: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, COUNT(*) FROM m365_outbox GROUP BY state")
                .fetch_all(&self.pool)
                .await?;
        // A user without a binding row was never bound: unbound too.
        let bindings: Vec<(String, i64)> = sqlx::query_as(
            "SELECT COALESCE(b.state, 'unbound'), COUNT(*) FROM users u \
             LEFT JOIN m365_bindings b ON b.user_id = u.id GROUP BY COALESCE(b.state, 'unbound')",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut counts = SyncCounts::default();
        for (state, n) in jobs {
            match state.as_str() {
                "queued" => counts.queued = n,
                "failed" => counts.failed = n,
                _ => {}
            }
        }
        for (state, n) in bindings {
            match BindingState::parse(&state) {
                Some(BindingState::Bound) => counts.bound = n,
                Some(BindingState::Pending) => counts.pending = n,
                Some(BindingState::Failed) => counts.bind_failed = n,
                Some(BindingState::Unbound) => counts.unbound = n,
                None => {}
            }
        }
        Ok(counts)
    }

    /// Queues an `account` job for every bound user whose password expired before
    /// `changed_before_ms` and whose M365 account is still enabled (and not already queued).
    pub async fn queue_expired_password_blocks(
        &self,
        changed_before_ms: i64,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "INSERT INTO m365_outbox (user_id, kind, next_attempt_at, created_at, updated_at) \
             SELECT b.user_id, 'account', $2, $2, $2 FROM m365_bindings b \
             JOIN users u ON u.id = b.user_id \
             WHERE b.state = 'bound' AND b.account_enabled = 1 \
             AND u.password_changed_at IS NOT NULL AND u.password_changed_at < $1 \
             AND NOT EXISTS (SELECT 1 FROM m365_outbox o WHERE o.user_id = b.user_id \
                 AND o.state = 'queued' AND o.kind = 'account')",
        )
        .bind(changed_before_ms)
        .bind(now_ms)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// The stored direction of every optional attribute that has one.
    pub async fn attribute_directions(&self) -> Result<Vec<(String, String)>, StoreError> {
        Ok(
            sqlx::query_as("SELECT attribute, direction FROM m365_attribute_directions")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Sets an attribute's direction and records the event; `export_to_bound` also queues an
    /// `attributes` job for every bound user, so M365's value is overwritten at once.
    pub async fn set_attribute_direction(
        &self,
        attribute: &str,
        direction: &str,
        actor: &str,
        effects: DirectionEffects,
        now_ms: i64,
        event: &NewEvent,
    ) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO m365_attribute_directions (attribute, direction, updated_at, updated_by) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (attribute) DO UPDATE SET direction = $2, \
             updated_at = $3, updated_by = $4",
        )
        .bind(attribute)
        .bind(direction)
        .bind(now_ms)
        .bind(actor)
        .execute(&mut *tx)
        .await?;
        let mut queued = 0;
        if effects.export_to_bound {
            let job = OutboxJob::attributes(&[attribute]);
            queued = sqlx::query(
                "INSERT INTO m365_outbox (user_id, kind, fields, next_attempt_at, created_at, \
                 updated_at) SELECT user_id, $1, $2, $3, $3, $3 FROM m365_bindings \
                 WHERE state = 'bound'",
            )
            .bind(job.kind.as_str())
            .bind(&job.fields)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        if effects.import_now {
            // In the same transaction: whichever server runs the worker imports at once.
            request_worker(&mut *tx, WORKER_IMPORT, now_ms).await?;
        }
        events::insert(&mut *tx, event).await?;
        tx.commit().await?;
        Ok(queued)
    }

    /// The delta-query position: (selected properties, deltaLink).
    pub async fn delta_state(&self) -> Result<Option<(String, Option<String>)>, StoreError> {
        Ok(
            sqlx::query_as("SELECT select_list, delta_link FROM m365_delta_state WHERE id = 1")
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Saves the delta-query position (None: start a full round next time).
    pub async fn save_delta_state(
        &self,
        select_list: &str,
        delta_link: Option<&str>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO m365_delta_state (id, select_list, delta_link, updated_at) \
             VALUES (1, $1, $2, $3) ON CONFLICT (id) DO UPDATE SET select_list = $1, \
             delta_link = $2, updated_at = $3",
        )
        .bind(select_list)
        .bind(delta_link)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The object ids of bound users' managers, by local user id (for manager export).
    pub async fn object_id_of_user(&self, user_id: &str) -> Result<Option<String>, StoreError> {
        let row: Option<(Option<String>,)> = sqlx::query_as(
            "SELECT m365_object_id FROM m365_bindings WHERE user_id = $1 AND state = 'bound'",
        )
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.and_then(|(id,)| id))
    }
}

/// One line of the binding list: a user with its binding (if any) and sync trouble.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BindingListRow {
    pub user_id: String,
    pub username: String,
    pub email: String,
    pub firstname: String,
    pub lastname: String,
    pub user_state: String,
    /// `unbound` when the user has no binding row.
    #[sqlx(try_from = "String")]
    pub binding_state: BindingState,
    pub immutable_id: Option<String>,
    pub m365_object_id: Option<String>,
    pub last_sync_at: Option<i64>,
    pub last_error: Option<String>,
    pub queued_jobs: i64,
    pub failed_jobs: i64,
}

/// Which users the binding list shows.
#[derive(Debug, Clone, Default)]
pub struct BindingListQuery {
    /// `bound`, `pending`, `failed` (a failed bind or a failed change), `unbound`; None: all.
    pub state: Option<String>,
    pub search: Option<String>,
    pub limit: i64,
    pub offset: i64,
}

const BINDING_LIST_FROM: &str = "FROM users u LEFT JOIN m365_bindings b ON b.user_id = u.id \
    WHERE ($1 IS NULL OR u.username_key LIKE $1 ESCAPE '\\' OR u.email_key LIKE $1 ESCAPE '\\' \
        OR LOWER(u.firstname || ' ' || u.lastname) LIKE $1 ESCAPE '\\') \
    AND ($2 IS NULL \
        OR ($2 = 'unbound' AND (b.state IS NULL OR b.state = 'unbound')) \
        OR ($2 = 'failed' AND (b.state = 'failed' OR EXISTS (SELECT 1 FROM m365_outbox f \
            WHERE f.user_id = u.id AND f.state = 'failed'))) \
        OR ($2 NOT IN ('unbound', 'failed') AND b.state = $2))";

impl Store {
    /// A page of the binding list, ordered by username.
    pub async fn binding_list(
        &self,
        query: &BindingListQuery,
    ) -> Result<Vec<BindingListRow>, StoreError> {
        let pattern = query.search.as_deref().map(super::like_pattern);
        Ok(sqlx::query_as::<_, BindingListRow>(&format!(
            "SELECT u.id AS user_id, u.username, u.email, u.firstname, u.lastname, \
             u.state AS user_state, COALESCE(b.state, 'unbound') AS binding_state, \
             b.immutable_id, b.m365_object_id, b.last_sync_at, b.last_error, \
             (SELECT COUNT(*) FROM m365_outbox q WHERE q.user_id = u.id AND q.state = 'queued') \
                AS queued_jobs, \
             (SELECT COUNT(*) FROM m365_outbox f WHERE f.user_id = u.id AND f.state = 'failed') \
                AS failed_jobs \
             {BINDING_LIST_FROM} ORDER BY u.username_key LIMIT $3 OFFSET $4"
        ))
        .bind(pattern)
        .bind(&query.state)
        .bind(if query.limit > 0 { query.limit } else { 100 })
        .bind(query.offset.max(0))
        .fetch_all(&self.pool)
        .await?)
    }

    /// How many users the binding list query matches.
    pub async fn count_binding_list(&self, query: &BindingListQuery) -> Result<i64, StoreError> {
        let pattern = query.search.as_deref().map(super::like_pattern);
        let (n,): (i64,) = sqlx::query_as(&format!("SELECT COUNT(*) {BINDING_LIST_FROM}"))
            .bind(pattern)
            .bind(&query.state)
            .fetch_one(&self.pool)
            .await?;
        Ok(n)
    }
}

/// What a delivered job changes on the binding.
#[derive(Debug, Clone)]
pub enum JobEffect {
    /// Nothing was sent (the binding no longer needs it).
    Nothing,
    /// Changes were sent.
    Synced {
        account_enabled: Option<bool>,
        password_pushed: bool,
    },
    /// The bind is done.
    Bound(BindOutcome),
}

/// What a new attribute direction sets off, in the transaction that stores it.
#[derive(Debug, Clone, Copy, Default)]
pub struct DirectionEffects {
    /// Queue an `attributes` job for every bound user (Export overwrites M365 at once).
    pub export_to_bound: bool,
    /// Ask the worker to import at once (Import).
    pub import_now: bool,
}

/// The worker request that runs the delta import of attributes set to Import.
pub const WORKER_IMPORT: &str = "import";

async fn request_worker<'e, E: Executor<'e, Database = Any>>(
    executor: E,
    name: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO m365_worker_requests (name, requested_at) VALUES ($1, $2) \
         ON CONFLICT (name) DO UPDATE SET requested_at = $2",
    )
    .bind(name)
    .bind(now_ms)
    .execute(executor)
    .await?;
    Ok(())
}

async fn insert_follow_up(
    tx: &mut sqlx::Transaction<'_, Any>,
    follow_up: &FollowUp,
    now_ms: i64,
) -> Result<(), StoreError> {
    let state = if follow_up.failed { "failed" } else { "queued" };
    sqlx::query(
        "INSERT INTO m365_outbox (user_id, kind, fields, secret_enc, state, attempts, \
         next_attempt_at, last_error, created_at, updated_at) \
         VALUES ($1, $2, $3, NULL, $4, $5, $6, $7, $8, $8)",
    )
    .bind(&follow_up.user_id)
    .bind(follow_up.job.kind.as_str())
    .bind(&follow_up.job.fields)
    .bind(state)
    .bind(follow_up.attempts)
    .bind(follow_up.next_attempt_at)
    .bind(&follow_up.error)
    .bind(now_ms)
    .execute(&mut **tx)
    .await?;
    if follow_up.failed {
        sqlx::query("UPDATE m365_bindings SET last_error = $2 WHERE user_id = $1")
            .bind(&follow_up.user_id)
            .bind(&follow_up.error)
            .execute(&mut **tx)
            .await?;
    }
    if let Some(event) = &follow_up.event {
        events::insert(&mut **tx, event).await?;
    }
    Ok(())
}

/// Records one delivered job; false (and nothing written) when its claim no longer holds it.
async fn complete_one(
    tx: &mut sqlx::Transaction<'_, Any>,
    completion: &Completion,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let user_id = completion.user_id.as_str();
    let deleted = sqlx::query("DELETE FROM m365_outbox WHERE id = $1 AND lease_token = $2")
        .bind(completion.job_id)
        .bind(completion.lease_token)
        .execute(&mut **tx)
        .await?
        .rows_affected();
    if deleted == 0 {
        return Ok(false);
    }
    match &completion.effect {
        JobEffect::Nothing => {}
        JobEffect::Synced {
            account_enabled,
            password_pushed,
        } => {
            sqlx::query(
                "UPDATE m365_bindings SET last_sync_at = $2, \
                     account_enabled = COALESCE($3, account_enabled), \
                     password_pushed = CASE WHEN $4 = 1 THEN 1 ELSE password_pushed END \
                     WHERE user_id = $1",
            )
            .bind(user_id)
            .bind(now_ms)
            .bind(account_enabled.map(i64::from))
            .bind(i64::from(*password_pushed))
            .execute(&mut **tx)
            .await?;
        }
        JobEffect::Bound(outcome) => {
            sqlx::query(&format!(
                "UPDATE m365_bindings SET m365_object_id = $2, immutable_id = $3, \
                     user_principal_name = $4, account_enabled = $5, last_sync_at = $6, \
                     last_error = NULL, \
                     password_pushed = CASE WHEN $7 = 1 THEN 0 ELSE password_pushed END, \
                     state = {}, \
                     bound_at = CASE WHEN state IN {} THEN $6 ELSE bound_at END \
                     WHERE user_id = $1",
                BindingState::sql_after(BindingStep::BindDelivered),
                BindingState::sql_moved_by(BindingStep::BindDelivered)
            ))
            .bind(user_id)
            .bind(&outcome.m365_object_id)
            .bind(&outcome.immutable_id)
            .bind(&outcome.user_principal_name)
            .bind(i64::from(outcome.account_enabled))
            .bind(now_ms)
            .bind(i64::from(outcome.created))
            .execute(&mut **tx)
            .await?;
        }
    }
    Ok(true)
}
