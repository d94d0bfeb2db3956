//! `/api/v1/users`: list, create, read, change, suspend, activate, set the password, delete.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use chrono::Utc;
use secrecy::SecretString;
use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, SchemaType, Type};
use utoipa::openapi::RefOr;
use utoipa::{IntoParams, PartialSchema, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{ApiJson, ApiQuery};
use super::schema::{int_param, ErrorResponse};
use crate::attributes::{self, Kind, Presence, CATALOGUE};
use crate::binding::BindingState;
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
        .routes(routes!(require_password_change))
        .routes(routes!(get_mfa, reset_mfa))
        .routes(routes!(set_mfa_required))
}

/// A user, with the catalogue's attribute names (nested at their dots) as
/// `idbridge user show --json` prints it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub id: String,
    #[serde(flatten)]
    pub attributes: UserAttributes,
    /// First and last name (the username when both are empty).
    pub display_name: String,
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

/// Every attribute of the catalogue, nested at the dots of its name; optional ones are null
/// when not set.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct UserAttributes(Map<String, Value>);

impl PartialSchema for UserAttributes {
    fn schema() -> RefOr<Schema> {
        attribute_schema(Use::Read)
    }
}

impl ToSchema for UserAttributes {
    fn name() -> Cow<'static, str> {
        "UserAttributes".into()
    }
}

/// Which body an attribute schema describes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Use {
    /// Answers: every attribute present; optional ones may be null.
    Read,
    /// A new user: `username` and `email` required, `password` allowed.
    Create,
    /// Changes: every attribute may be left out or null.
    Update,
}

/// The OpenAPI schema of the attributes for `to`, built from the catalogue.
fn attribute_schema(to: Use) -> RefOr<Schema> {
    // Nested objects by name path: (properties, required names) per level.
    #[derive(Default)]
    struct Level {
        leaves: Vec<(String, RefOr<Schema>, bool)>,
        children: BTreeMap<String, Level>,
    }
    fn build(level: Level, to: Use) -> RefOr<Schema> {
        let mut object = ObjectBuilder::new();
        for (name, schema, required) in level.leaves {
            object = object.property(&name, schema);
            if required {
                object = object.required(&name);
            }
        }
        for (name, child) in level.children {
            object = object.property(&name, build(child, to));
            if to == Use::Read {
                object = object.required(&name);
            }
        }
        RefOr::T(Schema::Object(object.build()))
    }
    let mut root = Level::default();
    for spec in CATALOGUE {
        let nullable = to != Use::Read || spec.is_optional();
        let mut text = ObjectBuilder::new()
            .schema_type(if nullable {
                SchemaType::from_iter([Type::String, Type::Null])
            } else {
                SchemaType::new(Type::String)
            })
            .description(Some(spec.description()));
        if spec.kind != Kind::UserRef {
            text = text.max_length(Some(spec.max));
        }
        if spec.kind == Kind::Email {
            text = text.format(Some(SchemaFormat::KnownFormat(KnownFormat::Email)));
        }
        let required = match to {
            Use::Read => true,
            Use::Create => spec.presence == Presence::Required,
            Use::Update => false,
        };
        let mut parts: Vec<&str> = spec.name.split('.').collect();
        let leaf = parts.pop().unwrap_or(spec.name);
        let mut level = &mut root;
        for part in parts {
            level = level.children.entry(part.to_string()).or_default();
        }
        level.leaves.push((
            leaf.to_string(),
            RefOr::T(Schema::Object(text.build())),
            required,
        ));
    }
    if to == Use::Create {
        root.leaves.push((
            "password".into(),
            RefOr::T(Schema::Object(
                ObjectBuilder::new()
                    .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Password)))
                    .description(Some(
                        "The first password (optional; without one the user cannot sign in yet).",
                    ))
                    .build(),
            )),
            false,
        ));
    }
    build(root, to)
}

/// The binding summary on a user.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserBinding {
    /// The SAML NameID stamped on the Microsoft 365 user.
    pub immutable_id: String,
    pub user_principal_name: String,
    pub state: BindingState,
}

