//! `/api/v1/bindings` and `/api/v1/sync`: binding users to Microsoft 365 and what is waiting
//! for, or failed to reach, it.

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{ApiJson, ApiQuery, OptionalJson};
use super::schema::{int_param, ErrorResponse};
use super::users::FailedSyncJob;
use crate::binding::BindingState;
use crate::directory::millis_to_rfc3339;
use crate::m365::sync::BindReport;
use crate::server::AppState;
use crate::store::{BindingListQuery, BindingListRow};
use crate::web::{AdminPrincipal, ApiError};

/// The binding routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_bindings, bind))
        .routes(routes!(unbind))
        .routes(routes!(retry))
        .routes(routes!(sync_status))
}

/// Query of the binding list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct BindingListParams {
    /// `bound`, `pending`, `failed` (a failed bind or a failed change) or `unbound`; all when
    /// left out.
    #[param(value_type = Option<BindingState>)]
    state: Option<String>,
    /// Part of the username, email or name (case-insensitive).
    search: Option<String>,
    /// Rows per page, 1 to 1000 (default 100).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// Rows to skip (default 0).
    #[param(value_type = Option<i64>, minimum = 0)]
    offset: Option<String>,
}

/// One user of the binding list.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BindingItem {
    pub user_id: String,
    pub username: String,
    pub email: String,
    pub firstname: String,
    pub lastname: String,
    /// `active` or `suspended`.
    pub user_state: String,
    /// `bound`, `pending`, `failed` or `unbound`.
    pub state: BindingState,
    pub immutable_id: Option<String>,
    pub m365_object_id: Option<String>,
    /// RFC 3339.
    pub last_sync_at: Option<String>,
    /// Graph's message for the last failure.
    pub last_error: Option<String>,
    pub queued_jobs: i64,
    pub failed_jobs: i64,
}

impl From<BindingListRow> for BindingItem {
    fn from(r: BindingListRow) -> Self {
        Self {
            user_id: r.user_id,
            username: r.username,
            email: r.email,
            firstname: r.firstname,
            lastname: r.lastname,
            user_state: r.user_state,
            state: r.binding_state,
            immutable_id: r.immutable_id,
            m365_object_id: r.m365_object_id,
            last_sync_at: r.last_sync_at.map(millis_to_rfc3339),
            last_error: r.last_error,
            queued_jobs: r.queued_jobs,
            failed_jobs: r.failed_jobs,
        }
    }
}

/// A page of the binding list.
#[derive(Debug, Serialize, ToSchema)]
pub struct BindingPage {
    pub items: Vec<BindingItem>,
    /// Users matching the filter, on all pages.
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
}

/// Every user with its Microsoft 365 binding state, ordered by username.
#[utoipa::path(
    get,
    path = "/api/v1/bindings",
    tag = "bindings",
    params(BindingListParams),
    responses(
        (status = 200, description = "A page of the binding list", body = BindingPage),
        (status = 422, description = "A bad parameter (`field` names it)", body = ErrorResponse),
    )
)]
async fn list_bindings(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<BindingListParams>,
) -> Result<Json<BindingPage>, ApiError> {
    if let Some(s) = params.state.as_deref() {
        if BindingState::parse(s).is_none() {
            let names: Vec<&str> = BindingState::ALL.iter().map(|b| b.as_str()).collect();
            return Err(ApiError::validation(
                "state",
                format!("state must be one of {} (got {s:?})", names.join(", ")),
            ));
        }
    }
    let query = BindingListQuery {
        state: params.state,
        search: params.search,
        limit: int_param("limit", params.limit.as_deref(), 100, 1, 1000)?,
        offset: int_param("offset", params.offset.as_deref(), 0, 0, i64::MAX)?,
    };
    let rows = state.store.binding_list(&query).await?;
    let total = state.store.count_binding_list(&query).await?;
    Ok(Json(BindingPage {
        items: rows.into_iter().map(BindingItem::from).collect(),
        total,
        limit: query.limit,
        offset: query.offset,
    }))
}

/// Which users to bind: `users`, or `all` (every user not bound yet).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BindUsers {
    /// Usernames, emails or ids.
    #[serde(default)]
    pub users: Vec<String>,
    /// Bind every user not bound yet (instead of `users`).
    #[serde(default)]
    pub all: bool,
}

/// Which users to unbind.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UnbindUsers {
    /// Usernames, emails or ids.
    pub users: Vec<String>,
}

/// What a bind or unbind request did.
#[derive(Debug, Serialize, ToSchema)]
pub struct BindResult {
    /// Usernames queued; the worker completes them within seconds (watch `GET /api/v1/bindings`).
    pub queued: Vec<String>,
    /// Users left as they were, with the reason.
    pub skipped: Vec<Skipped>,
}

/// A user a request left alone.
#[derive(Debug, Serialize, ToSchema)]
pub struct Skipped {
    /// The username (or the key given, for an unknown user).
    pub user: String,
    pub reason: String,
}

impl From<BindReport> for BindResult {
    fn from(r: BindReport) -> Self {
        Self {
            queued: r.queued,
            skipped: r
                .skipped
                .into_iter()
                .map(|(user, reason)| Skipped { user, reason })
                .collect(),
        }
    }
}

