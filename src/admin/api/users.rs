//! `/api/v1/users`: list, create, read, change, suspend, activate, set the password, delete.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use chrono::Utc;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{ApiJson, ApiQuery};
use super::schema::{int_param, ErrorResponse};
use crate::directory::{self, millis_to_rfc3339, UserChanges, UserState};
use crate::m365::sync::{FailedJob, UserSyncStatus};
use crate::server::AppState;
use crate::web::{AdminPrincipal, ApiError};

/// The users routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_users, create_user))
        .routes(routes!(get_user, update_user, delete_user))
        .routes(routes!(suspend_user))
        .routes(routes!(activate_user))
        .routes(routes!(set_password))
}

/// A user, with the attribute names of the Microsoft 365 attribute tables (as
/// `idbridge user show --json` prints it).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub id: String,
    pub username: String,
    /// Company email; the Microsoft 365 userPrincipalName.
    pub email: String,
    pub firstname: String,
    pub lastname: String,
    /// First and last name (the username when both are empty).
    pub display_name: String,
    pub alternate_email: Option<String>,
    pub job_title: Option<String>,
    pub department: Option<String>,
    pub location: Option<String>,
    /// The manager's username.
    pub manager: Option<String>,
    pub addresses: Addresses,
    pub phone_numbers: PhoneNumbers,
    #[schema(value_type = UserStateName)]
    pub state: &'static str,
    pub has_password: bool,
    /// RFC 3339.
    pub password_changed_at: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// The Microsoft 365 binding, if the user was ever bound.
    pub m365: Option<UserBinding>,
}

/// `active` or `suspended`.
#[allow(dead_code)] // Only names the values in the OpenAPI document.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum UserStateName {
    Active,
    Suspended,
}

/// A user's addresses.
#[derive(Debug, Serialize, ToSchema)]
pub struct Addresses {
    pub work: WorkAddress,
}

/// The work address.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkAddress {
    pub street_address: Option<String>,
    pub locality: Option<String>,
    pub region: Option<String>,
    pub postal_code: Option<String>,
    pub country: Option<String>,
}

/// Phone numbers.
#[derive(Debug, Serialize, ToSchema)]
pub struct PhoneNumbers {
    pub work: Option<String>,
    pub mobile: Option<String>,
}

/// The binding summary on a user.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserBinding {
    /// The SAML NameID stamped on the Microsoft 365 user.
    pub immutable_id: String,
    pub user_principal_name: String,
    /// `pending`, `bound`, `failed` or `unbound`.
    pub state: String,
}

impl From<&directory::User> for User {
    fn from(u: &directory::User) -> Self {
        Self {
            id: u.id.clone(),
            username: u.username.clone(),
            email: u.email.clone(),
            firstname: u.firstname.clone(),
            lastname: u.lastname.clone(),
            display_name: u.display_name(),
            alternate_email: u.alternate_email.clone(),
            job_title: u.job_title.clone(),
            department: u.department.clone(),
            location: u.location.clone(),
            manager: u.manager.clone(),
            addresses: Addresses {
                work: WorkAddress {
                    street_address: u.work_street_address.clone(),
                    locality: u.work_locality.clone(),
                    region: u.work_region.clone(),
                    postal_code: u.work_postal_code.clone(),
                    country: u.work_country.clone(),
                },
            },
            phone_numbers: PhoneNumbers {
                work: u.phone_work.clone(),
                mobile: u.phone_mobile.clone(),
            },
            state: u.state.as_str(),
            has_password: u.has_password(),
            password_changed_at: u.password_changed_at.map(millis_to_rfc3339),
            created_at: millis_to_rfc3339(u.created_at),
            updated_at: millis_to_rfc3339(u.updated_at),
            m365: u.m365.as_ref().map(|b| UserBinding {
                immutable_id: b.immutable_id.clone(),
                user_principal_name: b.user_principal_name.clone(),
                state: b.state.clone(),
            }),
        }
    }
}

