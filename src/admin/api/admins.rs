//! `/api/v1/admins`: the console's admin accounts: list, disable, enable, change the role of,
//! reset the password of, delete. A key acts for the admin who created it, who cannot change
//! their own account this way; no change leaves zero active full admins (`last_admin`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use chrono::Utc;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{ApiJson, OptionalJson};
use super::schema::ErrorResponse;
use crate::directory::{millis_to_rfc3339, AdminAction, AdminRole};
use crate::server::AppState;
use crate::store::FactorOwner;
use crate::web::{AdminPrincipal, ApiError};

/// The admin routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_admins))
        .routes(routes!(delete_admin))
        .routes(routes!(disable_admin))
        .routes(routes!(enable_admin))
        .routes(routes!(set_role))
        .routes(routes!(reset_password))
}

/// An admin account of the console.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Admin {
    pub username: String,
    /// `admin` (everything) or `read_only`.
    #[schema(value_type = RoleName)]
    pub role: String,
    /// `active` or `disabled`.
    #[schema(value_type = AdminStateName)]
    pub state: &'static str,
    /// Whether the account has a confirmed authenticator app.
    pub mfa: bool,
    /// Whether the password is a one-time password not yet changed.
    pub must_change_password: bool,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339; null while active.
    pub disabled_at: Option<String>,
}

/// `admin` or `read_only`.
#[allow(dead_code)] // Only names the values in the OpenAPI document.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RoleName {
    Admin,
    ReadOnly,
}

/// `active` or `disabled`.
#[allow(dead_code)] // Only names the values in the OpenAPI document.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AdminStateName {
    Active,
    Disabled,
}

async fn admin(state: &AppState, username: &str) -> Result<Admin, ApiError> {
    let name = username.trim().to_lowercase();
    let row = state
        .store
        .find_admin(&name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no admin {name:?}")))?;
    to_admin(state, row).await
}

async fn to_admin(state: &AppState, row: crate::store::AdminRow) -> Result<Admin, ApiError> {
    let mfa = state
        .mfa
        .owner_factors(FactorOwner::Admin(&row.id))
        .await?
        .totp;
    Ok(Admin {
        username: row.username,
        role: row.role,
        state: if row.disabled_at.is_some() {
            "disabled"
        } else {
            "active"
        },
        mfa,
        must_change_password: row.must_change_password == 1,
        created_at: millis_to_rfc3339(row.created_at),
        disabled_at: row.disabled_at.map(millis_to_rfc3339),
    })
}

/// Every admin account, by username.
#[utoipa::path(
    get,
    path = "/api/v1/admins",
    tag = "admins",
    responses((status = 200, description = "The admins", body = Vec<Admin>))
)]
async fn list_admins(State(state): State<AppState>) -> Result<Json<Vec<Admin>>, ApiError> {
    let mut out = Vec::new();
    for row in state.store.list_admins().await? {
        out.push(to_admin(&state, row).await?);
    }
    Ok(Json(out))
}

async fn change(
    state: &AppState,
    caller: &AdminPrincipal,
    name: &str,
    action: AdminAction,
) -> Result<(), ApiError> {
    state
        .directory
        .change_admin(
            &caller.actor(),
            caller.acting_admin.as_deref(),
            name,
            action,
            Utc::now(),
        )
        .await?;
    Ok(())
}

/// Disables an admin: their sessions end at once, sign-in is refused, and the API keys they
/// created are refused until they are enabled again.
#[utoipa::path(
    post,
    path = "/api/v1/admins/{name}/disable",
    tag = "admins",
    params(("name" = String, Path, description = "The admin's username")),
    responses(
        (status = 200, description = "The disabled admin", body = Admin),
        (status = 404, description = "No such admin", body = ErrorResponse),
        (status = 409, description = "The last active full admin (`last_admin`), or the key's own admin (`own_account`)", body = ErrorResponse),
    )
)]
async fn disable_admin(
    State(state): State<AppState>,
    Extension(caller): Extension<AdminPrincipal>,
    Path(name): Path<String>,
) -> Result<Json<Admin>, ApiError> {
    change(&state, &caller, &name, AdminAction::Disable).await?;
    Ok(Json(admin(&state, &name).await?))
}

