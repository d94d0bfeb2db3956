//! The Microsoft 365 pages of the console, and the end of the consent flow (`/m365/callback`).
//!
//! The callback is reached by the browser that Microsoft redirects back, authenticated by the
//! single-use, sealed OAuth `state` (the CLI's `m365 connect` uses it without a console session).
//!
//! The console page (`/admin/m365`) shows and changes the connection, imports tenant users in
//! the background with live progress, edits the attribute export table, and sums up sync.

use std::collections::HashMap;
use std::net::SocketAddr;

use askama::Template;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Router};
use chrono::Utc;
use serde::Deserialize;

use super::binding::FormFields;
use super::{display_time, redirect_with_notice, Chrome, Notice};
use crate::m365::sync::{attributes, Direction, SyncError};
use crate::m365::{
    AppRegistration, ConnectionStatus, CredentialChange, CredentialKind, ImportSelection,
    M365Error, RegistrationChange, RegistrationError, ValueSource,
};
use crate::server::AppState;
use crate::store::{ImportRunRow, SyncCounts};
use crate::web::{render, AdminPrincipal, AppError};

/// Tenant users listed on the page at most (search narrows; "Import all" takes everyone).
const TENANT_LIST_LIMIT: usize = 500;
/// Import runs listed under "Recent imports".
const RECENT_RUNS: i64 = 5;
/// What deactivating does, said on the button's confirmation and next to it (seed 003).
const DEACTIVATE_EFFECT: &str = "Users stay active in Microsoft 365 and in idbridge. The tokens are dropped and every user's binding is cleared: nothing more is sent to Microsoft 365. After reconnecting, users must be bound again.";

/// Routes that need no console session.
pub fn public_router() -> Router<AppState> {
    Router::new().route("/m365/callback", get(m365_callback))
}

/// Console pages (behind the admin session guard).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/m365", get(page))
        .route("/admin/m365/app-registration", post(save_registration))
        .route(
            "/admin/m365/app-registration/certificate.pem",
            get(registration_certificate),
        )
        .route("/admin/m365/connect", post(connect))
        .route("/admin/m365/connect-app", post(connect_app))
        .route("/admin/m365/deactivate", post(deactivate))
        .route("/admin/m365/import", post(import))
        .route("/admin/m365/imports/{run_id}", get(import_progress))
        .route("/admin/m365/attributes", post(set_attributes))
        .route("/admin/m365/domains/federate", post(federate))
        .route("/admin/m365/domains/unfederate", post(unfederate))
}

