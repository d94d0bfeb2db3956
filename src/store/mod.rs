//! The SQL store: the only place in idbridge that writes SQL.
//!
//! One implementation runs on SQLite (embedded default) and PostgreSQL through sqlx's `Any`
//! driver: queries use `$n` placeholders, which both accept, and portable types only (TEXT,
//! 64-bit integers; times are Unix milliseconds). Each backend has its own `migrations/`
//! folder because their DDL differs (auto-increment keys).

mod activity;
mod admins;
mod app_registration;
mod branding;
mod events;
mod federation;
mod leases;
mod m365;
mod mfa;
mod passkeys;
mod resets;
mod saml;
mod service_providers;
mod signing;
mod sync;
mod sync_round;
mod throttle;
mod users;
mod write_behind;

pub use activity::{Buckets, EventBucketCount, SyncBucketCount};
pub use admins::{AdminChange, AdminRow, AdminSessionRow, AdminUpdate, ApiKeyRow, NewAdminSession};
pub use app_registration::AppRegistrationRow;
pub use branding::BrandingRow;
pub use events::{EventFilter, EventRow};
pub use federation::FederatedDomainRow;
pub use leases::WorkLease;
pub use m365::{ConnectionRow, ImportResultRow, ImportRunRow, LinkRow};
pub use mfa::{FactorCounts, FactorOwner, TotpRow};
pub use passkeys::{CeremonyRow, PasskeyRow};
pub use resets::{ResetTokenRow, ENDED_PASSWORD_CHANGED, ENDED_USED};
pub use saml::{PendingRequestRow, ReplayGuard, SessionRow, SessionUserRow};
pub use service_providers::ServiceProviderRow;
pub use signing::{CertificateRole, SigningCertificateRow};
pub use sync::{
    BindOutcome, BindRequest, BindingListQuery, BindingListRow, BindingRow, Completion,
    DirectionEffects, FollowUp, JobEffect, JobKind, OutboxDepth, OutboxJob, OutboxRow, SyncCounts,
    REVOKE_SESSIONS, WORKER_IMPORT,
};
pub use throttle::FailureCount;
pub use users::{SignOut, UserListQuery, UserRow, UserWrite};
pub use write_behind::WriteBehind;

use std::str::FromStr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};

/// Failures of the store, with unique-key conflicts told apart so callers can explain them.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("another record already has this {0}")]
    Conflict(&'static str),
    #[error("cannot open the database at {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Database(sqlx::Error),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &err {
            if db.is_unique_violation() {
                return StoreError::Conflict(unique_field(db.message(), db.constraint()));
            }
        }
        StoreError::Database(err)
    }
}

/// Names the field behind a unique violation from the SQLite message or PostgreSQL constraint.
fn unique_field(message: &str, constraint: Option<&str>) -> &'static str {
    let text = format!("{message} {}", constraint.unwrap_or_default());
    if text.contains("email_key") {
        "email"
    } else if text.contains("username") {
        "username"
    } else if text.contains("m365_object_id") || text.contains("m365_links") {
        "Microsoft 365 user"
    } else if text.contains("immutable_id") {
        "immutable ID"
    } else if text.contains("saml_seen_requests") || text.contains("request_id") {
        "request ID"
    } else {
        "key"
    }
}

/// Which SQL backend a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Handle to the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    changes: Arc<ChangeEpoch>,
}

/// Counts changes that can alter the answer to a sign-in (a user, a binding, a session
/// ending), so caches of those reads know when to drop what they hold.
///
/// Writes made through this process bump it as they commit; writes by other processes (the
/// CLI, other nodes) bump the `change_epoch` row through triggers, which
/// [`Store::poll_changes`] turns into a bump here.
#[derive(Debug, Default)]
struct ChangeEpoch {
    local: AtomicU64,
    /// The database counter last seen by the poll.
    seen_in_database: AtomicI64,
}

