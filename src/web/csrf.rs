//! CSRF checks shared by the admin console and the user portal: a secret token compared in
//! constant time, carried by a form field `csrf` or the `x-csrf-token` header.

use axum::body::{to_bytes, Body};
use axum::extract::Request;

/// The header htmx/JS requests carry the CSRF token in (forms use the `csrf` field).
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Forms larger than this are refused before the CSRF check reads them.
const MAX_FORM_BYTES: usize = 256 * 1024;

/// Whether two secret tokens are equal, in time independent of where they differ.
pub fn tokens_match(presented: &str, expected: &str) -> bool {
    // Lengths first: `memcmp::eq` panics on unequal lengths.
    !expected.is_empty()
        && presented.len() == expected.len()
        && openssl::memcmp::eq(presented.as_bytes(), expected.as_bytes())
}

/// Why a state-changing request was refused before its handler ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CsrfRefusal {
    /// The body is over the form limit.
    TooLarge,
    /// No token, or not this session's.
    Mismatch,
}

/// Checks the request's CSRF token (header, else the form's `csrf` field) against `expected`
/// and gives the request back, its body intact, for the handler.
pub async fn check_request(request: Request, expected: &str) -> Result<Request, CsrfRefusal> {
    let (parts, body) = request.into_parts();
    let bytes = to_bytes(body, MAX_FORM_BYTES)
        .await
        .map_err(|_| CsrfRefusal::TooLarge)?;
    let header_token = parts
        .headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let presented = match header_token {
        Some(token) => Some(token),
        None => match multipart_boundary(&parts.headers) {
            // A file upload (the console's logo): the token is one of its parts.
            Some(boundary) => multipart_token(bytes.clone(), boundary).await,
            None => url::form_urlencoded::parse(&bytes)
                .find(|(k, _)| k == "csrf")
                .map(|(_, v)| v.into_owned()),
        },
    };
    if !presented.is_some_and(|t| tokens_match(&t, expected)) {
        return Err(CsrfRefusal::Mismatch);
    }
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

fn multipart_boundary(headers: &axum::http::HeaderMap) -> Option<String> {
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)?
        .to_str()
        .ok()?;
    multer::parse_boundary(content_type).ok()
}

/// The `csrf` part of a `multipart/form-data` body.
async fn multipart_token(body: axum::body::Bytes, boundary: String) -> Option<String> {
    let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(body) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    while let Ok(Some(field)) = multipart.next_field().await {
        if field.name() == Some("csrf") {
            return field.text().await.ok();
        }
    }
    None
}
