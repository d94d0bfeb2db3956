//! The portal's sign-in, overview (profile, Microsoft 365 tile, sign-in methods), password
//! change and sign-out.

use std::net::SocketAddr;

use askama::Template;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Router};
use axum_extra::extract::cookie::{Cookie, CookieJar};
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::json;

use super::{form_ok, form_token, take_notice, PortalSession};
use crate::attributes::CATALOGUE;
use crate::directory::User;
use crate::events::{kind, Actor, NewEvent};
use crate::i18n::{Msg, Ui};
use crate::m365::sync::{Direction, Directions};
use crate::portal::ChangeOutcome;
use crate::server::AppState;
use crate::sso::{LoginOutcome, RefusalNotice, SESSION_COOKIE};
use crate::web::{display_time, render, AppError};

/// Routes without a session (`/` shows the sign-in form to a signed-out visitor).
pub fn public_router() -> Router<AppState> {
    Router::new()
        .route("/", get(home))
        .route("/login", get(login_page).post(login))
        // Where Microsoft's sign-out sends the browser back (post_logout_redirect_uri).
        .route(
            "/signed-out",
            get(|| async { Redirect::to("/login?signed_out=1") }),
        )
}

/// Routes behind the portal guard.
pub fn signed_in_router() -> Router<AppState> {
    Router::new()
        .route("/password", get(password_page).post(change_password))
        .route("/logout", post(logout))
}

/// Where a sign-in may continue: portal pages only (no open redirect).
fn safe_next(next: Option<&str>) -> &'static str {
    match next {
        Some("/password") => "/password",
        _ => "/",
    }
}

#[derive(Template)]
#[template(path = "portal/login.html")]
struct LoginPage<'a> {
    ui: Ui,
    csrf: &'a str,
    next: &'a str,
    username: &'a str,
    error: Option<&'a str>,
    notice: Option<&'a str>,
    can_reset: bool,
}

#[derive(Debug, Deserialize)]
struct LoginQuery {
    next: Option<String>,
    signed_out: Option<String>,
}

fn login_form(
    state: &AppState,
    jar: CookieJar,
    next: &str,
    username: &str,
    error: Option<&str>,
    notice: Option<&str>,
    status: StatusCode,
) -> Response {
    let (jar, csrf) = form_token(state, jar);
    let page = LoginPage {
        ui: Ui::current(),
        csrf: &csrf,
        next,
        username,
        error,
        notice,
        can_reset: state.self_service.can_mail(),
    };
    (jar, render(status, &page)).into_response()
}

async fn login_page(
    State(state): State<AppState>,
    jar: CookieJar,
    Query(query): Query<LoginQuery>,
) -> Result<Response, AppError> {
    if super::current_session(&state, &jar, Utc::now())
        .await?
        .is_some()
    {
        return Ok(Redirect::to(safe_next(query.next.as_deref())).into_response());
    }
    let notice = query
        .signed_out
        .is_some()
        .then(|| Msg::new("portal-signed-out").text());
    Ok(login_form(
        &state,
        jar,
        safe_next(query.next.as_deref()),
        "",
        None,
        notice.as_deref(),
        StatusCode::OK,
    ))
}

#[derive(Deserialize)]
struct LoginForm {
    csrf: String,
    username: String,
    password: String,
    next: Option<String>,
}

/// What a portal sign-in leads to.
enum SignIn {
    /// The form again, with this message and status.
    Again(String, StatusCode),
    /// Correct password, but the account may not sign in.
    Refused(AppError),
    /// The password passed: the sign-in's further steps take over.
    Steps(Box<User>),
}

