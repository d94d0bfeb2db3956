//! The Microsoft 365 pages of the console, and the end of the consent flow (`/m365/callback`).
//!
//! The callback is reached by the browser that Microsoft redirects back, authenticated by the
//! single-use, sealed OAuth `state` (the CLI's `m365 connect` uses it without a console session).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use chrono::Utc;
use serde::Deserialize;

use crate::m365::M365Error;
use crate::server::AppState;
use crate::web::{render, AppError, MessagePage};

/// Routes that need no console session.
pub fn public_router() -> Router<AppState> {
    Router::new().route("/m365/callback", get(m365_callback))
}

/// Console pages (behind the admin session guard).
pub fn router() -> Router<AppState> {
    Router::new()
}

/// What Microsoft appends to the redirect URI after consent.
#[derive(Debug, Deserialize)]
pub struct CallbackParams {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

async fn m365_callback(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Query(params): Query<CallbackParams>,
) -> Result<Response, AppError> {
    let result = state
        .m365
        .complete_connect(
            params.code.as_deref(),
            params.state.as_deref(),
            params.error.as_deref(),
            params.error_description.as_deref(),
            Some(addr.ip().to_string()),
            Utc::now(),
        )
        .await;
    match result {
        Ok(status) => {
            let message = format!(
                "idbridge is connected to tenant {} (default domain {}).",
                status.tenant_id.as_deref().unwrap_or("?"),
                status.default_domain.as_deref().unwrap_or("unknown"),
            );
            Ok(render(
                StatusCode::OK,
                &MessagePage {
                    title: "Microsoft 365 is connected",
                    message: &message,
                    hint: Some("You can close this window. Next: import users with `idbridge m365 import`, then bind them."),
                    reference: None,
                },
            ))
        }
        Err(
            err @ (M365Error::UnknownState | M365Error::Refused(_) | M365Error::NotConfigured(_)),
        ) => Err(AppError::bad_request(
            "Microsoft 365 was not connected",
            err.to_string(),
        )),
        Err(err) => Err(AppError::Internal(err.to_string())),
    }
}