/// What Microsoft appends to the redirect URI after consent.
#[derive(Debug, Deserialize)]
pub struct CallbackParams {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// The page after a successful consent: where to go next.
#[derive(Template)]
#[template(path = "admin/m365_connected.html")]
struct ConnectedPage {
    ui: crate::i18n::Ui,
    message: String,
}

async fn m365_callback(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Query(params): Query<CallbackParams>,
) -> Result<Response, AppError> {
    let result = state
        .m365
        .complete_connect(
            params.code.as_deref(),
            params.state.as_deref(),
            params.error.as_deref(),
            params.error_description.as_deref(),
            Some(addr.ip().to_string()),
            Utc::now(),
        )
        .await;
    match result {
        Ok(status) => {
            let message = format!(
                "idbridge is connected to tenant {} (default domain {}).",
                status.tenant_id.as_deref().unwrap_or("?"),
                status.default_domain.as_deref().unwrap_or("unknown"),
            );
            Ok(render(
                StatusCode::OK,
                &ConnectedPage {
                    ui: crate::i18n::Ui::current(),
                    message,
                },
            ))
        }
        Err(
            err @ (M365Error::UnknownState | M365Error::Refused(_) | M365Error::NotConfigured(_)),
        ) => Err(AppError::bad_request(
            "Microsoft 365 was not connected",
            err.to_string(),
        )),
        Err(err) => Err(AppError::Internal(err.to_string())),
    }
}

/// The step between the Connect button and Microsoft's consent page.
#[derive(Template)]
#[template(path = "admin/m365_consent.html")]
struct ConsentPage {
    chrome: Chrome,
    /// Microsoft's authorize URL (with the state and PKCE challenge).
    url: String,
}

/// The connection as the page shows it.
struct ConnectionView {
    /// connected, reconnect, deactivated or not_connected (also the badge's class).
    state: String,
    label: &'static str,
    message: Option<String>,
    mode: String,
    tenant_id: String,
    default_domain: String,
    connected_at: String,
    connected_by: String,
    /// The Graph permissions the token grants, space-separated ("" when unknown).
    granted: String,
    /// (permission, what stops working without it).
    missing: Vec<(String, String)>,
}

impl ConnectionView {
    fn from_status(status: ConnectionStatus) -> Self {
        let label = match status.state.as_str() {
            "connected" => "connected",
            "reconnect" => "reconnect",
            "deactivated" => "deactivated",
            _ => "not connected",
        };
        let connected_at = status
            .connected_at
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| display_time(Some(t.timestamp_millis())))
            .unwrap_or_default();
        Self {
            label,
            message: status.last_error.filter(|e| !e.is_empty()),
            mode: match status.mode.as_deref() {
                Some("delegated") => "delegated (an admin consented)".into(),
                Some("application") => {
                    "application (the app registration's own credentials)".into()
                }
                Some(other) => other.into(),
                None => String::new(),
            },
            tenant_id: status.tenant_id.unwrap_or_default(),
            default_domain: status.default_domain.unwrap_or_default(),
            connected_by: status.connected_by.unwrap_or_default(),
            connected_at,
            granted: status
                .granted_permissions
                .map(|g| g.join(" "))
                .unwrap_or_default(),
            missing: status
                .missing_permissions
                .into_iter()
                .map(|m| (m.name, m.needed_for))
                .collect(),
            state: status.state,
        }
    }
}

/// One tenant user in the import list.
struct TenantLine {
    object_id: String,
    upn: String,
    display_name: String,
    enabled: bool,
    imported: bool,
    bound: bool,
    local_username: String,
}

/// One row of the export table.
struct AttributeLine {
    attribute: &'static str,
    graph_property: &'static str,
    label: &'static str,
    always: bool,
    direction: &'static str,
}

/// The import run being watched, with its progress fragment.
struct RunPanel {
    id: String,
    html: String,
}

/// An import run in the "Recent imports" list.
struct RunLine {
    id: String,
    started: String,
    started_by: String,
    state: String,
    imported: i64,
    failed: i64,
    total: i64,
}

#[derive(Template)]
#[template(path = "admin/m365.html")]
struct M365Page {
    chrome: Chrome,
    connection: ConnectionView,
    registration: RegistrationView,
    /// What is missing from the [m365] settings, naming the setting.
    config_problem: Option<String>,
    /// The tenant setting names one tenant, so client-credentials mode can be used.
    app_mode: bool,
    redirect_uri: String,
    deactivate_effect: &'static str,
    counts: SyncCounts,
    tenant_users: Vec<TenantLine>,
    tenant_matching: usize,
    tenant_total: usize,
    tenant_not_imported: usize,
    tenant_error: Option<String>,
    find: String,
    list_limit: usize,
    /// The run being watched.
    run: Option<RunPanel>,
    run_moving: bool,
    recent_runs: Vec<RunLine>,
    attributes: Vec<AttributeLine>,
    /// The tenant's domains and how each signs in (connected only).
    domains: Vec<DomainLine>,
    domains_error: Option<String>,
}

/// One of the tenant's domains on the page.
struct DomainLine {
    name: String,
    /// Offered: federate (managed, verified, not initial) or make managed (federated here).
    can_federate: bool,
    can_unfederate: bool,
    /// managed, federated to idbridge, federated elsewhere (issuer).
    sign_in: String,
    flags: String,
    /// "property: Microsoft has …" for each property that differs from idbridge's settings.
    drift: Vec<String>,
}

