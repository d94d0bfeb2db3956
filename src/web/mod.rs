//! Shared HTTP plumbing: the error types that become responses (pages and JSON), page
//! rendering, cookies, console sessions and API keys.

pub mod access_log;
mod api_error;
pub mod csrf;
pub mod front_door;
pub mod session;

pub use api_error::{ApiError, ApiErrorBody, ApiErrorDetail};
pub use session::AdminPrincipal;

use askama::Template;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum_extra::extract::cookie::{Cookie, SameSite};

use crate::directory::DirectoryError;
use crate::store::StoreError;

/// A page with a title, a message and an optional hint (errors, refusals, notices).
#[derive(Template)]
#[template(path = "message.html")]
pub struct MessagePage<'a> {
    pub ui: crate::i18n::Ui,
    pub title: &'a str,
    pub message: &'a str,
    pub hint: Option<&'a str>,
    pub reference: Option<&'a str>,
}

/// Renders a template as an HTML response with the given status.
pub fn render(status: StatusCode, template: &impl Template) -> Response {
    match template.render() {
        Ok(body) => (status, [(header::CACHE_CONTROL, "no-store")], Html(body)).into_response(),
        Err(err) => AppError::Internal(format!("template: {err}")).into_response(),
    }
}

/// The only error type handlers return; it shows users a clear page and never internals.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Bad input from a browser or SP: HTTP 400 with a message saying what was wrong.
    #[error("{title}: {message}")]
    BadRequest { title: String, message: String },
    /// Access refused (sign-in refused for a reason the user can act on): HTTP 403.
    #[error("{title}: {message}")]
    Refused {
        title: String,
        message: String,
        hint: String,
        /// What the user quotes to the helpdesk (a code in the refusal's event, and the time).
        reference: Option<String>,
    },
    #[error("not found")]
    NotFound,
    /// Too much load right now (every password hashing worker busy): HTTP 503, try again.
    #[error("busy")]
    Busy,
    /// Anything unexpected: logged with a reference the user can quote.
    #[error("internal error: {0}")]
    Internal(String),
}

impl AppError {
    /// A 400 page.
    pub fn bad_request(title: impl Into<String>, message: impl Into<String>) -> Self {
        AppError::BadRequest {
            title: title.into(),
            message: message.into(),
        }
    }
}

impl From<StoreError> for AppError {
    fn from(err: StoreError) -> Self {
        AppError::Internal(err.to_string())
    }
}

impl From<DirectoryError> for AppError {
    fn from(err: DirectoryError) -> Self {
        match err {
            DirectoryError::Busy => AppError::Busy,
            other => AppError::Internal(other.to_string()),
        }
    }
}

impl From<crate::mfa::MfaError> for AppError {
    fn from(err: crate::mfa::MfaError) -> Self {
        AppError::Internal(err.to_string())
    }
}

impl From<crate::throttle::ThrottleError> for AppError {
    fn from(err: crate::throttle::ThrottleError) -> Self {
        AppError::Internal(err.to_string())
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        // In the language of the request (see `crate::i18n::scope`).
        let ui = crate::i18n::Ui::current();
        let page = |status, title: &str, message: &str, hint: Option<&str>, reference| {
            render(
                status,
                &MessagePage {
                    ui: ui.clone(),
                    title,
                    message,
                    hint,
                    reference,
                },
            )
        };
        match self {
            AppError::BadRequest { title, message } => page(
                StatusCode::BAD_REQUEST,
                &title,
                &message,
                Some(&ui.t("err-bad-request-hint")),
                None,
            ),
            AppError::Refused {
                title,
                message,
                hint,
                reference,
            } => page(
                StatusCode::FORBIDDEN,
                &title,
                &message,
                Some(&hint),
                reference.as_deref(),
            ),
            AppError::NotFound => page(
                StatusCode::NOT_FOUND,
                &ui.t("err-not-found-title"),
                &ui.t("err-not-found-message"),
                None,
                None,
            ),
            AppError::Busy => {
                let mut response = page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &ui.t("err-busy-title"),
                    &ui.t("err-busy-message"),
                    Some(&ui.t("err-busy-hint")),
                    None,
                );
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
                response
            }
            AppError::Internal(detail) => {
                let reference = crate::directory::new_record_id();
                tracing::error!(%reference, %detail, "internal error");
                let body = MessagePage {
                    ui: ui.clone(),
                    title: &ui.t("err-internal-title"),
                    message: &ui.t("err-internal-message"),
                    hint: Some(&ui.t("err-internal-hint")),
                    reference: Some(&reference),
                }
                .render()
                .unwrap_or_else(|_| "internal error".into());
                (StatusCode::INTERNAL_SERVER_ERROR, Html(body)).into_response()
            }
        }
    }
}

/// Builds a cookie with the attributes every idbridge cookie needs: HttpOnly, path `/`, and
/// `Secure` whenever the base URL is https.
///
/// `cross_site` cookies must travel on the cross-site POST from Microsoft's sign-in page, which
/// needs `SameSite=None` (and so `Secure`); over plain http they fall back to `Lax`.
pub fn new_cookie(
    name: &'static str,
    value: String,
    https: bool,
    cross_site: bool,
) -> Cookie<'static> {
    let mut cookie = Cookie::new(name, value);
    cookie.set_http_only(true);
    cookie.set_path("/");
    cookie.set_secure(https);
    cookie.set_same_site(if cross_site && https {
        SameSite::None
    } else {
        SameSite::Lax
    });
    cookie
}

// Token helpers live below every room (domain code makes tokens too); re-exported here for
// the HTTP side.
pub use crate::secrets::{new_token, token_hash};

/// Redirects after a POST with a one-time notice (post/redirect/get, so reloading does not
/// repeat the change). The notice travels in a short-lived cookie `name` on `path`, never in
/// the URL, so a crafted link cannot put text on a page.
pub fn redirect_with_notice(to: &str, name: &str, path: &str, notice: &str) -> Response {
    let value = url::form_urlencoded::byte_serialize(notice.as_bytes()).collect::<String>();
    let cookie = format!("{name}={value}; Path={path}; HttpOnly; SameSite=Strict; Max-Age=60");
    let mut response = axum::response::Redirect::to(to).into_response();
    if let Ok(v) = header::HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response
}

/// The one-time notice a POST left in cookie `name`, if any.
pub fn read_notice(headers: &axum::http::HeaderMap, name: &str) -> Option<String> {
    notice_in(
        &axum_extra::extract::cookie::CookieJar::from_headers(headers),
        name,
    )
}

/// The one-time notice in cookie `name` of `jar`, if any.
pub fn notice_in(jar: &axum_extra::extract::cookie::CookieJar, name: &str) -> Option<String> {
    jar.get(name).map(|c| {
        url::form_urlencoded::parse(format!("n={}", c.value()).as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    })
}

impl From<crate::sso::SsoError> for AppError {
    fn from(err: crate::sso::SsoError) -> Self {
        match err {
            crate::sso::SsoError::Busy => AppError::Busy,
            other => AppError::Internal(other.to_string()),
        }
    }
}

impl From<crate::portal::SelfServiceError> for AppError {
    fn from(err: crate::portal::SelfServiceError) -> Self {
        match err {
            crate::portal::SelfServiceError::Directory(e) => e.into(),
            other => AppError::Internal(other.to_string()),
        }
    }
}

/// A time for display: `2026-11-23 11:15 UTC`, or empty.
pub fn display_time(ms: Option<i64>) -> String {
    use chrono::TimeZone;
    ms.and_then(|ms| chrono::Utc.timestamp_millis_opt(ms).single())
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_default()
}
