//! Reads for a whole delivery round or bind request at once: one query per 500 users instead of
//! several per user (each sqlx-sqlite statement costs a round trip to the connection's thread).

use super::sync::BindingRow;
use super::users::{UserRow, USER_COLUMNS, USER_JOINS};
use super::{LinkRow, Store, StoreError};

/// Ids per `IN (…)` list, well under SQLite's and PostgreSQL's parameter limits.
const CHUNK: usize = 500;

fn placeholders(n: usize) -> String {
    (1..=n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Store {
    /// The users with these ids (missing ones are left out), in no particular order.
    pub async fn users_by_ids(&self, ids: &[String]) -> Result<Vec<UserRow>, StoreError> {
        let mut rows = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(CHUNK) {
            let sql = format!(
                "SELECT {USER_COLUMNS} FROM users u {USER_JOINS} WHERE u.id IN ({})",
                placeholders(chunk.len())
            );
            let mut query = sqlx::query_as::<_, UserRow>(&sql);
            for id in chunk {
                query = query.bind(id);
            }
            rows.extend(query.fetch_all(&self.pool).await?);
        }
        Ok(rows)
    }

    /// The bindings of these users (users without one are left out).
    pub async fn bindings_by_user_ids(
        &self,
        ids: &[String],
    ) -> Result<Vec<BindingRow>, StoreError> {
        let mut rows = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(CHUNK) {
            let sql = format!(
                "SELECT user_id, immutable_id, user_principal_name, m365_object_id, state, \
                 bound_at, last_sync_at, last_error, password_pushed, account_enabled \
                 FROM m365_bindings WHERE user_id IN ({})",
                placeholders(chunk.len())
            );
            let mut query = sqlx::query_as::<_, BindingRow>(&sql);
            for id in chunk {
                query = query.bind(id);
            }
            rows.extend(query.fetch_all(&self.pool).await?);
        }
        Ok(rows)
    }

    /// The import links of these users.
    pub async fn links_by_user_ids(&self, ids: &[String]) -> Result<Vec<LinkRow>, StoreError> {
        let mut rows = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(CHUNK) {
            let sql = format!(
                "SELECT user_id, tenant_id, m365_object_id, user_principal_name, immutable_id, \
                 linked_at FROM m365_links WHERE user_id IN ({})",
                placeholders(chunk.len())
            );
            let mut query = sqlx::query_as::<_, LinkRow>(&sql);
            for id in chunk {
                query = query.bind(id);
            }
            rows.extend(query.fetch_all(&self.pool).await?);
        }
        Ok(rows)
    }
}
