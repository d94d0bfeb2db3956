//! `/api/v1/saml/service-providers`: the SAML service providers idbridge signs in to, besides
//! Microsoft 365; those registered here can be changed here, those of idbridge.toml are shown
//! read-only.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::ApiJson;
use super::schema::{rfc3339_millis, ErrorResponse};
use crate::server::AppState;
use crate::sso::{NameIdSource, ServiceProvider, SpField, SpOrigin, SpRegistration};
use crate::web::{AdminPrincipal, ApiError};

/// The service provider routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, register))
        .routes(routes!(show, change, unregister))
}

/// A service provider as idbridge uses it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceProviderInfo {
    pub entity_id: String,
    pub name: String,
    /// Where Responses may be posted; the first is the default.
    pub acs_urls: Vec<String>,
    pub slo_url: Option<String>,
    /// `username`, `email` or `immutable_id`.
    pub name_id: &'static str,
    /// SAML attribute name → user attribute.
    pub attributes: BTreeMap<String, String>,
    /// Users not bound to Microsoft 365 are refused.
    pub require_m365_binding: bool,
    /// SHA-256 fingerprints of the certificates its messages are checked with.
    pub certificate_fingerprints: Vec<String>,
    pub want_authn_requests_signed: bool,
    /// `builtIn` (Microsoft 365), `file` (idbridge.toml: read-only here) or `console`.
    pub origin: &'static str,
    pub updated_at: Option<String>,
    pub updated_by: Option<String>,
}

impl From<&ServiceProvider> for ServiceProviderInfo {
    fn from(sp: &ServiceProvider) -> Self {
        let (origin, updated_at, updated_by) = match &sp.origin {
            SpOrigin::BuiltIn => ("builtIn", None, None),
            SpOrigin::File => ("file", None, None),
            SpOrigin::Console {
                updated_at_ms,
                updated_by,
            } => (
                "console",
                Some(rfc3339_millis(*updated_at_ms)),
                Some(updated_by.clone()),
            ),
        };
        Self {
            entity_id: sp.entity_id.clone(),
            name: sp.name.clone(),
            acs_urls: sp.acs_urls.clone(),
            slo_url: sp.slo_url.clone(),
            name_id: sp.name_id.as_str(),
            attributes: sp.attributes.iter().cloned().collect(),
            require_m365_binding: sp.requires_m365_binding,
            certificate_fingerprints: sp
                .verification_keys
                .get()
                .map(|k| k.fingerprints().to_vec())
                .unwrap_or_default(),
            want_authn_requests_signed: sp.requires_signed_requests,
            origin,
            updated_at,
            updated_by,
        }
    }
}

/// A service provider's settings (the entity ID is in the path when changing one).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceProviderRequest {
    /// The SP's `entityID` (required to register; must match the path to change).
    pub entity_id: Option<String>,
    /// What the sign-in page names it (the entity ID when left out).
    #[serde(default)]
    pub name: String,
    /// Its AssertionConsumerService URLs (https; the first is the default).
    pub acs_urls: Vec<String>,
    pub slo_url: Option<String>,
    /// `username` (default), `email` or `immutable_id` (bound users only).
    pub name_id: Option<String>,
    /// SAML attribute name → user attribute (`GET /api/v1/users` shows their names).
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    #[serde(default)]
    pub require_m365_binding: bool,
    /// Its signing certificate(s) as PEM, or its SAML metadata XML.
    pub certificate_pem: Option<String>,
    #[serde(default)]
    pub want_authn_requests_signed: bool,
}

impl ServiceProviderRequest {
    fn registration(self, entity_id: String) -> Result<SpRegistration, ApiError> {
        let name_id = match self.name_id.as_deref() {
            None => NameIdSource::Username,
            Some(n) => NameIdSource::parse(n).ok_or_else(|| {
                ApiError::validation(
                    SpField::NameId.api_name(),
                    format!(
                        "{n:?} is not a NameID source. Fix: use username, email or immutable_id"
                    ),
                )
            })?,
        };
        let blank = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
        Ok(SpRegistration {
            entity_id,
            name: self.name,
            acs_urls: self.acs_urls,
            slo_url: blank(self.slo_url),
            name_id,
            attributes: self.attributes.into_iter().collect(),
            require_m365_binding: self.require_m365_binding,
            certificate_pem: blank(self.certificate_pem),
            want_authn_requests_signed: self.want_authn_requests_signed,
        })
    }
}

