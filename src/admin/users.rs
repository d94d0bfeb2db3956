//! Console pages: the user list (search, keyset paging), creating a user, and a user's detail
//! page with edit, suspend/activate, password reset and delete.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Form, Router};
use chrono::Utc;
use secrecy::SecretString;
use serde::Deserialize;

use super::{display_time, redirect_with_notice, Chrome, Notice};
use crate::attributes::{Attribute, AttributeSpec, Kind, Presence, CATALOGUE};
use crate::binding::BindingState;
use crate::directory::{DirectoryError, User, UserChanges, UserState};
use crate::server::AppState;
use crate::web::{render, AdminPrincipal, AppError};

/// Users per page of the list.
const PAGE: usize = 50;
/// Events shown on a user's page (the rest are one link away).
const RECENT_EVENTS: i64 = 20;

/// Console routes of this page (behind the admin session guard).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/users", get(list).post(create))
        .route("/admin/users/new", get(new_form))
        .route("/admin/users/{id}", get(detail).post(edit))
        .route("/admin/users/{id}/state", post(set_state))
        .route("/admin/users/{id}/password", post(reset_password))
        .route("/admin/users/{id}/delete", post(delete))
        .route(
            "/admin/users/{id}/require-password-change",
            post(require_password_change),
        )
        .route("/admin/users/{id}/mfa/reset", post(reset_mfa))
        .route("/admin/users/{id}/mfa/required", post(set_mfa_required))
}

// ---------------------------------------------------------------------------------------------
// The list

#[derive(Debug, Default, Deserialize)]
struct ListQuery {
    #[serde(default)]
    q: String,
    after: Option<String>,
    before: Option<String>,
}

struct UserLine {
    id: String,
    username: String,
    name: String,
    email: String,
    state: String,
    binding: String,
}

#[derive(Template)]
#[template(path = "admin/users.html")]
struct UsersPage {
    chrome: Chrome,
    q: String,
    users: Vec<UserLine>,
    /// Users in the directory (shown without a search; one cheap count).
    total: Option<i64>,
    first: Option<String>,
    previous: Option<String>,
    next: Option<String>,
}

/// `/admin/users` with the search text and one cursor.
fn list_url(q: &str, cursor: Option<(&str, &str)>) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    if !q.is_empty() {
        query.append_pair("q", q);
    }
    if let Some((name, value)) = cursor {
        query.append_pair(name, value);
    }
    let query = query.finish();
    if query.is_empty() {
        "/admin/users".into()
    } else {
        format!("/admin/users?{query}")
    }
}

async fn list(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
    Notice(notice): Notice,
    Query(query): Query<ListQuery>,
) -> Result<Response, AppError> {
    let q = query.q.trim().to_string();
    let search = (!q.is_empty()).then_some(q.as_str());
    let after = query.after.as_deref().filter(|a| !a.is_empty());
    let before = query
        .before
        .as_deref()
        .filter(|b| !b.is_empty() && after.is_none());
    // One row more than shown tells whether the list goes on in the direction of travel.
    let mut rows = state
        .store
        .user_page(search, after, before, PAGE as i64 + 1)
        .await?;
    let (has_previous, has_next) = if before.is_some() {
        let more = rows.len() > PAGE;
        if more {
            rows.remove(0);
        }
        (more, true)
    } else {
        let more = rows.len() > PAGE;
        rows.truncate(PAGE);
        (after.is_some(), more)
    };
    let users: Vec<UserLine> = rows
        .into_iter()
        .map(|r| UserLine {
            name: format!("{} {}", r.firstname, r.lastname).trim().to_string(),
            binding: r.binding_state.unwrap_or_else(|| "unbound".into()),
            id: r.id,
            username: r.username,
            email: r.email,
            state: r.state,
        })
        .collect();
    let total = match search {
        None => Some(state.store.count_users().await?),
        Some(_) => None,
    };
    let page = UsersPage {
        chrome: Chrome::new(&admin, "users").flash(notice),
        previous: has_previous
            .then(|| users.first())
            .flatten()
            .map(|u| list_url(&q, Some(("before", &u.username)))),
        next: has_next
            .then(|| users.last())
            .flatten()
            .map(|u| list_url(&q, Some(("after", &u.username)))),
        first: (after.is_some() || before.is_some()).then(|| list_url(&q, None)),
        q,
        users,
        total,
    };
    Ok(render(StatusCode::OK, &page))
}

// ---------------------------------------------------------------------------------------------
// Attribute forms (create and edit share them)

