//! `/api/v1/m365`: the connection, the tenant's users, imports and the attribute export table.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{ApiJson, ApiQuery, OptionalJson};
use super::schema::{int_param, rfc3339_millis, ErrorResponse};
use crate::m365::federation::{DomainStatus, FederationPreview, FederationSettings};
use crate::m365::sync::{AttributeMapping, Direction, MAPPINGS};
use crate::m365::{ConnectionStatus, ImportSelection, TenantUser};
use crate::server::AppState;
use crate::store::{ImportResultRow, ImportRunRow};
use crate::web::{AdminPrincipal, ApiError};

/// The Microsoft 365 routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(integration))
        .routes(routes!(connection, connect, deactivate))
        .routes(routes!(tenant_users))
        .routes(routes!(list_imports, start_import))
        .routes(routes!(import_run))
        .routes(routes!(attributes))
        .routes(routes!(set_attribute))
        .routes(routes!(domains))
        .routes(routes!(federation_preview, federate, unfederate))
}

/// idbridge's settings for federating a domain now (its own issuer and sign-in URL).
fn new_federation_settings(state: &AppState, domain: &str) -> FederationSettings {
    state.idp.new_federation_settings(&state.config, domain)
}

/// The tenant's domains: how each signs in, and for those federated to idbridge what
/// Microsoft holds that differs from idbridge's settings (`drift`).
#[utoipa::path(
    get,
    path = "/api/v1/m365/domains",
    tag = "m365",
    responses(
        (status = 200, description = "The domains", body = [DomainStatus]),
        (status = 409, description = "Not connected (`m365_not_connected`)", body = ErrorResponse),
        (status = 502, description = "Graph refused or could not be reached (`m365_unavailable`); a 403 names the permission", body = ErrorResponse),
    )
)]
async fn domains(State(state): State<AppState>) -> Result<Json<Vec<DomainStatus>>, ApiError> {
    let statuses = state
        .m365
        .domain_statuses(|d| state.idp.federation_settings(&state.config, d))
        .await?;
    Ok(Json(statuses))
}

/// What federating a domain would do: who signs in through idbridge, who could not, what
/// would be sent to Graph, and the PowerShell equivalent.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FederationPlan {
    pub preview: FederationPreview,
    /// The `internalDomainFederation` idbridge sends.
    #[schema(value_type = Object)]
    pub graph_body: serde_json::Value,
    pub powershell: String,
}

/// The preview of federating (or unfederating) a domain; changes nothing.
#[utoipa::path(
    get,
    path = "/api/v1/m365/domains/{domain}/federation",
    tag = "m365",
    params(("domain" = String, Path, description = "The domain, e.g. contoso.com")),
    responses(
        (status = 200, description = "The preview", body = FederationPlan),
        (status = 404, description = "The tenant has no such domain", body = ErrorResponse),
        (status = 502, description = "Graph refused or could not be reached", body = ErrorResponse),
    )
)]
async fn federation_preview(
    State(state): State<AppState>,
    Path(domain): Path<String>,
) -> Result<Json<FederationPlan>, ApiError> {
    let preview = state.m365.federation_preview(&domain).await?;
    let settings = new_federation_settings(&state, &preview.domain);
    Ok(Json(FederationPlan {
        graph_body: settings.body(),
        powershell: settings.powershell(&preview.domain),
        preview,
    }))
}

/// Confirmations of a federation.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FederateRequest {
    /// Federate although users of the domain are not bound (they could no longer sign in).
    #[serde(default)]
    pub confirm_users_not_bound: bool,
    /// Needed for the tenant's default domain.
    #[serde(default)]
    pub confirm_default: bool,
}

