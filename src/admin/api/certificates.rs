//! `/api/v1/signing-certificates`: the SAML signing certificates and their rollover.

use axum::extract::State;
use axum::{Extension, Json};
use chrono::Utc;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::ApiQuery;
use super::m365::ConfirmParams;
use super::schema::ErrorResponse;
use crate::certs::rollover::{MicrosoftUpdate, SigningOverview, StepTaken};
use crate::server::AppState;
use crate::web::{AdminPrincipal, ApiError};

/// The certificate routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(overview))
        .routes(routes!(prepare, discard))
        .routes(routes!(promote))
        .routes(routes!(retire))
}

/// What a rollover step did.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloverStep {
    pub certificates: SigningOverview,
    /// The domains federated to idbridge that Microsoft 365 now holds the certificates for;
    /// `null` when Microsoft 365 is not connected (then see `powershell`).
    pub federated_domains_updated: Option<Vec<String>>,
    /// When Microsoft 365 is not connected: the Microsoft Graph PowerShell to give a domain
    /// federated by hand the step's certificates.
    pub powershell: Option<String>,
}

impl From<StepTaken> for RolloverStep {
    fn from(taken: StepTaken) -> Self {
        let (federated_domains_updated, powershell) = match taken.microsoft {
            MicrosoftUpdate::Domains(d) => (Some(d), None),
            MicrosoftUpdate::ByHand(p) => (None, Some(p)),
        };
        Self {
            certificates: taken.set.overview(),
            federated_domains_updated,
            powershell,
        }
    }
}

/// This node signs with the step's certificates at once (the others within seconds).
async fn taken(state: &AppState, taken: StepTaken) -> Result<Json<RolloverStep>, ApiError> {
    state.reload_signing().await?;
    Ok(Json(taken.into()))
}

/// The signing certificates: the current one, a prepared next one, a previous one still
/// trusted, and where the rollover stands.
#[utoipa::path(
    get,
    path = "/api/v1/signing-certificates",
    tag = "certificates",
    responses((status = 200, description = "The certificates", body = SigningOverview))
)]
async fn overview(State(state): State<AppState>) -> Json<SigningOverview> {
    Json(state.idp.signing_set().overview())
}

/// Rollover, step 1: makes the next key and certificate, publishes them in the metadata and
/// has Microsoft 365 trust them (`nextSigningCertificate` of every domain federated to
/// idbridge).
#[utoipa::path(
    post,
    path = "/api/v1/signing-certificates/next",
    tag = "certificates",
    responses(
        (status = 200, description = "Prepared", body = RolloverStep),
        (status = 409, description = "A rollover is under way (`field`: `stage`)", body = ErrorResponse),
        (status = 502, description = "Graph refused or could not be reached; nothing changed", body = ErrorResponse),
    )
)]
async fn prepare(
    State(state): State<AppState>,
    Extension(caller): Extension<AdminPrincipal>,
) -> Result<Json<RolloverStep>, ApiError> {
    let step = state
        .rollover()
        .prepare(&caller.actor(), Utc::now())
        .await?;
    taken(&state, step).await
}

/// Gives up the prepared next certificate (Microsoft 365 forgets it too).
#[utoipa::path(
    delete,
    path = "/api/v1/signing-certificates/next",
    tag = "certificates",
    responses(
        (status = 200, description = "Discarded", body = RolloverStep),
        (status = 409, description = "No next certificate is prepared (`field`: `stage`)", body = ErrorResponse),
        (status = 502, description = "Graph refused or could not be reached; nothing changed", body = ErrorResponse),
    )
)]
async fn discard(
    State(state): State<AppState>,
    Extension(caller): Extension<AdminPrincipal>,
) -> Result<Json<RolloverStep>, ApiError> {
    let step = state
        .rollover()
        .discard(&caller.actor(), Utc::now())
        .await?;
    taken(&state, step).await
}

/// Rollover, step 2: signs with the next certificate (Microsoft 365 gets it as
/// `signingCertificate`, the old one stays trusted as `nextSigningCertificate`).
#[utoipa::path(
    post,
    path = "/api/v1/signing-certificates/promote",
    tag = "certificates",
    responses(
        (status = 200, description = "Promoted", body = RolloverStep),
        (status = 409, description = "No next certificate is prepared (`field`: `stage`)", body = ErrorResponse),
        (status = 502, description = "Graph refused or could not be reached; nothing changed", body = ErrorResponse),
    )
)]
async fn promote(
    State(state): State<AppState>,
    Extension(caller): Extension<AdminPrincipal>,
) -> Result<Json<RolloverStep>, ApiError> {
    let step = state
        .rollover()
        .promote(&caller.actor(), Utc::now())
        .await?;
    taken(&state, step).await
}

/// Rollover, step 3: stops publishing and trusting the previous certificate.
#[utoipa::path(
    post,
    path = "/api/v1/signing-certificates/retire",
    tag = "certificates",
    params(ConfirmParams),
    responses(
        (status = 200, description = "Retired", body = RolloverStep),
        (status = 409, description = "No previous certificate (`field`: `stage`)", body = ErrorResponse),
        (status = 422, description = "Responses it signed may still be on their way: `confirm=true` retires anyway (`field`: `confirm`)", body = ErrorResponse),
        (status = 502, description = "Graph refused or could not be reached; nothing changed", body = ErrorResponse),
    )
)]
async fn retire(
    State(state): State<AppState>,
    Extension(caller): Extension<AdminPrincipal>,
    ApiQuery(params): ApiQuery<ConfirmParams>,
) -> Result<Json<RolloverStep>, ApiError> {
    let confirmed = params.confirmed(false)?;
    let step = state
        .rollover()
        .retire(&caller.actor(), confirmed, Utc::now())
        .await?;
    taken(&state, step).await
}