/// Binds users: their Microsoft 365 accounts are created or adopted, stamped with an immutable
/// ID and kept in sync. Users already bound or being bound are skipped.
#[utoipa::path(
    post,
    path = "/api/v1/bindings",
    tag = "bindings",
    request_body = BindUsers,
    responses(
        (status = 202, description = "Queued (per user)", body = BindResult),
        (status = 400, description = "The body is not JSON", body = ErrorResponse),
        (status = 409, description = "Microsoft 365 is not connected (`m365_not_connected`)", body = ErrorResponse),
        (status = 422, description = "Neither `users` nor `all`, or both", body = ErrorResponse),
    )
)]
async fn bind(
    State(state): State<AppState>,
    Extension(caller): Extension<AdminPrincipal>,
    ApiJson(body): ApiJson<BindUsers>,
) -> Result<(StatusCode, Json<BindResult>), ApiError> {
    let report = match (body.all, body.users.is_empty()) {
        (true, true) => state.sync.bind_all(&caller.actor(), Utc::now()).await?,
        (false, false) => {
            state
                .sync
                .bind(&caller.actor(), &body.users, Utc::now())
                .await?
        }
        (true, false) => {
            return Err(ApiError::validation(
                "all",
                "send either users or all, not both",
            ))
        }
        (false, true) => {
            return Err(ApiError::validation(
                "users",
                "name at least one user, or send {\"all\": true}",
            ))
        }
    };
    Ok((StatusCode::ACCEPTED, Json(report.into())))
}

/// Unbinds users: SAML sign-in is refused at once and their Microsoft 365 accounts are blocked
/// from signing in (not deleted). Binding again unblocks the same account.
#[utoipa::path(
    post,
    path = "/api/v1/bindings/unbind",
    tag = "bindings",
    request_body = UnbindUsers,
    responses(
        (status = 202, description = "Queued (per user)", body = BindResult),
        (status = 400, description = "The body is not JSON", body = ErrorResponse),
        (status = 422, description = "No users named", body = ErrorResponse),
    )
)]
async fn unbind(
    State(state): State<AppState>,
    Extension(caller): Extension<AdminPrincipal>,
    ApiJson(body): ApiJson<UnbindUsers>,
) -> Result<(StatusCode, Json<BindResult>), ApiError> {
    if body.users.is_empty() {
        return Err(ApiError::validation("users", "name at least one user"));
    }
    let report = state
        .sync
        .unbind(&caller.actor(), &body.users, Utc::now())
        .await?;
    Ok((StatusCode::ACCEPTED, Json(report.into())))
}

/// Which failed changes to queue again.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryRequest {
    /// One user's (username, email or id); every user's when left out.
    pub user: Option<String>,
}

/// How many failed changes were queued again.
#[derive(Debug, Serialize, ToSchema)]
pub struct RetryResult {
    pub retried: u64,
}

/// Queues changes that failed for good again (after fixing the cause Graph named).
#[utoipa::path(
    post,
    path = "/api/v1/bindings/retry",
    tag = "bindings",
    request_body(content = Option<RetryRequest>, description = "Optional; every user's failures when left out"),
    responses(
        (status = 202, description = "Queued again", body = RetryResult),
        (status = 400, description = "The body is not JSON", body = ErrorResponse),
        (status = 404, description = "No such user", body = ErrorResponse),
        (status = 422, description = "An unknown field", body = ErrorResponse),
    )
)]
async fn retry(
    State(state): State<AppState>,
    Extension(caller): Extension<AdminPrincipal>,
    OptionalJson(body): OptionalJson<RetryRequest>,
) -> Result<(StatusCode, Json<RetryResult>), ApiError> {
    let user = match body.user.as_deref() {
        Some(key) => Some(state.directory.get_user(key).await?),
        None => None,
    };
    let retried = state
        .sync
        .retry_failed(&caller.actor(), user.as_ref(), Utc::now())
        .await?;
    Ok((StatusCode::ACCEPTED, Json(RetryResult { retried })))
}

/// Bindings and changes by state.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncCounts {
    /// Changes waiting for delivery.
    pub queued: i64,
    /// Changes that failed for good.
    pub failed: i64,
    pub bound: i64,
    pub pending: i64,
    /// Bindings whose bind failed.
    pub bind_failed: i64,
    pub unbound: i64,
}

/// What is waiting for, or failed to reach, Microsoft 365.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncOverview {
    pub counts: SyncCounts,
    pub failed_jobs: Vec<FailedSyncJob>,
}

/// Counts of bindings and changes, and every change that failed for good.
#[utoipa::path(
    get,
    path = "/api/v1/sync",
    tag = "bindings",
    responses((status = 200, description = "The sync overview", body = SyncOverview))
)]
async fn sync_status(State(state): State<AppState>) -> Result<Json<SyncOverview>, ApiError> {
    let c = state.sync.counts().await?;
    let failed = state.sync.failed_jobs(None).await?;
    Ok(Json(SyncOverview {
        counts: SyncCounts {
            queued: c.queued,
            failed: c.failed,
            bound: c.bound,
            pending: c.pending,
            bind_failed: c.bind_failed,
            unbound: c.unbound,
        },
        failed_jobs: failed.into_iter().map(Into::into).collect(),
    }))
}
