//! Admin sign-in, sign-out and password change.

use std::net::SocketAddr;

use askama::Template;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Router};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use chrono::Utc;
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::json;

use super::{Chrome, Notice};
use crate::events::{kind, Actor, NewEvent};
use crate::server::AppState;
use crate::web::session::{ADMIN_COOKIE, PENDING_CODE, PENDING_ENROL};
use crate::web::{new_token, render, token_hash, AdminPrincipal, AppError};

/// The sign-in form's double-submit cookie (login CSRF: the form only works in the browser that
/// loaded it).
const LOGIN_COOKIE: &str = "idbridge_admin_login";

/// Routes without a session.
pub fn public_router() -> Router<AppState> {
    Router::new().route("/admin/login", get(login_page).post(login))
}

/// Routes behind the session guard.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/logout", post(logout))
        .route("/admin/password", get(password_page).post(change_password))
}

#[derive(Template)]
#[template(path = "admin/login.html")]
struct LoginPage {
    csrf: String,
    next: String,
    username: String,
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

/// Only console paths are followed after sign-in (no open redirect).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with("/admin") && !n.starts_with("//") && !n.contains('\\') => {
            n.to_string()
        }
        _ => "/admin".into(),
    }
}

fn cookie(state: &AppState, name: &'static str, value: String) -> Cookie<'static> {
    let mut c = Cookie::new(name, value);
    c.set_http_only(true);
    c.set_path("/admin");
    c.set_secure(state.config.is_https());
    // Lax, not Strict: the admin comes back from Microsoft's consent page by a cross-site
    // redirect and must still be signed in; every change needs the CSRF token anyway.
    c.set_same_site(SameSite::Lax);
    c
}

async fn login_page(
    State(state): State<AppState>,
    jar: CookieJar,
    Query(query): Query<LoginQuery>,
) -> Response {
    let token = new_token();
    let page = LoginPage {
        csrf: token.clone(),
        next: safe_next(query.next.as_deref()),
        username: String::new(),
        error: None,
    };
    let jar = jar.add(cookie(&state, LOGIN_COOKIE, token));
    (jar, render(StatusCode::OK, &page)).into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    csrf: String,
    username: String,
    password: String,
    next: Option<String>,
}

async fn login(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    jar: CookieJar,
    Form(form): Form<LoginForm>,
) -> Result<Response, AppError> {
    let now = Utc::now();
    let ip = Some(addr.ip().to_string());
    let next = safe_next(form.next.as_deref());
    let fresh = new_token();
    let again = |error: &str, status: StatusCode, jar: CookieJar| {
        let page = LoginPage {
            csrf: fresh.clone(),
            next: next.clone(),
            username: form.username.clone(),
            error: Some(error.to_string()),
        };
        let jar = jar.add(cookie(&state, LOGIN_COOKIE, fresh.clone()));
        (jar, render(status, &page)).into_response()
    };
    let form_ok = jar
        .get(LOGIN_COOKIE)
        .is_some_and(|c| crate::web::csrf::tokens_match(&form.csrf, c.value()));
    if !form_ok {
        let event = NewEvent::new(now, &Actor::Anonymous, kind::ADMIN_ACCESS_DENIED, None)
            .details(json!({"reason": "csrf", "path": "/admin/login"}))
            .client_ip(ip);
        state.store.record_event(&event).await?;
        return Ok(again(
            "The sign-in form expired. Please sign in again.",
            StatusCode::FORBIDDEN,
            jar,
        ));
    }
    // Password guessing: the client address locks first, the name only at a higher threshold
    // (counted by the typed name, existing or not), so guessing from one place cannot lock
    // the real admin out. A lock is checked before any hashing.
    let name = form.username.trim().to_lowercase();
    if let Some(locked) = state
        .admin_throttle
        .admit(&name, ip.as_deref(), now)
        .await?
    {
        // Counted, not written per guess: the lock's start is its own event.
        crate::web::session::record_refusal(
            &state,
            kind::ADMIN_LOGIN_THROTTLED,
            &Actor::Anonymous,
            locked.reason_code(),
            "/admin/login",
            ip.clone(),
        )
        .await;
        return Ok(again(
            &locked.message(now),
            StatusCode::TOO_MANY_REQUESTS,
            jar,
        ));
    }
    let password = SecretString::from(form.password.clone());
    let admin = match state
        .directory
        .authenticate_admin(&form.username, &password)
        .await
    {
        Ok(admin) => admin,
        Err(err) => {
            state.admin_throttle.abandoned(&name, ip.as_deref()).await?;
            return Err(err.into());
        }
    };
    let Some(admin) = admin else {
        state.admin_throttle.failed(&name, ip.as_deref()).await?;
        let event = NewEvent::new(
            now,
            &Actor::Anonymous,
            kind::ADMIN_LOGIN_FAILED,
            Some(&name),
        )
        .details(json!({"reason": "wrong username or password"}))
        .client_ip(ip.clone());
        state.store.record_event(&event).await?;
        return Ok(again(
            "Wrong username or password.",
            StatusCode::UNAUTHORIZED,
            jar,
        ));
    };
    if admin.disabled_at.is_some() {
        // The password was right: say why, as for a suspended user; nothing else is counted.
        state.admin_throttle.abandoned(&name, ip.as_deref()).await?;
        let event = NewEvent::new(
            now,
            &Actor::Anonymous,
            kind::ADMIN_LOGIN_FAILED,
            Some(&admin.username),
        )
        .details(json!({"reason": "account disabled"}))
        .client_ip(ip.clone());
        state.store.record_event(&event).await?;
        return Ok(again(
            "This admin account is disabled. Ask another full admin to enable it.",
            StatusCode::FORBIDDEN,
            jar,
        ));
    }
    state.admin_throttle.succeeded(&name, ip.as_deref()).await?;
    let factors = state
        .mfa
        .owner_factors(crate::store::FactorOwner::Admin(&admin.id))
        .await?;
    let pending = if factors.totp {
        Some(PENDING_CODE)
    } else if state.config.admin.require_mfa {
        Some(PENDING_ENROL)
    } else {
        None
    };
    let token = new_token();
    let now_ms = now.timestamp_millis();
    // A session owing its second factor lives only long enough to type a code.
    let expires = match pending {
        Some(_) => now_ms + PENDING_MS,
        None => full_session_expiry(&state, now_ms),
    };
    let event = NewEvent::new(
        now,
        &Actor::Admin(admin.username.clone()),
        kind::ADMIN_LOGIN_SUCCESS,
        Some(&admin.username),
    )
    .details(json!({"secondFactor": "none"}))
    .client_ip(ip.clone());
    state
        .store
        .insert_admin_session(
            &crate::store::NewAdminSession {
                id_hash: &token_hash(&token),
                admin_id: &admin.id,
                csrf_token: &new_token(),
                now_ms,
                expires_at: expires,
                client_ip: ip.as_deref(),
                pending_step: pending,
            },
            pending.is_none().then_some(&event),
        )
        .await?;
    let jar = jar
        .remove(Cookie::build(LOGIN_COOKIE).path("/admin"))
        .add(cookie(&state, ADMIN_COOKIE, token));
    let target = match pending {
        Some(PENDING_ENROL) => "/admin/login/enrol".to_string(),
        Some(_) => "/admin/login/code".to_string(),
        None if admin.must_change_password == 1 => "/admin/password".to_string(),
        None => next,
    };
    Ok((jar, Redirect::to(&target)).into_response())
}

/// How long a session may wait for its second factor.
const PENDING_MS: i64 = 10 * 60_000;

/// When a console session that starts (or completes its second factor) now ends.
pub(crate) fn full_session_expiry(state: &AppState, now_ms: i64) -> i64 {
    now_ms + (state.config.admin.session_max_hours.max(1) * 3_600_000) as i64
}

async fn logout(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
    jar: CookieJar,
) -> Result<Response, AppError> {
    if let Some(hash) = &admin.session_hash {
        let event = NewEvent::new(
            Utc::now(),
            &admin.actor(),
            kind::ADMIN_LOGOUT,
            Some(&admin.name),
        );
        state.store.delete_admin_session(hash, Some(&event)).await?;
    }
    let jar = jar.remove(Cookie::build(ADMIN_COOKIE).path("/admin"));
    let mut response = (jar, Redirect::to("/admin/login")).into_response();
    // Nothing of the console stays in the browser.
    response.headers_mut().insert(
        "clear-site-data",
        HeaderValue::from_static("\"cache\", \"storage\""),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

#[derive(Template)]
#[template(path = "admin/password.html")]
struct PasswordPage {
    chrome: Chrome,
    must_change: bool,
    policy: String,
}

fn policy_text(state: &AppState) -> String {
    let p = state.directory.policy();
    format!(
        "At least {} characters, three of: lowercase, uppercase, digits, symbols; not containing your username.",
        p.min_length
    )
}

async fn password_page(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
    Notice(notice): Notice,
) -> Response {
    let page = PasswordPage {
        chrome: Chrome::new(&admin, "").flash(notice),
        must_change: admin.must_change_password,
        policy: policy_text(&state),
    };
    render(StatusCode::OK, &page)
}

#[derive(Deserialize)]
struct PasswordForm {
    current: String,
    new_password: String,
    confirm: String,
}

async fn change_password(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
    Form(form): Form<PasswordForm>,
) -> Result<Response, AppError> {
    let refuse = |message: String| {
        let page = PasswordPage {
            chrome: Chrome::new(&admin, "").error(Some(message)),
            must_change: admin.must_change_password,
            policy: policy_text(&state),
        };
        render(StatusCode::UNPROCESSABLE_ENTITY, &page)
    };
    if form.new_password != form.confirm {
        return Ok(refuse("The two new passwords differ.".into()));
    }
    let current = SecretString::from(form.current.clone());
    let Some(row) = state
        .directory
        .authenticate_admin(&admin.name, &current)
        .await?
    else {
        let event = NewEvent::new(
            Utc::now(),
            &admin.actor(),
            kind::ADMIN_LOGIN_FAILED,
            Some(&admin.name),
        )
        .details(json!({"reason": "wrong current password at password change"}));
        state.store.record_event(&event).await?;
        return Ok(refuse("The current password is wrong.".into()));
    };
    if form.new_password == form.current {
        return Ok(refuse(
            "Choose a password different from the current one.".into(),
        ));
    }
    let new_password = SecretString::from(form.new_password.clone());
    match state
        .directory
        .change_admin_password(
            &row,
            &new_password,
            admin.session_hash.as_deref(),
            Utc::now(),
        )
        .await
    {
        Ok(()) => Ok(super::redirect_with_notice(
            "/admin",
            "Your password was changed. Your other sessions were signed out.",
        )),
        Err(crate::directory::DirectoryError::Policy(v)) => {
            Ok(refuse(format!("Password rejected: {v}")))
        }
        Err(e) => Err(e.into()),
    }
}
