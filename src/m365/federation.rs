//! Federating the tenant's domains to idbridge through Microsoft Graph, instead of pasting
//! settings into PowerShell: the domain's `internalDomainFederation` is created, compared with
//! what idbridge would send (drift), and removed again to make the domain managed.
//!
//! Microsoft's rules (Graph `domain-post-federationconfiguration` and the Entra SAML IdP
//! guide): only verified custom domains can be federated, never the initial
//! `*.onmicrosoft.com` one; once federated every user of the domain signs in at the IdP, so a
//! user without an immutable ID there can no longer sign in. A preview says who that is before
//! anything changes.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::connection::{M365Error, M365};
use super::graph::GraphDomain;
use super::permissions::GraphCall;
use crate::config::Config;
use crate::events::{kind, Actor, NewEvent};
use crate::store::{FederatedDomainRow, StoreError};

/// Users listed per Graph page for the preview (Graph's maximum for users).
const PREVIEW_PAGE: u32 = 999;

/// Why a domain's federation could not be changed; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    #[error("the tenant has no domain {0:?}; `idbridge m365 domains` lists them")]
    UnknownDomain(String),
    #[error("{0} is not verified in Microsoft 365: prove you own it (a DNS TXT record, Microsoft 365 admin center → Settings → Domains) before federating it")]
    Unverified(String),
    #[error("{0} is the tenant's initial domain, which Microsoft does not allow to federate; keep a break-glass admin on it")]
    Initial(String),
    #[error("{0} is already federated; `idbridge m365 domains` shows what Microsoft holds and what differs from idbridge")]
    AlreadyFederated(String),
    #[error("{0} is not federated (it is managed: Microsoft 365 checks the passwords)")]
    NotFederated(String),
    /// The change needs the admin's explicit confirmation (what it would do is in the text).
    #[error("{message}")]
    NeedsConfirmation {
        confirmation: Confirmation,
        message: String,
    },
    #[error(transparent)]
    M365(#[from] M365Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A confirmation a domain change may need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirmation {
    /// Federating the tenant's default domain.
    DefaultDomain,
    /// Federating a domain with users who are not bound.
    UsersNotBound,
    /// Making a federated domain managed again.
    Unfederate,
}

/// What idbridge asks Microsoft to hold for a domain federated to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederationSettings {
    /// The Issuer of idbridge's Responses for this domain.
    pub issuer_uri: String,
    pub passive_sign_in_uri: String,
    pub sign_out_uri: String,
    /// The signing certificate, base64 of its DER (Graph's `signingCertificate`).
    pub signing_certificate: String,
    /// The other certificate Microsoft must trust during a rollover (Graph's
    /// `nextSigningCertificate`): the next one once prepared, the previous one once promoted.
    pub next_signing_certificate: Option<String>,
    /// Entra signs its AuthnRequests (`isSignedAuthenticationRequestRequired`): set with
    /// `[saml] m365_signed_requests`, which makes idbridge require it.
    pub signed_requests: bool,
}

/// The issuer `[saml.domain_issuers]` gives `domain`, if any.
fn configured_issuer(config: &Config, domain: &str) -> Option<String> {
    config
        .saml
        .domain_issuers
        .iter()
        .find(|(d, _)| d.eq_ignore_ascii_case(domain.trim()))
        .map(|(_, i)| i.clone())
}

/// The domains idbridge federated through Graph, by lower-case name.
#[derive(Debug, Clone, Default)]
pub struct KnownFederations(BTreeMap<String, FederatedDomainRow>);

impl KnownFederations {
    /// From the stored records.
    pub fn new(rows: Vec<FederatedDomainRow>) -> Self {
        Self(
            rows.into_iter()
                .map(|r| (r.domain.to_lowercase(), r))
                .collect(),
        )
    }

    /// Read from the store.
    pub async fn load(store: &crate::store::Store) -> Result<Self, StoreError> {
        Ok(Self::new(store.federated_domains().await?))
    }

    /// The record of `domain`, if idbridge federated it.
    pub fn get(&self, domain: &str) -> Option<&FederatedDomainRow> {
        self.0.get(&domain.trim().to_lowercase())
    }

