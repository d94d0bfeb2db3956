//! The portal's second factors: an authenticator app (TOTP) set up with a QR code and a
//! confirming code, removed, and recovery codes made anew. The logic is `crate::mfa`'s; these
//! handlers only show and ask.

use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Router};
use chrono::Utc;
use serde::Deserialize;

use super::PortalSession;
use crate::events::Actor;
use crate::i18n::{Msg, Ui};
use crate::mfa::MfaError;
use crate::server::AppState;
use crate::web::{render, AppError};

/// Routes behind the portal guard.
pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/security/authenticator",
            get(authenticator_page).post(confirm_authenticator),
        )
        .route("/security/authenticator/remove", post(remove_authenticator))
        .route("/security/recovery-codes", post(new_recovery_codes))
}

#[derive(Template)]
#[template(path = "portal/authenticator.html")]
struct AuthenticatorPage {
    ui: Ui,
    csrf: String,
    active: &'static str,
    display_name: String,
    qr_data_url: String,
    secret: String,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "portal/recovery_codes.html")]
struct RecoveryCodesPage {
    ui: Ui,
    csrf: String,
    active: &'static str,
    display_name: String,
    codes: Vec<String>,
    /// Just set up an authenticator app (the page says so).
    enrolled: bool,
}

async fn enrolment_page(
    state: &AppState,
    session: &PortalSession,
    error: Option<String>,
    status: StatusCode,
) -> Result<Response, AppError> {
    match state
        .idp
        .mfa()
        .totp_enrolment(&session.user, Utc::now())
        .await
    {
        Ok(enrolment) => Ok(render(
            status,
            &AuthenticatorPage {
                ui: Ui::current(),
                csrf: session.csrf.clone(),
                active: "overview",
                display_name: session.user.display_name(),
                qr_data_url: enrolment.qr_data_url,
                secret: enrolment.secret_base32,
                error,
            },
        )),
        Err(MfaError::TotpExists(_)) => Ok(super::redirect_with_notice(
            "/",
            &Msg::new("portal-totp-exists").text(),
        )),
        Err(err) => Err(err.into()),
    }
}

async fn authenticator_page(
    State(state): State<AppState>,
    Extension(session): Extension<PortalSession>,
) -> Result<Response, AppError> {
    enrolment_page(&state, &session, None, StatusCode::OK).await
}

#[derive(Deserialize)]
struct CodeForm {
    code: String,
}

async fn confirm_authenticator(
    State(state): State<AppState>,
    Extension(session): Extension<PortalSession>,
    Form(form): Form<CodeForm>,
) -> Result<Response, AppError> {
    let now = Utc::now();
    let mfa = state.idp.mfa();
    let user = &session.user;
    match mfa.confirm_totp(user, &form.code, now).await {
        Ok(true) => {}
        Ok(false) => {
            state
                .idp
                .record_mfa_failure(
                    user,
                    "totp",
                    "wrong code confirming an authenticator app",
                    None,
                    now,
                )
                .await?;
            return enrolment_page(
                &state,
                &session,
                Some(Msg::new("err-enrol-code").text()),
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await;
        }
        Err(MfaError::NoEnrolment(_)) => {
            return enrolment_page(
                &state,
                &session,
                Some(Msg::new("portal-enrol-expired").text()),
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await
        }
        Err(err) => return Err(err.into()),
    }
    // A first factor of this kind comes with recovery codes, shown once.
    let factors = mfa.factors(&user.id).await?;
    if factors.recovery_codes > 0 {
        return Ok(super::redirect_with_notice(
            "/",
            &Msg::new("portal-totp-set-up").text(),
        ));
    }
    let codes = mfa
        .new_recovery_codes(&Actor::User(user.username.clone()), user, now)
        .await?;
    Ok(codes_page(&session, codes, true))
}

fn codes_page(session: &PortalSession, codes: Vec<String>, enrolled: bool) -> Response {
    let mut response = render(
        StatusCode::OK,
        &RecoveryCodesPage {
            ui: Ui::current(),
            csrf: session.csrf.clone(),
            active: "overview",
            display_name: session.user.display_name(),
            codes,
            enrolled,
        },
    );
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    response.into_response()
}

async fn remove_authenticator(
    State(state): State<AppState>,
    Extension(session): Extension<PortalSession>,
) -> Result<Response, AppError> {
    let user = &session.user;
    let mfa = state.idp.mfa();
    mfa.remove_totp(&Actor::User(user.username.clone()), user, Utc::now())
        .await?;
    let notice = if mfa.required_for(user) && !mfa.factors(&user.id).await?.any() {
        "portal-totp-removed-required"
    } else {
        "portal-totp-removed"
    };
    Ok(super::redirect_with_notice("/", &Msg::new(notice).text()))
}

async fn new_recovery_codes(
    State(state): State<AppState>,
    Extension(session): Extension<PortalSession>,
) -> Result<Response, AppError> {
    let user = &session.user;
    let codes = state
        .idp
        .mfa()
        .new_recovery_codes(&Actor::User(user.username.clone()), user, Utc::now())
        .await?;
    Ok(codes_page(&session, codes, false))
}
