//! The user portal at `/`: an employee's own account (profile, what goes to Microsoft 365),
//! their password (change, and "forgot password" by emailed link), the Microsoft 365 tile and
//! sign-out. Server-rendered like the admin console, with the same CSP and CSRF discipline.
//!
//! The portal signs users in to the SSO session itself (`idbridge_session`, an `sso_sessions`
//! row): signed in here is signed in for Microsoft 365 and the other way round.
//!
//! `service` is the self-service logic (no HTTP); `pages` the signed-in pages and sign-in;
//! `reset` the forgot-password pages.

mod mfa;
mod pages;
mod reset;
mod service;

pub use service::{
    reset_recipient, ChangeOutcome, LinkRefusal, ResetOutcome, ResetRequest, SelfService,
    SelfServiceError, ValidLink,
};

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use axum_extra::extract::cookie::CookieJar;
use chrono::{DateTime, Utc};
use tower_http::set_header::SetResponseHeaderLayer;

use crate::directory::User;
use crate::events::{kind, Actor};
use crate::i18n::Msg;
use crate::server::AppState;
use crate::sso::SESSION_COOKIE;
use crate::web::{new_cookie, new_token, token_hash, AppError};

/// Ties the signed-out forms (sign-in, forgot password, reset) to the browser that loaded them
/// (double-submit: the form's `csrf` field must equal this cookie), against login CSRF.
const FORM_COOKIE: &str = "idbridge_portal_form";
/// A one-time notice from a POST to the page it redirects to.
const NOTICE_COOKIE: &str = "idbridge_portal_notice";

/// The portal's Content-Security-Policy: scripts and styles from idbridge only (the inline
/// style of `base.html` by its hash, for the signed-out pages), forms post only here and to
/// Microsoft's sign-in host (signing out redirects there, and Chromium applies form-action
/// to a form's redirects), no framing. `connect-src 'self'` is for the WebAuthn script.
fn portal_csp(login_base_url: &str) -> HeaderValue {
    let style =
        crate::web::front_door::inline_hash(include_str!("../../templates/base.html"), "style");
    let login = url::Url::parse(login_base_url)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_default();
    let policy = format!(
        "default-src 'none'; script-src 'self'; style-src 'self' {style}; img-src 'self' data:; \
         connect-src 'self'; form-action 'self' {login}; frame-ancestors 'none'; \
         base-uri 'none'; object-src 'none'"
    );
    HeaderValue::from_str(&policy)
        .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"))
}

/// The portal's routes.
pub fn router(state: AppState) -> Router<AppState> {
    let csp = portal_csp(&state.config.m365.login_base_url);
    let signed_in =
        pages::signed_in_router()
            .merge(mfa::router())
            .route_layer(middleware::from_fn_with_state(
                state,
                require_portal_session,
            ));
    Router::new()
        .merge(signed_in)
        .merge(pages::public_router())
        .merge(reset::router())
        .route("/portal/static/portal.css", get(portal_css))
        .layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            csp,
        ))
}

async fn portal_css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("../../templates/portal/portal.css"),
    )
}

/// A signed-in portal user, put in the request's extensions by [`require_portal_session`].
#[derive(Debug, Clone)]
pub struct PortalSession {
    /// The hash of the session cookie's token (the `sso_sessions` key).
    pub session_hash: String,
    pub user: User,
    /// The token every form of this session carries.
    pub csrf: String,
}

/// The CSRF token of an SSO session: derived from its cookie's secret token, so it needs no
/// column of its own and is worthless without the cookie (which no other site can read). The
/// session cookie is `SameSite=None` over https (Microsoft's cross-site POST must carry it),
/// so this token, not SameSite, is what stops cross-site forms.
fn csrf_of(session_token: &str) -> String {
    token_hash(&format!("idbridge portal csrf\u{0}{session_token}"))
}

/// The live session of this browser, if any.
pub async fn current_session(
    state: &AppState,
    jar: &CookieJar,
    now: DateTime<Utc>,
) -> Result<Option<PortalSession>, AppError> {
    let Some(token) = jar.get(SESSION_COOKIE).map(|c| c.value().to_string()) else {
        return Ok(None);
    };
    let Some(cached) = state.idp.session_user(&token, now).await? else {
        return Ok(None);
    };
    let (session, user) = &*cached;
    Ok(Some(PortalSession {
        session_hash: session.id_hash.clone(),
        user: user.clone(),
        csrf: csrf_of(&token),
    }))
}

fn client_ip(request: &Request) -> Option<String> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
}

/// Portal guard: a live SSO session (else the sign-in page) and this session's CSRF token on
/// every state-changing request. Checked here so no handler can forget.
async fn require_portal_session(
    State(state): State<AppState>,
    jar: CookieJar,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_string();
    let ip = client_ip(&request);
    let session = match current_session(&state, &jar, Utc::now()).await {
        Ok(Some(session)) => session,
        Ok(None) => {
            let target = format!(
                "/login?next={}",
                url::form_urlencoded::byte_serialize(path.as_bytes()).collect::<String>()
            );
            return Redirect::to(&target).into_response();
        }
        Err(err) => return err.into_response(),
    };
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        request = match crate::web::csrf::check_request(request, &session.csrf).await {
            Ok(request) => request,
            Err(crate::web::csrf::CsrfRefusal::TooLarge) => {
                return AppError::bad_request(
                    Msg::new("err-form-too-large-title").text(),
                    Msg::new("err-form-too-large").text(),
                )
                .into_response()
            }
            Err(crate::web::csrf::CsrfRefusal::Mismatch) => {
                crate::web::session::record_refusal(
                    &state,
                    kind::PORTAL_ACCESS_DENIED,
                    &Actor::User(session.user.username.clone()),
                    "csrf",
                    &path,
                    ip,
                )
                .await;
                return crate::web::session::forbidden_page(
                    &Msg::new("err-csrf-title").text(),
                    &Msg::new("err-csrf-message").text(),
                );
            }
        };
    }
    request.extensions_mut().insert(session);
    let mut response = next.run(request).await;
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The double-submit token of this browser's signed-out forms: the cookie's, or a new one set
/// on the returned jar.
fn form_token(state: &AppState, jar: CookieJar) -> (CookieJar, String) {
    if let Some(existing) = jar.get(FORM_COOKIE).map(|c| c.value().to_string()) {
        if existing.len() == 64 {
            return (jar, existing);
        }
    }
    let token = new_token();
    let jar = jar.add(new_cookie(
        FORM_COOKIE,
        token.clone(),
        state.config.is_https(),
        false,
    ));
    (jar, token)
}

/// Whether a signed-out form came from a page this browser loaded.
fn form_ok(jar: &CookieJar, presented: &str) -> bool {
    jar.get(FORM_COOKIE)
        .is_some_and(|c| crate::web::csrf::tokens_match(presented, c.value()))
}

/// Redirects with a one-time notice for the portal page at `to`.
fn redirect_with_notice(to: &str, notice: &str) -> Response {
    crate::web::redirect_with_notice(to, NOTICE_COOKIE, "/", notice)
}

/// The notice a POST left, and the jar that clears it (shown once).
fn take_notice(jar: CookieJar) -> (Option<String>, CookieJar) {
    let notice = crate::web::notice_in(&jar, NOTICE_COOKIE);
    let jar = if notice.is_some() {
        jar.remove(axum_extra::extract::cookie::Cookie::build(NOTICE_COOKIE).path("/"))
    } else {
        jar
    };
    (notice, jar)
}
