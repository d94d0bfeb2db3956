//! A test fake of the Microsoft identity platform (OAuth 2.0 v2.0 endpoints) and of the
//! Microsoft Graph v1.0 user / domain / $batch endpoints, on a random loopback port.
//!
//! It follows Microsoft's documented behaviour where the documentation says something, and
//! observed service behaviour (quoted in public issues) where it does not; choices made where
//! neither says anything are marked "FAKE CHOICE". Sources (read through the stored index):
//! - `/work/shared/reference/microsoft-graph.md` (research report, §0–§9, §12) and
//!   `/work/shared/reference/graph-user-properties.json` (user properties from the CSDL).
//! - microsoftgraph/microsoft-graph-docs-contrib: `api-reference/v1.0/api/user-list.md`,
//!   `user-get.md`, `user-post-users.md`, `user-update.md`, `user-post-manager.md`,
//!   `user-delete-manager.md`, `user-list-manager.md`, `domain-list.md`,
//!   `concepts/json-batching.md`, `concepts/paging.md`, `concepts/throttling.md`,
//!   `concepts/errors.md`, `concepts/aad-advanced-queries.md`, `user-delta.md`,
//!   `concepts/delta-query-overview.md`, `concepts/delta-query-users.md`, `user-delete.md`,
//!   `directory-deleteditems-list.md`, `directory-deleteditems-get.md`,
//!   `directory-deleteditems-restore.md`, `directory-deleteditems-delete.md`.
//! - MicrosoftDocs/entra-docs: `docs/identity-platform/v2-oauth2-auth-code-flow.md`,
//!   `v2-oauth2-client-creds-grant-flow.md`, `refresh-tokens.md`, `reference-error-codes.md`,
//!   `certificate-credentials.md`, `id-tokens.md`.
//!
//! Everything lives in one `Arc<Mutex<State>>`; handlers read the request body first and then do
//! all their work synchronously under the lock (the lock is never held across an `.await`).
//!
//! Users are indexed by object id, UPN (both case-insensitive) and onPremisesImmutableId, so
//! lookups stay O(1) with 10,000+ users. Every write to a user bumps a change counter and
//! records, per user, which properties changed at which counter value; `/users/delta` tokens
//! carry counter values (see "Delta query" below).

#![allow(dead_code)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Router;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use base64::Engine;
use serde_json::{json, Map, Value};

type Shared = Arc<Mutex<State>>;

/// The Graph resource's well-known application id (accepted as a scope prefix).
const GRAPH_APP_ID: &str = "00000003-0000-0000-c000-000000000000";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const INITIAL_DOMAIN: &str = "contoso.onmicrosoft.com";

/// A running fake. Dropping it stops the server.
pub struct GraphFake {
    port: u16,
    state: Shared,
    task: tokio::task::JoinHandle<()>,
}

/// A user seeded directly into the fake's directory (no validation except UPN uniqueness).
#[derive(Debug, Clone, Default)]
pub struct FakeUserSpec {
    pub upn: String,
    pub given_name: Option<String>,
    pub surname: Option<String>,
    /// Defaults to "given surname", else the UPN's alias.
    pub display_name: Option<String>,
    pub mail: Option<String>,
    pub immutable_id: Option<String>,
    pub account_enabled: bool,
    pub job_title: Option<String>,
    pub department: Option<String>,
    pub office_location: Option<String>,
    pub mobile_phone: Option<String>,
    pub business_phones: Vec<String>,
    pub usage_location: Option<String>,
    pub employee_id: Option<String>,
    pub company_name: Option<String>,
    pub city: Option<String>,
    pub country: Option<String>,
    /// Defaults to the UPN's alias.
    pub mail_nickname: Option<String>,
    pub password: Option<String>,
    /// Object id of the manager (must exist).
    pub manager: Option<String>,
}

impl GraphFake {
    /// The registered app's client id.
    pub const CLIENT_ID: &'static str = "5f8c3b2a-6d1e-4f7a-9b0c-1e2d3f4a5b6c";
    /// Its client secret (Entra secrets look like this: 40 chars with `~`).
    pub const CLIENT_SECRET: &'static str = "fK8Q~3xJ.vN7pL2mR9sT4uW6yZ0aB1cD5eF8gH-";
    /// The tenant.
    pub const TENANT_ID: &'static str = "9a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5d";
    /// The admin who "signs in and consents" at /authorize (not a user in the directory).
    pub const ADMIN_OID: &'static str = "0b1c2d3e-4f5a-4b6c-9d7e-8f9a0b1c2d3e";
    pub const ADMIN_UPN: &'static str = "admin@contoso.onmicrosoft.com";

    /// Starts the fake on a random 127.0.0.1 port.
    pub async fn start() -> GraphFake {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake");
        let port = listener.local_addr().expect("addr").port();
        let origin = format!("http://127.0.0.1:{port}");
        let state = Arc::new(Mutex::new(State::new(&origin)));
        let app = Router::new().fallback(handle).with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        GraphFake { port, state, task }
    }

