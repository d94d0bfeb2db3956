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
    let form_token = || {
        url::form_urlencoded::parse(&bytes)
            .find(|(k, _)| k == "csrf")
            .map(|(_, v)| v.into_owned())
    };
    let presented = header_token.or_else(form_token);
    if !presented.is_some_and(|t| tokens_match(&t, expected)) {
        return Err(CsrfRefusal::Mismatch);
    }
    Ok(Request::from_parts(parts, Body::from(bytes)))
}
