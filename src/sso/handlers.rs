//! HTTP endpoints of the identity provider. Paths are fixed: admins paste them into Microsoft's
//! federation settings.

use std::net::SocketAddr;

use askama::Template;
use axum::extract::{ConnectInfo, Path, Query, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use axum_extra::extract::cookie::{Cookie, CookieJar};
use chrono::Utc;
use secrecy::SecretString;
use serde::Deserialize;

use super::idp::{
    Answer, CodeResult, IncomingRequest, LoginOutcome, LogoutMessage, LogoutOutcome, RefusalNotice,
    SsoError, Step,
};
use crate::i18n::{Msg, Ui};
use crate::saml::RedirectQuery;
use crate::server::AppState;
use crate::web::{new_cookie, new_token, render, AppError};

/// The idbridge sign-in session (the user portal's too); it must survive Microsoft's
/// cross-site POST.
pub const SESSION_COOKIE: &str = "idbridge_session";
/// Ties a login form to the browser that received the AuthnRequest (login-CSRF guard).
const BROWSER_COOKIE: &str = "idbridge_browser";

/// Routes of the SAML identity provider.
pub fn router() -> Router<AppState> {
    let timed = Router::new()
        .route("/saml/sso", get(sso_redirect).post(sso_post))
        // A federated domain's own sign-in URL (its passiveSignInUri): the same endpoint; the
        // Response's issuer is the one of the user's UPN domain either way, as Entra requires.
        .route("/saml/sso/{domain}", get(sso_redirect).post(sso_post))
        .route("/saml/login", post(login))
        .route("/saml/login/continue", post(continue_sign_in))
        .route("/saml/login/code", post(second_factor_code))
        .route("/saml/login/enrol", post(confirm_enrolment))
        .route("/saml/login/password", post(new_password))
        .route_layer(axum::middleware::from_fn(time_sign_in));
    Router::new()
        .route("/saml/metadata", get(metadata))
        .route("/saml/metadata/{domain}", get(domain_metadata))
        .route("/saml/slo", get(slo_redirect).post(slo_post))
        .merge(timed)
}

/// Records how long a sign-in step took, labelled by its route (a fixed set: the matched
/// pattern, never the request's own path or query).
async fn time_sign_in(
    route: axum::extract::MatchedPath,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    metrics::histogram!(
        crate::telemetry::metrics::names::SSO_DURATION,
        "route" => route.as_str().to_string()
    )
    .record(started.elapsed().as_secs_f64());
    response
}

/// SAML protocol parameters as the bindings name them.
#[derive(Debug, Default, Deserialize)]
pub struct SamlParams {
    #[serde(rename = "SAMLRequest")]
    saml_request: Option<String>,
    #[serde(rename = "RelayState")]
    relay_state: Option<String>,
}

#[derive(Template)]
#[template(path = "sso/login.html")]
struct LoginPage<'a> {
    ui: Ui,
    sp_name: &'a str,
    pending: &'a str,
    username: &'a str,
    error: Option<&'a str>,
    /// Offer "Sign in with a passkey" (`[mfa] passwordless`).
    passwordless: bool,
}

#[derive(Template)]
#[template(path = "sso/second_factor.html")]
struct SecondFactorPage<'a> {
    ui: Ui,
    sp_name: &'a str,
    username: &'a str,
    pending: &'a str,
    totp: bool,
    recovery_codes: bool,
    /// The user has a passkey: the page offers it (`/mfa/passkey.js`).
    passkeys: bool,
    contact: &'a str,
    error: Option<&'a str>,
}

#[derive(Template)]
#[template(path = "sso/enrol.html")]
struct EnrolPage<'a> {
    ui: Ui,
    pending: &'a str,
    qr_data_url: &'a str,
    secret: &'a str,
    error: Option<&'a str>,
    /// Offer a passkey instead of the app (passkeys work at this base URL).
    passkeys: bool,
}

#[derive(Template)]
#[template(path = "sso/recovery_codes.html")]
struct RecoveryCodesPage<'a> {
    ui: Ui,
    codes: &'a [String],
    /// Where "continue" posts, with one hidden field.
    action: &'a str,
    field: &'a str,
    value: &'a str,
}

#[derive(Template)]
#[template(path = "sso/change_password.html")]
struct ChangePasswordPage<'a> {
    ui: Ui,
    pending: &'a str,
    username: &'a str,
    expired: bool,
    rules: Vec<Msg>,
    error: Option<&'a str>,
}