/// The attributes a create form sets (empty fields are left unset). Fields are named by the
/// catalogue's product names.
fn changes_for_create(form: &HashMap<String, String>) -> UserChanges {
    let mut changes = UserChanges::new();
    for spec in CATALOGUE {
        if let Some(value) = form.get(spec.name).map(|v| v.trim()) {
            if !value.is_empty() {
                changes.set(spec.attribute, value);
            }
        }
    }
    changes
}

/// The attributes an edit form changes: only fields whose value differs from the user's (so
/// saving an untouched form changes nothing, and only real changes travel to Microsoft 365).
/// An emptied field clears the attribute.
fn changes_for_edit(user: &User, form: &HashMap<String, String>) -> UserChanges {
    let mut changes = UserChanges::new();
    for spec in CATALOGUE {
        let Some(value) = form.get(spec.name).map(|v| v.trim()) else {
            continue;
        };
        let current = user.get(spec.attribute).unwrap_or_default();
        // Usernames are stored lower-case and managers are found case-insensitively.
        let same = match spec.kind {
            Kind::Username | Kind::UserRef => value.eq_ignore_ascii_case(current),
            _ => value == current,
        };
        if !same {
            changes.set(spec.attribute, value);
        }
    }
    changes
}

/// The form field a refusal is about (to mark it), by the attribute name the directory gives.
fn refused_field(err: &DirectoryError) -> Option<&'static str> {
    let attribute = match err {
        DirectoryError::Invalid { field, .. } | DirectoryError::Duplicate { field } => *field,
        DirectoryError::UnknownManager(_) | DirectoryError::SelfManager => "manager",
        DirectoryError::Policy(_) => return Some("password"),
        _ => return None,
    };
    if attribute == "password" {
        return Some("password");
    }
    Attribute::parse(attribute).map(Attribute::name)
}

/// Whether a refusal is the admin's to fix (shown on the form) rather than a failure.
fn is_refusal(err: &DirectoryError) -> bool {
    matches!(
        err,
        DirectoryError::Invalid { .. }
            | DirectoryError::Duplicate { .. }
            | DirectoryError::UnknownManager(_)
            | DirectoryError::SelfManager
            | DirectoryError::Policy(_)
            | DirectoryError::Bound(_)
            | DirectoryError::SyncPending(_)
            | DirectoryError::NoChanges
    )
}

struct FieldView {
    /// The product name: the form field's name.
    name: &'static str,
    label: &'static str,
    /// A hint for the value, or empty.
    hint: &'static str,
    kind: &'static str,
    /// A keyboard hint (`tel`), or empty.
    inputmode: &'static str,
    max: usize,
    value: String,
    required: bool,
    invalid: bool,
}

struct FieldGroup {
    legend: &'static str,
    fields: Vec<FieldView>,
}

/// The form's fields in the catalogue's groups, filled with `value(spec)`, the refused one
/// marked.
fn field_groups(
    value: impl Fn(&AttributeSpec) -> String,
    invalid: Option<&str>,
) -> Vec<FieldGroup> {
    let mut groups: Vec<FieldGroup> = Vec::new();
    for spec in CATALOGUE {
        let field = FieldView {
            name: spec.name,
            label: spec.label,
            hint: spec.hint,
            // The console's stylesheet styles text inputs: phone numbers are text fields with
            // a telephone keyboard.
            kind: if spec.kind == Kind::Email {
                "email"
            } else {
                "text"
            },
            inputmode: if spec.kind == Kind::Phone { "tel" } else { "" },
            max: spec.max,
            value: value(spec),
            required: spec.presence == Presence::Required,
            invalid: invalid == Some(spec.name),
        };
        match groups.last_mut() {
            Some(group) if group.legend == spec.group => group.fields.push(field),
            _ => groups.push(FieldGroup {
                legend: spec.group,
                fields: vec![field],
            }),
        }
    }
    groups
}

/// The password rule in words, for the password fields.
fn policy_text(state: &AppState) -> String {
    state.directory.policy().describe()
}

// ---------------------------------------------------------------------------------------------
// Create

#[derive(Template)]
#[template(path = "admin/user_new.html")]
struct NewUserPage {
    chrome: Chrome,
    groups: Vec<FieldGroup>,
    policy: String,
    password_invalid: bool,
}

async fn new_form(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
) -> Response {
    let page = NewUserPage {
        chrome: Chrome::new(&admin, "users"),
        groups: field_groups(|_| String::new(), None),
        policy: policy_text(&state),
        password_invalid: false,
    };
    render(StatusCode::OK, &page)
}

