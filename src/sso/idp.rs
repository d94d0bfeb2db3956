//! The identity-provider flow: accept an AuthnRequest, sign the user in, check access, answer.
//!
//! Nothing here knows about HTTP; the handlers pass in decoded form values and cookies' tokens
//! and turn the outcomes into pages. Time is a parameter.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use secrecy::SecretString;
use serde_json::json;

use super::registry::{NameIdSource, ServiceProvider, ServiceProviders, PORTAL_TARGET};
use super::replay::{ReplayCache, ReplayError};
use super::session_cache::{CachedSession, SessionCache};
use crate::certs::rollover::SigningSet;
use crate::config::Config;
use crate::directory::{Directory, DirectoryError, User, UserState};
use crate::events::{kind, Actor, NewEvent};
use crate::m365::federation::{FederationSettings, KnownFederations};
use crate::mfa::{CodeOutcome, FactorKind, Factors, Mfa, TotpEnrolment};
use crate::saml::{
    self, AssertionParams, AuthnRequest, LogoutRequest, LogoutResponseParams, SamlError,
    SignatureAlgorithm, SigningCredential,
};
use crate::secrets::token_hash;
use crate::store::{PendingRequestRow, ReplayGuard, SessionRow, Store, StoreError, WriteBehind};
use crate::telemetry::metrics::{names, sp_kind};
use crate::throttle::{Locked, SignInThrottle, ThrottleError};

/// How long a parked AuthnRequest waits for the user to sign in.
const LOGIN_WINDOW_MINUTES: i64 = 15;

/// Why a SAML message is refused before any sign-in; shown to the user as a 400 page.
#[derive(Debug, thiserror::Error)]
pub enum SsoError {
    #[error("the SAML request could not be read: {0}")]
    Malformed(#[from] SamlError),
    #[error("the SAML request has no SAMLRequest value")]
    MissingRequest,
    #[error("the application {0:?} is not registered with idbridge")]
    UnknownServiceProvider(String),
    #[error("the SAML request asks for the response at {0:?}, which is not registered for this application")]
    AcsMismatch(String),
    #[error(
        "the SAML request asks for assertion consumer service index {0}, which is not registered"
    )]
    AcsIndexUnknown(u32),
    #[error("the SAML request asks for the response binding {0:?}; only HTTP-POST is supported")]
    UnsupportedBinding(String),
    #[error("the RelayState is longer than {0} bytes")]
    RelayStateTooLong(usize),
    #[error("the SAML request was issued at {0}, too long ago (or the clocks differ)")]
    Stale(String),
    #[error("the SAML request claims to be issued at {0}, in the future (check the clocks)")]
    FromFuture(String),
    #[error(
        "the SAML request {0:?} was already used; start the sign-in again from the application"
    )]
    Replayed(String),
    #[error("this sign-in page has expired or was opened in another browser; start the sign-in again from the application")]
    PendingExpired,
    #[error("the SAML request from {0:?} is refused: {1}")]
    BadSignature(String, SamlError),
    #[error(transparent)]
    Store(StoreError),
    /// More sign-ins are in flight than idbridge holds state for (the replay cache is full):
    /// HTTP 503, try again shortly.
    #[error("idbridge is too busy to answer this sign-in right now; try again in a moment")]
    Busy,
    #[error("could not build the SAML response: {0}")]
    Build(SamlError),
}

impl From<StoreError> for SsoError {
    fn from(err: StoreError) -> Self {
        SsoError::Store(err)
    }
}

impl From<ReplayError> for SsoError {
    fn from(err: ReplayError) -> Self {
        match err {
            ReplayError::Full(max_ids) => {
                tracing::warn!(max_ids, "the replay cache is full: a sign-in was refused with 503; raise [saml] replay_max_ids");
                SsoError::Busy
            }
            ReplayError::Store(e) => SsoError::Store(e),
        }
    }
}

impl From<ThrottleError> for SsoError {
    fn from(err: ThrottleError) -> Self {
        match err {
            ThrottleError::Store(e) => SsoError::Store(e),
        }
    }
}

impl SsoError {
    /// Whether the error is the requester's fault (a 400 page and a security event).
    pub fn is_bad_request(&self) -> bool {
        !matches!(
            self,
            SsoError::Store(_) | SsoError::Build(_) | SsoError::Busy
        )
    }
}

/// Why an authenticated user may not sign in to a service provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NotBound,
    Suspended,
    PasswordExpired,
}

impl Refusal {
    /// Stable code recorded in events.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::NotBound => "not_bound_to_m365",
            Refusal::Suspended => "suspended",
            Refusal::PasswordExpired => "password_expired",
        }
    }
}

/// A refusal as the user sees it: why, and what to quote to the helpdesk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusalNotice {
    pub refusal: Refusal,
    /// A short code, also in the `sso_access_refused` event's details (`reference`).
    pub reference: String,
    pub at: DateTime<Utc>,
}

impl RefusalNotice {
    /// `R-1A2B3C4D, 2026-12-02 14:03 UTC`: what the page shows to quote.
    pub fn quote(&self) -> String {
        format!(
            "{}, {}",
            self.reference,
            self.at.format("%Y-%m-%d %H:%M UTC")
        )
    }
}

/// A validated AuthnRequest, ready to be answered once the user is signed in.
#[derive(Debug, Clone)]
pub struct IncomingRequest {
    pub sp: Arc<ServiceProvider>,
    pub request_id: Option<String>,
    pub acs_url: String,
    pub relay_state: Option<String>,
    pub force_authn: bool,
    pub is_passive: bool,
    pub login_hint: Option<String>,
    /// Whether the request asked for multi-factor authentication (Microsoft's
    /// `multipleauthn` in RequestedAuthnContext).
    pub mfa_requested: bool,
    /// Who passed the first factor of this sign-in and when (ms), once they have.
    pub first_factor: Option<(String, i64)>,
    /// When a second factor of this sign-in passed (ms).
    pub mfa_at: Option<i64>,
    /// The request ID to remember when the request is first parked or answered; `None` once
    /// remembered. Written in the same transaction as that park or answer, so the hot path has
    /// one write.
    pub replay_guard: Option<ReplayGuard>,
}

impl IncomingRequest {
    /// Whether this sign-in is to idbridge's user portal rather than for a SAML request.
    pub fn is_portal(&self) -> bool {
        self.sp.entity_id == PORTAL_TARGET
    }
}