/// Enables a disabled admin again.
#[utoipa::path(
    post,
    path = "/api/v1/admins/{name}/enable",
    tag = "admins",
    params(("name" = String, Path, description = "The admin's username")),
    responses(
        (status = 200, description = "The active admin", body = Admin),
        (status = 404, description = "No such admin", body = ErrorResponse),
        (status = 409, description = "The key's own admin (`own_account`)", body = ErrorResponse),
    )
)]
async fn enable_admin(
    State(state): State<AppState>,
    Extension(caller): Extension<AdminPrincipal>,
    Path(name): Path<String>,
) -> Result<Json<Admin>, ApiError> {
    change(&state, &caller, &name, AdminAction::Enable).await?;
    Ok(Json(admin(&state, &name).await?))
}

/// Deletes an admin account; the API keys it created are revoked.
#[utoipa::path(
    delete,
    path = "/api/v1/admins/{name}",
    tag = "admins",
    params(("name" = String, Path, description = "The admin's username")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such admin", body = ErrorResponse),
        (status = 409, description = "The last active full admin (`last_admin`), or the key's own admin (`own_account`)", body = ErrorResponse),
    )
)]
async fn delete_admin(
    State(state): State<AppState>,
    Extension(caller): Extension<AdminPrincipal>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    change(&state, &caller, &name, AdminAction::Delete).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A new role.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleChange {
    /// `admin` or `read_only`.
    #[schema(value_type = RoleName)]
    pub role: String,
}

/// Gives an admin another role.
#[utoipa::path(
    put,
    path = "/api/v1/admins/{name}/role",
    tag = "admins",
    params(("name" = String, Path, description = "The admin's username")),
    request_body = RoleChange,
    responses(
        (status = 200, description = "The admin with the new role", body = Admin),
        (status = 404, description = "No such admin", body = ErrorResponse),
        (status = 409, description = "Making the last active full admin read-only (`last_admin`), or the key's own admin (`own_account`)", body = ErrorResponse),
        (status = 422, description = "Not a role", body = ErrorResponse),
    )
)]
async fn set_role(
    State(state): State<AppState>,
    Extension(caller): Extension<AdminPrincipal>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<RoleChange>,
) -> Result<Json<Admin>, ApiError> {
    let role = AdminRole::parse(&body.role)?;
    change(&state, &caller, &name, AdminAction::SetRole(role)).await?;
    Ok(Json(admin(&state, &name).await?))
}

/// What to reset besides the password.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PasswordReset {
    /// Also remove the admin's authenticator app and recovery codes (a lost phone).
    #[serde(default)]
    pub remove_mfa: bool,
}

/// A reset password: the one-time password is in this answer only.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PasswordResetDone {
    pub username: String,
    /// To be changed at the admin's next sign-in; not stored, not shown again.
    pub one_time_password: String,
    /// Whether the authenticator app and recovery codes were removed.
    pub mfa_removed: bool,
}

/// Gives an admin a new one-time password (changed at their next sign-in) and ends their
/// sessions; with `removeMfa`, also removes their authenticator app and recovery codes.
#[utoipa::path(
    post,
    path = "/api/v1/admins/{name}/reset-password",
    tag = "admins",
    params(("name" = String, Path, description = "The admin's username")),
    request_body(content = PasswordReset, description = "Optional"),
    responses(
        (status = 200, description = "The one-time password", body = PasswordResetDone),
        (status = 404, description = "No such admin", body = ErrorResponse),
        (status = 409, description = "The key's own admin (`own_account`)", body = ErrorResponse),
    )
)]
async fn reset_password(
    State(state): State<AppState>,
    Extension(caller): Extension<AdminPrincipal>,
    Path(name): Path<String>,
    OptionalJson(body): OptionalJson<PasswordReset>,
) -> Result<Json<PasswordResetDone>, ApiError> {
    let reset = state
        .directory
        .reset_admin_password(
            &caller.actor(),
            caller.acting_admin.as_deref(),
            &name,
            body.remove_mfa,
            Utc::now(),
        )
        .await?;
    Ok(Json(PasswordResetDone {
        username: name.trim().to_lowercase(),
        one_time_password: reset.password.expose_secret().to_string(),
        mfa_removed: reset.mfa_removed,
    }))
}
