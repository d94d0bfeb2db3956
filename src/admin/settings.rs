//! Console page: admin accounts and API keys (created here, shown once, revoked here).

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Form, Router};
use chrono::Utc;
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::{display_time, Chrome, Notice};
use crate::directory::{AdminAction, AdminRole, DirectoryError};
use crate::server::AppState;
use crate::store::FactorOwner;
use crate::web::{render, AdminPrincipal, AppError};

/// Console routes of this page.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/settings", get(page))
        .route("/admin/settings/keys", post(create_key))
        .route("/admin/settings/keys/{id}/revoke", post(revoke_key))
        .route("/admin/settings/admins", post(create_admin))
        .route("/admin/settings/admins/{name}/disable", post(disable_admin))
        .route("/admin/settings/admins/{name}/enable", post(enable_admin))
        .route("/admin/settings/admins/{name}/delete", post(delete_admin))
        .route("/admin/settings/admins/{name}/role", post(set_role))
        .route("/admin/settings/admins/{name}/reset", post(reset_admin))
}

struct KeyLine {
    id: String,
    name: String,
    prefix: String,
    role: String,
    created: String,
    created_by: String,
    last_used: String,
    revoked: bool,
}

struct AdminLine {
    username: String,
    role: String,
    full_admin: bool,
    created: String,
    must_change: bool,
    disabled: bool,
    /// A confirmed authenticator app.
    mfa: bool,
    /// The signed-in admin's own row (no buttons: nobody changes their own account here).
    own: bool,
    /// The only active full admin: cannot be disabled, deleted or made read-only.
    last_full: bool,
}

#[derive(Template)]
#[template(path = "admin/settings.html")]
struct SettingsPage {
    chrome: Chrome,
    keys: Vec<KeyLine>,
    admins: Vec<AdminLine>,
    /// (name, key) of a key just created: shown once.
    new_key: Option<(String, String)>,
    /// (username, one-time password) of an admin just created: shown once.
    new_password: Option<(String, String)>,
    /// An admin's password just reset: shown once.
    reset: Option<ResetLine>,
    /// The signed-in admin has a confirmed authenticator app.
    own_mfa: bool,
}

/// An admin's password just reset, for showing once.
struct ResetLine {
    username: String,
    password: String,
    mfa_removed: bool,
}

async fn build(
    state: &AppState,
    chrome: Chrome,
    new_key: Option<(String, String)>,
    new_password: Option<(String, String)>,
) -> Result<SettingsPage, AppError> {
    let keys = state
        .store
        .list_api_keys()
        .await?
        .into_iter()
        .map(|k| KeyLine {
            id: k.id,
            name: k.name,
            prefix: k.prefix,
            role: k.role,
            created: display_time(Some(k.created_at)),
            created_by: k.created_by,
            last_used: display_time(k.last_used_at),
            revoked: k.revoked_at.is_some(),
        })
        .collect();
    let rows = state.store.list_admins().await?;
    let active_full = rows
        .iter()
        .filter(|a| a.role == AdminRole::Admin.as_str() && a.disabled_at.is_none())
        .count();
    let mut admins = Vec::with_capacity(rows.len());
    let mut own_mfa = false;
    for a in rows {
        let mfa = state
            .mfa
            .owner_factors(FactorOwner::Admin(&a.id))
            .await?
            .totp;
        let own = a.username == chrome.admin;
        own_mfa |= own && mfa;
        let full_admin = a.role == AdminRole::Admin.as_str();
        admins.push(AdminLine {
            last_full: full_admin && a.disabled_at.is_none() && active_full <= 1,
            full_admin,
            own,
            mfa,
            disabled: a.disabled_at.is_some(),
            username: a.username,
            role: a.role,
            created: display_time(Some(a.created_at)),
            must_change: a.must_change_password == 1,
        });
    }
    Ok(SettingsPage {
        chrome,
        keys,
        admins,
        new_key,
        new_password,
        reset: None,
        own_mfa,
    })
}

async fn page(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
    Notice(notice): Notice,
) -> Result<Response, AppError> {
    let page = build(
        &state,
        Chrome::new(&admin, "settings").flash(notice),
        None,
        None,
    )
    .await?;
    Ok(render(StatusCode::OK, &page))
}

#[derive(Deserialize)]
struct KeyForm {
    name: String,
    role: String,
}

async fn create_key(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
    Form(form): Form<KeyForm>,
) -> Result<Response, AppError> {
    let role = AdminRole::parse(&form.role);
    let created = match role {
        Ok(role) => {
            state
                .directory
                .create_api_key(&admin.actor(), &form.name, role, Utc::now())
                .await
        }
        Err(e) => Err(e),
    };
    let chrome = Chrome::new(&admin, "settings");
    match created {
        // Rendered directly (not redirected): the key must never travel in a URL or cookie.
        Ok(key) => {
            let page = build(
                &state,
                chrome,
                Some((key.row.name.clone(), key.key.expose_secret().to_string())),
                None,
            )
            .await?;
            Ok(render(StatusCode::OK, &page))
        }
        Err(e @ (DirectoryError::ApiKeyName | DirectoryError::UnknownRole(_))) => {
            let page = build(&state, chrome.error(Some(e.to_string())), None, None).await?;
            Ok(render(StatusCode::UNPROCESSABLE_ENTITY, &page))
        }
        Err(e) => Err(e.into()),
    }
}

