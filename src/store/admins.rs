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
        Ok(sqlx::query_as::<_, AdminRow>(
            "SELECT id, username, password_hash, role, must_change_password, created_at \
             FROM admins WHERE username = $1",
        )
        .bind(username)
        .fetch_optional(&self.pool)
        .await?)
    }
}