    /// Whether both hold the same records.
    pub fn same_as(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

/// The properties idbridge sets, and their values, for comparing with Microsoft's copy.
const FIXED: [(&str, &str); 3] = [
    ("preferredAuthenticationProtocol", "saml"),
    // The second factor done at idbridge counts for Microsoft; Entra asks for its own MFA only
    // when idbridge did none (README: Multi-factor sign-in).
    ("federatedIdpMfaBehavior", "acceptIfMfaDoneByFederatedIdp"),
    // Microsoft's `prompt=login` reaches idbridge as ForceAuthn, which asks for the password.
    ("promptLoginBehavior", "nativeSupport"),
];

/// A property where Microsoft's copy differs from what idbridge would send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Drift {
    pub property: String,
    pub idbridge: String,
    pub microsoft: Option<String>,
}

impl FederationSettings {
    /// idbridge's settings for `domain` as it is federated: the issuer and sign-in URL idbridge
    /// gave it (`known`), else those of a domain federated by hand (`[saml.domain_issuers]`,
    /// else the one issuer, and `/saml/sso`); the sign-out endpoint; the certificates.
    pub fn for_domain(
        config: &Config,
        signing_certificate: &str,
        next_signing_certificate: Option<&str>,
        domain: &str,
        known: &KnownFederations,
    ) -> Self {
        let base = config.base_url.trim_end_matches('/');
        let recorded = known.get(domain);
        let issuer = configured_issuer(config, domain)
            .or_else(|| recorded.map(|r| r.issuer_uri.clone()))
            .unwrap_or_else(|| config.saml_issuer().to_string());
        let sign_in = recorded.map_or_else(
            || format!("{base}/saml/sso"),
            |r| r.passive_sign_in_uri.clone(),
        );
        Self::with(
            config,
            issuer,
            sign_in,
            signing_certificate,
            next_signing_certificate,
        )
    }

    /// idbridge's settings for federating `domain` now: its own issuer
    /// (`[saml.domain_issuers]`, else `{base_url}/saml/{domain}`: Entra wants one per
    /// federated domain) and its own sign-in URL `{base_url}/saml/sso/{domain}`.
    pub fn for_new_domain(
        config: &Config,
        signing_certificate: &str,
        next_signing_certificate: Option<&str>,
        domain: &str,
    ) -> Self {
        let base = config.base_url.trim_end_matches('/');
        let domain = domain.trim().to_lowercase();
        let issuer =
            configured_issuer(config, &domain).unwrap_or_else(|| format!("{base}/saml/{domain}"));
        let sign_in = format!("{base}/saml/sso/{domain}");
        Self::with(
            config,
            issuer,
            sign_in,
            signing_certificate,
            next_signing_certificate,
        )
    }

    fn with(
        config: &Config,
        issuer: String,
        sign_in: String,
        signing_certificate: &str,
        next_signing_certificate: Option<&str>,
    ) -> Self {
        let base = config.base_url.trim_end_matches('/');
        Self {
            issuer_uri: issuer,
            passive_sign_in_uri: sign_in,
            sign_out_uri: format!("{base}/saml/slo"),
            signing_certificate: signing_certificate.to_string(),
            next_signing_certificate: next_signing_certificate.map(str::to_string),
            signed_requests: config.saml.m365_signed_requests,
        }
    }

    /// The `internalDomainFederation` to create.
    pub fn body(&self) -> Value {
        let mut body = json!({
            "@odata.type": "#microsoft.graph.internalDomainFederation",
            "displayName": "idbridge",
            "issuerUri": self.issuer_uri,
            "passiveSignInUri": self.passive_sign_in_uri,
            "signOutUri": self.sign_out_uri,
            "signingCertificate": self.signing_certificate,
            "isSignedAuthenticationRequestRequired": self.signed_requests,
        });
        if let Some(object) = body.as_object_mut() {
            for (name, value) in FIXED {
                object.insert(name.into(), json!(value));
            }
            if let Some(next) = &self.next_signing_certificate {
                object.insert("nextSigningCertificate".into(), json!(next));
            }
        }
        body
    }