/// The portal sign-in, in one place: the password through the SSO sign-in (its throttle, its
/// events, the first push of the password to Microsoft 365), then the session.
///
/// After the password (`LoginOutcome::PasswordPassed`) the sign-in steps of the SAML flow take
/// over ([`crate::sso::portal_steps`]): a new password when expired or required, a second
/// factor or its enrolment; they end in the session.
async fn sign_in(
    state: &AppState,
    username: &str,
    password: &SecretString,
    ip: Option<String>,
    now: DateTime<Utc>,
) -> Result<SignIn, AppError> {
    match state
        .idp
        .login(username, password, None, ip.clone(), now)
        .await?
    {
        LoginOutcome::Failed => Ok(SignIn::Again(
            Msg::new("err-wrong-password").text(),
            StatusCode::UNAUTHORIZED,
        )),
        LoginOutcome::Throttled(locked) => {
            // Counted, not written per guess: the lock's start is its own event.
            crate::web::session::record_refusal(
                state,
                kind::SIGN_IN_THROTTLED,
                &Actor::Anonymous,
                locked.reason_code(),
                "/login",
                ip,
            )
            .await;
            Ok(SignIn::Again(
                Msg::locked(&locked, now).text(),
                StatusCode::TOO_MANY_REQUESTS,
            ))
        }
        LoginOutcome::Refused(refusal) => Ok(SignIn::Refused(refused(state, refusal))),
        // The SAML sign-in's steps (a new password when expired or required, a second factor
        // or its enrolment) on a parked sign-in whose target is the portal, ending in the
        // session and `/`.
        LoginOutcome::PasswordPassed(user) => Ok(SignIn::Steps(user)),
    }
}

/// The refusal page of a correct password on an account that may not sign in.
fn refused(state: &AppState, notice: RefusalNotice) -> AppError {
    let contact = state.self_service.support_contact();
    let (title, message, hint) = crate::i18n::refusal_texts(
        notice.refusal,
        "idbridge",
        contact,
        state.self_service.can_mail(),
    );
    AppError::Refused {
        title: title.text(),
        message: message.text(),
        hint: hint.text(),
        reference: Some(notice.quote()),
    }
}

async fn login(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    jar: CookieJar,
    Form(form): Form<LoginForm>,
) -> Result<Response, AppError> {
    let now = Utc::now();
    let ip = Some(addr.ip().to_string());
    let next = safe_next(form.next.as_deref());
    if !form_ok(&jar, &form.csrf) {
        crate::web::session::record_refusal(
            &state,
            kind::PORTAL_ACCESS_DENIED,
            &Actor::Anonymous,
            "csrf",
            "/login",
            ip,
        )
        .await;
        return Ok(login_form(
            &state,
            jar,
            next,
            &form.username,
            Some(&Msg::new("err-form-expired").text()),
            None,
            StatusCode::FORBIDDEN,
        ));
    }
    let password = SecretString::from(form.password);
    match sign_in(&state, &form.username, &password, ip.clone(), now).await? {
        SignIn::Steps(user) => {
            Ok(crate::sso::portal_steps(&state, jar, &user, next, ip, now).await)
        }
        SignIn::Again(message, status) => Ok(login_form(
            &state,
            jar,
            next,
            &form.username,
            Some(&message),
            None,
            status,
        )),
        SignIn::Refused(err) => Err(err),
    }
}

/// Where an attribute's value goes, as the profile says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// Always exported (cannot be deselected).
    Always,
    /// Exported, as the export table says.
    Export,
    /// Taken from Microsoft 365.
    Import,
    /// Neither (or the account is not bound).
    Exclude,
    /// Never leaves idbridge (the username).
    Local,
}

impl Flow {
    /// The badge's class (the export table's colours).
    fn css(self) -> &'static str {
        match self {
            Flow::Always => "always",
            Flow::Export => "export",
            Flow::Import => "import",
            Flow::Exclude => "exclude",
            Flow::Local => "local",
        }
    }

    /// In words.
    /// The catalogue key of its badge.
    fn key(self) -> &'static str {
        match self {
            Flow::Always => "flow-always",
            Flow::Export => "flow-export",
            Flow::Import => "flow-import",
            Flow::Exclude => "flow-exclude",
            Flow::Local => "flow-local",
        }
    }
}

/// One attribute on the profile: what idbridge holds and where it goes in Microsoft 365.
struct ProfileRow {
    label: Msg,
    value: String,
    /// The Graph property, or empty for what stays in idbridge.
    property: &'static str,
    flow: Flow,
}

