//! Typed configuration: a TOML file plus `IDBRIDGE_*` environment overrides.
//!
//! Every setting has a default so that `idbridge serve` works with no file at all. A bad or
//! missing setting stops start-up with one line naming the setting and the fix.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::directory::PasswordPolicy;
use crate::saml::verify::MAX_CERTIFICATE_FILE_BYTES;
use crate::saml::VerificationKeys;

/// The default config file, read when it exists and no other file is named.
pub const DEFAULT_CONFIG_FILE: &str = "idbridge.toml";

/// Why the configuration cannot be used; the message names the setting and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration error: {setting}: {problem}. Fix: {fix}")]
    Invalid {
        setting: String,
        problem: String,
        fix: String,
    },
    #[error("configuration error: cannot read {path}: {source}. Fix: check the path given with --config or IDBRIDGE_CONFIG")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn invalid(setting: &str, problem: impl Into<String>, fix: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting: setting.to_string(),
        problem: problem.into(),
        fix: fix.into(),
    }
}

/// The whole configuration of one idbridge node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Public base URL, used in metadata, redirects and as the default SAML issuer
    /// (default: `http://<listen>`; set it to the https address users reach in production).
    pub base_url: String,
    /// Address the HTTP server listens on.
    pub listen: SocketAddr,
    /// Directory for the embedded database and other state.
    pub data_dir: PathBuf,
    /// `sqlite://…` (default: `<data_dir>/idbridge.db`) or `postgres://…`.
    pub database_url: Option<String>,
    /// This node's name among several on one PostgreSQL database (default: the host name).
    /// The sync work a node claims carries it, so each node needs its own; a node that starts
    /// again under its name takes back at once what it held before it stopped.
    pub node_name: Option<String>,
    pub certs: CertsConfig,
    pub password_policy: PasswordPolicy,
    pub saml: SamlConfig,
    pub m365: M365Config,
    pub admin: AdminConfig,
    pub server: ServerConfig,
    pub sign_in: SignInConfig,
    pub mfa: MfaConfig,
    pub events: EventsConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    /// The mail server for password-reset links; without it the forgot-password page says
    /// whom to ask.
    pub smtp: Option<SmtpConfig>,
    /// Self-service password resets by emailed link.
    pub password_reset: PasswordResetConfig,
    /// Where the settings the console can also change were set (the file or the environment);
    /// those stay read-only in the console.
    #[serde(skip)]
    pub sources: SettingSources,
}

/// The settings the console and the API can change too: set in the file or the environment,
/// they win and are shown read-only there.
pub const CONSOLE_SETTINGS: [&str; 6] = [
    "m365.tenant",
    "m365.client_id",
    "m365.client_secret",
    "m365.client_secret_file",
    "m365.client_certificate_file",
    "m365.client_key_file",
];

/// Where each of [`CONSOLE_SETTINGS`] was set, if not left at its default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SettingSources(BTreeMap<&'static str, String>);

impl SettingSources {
    /// Where `setting` was set ("/etc/idbridge/idbridge.toml", "the environment
    /// (IDBRIDGE_M365__CLIENT_ID)"), or `None` when it was left at its default.
    pub fn of(&self, setting: &str) -> Option<&str> {
        self.0.get(setting).map(String::as_str)
    }

    /// Records that `setting` was set in `source` (tests and tools).
    pub fn set(&mut self, setting: &'static str, source: impl Into<String>) {
        self.0.insert(setting, source.into());
    }

    fn read(figment: &Figment) -> Self {
        let mut sources = Self::default();
        for setting in CONSOLE_SETTINGS {
            let Some(metadata) = figment.find_metadata(setting) else {
                continue;
            };
            let source = if metadata.name.contains("environment") {
                format!(
                    "the environment (IDBRIDGE_{})",
                    setting.to_uppercase().replace('.', "__")
                )
            } else if let Some(figment::Source::File(path)) = &metadata.source {
                path.display().to_string()
            } else if metadata.name.starts_with("TOML") {
                "the configuration".to_string()
            } else {
                // The built-in default.
                continue;
            };
            sources.set(setting, source);
        }
        sources
    }
}

/// Throttling of the SSO sign-in page against password guessing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SignInConfig {
    /// Failed sign-ins for one typed name, from any address, that lock the name (0: never).
    pub account_max_failures: u32,
    /// Failed sign-ins from one client address, across names, that lock the address (0: never).
    pub address_max_failures: u32,
    /// How long failures count, in seconds.
    pub window_seconds: u64,
    /// How long a lock lasts, in seconds.
    pub lock_seconds: u64,
    /// Password hashing threads (argon2id), each holding one block of the hash's memory cost
    /// (19 MiB by default) for as long as the process runs; 0: one per core.
    pub hash_workers: usize,
    /// Password checks that may wait for a hashing thread; beyond them a sign-in gets a
    /// "try again" page (HTTP 503) at once.
    pub hash_queue: usize,
}

impl Default for SignInConfig {
    fn default() -> Self {
        Self {
            account_max_failures: 10,
            address_max_failures: 30,
            window_seconds: 60,
            lock_seconds: 900,
            hash_workers: 0,
            hash_queue: 64,
        }
    }
}

/// Who must pass a second factor at sign-in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MfaPolicy {
    /// Users who enrolled a factor are asked for it; nobody must enrol.
    #[default]
    Optional,
    /// Users an admin marked (`user mfa require`) must enrol and pass a second factor;
    /// others as under `optional`.
    Chosen,
    /// Every user must enrol and pass a second factor.
    Required,
}

/// Multi-factor sign-in.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MfaConfig {
    /// `optional`, `chosen` or `required`.
    pub policy: MfaPolicy,
    /// The name authenticator apps show beside a TOTP code (default: the host of `base_url`).
    pub issuer: Option<String>,
    /// Wrong second-factor codes for one user, from any address, that lock the second factor
    /// for `sign_in.lock_seconds`.
    pub max_failures: u32,
    /// Offer "Sign in with a passkey" on the sign-in page, with no password.
    pub passwordless: bool,
}

impl Default for MfaConfig {
    fn default() -> Self {
        Self {
            policy: MfaPolicy::Optional,
            issuer: None,
            max_failures: 5,
            passwordless: false,
        }
    }
}

/// The event log.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Events older than this many days are deleted by the janitor (0: keep forever).
    pub retention_days: u32,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            retention_days: 365,
        }
    }
}

