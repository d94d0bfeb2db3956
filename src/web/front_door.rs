//! The front door's layers: security headers on every response, the real client address from
//! a trusted proxy, a request deadline, and a panic catcher that answers 500 with a reference.

use std::any::Any;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};

use crate::config::IpNet;

/// The request id header every response carries when a panic or timeout is answered.
pub const REQUEST_ID: &str = "x-request-id";

/// `'sha256-…'` of the text between the first `<tag>` and `</tag>` in `template`.
pub fn inline_hash(template: &str, tag: &str) -> String {
    use base64::Engine;
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let text = template
        .split_once(&open)
        .and_then(|(_, rest)| rest.split_once(&close))
        .map(|(inner, _)| inner)
        .unwrap_or_default();
    let digest = openssl::sha::sha256(text.as_bytes());
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// The Content-Security-Policy of every page outside the console: the shared page style and the
/// SAML auto-post script are allowed by hash; scripts are otherwise only idbridge's own files
/// (`/mfa/passkey.js`, which talks JSON to idbridge alone: `connect-src 'self'`). There is no `form-action`: the
/// auto-post form goes to the service provider's ACS URL.
pub fn page_csp() -> HeaderValue {
    let style = inline_hash(include_str!("../../templates/base.html"), "style");
    let script = inline_hash(include_str!("../../templates/sso/post.html"), "script");
    let policy = format!(
        "default-src 'none'; script-src 'self' {script}; style-src 'self' {style}; img-src 'self' data:; \
         connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
    );
    HeaderValue::from_str(&policy)
        .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"))
}

/// HSTS for an https base URL.
pub const HSTS: &str = "max-age=31536000; includeSubDomains";

/// Replaces the `ConnectInfo` peer with the client named by `X-Forwarded-For` when the peer is a
/// trusted proxy: the right-most address that is not itself a trusted proxy. From any other peer
/// the header is ignored.
pub async fn real_client(
    State(trusted): State<Arc<Vec<IpNet>>>,
    mut request: Request,
    next: Next,
) -> Response {
    if let Some(ConnectInfo(peer)) = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .copied()
    {
        if let Some(client) = forwarded_client(&trusted, peer.ip(), request.headers()) {
            request
                .extensions_mut()
                .insert(ConnectInfo(SocketAddr::new(client, peer.port())));
        }
    }
    next.run(request).await
}

fn forwarded_client(
    trusted: &[IpNet],
    peer: IpAddr,
    headers: &axum::http::HeaderMap,
) -> Option<IpAddr> {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(peer) {
        return None;
    }
    let mut hops: Vec<IpAddr> = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let text = value.to_str().ok()?;
        for hop in text.split(',') {
            hops.push(hop.trim().parse().ok()?);
        }
    }
    let mut client = None;
    for hop in hops.into_iter().rev() {
        client = Some(hop);
        if !is_trusted(hop) {
            break;
        }
    }
    client
}

/// Answers 503 when the rest of the stack takes longer than `limit`.
pub async fn request_deadline(
    State(limit): State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            let reference = crate::directory::new_record_id();
            tracing::warn!(%reference, "request timed out");
            let mut response = (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "5")],
                "idbridge took too long to answer this request; try again.",
            )
                .into_response();
            if let Ok(v) = HeaderValue::from_str(&reference) {
                response.headers_mut().insert(REQUEST_ID, v);
            }
            response
        }
    }
}

/// The panic handler for `CatchPanicLayer`: logs the panic with a fresh reference and answers
/// the usual 500 page (never the panic text), with the reference in `x-request-id`.
pub fn panic_response(err: Box<dyn Any + Send + 'static>) -> Response {
    let detail = err
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| err.downcast_ref::<&str>().copied())
        .unwrap_or("panic");
    let reference = crate::directory::new_record_id();
    tracing::error!(%reference, %detail, "a request handler panicked");
    let body = askama::Template::render(&super::MessagePage {
        ui: crate::i18n::Ui::current(),
        title: "Something went wrong",
        message: "idbridge could not complete this request.",
        hint: Some("Try again in a moment. If it keeps failing, give your IT administrator this reference."),
        reference: Some(&reference),
    })
    .unwrap_or_else(|_| "internal error".into());
    let mut response = (StatusCode::INTERNAL_SERVER_ERROR, Html(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&reference) {
        response.headers_mut().insert(REQUEST_ID, v);
    }
    response.extensions_mut().insert(Panicked(reference));
    response
}

/// Marks the 500 answered for a panic, with its reference.
#[derive(Debug, Clone)]
pub struct Panicked(pub String);

/// Outside the panic catcher: under `/api/` a panic's 500 is the API's JSON error, not a page.
pub async fn api_panic_as_json(request: Request, next: Next) -> Response {
    let api = request.uri().path().starts_with("/api/");
    let response = next.run(request).await;
    match response.extensions().get::<Panicked>() {
        Some(Panicked(reference)) if api => {
            let reference = reference.clone();
            let mut json = super::ApiError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                code: "internal",
                message: format!("idbridge could not complete the request (reference {reference})"),
                field: None,
            }
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&reference) {
                json.headers_mut().insert(REQUEST_ID, v);
            }
            json
        }
        _ => response,
    }
}

/// The panic-catching layer used by the router.
pub fn catch_panic_layer(
) -> tower_http::catch_panic::CatchPanicLayer<fn(Box<dyn Any + Send + 'static>) -> Response> {
    tower_http::catch_panic::CatchPanicLayer::custom(panic_response as fn(_) -> Response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_panicking_handler_gets_500_with_a_request_id() {
        async fn boom() -> &'static str {
            let v: Vec<u8> = Vec::new();
            #[allow(clippy::indexing_slicing)]
            let _ = v[3];
            "unreachable"
        }
        let app = axum::Router::new()
            .route("/boom", get(boom))
            .layer(catch_panic_layer());
        let response = app
            .oneshot(
                Request::builder()
                    .uri("/boom")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let id = response
            .headers()
            .get(REQUEST_ID)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        assert!(!id.is_empty());
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(body.contains(&id), "the page quotes the reference");
        assert!(
            !body.contains("index out of bounds"),
            "no internals: {body}"
        );
    }

    #[tokio::test]
    async fn an_api_panic_gets_the_api_s_json_500_with_the_reference() {
        async fn boom() -> &'static str {
            panic!("secret internals")
        }
        let app = axum::Router::new()
            .route("/api/v1/boom", get(boom))
            .layer(catch_panic_layer())
            .layer(axum::middleware::from_fn(api_panic_as_json));
        let response = app
            .oneshot(
                Request::builder()
                    .uri("/api/v1/boom")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let id = response.headers()[REQUEST_ID].to_str().unwrap().to_string();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"]["code"], "internal");
        assert!(json["error"]["message"].as_str().unwrap().contains(&id));
        assert!(!String::from_utf8_lossy(&body).contains("secret"));
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let trusted = vec![IpNet::parse("10.0.0.0/8").unwrap()];
        let mut h = axum::http::HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 203.0.113.9, 10.1.2.3"),
        );
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let stranger: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(
            forwarded_client(&trusted, proxy, &h),
            Some("203.0.113.9".parse().unwrap())
        );
        assert_eq!(forwarded_client(&trusted, stranger, &h), None);
    }
}
