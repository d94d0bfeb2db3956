//! The branding's public files: the logo and the stylesheet of the employee pages. Both are
//! public (the sign-in page shows them before anyone is signed in).

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::server::AppState;

/// Where the stylesheet is served.
pub const STYLESHEET_PATH: &str = "/branding/style.css";
/// Where the logo is served.
pub const LOGO_PATH: &str = "/branding/logo";

/// An SVG opened on its own is a document: this policy runs none of it (no script, no
/// request anywhere, no forms), and `sandbox` gives it a unique origin besides.
const LOGO_CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; sandbox";

/// Routes of the branding's files.
pub fn router() -> Router<AppState> {
    Router::new()
        .route(STYLESHEET_PATH, get(stylesheet))
        .route(LOGO_PATH, get(logo))
}

async fn stylesheet(State(state): State<AppState>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        state.branding.current().stylesheet(),
    )
        .into_response()
}

async fn logo(State(state): State<AppState>) -> Response {
    let brand = state.branding.current();
    let Some(logo) = brand.logo.as_ref() else {
        return (StatusCode::NOT_FOUND, "no logo").into_response();
    };
    let mut response = (
        [
            (header::CONTENT_TYPE, logo.kind.content_type()),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_DISPOSITION, "inline; filename=\"logo\""),
        ],
        logo.bytes.as_ref().clone(),
    )
        .into_response();
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(LOGO_CSP),
    );
    response
}