#[derive(Template)]
#[template(path = "sso/post.html")]
struct PostPage<'a> {
    ui: Ui,
    sp_name: &'a str,
    url: &'a str,
    field: &'a str,
    /// Written unescaped (a 7 KB value escaped byte by byte showed in the profile): only
    /// ever base64, checked by [`answer_page`].
    value: &'a str,
    relay_state: Option<&'a str>,
}

/// Whether `value` holds only the base64 alphabet, which needs no HTML escaping.
fn is_base64(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
}

async fn metadata(State(state): State<AppState>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/samlmetadata+xml"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        state.idp.metadata().to_string(),
    )
        .into_response()
}

/// A federated domain's metadata: its own issuer as the entity ID, its sign-in URL.
async fn domain_metadata(
    State(state): State<AppState>,
    Path(domain): Path<String>,
) -> Result<Response, AppError> {
    let xml = state
        .idp
        .domain_metadata(&state.config, &domain)
        .ok_or(AppError::NotFound)?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/samlmetadata+xml"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        xml,
    )
        .into_response())
}

/// The raw query goes along: a service provider that signs its requests signs it as sent.
async fn sso_redirect(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    jar: CookieJar,
    RawQuery(raw): RawQuery,
    Query(params): Query<SamlParams>,
) -> Result<Response, AppError> {
    sso(state, addr, jar, params, Some(raw.unwrap_or_default())).await
}

async fn sso_post(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    jar: CookieJar,
    Form(params): Form<SamlParams>,
) -> Result<Response, AppError> {
    sso(state, addr, jar, params, None).await
}

async fn sso(
    state: AppState,
    addr: SocketAddr,
    jar: CookieJar,
    params: SamlParams,
    raw_query: Option<String>,
) -> Result<Response, AppError> {
    let now = Utc::now();
    let ip = Some(addr.ip().to_string());
    let request = match state
        .idp
        .receive_authn_request(
            params.saml_request.as_deref(),
            raw_query.as_deref(),
            params.relay_state,
            now,
        )
        .await
    {
        Ok(request) => request,
        Err(err) => return Err(rejected(&state, err, "/saml/sso", ip).await),
    };
    if !request.force_authn {
        if let Some(token) = jar.get(SESSION_COOKIE).map(|c| c.value().to_string()) {
            if let Some(cached) = state
                .idp
                .session_user(&token, now)
                .await
                .map_err(internal)?
            {
                let (session, user) = &*cached;
                if state.idp.needs_step_up(&request, session, user) {
                    if request.is_passive {
                        return match state.idp.passive_failure(&request, now).await {
                            Ok(answer) => Ok(answer_page(&state, answer)),
                            Err(err) => Err(rejected(&state, err, "/saml/sso", ip).await),
                        };
                    }
                    let (jar, browser) = browser_cookie(&state, jar);
                    return match state
                        .idp
                        .park_step_up(&request, session, &browser, now)
                        .await
                    {
                        Ok((pending, request)) => {
                            Ok(proceed(&state, jar, &pending, &request, ip, now, None).await)
                        }
                        Err(err) => Err(rejected(&state, err, "/saml/sso", ip).await),
                    };
                }
                return match state
                    .idp
                    .answer(&request, session, user, ip.clone(), now)
                    .await
                {
                    Ok(answer) => Ok(answer_page(&state, answer)),
                    Err(err) => Err(rejected(&state, err, "/saml/sso", ip).await),
                };
            }
        }
    }
    if request.is_passive {
        return match state.idp.passive_failure(&request, now).await {
            Ok(answer) => Ok(answer_page(&state, answer)),
            Err(err) => Err(rejected(&state, err, "/saml/sso", ip).await),
        };
    }
    match show_login(&state, jar, &request, None, StatusCode::OK, None).await {
        Ok(page) => Ok(page),
        Err(err) => Err(rejected(&state, err, "/saml/sso", ip).await),
    }
}

async fn show_login(
    state: &AppState,
    jar: CookieJar,
    request: &IncomingRequest,
    error: Option<&str>,
    status: StatusCode,
    retry_of: Option<&str>,
) -> Result<Response, SsoError> {
    let (jar, browser) = browser_cookie(state, jar);
    // A retry keeps the same pending token: a second token for the same AuthnRequest would
    // let it be answered twice (SAML core §3.2.2: one Response per request, InResponseTo).
    let pending = match retry_of {
        Some(token) => token.to_string(),
        None => state.idp.park(request, &browser, Utc::now()).await?,
    };
    let page = LoginPage {
        ui: Ui::current(),
        sp_name: &request.sp.name,
        pending: &pending,
        username: request.login_hint.as_deref().unwrap_or_default(),
        error,
        passwordless: state.passkeys.passwordless(),
    };
    Ok((jar, render(status, &page)).into_response())
}

