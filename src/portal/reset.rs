//! "Forgot password": the request form, the page every request gets, and the reset link's page.

use std::net::SocketAddr;

use askama::Template;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Form, Router};
use axum_extra::extract::cookie::CookieJar;
use chrono::Utc;
use secrecy::SecretString;
use serde::Deserialize;

use super::{form_ok, form_token, LinkRefusal, ResetOutcome, ResetRequest};
use crate::events::{kind, Actor};
use crate::i18n::{Msg, Ui};
use crate::server::AppState;
use crate::throttle::Locked;
use crate::web::{render, AppError};

/// Routes of the forgot-password flow (no session).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/password/forgot", get(forgot_page).post(forgot))
        .route("/password/reset", get(reset_page).post(reset))
}

/// A signed-out page with a title, a message and an optional link onwards.
#[derive(Template)]
#[template(path = "portal/message.html")]
struct MessagePage<'a> {
    ui: Ui,
    title: &'a str,
    message: &'a str,
    hint: Option<&'a str>,
    link: Option<(&'a str, &'a str)>,
}

fn message(
    status: StatusCode,
    title: &str,
    text: &str,
    hint: Option<&str>,
    link: Option<(&str, &str)>,
) -> Response {
    render(
        status,
        &MessagePage {
            ui: Ui::current(),
            title,
            message: text,
            hint,
            link,
        },
    )
}

#[derive(Template)]
#[template(path = "portal/forgot.html")]
struct ForgotPage<'a> {
    ui: Ui,
    csrf: &'a str,
    username: &'a str,
    error: Option<&'a str>,
    minutes: i64,
}

fn no_mail(state: &AppState) -> Response {
    let ui = Ui::current();
    message(
        StatusCode::OK,
        &ui.t("forgot-heading"),
        &ui.t("forgot-no-mail"),
        Some(&ui.t1(
            "forgot-no-mail-hint",
            "contact",
            state.self_service.support_contact(),
        )),
        Some(("/login", &ui.t("back-to-sign-in"))),
    )
}

fn forgot_form(
    state: &AppState,
    jar: CookieJar,
    username: &str,
    error: Option<&str>,
    status: StatusCode,
) -> Response {
    let (jar, csrf) = form_token(state, jar);
    let page = ForgotPage {
        ui: Ui::current(),
        csrf: &csrf,
        username,
        error,
        minutes: state.self_service.link_minutes(),
    };
    (jar, render(status, &page)).into_response()
}

async fn forgot_page(State(state): State<AppState>, jar: CookieJar) -> Response {
    if !state.self_service.can_mail() {
        return no_mail(&state);
    }
    forgot_form(&state, jar, "", None, StatusCode::OK)
}

#[derive(Deserialize)]
struct ForgotForm {
    csrf: String,
    username: String,
}

/// Records a refusal of the reset throttle (counted, not written per request).
async fn throttled(state: &AppState, locked: &Locked, ip: Option<String>) {
    crate::web::session::record_refusal(
        state,
        kind::PASSWORD_RESET_THROTTLED,
        &Actor::Anonymous,
        locked.reason_code(),
        "/password/forgot",
        ip,
    )
    .await;
}

async fn forgot(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    jar: CookieJar,
    Form(form): Form<ForgotForm>,
) -> Result<Response, AppError> {
    let now = Utc::now();
    let ip = Some(addr.ip().to_string());
    if !form_ok(&jar, &form.csrf) {
        crate::web::session::record_refusal(
            &state,
            kind::PORTAL_ACCESS_DENIED,
            &Actor::Anonymous,
            "csrf",
            "/password/forgot",
            ip,
        )
        .await;
        return Ok(forgot_form(
            &state,
            jar,
            &form.username,
            Some(&Msg::new("err-form-expired-retry").text()),
            StatusCode::FORBIDDEN,
        ));
    }
    if form.username.trim().is_empty() {
        return Ok(forgot_form(
            &state,
            jar,
            "",
            Some(&Msg::new("forgot-type-name").text()),
            StatusCode::UNPROCESSABLE_ENTITY,
        ));
    }
    match state
        .self_service
        .request_reset(&form.username, ip.clone(), now)
        .await?
    {
        ResetRequest::Accepted => {
            let ui = Ui::current();
            Ok(message(
                StatusCode::OK,
                &ui.t("forgot-sent-title"),
                &ui.t1("forgot-sent", "minutes", state.self_service.link_minutes()),
                Some(&ui.t1(
                    "forgot-sent-hint",
                    "contact",
                    state.self_service.support_contact(),
                )),
                Some(("/login", &ui.t("back-to-sign-in"))),
            ))
        }
        ResetRequest::Throttled(locked) => {
            throttled(&state, &locked, ip).await;
            let text = Msg::reset_requests_locked(&locked, now).text();
            Ok(forgot_form(
                &state,
                jar,
                &form.username,
                Some(&text),
                StatusCode::TOO_MANY_REQUESTS,
            ))
        }
        ResetRequest::Unavailable => Ok(no_mail(&state)),
    }
}