impl From<&directory::User> for User {
    fn from(u: &directory::User) -> Self {
        Self {
            id: u.id.clone(),
            attributes: UserAttributes(u.attributes_json()),
            display_name: u.display_name(),
            state: u.state.as_str(),
            has_password: u.has_password(),
            password_changed_at: u.password_changed_at.map(millis_to_rfc3339),
            created_at: millis_to_rfc3339(u.created_at),
            updated_at: millis_to_rfc3339(u.updated_at),
            m365: u.m365.as_ref().map(|b| UserBinding {
                immutable_id: b.immutable_id.clone(),
                user_principal_name: b.user_principal_name.clone(),
                state: b.state,
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
    /// Null when never bound.
    pub state: Option<BindingState>,
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

/// A new user: `username` and `email` are required; `password`, if given, must pass the
/// password policy. Attributes are named as in answers (nested at the dots, or as dotted keys).
#[derive(Debug, Default)]
pub struct NewUser {
    changes: UserChanges,
    password: Option<String>,
}

/// Attribute changes: an attribute left out (or null) stays as it is; an empty string clears an
/// optional one. Named as in answers (nested at the dots, or as dotted keys).
#[derive(Debug, Default)]
pub struct UserUpdate {
    changes: UserChanges,
}

/// The changes of a JSON body's attributes (what is left after the caller took its own keys).
fn changes_from<E: serde::de::Error>(body: &Map<String, Value>) -> Result<UserChanges, E> {
    let mut changes = UserChanges::new();
    for (attribute, value) in attributes::from_json(body).map_err(E::custom)? {
        changes.set(attribute, value);
    }
    Ok(changes)
}

impl<'de> Deserialize<'de> for NewUser {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut body = Map::<String, Value>::deserialize(d)?;
        let password = match body.remove("password") {
            None | Some(Value::Null) => None,
            Some(Value::String(p)) => Some(p),
            Some(_) => {
                return Err(serde::de::Error::custom(
                    "invalid type for field `password`: expected a string",
                ))
            }
        };
        Ok(Self {
            changes: changes_from(&body)?,
            password,
        })
    }
}

impl<'de> Deserialize<'de> for UserUpdate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let body = Map::<String, Value>::deserialize(d)?;
        Ok(Self {
            changes: changes_from(&body)?,
        })
    }
}

impl PartialSchema for NewUser {
    fn schema() -> RefOr<Schema> {
        attribute_schema(Use::Create)
    }
}

impl ToSchema for NewUser {
    fn name() -> Cow<'static, str> {
        "NewUser".into()
    }
}

impl PartialSchema for UserUpdate {
    fn schema() -> RefOr<Schema> {
        attribute_schema(Use::Update)
    }
}

impl ToSchema for UserUpdate {
    fn name() -> Cow<'static, str> {
        "UserUpdate".into()
    }
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
            &body.changes,
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
        .update_user(&caller.actor(), &id, &body.changes, Utc::now())
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

/// Makes the user choose a new password at their next sign-in, before any assertion.
#[utoipa::path(
    post,
    path = "/api/v1/users/{id}/require-password-change",
    tag = "users",
    params(("id" = String, Path, description = "The user's id, username or email")),
    responses(
        (status = 200, description = "The user", body = User),
        (status = 404, description = "No such user", body = ErrorResponse),
    )
)]
async fn require_password_change(
    State(state): State<AppState>,
    Extension(caller): Extension<AdminPrincipal>,
    Path(id): Path<String>,
) -> Result<Json<User>, ApiError> {
    let user = state
        .directory
        .require_password_change(&caller.actor(), &id, Utc::now())
        .await?;
    Ok(Json(User::from(&user)))
}

/// A user's second factors and whether the policy requires one.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MfaStatus {
    /// `optional`, `chosen` or `required` (`[mfa] policy`).
    pub policy: crate::mfa::MfaPolicy,
    /// Whether the `chosen` policy names this user.
    pub chosen: bool,
    /// Whether the user must pass a second factor under the policy.
    pub required: bool,
    /// Whether an authenticator app (TOTP) is confirmed.
    pub totp: bool,
    pub passkeys: i64,
    /// Unused recovery codes.
    pub recovery_codes: i64,
}

async fn mfa_status(state: &AppState, id: &str) -> Result<MfaStatus, ApiError> {
    let user = state.directory.get_user(id).await?;
    let mfa = state.idp.mfa();
    let factors = mfa.factors(&user.id).await?;
    Ok(MfaStatus {
        policy: mfa.policy(),
        chosen: user.mfa_required,
        required: mfa.required_for(&user),
        totp: factors.totp,
        passkeys: factors.passkeys,
        recovery_codes: factors.recovery_codes,
    })
}

/// The user's second factors.
#[utoipa::path(
    get,
    path = "/api/v1/users/{id}/mfa",
    tag = "users",
    params(("id" = String, Path, description = "The user's id, username or email")),
    responses(
        (status = 200, description = "The user's second factors", body = MfaStatus),
        (status = 404, description = "No such user", body = ErrorResponse),
    )
)]
async fn get_mfa(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<MfaStatus>, ApiError> {
    Ok(Json(mfa_status(&state, &id).await?))
}

/// Removes every second factor of the user (a lost phone); under a policy that requires MFA
/// they enrol again at their next sign-in.
#[utoipa::path(
    delete,
    path = "/api/v1/users/{id}/mfa",
    tag = "users",
    params(("id" = String, Path, description = "The user's id, username or email")),
    responses(
        (status = 204, description = "Every second factor removed"),
        (status = 404, description = "No such user", body = ErrorResponse),
    )
)]
async fn reset_mfa(
    State(state): State<AppState>,
    Extension(caller): Extension<AdminPrincipal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let user = state.directory.get_user(&id).await?;
    state
        .idp
        .mfa()
        .reset(&caller.actor(), &user, Utc::now())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Whether the `chosen` policy requires a user's second factor.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MfaRequirement {
    pub required: bool,
}

/// Sets whether the `chosen` MFA policy requires the user's second factor.
#[utoipa::path(
    put,
    path = "/api/v1/users/{id}/mfa/required",
    tag = "users",
    params(("id" = String, Path, description = "The user's id, username or email")),
    request_body = MfaRequirement,
    responses(
        (status = 200, description = "The user's second factors", body = MfaStatus),
        (status = 400, description = "The body is not JSON", body = ErrorResponse),
        (status = 404, description = "No such user", body = ErrorResponse),
    )
)]
async fn set_mfa_required(
    State(state): State<AppState>,
    Extension(caller): Extension<AdminPrincipal>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<MfaRequirement>,
) -> Result<Json<MfaStatus>, ApiError> {
    let user = state.directory.get_user(&id).await?;
    state
        .idp
        .mfa()
        .set_required(&caller.actor(), &user, body.required, Utc::now())
        .await?;
    Ok(Json(mfa_status(&state, &id).await?))
}