async fn create(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
    Form(form): Form<HashMap<String, String>>,
) -> Result<Response, AppError> {
    // The form comes back with what was entered (never the password) and the field named.
    let refuse = |message: String, field: Option<&str>| {
        let page = NewUserPage {
            chrome: Chrome::new(&admin, "users").error(Some(message)),
            groups: field_groups(
                |spec| form.get(spec.name).cloned().unwrap_or_default(),
                field,
            ),
            policy: policy_text(&state),
            password_invalid: field == Some("password"),
        };
        render(StatusCode::UNPROCESSABLE_ENTITY, &page)
    };
    let password = form.get("password").map(String::as_str).unwrap_or_default();
    let confirm = form.get("confirm").map(String::as_str).unwrap_or_default();
    if password != confirm {
        return Ok(refuse(
            "password: the two passwords differ; type the same password twice.".into(),
            Some("password"),
        ));
    }
    let password = (!password.is_empty()).then(|| SecretString::from(password.to_string()));
    let changes = changes_for_create(&form);
    match state
        .directory
        .create_user(&admin.actor(), &changes, password.as_ref(), Utc::now())
        .await
    {
        Ok(user) => Ok(redirect_with_notice(
            &format!("/admin/users/{}", user.id),
            &format!(
                "User {} was created{}.",
                user.username,
                if user.has_password() {
                    " with a password"
                } else {
                    " without a password: set one below before they can sign in"
                }
            ),
        )),
        Err(e) if is_refusal(&e) => Ok(refuse(e.to_string(), refused_field(&e))),
        Err(e) => Err(e.into()),
    }
}

// ---------------------------------------------------------------------------------------------
// Detail, edit, state, password, delete

struct AttributeLine {
    name: &'static str,
    /// The catalogue's label ("Mobile Phone"); derived names have none but their name.
    label: &'static str,
    value: String,
}

struct FailedJobLine {
    kind: String,
    attempts: i64,
    error: String,
    created_at: String,
}

#[derive(Template)]
#[template(path = "admin/user.html")]
struct UserPage {
    chrome: Chrome,
    id: String,
    username: String,
    display_name: String,
    active: bool,
    has_password: bool,
    password_changed: String,
    password_expired: bool,
    created: String,
    updated: String,
    attributes: Vec<AttributeLine>,
    /// `unbound`, `pending`, `bound` or `failed`.
    binding: String,
    immutable_id: String,
    upn: String,
    object_id: String,
    last_sync: String,
    last_error: String,
    password_pushed: bool,
    queued_jobs: Vec<String>,
    failed_jobs: Vec<FailedJobLine>,
    events: Vec<super::events::EventLine>,
    events_url: String,
    groups: Vec<FieldGroup>,
    policy: String,
    password_invalid: bool,
    must_change_password: bool,
    /// The second factors, in words ("Authenticator app, 10 recovery codes" or "None").
    mfa_factors: String,
    /// Whether any factor can be reset.
    has_factors: bool,
    /// `[mfa] policy` is `chosen` (the per-user switch shows).
    mfa_chosen_policy: bool,
    mfa_required: bool,
    /// The policy makes this user pass a second factor.
    mfa_enforced: bool,
}

/// What an edit form shows instead of the stored values after a refusal.
struct Refused<'a> {
    form: Option<&'a HashMap<String, String>>,
    field: Option<&'static str>,
}