/// Federates a domain to idbridge through Graph.
#[utoipa::path(
    put,
    path = "/api/v1/m365/domains/{domain}/federation",
    tag = "m365",
    params(("domain" = String, Path, description = "The domain, e.g. contoso.com")),
    request_body(content = Option<FederateRequest>, description = "Confirmations; none needed for a verified, non-default domain whose users are all bound"),
    responses(
        (status = 200, description = "Federated: who signs in through idbridge now", body = FederationPreview),
        (status = 404, description = "The tenant has no such domain", body = ErrorResponse),
        (status = 409, description = "Unverified, the initial domain, or already federated (`field`: `domain`)", body = ErrorResponse),
        (status = 422, description = "A confirmation is needed (`field`: `confirmUsersNotBound` or `confirmDefault`); the message says why", body = ErrorResponse),
        (status = 502, description = "Graph refused (a 403 names the permission) or could not be reached; nothing changed", body = ErrorResponse),
    )
)]
async fn federate(
    State(state): State<AppState>,
    Extension(caller): Extension<AdminPrincipal>,
    Path(domain): Path<String>,
    OptionalJson(body): OptionalJson<FederateRequest>,
) -> Result<Json<FederationPreview>, ApiError> {
    let settings = new_federation_settings(&state, domain.trim());
    let preview = state
        .m365
        .federate_domain(
            &caller.actor(),
            &domain,
            &settings,
            body.confirm_default,
            body.confirm_users_not_bound,
            Utc::now(),
        )
        .await?;
    // This node uses the domain's issuer at once (the others within seconds).
    state.reload_signing().await?;
    Ok(Json(preview))
}

/// Makes a domain federated to idbridge managed again (Microsoft 365 checks passwords).
#[utoipa::path(
    delete,
    path = "/api/v1/m365/domains/{domain}/federation",
    tag = "m365",
    params(("domain" = String, Path, description = "The domain"), ConfirmParams),
    responses(
        (status = 200, description = "Managed again: whose sign-in moved to Microsoft 365", body = FederationPreview),
        (status = 404, description = "The tenant has no such domain", body = ErrorResponse),
        (status = 409, description = "Not federated (`field`: `domain`)", body = ErrorResponse),
        (status = 422, description = "`confirm=true` is needed; the message says what would happen", body = ErrorResponse),
        (status = 502, description = "Graph refused or could not be reached; nothing changed", body = ErrorResponse),
    )
)]
async fn unfederate(
    State(state): State<AppState>,
    Extension(caller): Extension<AdminPrincipal>,
    Path(domain): Path<String>,
    ApiQuery(params): ApiQuery<ConfirmParams>,
) -> Result<Json<FederationPreview>, ApiError> {
    let confirmed = params.confirmed(false)?;
    let preview = state
        .m365
        .unfederate_domain(&caller.actor(), &domain, confirmed, Utc::now())
        .await?;
    // This node uses the domain's issuer at once (the others within seconds).
    state.reload_signing().await?;
    Ok(Json(preview))
}

/// The connection to the Microsoft 365 tenant.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Connection {
    /// `not_connected`, `connected`, `reconnect` (the token was refused: connect again) or
    /// `deactivated`.
    #[schema(value_type = ConnectionState)]
    pub state: String,
    /// `delegated` or `application`.
    pub mode: Option<String>,
    pub tenant_id: Option<String>,
    pub default_domain: Option<String>,
    /// RFC 3339.
    pub connected_at: Option<String>,
    pub connected_by: Option<String>,
    /// Microsoft's message when the connection needs an admin.
    pub last_error: Option<String>,
    /// The Microsoft Graph permissions the connection's token grants (its `roles` or `scp`);
    /// absent when the token could not be read.
    pub granted_permissions: Option<Vec<String>>,
    /// Permissions idbridge uses that the token lacks, each with what stops working.
    pub missing_permissions: Vec<MissingPermissionItem>,
}

/// A Graph permission idbridge uses that the connection lacks.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MissingPermissionItem {
    /// The permission to grant, e.g. `User.RevokeSessions.All`.
    pub name: String,
    /// What does not work without it.
    pub needed_for: String,
}

/// Connection states.
#[allow(dead_code)] // Only names the values in the OpenAPI document.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionState {
    NotConnected,
    Connected,
    Reconnect,
    Deactivated,
}

impl From<ConnectionStatus> for Connection {
    fn from(s: ConnectionStatus) -> Self {
        Self {
            state: s.state,
            mode: s.mode,
            tenant_id: s.tenant_id,
            default_domain: s.default_domain,
            connected_at: s.connected_at,
            connected_by: s.connected_by,
            last_error: s.last_error,
            granted_permissions: s.granted_permissions,
            missing_permissions: s
                .missing_permissions
                .into_iter()
                .map(|m| MissingPermissionItem {
                    name: m.name,
                    needed_for: m.needed_for,
                })
                .collect(),
        }
    }
}

