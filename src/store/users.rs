use std::collections::HashSet;

use sqlx::any::AnyRow;
use sqlx::Row;

use super::sync::enqueue_if_bound;
use super::{events, like_pattern, OutboxJob, Store, StoreError};
use crate::attributes::{Attribute, AttributeSpec, AttributeValues, Kind, CATALOGUE};
use crate::events::NewEvent;

/// A user as stored, joined with its manager's username and its Microsoft 365 binding.
#[derive(Debug, Clone)]
pub struct UserRow {
    pub id: String,
    pub username: String,
    pub email: String,
    pub firstname: String,
    pub lastname: String,
    /// The optional attributes, read from their catalogue columns (the manager as username).
    pub attributes: AttributeValues,
    pub manager_id: Option<String>,
    pub state: String,
    pub password_hash: Option<String>,
    pub password_changed_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    pub immutable_id: Option<String>,
    pub user_principal_name: Option<String>,
    pub binding_state: Option<String>,
    /// Whether the user's real password has reached Microsoft 365 (NULL without a binding).
    pub password_pushed: Option<i64>,
    /// Whether the user must change their password at the next sign-in.
    pub must_change_password: i64,
    /// Whether the `chosen` MFA policy requires a second factor of the user.
    pub mfa_required: i64,
}

impl<'r> sqlx::FromRow<'r, AnyRow> for UserRow {
    fn from_row(row: &'r AnyRow) -> Result<Self, sqlx::Error> {
        let mut attributes = AttributeValues::default();
        for spec in optional_columns() {
            attributes.set(spec.attribute, row.try_get(spec.column)?);
        }
        attributes.set(Attribute::Manager, row.try_get("manager_username")?);
        Ok(Self {
            id: row.try_get("id")?,
            username: row.try_get("username")?,
            email: row.try_get("email")?,
            firstname: row.try_get("firstname")?,
            lastname: row.try_get("lastname")?,
            attributes,
            manager_id: row.try_get("manager_id")?,
            state: row.try_get("state")?,
            password_hash: row.try_get("password_hash")?,
            password_changed_at: row.try_get("password_changed_at")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            immutable_id: row.try_get("immutable_id")?,
            user_principal_name: row.try_get("user_principal_name")?,
            binding_state: row.try_get("binding_state")?,
            password_pushed: row.try_get("password_pushed")?,
            must_change_password: row.try_get("must_change_password")?,
            mfa_required: row.try_get("mfa_required")?,
        })
    }
}

/// Every stored attribute of a user, written whole on create and update.
#[derive(Debug, Clone, Default)]
pub struct UserWrite {
    pub id: String,
    pub username: String,
    pub email: String,
    pub firstname: String,
    pub lastname: String,
    /// The optional attributes with a column of their own (the manager is `manager_id`).
    pub attributes: AttributeValues,
    pub manager_id: Option<String>,
    pub state: String,
}

/// The optional attributes stored as text in a column of their own (every optional one but the
/// manager, which is a user reference).
fn optional_columns() -> impl Iterator<Item = &'static AttributeSpec> {
    CATALOGUE
        .iter()
        .filter(|s| s.is_optional() && s.kind != Kind::UserRef)
}

/// Which of a user's idbridge sign-in sessions a password change ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignOut<'a> {
    /// None (an admin's reset: the user's Microsoft 365 sessions end through the outbox).
    Nobody,
    /// Every session (a reset by emailed link: whoever knew the old password is out).
    Everywhere,
    /// Every session but this one (hash), from which the user changed their own password.
    ElsewhereThan(&'a str),
}

/// A page of the user list.
#[derive(Debug, Clone, Default)]
pub struct UserListQuery {
    pub search: Option<String>,
    pub limit: i64,
    pub offset: i64,
}

/// Columns of [`UserRow`], to be used with [`USER_JOINS`] (the attribute columns come from
/// the catalogue).
pub(super) static USER_COLUMNS: UserColumns = UserColumns;

/// Writes the column list of [`UserRow`].
pub(super) struct UserColumns;

