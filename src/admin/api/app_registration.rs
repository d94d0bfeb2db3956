//! `/api/v1/m365/app-registration`: the app registration idbridge signs in to Microsoft with,
//! entered here instead of in idbridge.toml (values set in the file stay read-only).

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::Utc;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::ApiJson;
use super::schema::{rfc3339_millis, ErrorResponse};
use crate::m365::{AppRegistration, CredentialChange, RegistrationChange, ValueSource};
use crate::server::AppState;
use crate::web::{AdminPrincipal, ApiError};

/// The app registration routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(show, change))
        .routes(routes!(certificate))
}

/// One value and where it comes from.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationValue {
    pub value: Option<String>,
    /// `file` (idbridge.toml or the environment: read-only here), `console` (entered in the
    /// console or this API) or `default`.
    pub source: &'static str,
    /// Where a `file` value is set.
    pub set_in: Option<String>,
    /// When and by whom a `console` value was entered.
    pub updated_at: Option<String>,
    pub updated_by: Option<String>,
}

impl RegistrationValue {
    fn new(value: Option<String>, source: &ValueSource) -> Self {
        let (source, set_in, updated_at, updated_by) = match source {
            ValueSource::File(place) => ("file", Some(place.clone()), None, None),
            ValueSource::Console { at_ms, by } => (
                "console",
                None,
                Some(rfc3339_millis(*at_ms)),
                Some(by.clone()),
            ),
            ValueSource::Default => ("default", None, None, None),
        };
        Self {
            value,
            source,
            set_in,
            updated_at,
            updated_by,
        }
    }
}

/// A certificate credential's public part.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppCredentialCertificate {
    /// SHA-1 thumbprint, as the Entra admin center shows it.
    pub thumbprint: String,
    pub not_after: String,
}

/// The app registration in effect (never the secret or the key).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppRegistrationInfo {
    pub tenant: RegistrationValue,
    pub client_id: RegistrationValue,
    /// `value`: `secret`, `certificate` or null.
    pub credential: RegistrationValue,
    pub certificate: Option<AppCredentialCertificate>,
    /// The redirect URI to register in the app registration (platform Web).
    pub redirect_uri: String,
    /// What is missing before idbridge can connect, if anything.
    pub problem: Option<String>,
}

fn info(state: &AppState, reg: &AppRegistration) -> AppRegistrationInfo {
    AppRegistrationInfo {
        tenant: RegistrationValue::new(Some(reg.tenant.clone()), &reg.tenant_source),
        client_id: RegistrationValue::new(reg.client_id.clone(), &reg.client_id_source),
        credential: RegistrationValue::new(
            reg.credential_kind().map(|k| k.as_str().to_string()),
            &reg.credential_source,
        ),
        certificate: reg.certificate.as_ref().map(|c| AppCredentialCertificate {
            thumbprint: c.thumbprint.clone(),
            not_after: c.not_after.clone(),
        }),
        redirect_uri: state.m365.redirect_uri().to_string(),
        problem: reg.problem().map(|p| p.to_string()),
    }
}

/// A new client credential.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum CredentialRequest {
    /// A client secret's Value from the app registration's Certificates & secrets.
    Secret { value: String },
    /// idbridge makes a key and a self-signed certificate (download it from
    /// `/api/v1/m365/app-registration/certificate` and upload it to the app registration).
    Generate,
    /// A certificate and its unencrypted RSA private key, both PEM.
    #[serde(rename_all = "camelCase")]
    Upload {
        certificate_pem: String,
        private_key_pem: String,
    },
    /// No credential.
    None,
}

/// What to change; fields left out stay as they are.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppRegistrationRequest {
    /// Tenant ID, a verified domain, or `organizations`.
    pub tenant: Option<String>,
    /// Application (client) ID, a GUID.
    pub client_id: Option<String>,
    pub credential: Option<CredentialRequest>,
}

/// The app registration in effect, with where each value comes from.
#[utoipa::path(
    get,
    path = "/api/v1/m365/app-registration",
    tag = "m365",
    responses((status = 200, description = "The app registration", body = AppRegistrationInfo))
)]
async fn show(State(state): State<AppState>) -> Json<AppRegistrationInfo> {
    Json(info(&state, &state.m365.registration()))
}

/// Changes the app registration; used at once, on every node within seconds.
#[utoipa::path(
    put,
    path = "/api/v1/m365/app-registration",
    tag = "m365",
    request_body = AppRegistrationRequest,
    responses(
        (status = 200, description = "Saved and in use", body = AppRegistrationInfo),
        (status = 409, description = "The value is set in idbridge.toml or the environment (`field` names the setting)", body = ErrorResponse),
        (status = 422, description = "A value is invalid (`field` names it)", body = ErrorResponse),
    )
)]
async fn change(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
    ApiJson(request): ApiJson<AppRegistrationRequest>,
) -> Result<Json<AppRegistrationInfo>, ApiError> {
    let change = RegistrationChange {
        tenant: request.tenant,
        client_id: request.client_id,
        credential: request.credential.map(|c| match c {
            CredentialRequest::Secret { value } => {
                CredentialChange::Secret(SecretString::from(value))
            }
            CredentialRequest::Generate => CredentialChange::GenerateCertificate,
            CredentialRequest::Upload {
                certificate_pem,
                private_key_pem,
            } => CredentialChange::UploadCertificate {
                certificate_pem,
                private_key_pem: SecretString::from(private_key_pem),
            },
            CredentialRequest::None => CredentialChange::Remove,
        }),
    };
    let reg = state
        .m365
        .change_registration(change, &admin.actor(), None, Utc::now())
        .await?;
    Ok(Json(info(&state, &reg)))
}

/// The certificate credential as PEM, to upload to the app registration.
#[utoipa::path(
    get,
    path = "/api/v1/m365/app-registration/certificate",
    tag = "m365",
    responses(
        (status = 200, description = "The PEM certificate", content_type = "application/x-pem-file", body = String),
        (status = 404, description = "The credential is not a certificate", body = ErrorResponse),
    )
)]
async fn certificate(State(state): State<AppState>) -> Result<Response, ApiError> {
    let Some(cert) = state.m365.registration().certificate.clone() else {
        return Err(ApiError::not_found(
            "the app registration's credential is not a certificate",
        ));
    };
    Ok(([(header::CONTENT_TYPE, "application/x-pem-file")], cert.pem).into_response())
}
