//! The OAuth2 connection to one Microsoft 365 tenant: consent (authorization code + PKCE +
//! state), or an app registration's own credentials (client credentials with a secret or a
//! certificate); tokens sealed at rest, refreshed and rotated; state shown to admins.

use std::path::Path;
use std::sync::Arc;

use base64::engine::general_purpose::{STANDARD as BASE64, URL_SAFE_NO_PAD as B64URL};
use base64::Engine;
use chrono::{DateTime, Utc};
use oauth2::basic::{
    BasicErrorResponse, BasicErrorResponseType, BasicRevocationErrorResponse,
    BasicTokenIntrospectionResponse, BasicTokenType,
};
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet,
    EndpointSet, ExtraTokenFields, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken,
    RequestTokenError, Scope, StandardRevocableToken, StandardTokenResponse, TokenResponse,
    TokenUrl,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::graph::{GraphClient, GraphError, RetryPolicy};
use super::permissions::{self, GrantMode, MissingPermission};
use super::registration::{
    AppRegistration, ClientCredential, FileRegistration, RegistrationChange, RegistrationError,
    MULTI_TENANT,
};
use crate::config::{Config, M365Config};
use crate::events::{kind, Actor, NewEvent};
use crate::secrets::token_hash;
use crate::secrets::{SecretBox, SecretError};
use crate::store::{ConnectionRow, Store, StoreError};

/// Delegated Graph permissions asked for at consent: every permission idbridge uses (least
/// privilege for import, bind, sync and session revocation).
const DELEGATED_PERMISSIONS: [&str; 4] = [
    permissions::USER_READ_WRITE.name,
    permissions::PASSWORD_PROFILE.name,
    permissions::DOMAIN_READ.name,
    permissions::REVOKE_SESSIONS.name,
];
/// How long an admin has to finish consent at Microsoft.
const CONSENT_WINDOW_MINUTES: i64 = 10;
/// Refresh access tokens this long before they expire.
const EXPIRY_MARGIN_MS: i64 = 120_000;

/// Why a connection operation failed; messages tell the admin what to do.
#[derive(Debug, thiserror::Error)]
pub enum M365Error {
    #[error("Microsoft 365 is not configured: {0} is missing. Fix: enter it under App registration on the console's Microsoft 365 page (or PUT /api/v1/m365/app-registration), or set it in the [m365] section of idbridge.toml (see README.md, Connecting Microsoft 365)")]
    NotConfigured(&'static str),
    #[error("Microsoft 365 is not connected. Fix: run `idbridge m365 connect`")]
    NotConnected,
    #[error("the Microsoft 365 connection was deactivated. Fix: run `idbridge m365 connect` to connect again, then bind users again")]
    Deactivated,
    #[error("the Microsoft 365 connection needs to be reconnected: {0}. Fix: run `idbridge m365 connect` again")]
    Reconnect(String),
    #[error(
        "the consent link is unknown, used or expired; start again with `idbridge m365 connect`"
    )]
    UnknownState,
    #[error("Microsoft refused the connection: {0}")]
    Refused(String),
    #[error("could not reach the Microsoft identity platform: {0}")]
    Unreachable(String),
    /// Boxed: Graph errors carry Graph's code, message and request id.
    #[error(transparent)]
    Graph(Box<GraphError>),
    /// A Graph failure of a known call: the message names the call and, for a 403, the
    /// permission to grant.
    #[error("{}", call.explain(error))]
    Call {
        call: permissions::GraphCall,
        error: Box<GraphError>,
    },
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A sync round stopped before sending (the server is stopping, or this node's lease on
    /// the changes ran out): nothing was sent, and the changes are due again for any node.
    #[error("not sent: {0}")]
    Interrupted(&'static str),
}

impl M365Error {
    /// The same failure, naming the Graph call it happened in.
    pub fn during(self, call: permissions::GraphCall) -> Self {
        match self {
            M365Error::Graph(error) => M365Error::Call { call, error },
            other => other,
        }
    }
}

impl From<GraphError> for M365Error {
    fn from(err: GraphError) -> Self {
        M365Error::Graph(Box::new(err))
    }
}

/// The connection as admins see it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionStatus {
    /// `not_connected`, `connected`, `reconnect` or `deactivated`.
    pub state: String,
    pub mode: Option<String>,
    pub tenant_id: Option<String>,
    pub default_domain: Option<String>,
    pub connected_at: Option<String>,
    pub connected_by: Option<String>,
    pub last_error: Option<String>,
    /// The Graph permissions the token grants; `None` when they could not be read.
    pub granted_permissions: Option<Vec<String>>,
    /// Permissions idbridge uses that the token lacks, with what stops working without each.
    pub missing_permissions: Vec<MissingPermission>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
struct IdTokenField {
    #[serde(default)]
    id_token: Option<String>,
}
impl ExtraTokenFields for IdTokenField {}

type MsTokenResponse = StandardTokenResponse<IdTokenField, BasicTokenType>;
type MsClient = oauth2::Client<
    BasicErrorResponse,
    MsTokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// An access token held in memory between calls.
struct CachedToken {
    token: SecretString,
    expires_at: i64,
    /// The connection it belongs to (its `connected_at`): a reconnect made on another node
    /// makes it stale.
    connected_at: Option<i64>,
}

/// The Microsoft 365 integration: connection, tokens and the Graph client.
pub struct M365 {
    store: Store,
    secrets: SecretBox,
    graph: GraphClient,
    http: reqwest::Client,
    login_base_url: String,
    graph_resource: String,
    redirect_uri: String,
    /// The app registration's values from the file and the environment.
    file_registration: FileRegistration,
    /// The app registration in effect (the file's values, else the console's); replaced
    /// when an admin changes it here or on another node.
    registration: std::sync::RwLock<Arc<AppRegistration>>,
    /// The default tenant when neither the file nor the console names one.
    default_tenant: String,
    /// Subject of a certificate credential generated in the console.
    certificate_name: String,
    cached: tokio::sync::Mutex<Option<CachedToken>>,
    /// This node's name: the owner of the import runs it starts.
    pub(crate) node: String,
    /// The last check of the domains federated to idbridge, for `/readyz`.
    pub(crate) federation_check: std::sync::Mutex<Option<super::federation::FederationCheck>>,
}

impl std::fmt::Debug for M365 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("M365")
            .field("login_base_url", &self.login_base_url)
            .field("registration", &self.registration())
            .finish_non_exhaustive()
    }
}