/// Progress and results of one import run (the live region's content).
#[derive(Template)]
#[template(path = "admin/m365_import.html")]
struct ImportProgressView {
    id: String,
    state: String,
    started: String,
    started_by: String,
    finished: String,
    total: i64,
    done: i64,
    imported: i64,
    failed: i64,
    message: Option<String>,
    results: Vec<ResultLine>,
}

impl ImportProgressView {
    fn running(&self) -> bool {
        self.state == "running"
    }
}

/// One user's outcome in an import run.
struct ResultLine {
    user: String,
    object_id: String,
    outcome: String,
    message: String,
}

#[derive(Debug, Default, Deserialize)]
struct PageQuery {
    run: Option<String>,
    find: Option<String>,
}

/// What is missing for connecting at all (checked before the admin clicks; the connection
/// service says the same when asked).
pub(crate) fn config_problem(state: &AppState) -> Option<String> {
    state.m365.registration().problem().map(|p| p.to_string())
}

/// One value of the app registration on the page: editable, or where it is set instead.
struct RegistrationValue {
    value: String,
    /// Set in the file or the environment: read-only here.
    set_in: Option<String>,
    /// Who entered it in the console, and when.
    entered: Option<String>,
}

impl RegistrationValue {
    fn new(value: String, source: &ValueSource) -> Self {
        let (set_in, entered) = match source {
            ValueSource::File(place) => (Some(place.clone()), None),
            ValueSource::Console { at_ms, by } => (
                None,
                Some(format!("entered {} by {by}", display_time(Some(*at_ms)))),
            ),
            ValueSource::Default => (None, None),
        };
        Self {
            value,
            set_in,
            entered,
        }
    }
}

/// The app registration section of the page.
struct RegistrationView {
    tenant: RegistrationValue,
    client_id: RegistrationValue,
    /// "client secret", "certificate" or empty.
    credential: RegistrationValue,
    thumbprint: String,
    not_after: String,
    /// Every value comes from the file: nothing to save here.
    all_from_file: bool,
}

impl RegistrationView {
    fn new(reg: &AppRegistration) -> Self {
        let credential = match reg.credential_kind() {
            Some(CredentialKind::Secret) => "client secret",
            Some(CredentialKind::Certificate) => "certificate",
            None => "",
        };
        Self {
            tenant: RegistrationValue::new(reg.tenant.clone(), &reg.tenant_source),
            client_id: RegistrationValue::new(
                reg.client_id.clone().unwrap_or_default(),
                &reg.client_id_source,
            ),
            credential: RegistrationValue::new(credential.into(), &reg.credential_source),
            thumbprint: reg
                .certificate
                .as_ref()
                .map(|c| c.thumbprint.clone())
                .unwrap_or_default(),
            not_after: reg
                .certificate
                .as_ref()
                .map(|c| c.not_after.clone())
                .unwrap_or_default(),
            all_from_file: !reg.tenant_source.editable()
                && !reg.client_id_source.editable()
                && !reg.credential_source.editable(),
        }
    }
}

fn internal(err: impl std::fmt::Display) -> AppError {
    AppError::Internal(err.to_string())
}

async fn run_view(state: &AppState, run: ImportRunRow) -> Result<ImportProgressView, AppError> {
    // Per-user results once the run is over (a running import of thousands would redraw a
    // long table every two seconds for nothing).
    let results = if run.state == "running" {
        Vec::new()
    } else {
        state
            .store
            .import_results(&run.id)
            .await?
            .into_iter()
            .map(|r| ResultLine {
                user: r.user_principal_name.unwrap_or_default(),
                object_id: r.m365_object_id,
                outcome: r.outcome,
                message: r.message.unwrap_or_default(),
            })
            .collect()
    };
    Ok(ImportProgressView {
        started: display_time(Some(run.started_at)),
        finished: display_time(run.finished_at),
        done: run.imported + run.failed,
        id: run.id,
        state: run.state,
        started_by: run.started_by,
        total: run.total,
        imported: run.imported,
        failed: run.failed,
        message: run.message,
        results,
    })
}

