//! The JSON API under `/api/v1`, authenticated with API keys; described by the OpenAPI document
//! at `/api/v1/openapi.json`.

use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::{json, Value};

use crate::server::AppState;
use crate::web::AdminPrincipal;

/// Routes behind the API key guard.
pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/me", get(me))
}

/// Routes without authentication (the API description).
pub fn public_router() -> Router<AppState> {
    Router::new()
}

/// The caller: the API key's name and role.
async fn me(Extension(caller): Extension<AdminPrincipal>) -> Json<Value> {
    Json(json!({
        "name": caller.name,
        "role": caller.role.as_str(),
        "keyId": caller.api_key_id,
    }))
}
