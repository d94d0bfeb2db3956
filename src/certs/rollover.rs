//! Rolling the signing certificate over without downtime.
//!
//! Entra ID trusts two certificates per federated domain, `signingCertificate` and
//! `nextSigningCertificate` (Graph `internalDomainFederation`), and does not read idbridge's
//! metadata to learn a new one, so idbridge tells it through Graph at each step:
//!
//! 1. **prepare**: a new key and certificate are made and stored (sealed) in the database, so
//!    every node publishes them; Microsoft gets them as `nextSigningCertificate`.
//! 2. **promote**: Microsoft gets the new one as `signingCertificate` and the old one as
//!    `nextSigningCertificate`, then every node signs with the new one (each picks it up from
//!    the database within [`RELOAD_EVERY`]); Responses signed by either are accepted meanwhile.
//! 3. **retire**: Microsoft forgets the old one, and idbridge stops publishing it.
//!
//! Microsoft is told before the database changes: a Graph failure leaves both as they were.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde_json::json;

use crate::config::Config;
use crate::events::{kind, Actor, NewEvent};
use crate::m365::federation::{FederationSettings, KnownFederations};
use crate::m365::{M365Error, M365};
use crate::saml::{CertificateInfo, SamlError, SigningCredential};
use crate::secrets::{SecretBox, SecretError};
use crate::store::{CertificateRole, Store, StoreError};

/// How often every node reads the stored certificates, to sign with a promoted one.
pub const RELOAD_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// The authenticated context of a sealed signing key (a sealed value cannot move columns).
const KEY_CONTEXT: &str = "signing_certificates.key";

/// Why a rollover step was not taken; nothing changed, here or at Microsoft.
#[derive(Debug, thiserror::Error)]
pub enum RolloverError {
    #[error("a next signing certificate is already prepared ({0}); promote it (`idbridge cert promote`) or discard it (`idbridge cert discard`)")]
    AlreadyPrepared(String),
    #[error("the previous signing certificate ({0}) is still trusted; retire it first (`idbridge cert retire`)")]
    PreviousNotRetired(String),
    #[error("no next signing certificate is prepared; `idbridge cert next` prepares one")]
    NoNext,
    #[error("there is no previous signing certificate to retire")]
    NoPrevious,
    /// Retiring too soon could refuse Responses signed with it still on their way.
    #[error("the previous certificate signed Responses until {promoted_at}, which may still be on their way to Microsoft (or signed by a node that has not switched yet); retire it after {safe_after}, or confirm now")]
    TooSoon {
        promoted_at: DateTime<Utc>,
        safe_after: DateTime<Utc>,
    },
    #[error("Microsoft 365 was not changed, and neither was idbridge: {0}")]
    Microsoft(M365Error),
    #[error("the new signing certificate could not be made: {0}")]
    Certificate(#[from] SamlError),
    #[error("a stored signing key cannot be opened ({0}); every node must share the same data key (m365.token_key_file)")]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where a rollover stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum RolloverStage {
    /// One certificate; no rollover under way.
    Steady,
    /// A next certificate is published and trusted, not signing yet: promote it.
    NextPrepared,
    /// The new certificate signs; the previous one is still trusted: retire it.
    Promoted,
}

/// The certificates idbridge signs with and publishes.
#[derive(Debug, Clone)]
pub struct SigningSet {
    /// What signs Responses and LogoutResponses.
    pub current: Arc<SigningCredential>,
    /// `current` came from a rollover (the database), not from the certificate files.
    pub promoted: bool,
    /// Prepared and published, not signing yet.
    pub next: Option<Arc<SigningCredential>>,
    /// Replaced by the last promotion, still published and trusted until retired.
    pub previous: Option<CertificateInfo>,
    /// When the last step was taken (the promotion, while `previous` is set).
    pub changed_at: Option<DateTime<Utc>>,
}

impl SigningSet {
    /// Only the certificate from the files.
    pub fn single(current: Arc<SigningCredential>) -> Self {
        Self {
            current,
            promoted: false,
            next: None,
            previous: None,
            changed_at: None,
        }
    }

