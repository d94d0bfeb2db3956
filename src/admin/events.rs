//! Console pages: events.

use axum::Router;

use crate::server::AppState;

/// Console routes of this page (behind the admin session guard).
pub fn router() -> Router<AppState> {
    Router::new()
}