/// Why the M365 settings cannot be used at start-up.
#[derive(Debug, thiserror::Error)]
pub enum M365SetupError {
    #[error("{setting}: {problem}. Fix: {fix}")]
    Setting {
        setting: &'static str,
        problem: String,
        fix: &'static str,
    },
    #[error(transparent)]
    Secret(#[from] SecretError),
}

pub(super) fn setting_error(
    setting: &'static str,
    problem: impl ToString,
    fix: &'static str,
) -> M365SetupError {
    M365SetupError::Setting {
        setting,
        problem: problem.to_string(),
        fix,
    }
}

/// Reads a secret file that must be private to idbridge (the check is shared with `[smtp]`).
pub(super) fn read_private_file(
    setting: &'static str,
    path: &Path,
) -> Result<Vec<u8>, M365SetupError> {
    crate::config::read_private_file(setting, path).map_err(|err| match err {
        crate::config::ConfigError::Invalid { problem, .. } => setting_error(
            setting,
            problem,
            "name an existing file readable by idbridge and by nobody else (`chmod 600`)",
        ),
        other => setting_error(setting, other, "check the path"),
    })
}

/// The key that seals tokens and queued passwords at rest: `m365.token_key`, else the key
/// file (created mode 0600 on first use).
pub fn data_key(config: &Config) -> Result<SecretBox, M365SetupError> {
    let m = &config.m365;
    Ok(match &m.token_key {
        Some(key) => SecretBox::from_base64(key)?,
        None => SecretBox::load_or_create(
            &m.token_key_file
                .clone()
                .unwrap_or_else(|| config.data_dir.join("token.key")),
        )?,
    })
}

impl M365 {
    /// Builds the integration from config: the token key (created on first use), the client
    /// credential if configured, and the Graph client.
    pub fn new(config: &Config, store: Store) -> Result<Self, M365SetupError> {
        let m = &config.m365;
        let secrets = data_key(config)?;
        let file_registration = FileRegistration::from_config(config)?;
        let default_tenant = M365Config::default().tenant;
        let registration = file_registration
            .effective(None, &secrets, &default_tenant)
            .map_err(|e| setting_error("m365", e, "check the [m365] section"))?;
        let certificate_name = format!(
            "idbridge {}",
            url::Url::parse(&config.base_url)
                .ok()
                .and_then(|u| u.host_str().map(str::to_string))
                .unwrap_or_else(|| "app registration".into())
        );
        let policy = RetryPolicy {
            max_attempts: m.sync.graph_max_attempts.max(1),
            base_delay: std::time::Duration::from_millis(m.sync.graph_retry_base_ms),
            ..RetryPolicy::default()
        };
        let graph = GraphClient::new(&m.graph_base_url, policy).map_err(|e| {
            setting_error("m365.graph_base_url", e, "use the Graph URL of your cloud")
        })?;
        let graph_resource = url::Url::parse(&m.graph_base_url)
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_else(|_| "https://graph.microsoft.com".into());
        let http = reqwest::Client::builder()
            // The token endpoint must never be followed elsewhere (oauth2 crate advice).
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| setting_error("m365.login_base_url", e, "check the TLS setup"))?;
        Ok(Self {
            store,
            secrets,
            graph,
            http,
            login_base_url: m.login_base_url.clone(),
            graph_resource,
            redirect_uri: format!("{}/m365/callback", config.base_url),
            file_registration,
            registration: std::sync::RwLock::new(Arc::new(registration)),
            default_tenant,
            certificate_name,
            cached: tokio::sync::Mutex::new(None),
            node: config.node_name(),
            federation_check: std::sync::Mutex::new(None),
        })
    }

