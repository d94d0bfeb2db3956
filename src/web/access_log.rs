//! The access log: one line per request at info (method, path without its query, status,
//! duration, request id, client address), and a span carrying the request id around
//! everything the request logs, so the SSO flow's lines can be tied to their request.

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

/// The header carrying the request id (taken from a reverse proxy when it sent a sane one).
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// A request id from upstream is kept only when short and plain, so it cannot forge log lines.
fn upstream_id(request: &Request) -> Option<String> {
    let value = request.headers().get(REQUEST_ID_HEADER)?.to_str().ok()?;
    let plain = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    plain.then(|| value.to_string())
}

/// Logs the request once answered. The query string is never logged: it carries SAML
/// messages, reset-link tokens and OAuth codes.
pub async fn access_log(mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = upstream_id(&request).unwrap_or_else(|| {
        let mut token = crate::web::new_token();
        token.truncate(16);
        token
    });
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_default();
    if let Ok(value) = HeaderValue::from_str(&id) {
        request.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    let span = tracing::info_span!("request", id = %id);
    let mut response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    let millis = started.elapsed().as_secs_f64() * 1000.0;
    span.in_scope(|| {
        tracing::info!(
            target: "idbridge::access",
            %method,
            %path,
            status,
            duration_ms = format_args!("{millis:.1}"),
            %client,
            "request"
        );
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}