async fn build_page(
    state: &AppState,
    chrome: Chrome,
    query: &PageQuery,
) -> Result<M365Page, AppError> {
    let status = state.m365.status().await.map_err(internal)?;
    let connected = status.state == "connected";
    let connection = ConnectionView::from_status(status);
    let counts = state.sync.counts().await.map_err(internal)?;
    let find = query.find.as_deref().unwrap_or("").trim().to_string();

    let mut tenant_users = Vec::new();
    let (mut tenant_total, mut tenant_matching, mut tenant_not_imported) = (0, 0, 0);
    let mut tenant_error = None;
    if connected {
        match state.m365.tenant_users().await {
            Ok(users) => {
                tenant_total = users.len();
                tenant_not_imported = users.iter().filter(|u| !u.imported).count();
                let needle = find.to_lowercase();
                let matching: Vec<_> = users
                    .into_iter()
                    .filter(|u| {
                        needle.is_empty()
                            || [&u.user.user_principal_name, &u.user.display_name]
                                .iter()
                                .any(|v| {
                                    v.as_deref().unwrap_or("").to_lowercase().contains(&needle)
                                })
                    })
                    .collect();
                tenant_matching = matching.len();
                tenant_users = matching
                    .into_iter()
                    .take(TENANT_LIST_LIMIT)
                    .map(|u| TenantLine {
                        upn: u.user.user_principal_name.clone().unwrap_or_default(),
                        display_name: u.user.display_name.clone().unwrap_or_default(),
                        enabled: u.user.account_enabled.unwrap_or(true),
                        object_id: u.user.id,
                        imported: u.imported,
                        bound: u.bound,
                        local_username: u.local_username.unwrap_or_default(),
                    })
                    .collect();
            }
            Err(err) => tenant_error = Some(err.to_string()),
        }
    }
    let (domains, domains_error) = if connected {
        domain_lines(state).await
    } else {
        (Vec::new(), None)
    };

    let mut run = None;
    let mut run_moving = false;
    if let Some(id) = query.run.as_deref().filter(|id| !id.is_empty()) {
        if let Some(row) = state.store.import_run(id).await? {
            let view = run_view(state, row).await?;
            run_moving = view.running();
            let html = view.render().map_err(internal)?;
            run = Some(RunPanel { id: view.id, html });
        }
    }
    let recent_runs = state
        .store
        .recent_import_runs(RECENT_RUNS)
        .await?
        .into_iter()
        .map(|r| RunLine {
            started: display_time(Some(r.started_at)),
            id: r.id,
            started_by: r.started_by,
            state: r.state,
            imported: r.imported,
            failed: r.failed,
            total: r.total,
        })
        .collect();
    let attributes = state
        .sync
        .attribute_table()
        .await
        .map_err(internal)?
        .into_iter()
        .map(|(m, d)| AttributeLine {
            attribute: m.attribute,
            graph_property: m.graph_property,
            label: m.label,
            always: m.always,
            direction: d.as_str(),
        })
        .collect();
    Ok(M365Page {
        chrome,
        connection,
        registration: RegistrationView::new(&state.m365.registration()),
        config_problem: config_problem(state),
        app_mode: state.m365.registration().names_one_tenant(),
        redirect_uri: state.m365.redirect_uri().to_string(),
        deactivate_effect: DEACTIVATE_EFFECT,
        counts,
        tenant_users,
        tenant_matching,
        tenant_total,
        tenant_not_imported,
        tenant_error,
        domains,
        domains_error,
        find,
        list_limit: TENANT_LIST_LIMIT,
        run,
        run_moving,
        recent_runs,
        attributes,
    })
}

async fn page(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
    Notice(notice): Notice,
    Query(query): Query<PageQuery>,
) -> Result<Response, AppError> {
    let chrome = Chrome::new(&admin, "m365").flash(notice);
    let page = build_page(&state, chrome, &query).await?;
    Ok(render(StatusCode::OK, &page))
}