    /// Base of the identity platform: `{this}/{tenant}/oauth2/v2.0/authorize|token`.
    pub fn login_base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Base of Graph v1.0.
    pub fn graph_base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1.0", self.port)
    }

    /// Adds a redirect URI to the app registration.
    pub fn register_redirect_uri(&self, uri: &str) {
        let mut st = self.lock();
        if !st.redirect_uris.iter().any(|u| u == uri) {
            st.redirect_uris.push(uri.to_string());
        }
    }

    /// Registers an X.509 certificate (PEM) as an app credential. Once one is registered,
    /// client assertions must be signed by a registered certificate (found by `x5t#S256`/`x5t`).
    /// Without any, the assertion's header and claims are checked but not its signature.
    pub fn register_certificate(&self, cert_pem: &str) {
        let cert = openssl::x509::X509::from_pem(cert_pem.as_bytes()).expect("certificate PEM");
        self.lock().certificates.push(cert);
    }

    /// Adds (or updates) a verified domain. `contoso.onmicrosoft.com` (initial, managed) exists
    /// from the start. `is_default` moves the default flag to this domain.
    pub fn add_domain(&self, name: &str, federated: bool, is_default: bool) {
        let mut st = self.lock();
        if is_default {
            for d in &mut st.domains {
                d.is_default = false;
            }
        }
        if let Some(d) = st
            .domains
            .iter_mut()
            .find(|d| d.name.eq_ignore_ascii_case(name))
        {
            d.federated = federated;
            d.is_default = d.is_default || is_default;
        } else {
            st.domains.push(Domain {
                name: name.to_string(),
                federated,
                is_default,
                is_initial: false,
                is_verified: true,
                federation: None,
            });
        }
    }

    /// Adds a domain whose ownership is not proven yet (`isVerified` false).
    pub fn add_unverified_domain(&self, name: &str) {
        self.add_domain(name, false, false);
        let mut st = self.lock();
        if let Some(d) = st
            .domains
            .iter_mut()
            .find(|d| d.name.eq_ignore_ascii_case(name))
        {
            d.is_verified = false;
        }
    }

    /// The domain's `internalDomainFederation` as Microsoft holds it, if federated through Graph.
    pub fn federation(&self, name: &str) -> Option<Value> {
        let st = self.lock();
        st.domain(name)
            .and_then(|d| d.federation.clone())
            .map(Value::Object)
    }

    /// Changes one property of a domain's federation, as an admin in PowerShell would.
    pub fn set_federation_property(&self, name: &str, property: &str, value: Value) {
        let mut st = self.lock();
        if let Some(f) = st
            .domains
            .iter_mut()
            .find(|d| d.name.eq_ignore_ascii_case(name))
            .and_then(|d| d.federation.as_mut())
        {
            f.insert(property.into(), value);
        }
    }

    /// Seeds a user; returns its object id.
    pub fn add_user(&self, u: FakeUserSpec) -> String {
        let mut st = self.lock();
        st.seed_user(u)
    }

    /// Seeds `n` users `user0001@domain` … (given name "User", surname "0001", mail = UPN).
    pub fn add_users(&self, n: usize, domain: &str) -> Vec<String> {
        let mut st = self.lock();
        (1..=n)
            .map(|i| {
                let upn = format!("user{i:04}@{domain}");
                st.seed_user(FakeUserSpec {
                    upn: upn.clone(),
                    given_name: Some("User".into()),
                    surname: Some(format!("{i:04}")),
                    display_name: Some(format!("User {i:04}")),
                    mail: Some(upn),
                    account_enabled: true,
                    ..FakeUserSpec::default()
                })
            })
            .collect()
    }

    /// An active user with all stored properties (`passwordProfile.password` as last set).
    pub fn user(&self, id_or_upn: &str) -> Option<Value> {
        let st = self.lock();
        st.find_user(id_or_upn)
            .map(|i| Value::Object(st.users[i].clone()))
    }

    /// All active (not deleted) users, in creation (or restore) order.
    pub fn users(&self) -> Vec<Value> {
        self.lock()
            .users
            .iter()
            .cloned()
            .map(Value::Object)
            .collect()
    }

    /// The manager's object id of a user.
    pub fn manager_of(&self, id_or_upn: &str) -> Option<String> {
        let st = self.lock();
        let i = st.find_user(id_or_upn)?;
        let id = st.users[i]["id"].as_str()?.to_string();
        st.managers.get(&id).cloned()
    }

    /// Sets a user property directly, as an admin editing it in the M365 portal (bumps delta).
    pub fn set_user_property(&self, id_or_upn: &str, prop: &str, value: Value) {
        let mut st = self.lock();
        let idx = st
            .find_user(id_or_upn)
            .unwrap_or_else(|| panic!("GraphFake::set_user_property: no user {id_or_upn}"));
        let (name, _, _) = canonical_prop(prop)
            .filter(|(n, _, _)| *n != "id")
            .unwrap_or_else(|| panic!("GraphFake::set_user_property: no property {prop}"));
        if name == "userPrincipalName" {
            let upn = value.as_str().expect("a UPN string");
            assert!(
                st.find_user(upn).is_none_or(|i| i == idx),
                "GraphFake::set_user_property: UPN {upn} is taken"
            );
        }
        let seq = st.bump();
        st.write_prop(idx, name, value, seq, true);
    }

    /// Sets (`Some(manager id or UPN)`) or removes (`None`) a user's manager, as an admin in M365.
    pub fn set_manager_in_m365(&self, id_or_upn: &str, manager: Option<&str>) {
        let mut st = self.lock();
        let idx = st
            .find_user(id_or_upn)
            .unwrap_or_else(|| panic!("GraphFake::set_manager_in_m365: no user {id_or_upn}"));
        let uid = st.user_id(idx);
        let mid = manager.map(|m| {
            let mi = st
                .find_user(m)
                .unwrap_or_else(|| panic!("GraphFake::set_manager_in_m365: no manager {m}"));
            st.user_id(mi)
        });
        let seq = st.bump();
        st.set_manager_link(&uid, mid, seq);
    }

    /// Soft-deletes a user as an M365 admin does in the portal (to deleted items; bumps delta).
    pub fn delete_user_in_m365(&self, id_or_upn: &str) {
        let mut st = self.lock();
        let idx = st
            .find_user(id_or_upn)
            .unwrap_or_else(|| panic!("GraphFake::delete_user_in_m365: no user {id_or_upn}"));
        st.soft_delete(idx);
    }

    /// Permanently deletes a soft-deleted user (by object id or original UPN; bumps delta).
    pub fn purge_deleted(&self, id_or_upn: &str) {
        let mut st = self.lock();
        let i = st
            .find_deleted(id_or_upn)
            .unwrap_or_else(|| panic!("GraphFake::purge_deleted: no deleted user {id_or_upn}"));
        st.purge(i);
    }

    /// Whether soft-deleted users keep their UPN reserved against new users (default true).
    pub fn set_hold_deleted_upns(&self, hold: bool) {
        self.lock().hold_deleted_upns = hold;
    }

    /// Releases the UPNs of soft-deleted users for new users (`set_hold_deleted_upns(false)`).
    pub fn release_deleted_upns(&self) {
        self.set_hold_deleted_upns(false);
    }

    /// The users in the deleted-items bin (original UPN, `deletedDateTime` set), oldest first.
    pub fn deleted_users(&self) -> Vec<Value> {
        self.lock()
            .deleted
            .iter()
            .map(|d| Value::Object(d.user.clone()))
            .collect()
    }

    /// Users per `/users/delta` page, in every round (default 100).
    pub fn set_delta_page_size(&self, n: usize) {
        self.lock().delta_page_size = n.max(1);
    }

    /// Makes every delta token issued so far answer `410 Gone` (full resync required).
    pub fn invalidate_delta_tokens(&self) {
        self.lock().delta_epoch += 1;
    }

    /// The next `n` Graph writes on `/users…` (POST/PATCH/PUT/DELETE, `$batch` items included)
    /// are applied and then answered with `status` and a Graph error body (a lost answer).
    pub fn apply_then_fail_next(&self, n: usize, status: u16) {
        let mut st = self.lock();
        for _ in 0..n {
            st.lost_answers.push_back(status);
        }
    }

    /// Graph HTTP requests received (a `$batch` counts once; token requests don't count).
    pub fn request_count(&self) -> usize {
        self.lock().graph_request_count
    }

    /// Sub-requests received inside `$batch` requests.
    pub fn batch_subrequest_count(&self) -> usize {
        self.lock().batch_subrequest_count
    }

    /// The next `n` Graph requests (each `$batch` item counts; token requests don't) get
    /// `429 Too Many Requests` with `Retry-After: {retry_after}`.
    pub fn throttle_next(&self, n: usize, retry_after: &str) {
        let mut st = self.lock();
        for _ in 0..n {
            st.injections
                .push_back(Injection::Throttle(retry_after.to_string()));
        }
    }

    /// The next `n` Graph requests go through untouched; faults queued after this hit the
    /// requests that follow them (e.g. page 2 of a listing).
    pub fn pass_next(&self, n: usize) {
        let mut st = self.lock();
        for _ in 0..n {
            st.injections.push_back(Injection::Pass);
        }
    }

    /// The next `n` Graph requests fail with `status` (503 carries `Retry-After: 0.05`).
    pub fn fail_next(&self, n: usize, status: u16) {
        let mut st = self.lock();
        for _ in 0..n {
            st.injections.push_back(Injection::Fail(status));
        }
    }

    /// `expires_in` of access tokens issued from now on (default 3599).
    pub fn set_token_lifetime(&self, secs: u64) {
        self.lock().token_lifetime = secs;
    }

    /// Makes every access token issued so far expire now.
    pub fn expire_access_tokens(&self) {
        let now = now_secs();
        for t in self.lock().access_tokens.values_mut() {
            t.expires_at = t.expires_at.min(now);
        }
    }

    /// Revokes every refresh token issued so far (an admin's "revoke sessions").
    pub fn revoke_refresh_tokens(&self) {
        let mut st = self.lock();
        st.generation += 1;
        st.tokens_valid_from = st.generation;
        st.tokens_valid_from_time = now_secs();
    }

    /// The next /authorize answers `error=access_denied` (AADSTS65004) to the redirect URI.
    pub fn deny_next_consent(&self) {
        self.lock().deny_next_consent = true;
    }

    /// Application permissions (`roles`) granted to the app for client-credentials tokens.
    /// Default: User.ReadWrite.All, User-PasswordProfile.ReadWrite.All, Domain.Read.All,
    /// User.RevokeSessions.All.
    pub fn set_app_roles(&self, roles: &[&str]) {
        self.lock().app_roles = roles.iter().map(|r| r.to_string()).collect();
    }

    /// Delegated Graph scopes the consenting admin's tenant does not grant (left out of the
    /// token's `scp` and its `scope` answer), as when an admin unticks them at consent.
    pub fn withhold_delegated_scopes(&self, scopes: &[&str]) {
        self.lock().withheld_scopes = scopes.iter().map(|r| r.to_string()).collect();
    }

    /// Every request received (authorize, token, Graph) as (method, path+query). `$batch` items
    /// are logged after their batch as (method, "/v1.0/$batch:" + item url).
    pub fn requests(&self) -> Vec<(String, String)> {
        self.lock().requests.clone()
    }

    /// Form bodies received by /token, in order.
    pub fn token_requests(&self) -> Vec<HashMap<String, String>> {
        self.lock().token_requests.clone()
    }

    /// How each /token request authenticated the client: "client_secret_post",
    /// "client_secret_basic", "private_key_jwt" or "none".
    /// Every applied PATCH of a user, (object id, body), in the order Graph applied them.
    pub fn user_patches(&self) -> Vec<(String, Value)> {
        self.lock().user_patches.clone()
    }

    /// Delays every answer by `latency` (each `$batch` as a whole).
    pub fn set_latency(&self, latency: std::time::Duration) {
        self.lock().latency = latency;
    }

    pub fn client_auth_methods(&self) -> Vec<String> {
        self.lock().client_auth_methods.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for GraphFake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ------------------------------------------------------------------------------------------
// State
// ------------------------------------------------------------------------------------------

struct Domain {
    name: String,
    federated: bool,
    is_default: bool,
    is_initial: bool,
    is_verified: bool,
    /// Its `internalDomainFederation` (with `id`), once federated through Graph.
    federation: Option<Map<String, Value>>,
}

/// A soft-deleted user in the deleted-items bin (user-delete.md: restorable for 30 days).
struct Deleted {
    user: Map<String, Value>,
    /// Its manager when it was deleted (restored with it if that manager is still active).
    manager: Option<String>,
    deleted_at: u64,
}

/// Change tracking for one user: counter values of its last changes.
struct Track {
    /// Stable ordering key within delta rounds (counter value when inserted or restored).
    order: u64,
    /// When it was created or last restored.
    born: u64,
    /// Property → counter value of its last change (present = "has been set").
    props: HashMap<String, u64>,
    /// Counter value of the last manager change (0 = never).
    manager: u64,
    /// The manager removed by the last manager change, if it removed one.
    prev_manager: Option<String>,
    /// Soft-deleted ("changed") or purged ("deleted") at this counter value.
    gone: Option<(u64, &'static str)>,
}

/// Soft-deleted users are purged after this long (user-delete.md: 30 days).
const DELETED_RETENTION_SECS: u64 = 30 * 24 * 3600;

enum Injection {
    Throttle(String),
    Fail(u16),
    /// Let one request through untouched (queue it before faults to aim them mid-stream).
    Pass,
}

struct AuthCode {
    client_id: String,
    redirect_uri: String,
    scopes: Vec<String>,
    challenge: Option<(String, String)>, // (challenge, method)
    nonce: Option<String>,
    expires_at: u64,
    redeemed: bool,
}

struct AccessToken {
    expires_at: u64,
    app_only: bool,
    /// Delegated: consented Graph scopes (short names). App-only: granted roles.
    permissions: Vec<String>,
}

struct RefreshToken {
    client_id: String,
    scopes: Vec<String>,
    generation: u64,
    issued_at: u64,
}

struct State {
    origin: String,
    redirect_uris: Vec<String>,
    certificates: Vec<openssl::x509::X509>,
    domains: Vec<Domain>,
    /// Active users in creation (or restore) order.
    users: Vec<Map<String, Value>>,
    /// Lowercased object id → position in `users`.
    by_id: HashMap<String, usize>,
    /// Lowercased userPrincipalName → position in `users`.
    by_upn: HashMap<String, usize>,
    /// onPremisesImmutableId (case-sensitive) → object ids of active users holding it.
    by_immutable: HashMap<String, Vec<String>>,
    /// Soft-deleted users (the deleted-items bin), oldest first.
    deleted: Vec<Deleted>,
    /// FAKE CHOICE (default true): a soft-deleted user's UPN stays reserved against POST and
    /// PATCH. Reference §10 quotes observations that a new user may take it at once, while
    /// Microsoft 365 admin guidance says the address can take up to 24 hours to be released.
    hold_deleted_upns: bool,
    /// user id → manager id (active users only).
    managers: HashMap<String, String>,
    /// The change counter (every write to a user bumps it).
    seq: u64,
    /// Change tracking per user id (kept after deletion for `@removed`).
    tracks: HashMap<String, Track>,
    delta_page_size: usize,
    /// Tokens from an older epoch answer 410 Gone.
    delta_epoch: u64,
    lost_answers: VecDeque<u16>,
    graph_request_count: usize,
    batch_subrequest_count: usize,
    codes: HashMap<String, AuthCode>,
    access_tokens: HashMap<String, AccessToken>,
    refresh_tokens: HashMap<String, RefreshToken>,
    generation: u64,
    tokens_valid_from: u64,
    tokens_valid_from_time: u64,
    token_lifetime: u64,
    app_roles: Vec<String>,
    withheld_scopes: Vec<String>,
    injections: VecDeque<Injection>,
    deny_next_consent: bool,
    requests: Vec<(String, String)>,
    /// Every applied PATCH of a user: (object id, the body as sent), in the order applied.
    user_patches: Vec<(String, Value)>,
    /// Added before every answer (a slow Microsoft, to catch a node mid-round).
    latency: std::time::Duration,
    token_requests: Vec<HashMap<String, String>>,
    client_auth_methods: Vec<String>,
}

impl State {
    fn new(origin: &str) -> State {
        State {
            origin: origin.to_string(),
            redirect_uris: Vec::new(),
            certificates: Vec::new(),
            domains: vec![Domain {
                name: INITIAL_DOMAIN.into(),
                federated: false,
                is_default: true,
                is_initial: true,
                is_verified: true,
                federation: None,
            }],
            users: Vec::new(),
            by_id: HashMap::new(),
            by_upn: HashMap::new(),
            by_immutable: HashMap::new(),
            deleted: Vec::new(),
            hold_deleted_upns: true,
            managers: HashMap::new(),
            seq: 0,
            tracks: HashMap::new(),
            delta_page_size: 100,
            delta_epoch: 0,
            lost_answers: VecDeque::new(),
            graph_request_count: 0,
            batch_subrequest_count: 0,
            codes: HashMap::new(),
            access_tokens: HashMap::new(),
            refresh_tokens: HashMap::new(),
            generation: 0,
            tokens_valid_from: 0,
            tokens_valid_from_time: 0,
            token_lifetime: 3599,
            app_roles: vec![
                "User.ReadWrite.All".into(),
                "User-PasswordProfile.ReadWrite.All".into(),
                "Domain.Read.All".into(),
                "User.RevokeSessions.All".into(),
            ],
            withheld_scopes: Vec::new(),
            injections: VecDeque::new(),
            deny_next_consent: false,
            requests: Vec::new(),
            user_patches: Vec::new(),
            latency: std::time::Duration::ZERO,
            token_requests: Vec::new(),
            client_auth_methods: Vec::new(),
        }
    }

    fn login_base(&self) -> &str {
        &self.origin
    }

    fn graph_base(&self) -> String {
        format!("{}/v1.0", self.origin)
    }

    /// Position of the active user with this object id or UPN (case-insensitive).
    fn find_user(&self, key: &str) -> Option<usize> {
        let k = key.to_lowercase();
        self.by_id.get(&k).or_else(|| self.by_upn.get(&k)).copied()
    }

    fn user_id(&self, idx: usize) -> String {
        self.users[idx]["id"].as_str().unwrap_or("").to_string()
    }

    /// Object ids of active users holding this onPremisesImmutableId (case-sensitive).
    fn immutable_holders(&self, immutable: &str) -> &[String] {
        self.by_immutable
            .get(immutable)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    fn index_user(&mut self, idx: usize) {
        let u = &self.users[idx];
        let id = u["id"].as_str().unwrap_or("").to_string();
        let upn = u["userPrincipalName"].as_str().map(str::to_lowercase);
        let imm = u
            .get("onPremisesImmutableId")
            .and_then(Value::as_str)
            .map(str::to_string);
        self.by_id.insert(id.to_lowercase(), idx);
        if let Some(upn) = upn {
            self.by_upn.insert(upn, idx);
        }
        if let Some(imm) = imm {
            self.by_immutable.entry(imm).or_default().push(id);
        }
    }

    fn unindex_user(&mut self, idx: usize) {
        let u = &self.users[idx];
        let id = u["id"].as_str().unwrap_or("").to_string();
        let upn = u["userPrincipalName"].as_str().map(str::to_lowercase);
        let imm = u
            .get("onPremisesImmutableId")
            .and_then(Value::as_str)
            .map(str::to_string);
        self.by_id.remove(&id.to_lowercase());
        if let Some(upn) = upn {
            if self.by_upn.get(&upn) == Some(&idx) {
                self.by_upn.remove(&upn);
            }
        }
        if let Some(imm) = imm {
            if let Some(ids) = self.by_immutable.get_mut(&imm) {
                ids.retain(|i| *i != id);
                if ids.is_empty() {
                    self.by_immutable.remove(&imm);
                }
            }
        }
    }

    /// Appends an active user and indexes it; returns its position.
    fn insert_user(&mut self, m: Map<String, Value>) -> usize {
        self.users.push(m);
        let idx = self.users.len() - 1;
        self.index_user(idx);
        idx
    }

    /// Removes an active user (keeping the others' order) and fixes the positions after it.
    fn remove_user(&mut self, idx: usize) -> Map<String, Value> {
        self.unindex_user(idx);
        let u = self.users.remove(idx);
        for i in idx..self.users.len() {
            let id = self.users[i]["id"].as_str().unwrap_or("").to_lowercase();
            let upn = self.users[i]["userPrincipalName"]
                .as_str()
                .map(str::to_lowercase);
            self.by_id.insert(id, i);
            if let Some(upn) = upn {
                self.by_upn.insert(upn, i);
            }
        }
        u
    }

    /// Next value of the change counter.
    fn bump(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Starts tracking a user created or restored at `seq`; set properties count as changed.
    fn track_new(&mut self, idx: usize, seq: u64) {
        let u = &self.users[idx];
        let id = u["id"].as_str().unwrap_or("").to_string();
        let props: HashMap<String, u64> = u
            .iter()
            .filter(|(k, v)| !v.is_null() && *k != "id")
            .map(|(k, _)| (k.clone(), seq))
            .collect();
        let t = self.tracks.entry(id).or_insert_with(|| Track {
            order: seq,
            born: seq,
            props: HashMap::new(),
            manager: 0,
            prev_manager: None,
            gone: None,
        });
        t.order = seq;
        t.born = seq;
        t.gone = None;
        t.props.extend(props);
    }

    /// Writes one (canonical) property of an active user, keeping indexes and change tracking
    /// in step. Unless `always`, writing the value it already has is not a change.
    fn write_prop(&mut self, idx: usize, name: &str, value: Value, seq: u64, always: bool) {
        if !always && self.users[idx].get(name) == Some(&value) {
            return;
        }
        let reindex = name == "userPrincipalName" || name == "onPremisesImmutableId";
        if reindex {
            self.unindex_user(idx);
        }
        self.users[idx].insert(name.to_string(), value);
        if reindex {
            self.index_user(idx);
        }
        let id = self.user_id(idx);
        if let Some(t) = self.tracks.get_mut(&id) {
            t.props.insert(name.to_string(), seq);
        }
    }

    /// Sets or removes a manager link (`uid` → `manager`), tracking the change for delta.
    fn set_manager_link(&mut self, uid: &str, manager: Option<String>, seq: u64) {
        let old = match &manager {
            Some(m) => self.managers.insert(uid.to_string(), m.clone()),
            None => self.managers.remove(uid),
        };
        if old == manager {
            return;
        }
        if let Some(t) = self.tracks.get_mut(uid) {
            t.manager = seq;
            t.prev_manager = if manager.is_none() { old } else { None };
        }
    }

    /// DELETE /users/{id}: moves the user to the deleted-items bin. Its reports lose it as
    /// manager (FAKE CHOICE); its own manager link is kept for a restore.
    fn soft_delete(&mut self, idx: usize) {
        let seq = self.bump();
        let mut u = self.remove_user(idx);
        let id = u["id"].as_str().unwrap_or("").to_string();
        u.insert("deletedDateTime".into(), json!(now_iso()));
        let manager = self.managers.remove(&id);
        let reports: Vec<String> = self
            .managers
            .iter()
            .filter(|(_, m)| **m == id)
            .map(|(r, _)| r.clone())
            .collect();
        for r in reports {
            self.set_manager_link(&r, None, seq);
        }
        if let Some(t) = self.tracks.get_mut(&id) {
            t.gone = Some((seq, "changed"));
        }
        self.deleted.push(Deleted {
            user: u,
            manager,
            deleted_at: now_secs(),
        });
    }

    /// Position in the bin of a soft-deleted user, by object id or original UPN.
    fn find_deleted(&self, key: &str) -> Option<usize> {
        self.deleted.iter().position(|d| {
            d.user["id"]
                .as_str()
                .is_some_and(|id| id.eq_ignore_ascii_case(key))
                || d.user["userPrincipalName"]
                    .as_str()
                    .is_some_and(|upn| upn.eq_ignore_ascii_case(key))
        })
    }

    /// Permanently deletes a user from the bin.
    fn purge(&mut self, i: usize) {
        let seq = self.bump();
        let d = self.deleted.remove(i);
        let id = d.user["id"].as_str().unwrap_or("");
        if let Some(t) = self.tracks.get_mut(id) {
            t.gone = Some((seq, "deleted"));
        }
    }

    /// Purges bin entries older than 30 days (user-delete.md).
    fn purge_expired(&mut self) {
        let now = now_secs();
        while let Some(i) = self
            .deleted
            .iter()
            .position(|d| d.deleted_at + DELETED_RETENTION_SECS <= now)
        {
            self.purge(i);
        }
    }

    /// Whether a UPN is taken by an active user, or held by a soft-deleted one.
    fn upn_taken(&self, upn: &str) -> bool {
        self.find_user(upn).is_some()
            || (self.hold_deleted_upns
                && self.deleted.iter().any(|d| {
                    d.user["userPrincipalName"]
                        .as_str()
                        .is_some_and(|u| u.eq_ignore_ascii_case(upn))
                }))
    }

    fn domain(&self, name: &str) -> Option<&Domain> {
        self.domains
            .iter()
            .find(|d| d.name.eq_ignore_ascii_case(name))
    }

    fn upn_domain_federated(&self, upn: &str) -> bool {
        upn.rsplit_once('@')
            .and_then(|(_, d)| self.domain(d))
            .is_some_and(|d| d.federated)
    }

    /// Accepted `{tenant}` path values: organizations/common, the tenant id, verified domains.
    fn tenant_ok(&self, tenant: &str) -> bool {
        tenant.eq_ignore_ascii_case("organizations")
            || tenant.eq_ignore_ascii_case("common")
            || tenant.eq_ignore_ascii_case(GraphFake::TENANT_ID)
            || self.domain(tenant).is_some()
    }

    fn seed_user(&mut self, u: FakeUserSpec) -> String {
        assert!(
            self.find_user(&u.upn).is_none(),
            "GraphFake::add_user: duplicate UPN {}",
            u.upn
        );
        if let Some(manager) = &u.manager {
            assert!(
                self.find_user(manager).is_some(),
                "GraphFake::add_user: no manager {manager}"
            );
        }
        let alias = u.upn.split('@').next().unwrap_or_default().to_string();
        let display = u
            .display_name
            .clone()
            .unwrap_or_else(|| match (&u.given_name, &u.surname) {
                (Some(g), Some(s)) => format!("{g} {s}"),
                _ => alias.clone(),
            });
        let id = guid();
        let now = now_iso();
        let mut m = Map::new();
        m.insert("id".into(), json!(id));
        m.insert("accountEnabled".into(), json!(u.account_enabled));
        m.insert("businessPhones".into(), json!(u.business_phones));
        m.insert("city".into(), json!(u.city));
        m.insert("companyName".into(), json!(u.company_name));
        m.insert("country".into(), json!(u.country));
        m.insert("createdDateTime".into(), json!(now));
        m.insert("department".into(), json!(u.department));
        m.insert("displayName".into(), json!(display));
        m.insert("employeeId".into(), json!(u.employee_id));
        m.insert("givenName".into(), json!(u.given_name));
        m.insert("jobTitle".into(), json!(u.job_title));
        m.insert("lastPasswordChangeDateTime".into(), json!(now));
        m.insert("mail".into(), json!(u.mail));
        m.insert(
            "mailNickname".into(),
            json!(u.mail_nickname.clone().unwrap_or(alias)),
        );
        m.insert("mobilePhone".into(), json!(u.mobile_phone));
        m.insert("officeLocation".into(), json!(u.office_location));
        m.insert("onPremisesImmutableId".into(), json!(u.immutable_id));
        m.insert("otherMails".into(), json!([]));
        m.insert("passwordPolicies".into(), Value::Null);
        m.insert(
            "passwordProfile".into(),
            json!({"password": u.password, "forceChangePasswordNextSignIn": false,
                   "forceChangePasswordNextSignInWithMfa": false}),
        );
        m.insert("preferredLanguage".into(), Value::Null);
        m.insert(
            "proxyAddresses".into(),
            json!(u
                .mail
                .iter()
                .map(|m| format!("SMTP:{m}"))
                .collect::<Vec<_>>()),
        );
        m.insert("surname".into(), json!(u.surname));
        m.insert("usageLocation".into(), json!(u.usage_location));
        m.insert("userPrincipalName".into(), json!(u.upn));
        m.insert("userType".into(), json!("Member"));
        let seq = self.bump();
        let idx = self.insert_user(m);
        self.track_new(idx, seq);
        if let Some(manager) = u.manager {
            let mid = self.find_user(&manager).map(|i| self.user_id(i));
            self.set_manager_link(&id, mid, seq);
        }
        id
    }

    fn next_injection(&mut self) -> Option<Injection> {
        match self.injections.pop_front() {
            Some(Injection::Pass) | None => None,
            fault => fault,
        }
    }
}

// ------------------------------------------------------------------------------------------
// Small helpers
// ------------------------------------------------------------------------------------------

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn now_iso() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    openssl::rand::rand_bytes(&mut b).expect("random");
    b
}

fn guid() -> String {
    let mut b = random_bytes(16);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn opaque(n: usize) -> String {
    B64URL.encode(random_bytes(n))
}

/// Percent-decoding for path segments (`+` stays `+`).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encoding for query values in links we build.
fn qenc(s: &str) -> String {
    let mut out = String::new();
    for c in s.bytes() {
        if c.is_ascii_alphanumeric() || b"-._~$,'()*:@/".contains(&c) {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

fn query_pairs(q: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(q.as_bytes())
        .into_owned()
        .collect()
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

// ------------------------------------------------------------------------------------------
// Entry point: one fallback handler routes everything
// ------------------------------------------------------------------------------------------

async fn handle(AxState(state): AxState<Shared>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, 16 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let method = parts.method.as_str().to_uppercase();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or("").to_string();
    let path_q = if query.is_empty() {
        path.clone()
    } else {
        format!("{path}?{query}")
    };
    let latency = state.lock().unwrap_or_else(|e| e.into_inner()).latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
    st.requests.push((method.clone(), path_q));

    if path == "/v1.0" || path.starts_with("/v1.0/") {
        return graph_entry(&mut st, &method, &path, &query, &parts.headers, &bytes);
    }
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method.as_str(), segs.as_slice()) {
        ("GET", [tenant, "oauth2", "v2.0", "authorize"]) => authorize(&mut st, tenant, &query),
        ("POST", [tenant, "oauth2", "v2.0", "token"]) => {
            token(&mut st, tenant, &path, &parts.headers, &bytes)
        }
        ("GET", [_tenant, "discovery", "v2.0", "keys"]) => json_response(200, &jwks(), &[]),
        // v2-protocols-oidc "Send a sign-out request": back to post_logout_redirect_uri when
        // it is a registered redirect URI, else Microsoft's own signed-out page.
        ("GET", [_tenant, "oauth2", "v2.0", "logout"]) => {
            let q = Query::parse(&query);
            match q.get("post_logout_redirect_uri") {
                Some(uri) if st.redirect_uris.iter().any(|u| u == uri) => Response::builder()
                    .status(302)
                    .header("location", uri)
                    .body(Body::empty())
                    .unwrap(),
                _ => Response::builder()
                    .status(200)
                    .header("content-type", "text/html")
                    .body(Body::from("<h1>You signed out of your account</h1>"))
                    .unwrap(),
            }
        }
        ("GET", [tenant, "v2.0", ".well-known", "openid-configuration"]) => {
            let base = st.login_base().to_string();
            json_response(
                200,
                &json!({
                    "authorization_endpoint": format!("{base}/{tenant}/oauth2/v2.0/authorize"),
                    "token_endpoint": format!("{base}/{tenant}/oauth2/v2.0/token"),
                    "jwks_uri": format!("{base}/{tenant}/discovery/v2.0/keys"),
                    "issuer": format!("{base}/{}/v2.0", GraphFake::TENANT_ID),
                    "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                    "response_modes_supported": ["query", "fragment", "form_post"],
                    "id_token_signing_alg_values_supported": ["RS256"],
                    "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
                    "scopes_supported": ["openid", "profile", "email", "offline_access"],
                    "subject_types_supported": ["pairwise"],
                }),
                &[],
            )
        }
        _ => Response::builder()
            .status(404)
            .body(Body::from("Not Found"))
            .unwrap(),
    }
}

fn json_response(status: u16, body: &Value, headers: &[(&str, String)]) -> Response {
    let mut b = Response::builder()
        .status(status)
        .header("content-type", "application/json; charset=utf-8")
        .header("cache-control", "no-store, no-cache");
    for (k, v) in headers {
        b = b.header(*k, v);
    }
    b.body(Body::from(body.to_string())).unwrap()
}

fn html_response(status: u16, html: String) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "text/html; charset=utf-8")
        .body(Body::from(html))
        .unwrap()
}

// ------------------------------------------------------------------------------------------
// Identity platform: errors
// ------------------------------------------------------------------------------------------

/// The v2.0 endpoint error shape.
/// Docs: entra-docs docs/identity-platform/v2-oauth2-auth-code-flow.md ("Error response") and
/// reference-error-codes.md (sample with Trace ID / Correlation ID / Timestamp in the description).
struct OAuthError {
    status: u16,
    error: &'static str,
    code: u32,
    message: String,
}

impl OAuthError {
    fn new(error: &'static str, code: u32, message: impl Into<String>) -> OAuthError {
        OAuthError {
            status: if error == "invalid_client" { 401 } else { 400 },
            error,
            code,
            message: message.into(),
        }
    }

    fn description(&self, trace: &str, corr: &str, ts: &str) -> String {
        format!(
            "AADSTS{}: {}\r\nTrace ID: {trace}\r\nCorrelation ID: {corr}\r\nTimestamp: {ts}",
            self.code, self.message
        )
    }

    fn into_response(self) -> Response {
        let (trace, corr) = (guid(), guid());
        let ts = chrono::Utc::now().format("%Y-%m-%d %H:%M:%SZ").to_string();
        let body = json!({
            "error": self.error,
            "error_description": self.description(&trace, &corr, &ts),
            "error_codes": [self.code],
            "timestamp": ts,
            "trace_id": trace,
            "correlation_id": corr,
            "error_uri": format!("https://login.microsoftonline.com/error?code={}", self.code),
        });
        let mut extra = vec![("x-ms-request-id", trace.clone())];
        if self.status == 401 {
            extra.push(("www-authenticate", "Basic realm=\"\"".to_string()));
        }
        json_response(self.status, &body, &extra)
    }
}

fn missing_param(name: &str) -> OAuthError {
    OAuthError::new(
        "invalid_request",
        900144,
        format!("The request body must contain the following parameter: '{name}'."),
    )
}

fn tenant_not_found(tenant: &str) -> OAuthError {
    OAuthError::new(
        "invalid_request",
        90002,
        format!("Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant."),
    )
}

fn app_not_found(client_id: &str) -> OAuthError {
    OAuthError::new(
        "unauthorized_client",
        700016,
        format!("Application with identifier '{client_id}' was not found in the directory '{}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.", GraphFake::TENANT_ID),
    )
}

fn reply_mismatch(uri: &str) -> OAuthError {
    OAuthError::new(
        "invalid_request",
        50011,
        format!("The redirect URI '{uri}' specified in the request does not match the redirect URIs configured for the application '{}'. Make sure the redirect URI sent in the request matches one added to your application in the Azure portal. Navigate to https://aka.ms/redirectUriMismatchError to learn more about how to fix this.", GraphFake::CLIENT_ID),
    )
}

/// Microsoft shows errors it cannot send back to a trusted redirect URI on its own page.
fn error_page(e: OAuthError) -> Response {
    let desc = e.description(&guid(), &guid(), &now_iso());
    let esc = desc
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    html_response(
        400,
        format!(
            "<!DOCTYPE html><html><head><title>Sign in to your account</title></head><body>\
             <div id=\"error\" data-error=\"{}\" data-error-code=\"AADSTS{}\">\
             <h1>Sorry, but we're having trouble signing you in.</h1><p>{}</p></div></body></html>",
            e.error,
            e.code,
            esc.replace("\r\n", "<br>")
        ),
    )
}

/// Graph scope resource normalisation: the Graph resource may be named by its URI
/// (`https://graph.microsoft.com`), the fake's own origin (idbridge derives the resource from
/// its configured graph_base_url), or its app id. A bare permission name means Graph.
fn split_scope<'a>(st: &State, scope: &'a str) -> (Option<String>, &'a str) {
    const OIDC: [&str; 4] = ["openid", "profile", "email", "offline_access"];
    if OIDC.iter().any(|o| o.eq_ignore_ascii_case(scope)) {
        return (None, scope);
    }
    match scope.rfind('/') {
        Some(i) => {
            let res = scope[..i].trim_end_matches('/');
            let name = &scope[i + 1..];
            let graph = res.eq_ignore_ascii_case("https://graph.microsoft.com")
                || res.eq_ignore_ascii_case(&st.origin)
                || res.eq_ignore_ascii_case(GRAPH_APP_ID);
            (
                Some(if graph {
                    "graph".into()
                } else {
                    res.to_string()
                }),
                name,
            )
        }
        None => (Some("graph".into()), scope),
    }
}

// ------------------------------------------------------------------------------------------
// GET /{tenant}/oauth2/v2.0/authorize
// Docs: entra-docs docs/identity-platform/v2-oauth2-auth-code-flow.md ("Request an
// authorization code", "Successful response", "Error response", error codes table);
// reference-error-codes.md (AADSTS50011, AADSTS700016, AADSTS65004, AADSTS90002, AADSTS900144).
// The fake plays an admin who is signed in and consents to whatever is asked.
// ------------------------------------------------------------------------------------------

fn authorize(st: &mut State, tenant: &str, query: &str) -> Response {
    let q: HashMap<String, String> = query_pairs(query).into_iter().collect();
    if !st.tenant_ok(tenant) {
        return error_page(tenant_not_found(tenant));
    }
    let Some(client_id) = q.get("client_id") else {
        return error_page(missing_param("client_id"));
    };
    if client_id != GraphFake::CLIENT_ID {
        return error_page(app_not_found(client_id));
    }
    // Microsoft never redirects to an unregistered URI: these errors are shown on its page.
    let Some(redirect_uri) = q.get("redirect_uri").cloned() else {
        return error_page(missing_param("redirect_uri"));
    };
    if !st.redirect_uris.contains(&redirect_uri) {
        return error_page(reply_mismatch(&redirect_uri));
    }
    let state = q.get("state").cloned();
    let response_mode = q
        .get("response_mode")
        .map(String::as_str)
        .unwrap_or("query")
        .to_string();
    let redirect_err = |st: &mut State, e: OAuthError| {
        let _ = st;
        let desc = e.description(&guid(), &guid(), &now_iso());
        let mut params = vec![
            ("error".to_string(), e.error.to_string()),
            ("error_description".to_string(), desc),
        ];
        if let Some(s) = &state {
            params.push(("state".into(), s.clone()));
        }
        redirect_with(&redirect_uri, &response_mode, &params)
    };
    if !["query", "fragment", "form_post"].contains(&response_mode.as_str()) {
        return redirect_err(
            st,
            OAuthError::new(
                "invalid_request",
                90015, // FAKE CHOICE of number; the error name follows the docs table
                format!("The response_mode '{response_mode}' is not supported."),
            ),
        );
    }
    match q.get("response_type").map(String::as_str) {
        None => return redirect_err(st, missing_param("response_type")),
        Some("code") => {}
        Some(rt) if rt.split(' ').any(|p| p == "code") => {
            // Hybrid flow needs the implicit-grant ID token setting, which this app lacks.
            return redirect_err(
                st,
                OAuthError::new(
                    "unsupported_response_type",
                    700054,
                    "response_type 'id_token' is not enabled for the application.",
                ),
            );
        }
        Some(rt) => {
            return redirect_err(
                st,
                OAuthError::new(
                    "unsupported_response_type",
                    70007,
                    format!("The application returned an unsupported response_type '{rt}'."),
                ),
            )
        }
    }
    let scope = q.get("scope").cloned().unwrap_or_default();
    let scopes: Vec<String> = scope.split_whitespace().map(str::to_string).collect();
    if scopes.is_empty() {
        return redirect_err(st, missing_param("scope"));
    }
    if let Some(p) = q.get("prompt") {
        if !["login", "none", "consent", "select_account", "create"].contains(&p.as_str()) {
            return redirect_err(
                st,
                OAuthError::new(
                    "invalid_request",
                    90023,
                    format!("Invalid prompt parameter value '{p}'."), // FAKE CHOICE of text
                ),
            );
        }
    }
    // PKCE: "If excluded, code_challenge is assumed to be plaintext if code_challenge is
    // included. The Microsoft identity platform supports both plain and S256." (auth-code doc)
    let challenge = match (q.get("code_challenge"), q.get("code_challenge_method")) {
        (None, Some(_)) => return redirect_err(st, missing_param("code_challenge")),
        (None, None) => None,
        (Some(c), m) => {
            let m = m.cloned().unwrap_or_else(|| "plain".into());
            if m != "S256" && m != "plain" {
                return redirect_err(
                    st,
                    OAuthError::new(
                        "invalid_request",
                        501471, // FAKE CHOICE of number
                        format!("Invalid code_challenge_method '{m}'. Supported values are 'plain' and 'S256'."),
                    ),
                );
            }
            if c.len() < 43 || c.len() > 128 {
                return redirect_err(
                    st,
                    OAuthError::new(
                        "invalid_request",
                        501491,
                        "Invalid size of Code_Challenge parameter.",
                    ),
                );
            }
            Some((c.clone(), m))
        }
    };
    if std::mem::take(&mut st.deny_next_consent) {
        return redirect_err(
            st,
            OAuthError::new(
                "access_denied",
                65004,
                "User declined to consent to access the app.",
            ),
        );
    }
    let code = format!("1.A{}", opaque(96));
    st.codes.insert(
        code.clone(),
        AuthCode {
            client_id: client_id.clone(),
            redirect_uri: redirect_uri.clone(),
            scopes,
            challenge,
            nonce: q.get("nonce").cloned(),
            expires_at: now_secs() + 600,
            redeemed: false,
        },
    );
    let mut params = vec![("code".to_string(), code)];
    if let Some(s) = &state {
        params.push(("state".into(), s.clone()));
    }
    params.push(("session_state".into(), guid()));
    redirect_with(&redirect_uri, &response_mode, &params)
}

fn redirect_with(redirect_uri: &str, mode: &str, params: &[(String, String)]) -> Response {
    if mode == "form_post" {
        let inputs: String = params
            .iter()
            .map(|(k, v)| {
                format!(
                    "<input type=\"hidden\" name=\"{k}\" value=\"{}\" />",
                    v.replace('&', "&amp;")
                        .replace('"', "&quot;")
                        .replace('<', "&lt;")
                )
            })
            .collect();
        return html_response(
            200,
            format!(
                "<html><head><title>Working...</title></head><body><form method=\"POST\" name=\"hiddenform\" action=\"{redirect_uri}\">{inputs}<noscript><input type=\"submit\" value=\"Continue\"/></noscript></form><script>document.forms[0].submit()</script></body></html>"
            ),
        );
    }
    let encoded: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params.iter())
        .finish();
    let location = if mode == "fragment" {
        format!("{redirect_uri}#{encoded}")
    } else if redirect_uri.contains('?') {
        format!("{redirect_uri}&{encoded}")
    } else {
        format!("{redirect_uri}?{encoded}")
    };
    Response::builder()
        .status(302)
        .header("location", location)
        .header("cache-control", "no-store, no-cache")
        .body(Body::empty())
        .unwrap()
}

// ------------------------------------------------------------------------------------------
// POST /{tenant}/oauth2/v2.0/token
// Docs: entra-docs docs/identity-platform/v2-oauth2-auth-code-flow.md ("Redeem a code",
// "Refresh the access token", error table), v2-oauth2-client-creds-grant-flow.md (scope must be
// `{resource}/.default`, no refresh token), refresh-tokens.md (a refresh returns a new refresh
// token; the old one is not revoked), certificate-credentials.md (client assertion header and
// claims), reference-error-codes.md (AADSTS numbers).
// ------------------------------------------------------------------------------------------

fn token(st: &mut State, tenant: &str, path: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
    st.token_requests.push(form.clone());
    match token_inner(st, tenant, path, headers, &form) {
        Ok(v) => json_response(200, &v, &[]),
        Err(e) => e.into_response(),
    }
}

fn token_inner(
    st: &mut State,
    tenant: &str,
    path: &str,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<Value, OAuthError> {
    if !st.tenant_ok(tenant) {
        st.client_auth_methods.push("none".into());
        return Err(tenant_not_found(tenant));
    }
    // Client authentication: client_secret (body), HTTP Basic, or a JWT client assertion.
    let basic = header_str(headers, "authorization").and_then(|h| {
        let rest = h
            .strip_prefix("Basic ")
            .or_else(|| h.strip_prefix("basic "))?;
        let dec = String::from_utf8(B64.decode(rest.trim()).ok()?).ok()?;
        let (id, secret) = dec.split_once(':')?;
        let unesc = |s: &str| {
            url::form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        Some((unesc(id), unesc(secret)))
    });
    let client_id = form
        .get("client_id")
        .cloned()
        .or_else(|| basic.as_ref().map(|(id, _)| id.clone()));
    let method = if basic.is_some() {
        "client_secret_basic"
    } else if form.contains_key("client_assertion") {
        "private_key_jwt"
    } else if form.contains_key("client_secret") {
        "client_secret_post"
    } else {
        "none"
    };
    st.client_auth_methods.push(method.into());

    let Some(grant_type) = form.get("grant_type").cloned() else {
        return Err(missing_param("grant_type"));
    };
    let Some(client_id) = client_id else {
        return Err(missing_param("client_id"));
    };
    if client_id != GraphFake::CLIENT_ID {
        return Err(app_not_found(&client_id));
    }
    if let Some((id, _)) = &basic {
        if form.get("client_id").is_some_and(|c| c != id) {
            return Err(OAuthError::new(
                "invalid_client",
                700021, // FAKE CHOICE
                "The client_id in the Authorization header doesn't match the client_id parameter.",
            ));
        }
    }
    let secret = basic
        .as_ref()
        .map(|(_, s)| s.clone())
        .or_else(|| form.get("client_secret").cloned());
    match (&secret, form.get("client_assertion")) {
        (None, None) => {
            return Err(OAuthError::new(
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            ))
        }
        (Some(s), _) if s != GraphFake::CLIENT_SECRET => {
            return Err(OAuthError::new(
                "invalid_client",
                7000215,
                format!("Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{}'.", GraphFake::CLIENT_ID),
            ))
        }
        _ => {}
    }
    if let Some(assertion) = form.get("client_assertion") {
        if form.get("client_assertion_type").map(String::as_str) != Some(JWT_BEARER) {
            return Err(OAuthError::new(
                "invalid_request",
                700020, // FAKE CHOICE of number
                format!("The client_assertion_type must be '{JWT_BEARER}'."),
            ));
        }
        check_client_assertion(st, tenant, path, assertion)?;
    }

    match grant_type.as_str() {
        "authorization_code" => grant_code(st, form),
        "refresh_token" => grant_refresh(st, form),
        "client_credentials" => grant_client_credentials(st, tenant, form),
        other => Err(OAuthError::new(
            "unsupported_grant_type",
            70003,
            format!("The app requested an unsupported grant type '{other}'."),
        )),
    }
}

/// Client assertion per certificate-credentials.md: header alg PS256 (RS256 is still accepted
/// by the service and used by most libraries) with x5t#S256 (or legacy x5t); claims aud = the
/// token endpoint, iss = sub = client id, exp in the future, nbf not in the future.
fn check_client_assertion(
    st: &State,
    tenant: &str,
    path: &str,
    jwt: &str,
) -> Result<(), OAuthError> {
    let malformed = || {
        OAuthError::new(
            "invalid_client",
            50027,
            "JWT token is invalid or malformed.",
        )
    };
    let parts: Vec<&str> = jwt.split('.').collect();
    if parts.len() != 3 {
        return Err(malformed());
    }
    let decode = |s: &str| -> Option<Value> {
        serde_json::from_slice(&B64URL.decode(s.trim_end_matches('=')).ok()?).ok()
    };
    let header = decode(parts[0]).ok_or_else(malformed)?;
    let claims = decode(parts[1]).ok_or_else(malformed)?;
    let alg = header["alg"].as_str().unwrap_or("");
    if alg != "RS256" && alg != "PS256" {
        return Err(OAuthError::new(
            "invalid_client",
            5002738,
            format!("Invalid JWT token. '{alg}' is not a supported signature algorithm. Supported signing algorithms are: 'RS256, RS384, RS512, PS256'"),
        ));
    }
    let x5t256 = header["x5t#S256"].as_str();
    let x5t = header["x5t"].as_str();
    if x5t256.is_none() && x5t.is_none() {
        return Err(OAuthError::new(
            "invalid_client",
            700027,
            "Client assertion failed signature validation. The header has no 'x5t#S256' or 'x5t' thumbprint to find the key.",
        ));
    }
    if claims["iss"].as_str() != Some(GraphFake::CLIENT_ID)
        || claims["sub"].as_str() != Some(GraphFake::CLIENT_ID)
    {
        return Err(OAuthError::new(
            "invalid_client",
            700021,
            "Client assertion application identifier doesn't match 'client_id' parameter.",
        ));
    }
    let aud = claims["aud"].as_str().unwrap_or("");
    let base = st.login_base();
    let mut tenants = vec![tenant.to_string(), GraphFake::TENANT_ID.to_string()];
    tenants.extend(st.domains.iter().map(|d| d.name.clone()));
    let aud_ok = aud == format!("{base}{path}")
        || tenants.iter().any(|t| {
            aud.eq_ignore_ascii_case(&format!("{base}/{t}/oauth2/v2.0/token"))
                || aud.eq_ignore_ascii_case(&format!("{base}/{t}/oauth2/token"))
        });
    if !aud_ok {
        return Err(OAuthError::new(
            "invalid_client",
            700023, // FAKE CHOICE of number
            format!(
                "Client assertion audience claim does not match Realm issuer. Audience: '{aud}'."
            ),
        ));
    }
    let now = now_secs() as i64;
    let exp = claims["exp"].as_i64();
    let nbf = claims["nbf"].as_i64();
    if exp.is_none_or(|e| e <= now) || nbf.is_some_and(|n| n > now + 300) {
        return Err(OAuthError::new(
            "invalid_client",
            700024,
            "Client assertion is not within its valid time range.",
        ));
    }
    if !st.certificates.is_empty() {
        let cert = st.certificates.iter().find(|c| {
            let der = c.to_der().unwrap_or_default();
            x5t256 == Some(B64URL.encode(openssl::sha::sha256(&der)).as_str())
                || x5t == Some(B64URL.encode(openssl::sha::sha1(&der)).as_str())
        });
        let Some(cert) = cert else {
            return Err(OAuthError::new(
                "invalid_client",
                700027,
                "The certificate with identifier used to sign the client assertion is not registered on application.",
            ));
        };
        let sig = B64URL.decode(parts[2]).map_err(|_| malformed())?;
        let key = cert.public_key().map_err(|_| malformed())?;
        let mut v = openssl::sign::Verifier::new(openssl::hash::MessageDigest::sha256(), &key)
            .map_err(|_| malformed())?;
        if alg == "PS256" {
            let _ = v.set_rsa_padding(openssl::rsa::Padding::PKCS1_PSS);
            let _ = v.set_rsa_pss_saltlen(openssl::sign::RsaPssSaltlen::DIGEST_LENGTH);
        }
        let signed = format!("{}.{}", parts[0], parts[1]);
        if !v.verify_oneshot(&sig, signed.as_bytes()).unwrap_or(false) {
            return Err(OAuthError::new(
                "invalid_client",
                50012,
                "Client assertion contains an invalid signature.",
            ));
        }
    }
    Ok(())
}

/// Requested token scopes, checked against what was granted. The scope parameter is optional
/// at /token ("if omitted, the token is for the scopes requested on the initial leg").
fn token_scopes(
    st: &State,
    form: &HashMap<String, String>,
    granted: &[String],
) -> Result<Vec<String>, OAuthError> {
    let Some(requested) = form.get("scope") else {
        return Ok(granted.to_vec());
    };
    let requested: Vec<String> = requested.split_whitespace().map(str::to_string).collect();
    let resources: HashSet<String> = requested
        .iter()
        .filter_map(|s| split_scope(st, s).0)
        .collect();
    if resources.len() > 1 {
        return Err(OAuthError::new(
            "invalid_request",
            28000,
            "Provided value for the input parameter scope is not valid because it contains more than one resource. Scope "
                .to_string()
                + &requested.join(" ")
                + " is not valid.",
        ));
    }
    let granted_norm: HashSet<(Option<String>, String)> = granted
        .iter()
        .map(|s| {
            let (r, n) = split_scope(st, s);
            (r, n.to_ascii_lowercase())
        })
        .collect();
    for s in &requested {
        let (r, n) = split_scope(st, s);
        if r.is_some() && !granted_norm.contains(&(r, n.to_ascii_lowercase())) {
            return Err(OAuthError::new(
                "invalid_grant",
                65001,
                format!("The user or administrator has not consented to use the application with ID '{}' named 'idbridge'. Send an interactive authorization request for this user and resource.", GraphFake::CLIENT_ID),
            ));
        }
    }
    // OIDC scopes always travel with the grant.
    let mut out = requested;
    for s in granted {
        if split_scope(st, s).0.is_none() && !out.iter().any(|o| o.eq_ignore_ascii_case(s)) {
            out.push(s.clone());
        }
    }
    Ok(out)
}

fn grant_code(st: &mut State, form: &HashMap<String, String>) -> Result<Value, OAuthError> {
    let Some(code) = form.get("code") else {
        return Err(missing_param("code"));
    };
    let Some(redirect_uri) = form.get("redirect_uri") else {
        return Err(missing_param("redirect_uri"));
    };
    let expired = || {
        OAuthError::new(
            "invalid_grant",
            70008,
            "The provided authorization code or refresh token has expired due to inactivity. Send a new interactive authorization request for this user and resource.",
        )
    };
    let (scopes, nonce) = {
        let Some(c) = st.codes.get(code) else {
            return Err(expired());
        };
        if c.redeemed {
            return Err(OAuthError::new(
                "invalid_grant",
                54005,
                "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an existing refresh token.",
            ));
        }
        if c.expires_at <= now_secs() {
            return Err(expired());
        }
        if c.client_id != GraphFake::CLIENT_ID {
            return Err(OAuthError::new(
                "invalid_grant",
                70000,
                "Provided grant is invalid or malformed.",
            ));
        }
        if *redirect_uri != c.redirect_uri {
            let mut e = reply_mismatch(redirect_uri);
            e.error = "invalid_grant";
            return Err(e);
        }
        if let Some((challenge, method)) = &c.challenge {
            let verifier = form.get("code_verifier").map(String::as_str).unwrap_or("");
            let computed = if method == "S256" {
                B64URL.encode(openssl::sha::sha256(verifier.as_bytes()))
            } else {
                verifier.to_string()
            };
            if verifier.is_empty() || computed != *challenge {
                return Err(OAuthError::new(
                    "invalid_grant",
                    501481,
                    "The Code_Verifier does not match the code_challenge supplied in the authorization request.",
                ));
            }
        }
        (c.scopes.clone(), c.nonce.clone())
    };
    let token_scopes = token_scopes(st, form, &scopes)?;
    if let Some(c) = st.codes.get_mut(code) {
        c.redeemed = true;
    }
    Ok(issue_delegated(st, &scopes, &token_scopes, nonce))
}

fn grant_refresh(st: &mut State, form: &HashMap<String, String>) -> Result<Value, OAuthError> {
    let Some(rt) = form.get("refresh_token") else {
        return Err(missing_param("refresh_token"));
    };
    let Some(r) = st.refresh_tokens.get(rt) else {
        return Err(OAuthError::new(
            "invalid_grant",
            9002313,
            "Invalid request. Request is malformed or invalid.",
        ));
    };
    if r.generation < st.tokens_valid_from {
        let fmt = |s: u64| {
            chrono::DateTime::from_timestamp(s as i64, 0)
                .map(|d| d.format("%Y-%m-%dT%H:%M:%S.0000000Z").to_string())
                .unwrap_or_default()
        };
        return Err(OAuthError::new(
            "invalid_grant",
            50173,
            format!("The provided grant has expired due to it being revoked, a fresh auth token is needed. The user might have changed or reset their password. The grant was issued on '{}' and the TokensValidFrom date (before which tokens are not valid) for this user is '{}'.", fmt(r.issued_at), fmt(st.tokens_valid_from_time)),
        ));
    }
    if r.client_id != GraphFake::CLIENT_ID {
        return Err(OAuthError::new(
            "invalid_grant",
            70000,
            "Provided grant is invalid or malformed.",
        ));
    }
    let granted = r.scopes.clone();
    let token_scopes = token_scopes(st, form, &granted)?;
    // Rotation: a new refresh token each time; the old one stays valid (refresh-tokens.md).
    Ok(issue_delegated(st, &granted, &token_scopes, None))
}

fn grant_client_credentials(
    st: &mut State,
    tenant: &str,
    form: &HashMap<String, String>,
) -> Result<Value, OAuthError> {
    if ["organizations", "common", "consumers"]
        .iter()
        .any(|t| t.eq_ignore_ascii_case(tenant))
    {
        // FAKE CHOICE of code/text: the docs say the tenant must be a GUID or domain name.
        return Err(OAuthError::new(
            "invalid_request",
            900023,
            format!("Specified tenant identifier '{tenant}' is not valid for the client credentials grant. Use the tenant ID or a domain name."),
        ));
    }
    let Some(scope) = form.get("scope") else {
        return Err(missing_param("scope"));
    };
    let scopes: Vec<&str> = scope.split_whitespace().collect();
    if scopes.len() != 1 || !scopes[0].ends_with("/.default") {
        return Err(OAuthError::new(
            "invalid_scope",
            1002012,
            format!("The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."),
        ));
    }
    if split_scope(st, scopes[0]).0.as_deref() != Some("graph") {
        let res = scopes[0].trim_end_matches("/.default");
        return Err(OAuthError::new(
            "invalid_resource",
            500011,
            format!("The resource principal named {res} was not found in the tenant named {}. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant.", GraphFake::TENANT_ID),
        ));
    }
    let roles = st.app_roles.clone();
    let at = access_token_jwt(json!({"roles": roles, "idtyp": "app"}));
    let lifetime = st.token_lifetime;
    st.access_tokens.insert(
        at.clone(),
        AccessToken {
            expires_at: now_secs() + lifetime,
            app_only: true,
            permissions: st.app_roles.clone(),
        },
    );
    Ok(json!({
        "token_type": "Bearer",
        "expires_in": lifetime,
        "ext_expires_in": lifetime,
        "access_token": at,
    }))
}

/// A Graph access token shaped as Microsoft's are: a JWT whose claims carry `roles`
/// (application) or `scp` (delegated), `aud` and `tid` (access-tokens.md). The fake still looks
/// tokens up by value; the signature part is random and the product must not rely on it.
fn access_token_jwt(claims: Value) -> String {
    let mut claims = claims;
    claims["aud"] = json!("https://graph.microsoft.com");
    claims["tid"] = json!(GraphFake::TENANT_ID);
    claims["uti"] = json!(opaque(16));
    format!(
        "{}.{}.{}",
        B64URL.encode(r#"{"typ":"JWT","alg":"RS256"}"#),
        B64URL.encode(claims.to_string()),
        opaque(48)
    )
}

fn issue_delegated(
    st: &mut State,
    granted: &[String],
    scopes: &[String],
    nonce: Option<String>,
) -> Value {
    let lifetime = st.token_lifetime;
    let has = |n: &str| scopes.iter().any(|s| s.eq_ignore_ascii_case(n));
    let withheld = st.withheld_scopes.clone();
    let graph_scopes: Vec<String> = scopes
        .iter()
        .filter(|s| split_scope(st, s).0.as_deref() == Some("graph"))
        .map(|s| split_scope(st, s).1.to_string())
        .filter(|s| !withheld.iter().any(|w| w.eq_ignore_ascii_case(s)))
        .collect();
    let at = access_token_jwt(json!({"scp": graph_scopes.join(" ")}));
    st.access_tokens.insert(
        at.clone(),
        AccessToken {
            expires_at: now_secs() + lifetime,
            app_only: false,
            permissions: graph_scopes.clone(),
        },
    );
    // Graph scopes come back as short names, with the OIDC scopes (what the service does for
    // Microsoft Graph; the doc example shows one URL-encoded scope).
    let mut scope_out = graph_scopes.clone();
    for o in ["openid", "profile", "email"] {
        if has(o) {
            scope_out.push(o.into());
        }
    }
    let mut out = json!({
        "token_type": "Bearer",
        "scope": scope_out.join(" "),
        "expires_in": lifetime,
        "ext_expires_in": lifetime,
        "access_token": at,
    });
    if granted
        .iter()
        .any(|s| s.eq_ignore_ascii_case("offline_access"))
    {
        st.generation += 1;
        let rt = format!("1.A{}", opaque(120));
        st.refresh_tokens.insert(
            rt.clone(),
            RefreshToken {
                client_id: GraphFake::CLIENT_ID.into(),
                scopes: granted.to_vec(),
                generation: st.generation,
                issued_at: now_secs(),
            },
        );
        out["refresh_token"] = json!(rt);
    }
    if has("openid") {
        out["id_token"] = json!(id_token(st, nonce));
    }
    out
}

/// RSA key for id_tokens (one per test process; generating one costs ~100 ms).
fn signing_key() -> &'static openssl::pkey::PKey<openssl::pkey::Private> {
    static KEY: OnceLock<openssl::pkey::PKey<openssl::pkey::Private>> = OnceLock::new();
    KEY.get_or_init(|| {
        openssl::pkey::PKey::from_rsa(openssl::rsa::Rsa::generate(2048).expect("rsa"))
            .expect("pkey")
    })
}

const KID: &str = "fake-graph-key-1";

fn jwks() -> Value {
    let rsa = signing_key().rsa().expect("rsa");
    json!({"keys": [{
        "kty": "RSA", "use": "sig", "kid": KID, "alg": "RS256",
        "n": B64URL.encode(rsa.n().to_vec()), "e": B64URL.encode(rsa.e().to_vec()),
    }]})
}

/// An id_token (docs: entra-docs id-tokens.md claims: aud, iss, iat, nbf, exp, name, oid,
/// preferred_username, sub, tid, ver, nonce), RS256-signed; keys at /{tenant}/discovery/v2.0/keys.
fn id_token(st: &State, nonce: Option<String>) -> String {
    let now = now_secs();
    let mut claims = json!({
        "aud": GraphFake::CLIENT_ID,
        "iss": format!("{}/{}/v2.0", st.login_base(), GraphFake::TENANT_ID),
        "iat": now, "nbf": now, "exp": now + 3600,
        "name": "Fake Admin",
        "oid": GraphFake::ADMIN_OID,
        "preferred_username": GraphFake::ADMIN_UPN,
        "sub": B64URL.encode(openssl::sha::sha256(GraphFake::ADMIN_OID.as_bytes())),
        "tid": GraphFake::TENANT_ID,
        "uti": opaque(16),
        "ver": "2.0",
    });
    if let Some(n) = nonce {
        claims["nonce"] = json!(n);
    }
    let header = json!({"typ": "JWT", "alg": "RS256", "kid": KID});
    let signing_input = format!(
        "{}.{}",
        B64URL.encode(header.to_string()),
        B64URL.encode(claims.to_string())
    );
    let mut signer =
        openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), signing_key())
            .expect("signer");
    let sig = signer
        .sign_oneshot_to_vec(signing_input.as_bytes())
        .expect("sign");
    format!("{signing_input}.{}", B64URL.encode(sig))
}

// ------------------------------------------------------------------------------------------
// Graph: plumbing (auth, injection, headers, error envelope)
// Docs: microsoft-graph-docs-contrib concepts/errors.md (error envelope, innerError),
// concepts/throttling.md (429 + Retry-After body), concepts/best-practices-concept.md (503).
// ------------------------------------------------------------------------------------------

struct GraphOut {
    status: u16,
    headers: Vec<(String, String)>,
    body: Option<Value>,
}

fn gok(status: u16, body: Value) -> GraphOut {
    GraphOut {
        status,
        headers: vec![(
            "Content-Type".into(),
            "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8".into(),
        )],
        body: Some(body),
    }
}

fn gnone(status: u16) -> GraphOut {
    GraphOut {
        status,
        headers: vec![],
        body: None,
    }
}

fn gerr(status: u16, code: &str, message: impl Into<String>) -> GraphOut {
    GraphOut {
        status,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: Some(json!({"error": {"code": code, "message": message.into()}})),
    }
}

fn bad(message: impl Into<String>) -> GraphOut {
    gerr(400, "Request_BadRequest", message)
}

fn conflict(prop: &str) -> GraphOut {
    let msg = format!("Another object with the same value for property {prop} already exists.");
    let mut e = bad(msg.clone());
    e.body.as_mut().unwrap()["error"]["details"] =
        json!([{"code": "ObjectConflict", "message": msg, "target": prop}]);
    e
}

fn invalid_value(prop: &str) -> GraphOut {
    let msg = format!("Invalid value specified for property '{prop}' of resource 'User'.");
    let mut e = bad(msg.clone());
    e.body.as_mut().unwrap()["error"]["details"] =
        json!([{"code": "InvalidValue", "message": msg, "target": prop}]);
    e
}

fn not_found(what: &str) -> GraphOut {
    gerr(
        404,
        "Request_ResourceNotFound",
        format!("Resource '{what}' does not exist or one of its queried reference-property objects are not present."),
    )
}

fn denied() -> GraphOut {
    gerr(
        403,
        "Authorization_RequestDenied",
        "Insufficient privileges to complete the operation.",
    )
}

struct Ctx {
    request_id: String,
    client_request_id: String,
}

/// Adds innerError and the correlation headers every Graph response carries.
fn finalize(mut out: GraphOut, ctx: &Ctx) -> GraphOut {
    let date = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S").to_string();
    if let Some(err) = out
        .body
        .as_mut()
        .and_then(|b| b.get_mut("error"))
        .and_then(Value::as_object_mut)
    {
        let inner = err.entry("innerError").or_insert_with(|| json!({}));
        if let Some(inner) = inner.as_object_mut() {
            inner.insert("date".into(), json!(date));
            inner.insert("request-id".into(), json!(ctx.request_id));
            inner.insert("client-request-id".into(), json!(ctx.client_request_id));
        }
    }
    out.headers
        .push(("request-id".into(), ctx.request_id.clone()));
    out.headers
        .push(("client-request-id".into(), ctx.client_request_id.clone()));
    out.headers.push((
        "x-ms-ags-diagnostic".into(),
        json!({"ServerInfo": {"DataCenter": "Loopback", "Slice": "E", "Ring": "0", "ScaleUnit": "000", "RoleInstance": "FAKE"}}).to_string(),
    ));
    out.headers
        .push(("Cache-Control".into(), "no-cache".into()));
    out
}

fn injected(inj: Injection) -> GraphOut {
    match inj {
        Injection::Throttle(retry_after) => {
            let mut o = gerr(429, "TooManyRequests", "Please retry again later.");
            o.body.as_mut().unwrap()["error"]["innerError"] =
                json!({"code": "429", "message": "Please retry after", "status": "429"});
            o.headers.push(("Retry-After".into(), retry_after));
            o.headers.push((
                "x-ms-throttle-scope".into(),
                format!(
                    "Tenant_Application/ReadWrite/{}/{}",
                    GraphFake::CLIENT_ID,
                    GraphFake::TENANT_ID
                ),
            ));
            o.headers.push((
                "x-ms-throttle-information".into(),
                "ResourceUnitLimitExceeded".into(),
            ));
            o
        }
        Injection::Fail(503) => {
            let mut o = gerr(503, "serviceNotAvailable", "Service is unavailable.");
            o.headers.push(("Retry-After".into(), "0.05".into()));
            o
        }
        Injection::Fail(504) => gerr(
            504,
            "gatewayTimeout",
            "The gateway did not receive a timely response from the upstream server.",
        ), // FAKE CHOICE of text
        Injection::Fail(s) => gerr(s, "generalException", "An unexpected error occurred."),
        Injection::Pass => unreachable!("next_injection never yields Pass"),
    }
}

struct Caller {
    app_only: bool,
    permissions: Vec<String>,
}

impl Caller {
    fn has_any(&self, perms: &[&str]) -> bool {
        self.permissions
            .iter()
            .any(|p| perms.iter().any(|q| q.eq_ignore_ascii_case(p)))
    }
}

const READ_USERS: &[&str] = &[
    "User.ReadBasic.All",
    "User.Read.All",
    "User.ReadWrite.All",
    "User.ReadUpdate.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
];
const CREATE_USERS: &[&str] = &[
    "User.Create",
    "User.ReadWrite.All",
    "Directory.ReadWrite.All",
];
const UPDATE_USERS: &[&str] = &[
    "User.ReadUpdate.All",
    "User.ReadWrite.All",
    "Directory.ReadWrite.All",
];
const DELETE_USERS: &[&str] = &[
    "User.DeleteRestore.All",
    "User.ReadWrite.All",
    "Directory.ReadWrite.All",
];
/// internaldomainfederation-get/list: least privileged Domain-InternalFederation.Read.All.
const READ_FEDERATION: &[&str] = &[
    "Domain-InternalFederation.Read.All",
    "Domain-InternalFederation.ReadWrite.All",
    "Domain.Read.All",
    "Domain.ReadWrite.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
];
/// domain-post-federationconfiguration, internaldomainfederation-update/delete: least
/// privileged Domain-InternalFederation.ReadWrite.All, higher Domain.ReadWrite.All.
const WRITE_FEDERATION: &[&str] = &[
    "Domain-InternalFederation.ReadWrite.All",
    "Domain.ReadWrite.All",
];
const READ_DOMAINS: &[&str] = &[
    "Domain.Read.All",
    "Domain.ReadWrite.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
];

fn authenticate(st: &State, headers: &HeaderMap) -> Result<Caller, GraphOut> {
    let unauth = |msg: &str| {
        let mut o = gerr(401, "InvalidAuthenticationToken", msg);
        o.headers.push((
            "WWW-Authenticate".into(),
            format!("Bearer realm=\"\", authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\", client_id=\"{GRAPH_APP_ID}\""),
        ));
        o
    };
    let auth = header_str(headers, "authorization").unwrap_or_default();
    let token = auth
        .strip_prefix("Bearer ")
        .or_else(|| auth.strip_prefix("bearer "))
        .unwrap_or("")
        .trim();
    if token.is_empty() {
        return Err(unauth("Access token is empty."));
    }
    let Some(t) = st.access_tokens.get(token) else {
        return Err(unauth("Access token validation failure."));
    };
    if t.expires_at <= now_secs() {
        return Err(unauth("Access token has expired or is not yet valid."));
    }
    Ok(Caller {
        app_only: t.app_only,
        permissions: t.permissions.clone(),
    })
}

fn graph_entry(
    st: &mut State,
    method: &str,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    bytes: &[u8],
) -> Response {
    st.graph_request_count += 1;
    st.purge_expired();
    let ctx = Ctx {
        request_id: guid(),
        client_request_id: header_str(headers, "client-request-id").unwrap_or_else(guid),
    };
    let rel = path
        .trim_start_matches("/v1.0")
        .trim_start_matches('/')
        .to_string();
    let hdrs: HashMap<String, String> = headers
        .iter()
        .filter_map(|(k, v)| {
            Some((
                k.as_str().to_ascii_lowercase(),
                v.to_str().ok()?.to_string(),
            ))
        })
        .collect();
    let out = match authenticate(st, headers) {
        Err(e) => e,
        Ok(caller) => {
            if percent_decode(&rel).eq_ignore_ascii_case("$batch") {
                if method == "POST" {
                    batch(st, &caller, bytes)
                } else {
                    method_not_allowed()
                }
            } else if let Some(inj) = st.next_injection() {
                injected(inj)
            } else {
                let body = if bytes.iter().all(u8::is_ascii_whitespace) {
                    Ok(None)
                } else {
                    serde_json::from_slice::<Value>(bytes).map(Some)
                };
                match body {
                    Ok(body) => dispatch(st, &caller, method, &rel, query, &hdrs, body),
                    Err(_) => gerr(
                        400,
                        "BadRequest",
                        "Unable to read JSON request payload. Please ensure Content-Type header is set and payload is of valid JSON format.",
                    ),
                }
            }
        }
    };
    let out = finalize(out, &ctx);
    let mut b = Response::builder().status(StatusCode::from_u16(out.status).unwrap());
    for (k, v) in &out.headers {
        b = b.header(k.as_str(), v.as_str());
    }
    match out.body {
        Some(v) => b.body(Body::from(v.to_string())).unwrap(),
        None => b.body(Body::empty()).unwrap(),
    }
}

fn method_not_allowed() -> GraphOut {
    gerr(
        405,
        "Request_BadRequest",
        "Specified HTTP method is not allowed for the request target.",
    )
}

/// Runs one Graph request (top-level or a $batch item) relative to /v1.0, then applies a
/// queued lost answer (`apply_then_fail_next`) to writes on `/users…`.
fn dispatch(
    st: &mut State,
    caller: &Caller,
    method: &str,
    rel: &str,
    query: &str,
    headers: &HashMap<String, String>,
    body: Option<Value>,
) -> GraphOut {
    let out = route(st, caller, method, rel, query, headers, body);
    let users_write = ["POST", "PATCH", "PUT", "DELETE"].contains(&method)
        && rel
            .trim_start_matches('/')
            .split(['/', '?'])
            .next()
            .is_some_and(|s| s.eq_ignore_ascii_case("users"));
    if users_write {
        if let Some(status) = st.lost_answers.pop_front() {
            return injected(Injection::Fail(status));
        }
    }
    out
}

fn route(
    st: &mut State,
    caller: &Caller,
    method: &str,
    rel: &str,
    query: &str,
    headers: &HashMap<String, String>,
    body: Option<Value>,
) -> GraphOut {
    let segs: Vec<String> = rel
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let lower: Vec<String> = segs.iter().map(|s| s.to_ascii_lowercase()).collect();
    let q = Query::parse(query);
    let l: Vec<&str> = lower.iter().map(String::as_str).collect();
    match l.as_slice() {
        ["users"] => match method {
            "GET" => list_users(st, caller, &q, headers),
            "POST" => create_user(st, caller, body),
            _ => method_not_allowed(),
        },
        ["users", "delta" | "delta()" | "microsoft.graph.delta" | "microsoft.graph.delta()"] => {
            match method {
                "GET" => users_delta(st, caller, &q, headers),
                _ => method_not_allowed(),
            }
        }
        ["directory", "deleteditems"] => match method {
            // directory-deleteditems-list.md: the OData cast is required.
            "GET" => bad("The OData cast to a type (for example microsoft.graph.user) is required when listing deleted items."), // FAKE CHOICE of text
            _ => method_not_allowed(),
        },
        ["directory", "deleteditems", "microsoft.graph.user"] => match method {
            "GET" => list_deleted(st, caller, &q, headers),
            _ => method_not_allowed(),
        },
        ["directory", "deleteditems", _] => match method {
            "GET" => get_deleted(st, caller, &segs[2], &q),
            "DELETE" => purge_deleted(st, caller, &segs[2]),
            _ => method_not_allowed(),
        },
        ["directory", "deleteditems", _, "restore" | "microsoft.graph.restore"] => match method {
            "POST" => restore_deleted(st, caller, &segs[2], body),
            _ => method_not_allowed(),
        },
        ["users", _] => match method {
            "GET" => get_user(st, caller, &segs[1], &q),
            "PATCH" => update_user(st, caller, &segs[1], body),
            "DELETE" => delete_user(st, caller, &segs[1]),
            _ => method_not_allowed(),
        },
        ["users", _, "manager"] => match method {
            "GET" => get_manager(st, caller, &segs[1], &q),
            _ => method_not_allowed(),
        },
        ["users", _, "revokesigninsessions" | "microsoft.graph.revokesigninsessions"] => {
            match method {
                "POST" => revoke_sign_in_sessions(st, caller, &segs[1]),
                _ => method_not_allowed(),
            }
        }
        ["users", _, "manager", "$ref"] => match method {
            "PUT" => set_manager(st, caller, &segs[1], body),
            "DELETE" => delete_manager(st, caller, &segs[1]),
            _ => method_not_allowed(),
        },
        ["domains"] => match method {
            "GET" => list_domains(st, caller, None),
            _ => method_not_allowed(),
        },
        ["domains", _] => match method {
            "GET" => list_domains(st, caller, Some(&segs[1])),
            _ => method_not_allowed(),
        },
        ["domains", _, "federationconfiguration"] => match method {
            "GET" => list_federation(st, caller, &segs[1]),
            "POST" => create_federation(st, caller, &segs[1], body),
            _ => method_not_allowed(),
        },
        ["domains", _, "federationconfiguration", _] => match method {
            "GET" => get_federation(st, caller, &segs[1], &segs[3]),
            "PATCH" => update_federation(st, caller, &segs[1], &segs[3], body),
            "DELETE" => delete_federation(st, caller, &segs[1], &segs[3]),
            _ => method_not_allowed(),
        },
        ["$batch"] => bad("Nested batch requests are not supported."), // FAKE CHOICE of text
        _ => {
            let seg = segs
                .iter()
                .zip(&l)
                .find(|(_, s)| !["users", "domains", "directory", "deleteditems"].contains(s))
                .map(|(s, _)| s.clone())
                .unwrap_or_default();
            gerr(
                400,
                "BadRequest",
                format!("Resource not found for the segment '{seg}'."),
            )
        }
    }
}

// ------------------------------------------------------------------------------------------
// Graph: query options ($select, $filter, $top, $skiptoken, $expand, $orderby, $count)
// Docs: api-reference/v1.0/api/user-list.md (supported options, default page 100, default
// property set), concepts/paging.md (nextLink with $skiptoken, follow verbatim),
// concepts/aad-advanced-queries.md (eq/startsWith/in default; ne/not/endsWith advanced-only).
// ------------------------------------------------------------------------------------------

struct Query {
    params: Vec<(String, String)>,
}

impl Query {
    fn parse(q: &str) -> Query {
        Query {
            params: query_pairs(q),
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The user properties (CSDL, v1.0): (name, type, nullable).
const USER_PROPS: &[(&str, &str, bool)] = &[
    ("aboutMe", "Edm.String", true),
    ("accountEnabled", "Edm.Boolean", true),
    ("ageGroup", "Edm.String", true),
    (
        "assignedLicenses",
        "Collection(graph.assignedLicense)",
        false,
    ),
    ("assignedPlans", "Collection(graph.assignedPlan)", false),
    ("authorizationInfo", "graph.authorizationInfo", true),
    ("birthday", "Edm.DateTimeOffset", false),
    ("businessPhones", "Collection(Edm.String)", false),
    ("city", "Edm.String", true),
    ("companyName", "Edm.String", true),
    ("consentProvidedForMinor", "Edm.String", true),
    ("country", "Edm.String", true),
    ("createdDateTime", "Edm.DateTimeOffset", true),
    ("deletedDateTime", "Edm.DateTimeOffset", true), // from directoryObject
    ("creationType", "Edm.String", true),
    (
        "customSecurityAttributes",
        "graph.customSecurityAttributeValue",
        true,
    ),
    ("department", "Edm.String", true),
    ("deviceEnrollmentLimit", "Edm.Int32", false),
    ("displayName", "Edm.String", true),
    ("employeeHireDate", "Edm.DateTimeOffset", true),
    ("employeeId", "Edm.String", true),
    ("employeeLeaveDateTime", "Edm.DateTimeOffset", true),
    ("employeeOrgData", "graph.employeeOrgData", true),
    ("employeeType", "Edm.String", true),
    ("externalUserState", "Edm.String", true),
    (
        "externalUserStateChangeDateTime",
        "Edm.DateTimeOffset",
        true,
    ),
    ("faxNumber", "Edm.String", true),
    ("givenName", "Edm.String", true),
    ("hireDate", "Edm.DateTimeOffset", false),
    ("identities", "Collection(graph.objectIdentity)", true),
    ("identityParentId", "Edm.String", true),
    ("imAddresses", "Collection(Edm.String)", true),
    ("interests", "Collection(Edm.String)", true),
    ("isManagementRestricted", "Edm.Boolean", true),
    ("isResourceAccount", "Edm.Boolean", true),
    ("jobTitle", "Edm.String", true),
    ("lastPasswordChangeDateTime", "Edm.DateTimeOffset", true),
    ("legalAgeGroupClassification", "Edm.String", true),
    (
        "licenseAssignmentStates",
        "Collection(graph.licenseAssignmentState)",
        true,
    ),
    ("mail", "Edm.String", true),
    ("mailboxSettings", "graph.mailboxSettings", true),
    ("mailNickname", "Edm.String", true),
    ("mobilePhone", "Edm.String", true),
    ("mySite", "Edm.String", true),
    ("officeLocation", "Edm.String", true),
    ("onPremisesDistinguishedName", "Edm.String", true),
    ("onPremisesDomainName", "Edm.String", true),
    (
        "onPremisesExtensionAttributes",
        "graph.onPremisesExtensionAttributes",
        true,
    ),
    ("onPremisesImmutableId", "Edm.String", true),
    ("onPremisesLastSyncDateTime", "Edm.DateTimeOffset", true),
    (
        "onPremisesProvisioningErrors",
        "Collection(graph.onPremisesProvisioningError)",
        true,
    ),
    ("onPremisesSamAccountName", "Edm.String", true),
    ("onPremisesSecurityIdentifier", "Edm.String", true),
    ("onPremisesSyncEnabled", "Edm.Boolean", true),
    ("onPremisesUserPrincipalName", "Edm.String", true),
    ("otherMails", "Collection(Edm.String)", false),
    ("passwordPolicies", "Edm.String", true),
    ("passwordProfile", "graph.passwordProfile", true),
    ("pastProjects", "Collection(Edm.String)", true),
    ("postalCode", "Edm.String", true),
    ("preferredDataLocation", "Edm.String", true),
    ("preferredLanguage", "Edm.String", true),
    ("preferredName", "Edm.String", true),
    ("print", "graph.userPrint", true),
    (
        "provisionedPlans",
        "Collection(graph.provisionedPlan)",
        false,
    ),
    ("proxyAddresses", "Collection(Edm.String)", false),
    ("responsibilities", "Collection(Edm.String)", true),
    ("schools", "Collection(Edm.String)", true),
    ("securityIdentifier", "Edm.String", true),
    (
        "serviceProvisioningErrors",
        "Collection(graph.serviceProvisioningError)",
        true,
    ),
    ("showInAddressList", "Edm.Boolean", true),
    ("signInActivity", "graph.signInActivity", true),
    (
        "signInSessionsValidFromDateTime",
        "Edm.DateTimeOffset",
        true,
    ),
    ("skills", "Collection(Edm.String)", true),
    ("state", "Edm.String", true),
    ("streetAddress", "Edm.String", true),
    ("surname", "Edm.String", true),
    ("usageLocation", "Edm.String", true),
    ("userPrincipalName", "Edm.String", true),
    ("userType", "Edm.String", true),
];

/// Returned by GET/list/POST without $select (user-list.md).
const DEFAULT_PROPS: &[&str] = &[
    "businessPhones",
    "displayName",
    "givenName",
    "jobTitle",
    "mail",
    "mobilePhone",
    "officeLocation",
    "preferredLanguage",
    "surname",
    "userPrincipalName",
    "id",
];

/// Only returned when reading a single user (user-list.md: 501 for a collection).
const SINGLE_USER_ONLY: &[&str] = &[
    "aboutMe",
    "birthday",
    "hireDate",
    "interests",
    "mySite",
    "pastProjects",
    "preferredName",
    "responsibilities",
    "schools",
    "skills",
    "mailboxSettings",
];

/// Server-managed properties: accepted in a body and ignored (FAKE CHOICE).
const READ_ONLY: &[&str] = &[
    "createdDateTime",
    "deletedDateTime",
    "lastPasswordChangeDateTime",
    "onPremisesSyncEnabled",
    "onPremisesLastSyncDateTime",
    "proxyAddresses",
    "assignedPlans",
    "provisionedPlans",
    "signInActivity",
    "creationType",
    "securityIdentifier",
    "licenseAssignmentStates",
    "externalUserState",
];

fn canonical_prop(name: &str) -> Option<(&'static str, &'static str, bool)> {
    if name.eq_ignore_ascii_case("id") {
        return Some(("id", "Edm.String", false));
    }
    USER_PROPS
        .iter()
        .find(|(n, _, _)| n.eq_ignore_ascii_case(name))
        .copied()
}

/// Parses $select; Err = the Graph error.
fn parse_select(sel: Option<&str>, collection: bool) -> Result<Option<Vec<String>>, GraphOut> {
    let Some(sel) = sel else { return Ok(None) };
    let mut out = Vec::new();
    for raw in sel.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((name, _, _)) = canonical_prop(raw) else {
            return Err(gerr(
                400,
                "BadRequest",
                format!("Could not find a property named '{raw}' on type 'microsoft.graph.user'."),
            ));
        };
        if collection && SINGLE_USER_ONLY.contains(&name) {
            return Err(gerr(
                501,
                "NotImplemented",
                format!("This operation target is not yet supported. The property '{name}' is only supported when retrieving a single user."), // FAKE CHOICE of text
            ));
        }
        if !out.iter().any(|o: &String| o == name) {
            out.push(name.to_string());
        }
    }
    Ok(Some(out))
}

fn default_for(name: &str) -> Value {
    match canonical_prop(name) {
        Some((_, t, _)) if t.starts_with("Collection(") => json!([]),
        _ => Value::Null,
    }
}

fn project(u: &Map<String, Value>, select: Option<&[String]>) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("id".into(), u["id"].clone());
    let names: Vec<&str> = match select {
        Some(s) => s.iter().map(String::as_str).collect(),
        None => DEFAULT_PROPS.to_vec(),
    };
    for n in names {
        if n == "id" {
            continue;
        }
        // Graph never returns passwords.
        let v = if n == "passwordProfile" {
            Value::Null
        } else {
            u.get(n).cloned().unwrap_or_else(|| default_for(n))
        };
        m.insert(n.to_string(), v);
    }
    m
}

fn context(st: &State, set: &str, select: Option<&[String]>, entity: bool) -> String {
    let sel = select
        .map(|s| format!("({})", s.join(",")))
        .unwrap_or_default();
    let ent = if entity { "/$entity" } else { "" };
    format!("{}/$metadata#{set}{sel}{ent}", st.graph_base())
}

/// `$expand=manager` or `manager($select=a,b)`.
fn parse_expand(exp: Option<&str>) -> Result<Option<Option<Vec<String>>>, GraphOut> {
    let Some(e) = exp else { return Ok(None) };
    let e = e.trim();
    if e.eq_ignore_ascii_case("manager") {
        return Ok(Some(None));
    }
    if e.len() > 8 && e[..8].eq_ignore_ascii_case("manager(") && e.ends_with(')') {
        let inner = &e[8..e.len() - 1];
        if let Some(sel) = inner
            .strip_prefix("$select=")
            .or_else(|| inner.strip_prefix("$SELECT="))
        {
            return Ok(Some(parse_select(Some(sel), false)?));
        }
    }
    Err(gerr(
        400,
        "Request_UnsupportedQuery",
        format!("The fake supports only $expand=manager; got '{e}'."), // FAKE limit
    ))
}

fn with_manager(
    st: &State,
    mut m: Map<String, Value>,
    expand: &Option<Option<Vec<String>>>,
) -> Map<String, Value> {
    if let Some(sel) = expand {
        let id = m["id"].as_str().unwrap_or_default().to_string();
        if let Some(mi) = st.managers.get(&id).and_then(|mid| st.find_user(mid)) {
            let mut mm = Map::new();
            mm.insert("@odata.type".into(), json!("#microsoft.graph.user"));
            mm.extend(project(&st.users[mi], sel.as_deref()));
            m.insert("manager".into(), Value::Object(mm));
        }
    }
    m
}

// --- $filter -------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    LParen,
    RParen,
    Comma,
}

#[derive(Debug, Clone)]
enum Lit {
    Str(String),
    Bool(bool),
    Null,
}

#[derive(Debug)]
enum Filter {
    Or(Box<Filter>, Box<Filter>),
    And(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
    Eq(String, Lit, bool), // prop, value, negated (ne)
    In(String, Vec<Lit>),
    StartsWith(String, String),
    EndsWith(String, String),
}

fn filter_syntax_error(f: &str) -> GraphOut {
    gerr(
        400,
        "BadRequest",
        format!("Invalid filter clause: Syntax error in '{f}'."),
    )
}

fn tokenize(f: &str) -> Option<Vec<Tok>> {
    let chars: Vec<char> = f.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    while i < chars.len() {
        let c = chars[i];
        match c {
            ' ' | '\t' => i += 1,
            '(' => {
                out.push(Tok::LParen);
                i += 1
            }
            ')' => {
                out.push(Tok::RParen);
                i += 1
            }
            ',' => {
                out.push(Tok::Comma);
                i += 1
            }
            '\'' => {
                let mut s = String::new();
                i += 1;
                loop {
                    if i >= chars.len() {
                        return None;
                    }
                    if chars[i] == '\'' {
                        if i + 1 < chars.len() && chars[i + 1] == '\'' {
                            s.push('\'');
                            i += 2;
                            continue;
                        }
                        i += 1;
                        break;
                    }
                    s.push(chars[i]);
                    i += 1;
                }
                out.push(Tok::Str(s));
            }
            _ => {
                let start = i;
                while i < chars.len() && !" \t(),'".contains(chars[i]) {
                    i += 1;
                }
                out.push(Tok::Word(chars[start..i].iter().collect()));
            }
        }
    }
    Some(out)
}

struct FilterParser {
    toks: Vec<Tok>,
    pos: usize,
}

impl FilterParser {
    fn peek_kw(&self, kw: &str) -> bool {
        matches!(self.toks.get(self.pos), Some(Tok::Word(w)) if w.eq_ignore_ascii_case(kw))
    }
    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }
    fn expect(&mut self, t: Tok) -> Option<()> {
        (self.next()? == t).then_some(())
    }
    fn or(&mut self) -> Option<Filter> {
        let mut l = self.and()?;
        while self.peek_kw("or") {
            self.pos += 1;
            l = Filter::Or(Box::new(l), Box::new(self.and()?));
        }
        Some(l)
    }
    fn and(&mut self) -> Option<Filter> {
        let mut l = self.unary()?;
        while self.peek_kw("and") {
            self.pos += 1;
            l = Filter::And(Box::new(l), Box::new(self.unary()?));
        }
        Some(l)
    }
    fn unary(&mut self) -> Option<Filter> {
        if self.peek_kw("not") {
            self.pos += 1;
            return Some(Filter::Not(Box::new(self.unary()?)));
        }
        self.primary()
    }
    fn literal(&mut self) -> Option<Lit> {
        match self.next()? {
            Tok::Str(s) => Some(Lit::Str(s)),
            Tok::Word(w) if w.eq_ignore_ascii_case("true") => Some(Lit::Bool(true)),
            Tok::Word(w) if w.eq_ignore_ascii_case("false") => Some(Lit::Bool(false)),
            Tok::Word(w) if w.eq_ignore_ascii_case("null") => Some(Lit::Null),
            _ => None,
        }
    }
    fn primary(&mut self) -> Option<Filter> {
        match self.next()? {
            Tok::LParen => {
                let f = self.or()?;
                self.expect(Tok::RParen)?;
                Some(f)
            }
            Tok::Word(w)
                if (w.eq_ignore_ascii_case("startswith") || w.eq_ignore_ascii_case("endswith"))
                    && self.toks.get(self.pos) == Some(&Tok::LParen) =>
            {
                self.pos += 1;
                let Tok::Word(prop) = self.next()? else {
                    return None;
                };
                self.expect(Tok::Comma)?;
                let Tok::Str(s) = self.next()? else {
                    return None;
                };
                self.expect(Tok::RParen)?;
                Some(if w.eq_ignore_ascii_case("startswith") {
                    Filter::StartsWith(prop, s)
                } else {
                    Filter::EndsWith(prop, s)
                })
            }
            Tok::Word(prop) => {
                let Tok::Word(op) = self.next()? else {
                    return None;
                };
                match op.to_ascii_lowercase().as_str() {
                    "eq" => Some(Filter::Eq(prop, self.literal()?, false)),
                    "ne" => Some(Filter::Eq(prop, self.literal()?, true)),
                    "in" => {
                        self.expect(Tok::LParen)?;
                        let mut vals = vec![self.literal()?];
                        while self.toks.get(self.pos) == Some(&Tok::Comma) {
                            self.pos += 1;
                            vals.push(self.literal()?);
                        }
                        self.expect(Tok::RParen)?;
                        Some(Filter::In(prop, vals))
                    }
                    _ => None,
                }
            }
            _ => None,
        }
    }
}

/// Properties filterable with eq/in/startsWith by default (aad-advanced-queries.md, user table).
const FILTER_DEFAULT: &[&str] = &[
    "id",
    "userPrincipalName",
    "onPremisesImmutableId",
    "mail",
    "mailNickname",
    "givenName",
    "surname",
    "displayName",
    "jobTitle",
    "department",
    "city",
    "country",
    "usageLocation",
    "accountEnabled",
    "employeeId",
    "companyName",
    "userType",
    "state",
];
/// Filterable only with advanced query parameters.
const FILTER_ADVANCED: &[&str] = &[
    "officeLocation",
    "mobilePhone",
    "postalCode",
    "streetAddress",
    "employeeType",
];

fn check_filter(f: &Filter, advanced: bool) -> Result<(), GraphOut> {
    let op_err = |op: &str| {
        gerr(400, "Request_UnsupportedQuery", format!("Operator '{op}' is not supported because the required parameters might be missing. Try adding $count=true query parameter and ConsistencyLevel:eventual header. Refer to https://aka.ms/graph-docs/advanced-queries for more information"))
    };
    let prop_ok = |p: &str| -> Result<(), GraphOut> {
        let canon = canonical_prop(p).map(|c| c.0);
        match canon {
            Some(c) if FILTER_DEFAULT.contains(&c) => Ok(()),
            Some(c) if FILTER_ADVANCED.contains(&c) && advanced => Ok(()),
            _ => Err(gerr(
                400,
                "Request_UnsupportedQuery",
                format!("Unsupported or invalid query filter clause specified for property '{p}' of resource 'User'."),
            )),
        }
    };
    match f {
        Filter::Or(a, b) | Filter::And(a, b) => {
            check_filter(a, advanced)?;
            check_filter(b, advanced)
        }
        Filter::Not(a) => {
            if !advanced {
                return Err(op_err("not"));
            }
            check_filter(a, advanced)
        }
        Filter::Eq(p, v, negated) => {
            prop_ok(p)?;
            if *negated && !advanced {
                return Err(op_err("ne"));
            }
            if matches!(v, Lit::Null) && !advanced {
                return Err(gerr(400, "Request_UnsupportedQuery", format!("Unsupported or invalid query filter clause specified for property '{p}' of resource 'User'.")));
            }
            Ok(())
        }
        Filter::In(p, _) | Filter::StartsWith(p, _) => prop_ok(p),
        Filter::EndsWith(p, _) => {
            prop_ok(p)?;
            if !advanced {
                return Err(op_err("endsWith"));
            }
            Ok(())
        }
    }
}

fn lit_matches(prop: &str, have: &Value, want: &Lit) -> bool {
    match (have, want) {
        (Value::Null, Lit::Null) => true,
        (Value::Bool(a), Lit::Bool(b)) => a == b,
        (Value::String(a), Lit::Str(b)) => {
            // The immutable ID is the case-sensitive federation key; other strings compare
            // case-insensitively like the directory does.
            if prop == "onPremisesImmutableId" {
                a == b
            } else {
                a.eq_ignore_ascii_case(b)
            }
        }
        _ => false,
    }
}

static NULL: Value = Value::Null;

fn eval_filter(f: &Filter, u: &Map<String, Value>) -> bool {
    let get = |p: &str| -> (&'static str, &Value) {
        let c = canonical_prop(p).map(|c| c.0).unwrap_or("id");
        (c, u.get(c).unwrap_or(&NULL))
    };
    match f {
        Filter::Or(a, b) => eval_filter(a, u) || eval_filter(b, u),
        Filter::And(a, b) => eval_filter(a, u) && eval_filter(b, u),
        Filter::Not(a) => !eval_filter(a, u),
        Filter::Eq(p, v, neg) => {
            let (c, have) = get(p);
            lit_matches(c, have, v) != *neg
        }
        Filter::In(p, vs) => {
            let (c, have) = get(p);
            vs.iter().any(|v| lit_matches(c, have, v))
        }
        Filter::StartsWith(p, s) => {
            let (_, have) = get(p);
            have.as_str()
                .is_some_and(|h| h.to_lowercase().starts_with(&s.to_lowercase()))
        }
        Filter::EndsWith(p, s) => {
            let (_, have) = get(p);
            have.as_str()
                .is_some_and(|h| h.to_lowercase().ends_with(&s.to_lowercase()))
        }
    }
}

/// Positions of the only users that can match `f`, from the id / UPN / immutable-ID indexes;
/// None when the filter needs a scan. (`eval_filter` still decides on each candidate.)
fn indexed_candidates(st: &State, f: &Filter) -> Option<Vec<usize>> {
    let lookup = |p: &str, v: &Lit| -> Option<Vec<usize>> {
        let Lit::Str(s) = v else { return None };
        match canonical_prop(p)?.0 {
            "id" => Some(
                st.by_id
                    .get(&s.to_lowercase())
                    .copied()
                    .into_iter()
                    .collect(),
            ),
            "userPrincipalName" => Some(
                st.by_upn
                    .get(&s.to_lowercase())
                    .copied()
                    .into_iter()
                    .collect(),
            ),
            "onPremisesImmutableId" => Some(
                st.immutable_holders(s)
                    .iter()
                    .filter_map(|id| st.by_id.get(&id.to_lowercase()).copied())
                    .collect(),
            ),
            _ => None,
        }
    };
    match f {
        Filter::Eq(p, v, false) => lookup(p, v),
        Filter::In(p, vs) => {
            let mut out = Vec::new();
            for v in vs {
                out.extend(lookup(p, v)?);
            }
            Some(out)
        }
        Filter::Or(a, b) => {
            let mut out = indexed_candidates(st, a)?;
            out.extend(indexed_candidates(st, b)?);
            Some(out)
        }
        Filter::And(a, b) => indexed_candidates(st, a).or_else(|| indexed_candidates(st, b)),
        _ => None,
    }
}

// ------------------------------------------------------------------------------------------
// GET /v1.0/users
// Docs: api-reference/v1.0/api/user-list.md, concepts/paging.md, concepts/aad-advanced-queries.md;
// $top 1..999 error text observed (reference §5.1).
// ------------------------------------------------------------------------------------------

fn list_users(
    st: &State,
    caller: &Caller,
    q: &Query,
    headers: &HashMap<String, String>,
) -> GraphOut {
    if !caller.has_any(READ_USERS) {
        return denied();
    }
    let advanced = headers
        .get("consistencylevel")
        .is_some_and(|v| v.eq_ignore_ascii_case("eventual"))
        && q.get("$count")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if q.get("$skip").is_some() {
        return bad("'$skip' is not supported by the service."); // FAKE CHOICE of text
    }
    if q.get("$search").is_some() {
        return gerr(400, "Request_UnsupportedQuery", "Request with $search query parameter only works through MSGraph with a special request header: 'ConsistencyLevel: eventual'");
    }
    let top = match q.get("$top") {
        None => 100,
        Some(t) => match t.parse::<i64>() {
            Ok(n) if (1..=999).contains(&n) => n as usize,
            _ => {
                return gerr(
                    400,
                    "Request_UnsupportedQuery",
                    format!(
                        "Invalid page size specified: '{t}'. Must be between 1 and 999 inclusive."
                    ),
                )
            }
        },
    };
    let select = match parse_select(q.get("$select"), true) {
        Ok(s) => s,
        Err(e) => return e,
    };
    let expand = match parse_expand(q.get("$expand")) {
        Ok(e) => e,
        Err(e) => return e,
    };
    // $expand on directory objects caps a page at 100 (observed, reference §5.1).
    let page = if expand.is_some() { top.min(100) } else { top };
    let filter = match q.get("$filter") {
        None => None,
        Some(f) => {
            let parsed = tokenize(f).and_then(|toks| {
                let mut p = FilterParser { toks, pos: 0 };
                let r = p.or()?;
                (p.pos == p.toks.len()).then_some(r)
            });
            let Some(parsed) = parsed else {
                return filter_syntax_error(f);
            };
            if let Err(e) = check_filter(&parsed, advanced) {
                return e;
            }
            Some(parsed)
        }
    };
    let mut matched: Vec<&Map<String, Value>> = match filter
        .as_ref()
        .and_then(|f| Some((f, indexed_candidates(st, f)?)))
    {
        Some((f, mut idxs)) => {
            idxs.sort_unstable();
            idxs.dedup();
            idxs.into_iter()
                .map(|i| &st.users[i])
                .filter(|u| eval_filter(f, u))
                .collect()
        }
        None => st
            .users
            .iter()
            .filter(|u| filter.as_ref().is_none_or(|f| eval_filter(f, u)))
            .collect(),
    };
    if let Some(ob) = q.get("$orderby") {
        let mut it = ob.split_whitespace();
        let prop = it.next().unwrap_or("");
        let desc = it.next().is_some_and(|d| d.eq_ignore_ascii_case("desc"));
        let Some(c) = canonical_prop(prop)
            .map(|c| c.0)
            .filter(|c| ["displayName", "userPrincipalName"].contains(c))
        else {
            return gerr(
                400,
                "Request_UnsupportedQuery",
                format!("Sorting not supported for '{prop}'."),
            );
        };
        if filter.is_some() && !advanced {
            return gerr(400, "Request_UnsupportedQuery", "Sorting and filtering together require the advanced query parameters ($count=true and ConsistencyLevel: eventual).");
            // FAKE CHOICE of text
        }
        matched.sort_by_key(|u| {
            u.get(c)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_lowercase()
        });
        if desc {
            matched.reverse();
        }
    }
    let start = match q.get("$skiptoken") {
        None => 0,
        Some(tok) => match decode_skiptoken(tok) {
            Some(n) => n,
            None => return bad("Invalid skip token specified."), // FAKE CHOICE of text
        },
    };
    let total = matched.len();
    let value: Vec<Value> = matched
        .iter()
        .skip(start)
        .take(page)
        .map(|u| Value::Object(with_manager(st, project(u, select.as_deref()), &expand)))
        .collect();
    let mut body = Map::new();
    body.insert(
        "@odata.context".into(),
        json!(context(st, "users", select.as_deref(), false)),
    );
    if advanced && start == 0 {
        body.insert("@odata.count".into(), json!(total));
    }
    if start + page < total {
        let mut link = format!("{}/users?", st.graph_base());
        for (k, v) in &q.params {
            let kl = k.to_ascii_lowercase();
            if kl == "$skiptoken" || kl == "$count" {
                continue;
            }
            link.push_str(&format!("{}={}&", qenc(k), qenc(v)));
        }
        link.push_str(&format!("$skiptoken={}", encode_skiptoken(start + page)));
        body.insert("@odata.nextLink".into(), json!(link));
    }
    body.insert("value".into(), Value::Array(value));
    gok(200, Value::Object(body))
}

/// Opaque to clients (Graph's look like `RFNwdAIAAQAAA...`).
fn encode_skiptoken(offset: usize) -> String {
    format!(
        "RFNwdA{}",
        B64URL.encode(format!("fake-skiptoken:{offset}"))
    )
}

fn decode_skiptoken(tok: &str) -> Option<usize> {
    let raw = B64URL.decode(tok.strip_prefix("RFNwdA")?).ok()?;
    String::from_utf8(raw)
        .ok()?
        .strip_prefix("fake-skiptoken:")?
        .parse()
        .ok()
}

// ------------------------------------------------------------------------------------------
// GET /v1.0/users/delta
// Docs: api-reference/v1.0/api/user-delta.md (query parameters only in the first call and
// encoded in the tokens; $select, `id` always returned; $filter only `id eq '…' or …`, at most
// 50; `Prefer: return=minimal` returns only properties changed since the deltaLink was issued;
// by default unchanged values are repeated and properties never set are left out),
// concepts/delta-query-overview.md (nextLink pages then a deltaLink; `$deltatoken=latest`
// gives only a deltaLink; $expand/$top/$orderby not supported for users; only changes to
// selected properties make a user appear; `manager` in $select gives `manager@delta`; removed
// users as `@removed` "changed" (restorable) or "deleted"; `410 Gone` with a Location of the
// initial query for a full resync; directory tokens valid 7 days, then a 4xx such as
// `syncStateNotFound`), concepts/delta-query-users.md (examples).
//
// A round covers the changes with counter values in (since, upto], where `upto` is the
// counter when the round started; the initial round lists the users that existed at `upto`.
// Pages are ordered by a per-user key that never changes for a user inside a round, and a
// skiptoken carries the last key served, so changes made during a round never shift a page (a
// user changed again during the round shows up in the next round instead). Page size: FAKE
// CHOICE, 100 unless `set_delta_page_size`. Deletions before the initial round aren't reported.
// ------------------------------------------------------------------------------------------

/// Directory delta tokens expire after 7 days (delta-query-overview.md "Token duration").
const DELTA_TOKEN_LIFETIME_SECS: u64 = 7 * 24 * 3600;
/// At most 50 ids in a delta `$filter` (user-delta.md).
const DELTA_MAX_IDS: usize = 50;

/// The state a delta token carries. Serialised as base64url(JSON): opaque to clients.
struct DeltaToken {
    /// `$skiptoken` (inside a round) or `$deltatoken` (the start of the next round).
    skip: bool,
    /// `$select` without `manager` (None: the default property set, every property tracked).
    select: Option<Vec<String>>,
    manager: bool,
    ids: Option<Vec<String>>,
    initial: bool,
    since: u64,
    upto: u64,
    /// Ordering key of the last user served in this round.
    after: u64,
    epoch: u64,
    iat: u64,
}

impl DeltaToken {
    fn encode(&self) -> String {
        B64URL.encode(
            json!({
                "k": if self.skip { "s" } else { "d" },
                "sel": self.select, "m": self.manager, "ids": self.ids,
                "i": self.initial, "since": self.since, "upto": self.upto,
                "after": self.after, "e": self.epoch, "iat": self.iat,
            })
            .to_string(),
        )
    }

    fn decode(tok: &str) -> Option<DeltaToken> {
        let v: Value =
            serde_json::from_slice(&B64URL.decode(tok.trim_end_matches('=')).ok()?).ok()?;
        let strings = |v: &Value| -> Option<Option<Vec<String>>> {
            match v {
                Value::Null => Some(None),
                Value::Array(a) => a
                    .iter()
                    .map(|x| x.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
                    .map(Some),
                _ => None,
            }
        };
        Some(DeltaToken {
            skip: match v.get("k")?.as_str()? {
                "s" => true,
                "d" => false,
                _ => return None,
            },
            select: strings(v.get("sel")?)?,
            manager: v.get("m")?.as_bool()?,
            ids: strings(v.get("ids")?)?,
            initial: v.get("i")?.as_bool()?,
            since: v.get("since")?.as_u64()?,
            upto: v.get("upto")?.as_u64()?,
            after: v.get("after")?.as_u64()?,
            epoch: v.get("e")?.as_u64()?,
            iat: v.get("iat")?.as_u64()?,
        })
    }

    /// The initial query this token came from, with an empty `$deltatoken` (the 410 Location).
    fn restart_url(&self, st: &State) -> String {
        let mut url = format!("{}/users/delta?", st.graph_base());
        let mut sel: Vec<String> = self.select.clone().unwrap_or_default();
        if self.manager {
            sel.push("manager".into());
        }
        if self.select.is_some() || self.manager {
            url.push_str(&format!("$select={}&", qenc(&sel.join(","))));
        }
        if let Some(ids) = &self.ids {
            let f: Vec<String> = ids.iter().map(|i| format!("id eq '{i}'")).collect();
            url.push_str(&format!("$filter={}&", qenc(&f.join(" or "))));
        }
        url.push_str("$deltatoken=");
        url
    }
}

fn unsupported_query(message: impl Into<String>) -> GraphOut {
    gerr(400, "Request_UnsupportedQuery", message)
}

/// (`$select` without manager, `manager` selected, `$filter` ids).
type DeltaParams = (Option<Vec<String>>, bool, Option<Vec<String>>);

/// `$select` (with `manager`) and `$filter` (ids only) of an initial delta request.
fn delta_params(q: &Query) -> Result<DeltaParams, GraphOut> {
    let mut manager = false;
    let select = match q.get("$select") {
        None => None,
        Some(sel) => {
            let rest: Vec<&str> = sel
                .split(',')
                .map(str::trim)
                .filter(|s| {
                    let m = s.eq_ignore_ascii_case("manager");
                    manager |= m;
                    !m && !s.is_empty()
                })
                .collect();
            if rest.is_empty() {
                Some(Vec::new())
            } else {
                parse_select(Some(&rest.join(",")), true)?
            }
        }
    };
    let ids = match q.get("$filter") {
        None => None,
        Some(f) => {
            let parsed = tokenize(f).and_then(|toks| {
                let mut p = FilterParser { toks, pos: 0 };
                let r = p.or()?;
                (p.pos == p.toks.len()).then_some(r)
            });
            let Some(parsed) = parsed else {
                return Err(filter_syntax_error(f));
            };
            fn collect(f: &Filter, out: &mut Vec<String>) -> bool {
                match f {
                    Filter::Or(a, b) => collect(a, out) && collect(b, out),
                    Filter::Eq(p, Lit::Str(id), false) if p.eq_ignore_ascii_case("id") => {
                        out.push(id.to_lowercase());
                        true
                    }
                    _ => false,
                }
            }
            let mut ids = Vec::new();
            if !collect(&parsed, &mut ids) {
                // FAKE CHOICE of text; user-delta.md: only `id eq` (joined by `or`).
                return Err(unsupported_query(
                    "Unsupported filter for delta query: only 'id eq' expressions joined by 'or' are supported.",
                ));
            }
            if ids.len() > DELTA_MAX_IDS {
                return Err(unsupported_query(format!(
                    "Too many ids in the delta query filter: {}; the limit is {DELTA_MAX_IDS}.",
                    ids.len()
                ))); // FAKE CHOICE of text
            }
            Some(ids)
        }
    };
    Ok((select, manager, ids))
}

fn users_delta(
    st: &State,
    caller: &Caller,
    q: &Query,
    headers: &HashMap<String, String>,
) -> GraphOut {
    if !caller.has_any(READ_USERS) {
        return denied();
    }
    for p in ["$top", "$orderby", "$expand", "$skip", "$search"] {
        if q.get(p).is_some() {
            // FAKE CHOICE of text; delta-query-overview.md: not supported for users.
            return unsupported_query(format!(
                "The query parameter '{p}' is not supported with delta queries for users."
            ));
        }
    }
    let minimal = headers.get("prefer").is_some_and(|p| {
        p.split(',')
            .any(|x| x.trim().eq_ignore_ascii_case("return=minimal"))
    });
    let now = now_secs();
    let fresh = |select, manager, ids, initial, since| DeltaToken {
        skip: true,
        select,
        manager,
        ids,
        initial,
        since,
        upto: st.seq,
        after: 0,
        epoch: st.delta_epoch,
        iat: now,
    };
    let skip = q.get("$skiptoken").filter(|t| !t.is_empty());
    let delta = q.get("$deltatoken").filter(|t| !t.is_empty());
    let round = match (skip, delta) {
        (Some(_), Some(_)) => {
            return bad("A request can carry either a $skiptoken or a $deltatoken, not both.");
            // FAKE CHOICE of text
        }
        (None, Some(t)) if t.eq_ignore_ascii_case("latest") => {
            // "Sync from now": only a deltaLink, no data.
            let (select, manager, ids) = match delta_params(q) {
                Ok(p) => p,
                Err(e) => return e,
            };
            let mut tok = fresh(select, manager, ids, false, st.seq);
            tok.skip = false;
            tok.since = st.seq;
            return delta_page(st, &tok, Vec::new(), false);
        }
        (None, None) => {
            let (select, manager, ids) = match delta_params(q) {
                Ok(p) => p,
                Err(e) => return e,
            };
            fresh(select, manager, ids, true, 0)
        }
        (Some(t), None) | (None, Some(t)) => {
            if q.get("$select").is_some() || q.get("$filter").is_some() {
                // user-delta.md: query parameters go in the initial request only.
                return unsupported_query("Query parameters must be given in the initial delta request only; the tokens carry them.");
                // FAKE CHOICE of text
            }
            let Some(tok) = DeltaToken::decode(t).filter(|tok| tok.skip == skip.is_some()) else {
                return bad("The specified delta or skip token is invalid."); // FAKE CHOICE of text
            };
            if tok.epoch < st.delta_epoch {
                let mut o = gerr(
                    410,
                    "resyncRequired",
                    "The delta token is no longer valid. Restart with a full synchronization from the URL in the Location header.",
                ); // FAKE CHOICE of code and text
                o.headers.push(("Location".into(), tok.restart_url(st)));
                return o;
            }
            if tok.iat + DELTA_TOKEN_LIFETIME_SECS <= now {
                return gerr(
                    400,
                    "syncStateNotFound",
                    "The sync state generation is not found or has expired. Restart with a full synchronization.",
                ); // FAKE CHOICE of text
            }
            if tok.skip {
                tok
            } else {
                fresh(tok.select, tok.manager, tok.ids, false, tok.since)
            }
        }
    };
    // The users in this round after the last one served, by ordering key.
    let wanted = |id: &str| {
        round
            .ids
            .as_ref()
            .is_none_or(|ids| ids.iter().any(|i| i == id))
    };
    let mut cands: Vec<(u64, &str)> = Vec::new();
    if round.initial {
        // `users` is in ordering-key order (keys grow with every insert or restore).
        let order = |u: &Map<String, Value>| {
            st.tracks
                .get(u["id"].as_str().unwrap_or(""))
                .map_or(0, |t| t.order)
        };
        let from = st.users.partition_point(|u| order(u) <= round.after);
        for u in &st.users[from..] {
            let id = u["id"].as_str().unwrap_or("");
            if let Some(t) = st.tracks.get(id) {
                if t.born <= round.upto && wanted(id) {
                    cands.push((t.order, id));
                    if cands.len() > st.delta_page_size {
                        break;
                    }
                }
            }
        }
    } else {
        for (id, t) in &st.tracks {
            if t.order <= round.after || !wanted(id) {
                continue;
            }
            let last = match t.gone {
                Some((g, _)) => g,
                None => {
                    let props = match &round.select {
                        None => t.props.values().copied().max().unwrap_or(0),
                        Some(sel) => sel
                            .iter()
                            .filter_map(|p| t.props.get(p).copied())
                            .max()
                            .unwrap_or(0),
                    };
                    let mgr = if round.manager { t.manager } else { 0 };
                    t.born.max(props).max(mgr)
                }
            };
            if round.since < last && last <= round.upto {
                cands.push((t.order, id));
            }
        }
    }
    cands.sort_unstable();
    let more = cands.len() > st.delta_page_size;
    cands.truncate(st.delta_page_size);
    let items: Vec<Value> = cands
        .iter()
        .map(|(_, id)| delta_item(st, id, &round, minimal))
        .collect();
    let next = if more {
        DeltaToken {
            after: cands.last().map(|c| c.0).unwrap_or(round.after),
            ..round
        }
    } else {
        DeltaToken {
            skip: false,
            initial: false,
            since: round.upto,
            after: 0,
            ..round
        }
    };
    delta_page(st, &next, items, minimal)
}

/// One page: the items and a nextLink (skip token) or a deltaLink (delta token).
fn delta_page(st: &State, next: &DeltaToken, items: Vec<Value>, minimal: bool) -> GraphOut {
    let mut body = Map::new();
    body.insert(
        "@odata.context".into(),
        json!(context(st, "users", next.select.as_deref(), false)),
    );
    let (key, param) = if next.skip {
        ("@odata.nextLink", "$skiptoken")
    } else {
        ("@odata.deltaLink", "$deltatoken")
    };
    body.insert(
        key.into(),
        json!(format!(
            "{}/users/delta?{param}={}",
            st.graph_base(),
            next.encode()
        )),
    );
    body.insert("value".into(), Value::Array(items));
    let mut out = gok(200, Value::Object(body));
    if minimal {
        out.headers
            .push(("Preference-Applied".into(), "return=minimal".into()));
    }
    out
}

/// One user of a delta page.
fn delta_item(st: &State, id: &str, round: &DeltaToken, minimal: bool) -> Value {
    let t = &st.tracks[id];
    let mut m = Map::new();
    m.insert("id".into(), json!(id));
    let idx = st.by_id.get(id).copied().filter(|_| t.gone.is_none());
    let Some(idx) = idx else {
        let reason = t.gone.map(|g| g.1).unwrap_or("deleted");
        m.insert("@removed".into(), json!({ "reason": reason }));
        return Value::Object(m);
    };
    let u = &st.users[idx];
    // New to this round (created, restored, or the initial listing): its whole state.
    let whole = round.initial || t.born > round.since;
    let names: Vec<&str> = match &round.select {
        Some(sel) => sel.iter().map(String::as_str).collect(),
        None => DEFAULT_PROPS.to_vec(),
    };
    for n in names {
        if n == "id" {
            continue;
        }
        let changed = t.props.get(n).is_some_and(|s| *s > round.since);
        let include = if minimal && !whole {
            changed
        } else {
            // Properties never set are left out (user-delta.md).
            u.get(n).is_some_and(|v| !v.is_null()) || t.props.contains_key(n)
        };
        if include {
            let v = if n == "passwordProfile" {
                Value::Null // Graph never returns passwords
            } else {
                u.get(n).cloned().unwrap_or_else(|| default_for(n))
            };
            m.insert(n.to_string(), v);
        }
    }
    if round.manager {
        let entry = |mid: &str| json!({"@odata.type": "#microsoft.graph.user", "id": mid});
        let current = st.managers.get(id);
        let manager_changed = !whole && t.manager > round.since;
        match (current, &t.prev_manager) {
            (Some(mid), _) if whole || manager_changed => {
                m.insert("manager@delta".into(), json!([entry(mid)]));
            }
            (None, Some(prev)) if manager_changed => {
                let mut e = entry(prev);
                e["@removed"] = json!({"reason": "deleted"});
                m.insert("manager@delta".into(), json!([e]));
            }
            _ => {}
        }
    }
    Value::Object(m)
}

// ------------------------------------------------------------------------------------------
// GET /v1.0/users/{id | userPrincipalName}
// Docs: api-reference/v1.0/api/user-get.md; 404 text observed (reference §5.3).
// ------------------------------------------------------------------------------------------

fn get_user(st: &State, caller: &Caller, key: &str, q: &Query) -> GraphOut {
    if !caller.has_any(READ_USERS) {
        return denied();
    }
    let select = match parse_select(q.get("$select"), false) {
        Ok(s) => s,
        Err(e) => return e,
    };
    let expand = match parse_expand(q.get("$expand")) {
        Ok(e) => e,
        Err(e) => return e,
    };
    let Some(i) = st.find_user(key) else {
        return not_found(key);
    };
    let mut m = Map::new();
    m.insert(
        "@odata.context".into(),
        json!(context(st, "users", select.as_deref(), true)),
    );
    m.extend(with_manager(
        st,
        project(&st.users[i], select.as_deref()),
        &expand,
    ));
    gok(200, Value::Object(m))
}

// ------------------------------------------------------------------------------------------
// User write validation (POST and PATCH)
// Docs: api-reference/v1.0/api/user-post-users.md (required properties; onPremisesImmutableId
// required for a federated domain, no `$`/`_`), user-update.md (businessPhones one value,
// displayName not clearable, passwordProfile not for federated users), entra-docs
// docs/identity/authentication/concept-sspr-policy.md (UPN and password policies); error texts
// observed in public issues (reference §2.4).
// ------------------------------------------------------------------------------------------

/// Type-checks a body against the CSDL and returns it with canonical property names.
fn check_body(body: Option<Value>) -> Result<Map<String, Value>, GraphOut> {
    let Some(Value::Object(body)) = body else {
        return Err(gerr(
            400,
            "BadRequest",
            "Unable to read JSON request payload. Please ensure Content-Type header is set and payload is of valid JSON format.",
        ));
    };
    let mut out = Map::new();
    for (k, v) in body {
        if k.starts_with('@') || k.contains("@odata.") {
            continue;
        }
        let Some((name, ty, nullable)) = canonical_prop(&k) else {
            return Err(gerr(400, "Request_BadRequest", format!("Property '{k}' does not exist on type 'microsoft.graph.user'. Make sure to only use property names that are defined by the type or mark the type as open type.")));
        };
        if name == "id" || READ_ONLY.contains(&name) {
            continue;
        }
        let type_err = |v: &Value| {
            let lit = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            gerr(
                400,
                "Request_BadRequest",
                format!("Cannot convert the literal '{lit}' to the expected type '{ty}'."),
            )
        };
        match (&v, ty) {
            (Value::Null, t) if t.starts_with("Collection(") || !nullable => {
                return Err(gerr(400, "Request_BadRequest", format!("A null value was found for the property named '{name}', which has the expected type '{ty}[Nullable=False]'. The expected type '{ty}[Nullable=False]' does not allow null values.")));
            }
            (Value::Null, _) => {}
            (Value::String(_), "Edm.String") => {}
            (Value::String(s), "Edm.DateTimeOffset")
                if chrono::DateTime::parse_from_rfc3339(s).is_ok() => {}
            (Value::Bool(_), "Edm.Boolean") => {}
            (Value::Number(n), "Edm.Int32") if n.is_i64() => {}
            (Value::Array(items), "Collection(Edm.String)") => {
                if let Some(bad) = items.iter().find(|i| !i.is_string()) {
                    return Err(type_err(bad));
                }
            }
            (Value::Array(items), t) if t.starts_with("Collection(") => {
                if items.iter().any(|i| !i.is_object()) {
                    return Err(invalid_value(name));
                }
            }
            (Value::Object(_), t) if t.starts_with("graph.") => {}
            (other, _) => return Err(type_err(other)),
        }
        if name == "passwordProfile" {
            if let Value::Object(pp) = &v {
                for (pk, pv) in pp {
                    let ok = match pk.as_str() {
                        "password" => pv.is_string() || pv.is_null(),
                        "forceChangePasswordNextSignIn" | "forceChangePasswordNextSignInWithMfa" => {
                            pv.is_boolean() || pv.is_null()
                        }
                        _ => {
                            return Err(gerr(400, "Request_BadRequest", format!("Property '{pk}' does not exist on type 'microsoft.graph.passwordProfile'. Make sure to only use property names that are defined by the type or mark the type as open type.")))
                        }
                    };
                    if !ok {
                        return Err(type_err(pv));
                    }
                }
            }
        }
        out.insert(name.to_string(), v);
    }
    Ok(out)
}

/// UPN syntax (concept-sspr-policy.md "Username policies"): `alias@domain`, allowed characters
/// A-Z a-z 0-9 ' . - _ ! # ^ ~, no dot right before `@`, ≤113 total, ≤64 alias, ≤48 domain.
fn upn_syntax_ok(upn: &str) -> bool {
    let Some((alias, domain)) = upn.split_once('@') else {
        return false;
    };
    if domain.contains('@') || alias.is_empty() || domain.is_empty() {
        return false;
    }
    if upn.len() > 113 || alias.len() > 64 || domain.len() > 48 {
        return false;
    }
    if alias.starts_with('.') || alias.ends_with('.') {
        return false;
    }
    alias
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "'.-_!#^~".contains(c))
        && domain
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
}

/// Password policy for cloud users (concept-sspr-policy.md): 8–256 characters, no Unicode,
/// 3 of 4 of lowercase, uppercase, digits, symbols. `DisableStrongPassword` relaxes the classes.
fn password_ok(pw: &str, disable_strong: bool) -> bool {
    const SYMBOLS: &str = "@#$%^&*-_!+=[]{}|\\:',.?/`~\"();<> ";
    let n = pw.chars().count();
    if !(8..=256).contains(&n) {
        return false;
    }
    if !pw
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || SYMBOLS.contains(c))
    {
        return false;
    }
    if disable_strong {
        return true;
    }
    let classes = [
        pw.chars().any(|c| c.is_ascii_lowercase()),
        pw.chars().any(|c| c.is_ascii_uppercase()),
        pw.chars().any(|c| c.is_ascii_digit()),
        pw.chars().any(|c| SYMBOLS.contains(c)),
    ];
    classes.iter().filter(|b| **b).count() >= 3
}

fn weak_password() -> GraphOut {
    bad("The specified password does not comply with password complexity requirements. Please provide a different password.")
}

/// A mail alias: ASCII letters, digits and ! # $ % & ' * + - / = ? ^ _ ` { | } ~ and dots
/// (not leading, trailing or doubled), ≤64 (FAKE CHOICE: Exchange alias rules).
fn mail_nickname_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('.')
        && !s.ends_with('.')
        && !s.contains("..")
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c))
}