/// A user with its Microsoft 365 sync state.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserDetail {
    #[serde(flatten)]
    pub user: User,
    pub sync: SyncStatus,
}

/// A user's binding and what is waiting for, or failed to reach, Microsoft 365.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncStatus {
    /// `pending`, `bound`, `failed`, `unbound`; null when never bound.
    pub state: Option<String>,
    pub immutable_id: Option<String>,
    pub m365_object_id: Option<String>,
    pub user_principal_name: Option<String>,
    /// RFC 3339.
    pub last_sync_at: Option<String>,
    /// Graph's message for the last failure.
    pub last_error: Option<String>,
    /// Whether the user's password has reached Microsoft 365.
    pub password_pushed: bool,
    /// Kinds of the changes waiting for delivery.
    pub queued_jobs: Vec<String>,
    pub failed_jobs: Vec<FailedSyncJob>,
}

/// A change that failed for good (retry it with `POST /api/v1/bindings/retry`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailedSyncJob {
    pub id: i64,
    pub user_id: String,
    /// `bind`, `unbind`, `attributes`, `account`, `password`.
    pub kind: String,
    pub attempts: i64,
    pub error: Option<String>,
    /// RFC 3339.
    pub created_at: String,
}

impl From<FailedJob> for FailedSyncJob {
    fn from(j: FailedJob) -> Self {
        Self {
            id: j.id,
            user_id: j.user_id,
            kind: j.kind,
            attempts: j.attempts,
            error: j.error,
            created_at: j.created_at,
        }
    }
}

impl From<UserSyncStatus> for SyncStatus {
    fn from(s: UserSyncStatus) -> Self {
        Self {
            state: s.state,
            immutable_id: s.immutable_id,
            m365_object_id: s.m365_object_id,
            user_principal_name: s.user_principal_name,
            last_sync_at: s.last_sync_at,
            last_error: s.last_error,
            password_pushed: s.password_pushed,
            queued_jobs: s.queued_jobs,
            failed_jobs: s.failed_jobs.into_iter().map(Into::into).collect(),
        }
    }
}

/// Query of the user list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UserListParams {
    /// Case-insensitive: one or two characters match the start of the username or email;
    /// three or more match anywhere in the username, email or name.
    search: Option<String>,
    /// Users per page, 1 to 1000 (default 100).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// The `next` value of the previous page.
    after: Option<String>,
}

/// A page of users ordered by username.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserPage {
    pub items: Vec<User>,
    /// Pass as `after` for the next page; null on the last page.
    pub next: Option<String>,
}