/// The page again with a refusal that says what to do.
async fn refused(
    state: &AppState,
    admin: &AdminPrincipal,
    status: StatusCode,
    message: String,
) -> Result<Response, AppError> {
    let chrome = Chrome::new(admin, "m365").error(Some(message));
    let page = build_page(state, chrome, &PageQuery::default()).await?;
    Ok(render(status, &page))
}

/// Connection errors the admin can act on go back to the page; the rest is internal.
async fn m365_refusal(
    state: &AppState,
    admin: &AdminPrincipal,
    err: M365Error,
) -> Result<Response, AppError> {
    let status = match &err {
        M365Error::Store(_) | M365Error::Secret(_) => return Err(internal(err)),
        M365Error::Unreachable(_) | M365Error::Graph(_) | M365Error::Call { .. } => {
            StatusCode::BAD_GATEWAY
        }
        M365Error::Refused(_) | M365Error::UnknownState => StatusCode::BAD_REQUEST,
        _ => StatusCode::CONFLICT,
    };
    refused(state, admin, status, err.to_string()).await
}

/// Starts consent: the browser goes on to Microsoft's sign-in page (which sends it back to
/// `/m365/callback`).
///
/// Not a 303 to Microsoft: the console's CSP has `form-action 'self'`, and Chromium applies
/// form-action to the redirects after a form POST too, so it would block the redirect. The page
/// answering the POST moves on by itself (meta refresh, a new navigation that form-action does
/// not govern) and carries a link in case it does not.
async fn connect(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
) -> Result<Response, AppError> {
    match state.m365.begin_connect(&admin.actor(), Utc::now()).await {
        Ok(url) => Ok(render(
            StatusCode::OK,
            &ConsentPage {
                chrome: Chrome::new(&admin, "m365"),
                url,
            },
        )),
        Err(err) => m365_refusal(&state, &admin, err).await,
    }
}

/// Connects with the app registration's own credentials (no consent page).
async fn connect_app(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
) -> Result<Response, AppError> {
    match state
        .m365
        .connect_application(&admin.actor(), Utc::now())
        .await
    {
        Ok(status) => Ok(redirect_with_notice(
            "/admin/m365",
            &format!(
                "Connected to tenant {} (default domain {}) with the app registration's own credentials.",
                status.tenant_id.as_deref().unwrap_or("?"),
                status.default_domain.as_deref().unwrap_or("unknown"),
            ),
        )),
        Err(err) => m365_refusal(&state, &admin, err).await,
    }
}

