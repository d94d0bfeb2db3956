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
use crate::directory::{AdminRole, DirectoryError};
use crate::server::AppState;
use crate::web::{render, AdminPrincipal, AppError};

/// Console routes of this page.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/settings", get(page))
        .route("/admin/settings/keys", post(create_key))
        .route("/admin/settings/keys/{id}/revoke", post(revoke_key))
        .route("/admin/settings/admins", post(create_admin))
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
    created: String,
    must_change: bool,
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
    let admins = state
        .store
        .list_admins()
        .await?
        .into_iter()
        .map(|a| AdminLine {
            username: a.username,
            role: a.role,
            created: display_time(Some(a.created_at)),
            must_change: a.must_change_password == 1,
        })
        .collect();
    Ok(SettingsPage {
        chrome,
        keys,
        admins,
        new_key,
        new_password,
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
