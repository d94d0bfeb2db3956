//! Who is calling the console and the API: admin console sessions (cookie, idle and absolute
//! expiry, CSRF token) and API keys. Checked by middleware, so no handler can forget.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::cookie::CookieJar;
use chrono::Utc;
use serde_json::json;

use super::{token_hash, ApiError};
use crate::directory::AdminRole;
use crate::events::{kind, Actor, NewEvent};
use crate::server::AppState;

/// The console session cookie (HttpOnly, SameSite=Strict, Secure over https).
pub const ADMIN_COOKIE: &str = "idbridge_admin";
pub use super::csrf::CSRF_HEADER;
/// The session still owes a code from the admin's authenticator app (or a recovery code).
pub const PENDING_CODE: &str = "code";
/// The session must set up an authenticator app first (`[admin] require_mfa`).
pub const PENDING_ENROL: &str = "enrol";
/// Sessions are marked active at most this often (one write per minute, not per request).
const TOUCH_EVERY_MS: i64 = 60_000;

/// The admin (or API key) behind a request, put in the request's extensions by the middleware.
#[derive(Debug, Clone)]
pub struct AdminPrincipal {
    pub admin_id: String,
    /// The admin's username, or the API key's name.
    pub name: String,
    pub role: AdminRole,
    /// The session's CSRF token (console only), to put in forms.
    pub csrf: String,
    /// The session's hash (console only).
    pub session_hash: Option<String>,
    /// The API key's id (API only).
    pub api_key_id: Option<String>,
    pub must_change_password: bool,
    /// The admin account acting: the signed-in admin, or the admin who created the API key
    /// (none for keys made by the CLI). Nobody disables or deletes their own account.
    pub acting_admin: Option<String>,
}

impl AdminPrincipal {
    /// The actor recorded in events.
    pub fn actor(&self) -> Actor {
        match &self.api_key_id {
            Some(_) => Actor::ApiKey(self.name.clone()),
            None => Actor::Admin(self.name.clone()),
        }
    }

    /// Whether this caller may change things.
    pub fn can_write(&self) -> bool {
        self.role.can_write()
    }
}

fn client_ip(request: &Request) -> Option<String> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
}

/// Records a refusal: the first of its kind from an address in a minute at once, the rest as
/// one aggregated event per minute (a guesser must not write a row per guess).
pub async fn record_refusal(
    state: &AppState,
    event_type: &'static str,
    actor: &Actor,
    reason: &str,
    path: &str,
    ip: Option<String>,
) {
    let now = Utc::now();
    let first = state.refusals.note(
        event_type,
        &actor.to_string(),
        reason,
        ip.as_deref(),
        path,
        now,
    );
    if !first {
        return;
    }
    let event = NewEvent::new(now, actor, event_type, None)
        .details(json!({"reason": reason, "path": path, "count": 1}))
        .client_ip(ip);
    if let Err(err) = state.store.record_event(&event).await {
        tracing::warn!(%err, "could not record a refused request");
    }
}