impl std::fmt::Display for UserColumns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "u.id, u.username, u.email, u.firstname, u.lastname, u.manager_id, \
             m.username AS manager_username, u.state, u.password_hash, u.password_changed_at, \
             u.created_at, u.updated_at, b.immutable_id, b.user_principal_name, \
             b.state AS binding_state, b.password_pushed, u.must_change_password, \
             u.mfa_required",
        )?;
        for spec in optional_columns() {
            write!(f, ", u.{}", spec.column)?;
        }
        Ok(())
    }
}

/// Joins that [`USER_COLUMNS`] needs, after `FROM users u`.
pub(super) const USER_JOINS: &str = "LEFT JOIN users m ON m.id = u.manager_id \
    LEFT JOIN m365_bindings b ON b.user_id = u.id";

fn select_user() -> String {
    format!("SELECT {USER_COLUMNS} FROM users u {USER_JOINS}")
}

/// Search text shorter than this matches only the start of usernames and emails, which the
/// unique indexes answer directly; longer text matches anywhere in the username, email or name.
const USER_SEARCH_CONTAINS_MIN: usize = 3;

/// Builds the SQL of [`Store::user_page`] and its text parameters (numbered from `$1`; the
/// limit comes after them).
struct UserPageSql {
    sqlite: bool,
    binds: Vec<String>,
}

impl UserPageSql {
    /// A new numbered parameter.
    fn param(&mut self, value: String) -> String {
        self.binds.push(value);
        format!("${}", self.binds.len())
    }

    /// The column as SQLite must not use an index for it (a unary `+`), to keep the plan a
    /// sequential scan where walking an index would cost a table seek per row. PostgreSQL
    /// plans by statistics and has no unary `+` for text.
    fn unindexed(&self, column: &str) -> String {
        if self.sqlite {
            format!("+{column}")
        } else {
            column.to_string()
        }
    }

    /// `AND key > after` / `AND key < before` on `key`.
    fn cursor(&mut self, key: &str, after: Option<&str>, before: Option<&str>) -> String {
        let mut out = String::new();
        if let Some(after) = after {
            let p = self.param(after.to_lowercase());
            out.push_str(&format!(" AND {key} > {p}"));
        }
        if let Some(before) = before {
            let p = self.param(before.to_lowercase());
            out.push_str(&format!(" AND {key} < {p}"));
        }
        out
    }

    /// A case-insensitive LIKE on a text column (SQLite's LIKE already ignores ASCII case, and
    /// its LOWER folds nothing more).
    fn like(&self, column: &str, pattern: &str) -> String {
        if self.sqlite {
            format!("{column} LIKE {pattern} ESCAPE '\\'")
        } else {
            format!("LOWER({column}) LIKE {pattern} ESCAPE '\\'")
        }
    }
}