    /// The Microsoft Graph PowerShell that gives a domain federated by hand these settings'
    /// certificates (a rollover step).
    pub fn certificates_powershell(&self, domain: &str) -> String {
        let next = self
            .next_signing_certificate
            .as_deref()
            .map_or_else(|| "$null".to_string(), |c| format!("\"{c}\""));
        format!(
            "Connect-MgGraph -Scopes \"Domain-InternalFederation.ReadWrite.All\"\n\
             $federation = Get-MgDomainFederationConfiguration -DomainId \"{domain}\"\n\
             Update-MgDomainFederationConfiguration -DomainId \"{domain}\" `\n  \
             -InternalDomainFederationId $federation.Id `\n  \
             -SigningCertificate \"{}\" `\n  \
             -NextSigningCertificate {next}",
            self.signing_certificate
        )
    }

    /// The same as Microsoft Graph PowerShell commands, for admins who must do it by hand.
    pub fn powershell(&self, domain: &str) -> String {
        // PowerShell double-quoted strings expand `$` and backticks; none of these values has
        // them (URLs, base64, a domain name), so they are pasted as they are.
        format!(
            "Connect-MgGraph -Scopes \"Domain-InternalFederation.ReadWrite.All\"\n\
             New-MgDomainFederationConfiguration -DomainId \"{domain}\" `\n  \
             -DisplayName \"idbridge\" `\n  \
             -IssuerUri \"{}\" `\n  \
             -PassiveSignInUri \"{}\" `\n  \
             -SignOutUri \"{}\" `\n  \
             -PreferredAuthenticationProtocol \"saml\" `\n  \
             -SigningCertificate \"{}\" `\n  \
             -FederatedIdpMfaBehavior \"acceptIfMfaDoneByFederatedIdp\" `\n  \
             -PromptLoginBehavior \"nativeSupport\" `\n  \
             -IsSignedAuthenticationRequestRequired:${}",
            self.issuer_uri,
            self.passive_sign_in_uri,
            self.sign_out_uri,
            self.signing_certificate,
            self.signed_requests
        )
    }

    /// Whether Microsoft's federation `held` is idbridge's: it sends its users to idbridge's
    /// issuer or sign-in page (a drifted copy is still ours, and its drift is what the admin
    /// must see).
    fn is_held_in(&self, held: &Map<String, Value>) -> bool {
        held.get("issuerUri").and_then(Value::as_str) == Some(self.issuer_uri.as_str())
            || held.get("passiveSignInUri").and_then(Value::as_str)
                == Some(self.passive_sign_in_uri.as_str())
    }

    /// Where `held` (Microsoft's `internalDomainFederation`) differs from these settings.
    pub fn drift(&self, held: &Map<String, Value>) -> Vec<Drift> {
        let ours = [
            ("issuerUri", self.issuer_uri.as_str()),
            ("passiveSignInUri", self.passive_sign_in_uri.as_str()),
            ("signOutUri", self.sign_out_uri.as_str()),
            ("signingCertificate", self.signing_certificate.as_str()),
        ];
        // Microsoft's next certificate matters only during a rollover: outside one, whatever it
        // holds there is harmless (idbridge signs with the one it holds as signingCertificate).
        let next = self
            .next_signing_certificate
            .as_deref()
            .map(|next| ("nextSigningCertificate", next));
        let mut drift: Vec<Drift> = ours
            .into_iter()
            .chain(next)
            .chain(FIXED)
            .filter_map(|(property, value)| {
                let theirs = held.get(property).and_then(Value::as_str);
                (theirs != Some(value)).then(|| Drift {
                    property: property.to_string(),
                    idbridge: value.to_string(),
                    microsoft: theirs.map(str::to_string),
                })
            })
            .collect();
        // Unset, Microsoft does not sign (its default is false).
        let signs = held
            .get("isSignedAuthenticationRequestRequired")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if signs != self.signed_requests {
            drift.push(Drift {
                property: "isSignedAuthenticationRequestRequired".into(),
                idbridge: self.signed_requests.to_string(),
                microsoft: Some(signs.to_string()),
            });
        }
        drift
    }
}

/// How a domain signs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum DomainSignIn {
    /// Microsoft 365 checks passwords.
    Managed,
    /// Federated to idbridge (Microsoft's issuer is one of idbridge's).
    Idbridge,
    /// Federated to another identity provider.
    OtherProvider,
}

/// One of the tenant's domains as the admin needs to see it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DomainStatus {
    pub domain: String,
    pub sign_in: DomainSignIn,
    pub is_default: bool,
    pub is_initial: bool,
    pub is_verified: bool,
    /// The issuer Microsoft holds, when federated.
    pub issuer_uri: Option<String>,
    /// Where Microsoft's federation differs from idbridge's settings (federated to idbridge).
    pub drift: Vec<Drift>,
}