/// What to send the browser after a sign-in or a session hit.
#[derive(Debug)]
pub enum Answer {
    /// Auto-post `saml_response` (base64) and the RelayState to `url`.
    Post {
        url: String,
        saml_response: String,
        relay_state: Option<String>,
        sp_name: String,
    },
    /// Show the user why sign-in was refused; nothing goes to the service provider.
    Refused {
        notice: RefusalNotice,
        sp_name: String,
    },
}

/// The outcome of a login form submission.
#[derive(Debug)]
pub enum LoginOutcome {
    /// Wrong username or password (the page must not say which).
    Failed,
    /// Too many failed sign-ins for the typed name or from the address: refused without a
    /// password check, the same whether or not the account exists.
    Throttled(Locked),
    /// Correct password, but the account may not sign in at all.
    Refused(RefusalNotice),
    /// The password passed; [`IdentityProvider::next_step`] tells what comes next.
    PasswordPassed(Box<User>),
}

/// What a parked sign-in needs next.
#[derive(Debug)]
pub enum Step {
    /// The first factor (the password form).
    Password,
    /// A new password: the old one expired (`expired`) or an admin asked for a change.
    ChangePassword { user: Box<User>, expired: bool },
    /// A second factor the user has.
    SecondFactor { user: Box<User>, factors: Factors },
    /// The user must enrol an authenticator app before going on.
    Enrol {
        user: Box<User>,
        enrolment: Box<TotpEnrolment>,
    },
    /// The account may not sign in; the request is used up.
    Refused(RefusalNotice),
    /// Signed in: a new session with its cookie token.
    SignedIn {
        user: Box<User>,
        session: SessionRow,
        token: String,
    },
}

/// What a second-factor code did.
#[derive(Debug)]
pub enum CodeResult {
    /// Accepted; the sign-in goes on.
    Passed,
    /// Wrong, reused or not a code.
    Wrong,
    /// Too many wrong codes for this user or from this address.
    Throttled(Locked),
}

/// Settings of the flow taken from config once.
#[derive(Debug, Clone)]
struct Settings {
    issuer: String,
    domain_issuers: Vec<(String, String)>,
    session: Duration,
    assertion_lifetime: Duration,
    conditions_lifetime: Duration,
    skew: Duration,
    request_max_age: Duration,
    relay_state_max: usize,
    support_contact: String,
}

/// The SAML identity provider.
#[derive(Debug)]
pub struct IdentityProvider {
    store: Store,
    directory: Directory,
    /// Swapped whole when a rollover step changes the certificates (on any node).
    signing: std::sync::RwLock<Arc<Signing>>,
    /// The domains idbridge federated through Graph, with their issuers (any node).
    federations: std::sync::RwLock<Arc<KnownFederations>>,
    algorithm: SignatureAlgorithm,
    service_providers: ServiceProviders,
    settings: Settings,
    writes: WriteBehind,
    replay: ReplayCache,
    throttle: SignInThrottle,
    second_factor_throttle: SignInThrottle,
    mfa: Mfa,
    sessions: SessionCache,
    session_reads: CacheCounters,
}

/// The certificates in use and the metadata that publishes them.
#[derive(Debug)]
struct Signing {
    set: SigningSet,
    metadata: String,
}

impl Signing {
    fn new(config: &Config, set: SigningSet) -> Result<Self, crate::config::ConfigError> {
        let metadata = saml::idp_metadata(
            config.saml_issuer(),
            &format!("{}/saml/sso", config.base_url),
            &format!("{}/saml/slo", config.base_url),
            &set.published(),
        )
        .map_err(|e| crate::config::ConfigError::Invalid {
            setting: "saml.issuer".into(),
            problem: e.to_string(),
            fix: "use a plain URI without control characters".into(),
        })?;
        Ok(Self { set, metadata })
    }
}

/// Hits and misses of the session cache.
#[derive(Debug, Default)]
struct CacheCounters {
    hits: AtomicU64,
    misses: AtomicU64,
}

/// Most sessions held by the session cache; beyond it the cache starts over.
const SESSION_CACHE_MAX: usize = 100_000;

impl IdentityProvider {
    /// Builds the IdP; the metadata document is rendered once here.
    pub fn new(
        config: &Config,
        store: Store,
        directory: Directory,
        signing: SigningSet,
        writes: WriteBehind,
        replay: ReplayCache,
        mfa: Mfa,
    ) -> Result<Self, crate::config::ConfigError> {
        let algorithm = config.saml_signature_algorithm()?;
        let signing = std::sync::RwLock::new(Arc::new(Signing::new(config, signing)?));
        let federations = std::sync::RwLock::new(Arc::new(KnownFederations::default()));
        let s = &config.saml;
        Ok(Self {
            throttle: SignInThrottle::sso(store.clone(), config),
            second_factor_throttle: SignInThrottle::second_factor(store.clone(), config),
            mfa,
            store,
            directory,
            signing,
            federations,
            algorithm,
            service_providers: ServiceProviders::from_config(config),
            settings: Settings {
                issuer: config.saml_issuer().to_string(),
                domain_issuers: s
                    .domain_issuers
                    .iter()
                    .map(|(d, i)| (d.to_lowercase(), i.clone()))
                    .collect(),
                session: Duration::minutes(i64::from(s.session_minutes)),
                assertion_lifetime: Duration::seconds(i64::from(s.assertion_lifetime_seconds)),
                conditions_lifetime: Duration::seconds(i64::from(s.conditions_lifetime_seconds)),
                skew: Duration::seconds(i64::from(s.clock_skew_seconds)),
                request_max_age: Duration::seconds(i64::from(s.request_max_age_seconds)),
                relay_state_max: s.relay_state_max_bytes,
                support_contact: s.support_contact.clone(),
            },
            writes,
            replay,
            sessions: SessionCache::new(SESSION_CACHE_MAX),
            session_reads: CacheCounters::default(),
        })
    }

    /// Takes the request's ID in the replay cache (once per request); a second use is a replay.
    async fn remember(
        &self,
        request: &IncomingRequest,
        now: DateTime<Utc>,
    ) -> Result<(), SsoError> {
        match &request.replay_guard {
            Some(guard) if !self.replay.first_use(guard, now.timestamp_millis()).await? => {
                Err(SsoError::Replayed(guard.request_id.clone()))
            }
            _ => Ok(()),
        }
    }

    /// Waits until the queued assertion events are committed (tests and shutdown use it).
    pub async fn flush_events(&self) {
        self.writes.flush().await;
    }