/// The connection state, tenant, default domain, and the Graph permissions granted and missing.
#[utoipa::path(
    get,
    path = "/api/v1/m365/connection",
    tag = "m365",
    responses((status = 200, description = "The connection", body = Connection))
)]
async fn connection(State(state): State<AppState>) -> Result<Json<Connection>, ApiError> {
    Ok(Json(state.m365.status().await?.into()))
}

/// The Microsoft 365 integration at a glance: the same as `/api/v1/m365/connection`.
#[utoipa::path(
    get,
    path = "/api/v1/m365",
    tag = "m365",
    responses((status = 200, description = "The connection", body = Connection))
)]
async fn integration(State(state): State<AppState>) -> Result<Json<Connection>, ApiError> {
    Ok(Json(state.m365.status().await?.into()))
}

/// How to connect.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectRequest {
    /// `delegated`: an admin consents in a browser (open `consentUrl`); `application`: the app
    /// registration's own credentials (application permissions, granted beforehand).
    #[schema(value_type = ConnectMode)]
    pub mode: String,
}

/// Connection modes.
#[allow(dead_code)] // Only names the values in the OpenAPI document.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConnectMode {
    Delegated,
    Application,
}

/// The answer to a connection request.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectResult {
    /// Delegated mode: the Microsoft sign-in page for an admin to open and consent on (valid
    /// for 10 minutes); Microsoft then returns to `/m365/callback` and the connection is made.
    /// Null in application mode.
    pub consent_url: Option<String>,
    /// The connection now (application mode: connected).
    pub connection: Connection,
}

/// Connects (or reconnects) the tenant.
#[utoipa::path(
    post,
    path = "/api/v1/m365/connection",
    tag = "m365",
    request_body = ConnectRequest,
    responses(
        (status = 200, description = "Delegated: the consent URL to open; application: connected", body = ConnectResult),
        (status = 400, description = "The body is not JSON, or Microsoft refused the connection", body = ErrorResponse),
        (status = 409, description = "Microsoft 365 is not configured (`m365_not_connected`)", body = ErrorResponse),
        (status = 422, description = "`mode` is missing or unknown", body = ErrorResponse),
        (status = 502, description = "The Microsoft identity platform could not be reached (`m365_unavailable`)", body = ErrorResponse),
    )
)]
async fn connect(
    State(state): State<AppState>,
    Extension(caller): Extension<AdminPrincipal>,
    ApiJson(body): ApiJson<ConnectRequest>,
) -> Result<Json<ConnectResult>, ApiError> {
    let actor = caller.actor();
    let consent_url = match body.mode.trim().to_ascii_lowercase().as_str() {
        "delegated" => Some(state.m365.begin_connect(&actor, Utc::now()).await?),
        "application" => {
            state.m365.connect_application(&actor, Utc::now()).await?;
            None
        }
        other => {
            return Err(ApiError::validation(
                "mode",
                format!("mode must be delegated or application (got {other:?})"),
            ))
        }
    };
    Ok(Json(ConnectResult {
        consent_url,
        connection: state.m365.status().await?.into(),
    }))
}

/// The confirmation deactivating needs, as a query parameter.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ConfirmParams {
    /// `true` to confirm (or send `{"confirm": true}` as the body).
    #[param(value_type = Option<bool>)]
    confirm: Option<String>,
}

impl ConfirmParams {
    /// The `confirm` query parameter, else `otherwise` (the body's, or no confirmation).
    pub(super) fn confirmed(&self, otherwise: bool) -> Result<bool, ApiError> {
        match self.confirm.as_deref() {
            None => Ok(otherwise),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
            Some(v) => Err(ApiError::validation(
                "confirm",
                format!("confirm must be true or false (got {v:?})"),
            )),
        }
    }
}

/// The confirmation deactivating needs, as a body.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfirmBody {
    /// `true` to confirm.
    #[serde(default)]
    pub confirm: bool,
}

/// What deactivating did.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Deactivated {
    /// Bindings cleared (users must be bound again after reconnecting).
    pub bindings_cleared: u64,
    pub connection: Connection,
}

