//! `/api/v1/branding`: the organisation's name, logo and accent colour on the employee pages.

use axum::extract::State;
use axum::{Extension, Json};
use base64::Engine;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::ApiJson;
use super::schema::{rfc3339_millis, ErrorResponse};
use crate::branding::{Brand, BrandChange, BrandingError, LogoChange};
use crate::server::AppState;
use crate::web::{AdminPrincipal, ApiError};

/// The branding routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(show, change))
}

/// The branding in effect.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BrandingInfo {
    /// The organisation's name in the employee pages' header.
    pub name: String,
    /// `#rrggbb`.
    pub accent_colour: String,
    /// Where the logo is served (`/branding/logo`), or null without one.
    pub logo_url: Option<String>,
    /// `image/png` or `image/svg+xml`.
    pub logo_content_type: Option<String>,
    /// When and by whom it was last changed (null: never, the defaults).
    pub updated_at: Option<String>,
    pub updated_by: Option<String>,
}

impl From<&Brand> for BrandingInfo {
    fn from(brand: &Brand) -> Self {
        Self {
            name: brand.name.clone(),
            accent_colour: brand.accent.as_str().to_string(),
            logo_url: brand
                .logo
                .as_ref()
                .map(|_| crate::branding::http::LOGO_PATH.to_string()),
            logo_content_type: brand
                .logo
                .as_ref()
                .map(|l| l.kind.content_type().to_string()),
            updated_at: brand
                .updated_by
                .as_ref()
                .map(|_| rfc3339_millis(brand.updated_at)),
            updated_by: brand.updated_by.clone(),
        }
    }
}

/// A new branding; `logo` left out keeps the current one.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BrandingRequest {
    /// 1 to 80 characters.
    pub name: String,
    /// `#rrggbb`.
    pub accent_colour: String,
    /// The logo file (PNG or SVG, at most 128 KiB) as base64; an empty string removes the
    /// logo.
    pub logo_base64: Option<String>,
}

/// The branding of the employee pages.
#[utoipa::path(
    get,
    path = "/api/v1/branding",
    tag = "branding",
    responses((status = 200, description = "The branding in effect", body = BrandingInfo))
)]
async fn show(State(state): State<AppState>) -> Json<BrandingInfo> {
    Json(BrandingInfo::from(state.branding.current().as_ref()))
}

/// Changes the branding; in effect at once, on every node within seconds. Nothing is saved
/// when a value is refused.
#[utoipa::path(
    put,
    path = "/api/v1/branding",
    tag = "branding",
    request_body = BrandingRequest,
    responses(
        (status = 200, description = "Saved and in use", body = BrandingInfo),
        (status = 422, description = "A value is invalid (`field` names it)", body = ErrorResponse),
    )
)]
async fn change(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
    ApiJson(request): ApiJson<BrandingRequest>,
) -> Result<Json<BrandingInfo>, ApiError> {
    let logo = match request.logo_base64.as_deref().map(str::trim) {
        None => LogoChange::Keep,
        Some("") => LogoChange::Remove,
        Some(data) => LogoChange::Replace(
            base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|e| ApiError::from(BrandingError::LogoEncoding(e.to_string())))?,
        ),
    };
    let change = BrandChange {
        name: request.name,
        accent_colour: request.accent_colour,
        logo,
    };
    let brand = state
        .branding
        .change(change, &admin.actor(), None, Utc::now())
        .await?;
    Ok(Json(BrandingInfo::from(brand.as_ref())))
}
