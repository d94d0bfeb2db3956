//! The admin console (server-rendered pages) and the JSON API. Handlers are thin: they call the
//! directory, binding/sync and connection services, and map errors in one place
//! (`web::AppError` for pages, `web::ApiError` for JSON).

pub mod api;
mod auth;
mod binding;
mod branding;
mod events;
mod m365;
mod mfa;
mod overview;
mod saml;
mod settings;
mod users;

use axum::http::{header, HeaderValue};
use axum::middleware;
use axum::routing::get;
use axum::Router;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::server::AppState;
use crate::web::session::{require_admin_session, require_api_key};
use crate::web::AdminPrincipal;

/// The console's Content-Security-Policy: no inline script, nothing from elsewhere. Forms may
/// only post here, and to Microsoft's sign-in host (the consent redirect follows a form).
fn console_csp(login_base_url: &str) -> HeaderValue {
    let login = url::Url::parse(login_base_url)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_default();
    let policy = format!(
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         form-action 'self' {login}; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
    );
    HeaderValue::from_str(&policy)
        .unwrap_or_else(|_| HeaderValue::from_static("default-src 'self'"))
}

/// Console, API and callback routes.
pub fn router(state: AppState) -> Router<AppState> {
    let csp = console_csp(&state.config.m365.login_base_url);
    let console = Router::new()
        .merge(auth::router())
        .merge(overview::router())
        .merge(users::router())
        .merge(binding::router())
        .merge(m365::router())
        .merge(saml::router())
        .merge(events::router())
        .merge(settings::router())
        .merge(mfa::router())
        .merge(branding::router())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_admin_session,
        ));
    let public_console = Router::new()
        .merge(auth::public_router())
        .route("/admin/static/console.js", get(console_js))
        .route("/admin/static/console.css", get(console_css));
    let console = console
        .merge(public_console)
        .layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            csp,
        ));
    let api = api::router().route_layer(middleware::from_fn_with_state(state, require_api_key));
    Router::new()
        .merge(console)
        .merge(api)
        .merge(api::public_router())
        .merge(m365::public_router())
}

async fn console_js() -> impl axum::response::IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("../../templates/admin/console.js"),
    )
}

async fn console_css() -> impl axum::response::IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("../../templates/admin/console.css"),
    )
}

/// What every console page shows around its content: who is signed in, the CSRF token for
/// forms, the active tab, and a one-time notice or error.
#[derive(Debug, Clone)]
pub struct Chrome {
    pub admin: String,
    pub role: &'static str,
    pub csrf: String,
    pub active: &'static str,
    pub can_write: bool,
    pub flash: Option<String>,
    pub error: Option<String>,
}

impl Chrome {
    /// The chrome for `admin` on tab `active`.
    pub fn new(admin: &AdminPrincipal, active: &'static str) -> Self {
        Self {
            admin: admin.name.clone(),
            role: admin.role.as_str(),
            csrf: admin.csrf.clone(),
            active,
            can_write: admin.can_write(),
            flash: None,
            error: None,
        }
    }

    /// With a notice (after a successful change).
    pub fn flash(mut self, message: Option<String>) -> Self {
        self.flash = message;
        self
    }

    /// With an error message (a refused change; the form keeps its input).
    pub fn error(mut self, message: Option<String>) -> Self {
        self.error = message;
        self
    }
}

pub use crate::web::display_time;

/// The cookie carrying a one-time notice from a POST to the page it redirects to.
pub const NOTICE_COOKIE: &str = "idbridge_notice";

/// Redirects after a POST with a one-time notice (post/redirect/get, so reloading does not
/// repeat the change). The notice travels in a short-lived cookie, never in the URL, so a
/// crafted link cannot put text on a console page.
pub fn redirect_with_notice(path: &str, notice: &str) -> axum::response::Response {
    crate::web::redirect_with_notice(path, NOTICE_COOKIE, "/admin", notice)
}

/// The one-time notice of this request, if a POST left one (the session guard clears it).
#[derive(Debug, Clone, Default)]
pub struct Notice(pub Option<String>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Notice {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Notice(crate::web::read_notice(
            &parts.headers,
            NOTICE_COOKIE,
        )))
    }
}
