//! Console page: SAML, with the values to paste into Microsoft's federation settings, the
//! signing certificate and the registered service providers.

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Query, State};
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
use crate::sso::{NameIdSource, SpOrigin, SpRegistration, SpRegistrationError};
use crate::web::{render, AdminPrincipal, AppError};

/// Warn this many days before the signing certificate expires (Microsoft refuses assertions
/// signed with an expired one, and a new certificate must be given to Microsoft first).
const EXPIRY_WARNING_DAYS: i64 = 30;

/// Console routes of this page (behind the admin session guard).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/saml", get(page))
        .route("/admin/saml/certificates", post(rollover_step))
        .route("/admin/saml/service-providers", post(save_service_provider))
        .route(
            "/admin/saml/service-providers/remove",
            post(remove_service_provider),
        )
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
    /// Where it is changed: `Built in`, `idbridge.toml`, or who registered it in the console.
    origin: String,
    /// Registered in the console: it can be changed and removed there.
    editable: bool,
    signed_requests: bool,
    certificates: usize,
}

/// The register-or-change form, as entered (kept whole when refused).
#[derive(Debug, Default)]
struct SpForm {
    /// Changing a registered one (the entity ID is then fixed).
    editing: bool,
    entity_id: String,
    name: String,
    /// One URL per line.
    acs_urls: String,
    slo_url: String,
    name_id: &'static str,
    /// One `SAML name = user attribute` per line.
    attributes: String,
    require_binding: bool,
    certificate_pem: String,
    want_signed: bool,
}

impl SpForm {
    fn of(r: &SpRegistration) -> Self {
        Self {
            editing: true,
            entity_id: r.entity_id.clone(),
            name: r.name.clone(),
            acs_urls: r.acs_urls.join("\n"),
            slo_url: r.slo_url.clone().unwrap_or_default(),
            name_id: r.name_id.as_str(),
            attributes: r
                .attributes
                .iter()
                .map(|(k, v)| format!("{k} = {v}"))
                .collect::<Vec<_>>()
                .join("\n"),
            require_binding: r.require_m365_binding,
            certificate_pem: r.certificate_pem.clone().unwrap_or_default(),
            want_signed: r.want_authn_requests_signed,
        }
    }

    fn parse(form: &FormFields) -> Self {
        let text = |name: &str| form.one(name).unwrap_or_default();
        Self {
            editing: form.one("mode").as_deref() == Some("change"),
            entity_id: text("entity_id").trim().to_string(),
            name: text("name").trim().to_string(),
            acs_urls: text("acs_urls"),
            slo_url: text("slo_url").trim().to_string(),
            name_id: NameIdSource::parse(&text("name_id"))
                .unwrap_or(NameIdSource::Username)
                .as_str(),
            attributes: text("attributes"),
            require_binding: form.one("require_m365_binding").is_some(),
            certificate_pem: text("certificate_pem"),
            want_signed: form.one("want_authn_requests_signed").is_some(),
        }
    }

    /// The registration the form describes, or what to fix in the attribute lines.
    fn registration(&self) -> Result<SpRegistration, String> {
        let mut attributes = Vec::new();
        for (n, line) in self.attributes.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let Some((saml_name, attribute)) = line.split_once('=') else {
                return Err(format!(
                    "Attributes: line {} ({line:?}) is not \"SAML name = user attribute\". Fix: write one per line, e.g. mail = email.",
                    n + 1
                ));
            };
            attributes.push((saml_name.trim().to_string(), attribute.trim().to_string()));
        }
        let lines = |text: &str| -> Vec<String> {
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect()
        };
        let optional = |text: &str| Some(text.trim().to_string()).filter(|t| !t.is_empty());
        Ok(SpRegistration {
            entity_id: self.entity_id.clone(),
            name: self.name.clone(),
            acs_urls: lines(&self.acs_urls),
            slo_url: optional(&self.slo_url),
            name_id: NameIdSource::parse(self.name_id).unwrap_or(NameIdSource::Username),
            attributes,
            require_m365_binding: self.require_binding,
            certificate_pem: optional(&self.certificate_pem),
            want_authn_requests_signed: self.want_signed,
        })
    }
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
    sp_form: SpForm,
    /// The user attributes a service provider can receive, for the form's hint.
    attribute_names: String,
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

/// `?edit=<entity ID>` opens a console-registered service provider in the form.
#[derive(Debug, serde::Deserialize)]
struct PageQuery {
    edit: Option<String>,
}

