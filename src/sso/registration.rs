//! Registering SAML service providers in the console or the API: what an admin enters, how it
//! is checked, stored with its event, and used by every node without a restart.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::json;

use super::registry::{
    NameIdSource, Registered, ServiceProvider, ServiceProviders, SpOrigin, TrustedKeys,
    M365_ENTITY_ID, PORTAL_TARGET,
};
use crate::events::{kind, Actor, NewEvent};
use crate::saml::VerificationKeys;
use crate::store::{ServiceProviderRow, Store, StoreError};

/// SAML metadata's `entityID` is at most 1024 characters (SAML metadata §2.3.2).
const MAX_ENTITY_ID: usize = 1024;
const MAX_NAME: usize = 100;
const MAX_URL: usize = 2048;
const MAX_ACS_URLS: usize = 20;
const MAX_ATTRIBUTES: usize = 50;
const MAX_ATTRIBUTE_NAME: usize = 256;

/// A field of a registration, named as the API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpField {
    EntityId,
    Name,
    AcsUrls,
    SloUrl,
    NameId,
    Attributes,
    Certificate,
    WantAuthnRequestsSigned,
}

impl SpField {
    /// The field's JSON name in the API.
    pub fn api_name(self) -> &'static str {
        match self {
            Self::EntityId => "entityId",
            Self::Name => "name",
            Self::AcsUrls => "acsUrls",
            Self::SloUrl => "sloUrl",
            Self::NameId => "nameId",
            Self::Attributes => "attributes",
            Self::Certificate => "certificatePem",
            Self::WantAuthnRequestsSigned => "wantAuthnRequestsSigned",
        }
    }

    /// The field as the console's form labels it.
    pub fn label(self) -> &'static str {
        match self {
            Self::EntityId => "Entity ID",
            Self::Name => "Name",
            Self::AcsUrls => "Assertion consumer service URLs",
            Self::SloUrl => "Single logout URL",
            Self::NameId => "NameID",
            Self::Attributes => "Attributes",
            Self::Certificate => "Signing certificate",
            Self::WantAuthnRequestsSigned => "Require signed AuthnRequests",
        }
    }
}

/// Why a service provider could not be registered, changed or removed.
#[derive(Debug, thiserror::Error)]
pub enum SpRegistrationError {
    #[error("{}: {problem}. Fix: {fix}", .field.label())]
    Invalid {
        field: SpField,
        problem: String,
        fix: String,
    },
    #[error("{0} is built in and cannot be registered, changed or removed")]
    BuiltIn(String),
    #[error("{0} is set in idbridge.toml ([[saml.service_providers]]): change or remove it there and restart")]
    SetInFile(String),
    #[error(
        "a service provider with the entity ID {0} is registered already: change that one instead"
    )]
    AlreadyRegistered(String),
    #[error("no service provider with the entity ID {0} is registered in the console")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn invalid(
    field: SpField,
    problem: impl Into<String>,
    fix: impl Into<String>,
) -> SpRegistrationError {
    SpRegistrationError::Invalid {
        field,
        problem: problem.into(),
        fix: fix.into(),
    }
}

/// A service provider as an admin enters it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpRegistration {
    pub entity_id: String,
    /// What the sign-in page names it; the entity ID when empty.
    pub name: String,
    /// Where Responses may be posted; the first is the default.
    pub acs_urls: Vec<String>,
    pub slo_url: Option<String>,
    pub name_id: NameIdSource,
    /// SAML attribute name → user attribute name.
    pub attributes: Vec<(String, String)>,
    pub require_m365_binding: bool,
    /// The SP's signing certificate(s) as PEM, or its SAML metadata.
    pub certificate_pem: Option<String>,
    pub want_authn_requests_signed: bool,
}

