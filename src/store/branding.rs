//! The branding of the employee pages (`branding`, one row shared by every node).

use super::{events, Store, StoreError};
use crate::events::NewEvent;

/// The stored branding; the logo as base64.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrandingRow {
    pub organisation_name: String,
    /// `#rrggbb`.
    pub accent_colour: String,
    /// `image/png` or `image/svg+xml`, with `logo_base64`.
    pub logo_type: Option<String>,
    pub logo_base64: Option<String>,
    pub updated_at: i64,
    pub updated_by: String,
}

type Columns = (String, String, Option<String>, Option<String>, i64, String);

impl Store {
    /// The branding entered in the console or the API, if any was.
    pub async fn branding(&self) -> Result<Option<BrandingRow>, StoreError> {
        let row: Option<Columns> = sqlx::query_as(
            "SELECT organisation_name, accent_colour, logo_type, logo_base64, updated_at, \
             updated_by FROM branding WHERE id = 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(
            |(organisation_name, accent_colour, logo_type, logo_base64, updated_at, updated_by)| {
                BrandingRow {
                    organisation_name,
                    accent_colour,
                    logo_type,
                    logo_base64,
                    updated_at,
                    updated_by,
                }
            },
        ))
    }

    /// Stores the branding and its event in one transaction.
    pub async fn save_branding(
        &self,
        row: &BrandingRow,
        event: &NewEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO branding (id, organisation_name, accent_colour, logo_type, logo_base64, \
             updated_at, updated_by) VALUES (1, $1, $2, $3, $4, $5, $6) \
             ON CONFLICT (id) DO UPDATE SET organisation_name = $1, accent_colour = $2, \
             logo_type = $3, logo_base64 = $4, updated_at = $5, updated_by = $6",
        )
        .bind(&row.organisation_name)
        .bind(&row.accent_colour)
        .bind(&row.logo_type)
        .bind(&row.logo_base64)
        .bind(row.updated_at)
        .bind(&row.updated_by)
        .execute(&mut *tx)
        .await?;
        events::insert(&mut *tx, event).await?;
        tx.commit().await?;
        Ok(())
    }
}
