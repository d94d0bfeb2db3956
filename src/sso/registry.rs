//! The registry of SAML service providers: Microsoft 365 built in, others from config or
//! registered in the console or the API (stored, read again on every node).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::config::Config;
use crate::saml::{VerificationKeys, NAMEID_EMAIL, NAMEID_PERSISTENT, NAMEID_UNSPECIFIED};

/// Entity ID Microsoft Entra ID uses in its AuthnRequests and as the assertion audience.
pub const M365_ENTITY_ID: &str = "urn:federation:MicrosoftOnline";
/// The target of a sign-in to idbridge's own user portal: never a registered service
/// provider, so no AuthnRequest can name it, and no SAML message is ever made for it.
pub const PORTAL_TARGET: &str = "urn:idbridge:portal";

/// Which user value becomes the NameID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameIdSource {
    /// The immutable ID of the Microsoft 365 binding (format persistent).
    ImmutableId,
    Username,
    Email,
}

impl NameIdSource {
    /// The source named as in settings and the API: `username`, `email`, `immutable_id`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "immutable_id" => Some(Self::ImmutableId),
            "username" => Some(Self::Username),
            "email" => Some(Self::Email),
            _ => None,
        }
    }

    /// The name [`NameIdSource::parse`] reads.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ImmutableId => "immutable_id",
            Self::Username => "username",
            Self::Email => "email",
        }
    }

    /// How the console names the source.
    pub fn label(self) -> &'static str {
        match self {
            Self::ImmutableId => "immutable ID",
            Self::Username => "username",
            Self::Email => "email",
        }
    }

    /// The NameID Format URI that goes with the source.
    pub fn format(self) -> &'static str {
        match self {
            NameIdSource::ImmutableId => NAMEID_PERSISTENT,
            NameIdSource::Username => NAMEID_UNSPECIFIED,
            NameIdSource::Email => NAMEID_EMAIL,
        }
    }
}

/// Where a service provider's registration comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpOrigin {
    /// Microsoft 365 (and the portal): part of idbridge.
    BuiltIn,
    /// `[[saml.service_providers]]` in idbridge.toml: changed there, with a restart.
    File,
    /// Registered in the console or the API, last changed at `updated_at_ms` by `updated_by`.
    Console {
        updated_at_ms: i64,
        updated_by: String,
    },
}

/// A service provider's signing keys; replaced while idbridge runs when they come from a
/// metadata URL (Microsoft's federation metadata, read again every day).
#[derive(Debug, Default)]
pub struct TrustedKeys(std::sync::RwLock<Option<Arc<VerificationKeys>>>);

impl TrustedKeys {
    /// Keys known from the start (or none).
    pub fn new(keys: Option<Arc<VerificationKeys>>) -> Self {
        Self(std::sync::RwLock::new(keys))
    }

    /// The keys now, if any.
    pub fn get(&self) -> Option<Arc<VerificationKeys>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Trusts `keys` from now on.
    pub fn replace(&self, keys: Arc<VerificationKeys>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(keys);
    }
}

/// What idbridge knows about one service provider.
#[derive(Debug)]
pub struct ServiceProvider {
    pub entity_id: String,
    pub name: String,
    /// Registered ACS URLs: responses are posted only to one of these; the first is the default.
    pub acs_urls: Vec<String>,
    pub slo_url: Option<String>,
    pub name_id: NameIdSource,
    /// SAML attribute name → user attribute name.
    pub attributes: Vec<(String, String)>,
    /// Users without a Microsoft 365 binding are refused.
    pub requires_m365_binding: bool,
    /// Microsoft 365 itself: the attribute IDPEmail carries the UPN and the issuer may depend
    /// on the user's domain.
    pub is_m365: bool,
    /// The SP's signing keys, when its certificate is configured: its messages must then be
    /// signed by one of them.
    pub verification_keys: TrustedKeys,
    /// Its AuthnRequests must carry a valid signature by one of `verification_keys`.
    pub requires_signed_requests: bool,
    /// Where its registration comes from (and so where it is changed).
    pub origin: SpOrigin,
}

/// The service providers registered in the console or the API, as last read from the store.
#[derive(Debug, Default)]
pub(super) struct Registered {
    pub(super) by_entity_id: HashMap<String, Arc<ServiceProvider>>,
    /// Entity ID and last change of each stored row: what tells a reload that nothing changed.
    pub(super) versions: Vec<(String, i64)>,
}