/// A URL a Response or LogoutResponse is posted to: absolute https, or http only to this
/// machine (assertions are bearer tokens and must not cross a network in clear).
fn check_url(field: SpField, url: &str) -> Result<(), SpRegistrationError> {
    let fix = "use the full https URL the service provider gives in its metadata";
    if url.len() > MAX_URL {
        return Err(invalid(
            field,
            format!(
                "{} characters is longer than a URL may be here (at most {MAX_URL})",
                url.len()
            ),
            fix,
        ));
    }
    let parsed = url::Url::parse(url)
        .map_err(|e| invalid(field, format!("{url:?} is not a URL ({e})"), fix))?;
    let loopback = match parsed.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match parsed.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => {
            return Err(invalid(
                field,
                format!("{url:?} is plain http: assertions would cross the network unencrypted"),
                fix,
            ))
        }
        _ => {
            return Err(invalid(
                field,
                format!("{url:?} is not an http(s) URL"),
                fix,
            ))
        }
    }
    if parsed.fragment().is_some() {
        return Err(invalid(
            field,
            format!("{url:?} has a #fragment, which a browser never posts"),
            "remove the part from # on",
        ));
    }
    Ok(())
}

impl SpRegistration {
    /// Checks every field; the SP's signing keys when a certificate is given.
    pub fn check(&self) -> Result<Option<VerificationKeys>, SpRegistrationError> {
        let id = self.entity_id.as_str();
        if id.trim().is_empty() {
            return Err(invalid(
                SpField::EntityId,
                "is empty",
                "copy the entityID from the service provider's metadata",
            ));
        }
        if id == M365_ENTITY_ID || id == PORTAL_TARGET {
            return Err(SpRegistrationError::BuiltIn(id.to_string()));
        }
        if id.len() > MAX_ENTITY_ID || id.trim() != id || url::Url::parse(id).is_err() {
            return Err(invalid(
                SpField::EntityId,
                format!("{id:?} is not a URI of at most {MAX_ENTITY_ID} characters"),
                "copy the entityID from the service provider's metadata (a URL or a urn:)",
            ));
        }
        if self.name.chars().count() > MAX_NAME || self.name.chars().any(char::is_control) {
            return Err(invalid(
                SpField::Name,
                format!("must be at most {MAX_NAME} characters on one line"),
                "give a short name employees recognise, e.g. \"Team wiki\"",
            ));
        }
        if self.acs_urls.is_empty() {
            return Err(invalid(
                SpField::AcsUrls,
                "is empty",
                "list at least one assertion consumer service URL (AssertionConsumerService Location in the metadata)",
            ));
        }
        if self.acs_urls.len() > MAX_ACS_URLS {
            return Err(invalid(
                SpField::AcsUrls,
                format!("{} URLs are more than {MAX_ACS_URLS}", self.acs_urls.len()),
                "list the URLs the service provider really uses",
            ));
        }
        for url in &self.acs_urls {
            check_url(SpField::AcsUrls, url)?;
        }
        if let Some(url) = &self.slo_url {
            check_url(SpField::SloUrl, url)?;
        }
        if self.attributes.len() > MAX_ATTRIBUTES {
            return Err(invalid(
                SpField::Attributes,
                format!(
                    "{} attributes are more than {MAX_ATTRIBUTES}",
                    self.attributes.len()
                ),
                "send only the attributes the service provider reads",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (saml_name, attribute) in &self.attributes {
            if saml_name.trim().is_empty()
                || saml_name.len() > MAX_ATTRIBUTE_NAME
                || saml_name
                    .chars()
                    .any(|c| c.is_control() || c.is_whitespace())
            {
                return Err(invalid(
                    SpField::Attributes,
                    format!("{saml_name:?} is not a SAML attribute name"),
                    "use the name the service provider expects, without spaces (e.g. mail or http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress)",
                ));
            }
            if !seen.insert(saml_name.as_str()) {
                return Err(invalid(
                    SpField::Attributes,
                    format!("{saml_name:?} is listed twice"),
                    "keep one line per SAML attribute",
                ));
            }
            if !crate::directory::User::knows_attribute(attribute) {
                return Err(invalid(
                    SpField::Attributes,
                    format!("{attribute:?} (for {saml_name}) is not a user attribute"),
                    format!(
                        "use one of: {}",
                        crate::directory::User::attribute_names().join(", ")
                    ),
                ));
            }
        }
        let keys = match &self.certificate_pem {
            Some(pem) => Some(VerificationKeys::from_file_contents(pem.as_bytes()).map_err(|e| {
                invalid(
                    SpField::Certificate,
                    e.to_string(),
                    "paste the service provider's signing certificate (-----BEGIN CERTIFICATE-----) or its SAML metadata",
                )
            })?),
            None => None,
        };
        if self.want_authn_requests_signed && keys.is_none() {
            return Err(invalid(
                SpField::WantAuthnRequestsSigned,
                "signed AuthnRequests are required but no certificate is given to check them",
                "paste the service provider's signing certificate, or do not require signed requests",
            ));
        }
        Ok(keys)
    }

    fn row(&self, created_at: i64, now: DateTime<Utc>, actor: &Actor) -> ServiceProviderRow {
        ServiceProviderRow {
            entity_id: self.entity_id.clone(),
            name: self.name.clone(),
            acs_urls: self.acs_urls.clone(),
            slo_url: self.slo_url.clone(),
            name_id: self.name_id.as_str().to_string(),
            attributes: self.attributes.clone(),
            require_m365_binding: self.require_m365_binding,
            certificate_pem: self.certificate_pem.clone(),
            want_authn_requests_signed: self.want_authn_requests_signed,
            created_at,
            updated_at: now.timestamp_millis(),
            updated_by: actor.to_string(),
        }
    }

    /// The registration a stored row holds.
    pub fn from_row(row: &ServiceProviderRow) -> Result<Self, StoreError> {
        Ok(Self {
            entity_id: row.entity_id.clone(),
            name: row.name.clone(),
            acs_urls: row.acs_urls.clone(),
            slo_url: row.slo_url.clone(),
            name_id: NameIdSource::parse(&row.name_id).ok_or_else(|| {
                StoreError::Corrupt(format!("saml_service_providers.name_id {:?}", row.name_id))
            })?,
            attributes: row.attributes.clone(),
            require_m365_binding: row.require_m365_binding,
            certificate_pem: row.certificate_pem.clone(),
            want_authn_requests_signed: row.want_authn_requests_signed,
        })
    }

    fn provider(&self, keys: Option<VerificationKeys>, origin: SpOrigin) -> ServiceProvider {
        ServiceProvider {
            entity_id: self.entity_id.clone(),
            name: if self.name.trim().is_empty() {
                self.entity_id.clone()
            } else {
                self.name.clone()
            },
            acs_urls: self.acs_urls.clone(),
            slo_url: self.slo_url.clone(),
            name_id: self.name_id,
            attributes: self.attributes.clone(),
            // The immutable ID exists only for bound users.
            requires_m365_binding: self.require_m365_binding
                || self.name_id == NameIdSource::ImmutableId,
            is_m365: false,
            verification_keys: TrustedKeys::new(keys.map(Arc::new)),
            requires_signed_requests: self.want_authn_requests_signed,
            origin,
        }
    }

    fn details(&self) -> serde_json::Value {
        json!({
            "name": self.name,
            "acsUrls": self.acs_urls,
            "sloUrl": self.slo_url,
            "nameId": self.name_id.as_str(),
            "attributes": self.attributes.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            "requireM365Binding": self.require_m365_binding,
            "certificate": self.certificate_pem.is_some(),
            "wantAuthnRequestsSigned": self.want_authn_requests_signed,
        })
    }
}

impl ServiceProviders {
    /// Uses the service providers stored by any node (or none); whether they changed. A row
    /// shadowed by a fixed entry, or that no longer reads, is left out with a warning.
    pub async fn load_registered(&self, store: &Store) -> Result<bool, StoreError> {
        let rows = store.service_providers().await?;
        let versions: Vec<(String, i64)> = rows
            .iter()
            .map(|r| (r.entity_id.clone(), r.updated_at))
            .collect();
        if self.registered().versions == versions {
            return Ok(false);
        }
        let mut by_entity_id = HashMap::new();
        for row in &rows {
            if self.fixed(&row.entity_id).is_some() {
                tracing::warn!(entity_id = %row.entity_id, "a service provider registered in the console is also in idbridge.toml: using the file's");
                continue;
            }
            let registration = match SpRegistration::from_row(row) {
                Ok(r) => r,
                Err(err) => {
                    tracing::warn!(entity_id = %row.entity_id, %err, "a stored service provider does not read: left out");
                    continue;
                }
            };
            let keys = match registration.check() {
                Ok(keys) => keys,
                Err(err) => {
                    tracing::warn!(entity_id = %row.entity_id, %err, "a stored service provider is no longer valid: left out");
                    continue;
                }
            };
            let origin = SpOrigin::Console {
                updated_at_ms: row.updated_at,
                updated_by: row.updated_by.clone(),
            };
            by_entity_id.insert(
                row.entity_id.clone(),
                Arc::new(registration.provider(keys, origin)),
            );
        }
        *self.registered.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Registered {
            by_entity_id,
            versions,
        });
        Ok(true)
    }

    /// Refuses a change to an entity ID this registry does not let the console change.
    fn check_changeable(&self, entity_id: &str) -> Result<(), SpRegistrationError> {
        match self.fixed(entity_id).map(|sp| &sp.origin) {
            Some(SpOrigin::File) => Err(SpRegistrationError::SetInFile(entity_id.to_string())),
            Some(_) => Err(SpRegistrationError::BuiltIn(entity_id.to_string())),
            None if entity_id == PORTAL_TARGET => {
                Err(SpRegistrationError::BuiltIn(entity_id.to_string()))
            }
            None => Ok(()),
        }
    }

    /// Registers a new service provider; in use at once here, on other nodes within seconds.
    pub async fn register(
        &self,
        store: &Store,
        registration: SpRegistration,
        actor: &Actor,
        client_ip: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<Arc<ServiceProvider>, SpRegistrationError> {
        self.check_changeable(&registration.entity_id)?;
        registration.check()?;
        let row = registration.row(now.timestamp_millis(), now, actor);
        let event = NewEvent::new(
            now,
            actor,
            kind::SAML_SP_REGISTERED,
            Some(&registration.entity_id),
        )
        .details(registration.details())
        .client_ip(client_ip);
        match store.insert_service_provider(&row, &event).await {
            Err(StoreError::Conflict(_)) => {
                return Err(SpRegistrationError::AlreadyRegistered(
                    registration.entity_id,
                ))
            }
            other => other?,
        }
        self.in_use(store, &registration.entity_id).await
    }

    /// Replaces a registered service provider's settings (the entity ID stays).
    pub async fn change(
        &self,
        store: &Store,
        registration: SpRegistration,
        actor: &Actor,
        client_ip: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<Arc<ServiceProvider>, SpRegistrationError> {
        self.check_changeable(&registration.entity_id)?;
        registration.check()?;
        // created_at is not rewritten by an update.
        let row = registration.row(0, now, actor);
        let event = NewEvent::new(
            now,
            actor,
            kind::SAML_SP_CHANGED,
            Some(&registration.entity_id),
        )
        .details(registration.details())
        .client_ip(client_ip);
        if !store.update_service_provider(&row, &event).await? {
            return Err(SpRegistrationError::NotFound(registration.entity_id));
        }
        self.in_use(store, &registration.entity_id).await
    }

    /// Removes a registered service provider: its requests are refused from now on.
    pub async fn unregister(
        &self,
        store: &Store,
        entity_id: &str,
        actor: &Actor,
        client_ip: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<(), SpRegistrationError> {
        self.check_changeable(entity_id)?;
        let event =
            NewEvent::new(now, actor, kind::SAML_SP_REMOVED, Some(entity_id)).client_ip(client_ip);
        if !store.delete_service_provider(entity_id, &event).await? {
            return Err(SpRegistrationError::NotFound(entity_id.to_string()));
        }
        self.load_registered(store).await?;
        Ok(())
    }

    async fn in_use(
        &self,
        store: &Store,
        entity_id: &str,
    ) -> Result<Arc<ServiceProvider>, SpRegistrationError> {
        self.load_registered(store).await?;
        self.get(entity_id)
            .ok_or_else(|| SpRegistrationError::NotFound(entity_id.to_string()))
    }

    /// The stored registration of a console-registered service provider, for editing.
    pub async fn registration(
        &self,
        store: &Store,
        entity_id: &str,
    ) -> Result<SpRegistration, SpRegistrationError> {
        let rows = store.service_providers().await?;
        let row = rows
            .iter()
            .find(|r| r.entity_id == entity_id)
            .ok_or_else(|| SpRegistrationError::NotFound(entity_id.to_string()))?;
        Ok(SpRegistration::from_row(row)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wiki() -> SpRegistration {
        SpRegistration {
            entity_id: "https://wiki.example.com/saml".into(),
            name: "Team wiki".into(),
            acs_urls: vec!["https://wiki.example.com/saml/acs".into()],
            slo_url: None,
            name_id: NameIdSource::Email,
            attributes: vec![("mail".into(), "email".into())],
            require_m365_binding: false,
            certificate_pem: None,
            want_authn_requests_signed: false,
        }
    }

    fn field_of(r: SpRegistration) -> SpField {
        match r.check() {
            Err(SpRegistrationError::Invalid { field, .. }) => field,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_complete_registration_passes() {
        assert!(wiki().check().unwrap().is_none());
    }

    #[test]
    fn each_bad_field_is_named() {
        let mut r = wiki();
        r.entity_id = " ".into();
        assert_eq!(field_of(r), SpField::EntityId);
        let mut r = wiki();
        r.entity_id = "not a uri".into();
        assert_eq!(field_of(r), SpField::EntityId);
        let mut r = wiki();
        r.acs_urls.clear();
        assert_eq!(field_of(r), SpField::AcsUrls);
        let mut r = wiki();
        r.acs_urls = vec!["http://wiki.example.com/acs".into()];
        assert_eq!(field_of(r), SpField::AcsUrls, "plain http off this machine");
        let mut r = wiki();
        r.acs_urls = vec!["http://127.0.0.1:8080/acs".into()];
        assert!(r.check().is_ok(), "http to this machine is allowed");
        let mut r = wiki();
        r.slo_url = Some("javascript:alert(1)".into());
        assert_eq!(field_of(r), SpField::SloUrl);
        let mut r = wiki();
        r.attributes.push(("mail".into(), "firstname".into()));
        assert_eq!(field_of(r), SpField::Attributes, "a SAML name twice");
        let mut r = wiki();
        r.attributes = vec![("given name".into(), "firstname".into())];
        assert_eq!(field_of(r), SpField::Attributes);
        let mut r = wiki();
        r.attributes = vec![("x".into(), "salary".into())];
        assert_eq!(field_of(r), SpField::Attributes);
        let mut r = wiki();
        r.certificate_pem = Some("hello".into());
        assert_eq!(field_of(r), SpField::Certificate);
        let mut r = wiki();
        r.want_authn_requests_signed = true;
        assert_eq!(field_of(r), SpField::WantAuthnRequestsSigned);
    }

    #[test]
    fn microsoft_365_and_the_portal_cannot_be_registered() {
        for id in [M365_ENTITY_ID, PORTAL_TARGET] {
            let mut r = wiki();
            r.entity_id = id.into();
            assert!(matches!(r.check(), Err(SpRegistrationError::BuiltIn(_))));
        }
    }

    #[test]
    fn the_immutable_id_as_name_id_requires_a_binding() {
        let mut r = wiki();
        r.name_id = NameIdSource::ImmutableId;
        let sp = r.provider(
            None,
            SpOrigin::Console {
                updated_at_ms: 0,
                updated_by: "admin:root".into(),
            },
        );
        assert!(sp.requires_m365_binding);
    }
}
