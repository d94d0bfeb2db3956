//! The Microsoft 365 app registration entered in the console or the API
//! (`m365_app_registration`, one row shared by every node).

use super::{events, Store, StoreError};
use crate::events::NewEvent;

/// The stored app registration; the secret and the key are sealed with the data key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppRegistrationRow {
    pub tenant: Option<String>,
    pub client_id: Option<String>,
    pub client_secret_sealed: Option<String>,
    pub certificate_pem: Option<String>,
    pub key_sealed: Option<String>,
    pub updated_at: i64,
    pub updated_by: String,
}

type Columns = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
    String,
);

impl Store {
    /// The app registration entered in the console, if any was.
    pub async fn app_registration(&self) -> Result<Option<AppRegistrationRow>, StoreError> {
        let row: Option<Columns> = sqlx::query_as(
            "SELECT tenant, client_id, client_secret_sealed, certificate_pem, key_sealed, \
             updated_at, updated_by FROM m365_app_registration WHERE id = 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(
            |(tenant, client_id, client_secret_sealed, certificate_pem, key_sealed, at, by)| {
                AppRegistrationRow {
                    tenant,
                    client_id,
                    client_secret_sealed,
                    certificate_pem,
                    key_sealed,
                    updated_at: at,
                    updated_by: by,
                }
            },
        ))
    }

    /// Stores the app registration and its event in one transaction.
    pub async fn save_app_registration(
        &self,
        row: &AppRegistrationRow,
        event: &NewEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO m365_app_registration (id, tenant, client_id, client_secret_sealed, \
             certificate_pem, key_sealed, updated_at, updated_by) \
             VALUES (1, $1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (id) DO UPDATE SET tenant = $1, client_id = $2, \
             client_secret_sealed = $3, certificate_pem = $4, key_sealed = $5, \
             updated_at = $6, updated_by = $7",
        )
        .bind(&row.tenant)
        .bind(&row.client_id)
        .bind(&row.client_secret_sealed)
        .bind(&row.certificate_pem)
        .bind(&row.key_sealed)
        .bind(row.updated_at)
        .bind(&row.updated_by)
        .execute(&mut *tx)
        .await?;
        events::insert(&mut *tx, event).await?;
        tx.commit().await?;
        Ok(())
    }
}
