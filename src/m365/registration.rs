//! The app registration idbridge authenticates to Microsoft with (tenant, client ID, and a
//! secret or certificate credential). Each value comes from idbridge.toml or the environment
//! when set there, else from what an admin entered in the console or the API (stored, the
//! secret and the private key sealed with the data key). A change made in the console takes
//! effect at once on this node and within seconds on the others, without a restart.

use chrono::{DateTime, Utc};
use openssl::pkey::{PKey, Private};
use openssl::x509::X509;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use super::connection::{read_private_file, setting_error, M365Error, M365SetupError};
use crate::config::Config;
use crate::secrets::{SecretBox, SecretError};
use crate::store::{AppRegistrationRow, StoreError};

/// Sealing contexts: a sealed value cannot be moved to another column.
const SECRET_CONTEXT: &str = "m365_app_registration.client_secret";
const KEY_CONTEXT: &str = "m365_app_registration.key";
/// Validity of a certificate credential generated in the console. Microsoft recommends
/// credentials that expire; two years keeps renewals rare.
const GENERATED_CERTIFICATE_DAYS: u32 = 730;
/// Tenants that name no single tenant: consent then decides which tenant is connected.
pub const MULTI_TENANT: [&str; 3] = ["organizations", "common", "consumers"];

/// How idbridge authenticates to the Microsoft identity platform.
#[derive(Clone)]
pub(crate) enum ClientCredential {
    Secret(SecretString),
    /// A certificate uploaded to the app registration: idbridge signs a JWT client assertion.
    Certificate {
        cert_der: Vec<u8>,
        key: PKey<Private>,
    },
}

/// The kind of credential, as admins see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CredentialKind {
    Secret,
    Certificate,
}

impl CredentialKind {
    /// The kind's name in the API and events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Secret => "secret",
            Self::Certificate => "certificate",
        }
    }
}

/// Where one value of the app registration comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueSource {
    /// Not set anywhere (the built-in default, if any).
    Default,
    /// idbridge.toml or the environment (the description says which); read-only in the
    /// console.
    File(String),
    /// Entered in the console or the API.
    Console { at_ms: i64, by: String },
}

impl ValueSource {
    /// Whether the console may change the value.
    pub fn editable(&self) -> bool {
        !matches!(self, Self::File(_))
    }
}

/// A certificate credential's public part, for uploading to the app registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateSummary {
    /// SHA-1 thumbprint in upper-case hex: what the Entra admin center shows for it.
    pub thumbprint: String,
    pub not_after: String,
    pub pem: String,
}

/// The app registration in effect, with where each value comes from.
#[derive(Clone)]
pub struct AppRegistration {
    pub tenant: String,
    pub tenant_source: ValueSource,
    pub client_id: Option<String>,
    pub client_id_source: ValueSource,
    pub(crate) credential: Option<ClientCredential>,
    pub credential_source: ValueSource,
    /// The certificate credential's public part, when it is one.
    pub certificate: Option<CertificateSummary>,
    /// When the stored part was last changed (to notice another node's change).
    pub(crate) stored_at: Option<i64>,
}

impl std::fmt::Debug for AppRegistration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppRegistration")
            .field("tenant", &self.tenant)
            .field("client_id", &self.client_id)
            .field("credential", &self.credential_kind())
            .finish_non_exhaustive()
    }
}

impl AppRegistration {
    /// The credential's kind, if there is one.
    pub fn credential_kind(&self) -> Option<CredentialKind> {
        self.credential.as_ref().map(|c| match c {
            ClientCredential::Secret(_) => CredentialKind::Secret,
            ClientCredential::Certificate { .. } => CredentialKind::Certificate,
        })
    }

    /// What is missing before idbridge can connect, naming where to set it.
    pub fn problem(&self) -> Option<M365Error> {
        if self.client_id.as_deref().is_none_or(str::is_empty) {
            return Some(M365Error::NotConfigured("the application (client) ID"));
        }
        self.credential
            .is_none()
            .then_some(M365Error::NotConfigured(
                "a client credential (a client secret or a certificate)",
            ))
    }

