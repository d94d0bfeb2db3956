//! Request extractors of the API whose refusals are `ApiError`s, so a client never sees axum's
//! plain-text rejections: unreadable JSON is a 400 `bad_request`; JSON of the wrong shape (an
//! unknown or missing field, a wrong type) is a 422 `validation_failed` naming the field.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::web::ApiError;

/// A JSON request body.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

/// A JSON request body that may be left out (then `T::default()`).
#[derive(Debug, Clone)]
pub struct OptionalJson<T>(pub T);

/// Query parameters, every value a string; unknown parameters are refused.
#[derive(Debug, Clone)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match read_body(request, state).await? {
            Some(bytes) => parse_json(&bytes).map(ApiJson),
            None => Err(ApiError::bad_request(
                "the request needs a JSON body (Content-Type: application/json)",
            )),
        }
    }
}

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match read_body(request, state).await? {
            Some(bytes) => parse_json(&bytes).map(OptionalJson),
            None => Ok(OptionalJson(T::default())),
        }
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let mut map = Map::new();
        for (key, value) in
            url::form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes())
        {
            // An empty value means "no filter", as an HTML form sends it.
            if !value.is_empty() {
                map.insert(key.into_owned(), Value::String(value.into_owned()));
            }
        }
        serde_path_to_error::deserialize(Value::Object(map))
            .map(ApiQuery)
            .map_err(|err| {
                let path = err.path().to_string();
                let message = err.into_inner().to_string();
                let field = named_field(&message).unwrap_or(path);
                ApiError::validation(
                    field.clone(),
                    message.replace("unknown field", "unknown query parameter"),
                )
            })
    }
}

/// The body, or None when it is empty. A body that says it is not JSON is refused.
async fn read_body<S: Send + Sync>(request: Request, state: &S) -> Result<Option<Bytes>, ApiError> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or_default().to_ascii_lowercase());
    let bytes = Bytes::from_request(request, state).await.map_err(|err| {
        let mut error = ApiError::bad_request(format!("the request body could not be read: {err}"));
        if err.status() == StatusCode::PAYLOAD_TOO_LARGE {
            error.status = StatusCode::PAYLOAD_TOO_LARGE;
        }
        error
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    if let Some(content_type) = content_type {
        let essence = content_type.split(';').next().unwrap_or_default().trim();
        if essence != "application/json" && !essence.ends_with("+json") {
            return Err(ApiError::bad_request(format!(
                "the body must be JSON, sent with Content-Type: application/json (not {essence})"
            )));
        }
    }
    Ok(Some(bytes))
}

/// Parses JSON: a syntax error is a 400, a shape error a 422 naming the field.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let message = strip_position(&inner.to_string());
                // An unknown key is already the last segment of the path; a missing one is not.
                let field = match named_field(&message) {
                    Some(name) if path == "." => name,
                    Some(name) if path == name || path.ends_with(&format!(".{name}")) => path,
                    Some(name) => format!("{path}.{name}"),
                    None if path == "." => "body".to_string(),
                    None => path,
                };
                ApiError::validation(field.clone(), format!("{field}: {message}"))
            }
            _ => not_json(&inner),
        }
    })?;
    deserializer.end().map_err(|err| not_json(&err))?;
    Ok(value)
}

fn not_json(err: &serde_json::Error) -> ApiError {
    ApiError::bad_request(format!("the body is not valid JSON: {err}"))
}

/// The field an "unknown field `x`" or "missing field `x`" message names.
fn named_field(message: &str) -> Option<String> {
    let rest = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("missing field `"))
        .or_else(|| message.strip_prefix("invalid type for field `"))?;
    rest.split('`').next().map(str::to_string)
}

/// serde_json's messages end with " at line L column C", which says nothing to an API client
/// about which field is wrong.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        users: Vec<String>,
        all: Option<bool>,
    }

    #[test]
    fn shapes_name_the_field_and_syntax_is_a_bad_request() {
        let err = parse_json::<Body>(br#"{"users": ["a"], "color": 1}"#).unwrap_err();
        assert_eq!(
            (err.status.as_u16(), err.field.as_deref()),
            (422, Some("color"))
        );
        let err = parse_json::<Body>(br#"{"all": true}"#).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("users"));
        let err = parse_json::<Body>(br#"{"users": [1]}"#).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("users[0]"));
        assert!(!err.message.contains("line"), "{}", err.message);
        let err = parse_json::<Body>(br#"{"users": ["#).unwrap_err();
        assert_eq!((err.status.as_u16(), err.code), (400, "bad_request"));
        let err = parse_json::<Body>(br#"{"users": []} x"#).unwrap_err();
        assert_eq!(err.status.as_u16(), 400);
    }
}
