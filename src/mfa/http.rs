//! HTTP endpoints of passkeys: JSON for the browser script `/mfa/passkey.js`, which runs the
//! WebAuthn calls (`navigator.credentials.create()` / `.get()`), and the "Passkeys" section
//! of the user's pages.
//!
//! Handlers are thin: they check the session or the parked sign-in, call
//! [`crate::mfa::passkey::Passkeys`], and answer JSON.
//!
//! There is no guessing throttle here (unlike the password and code forms): an assertion is a
//! signature by a private key that never leaves the authenticator, over a fresh challenge that
//! idbridge issued for this browser's sign-in; every failed one is refused and recorded.

use std::net::SocketAddr;

use askama::Template;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use axum_extra::extract::cookie::CookieJar;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;
use webauthn_rs::prelude::{PublicKeyCredential, RegisterPublicKeyCredential};

use super::passkey::{AddedBy, PasskeyError, PasskeySummary, RegistrationAnswer, SignIn, Verified};
use super::FactorKind;
use crate::directory::User;
use crate::events::{kind, Actor};
use crate::i18n::{Msg, Ui};
use crate::server::AppState;
use crate::web::{render, ApiError, AppError};

/// The SSO session cookie (the portal and the sign-in share it; see `crate::sso`).
const SESSION_COOKIE: &str = "idbridge_session";
/// The cookie that ties a parked sign-in to its browser (see `IdentityProvider::resume`).
const BROWSER_COOKIE: &str = "idbridge_browser";
/// Where the script posts the pending token once a sign-in ceremony passed.
const CONTINUE_PATH: &str = "/saml/login/continue";

/// Routes of passkeys.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/mfa/passkey.js", get(script))
        .route("/mfa/passkeys", get(list))
        .route("/mfa/passkeys/manage", get(manage_page))
        .route("/mfa/passkeys/register/start", post(register_start))
        .route("/mfa/passkeys/register/finish", post(register_finish))
        .route("/mfa/passkeys/authenticate/start", post(authenticate_start))
        .route(
            "/mfa/passkeys/authenticate/finish",
            post(authenticate_finish),
        )
        .route("/mfa/passkeys/{id}/delete", post(delete))
}

async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("../../templates/mfa/passkey.js"),
    )
        .into_response()
}

/// One passkey as the "Passkeys" section shows it.
#[derive(Debug, Clone)]
pub struct PasskeyView {
    pub id: String,
    pub label: String,
    pub created: String,
    pub last_used: String,
}

impl From<&PasskeySummary> for PasskeyView {
    fn from(p: &PasskeySummary) -> Self {
        Self {
            id: p.id.clone(),
            label: p.label.clone(),
            created: day(p.created_at),
            last_used: p.last_used_at.map(day).unwrap_or_else(|| "never".into()),
        }
    }
}

fn day(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_default()
}

/// The "Passkeys" section's data for a user: the portal renders `templates/mfa/passkeys.html`
/// with it (`{% include "mfa/passkeys.html" %}` where `passkeys` is in scope).
pub async fn passkey_views(state: &AppState, user_id: &str) -> Result<Vec<PasskeyView>, AppError> {
    let list = state.passkeys.list(user_id).await.map_err(page_error)?;
    Ok(list.iter().map(PasskeyView::from).collect())
}

/// A page of its own with the "Passkeys" section, for a signed-in user (the portal includes
/// the same section among the user's other factors).
#[derive(Template)]
#[template(path = "mfa/manage.html")]
struct ManagePage<'a> {
    ui: Ui,
    username: &'a str,
    passkeys: Vec<PasskeyView>,
}

async fn manage_page(State(state): State<AppState>, jar: CookieJar) -> Result<Response, AppError> {
    let Some((user, _)) = session_user(&state, &jar, Utc::now())
        .await
        .map_err(|e| AppError::Internal(e.message))?
    else {
        return Err(AppError::Refused {
            title: Msg::new("passkeys-signed-out-title").text(),
            message: Msg::new("passkeys-signed-out-message").text(),
            hint: Msg::new("passkeys-signed-out-hint").text(),
            reference: None,
        });
    };
    let passkeys = passkey_views(&state, &user.id).await?;
    Ok(render(
        StatusCode::OK,
        &ManagePage {
            ui: Ui::current(),
            username: &user.username,
            passkeys,
        },
    ))
}