/// `[metrics]`: the Prometheus endpoint `/metrics`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve `/metrics` (false: the path answers 404 and nothing is recorded).
    pub enabled: bool,
    /// A separate address for `/metrics` (e.g. `127.0.0.1:9464`); set, the main listener no
    /// longer serves it, so it can stay off the public network.
    pub listen: Option<SocketAddr>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: None,
        }
    }
}

/// The HTTP front door: connection timeouts and limits, shutdown, and trusted reverse proxies.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// A connection must send a request's complete headers within this many seconds.
    pub header_read_timeout_seconds: u64,
    /// A request (headers read) must be answered within this many seconds, else 503.
    pub request_timeout_seconds: u64,
    /// A keep-alive connection with no traffic for this many seconds is closed.
    pub idle_timeout_seconds: u64,
    /// Open connections at most; more are answered 503 and closed. Keep it below the
    /// open-files limit (`ulimit -n`, often 1024), which the database and files also use.
    pub max_connections: usize,
    /// On SIGTERM, in-flight requests get this many seconds; then queued state is written and
    /// the process exits.
    pub shutdown_timeout_seconds: u64,
    /// Reverse proxies (IPs or CIDRs) whose `X-Forwarded-For` names the client; from any other
    /// peer the header is ignored.
    pub trusted_proxies: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            header_read_timeout_seconds: 10,
            request_timeout_seconds: 30,
            idle_timeout_seconds: 60,
            max_connections: 768,
            shutdown_timeout_seconds: 20,
            trusted_proxies: Vec::new(),
        }
    }
}

/// An IP network (`10.0.0.0/8`, `::1/128`); a bare address is a single host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: std::net::IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Parses `a.b.c.d`, `a.b.c.d/n`, an IPv6 address, or `ipv6/n`.
    pub fn parse(text: &str) -> Option<Self> {
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((a, p)) => (
                a.parse::<std::net::IpAddr>().ok()?,
                Some(p.parse::<u8>().ok()?),
            ),
            None => (text.trim().parse::<std::net::IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Self { addr, prefix })
    }

    /// True when `ip` is in this network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl ServerConfig {
    /// The trusted proxies, parsed (entries that do not parse are refused at start-up).
    pub fn trusted_proxy_nets(&self) -> Vec<IpNet> {
        self.trusted_proxies
            .iter()
            .filter_map(|t| IpNet::parse(t))
            .collect()
    }
}

/// The admin console and API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// A console session ends after this many minutes without a request.
    pub session_idle_minutes: u64,
    /// A console session ends this many hours after sign-in, active or not.
    pub session_max_hours: u64,
    /// Failed console sign-ins from one client address before that address is refused for a
    /// while (0: never).
    pub login_max_failures: u32,
    /// Failed console sign-ins for one admin name, from any address, before the name is
    /// refused for a while (0: never); higher than `login_max_failures` so that guessing from
    /// one place locks the guesser's address, not the real admin.
    pub login_account_max_failures: u32,
    /// How long failures count, and how long sign-in stays refused after too many.
    pub login_lockout_minutes: u64,
    /// Admins without an authenticator app must set one up at their next console sign-in.
    pub require_mfa: bool,
    /// A separate address for the console and the JSON API (e.g. `127.0.0.1:9443`); set, the
    /// main listener answers 404 for `/admin` and `/api`.
    pub listen: Option<SocketAddr>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            session_idle_minutes: 30,
            session_max_hours: 12,
            login_max_failures: 5,
            login_account_max_failures: 20,
            login_lockout_minutes: 15,
            require_mfa: false,
            listen: None,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            base_url: String::new(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("data"),
            database_url: None,
            node_name: None,
            certs: CertsConfig::default(),
            password_policy: PasswordPolicy::default(),
            saml: SamlConfig::default(),
            m365: M365Config::default(),
            admin: AdminConfig::default(),
            sign_in: SignInConfig::default(),
            mfa: MfaConfig::default(),
            events: EventsConfig::default(),
            metrics: MetricsConfig::default(),
            server: ServerConfig::default(),
            log: LogConfig::default(),
            smtp: None,
            password_reset: PasswordResetConfig::default(),
            sources: SettingSources::default(),
        }
    }
}

/// How idbridge talks to the SMTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain SMTP (a relay on this host or a trusted network only).
    None,
    /// SMTP, upgraded with STARTTLS before anything else is sent (RFC 3207); refused if the
    /// server does not offer it.
    #[default]
    Starttls,
    /// TLS from the first byte ("implicit TLS", RFC 8314 §3.3).
    Tls,
}

impl SmtpTls {
    /// The port used when none is set: 25, 587 (submission) or 465 (submissions).
    pub fn default_port(self) -> u16 {
        match self {
            SmtpTls::None => 25,
            SmtpTls::Starttls => 587,
            SmtpTls::Tls => 465,
        }
    }
}

/// A secret read from the configuration: never printed, never written back out.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct ConfigSecret(String);

impl ConfigSecret {
    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ConfigSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

impl Serialize for ConfigSecret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("***")
    }
}

/// `[smtp]`: the mail server that sends password-reset links.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// Host name of the SMTP server (also the name its TLS certificate must carry).
    pub host: String,
    /// Port; default by `tls`: 25, 587 or 465.
    pub port: Option<u16>,
    /// The sender, e.g. `"IT Service Desk <it@contoso.com>"`.
    pub from: String,
    /// User name for SMTP AUTH (omit for a relay that needs none).
    pub username: Option<String>,
    /// Password for SMTP AUTH (prefer `password_file` or `IDBRIDGE_SMTP__PASSWORD`).
    #[serde(default, skip_serializing)]
    pub password: Option<ConfigSecret>,
    /// File holding the SMTP password (must be mode 0600).
    pub password_file: Option<PathBuf>,
    /// `none`, `starttls` (default) or `tls`.
    #[serde(default)]
    pub tls: SmtpTls,
    /// How long one delivery may take before it is given up, in seconds.
    #[serde(default = "default_smtp_timeout")]
    pub timeout_seconds: u64,
}

fn default_smtp_timeout() -> u64 {
    20
}

impl SmtpConfig {
    /// The port in force.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or_else(|| self.tls.default_port())
    }
}

/// `[password_reset]`: the emailed single-use link of "forgot password".
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PasswordResetConfig {
    /// How long a link works, in minutes.
    pub link_minutes: u32,
    /// Requests for one typed name (existing or not) per window before it is refused for a
    /// while; also the most links one account is sent per window (0: no limit).
    pub account_max_requests: u32,
    /// Requests from one client address per window before it is refused for a while (0: no
    /// limit).
    pub address_max_requests: u32,
    /// How long requests count, and how long a refusal lasts, in minutes.
    pub window_minutes: u32,
}