fn immutable_id_ok(s: &str) -> bool {
    !s.is_empty() && !s.contains(['$', '_', '@']) && s.is_ascii()
}

fn required(name: &str) -> GraphOut {
    bad(format!(
        "Property {name} value is required but is empty or missing."
    ))
}

fn is_empty_value(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.trim().is_empty(),
        _ => false,
    }
}

// ------------------------------------------------------------------------------------------
// POST /v1.0/users
// Docs: api-reference/v1.0/api/user-post-users.md (required: accountEnabled, displayName,
// mailNickname, passwordProfile, userPrincipalName; onPremisesImmutableId for federated
// domains; 201 with the user); messages per reference §2.4.
// ------------------------------------------------------------------------------------------

fn create_user(st: &mut State, caller: &Caller, body: Option<Value>) -> GraphOut {
    if !caller.has_any(CREATE_USERS) {
        return denied();
    }
    let b = match check_body(body) {
        Ok(b) => b,
        Err(e) => return e,
    };
    // 1. required properties
    if is_empty_value(b.get("accountEnabled")) {
        return required("accountEnabled");
    }
    for p in ["displayName", "mailNickname"] {
        if is_empty_value(b.get(p)) {
            return required(p);
        }
    }
    let password = b
        .get("passwordProfile")
        .and_then(|p| p.get("password"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if password.is_empty() {
        return bad("A password must be specified to create a new user.");
    }
    if is_empty_value(b.get("userPrincipalName")) {
        return required("userPrincipalName");
    }
    let upn = b["userPrincipalName"].as_str().unwrap_or("").to_string();
    // 2. UPN syntax, 3. verified domain
    if !upn_syntax_ok(&upn) {
        return bad("Property userPrincipalName is invalid.");
    }
    let domain = upn.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
    let Some(federated) = st.domain(domain).map(|d| d.federated) else {
        let mut e = bad("The domain portion of the userPrincipalName property is invalid. You must use one of the verified domain names in your organization.");
        e.body.as_mut().unwrap()["error"]["details"] = json!([{"code": "InvalidValue", "message": "The domain portion of the userPrincipalName property is invalid. You must use one of the verified domain names in your organization.", "target": "userPrincipalName"}]);
        return e;
    };
    // 4. federated domain ⇒ onPremisesImmutableId
    let immutable = b
        .get("onPremisesImmutableId")
        .and_then(Value::as_str)
        .map(str::to_string);
    if federated && immutable.as_deref().is_none_or(str::is_empty) {
        return bad("SourceAnchor is a required property for creation of a federated user.");
    }
    if let Some(i) = &immutable {
        if !immutable_id_ok(i) {
            return invalid_value("onPremisesImmutableId");
        }
    }
    // 5. other property rules
    if !mail_nickname_ok(b["mailNickname"].as_str().unwrap_or("")) {
        return invalid_value("mailNickname");
    }
    if let Some(e) = common_rules(&b) {
        return e;
    }
    // 6. password policy
    let disable_strong = b
        .get("passwordPolicies")
        .and_then(Value::as_str)
        .is_some_and(|p| p.contains("DisableStrongPassword"));
    if !password_ok(&password, disable_strong) {
        return weak_password();
    }
    // 7. uniqueness (a soft-deleted user's UPN stays reserved while held: FAKE CHOICE, see
    // `set_hold_deleted_upns`; the immutable ID only against active users)
    if st.upn_taken(&upn) {
        return conflict("userPrincipalName");
    }
    if let Some(i) = &immutable {
        if !st.immutable_holders(i).is_empty() {
            return conflict("onPremisesImmutableId");
        }
    }
    let id = guid();
    let now = now_iso();
    let mut u = Map::new();
    u.insert("id".into(), json!(id));
    for (k, v) in [
        ("businessPhones", json!([])),
        ("otherMails", json!([])),
        ("proxyAddresses", json!([])),
        ("userType", json!("Member")),
        ("createdDateTime", json!(now)),
        ("lastPasswordChangeDateTime", json!(now)),
        ("passwordPolicies", Value::Null),
    ] {
        u.insert(k.into(), v);
    }
    for (k, v) in b {
        u.insert(k, v);
    }
    let mut pp = json!({"password": password, "forceChangePasswordNextSignIn": true,
                         "forceChangePasswordNextSignInWithMfa": false});
    if let Some(Value::Object(sent)) = u.get("passwordProfile") {
        for (k, v) in sent {
            pp[k] = v.clone();
        }
    }
    u.insert("passwordProfile".into(), pp);
    if let Some(m) = u.get("mail").and_then(Value::as_str) {
        let m = m.to_string();
        u.insert("proxyAddresses".into(), json!([format!("SMTP:{m}")]));
    }
    let mut out = Map::new();
    out.insert(
        "@odata.context".into(),
        json!(context(st, "users", None, true)),
    );
    out.extend(project(&u, None));
    let seq = st.bump();
    let idx = st.insert_user(u);
    st.track_new(idx, seq);
    let mut r = gok(201, Value::Object(out));
    r.headers
        .push(("Location".into(), format!("{}/users/{id}", st.graph_base())));
    r
}

/// Rules shared by POST and PATCH for the properties present in `b`.
fn common_rules(b: &Map<String, Value>) -> Option<GraphOut> {
    if let Some(Value::Array(p)) = b.get("businessPhones") {
        if p.len() > 1 {
            // user-update.md: "Only one number can be set for this property." FAKE CHOICE of text.
            return Some(bad("Property businessPhones can contain at most one value. Only one number can be set for this property."));
        }
    }
    if let Some(Value::Array(m)) = b.get("otherMails") {
        if m.len() > 250 || m.iter().any(|x| x.as_str().is_some_and(|s| s.len() > 250)) {
            return Some(invalid_value("otherMails"));
        }
    }
    if let Some(Value::String(u)) = b.get("usageLocation") {
        if u.len() != 2 || !u.chars().all(|c| c.is_ascii_alphabetic()) {
            return Some(invalid_value("usageLocation"));
        }
    }
    if let Some(Value::String(c)) = b.get("companyName") {
        if c.chars().count() > 64 {
            return Some(invalid_value("companyName"));
        }
    }
    if let Some(Value::String(e)) = b.get("employeeId") {
        if e.chars().count() > 16 {
            return Some(invalid_value("employeeId"));
        }
    }
    None
}

// ------------------------------------------------------------------------------------------
// PATCH /v1.0/users/{id | userPrincipalName}
// Docs: api-reference/v1.0/api/user-update.md (partial update, 204; displayName can't be
// cleared; businessPhones one value; passwordProfile can't be used for federated users);
// immutable ID rule: entra-docs hybrid docs + MicrosoftDocs/azure-docs#5108 (reference §9).
// ------------------------------------------------------------------------------------------

fn update_user(st: &mut State, caller: &Caller, key: &str, body: Option<Value>) -> GraphOut {
    let b = match check_body(body) {
        Ok(b) => b,
        Err(e) => return e,
    };
    let only = |k: &str| !b.is_empty() && b.keys().all(|x| x == k);
    let allowed = caller.has_any(UPDATE_USERS)
        || (only("passwordProfile") && caller.has_any(&["User-PasswordProfile.ReadWrite.All"]))
        || (only("accountEnabled") && caller.has_any(&["User.EnableDisableAccount.All"]));
    if !allowed {
        return denied();
    }
    let Some(idx) = st.find_user(key) else {
        return not_found(key);
    };
    let cur = st.users[idx].clone();
    let cur_upn = cur["userPrincipalName"].as_str().unwrap_or("").to_string();
    let cur_id = cur["id"].as_str().unwrap_or("").to_string();
    if b.contains_key("displayName") && is_empty_value(b.get("displayName")) {
        return required("displayName");
    }
    if b.contains_key("accountEnabled") && b["accountEnabled"].is_null() {
        return required("accountEnabled");
    }
    if b.contains_key("mailNickname") && !mail_nickname_ok(b["mailNickname"].as_str().unwrap_or(""))
    {
        return invalid_value("mailNickname");
    }
    let new_upn = match b.get("userPrincipalName") {
        None => cur_upn.clone(),
        Some(Value::String(u)) => {
            if !upn_syntax_ok(u) {
                return bad("Property userPrincipalName is invalid.");
            }
            let d = u.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
            if st.domain(d).is_none() {
                return bad("The domain portion of the userPrincipalName property is invalid. You must use one of the verified domain names in your organization.");
            }
            u.clone()
        }
        Some(_) => return required("userPrincipalName"),
    };
    let cur_fed = st.upn_domain_federated(&cur_upn);
    let new_fed = st.upn_domain_federated(&new_upn);
    let new_immutable = match b.get("onPremisesImmutableId") {
        None => cur
            .get("onPremisesImmutableId")
            .and_then(Value::as_str)
            .map(str::to_string),
        Some(Value::String(s)) => {
            if !immutable_id_ok(s) {
                return invalid_value("onPremisesImmutableId");
            }
            Some(s.clone())
        }
        Some(_) => None,
    };
    let immutable_changes = b.contains_key("onPremisesImmutableId")
        && new_immutable.as_deref() != cur.get("onPremisesImmutableId").and_then(Value::as_str);
    if immutable_changes && (cur_fed || new_fed) {
        // FAKE CHOICE of text; rule: reference §9 (MSOnline "FederatedUser.SourceAnchor").
        return bad("Property onPremisesImmutableId cannot be changed while the user's userPrincipalName is in a federated domain. Move the user to a managed domain (for example the .onmicrosoft.com domain), change onPremisesImmutableId, then move it back.");
    }
    if new_fed && new_immutable.as_deref().is_none_or(str::is_empty) {
        return bad("SourceAnchor is a required property for creation of a federated user.");
    }
    if let Some(e) = common_rules(&b) {
        return e;
    }
    if let Some(pp) = b.get("passwordProfile") {
        if cur_fed || new_fed {
            // user-update.md: passwordProfile can't be used for federated users. FAKE CHOICE of text.
            return bad(
                "Updating passwordProfile is not supported for users in a federated domain.",
            );
        }
        if let Some(pw) = pp.get("password") {
            let disable_strong = b
                .get("passwordPolicies")
                .or(cur.get("passwordPolicies"))
                .and_then(Value::as_str)
                .is_some_and(|p| p.contains("DisableStrongPassword"));
            if !password_ok(pw.as_str().unwrap_or(""), disable_strong) {
                return weak_password();
            }
        }
    }
    if !new_upn.eq_ignore_ascii_case(&cur_upn) && st.upn_taken(&new_upn) {
        return conflict("userPrincipalName");
    }
    if immutable_changes {
        if let Some(i) = &new_immutable {
            if st.immutable_holders(i).iter().any(|h| *h != cur_id) {
                return conflict("onPremisesImmutableId");
            }
        }
    }
    st.user_patches
        .push((cur_id.clone(), Value::Object(b.clone())));
    // Writing a value a property already has is not a change for delta (FAKE CHOICE).
    let seq = st.bump();
    for (k, v) in b {
        if k == "passwordProfile" {
            let mut pp = cur
                .get("passwordProfile")
                .cloned()
                .unwrap_or_else(|| json!({}));
            if let Value::Object(sent) = &v {
                for (pk, pv) in sent {
                    pp[pk] = pv.clone();
                }
                if sent.contains_key("password") {
                    st.write_prop(
                        idx,
                        "lastPasswordChangeDateTime",
                        json!(now_iso()),
                        seq,
                        true,
                    );
                }
            }
            st.write_prop(idx, &k, pp, seq, false);
        } else {
            st.write_prop(idx, &k, v, seq, false);
        }
    }
    gnone(204)
}

/// DELETE /v1.0/users/{id|upn} (api-reference/v1.0/api/user-delete.md): 204; the user moves
/// to deleted items, restorable for 30 days.
fn delete_user(st: &mut State, caller: &Caller, key: &str) -> GraphOut {
    if !caller.has_any(DELETE_USERS) {
        return denied();
    }
    let Some(idx) = st.find_user(key) else {
        return not_found(key);
    };
    st.soft_delete(idx);
    gnone(204)
}

// ------------------------------------------------------------------------------------------
// Deleted items: GET /directory/deletedItems/microsoft.graph.user, GET|DELETE
// /directory/deletedItems/{id}, POST /directory/deletedItems/{id}/restore
// Docs: api-reference/v1.0/api/directory-deleteditems-list.md (the cast is required; 100 per
// page, $top up to 999), directory-deleteditems-get.md, directory-deleteditems-delete.md (204),
// directory-deleteditems-restore.md (200 + the directoryObject with @odata.type; restorable for
// 30 days). Deleted users show a UPN prefixed with their object id without dashes (observed,
// reference §10; exact format FAKE CHOICE). Restoring onto a UPN an active user has taken is a
// conflict (reference §10, INF); the optional body `newUserPrincipalName` restores under a new
// UPN and `autoReconcileProxyConflict` is accepted (reference §10).
// ------------------------------------------------------------------------------------------

/// A bin entry as the deleted-items endpoints show it.
fn deleted_json(d: &Deleted, select: Option<&[String]>) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("@odata.type".into(), json!("#microsoft.graph.user"));
    m.extend(project(&d.user, select));
    let id = d.user["id"].as_str().unwrap_or("");
    if m.contains_key("userPrincipalName") {
        let upn = d.user["userPrincipalName"].as_str().unwrap_or("");
        m.insert(
            "userPrincipalName".into(),
            json!(format!("{}{upn}", id.replace('-', ""))),
        );
    }
    if select.is_none() {
        m.insert("deletedDateTime".into(), d.user["deletedDateTime"].clone());
    }
    m
}

fn find_deleted_by_id(st: &State, id: &str) -> Option<usize> {
    st.deleted.iter().position(|d| {
        d.user["id"]
            .as_str()
            .is_some_and(|i| i.eq_ignore_ascii_case(id))
    })
}

fn list_deleted(
    st: &State,
    caller: &Caller,
    q: &Query,
    headers: &HashMap<String, String>,
) -> GraphOut {
    if !caller.has_any(READ_USERS) {
        return denied();
    }
    let advanced = headers
        .get("consistencylevel")
        .is_some_and(|v| v.eq_ignore_ascii_case("eventual"))
        && q.get("$count")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let top = match q.get("$top") {
        None => 100,
        Some(t) => match t.parse::<i64>() {
            Ok(n) if (1..=999).contains(&n) => n as usize,
            _ => {
                return gerr(
                    400,
                    "Request_UnsupportedQuery",
                    format!(
                        "Invalid page size specified: '{t}'. Must be between 1 and 999 inclusive."
                    ),
                )
            }
        },
    };
    if q.get("$orderby").is_some() || q.get("$search").is_some() || q.get("$expand").is_some() {
        return unsupported_query(
            "The fake supports only $select, $filter, $top and $count on deleted items.",
        ); // FAKE limit
    }
    let select = match parse_select(q.get("$select"), true) {
        Ok(s) => s,
        Err(e) => return e,
    };
    let filter = match q.get("$filter") {
        None => None,
        Some(f) => {
            let parsed = tokenize(f).and_then(|toks| {
                let mut p = FilterParser { toks, pos: 0 };
                let r = p.or()?;
                (p.pos == p.toks.len()).then_some(r)
            });
            let Some(parsed) = parsed else {
                return filter_syntax_error(f);
            };
            if let Err(e) = check_filter(&parsed, advanced) {
                return e;
            }
            Some(parsed)
        }
    };
    let matched: Vec<&Deleted> = st
        .deleted
        .iter()
        .filter(|d| filter.as_ref().is_none_or(|f| eval_filter(f, &d.user)))
        .collect();
    let start = match q.get("$skiptoken") {
        None => 0,
        Some(tok) => match decode_skiptoken(tok) {
            Some(n) => n,
            None => return bad("Invalid skip token specified."), // FAKE CHOICE of text
        },
    };
    let mut body = Map::new();
    body.insert(
        "@odata.context".into(),
        json!(format!(
            "{}/$metadata#directoryObjects/microsoft.graph.user",
            st.graph_base()
        )),
    );
    if advanced && start == 0 {
        body.insert("@odata.count".into(), json!(matched.len()));
    }
    if start + top < matched.len() {
        let mut link = format!(
            "{}/directory/deletedItems/microsoft.graph.user?",
            st.graph_base()
        );
        for (k, v) in &q.params {
            let kl = k.to_ascii_lowercase();
            if kl != "$skiptoken" && kl != "$count" {
                link.push_str(&format!("{}={}&", qenc(k), qenc(v)));
            }
        }
        link.push_str(&format!("$skiptoken={}", encode_skiptoken(start + top)));
        body.insert("@odata.nextLink".into(), json!(link));
    }
    let value: Vec<Value> = matched
        .iter()
        .skip(start)
        .take(top)
        .map(|d| Value::Object(deleted_json(d, select.as_deref())))
        .collect();
    body.insert("value".into(), Value::Array(value));
    gok(200, Value::Object(body))
}

fn get_deleted(st: &State, caller: &Caller, id: &str, q: &Query) -> GraphOut {
    if !caller.has_any(READ_USERS) {
        return denied();
    }
    let select = match parse_select(q.get("$select"), false) {
        Ok(s) => s,
        Err(e) => return e,
    };
    let Some(i) = find_deleted_by_id(st, id) else {
        return not_found(id);
    };
    let mut m = Map::new();
    m.insert(
        "@odata.context".into(),
        json!(format!(
            "{}/$metadata#directoryObjects/$entity",
            st.graph_base()
        )),
    );
    m.extend(deleted_json(&st.deleted[i], select.as_deref()));
    gok(200, Value::Object(m))
}

fn purge_deleted(st: &mut State, caller: &Caller, id: &str) -> GraphOut {
    if !caller.has_any(DELETE_USERS) {
        return denied();
    }
    let Some(i) = find_deleted_by_id(st, id) else {
        return not_found(id);
    };
    st.purge(i);
    gnone(204)
}

fn restore_deleted(st: &mut State, caller: &Caller, id: &str, body: Option<Value>) -> GraphOut {
    if !caller.has_any(DELETE_USERS) {
        return denied();
    }
    let Some(i) = find_deleted_by_id(st, id) else {
        return not_found(id);
    };
    let new_upn = match body.as_ref().and_then(|b| b.get("newUserPrincipalName")) {
        None | Some(Value::Null) => None,
        Some(Value::String(u)) => {
            if !upn_syntax_ok(u) {
                return bad("Property userPrincipalName is invalid.");
            }
            let d = u.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
            if st.domain(d).is_none() {
                return bad("The domain portion of the userPrincipalName property is invalid. You must use one of the verified domain names in your organization.");
            }
            Some(u.clone())
        }
        Some(other) => {
            return gerr(
                400,
                "Request_BadRequest",
                format!("Cannot convert the literal '{other}' to the expected type 'Edm.String'."),
            )
        }
    };
    let upn = new_upn.clone().unwrap_or_else(|| {
        st.deleted[i].user["userPrincipalName"]
            .as_str()
            .unwrap_or("")
            .to_string()
    });
    if st.find_user(&upn).is_some() {
        return conflict("userPrincipalName");
    }
    if let Some(imm) = st.deleted[i]
        .user
        .get("onPremisesImmutableId")
        .and_then(Value::as_str)
    {
        if !st.immutable_holders(imm).is_empty() {
            return conflict("onPremisesImmutableId");
        }
    }
    let seq = st.bump();
    let d = st.deleted.remove(i);
    let mut u = d.user;
    u.insert("deletedDateTime".into(), Value::Null);
    u.insert("userPrincipalName".into(), json!(upn));
    let idx = st.insert_user(u);
    st.track_new(idx, seq);
    let uid = st.user_id(idx);
    if let Some(mid) = d.manager.filter(|m| st.find_user(m).is_some()) {
        st.set_manager_link(&uid, Some(mid), seq);
    }
    let mut m = Map::new();
    m.insert(
        "@odata.context".into(),
        json!(format!(
            "{}/$metadata#directoryObjects/$entity",
            st.graph_base()
        )),
    );
    m.insert("@odata.type".into(), json!("#microsoft.graph.user"));
    m.extend(project(&st.users[idx], None));
    gok(200, Value::Object(m))
}

// ------------------------------------------------------------------------------------------
// Manager: PUT/DELETE /users/{id}/manager/$ref, GET /users/{id}/manager
// Docs: api-reference/v1.0/api/user-post-manager.md, user-delete-manager.md,
// user-list-manager.md; 404 text observed (reference §4).
// ------------------------------------------------------------------------------------------

fn set_manager(st: &mut State, caller: &Caller, key: &str, body: Option<Value>) -> GraphOut {
    if !caller.has_any(UPDATE_USERS) {
        return denied();
    }
    let Some(idx) = st.find_user(key) else {
        return not_found(key);
    };
    let Some(target) = body
        .as_ref()
        .and_then(|b| b.get("@odata.id"))
        .and_then(Value::as_str)
    else {
        return gerr(
            400,
            "BadRequest",
            "Invalid request body: '@odata.id' is required.",
        ); // FAKE CHOICE of text
    };
    let target = target.trim_end_matches('/');
    let lower = target.to_ascii_lowercase();
    let mid = ["/users/", "/directoryobjects/"].iter().find_map(|p| {
        lower
            .rfind(p)
            .map(|i| percent_decode(&target[i + p.len()..]))
    });
    let Some(mid) = mid else {
        return gerr(
            400,
            "BadRequest",
            format!("Invalid object identifier '{target}'."),
        );
    };
    let Some(mi) = st.find_user(&mid) else {
        return not_found(&mid);
    };
    let uid = st.user_id(idx);
    let mid = st.user_id(mi);
    if uid == mid {
        return bad("A user cannot be their own manager."); // FAKE CHOICE of text
    }
    let seq = st.bump();
    st.set_manager_link(&uid, Some(mid), seq);
    gnone(204)
}

/// POST /users/{id|upn}/revokeSignInSessions (api-reference/v1.0/api/user-revokesigninsessions.md):
/// resets `signInSessionsValidFromDateTime` to now; 200 with `{"value": true}`.
/// Permissions (newest table): application `User.RevokeSessions.All` only; delegated also
/// `User.ReadWrite.All` and `Directory.ReadWrite.All`.
fn revoke_sign_in_sessions(st: &mut State, caller: &Caller, key: &str) -> GraphOut {
    let allowed: &[&str] = if caller.app_only {
        &["User.RevokeSessions.All"]
    } else {
        &[
            "User.RevokeSessions.All",
            "User.ReadWrite.All",
            "Directory.ReadWrite.All",
        ]
    };
    if !caller.has_any(allowed) {
        return denied();
    }
    let Some(idx) = st.find_user(key) else {
        return not_found(key);
    };
    st.users[idx].insert(
        "signInSessionsValidFromDateTime".into(),
        Value::String(now_iso()),
    );
    gok(
        200,
        json!({
            "@odata.context": format!("{}/$metadata#Edm.Boolean", st.graph_base()),
            "value": true,
        }),
    )
}

fn delete_manager(st: &mut State, caller: &Caller, key: &str) -> GraphOut {
    if !caller.has_any(UPDATE_USERS) {
        return denied();
    }
    let Some(idx) = st.find_user(key) else {
        return not_found(key);
    };
    let uid = st.user_id(idx);
    if !st.managers.contains_key(&uid) {
        return not_found("manager");
    }
    let seq = st.bump();
    st.set_manager_link(&uid, None, seq);
    gnone(204)
}

fn get_manager(st: &State, caller: &Caller, key: &str, q: &Query) -> GraphOut {
    if !caller.has_any(READ_USERS) {
        return denied();
    }
    let select = match parse_select(q.get("$select"), false) {
        Ok(s) => s,
        Err(e) => return e,
    };
    let Some(idx) = st.find_user(key) else {
        return not_found(key);
    };
    let uid = st.users[idx]["id"].as_str().unwrap_or("");
    let Some(mi) = st.managers.get(uid).and_then(|m| st.find_user(m)) else {
        return not_found("manager");
    };
    let mut m = Map::new();
    m.insert(
        "@odata.context".into(),
        json!(format!(
            "{}/$metadata#directoryObjects/$entity",
            st.graph_base()
        )),
    );
    m.insert("@odata.type".into(), json!("#microsoft.graph.user"));
    m.extend(project(&st.users[mi], select.as_deref()));
    gok(200, Value::Object(m))
}

// ------------------------------------------------------------------------------------------
// GET /v1.0/domains, GET /v1.0/domains/{id}
// Docs: api-reference/v1.0/api/domain-list.md, domain-get.md, resources/domain.md.
// ------------------------------------------------------------------------------------------

fn domain_json(d: &Domain) -> Value {
    json!({
        "authenticationType": if d.federated { "Federated" } else { "Managed" },
        "availabilityStatus": null,
        "id": d.name,
        "isAdminManaged": true,
        "isDefault": d.is_default,
        "isInitial": d.is_initial,
        "isRoot": true,
        "isVerified": d.is_verified,
        "supportedServices": if d.is_initial { json!(["Email", "OfficeCommunicationsOnline"]) } else { json!(["Email", "OfficeCommunicationsOnline", "Intune"]) },
        "passwordValidityPeriodInDays": null,
        "passwordNotificationWindowInDays": null,
        "state": null,
    })
}

fn list_domains(st: &State, caller: &Caller, one: Option<&str>) -> GraphOut {
    if !caller.has_any(READ_DOMAINS) {
        return denied();
    }
    match one {
        Some(name) => match st.domain(name) {
            Some(d) => {
                let mut v = domain_json(d);
                v["@odata.context"] =
                    json!(format!("{}/$metadata#domains/$entity", st.graph_base()));
                gok(200, v)
            }
            None => not_found(name),
        },
        None => gok(
            200,
            json!({
                "@odata.context": format!("{}/$metadata#domains", st.graph_base()),
                "value": st.domains.iter().map(domain_json).collect::<Vec<_>>(),
            }),
        ),
    }
}

// ------------------------------------------------------------------------------------------
// /v1.0/domains/{id}/federationConfiguration
// Docs: api-reference/v1.0/resources/internaldomainfederation.md,
// api/domain-post-federationconfiguration.md (201 with the object), domain-list-federation
// configuration.md (a collection), internaldomainfederation-update.md (200 with the object),
// internaldomainfederation-delete.md (204; the domain is managed again).
// ------------------------------------------------------------------------------------------

/// Properties an `internalDomainFederation` may carry (resource doc).
const FEDERATION_PROPERTIES: &[&str] = &[
    "@odata.type",
    "displayName",
    "issuerUri",
    "metadataExchangeUri",
    "signingCertificate",
    "nextSigningCertificate",
    "passiveSignInUri",
    "preferredAuthenticationProtocol",
    "activeSignInUri",
    "signOutUri",
    "promptLoginBehavior",
    "isSignedAuthenticationRequestRequired",
    "federatedIdpMfaBehavior",
    "passwordResetUri",
    "signingCertificateUpdateStatus",
];

fn federation_domain<'a>(st: &'a mut State, name: &str) -> Result<&'a mut Domain, GraphOut> {
    st.domains
        .iter_mut()
        .find(|d| d.name.eq_ignore_ascii_case(name))
        .ok_or_else(|| not_found(name))
}