/// Deactivates the connection. Users stay active in Microsoft 365 and in idbridge; the tokens
/// are dropped and every binding is cleared, so users must be bound again after reconnecting.
/// Needs `confirm=true`.
#[utoipa::path(
    delete,
    path = "/api/v1/m365/connection",
    tag = "m365",
    params(ConfirmParams),
    request_body(content = Option<ConfirmBody>, description = "Optional: the confirmation as a body instead of the query"),
    responses(
        (status = 200, description = "Deactivated", body = Deactivated),
        (status = 400, description = "The body is not JSON", body = ErrorResponse),
        (status = 409, description = "Not connected (`m365_not_connected`)", body = ErrorResponse),
        (status = 422, description = "Not confirmed (`field`: `confirm`); the message says what would happen", body = ErrorResponse),
    )
)]
async fn deactivate(
    State(state): State<AppState>,
    Extension(caller): Extension<AdminPrincipal>,
    ApiQuery(params): ApiQuery<ConfirmParams>,
    OptionalJson(body): OptionalJson<ConfirmBody>,
) -> Result<Json<Deactivated>, ApiError> {
    let confirmed = params.confirmed(body.confirm)?;
    if !confirmed {
        let bound = state.store.bound_user_ids().await?.len();
        return Err(ApiError::validation(
            "confirm",
            format!(
                "confirm=true is required: deactivating drops the Microsoft 365 tokens and clears \
                 every user's binding ({bound} now). Users stay active in Microsoft 365 and in \
                 idbridge; after reconnecting, every user must be bound again."
            ),
        ));
    }
    let cleared = state.m365.deactivate(&caller.actor(), Utc::now()).await?;
    Ok(Json(Deactivated {
        bindings_cleared: cleared,
        connection: state.m365.status().await?.into(),
    }))
}

/// A user of the tenant, marked with what idbridge knows of it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantUserItem {
    /// The Microsoft 365 object ID.
    pub id: String,
    pub user_principal_name: Option<String>,
    pub display_name: Option<String>,
    pub given_name: Option<String>,
    pub surname: Option<String>,
    pub mail: Option<String>,
    pub account_enabled: Option<bool>,
    pub on_premises_immutable_id: Option<String>,
    pub job_title: Option<String>,
    pub department: Option<String>,
    /// The idbridge username, if imported (or matched) before.
    pub local_username: Option<String>,
    pub imported: bool,
    pub bound: bool,
}

impl From<TenantUser> for TenantUserItem {
    fn from(t: TenantUser) -> Self {
        Self {
            id: t.user.id,
            user_principal_name: t.user.user_principal_name,
            display_name: t.user.display_name,
            given_name: t.user.given_name,
            surname: t.user.surname,
            mail: t.user.mail,
            account_enabled: t.user.account_enabled,
            on_premises_immutable_id: t.user.on_premises_immutable_id,
            job_title: t.user.job_title,
            department: t.user.department,
            local_username: t.local_username,
            imported: t.imported,
            bound: t.bound,
        }
    }
}

/// The tenant's users, marked imported / bound.
#[utoipa::path(
    get,
    path = "/api/v1/m365/users",
    tag = "m365",
    responses(
        (status = 200, description = "Every tenant user", body = Vec<TenantUserItem>),
        (status = 409, description = "Not connected (`m365_not_connected`)", body = ErrorResponse),
        (status = 502, description = "Microsoft Graph could not be reached or failed (`m365_unavailable`)", body = ErrorResponse),
    )
)]
async fn tenant_users(
    State(state): State<AppState>,
) -> Result<Json<Vec<TenantUserItem>>, ApiError> {
    let users = state.m365.tenant_users().await?;
    Ok(Json(users.into_iter().map(Into::into).collect()))
}

/// Which tenant users to import: `users`, or `all`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    /// userPrincipalNames or object IDs.
    #[serde(default)]
    pub users: Vec<String>,
    /// Every tenant user not imported yet (instead of `users`).
    #[serde(default)]
    pub all: bool,
}

/// An import run: its progress while `running`, then its outcome per user.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImportRun {
    /// The run id.
    pub id: String,
    /// `running`, `finished` or `failed` (then `message` says why).
    #[schema(value_type = ImportState)]
    pub state: String,
    pub started_by: String,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339.
    pub finished_at: Option<String>,
    /// Users to import (known once the tenant is listed).
    pub total: i64,
    pub imported: i64,
    pub failed: i64,
    pub message: Option<String>,
    /// One result per user done so far.
    pub results: Vec<ImportResult>,
}

/// Import run states.
#[allow(dead_code)] // Only names the values in the OpenAPI document.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ImportState {
    Running,
    Finished,
    Failed,
}