    /// Whether the tenant is a single tenant, so the app's own credentials can connect
    /// (client credentials need one tenant; consent works with `organizations` too).
    pub fn names_one_tenant(&self) -> bool {
        !MULTI_TENANT.contains(&self.tenant.as_str())
    }
}

/// The app registration's values from idbridge.toml and the environment, read at start-up.
#[derive(Clone, Default)]
pub(crate) struct FileRegistration {
    tenant: Option<(String, String)>,
    client_id: Option<(String, String)>,
    credential: Option<(ClientCredential, String)>,
}

impl FileRegistration {
    /// Reads the `[m365]` credential settings (files must exist; key and secret files must be
    /// private to idbridge).
    pub(crate) fn from_config(config: &Config) -> Result<Self, M365SetupError> {
        let m = &config.m365;
        let sources = &config.sources;
        let source = |setting: &str| {
            sources
                .of(setting)
                .unwrap_or("the configuration")
                .to_string()
        };
        let credential = if let (Some(cert), Some(key)) =
            (&m.client_certificate_file, &m.client_key_file)
        {
            let cert_pem = std::fs::read(cert)
                .map_err(|e| setting_error("m365.client_certificate_file", e, "check the path"))?;
            let cert = X509::from_pem(&cert_pem)
                .and_then(|c| c.to_der())
                .map_err(|e| {
                    setting_error("m365.client_certificate_file", e, "give a PEM certificate")
                })?;
            let key_pem = read_private_file("m365.client_key_file", key)?;
            let key = PKey::private_key_from_pem(&key_pem).map_err(|e| {
                setting_error("m365.client_key_file", e, "give a PEM RSA private key")
            })?;
            Some((
                ClientCredential::Certificate {
                    cert_der: cert,
                    key,
                },
                source("m365.client_certificate_file"),
            ))
        } else if let Some(path) = &m.client_secret_file {
            let bytes = read_private_file("m365.client_secret_file", path)?;
            let text = String::from_utf8_lossy(&bytes).trim().to_string();
            Some((
                ClientCredential::Secret(SecretString::from(text)),
                source("m365.client_secret_file"),
            ))
        } else {
            m.client_secret.as_ref().map(|s| {
                (
                    ClientCredential::Secret(SecretString::from(s.clone())),
                    source("m365.client_secret"),
                )
            })
        };
        let tenant = sources
            .of("m365.tenant")
            .map(|src| (m.tenant.clone(), src.to_string()));
        let client_id = m
            .client_id
            .clone()
            .filter(|id| !id.trim().is_empty())
            .map(|id| (id, source("m365.client_id")));
        Ok(Self {
            tenant,
            client_id,
            credential,
        })
    }

    /// The registration in effect: each value from the file when set there, else the stored
    /// one, else the default.
    pub(crate) fn effective(
        &self,
        stored: Option<&AppRegistrationRow>,
        key: &SecretBox,
        default_tenant: &str,
    ) -> Result<AppRegistration, RegistrationError> {
        let console = |row: &AppRegistrationRow| ValueSource::Console {
            at_ms: row.updated_at,
            by: row.updated_by.clone(),
        };
        let (tenant, tenant_source) = match (&self.tenant, stored) {
            (Some((t, src)), _) => (t.clone(), ValueSource::File(src.clone())),
            (None, Some(row)) if row.tenant.is_some() => {
                (row.tenant.clone().unwrap_or_default(), console(row))
            }
            _ => (default_tenant.to_string(), ValueSource::Default),
        };
        let (client_id, client_id_source) = match (&self.client_id, stored) {
            (Some((id, src)), _) => (Some(id.clone()), ValueSource::File(src.clone())),
            (None, Some(row)) if row.client_id.is_some() => (row.client_id.clone(), console(row)),
            _ => (None, ValueSource::Default),
        };
        let (credential, credential_source, certificate) = match (&self.credential, stored) {
            (Some((c, src)), _) => {
                let summary = match c {
                    ClientCredential::Certificate { cert_der, .. } => X509::from_der(cert_der)
                        .ok()
                        .and_then(|cert| summarise(&cert).ok()),
                    ClientCredential::Secret(_) => None,
                };
                (Some(c.clone()), ValueSource::File(src.clone()), summary)
            }
            (None, Some(row)) => match stored_credential(row, key)? {
                Some((c, summary)) => (Some(c), console(row), summary),
                None => (None, ValueSource::Default, None),
            },
            (None, None) => (None, ValueSource::Default, None),
        };
        Ok(AppRegistration {
            tenant,
            tenant_source,
            client_id,
            client_id_source,
            credential,
            credential_source,
            certificate,
            stored_at: stored.map(|r| r.updated_at),
        })
    }

