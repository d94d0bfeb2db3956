//! An admin's own second factor: setting up an authenticator app (with recovery codes), and
//! the step of a console sign-in that asks for its code after the password.

use std::net::SocketAddr;

use askama::Template;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

use super::{Chrome, Notice};
use crate::events::{kind, NewEvent};
use crate::mfa::{Account, CodeOutcome, MfaError, TotpEnrolment};
use crate::server::AppState;
use crate::store::FactorOwner;
use crate::web::{render, AdminPrincipal, AppError};

/// Routes behind the session guard (which lets a session owing its second factor reach only
/// its step, and every admin, read-only too, reach their own second factor).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/login/code", get(code_page).post(check_code))
        .route("/admin/login/enrol", get(enrol_page).post(confirm_enrol))
        .route("/admin/mfa", get(page))
        .route("/admin/mfa/setup", post(setup))
        .route("/admin/mfa/confirm", post(confirm))
        .route("/admin/mfa/recovery-codes", post(new_codes))
        .route("/admin/mfa/remove", post(remove))
}

fn account(admin: &AdminPrincipal) -> Account<'_> {
    Account::admin(&admin.admin_id, &admin.name)
}

/// The throttle's key for an admin's codes (user ids and admin ids never look alike, but the
/// prefix keeps them apart anyway).
fn throttle_key(admin: &AdminPrincipal) -> String {
    format!("admin:{}", admin.admin_id)
}

#[derive(Template)]
#[template(path = "admin/login_code.html")]
struct CodePage {
    csrf: String,
    username: String,
    error: Option<String>,
}

async fn code_page(Extension(admin): Extension<AdminPrincipal>) -> Response {
    render(
        StatusCode::OK,
        &CodePage {
            csrf: admin.csrf.clone(),
            username: admin.name.clone(),
            error: None,
        },
    )
}

#[derive(Deserialize)]
struct CodeForm {
    code: String,
}