/// One tenant user's outcome.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImportResult {
    pub m365_object_id: String,
    pub user_principal_name: Option<String>,
    /// `imported` or `failed`.
    pub outcome: String,
    /// What happened (`imported as alice`, or why it failed).
    pub message: Option<String>,
    /// The new idbridge user's id.
    pub user_id: Option<String>,
    /// RFC 3339.
    pub at: String,
}

impl ImportRun {
    fn new(run: ImportRunRow, results: Vec<ImportResultRow>) -> Self {
        Self {
            id: run.id,
            state: run.state,
            started_by: run.started_by,
            started_at: rfc3339_millis(run.started_at),
            finished_at: run.finished_at.map(rfc3339_millis),
            total: run.total,
            imported: run.imported,
            failed: run.failed,
            message: run.message,
            results: results
                .into_iter()
                .map(|r| ImportResult {
                    m365_object_id: r.m365_object_id,
                    user_principal_name: r.user_principal_name,
                    outcome: r.outcome,
                    message: r.message,
                    user_id: r.user_id,
                    at: rfc3339_millis(r.at),
                })
                .collect(),
        }
    }
}

/// Query of the import run list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ImportListParams {
    /// Runs to list, 1 to 100 (default 20).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    limit: Option<String>,
}

/// The newest import runs, newest first (without their per-user results).
#[utoipa::path(
    get,
    path = "/api/v1/m365/imports",
    tag = "m365",
    params(ImportListParams),
    responses(
        (status = 200, description = "Import runs", body = Vec<ImportRun>),
        (status = 422, description = "A bad parameter", body = ErrorResponse),
    )
)]
async fn list_imports(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<ImportListParams>,
) -> Result<Json<Vec<ImportRun>>, ApiError> {
    let limit = int_param("limit", params.limit.as_deref(), 20, 1, 100)?;
    let runs = state.store.recent_import_runs(limit).await?;
    Ok(Json(
        runs.into_iter()
            .map(|r| ImportRun::new(r, Vec::new()))
            .collect(),
    ))
}

/// Starts importing tenant users in the background (first name, last name, username from the
/// UPN, company email = UPN). Users imported before are never imported twice; a user whose
/// email already exists fails with that reason while the others import. Follow the run at
/// `GET /api/v1/m365/imports/{id}` (also in the `Location` header).
#[utoipa::path(
    post,
    path = "/api/v1/m365/imports",
    tag = "m365",
    request_body = ImportRequest,
    responses(
        (status = 202, description = "Started; `id` is the run id", body = ImportRun,
            headers(("Location" = String, description = "The run's URL"))),
        (status = 400, description = "The body is not JSON", body = ErrorResponse),
        (status = 409, description = "Not connected (`m365_not_connected`)", body = ErrorResponse),
        (status = 422, description = "Neither `users` nor `all`, or both", body = ErrorResponse),
    )
)]
async fn start_import(
    State(state): State<AppState>,
    Extension(caller): Extension<AdminPrincipal>,
    ApiJson(body): ApiJson<ImportRequest>,
) -> Result<Response, ApiError> {
    let selection =
        match (body.all, body.users.is_empty()) {
            (true, true) => ImportSelection::All,
            (false, false) => ImportSelection::Users(body.users),
            (true, false) => {
                return Err(ApiError::validation(
                    "all",
                    "send either users or all, not both",
                ))
            }
            (false, true) => return Err(ApiError::validation(
                "users",
                "name at least one user (userPrincipalName or object ID), or send {\"all\": true}",
            )),
        };
    let run_id = state
        .m365
        .start_import(&state.directory, &caller.actor(), selection, Utc::now())
        .await?;
    let run = load_run(&state, &run_id).await?;
    let location = format!("/api/v1/m365/imports/{run_id}");
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(run),
    )
        .into_response())
}

async fn load_run(state: &AppState, id: &str) -> Result<ImportRun, ApiError> {
    let run = state
        .store
        .import_run(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no import run {id:?}")))?;
    let results = state.store.import_results(id).await?;
    Ok(ImportRun::new(run, results))
}

/// An import run: progress, then a result per user.
#[utoipa::path(
    get,
    path = "/api/v1/m365/imports/{id}",
    tag = "m365",
    params(("id" = String, Path, description = "The run id")),
    responses(
        (status = 200, description = "The run", body = ImportRun),
        (status = 404, description = "No such run", body = ErrorResponse),
    )
)]
async fn import_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ImportRun>, ApiError> {
    load_run(&state, &id).await.map(Json)
}