    /// The Graph client (every Graph call goes through it).
    pub fn graph(&self) -> &GraphClient {
        &self.graph
    }

    /// The redirect URI to register in the app registration.
    pub fn redirect_uri(&self) -> &str {
        &self.redirect_uri
    }

    /// The app registration in effect now.
    pub fn registration(&self) -> Arc<AppRegistration> {
        self.registration
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the app registration entered in the console (by an admin on any node) and uses
    /// it when it changed; whether it did.
    pub async fn load_registration(&self) -> Result<bool, RegistrationError> {
        let stored = self.store.app_registration().await?;
        let stamp = stored.as_ref().map(|r| r.updated_at);
        if stamp == self.registration().stored_at {
            return Ok(false);
        }
        let registration = self.file_registration.effective(
            stored.as_ref(),
            &self.secrets,
            &self.default_tenant,
        )?;
        self.use_registration(registration).await;
        Ok(true)
    }

    async fn use_registration(&self, registration: AppRegistration) {
        *self.registration.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(registration);
        // A token of the previous app registration must not be used for the new one.
        *self.cached.lock().await = None;
    }

    /// Changes the app registration as an admin asked (values set in the file stay as they
    /// are and cannot be changed here); takes effect at once, on other nodes within seconds.
    pub async fn change_registration(
        &self,
        change: RegistrationChange,
        actor: &Actor,
        client_ip: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<Arc<AppRegistration>, RegistrationError> {
        let stored = self.store.app_registration().await?;
        let (row, changed) = self.file_registration.apply(
            stored.as_ref(),
            change,
            &self.secrets,
            &self.certificate_name,
            &actor.to_string(),
            now,
        )?;
        let registration =
            self.file_registration
                .effective(Some(&row), &self.secrets, &self.default_tenant)?;
        let event = NewEvent::new(now, actor, kind::M365_APP_REGISTRATION_CHANGED, None)
            .details(json!({
                "changed": changed,
                "tenant": registration.tenant,
                "clientId": registration.client_id,
                "credential": registration.credential_kind().map(|k| k.as_str()),
                "certificateThumbprint": registration.certificate.as_ref().map(|c| c.thumbprint.clone()),
            }))
            .client_ip(client_ip);
        self.store.save_app_registration(&row, &event).await?;
        self.use_registration(registration).await;
        Ok(self.registration())
    }

    fn client(&self, tenant: &str) -> Result<MsClient, M365Error> {
        let reg = self.registration();
        let client_id = reg
            .client_id
            .clone()
            .ok_or(M365Error::NotConfigured("the application (client) ID"))?;
        let base = format!("{}/{}/oauth2/v2.0", self.login_base_url, tenant);
        let bad = |e: url::ParseError| M365Error::Refused(format!("invalid endpoint URL: {e}"));
        let client = oauth2::Client::new(ClientId::new(client_id))
            .set_auth_uri(AuthUrl::new(format!("{base}/authorize")).map_err(bad)?)
            .set_token_uri(TokenUrl::new(format!("{base}/token")).map_err(bad)?)
            .set_redirect_uri(RedirectUrl::new(self.redirect_uri.clone()).map_err(bad)?)
            .set_auth_type(AuthType::RequestBody);
        Ok(match &reg.credential {
            Some(ClientCredential::Secret(secret)) => {
                client.set_client_secret(ClientSecret::new(secret.expose_secret().to_string()))
            }
            _ => client,
        })
    }

    fn token_url(&self, tenant: &str) -> String {
        format!("{}/{}/oauth2/v2.0/token", self.login_base_url, tenant)
    }

    /// Token-request parameters that authenticate with the certificate (none with a secret).
    fn assertion_params(&self, tenant: &str) -> Result<Vec<(&'static str, String)>, M365Error> {
        Ok(match self.client_assertion(tenant)? {
            Some(assertion) => vec![
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".to_string(),
                ),
                ("client_assertion", assertion),
            ],
            None => Vec::new(),
        })
    }

    /// The client assertion for certificate credentials (RFC 7523 JWT, RS256), or none.
    fn client_assertion(&self, tenant: &str) -> Result<Option<String>, M365Error> {
        let reg = self.registration();
        let Some(ClientCredential::Certificate { cert_der, key }) = &reg.credential else {
            return Ok(None);
        };
        let client_id = reg
            .client_id
            .clone()
            .ok_or(M365Error::NotConfigured("the application (client) ID"))?;
        let now = Utc::now().timestamp();
        let header = json!({
            "alg": "RS256",
            "typ": "JWT",
            "x5t": B64URL.encode(openssl::sha::sha1(cert_der)),
            "x5t#S256": B64URL.encode(openssl::sha::sha256(cert_der)),
        });
        let claims = json!({
            "aud": self.token_url(tenant),
            "iss": client_id,
            "sub": client_id,
            "jti": crate::directory::new_record_id(),
            "nbf": now,
            "iat": now,
            "exp": now + 600,
        });
        let signing_input = format!(
            "{}.{}",
            B64URL.encode(header.to_string()),
            B64URL.encode(claims.to_string())
        );
        let crypto = |e: openssl::error::ErrorStack| {
            M365Error::Refused(format!("signing the client assertion failed: {e}"))
        };
        let mut signer = openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), key)
            .map_err(crypto)?;
        signer.update(signing_input.as_bytes()).map_err(crypto)?;
        let signature = signer.sign_to_vec().map_err(crypto)?;
        Ok(Some(format!(
            "{signing_input}.{}",
            B64URL.encode(signature)
        )))
    }

    fn require_credential(&self) -> Result<(), M365Error> {
        match self.registration().problem() {
            Some(problem) => Err(problem),
            None => Ok(()),
        }
    }

    fn delegated_scopes(&self) -> Vec<Scope> {
        ["openid", "profile", "offline_access"]
            .iter()
            .map(|s| Scope::new(s.to_string()))
            .chain(
                DELEGATED_PERMISSIONS
                    .iter()
                    .map(|p| Scope::new(format!("{}/{p}", self.graph_resource))),
            )
            .collect()
    }

    /// Starts admin consent: returns the Microsoft sign-in URL to open. The state and the PKCE
    /// verifier are kept (sealed) for 10 minutes and used once.
    pub async fn begin_connect(
        &self,
        actor: &Actor,
        now: DateTime<Utc>,
    ) -> Result<String, M365Error> {
        self.require_credential()?;
        let client = self.client(&self.registration().tenant)?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state) = client
            .authorize_url(CsrfToken::new_random)
            .add_scopes(self.delegated_scopes())
            .set_pkce_challenge(challenge)
            .add_extra_param("response_mode", "query")
            .add_extra_param("prompt", "select_account")
            .url();
        let sealed = self.secrets.seal(
            &SecretString::from(verifier.secret().to_string()),
            "m365.pkce_verifier",
        )?;
        self.store
            .insert_oauth_state(
                &token_hash(state.secret()),
                &sealed,
                &actor.to_string(),
                now.timestamp_millis(),
                (now + chrono::Duration::minutes(CONSENT_WINDOW_MINUTES)).timestamp_millis(),
            )
            .await?;
        Ok(url.to_string())
    }

    /// Finishes consent from Microsoft's redirect: checks the state, redeems the code with the
    /// PKCE verifier, stores the sealed tokens and reads the tenant's default domain.
    pub async fn complete_connect(
        &self,
        code: Option<&str>,
        state: Option<&str>,
        error: Option<&str>,
        error_description: Option<&str>,
        client_ip: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<ConnectionStatus, M365Error> {
        let taken = match state {
            Some(s) => {
                self.store
                    .take_oauth_state(&token_hash(s), now.timestamp_millis())
                    .await?
            }
            None => None,
        };
        let Some((sealed_verifier, actor)) = taken else {
            self.record_failure(None, "unknown, used or expired state", client_ip, now)
                .await;
            return Err(M365Error::UnknownState);
        };
        if let Some(error) = error {
            let reason = format!("{error}: {}", error_description.unwrap_or("no description"));
            self.record_failure(Some(&actor), &reason, client_ip, now)
                .await;
            return Err(M365Error::Refused(reason));
        }
        let Some(code) = code else {
            self.record_failure(Some(&actor), "no authorization code", client_ip, now)
                .await;
            return Err(M365Error::Refused(
                "Microsoft returned no authorization code".into(),
            ));
        };
        let verifier = self.secrets.open(&sealed_verifier, "m365.pkce_verifier")?;
        let tenant = self.registration().tenant.clone();
        let client = self.client(&tenant)?;
        let mut request = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .set_pkce_verifier(PkceCodeVerifier::new(verifier.expose_secret().to_string()));
        for (name, value) in self.assertion_params(&tenant)? {
            request = request.add_extra_param(name, value);
        }
        let response = match request.request_async(&self.http).await {
            Ok(r) => r,
            Err(err) => {
                let err = token_error(err);
                self.record_failure(Some(&actor), &err.to_string(), client_ip, now)
                    .await;
                return Err(err);
            }
        };
        let tenant_id = response
            .extra_fields()
            .id_token
            .as_deref()
            .and_then(tenant_of_id_token)
            .unwrap_or(tenant);
        self.store_tokens("delegated", &tenant_id, &response, &actor, now)
            .await
    }

    /// Connects with the app registration's own credentials (application permissions).
    pub async fn connect_application(
        &self,
        actor: &Actor,
        now: DateTime<Utc>,
    ) -> Result<ConnectionStatus, M365Error> {
        self.require_credential()?;
        let tenant = self.registration().tenant.clone();
        if MULTI_TENANT.contains(&tenant.as_str()) {
            return Err(M365Error::NotConfigured(
                "the tenant (client-credentials mode needs your tenant ID or a verified domain, not organizations)",
            ));
        }
        let response = self.client_credentials_token(&tenant).await?;
        self.store_tokens("application", &tenant, &response, &actor.to_string(), now)
            .await
    }

    async fn client_credentials_token(&self, tenant: &str) -> Result<MsTokenResponse, M365Error> {
        let client = self.client(tenant)?;
        let mut request = client
            .exchange_client_credentials()
            .add_scope(Scope::new(format!("{}/.default", self.graph_resource)));
        for (name, value) in self.assertion_params(tenant)? {
            request = request.add_extra_param(name, value);
        }
        request.request_async(&self.http).await.map_err(token_error)
    }

    async fn store_tokens(
        &self,
        mode: &str,
        tenant_id: &str,
        response: &MsTokenResponse,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<ConnectionStatus, M365Error> {
        let access = SecretString::from(response.access_token().secret().to_string());
        let expires_at = expiry(response, now);
        let refresh = response
            .refresh_token()
            .map(|r| {
                self.secrets.seal(
                    &SecretString::from(r.secret().to_string()),
                    "m365.refresh_token",
                )
            })
            .transpose()?;
        // The default domain helps admins check they connected the right tenant.
        let default_domain = match self.graph.list_domains(access.expose_secret()).await {
            Ok(domains) => domains.into_iter().find(|d| d.is_default).map(|d| d.id),
            Err(err) => {
                tracing::warn!(%err, "connected, but could not read the tenant's domains");
                None
            }
        };
        let granted = granted_of(response);
        let row = ConnectionRow {
            granted_permissions: granted,
            mode: mode.into(),
            state: "connected".into(),
            tenant_id: Some(tenant_id.to_string()),
            default_domain: default_domain.clone(),
            connected_at: Some(now.timestamp_millis()),
            connected_by: Some(actor.to_string()),
            access_token_enc: Some(self.secrets.seal(&access, "m365.access_token")?),
            access_token_expires_at: Some(expires_at),
            refresh_token_enc: refresh,
            last_error: None,
            updated_at: now.timestamp_millis(),
        };
        let event = NewEvent {
            at: now,
            actor: actor.to_string(),
            event_type: kind::M365_CONNECT,
            target: Some(tenant_id.to_string()),
            details: json!({"mode": mode, "defaultDomain": default_domain}),
            client_ip: None,
        };
        self.store.save_m365_connection(&row, Some(&event)).await?;
        *self.cached.lock().await = Some(CachedToken {
            token: access,
            expires_at,
            connected_at: row.connected_at,
        });
        self.status().await
    }

    async fn record_failure(
        &self,
        actor: Option<&str>,
        reason: &str,
        ip: Option<String>,
        now: DateTime<Utc>,
    ) {
        let event = NewEvent {
            at: now,
            actor: actor.unwrap_or("anonymous").to_string(),
            event_type: kind::M365_CONNECT_FAILED,
            target: None,
            details: json!({"reason": reason}),
            client_ip: ip,
        };
        if let Err(err) = self.store.record_event(&event).await {
            tracing::warn!(%err, "could not record a failed connection attempt");
        }
    }

    /// The connection as admins see it.
    pub async fn status(&self) -> Result<ConnectionStatus, M365Error> {
        let Some(row) = self.store.m365_connection().await? else {
            return Ok(ConnectionStatus {
                state: "not_connected".into(),
                mode: None,
                tenant_id: None,
                default_domain: None,
                connected_at: None,
                connected_by: None,
                last_error: None,
                granted_permissions: None,
                missing_permissions: Vec::new(),
            });
        };
        let granted: Option<Vec<String>> = row
            .granted_permissions
            .as_deref()
            .map(|g| g.split_whitespace().map(str::to_string).collect());
        // Only a live connection lacks anything: a dropped one has no token to read.
        let missing = match (&granted, row.state.as_str()) {
            (Some(g), "connected") => {
                permissions::missing_permissions(g, GrantMode::from_mode(&row.mode))
            }
            _ => Vec::new(),
        };
        Ok(ConnectionStatus {
            state: match row.state.as_str() {
                "reauthorize" => "reconnect".into(),
                other => other.into(),
            },
            mode: Some(row.mode),
            tenant_id: row.tenant_id,
            default_domain: row.default_domain,
            connected_at: row.connected_at.map(crate::directory::millis_to_rfc3339),
            connected_by: row.connected_by,
            last_error: row.last_error,
            granted_permissions: granted,
            missing_permissions: missing,
        })
    }

    /// A valid access token: cached, stored, or refreshed (delegated: refresh token, rotated;
    /// application: a new client-credentials token). A refused refresh marks the connection
    /// "reconnect" and records an event.
    pub async fn access_token(&self, now: DateTime<Utc>) -> Result<SecretString, M365Error> {
        let mut cached = self.cached.lock().await;
        let now_ms = now.timestamp_millis();
        // The row is read every time, so a deactivation or reconnect made on another node (or
        // by the CLI) stops this node's use of its cached token at once.
        let row = self
            .store
            .m365_connection()
            .await?
            .ok_or(M365Error::NotConnected)?;
        match row.state.as_str() {
            "connected" => {}
            "deactivated" => {
                *cached = None;
                return Err(M365Error::Deactivated);
            }
            _ => {
                *cached = None;
                return Err(M365Error::Reconnect(
                    row.last_error
                        .unwrap_or_else(|| "the token was refused".into()),
                ));
            }
        }
        if let Some(c) = cached.as_ref() {
            if c.connected_at == row.connected_at && c.expires_at - EXPIRY_MARGIN_MS > now_ms {
                return Ok(c.token.clone());
            }
        }
        if let (Some(enc), Some(expires)) = (&row.access_token_enc, row.access_token_expires_at) {
            if expires - EXPIRY_MARGIN_MS > now_ms {
                let token = self.secrets.open(enc, "m365.access_token")?;
                *cached = Some(CachedToken {
                    token: token.clone(),
                    expires_at: expires,
                    connected_at: row.connected_at,
                });
                return Ok(token);
            }
        }
        let tenant = row
            .tenant_id
            .clone()
            .unwrap_or_else(|| self.registration().tenant.clone());
        let result = if row.mode == "application" {
            self.client_credentials_token(&tenant).await
        } else {
            let refresh = match &row.refresh_token_enc {
                Some(enc) => self.secrets.open(enc, "m365.refresh_token")?,
                None => {
                    return Err(M365Error::Reconnect("no refresh token is stored".into()));
                }
            };
            let client = self.client(&tenant)?;
            let refresh_token = RefreshToken::new(refresh.expose_secret().to_string());
            let mut request = client
                .exchange_refresh_token(&refresh_token)
                .add_scopes(self.delegated_scopes());
            for (name, value) in self.assertion_params(&tenant)? {
                request = request.add_extra_param(name, value);
            }
            request.request_async(&self.http).await.map_err(token_error)
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(M365Error::Refused(_)) => "refused",
            Err(_) => "error",
        };
        metrics::counter!(
            crate::telemetry::metrics::names::TOKEN_REFRESHES,
            "outcome" => outcome
        )
        .increment(1);
        let response = match result {
            Ok(r) => r,
            Err(M365Error::Refused(reason)) => {
                // The grant is gone (revoked, expired, admin changed): only a new consent helps.
                let event = NewEvent::new(
                    now,
                    &Actor::System,
                    kind::M365_TOKEN_REFRESH_FAILED,
                    row.tenant_id.as_deref(),
                )
                .details(json!({"reason": reason}));
                let marked = self
                    .store
                    .mark_m365_reauthorize(&reason, row.connected_at, now_ms, &event)
                    .await?;
                if !marked {
                    // Deactivated or reconnected meanwhile: that change stands.
                    *cached = None;
                    return Err(self.changed_meanwhile().await);
                }
                *cached = None;
                return Err(M365Error::Reconnect(reason));
            }
            Err(other) => return Err(other),
        };
        let access = SecretString::from(response.access_token().secret().to_string());
        let expires_at = expiry(&response, now);
        // Microsoft returns a new refresh token with each use: keep only the newest.
        let refresh_enc = match response.refresh_token() {
            Some(r) => Some(self.secrets.seal(
                &SecretString::from(r.secret().to_string()),
                "m365.refresh_token",
            )?),
            None => row.refresh_token_enc.clone(),
        };
        let refreshed_for = row.connected_at;
        let updated = ConnectionRow {
            // Consent or app permissions may have changed since the last token.
            granted_permissions: granted_of(&response).or(row.granted_permissions.clone()),
            access_token_enc: Some(self.secrets.seal(&access, "m365.access_token")?),
            access_token_expires_at: Some(expires_at),
            refresh_token_enc: refresh_enc,
            last_error: None,
            updated_at: now_ms,
            ..row
        };
        // Only the token columns, and only if nobody deactivated or reconnected meanwhile.
        if !self
            .store
            .save_refreshed_m365_tokens(&updated, refreshed_for)
            .await?
        {
            *cached = None;
            return Err(self.changed_meanwhile().await);
        }
        *cached = Some(CachedToken {
            token: access.clone(),
            expires_at,
            connected_at: refreshed_for,
        });
        Ok(access)
    }

    /// Why a refreshed token was not stored: the connection changed while it was refreshed.
    async fn changed_meanwhile(&self) -> M365Error {
        match self.store.m365_connection().await {
            Ok(Some(row)) if row.state == "deactivated" => M365Error::Deactivated,
            Ok(None) => M365Error::NotConnected,
            Ok(Some(_)) => M365Error::Reconnect(
                "the connection changed while its token was being refreshed; the next request uses the new one".into(),
            ),
            Err(err) => err.into(),
        }
    }

    /// Runs a Graph call with a valid token; on 401 the token is refreshed once and the call
    /// retried (tokens can be revoked before they expire).
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T, M365Error>
    where
        F: Fn(SecretString) -> Fut,
        Fut: std::future::Future<Output = Result<T, GraphError>>,
    {
        let token = self.access_token(Utc::now()).await?;
        match f(token).await {
            Err(GraphError::Unauthorized { .. }) => {
                self.forget_access_token().await?;
                let token = self.access_token(Utc::now()).await?;
                Ok(f(token).await?)
            }
            other => Ok(other?),
        }
    }

    async fn forget_access_token(&self) -> Result<(), M365Error> {
        *self.cached.lock().await = None;
        if let Some(row) = self.store.m365_connection().await? {
            let row = ConnectionRow {
                access_token_enc: None,
                access_token_expires_at: None,
                ..row
            };
            self.store.save_m365_connection(&row, None).await?;
        }
        Ok(())
    }

    /// Deactivates the connection (seed 003): users stay active in Microsoft 365 and in
    /// idbridge; every binding is cleared; tokens are dropped. Returns the bindings cleared.
    pub async fn deactivate(&self, actor: &Actor, now: DateTime<Utc>) -> Result<u64, M365Error> {
        let row = self
            .store
            .m365_connection()
            .await?
            .ok_or(M365Error::NotConnected)?;
        let bindings = self.store.bound_user_ids().await?.len();
        let event = NewEvent::new(now, actor, kind::M365_DEACTIVATE, row.tenant_id.as_deref())
            .details(json!({"bindingsCleared": bindings}));
        let cleared = self
            .store
            .deactivate_m365(now.timestamp_millis(), &event)
            .await?;
        *self.cached.lock().await = None;
        Ok(cleared)
    }

    /// The tenant ID of the live connection.
    pub async fn tenant_id(&self) -> Result<String, M365Error> {
        let row = self
            .store
            .m365_connection()
            .await?
            .ok_or(M365Error::NotConnected)?;
        row.tenant_id.ok_or(M365Error::NotConnected)
    }

    /// The store (for the import).
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }
}