    /// The stored certificates over `file` (the certificate files' credential).
    pub async fn load(
        store: &Store,
        key: &SecretBox,
        file: Arc<SigningCredential>,
    ) -> Result<Self, RolloverError> {
        let mut set = Self::single(file);
        for row in store.signing_certificates().await? {
            let at = DateTime::from_timestamp_millis(row.created_at);
            match (row.role, row.key_sealed) {
                (CertificateRole::Previous, _) => {
                    set.previous = Some(CertificateInfo::from_pem(row.cert_pem.as_bytes())?);
                    set.changed_at = at;
                }
                (role, Some(sealed)) => {
                    let key_pem = key.open(&sealed, KEY_CONTEXT)?;
                    let credential = Arc::new(SigningCredential::from_pem(
                        key_pem.expose_secret().as_bytes(),
                        row.cert_pem.as_bytes(),
                    )?);
                    if role == CertificateRole::Current {
                        set.current = credential;
                        set.promoted = true;
                    } else {
                        set.next = Some(credential);
                        set.changed_at = set.changed_at.or(at);
                    }
                }
                (_, None) => {
                    return Err(StoreError::Corrupt(format!(
                        "the {} signing certificate has no key",
                        row.role.as_str()
                    ))
                    .into())
                }
            }
        }
        Ok(set)
    }

    /// Where the rollover stands.
    pub fn stage(&self) -> RolloverStage {
        match (&self.next, &self.previous) {
            (Some(_), _) => RolloverStage::NextPrepared,
            (None, Some(_)) => RolloverStage::Promoted,
            (None, None) => RolloverStage::Steady,
        }
    }

    /// The certificates (base64 DER) to publish in the metadata: the current one first.
    pub fn published(&self) -> Vec<&str> {
        let mut all = vec![self.current.certificate_der_base64()];
        all.extend(self.next.as_ref().map(|n| n.certificate_der_base64()));
        all.extend(self.previous.as_ref().map(|p| p.der_base64.as_str()));
        all
    }

    /// The certificate Microsoft must hold as `nextSigningCertificate` now, if any.
    pub fn microsoft_next(&self) -> Option<&str> {
        match (&self.next, &self.previous) {
            (Some(next), _) => Some(next.certificate_der_base64()),
            (None, Some(previous)) => Some(previous.der_base64.as_str()),
            (None, None) => None,
        }
    }

    /// Whether `other` holds the same certificates (a reload found nothing new).
    pub fn same_as(&self, other: &Self) -> bool {
        self.published() == other.published()
    }

    /// idbridge's federation settings for `domain` as it is federated, with these
    /// certificates.
    pub fn federation_settings(
        &self,
        config: &Config,
        domain: &str,
        known: &KnownFederations,
    ) -> FederationSettings {
        FederationSettings::for_domain(
            config,
            self.current.certificate_der_base64(),
            self.microsoft_next(),
            domain,
            known,
        )
    }

    /// idbridge's settings for federating `domain` now, with these certificates.
    pub fn new_federation_settings(&self, config: &Config, domain: &str) -> FederationSettings {
        FederationSettings::for_new_domain(
            config,
            self.current.certificate_der_base64(),
            self.microsoft_next(),
            domain,
        )
    }

    /// The three certificates as the admin sees them.
    pub fn overview(&self) -> SigningOverview {
        SigningOverview {
            stage: self.stage(),
            current: self.current.info(),
            from_files: !self.promoted,
            next: self.next.as_ref().map(|n| n.info()),
            previous: self.previous.clone(),
            changed_at: self.changed_at,
        }
    }
}

/// The signing certificates and where their rollover stands (API, console, `cert show`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SigningOverview {
    pub stage: RolloverStage,
    pub current: CertificateInfo,
    /// The current certificate is the one in `certs.cert_file` (no rollover promoted one).
    pub from_files: bool,
    pub next: Option<CertificateInfo>,
    pub previous: Option<CertificateInfo>,
    /// When the last step was taken.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub changed_at: Option<DateTime<Utc>>,
}

/// What a step did at Microsoft.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MicrosoftUpdate {
    /// These domains federated to idbridge now hold the step's certificates (none: no domain
    /// is federated to idbridge).
    Domains(Vec<String>),
    /// Microsoft 365 is not connected: this PowerShell gives a domain federated by hand the
    /// step's certificates (`<domain>` to be filled in).
    ByHand(String),
}

/// A step taken: the certificates now, and what Microsoft was told.
#[derive(Debug, Clone)]
pub struct StepTaken {
    pub set: SigningSet,
    pub microsoft: MicrosoftUpdate,
}

/// The rollover's steps, shared by the CLI, the API and the console.
pub struct Rollover<'a> {
    pub config: &'a Config,
    pub store: &'a Store,
    pub key: &'a SecretBox,
    /// The credential of the certificate files.
    pub file: Arc<SigningCredential>,
    pub m365: &'a M365,
}

