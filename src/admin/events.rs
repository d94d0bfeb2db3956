//! Console page: Directory Insights, the event log (filters, keyset paging, JSON lines export).

use askama::Template;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use chrono::{NaiveDateTime, TimeZone, Utc};
use serde::Deserialize;

use super::Chrome;
use crate::server::AppState;
use crate::store::EventFilter;
use crate::web::{render, AdminPrincipal, AppError};

/// Events per page of the console.
const PAGE: i64 = 100;
/// The most events one export holds (narrow the filters for more).
const EXPORT_MAX: i64 = 1_000_000;

/// Console routes of this page (behind the admin session guard).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/events", get(page))
        .route("/admin/events.jsonl", get(export))
}

/// A time with seconds for event lists: `2026-11-23 11:15:42 UTC`.
pub(super) fn display_seconds(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default()
}

/// The filters as the page's form sends them (empty fields mean "any").
#[derive(Debug, Default, Deserialize)]
struct EventQuery {
    #[serde(default, rename = "type")]
    event_type: String,
    /// The target: the username for user events.
    #[serde(default)]
    user: String,
    /// The actor: `root` (an admin) or a full actor such as `apikey:HR sync`.
    #[serde(default)]
    admin: String,
    /// `datetime-local` values, read as UTC.
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    /// Keyset cursor: only events older than this id.
    #[serde(default)]
    before: String,
}

/// A refused filter: the field and what is wrong with it.
struct BadFilter {
    field: &'static str,
    message: String,
}

/// Reads a `datetime-local` value (`2026-11-23T11:15`, seconds optional) as UTC; returns the
/// time in ms and the length of the period it names (a minute, or a second with seconds).
fn parse_local(field: &'static str, text: &str) -> Result<(i64, i64), BadFilter> {
    let text = text.trim();
    let formats = [
        ("%Y-%m-%dT%H:%M", 60_000),
        ("%Y-%m-%d %H:%M", 60_000),
        ("%Y-%m-%dT%H:%M:%S", 1_000),
        ("%Y-%m-%d %H:%M:%S", 1_000),
        ("%Y-%m-%dT%H:%M:%S%.f", 1),
    ];
    formats
        .iter()
        .find_map(|(format, period)| {
            NaiveDateTime::parse_from_str(text, format)
                .ok()
                .map(|t| (t.and_utc().timestamp_millis(), *period))
        })
        .ok_or_else(|| BadFilter {
            field,
            message: format!(
                "{field}: {text:?} is not a date and time such as 2026-11-23T11:15 (UTC)"
            ),
        })
}

fn non_empty(text: &str) -> Option<String> {
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

impl EventQuery {
    fn filter(&self) -> Result<EventFilter, BadFilter> {
        let since = non_empty(&self.from)
            .map(|t| parse_local("from", &t).map(|(ms, _)| ms))
            .transpose()?;
        // "To 11:15" includes events during 11:15 itself.
        let until = non_empty(&self.to)
            .map(|t| parse_local("to", &t).map(|(ms, period)| ms + period))
            .transpose()?;
        let before_id = non_empty(&self.before)
            .map(|b| {
                b.parse::<i64>().map_err(|_| BadFilter {
                    field: "before",
                    message: format!("before: {b:?} is not an event id"),
                })
            })
            .transpose()?;
        // A bare name is an admin; anything else is given in full (`apikey:…`, `cli:…`,
        // `user:…`, `system`, `anonymous`).
        let actor = non_empty(&self.admin).map(|a| {
            if a.contains(':') || a == "system" || a == "anonymous" {
                a
            } else {
                format!("admin:{a}")
            }
        });
        Ok(EventFilter {
            event_type: non_empty(&self.event_type),
            target: non_empty(&self.user),
            actor,
            since,
            until,
            before_id,
            limit: PAGE,
        })
    }

    /// The filters as a query string, with an optional `before` cursor.
    fn query_string(&self, before: Option<i64>) -> String {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        for (name, value) in [
            ("type", &self.event_type),
            ("user", &self.user),
            ("admin", &self.admin),
            ("from", &self.from),
            ("to", &self.to),
        ] {
            if !value.trim().is_empty() {
                query.append_pair(name, value.trim());
            }
        }
        if let Some(id) = before {
            query.append_pair("before", &id.to_string());
        }
        query.finish()
    }
}

fn with_query(path: &str, query: String) -> String {
    if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{query}")
    }
}

/// One event as the console shows it (the events page and a user's recent events).
pub(super) struct EventLine {
    pub(super) at: String,
    pub(super) event_type: String,
    /// What the type means ("Refused: not_bound_to_m365" adds the reason).
    pub(super) label: String,
    pub(super) actor: String,
    pub(super) target: String,
    /// The events of the same target.
    pub(super) target_url: String,
    pub(super) client_ip: String,
    /// The details as name and value, one line each (nested values as compact JSON).
    pub(super) details: Vec<(String, String)>,
}

impl From<crate::store::EventRow> for EventLine {
    fn from(e: crate::store::EventRow) -> Self {
        let details = detail_lines(&e.details);
        Self {
            at: display_seconds(e.at),
            target_url: e
                .target
                .as_deref()
                .map(|t| {
                    let q = url::form_urlencoded::Serializer::new(String::new())
                        .append_pair("user", t)
                        .finish();
                    format!("/admin/events?{q}")
                })
                .unwrap_or_default(),
            target: e.target.unwrap_or_default(),
            label: event_label(&e.event_type, &details),
            event_type: e.event_type,
            actor: e.actor,
            client_ip: e.client_ip.unwrap_or_default(),
            details,
        }
    }
}