impl Default for PasswordResetConfig {
    fn default() -> Self {
        Self {
            link_minutes: 30,
            account_max_requests: 3,
            address_max_requests: 10,
            window_minutes: 60,
        }
    }
}

/// Where the SAML signing key and certificate live, and how to generate them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CertsConfig {
    pub key_file: PathBuf,
    pub cert_file: PathBuf,
    /// RSA key size used when generating a key (2048, 3072 or 4096).
    pub key_bits: u32,
    /// Validity of a generated self-signed certificate.
    pub validity_days: u32,
    /// Subject CN of a generated certificate; defaults to the base URL's host.
    pub common_name: Option<String>,
}

impl Default for CertsConfig {
    fn default() -> Self {
        Self {
            key_file: PathBuf::from("certs/signing.key"),
            cert_file: PathBuf::from("certs/signing.crt"),
            key_bits: 2048,
            validity_days: 3650,
            common_name: None,
        }
    }
}

/// SAML identity provider settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamlConfig {
    /// Issuer URI, emitted byte for byte; defaults to the base URL.
    pub issuer: Option<String>,
    /// Per-domain issuer URIs for tenants with several federated domains (UPN domain → issuer).
    pub domain_issuers: BTreeMap<String, String>,
    /// `rsa-sha256` (default) or `rsa-sha1` (fallback only).
    pub signature_algorithm: String,
    /// How long an idbridge sign-in session lasts.
    pub session_minutes: u32,
    /// SubjectConfirmationData NotOnOrAfter, counted from issue.
    pub assertion_lifetime_seconds: u32,
    /// Conditions NotOnOrAfter, counted from issue.
    pub conditions_lifetime_seconds: u32,
    /// How far Conditions NotBefore is back-dated to absorb clock skew.
    pub clock_skew_seconds: u32,
    /// How old an AuthnRequest may be (by its IssueInstant) and still be answered.
    pub request_max_age_seconds: u32,
    /// Longest RelayState accepted.
    pub relay_state_max_bytes: usize,
    /// Most answered request IDs held in memory for replay protection (SQLite; about 40 bytes
    /// each). IDs live `request_max_age_seconds` + 2 × skew, so the default holds a sustained
    /// 2,380 sign-ins a second; beyond it new sign-ins get a 503 rather than a replay window.
    pub replay_max_ids: usize,
    /// Whom users are told to ask when sign-in is refused.
    pub support_contact: String,
    /// Service providers besides the built-in Microsoft 365.
    pub service_providers: Vec<ServiceProviderConfig>,
    /// PEM certificate(s) Microsoft 365 signs its SAML messages with (from Microsoft's
    /// federation metadata). Set, its LogoutRequests must be signed; unset (the default, as
    /// Microsoft sends them unsigned), they are trusted only for the session they name.
    pub m365_certificate_file: Option<PathBuf>,
    /// The keys read from `m365_certificate_file` at start-up.
    #[serde(skip)]
    pub m365_certificates: Option<Arc<VerificationKeys>>,
    /// Microsoft's federation metadata URL, instead of `m365_certificate_file`:
    /// `https://login.microsoftonline.com/<tenant ID>/federationmetadata/2007-06/federationmetadata.xml`.
    /// Its signing certificates are read at start and every day, so Microsoft's key rollover
    /// needs nothing from the admin.
    pub m365_metadata_url: Option<String>,
    /// Microsoft's AuthnRequests must be signed by a key of `m365_certificate_file` (Entra
    /// signs them when the federation's `isSignedAuthenticationRequestRequired` is true, which
    /// `idbridge m365 federate` then sets).
    pub m365_signed_requests: bool,
}

impl Default for SamlConfig {
    fn default() -> Self {
        Self {
            issuer: None,
            domain_issuers: BTreeMap::new(),
            signature_algorithm: "rsa-sha256".into(),
            session_minutes: 480,
            assertion_lifetime_seconds: 300,
            conditions_lifetime_seconds: 3600,
            clock_skew_seconds: 120,
            request_max_age_seconds: 600,
            replay_max_ids: 2_000_000,
            relay_state_max_bytes: 1024,
            support_contact: "your IT administrator".into(),
            service_providers: Vec::new(),
            m365_certificate_file: None,
            m365_certificates: None,
            m365_metadata_url: None,
            m365_signed_requests: false,
        }
    }
}

/// A SAML service provider added from config, with the user attributes it receives.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceProviderConfig {
    pub entity_id: String,
    pub name: Option<String>,
    /// Registered assertion consumer service URLs; the first is the default.
    pub acs_urls: Vec<String>,
    /// Where LogoutResponses are posted, if the SP does single logout.
    pub slo_url: Option<String>,
    /// Which user attribute is the NameID: `username`, `email` or `immutable_id`.
    #[serde(default = "default_name_id")]
    pub name_id: String,
    /// SAML attribute name → user attribute name (e.g. `mail = "email"`).
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Refuse users who are not bound to the Microsoft 365 integration.
    #[serde(default)]
    pub require_m365_binding: bool,
    /// PEM certificate(s) the SP signs its messages with; when set, its LogoutRequests must
    /// carry a valid signature (SAML profiles §4.4.4.1).
    #[serde(default)]
    pub certificate_file: Option<PathBuf>,
    /// The keys read from `certificate_file` at start-up.
    #[serde(skip)]
    pub certificates: Option<Arc<VerificationKeys>>,
    /// Its AuthnRequests must be signed by a key of `certificate_file` (its metadata's
    /// `AuthnRequestsSigned`).
    #[serde(default)]
    pub want_authn_requests_signed: bool,
}

fn default_name_id() -> String {
    "username".into()
}