/// Saves the app registration entered on the page: fields left as they are, or set in the
/// file, are not changed; a blank secret keeps the one stored.
async fn save_registration(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
    body: Bytes,
) -> Result<Response, AppError> {
    let form = FormFields::parse(&body);
    let now = state.m365.registration();
    let text = |name: &str| {
        form.one(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let mut change = RegistrationChange::default();
    if now.tenant_source.editable() {
        change.tenant = text("tenant").filter(|t| !t.eq_ignore_ascii_case(&now.tenant));
    }
    if now.client_id_source.editable() {
        change.client_id =
            text("client_id").filter(|id| Some(id.to_ascii_lowercase()) != now.client_id);
    }
    if now.credential_source.editable() {
        change.credential = match form.one("credential").as_deref().unwrap_or("keep") {
            "secret" => match text("client_secret") {
                Some(secret) => Some(CredentialChange::Secret(secret.into())),
                None => {
                    return refused(
                        &state,
                        &admin,
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "Paste the client secret's Value (Certificates & secrets in the app registration), or choose Keep.".into(),
                    )
                    .await
                }
            },
            "generate" => Some(CredentialChange::GenerateCertificate),
            "upload" => Some(CredentialChange::UploadCertificate {
                certificate_pem: form.one("certificate_pem").unwrap_or_default(),
                private_key_pem: form.one("private_key_pem").unwrap_or_default().into(),
            }),
            "remove" => Some(CredentialChange::Remove),
            _ => None,
        };
    }
    let generated = matches!(
        change.credential,
        Some(CredentialChange::GenerateCertificate)
    );
    if change.tenant.is_none() && change.client_id.is_none() && change.credential.is_none() {
        return Ok(redirect_with_notice(
            "/admin/m365#app-registration",
            "Nothing changed in the app registration.",
        ));
    }
    match state
        .m365
        .change_registration(change, &admin.actor(), None, Utc::now())
        .await
    {
        Ok(reg) => {
            let next = if generated {
                " Download the certificate below and upload it to the app registration (Certificates & secrets → Certificates → Upload certificate)."
            } else if reg.problem().is_none() {
                " You can connect now."
            } else {
                ""
            };
            Ok(redirect_with_notice(
                "/admin/m365#app-registration",
                &format!("App registration saved; it is used from now on.{next}"),
            ))
        }
        Err(err @ (RegistrationError::Store(_) | RegistrationError::Secret(_))) => {
            Err(internal(err))
        }
        Err(err) => {
            refused(
                &state,
                &admin,
                StatusCode::UNPROCESSABLE_ENTITY,
                err.to_string(),
            )
            .await
        }
    }
}

/// The certificate credential's public part as a PEM file, to upload to the app registration.
async fn registration_certificate(State(state): State<AppState>) -> Result<Response, AppError> {
    let Some(cert) = state.m365.registration().certificate.clone() else {
        return Err(AppError::NotFound);
    };
    Response::builder()
        .header("content-type", "application/x-pem-file")
        .header(
            "content-disposition",
            "attachment; filename=\"idbridge-app-registration.pem\"",
        )
        .body(axum::body::Body::from(cert.pem))
        .map_err(internal)
}

async fn deactivate(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
) -> Result<Response, AppError> {
    match state.m365.deactivate(&admin.actor(), Utc::now()).await {
        Ok(cleared) => Ok(redirect_with_notice(
            "/admin/m365",
            &format!(
                "Microsoft 365 was deactivated and {cleared} binding(s) were cleared. Users stay active in Microsoft 365 and in idbridge; after reconnecting, bind them again."
            ),
        )),
        Err(err) => m365_refusal(&state, &admin, err).await,
    }
}

/// Starts an import in the background (the selected users, or `all`), then shows its
/// progress.
async fn import(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
    body: Bytes,
) -> Result<Response, AppError> {
    let form = FormFields::parse(&body);
    let selection = if form.one("all").is_some() {
        ImportSelection::All
    } else {
        let users = form.all("user");
        if users.is_empty() {
            return refused(
                &state,
                &admin,
                StatusCode::UNPROCESSABLE_ENTITY,
                "Select the tenant users to import first (or use Import all).".into(),
            )
            .await;
        }
        ImportSelection::Users(users)
    };
    match state
        .m365
        .start_import(&state.directory, &admin.actor(), selection, Utc::now())
        .await
    {
        Ok(run_id) => Ok(redirect_with_notice(
            &format!("/admin/m365?run={run_id}#import-run"),
            "The import has started; its progress is shown below.",
        )),
        Err(err) => m365_refusal(&state, &admin, err).await,
    }
}

/// The progress fragment of one run (polled while it runs).
async fn import_progress(
    State(state): State<AppState>,
    Path(run_id): Path<String>,
) -> Result<Response, AppError> {
    let run = state
        .store
        .import_run(&run_id)
        .await?
        .ok_or(AppError::NotFound)?;
    Ok(render(StatusCode::OK, &run_view(&state, run).await?))
}

/// Changes export directions: the whole table (`dir.<attribute>` fields), or one
/// `attribute` + `direction`. Only rows whose direction changes are written (and recorded).
async fn set_attributes(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
    body: Bytes,
) -> Result<Response, AppError> {
    let form = FormFields::parse(&body);
    let mut wanted: Vec<(String, String)> = form
        .pairs()
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("dir.")
                .map(|a| (a.to_string(), v.trim().to_string()))
        })
        .collect();
    if let (Some(a), Some(d)) = (form.one("attribute"), form.one("direction")) {
        wanted.push((a, d));
    }
    // Everything is checked before anything is written: a bad row changes nothing.
    let mut checked = Vec::new();
    for (attribute, direction) in &wanted {
        let parsed = match attributes::optional_mapping(attribute) {
            None => {
                let names: Vec<&str> = attributes::MAPPINGS
                    .iter()
                    .filter(|m| !m.always)
                    .map(|m| m.attribute)
                    .collect();
                Err(SyncError::UnknownAttribute(
                    attribute.clone(),
                    names.join(", "),
                ))
            }
            Some(mapping) => Direction::parse(direction)
                .map(|to| (mapping.attribute, to))
                .ok_or_else(|| SyncError::UnknownDirection(direction.clone())),
        };
        match parsed {
            Ok(row) => checked.push(row),
            Err(err) => {
                return refused(
                    &state,
                    &admin,
                    StatusCode::UNPROCESSABLE_ENTITY,
                    err.to_string(),
                )
                .await
            }
        }
    }
    let current: HashMap<&str, Direction> = state
        .sync
        .attribute_table()
        .await
        .map_err(internal)?
        .into_iter()
        .map(|(m, d)| (m.attribute, d))
        .collect();
    let mut changed = Vec::new();
    let mut exported = false;
    for (attribute, to) in checked {
        if current.get(attribute) == Some(&to) {
            continue;
        }
        let from = match state
            .sync
            .set_direction(&admin.actor(), attribute, to.as_str(), Utc::now())
            .await
        {
            Ok(from) => from,
            Err(SyncError::Store(e)) => return Err(e.into()),
            Err(err) => {
                return refused(
                    &state,
                    &admin,
                    StatusCode::UNPROCESSABLE_ENTITY,
                    err.to_string(),
                )
                .await
            }
        };
        exported |= to == Direction::Export;
        changed.push(format!("{attribute}: {} → {}", from.as_str(), to.as_str()));
    }
    let notice = if changed.is_empty() {
        "Nothing changed in the export table.".to_string()
    } else {
        let mut text = format!("Export table changed: {}.", changed.join("; "));
        if exported {
            text.push_str(
                " Exported attributes are being written to Microsoft 365 for every bound user now.",
            );
        }
        text
    };
    Ok(redirect_with_notice("/admin/m365#attributes", &notice))
}