    fn signing_state(&self) -> Arc<Signing> {
        self.signing
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The IdP metadata document (every published certificate).
    pub fn metadata(&self) -> String {
        self.signing_state().metadata.clone()
    }

    /// The credential Responses are signed with now.
    pub fn signing(&self) -> Arc<SigningCredential> {
        self.signing_state().set.current.clone()
    }

    /// The certificates in use and where their rollover stands.
    pub fn signing_set(&self) -> SigningSet {
        self.signing_state().set.clone()
    }

    /// The domains idbridge federated through Graph.
    pub fn federations(&self) -> Arc<KnownFederations> {
        self.federations
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Uses `known` from now on; whether it changed anything.
    pub fn use_federations(&self, known: KnownFederations) -> bool {
        if self.federations().same_as(&known) {
            return false;
        }
        *self.federations.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(known);
        true
    }

    /// The metadata of a domain with its own issuer (`[saml.domain_issuers]` or federated
    /// through Graph): that issuer as entity ID, the domain's sign-in URL. `None` for another
    /// domain (the general metadata serves it).
    pub fn domain_metadata(&self, config: &Config, domain: &str) -> Option<String> {
        let known = self.federations();
        let configured = self
            .settings
            .domain_issuers
            .iter()
            .any(|(d, _)| d.eq_ignore_ascii_case(domain.trim()));
        if known.get(domain).is_none() && !configured {
            return None;
        }
        let settings = self.federation_settings(config, domain);
        let set = self.signing_set();
        saml::idp_metadata(
            &settings.issuer_uri,
            &settings.passive_sign_in_uri,
            &settings.sign_out_uri,
            &set.published(),
        )
        .ok()
    }

    /// idbridge's settings for `domain` as it is federated (for drift and rollovers).
    pub fn federation_settings(&self, config: &Config, domain: &str) -> FederationSettings {
        self.signing_set()
            .federation_settings(config, domain, &self.federations())
    }

    /// idbridge's settings for federating `domain` now.
    pub fn new_federation_settings(&self, config: &Config, domain: &str) -> FederationSettings {
        self.signing_set().new_federation_settings(config, domain)
    }

    /// Signs with `set` from now on, unless it holds the same certificates; whether it
    /// changed anything.
    pub fn use_signing_set(
        &self,
        config: &Config,
        set: SigningSet,
    ) -> Result<bool, crate::config::ConfigError> {
        if self.signing_state().set.same_as(&set) {
            return Ok(false);
        }
        let next = Arc::new(Signing::new(config, set)?);
        *self.signing.write().unwrap_or_else(|e| e.into_inner()) = next;
        Ok(true)
    }

    /// The registered service providers.
    pub fn service_providers(&self) -> &ServiceProviders {
        &self.service_providers
    }

    /// The second-factor service.
    pub fn mfa(&self) -> &Mfa {
        &self.mfa
    }

    /// Whom refused users are told to ask.
    pub fn support_contact(&self) -> &str {
        &self.settings.support_contact
    }

    /// Decodes and checks an AuthnRequest. Nothing is written yet: the request ID goes into the
    /// replay cache when the request is parked or answered, and is accepted once only.
    ///
    /// `raw_query` is the HTTP-Redirect query as sent (`None` for HTTP-POST): a service
    /// provider that must sign its requests signs those octets (SAML bindings §3.4.4.1), or
    /// the request root itself with an enveloped signature for HTTP-POST.
    pub async fn receive_authn_request(
        &self,
        saml_request: Option<&str>,
        raw_query: Option<&str>,
        relay_state: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<IncomingRequest, SsoError> {
        let redirect_binding = raw_query.is_some();
        let encoded = saml_request
            .filter(|s| !s.trim().is_empty())
            .ok_or(SsoError::MissingRequest)?;
        if let Some(rs) = &relay_state {
            if rs.len() > self.settings.relay_state_max {
                return Err(SsoError::RelayStateTooLong(self.settings.relay_state_max));
            }
        }
        let xml = if redirect_binding {
            saml::decode_redirect(encoded)?
        } else {
            saml::decode_post(encoded)?
        };
        // One parse: the root whose signature is checked is the root the request is read from.
        let doc = saml::parse_document(&xml)?;
        let request = AuthnRequest::from_document(&doc)?;
        let sp = self
            .service_providers
            .get(&request.issuer)
            .ok_or_else(|| SsoError::UnknownServiceProvider(request.issuer.clone()))?;
        if sp.requires_signed_requests {
            let keys = sp.verification_keys.get().ok_or_else(|| {
                SsoError::BadSignature(
                    sp.entity_id.clone(),
                    saml::SamlError::Invalid {
                        field: "Signature",
                        reason: "no certificate is configured to check it".into(),
                    },
                )
            })?;
            let checked = match raw_query {
                Some(raw) => saml::verify::RedirectQuery::parse(raw, "SAMLRequest")
                    .and_then(|query| query.verify(&keys)),
                None => saml::verify::verify_enveloped(&doc, &keys),
            };
            checked.map_err(|e| SsoError::BadSignature(sp.entity_id.clone(), e))?;
        }
        if request.issue_instant > now + self.settings.skew {
            return Err(SsoError::FromFuture(request.issue_instant.to_rfc3339()));
        }
        if request.issue_instant < now - self.settings.request_max_age - self.settings.skew {
            return Err(SsoError::Stale(request.issue_instant.to_rfc3339()));
        }
        if let Some(binding) = &request.protocol_binding {
            if binding != saml::BINDING_HTTP_POST {
                return Err(SsoError::UnsupportedBinding(binding.clone()));
            }
        }
        // The ACS comes from the registry; a requested one is only used when registered.
        let acs_url = match (&request.acs_url, request.acs_index) {
            (Some(url), _) => sp
                .acs_urls
                .iter()
                .find(|u| *u == url)
                .cloned()
                .ok_or_else(|| SsoError::AcsMismatch(url.clone()))?,
            (None, Some(index)) => sp
                .acs_urls
                .get(index as usize)
                .cloned()
                .ok_or(SsoError::AcsIndexUnknown(index))?,
            (None, None) => sp
                .acs_urls
                .first()
                .cloned()
                .ok_or_else(|| SsoError::UnknownServiceProvider(sp.entity_id.clone()))?,
        };
        // Remember the ID until the request would be stale anyway.
        let expires = request.issue_instant
            + self.settings.request_max_age
            + self.settings.skew
            + self.settings.skew;
        let replay_guard = Some(ReplayGuard {
            sp_entity_id: sp.entity_id.clone(),
            request_id: request.id.clone(),
            expires_at: expires.timestamp_millis(),
        });
        Ok(IncomingRequest {
            sp,
            request_id: Some(request.id),
            acs_url,
            relay_state,
            force_authn: request.force_authn,
            is_passive: request.is_passive,
            login_hint: request.subject_name_id,
            mfa_requested: request
                .requested_authn_context
                .iter()
                .any(|c| c == saml::AC_MS_MULTIPLE_AUTHN),
            first_factor: None,
            mfa_at: None,
            replay_guard,
        })
    }

    /// Records a refused SAML message (a security event).
    pub async fn record_rejection(
        &self,
        error: &SsoError,
        endpoint: &'static str,
        client_ip: Option<String>,
        now: DateTime<Utc>,
    ) {
        metrics::counter!(names::SAML_REQUESTS_REJECTED, "endpoint" => endpoint).increment(1);
        let event = NewEvent::new(now, &Actor::Anonymous, kind::SAML_REQUEST_REJECTED, None)
            .details(json!({"endpoint": endpoint, "reason": error.to_string()}))
            .client_ip(client_ip);
        if let Err(err) = self.store.record_event(&event).await {
            tracing::warn!(%err, "could not record a rejected SAML request");
        }
    }

    /// Parks a request while the user signs in; returns the token for the login form.
    ///
    /// `browser_token` is the login cookie: the form is only accepted from the same browser,
    /// so a third party cannot sign a victim in to the attacker's account (login CSRF).
    pub async fn park(
        &self,
        request: &IncomingRequest,
        browser_token: &str,
        now: DateTime<Utc>,
    ) -> Result<String, SsoError> {
        let token = crate::secrets::new_token();
        let row = PendingRequestRow {
            id_hash: token_hash(&token),
            sp_entity_id: request.sp.entity_id.clone(),
            request_id: request.request_id.clone(),
            acs_url: request.acs_url.clone(),
            relay_state: request.relay_state.clone(),
            force_authn: i64::from(request.force_authn),
            login_hint: request.login_hint.clone(),
            browser_hash: token_hash(browser_token),
            created_at: now.timestamp_millis(),
            expires_at: (now + Duration::minutes(LOGIN_WINDOW_MINUTES)).timestamp_millis(),
            user_id: request.first_factor.as_ref().map(|(id, _)| id.clone()),
            authn_at: request.first_factor.as_ref().map(|(_, at)| *at),
            mfa_at: request.mfa_at,
            mfa_requested: i64::from(request.mfa_requested),
        };
        self.remember(request, now).await?;
        self.store.insert_pending_request(&row).await?;
        Ok(token)
    }

    /// A sign-in to the user portal, not yet parked: the same steps as a SAML sign-in
    /// (password, password change, second factor), ending in a session instead of an
    /// assertion, then at the portal page `after` (kept where a SAML sign-in keeps its ACS).
    pub fn portal_request(&self, login_hint: Option<String>, after: &str) -> IncomingRequest {
        IncomingRequest {
            sp: self.service_providers.portal(),
            request_id: None,
            acs_url: after.to_string(),
            relay_state: None,
            force_authn: false,
            is_passive: false,
            login_hint,
            mfa_requested: false,
            first_factor: None,
            mfa_at: None,
            replay_guard: None,
        }
    }

    /// Finds a parked request for a login form post from the same browser.
    pub async fn resume(
        &self,
        pending_token: &str,
        browser_token: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<IncomingRequest, SsoError> {
        let row = self
            .store
            .find_pending_request(&token_hash(pending_token), now.timestamp_millis())
            .await?
            .ok_or(SsoError::PendingExpired)?;
        let same_browser = browser_token.is_some_and(|b| {
            openssl::memcmp::eq(token_hash(b).as_bytes(), row.browser_hash.as_bytes())
        });
        if !same_browser {
            return Err(SsoError::PendingExpired);
        }
        let sp = if row.sp_entity_id == PORTAL_TARGET {
            self.service_providers.portal()
        } else {
            self.service_providers
                .get(&row.sp_entity_id)
                .ok_or_else(|| SsoError::UnknownServiceProvider(row.sp_entity_id.clone()))?
        };
        Ok(IncomingRequest {
            sp,
            request_id: row.request_id,
            acs_url: row.acs_url,
            relay_state: row.relay_state,
            force_authn: row.force_authn != 0,
            is_passive: false,
            login_hint: row.login_hint,
            mfa_requested: row.mfa_requested != 0,
            first_factor: row.user_id.zip(row.authn_at),
            mfa_at: row.mfa_at,
            replay_guard: None,
        })
    }

    /// Consumes a parked request so it is answered once; false when it was already used.
    pub async fn take_pending(&self, pending_token: &str) -> Result<bool, SsoError> {
        Ok(self
            .store
            .take_pending_request(&token_hash(pending_token))
            .await?)
    }

    /// Checks a username (or email) and password and opens a session; `sp` is the service
    /// provider the sign-in is for (`None`: the user portal).
    pub async fn login(
        &self,
        login: &str,
        password: &SecretString,
        sp: Option<&ServiceProvider>,
        client_ip: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<LoginOutcome, SsoError> {
        // Before any hashing: a locked name or address costs one indexed read, no argon2.
        // The attempt is counted here, before the password check, so concurrent guesses
        // cannot overrun the limit; the lock's start is the one event.
        if let Some(locked) = self
            .throttle
            .admit(login, client_ip.as_deref(), now)
            .await?
        {
            return Ok(LoginOutcome::Throttled(locked));
        }
        let user = match self.directory.authenticate(login, password).await {
            Ok(user) => user,
            Err(err) => {
                self.throttle.abandoned(login, client_ip.as_deref()).await?;
                return Err(match err {
                    crate::directory::DirectoryError::Store(e) => e.into(),
                    crate::directory::DirectoryError::Busy => SsoError::Busy,
                    other => SsoError::Store(StoreError::Corrupt(other.to_string())),
                });
            }
        };
        let Some(user) = user else {
            self.throttle.failed(login, client_ip.as_deref()).await?;
            // The typed name shows which account was targeted; it is capped so a password
            // typed into the wrong field is not kept whole.
            let target: String = login.trim().chars().take(128).collect();
            let event = NewEvent::new(
                now,
                &Actor::Anonymous,
                kind::SSO_LOGIN_FAILED,
                Some(&target),
            )
            .details(json!({
                "reason": "wrong username or password",
                "serviceProvider": sp.map(|s| s.entity_id.as_str()),
            }))
            .client_ip(client_ip.clone());
            self.store.record_event(&event).await?;
            return Ok(LoginOutcome::Failed);
        };
        self.throttle.succeeded(login, client_ip.as_deref()).await?;
        if user.state != UserState::Active {
            let notice = self
                .record_refusal(&user, sp, Refusal::Suspended, client_ip, now)
                .await?;
            return Ok(LoginOutcome::Refused(notice));
        }
        let event = NewEvent::new(
            now,
            &Actor::User(user.username.clone()),
            kind::SSO_LOGIN_SUCCESS,
            Some(&user.username),
        )
        .details(json!({"factor": "password", "serviceProvider": sp.map(|s| s.entity_id.as_str())}))
        .client_ip(client_ip);
        self.store.record_event(&event).await?;
        // Seed 000: idbridge becomes the password authority once the user signs in here; the
        // M365 account was created with a random password. An expired password is not
        // pushed: the user replaces it in the next step.
        if !self.directory.password_expired(&user, now) {
            if let Err(err) = self
                .directory
                .push_password_if_needed(&user, password, now)
                .await
            {
                tracing::warn!(user = %user.username, %err, "could not queue the password for Microsoft 365");
            }
        }
        Ok(LoginOutcome::PasswordPassed(Box::new(user)))
    }

    /// Records on a parked sign-in that `user_id` passed the first factor: the password, or
    /// a passkey (`with_mfa`: a passkey with user verification is two factors in one).
    pub async fn first_factor_passed(
        &self,
        pending_token: &str,
        browser_token: Option<&str>,
        user_id: &str,
        with_mfa: Option<FactorKind>,
        now: DateTime<Utc>,
    ) -> Result<IncomingRequest, SsoError> {
        let mut request = self.resume(pending_token, browser_token, now).await?;
        let at = now.timestamp_millis();
        let mfa_at = with_mfa.map(|_| at);
        if !self
            .store
            .set_pending_user(&token_hash(pending_token), user_id, at, mfa_at)
            .await?
        {
            return Err(SsoError::PendingExpired);
        }
        request.first_factor = Some((user_id.to_string(), at));
        request.mfa_at = mfa_at;
        Ok(request)
    }

    /// Records on a parked sign-in that its user passed a second factor (with an event).
    pub async fn second_factor_passed(
        &self,
        pending_token: &str,
        browser_token: Option<&str>,
        user: &User,
        factor: FactorKind,
        client_ip: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<IncomingRequest, SsoError> {
        let mut request = self.resume(pending_token, browser_token, now).await?;
        if request.first_factor.as_ref().map(|(id, _)| id) != Some(&user.id) {
            return Err(SsoError::PendingExpired);
        }
        let at = now.timestamp_millis();
        let event = NewEvent::new(
            now,
            &Actor::User(user.username.clone()),
            kind::MFA_PASSED,
            Some(&user.username),
        )
        .details(json!({"factor": factor.as_str(), "serviceProvider": request.sp.entity_id}))
        .client_ip(client_ip);
        if !self
            .store
            .set_pending_mfa(&token_hash(pending_token), &user.id, at, &event)
            .await?
        {
            return Err(SsoError::PendingExpired);
        }
        metrics::counter!(names::MFA_CHECKS, "factor" => factor.as_str(), "outcome" => "passed")
            .increment(1);
        request.mfa_at = Some(at);
        Ok(request)
    }

    /// The user who passed the first factor of a parked sign-in.
    pub async fn pending_user(&self, request: &IncomingRequest) -> Result<User, SsoError> {
        let Some((user_id, _)) = &request.first_factor else {
            return Err(SsoError::PendingExpired);
        };
        match self.directory.get_user(user_id).await {
            Ok(user) => Ok(user),
            Err(DirectoryError::NotFound(_)) => Err(SsoError::PendingExpired),
            Err(DirectoryError::Store(e)) => Err(e.into()),
            Err(other) => Err(SsoError::Store(StoreError::Corrupt(other.to_string()))),
        }
    }

    /// Whether a session must pass a second factor before answering this request: the
    /// request asks for MFA, or the policy requires it of the user, and the session has had
    /// only a password.
    pub fn needs_step_up(
        &self,
        request: &IncomingRequest,
        session: &SessionRow,
        user: &User,
    ) -> bool {
        session.mfa_at.is_none() && (request.mfa_requested || self.mfa.required_for(user))
    }

    /// Parks a request answered from a session that must first pass a second factor.
    pub async fn park_step_up(
        &self,
        request: &IncomingRequest,
        session: &SessionRow,
        browser_token: &str,
        now: DateTime<Utc>,
    ) -> Result<(String, IncomingRequest), SsoError> {
        let request = IncomingRequest {
            first_factor: Some((session.user_id.clone(), session.authn_instant)),
            ..request.clone()
        };
        let token = self.park(&request, browser_token, now).await?;
        Ok((token, request))
    }

    /// What a parked sign-in needs next; when nothing, signs the user in (once: the parked
    /// request is consumed) with a new session.
    pub async fn next_step(
        &self,
        pending_token: &str,
        request: &IncomingRequest,
        client_ip: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<Step, SsoError> {
        let Some((_, authn_at)) = request.first_factor.clone() else {
            return Ok(Step::Password);
        };
        let user = self.pending_user(request).await?;
        if user.state != UserState::Active {
            let _ = self.take_pending(pending_token).await?;
            let notice = self
                .record_refusal(&user, Some(&request.sp), Refusal::Suspended, client_ip, now)
                .await?;
            return Ok(Step::Refused(notice));
        }
        let expired = self.directory.password_expired(&user, now);
        if expired || user.must_change_password {
            return Ok(Step::ChangePassword {
                user: Box::new(user),
                expired,
            });
        }
        let factors = self.mfa.factors(&user.id).await.map_err(mfa_error)?;
        let needed = request.mfa_requested || self.mfa.required_for(&user) || factors.any();
        if needed && request.mfa_at.is_none() {
            if factors.any() || factors.recovery_codes > 0 {
                return Ok(Step::SecondFactor {
                    user: Box::new(user),
                    factors,
                });
            }
            let enrolment = self
                .mfa
                .totp_enrolment(&user, now)
                .await
                .map_err(mfa_error)?;
            return Ok(Step::Enrol {
                user: Box::new(user),
                enrolment: Box::new(enrolment),
            });
        }
        if !self.take_pending(pending_token).await? {
            return Err(SsoError::PendingExpired);
        }
        let (session, token) = self
            .open_session(&user, authn_at, request.mfa_at, client_ip, now)
            .await?;
        Ok(Step::SignedIn {
            user: Box::new(user),
            session,
            token,
        })
    }

    /// Opens an idbridge session for a user who passed every step of a sign-in: the first
    /// factor at `authn_at` (ms) and a second one at `mfa_at`. Returns it with its cookie
    /// token.
    pub async fn open_session(
        &self,
        user: &User,
        authn_at: i64,
        mfa_at: Option<i64>,
        client_ip: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<(SessionRow, String), SsoError> {
        let token = crate::secrets::new_token();
        let session = SessionRow {
            id_hash: token_hash(&token),
            user_id: user.id.clone(),
            session_index: saml::new_id(),
            authn_instant: authn_at,
            created_at: now.timestamp_millis(),
            expires_at: (now + self.settings.session).timestamp_millis(),
            mfa_at,
        };
        let event = NewEvent::new(
            now,
            &Actor::User(user.username.clone()),
            kind::SSO_SESSION_START,
            Some(&user.username),
        )
        .details(json!({"multiFactor": mfa_at.is_some()}))
        .client_ip(client_ip);
        self.store.insert_session(&session, &event).await?;
        Ok((session, token))
    }

    /// Checks a second-factor code (TOTP or recovery code) for a parked sign-in, throttled
    /// per user and per address like passwords; returns the parked sign-in as it now stands.
    pub async fn check_second_factor(
        &self,
        pending_token: &str,
        browser_token: Option<&str>,
        code: &str,
        client_ip: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<(CodeResult, IncomingRequest), SsoError> {
        let request = self.resume(pending_token, browser_token, now).await?;
        let user = self.pending_user(&request).await?;
        let ip = client_ip.as_deref();
        if let Some(locked) = self.second_factor_throttle.admit(&user.id, ip, now).await? {
            return Ok((CodeResult::Throttled(locked), request));
        }
        let outcome = match self.mfa.check_code(&user, code, now).await {
            Ok(outcome) => outcome,
            Err(err) => {
                self.second_factor_throttle.abandoned(&user.id, ip).await?;
                return Err(mfa_error(err));
            }
        };
        match outcome {
            CodeOutcome::Passed(factor) => {
                self.second_factor_throttle.succeeded(&user.id, ip).await?;
                let request = self
                    .second_factor_passed(
                        pending_token,
                        browser_token,
                        &user,
                        factor,
                        client_ip,
                        now,
                    )
                    .await?;
                Ok((CodeResult::Passed, request))
            }
            CodeOutcome::Wrong => {
                self.second_factor_throttle.failed(&user.id, ip).await?;
                self.record_mfa_failure(
                    &user,
                    "code",
                    "wrong or already used code",
                    client_ip,
                    now,
                )
                .await?;
                Ok((CodeResult::Wrong, request))
            }
        }
    }

    /// Confirms the enrolment of an authenticator app during a sign-in with its first code;
    /// on success the sign-in has passed its second factor and the user gets recovery codes.
    pub async fn confirm_enrolment(
        &self,
        pending_token: &str,
        browser_token: Option<&str>,
        code: &str,
        client_ip: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<Option<Vec<String>>, SsoError> {
        let request = self.resume(pending_token, browser_token, now).await?;
        let user = self.pending_user(&request).await?;
        let ip = client_ip.as_deref();
        if self
            .second_factor_throttle
            .admit(&user.id, ip, now)
            .await?
            .is_some()
        {
            return Ok(None);
        }
        match self.mfa.confirm_totp(&user, code, now).await {
            Ok(true) => {
                self.second_factor_throttle.succeeded(&user.id, ip).await?;
            }
            Ok(false) => {
                self.second_factor_throttle.failed(&user.id, ip).await?;
                self.record_mfa_failure(
                    &user,
                    "totp",
                    "wrong code confirming an authenticator app",
                    client_ip,
                    now,
                )
                .await?;
                return Ok(None);
            }
            Err(err) => {
                self.second_factor_throttle.abandoned(&user.id, ip).await?;
                return Err(mfa_error(err));
            }
        }
        self.second_factor_passed(
            pending_token,
            browser_token,
            &user,
            FactorKind::Totp,
            client_ip,
            now,
        )
        .await?;
        let codes = self
            .mfa
            .new_recovery_codes(&Actor::User(user.username.clone()), &user, now)
            .await
            .map_err(mfa_error)?;
        Ok(Some(codes))
    }

    /// Sets the new password of the user of a parked sign-in (expired, or an admin asked
    /// for a change); the policy is enforced by the directory, which pushes the password to
    /// Microsoft 365 and unblocks an account blocked for expiry.
    pub async fn change_password(
        &self,
        pending_token: &str,
        browser_token: Option<&str>,
        password: &SecretString,
        now: DateTime<Utc>,
    ) -> Result<Result<(), DirectoryError>, SsoError> {
        let request = self.resume(pending_token, browser_token, now).await?;
        let user = self.pending_user(&request).await?;
        let actor = Actor::User(user.username.clone());
        match self
            .directory
            .set_password_by(
                &actor,
                &user.id,
                password,
                crate::directory::PasswordChange::AtSignIn,
                now,
            )
            .await
        {
            Ok(()) => Ok(Ok(())),
            Err(DirectoryError::Store(e)) => Err(e.into()),
            Err(DirectoryError::Busy) => Err(SsoError::Busy),
            Err(other) => Ok(Err(other)),
        }
    }

    /// Records a wrong second-factor code or enrolment confirmation (a security event).
    ///
    /// `factor` labels the metric: `totp`, `passkey`, or `code` when a typed code may have been
    /// a TOTP or a recovery code.
    pub async fn record_mfa_failure(
        &self,
        user: &User,
        factor: &'static str,
        reason: &str,
        client_ip: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<(), SsoError> {
        metrics::counter!(names::MFA_CHECKS, "factor" => factor, "outcome" => "failed")
            .increment(1);
        let event = NewEvent::new(
            now,
            &Actor::Anonymous,
            kind::MFA_FAILED,
            Some(&user.username),
        )
        .details(json!({"reason": reason}))
        .client_ip(client_ip);
        self.store.record_event(&event).await?;
        Ok(())
    }

    /// The live session and its user for a session cookie token: from the session cache, or
    /// one query that fills it.
    pub async fn session_user(
        &self,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<CachedSession>, SsoError> {
        let id_hash = token_hash(token);
        let now_ms = now.timestamp_millis();
        // Read before the query: a change committed during it leaves the entry stale.
        let epoch = self.store.change_epoch();
        if let Some(hit) = self.sessions.get(&id_hash, epoch, now_ms) {
            self.session_reads.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(hit));
        }
        self.session_reads.misses.fetch_add(1, Ordering::Relaxed);
        let Some(row) = self.store.find_session_user(&id_hash, now_ms).await? else {
            return Ok(None);
        };
        let session = SessionRow {
            id_hash,
            user_id: row.user.id.clone(),
            session_index: row.session_index,
            authn_instant: row.authn_instant,
            created_at: row.authn_instant,
            expires_at: row.session_expires_at,
            mfa_at: row.session_mfa_at,
        };
        let user = User::from_row(row.user)
            .map_err(|e| SsoError::Store(StoreError::Corrupt(e.to_string())))?;
        let entry = Arc::new((session, user));
        self.sessions.put(epoch, entry.clone());
        Ok(Some(entry))
    }

    /// Sessions answered from the cache and from the database since start.
    pub fn session_cache_stats(&self) -> (u64, u64) {
        (
            self.session_reads.hits.load(Ordering::Relaxed),
            self.session_reads.misses.load(Ordering::Relaxed),
        )
    }

    /// How many answered request IDs the replay cache holds in memory.
    pub fn replay_ids_held(&self) -> usize {
        self.replay.remembered()
    }

    fn account_refusal(&self, user: &User, now: DateTime<Utc>) -> Option<Refusal> {
        if user.state != UserState::Active {
            Some(Refusal::Suspended)
        } else if self.directory.password_expired(user, now) {
            Some(Refusal::PasswordExpired)
        } else {
            None
        }
    }

    async fn record_refusal(
        &self,
        user: &User,
        sp: Option<&ServiceProvider>,
        refusal: Refusal,
        client_ip: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<RefusalNotice, SsoError> {
        let code: String = crate::secrets::random_bytes::<4>()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect();
        let notice = RefusalNotice {
            refusal,
            reference: format!("R-{code}"),
            at: now,
        };
        let event = NewEvent::new(
            now,
            &Actor::User(user.username.clone()),
            kind::SSO_ACCESS_REFUSED,
            Some(&user.username),
        )
        .details(json!({
            "reason": refusal.code(),
            "serviceProvider": sp.map(|s| s.entity_id.clone()),
            "reference": notice.reference,
        }))
        .client_ip(client_ip);
        self.store.record_event(&event).await?;
        metrics::counter!(names::SSO_REFUSALS, "reason" => refusal.code()).increment(1);
        Ok(notice)
    }

    /// Answers a request for a signed-in user: a signed Response, or a refusal page.
    ///
    /// The user is re-read for every answer, so a suspension or unbinding takes effect at once
    /// even for an existing session.
    pub async fn answer(
        &self,
        request: &IncomingRequest,
        session: &SessionRow,
        user: &User,
        client_ip: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<Answer, SsoError> {
        let sp = &request.sp;
        let refusal = self.account_refusal(user, now).or_else(|| {
            let bound = user.m365.as_ref().is_some_and(|b| b.state.signs_in());
            (sp.requires_m365_binding && !bound).then_some(Refusal::NotBound)
        });
        if let Some(refusal) = refusal {
            let notice = self
                .record_refusal(user, Some(sp), refusal, client_ip, now)
                .await?;
            return Ok(Answer::Refused {
                notice,
                sp_name: sp.name.clone(),
            });
        }
        let (name_id, issuer, attributes) = self.subject_of(sp, user);
        let authn_instant = Utc
            .timestamp_millis_opt(session.authn_instant)
            .single()
            .unwrap_or(now);
        let params = AssertionParams {
            issuer: &issuer,
            destination: &request.acs_url,
            audience: &sp.entity_id,
            in_response_to: request.request_id.as_deref(),
            name_id: &name_id,
            name_id_format: sp.name_id.format(),
            attributes: &attributes,
            authn_instant,
            session_index: &session.session_index,
            // Microsoft's documented class for federated MFA, so Entra with
            // federatedIdpMfaBehavior = acceptIfMfaDoneByFederatedIdp does not ask again.
            authn_context_class_ref: if session.mfa_at.is_some() {
                saml::AC_MS_MULTIPLE_AUTHN
            } else {
                saml::AC_PASSWORD_PROTECTED_TRANSPORT
            },
            now,
            not_before_skew: self.settings.skew,
            subject_lifetime: self.settings.assertion_lifetime,
            conditions_lifetime: self.settings.conditions_lifetime,
        };
        let signing = self.signing();
        let xml = saml::build_signed_response(&params, &signing, self.algorithm)
            .map_err(SsoError::Build)?;
        let event = NewEvent::new(
            now,
            &Actor::User(user.username.clone()),
            kind::SSO_ASSERTION_ISSUED,
            Some(&user.username),
        )
        .details(json!({
            "serviceProvider": sp.entity_id,
            "inResponseTo": request.request_id,
            "nameIdFormat": sp.name_id.format(),
        }))
        .client_ip(client_ip);
        // The request ID is taken before the response leaves: a replay gets nothing.
        self.remember(request, now).await?;
        self.writes.record_event(event).await;
        metrics::counter!(names::SSO_RESPONSES, "sp" => sp_kind(sp.is_m365)).increment(1);
        Ok(Answer::Post {
            url: request.acs_url.clone(),
            saml_response: saml::encode_post(&xml),
            relay_state: request.relay_state.clone(),
            sp_name: sp.name.clone(),
        })
    }

    /// NameID, Issuer and attributes for a user at a service provider.
    fn subject_of(
        &self,
        sp: &ServiceProvider,
        user: &User,
    ) -> (String, String, Vec<(String, Vec<String>)>) {
        let binding = user.m365.as_ref();
        let name_id = match sp.name_id {
            NameIdSource::ImmutableId => binding.map(|b| b.immutable_id.clone()),
            NameIdSource::Username => Some(user.username.clone()),
            NameIdSource::Email => Some(user.email.clone()),
        }
        .unwrap_or_default();
        if sp.is_m365 {
            let upn = binding
                .map(|b| b.user_principal_name.clone())
                .unwrap_or_else(|| user.email.clone());
            let issuer = self.issuer_for_upn(&upn);
            (name_id, issuer, vec![("IDPEmail".to_string(), vec![upn])])
        } else {
            let attributes = sp
                .attributes
                .iter()
                .filter_map(|(saml_name, attr)| {
                    user.attribute(attr).map(|v| (saml_name.clone(), vec![v]))
                })
                .collect();
            (name_id, self.settings.issuer.clone(), attributes)
        }
    }

    /// The Issuer for a user: Entra matches it against the federated domain of the user's UPN,
    /// so a domain with its own issuer URI gets that one.
    /// Configured (`[saml.domain_issuers]`) first, then the issuer idbridge gave the domain
    /// when it federated it, else the one issuer (a domain federated by hand).
    fn issuer_for_upn(&self, upn: &str) -> String {
        let domain = upn.rsplit('@').next().unwrap_or_default().to_lowercase();
        self.settings
            .domain_issuers
            .iter()
            .find(|(d, _)| *d == domain)
            .map(|(_, i)| i.clone())
            .or_else(|| {
                self.federations()
                    .get(&domain)
                    .map(|r| r.issuer_uri.clone())
            })
            .unwrap_or_else(|| self.settings.issuer.clone())
    }

    /// Answers IsPassive when the user would have to sign in: a NoPassive status to the ACS.
    pub async fn passive_failure(
        &self,
        request: &IncomingRequest,
        now: DateTime<Utc>,
    ) -> Result<Answer, SsoError> {
        self.remember(request, now).await?;
        let xml = saml::build_status_response(
            &self.settings.issuer,
            &request.acs_url,
            request.request_id.as_deref(),
            saml::STATUS_RESPONDER,
            Some(saml::STATUS_NO_PASSIVE),
            Some("The user is not signed in to idbridge"),
            now,
        )
        .map_err(SsoError::Build)?;
        Ok(Answer::Post {
            url: request.acs_url.clone(),
            saml_response: saml::encode_post(&xml),
            relay_state: request.relay_state.clone(),
            sp_name: request.sp.name.clone(),
        })
    }

    /// Handles a LogoutRequest: ends the browser's session only when the request names it, and
    /// for a service provider with a logout URL returns a signed LogoutResponse to post there.
    ///
    /// SAML core §3.7.3.2: the IdP ends the session(s) identified by the NameID and the
    /// SessionIndex of the request. A third-party page can make the browser send any
    /// unsigned LogoutRequest, so one that does not name this browser's own session (the
    /// cookie's) ends nothing and is recorded as `saml_logout_refused`.
    ///
    /// Where the SP's certificate is configured its signature is required and checked first
    /// (SAML profiles §4.4.4.1 asks for signed LogoutRequests); Microsoft 365 sends them
    /// unsigned, so without `saml.m365_certificate_file` it keeps the rule above alone.
    pub async fn logout(
        &self,
        message: &LogoutMessage,
        session_token: Option<&str>,
        client_ip: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<LogoutOutcome, SsoError> {
        let (saml_request, relay_state) = match message {
            LogoutMessage::Redirect(query) => (query.message.as_deref(), query.relay_state.clone()),
            LogoutMessage::Post {
                saml_request,
                relay_state,
            } => (Some(saml_request.as_str()), relay_state.clone()),
        };
        let saml_request = saml_request.ok_or(SsoError::MissingRequest)?;
        if relay_state
            .as_ref()
            .is_some_and(|r| r.len() > self.settings.relay_state_max)
        {
            return Err(SsoError::RelayStateTooLong(self.settings.relay_state_max));
        }
        let xml = match message {
            LogoutMessage::Redirect(_) => saml::decode_redirect(saml_request)?,
            LogoutMessage::Post { .. } => saml::decode_post(saml_request)?,
        };
        // One parse: the root whose signature is checked is the root the request is read from.
        let doc = saml::parse_document(&xml)?;
        let request = LogoutRequest::from_document(&doc)?;
        let sp = self
            .service_providers
            .get(&request.issuer)
            .ok_or_else(|| SsoError::UnknownServiceProvider(request.issuer.clone()))?;
        if let Some(keys) = sp.verification_keys.get() {
            let checked = match message {
                LogoutMessage::Redirect(query) => query.verify(&keys),
                LogoutMessage::Post { .. } => saml::verify::verify_enveloped(&doc, &keys),
            };
            checked.map_err(|e| SsoError::BadSignature(sp.entity_id.clone(), e))?;
        }
        let current = match session_token {
            Some(token) => self.session_user(token, now).await?,
            None => None,
        };
        let refusal = match current.as_deref() {
            None => Some("no idbridge session in this browser"),
            Some((session, user)) => {
                let (name_id, _, _) = self.subject_of(&sp, user);
                if request.name_id.as_deref() != Some(name_id.as_str()) || name_id.is_empty() {
                    Some("the NameID is not the signed-in user's")
                } else if !request.session_indexes.contains(&session.session_index) {
                    Some("the SessionIndex is not this browser's session")
                } else {
                    None
                }
            }
        };
        if let Some(reason) = refusal {
            let event = NewEvent::new(now, &Actor::Anonymous, kind::SAML_LOGOUT_REFUSED, None)
                .details(json!({"serviceProvider": sp.entity_id, "reason": reason}))
                .client_ip(client_ip);
            self.store.record_event(&event).await?;
            return Ok(LogoutOutcome::Refused);
        }
        let mut issuer = self.settings.issuer.clone();
        if let Some((session, user)) = current.as_deref() {
            if let Some(binding) = &user.m365 {
                issuer = self.issuer_for_upn(&binding.user_principal_name);
            }
            let event = NewEvent::new(
                now,
                &Actor::User(user.username.clone()),
                kind::SSO_LOGOUT,
                Some(&user.username),
            )
            .details(json!({"serviceProvider": sp.entity_id}))
            .client_ip(client_ip);
            self.store.delete_session(&session.id_hash, &event).await?;
        }
        // The LogoutResponse goes only to the registered SLO URL, never to one from the request.
        let Some(slo_url) = sp.slo_url.clone() else {
            return Ok(LogoutOutcome::Ended(None));
        };
        let xml = saml::build_logout_response(
            &LogoutResponseParams {
                issuer: &issuer,
                destination: &slo_url,
                in_response_to: &request.id,
                now,
            },
            &self.signing(),
            self.algorithm,
        )
        .map_err(SsoError::Build)?;
        Ok(LogoutOutcome::Ended(Some(Answer::Post {
            url: slo_url,
            saml_response: saml::encode_post(&xml),
            relay_state,
            sp_name: sp.name.clone(),
        })))
    }
}

/// A LogoutRequest as it arrived, in one of the two bindings.
#[derive(Debug, Clone)]
pub enum LogoutMessage {
    /// HTTP-Redirect: the query string split, keeping the raw octets its signature covers.
    Redirect(saml::RedirectQuery),
    /// HTTP-POST: the form fields (a signature, if any, is inside the XML).
    Post {
        /// The `SAMLRequest` field (base64).
        saml_request: String,
        /// The `RelayState` field.
        relay_state: Option<String>,
    },
}

/// What a LogoutRequest did.
#[derive(Debug)]
pub enum LogoutOutcome {
    /// The named session ended; the LogoutResponse to post, if the SP has a logout URL.
    Ended(Option<Answer>),
    /// The request did not name this browser's session: nothing ended.
    Refused,
}

/// Maps a second-factor failure into the flow's errors.
fn mfa_error(err: crate::mfa::MfaError) -> SsoError {
    match err {
        crate::mfa::MfaError::Store(e) => SsoError::Store(e),
        other => SsoError::Store(StoreError::Corrupt(other.to_string())),
    }
}