    /// The setting a change to `field` would be overruled by, with where it is set.
    fn owner(&self, field: Field) -> Option<(&'static str, &str)> {
        match field {
            Field::Tenant => self
                .tenant
                .as_ref()
                .map(|(_, s)| ("m365.tenant", s.as_str())),
            Field::ClientId => self
                .client_id
                .as_ref()
                .map(|(_, s)| ("m365.client_id", s.as_str())),
            Field::Credential => self
                .credential
                .as_ref()
                .map(|(_, s)| ("the client credential (m365.client_secret…)", s.as_str())),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Field {
    Tenant,
    ClientId,
    Credential,
}

/// A change an admin asks for; `None` keeps a value as it is.
#[derive(Default)]
pub struct RegistrationChange {
    pub tenant: Option<String>,
    pub client_id: Option<String>,
    pub credential: Option<CredentialChange>,
}

/// A new client credential.
pub enum CredentialChange {
    /// A client secret created in the app registration (Certificates & secrets).
    Secret(SecretString),
    /// idbridge makes a key and a self-signed certificate; the admin uploads the certificate
    /// to the app registration (the key never leaves idbridge).
    GenerateCertificate,
    /// A certificate and its private key made elsewhere.
    UploadCertificate {
        certificate_pem: String,
        private_key_pem: SecretString,
    },
    /// No credential any more (idbridge can then no longer connect).
    Remove,
}

/// Why a change to the app registration was refused; nothing is stored then.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    #[error("{setting} is set in {place}, which takes precedence over the console. Fix: change it there, or remove it there to manage it here")]
    SetInFile {
        setting: &'static str,
        place: String,
    },
    #[error("{field}: {problem}. Fix: {fix}")]
    Invalid {
        field: &'static str,
        problem: String,
        fix: &'static str,
    },
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn invalid(field: &'static str, problem: impl ToString, fix: &'static str) -> RegistrationError {
    RegistrationError::Invalid {
        field,
        problem: problem.to_string(),
        fix,
    }
}

impl FileRegistration {
    /// The stored row after `change`, checked; `what` lists what changed (for the event).
    pub(crate) fn apply(
        &self,
        stored: Option<&AppRegistrationRow>,
        change: RegistrationChange,
        key: &SecretBox,
        common_name: &str,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<(AppRegistrationRow, Vec<&'static str>), RegistrationError> {
        let mut row = stored.cloned().unwrap_or_default();
        let mut changed = Vec::new();
        let refuse_if_owned = |field: Field| match self.owner(field) {
            Some((setting, place)) => Err(RegistrationError::SetInFile {
                setting,
                place: place.to_string(),
            }),
            None => Ok(()),
        };
        if let Some(tenant) = change.tenant {
            refuse_if_owned(Field::Tenant)?;
            row.tenant = Some(check_tenant(&tenant)?);
            changed.push("tenant");
        }
        if let Some(id) = change.client_id {
            refuse_if_owned(Field::ClientId)?;
            let id = id.trim();
            if uuid::Uuid::try_parse(id).is_err() {
                return Err(invalid(
                    "application (client) ID",
                    format!("{id:?} is not a GUID"),
                    "copy the Application (client) ID from the app registration's Overview in the Entra admin center, e.g. 5f8c3b2a-6d1e-4f7a-9b0c-1e2d3f4a5b6c",
                ));
            }
            row.client_id = Some(id.to_ascii_lowercase());
            changed.push("clientId");
        }
        if let Some(credential) = change.credential {
            refuse_if_owned(Field::Credential)?;
            row.client_secret_sealed = None;
            row.certificate_pem = None;
            row.key_sealed = None;
            match credential {
                CredentialChange::Secret(secret) => {
                    let text = secret.expose_secret().trim();
                    if text.is_empty() || text.len() > 1024 || text.chars().any(char::is_control) {
                        return Err(invalid(
                            "client secret",
                            "it is empty, too long or has control characters",
                            "paste the secret's Value (not its Secret ID) from Certificates & secrets",
                        ));
                    }
                    row.client_secret_sealed =
                        Some(key.seal(&SecretString::from(text.to_string()), SECRET_CONTEXT)?);
                    changed.push("clientSecret");
                }
                CredentialChange::GenerateCertificate => {
                    let (_, key_pem, cert_pem) = crate::saml::SigningCredential::generate(
                        2048,
                        common_name,
                        GENERATED_CERTIFICATE_DAYS,
                    )
                    .map_err(|e| invalid("certificate", e, "try again"))?;
                    let key_text = String::from_utf8(key_pem)
                        .map_err(|e| invalid("certificate", e, "try again"))?;
                    row.key_sealed = Some(key.seal(&SecretString::from(key_text), KEY_CONTEXT)?);
                    row.certificate_pem = Some(
                        String::from_utf8(cert_pem)
                            .map_err(|e| invalid("certificate", e, "try again"))?,
                    );
                    changed.push("certificate");
                }
                CredentialChange::UploadCertificate {
                    certificate_pem,
                    private_key_pem,
                } => {
                    check_uploaded(&certificate_pem, &private_key_pem, now)?;
                    row.key_sealed = Some(key.seal(&private_key_pem, KEY_CONTEXT)?);
                    row.certificate_pem = Some(certificate_pem.trim().to_string() + "\n");
                    changed.push("certificate");
                }
                CredentialChange::Remove => changed.push("credentialRemoved"),
            }
        }
        row.updated_at = now.timestamp_millis();
        row.updated_by = actor.to_string();
        Ok((row, changed))
    }
}

/// A tenant: its ID (a GUID), a verified domain, or `organizations`/`common` for a
/// multi-tenant app registration.
fn check_tenant(text: &str) -> Result<String, RegistrationError> {
    let tenant = text.trim().to_ascii_lowercase();
    let domain_like = tenant.contains('.')
        && !tenant.starts_with('.')
        && !tenant.ends_with('.')
        && tenant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
    if tenant == "organizations"
        || tenant == "common"
        || uuid::Uuid::try_parse(&tenant).is_ok()
        || domain_like
    {
        return Ok(tenant);
    }
    Err(invalid(
        "tenant",
        format!("{text:?} is neither a tenant ID, a domain nor \"organizations\""),
        "give the Directory (tenant) ID from the app registration's Overview, a verified domain such as contoso.onmicrosoft.com, or organizations for a multi-tenant app registration",
    ))
}

/// An uploaded certificate credential: a PEM certificate, still valid, and the RSA key of at
/// least 2048 bits that belongs to it (Microsoft signs client assertions with RS256 only).
fn check_uploaded(
    cert_pem: &str,
    key_pem: &SecretString,
    now: DateTime<Utc>,
) -> Result<(), RegistrationError> {
    let cert = X509::from_pem(cert_pem.as_bytes()).map_err(|_| {
        invalid(
            "certificate",
            "not a PEM certificate",
            "give the certificate as PEM (-----BEGIN CERTIFICATE-----)",
        )
    })?;
    let key = PKey::private_key_from_pem(key_pem.expose_secret().as_bytes()).map_err(|_| {
        invalid(
            "private key",
            "not a PEM private key",
            "give the unencrypted private key as PEM (-----BEGIN PRIVATE KEY-----)",
        )
    })?;
    if key.rsa().map(|r| r.size() * 8).unwrap_or(0) < 2048 {
        return Err(invalid(
            "private key",
            "not an RSA key of at least 2048 bits",
            "use an RSA key of 2048 bits or more (Microsoft accepts RS256 client assertions)",
        ));
    }
    let matches = cert
        .public_key()
        .map(|public| public.public_eq(&key))
        .unwrap_or(false);
    if !matches {
        return Err(invalid(
            "private key",
            "it does not belong to the certificate",
            "give the key the certificate was made for",
        ));
    }
    let expired = openssl::asn1::Asn1Time::from_unix(now.timestamp())
        .ok()
        .and_then(|now| cert.not_after().compare(&now).ok())
        .is_none_or(|order| order != std::cmp::Ordering::Greater);
    if expired {
        return Err(invalid(
            "certificate",
            "it has expired",
            "make a new certificate (or let idbridge generate one)",
        ));
    }
    Ok(())
}

/// The credential stored in the console's row, opened with the data key.
fn stored_credential(
    row: &AppRegistrationRow,
    key: &SecretBox,
) -> Result<Option<(ClientCredential, Option<CertificateSummary>)>, RegistrationError> {
    if let Some(sealed) = &row.client_secret_sealed {
        let secret = key.open(sealed, SECRET_CONTEXT)?;
        return Ok(Some((ClientCredential::Secret(secret), None)));
    }
    let (Some(cert_pem), Some(sealed)) = (&row.certificate_pem, &row.key_sealed) else {
        return Ok(None);
    };
    let stored = |e: openssl::error::ErrorStack| {
        RegistrationError::Store(StoreError::Corrupt(format!(
            "stored app registration certificate: {e}"
        )))
    };
    let cert = X509::from_pem(cert_pem.as_bytes()).map_err(stored)?;
    let key_pem = key.open(sealed, KEY_CONTEXT)?;
    let private = PKey::private_key_from_pem(key_pem.expose_secret().as_bytes()).map_err(stored)?;
    let summary = summarise(&cert).map_err(stored)?;
    Ok(Some((
        ClientCredential::Certificate {
            cert_der: cert.to_der().map_err(stored)?,
            key: private,
        },
        Some(summary),
    )))
}

fn summarise(cert: &X509) -> Result<CertificateSummary, openssl::error::ErrorStack> {
    let sha1 = cert.digest(openssl::hash::MessageDigest::sha1())?;
    Ok(CertificateSummary {
        thumbprint: sha1.iter().map(|b| format!("{b:02X}")).collect(),
        not_after: cert.not_after().to_string(),
        pem: String::from_utf8_lossy(&cert.to_pem()?).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretBox {
        SecretBox::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap()
    }

    #[test]
    fn file_values_win_and_cannot_be_changed_in_the_console() {
        let config = Config::from_toml(
            "[m365]\nclient_id = \"5f8c3b2a-6d1e-4f7a-9b0c-1e2d3f4a5b6c\"\nclient_secret = \"s\"\n",
        )
        .unwrap();
        let file = FileRegistration::from_config(&config).unwrap();
        let change = RegistrationChange {
            client_id: Some("6f8c3b2a-6d1e-4f7a-9b0c-1e2d3f4a5b6c".into()),
            ..Default::default()
        };
        let err = file
            .apply(None, change, &key(), "idbridge", "root", Utc::now())
            .err()
            .unwrap();
        assert!(
            matches!(
                &err,
                RegistrationError::SetInFile {
                    setting: "m365.client_id",
                    ..
                }
            ),
            "{err}"
        );
        // The tenant is not set in the file: the console may set it.
        let change = RegistrationChange {
            tenant: Some("Contoso.onmicrosoft.com".into()),
            ..Default::default()
        };
        let (row, changed) = file
            .apply(None, change, &key(), "idbridge", "root", Utc::now())
            .unwrap();
        assert_eq!(changed, ["tenant"]);
        let reg = file.effective(Some(&row), &key(), "organizations").unwrap();
        assert_eq!(reg.tenant, "contoso.onmicrosoft.com");
        assert!(matches!(reg.tenant_source, ValueSource::Console { .. }));
        assert!(matches!(reg.client_id_source, ValueSource::File(_)));
        assert_eq!(reg.credential_kind(), Some(CredentialKind::Secret));
        assert!(reg.problem().is_none());
    }

    #[test]
    fn a_console_registration_round_trips_sealed() {
        let file = FileRegistration::default();
        let change = RegistrationChange {
            client_id: Some(" 5F8C3B2A-6D1E-4F7A-9B0C-1E2D3F4A5B6C ".into()),
            credential: Some(CredentialChange::Secret(SecretString::from("abc~123"))),
            ..Default::default()
        };
        let (row, _) = file
            .apply(None, change, &key(), "idbridge", "root", Utc::now())
            .unwrap();
        assert!(!row
            .client_secret_sealed
            .as_deref()
            .unwrap()
            .contains("abc~123"));
        let reg = file.effective(Some(&row), &key(), "organizations").unwrap();
        assert_eq!(
            reg.client_id.as_deref(),
            Some("5f8c3b2a-6d1e-4f7a-9b0c-1e2d3f4a5b6c")
        );
        let Some(ClientCredential::Secret(s)) = &reg.credential else {
            panic!("no secret")
        };
        assert_eq!(s.expose_secret(), "abc~123");
        assert!(!reg.names_one_tenant());

        // A generated certificate replaces the secret; its thumbprint is Entra's SHA-1.
        let change = RegistrationChange {
            credential: Some(CredentialChange::GenerateCertificate),
            ..Default::default()
        };
        let (row, _) = file
            .apply(
                Some(&row),
                change,
                &key(),
                "idbridge test",
                "root",
                Utc::now(),
            )
            .unwrap();
        assert!(row.client_secret_sealed.is_none());
        let reg = file.effective(Some(&row), &key(), "organizations").unwrap();
        assert_eq!(reg.credential_kind(), Some(CredentialKind::Certificate));
        let cert = reg.certificate.unwrap();
        assert_eq!(cert.thumbprint.len(), 40);
        assert!(cert.pem.starts_with("-----BEGIN CERTIFICATE-----"));
    }

    #[test]
    fn bad_values_are_refused_with_the_fix() {
        let file = FileRegistration::default();
        for change in [
            RegistrationChange {
                client_id: Some("not-a-guid".into()),
                ..Default::default()
            },
            RegistrationChange {
                tenant: Some("contoso tenant".into()),
                ..Default::default()
            },
            RegistrationChange {
                credential: Some(CredentialChange::Secret(SecretString::from("  "))),
                ..Default::default()
            },
            RegistrationChange {
                credential: Some(CredentialChange::UploadCertificate {
                    certificate_pem: "nope".into(),
                    private_key_pem: SecretString::from("nope"),
                }),
                ..Default::default()
            },
        ] {
            let err = file
                .apply(None, change, &key(), "idbridge", "root", Utc::now())
                .err()
                .unwrap();
            assert!(
                matches!(err, RegistrationError::Invalid { .. })
                    && err.to_string().contains("Fix:"),
                "{err}"
            );
        }
    }

    #[test]
    fn an_uploaded_key_must_belong_to_the_certificate() {
        let (_, _, cert_pem) = crate::saml::SigningCredential::generate(2048, "a", 30).unwrap();
        let (_, other_key, _) = crate::saml::SigningCredential::generate(2048, "b", 30).unwrap();
        let err = check_uploaded(
            &String::from_utf8(cert_pem).unwrap(),
            &SecretString::from(String::from_utf8(other_key).unwrap()),
            Utc::now(),
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("does not belong"), "{err}");
    }
}