impl Rollover<'_> {
    /// The certificates as stored now.
    pub async fn current(&self) -> Result<SigningSet, RolloverError> {
        SigningSet::load(self.store, self.key, self.file.clone()).await
    }

    /// Makes the next key and certificate, publishes them and has Microsoft trust them.
    pub async fn prepare(
        &self,
        actor: &Actor,
        now: DateTime<Utc>,
    ) -> Result<StepTaken, RolloverError> {
        let set = self.current().await?;
        refuse_if_under_way(&set)?;
        let (next, key_pem, cert_pem) = SigningCredential::generate(
            self.config.certs.key_bits,
            &self.config.certificate_common_name(),
            self.config.certs.validity_days,
        )?;
        let sealed = self.key.seal(
            &SecretString::from(String::from_utf8_lossy(&key_pem).into_owned()),
            KEY_CONTEXT,
        )?;
        // Stored first, so of two admins preparing at once one is refused before Microsoft
        // hears of the other's certificate; taken back if Microsoft refuses.
        match self
            .store
            .insert_next_signing_certificate(
                &sealed,
                &String::from_utf8_lossy(&cert_pem),
                now.timestamp_millis(),
            )
            .await
        {
            Err(StoreError::Conflict(_)) => {
                let set = self.current().await?;
                refuse_if_under_way(&set)?;
                return Err(RolloverError::NoNext);
            }
            other => other?,
        }
        let mut planned = set;
        planned.next = Some(Arc::new(next));
        let microsoft = match self.tell_microsoft(&planned).await {
            Ok(update) => update,
            Err(e) => {
                self.store
                    .delete_signing_certificate(CertificateRole::Next)
                    .await?;
                return Err(e);
            }
        };
        let info = planned.next.as_ref().map(|n| n.info());
        self.finish(kind::SIGNING_CERT_PREPARED, actor, info, microsoft, now)
            .await
    }

    /// Signs with the next certificate from now on (every node within [`RELOAD_EVERY`]); the
    /// old one stays trusted until retired.
    pub async fn promote(
        &self,
        actor: &Actor,
        now: DateTime<Utc>,
    ) -> Result<StepTaken, RolloverError> {
        let set = self.current().await?;
        let Some(next) = set.next.clone() else {
            return Err(RolloverError::NoNext);
        };
        let planned = SigningSet {
            current: next.clone(),
            promoted: true,
            next: None,
            previous: Some(set.current.info()),
            changed_at: Some(now),
        };
        let microsoft = self.tell_microsoft(&planned).await?;
        let file_pem = self.file.certificate_pem()?;
        if !self
            .store
            .promote_next_signing_certificate(
                &String::from_utf8_lossy(&file_pem),
                now.timestamp_millis(),
            )
            .await?
        {
            return Err(RolloverError::NoNext);
        }
        self.finish(
            kind::SIGNING_CERT_PROMOTED,
            actor,
            Some(next.info()),
            microsoft,
            now,
        )
        .await
    }

    /// Stops trusting and publishing the previous certificate. Refused until Responses it
    /// signed can no longer be on their way, unless `confirmed`.
    pub async fn retire(
        &self,
        actor: &Actor,
        confirmed: bool,
        now: DateTime<Utc>,
    ) -> Result<StepTaken, RolloverError> {
        let set = self.current().await?;
        let Some(previous) = set.previous.clone() else {
            return Err(RolloverError::NoPrevious);
        };
        if let Some(promoted_at) = set.changed_at {
            let safe_after = promoted_at + self.retire_after();
            if now < safe_after && !confirmed {
                return Err(RolloverError::TooSoon {
                    promoted_at,
                    safe_after,
                });
            }
        }
        let mut planned = set;
        planned.previous = None;
        let microsoft = self.tell_microsoft(&planned).await?;
        self.store
            .delete_signing_certificate(CertificateRole::Previous)
            .await?;
        self.finish(
            kind::SIGNING_CERT_RETIRED,
            actor,
            Some(previous),
            microsoft,
            now,
        )
        .await
    }

    /// Gives up a prepared next certificate that never signed (Microsoft forgets it too).
    pub async fn discard(
        &self,
        actor: &Actor,
        now: DateTime<Utc>,
    ) -> Result<StepTaken, RolloverError> {
        let set = self.current().await?;
        let Some(next) = set.next.clone() else {
            return Err(RolloverError::NoNext);
        };
        let mut planned = set;
        planned.next = None;
        let microsoft = self.tell_microsoft(&planned).await?;
        self.store
            .delete_signing_certificate(CertificateRole::Next)
            .await?;
        self.finish(
            kind::SIGNING_CERT_DISCARDED,
            actor,
            Some(next.info()),
            microsoft,
            now,
        )
        .await
    }

    /// How long after a promotion the previous certificate may still be needed: a Response's
    /// lifetime and skew, plus a reload by every node.
    fn retire_after(&self) -> Duration {
        let saml = &self.config.saml;
        Duration::seconds(
            i64::from(saml.assertion_lifetime_seconds) + i64::from(saml.clock_skew_seconds),
        ) + Duration::from_std(RELOAD_EVERY * 2).unwrap_or(Duration::seconds(20))
    }

    /// Gives every domain federated to idbridge the certificates of `planned`.
    async fn tell_microsoft(&self, planned: &SigningSet) -> Result<MicrosoftUpdate, RolloverError> {
        let known = KnownFederations::load(self.store).await?;
        let settings = |domain: &str| planned.federation_settings(self.config, domain, &known);
        match self.m365.set_federation_certificates(settings).await {
            Ok(domains) => Ok(MicrosoftUpdate::Domains(domains)),
            Err(M365Error::NotConfigured(_) | M365Error::NotConnected) => Ok(
                MicrosoftUpdate::ByHand(settings("<domain>").certificates_powershell("<domain>")),
            ),
            Err(e) => Err(RolloverError::Microsoft(e)),
        }
    }

    /// Records the step's event and returns the certificates as stored now.
    async fn finish(
        &self,
        event_kind: &'static str,
        actor: &Actor,
        certificate: Option<CertificateInfo>,
        microsoft: MicrosoftUpdate,
        now: DateTime<Utc>,
    ) -> Result<StepTaken, RolloverError> {
        self.record(event_kind, actor, certificate.as_ref(), &microsoft, now)
            .await?;
        let set = self.current().await?;
        Ok(StepTaken { set, microsoft })
    }

    async fn record(
        &self,
        event_kind: &'static str,
        actor: &Actor,
        certificate: Option<&CertificateInfo>,
        microsoft: &MicrosoftUpdate,
        now: DateTime<Utc>,
    ) -> Result<(), RolloverError> {
        let domains = match microsoft {
            MicrosoftUpdate::Domains(d) => json!(d),
            MicrosoftUpdate::ByHand(_) => json!(null),
        };
        let event = NewEvent::new(
            now,
            actor,
            event_kind,
            certificate.map(|c| c.subject.as_str()),
        )
        .details(json!({
            "fingerprintSha256": certificate.map(|c| c.fingerprint_sha256.as_str()),
            "notAfter": certificate.map(|c| c.not_after.to_rfc3339()),
            "federatedDomainsUpdated": domains,
        }));
        self.store.record_event(&event).await?;
        Ok(())
    }
}