impl DomainStatus {
    /// `default`, `initial`, `unverified`: what sets the domain apart, for lists.
    pub fn flags(&self) -> Vec<&'static str> {
        [
            (self.is_default, "default"),
            (self.is_initial, "initial"),
            (!self.is_verified, "unverified"),
        ]
        .into_iter()
        .filter_map(|(set, flag)| set.then_some(flag))
        .collect()
    }
}

/// Who a change of a domain's sign-in affects: the Microsoft 365 users of the domain.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FederationPreview {
    pub domain: String,
    /// The tenant's default domain (new users get it): federating it needs a confirmation.
    pub is_default: bool,
    /// Bound to idbridge (they carry its immutable ID): they sign in through idbridge.
    pub bound: Vec<String>,
    /// Not bound: once the domain is federated they can no longer sign in.
    pub not_bound: Vec<String>,
}

/// How often `/readyz` has the federated domains checked against Microsoft (Graph reads: the
/// domain list and one federation per federated domain).
pub const FEDERATION_CHECK_EVERY: chrono::Duration = chrono::Duration::minutes(10);

/// The domains federated to idbridge as last checked, with their drift.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FederationCheck {
    pub checked_at: DateTime<Utc>,
    /// Domains federated to idbridge, each with what differs from idbridge's settings.
    pub domains: Vec<DomainStatus>,
    /// Why the check could not be made (Graph's answer), if it failed.
    pub error: Option<String>,
}

impl FederationCheck {
    /// Every federated domain matches idbridge's settings (or none is federated).
    pub fn ok(&self) -> bool {
        self.error.is_none() && self.domains.iter().all(|d| d.drift.is_empty())
    }
}

impl M365 {
    /// The last federation check, and whether a new one is due at `now`.
    pub fn federation_check(&self, now: DateTime<Utc>) -> (Option<FederationCheck>, bool) {
        let last = self
            .federation_check
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let due = last
            .as_ref()
            .is_none_or(|c| now - c.checked_at >= FEDERATION_CHECK_EVERY);
        (last, due)
    }