/// Lists users, ordered by username, a page at a time.
#[utoipa::path(
    get,
    path = "/api/v1/users",
    tag = "users",
    params(UserListParams),
    responses(
        (status = 200, description = "A page of users", body = UserPage),
        (status = 422, description = "A bad parameter (`field` names it)", body = ErrorResponse),
    )
)]
async fn list_users(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<UserListParams>,
) -> Result<Json<UserPage>, ApiError> {
    let limit = int_param("limit", params.limit.as_deref(), 100, 1, 1000)?;
    // One more than asked tells whether another page follows.
    let rows = state
        .store
        .user_page(
            params.search.as_deref(),
            params.after.as_deref(),
            None,
            limit + 1,
        )
        .await?;
    let more = rows.len() as i64 > limit;
    let users = rows
        .into_iter()
        .take(limit as usize)
        .map(directory::User::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let next = more
        .then(|| users.last().map(|u| u.username.clone()))
        .flatten();
    Ok(Json(UserPage {
        items: users.iter().map(User::from).collect(),
        next,
    }))
}

macro_rules! user_body {
    ($(#[$meta:meta])* $name:ident { $($extra:tt)* }) => {
        $(#[$meta])*
        #[derive(Debug, Default, Deserialize, ToSchema)]
        #[serde(deny_unknown_fields, rename_all = "camelCase")]
        pub struct $name {
            pub username: Option<String>,
            /// Company email; becomes the Microsoft 365 userPrincipalName.
            pub email: Option<String>,
            pub firstname: Option<String>,
            pub lastname: Option<String>,
            pub alternate_email: Option<String>,
            pub job_title: Option<String>,
            pub department: Option<String>,
            pub location: Option<String>,
            /// The manager's username.
            pub manager: Option<String>,
            pub work_street_address: Option<String>,
            pub work_locality: Option<String>,
            pub work_region: Option<String>,
            pub work_postal_code: Option<String>,
            pub work_country: Option<String>,
            pub phone_work: Option<String>,
            pub phone_mobile: Option<String>,
            $($extra)*
        }

        impl $name {
            fn changes(&self) -> UserChanges {
                UserChanges {
                    username: self.username.clone(),
                    email: self.email.clone(),
                    firstname: self.firstname.clone(),
                    lastname: self.lastname.clone(),
                    alternate_email: self.alternate_email.clone(),
                    job_title: self.job_title.clone(),
                    department: self.department.clone(),
                    location: self.location.clone(),
                    manager: self.manager.clone(),
                    work_street_address: self.work_street_address.clone(),
                    work_locality: self.work_locality.clone(),
                    work_region: self.work_region.clone(),
                    work_postal_code: self.work_postal_code.clone(),
                    work_country: self.work_country.clone(),
                    phone_work: self.phone_work.clone(),
                    phone_mobile: self.phone_mobile.clone(),
                }
            }
        }
    };
}

user_body! {
    /// A new user: `username` and `email` are required; `password`, if given, must pass the
    /// password policy.
    NewUser {
        /// The first password (optional; without one the user cannot sign in yet).
        #[schema(format = Password)]
        pub password: Option<String>,
    }
}

user_body! {
    /// Attribute changes: a field left out (or null) stays as it is; an empty string clears an
    /// optional attribute.
    UserUpdate {}
}

/// Creates a user.
#[utoipa::path(
    post,
    path = "/api/v1/users",
    tag = "users",
    request_body = NewUser,
    responses(
        (status = 201, description = "Created", body = User),
        (status = 400, description = "The body is not JSON", body = ErrorResponse),
        (status = 409, description = "The username or email is taken (`field` names it)", body = ErrorResponse),
        (status = 422, description = "A field is missing or invalid, or the password breaks the policy", body = ErrorResponse),
    )
)]
async fn create_user(
    State(state): State<AppState>,
    Extension(caller): Extension<AdminPrincipal>,
    ApiJson(body): ApiJson<NewUser>,
) -> Result<(StatusCode, Json<User>), ApiError> {
    let password = body.password.clone().map(SecretString::from);
    let user = state
        .directory
        .create_user(
            &caller.actor(),
            &body.changes(),
            password.as_ref(),
            Utc::now(),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(User::from(&user))))
}

/// Reads a user with its binding and sync state.
#[utoipa::path(
    get,
    path = "/api/v1/users/{id}",
    tag = "users",
    params(("id" = String, Path, description = "The user's id, username or email")),
    responses(
        (status = 200, description = "The user", body = UserDetail),
        (status = 404, description = "No such user", body = ErrorResponse),
    )
)]
async fn get_user(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<UserDetail>, ApiError> {
    let user = state.directory.get_user(&id).await?;
    let sync = state.sync.user_status(&user).await?;
    Ok(Json(UserDetail {
        user: User::from(&user),
        sync: sync.into(),
    }))
}

/// Changes a user's attributes. Exported attributes of a bound user reach Microsoft 365 within
/// seconds.
#[utoipa::path(
    patch,
    path = "/api/v1/users/{id}",
    tag = "users",
    params(("id" = String, Path, description = "The user's id, username or email")),
    request_body = UserUpdate,
    responses(
        (status = 200, description = "The changed user", body = User),
        (status = 400, description = "The body is not JSON", body = ErrorResponse),
        (status = 404, description = "No such user", body = ErrorResponse),
        (status = 409, description = "The username or email is taken", body = ErrorResponse),
        (status = 422, description = "A field is invalid, or nothing to change", body = ErrorResponse),
    )
)]
async fn update_user(
    State(state): State<AppState>,
    Extension(caller): Extension<AdminPrincipal>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UserUpdate>,
) -> Result<Json<User>, ApiError> {
    let user = state
        .directory
        .update_user(&caller.actor(), &id, &body.changes(), Utc::now())
        .await?;
    Ok(Json(User::from(&user)))
}