async fn deny(state: &AppState, actor: &Actor, reason: &str, path: &str, ip: Option<String>) {
    record_refusal(state, kind::ADMIN_ACCESS_DENIED, actor, reason, path, ip).await;
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Console guard: a live session (else the sign-in page), the one-time password replaced,
/// a valid CSRF token on every state-changing request, and a role that may write.
pub async fn require_admin_session(
    State(state): State<AppState>,
    jar: CookieJar,
    mut request: Request,
    next: Next,
) -> Response {
    let now = Utc::now().timestamp_millis();
    let path = request.uri().path().to_string();
    let ip = client_ip(&request);
    let to_login = || {
        let target = format!(
            "/admin/login?next={}",
            url::form_urlencoded::byte_serialize(path.as_bytes()).collect::<String>()
        );
        Redirect::to(&target).into_response()
    };
    let Some(cookie) = jar.get(ADMIN_COOKIE) else {
        return to_login();
    };
    let hash = token_hash(cookie.value());
    let session = match state.store.find_admin_session(&hash).await {
        Ok(Some(s)) => s,
        Ok(None) => return to_login(),
        Err(err) => return super::AppError::from(err).into_response(),
    };
    let idle_ms = (state.config.admin.session_idle_minutes.max(1) * 60_000) as i64;
    if session.expires_at <= now || session.last_seen_at + idle_ms <= now {
        let _ = state.store.delete_admin_session(&hash, None).await;
        return to_login();
    }
    let principal = AdminPrincipal {
        admin_id: session.admin_id.clone(),
        name: session.username.clone(),
        role: AdminRole::parse(&session.role).unwrap_or(AdminRole::ReadOnly),
        csrf: session.csrf_token.clone(),
        session_hash: Some(hash.clone()),
        api_key_id: None,
        must_change_password: session.must_change_password == 1,
        acting_admin: Some(session.username.clone()),
    };
    // A session that passed the password but owes its second factor reaches only that step.
    if let Some(step) = session.pending_step.as_deref() {
        let page = if step == PENDING_ENROL {
            "/admin/login/enrol"
        } else {
            "/admin/login/code"
        };
        if path != page && path != "/admin/logout" {
            return Redirect::to(page).into_response();
        }
    }
    // Their own password and second factor are every admin's, read-only or not.
    let self_service = path == "/admin/password"
        || path == "/admin/logout"
        || path.starts_with("/admin/login/")
        || path == "/admin/mfa"
        || path.starts_with("/admin/mfa/");
    if principal.must_change_password && !self_service {
        return Redirect::to("/admin/password").into_response();
    }
    if !is_safe(request.method()) {
        request = match super::csrf::check_request(request, &principal.csrf).await {
            Ok(request) => request,
            Err(super::csrf::CsrfRefusal::TooLarge) => {
                return super::AppError::bad_request("Form too large", "The form is too large.")
                    .into_response()
            }
            Err(super::csrf::CsrfRefusal::Mismatch) => {
                deny(&state, &principal.actor(), "csrf", &path, ip).await;
                return forbidden_page(
                    "This form has expired",
                    "The request did not carry this session's security token, so nothing was changed. Reload the page and try again.",
                );
            }
        };
        if !principal.can_write() && !self_service {
            deny(&state, &principal.actor(), "read_only", &path, ip).await;
            return forbidden_page(
                "Read-only access",
                "Your admin account can look at everything but change nothing. Ask a full admin to make this change.",
            );
        }
    }
    if now - session.last_seen_at > TOUCH_EVERY_MS {
        if let Err(err) = state.store.touch_admin_session(&hash, now).await {
            tracing::warn!(%err, "could not record console activity");
        }
    }
    let clear_notice = is_safe(request.method()) && jar.get(crate::admin::NOTICE_COOKIE).is_some();
    request.extensions_mut().insert(principal);
    let mut response = next.run(request).await;
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if clear_notice && !response.headers().contains_key(header::SET_COOKIE) {
        // Shown once: the page that displayed it clears it.
        response.headers_mut().append(
            header::SET_COOKIE,
            HeaderValue::from_static(
                "idbridge_notice=; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=0",
            ),
        );
    }
    response
}

pub(crate) fn forbidden_page(title: &str, message: &str) -> Response {
    super::render(
        StatusCode::FORBIDDEN,
        &super::MessagePage {
            ui: crate::i18n::Ui::current(),
            title,
            message,
            hint: None,
            reference: None,
        },
    )
}

/// API guard: `Authorization: Bearer idb_…` with a live key; 401 without saying what was
/// wrong, 403 for a read-only key on a write. Every refusal is an event.
pub async fn require_api_key(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_string();
    let ip = client_ip(&request);
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|v| v.trim().to_string());
    let key = match presented {
        Some(k) => state.directory.verify_api_key(&k).await,
        None => Ok(None),
    };
    let key = match key {
        Ok(Some(key)) => key,
        Ok(None) => {
            deny(&state, &Actor::Anonymous, "api_key", &path, ip).await;
            return ApiError::unauthorized().into_response();
        }
        Err(err) => return ApiError::from(err).into_response(),
    };
    let principal = AdminPrincipal {
        admin_id: key.id.clone(),
        name: key.name.clone(),
        role: AdminRole::parse(&key.role).unwrap_or(AdminRole::ReadOnly),
        csrf: String::new(),
        session_hash: None,
        api_key_id: Some(key.id.clone()),
        must_change_password: false,
        acting_admin: key.created_by.strip_prefix("admin:").map(str::to_string),
    };
    if !is_safe(request.method()) && !principal.can_write() {
        deny(&state, &principal.actor(), "read_only", &path, ip).await;
        return ApiError::forbidden("this API key is read-only").into_response();
    }
    let now = Utc::now().timestamp_millis();
    if key.last_used_at.is_none_or(|t| now - t > TOUCH_EVERY_MS) {
        let _ = state.store.touch_api_key(&key.id, now).await;
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}