/// Checks a federation body's properties and values; `create` also needs the required ones.
fn check_federation_body(body: &Map<String, Value>, create: bool) -> Result<(), GraphOut> {
    for key in body.keys() {
        if !FEDERATION_PROPERTIES.contains(&key.as_str()) {
            return Err(bad(format!(
                "Invalid property '{key}' for type 'microsoft.graph.internalDomainFederation'."
            ))); // FAKE CHOICE of text
        }
    }
    if create {
        for key in ["issuerUri", "passiveSignInUri", "signingCertificate"] {
            if body
                .get(key)
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                return Err(bad(format!("Required property '{key}' is missing.")));
                // FAKE CHOICE
            }
        }
    }
    for key in ["signingCertificate", "nextSigningCertificate"] {
        if let Some(text) = body.get(key).and_then(Value::as_str) {
            let der = B64.decode(text).unwrap_or_default();
            if openssl::x509::X509::from_der(&der).is_err() {
                return Err(bad(format!(
                    "Invalid value for property '{key}': not a base64 X.509 certificate."
                ))); // FAKE CHOICE
            }
        }
    }
    if let Some(p) = body.get("preferredAuthenticationProtocol") {
        if !matches!(p.as_str(), Some("saml" | "wsFed")) {
            return Err(bad(
                "Invalid value for property 'preferredAuthenticationProtocol'.",
            )); // FAKE CHOICE
        }
    }
    if let Some(p) = body.get("federatedIdpMfaBehavior") {
        if !matches!(
            p.as_str(),
            Some(
                "acceptIfMfaDoneByFederatedIdp"
                    | "enforceMfaByFederatedIdp"
                    | "rejectMfaByFederatedIdp"
            )
        ) {
            return Err(bad("Invalid value for property 'federatedIdpMfaBehavior'."));
            // FAKE CHOICE
        }
    }
    if let Some(p) = body.get("promptLoginBehavior") {
        if !matches!(
            p.as_str(),
            Some("translateToFreshPasswordAuthentication" | "nativeSupport" | "disabled")
        ) {
            return Err(bad("Invalid value for property 'promptLoginBehavior'."));
            // FAKE CHOICE
        }
    }
    Ok(())
}

