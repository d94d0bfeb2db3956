//! Console page: SAML, with the values to paste into Microsoft's federation settings, the
//! signing certificate and the registered service providers.

use askama::Template;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Router};
use chrono::{DateTime, Utc};

use super::binding::FormFields;
use super::{display_time, redirect_with_notice, Chrome, Notice};
use crate::certs::rollover::{MicrosoftUpdate, RolloverError, RolloverStage};
use crate::m365::federation::FederationSettings;
use crate::saml::CertificateInfo;
use crate::server::AppState;
use crate::sso::NameIdSource;
use crate::web::{render, AdminPrincipal, AppError};

/// Warn this many days before the signing certificate expires (Microsoft refuses assertions
/// signed with an expired one, and a new certificate must be given to Microsoft first).
const EXPIRY_WARNING_DAYS: i64 = 30;

/// Console routes of this page (behind the admin session guard).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/saml", get(page))
        .route("/admin/saml/certificates", post(rollover_step))
}

/// The warning for a certificate valid until `not_after`, if it expires within
/// [`EXPIRY_WARNING_DAYS`] of `now` (or has expired).
fn expiry_warning(not_after: DateTime<Utc>, now: DateTime<Utc>) -> Option<String> {
    let left = not_after - now;
    if left <= chrono::Duration::zero() {
        Some(format!(
            "The signing certificate expired on {}: Microsoft 365 refuses every sign-in. \
             Roll over to a new one below (prepare, then promote at once).",
            display_time(Some(not_after.timestamp_millis()))
        ))
    } else if left < chrono::Duration::days(EXPIRY_WARNING_DAYS) {
        Some(format!(
            "The signing certificate expires in {} days ({}). Roll it over now (Certificate \
             rollover below: prepare the next one, then promote it), or sign-ins to Microsoft \
             365 stop when it expires.",
            left.num_days(),
            display_time(Some(not_after.timestamp_millis()))
        ))
    } else {
        None
    }
}

struct SpLine {
    name: String,
    entity_id: String,
    acs_urls: Vec<String>,
    slo_url: String,
    name_id: &'static str,
    name_id_format: &'static str,
    requires_binding: bool,
}

/// The federation settings of one domain, as Graph's JSON and as PowerShell.
struct Federation {
    domain: String,
    issuer: String,
    graph_body: String,
    powershell: String,
}

#[derive(Template)]
#[template(path = "admin/saml.html")]
struct SamlPage {
    chrome: Chrome,
    https: bool,
    metadata_url: String,
    issuer: String,
    sign_in_url: String,
    sign_out_url: String,
    domain_issuers: Vec<(String, String)>,
    algorithm: String,
    subject: String,
    fingerprint: String,
    not_before: String,
    not_after: String,
    key_bits: u32,
    expiry_warning: Option<String>,
    certificate: String,
    service_providers: Vec<SpLine>,
    federations: Vec<Federation>,
    /// Where the rollover stands: `steady`, `next_prepared` or `promoted`.
    stage: &'static str,
    next: Option<CertLine>,
    previous: Option<CertLine>,
    /// The PowerShell giving a domain federated by hand this stage's certificates.
    rollover_powershell: String,
    /// The domain of the examples when no per-domain issuer is configured.
    placeholder_domain: bool,
}

/// A certificate of a rollover, for the page.
struct CertLine {
    subject: String,
    fingerprint: String,
    not_after: String,
}

impl From<&CertificateInfo> for CertLine {
    fn from(c: &CertificateInfo) -> Self {
        Self {
            subject: c.subject.clone(),
            fingerprint: c.fingerprint_sha256.clone(),
            not_after: display_time(Some(c.not_after.timestamp_millis())),
        }
    }
}

/// Graph's `internalDomainFederation` body and the PowerShell equivalent for one domain.
fn federation(domain: &str, settings: &FederationSettings) -> Federation {
    Federation {
        domain: domain.to_string(),
        issuer: settings.issuer_uri.clone(),
        graph_body: serde_json::to_string_pretty(&settings.body()).unwrap_or_default(),
        powershell: settings.powershell(domain),
    }
}

async fn page(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
    Notice(notice): Notice,
) -> Response {
    let page = build_page(&state, Chrome::new(&admin, "saml").flash(notice));
    render(StatusCode::OK, &page)
}

