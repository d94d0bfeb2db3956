//! The domains idbridge federated through Graph (`federated_domains`).

use super::{Store, StoreError};

/// A domain idbridge federated, with the issuer and sign-in URL it gave Microsoft.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederatedDomainRow {
    /// Lower case.
    pub domain: String,
    pub issuer_uri: String,
    pub passive_sign_in_uri: String,
    pub federated_at: i64,
}

impl Store {
    /// Every domain idbridge federated.
    pub async fn federated_domains(&self) -> Result<Vec<FederatedDomainRow>, StoreError> {
        let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
            "SELECT domain, issuer_uri, passive_sign_in_uri, federated_at FROM federated_domains \
             ORDER BY domain",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(domain, issuer_uri, passive_sign_in_uri, federated_at)| FederatedDomainRow {
                    domain,
                    issuer_uri,
                    passive_sign_in_uri,
                    federated_at,
                },
            )
            .collect())
    }

    /// Records that idbridge federated `row.domain` (replacing an older record of it).
    pub async fn record_federated_domain(
        &self,
        row: &FederatedDomainRow,
    ) -> Result<(), StoreError> {
        let domain = row.domain.to_lowercase();
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM federated_domains WHERE domain = $1")
            .bind(&domain)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO federated_domains (domain, issuer_uri, passive_sign_in_uri, federated_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(&domain)
        .bind(&row.issuer_uri)
        .bind(&row.passive_sign_in_uri)
        .bind(row.federated_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Forgets a domain made managed again.
    pub async fn forget_federated_domain(&self, domain: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM federated_domains WHERE domain = $1")
            .bind(domain.to_lowercase())
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