/// The tenant's domains for the page, or Graph's error.
async fn domain_lines(state: &AppState) -> (Vec<DomainLine>, Option<String>) {
    use crate::m365::federation::DomainSignIn;
    let statuses = state
        .m365
        .domain_statuses(|d| state.idp.federation_settings(&state.config, d))
        .await;
    match statuses {
        Ok(all) => (
            all.into_iter()
                .map(|d| {
                    let flags = d.flags();
                    DomainLine {
                        can_federate: d.sign_in == DomainSignIn::Managed
                            && d.is_verified
                            && !d.is_initial,
                        can_unfederate: d.sign_in == DomainSignIn::Idbridge,
                        sign_in: match d.sign_in {
                            DomainSignIn::Managed => "managed (Microsoft 365 passwords)".into(),
                            DomainSignIn::Idbridge => "federated to idbridge".into(),
                            DomainSignIn::OtherProvider => format!(
                                "federated elsewhere ({})",
                                d.issuer_uri.as_deref().unwrap_or("unknown issuer")
                            ),
                        },
                        flags: flags.join(", "),
                        drift: d
                            .drift
                            .iter()
                            .map(|x| {
                                format!(
                                    "{}: Microsoft 365 has {}",
                                    x.property,
                                    x.microsoft.as_deref().unwrap_or("nothing")
                                )
                            })
                            .collect(),
                        name: d.domain,
                    }
                })
                .collect(),
            None,
        ),
        Err(err) => (Vec::new(), Some(err.to_string())),
    }
}