fn profile_rows(user: &User, directions: &Directions, bound: bool) -> Vec<ProfileRow> {
    // An account not bound to Microsoft 365 sends nothing there, whatever the export table.
    let row = |label: Msg, value: String, property, flow: Flow| ProfileRow {
        label,
        value,
        property,
        flow: if bound || flow == Flow::Local {
            flow
        } else {
            Flow::Exclude
        },
    };
    let mut rows: Vec<ProfileRow> = CATALOGUE
        .iter()
        .map(|spec| {
            let value = user.get(spec.attribute).unwrap_or_default().to_string();
            let Some(graph) = spec.graph else {
                return row(
                    crate::i18n::attribute_label(spec.attribute),
                    value,
                    "",
                    Flow::Local,
                );
            };
            let flow = if spec.always_exported {
                Flow::Always
            } else {
                match directions.of(spec.name) {
                    Direction::Export => Flow::Export,
                    Direction::Import => Flow::Import,
                    Direction::Exclude => Flow::Exclude,
                }
            };
            row(
                crate::i18n::attribute_label(spec.attribute),
                value,
                graph.name,
                flow,
            )
        })
        .collect();
    rows.push(row(
        Msg::new("profile-display-name"),
        user.display_name(),
        "displayName",
        Flow::Always,
    ));
    let password = match user.password_changed_at {
        Some(at) if user.has_password() => {
            Msg::with("profile-password-set", "when", display_time(Some(at))).text()
        }
        _ => Msg::new("profile-password-not-set").text(),
    };
    rows.push(row(
        Msg::new("field-password"),
        password,
        "passwordProfile",
        Flow::Always,
    ));
    rows
}

/// Microsoft's sign-in for the user's domain: `whr` names the home realm, so Microsoft sends a
/// federated domain's users straight to idbridge instead of asking for their address first.
fn m365_tile(user: &User) -> Option<String> {
    let binding = user.m365.as_ref().filter(|b| b.state.signs_in())?;
    let upn = if binding.user_principal_name.contains('@') {
        &binding.user_principal_name
    } else {
        &user.email
    };
    let domain = upn.rsplit('@').next().filter(|d| !d.is_empty())?;
    let domain =
        url::form_urlencoded::byte_serialize(domain.to_lowercase().as_bytes()).collect::<String>();
    Some(format!("https://www.office.com/login?whr={domain}"))
}

#[derive(Template)]
#[template(path = "portal/home.html")]
struct HomePage {
    ui: Ui,
    csrf: String,
    active: &'static str,
    display_name: String,
    username: String,
    notice: Option<String>,
    m365_url: Option<String>,
    upn: Option<String>,
    /// The state of a binding that does not sign in, as the employee reads it.
    binding_state: Option<String>,
    rows: Vec<ProfileRow>,
    password_changed: String,
    password_expires: Option<String>,
    /// The user's second factors.
    factors: crate::mfa::Factors,
    /// The user's passkeys (`templates/mfa/passkeys.html`).
    passkeys: Vec<crate::mfa::http::PasskeyView>,
}