/// One row of the attribute export table.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttributeRow {
    /// The idbridge attribute.
    pub attribute: String,
    /// The Microsoft Graph property.
    pub m365_attribute: String,
    pub label: String,
    /// Always exported; its direction cannot be changed.
    pub always: bool,
    #[schema(value_type = DirectionName)]
    pub direction: &'static str,
}

/// Which way an attribute flows.
#[allow(dead_code)] // Only names the values in the OpenAPI document.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DirectionName {
    /// idbridge's value overwrites Microsoft 365's (at once for every bound user).
    Export,
    /// Microsoft 365's value is taken into idbridge (delta query).
    Import,
    /// Neither.
    Exclude,
}

fn row(mapping: &AttributeMapping, direction: Direction) -> AttributeRow {
    AttributeRow {
        attribute: mapping.attribute.to_string(),
        m365_attribute: mapping.graph_property.to_string(),
        label: mapping.label.to_string(),
        always: mapping.always,
        direction: direction.as_str(),
    }
}

/// The attribute export table: five always-exported rows, then the optional ones with their
/// direction.
#[utoipa::path(
    get,
    path = "/api/v1/m365/attributes",
    tag = "m365",
    responses((status = 200, description = "The export table", body = Vec<AttributeRow>))
)]
async fn attributes(State(state): State<AppState>) -> Result<Json<Vec<AttributeRow>>, ApiError> {
    let table = state.sync.attribute_table().await?;
    Ok(Json(table.iter().map(|(m, d)| row(m, *d)).collect()))
}

/// The new direction of an optional attribute.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DirectionChange {
    #[schema(value_type = DirectionName)]
    pub direction: String,
}

/// A changed row of the export table.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttributeChange {
    #[serde(flatten)]
    pub row: AttributeRow,
    /// The direction before.
    #[schema(value_type = DirectionName)]
    pub previous: &'static str,
}

/// Changes an optional attribute's direction. **Export overwrites Microsoft 365's value at once
/// for every bound user** (Microsoft 365's data in that field is lost); Import takes Microsoft
/// 365's values into idbridge. Records `integrationattribute_include` or
/// `integrationattribute_exclude`.
#[utoipa::path(
    put,
    path = "/api/v1/m365/attributes/{attribute}",
    tag = "m365",
    params(("attribute" = String, Path, description = "The idbridge attribute (e.g. `department`) or its Graph property")),
    request_body = DirectionChange,
    responses(
        (status = 200, description = "The row with its new direction", body = AttributeChange),
        (status = 400, description = "The body is not JSON", body = ErrorResponse),
        (status = 404, description = "No such attribute in the export table", body = ErrorResponse),
        (status = 422, description = "A bad direction (`field`: `direction`), or an always-exported attribute (`field`: `attribute`)", body = ErrorResponse),
    )
)]
async fn set_attribute(
    State(state): State<AppState>,
    Extension(caller): Extension<AdminPrincipal>,
    Path(attribute): Path<String>,
    ApiJson(body): ApiJson<DirectionChange>,
) -> Result<Json<AttributeChange>, ApiError> {
    let name = attribute.trim();
    let name = crate::attributes::Attribute::parse(name).map_or(name, |a| a.name());
    let mapping = MAPPINGS
        .iter()
        .find(|m| {
            m.attribute.eq_ignore_ascii_case(name) || m.graph_property.eq_ignore_ascii_case(name)
        })
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "{attribute:?} is not in the export table; GET /api/v1/m365/attributes lists it"
            ))
        })?;
    if mapping.always {
        return Err(ApiError::validation(
            "attribute",
            format!(
                "{} is always exported to Microsoft 365; its direction cannot be changed",
                mapping.attribute
            ),
        ));
    }
    let to = Direction::parse(&body.direction).ok_or_else(|| {
        ApiError::validation(
            "direction",
            format!(
                "direction must be export, import or exclude (got {:?})",
                body.direction
            ),
        )
    })?;
    let previous = state
        .sync
        .set_direction(&caller.actor(), mapping.attribute, to.as_str(), Utc::now())
        .await?;
    Ok(Json(AttributeChange {
        row: row(mapping, to),
        previous: previous.as_str(),
    }))
}
