//! Console page: the organisation's name, logo and accent colour on the employee pages.

use askama::Template;
use axum::extract::{ConnectInfo, Multipart, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Router};
use chrono::Utc;
use std::net::SocketAddr;

use super::{display_time, Chrome, Notice};
use crate::branding::{BrandChange, BrandingError, LogoChange, MAX_LOGO_BYTES};
use crate::server::AppState;
use crate::web::{render, AdminPrincipal, AppError};

/// Console routes of this page.
pub fn router() -> Router<AppState> {
    Router::new().route("/admin/branding", get(page).post(save))
}

#[derive(Template)]
#[template(path = "admin/branding.html")]
struct BrandingPage {
    chrome: Chrome,
    name: String,
    accent_colour: String,
    has_logo: bool,
    /// `?v=` of the logo's address, so a new logo is not shown from the cache.
    version: i64,
    updated: String,
    max_logo_kib: usize,
    /// The input a refusal is about (`aria-invalid`).
    invalid: Option<&'static str>,
}

fn build(state: &AppState, chrome: Chrome, typed: Option<(String, String)>) -> BrandingPage {
    let brand = state.branding.current();
    let (name, accent_colour) =
        typed.unwrap_or_else(|| (brand.name.clone(), brand.accent.as_str().to_string()));
    BrandingPage {
        chrome,
        name,
        accent_colour,
        has_logo: brand.logo.is_some(),
        version: brand.updated_at,
        updated: match &brand.updated_by {
            Some(by) => format!("{} by {by}", display_time(Some(brand.updated_at))),
            None => String::new(),
        },
        max_logo_kib: MAX_LOGO_BYTES / 1024,
        invalid: None,
    }
}

async fn page(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
    Notice(notice): Notice,
) -> Response {
    let page = build(&state, Chrome::new(&admin, "branding").flash(notice), None);
    render(StatusCode::OK, &page)
}

/// The form's fields as sent.
#[derive(Default)]
struct BrandingForm {
    name: String,
    accent_colour: String,
    logo: Option<Vec<u8>>,
    remove_logo: bool,
}

async fn read_form(mut multipart: Multipart) -> Result<BrandingForm, String> {
    let mut form = BrandingForm::default();
    while let Some(field) = multipart.next_field().await.map_err(|e| e.to_string())? {
        let name = field.name().unwrap_or_default().to_string();
        match name.as_str() {
            "name" => form.name = field.text().await.map_err(|e| e.to_string())?,
            "accent_colour" => {
                form.accent_colour = field.text().await.map_err(|e| e.to_string())?
            }
            "remove_logo" => form.remove_logo = true,
            "logo" => {
                let bytes = field.bytes().await.map_err(|e| e.to_string())?;
                // A file input left empty sends an empty part.
                if !bytes.is_empty() {
                    form.logo = Some(bytes.to_vec());
                }
            }
            _ => {}
        }
    }
    Ok(form)
}

async fn save(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Extension(admin): Extension<AdminPrincipal>,
    multipart: Multipart,
) -> Result<Response, AppError> {
    let chrome = Chrome::new(&admin, "branding");
    let form = match read_form(multipart).await {
        Ok(form) => form,
        Err(e) => {
            let page = build(
                &state,
                chrome.error(Some(format!("The form could not be read: {e}. Try again."))),
                None,
            );
            return Ok(render(StatusCode::BAD_REQUEST, &page));
        }
    };
    let logo = match (form.logo, form.remove_logo) {
        (Some(bytes), _) => LogoChange::Replace(bytes),
        (None, true) => LogoChange::Remove,
        (None, false) => LogoChange::Keep,
    };
    let change = BrandChange {
        name: form.name.clone(),
        accent_colour: form.accent_colour.clone(),
        logo,
    };
    match state
        .branding
        .change(change, &admin.actor(), Some(addr.ip().to_string()), Utc::now())
        .await
    {
        Ok(_) => Ok(super::redirect_with_notice(
            "/admin/branding",
            "The branding was saved. Sign-in pages and the portal show it now (other nodes within seconds).",
        )),
        Err(BrandingError::Store(e)) => Err(e.into()),
        Err(e) => {
            let mut page = build(
                &state,
                chrome.error(Some(format!("Nothing was saved: {e}."))),
                Some((form.name, form.accent_colour)),
            );
            page.invalid = e.field();
            Ok(render(StatusCode::UNPROCESSABLE_ENTITY, &page))
        }
    }
}