fn federation_json(st: &State, domain: &str, f: &Map<String, Value>, one: bool) -> Value {
    let mut v = Value::Object(f.clone());
    if one {
        v["@odata.context"] = json!(format!(
            "{}/$metadata#domains('{domain}')/federationConfiguration/$entity",
            st.graph_base()
        ));
    }
    v
}

fn list_federation(st: &mut State, caller: &Caller, name: &str) -> GraphOut {
    if !caller.has_any(READ_FEDERATION) {
        return denied();
    }
    let graph_base = st.graph_base();
    let domain = match federation_domain(st, name) {
        Ok(d) => d,
        Err(e) => return e,
    };
    let value: Vec<Value> = domain
        .federation
        .iter()
        .map(|f| Value::Object(f.clone()))
        .collect();
    let context = format!(
        "{graph_base}/$metadata#domains('{}')/federationConfiguration",
        domain.name
    );
    gok(200, json!({"@odata.context": context, "value": value}))
}

fn get_federation(st: &mut State, caller: &Caller, name: &str, id: &str) -> GraphOut {
    if !caller.has_any(READ_FEDERATION) {
        return denied();
    }
    let found = match federation_domain(st, name) {
        Ok(d) => d
            .federation
            .clone()
            .filter(|f| f.get("id").and_then(Value::as_str) == Some(id)),
        Err(e) => return e,
    };
    match found {
        Some(f) => gok(200, federation_json(st, name, &f, true)),
        None => not_found(id),
    }
}