async fn user_page(
    state: &AppState,
    chrome: Chrome,
    user: &User,
    refused: Refused<'_>,
) -> Result<UserPage, AppError> {
    let status = state
        .sync
        .user_status(user)
        .await
        .map_err(|e| AppError::Internal(e.to_string()))?;
    // Events name users by username (their target).
    let events = state
        .store
        .recent_events_for(&user.username, RECENT_EVENTS)
        .await?
        .into_iter()
        .map(super::events::EventLine::from)
        .collect();
    let groups = field_groups(
        |spec| match refused.form.and_then(|form| form.get(spec.name)) {
            Some(typed) => typed.clone(),
            None => user.get(spec.attribute).unwrap_or_default().to_string(),
        },
        refused.field,
    );
    let mfa = state.idp.mfa();
    let factors = mfa.factors(&user.id).await?;
    let mut words = Vec::new();
    if factors.totp {
        words.push("authenticator app".to_string());
    }
    if factors.passkeys > 0 {
        words.push(format!("{} passkey(s)", factors.passkeys));
    }
    if factors.recovery_codes > 0 {
        words.push(format!("{} unused recovery codes", factors.recovery_codes));
    }
    let rfc = |t: Option<String>| {
        t.and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| display_time(Some(t.timestamp_millis())))
            .unwrap_or_default()
    };
    Ok(UserPage {
        chrome,
        id: user.id.clone(),
        username: user.username.clone(),
        display_name: user.display_name(),
        active: user.state == UserState::Active,
        has_password: user.has_password(),
        password_changed: display_time(user.password_changed_at),
        password_expired: user.has_password() && state.directory.password_expired(user, Utc::now()),
        created: display_time(Some(user.created_at)),
        updated: display_time(Some(user.updated_at)),
        attributes: User::attribute_names()
            .into_iter()
            .map(|name| AttributeLine {
                name,
                label: match crate::attributes::Attribute::parse(name) {
                    Some(a) => a.spec().label,
                    None if name == "displayName" => "Display Name",
                    None => "Immutable ID",
                },
                value: user.attribute(name).unwrap_or_default(),
            })
            .collect(),
        binding: status
            .state
            .unwrap_or(BindingState::Unbound)
            .as_str()
            .to_string(),
        immutable_id: status.immutable_id.unwrap_or_default(),
        upn: status.user_principal_name.unwrap_or_default(),
        object_id: status.m365_object_id.unwrap_or_default(),
        last_sync: rfc(status.last_sync_at),
        last_error: status.last_error.unwrap_or_default(),
        password_pushed: status.password_pushed,
        queued_jobs: status.queued_jobs,
        failed_jobs: status
            .failed_jobs
            .into_iter()
            .map(|j| FailedJobLine {
                kind: j.kind,
                attempts: j.attempts,
                error: j.error.unwrap_or_default(),
                created_at: rfc(Some(j.created_at)),
            })
            .collect(),
        events,
        events_url: format!(
            "/admin/events?{}",
            url::form_urlencoded::Serializer::new(String::new())
                .append_pair("user", &user.username)
                .finish()
        ),
        groups,
        policy: policy_text(state),
        password_invalid: refused.field == Some("password"),
        must_change_password: user.must_change_password,
        has_factors: !words.is_empty(),
        mfa_factors: if words.is_empty() {
            "none".into()
        } else {
            words.join(", ")
        },
        mfa_chosen_policy: mfa.policy() == crate::mfa::MfaPolicy::Chosen,
        mfa_required: user.mfa_required,
        mfa_enforced: mfa.required_for(user),
    })
}

async fn require_password_change(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let user = find(&state, &id).await?;
    let updated = state
        .directory
        .require_password_change(&admin.actor(), &user.id, Utc::now())
        .await?;
    let done = format!(
        "{} must choose a new password at their next sign-in.",
        updated.username
    );
    Ok(redirect_with_notice(
        &format!("/admin/users/{}", updated.id),
        &notice(&updated, &done),
    ))
}

async fn reset_mfa(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let user = find(&state, &id).await?;
    let mfa = state.idp.mfa();
    mfa.reset(&admin.actor(), &user, Utc::now()).await?;
    let done = if mfa.required_for(&user) {
        format!(
            "Every second factor of {} was removed; they set up a new one at their next sign-in.",
            user.username
        )
    } else {
        format!("Every second factor of {} was removed.", user.username)
    };
    Ok(redirect_with_notice(
        &format!("/admin/users/{}", user.id),
        &notice(&user, &done),
    ))
}

#[derive(Deserialize)]
struct MfaRequiredForm {
    required: String,
}

async fn set_mfa_required(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
    Path(id): Path<String>,
    Form(form): Form<MfaRequiredForm>,
) -> Result<Response, AppError> {
    let user = find(&state, &id).await?;
    let required = match form.required.as_str() {
        "true" => true,
        "false" => false,
        other => {
            return Err(AppError::bad_request(
                "Unknown choice",
                format!("{other:?} is neither true nor false."),
            ))
        }
    };
    state
        .idp
        .mfa()
        .set_required(&admin.actor(), &user, required, Utc::now())
        .await?;
    let done = if required {
        format!(
            "{} must use a second factor from their next sign-in.",
            user.username
        )
    } else {
        format!("{} no longer needs a second factor.", user.username)
    };
    Ok(redirect_with_notice(
        &format!("/admin/users/{}", user.id),
        &notice(&user, &done),
    ))
}

/// The user of a path, or the 404 page.
async fn find(state: &AppState, id: &str) -> Result<User, AppError> {
    match state.directory.get_user(id).await {
        Ok(user) => Ok(user),
        Err(DirectoryError::NotFound(_)) => Err(AppError::NotFound),
        Err(e) => Err(e.into()),
    }
}