/// What a typed code did to a sign-in or an enrolment.
enum Checked {
    /// Accepted, as this factor.
    Passed(&'static str),
    /// Refused (wrong or throttled): what to say, with which status.
    Refused(String, StatusCode),
}

/// Checks a code (or, when `enrolling`, confirms the enrolment with it), throttled per admin
/// and per address like passwords; a refusal is the page to show again.
async fn checked_code(
    state: &AppState,
    admin: &AdminPrincipal,
    ip: Option<String>,
    code: &str,
    enrolling: bool,
) -> Result<Checked, AppError> {
    let now = Utc::now();
    let key = throttle_key(admin);
    let path = if enrolling {
        "/admin/login/enrol"
    } else {
        "/admin/login/code"
    };
    if let Some(locked) = state
        .admin_code_throttle
        .admit(&key, ip.as_deref(), now)
        .await?
    {
        crate::web::session::record_refusal(
            state,
            kind::MFA_THROTTLED,
            &admin.actor(),
            locked.reason_code(),
            path,
            ip,
        )
        .await;
        let message = format!(
            "Too many wrong codes. Try again in {} minute(s).",
            locked.minutes_left(now)
        );
        return Ok(Checked::Refused(message, StatusCode::TOO_MANY_REQUESTS));
    }
    let passed = if enrolling {
        state
            .mfa
            .confirm_account_totp(&account(admin), code, now)
            .await
            .map(|ok| ok.then_some("totp"))
    } else {
        state
            .mfa
            .check_account_code(&account(admin), code, now)
            .await
            .map(|outcome| match outcome {
                CodeOutcome::Passed(factor) => Some(factor.as_str()),
                CodeOutcome::Wrong => None,
            })
    };
    let passed = match passed {
        Ok(passed) => passed,
        Err(err) => {
            state
                .admin_code_throttle
                .abandoned(&key, ip.as_deref())
                .await?;
            return Err(err.into());
        }
    };
    match passed {
        Some(factor) => {
            state
                .admin_code_throttle
                .succeeded(&key, ip.as_deref())
                .await?;
            Ok(Checked::Passed(factor))
        }
        None => {
            state
                .admin_code_throttle
                .failed(&key, ip.as_deref())
                .await?;
            let event = NewEvent::new(now, &admin.actor(), kind::MFA_FAILED, Some(&admin.name))
                .details(json!({
                    "account": "admin",
                    "reason": if enrolling {
                        "wrong code confirming an authenticator app"
                    } else {
                        "wrong or already used code"
                    },
                }))
                .client_ip(ip);
            state.store.record_event(&event).await?;
            Ok(Checked::Refused(
                "That code is wrong or was already used. Type the code the app shows now.".into(),
                StatusCode::UNAUTHORIZED,
            ))
        }
    }
}

/// The sign-in is complete: a full console session from now on.
async fn complete(
    state: &AppState,
    admin: &AdminPrincipal,
    factor: &str,
    ip: Option<String>,
    now: DateTime<Utc>,
) -> Result<(), AppError> {
    let Some(hash) = admin.session_hash.as_deref() else {
        return Err(AppError::NotFound);
    };
    let event = NewEvent::new(
        now,
        &admin.actor(),
        kind::ADMIN_LOGIN_SUCCESS,
        Some(&admin.name),
    )
    .details(json!({"secondFactor": factor}))
    .client_ip(ip);
    let expires = super::auth::full_session_expiry(state, now.timestamp_millis());
    state
        .store
        .complete_admin_session(hash, expires, &event)
        .await?;
    Ok(())
}

async fn check_code(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Extension(admin): Extension<AdminPrincipal>,
    Form(form): Form<CodeForm>,
) -> Result<Response, AppError> {
    let ip = Some(addr.ip().to_string());
    match checked_code(&state, &admin, ip.clone(), &form.code, false).await? {
        Checked::Refused(error, status) => Ok(render(
            status,
            &CodePage {
                csrf: admin.csrf.clone(),
                username: admin.name.clone(),
                error: Some(error),
            },
        )),
        Checked::Passed(factor) => {
            complete(&state, &admin, factor, ip, Utc::now()).await?;
            let target = if admin.must_change_password {
                "/admin/password"
            } else {
                "/admin"
            };
            if factor == "recovery_code" {
                return Ok(super::redirect_with_notice(
                    target,
                    "You signed in with a recovery code; it no longer works. Make new codes on the Admins & API keys page if few are left.",
                ));
            }
            Ok(Redirect::to(target).into_response())
        }
    }
}

#[derive(Template)]
#[template(path = "admin/login_enrol.html")]
struct EnrolPage {
    csrf: String,
    username: String,
    qr_data_url: String,
    secret: String,
    error: Option<String>,
}

fn enrol_page_for(
    admin: &AdminPrincipal,
    enrolment: TotpEnrolment,
    error: Option<String>,
    status: StatusCode,
) -> Response {
    render(
        status,
        &EnrolPage {
            csrf: admin.csrf.clone(),
            username: admin.name.clone(),
            qr_data_url: enrolment.qr_data_url,
            secret: enrolment.secret_base32,
            error,
        },
    )
}

async fn enrol_page(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
) -> Result<Response, AppError> {
    let enrolment = state
        .mfa
        .account_totp_enrolment(&account(&admin), Utc::now())
        .await?;
    Ok(enrol_page_for(&admin, enrolment, None, StatusCode::OK))
}

async fn confirm_enrol(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Extension(admin): Extension<AdminPrincipal>,
    Form(form): Form<CodeForm>,
) -> Result<Response, AppError> {
    let ip = Some(addr.ip().to_string());
    let enrolment = state
        .mfa
        .account_totp_enrolment(&account(&admin), Utc::now())
        .await?;
    match checked_code(&state, &admin, ip.clone(), &form.code, true).await? {
        Checked::Refused(error, status) => {
            Ok(enrol_page_for(&admin, enrolment, Some(error), status))
        }
        Checked::Passed(_) => {
            let now = Utc::now();
            complete(&state, &admin, "totp_enrolled", ip, now).await?;
            new_codes_page(&state, &admin, now).await
        }
    }
}

#[derive(Template)]
#[template(path = "admin/mfa.html")]
struct MfaPage {
    chrome: Chrome,
    totp: bool,
    recovery_codes: i64,
    required: bool,
    /// An enrolment waiting for its confirming code.
    enrolment: Option<TotpEnrolment>,
    /// Recovery codes just made: shown once.
    codes: Option<Vec<String>>,
}

/// Makes the admin ten new recovery codes (the old ones stop working) and shows them once.
async fn new_codes_page(
    state: &AppState,
    admin: &AdminPrincipal,
    now: chrono::DateTime<Utc>,
) -> Result<Response, AppError> {
    let codes = state
        .mfa
        .new_account_recovery_codes(&admin.actor(), &account(admin), now)
        .await?;
    let page = build(state, admin, None, Some(codes), None).await?;
    Ok(render(StatusCode::OK, &page))
}

async fn build(
    state: &AppState,
    admin: &AdminPrincipal,
    enrolment: Option<TotpEnrolment>,
    codes: Option<Vec<String>>,
    chrome: Option<Chrome>,
) -> Result<MfaPage, AppError> {
    let factors = state
        .mfa
        .owner_factors(FactorOwner::Admin(&admin.admin_id))
        .await?;
    Ok(MfaPage {
        chrome: chrome.unwrap_or_else(|| Chrome::new(admin, "settings")),
        totp: factors.totp,
        recovery_codes: factors.recovery_codes,
        required: state.config.admin.require_mfa,
        enrolment,
        codes,
    })
}

async fn page(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
    Notice(notice): Notice,
) -> Result<Response, AppError> {
    let chrome = Chrome::new(&admin, "settings").flash(notice);
    let page = build(&state, &admin, None, None, Some(chrome)).await?;
    Ok(render(StatusCode::OK, &page))
}

/// An MFA refusal shown on the page (an app already set up, nothing to confirm).
async fn refused(
    state: &AppState,
    admin: &AdminPrincipal,
    err: MfaError,
) -> Result<Response, AppError> {
    match err {
        MfaError::TotpExists(_) | MfaError::NoEnrolment(_) => {
            let chrome = Chrome::new(admin, "settings").error(Some(err.to_string()));
            let page = build(state, admin, None, None, Some(chrome)).await?;
            Ok(render(StatusCode::CONFLICT, &page))
        }
        other => Err(other.into()),
    }
}

async fn setup(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
) -> Result<Response, AppError> {
    match state
        .mfa
        .account_totp_enrolment(&account(&admin), Utc::now())
        .await
    {
        Ok(enrolment) => {
            let page = build(&state, &admin, Some(enrolment), None, None).await?;
            Ok(render(StatusCode::OK, &page))
        }
        Err(err) => refused(&state, &admin, err).await,
    }
}

async fn confirm(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Extension(admin): Extension<AdminPrincipal>,
    Form(form): Form<CodeForm>,
) -> Result<Response, AppError> {
    let ip = Some(addr.ip().to_string());
    let enrolment = match state
        .mfa
        .account_totp_enrolment(&account(&admin), Utc::now())
        .await
    {
        Ok(enrolment) => enrolment,
        Err(err) => return refused(&state, &admin, err).await,
    };
    if let Checked::Refused(error, status) =
        checked_code(&state, &admin, ip, &form.code, true).await?
    {
        let chrome = Chrome::new(&admin, "settings").error(Some(error));
        let page = build(&state, &admin, Some(enrolment), None, Some(chrome)).await?;
        return Ok(render(status, &page));
    }
    new_codes_page(&state, &admin, Utc::now()).await
}

async fn new_codes(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
) -> Result<Response, AppError> {
    let factors = state
        .mfa
        .owner_factors(FactorOwner::Admin(&admin.admin_id))
        .await?;
    if !factors.totp {
        return refused(&state, &admin, MfaError::NoEnrolment(admin.name.clone())).await;
    }
    new_codes_page(&state, &admin, Utc::now()).await
}

async fn remove(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
) -> Result<Response, AppError> {
    if state.config.admin.require_mfa {
        let chrome = Chrome::new(&admin, "settings").error(Some(
            "Admins must have an authenticator app here (`[admin] require_mfa`); set up the new one by asking another admin to reset yours.".into(),
        ));
        let page = build(&state, &admin, None, None, Some(chrome)).await?;
        return Ok(render(StatusCode::CONFLICT, &page));
    }
    state
        .mfa
        .remove_account_totp(&admin.actor(), &account(&admin), Utc::now())
        .await?;
    Ok(super::redirect_with_notice(
        "/admin/mfa",
        "Your authenticator app was removed; sign-in asks only for your password now.",
    ))
}