fn create_federation(st: &mut State, caller: &Caller, name: &str, body: Option<Value>) -> GraphOut {
    if !caller.has_any(WRITE_FEDERATION) {
        return denied();
    }
    let Some(Value::Object(body)) = body else {
        return bad("A request body is required."); // FAKE CHOICE
    };
    if let Err(e) = check_federation_body(&body, true) {
        return e;
    }
    // One issuer URI per federated domain of the tenant: Entra tells the domains' sign-ins
    // apart by it (and AD FS needs -SupportMultipleDomain for the same reason).
    let issuer = body
        .get("issuerUri")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if st.domains.iter().any(|d| {
        !d.name.eq_ignore_ascii_case(name)
            && d.federation
                .as_ref()
                .and_then(|f| f.get("issuerUri"))
                .and_then(Value::as_str)
                == Some(issuer)
    }) {
        return bad(format!(
            "The issuer URI '{issuer}' is already used by another federated domain of the tenant."
        )); // FAKE CHOICE of text
    }
    let domain = match federation_domain(st, name) {
        Ok(d) => d,
        Err(e) => return e,
    };
    // The initial *.onmicrosoft.com domain cannot be federated; only verified domains can.
    if domain.is_initial {
        return bad("The initial domain cannot be federated."); // FAKE CHOICE of text
    }
    if !domain.is_verified {
        return bad(format!("Domain '{}' is not verified.", domain.name)); // FAKE CHOICE
    }
    if domain.federated {
        return bad(format!("Domain '{}' is already federated.", domain.name)); // FAKE CHOICE
    }
    let mut f = body;
    f.insert(
        "@odata.type".into(),
        json!("#microsoft.graph.internalDomainFederation"),
    );
    f.insert("id".into(), json!(guid()));
    for (key, default) in [
        ("displayName", json!(null)),
        ("activeSignInUri", json!(null)),
        ("metadataExchangeUri", json!(null)),
        ("nextSigningCertificate", json!(null)),
        ("passwordResetUri", json!(null)),
        ("signOutUri", json!(null)),
        ("preferredAuthenticationProtocol", json!("wsFed")),
        (
            "promptLoginBehavior",
            json!("translateToFreshPasswordAuthentication"),
        ),
        (
            "federatedIdpMfaBehavior",
            json!("acceptIfMfaDoneByFederatedIdp"),
        ),
        ("isSignedAuthenticationRequestRequired", json!(false)),
        (
            "signingCertificateUpdateStatus",
            json!({"certificateUpdateResult": "success", "lastRunDateTime": null}),
        ),
    ] {
        f.entry(key).or_insert(default);
    }
    domain.federated = true;
    domain.federation = Some(f.clone());
    let mut v = federation_json(st, name, &f, true);
    v["@odata.context"] = json!(format!(
        "{}/$metadata#domains('{name}')/federationConfiguration/$entity",
        st.graph_base()
    ));
    gok(201, v)
}