async fn page(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
    Notice(notice): Notice,
    Query(query): Query<PageQuery>,
) -> Result<Response, AppError> {
    let mut chrome = Chrome::new(&admin, "saml").flash(notice);
    let mut form = SpForm::default();
    if let Some(entity_id) = query.edit {
        match state
            .idp
            .service_providers()
            .registration(&state.store, &entity_id)
            .await
        {
            Ok(r) => form = SpForm::of(&r),
            Err(SpRegistrationError::Store(e)) => return Err(AppError::Internal(e.to_string())),
            Err(e) => chrome = chrome.error(Some(e.to_string())),
        }
    }
    let mut page = build_page(&state, chrome);
    page.sp_form = form;
    Ok(render(StatusCode::OK, &page))
}

/// Registers or changes a service provider from the page's form; a refusal shows the form
/// again as entered, with what to fix.
async fn save_service_provider(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
    body: Bytes,
) -> Result<Response, AppError> {
    let form = SpForm::parse(&FormFields::parse(&body));
    let refuse = |status: StatusCode, message: String, form: SpForm| {
        let chrome = Chrome::new(&admin, "saml").error(Some(format!("Nothing changed: {message}")));
        let mut page = build_page(&state, chrome);
        page.sp_form = form;
        Ok(render(status, &page))
    };
    let registration = match form.registration() {
        Ok(r) => r,
        Err(message) => return refuse(StatusCode::UNPROCESSABLE_ENTITY, message, form),
    };
    let providers = state.idp.service_providers();
    let (actor, now) = (admin.actor(), Utc::now());
    let saved = if form.editing {
        providers
            .change(&state.store, registration, &actor, None, now)
            .await
    } else {
        providers
            .register(&state.store, registration, &actor, None, now)
            .await
    };
    match saved {
        Ok(sp) => Ok(redirect_with_notice(
            "/admin/saml#service-providers",
            &format!(
                "{} {}: sign-ins to it work now, on every node within seconds.",
                sp.name,
                if form.editing {
                    "is changed"
                } else {
                    "is registered"
                }
            ),
        )),
        Err(SpRegistrationError::Store(e)) => Err(AppError::Internal(e.to_string())),
        Err(e) => {
            let status = match e {
                SpRegistrationError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                SpRegistrationError::NotFound(_) => StatusCode::NOT_FOUND,
                _ => StatusCode::CONFLICT,
            };
            refuse(status, e.to_string(), form)
        }
    }
}

/// Removes a console-registered service provider.
async fn remove_service_provider(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
    body: Bytes,
) -> Result<Response, AppError> {
    let form = FormFields::parse(&body);
    let entity_id = form.one("entity_id").unwrap_or_default();
    match state
        .idp
        .service_providers()
        .unregister(&state.store, &entity_id, &admin.actor(), None, Utc::now())
        .await
    {
        Ok(()) => Ok(redirect_with_notice(
            "/admin/saml#service-providers",
            &format!("{entity_id} is removed: its sign-in requests are refused from now on."),
        )),
        Err(SpRegistrationError::Store(e)) => Err(AppError::Internal(e.to_string())),
        Err(e) => {
            let status = match e {
                SpRegistrationError::NotFound(_) => StatusCode::NOT_FOUND,
                _ => StatusCode::CONFLICT,
            };
            let chrome = Chrome::new(&admin, "saml").error(Some(format!("Nothing changed: {e}")));
            Ok(render(status, &build_page(&state, chrome)))
        }
    }
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
            name_id: sp.name_id.label(),
            name_id_format: sp.name_id.format(),
            requires_binding: sp.requires_m365_binding,
            origin: match &sp.origin {
                SpOrigin::BuiltIn => "Built in".to_string(),
                SpOrigin::File => "idbridge.toml".to_string(),
                SpOrigin::Console {
                    updated_at_ms,
                    updated_by,
                } => format!(
                    "Console, {} by {updated_by}",
                    display_time(Some(*updated_at_ms))
                ),
            },
            editable: matches!(sp.origin, SpOrigin::Console { .. }),
            signed_requests: sp.requires_signed_requests,
            certificates: sp
                .verification_keys
                .get()
                .map_or(0, |k| k.fingerprints().len()),
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
        sp_form: SpForm::default(),
        attribute_names: crate::directory::User::attribute_names().join(", "),
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