/// The confirmation page of a domain's federation change: who it affects, what is sent.
#[derive(Template)]
#[template(path = "admin/m365_federate.html")]
struct FederatePage {
    chrome: Chrome,
    domain: String,
    /// Federating (else making managed).
    federate: bool,
    is_default: bool,
    bound: Vec<String>,
    not_bound: Vec<String>,
    graph_body: String,
    powershell: String,
}

/// Federates a domain: without `confirmed=yes`, the preview to confirm; then the change, or
/// the refusal with its reason on the Microsoft 365 page.
async fn federate(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
    body: Bytes,
) -> Result<Response, AppError> {
    change_federation(&state, &admin, &FormFields::parse(&body), true).await
}

/// Makes a domain federated to idbridge managed again, after the same preview.
async fn unfederate(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
    body: Bytes,
) -> Result<Response, AppError> {
    change_federation(&state, &admin, &FormFields::parse(&body), false).await
}

async fn change_federation(
    state: &AppState,
    admin: &AdminPrincipal,
    form: &FormFields,
    federate: bool,
) -> Result<Response, AppError> {
    use crate::m365::federation::FederationError;
    let Some(domain) = form.one("domain").filter(|d| !d.trim().is_empty()) else {
        return refused(
            state,
            admin,
            StatusCode::UNPROCESSABLE_ENTITY,
            "Choose the domain first.".into(),
        )
        .await;
    };
    let yes = |name: &str| form.one(name).as_deref() == Some("yes");
    let settings = state
        .idp
        .new_federation_settings(&state.config, domain.trim());
    let now = Utc::now();
    let outcome = if !yes("confirmed") {
        // The preview: nothing changes.
        match state.m365.federation_preview(&domain).await {
            Ok(preview) => {
                let page = FederatePage {
                    chrome: Chrome::new(admin, "m365"),
                    graph_body: serde_json::to_string_pretty(&settings.body()).unwrap_or_default(),
                    powershell: settings.powershell(&preview.domain),
                    domain: preview.domain,
                    federate,
                    is_default: preview.is_default,
                    bound: preview.bound,
                    not_bound: preview.not_bound,
                };
                return Ok(render(StatusCode::OK, &page));
            }
            Err(e) => Err(e),
        }
    } else if federate {
        state
            .m365
            .federate_domain(
                &admin.actor(),
                &domain,
                &settings,
                yes("confirm_default"),
                yes("confirm_unbound"),
                now,
            )
            .await
            .map(|p| {
                format!(
                    "{} is federated to idbridge: its {} bound user(s) sign in here. Microsoft may take a few minutes (at most 2 hours) to switch.",
                    p.domain,
                    p.bound.len()
                )
            })
    } else {
        state
            .m365
            .unfederate_domain(&admin.actor(), &domain, true, now)
            .await
            .map(|p| {
                format!(
                    "{} is managed again: Microsoft 365 checks its users' passwords. Microsoft may take up to 2 hours to switch.",
                    p.domain
                )
            })
    };
    match outcome {
        Ok(notice) => {
            // This node uses the domain's issuer at once (the others within seconds).
            state.reload_signing().await.map_err(internal)?;
            Ok(redirect_with_notice("/admin/m365#domains", &notice))
        }
        Err(err) => {
            let status = match &err {
                FederationError::Store(_) => return Err(internal(err)),
                FederationError::M365(M365Error::Store(_) | M365Error::Secret(_)) => {
                    return Err(internal(err))
                }
                FederationError::UnknownDomain(_) => StatusCode::NOT_FOUND,
                FederationError::NeedsConfirmation { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                FederationError::M365(_) => StatusCode::BAD_GATEWAY,
                _ => StatusCode::CONFLICT,
            };
            refused(state, admin, status, format!("Nothing changed: {err}")).await
        }
    }
}