/// Goes on with a portal sign-in whose password passed on the portal's own form: the same
/// steps as a SAML sign-in (a new password when expired or required, a second factor or its
/// enrolment) on a parked sign-in whose target is the portal, ending in a session and `/`.
pub async fn portal_steps(
    state: &AppState,
    jar: CookieJar,
    user: &crate::directory::User,
    after: &str,
    ip: Option<String>,
    now: chrono::DateTime<Utc>,
) -> Response {
    let (jar, browser) = browser_cookie(state, jar);
    let request = IncomingRequest {
        first_factor: Some((user.id.clone(), now.timestamp_millis())),
        ..state.idp.portal_request(Some(user.username.clone()), after)
    };
    match state.idp.park(&request, &browser, now).await {
        Ok(pending) => proceed(state, jar, &pending, &request, ip, now, None).await,
        Err(err) => (jar, internal(err)).into_response(),
    }
}

/// The browser's login cookie (made if missing) and its value.
fn browser_cookie(state: &AppState, jar: CookieJar) -> (CookieJar, String) {
    let browser = jar
        .get(BROWSER_COOKIE)
        .map(|c| c.value().to_string())
        .unwrap_or_else(new_token);
    // Cross-site like the session cookie: Microsoft's POST must carry it, or every sign-in in
    // another tab would replace it and fail this one. The login-CSRF guard is the binding of
    // the pending request to this secret, not SameSite.
    let jar = jar.add(new_cookie(
        BROWSER_COOKIE,
        browser.clone(),
        state.config.is_https(),
        true,
    ));
    (jar, browser)
}

/// Renders the next step of a parked sign-in, or signs the user in and answers the request.
async fn proceed(
    state: &AppState,
    jar: CookieJar,
    pending: &str,
    request: &IncomingRequest,
    ip: Option<String>,
    now: chrono::DateTime<Utc>,
    error: Option<&str>,
) -> Response {
    let status = if error.is_some() {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    };
    let step = match state.idp.next_step(pending, request, ip.clone(), now).await {
        Ok(step) => step,
        Err(err) => return (jar, rejected(state, err, "/saml/login", ip).await).into_response(),
    };
    match step {
        Step::Password => {
            match show_login(state, jar.clone(), request, error, status, Some(pending)).await {
                Ok(page) => page,
                Err(err) => (jar, internal(err)).into_response(),
            }
        }
        Step::ChangePassword { user, expired } => {
            let page = ChangePasswordPage {
                ui: Ui::current(),
                pending,
                username: &user.username,
                expired,
                rules: crate::i18n::policy_rules(state.directory.policy()),
                error,
            };
            (jar, render(status, &page)).into_response()
        }
        Step::SecondFactor { user, factors } => {
            let page = SecondFactorPage {
                ui: Ui::current(),
                sp_name: &request.sp.name,
                username: &user.username,
                pending,
                totp: factors.totp,
                recovery_codes: factors.recovery_codes > 0,
                passkeys: factors.passkeys > 0,
                contact: state.idp.support_contact(),
                error,
            };
            (jar, render(status, &page)).into_response()
        }
        Step::Enrol { enrolment, .. } => {
            let page = EnrolPage {
                ui: Ui::current(),
                pending,
                qr_data_url: &enrolment.qr_data_url,
                secret: &enrolment.secret_base32,
                error,
                passkeys: state.passkeys.available(),
            };
            (jar, render(status, &page)).into_response()
        }
        Step::Refused(notice) => {
            (jar, refusal_page(state, &notice, &request.sp.name)).into_response()
        }
        Step::SignedIn {
            user,
            session,
            token,
        } => {
            let jar = jar.add(new_cookie(
                SESSION_COOKIE,
                token,
                state.config.is_https(),
                true,
            ));
            if request.is_portal() {
                // No assertion for the portal: the session is what the user signed in for.
                // Only a portal path (set by the portal itself) is followed: no open redirect.
                let after = Some(request.acs_url.as_str())
                    .filter(|p| p.starts_with('/') && !p.starts_with("//"))
                    .unwrap_or("/");
                return (jar, axum::response::Redirect::to(after)).into_response();
            }
            match state
                .idp
                .answer(request, &session, &user, ip.clone(), now)
                .await
            {
                Ok(answer) => (jar, answer_page(state, answer)).into_response(),
                Err(err) => (jar, rejected(state, err, "/saml/login", ip).await).into_response(),
            }
        }
    }
}