/// Microsoft 365 settings; base URLs are configurable for national clouds and test fakes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct M365Config {
    /// Microsoft identity platform base URL (also the host of the SAML ACS `login.srf`).
    pub login_base_url: String,
    /// Microsoft Graph base URL including the version.
    pub graph_base_url: String,
    /// Application (client) ID of the app registration in Entra ID.
    pub client_id: Option<String>,
    /// Client secret of the app registration (prefer `client_secret_file` or the environment).
    #[serde(skip_serializing)]
    pub client_secret: Option<String>,
    /// File holding the client secret (must be mode 0600).
    pub client_secret_file: Option<PathBuf>,
    /// Certificate credential instead of a secret: PEM certificate uploaded to the app registration…
    pub client_certificate_file: Option<PathBuf>,
    /// …and its PEM private key (must be mode 0600).
    pub client_key_file: Option<PathBuf>,
    /// Tenant for sign-in: a tenant ID or verified domain (needed by single-tenant app
    /// registrations and by client-credentials mode), or `organizations` for a multi-tenant
    /// registration (the consenting admin's tenant is then kept).
    pub tenant: String,
    /// Key for encrypting tokens at rest: base64 of 32 bytes. Default: a key file in data_dir.
    #[serde(skip_serializing)]
    pub token_key: Option<String>,
    /// Key file used when `token_key` is not set (created mode 0600 on first use).
    pub token_key_file: Option<PathBuf>,
    /// How changes reach Microsoft 365.
    pub sync: SyncConfig,
}

/// Delivery of changes to Microsoft 365 and import of changes from it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncConfig {
    /// Deliveries of one change before it is marked failed.
    pub max_attempts: u32,
    /// Wait before the second delivery attempt (doubles each time, with jitter).
    pub retry_base_ms: u64,
    /// Longest wait between two attempts.
    pub retry_max_seconds: u64,
    /// How often the outbox is checked for changes made by other processes (the CLI, other
    /// nodes); changes made in this process are sent at once.
    pub poll_interval_ms: u64,
    /// How often attributes set to Import are read from Microsoft 365 (delta query).
    pub import_interval_seconds: u64,
    /// Changes taken per delivery round (sent in Graph batches of 20).
    pub jobs_per_round: u32,
    /// Attempts of one Graph request when throttled (429) or unavailable (503/504).
    pub graph_max_attempts: u32,
    /// First backoff of a Graph request without Retry-After (doubles each retry).
    pub graph_retry_base_ms: u64,
    /// How long changes a node claimed stay reserved for it without renewal, in seconds. A
    /// running node renews its claim every third of this, so it only bounds how long the
    /// changes of a node that died wait before another node delivers them.
    pub lease_seconds: u64,
    /// Whether this node delivers changes to Microsoft 365 and takes its turn at the
    /// cluster-wide chores (delta import, expiry scan, janitor). `false` for nodes that only
    /// answer sign-ins; at least one node must keep it on.
    pub worker: bool,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            retry_base_ms: 5_000,
            retry_max_seconds: 900,
            poll_interval_ms: 2_000,
            import_interval_seconds: 300,
            jobs_per_round: 200,
            graph_max_attempts: 6,
            graph_retry_base_ms: 500,
            lease_seconds: 15,
            worker: true,
        }
    }
}

impl Default for M365Config {
    fn default() -> Self {
        Self {
            login_base_url: "https://login.microsoftonline.com".into(),
            graph_base_url: "https://graph.microsoft.com/v1.0".into(),
            client_id: None,
            client_secret: None,
            client_secret_file: None,
            client_certificate_file: None,
            client_key_file: None,
            tenant: "organizations".into(),
            token_key: None,
            token_key_file: None,
            sync: SyncConfig::default(),
        }
    }
}

/// Logging settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter such as `info` or `idbridge=debug,info`.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

/// Levels a `[log] level` directive may name.
const LOG_LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];

impl LogConfig {
    /// Refuses a level tracing would read as a target name (`level = "verbose"` would
    /// otherwise turn every other log line off) and an unknown format.
    fn validate(&self) -> Result<(), ConfigError> {
        for directive in self
            .level
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty())
        {
            let level = directive.rsplit('=').next().unwrap_or_default();
            if !LOG_LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
                return Err(invalid(
                    "log.level",
                    format!("{directive:?} names no log level"),
                    "use trace, debug, info, warn, error or off, or target=level pairs such as \"idbridge=debug,info\"",
                ));
            }
        }
        if !matches!(self.format.as_str(), "text" | "json") {
            return Err(invalid(
                "log.format",
                format!("{:?} is not a log format", self.format),
                "use \"text\" or \"json\"",
            ));
        }
        Ok(())
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

impl Config {
    /// This node's name: `node_name`, else the host name.
    pub fn node_name(&self) -> String {
        self.node_name
            .clone()
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(default_node_name)
    }

