//! Shared pieces of the API's request handling and its OpenAPI description: the error schema,
//! the security scheme, the responses every operation can give, and parameter parsing.

use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::ToSchema;

use crate::web::ApiError;

/// The name of the bearer security scheme in the document.
pub const BEARER: &str = "apiKey";

/// The body of every error answer (`web::ApiError`).
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct ErrorResponse {
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, for programs: `unauthorized`, `forbidden`, `not_found`, `validation_failed`,
    /// `conflict`, `bad_request`, `method_not_allowed`, `m365_not_connected`,
    /// `m365_unavailable`, `last_admin` (the change would leave no active full admin),
    /// `own_account` (an admin changing their own account), `internal`.
    #[schema(example = "validation_failed")]
    pub code: String,
    /// For people; may change between versions.
    #[schema(example = "email: \"x\" is not a valid email address")]
    pub message: String,
    /// The request field at fault (validation errors and some conflicts).
    #[schema(example = "email")]
    pub field: Option<String>,
}

/// Adds what the API key guard and the error mapping give every operation, so no handler's
/// annotation can forget them: the bearer scheme, 401 on every guarded operation, 403 on every
/// write, 500 everywhere. Operations that declare `security(())` are public and keep theirs.
pub struct GuardResponses;

impl utoipa::Modify for GuardResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi
            .components
            .get_or_insert_with(utoipa::openapi::Components::new);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("idb_…")
                    .description(Some(
                        "An API key created on the console's Settings page, sent as \
                         `Authorization: Bearer idb_…`. Read-only keys are refused (403) on \
                         every method but GET.",
                    ))
                    .build(),
            ),
        );
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorResponse")))
                        .build(),
                )
                .build()
        };
        components.responses.insert(
            "Unauthorized".into(),
            RefOr::T(error(
                "No API key, or one that is unknown, malformed or revoked (`unauthorized`); \
                 the answer never says which.",
            )),
        );
        components.responses.insert(
            "Forbidden".into(),
            RefOr::T(error("The API key is read-only (`forbidden`).")),
        );
        components.responses.insert(
            "Internal".into(),
            RefOr::T(error(
                "idbridge failed (`internal`); the message has a reference to find the log line.",
            )),
        );
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                (&mut item.get, false),
                (&mut item.put, true),
                (&mut item.post, true),
                (&mut item.delete, true),
                (&mut item.patch, true),
            ];
            for (operation, write) in operations {
                if let Some(operation) = operation.as_mut() {
                    add_guard_responses(operation, write);
                }
            }
        }
    }
}

fn add_guard_responses(operation: &mut Operation, write: bool) {
    let public = operation
        .security
        .as_ref()
        .is_some_and(|s| s.iter().all(|r| r == &Default::default()));
    let responses = &mut operation.responses.responses;
    let mut add = |status: &str, name: &str| {
        responses
            .entry(status.to_string())
            .or_insert_with(|| RefOr::Ref(Ref::from_response_name(name)));
    };
    if !public {
        add("401", "Unauthorized");
        if write {
            add("403", "Forbidden");
        }
    }
    add("500", "Internal");
}

/// Parses an optional integer parameter within `min..=max`.
pub fn int_param(
    field: &str,
    value: Option<&str>,
    default: i64,
    min: i64,
    max: i64,
) -> Result<i64, ApiError> {
    let Some(text) = value else {
        return Ok(default);
    };
    match text.trim().parse::<i64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(ApiError::validation(
            field,
            format!("{field} must be a whole number from {min} to {max}"),
        )),
    }
}

/// Parses an optional RFC 3339 time parameter into Unix milliseconds.
pub fn time_param(field: &str, value: Option<&str>) -> Result<Option<i64>, ApiError> {
    value
        .map(|text| {
            chrono::DateTime::parse_from_rfc3339(text.trim())
                .map(|t| t.timestamp_millis())
                .map_err(|_| {
                    ApiError::validation(
                        field,
                        format!(
                            "{field} must be an RFC 3339 time such as 2026-11-23T11:15:00Z (got {text:?})"
                        ),
                    )
                })
        })
        .transpose()
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds.
pub fn rfc3339_millis(ms: i64) -> String {
    use chrono::TimeZone;
    chrono::Utc
        .timestamp_millis_opt(ms)
        .single()
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}