/// The parked sign-in a step's form names, from the browser that started it; a refusal is
/// its page (and an event).
async fn parked(
    state: &AppState,
    browser: Option<&str>,
    pending: &str,
    ip: &Option<String>,
    now: chrono::DateTime<Utc>,
) -> Result<IncomingRequest, AppError> {
    match state.idp.resume(pending, browser, now).await {
        Ok(request) => Ok(request),
        Err(err) => Err(rejected(state, err, "/saml/login", ip.clone()).await),
    }
}

/// A form that names a parked sign-in.
#[derive(Deserialize)]
pub struct PendingForm {
    pending: String,
}

async fn continue_sign_in(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    jar: CookieJar,
    Form(form): Form<PendingForm>,
) -> Result<Response, AppError> {
    let now = Utc::now();
    let ip = Some(addr.ip().to_string());
    let browser = jar.get(BROWSER_COOKIE).map(|c| c.value().to_string());
    let request = parked(&state, browser.as_deref(), &form.pending, &ip, now).await?;
    Ok(proceed(&state, jar, &form.pending, &request, ip, now, None).await)
}

/// The second-factor form's fields.
#[derive(Deserialize)]
pub struct CodeForm {
    pending: String,
    code: String,
}

async fn second_factor_code(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    jar: CookieJar,
    Form(form): Form<CodeForm>,
) -> Result<Response, AppError> {
    let now = Utc::now();
    let ip = Some(addr.ip().to_string());
    let browser = jar.get(BROWSER_COOKIE).map(|c| c.value().to_string());
    let (result, request) = match state
        .idp
        .check_second_factor(
            &form.pending,
            browser.as_deref(),
            &form.code,
            ip.clone(),
            now,
        )
        .await
    {
        Ok(result) => result,
        Err(err) => return Err(rejected(&state, err, "/saml/login", ip).await),
    };
    Ok(match result {
        CodeResult::Passed => proceed(&state, jar, &form.pending, &request, ip, now, None).await,
        CodeResult::Wrong => {
            let error = Msg::new("err-wrong-code").text();
            proceed(&state, jar, &form.pending, &request, ip, now, Some(&error)).await
        }
        CodeResult::Throttled(locked) => {
            let mut page = proceed(
                &state,
                jar,
                &form.pending,
                &request,
                ip,
                now,
                Some(&Msg::locked(&locked, now).text()),
            )
            .await;
            *page.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            page
        }
    })
}

async fn confirm_enrolment(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    jar: CookieJar,
    Form(form): Form<CodeForm>,
) -> Result<Response, AppError> {
    let now = Utc::now();
    let ip = Some(addr.ip().to_string());
    let browser = jar.get(BROWSER_COOKIE).map(|c| c.value().to_string());
    let codes = match state
        .idp
        .confirm_enrolment(
            &form.pending,
            browser.as_deref(),
            &form.code,
            ip.clone(),
            now,
        )
        .await
    {
        Ok(codes) => codes,
        Err(err) => return Err(rejected(&state, err, "/saml/login", ip).await),
    };
    match codes {
        Some(codes) => Ok(render(
            StatusCode::OK,
            &RecoveryCodesPage {
                ui: Ui::current(),
                codes: &codes,
                action: "/saml/login/continue",
                field: "pending",
                value: &form.pending,
            },
        )),
        None => {
            let request = parked(&state, browser.as_deref(), &form.pending, &ip, now).await?;
            let error = Msg::new("err-enrol-code").text();
            Ok(proceed(&state, jar, &form.pending, &request, ip, now, Some(&error)).await)
        }
    }
}

/// The new-password form's fields.
#[derive(Deserialize)]
pub struct NewPasswordForm {
    pending: String,
    new_password: String,
    confirm_password: String,
}