async fn revoke_key(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let revoked = state
        .directory
        .revoke_api_key(&admin.actor(), &id, Utc::now())
        .await?;
    if !revoked {
        return Err(AppError::NotFound);
    }
    Ok(super::redirect_with_notice(
        "/admin/settings",
        "The API key was revoked; requests with it are refused from now on.",
    ))
}

#[derive(Deserialize)]
struct AdminForm {
    username: String,
    role: String,
}

async fn create_admin(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
    Form(form): Form<AdminForm>,
) -> Result<Response, AppError> {
    let chrome = Chrome::new(&admin, "settings");
    let result = match AdminRole::parse(&form.role) {
        Ok(role) => {
            state
                .directory
                .create_admin(&admin.actor(), &form.username, role, Utc::now())
                .await
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(password) => {
            let page = build(
                &state,
                chrome,
                None,
                Some((
                    form.username.trim().to_lowercase(),
                    password.expose_secret().to_string(),
                )),
            )
            .await?;
            Ok(render(StatusCode::OK, &page))
        }
        Err(
            e @ (DirectoryError::AdminExists(_)
            | DirectoryError::Invalid { .. }
            | DirectoryError::UnknownRole(_)),
        ) => {
            let page = build(&state, chrome.error(Some(e.to_string())), None, None).await?;
            Ok(render(StatusCode::UNPROCESSABLE_ENTITY, &page))
        }
        Err(e) => Err(e.into()),
    }
}

/// A refused change to an admin account, shown on the page with what to do.
async fn admin_refused(
    state: &AppState,
    admin: &AdminPrincipal,
    err: DirectoryError,
) -> Result<Response, AppError> {
    let status = match err {
        DirectoryError::LastAdmin(_) | DirectoryError::OwnAccount(_) => StatusCode::CONFLICT,
        DirectoryError::NoAdmin(_) => StatusCode::NOT_FOUND,
        DirectoryError::UnknownRole(_) => StatusCode::UNPROCESSABLE_ENTITY,
        other => return Err(other.into()),
    };
    let chrome = Chrome::new(admin, "settings").error(Some(err.to_string()));
    let page = build(state, chrome, None, None).await?;
    Ok(render(status, &page))
}

async fn change(
    state: &AppState,
    admin: &AdminPrincipal,
    name: &str,
    action: AdminAction,
    notice: &str,
) -> Result<Response, AppError> {
    match state
        .directory
        .change_admin(
            &admin.actor(),
            admin.acting_admin.as_deref(),
            name,
            action,
            Utc::now(),
        )
        .await
    {
        Ok(()) => Ok(super::redirect_with_notice("/admin/settings", notice)),
        Err(err) => admin_refused(state, admin, err).await,
    }
}

async fn disable_admin(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
    Path(name): Path<String>,
) -> Result<Response, AppError> {
    let notice = format!(
        "Admin {name} was disabled: signed out everywhere, sign-in and their API keys refused."
    );
    change(&state, &admin, &name, AdminAction::Disable, &notice).await
}

async fn enable_admin(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
    Path(name): Path<String>,
) -> Result<Response, AppError> {
    let notice = format!("Admin {name} was enabled and can sign in again.");
    change(&state, &admin, &name, AdminAction::Enable, &notice).await
}

async fn delete_admin(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
    Path(name): Path<String>,
) -> Result<Response, AppError> {
    let notice = format!("Admin {name} was deleted; the API keys they created were revoked.");
    change(&state, &admin, &name, AdminAction::Delete, &notice).await
}

#[derive(Deserialize)]
struct RoleForm {
    role: String,
}

async fn set_role(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
    Path(name): Path<String>,
    Form(form): Form<RoleForm>,
) -> Result<Response, AppError> {
    let role = match AdminRole::parse(&form.role) {
        Ok(role) => role,
        Err(err) => return admin_refused(&state, &admin, err).await,
    };
    let notice = match role {
        AdminRole::Admin => format!("Admin {name} is now a full admin."),
        AdminRole::ReadOnly => format!("Admin {name} is now read-only."),
    };
    change(&state, &admin, &name, AdminAction::SetRole(role), &notice).await
}

#[derive(Deserialize)]
struct ResetForm {
    /// A checkbox: present when ticked.
    remove_mfa: Option<String>,
}

async fn reset_admin(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
    Path(name): Path<String>,
    Form(form): Form<ResetForm>,
) -> Result<Response, AppError> {
    let result = state
        .directory
        .reset_admin_password(
            &admin.actor(),
            admin.acting_admin.as_deref(),
            &name,
            form.remove_mfa.is_some(),
            Utc::now(),
        )
        .await;
    match result {
        // Rendered directly (not redirected): the password must never travel in a URL or
        // cookie.
        Ok(reset) => {
            let mut page = build(&state, Chrome::new(&admin, "settings"), None, None).await?;
            page.reset = Some(ResetLine {
                username: name.trim().to_lowercase(),
                password: reset.password.expose_secret().to_string(),
                mfa_removed: reset.mfa_removed,
            });
            Ok(render(StatusCode::OK, &page))
        }
        Err(err) => admin_refused(&state, &admin, err).await,
    }
}