    /// Drops the last check: the next `/readyz` checks again (a domain's federation changed).
    fn forget_federation_check(&self) {
        *self
            .federation_check
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Checks the domains federated to idbridge against `settings` and keeps the result for
    /// [`M365::federation_check`].
    pub async fn check_federation(
        &self,
        settings: impl Fn(&str) -> FederationSettings,
        now: DateTime<Utc>,
    ) -> FederationCheck {
        // Marked checked first, so concurrent probes start one check, not one each.
        {
            let mut slot = self
                .federation_check
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let mut pending = slot.clone().unwrap_or(FederationCheck {
                checked_at: now,
                domains: Vec::new(),
                error: None,
            });
            pending.checked_at = now;
            *slot = Some(pending);
        }
        let check = match self.domain_statuses(settings).await {
            Ok(all) => FederationCheck {
                checked_at: now,
                domains: all
                    .into_iter()
                    .filter(|d| d.sign_in == DomainSignIn::Idbridge)
                    .collect(),
                error: None,
            },
            Err(e) => FederationCheck {
                checked_at: now,
                domains: Vec::new(),
                error: Some(e.to_string()),
            },
        };
        *self
            .federation_check
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(check.clone());
        check
    }

    /// The tenant's domains with how each signs in and, for those federated to idbridge, the
    /// drift from `settings` (by domain).
    pub async fn domain_statuses(
        &self,
        settings: impl Fn(&str) -> FederationSettings,
    ) -> Result<Vec<DomainStatus>, M365Error> {
        let domains = self.tenant_domains().await?;
        let mut out = Vec::with_capacity(domains.len());
        for d in domains {
            let federated = d.authentication_type.eq_ignore_ascii_case("Federated");
            let held = if federated {
                self.held_federation(&d.id).await?
            } else {
                None
            };
            let ours = settings(&d.id);
            let issuer = held
                .as_ref()
                .and_then(|h| h.get("issuerUri"))
                .and_then(Value::as_str)
                .map(str::to_string);
            let ours_held = held.as_ref().is_some_and(|h| ours.is_held_in(h));
            let sign_in = match (federated, ours_held) {
                (false, _) => DomainSignIn::Managed,
                (true, true) => DomainSignIn::Idbridge,
                (true, false) => DomainSignIn::OtherProvider,
            };
            let drift = match (&held, sign_in) {
                (Some(h), DomainSignIn::Idbridge) => ours.drift(h),
                _ => Vec::new(),
            };
            out.push(DomainStatus {
                domain: d.id,
                sign_in,
                is_default: d.is_default,
                is_initial: d.is_initial,
                is_verified: d.is_verified,
                issuer_uri: issuer,
                drift,
            });
        }
        Ok(out)
    }

    /// Who federating (or unfederating) `domain` affects: its Microsoft 365 users, bound to
    /// idbridge or not.
    pub async fn federation_preview(
        &self,
        domain: &str,
    ) -> Result<FederationPreview, FederationError> {
        let d = self.find_domain(domain).await?;
        self.preview_of(&d).await
    }

    /// [`M365::federation_preview`] of a domain already read from Graph.
    async fn preview_of(&self, d: &GraphDomain) -> Result<FederationPreview, FederationError> {
        let bound: HashSet<String> = self
            .store()
            .bound_m365_object_ids()
            .await?
            .into_iter()
            .collect();
        let graph = self.graph();
        let suffix = format!("@{}", d.id.to_lowercase());
        let users = self
            .call(|t| async move {
                let mut all = Vec::new();
                graph
                    .list_all_users(t.expose_secret(), PREVIEW_PAGE, |page| all.extend(page))
                    .await?;
                Ok(all)
            })
            .await
            .map_err(|e| e.during(GraphCall::ReadUsers))?;
        let mut preview = FederationPreview {
            domain: d.id.clone(),
            is_default: d.is_default,
            ..FederationPreview::default()
        };
        for user in users {
            let Some(upn) = user.user_principal_name.clone() else {
                continue;
            };
            if !upn.to_lowercase().ends_with(&suffix) {
                continue;
            }
            if bound.contains(&user.id) {
                preview.bound.push(upn);
            } else {
                preview.not_bound.push(upn);
            }
        }
        preview.bound.sort();
        preview.not_bound.sort();
        Ok(preview)
    }

    /// Federates `domain` to idbridge with `settings`, after the checks Microsoft makes and
    /// the admin's confirmations: `confirm_default` for the tenant's default domain,
    /// `confirm_unbound` when users of the domain are not bound (they could no longer sign
    /// in). Records `m365_domain_federated`.
    pub async fn federate_domain(
        &self,
        actor: &Actor,
        domain: &str,
        settings: &FederationSettings,
        confirm_default: bool,
        confirm_unbound: bool,
        now: DateTime<Utc>,
    ) -> Result<FederationPreview, FederationError> {
        let d = self.find_domain(domain).await?;
        if d.is_initial {
            return Err(FederationError::Initial(d.id));
        }
        if !d.is_verified {
            return Err(FederationError::Unverified(d.id));
        }
        if d.authentication_type.eq_ignore_ascii_case("Federated") {
            return Err(FederationError::AlreadyFederated(d.id));
        }
        if d.is_default && !confirm_default {
            return Err(FederationError::NeedsConfirmation {
                confirmation: Confirmation::DefaultDomain,
                message: format!(
                    "{} is the tenant's default domain: new users get it, and once it is federated every one of them signs in through idbridge. Confirm that this is meant",
                    d.id
                ),
            });
        }
        let preview = self.preview_of(&d).await?;
        if !preview.not_bound.is_empty() && !confirm_unbound {
            return Err(FederationError::NeedsConfirmation {
                confirmation: Confirmation::UsersNotBound,
                message: format!(
                    "{} user(s) of {} are not bound to idbridge and could no longer sign in to Microsoft 365 once it is federated: {}. Bind them first, or confirm",
                    preview.not_bound.len(),
                    d.id,
                    names(&preview.not_bound)
                ),
            });
        }
        let graph = self.graph();
        let body = settings.body();
        let created = self
            .call(|t| {
                let body = body.clone();
                let domain = d.id.clone();
                async move {
                    graph
                        .create_domain_federation(t.expose_secret(), &domain, &body)
                        .await
                }
            })
            .await
            .map_err(|e| e.during(GraphCall::FederateDomain))?;
        self.forget_federation_check();
        self.store()
            .record_federated_domain(&FederatedDomainRow {
                domain: d.id.to_lowercase(),
                issuer_uri: settings.issuer_uri.clone(),
                passive_sign_in_uri: settings.passive_sign_in_uri.clone(),
                federated_at: now.timestamp_millis(),
            })
            .await?;
        let event =
            NewEvent::new(now, actor, kind::M365_DOMAIN_FEDERATED, Some(&d.id)).details(json!({
                "issuerUri": settings.issuer_uri,
                "passiveSignInUri": settings.passive_sign_in_uri,
                "federationId": created.get("id"),
                "boundUsers": preview.bound.len(),
                "usersNotBound": preview.not_bound,
            }));
        self.store().record_event(&event).await?;
        Ok(preview)
    }

    /// Makes a federated `domain` managed again (Microsoft 365 checks passwords; users need a
    /// cloud password, which idbridge pushes to bound users at their next password change or
    /// sign-in). Needs `confirmed`; records `m365_domain_unfederated`.
    pub async fn unfederate_domain(
        &self,
        actor: &Actor,
        domain: &str,
        confirmed: bool,
        now: DateTime<Utc>,
    ) -> Result<FederationPreview, FederationError> {
        let d = self.find_domain(domain).await?;
        let held = match self.held_federation(&d.id).await? {
            Some(held) if d.authentication_type.eq_ignore_ascii_case("Federated") => held,
            _ => return Err(FederationError::NotFederated(d.id)),
        };
        let preview = self.preview_of(&d).await?;
        if !confirmed {
            return Err(FederationError::NeedsConfirmation {
                confirmation: Confirmation::Unfederate,
                message: format!(
                    "{} becomes managed: its {} user(s) then sign in with a Microsoft 365 password instead of idbridge ({} bound, whose passwords idbridge pushes at their next change or sign-in here). Microsoft may take up to 2 hours to switch. Confirm",
                    d.id,
                    preview.bound.len() + preview.not_bound.len(),
                    preview.bound.len()
                ),
            });
        }
        let Some(id) = held.get("id").and_then(Value::as_str).map(str::to_string) else {
            return Err(FederationError::M365(M365Error::Unreachable(
                "Microsoft's federation settings came without an id".into(),
            )));
        };
        let graph = self.graph();
        self.call(|t| {
            let domain = d.id.clone();
            let id = id.clone();
            async move {
                graph
                    .delete_domain_federation(t.expose_secret(), &domain, &id)
                    .await
            }
        })
        .await
        .map_err(|e| e.during(GraphCall::FederateDomain))?;
        self.forget_federation_check();
        self.store().forget_federated_domain(&d.id).await?;
        let event =
            NewEvent::new(now, actor, kind::M365_DOMAIN_UNFEDERATED, Some(&d.id)).details(json!({
                "issuerUri": held.get("issuerUri"),
                "boundUsers": preview.bound.len(),
                "usersNotBound": preview.not_bound.len(),
            }));
        self.store().record_event(&event).await?;
        Ok(preview)
    }

    /// Gives every domain federated to idbridge the certificates of `settings` (a rollover
    /// step): `signingCertificate`, and `nextSigningCertificate` (cleared when `None`).
    /// Returns the domains changed. A failure stops at that domain: the step is then not
    /// taken, and taking it again sets them all (the domains changed before it trust both the
    /// old and the new certificate either way, so no sign-in fails meanwhile).
    pub async fn set_federation_certificates(
        &self,
        settings: impl Fn(&str) -> FederationSettings,
    ) -> Result<Vec<String>, M365Error> {
        let mut changed = Vec::new();
        for d in self.tenant_domains().await? {
            if !d.authentication_type.eq_ignore_ascii_case("Federated") {
                continue;
            }
            let ours = settings(&d.id);
            let Some(held) = self.held_federation(&d.id).await? else {
                continue;
            };
            if !ours.is_held_in(&held) {
                continue;
            }
            let Some(id) = held.get("id").and_then(Value::as_str).map(str::to_string) else {
                continue;
            };
            let patch = json!({
                "signingCertificate": ours.signing_certificate,
                "nextSigningCertificate": ours.next_signing_certificate,
            });
            let graph = self.graph();
            let domain = d.id.clone();
            self.call(|t| {
                let (domain, id, patch) = (domain.clone(), id.clone(), patch.clone());
                async move {
                    graph
                        .update_domain_federation(t.expose_secret(), &domain, &id, &patch)
                        .await
                }
            })
            .await
            .map_err(|e| e.during(GraphCall::FederateDomain))?;
            changed.push(d.id);
        }
        self.forget_federation_check();
        Ok(changed)
    }

    /// The tenant's domains, read from Graph.
    async fn tenant_domains(&self) -> Result<Vec<GraphDomain>, M365Error> {
        let graph = self.graph();
        self.call(|t| async move { graph.list_domains(t.expose_secret()).await })
            .await
            .map_err(|e| e.during(GraphCall::ListDomains))
    }

    async fn find_domain(&self, domain: &str) -> Result<GraphDomain, FederationError> {
        self.tenant_domains()
            .await?
            .into_iter()
            .find(|d| d.id.eq_ignore_ascii_case(domain.trim()))
            .ok_or_else(|| FederationError::UnknownDomain(domain.trim().to_string()))
    }

    /// Microsoft's `internalDomainFederation` of a domain, if it has one.
    async fn held_federation(&self, domain: &str) -> Result<Option<Map<String, Value>>, M365Error> {
        let graph = self.graph();
        let domain = domain.to_string();
        self.call(|t| {
            let domain = domain.clone();
            async move { graph.domain_federation(t.expose_secret(), &domain).await }
        })
        .await
        .map_err(|e| e.during(GraphCall::ReadFederation))
    }
}

/// Up to ten names, then how many more.
fn names(list: &[String]) -> String {
    let mut text = list.iter().take(10).cloned().collect::<Vec<_>>().join(", ");
    if list.len() > 10 {
        text.push_str(&format!(" and {} more", list.len() - 10));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> FederationSettings {
        FederationSettings {
            issuer_uri: "https://idp.contoso.com".into(),
            passive_sign_in_uri: "https://idp.contoso.com/saml/sso".into(),
            sign_out_uri: "https://idp.contoso.com/saml/slo".into(),
            signing_certificate: "MIIC".into(),
            next_signing_certificate: None,
            signed_requests: false,
        }
    }

    #[test]
    fn what_is_sent_holds_no_drift_and_a_changed_property_is_drift() {
        let ours = settings();
        let Value::Object(mut held) = ours.body() else {
            panic!("an object");
        };
        held.insert("id".into(), json!("f1"));
        assert!(ours.drift(&held).is_empty());
        held.insert("signingCertificate".into(), json!("MIIOLD"));
        held.remove("promptLoginBehavior");
        let drift = ours.drift(&held);
        assert_eq!(
            drift
                .iter()
                .map(|d| d.property.as_str())
                .collect::<Vec<_>>(),
            ["signingCertificate", "promptLoginBehavior"]
        );
        assert_eq!(drift[0].microsoft.as_deref(), Some("MIIOLD"));
        assert_eq!(drift[1].microsoft, None);
    }

    #[test]
    fn during_a_rollover_microsoft_must_hold_the_other_certificate_as_next() {
        let mut ours = settings();
        ours.next_signing_certificate = Some("MIINEXT".into());
        let Value::Object(mut held) = ours.body() else {
            panic!("an object");
        };
        assert_eq!(held["nextSigningCertificate"], json!("MIINEXT"));
        assert!(ours.drift(&held).is_empty());
        held.insert("nextSigningCertificate".into(), Value::Null);
        let drift = ours.drift(&held);
        assert_eq!(drift.len(), 1);
        assert_eq!(drift[0].property, "nextSigningCertificate");
        // Outside a rollover whatever Microsoft holds as next is not drift.
        assert!(settings().drift(&held).is_empty());
        let text = ours.certificates_powershell("contoso.com");
        assert!(
            text.contains("-NextSigningCertificate \"MIINEXT\""),
            "{text}"
        );
        assert!(settings()
            .certificates_powershell("contoso.com")
            .contains("-NextSigningCertificate $null"));
    }

    #[test]
    fn the_powershell_names_the_domain_and_the_same_values() {
        let text = settings().powershell("contoso.com");
        assert!(text.contains("-DomainId \"contoso.com\""));
        assert!(text.contains("-IssuerUri \"https://idp.contoso.com\""));
        assert!(text.contains("-PromptLoginBehavior \"nativeSupport\""));
    }
}