async fn list(State(state): State<AppState>, jar: CookieJar) -> Result<Response, ApiError> {
    let (user, _) = signed_in(&state, &jar, Utc::now()).await?;
    let passkeys = state.passkeys.list(&user.id).await.map_err(api_error)?;
    Ok(Json(json!({ "passkeys": passkeys })).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterStart {
    /// A parked sign-in at its enrolment step; without it, the session's user.
    #[serde(default)]
    pending: Option<String>,
}

async fn register_start(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    jar: CookieJar,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let now = Utc::now();
    same_origin(&state, &headers, "/mfa/passkeys/register/start", &addr).await?;
    let body: RegisterStart = if body.is_empty() {
        RegisterStart::default()
    } else {
        parse(&body)?
    };
    let (user, by) = registrant(&state, &jar, body.pending.as_deref(), now).await?;
    let challenge = state
        .passkeys
        .start_registration(&user, by, now)
        .await
        .map_err(api_error)?;
    Ok(Json(json!({"ceremony": challenge.ceremony, "options": challenge.options})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterFinish {
    #[serde(default)]
    pending: Option<String>,
    ceremony: String,
    label: String,
    credential: RegisterPublicKeyCredential,
}

async fn register_finish(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    jar: CookieJar,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let now = Utc::now();
    let ip = Some(addr.ip().to_string());
    same_origin(&state, &headers, "/mfa/passkeys/register/finish", &addr).await?;
    let body: RegisterFinish = parse(&body)?;
    let (user, by) = registrant(&state, &jar, body.pending.as_deref(), now).await?;
    let passkey = state
        .passkeys
        .finish_registration(
            &user,
            by,
            RegistrationAnswer {
                ceremony: &body.ceremony,
                label: &body.label,
                response: &body.credential,
            },
            ip.clone(),
            now,
        )
        .await
        .map_err(api_error)?;
    let Some(pending) = body.pending.as_deref() else {
        return Ok((StatusCode::CREATED, Json(json!({ "passkey": passkey }))).into_response());
    };
    // Enrolled during a sign-in: the new passkey (user-verified when it was made) is the
    // second factor of this sign-in, which goes on.
    let browser = jar.get(BROWSER_COOKIE).map(|c| c.value().to_string());
    let verified = Verified {
        user,
        passkey_id: passkey.id.clone(),
    };
    factor_passed(
        &state,
        pending,
        browser.as_deref(),
        &verified,
        false,
        ip,
        now,
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"passkey": passkey, "next": CONTINUE_PATH})),
    )
        .into_response())
}

/// Who is adding a passkey: the session's user, or the user of a parked sign-in from this
/// browser whose password passed (its enrolment step).
async fn registrant<'a>(
    state: &AppState,
    jar: &CookieJar,
    pending: Option<&'a str>,
    now: DateTime<Utc>,
) -> Result<(User, AddedBy<'a>), ApiError> {
    let Some(pending) = pending else {
        let (user, passed_mfa) = signed_in(state, jar, now).await?;
        return Ok((user, AddedBy::Session { passed_mfa }));
    };
    let browser = jar.get(BROWSER_COOKIE).map(|c| c.value().to_string());
    let Some(user_id) = pending_user(state, pending, browser.as_deref(), now).await? else {
        return Err(ApiError {
            status: StatusCode::FORBIDDEN,
            code: "sign_in_expired",
            message: "type your password first".into(),
            field: None,
        });
    };
    let user = state
        .directory
        .get_user(&user_id)
        .await
        .map_err(ApiError::internal)?;
    Ok((user, AddedBy::SignIn { pending }))
}

