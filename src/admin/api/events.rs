//! `/api/v1/events`: the Directory Insights event log, newest first, paged and as JSON lines.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::ApiQuery;
use super::schema::{int_param, rfc3339_millis, time_param, ErrorResponse};
use crate::server::AppState;
use crate::store::{EventFilter, EventRow, Store};
use crate::web::ApiError;

/// Events per database round trip of the JSON lines export.
const EXPORT_PAGE: i64 = 500;

/// The event routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_events))
        .routes(routes!(export_events))
}

/// Which events to list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventParams {
    /// The event type, e.g. `user_create`, `m365_bind`, `integrationattribute_include`.
    #[serde(rename = "type")]
    event_type: Option<String>,
    /// The target: a username, an attribute, a tenant …
    target: Option<String>,
    /// Who did it: `admin:NAME`, `apikey:NAME`, `cli:USER`, `user:NAME`, `system`, `anonymous`.
    actor: Option<String>,
    /// Only events at or after this time (RFC 3339).
    #[param(format = DateTime)]
    since: Option<String>,
    /// Only events before this time (RFC 3339).
    #[param(format = DateTime)]
    until: Option<String>,
    /// Only events older than this event id: the `next` value of the previous page.
    #[param(value_type = Option<i64>)]
    before: Option<String>,
    /// Events per page, 1 to 1000 (default 100). For the JSON lines export: at most this many
    /// (default: all).
    #[param(value_type = Option<i64>, minimum = 1)]
    limit: Option<String>,
}

impl EventParams {
    fn filter(&self) -> Result<EventFilter, ApiError> {
        if let Some(t) = self.event_type.as_deref() {
            if !crate::events::kind::ALL.contains(&t) {
                return Err(ApiError::validation(
                    "type",
                    format!("unknown event type {t:?}: an unknown type would match nothing"),
                ));
            }
        }
        Ok(EventFilter {
            event_type: self.event_type.clone(),
            target: self.target.clone(),
            actor: self.actor.clone(),
            since: time_param("since", self.since.as_deref())?,
            until: time_param("until", self.until.as_deref())?,
            before_id: self
                .before
                .as_deref()
                .map(|b| int_param("before", Some(b), 0, 1, i64::MAX))
                .transpose()?,
            limit: 0,
        })
    }
}

/// A recorded event.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// Increasing with time.
    pub id: i64,
    /// RFC 3339 with milliseconds.
    pub at: String,
    pub actor: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub target: Option<String>,
    /// Type-specific details (never a password or token).
    #[schema(value_type = Object)]
    pub details: Value,
    pub client_ip: Option<String>,
}

impl From<EventRow> for Event {
    fn from(r: EventRow) -> Self {
        Self {
            id: r.id,
            at: rfc3339_millis(r.at),
            actor: r.actor,
            event_type: r.event_type,
            target: r.target,
            details: match serde_json::from_str(&r.details) {
                Ok(Value::Object(details)) => Value::Object(details),
                // Details are recorded as objects; anything else is kept, wrapped, so the
                // documented shape holds.
                Ok(other) => serde_json::json!({ "value": other }),
                Err(_) => serde_json::json!({ "value": r.details }),
            },
            client_ip: r.client_ip,
        }
    }
}

/// A page of events, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventPage {
    pub items: Vec<Event>,
    /// Pass as `before` for the next (older) page; null on the last page.
    pub next: Option<i64>,
}

/// The event log, newest first, a page at a time.
#[utoipa::path(
    get,
    path = "/api/v1/events",
    tag = "events",
    params(EventParams),
    responses(
        (status = 200, description = "A page of events", body = EventPage),
        (status = 422, description = "A bad parameter (`field` names it)", body = ErrorResponse),
    )
)]
async fn list_events(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<EventParams>,
) -> Result<Json<EventPage>, ApiError> {
    let limit = int_param("limit", params.limit.as_deref(), 100, 1, 1000)?;
    let mut filter = params.filter()?;
    // One more than asked tells whether an older page exists.
    filter.limit = limit + 1;
    let mut rows = state.store.list_events(&filter).await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next = if more {
        rows.last().map(|r| r.id)
    } else {
        None
    };
    Ok(Json(EventPage {
        items: rows.into_iter().map(Event::from).collect(),
        next,
    }))
}

/// The events matching the filters as JSON lines (one `Event` per line, newest first),
/// streamed: suitable for exporting the whole log.
#[utoipa::path(
    get,
    path = "/api/v1/events.jsonl",
    tag = "events",
    params(EventParams),
    responses(
        (status = 200, description = "One JSON event per line", body = Event, content_type = "application/x-ndjson"),
        (status = 422, description = "A bad parameter (`field` names it)", body = ErrorResponse),
    )
)]
async fn export_events(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<EventParams>,
) -> Result<Response, ApiError> {
    let remaining = int_param("limit", params.limit.as_deref(), i64::MAX, 1, i64::MAX)?;
    let filter = params.filter()?;
    let body = jsonl_body(state.store.clone(), filter, remaining);
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"events.jsonl\"",
            ),
        ],
        body,
    )
        .into_response())
}

/// The events matching `filter` as a streamed JSON-lines body (one [`Event`] per line, newest
/// first, at most `max`), read a page at a time so the whole log leaves without being held in
/// memory. The console's export uses it too.
pub(crate) fn jsonl_body(store: Store, filter: EventFilter, max: i64) -> Body {
    let stream = jsonl_pages(store, filter, max).map(|page| {
        page.map_err(|err| {
            // The status line is gone: ending the body early is all that is left, and the
            // download shows as failed.
            tracing::error!(%err, "the event export stopped");
            std::io::Error::other(err.to_string())
        })
    });
    Body::from_stream(stream)
}

/// The JSON lines of the events matching `filter` (newest first, at most `max`), a page of
/// lines per item; it ends after the first error. The HTTP exports and `idbridge events --json`
/// both write these, so the formats cannot drift apart.
pub(crate) fn jsonl_pages(
    store: Store,
    filter: EventFilter,
    max: i64,
) -> impl futures_util::Stream<Item = Result<Bytes, crate::store::StoreError>> {
    futures_util::stream::unfold(Some((store, filter, max)), |page| async move {
        let (store, mut filter, remaining) = page?;
        filter.limit = remaining.min(EXPORT_PAGE);
        match export_page(&store, &filter).await {
            Ok((bytes, count, last_id)) if count > 0 => {
                let left = remaining - count;
                let next = (count == filter.limit && left > 0).then(|| {
                    filter.before_id = last_id;
                    (store, filter, left)
                });
                Some((Ok(bytes), next))
            }
            Ok(_) => None,
            Err(err) => Some((Err(err), None)),
        }
    })
}

/// One page of the export: its lines, how many, and the last id.
async fn export_page(
    store: &Store,
    filter: &EventFilter,
) -> Result<(Bytes, i64, Option<i64>), crate::store::StoreError> {
    let rows = store.list_events(filter).await?;
    let count = rows.len() as i64;
    let last_id = rows.last().map(|r| r.id);
    let mut out = Vec::new();
    for row in rows {
        // Serializing these plain structs cannot fail.
        if serde_json::to_writer(&mut out, &Event::from(row)).is_ok() {
            out.push(b'\n');
        }
    }
    Ok((Bytes::from(out), count, last_id))
}