#[derive(Template)]
#[template(path = "portal/reset.html")]
struct ResetPage<'a> {
    ui: Ui,
    csrf: &'a str,
    token: &'a str,
    display_name: &'a str,
    username: &'a str,
    rules: Vec<Msg>,
    error: Option<&'a str>,
}

#[derive(Debug, Deserialize)]
struct ResetQuery {
    token: Option<String>,
}

/// The page of a link that cannot be used (recorded as a refusal).
async fn link_refused(state: &AppState, refusal: LinkRefusal, ip: Option<String>) -> Response {
    crate::web::session::record_refusal(
        state,
        kind::PASSWORD_RESET_REFUSED,
        &Actor::Anonymous,
        refusal.code(),
        "/password/reset",
        ip,
    )
    .await;
    let status = match refusal {
        LinkRefusal::Unknown => StatusCode::NOT_FOUND,
        LinkRefusal::Suspended => StatusCode::FORBIDDEN,
        _ => StatusCode::GONE,
    };
    let ui = Ui::current();
    let hint = match refusal {
        LinkRefusal::Suspended => ui.t1(
            "reset-link-suspended-hint",
            "contact",
            state.self_service.support_contact(),
        ),
        _ => ui.t("reset-link-hint"),
    };
    let ask = ui.t("reset-ask-new-link");
    let link = match refusal {
        LinkRefusal::Suspended => None,
        _ => Some(("/password/forgot", ask.as_str())),
    };
    message(
        status,
        &ui.t("reset-link-title"),
        &ui.msg(&Msg::link_refused(refusal)),
        Some(&hint),
        link,
    )
}

fn locked_page(locked: &Locked) -> Response {
    message(
        StatusCode::TOO_MANY_REQUESTS,
        &Msg::new("reset-too-many-title").text(),
        &Msg::links_locked(locked, Utc::now()).text(),
        None,
        None,
    )
}

async fn reset_page(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    jar: CookieJar,
    Query(query): Query<ResetQuery>,
) -> Result<Response, AppError> {
    let ip = Some(addr.ip().to_string());
    let token = query.token.unwrap_or_default();
    let link = state
        .self_service
        .check_link(&token, ip.clone(), Utc::now())
        .await?;
    let link = match link {
        Ok(link) => link,
        Err((_, Some(locked))) => {
            throttled(&state, &locked, ip).await;
            return Ok(locked_page(&locked));
        }
        Err((refusal, None)) => return Ok(link_refused(&state, refusal, ip).await),
    };
    let (jar, csrf) = form_token(&state, jar);
    let page = ResetPage {
        ui: Ui::current(),
        csrf: &csrf,
        token: &token,
        display_name: &link.user.display_name(),
        username: &link.user.username,
        rules: crate::i18n::policy_rules(state.directory.policy()),
        error: None,
    };
    Ok((jar, render(StatusCode::OK, &page)).into_response())
}

#[derive(Deserialize)]
struct ResetForm {
    csrf: String,
    token: String,
    new_password: String,
    confirm: String,
}

async fn reset(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    jar: CookieJar,
    Form(form): Form<ResetForm>,
) -> Result<Response, AppError> {
    let ip = Some(addr.ip().to_string());
    if !form_ok(&jar, &form.csrf) {
        crate::web::session::record_refusal(
            &state,
            kind::PORTAL_ACCESS_DENIED,
            &Actor::Anonymous,
            "csrf",
            "/password/reset",
            ip,
        )
        .await;
        return Ok(message(
            StatusCode::FORBIDDEN,
            &Msg::new("err-csrf-title").text(),
            &Msg::new("reset-form-expired").text(),
            None,
            None,
        ));
    }
    let outcome = state
        .self_service
        .complete_reset(
            &form.token,
            &SecretString::from(form.new_password),
            &SecretString::from(form.confirm),
            ip.clone(),
            Utc::now(),
        )
        .await?;
    let again = |user: crate::directory::User, error: String| {
        let (jar, csrf) = form_token(&state, jar.clone());
        let page = ResetPage {
            ui: Ui::current(),
            csrf: &csrf,
            token: &form.token,
            display_name: &user.display_name(),
            username: &user.username,
            rules: crate::i18n::policy_rules(state.directory.policy()),
            error: Some(&error),
        };
        (jar, render(StatusCode::UNPROCESSABLE_ENTITY, &page)).into_response()
    };
    Ok(match outcome {
        ResetOutcome::Done(user) => {
            let bound = user.m365.as_ref().is_some_and(|b| b.state.signs_in());
            let ui = Ui::current();
            let text = ui.t(if bound {
                "reset-done-bound"
            } else {
                "reset-done"
            });
            message(
                StatusCode::OK,
                &ui.t("reset-done-title"),
                &text,
                None,
                Some(("/login", &ui.t("reset-sign-in-again"))),
            )
        }
        ResetOutcome::Refused(refusal) => link_refused(&state, refusal, ip).await,
        ResetOutcome::Throttled(locked) => {
            throttled(&state, &locked, ip).await;
            locked_page(&locked)
        }
        ResetOutcome::Mismatch(user) => again(*user, Msg::new("err-new-passwords-differ").text()),
        ResetOutcome::Rejected(user, violation) => {
            again(*user, Msg::password_refused(&violation).text())
        }
    })
}