async fn delete(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    jar: CookieJar,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let now = Utc::now();
    same_origin(&state, &headers, "/mfa/passkeys/delete", &addr).await?;
    let (user, _) = signed_in(&state, &jar, now).await?;
    let removed = state
        .passkeys
        .remove(&user, &id, Some(addr.ip().to_string()), now)
        .await
        .map_err(api_error)?;
    if !removed {
        return Err(ApiError::not_found("you have no passkey with this id"));
    }
    Ok(Json(json!({"removed": id})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthenticateStart {
    pending: String,
}

async fn authenticate_start(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    jar: CookieJar,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let now = Utc::now();
    same_origin(&state, &headers, "/mfa/passkeys/authenticate/start", &addr).await?;
    let body: AuthenticateStart = parse(&body)?;
    let browser = jar.get(BROWSER_COOKIE).map(|c| c.value().to_string());
    let user_id = pending_user(&state, &body.pending, browser.as_deref(), now).await?;
    let sign_in = SignIn::of(&body.pending, user_id.as_deref());
    let challenge = state
        .passkeys
        .start_sign_in(sign_in, now)
        .await
        .map_err(api_error)?;
    Ok(Json(json!({"ceremony": challenge.ceremony, "options": challenge.options})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthenticateFinish {
    pending: String,
    ceremony: String,
    credential: PublicKeyCredential,
}

async fn authenticate_finish(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    jar: CookieJar,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let now = Utc::now();
    same_origin(&state, &headers, "/mfa/passkeys/authenticate/finish", &addr).await?;
    let body: AuthenticateFinish = parse(&body)?;
    let browser = jar.get(BROWSER_COOKIE).map(|c| c.value().to_string());
    let user_id = pending_user(&state, &body.pending, browser.as_deref(), now).await?;
    let sign_in = SignIn::of(&body.pending, user_id.as_deref());
    let verified = state
        .passkeys
        .finish_sign_in(
            sign_in,
            &body.ceremony,
            &body.credential,
            Some(addr.ip().to_string()),
            now,
        )
        .await
        .inspect_err(|err| {
            // Counted only as a second factor: a passwordless passkey is the first factor.
            if matches!(err, PasskeyError::Refused(_)) && user_id.is_some() {
                metrics::counter!(
                    crate::telemetry::metrics::names::MFA_CHECKS,
                    "factor" => FactorKind::Passkey.as_str(),
                    "outcome" => "failed"
                )
                .increment(1);
            }
        })
        .map_err(api_error)?;
    factor_passed(
        &state,
        &body.pending,
        browser.as_deref(),
        &verified,
        user_id.is_none(),
        Some(addr.ip().to_string()),
        now,
    )
    .await?;
    Ok(Json(json!({"next": CONTINUE_PATH})).into_response())
}

/// Refuses a state-changing request that may come from another site (CSRF).
///
/// The session cookie must travel on Microsoft's cross-site POST, so it is `SameSite=None`
/// over https and cannot guard these endpoints by itself. Two checks do instead:
/// - browsers send `Origin` with every POST (Fetch standard, "append a request `Origin`
///   header"), and a page elsewhere cannot forge it, so it must be idbridge's own origin;
/// - the body must be `application/json`: an HTML form cannot send that type, and a script
///   on another origin can only with a CORS preflight, which idbridge never grants.
async fn same_origin(
    state: &AppState,
    headers: &HeaderMap,
    path: &str,
    addr: &SocketAddr,
) -> Result<(), ApiError> {
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let ours = state.passkeys.origin();
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    let reason = if ours.is_empty() || origin != Some(ours) {
        "cross_origin"
    } else if !json {
        "not_json"
    } else {
        return Ok(());
    };
    crate::web::session::record_refusal(
        state,
        kind::PASSKEY_REFUSED,
        &Actor::Anonymous,
        reason,
        path,
        Some(addr.ip().to_string()),
    )
    .await;
    Err(ApiError::forbidden(
        "this request must come from idbridge's own pages (Origin) with a JSON body",
    ))
}

/// The user of the browser's live SSO session, if any, and whether that session passed a
/// second factor.
async fn session_user(
    state: &AppState,
    jar: &CookieJar,
    now: DateTime<Utc>,
) -> Result<Option<(User, bool)>, ApiError> {
    let Some(token) = jar.get(SESSION_COOKIE).map(|c| c.value().to_string()) else {
        return Ok(None);
    };
    let cached = state
        .idp
        .session_user(&token, now)
        .await
        .map_err(ApiError::internal)?;
    Ok(cached.map(|entry| (entry.1.clone(), entry.0.mfa_at.is_some())))
}

async fn signed_in(
    state: &AppState,
    jar: &CookieJar,
    now: DateTime<Utc>,
) -> Result<(User, bool), ApiError> {
    session_user(state, jar, now)
        .await?
        .ok_or_else(|| ApiError {
            status: StatusCode::UNAUTHORIZED,
            code: "unauthorized",
            message: "sign in to idbridge first".into(),
            field: None,
        })
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body cannot be read: {e}")))
}

/// The one mapping of passkey errors to JSON answers.
fn api_error(err: PasskeyError) -> ApiError {
    match err {
        PasskeyError::Refused(refusal) => ApiError {
            status: StatusCode::FORBIDDEN,
            code: refusal.code(),
            message: refusal.message().into(),
            field: None,
        },
        PasskeyError::BadLabel => ApiError::validation("label", err.to_string()),
        PasskeyError::SecondFactorFirst => ApiError {
            status: StatusCode::FORBIDDEN,
            code: "second_factor_needed",
            message: err.to_string(),
            field: None,
        },
        PasskeyError::PasswordlessDisabled
        | PasskeyError::NoPasskeys
        | PasskeyError::Unavailable => ApiError {
            status: StatusCode::CONFLICT,
            code: "not_available",
            message: err.to_string(),
            field: None,
        },
        other => ApiError::internal(other),
    }
}

fn page_error(err: PasskeyError) -> AppError {
    AppError::Internal(err.to_string())
}

/// The user who passed the first factor of a parked sign-in from this browser (`None`: nobody
/// yet, a passwordless sign-in). A sign-in that expired or belongs to another browser is
/// refused like the login form refuses it.
async fn pending_user(
    state: &AppState,
    pending: &str,
    browser: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Option<String>, ApiError> {
    match state.idp.resume(pending, browser, now).await {
        Ok(request) => Ok(request.first_factor.map(|(user_id, _)| user_id)),
        Err(err) if err.is_bad_request() => Err(ApiError {
            status: StatusCode::FORBIDDEN,
            code: "sign_in_expired",
            message: err.to_string(),
            field: None,
        }),
        Err(err) => Err(ApiError::internal(err)),
    }
}

/// Tells the sign-in flow that the passkey passed: for a passwordless sign-in it is the first
/// factor, and being user-verified (webauthn-rs requires UV) also a second one (possession
/// plus PIN or biometrics, NIST SP 800-63B §5.1.9); for a second factor, the second factor.
async fn factor_passed(
    state: &AppState,
    pending: &str,
    browser: Option<&str>,
    verified: &Verified,
    passwordless: bool,
    client_ip: Option<String>,
    now: DateTime<Utc>,
) -> Result<(), ApiError> {
    let passed = if passwordless {
        state
            .idp
            .first_factor_passed(
                pending,
                browser,
                &verified.user.id,
                Some(FactorKind::Passkey),
                now,
            )
            .await
    } else {
        state
            .idp
            .second_factor_passed(
                pending,
                browser,
                &verified.user,
                FactorKind::Passkey,
                client_ip,
                now,
            )
            .await
    };
    match passed {
        Ok(_) => Ok(()),
        Err(err) if err.is_bad_request() => Err(ApiError {
            status: StatusCode::FORBIDDEN,
            code: "sign_in_expired",
            message: err.to_string(),
            field: None,
        }),
        Err(err) => Err(ApiError::internal(err)),
    }
}