/// Shared handle.
pub type SharedM365 = Arc<M365>;

fn expiry(response: &MsTokenResponse, now: DateTime<Utc>) -> i64 {
    let seconds = response
        .expires_in()
        .map(|d| d.as_secs() as i64)
        .unwrap_or(3600);
    now.timestamp_millis() + seconds * 1000
}

/// The permissions a token response grants, space-separated (see
/// [`permissions::granted_permissions`]).
fn granted_of(response: &MsTokenResponse) -> Option<String> {
    let scope = response.scopes().map(|scopes| {
        scopes
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    });
    permissions::granted_permissions(response.access_token().secret(), scope.as_deref())
        .map(|g| g.join(" "))
}

/// The `tid` claim of an ID token received directly from the token endpoint over TLS (OpenID
/// Connect Core 3.1.3.7 lets the TLS server check stand in for the signature check here).
fn tenant_of_id_token(id_token: &str) -> Option<String> {
    let payload = id_token.split('.').nth(1)?;
    let bytes = B64URL
        .decode(payload.trim_end_matches('='))
        .or_else(|_| BASE64.decode(payload))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("tid")?.as_str().map(str::to_string)
}

fn token_error<RE: std::error::Error + 'static>(
    err: RequestTokenError<RE, BasicErrorResponse>,
) -> M365Error {
    match err {
        RequestTokenError::ServerResponse(resp) => {
            let description = resp
                .error_description()
                .cloned()
                .unwrap_or_else(|| resp.error().to_string());
            match resp.error() {
                BasicErrorResponseType::InvalidGrant
                | BasicErrorResponseType::InvalidClient
                | BasicErrorResponseType::UnauthorizedClient
                | BasicErrorResponseType::InvalidScope => {
                    M365Error::Refused(format!("{}: {description}", resp.error()))
                }
                // Transient answers (temporarily_unavailable, server_error) are not a refusal.
                BasicErrorResponseType::Extension(code)
                    if code == "temporarily_unavailable" || code == "server_error" =>
                {
                    M365Error::Unreachable(format!("{code}: {description}"))
                }
                other => M365Error::Refused(format!("{other}: {description}")),
            }
        }
        RequestTokenError::Request(e) => M365Error::Unreachable(e.to_string()),
        RequestTokenError::Parse(e, _) => {
            M365Error::Unreachable(format!("unexpected token response: {e}"))
        }
        RequestTokenError::Other(e) => M365Error::Unreachable(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_is_read_from_the_id_token() {
        let payload = B64URL.encode(r#"{"tid":"72f988bf-86f1-41af-91ab-2d7cd011db47","oid":"x"}"#);
        let token = format!("e30.{payload}.sig");
        assert_eq!(
            tenant_of_id_token(&token).as_deref(),
            Some("72f988bf-86f1-41af-91ab-2d7cd011db47")
        );
        assert_eq!(tenant_of_id_token("garbage"), None);
    }
}