    /// Loads defaults, then the TOML file (if any), then `IDBRIDGE_*` variables, and validates.
    ///
    /// `file` is an explicitly named file (which must exist); without it `idbridge.toml` in the
    /// working directory is read when present.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(path) => {
                if let Err(source) = std::fs::metadata(path) {
                    return Err(ConfigError::Unreadable {
                        path: path.to_path_buf(),
                        source,
                    });
                }
                figment = figment.merge(Toml::file(path));
            }
            None => figment = figment.merge(Toml::file(DEFAULT_CONFIG_FILE)),
        }
        let known = top_level_settings();
        figment = figment.merge(
            Env::prefixed("IDBRIDGE_")
                .ignore(&["config"])
                .filter(move |key| known.iter().any(|k| k == &first_segment(key.as_str())))
                .split("__"),
        );
        Self::from_figment(figment)
    }

    /// `IDBRIDGE_…` environment variables that name no setting and are therefore ignored:
    /// Kubernetes, for one, sets `IDBRIDGE_PORT=tcp://…` for a Service named idbridge, which
    /// must not stop start-up. Said at start and by `idbridge config check`.
    pub fn ignored_env_vars() -> Vec<String> {
        let known = top_level_settings();
        let mut ignored: Vec<String> = std::env::vars_os()
            .filter_map(|(name, _)| name.into_string().ok())
            .filter(|name| {
                name.strip_prefix("IDBRIDGE_").is_some_and(|key| {
                    !key.eq_ignore_ascii_case("config")
                        && !known.iter().any(|k| k == &first_segment(key))
                })
            })
            .collect();
        ignored.sort();
        ignored
    }

    /// The effective settings as TOML, with secrets left out and the database password
    /// hidden (`idbridge config check`).
    pub fn to_redacted_toml(&self) -> Result<String, ConfigError> {
        let mut value = serde_json::to_value(self)
            .map_err(|e| invalid("config", e.to_string(), "report this as a bug"))?;
        if let Some(url) = value.get_mut("database_url") {
            if let Some(text) = url.as_str() {
                *url = serde_json::Value::String(redact_url(text));
            }
        }
        toml_text(&value)
    }

    /// Every setting with its default, as TOML (`idbridge config show --defaults`): generated
    /// from the settings type, so it cannot drift from the code.
    pub fn defaults_toml() -> Result<String, ConfigError> {
        let value = serde_json::to_value(Config::default())
            .map_err(|e| invalid("config", e.to_string(), "report this as a bug"))?;
        toml_text(&value)
    }

    /// Builds a config from TOML text (with defaults for the rest); used by tests and tools.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::from_figment(
            Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(text)),
        )
    }

    fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let mut config: Config = figment.extract().map_err(figment_error)?;
        config.sources = SettingSources::read(&figment);
        config.normalise_and_validate()?;
        Ok(config)
    }

    fn normalise_and_validate(&mut self) -> Result<(), ConfigError> {
        self.log.validate()?;
        if self.metrics.listen == Some(self.listen) && self.listen.port() != 0 {
            return Err(invalid(
                "metrics.listen",
                format!("{} is also `listen`", self.listen),
                "choose another port for metrics (e.g. 127.0.0.1:9464), or leave it out to serve /metrics on `listen`",
            ));
        }
        if let Some(admin) = self.admin.listen.filter(|a| a.port() != 0) {
            if admin == self.listen || Some(admin) == self.metrics.listen {
                return Err(invalid(
                    "admin.listen",
                    format!("{admin} is also `listen` or `metrics.listen`"),
                    "choose another port for the console and API (e.g. 127.0.0.1:9443), or leave it out to serve them on `listen`",
                ));
            }
        }
        // Bounded so the lock arithmetic on millisecond timestamps cannot overflow.
        const DAY: u64 = 86_400;
        if !(1..=DAY).contains(&self.sign_in.window_seconds) {
            return Err(invalid(
                "sign_in.window_seconds",
                format!("{} is out of range", self.sign_in.window_seconds),
                "use 1 to 86400 seconds (default 60)",
            ));
        }
        if self.sign_in.hash_workers > 256 {
            return Err(invalid(
                "sign_in.hash_workers",
                format!(
                    "{} threads would hold {} MiB of hash memory",
                    self.sign_in.hash_workers,
                    self.sign_in.hash_workers * 19
                ),
                "use 0 (one per core) or at most 256",
            ));
        }
        if !(1..=100_000).contains(&self.sign_in.hash_queue) {
            return Err(invalid(
                "sign_in.hash_queue",
                format!("{} is out of range", self.sign_in.hash_queue),
                "use a number from 1 to 100000 (default 64)",
            ));
        }
        if !(1..=DAY * 30).contains(&self.sign_in.lock_seconds) {
            return Err(invalid(
                "sign_in.lock_seconds",
                format!("{} is out of range", self.sign_in.lock_seconds),
                "use 1 to 2592000 seconds (default 900)",
            ));
        }
        if self.admin.login_lockout_minutes > 30 * 24 * 60 {
            return Err(invalid(
                "admin.login_lockout_minutes",
                format!("{} is out of range", self.admin.login_lockout_minutes),
                "use at most 43200 minutes (default 15)",
            ));
        }
        if self.events.retention_days > 36_500 {
            return Err(invalid(
                "events.retention_days",
                format!("{} is out of range", self.events.retention_days),
                "use 0 (keep forever) to 36500 days (default 365)",
            ));
        }
        if self.base_url.is_empty() {
            self.base_url = format!("http://{}", self.listen);
        }
        let base = url::Url::parse(&self.base_url).map_err(|e| {
            invalid(
                "base_url",
                format!("{:?} is not a URL ({e})", self.base_url),
                "set it to the address users reach idbridge at, e.g. https://idp.example.com",
            )
        })?;
        if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none() {
            return Err(invalid(
                "base_url",
                format!(
                    "{:?} must be an http or https URL with a host",
                    self.base_url
                ),
                "set it to e.g. https://idp.example.com",
            ));
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(invalid(
                "base_url",
                "must not contain a query or fragment",
                "remove everything after ? or #",
            ));
        }
        // One canonical form, so every URL we derive from it is stable.
        self.base_url = self.base_url.trim_end_matches('/').to_string();

        match &self.database_url {
            None => {}
            Some(url) if url.starts_with("sqlite:") => {}
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {}
            Some(url) => {
                return Err(invalid(
                    "database_url",
                    format!("{:?} is neither sqlite: nor postgres:", redact_url(url)),
                    "use sqlite://path/to/file.db or postgres://user@host/db",
                ))
            }
        }
        if ![2048, 3072, 4096].contains(&self.certs.key_bits) {
            return Err(invalid(
                "certs.key_bits",
                format!("{} is not a supported RSA key size", self.certs.key_bits),
                "use 2048, 3072 or 4096",
            ));
        }
        if self.certs.validity_days == 0 {
            return Err(invalid(
                "certs.validity_days",
                "must be at least 1",
                "set a number of days, e.g. 3650",
            ));
        }
        if let Some(issuer) = &self.saml.issuer {
            if issuer.trim().is_empty() || issuer.trim() != issuer {
                return Err(invalid(
                    "saml.issuer",
                    "is empty or has surrounding spaces",
                    "set it to the exact issuer URI configured in Microsoft Entra ID",
                ));
            }
        }
        self.saml_signature_algorithm()?;
        if self.saml.session_minutes == 0 || self.saml.assertion_lifetime_seconds == 0 {
            return Err(invalid(
                "saml.session_minutes / saml.assertion_lifetime_seconds",
                "must be greater than 0",
                "use the defaults (480 and 300) unless you have a reason",
            ));
        }
        if self.saml.replay_max_ids < 1_000 {
            return Err(invalid(
                "saml.replay_max_ids",
                format!(
                    "is {}, too few to answer sign-ins",
                    self.saml.replay_max_ids
                ),
                "use the default (2000000) or at least 1000",
            ));
        }
        for (i, sp) in self.saml.service_providers.iter().enumerate() {
            let setting = format!("saml.service_providers[{i}]");
            if sp.entity_id == crate::sso::M365_ENTITY_ID {
                return Err(invalid(
                    &setting,
                    "Microsoft 365 is built in and cannot be redefined",
                    "remove this entry",
                ));
            }
            if sp.acs_urls.is_empty() {
                return Err(invalid(
                    &format!("{setting}.acs_urls"),
                    "is empty",
                    "list at least one assertion consumer service URL",
                ));
            }
            for url in sp.acs_urls.iter().chain(sp.slo_url.iter()) {
                match url::Url::parse(url) {
                    Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                    _ => {
                        return Err(invalid(
                            &format!("{setting}.acs_urls"),
                            format!("{url:?} is not an http(s) URL"),
                            "use the full URL the SP gives in its metadata",
                        ))
                    }
                }
            }
            if !["username", "email", "immutable_id"].contains(&sp.name_id.as_str()) {
                return Err(invalid(
                    &format!("{setting}.name_id"),
                    format!("{:?} is not a NameID source", sp.name_id),
                    "use username, email or immutable_id",
                ));
            }
            for (name, attr) in &sp.attributes {
                if !crate::directory::User::knows_attribute(attr) {
                    return Err(invalid(
                        &format!("{setting}.attributes.{name}"),
                        format!("{attr:?} is not a user attribute"),
                        format!(
                            "use one of: {}",
                            crate::directory::User::attribute_names().join(", ")
                        ),
                    ));
                }
            }
        }
        for (i, sp) in self.saml.service_providers.iter_mut().enumerate() {
            if let Some(path) = &sp.certificate_file {
                let setting = format!("saml.service_providers[{i}].certificate_file");
                sp.certificates = Some(Arc::new(load_certificates(&setting, path)?));
            }
            if sp.want_authn_requests_signed && sp.certificate_file.is_none() {
                return Err(invalid(
                    &format!("saml.service_providers[{i}].want_authn_requests_signed"),
                    "signed AuthnRequests are required but no certificate is configured to check them",
                    "set certificate_file to the service provider's signing certificate (PEM), or drop want_authn_requests_signed",
                ));
            }
        }
        if let Some(path) = &self.saml.m365_certificate_file {
            let keys = load_certificates("saml.m365_certificate_file", path)?;
            self.saml.m365_certificates = Some(Arc::new(keys));
        }
        if let Some(url) = &self.saml.m365_metadata_url {
            let fix = "give Microsoft's federation metadata URL, https://login.microsoftonline.com/<tenant ID>/federationmetadata/2007-06/federationmetadata.xml";
            let parsed = url::Url::parse(url)
                .map_err(|e| invalid("saml.m365_metadata_url", format!("{url:?}: {e}"), fix))?;
            // Plain http only to this machine (a test or a local mirror): the certificates
            // decide whose requests are trusted.
            let local = matches!(parsed.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
            if parsed.scheme() != "https" && !(parsed.scheme() == "http" && local) {
                return Err(invalid(
                    "saml.m365_metadata_url",
                    format!("{url:?} is not https"),
                    fix,
                ));
            }
            if self.saml.m365_certificate_file.is_some() {
                return Err(invalid(
                    "saml.m365_metadata_url",
                    "both m365_metadata_url and m365_certificate_file are set".to_string(),
                    "keep one: the URL (idbridge follows Microsoft's key rollover) or the file",
                ));
            }
        }
        if self.saml.m365_signed_requests
            && self.saml.m365_certificate_file.is_none()
            && self.saml.m365_metadata_url.is_none()
        {
            return Err(invalid(
                "saml.m365_signed_requests",
                "Microsoft's AuthnRequests must be signed but no certificate is configured to check them",
                "set saml.m365_metadata_url to https://login.microsoftonline.com/<tenant ID>/federationmetadata/2007-06/federationmetadata.xml (or saml.m365_certificate_file to its certificates, PEM or the metadata file), or drop m365_signed_requests",
            ));
        }
        self.password_policy
            .validate()
            .map_err(|(setting, problem)| {
                invalid(
                    &format!("password_policy.{setting}"),
                    problem,
                    "Microsoft Entra ID rejects passwords outside 8–256 characters with fewer than three character classes; keep the policy at least that strict",
                )
            })?;
        for (setting, url) in [
            ("m365.login_base_url", &mut self.m365.login_base_url),
            ("m365.graph_base_url", &mut self.m365.graph_base_url),
        ] {
            match url::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {
                    *url = url.trim_end_matches('/').to_string()
                }
                _ => {
                    return Err(invalid(
                        setting,
                        format!("{url:?} is not an http(s) URL"),
                        "leave it unset for the global cloud, or use your national cloud's URL",
                    ))
                }
            }
        }
        if let Some(id) = &self.m365.client_id {
            // Entra's application (client) IDs are GUIDs; anything else is a paste of the wrong
            // value (the object ID is a GUID too, but at least a secret is caught here).
            if uuid::Uuid::try_parse(id.trim()).is_err() {
                return Err(invalid(
                    "m365.client_id",
                    format!("{id:?} is not an application (client) ID"),
                    "copy the Application (client) ID, a GUID like 5f8c3b2a-6d1e-4f7a-9b0c-1e2d3f4a5b6c, from the app registration's Overview in the Entra admin center",
                ));
            }
        }
        if self.m365.tenant.trim().is_empty() {
            return Err(invalid(
                "m365.tenant",
                "is empty",
                "use organizations, your tenant ID, or a verified domain",
            ));
        }
        if self.m365.client_certificate_file.is_some() != self.m365.client_key_file.is_some() {
            return Err(invalid(
                "m365.client_certificate_file / m365.client_key_file",
                "only one of the two is set",
                "set both the certificate and its private key, or neither",
            ));
        }
        let server = &self.server;
        for (setting, value) in [
            (
                "server.header_read_timeout_seconds",
                server.header_read_timeout_seconds,
            ),
            (
                "server.request_timeout_seconds",
                server.request_timeout_seconds,
            ),
            ("server.idle_timeout_seconds", server.idle_timeout_seconds),
            (
                "server.shutdown_timeout_seconds",
                server.shutdown_timeout_seconds,
            ),
        ] {
            if value == 0 || value > 3600 {
                return Err(invalid(
                    setting,
                    format!("{value} is out of range"),
                    "use a number of seconds from 1 to 3600",
                ));
            }
        }
        if server.max_connections == 0 || server.max_connections > 1_000_000 {
            return Err(invalid(
                "server.max_connections",
                format!("{} is out of range", server.max_connections),
                "use a number from 1 up to, and safely below, the open-files limit (e.g. 768 for ulimit -n 1024)",
            ));
        }
        if let Some(bad) = server
            .trusted_proxies
            .iter()
            .find(|t| IpNet::parse(t).is_none())
        {
            return Err(invalid(
                "server.trusted_proxies",
                format!("{bad:?} is not an IP address or CIDR network"),
                "list addresses such as \"127.0.0.1\" or networks such as \"10.0.0.0/8\"",
            ));
        }
        if let Some(smtp) = &self.smtp {
            validate_smtp(smtp)?;
        }
        let reset = &self.password_reset;
        if !(1..=24 * 60).contains(&reset.link_minutes) {
            return Err(invalid(
                "password_reset.link_minutes",
                format!("{} is out of range", reset.link_minutes),
                "use 1 to 1440 minutes (default 30)",
            ));
        }
        if !(1..=7 * 24 * 60).contains(&reset.window_minutes) {
            return Err(invalid(
                "password_reset.window_minutes",
                format!("{} is out of range", reset.window_minutes),
                "use 1 to 10080 minutes (default 60)",
            ));
        }
        if !["text", "json"].contains(&self.log.format.as_str()) {
            return Err(invalid(
                "log.format",
                format!("{:?} is not a log format", self.log.format),
                "use text or json",
            ));
        }
        Ok(())
    }

    /// The database URL in force.
    pub fn database_url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("idbridge.db").display()
            )
        })
    }

    /// The default SAML issuer URI: configured value byte for byte, else the base URL.
    pub fn saml_issuer(&self) -> &str {
        self.saml.issuer.as_deref().unwrap_or(&self.base_url)
    }

    /// The signature algorithm named in config.
    pub fn saml_signature_algorithm(&self) -> Result<crate::saml::SignatureAlgorithm, ConfigError> {
        self.saml.signature_algorithm.parse().map_err(|_| {
            invalid(
                "saml.signature_algorithm",
                format!("{:?} is not supported", self.saml.signature_algorithm),
                "use rsa-sha256 (recommended) or rsa-sha1",
            )
        })
    }

    /// The common name for a generated signing certificate.
    pub fn certificate_common_name(&self) -> String {
        self.certs.common_name.clone().unwrap_or_else(|| {
            url::Url::parse(&self.base_url)
                .ok()
                .and_then(|u| u.host_str().map(str::to_string))
                .unwrap_or_else(|| "idbridge".into())
        })
    }

    /// The name authenticator apps show beside idbridge's TOTP codes.
    pub fn mfa_issuer(&self) -> String {
        self.mfa.issuer.clone().unwrap_or_else(|| {
            url::Url::parse(&self.base_url)
                .ok()
                .and_then(|u| u.host_str().map(|h| format!("idbridge ({h})")))
                .unwrap_or_else(|| "idbridge".into())
        })
    }

    /// Whether cookies must carry `Secure` (the base URL is https).
    pub fn is_https(&self) -> bool {
        self.base_url.starts_with("https://")
    }
}