/// The user's page again with a refusal (status 422, or 409 for a conflict with the user's
/// state), keeping what the admin typed in the edit form.
async fn refuse(
    state: &AppState,
    admin: &AdminPrincipal,
    user: &User,
    err: &DirectoryError,
    form: Option<&HashMap<String, String>>,
) -> Result<Response, AppError> {
    let field = refused_field(err);
    let status = match err {
        DirectoryError::Bound(_) | DirectoryError::SyncPending(_) => StatusCode::CONFLICT,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    let chrome = Chrome::new(admin, "users").error(Some(err.to_string()));
    let page = user_page(state, chrome, user, Refused { form, field }).await?;
    Ok(render(status, &page))
}

/// A notice for a change, saying when it reaches Microsoft 365 for a bound user.
fn notice(user: &User, done: &str) -> String {
    if user
        .m365
        .as_ref()
        .is_some_and(|b| b.state != BindingState::Unbound)
    {
        format!("{done} The change reaches Microsoft 365 within seconds.")
    } else {
        done.to_string()
    }
}

async fn detail(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
    Notice(flash): Notice,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let user = find(&state, &id).await?;
    let chrome = Chrome::new(&admin, "users").flash(flash);
    let page = user_page(
        &state,
        chrome,
        &user,
        Refused {
            form: None,
            field: None,
        },
    )
    .await?;
    Ok(render(StatusCode::OK, &page))
}

async fn edit(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
    Path(id): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Result<Response, AppError> {
    let user = find(&state, &id).await?;
    let changes = changes_for_edit(&user, &form);
    let path = format!("/admin/users/{}", user.id);
    if changes.is_empty() {
        return Ok(redirect_with_notice(&path, "Nothing was changed."));
    }
    match state
        .directory
        .update_user(&admin.actor(), &user.id, &changes, Utc::now())
        .await
    {
        Ok(updated) => {
            let done = format!(
                "Saved {} of {}.",
                changes.changed_fields().join(", "),
                updated.username
            );
            Ok(redirect_with_notice(&path, &notice(&updated, &done)))
        }
        Err(e) if is_refusal(&e) => refuse(&state, &admin, &user, &e, Some(&form)).await,
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
struct StateForm {
    state: String,
}

async fn set_state(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
    Path(id): Path<String>,
    Form(form): Form<StateForm>,
) -> Result<Response, AppError> {
    let user = find(&state, &id).await?;
    let target = match form.state.as_str() {
        "active" => UserState::Active,
        "suspended" => UserState::Suspended,
        other => {
            return Err(AppError::bad_request(
                "Unknown state",
                format!("{other:?} is not a user state; use active or suspended."),
            ))
        }
    };
    let updated = state
        .directory
        .set_state(&admin.actor(), &user.id, target, Utc::now())
        .await?;
    let done = match target {
        UserState::Active => format!("{} is active again and can sign in.", updated.username),
        UserState::Suspended => format!(
            "{} is suspended: they cannot sign in, and their sign-in sessions were ended.",
            updated.username
        ),
    };
    Ok(redirect_with_notice(
        &format!("/admin/users/{}", updated.id),
        &notice(&updated, &done),
    ))
}

#[derive(Deserialize)]
struct PasswordForm {
    password: String,
    confirm: String,
}

async fn reset_password(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
    Path(id): Path<String>,
    Form(form): Form<PasswordForm>,
) -> Result<Response, AppError> {
    let user = find(&state, &id).await?;
    if form.password != form.confirm {
        let err = DirectoryError::Invalid {
            field: "password",
            reason: "the two passwords differ; type the same password twice".into(),
        };
        return refuse(&state, &admin, &user, &err, None).await;
    }
    let password = SecretString::from(form.password);
    match state
        .directory
        .set_password(&admin.actor(), &user.id, &password, Utc::now())
        .await
    {
        Ok(()) => Ok(redirect_with_notice(
            &format!("/admin/users/{}", user.id),
            &notice(
                &user,
                &format!("The password of {} was set.", user.username),
            ),
        )),
        Err(e) if is_refusal(&e) => refuse(&state, &admin, &user, &e, None).await,
        Err(e) => Err(e.into()),
    }
}

async fn delete(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let user = find(&state, &id).await?;
    match state
        .directory
        .delete_user(&admin.actor(), &user.id, Utc::now())
        .await
    {
        Ok(()) => Ok(redirect_with_notice(
            "/admin/users",
            &format!("User {} was deleted.", user.username),
        )),
        Err(e) if is_refusal(&e) => refuse(&state, &admin, &user, &e, None).await,
        Err(e) => Err(e.into()),
    }
}