fn update_federation(
    st: &mut State,
    caller: &Caller,
    name: &str,
    id: &str,
    body: Option<Value>,
) -> GraphOut {
    if !caller.has_any(WRITE_FEDERATION) {
        return denied();
    }
    let Some(Value::Object(body)) = body else {
        return bad("A request body is required."); // FAKE CHOICE
    };
    if let Err(e) = check_federation_body(&body, false) {
        return e;
    }
    let domain = match federation_domain(st, name) {
        Ok(d) => d,
        Err(e) => return e,
    };
    let Some(f) = domain
        .federation
        .as_mut()
        .filter(|f| f.get("id").and_then(Value::as_str) == Some(id))
    else {
        return not_found(id);
    };
    for (k, v) in body {
        if k != "@odata.type" {
            f.insert(k, v);
        }
    }
    let f = f.clone();
    gok(200, federation_json(st, name, &f, true))
}

fn delete_federation(st: &mut State, caller: &Caller, name: &str, id: &str) -> GraphOut {
    if !caller.has_any(WRITE_FEDERATION) {
        return denied();
    }
    let domain = match federation_domain(st, name) {
        Ok(d) => d,
        Err(e) => return e,
    };
    if domain
        .federation
        .as_ref()
        .is_none_or(|f| f.get("id").and_then(Value::as_str) != Some(id))
    {
        return not_found(id);
    }
    domain.federation = None;
    domain.federated = false;
    GraphOut {
        status: 204,
        headers: Vec::new(),
        body: None,
    }
}