/// The top-level settings (`base_url`, `saml`, …), as environment variables name them.
fn top_level_settings() -> Vec<String> {
    match serde_json::to_value(Config::default()) {
        Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
        _ => Vec::new(),
    }
    .into_iter()
    .chain(["database_url".to_string()])
    .collect()
}

/// The setting an environment key (after `IDBRIDGE_`) belongs to, lower case.
fn first_segment(key: &str) -> String {
    key.split("__")
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// TOML text of a settings value; `null`s (unset optional settings) are left out, as TOML
/// has no null.
fn toml_text(value: &serde_json::Value) -> Result<String, ConfigError> {
    fn strip_nulls(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                map.retain(|_, v| !v.is_null());
                map.values_mut().for_each(strip_nulls);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip_nulls),
            _ => {}
        }
    }
    let mut value = value.clone();
    strip_nulls(&mut value);
    toml::to_string(&value).map_err(|e| invalid("config", e.to_string(), "report this as a bug"))
}

/// Hides the password part of a database URL.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// Checks `[smtp]`: a host, a parseable sender, one way to give the password, and no password
/// sent in clear text over the network.
fn validate_smtp(smtp: &SmtpConfig) -> Result<(), ConfigError> {
    if smtp.host.trim().is_empty() || smtp.host.trim() != smtp.host {
        return Err(invalid(
            "smtp.host",
            "is empty or has surrounding spaces",
            "set the host name of your SMTP server, e.g. smtp.office365.com",
        ));
    }
    if smtp.port == Some(0) {
        return Err(invalid(
            "smtp.port",
            "0 is not a port",
            "leave it unset (25, 587 or 465 by tls) or name the server's port",
        ));
    }
    if let Err(e) = smtp.from.parse::<lettre::message::Mailbox>() {
        return Err(invalid(
            "smtp.from",
            format!("{:?} is not an email address ({e})", smtp.from),
            "use an address such as it@contoso.com or \"IT Service Desk <it@contoso.com>\"",
        ));
    }
    if smtp.password.is_some() && smtp.password_file.is_some() {
        return Err(invalid(
            "smtp.password / smtp.password_file",
            "both are set",
            "keep one of them (password_file is preferred)",
        ));
    }
    let has_password = smtp.password.is_some() || smtp.password_file.is_some();
    if has_password != smtp.username.is_some() {
        return Err(invalid(
            "smtp.username / smtp.password",
            "only one of the user name and the password is set",
            "set both for SMTP AUTH, or neither for a relay that needs none",
        ));
    }
    let loopback = matches!(smtp.host.as_str(), "localhost" | "127.0.0.1" | "::1");
    if has_password && smtp.tls == SmtpTls::None && !loopback {
        return Err(invalid(
            "smtp.tls",
            "\"none\" would send the SMTP password in clear text over the network",
            "use tls = \"starttls\" or \"tls\", or a relay on localhost",
        ));
    }
    if !(1..=300).contains(&smtp.timeout_seconds) {
        return Err(invalid(
            "smtp.timeout_seconds",
            format!("{} is out of range", smtp.timeout_seconds),
            "use 1 to 300 seconds (default 20)",
        ));
    }
    Ok(())
}

