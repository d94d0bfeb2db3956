//! The JSON API under `/api/v1`, authenticated with API keys; described by the OpenAPI document
//! at `/api/v1/openapi.json`.
//!
//! Routes are registered from the handlers' `#[utoipa::path]` annotations (`utoipa_axum`), so
//! the router and the document are built from the same list: a handler cannot be served under
//! another path or method than the one documented. Requests are read with the extractors of
//! `extract` (every refusal is an `ApiError`), and the responses every operation shares (401,
//! 403 on writes, 500) are added to the document by `schema::GuardResponses`.

mod admins;
mod app_registration;
mod bindings;
mod branding;
mod certificates;
pub(crate) mod events;
mod extract;
mod m365;
mod schema;
mod service_providers;
mod users;

use std::sync::OnceLock;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::any;
use axum::{Extension, Json, Router};
use serde::Serialize;
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::server::AppState;
use crate::web::{AdminPrincipal, ApiError};

pub use schema::{ErrorDetail, ErrorResponse};

/// The document's fixed parts; the paths come from the routers.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "idbridge API",
        description = "Everything the admin console does, as JSON: users, Microsoft 365 \
            bindings and sync, the connection, imports, the attribute export table and the \
            event log. Authenticate with an API key (`Authorization: Bearer idb_…`) created on \
            the console's Settings page. Errors are always \
            `{\"error\": {\"code\", \"message\", \"field\"}}` with a stable `code`; validation \
            errors (422) name the `field`. Request bodies are JSON; unknown fields are refused.",
    ),
    security(("apiKey" = [])),
    tags(
        (name = "caller", description = "Who is calling"),
        (name = "users", description = "The directory's users"),
        (name = "bindings", description = "Binding users to Microsoft 365, and sync"),
        (name = "m365", description = "The Microsoft 365 connection, imports, exported attributes"),
        (name = "events", description = "Directory Insights: the event log"),
        (name = "certificates", description = "The SAML signing certificates and their rollover"),
        (name = "saml", description = "SAML service providers besides Microsoft 365"),
        (name = "admins", description = "The console's admin accounts"),
        (name = "branding", description = "The organisation's name, logo and colour on the employee pages"),
        (name = "meta", description = "This document"),
    )
)]
struct ApiDoc;

/// The operations behind the API key guard.
fn guarded() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(me))
        .merge(users::routes())
        .merge(bindings::routes())
        .merge(m365::routes())
        .merge(app_registration::routes())
        .merge(events::routes())
        .merge(certificates::routes())
        .merge(service_providers::routes())
        .merge(admins::routes())
        .merge(branding::routes())
}

/// The operations anyone may call.
fn public() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(openapi_json))
}

/// Routes behind the API key guard.
pub fn router() -> Router<AppState> {
    let (router, _) = guarded().split_for_parts();
    router.method_not_allowed_fallback(method_not_allowed)
}

/// Routes without authentication: the API description, and JSON answers for paths and methods
/// the API does not have (instead of the HTML error page).
pub fn public_router() -> Router<AppState> {
    let (router, _) = public().split_for_parts();
    router
        .method_not_allowed_fallback(method_not_allowed)
        .route("/api/v1/{*rest}", any(not_found))
}

/// The OpenAPI 3.1 document of the API.
pub fn openapi() -> &'static utoipa::openapi::OpenApi {
    static DOCUMENT: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let (_, mut document) = guarded().merge(public()).split_for_parts();
        document.info.version = env!("CARGO_PKG_VERSION").to_string();
        schema::GuardResponses.modify(&mut document);
        document
    })
}

/// The OpenAPI 3.1 document of this API.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "meta",
    security(()),
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json"))
)]
async fn openapi_json() -> impl IntoResponse {
    static JSON: OnceLock<String> = OnceLock::new();
    let body = JSON.get_or_init(|| serde_json::to_string(openapi()).unwrap_or_default());
    ([(header::CONTENT_TYPE, "application/json")], body.as_str())
}

/// The caller of the API.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Me {
    /// The API key's name (events show it as `apikey:NAME`).
    pub name: String,
    /// `admin` or `read_only`.
    pub role: &'static str,
    pub key_id: Option<String>,
}

/// The caller: the API key's name and role.
#[utoipa::path(
    get,
    path = "/api/v1/me",
    tag = "caller",
    responses((status = 200, description = "The API key", body = Me))
)]
async fn me(Extension(caller): Extension<AdminPrincipal>) -> Json<Me> {
    Json(Me {
        name: caller.name,
        role: caller.role.as_str(),
        key_id: caller.api_key_id,
    })
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such API path; GET /api/v1/openapi.json lists them")
}

async fn method_not_allowed() -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        code: "method_not_allowed",
        message: "this method is not allowed on this path; GET /api/v1/openapi.json lists the \
                  operations"
            .into(),
        field: None,
    }
}