// ------------------------------------------------------------------------------------------
// POST /v1.0/$batch
// Docs: concepts/json-batching.md (≤20 requests; id required and unique, else 400; headers
// with Content-Type required when a body is present; dependsOn and 424; responses in any order,
// correlate by id; 200 when parseable), concepts/throttling.md ("Throttling and batching": each
// item evaluated individually, 429 with its own Retry-After).
// ------------------------------------------------------------------------------------------

fn batch(st: &mut State, caller: &Caller, bytes: &[u8]) -> GraphOut {
    let malformed = |m: &str| gerr(400, "BadRequest", m.to_string());
    let Ok(body) = serde_json::from_slice::<Value>(bytes) else {
        return malformed("Invalid batch payload format.");
    };
    let Some(reqs) = body.get("requests").and_then(Value::as_array) else {
        return malformed("Invalid batch payload format: the 'requests' property is required.");
    };
    if reqs.len() > 20 {
        return malformed("Number of requests in the batch exceeds the maximum of 20.");
    }
    let mut ids: Vec<String> = Vec::new();
    for r in reqs {
        let Some(id) = r
            .get("id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        else {
            return malformed("Invalid batch payload format: every request needs a string 'id'.");
        };
        if ids.iter().any(|i| i.eq_ignore_ascii_case(id)) {
            return malformed(&format!(
                "Batch request contains duplicate request id '{id}'."
            ));
        }
        ids.push(id.to_string());
        let method = r.get("method").and_then(Value::as_str).unwrap_or("");
        if method.is_empty() || r.get("url").and_then(Value::as_str).is_none() {
            return malformed(&format!(
                "Invalid batch payload format: request '{id}' needs 'method' and 'url'."
            ));
        }
        let has_ct = r
            .get("headers")
            .and_then(Value::as_object)
            .is_some_and(|h| h.keys().any(|k| k.eq_ignore_ascii_case("content-type")));
        let has_body = r.get("body").is_some_and(|b| !b.is_null());
        let write = ["POST", "PATCH", "PUT"].contains(&method.to_ascii_uppercase().as_str());
        if (has_body || write) && !(has_body && has_ct) {
            // Observed service text for this case.
            return malformed(&format!(
                "Write request id : {id} does not contain Content-Type header or body."
            ));
        }
    }
    for r in reqs {
        if let Some(deps) = r.get("dependsOn") {
            let ok = deps.as_array().is_some_and(|d| {
                d.iter().all(|x| {
                    x.as_str()
                        .is_some_and(|x| ids.iter().any(|i| i.eq_ignore_ascii_case(x)))
                })
            });
            if !ok {
                return malformed(
                    "Invalid batch payload format: dependsOn references an unknown request id.",
                );
            }
        }
    }
    // Run in dependency order (repeated passes); a cycle leaves items unrun → 424.
    let mut results: HashMap<String, GraphOut> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut progress = true;
    while progress && results.len() < reqs.len() {
        progress = false;
        for r in reqs {
            let id = r["id"].as_str().unwrap().to_ascii_lowercase();
            if results.contains_key(&id) {
                continue;
            }
            let deps: Vec<String> = r
                .get("dependsOn")
                .and_then(Value::as_array)
                .map(|d| {
                    d.iter()
                        .filter_map(|x| x.as_str())
                        .map(str::to_ascii_lowercase)
                        .collect()
                })
                .unwrap_or_default();
            if deps.iter().any(|d| !results.contains_key(d)) {
                continue;
            }
            progress = true;
            let failed_dep = deps.iter().any(|d| results[d].status >= 400);
            let out = if failed_dep {
                gerr(424, "BadRequest", "Failed dependency") // FAKE CHOICE of body
            } else {
                run_item(st, caller, r)
            };
            results.insert(id.clone(), out);
            order.push(id);
        }
    }
    for r in reqs {
        let id = r["id"].as_str().unwrap().to_ascii_lowercase();
        if !results.contains_key(&id) {
            results.insert(id.clone(), gerr(424, "BadRequest", "Failed dependency"));
            order.push(id);
        }
    }
    // Answer in reverse order, so clients must correlate by id.
    let mut responses = Vec::new();
    for id in order.iter().rev() {
        let original = reqs
            .iter()
            .find_map(|r| r["id"].as_str().filter(|x| x.eq_ignore_ascii_case(id)))
            .unwrap()
            .to_string();
        let out = results.remove(id).unwrap();
        let ctx = Ctx {
            request_id: guid(),
            client_request_id: guid(),
        };
        let out = finalize(out, &ctx);
        let headers: Map<String, Value> = out
            .headers
            .into_iter()
            .filter(|(k, _)| !k.eq_ignore_ascii_case("x-ms-ags-diagnostic"))
            .map(|(k, v)| (k, Value::String(v)))
            .collect();
        let mut item = json!({"id": original, "status": out.status, "headers": headers});
        if let Some(b) = out.body {
            item["body"] = b;
        }
        responses.push(item);
    }
    gok(200, json!({"responses": responses}))
}

fn run_item(st: &mut State, caller: &Caller, r: &Value) -> GraphOut {
    let method = r["method"].as_str().unwrap_or("").to_ascii_uppercase();
    let url = r["url"].as_str().unwrap_or("");
    let rel = url.trim_start_matches('/');
    st.batch_subrequest_count += 1;
    st.requests
        .push((method.clone(), format!("/v1.0/$batch:/{rel}")));
    if url.contains("://") {
        return bad("The url of a batch request must be relative to the version root.");
    }
    if let Some(inj) = st.next_injection() {
        return injected(inj);
    }
    let (path, query) = rel.split_once('?').unwrap_or((rel, ""));
    let headers: HashMap<String, String> = r
        .get("headers")
        .and_then(Value::as_object)
        .map(|h| {
            h.iter()
                .filter_map(|(k, v)| Some((k.to_ascii_lowercase(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let body = r.get("body").cloned().filter(|b| !b.is_null());
    dispatch(st, caller, &method, path, query, &headers, body)
}