/// Reads a secret file that must be private to idbridge (mode 0600 or stricter).
pub fn read_private_file(setting: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| {
        invalid(
            setting,
            format!("{}: {e}", path.display()),
            "check the path",
        )
    })?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(invalid(
            setting,
            format!("{} is readable by other users", path.display()),
            "run `chmod 600` on it",
        ));
    }
    std::fs::read(path).map_err(|e| invalid(setting, e.to_string(), "make it readable by idbridge"))
}

/// Reads a service provider's PEM certificate file, refusing anything but a small regular file
/// (a path such as /dev/zero or a FIFO must not stall start-up).
fn load_certificates(setting: &str, path: &Path) -> Result<VerificationKeys, ConfigError> {
    let fix = "name the PEM file (-----BEGIN CERTIFICATE-----) holding the service provider's signing certificate, or its SAML metadata (Microsoft's federation metadata for Microsoft 365), or remove the setting";
    let unreadable =
        |e: std::io::Error| invalid(setting, format!("cannot read {}: {e}", path.display()), fix);
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    if !meta.is_file() {
        return Err(invalid(
            setting,
            format!("{} is not a regular file", path.display()),
            fix,
        ));
    }
    let mut pem = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| {
            f.take(MAX_CERTIFICATE_FILE_BYTES as u64 + 1)
                .read_to_end(&mut pem)
        })
        .map_err(unreadable)?;
    VerificationKeys::from_file_contents(&pem)
        .map_err(|e| invalid(setting, format!("{}: {e}", path.display()), fix))
}