async fn new_password(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    jar: CookieJar,
    Form(form): Form<NewPasswordForm>,
) -> Result<Response, AppError> {
    let now = Utc::now();
    let ip = Some(addr.ip().to_string());
    let browser = jar.get(BROWSER_COOKIE).map(|c| c.value().to_string());
    let request = parked(&state, browser.as_deref(), &form.pending, &ip, now).await?;
    if form.new_password != form.confirm_password {
        let error = Msg::new("err-passwords-differ").text();
        return Ok(proceed(&state, jar, &form.pending, &request, ip, now, Some(&error)).await);
    }
    let password = SecretString::from(form.new_password);
    match state
        .idp
        .change_password(&form.pending, browser.as_deref(), &password, now)
        .await
    {
        Ok(Ok(())) => Ok(proceed(&state, jar, &form.pending, &request, ip, now, None).await),
        Ok(Err(refused)) => {
            let error = match &refused {
                crate::directory::DirectoryError::Policy(violation) => {
                    Msg::password_refused(violation)
                }
                // Not a rule the employee broke (an account changed meanwhile): as it is.
                other => Msg::with("err-password-refused", "reason", other),
            }
            .text();
            let mut page =
                proceed(&state, jar, &form.pending, &request, ip, now, Some(&error)).await;
            *page.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
            Ok(page)
        }
        Err(err) => Err(rejected(&state, err, "/saml/login", ip).await),
    }
}

/// The login form's fields.
#[derive(Deserialize)]
pub struct LoginForm {
    pending: String,
    username: String,
    password: String,
}

async fn login(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    jar: CookieJar,
    Form(form): Form<LoginForm>,
) -> Result<Response, AppError> {
    let now = Utc::now();
    let ip = Some(addr.ip().to_string());
    let browser = jar.get(BROWSER_COOKIE).map(|c| c.value().to_string());
    let request = parked(&state, browser.as_deref(), &form.pending, &ip, now).await?;
    let password = SecretString::from(form.password);
    match state
        .idp
        .login(
            &form.username,
            &password,
            Some(&request.sp),
            ip.clone(),
            now,
        )
        .await
        .map_err(internal)?
    {
        LoginOutcome::Failed => {
            // The retry posts the same pending token, so the request is still answered once.
            let request = IncomingRequest {
                login_hint: Some(form.username.clone()),
                ..request
            };
            show_login(
                &state,
                jar,
                &request,
                Some(&Msg::new("err-wrong-password").text()),
                StatusCode::UNAUTHORIZED,
                Some(&form.pending),
            )
            .await
            .map_err(internal)
        }
        LoginOutcome::Throttled(locked) => {
            // Counted, not written per guess: the lock's start is its own event.
            crate::web::session::record_refusal(
                &state,
                crate::events::kind::SIGN_IN_THROTTLED,
                &crate::events::Actor::Anonymous,
                locked.reason_code(),
                "/saml/login",
                ip.clone(),
            )
            .await;
            let request = IncomingRequest {
                login_hint: Some(form.username.clone()),
                ..request
            };
            show_login(
                &state,
                jar,
                &request,
                Some(&Msg::locked(&locked, now).text()),
                StatusCode::TOO_MANY_REQUESTS,
                Some(&form.pending),
            )
            .await
            .map_err(internal)
        }
        LoginOutcome::Refused(notice) => {
            let _ = state.idp.take_pending(&form.pending).await;
            Err(refusal_page(&state, &notice, &request.sp.name))
        }
        LoginOutcome::PasswordPassed(user) => {
            let request = match state
                .idp
                .first_factor_passed(&form.pending, browser.as_deref(), &user.id, None, now)
                .await
            {
                Ok(request) => request,
                Err(err) => return Err(rejected(&state, err, "/saml/login", ip).await),
            };
            Ok(proceed(&state, jar, &form.pending, &request, ip, now, None).await)
        }
    }
}

/// The Redirect binding's signature covers the query exactly as sent (SAML bindings
/// §3.4.4.1), so this handler takes the raw query string, not axum's decoded values.
async fn slo_redirect(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    jar: CookieJar,
    RawQuery(raw): RawQuery,
) -> Result<Response, AppError> {
    let ip = Some(addr.ip().to_string());
    match RedirectQuery::parse(raw.as_deref().unwrap_or_default(), "SAMLRequest") {
        Ok(query) => slo(state, ip, jar, LogoutMessage::Redirect(query)).await,
        Err(err) => Err(rejected(&state, SsoError::Malformed(err), "/saml/slo", ip).await),
    }
}

async fn slo_post(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    jar: CookieJar,
    Form(params): Form<SamlParams>,
) -> Result<Response, AppError> {
    let message = LogoutMessage::Post {
        saml_request: params.saml_request.unwrap_or_default(),
        relay_state: params.relay_state,
    };
    slo(state, Some(addr.ip().to_string()), jar, message).await
}

