//! Queries of the JSON API that no other view needs.

use super::users::{UserRow, USER_COLUMNS, USER_JOINS};
use super::{like_pattern, Store, StoreError};

impl Store {
    /// A page of users ordered by username, after the username `after` (keyset paging: the
    /// unique index on `username_key` makes every page as fast as the first, at any depth).
    pub async fn list_users_after(
        &self,
        search: Option<&str>,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<UserRow>, StoreError> {
        let pattern = search.map(like_pattern);
        let rows = sqlx::query_as::<_, UserRow>(&format!(
            "SELECT {USER_COLUMNS} FROM users u {USER_JOINS} \
             WHERE ($1 IS NULL OR u.username_key > $1) \
               AND ($2 IS NULL OR u.username_key LIKE $2 ESCAPE '\\' \
                 OR u.email_key LIKE $2 ESCAPE '\\' \
                 OR LOWER(u.firstname || ' ' || u.lastname) LIKE $2 ESCAPE '\\') \
             ORDER BY u.username_key LIMIT $3"
        ))
        .bind(after.map(str::to_lowercase))
        .bind(pattern)
        .bind(limit.max(1))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }
}