/// A rollover step from the page (`step`: next, promote, retire or discard; `confirm=yes`
/// retires before Responses the old certificate signed are surely gone).
async fn rollover_step(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
    body: Bytes,
) -> Result<Response, AppError> {
    let form = FormFields::parse(&body);
    let rollover = state.rollover();
    let (actor, now) = (admin.actor(), Utc::now());
    let (taken, done) = match form.one("step").as_deref() {
        Some("next") => (
            rollover.prepare(&actor, now).await,
            "The next signing certificate is published; promote it when Microsoft 365 trusts it.",
        ),
        Some("promote") => (
            rollover.promote(&actor, now).await,
            "Promoted: idbridge signs with the new certificate (every node within seconds). Retire the previous one in a few minutes.",
        ),
        Some("retire") => (
            rollover
                .retire(&actor, form.one("confirm").as_deref() == Some("yes"), now)
                .await,
            "The previous certificate is retired: no longer published nor trusted by Microsoft 365.",
        ),
        Some("discard") => (
            rollover.discard(&actor, now).await,
            "The prepared next certificate was discarded.",
        ),
        _ => {
            return Err(AppError::bad_request(
                "Unknown rollover step",
                "Choose one of the buttons on the SAML page.",
            ))
        }
    };
    match taken {
        Ok(taken) => {
            state
                .reload_signing()
                .await
                .map_err(|e| AppError::Internal(e.to_string()))?;
            let microsoft = match &taken.microsoft {
                MicrosoftUpdate::Domains(d) if d.is_empty() => {
                    " No domain is federated to idbridge in Microsoft 365.".to_string()
                }
                MicrosoftUpdate::Domains(d) => {
                    format!(" Microsoft 365 updated: {}.", d.join(", "))
                }
                MicrosoftUpdate::ByHand(_) => " Microsoft 365 is not connected: give each domain federated by hand the certificates with the PowerShell below.".to_string(),
            };
            Ok(redirect_with_notice(
                "/admin/saml#rollover",
                &format!("{done}{microsoft}"),
            ))
        }
        Err(err) => {
            let status = match &err {
                RolloverError::Store(_)
                | RolloverError::Secret(_)
                | RolloverError::Certificate(_) => return Err(AppError::Internal(err.to_string())),
                RolloverError::TooSoon { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                RolloverError::Microsoft(_) => StatusCode::BAD_GATEWAY,
                _ => StatusCode::CONFLICT,
            };
            let chrome = Chrome::new(&admin, "saml").error(Some(format!("Nothing changed: {err}")));
            Ok(render(status, &build_page(&state, chrome)))
        }
    }
}

fn build_page(state: &AppState, chrome: Chrome) -> SamlPage {
    let config = &state.config;
    let base = config.base_url.trim_end_matches('/');
    let sign_in_url = format!("{base}/saml/sso");
    let sign_out_url = format!("{base}/saml/slo");
    let signing_set = state.idp.signing_set();
    let signing = signing_set.current.clone();
    let certificate = signing.certificate_der_base64().to_string();
    let issuer = config.saml_issuer().to_string();
    let domain_issuers: Vec<(String, String)> = config
        .saml
        .domain_issuers
        .iter()
        .map(|(d, i)| (d.clone(), i.clone()))
        .collect();
    let for_domain =
        |domain: &str| federation(domain, &state.idp.federation_settings(config, domain));
    let federations = if domain_issuers.is_empty() {
        vec![for_domain("contoso.com")]
    } else {
        domain_issuers
            .iter()
            .map(|(domain, _)| for_domain(domain))
            .collect()
    };
    let service_providers = state
        .idp
        .service_providers()
        .all()
        .iter()
        .map(|sp| SpLine {
            name: sp.name.clone(),
            entity_id: sp.entity_id.clone(),
            acs_urls: sp.acs_urls.clone(),
            slo_url: sp.slo_url.clone().unwrap_or_default(),
            name_id: match sp.name_id {
                NameIdSource::ImmutableId => "immutable ID",
                NameIdSource::Username => "username",
                NameIdSource::Email => "email",
            },
            name_id_format: sp.name_id.format(),
            requires_binding: sp.requires_m365_binding,
        })
        .collect();
    let overview = signing_set.overview();
    let by_hand = state.idp.federation_settings(config, "<domain>");
    SamlPage {
        chrome,
        stage: match overview.stage {
            RolloverStage::Steady => "steady",
            RolloverStage::NextPrepared => "next_prepared",
            RolloverStage::Promoted => "promoted",
        },
        next: overview.next.as_ref().map(CertLine::from),
        previous: overview.previous.as_ref().map(CertLine::from),
        rollover_powershell: by_hand.certificates_powershell("<domain>"),
        https: config.is_https(),
        metadata_url: format!("{base}/saml/metadata"),
        placeholder_domain: domain_issuers.is_empty(),
        issuer,
        sign_in_url,
        sign_out_url,
        domain_issuers,
        algorithm: config.saml.signature_algorithm.clone(),
        subject: signing.subject(),
        fingerprint: signing.fingerprint_sha256(),
        not_before: display_time(Some(signing.not_before().timestamp_millis())),
        not_after: display_time(Some(signing.not_after().timestamp_millis())),
        key_bits: signing.key_bits(),
        expiry_warning: expiry_warning(signing.not_after(), Utc::now()),
        certificate,
        service_providers,
        federations,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_within_thirty_days_of_expiry_and_after_it() {
        let now = Utc::now();
        assert!(expiry_warning(now + chrono::Duration::days(365), now).is_none());
        assert!(expiry_warning(now + chrono::Duration::days(31), now).is_none());
        let soon = expiry_warning(now + chrono::Duration::days(10), now).unwrap();
        assert!(soon.contains("expires in 9 days") || soon.contains("expires in 10 days"));
        let gone = expiry_warning(now - chrono::Duration::days(1), now).unwrap();
        assert!(gone.contains("expired"), "{gone}");
    }
}