fn refuse_if_under_way(set: &SigningSet) -> Result<(), RolloverError> {
    if let Some(next) = &set.next {
        return Err(RolloverError::AlreadyPrepared(next.fingerprint_sha256()));
    }
    if let Some(previous) = &set.previous {
        return Err(RolloverError::PreviousNotRetired(
            previous.fingerprint_sha256.clone(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credential(name: &str) -> Arc<SigningCredential> {
        Arc::new(SigningCredential::generate(2048, name, 30).unwrap().0)
    }

    #[test]
    fn each_stage_publishes_and_has_microsoft_trust_the_right_certificates() {
        let old = credential("old");
        let new = credential("new");
        let mut set = SigningSet::single(old.clone());
        assert_eq!(set.stage(), RolloverStage::Steady);
        assert_eq!(set.published(), [old.certificate_der_base64()]);
        assert_eq!(set.microsoft_next(), None);

        set.next = Some(new.clone());
        assert_eq!(set.stage(), RolloverStage::NextPrepared);
        assert_eq!(
            set.published(),
            [old.certificate_der_base64(), new.certificate_der_base64()]
        );
        assert_eq!(set.microsoft_next(), Some(new.certificate_der_base64()));
        let config = Config::from_toml("base_url = \"https://idp.example.com\"").unwrap();
        let settings =
            set.federation_settings(&config, "contoso.com", &KnownFederations::default());
        assert_eq!(settings.signing_certificate, old.certificate_der_base64());

        let promoted = SigningSet {
            current: new.clone(),
            promoted: true,
            next: None,
            previous: Some(old.info()),
            changed_at: None,
        };
        assert_eq!(promoted.stage(), RolloverStage::Promoted);
        assert_eq!(
            promoted.published(),
            [new.certificate_der_base64(), old.certificate_der_base64()]
        );
        assert_eq!(
            promoted.microsoft_next(),
            Some(old.certificate_der_base64())
        );
        assert!(!promoted.same_as(&set));
        assert!(refuse_if_under_way(&promoted).is_err());
        assert!(refuse_if_under_way(&SigningSet::single(new)).is_ok());
    }
}