/// All registered service providers, by entity ID.
#[derive(Debug)]
pub struct ServiceProviders {
    /// Microsoft 365 and the entries of idbridge.toml, fixed while idbridge runs.
    fixed: HashMap<String, Arc<ServiceProvider>>,
    /// The console's and the API's, replaced whole when the store changes.
    pub(super) registered: RwLock<Arc<Registered>>,
    portal: Arc<ServiceProvider>,
}

impl ServiceProviders {
    /// Builds the registry: Microsoft 365 (ACS on the configured login host) plus config entries.
    pub fn from_config(config: &Config) -> Self {
        let login_srf = format!("{}/login.srf", config.m365.login_base_url);
        let m365 = ServiceProvider {
            entity_id: M365_ENTITY_ID.into(),
            name: "Microsoft 365".into(),
            acs_urls: vec![login_srf.clone()],
            slo_url: Some(login_srf),
            name_id: NameIdSource::ImmutableId,
            attributes: Vec::new(),
            requires_m365_binding: true,
            is_m365: true,
            verification_keys: TrustedKeys::new(config.saml.m365_certificates.clone()),
            requires_signed_requests: config.saml.m365_signed_requests,
            origin: SpOrigin::BuiltIn,
        };
        let mut by_entity_id = HashMap::new();
        by_entity_id.insert(m365.entity_id.clone(), Arc::new(m365));
        for sp in &config.saml.service_providers {
            // Checked when the configuration was read.
            let name_id = NameIdSource::parse(&sp.name_id).unwrap_or(NameIdSource::Username);
            let entry = ServiceProvider {
                entity_id: sp.entity_id.clone(),
                name: sp.name.clone().unwrap_or_else(|| sp.entity_id.clone()),
                acs_urls: sp.acs_urls.clone(),
                slo_url: sp.slo_url.clone(),
                name_id,
                attributes: sp
                    .attributes
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                requires_m365_binding: sp.require_m365_binding
                    || name_id == NameIdSource::ImmutableId,
                is_m365: false,
                verification_keys: TrustedKeys::new(sp.certificates.clone()),
                requires_signed_requests: sp.want_authn_requests_signed,
                origin: SpOrigin::File,
            };
            by_entity_id.insert(entry.entity_id.clone(), Arc::new(entry));
        }
        let portal = Arc::new(ServiceProvider {
            entity_id: PORTAL_TARGET.into(),
            name: "your idbridge account".into(),
            acs_urls: Vec::new(),
            slo_url: None,
            name_id: NameIdSource::Username,
            attributes: Vec::new(),
            requires_m365_binding: false,
            is_m365: false,
            verification_keys: TrustedKeys::default(),
            requires_signed_requests: false,
            origin: SpOrigin::BuiltIn,
        });
        // A configured entry cannot take the portal's name.
        by_entity_id.remove(PORTAL_TARGET);
        Self {
            fixed: by_entity_id,
            registered: RwLock::default(),
            portal,
        }
    }

    /// Looks up a service provider by the Issuer of its request.
    pub fn get(&self, entity_id: &str) -> Option<Arc<ServiceProvider>> {
        self.fixed
            .get(entity_id)
            .cloned()
            .or_else(|| self.registered().by_entity_id.get(entity_id).cloned())
    }

    /// The fixed entry (Microsoft 365 or idbridge.toml's) with this entity ID, if any.
    pub(super) fn fixed(&self, entity_id: &str) -> Option<&Arc<ServiceProvider>> {
        self.fixed.get(entity_id)
    }

    pub(super) fn registered(&self) -> Arc<Registered> {
        self.registered
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The user portal as the target of a parked sign-in (see [`PORTAL_TARGET`]).
    pub fn portal(&self) -> Arc<ServiceProvider> {
        self.portal.clone()
    }

    /// All registered service providers: Microsoft 365 first, then idbridge.toml's, then
    /// the console's, each by entity ID.
    pub fn all(&self) -> Vec<Arc<ServiceProvider>> {
        let registered = self.registered();
        let mut all: Vec<_> = self
            .fixed
            .values()
            .chain(registered.by_entity_id.values())
            .cloned()
            .collect();
        all.sort_by_key(|sp| {
            let rank = match (&sp.origin, sp.is_m365) {
                (_, true) => 0,
                (SpOrigin::File | SpOrigin::BuiltIn, false) => 1,
                (SpOrigin::Console { .. }, false) => 2,
            };
            (rank, sp.entity_id.clone())
        });
        all
    }
}