impl Store {
    /// Finds a user by id, username or email (case-insensitive for the last two).
    pub async fn find_user(&self, key: &str) -> Result<Option<UserRow>, StoreError> {
        let lowered = key.to_lowercase();
        let row = sqlx::query_as::<_, UserRow>(&format!(
            "{} WHERE u.id = $1 OR u.username_key = $2 OR u.email_key = $2",
            select_user()
        ))
        .bind(key)
        .bind(&lowered)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row)
    }

    /// Lists users ordered by username, optionally filtered by a search text.
    pub async fn list_users(&self, query: &UserListQuery) -> Result<Vec<UserRow>, StoreError> {
        let pattern = query.search.as_deref().map(like_pattern);
        let rows = sqlx::query_as::<_, UserRow>(&format!(
            "{} WHERE ($1 IS NULL OR u.username_key LIKE $1 ESCAPE '\\' \
               OR u.email_key LIKE $1 ESCAPE '\\' \
               OR LOWER(u.firstname || ' ' || u.lastname) LIKE $1 ESCAPE '\\') \
             ORDER BY u.username_key LIMIT $2 OFFSET $3",
            select_user()
        ))
        .bind(pattern)
        .bind(if query.limit > 0 { query.limit } else { 100 })
        .bind(query.offset.max(0))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    /// A page of users ordered by username, for lists that must stay fast at any size: keyset
    /// paging on the unique username key, no `OFFSET` and no count.
    ///
    /// `after` gives the page following that username, `before` the page preceding it (rows
    /// still in ascending order). A search text of one or two characters matches the start of
    /// the username or email (two index ranges); three or more match anywhere in the
    /// username, email, first, last or "first last" name (one sequential scan of the users,
    /// which costs the same on every page and for rare text; walking the username index
    /// instead would seek the table once per user). Ask for one row more than shown to learn
    /// whether another page follows.
    pub async fn user_page(
        &self,
        search: Option<&str>,
        after: Option<&str>,
        before: Option<&str>,
        limit: i64,
    ) -> Result<Vec<UserRow>, StoreError> {
        // Paging backwards reads in reverse and flips the rows afterwards.
        let backwards = before.is_some() && after.is_none();
        let order = if backwards { "DESC" } else { "ASC" };
        let text = search.map(|s| s.trim().to_lowercase()).unwrap_or_default();
        let mut q = UserPageSql {
            sqlite: self.backend == super::Backend::Sqlite,
            binds: Vec::new(),
        };
        // The page's rows are chosen by id first, narrowly, so the joins run for them only.
        // `$limit` stands for the limit's parameter, numbered after the others.
        let ids = if text.is_empty() {
            None
        } else if text.chars().count() < USER_SEARCH_CONTAINS_MIN {
            let low = q.param(text.clone());
            // Keys are ASCII (see `validate_username` / `validate_email`): U+10FFFF sorts after
            // every key starting with the text. The LIKE keeps the match exact whatever the
            // collation.
            let high = q.param(format!("{text}\u{10FFFF}"));
            let prefix = q.param(like_pattern(&text)[1..].to_string());
            let by_username = q.cursor("u.username_key", after, before);
            let key = q.unindexed("u.username_key");
            let by_email = q.cursor(&key, after, before);
            Some(format!(
                "SELECT id FROM (SELECT u.id FROM users u WHERE u.username_key >= {low} \
                   AND u.username_key < {high} AND u.username_key LIKE {prefix} ESCAPE '\\'\
                   {by_username} ORDER BY u.username_key {order} LIMIT $limit) AS by_username \
                 UNION SELECT id FROM (SELECT u.id FROM users u WHERE u.email_key >= {low} \
                   AND u.email_key < {high} AND u.email_key LIKE {prefix} ESCAPE '\\'\
                   {by_email} ORDER BY {key} {order} LIMIT $limit) AS by_email"
            ))
        } else {
            let pattern = q.param(like_pattern(&text));
            let mut any = vec![
                q.like("u.username_key", &pattern),
                q.like("u.email_key", &pattern),
                q.like("u.firstname", &pattern),
                q.like("u.lastname", &pattern),
            ];
            // Without a space the text cannot span first and last name.
            if text.contains(' ') {
                any.push(q.like("(u.firstname || ' ' || u.lastname)", &pattern));
            }
            let key = q.unindexed("u.username_key");
            let cursor = q.cursor(&key, after, before);
            Some(format!(
                "SELECT u.id FROM users u WHERE ({}){cursor} ORDER BY {key} {order} LIMIT $limit",
                any.join(" OR ")
            ))
        };
        let filter = match ids {
            Some(ids) => format!("WHERE u.id IN ({ids})"),
            None => {
                let cursor = q.cursor("u.username_key", after, before);
                cursor
                    .strip_prefix(" AND ")
                    .map(|c| format!("WHERE {c}"))
                    .unwrap_or_default()
            }
        };
        let limit_param = format!("${}", q.binds.len() + 1);
        let sql = format!(
            "{} {filter} ORDER BY u.username_key {order} LIMIT $limit",
            select_user()
        )
        .replace("$limit", &limit_param);
        let mut query = sqlx::query_as::<_, UserRow>(&sql);
        for value in q.binds {
            query = query.bind(value);
        }
        let mut rows = query.bind(limit.max(1)).fetch_all(&self.pool).await?;
        if backwards {
            rows.reverse();
        }
        Ok(rows)
    }

    /// Counts users matching a search text (as [`Store::list_users`] filters them).
    pub async fn count_matching_users(&self, search: Option<&str>) -> Result<i64, StoreError> {
        let pattern = search.map(like_pattern);
        let (n,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM users u WHERE ($1 IS NULL OR u.username_key LIKE $1 ESCAPE '\\' \
               OR u.email_key LIKE $1 ESCAPE '\\' \
               OR LOWER(u.firstname || ' ' || u.lastname) LIKE $1 ESCAPE '\\')",
        )
        .bind(pattern)
        .fetch_one(&self.pool)
        .await?;
        Ok(n)
    }

    /// Counts all users.
    pub async fn count_users(&self) -> Result<i64, StoreError> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM users")
            .fetch_one(&self.pool)
            .await?;
        Ok(n)
    }

    /// Inserts a user (with an optional first password and an optional link to the M365 user
    /// it is imported from) and its event in one transaction.
    pub async fn insert_user(
        &self,
        user: &UserWrite,
        password_hash: Option<&str>,
        link: Option<&super::LinkRow>,
        now_ms: i64,
        event: &NewEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let columns: Vec<&str> = optional_columns().map(|s| s.column).collect();
        // $1..$13 are the fixed columns; the attribute columns follow.
        let params: Vec<String> = (14..14 + columns.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "INSERT INTO users (id, username, username_key, email, email_key, firstname, lastname, \
             manager_id, state, password_hash, password_changed_at, created_at, updated_at{}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13{})",
            columns.iter().map(|c| format!(", {c}")).collect::<String>(),
            params.iter().map(|p| format!(", {p}")).collect::<String>(),
        );
        let mut query = sqlx::query(&sql)
            .bind(&user.id)
            .bind(&user.username)
            .bind(user.username.to_lowercase())
            .bind(&user.email)
            .bind(user.email.to_lowercase())
            .bind(&user.firstname)
            .bind(&user.lastname)
            .bind(&user.manager_id)
            .bind(&user.state)
            .bind(password_hash)
            .bind(password_hash.map(|_| now_ms))
            .bind(now_ms)
            .bind(now_ms);
        for spec in optional_columns() {
            query = query.bind(user.attributes.get(spec.attribute).map(str::to_string));
        }
        query.execute(&mut *tx).await?;
        if let Some(hash) = password_hash {
            sqlx::query(
                "INSERT INTO password_history (user_id, password_hash, created_at) VALUES ($1, $2, $3)",
            )
            .bind(&user.id)
            .bind(hash)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(link) = link {
            super::m365::insert_link(&mut *tx, link).await?;
        }
        events::insert(&mut *tx, event).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Inserts users imported from Microsoft 365, each with its link to the M365 user and its
    /// event, in one transaction and a few multi-row statements. Returns one outcome per user, in
    /// order: `Ok` when inserted, else [`StoreError::Conflict`] naming the field another user
    /// (stored before, or earlier in `users`) already has — the same outcome as inserting them
    /// one by one with [`Store::insert_user`], where a conflict rejects that user only.
    ///
    /// The users carry no password (an imported user signs in with Microsoft 365 or gets one
    /// later).
    pub async fn insert_imported_users(
        &self,
        users: &[(UserWrite, super::LinkRow, NewEvent)],
        now_ms: i64,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Only the optional columns some user sets are written; the others stay NULL.
        let columns: Vec<&AttributeSpec> = optional_columns()
            .filter(|s| {
                users
                    .iter()
                    .any(|(u, _, _)| u.attributes.get(s.attribute).is_some())
            })
            .collect();
        let width = 11 + columns.len();
        let mut inserted: HashSet<String> = HashSet::with_capacity(users.len());
        for chunk in users.chunks(super::rows_per_statement(width)) {
            // A row hitting a unique key is skipped, not an error, so one taken email does not
            // fail the others (`ON CONFLICT DO NOTHING`, in SQLite and PostgreSQL alike).
            let sql = format!(
                "INSERT INTO users (id, username, username_key, email, email_key, firstname, \
                 lastname, manager_id, state, created_at, updated_at{}) VALUES {} \
                 ON CONFLICT DO NOTHING",
                columns
                    .iter()
                    .map(|c| format!(", {}", c.column))
                    .collect::<String>(),
                super::values_tuples(self.backend, chunk.len(), width),
            );
            let mut query = sqlx::query(&sql);
            for (user, _, _) in chunk {
                query = query
                    .bind(&user.id)
                    .bind(&user.username)
                    .bind(user.username.to_lowercase())
                    .bind(&user.email)
                    .bind(user.email.to_lowercase())
                    .bind(&user.firstname)
                    .bind(&user.lastname)
                    .bind(&user.manager_id)
                    .bind(&user.state)
                    .bind(now_ms)
                    .bind(now_ms);
                for spec in &columns {
                    query = query.bind(user.attributes.get(spec.attribute).map(str::to_string));
                }
            }
            let ids: Vec<&str> = chunk.iter().map(|(u, _, _)| u.id.as_str()).collect();
            let added = query.execute(&mut *tx).await?.rows_affected();
            inserted.extend(
                self.inserted_of(&mut tx, "users", "id", &ids, added)
                    .await?,
            );
        }

        // Why the others were skipped: their email or username is taken (checked in that order,
        // as SQLite reports a row breaking both).
        let rejected: Vec<&UserWrite> = users
            .iter()
            .map(|(u, _, _)| u)
            .filter(|u| !inserted.contains(&u.id))
            .collect();
        let mut taken_emails = HashSet::new();
        let mut taken_usernames = HashSet::new();
        for chunk in rejected.chunks(super::rows_per_statement(2)) {
            let sql = format!(
                "SELECT username_key, email_key FROM users WHERE username_key IN ({}) \
                 OR email_key IN ({})",
                super::param_list(self.backend, 1, chunk.len()),
                super::param_list(self.backend, chunk.len() + 1, chunk.len()),
            );
            let mut query = sqlx::query_as::<_, (String, String)>(&sql);
            for user in chunk {
                query = query.bind(user.username.to_lowercase());
            }
            for user in chunk {
                query = query.bind(user.email.to_lowercase());
            }
            for (username, email) in query.fetch_all(&mut *tx).await? {
                taken_usernames.insert(username);
                taken_emails.insert(email);
            }
        }

        // Links of the inserted users; a user whose M365 object is linked already (to another
        // user) is taken out again, as the one-by-one insert would roll it back.
        const LINK_WIDTH: usize = 6;
        let links: Vec<&super::LinkRow> = users
            .iter()
            .filter(|(u, _, _)| inserted.contains(&u.id))
            .map(|(_, l, _)| l)
            .collect();
        let mut linked: HashSet<String> = HashSet::with_capacity(links.len());
        for chunk in links.chunks(super::rows_per_statement(LINK_WIDTH)) {
            let sql = format!(
                "INSERT INTO m365_links (user_id, tenant_id, m365_object_id, user_principal_name, \
                 immutable_id, linked_at) VALUES {} ON CONFLICT DO NOTHING",
                super::values_tuples(self.backend, chunk.len(), LINK_WIDTH)
            );
            let mut query = sqlx::query(&sql);
            for link in chunk {
                query = query
                    .bind(&link.user_id)
                    .bind(&link.tenant_id)
                    .bind(&link.m365_object_id)
                    .bind(&link.user_principal_name)
                    .bind(&link.immutable_id)
                    .bind(link.linked_at);
            }
            let ids: Vec<&str> = chunk.iter().map(|l| l.user_id.as_str()).collect();
            let added = query.execute(&mut *tx).await?.rows_affected();
            linked.extend(
                self.inserted_of(&mut tx, "m365_links", "user_id", &ids, added)
                    .await?,
            );
        }
        let unlinked: Vec<&str> = links
            .iter()
            .map(|l| l.user_id.as_str())
            .filter(|id| !linked.contains(*id))
            .collect();
        for chunk in unlinked.chunks(super::rows_per_statement(1)) {
            let sql = format!(
                "DELETE FROM users WHERE id IN ({})",
                super::param_list(self.backend, 1, chunk.len())
            );
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(*id);
            }
            query.execute(&mut *tx).await?;
        }

        let events: Vec<&NewEvent> = users
            .iter()
            .filter(|(u, _, _)| linked.contains(&u.id))
            .map(|(_, _, e)| e)
            .collect();
        events::insert_many(&mut tx, self.backend, &events).await?;
        tx.commit().await?;

        Ok(users
            .iter()
            .map(|(user, _, _)| {
                if linked.contains(&user.id) {
                    Ok(())
                } else if inserted.contains(&user.id) {
                    Err(StoreError::Conflict("Microsoft 365 user"))
                } else if taken_emails.contains(&user.email.to_lowercase()) {
                    Err(StoreError::Conflict("email"))
                } else if taken_usernames.contains(&user.username.to_lowercase()) {
                    Err(StoreError::Conflict("username"))
                } else {
                    Err(StoreError::Conflict("key"))
                }
            })
            .collect())
    }

    /// Which of `ids` (new keys, unknown before this transaction) a multi-row insert that
    /// added `added` rows took: all of them when it added as many rows as it had, which needs no
    /// query; else those now present in `table`'s `column`. Reading the rows back only when
    /// some were skipped keeps the common case to one statement with no rows to return.
    async fn inserted_of(
        &self,
        conn: &mut sqlx::AnyConnection,
        table: &str,
        column: &str,
        ids: &[&str],
        added: u64,
    ) -> Result<Vec<String>, StoreError> {
        if added as usize == ids.len() {
            return Ok(ids.iter().map(|id| id.to_string()).collect());
        }
        let mut present = Vec::with_capacity(added as usize);
        for chunk in ids.chunks(super::rows_per_statement(1)) {
            let sql = format!(
                "SELECT {column} FROM {table} WHERE {column} IN ({})",
                super::param_list(self.backend, 1, chunk.len())
            );
            let mut query = sqlx::query_as::<_, (String,)>(&sql);
            for id in chunk {
                query = query.bind(*id);
            }
            present.extend(
                query
                    .fetch_all(&mut *conn)
                    .await?
                    .into_iter()
                    .map(|(id,)| id),
            );
        }
        Ok(present)
    }

    /// Rewrites a user's attributes and records the event in one transaction.
    ///
    /// `sync` is queued for Microsoft 365 in the same transaction when the user is bound.
    pub async fn update_user(
        &self,
        user: &UserWrite,
        now_ms: i64,
        event: &NewEvent,
        sync: &[OutboxJob],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let sets: String = optional_columns()
            .enumerate()
            .map(|(i, s)| format!(", {} = ${}", s.column, i + 11))
            .collect();
        // $1..$10 are the fixed columns; the attribute columns follow.
        let sql = format!(
            "UPDATE users SET username = $2, username_key = $3, email = $4, email_key = $5, \
             firstname = $6, lastname = $7, manager_id = $8, state = $9, updated_at = $10{sets} \
             WHERE id = $1"
        );
        let mut query = sqlx::query(&sql)
            .bind(&user.id)
            .bind(&user.username)
            .bind(user.username.to_lowercase())
            .bind(&user.email)
            .bind(user.email.to_lowercase())
            .bind(&user.firstname)
            .bind(&user.lastname)
            .bind(&user.manager_id)
            .bind(&user.state)
            .bind(now_ms);
        for spec in optional_columns() {
            query = query.bind(user.attributes.get(spec.attribute).map(str::to_string));
        }
        query.execute(&mut *tx).await?;
        if user.state != "active" {
            // A suspended user must not keep signing in through an existing session.
            sqlx::query("DELETE FROM sso_sessions WHERE user_id = $1")
                .bind(&user.id)
                .execute(&mut *tx)
                .await?;
        }
        for job in sync {
            enqueue_if_bound(&mut *tx, &user.id, job, now_ms).await?;
        }
        events::insert(&mut *tx, event).await?;
        tx.commit().await?;
        self.note_change();
        Ok(())
    }

    /// The newest `limit` password hashes of a user (for the history rule).
    pub async fn password_history(
        &self,
        user_id: &str,
        limit: i64,
    ) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT password_hash FROM password_history WHERE user_id = $1 \
             ORDER BY created_at DESC LIMIT $2",
        )
        .bind(user_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(h,)| h).collect())
    }

    /// Sets a new password hash, appends it to the history (pruned to `keep`), records the event
    /// and, for a bound user, queues `sync` (the sealed password for Microsoft 365). Every
    /// reset link of the user dies, and the sessions `sign_out` names end.
    #[allow(clippy::too_many_arguments)] // reason: one transaction, each part its own argument
    pub async fn set_password(
        &self,
        user_id: &str,
        hash: &str,
        keep: i64,
        now_ms: i64,
        event: &NewEvent,
        sync: Option<&OutboxJob>,
        sign_out: SignOut<'_>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE users SET password_hash = $2, password_changed_at = $3, updated_at = $3, must_change_password = 0 WHERE id = $1",
        )
        .bind(user_id)
        .bind(hash)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO password_history (user_id, password_hash, created_at) VALUES ($1, $2, $3)",
        )
        .bind(user_id)
        .bind(hash)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM password_history WHERE user_id = $1 AND created_at NOT IN \
             (SELECT created_at FROM password_history WHERE user_id = $1 \
              ORDER BY created_at DESC LIMIT $2)",
        )
        .bind(user_id)
        .bind(keep.max(1))
        .execute(&mut *tx)
        .await?;
        if let Some(job) = sync {
            enqueue_if_bound(&mut *tx, user_id, job, now_ms).await?;
        }
        super::resets::end_reset_tokens(&mut *tx, user_id, super::ENDED_PASSWORD_CHANGED, now_ms)
            .await?;
        match sign_out {
            SignOut::Nobody => {}
            SignOut::Everywhere => {
                sqlx::query("DELETE FROM sso_sessions WHERE user_id = $1")
                    .bind(user_id)
                    .execute(&mut *tx)
                    .await?;
            }
            SignOut::ElsewhereThan(keep) => {
                sqlx::query("DELETE FROM sso_sessions WHERE user_id = $1 AND id_hash <> $2")
                    .bind(user_id)
                    .bind(keep)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        events::insert(&mut *tx, event).await?;
        tx.commit().await?;
        self.note_change();
        Ok(())
    }

    /// Moves a user's password-change time (used by tests and by imports keeping history).
    pub async fn set_password_changed_at(
        &self,
        user_id: &str,
        changed_at_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE users SET password_changed_at = $2 WHERE id = $1")
            .bind(user_id)
            .bind(changed_at_ms)
            .execute(&self.pool)
            .await?;
        self.note_change();
        Ok(())
    }

    /// Deletes a user and records the event in one transaction.
    pub async fn delete_user(&self, user_id: &str, event: &NewEvent) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        events::insert(&mut *tx, event).await?;
        tx.commit().await?;
        self.note_change();
        Ok(())
    }

    /// Binds a user to Microsoft 365 with its immutable ID and UPN.
    ///
    /// The binding issue drives this through Graph; until then tests and the CLI stamp it
    /// directly.
    pub async fn upsert_binding(
        &self,
        user_id: &str,
        immutable_id: &str,
        user_principal_name: &str,
        now_ms: i64,
        event: &NewEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO m365_bindings (user_id, immutable_id, user_principal_name, state, bound_at) \
             VALUES ($1, $2, $3, 'bound', $4) \
             ON CONFLICT (user_id) DO UPDATE SET user_principal_name = $3, state = 'bound'",
        )
        .bind(user_id)
        .bind(immutable_id)
        .bind(user_principal_name)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        events::insert(&mut *tx, event).await?;
        tx.commit().await?;
        self.note_change();
        Ok(())
    }
}