async fn home(State(state): State<AppState>, jar: CookieJar) -> Result<Response, AppError> {
    let now = Utc::now();
    let Some(session) = super::current_session(&state, &jar, now).await? else {
        return Ok(login_form(&state, jar, "/", "", None, None, StatusCode::OK));
    };
    let user = &session.user;
    let directions = Directions::from_rows(&state.store.attribute_directions().await?);
    let bound = user.m365.as_ref().is_some_and(|b| b.state.signs_in());
    let policy = state.directory.policy();
    let password_expires = match (policy.expiry_days, user.password_changed_at) {
        (0, _) | (_, None) => None,
        (days, Some(at)) => Some(display_time(Some(at + i64::from(days) * 86_400_000))),
    };
    let (notice, jar) = take_notice(jar);
    let page = HomePage {
        ui: Ui::current(),
        csrf: session.csrf.clone(),
        active: "overview",
        display_name: user.display_name(),
        username: user.username.clone(),
        notice,
        m365_url: m365_tile(user),
        upn: user.m365.as_ref().map(|b| b.user_principal_name.clone()),
        binding_state: user
            .m365
            .as_ref()
            .map(|b| crate::i18n::binding_state(b.state).text()),
        rows: profile_rows(user, &directions, bound),
        password_changed: display_time(user.password_changed_at),
        password_expires,
        factors: state.idp.mfa().factors(&user.id).await?,
        passkeys: crate::mfa::http::passkey_views(&state, &user.id).await?,
    };
    let mut response = (jar, render(StatusCode::OK, &page)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

#[derive(Template)]
#[template(path = "portal/password.html")]
struct PasswordPage {
    ui: Ui,
    csrf: String,
    active: &'static str,
    display_name: String,
    rules: Vec<Msg>,
    error: Option<String>,
    bound: bool,
}

fn password_form(
    state: &AppState,
    session: &PortalSession,
    error: Option<String>,
    status: StatusCode,
) -> Response {
    let page = PasswordPage {
        ui: Ui::current(),
        csrf: session.csrf.clone(),
        active: "password",
        display_name: session.user.display_name(),
        rules: crate::i18n::policy_rules(state.directory.policy()),
        error,
        bound: session
            .user
            .m365
            .as_ref()
            .is_some_and(|b| b.state.signs_in()),
    };
    render(status, &page)
}

async fn password_page(
    State(state): State<AppState>,
    Extension(session): Extension<PortalSession>,
) -> Response {
    password_form(&state, &session, None, StatusCode::OK)
}

#[derive(Deserialize)]
struct PasswordForm {
    current: String,
    new_password: String,
    confirm: String,
}

async fn change_password(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Extension(session): Extension<PortalSession>,
    Form(form): Form<PasswordForm>,
) -> Result<Response, AppError> {
    let now = Utc::now();
    let outcome = state
        .self_service
        .change_password(
            &session.user,
            &session.session_hash,
            &SecretString::from(form.current),
            &SecretString::from(form.new_password),
            &SecretString::from(form.confirm),
            Some(addr.ip().to_string()),
            now,
        )
        .await?;
    let again = |message: String, status| password_form(&state, &session, Some(message), status);
    Ok(match outcome {
        ChangeOutcome::Changed => {
            let bound = session
                .user
                .m365
                .as_ref()
                .is_some_and(|b| b.state.signs_in());
            super::redirect_with_notice(
                "/",
                &Msg::new(if bound {
                    "portal-password-changed-bound"
                } else {
                    "portal-password-changed"
                })
                .text(),
            )
        }
        ChangeOutcome::Mismatch => again(
            Msg::new("err-new-passwords-differ").text(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        ChangeOutcome::WrongCurrent => again(
            Msg::new("err-current-wrong").text(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        ChangeOutcome::Throttled(locked) => again(
            Msg::with(
                "err-not-changed",
                "reason",
                Msg::wrong_passwords_locked(&locked, now).text(),
            )
            .text(),
            StatusCode::TOO_MANY_REQUESTS,
        ),
        ChangeOutcome::Rejected(violation) => again(
            Msg::password_refused(&violation).text(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    })
}

async fn logout(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Extension(session): Extension<PortalSession>,
    jar: CookieJar,
) -> Result<Response, AppError> {
    let event = NewEvent::new(
        Utc::now(),
        &Actor::User(session.user.username.clone()),
        kind::SSO_LOGOUT,
        Some(&session.user.username),
    )
    .details(json!({"via": "portal"}))
    .client_ip(Some(addr.ip().to_string()));
    state
        .store
        .delete_session(&session.session_hash, &event)
        .await?;
    let jar = jar.remove(Cookie::build(SESSION_COOKIE).path("/"));
    // A user bound to Microsoft 365 is signed out there too: the browser goes on to the
    // Microsoft identity platform's sign-out endpoint, which ends Microsoft's session (and
    // for a federated domain calls idbridge's sign-out URL, whose session is already gone).
    // https://learn.microsoft.com/entra/identity-platform/v2-protocols-oidc#send-a-sign-out-request
    let bound = state
        .store
        .binding(&session.user.id)
        .await?
        .is_some_and(|b| b.state == crate::binding::BindingState::Bound);
    let next = if bound {
        // Microsoft returns the browser to `/signed-out` when that URL is a redirect URI of
        // the app registration (README), else shows its own "signed out" page.
        let back = format!("{}/signed-out", state.config.base_url.trim_end_matches('/'));
        let mut url = format!(
            "{}/common/oauth2/v2.0/logout",
            state.config.m365.login_base_url.trim_end_matches('/')
        );
        url.push_str("?post_logout_redirect_uri=");
        url.extend(url::form_urlencoded::byte_serialize(back.as_bytes()));
        url
    } else {
        "/login?signed_out=1".to_string()
    };
    let mut response = (jar, Redirect::to(&next)).into_response();
    response
        .headers_mut()
        .insert("clear-site-data", HeaderValue::from_static("\"cache\""));
    Ok(response)
}