async fn slo(
    state: AppState,
    ip: Option<String>,
    jar: CookieJar,
    message: LogoutMessage,
) -> Result<Response, AppError> {
    let saml_request = match &message {
        LogoutMessage::Redirect(query) => query.message.as_deref(),
        LogoutMessage::Post { saml_request, .. } => Some(saml_request.as_str()),
    };
    // A bare GET (a link or an image on any page) carries no request: it ends nothing.
    if saml_request.is_none_or(|s| s.trim().is_empty()) {
        let ui = Ui::current();
        return Ok(render(
            StatusCode::OK,
            &crate::web::MessagePage {
                title: &ui.t("slo-none-title"),
                message: &ui.t("slo-none-message"),
                hint: Some(&ui.t("slo-hint")),
                reference: None,
                ui: ui.clone(),
            },
        ));
    }
    let token = jar.get(SESSION_COOKIE).map(|c| c.value().to_string());
    let outcome = state
        .idp
        .logout(&message, token.as_deref(), ip.clone(), Utc::now())
        .await;
    match outcome {
        Ok(LogoutOutcome::Ended(answer)) => {
            let jar = jar.remove(Cookie::build(SESSION_COOKIE).path("/"));
            match answer {
                Some(answer) => Ok((jar, answer_page(&state, answer)).into_response()),
                None => {
                    let ui = Ui::current();
                    Ok((
                        jar,
                        render(
                            StatusCode::OK,
                            &crate::web::MessagePage {
                                title: &ui.t("slo-done-title"),
                                message: &ui.t("slo-done-message"),
                                hint: Some(&ui.t("slo-done-hint")),
                                reference: None,
                                ui: ui.clone(),
                            },
                        ),
                    )
                        .into_response())
                }
            }
        }
        Ok(LogoutOutcome::Refused) => {
            let ui = Ui::current();
            Ok(render(
                StatusCode::BAD_REQUEST,
                &crate::web::MessagePage {
                    title: &ui.t("slo-refused-title"),
                    message: &ui.t("slo-refused-message"),
                    hint: Some(&ui.t("slo-hint")),
                    reference: None,
                    ui: ui.clone(),
                },
            ))
        }
        Err(err) => Err(rejected(&state, err, "/saml/slo", ip).await),
    }
}

/// Renders an answer: the auto-posting form, or the refusal page.
fn answer_page(state: &AppState, answer: Answer) -> Response {
    match answer {
        Answer::Post {
            url,
            saml_response,
            relay_state,
            sp_name,
        } if is_base64(&saml_response) => render(
            StatusCode::OK,
            &PostPage {
                ui: Ui::current(),
                sp_name: &sp_name,
                url: &url,
                field: "SAMLResponse",
                value: &saml_response,
                relay_state: relay_state.as_deref(),
            },
        ),
        Answer::Refused { notice, sp_name } => {
            refusal_page(state, &notice, &sp_name).into_response()
        }
        Answer::Post { .. } => {
            AppError::Internal("a SAML message to post is not base64".into()).into_response()
        }
    }
}

/// Records a refused SAML message and turns it into its page.
async fn rejected(
    state: &AppState,
    err: SsoError,
    endpoint: &'static str,
    ip: Option<String>,
) -> AppError {
    if !err.is_bad_request() {
        return internal(err);
    }
    state
        .idp
        .record_rejection(&err, endpoint, ip, Utc::now())
        .await;
    if matches!(err, SsoError::MissingRequest) && endpoint == "/saml/sso" {
        // Most likely an employee who bookmarked the sign-in page: say where to start.
        let portal = format!("{}/", state.config.base_url.trim_end_matches('/'));
        return AppError::bad_request(
            Msg::new("sso-start-title").text(),
            Msg::with("sso-start-message", "portal", portal).text(),
        );
    }
    let (title, message) = Msg::sso_rejected(&err, endpoint == "/saml/slo");
    AppError::bad_request(title.text(), message.text())
}

fn internal(err: SsoError) -> AppError {
    match err {
        SsoError::Busy => AppError::Busy,
        other => AppError::Internal(other.to_string()),
    }
}

/// The refusal page: why, whom to ask, and the reference and time to quote.
fn refusal_page(state: &AppState, notice: &RefusalNotice, sp_name: &str) -> AppError {
    let (title, message, hint) =
        crate::i18n::refusal_texts(notice.refusal, sp_name, state.idp.support_contact(), false);
    AppError::Refused {
        title: title.text(),
        message: message.text(),
        hint: hint.text(),
        reference: Some(notice.quote()),
    }
}