/// Every service provider: Microsoft 365, idbridge.toml's and those registered here.
#[utoipa::path(
    get,
    path = "/api/v1/saml/service-providers",
    tag = "saml",
    responses((status = 200, description = "The service providers", body = [ServiceProviderInfo]))
)]
async fn list(State(state): State<AppState>) -> Json<Vec<ServiceProviderInfo>> {
    let all = state.idp.service_providers().all();
    Json(
        all.iter()
            .map(|sp| ServiceProviderInfo::from(&**sp))
            .collect(),
    )
}

/// Registers a service provider; used at once, on every node within seconds.
#[utoipa::path(
    post,
    path = "/api/v1/saml/service-providers",
    tag = "saml",
    request_body = ServiceProviderRequest,
    responses(
        (status = 201, description = "Registered and in use", body = ServiceProviderInfo),
        (status = 409, description = "Already registered, built in or set in idbridge.toml", body = ErrorResponse),
        (status = 422, description = "A value is invalid (`field` names it)", body = ErrorResponse),
    )
)]
async fn register(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
    ApiJson(request): ApiJson<ServiceProviderRequest>,
) -> Result<(StatusCode, Json<ServiceProviderInfo>), ApiError> {
    let Some(entity_id) = request.entity_id.clone() else {
        return Err(ApiError::validation(
            SpField::EntityId.api_name(),
            "entityId is required. Fix: copy the entityID from the service provider's metadata",
        ));
    };
    let registration = request.registration(entity_id)?;
    let sp = state
        .idp
        .service_providers()
        .register(&state.store, registration, &admin.actor(), None, Utc::now())
        .await?;
    Ok((StatusCode::CREATED, Json(ServiceProviderInfo::from(&*sp))))
}

/// One service provider.
#[utoipa::path(
    get,
    path = "/api/v1/saml/service-providers/{entityId}",
    tag = "saml",
    params(("entityId" = String, Path, description = "The entity ID, percent-encoded")),
    responses(
        (status = 200, description = "The service provider", body = ServiceProviderInfo),
        (status = 404, description = "No such service provider", body = ErrorResponse),
    )
)]
async fn show(
    State(state): State<AppState>,
    Path(entity_id): Path<String>,
) -> Result<Json<ServiceProviderInfo>, ApiError> {
    state
        .idp
        .service_providers()
        .get(&entity_id)
        .map(|sp| Json(ServiceProviderInfo::from(&*sp)))
        .ok_or_else(|| ApiError::not_found(format!("no service provider {entity_id}")))
}

/// Replaces the settings of a service provider registered here.
#[utoipa::path(
    put,
    path = "/api/v1/saml/service-providers/{entityId}",
    tag = "saml",
    params(("entityId" = String, Path, description = "The entity ID, percent-encoded")),
    request_body = ServiceProviderRequest,
    responses(
        (status = 200, description = "Changed and in use", body = ServiceProviderInfo),
        (status = 404, description = "Not registered here", body = ErrorResponse),
        (status = 409, description = "Built in or set in idbridge.toml", body = ErrorResponse),
        (status = 422, description = "A value is invalid (`field` names it)", body = ErrorResponse),
    )
)]
async fn change(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
    Path(entity_id): Path<String>,
    ApiJson(request): ApiJson<ServiceProviderRequest>,
) -> Result<Json<ServiceProviderInfo>, ApiError> {
    if request.entity_id.as_ref().is_some_and(|e| *e != entity_id) {
        return Err(ApiError::validation(
            SpField::EntityId.api_name(),
            "the entity ID cannot be changed: register the new one and remove this one",
        ));
    }
    let registration = request.registration(entity_id)?;
    let sp = state
        .idp
        .service_providers()
        .change(&state.store, registration, &admin.actor(), None, Utc::now())
        .await?;
    Ok(Json(ServiceProviderInfo::from(&*sp)))
}

/// Removes a service provider registered here: its requests are refused from now on.
#[utoipa::path(
    delete,
    path = "/api/v1/saml/service-providers/{entityId}",
    tag = "saml",
    params(("entityId" = String, Path, description = "The entity ID, percent-encoded")),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "Not registered here", body = ErrorResponse),
        (status = 409, description = "Built in or set in idbridge.toml", body = ErrorResponse),
    )
)]
async fn unregister(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
    Path(entity_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state
        .idp
        .service_providers()
        .unregister(&state.store, &entity_id, &admin.actor(), None, Utc::now())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