/// The details of an event as lines for the page.
fn detail_lines(details: &str) -> Vec<(String, String)> {
    match serde_json::from_str::<serde_json::Value>(details) {
        Ok(serde_json::Value::Object(map)) => map
            .into_iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| {
                let text = match v {
                    serde_json::Value::String(s) => s,
                    serde_json::Value::Array(items) if items.iter().all(|i| i.is_string()) => items
                        .iter()
                        .filter_map(|i| i.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    other => other.to_string(),
                };
                (k, text)
            })
            .collect(),
        _ if details.trim().is_empty() || details.trim() == "{}" => Vec::new(),
        _ => vec![("details".into(), details.to_string())],
    }
}

/// The event's label, with the reason of a refusal.
fn event_label(event_type: &str, details: &[(String, String)]) -> String {
    let label = crate::events::label(event_type);
    let reason = details.iter().find(|(k, _)| k == "reason").map(|(_, v)| v);
    match (event_type, reason) {
        (crate::events::kind::SSO_ACCESS_REFUSED, Some(reason)) => {
            format!("{label}: {}", reason.replace('_', " "))
        }
        _ => label.to_string(),
    }
}

#[derive(Template)]
#[template(path = "admin/events.html")]
struct EventsPage {
    chrome: Chrome,
    types: Vec<String>,
    event_type: String,
    user: String,
    admin: String,
    from: String,
    to: String,
    /// The field a refused filter is about.
    invalid: &'static str,
    events: Vec<EventLine>,
    paged: bool,
    newest: String,
    older: Option<String>,
    export: String,
}

/// The page with the filters filled in and no events yet.
fn events_page(chrome: Chrome, types: Vec<String>, query: &EventQuery) -> EventsPage {
    EventsPage {
        chrome,
        types,
        event_type: query.event_type.trim().to_string(),
        user: query.user.trim().to_string(),
        admin: query.admin.trim().to_string(),
        from: query.from.trim().to_string(),
        to: query.to.trim().to_string(),
        invalid: "",
        events: Vec::new(),
        paged: non_empty(&query.before).is_some(),
        newest: with_query("/admin/events", query.query_string(None)),
        older: None,
        export: with_query("/admin/events.jsonl", query.query_string(None)),
    }
}

/// The page again with a refused filter named (status 422).
fn refuse(mut page: EventsPage, bad: BadFilter) -> Response {
    page.invalid = bad.field;
    page.chrome = page.chrome.error(Some(bad.message));
    render(StatusCode::UNPROCESSABLE_ENTITY, &page)
}

async fn page(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
    Query(query): Query<EventQuery>,
) -> Result<Response, AppError> {
    let types = state.store.event_types().await?;
    let mut page = events_page(Chrome::new(&admin, "events"), types, &query);
    let mut filter = match query.filter() {
        Ok(filter) => filter,
        Err(bad) => return Ok(refuse(page, bad)),
    };
    // One more than shown tells whether an older page exists.
    filter.limit = PAGE + 1;
    let mut rows = state.store.list_events(&filter).await?;
    let more = rows.len() as i64 > PAGE;
    rows.truncate(PAGE as usize);
    page.older = more
        .then(|| rows.last())
        .flatten()
        .map(|last| with_query("/admin/events", query.query_string(Some(last.id))));
    page.events = rows.into_iter().map(EventLine::from).collect();
    Ok(render(StatusCode::OK, &page))
}

/// The filtered events as JSON lines, newest first, streamed a page at a time so the whole log
/// (up to `EXPORT_MAX` events) leaves without being held in memory.
async fn export(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
    Query(query): Query<EventQuery>,
) -> Result<Response, AppError> {
    let filter = match query.filter() {
        Ok(filter) => filter,
        Err(bad) => {
            let types = state.store.event_types().await?;
            let page = events_page(Chrome::new(&admin, "events"), types, &query);
            return Ok(refuse(page, bad));
        }
    };
    let body = crate::admin::api::events::jsonl_body(state.store.clone(), filter, EXPORT_MAX);
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"idbridge-events.jsonl\"",
            ),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response())
}

#[cfg(test)]
mod label_tests {
    use super::*;

    #[test]
    fn details_are_lines_and_a_refusal_names_its_reason() {
        let lines = detail_lines(
            r#"{"reason":"not_bound_to_m365","serviceProvider":"urn:federation:MicrosoftOnline","users":["a","b"],"n":3,"none":null}"#,
        );
        assert_eq!(
            lines,
            [
                ("n".to_string(), "3".to_string()),
                ("reason".into(), "not_bound_to_m365".into()),
                (
                    "serviceProvider".into(),
                    "urn:federation:MicrosoftOnline".into()
                ),
                ("users".into(), "a, b".into()),
            ]
        );
        assert_eq!(
            event_label("sso_access_refused", &lines),
            "Refused: not bound to m365"
        );
        assert_eq!(event_label("m365_bind", &[]), "Bound to Microsoft 365");
        assert!(detail_lines("{}").is_empty());
    }
}
