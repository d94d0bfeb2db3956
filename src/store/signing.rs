//! The signing certificates of a rollover (`signing_certificates`), shared by every node.

use super::{Store, StoreError};

/// Where a stored signing certificate stands in a rollover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateRole {
    /// Published and trusted by Microsoft as `nextSigningCertificate`; not signing yet.
    Next,
    /// Signing (a promoted next; takes precedence over the certificate files).
    Current,
    /// Replaced by a promotion, still trusted by Microsoft until retired; no key kept.
    Previous,
}

impl CertificateRole {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Next => "next",
            Self::Current => "current",
            Self::Previous => "previous",
        }
    }

    fn parse(text: &str) -> Result<Self, StoreError> {
        match text {
            "next" => Ok(Self::Next),
            "current" => Ok(Self::Current),
            "previous" => Ok(Self::Previous),
            other => Err(StoreError::Corrupt(format!(
                "unknown signing certificate role {other:?}"
            ))),
        }
    }
}

/// A stored signing certificate; `key_sealed` is the PEM key sealed with the data key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningCertificateRow {
    pub role: CertificateRole,
    pub key_sealed: Option<String>,
    pub cert_pem: String,
    pub created_at: i64,
}

impl Store {
    /// Every stored signing certificate (at most one per role).
    pub async fn signing_certificates(&self) -> Result<Vec<SigningCertificateRow>, StoreError> {
        let rows: Vec<(String, Option<String>, String, i64)> = sqlx::query_as(
            "SELECT role, key_sealed, cert_pem, created_at FROM signing_certificates ORDER BY role",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(role, key_sealed, cert_pem, created_at)| {
                Ok(SigningCertificateRow {
                    role: CertificateRole::parse(&role)?,
                    key_sealed,
                    cert_pem,
                    created_at,
                })
            })
            .collect()
    }

    /// Stores the next certificate; `Conflict` when one is already prepared.
    pub async fn insert_next_signing_certificate(
        &self,
        key_sealed: &str,
        cert_pem: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO signing_certificates (role, key_sealed, cert_pem, created_at) \
             VALUES ('next', $1, $2, $3)",
        )
        .bind(key_sealed)
        .bind(cert_pem)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Makes the next certificate the current one and the current one the previous one (its
    /// key dropped). `file_cert_pem` is the current certificate when it still comes from the
    /// certificate files (no promoted one is stored). False when there is no next one.
    pub async fn promote_next_signing_certificate(
        &self,
        file_cert_pem: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let has_next: Option<(String,)> =
            sqlx::query_as("SELECT role FROM signing_certificates WHERE role = 'next'")
                .fetch_optional(&mut *tx)
                .await?;
        if has_next.is_none() {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query("DELETE FROM signing_certificates WHERE role = 'previous'")
            .execute(&mut *tx)
            .await?;
        let moved = sqlx::query(
            "UPDATE signing_certificates SET role = 'previous', key_sealed = NULL, \
             created_at = $1 WHERE role = 'current'",
        )
        .bind(now_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if moved == 0 {
            sqlx::query(
                "INSERT INTO signing_certificates (role, key_sealed, cert_pem, created_at) \
                 VALUES ('previous', NULL, $1, $2)",
            )
            .bind(file_cert_pem)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "UPDATE signing_certificates SET role = 'current', created_at = $1 WHERE role = 'next'",
        )
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Forgets the certificate of `role` (the previous one once retired, or a next one given
    /// up); whether there was one.
    pub async fn delete_signing_certificate(
        &self,
        role: CertificateRole,
    ) -> Result<bool, StoreError> {
        let gone = sqlx::query("DELETE FROM signing_certificates WHERE role = $1")
            .bind(role.as_str())
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(gone > 0)
    }
}