fn figment_error(err: figment::Error) -> ConfigError {
    let setting = if err.path.is_empty() {
        "(top level)".to_string()
    } else {
        err.path.join(".")
    };
    let source = err
        .metadata
        .as_ref()
        .and_then(|m| m.source.as_ref())
        .map(|s| s.to_string())
        .unwrap_or_else(|| "the configuration".into());
    let (problem, fix) = match &err.kind {
        // The known settings are said once, in the fix (figment's own text lists them too).
        figment::error::Kind::UnknownField(name, expected) => (
            format!("unknown setting `{name}`"),
            format!(
                "remove or rename it in {source}; known settings here: {}",
                expected.join(", ")
            ),
        ),
        // A socket address takes an IP address: `localhost:8080` is not one.
        _ if setting.ends_with("listen") => (
            err.kind.to_string(),
            format!(
                "give an IP address and port in {source}, e.g. \"127.0.0.1:8080\" (this machine only) or \"0.0.0.0:8080\" (every interface); a host name such as localhost is not accepted"
            ),
        ),
        _ => (
            err.kind.to_string(),
            format!("correct it in {source} (see README.md, Configuration)"),
        ),
    };
    ConfigError::Invalid {
        setting,
        problem,
        fix,
    }
}

/// The host name, the default node name ("idbridge" when the system has none).
pub fn default_node_name() -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "idbridge".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_issuer_defaults_to_base_url() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.saml_issuer(), "http://127.0.0.1:8080");
        assert!(c.database_url().starts_with("sqlite://"));
    }

    #[test]
    fn a_client_id_that_is_not_a_guid_is_refused_with_where_to_find_it() {
        let e = Config::from_toml("[m365]\nclient_id = \"not-a-guid\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("m365.client_id") && e.contains("Overview"),
            "{e}"
        );
        let ok =
            Config::from_toml("[m365]\nclient_id = \"5f8c3b2a-6d1e-4f7a-9b0c-1e2d3f4a5b6c\"\n");
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn issuer_is_kept_byte_for_byte() {
        let c = Config::from_toml("[saml]\nissuer = \"https://idp.example.com/\"\n").unwrap();
        assert_eq!(c.saml_issuer(), "https://idp.example.com/");
    }

    #[test]
    fn unknown_setting_is_named() {
        let e = Config::from_toml("base_urll = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("base_urll"), "{e}");
        assert!(e.contains("Fix:"), "{e}");
    }

    #[test]
    fn weak_policy_is_refused_with_setting_name() {
        let e = Config::from_toml("[password_policy]\nmin_length = 6")
            .unwrap_err()
            .to_string();
        assert!(e.contains("password_policy.min_length"), "{e}");
    }

    #[test]
    fn the_example_in_readme_is_a_valid_config() {
        let readme = include_str!("../README.md");
        for block in readme.split("```toml\n").skip(1) {
            let toml = block.split("```").next().unwrap_or_default();
            if let Err(e) = Config::from_toml(toml) {
                panic!("README example does not load: {e}\n{toml}");
            }
        }
    }

    #[test]
    fn smtp_settings_are_checked_and_the_password_never_printed() {
        let ok = Config::from_toml(
            "[smtp]\nhost = \"mail.example.com\"\nfrom = \"IT <it@example.com>\"\nusername = \"it\"\npassword = \"s3cret-smtp\"\n",
        )
        .unwrap();
        let smtp = ok.smtp.as_ref().unwrap();
        assert_eq!((smtp.tls, smtp.port()), (SmtpTls::Starttls, 587));
        assert!(!format!("{ok:?}").contains("s3cret-smtp"));
        for (toml, setting) in [
            ("host = \"\"\nfrom = \"a@b.c\"", "smtp.host"),
            ("host = \"m\"\nfrom = \"not an address\"", "smtp.from"),
            ("host = \"m\"\nfrom = \"a@b.c\"\npassword = \"x\"", "smtp.username"),
            (
                "host = \"m.example\"\nfrom = \"a@b.c\"\nusername = \"u\"\npassword = \"x\"\ntls = \"none\"",
                "smtp.tls",
            ),
            ("host = \"m\"\nfrom = \"a@b.c\"\ntls = \"ssl\"", "smtp.tls"),
        ] {
            let e = Config::from_toml(&format!("[smtp]\n{toml}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(setting), "{setting}: {e}");
        }
        let e = Config::from_toml("[password_reset]\nlink_minutes = 0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("password_reset.link_minutes"), "{e}");
    }

    #[test]
    fn a_log_level_that_names_no_level_is_refused() {
        let e = Config::from_toml("[log]\nlevel = \"verbose\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("log.level") && e.contains("verbose"), "{e}");
        assert!(Config::from_toml("[log]\nlevel = \"idbridge=debug,info\"").is_ok());
        assert!(Config::from_toml("[log]\nformat = \"yaml\"").is_err());
    }

    #[test]
    fn the_defaults_print_as_toml_that_loads_again() {
        let text = Config::defaults_toml().unwrap();
        assert!(
            text.contains("[sign_in]") && text.contains("[mfa]"),
            "{text}"
        );
        Config::from_toml(&text).unwrap();
        let c = Config::from_toml("database_url = \"postgres://u:secret@db/idb\"\n[m365]\nclient_secret = \"s3cr3t-value\"").unwrap();
        let shown = c.to_redacted_toml().unwrap();
        assert!(
            !shown.contains("secret@") && !shown.contains("s3cr3t-value"),
            "{shown}"
        );
    }

    #[test]
    fn bad_key_size_is_refused() {
        let e = Config::from_toml("[certs]\nkey_bits = 1024")
            .unwrap_err()
            .to_string();
        assert!(e.contains("certs.key_bits"), "{e}");
    }
}