/// Suspends a user: sign-in stops, their sessions end, and a bound user's Microsoft 365
/// account is blocked.
#[utoipa::path(
    post,
    path = "/api/v1/users/{id}/suspend",
    tag = "users",
    params(("id" = String, Path, description = "The user's id, username or email")),
    responses(
        (status = 200, description = "The suspended user", body = User),
        (status = 404, description = "No such user", body = ErrorResponse),
    )
)]
async fn suspend_user(
    State(state): State<AppState>,
    Extension(caller): Extension<AdminPrincipal>,
    Path(id): Path<String>,
) -> Result<Json<User>, ApiError> {
    set_state(&state, &caller, &id, UserState::Suspended).await
}

/// Activates a suspended user (and unblocks a bound user's Microsoft 365 account).
#[utoipa::path(
    post,
    path = "/api/v1/users/{id}/activate",
    tag = "users",
    params(("id" = String, Path, description = "The user's id, username or email")),
    responses(
        (status = 200, description = "The active user", body = User),
        (status = 404, description = "No such user", body = ErrorResponse),
    )
)]
async fn activate_user(
    State(state): State<AppState>,
    Extension(caller): Extension<AdminPrincipal>,
    Path(id): Path<String>,
) -> Result<Json<User>, ApiError> {
    set_state(&state, &caller, &id, UserState::Active).await
}

async fn set_state(
    state: &AppState,
    caller: &AdminPrincipal,
    id: &str,
    to: UserState,
) -> Result<Json<User>, ApiError> {
    let user = state
        .directory
        .set_state(&caller.actor(), id, to, Utc::now())
        .await?;
    Ok(Json(User::from(&user)))
}

/// A new password.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPassword {
    #[schema(format = Password)]
    pub password: String,
}

/// Sets a user's password (checked against the policy and the history). A bound user's new
/// password is pushed to Microsoft 365.
#[utoipa::path(
    put,
    path = "/api/v1/users/{id}/password",
    tag = "users",
    params(("id" = String, Path, description = "The user's id, username or email")),
    request_body = NewPassword,
    responses(
        (status = 204, description = "The password is set"),
        (status = 400, description = "The body is not JSON", body = ErrorResponse),
        (status = 404, description = "No such user", body = ErrorResponse),
        (status = 422, description = "The password breaks the policy (`field`: `password`)", body = ErrorResponse),
    )
)]
async fn set_password(
    State(state): State<AppState>,
    Extension(caller): Extension<AdminPrincipal>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<NewPassword>,
) -> Result<StatusCode, ApiError> {
    state
        .directory
        .set_password(
            &caller.actor(),
            &id,
            &SecretString::from(body.password),
            Utc::now(),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes a user who is not bound to Microsoft 365 (unbind first).
#[utoipa::path(
    delete,
    path = "/api/v1/users/{id}",
    tag = "users",
    params(("id" = String, Path, description = "The user's id, username or email")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such user", body = ErrorResponse),
        (status = 409, description = "The user is bound to Microsoft 365, or has changes on their way there", body = ErrorResponse),
    )
)]
async fn delete_user(
    State(state): State<AppState>,
    Extension(caller): Extension<AdminPrincipal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state
        .directory
        .delete_user(&caller.actor(), &id, Utc::now())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