impl Store {
    /// Opens (and for SQLite creates) the database; does not migrate.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        if backend == Backend::Sqlite {
            create_sqlite_parent_dir(url);
        }
        let connect_err = |source| StoreError::Connect {
            url: crate::config::redact_url(url),
            source,
        };
        let options = AnyConnectOptions::from_str(url).map_err(connect_err)?;
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 8 } else { 16 })
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets the CLI and the server share the file; NORMAL sync is
                        // durable across process crashes, which is what WAL needs.
                        conn.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                             PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;",
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(connect_err)?;
        Ok(Self {
            pool,
            backend,
            changes: Arc::default(),
        })
    }

    /// The current change epoch: it moves whenever a user, a binding or a session may have
    /// changed, here or (after the next poll) in another process.
    pub fn change_epoch(&self) -> u64 {
        self.changes.local.load(Ordering::Acquire)
    }

    /// Marks a committed change to users, bindings or sessions made through this process.
    fn note_change(&self) {
        self.changes.local.fetch_add(1, Ordering::AcqRel);
    }

    /// Reads the database's change counter; a move since the last poll (a write by the CLI,
    /// another node, or a path of this process) advances the change epoch. Returns whether
    /// it moved. When the counter cannot be read, the epoch advances too.
    pub async fn poll_changes(&self) -> Result<bool, StoreError> {
        let read: Result<(i64,), sqlx::Error> =
            sqlx::query_as("SELECT n FROM change_epoch WHERE id = 1")
                .fetch_one(&self.pool)
                .await;
        let n = match read {
            Ok((n,)) => n,
            Err(err) => {
                // Unseen changes may be piling up: nothing cached may be trusted meanwhile.
                self.note_change();
                return Err(err.into());
            }
        };
        let before = self.changes.seen_in_database.swap(n, Ordering::AcqRel);
        if before != n {
            self.note_change();
        }
        Ok(before != n)
    }

    /// Writes a consistent copy of an SQLite database to `path` (`VACUUM INTO`: one read
    /// transaction, so it is safe while the server writes).
    pub async fn vacuum_into(&self, path: &str) -> Result<(), StoreError> {
        // A filename literal (quotes doubled) rather than a bound value: SQLite documents
        // VACUUM INTO with an expression, and a literal works on every version.
        let sql = format!("VACUUM INTO '{}'", path.replace('\'', "''"));
        sqlx::query(&sql).execute(&self.pool).await?;
        Ok(())
    }

    /// Applies pending migrations of this backend.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self.backend {
            Backend::Sqlite => SQLITE_MIGRATIONS.run(&self.pool).await?,
            Backend::Postgres => POSTGRES_MIGRATIONS.run(&self.pool).await?,
        }
        Ok(())
    }

    /// True when the database answers a trivial query.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// The connection pool's (open connections, idle connections), for `/metrics`.
    pub fn pool_use(&self) -> (u32, usize) {
        (self.pool.size(), self.pool.num_idle())
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Runs `sql` (a DELETE bound to `$1` = `bound` and `$2` = a batch size) until it deletes
    /// nothing, one short transaction per batch: a purge of a million rows must not hold the
    /// database's write lock while sign-ins wait behind it.
    async fn delete_in_batches(&self, sql: &str, bound: i64) -> Result<u64, StoreError> {
        const BATCH: i64 = 5_000;
        let mut removed = 0;
        loop {
            let done = sqlx::query(sql)
                .bind(bound)
                .bind(BATCH)
                .execute(&self.pool)
                .await?
                .rows_affected();
            removed += done;
            if done < BATCH as u64 {
                return Ok(removed);
            }
            tokio::task::yield_now().await;
        }
    }

    /// Closes all connections (on shutdown).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn create_sqlite_parent_dir(url: &str) {
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:")
        .split('?')
        .next()
        .unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return;
    }
    if let Some(parent) = std::path::Path::new(path).parent() {
        if !parent.as_os_str().is_empty() && !parent.exists() {
            // The database holds password hashes and session hashes: keep it private.
            use std::os::unix::fs::DirBuilderExt;
            let _ = std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent);
        }
    }
}

/// The most bind parameters one statement may carry on either backend: SQLite's
/// `SQLITE_MAX_VARIABLE_NUMBER` defaults to 32,766 since 3.32.0 (<https://sqlite.org/limits.html>,
/// item 9); PostgreSQL's protocol counts parameters in 16 bits (65,535). Multi-row statements
/// are cut into chunks below it.
const MAX_BIND_PARAMS: usize = 32_766;

/// How many rows of `width` bound columns fit in one statement (at least one).
fn rows_per_statement(width: usize) -> usize {
    (MAX_BIND_PARAMS / width.max(1)).max(1)
}

/// The `i`-th (from 1) bind parameter of a statement that numbers its parameters in order.
///
/// SQLite gets anonymous `?`s, numbered by position (<https://sqlite.org/lang_expr.html#varparam>):
/// sqlx binds a named parameter such as `$7` by looking its name up, and SQLite finds the name
/// of a parameter by walking the statement's list of names, so a statement with thousands of
/// `$n` costs time quadratic in their number. PostgreSQL only knows `$n`.
fn placeholder(backend: Backend, i: usize) -> String {
    match backend {
        Backend::Sqlite => "?".to_string(),
        Backend::Postgres => format!("${i}"),
    }
}

/// `($1, $2, …), ($w+1, …), …` (or `?`s, see [`placeholder`]): the VALUES tuples of a
/// multi-row statement with `rows` rows of `width` parameters each, its only parameters.
fn values_tuples(backend: Backend, rows: usize, width: usize) -> String {
    let mut out = String::with_capacity(rows * width * 7);
    for row in 0..rows {
        if row > 0 {
            out.push_str(", ");
        }
        out.push('(');
        for col in 0..width {
            if col > 0 {
                out.push_str(", ");
            }
            out.push_str(&placeholder(backend, row * width + col + 1));
        }
        out.push(')');
    }
    out
}

/// `$first, …, $(first + n - 1)` (or `?`s): a list of `n` parameters for `IN (…)`, in a
/// statement whose parameters before them number `first - 1`.
fn param_list(backend: Backend, first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| placeholder(backend, i))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Escapes `%`, `_` and `\` for a `LIKE … ESCAPE '\'` pattern.
fn like_pattern(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('%');
    for c in text.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_row_placeholders_are_numbered_row_by_row() {
        let pg = Backend::Postgres;
        assert_eq!(values_tuples(pg, 2, 3), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(values_tuples(pg, 1, 1), "($1)");
        assert_eq!(param_list(pg, 3, 2), "$3, $4");
        assert_eq!(param_list(pg, 1, 0), "");
        // SQLite's are positional.
        assert_eq!(values_tuples(Backend::Sqlite, 2, 2), "(?, ?), (?, ?)");
        assert_eq!(param_list(Backend::Sqlite, 3, 2), "?, ?");
    }

    #[test]
    fn chunks_stay_under_the_parameter_limit() {
        // A page of 999 users of the widest insert fits in one statement.
        assert!(rows_per_statement(24) >= 999);
        assert!(rows_per_statement(7) * 7 <= MAX_BIND_PARAMS);
        assert_eq!(rows_per_statement(0), MAX_BIND_PARAMS);
        assert_eq!(rows_per_statement(MAX_BIND_PARAMS + 1), 1);
    }
}
