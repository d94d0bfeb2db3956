//! SAML service providers registered in the console or the API (`saml_service_providers`,
//! shared by every node). Microsoft 365 and the entries of idbridge.toml are not stored.

use sqlx::Row;

use super::{events, Store, StoreError};
use crate::events::NewEvent;

/// A stored service provider. `acs_urls` and `attributes` are JSON in the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceProviderRow {
    pub entity_id: String,
    pub name: String,
    pub acs_urls: Vec<String>,
    pub slo_url: Option<String>,
    /// `username`, `email` or `immutable_id` (the table checks it).
    pub name_id: String,
    /// SAML attribute name → user attribute name, in the admin's order.
    pub attributes: Vec<(String, String)>,
    pub require_m365_binding: bool,
    pub certificate_pem: Option<String>,
    pub want_authn_requests_signed: bool,
    pub created_at: i64,
    pub updated_at: i64,
    pub updated_by: String,
}

const COLUMNS: &str = "entity_id, name, acs_urls, slo_url, name_id, attributes, \
     require_m365_binding, certificate_pem, want_authn_requests_signed, created_at, updated_at, \
     updated_by";

fn from_row(row: &sqlx::any::AnyRow) -> Result<ServiceProviderRow, StoreError> {
    let corrupt = |what: &str, e: serde_json::Error| {
        StoreError::Corrupt(format!("saml_service_providers.{what}: {e}"))
    };
    let acs_urls: String = row.try_get("acs_urls")?;
    let attributes: String = row.try_get("attributes")?;
    let attributes: Vec<(String, String)> =
        serde_json::from_str(&attributes).map_err(|e| corrupt("attributes", e))?;
    Ok(ServiceProviderRow {
        entity_id: row.try_get("entity_id")?,
        name: row.try_get("name")?,
        acs_urls: serde_json::from_str(&acs_urls).map_err(|e| corrupt("acs_urls", e))?,
        slo_url: row.try_get("slo_url")?,
        name_id: row.try_get("name_id")?,
        attributes,
        require_m365_binding: row.try_get::<i64, _>("require_m365_binding")? != 0,
        certificate_pem: row.try_get("certificate_pem")?,
        want_authn_requests_signed: row.try_get::<i64, _>("want_authn_requests_signed")? != 0,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        updated_by: row.try_get("updated_by")?,
    })
}

fn json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl Store {
    /// Every registered service provider, by entity ID.
    pub async fn service_providers(&self) -> Result<Vec<ServiceProviderRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM saml_service_providers ORDER BY entity_id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// Registers a service provider with its event; `Conflict("entity ID")` when one with
    /// this entity ID is registered already.
    pub async fn insert_service_provider(
        &self,
        sp: &ServiceProviderRow,
        event: &NewEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let exists = sqlx::query("SELECT 1 FROM saml_service_providers WHERE entity_id = $1")
            .bind(&sp.entity_id)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_some() {
            return Err(StoreError::Conflict("entity ID"));
        }
        sqlx::query(&format!(
            "INSERT INTO saml_service_providers ({COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        ))
        .bind(&sp.entity_id)
        .bind(&sp.name)
        .bind(json(&sp.acs_urls)?)
        .bind(&sp.slo_url)
        .bind(&sp.name_id)
        .bind(json(&sp.attributes)?)
        .bind(i64::from(sp.require_m365_binding))
        .bind(&sp.certificate_pem)
        .bind(i64::from(sp.want_authn_requests_signed))
        .bind(sp.created_at)
        .bind(sp.updated_at)
        .bind(&sp.updated_by)
        .execute(&mut *tx)
        .await
        .map_err(|e| match StoreError::from(e) {
            // Registered by another node between the check and the insert.
            StoreError::Conflict(_) => StoreError::Conflict("entity ID"),
            other => other,
        })?;
        events::insert(&mut *tx, event).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Replaces a registered service provider's settings (not its `created_at`) with its
    /// event; false when none has this entity ID.
    pub async fn update_service_provider(
        &self,
        sp: &ServiceProviderRow,
        event: &NewEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let changed = sqlx::query(
            "UPDATE saml_service_providers SET name = $2, acs_urls = $3, slo_url = $4, \
             name_id = $5, attributes = $6, require_m365_binding = $7, certificate_pem = $8, \
             want_authn_requests_signed = $9, updated_at = $10, updated_by = $11 \
             WHERE entity_id = $1",
        )
        .bind(&sp.entity_id)
        .bind(&sp.name)
        .bind(json(&sp.acs_urls)?)
        .bind(&sp.slo_url)
        .bind(&sp.name_id)
        .bind(json(&sp.attributes)?)
        .bind(i64::from(sp.require_m365_binding))
        .bind(&sp.certificate_pem)
        .bind(i64::from(sp.want_authn_requests_signed))
        .bind(sp.updated_at)
        .bind(&sp.updated_by)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 0 {
            return Ok(false);
        }
        events::insert(&mut *tx, event).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Removes a registered service provider with its event; false when none has this
    /// entity ID.
    pub async fn delete_service_provider(
        &self,
        entity_id: &str,
        event: &NewEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let gone = sqlx::query("DELETE FROM saml_service_providers WHERE entity_id = $1")
            .bind(entity_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if gone == 0 {
            return Ok(false);
        }
        events::insert(&mut *tx, event).await?;
        tx.commit().await?;
        Ok(true)
    }
}
