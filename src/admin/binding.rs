//! Console page: binding users to Microsoft 365. Every user with its binding state (filter,
//! search, paging), bind and unbind one or many, bind everyone, retry failures. The table
//! refreshes itself (a `data-refresh` fragment) while binds or changes are on their way.

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Router};
use chrono::Utc;
use serde::Deserialize;

use super::{display_time, redirect_with_notice, Chrome, Notice};
use crate::binding::BindingState;
use crate::directory::DirectoryError;
use crate::m365::sync::{BindReport, SyncError};
use crate::server::AppState;
use crate::store::{BindingListQuery, BindingListRow};
use crate::web::{render, AdminPrincipal, AppError};

/// Users per page of the binding table.
const PAGE_SIZE: i64 = 50;
/// What unbinding does, said wherever an admin can unbind (seed 003).
pub(super) const UNBIND_EFFECT: &str = "Sign-in through idbridge stops at once; the Microsoft 365 account is blocked from signing in (not deleted); binding again unblocks it.";

/// Console routes of this page (behind the admin session guard).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/binding", get(page))
        .route("/admin/binding/rows", get(rows))
        .route("/admin/binding/bind", post(bind))
        .route("/admin/binding/bind-all", post(bind_all))
        .route("/admin/binding/unbind", post(unbind))
        .route("/admin/binding/retry", post(retry))
}

/// The fields of a urlencoded form, in order. Repeated fields (`user=a&user=b`) are kept,
/// which axum's `Form` (serde_urlencoded) cannot give a struct.
pub(super) struct FormFields(Vec<(String, String)>);

impl FormFields {
    /// Parses a urlencoded body.
    pub(super) fn parse(body: &[u8]) -> Self {
        Self(url::form_urlencoded::parse(body).into_owned().collect())
    }

    /// Every value of `name`, trimmed, empty ones left out.
    pub(super) fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect()
    }

    /// The first non-empty value of `name`.
    pub(super) fn one(&self, name: &str) -> Option<String> {
        self.all(name).into_iter().next()
    }

    /// Every (name, value) pair.
    pub(super) fn pairs(&self) -> &[(String, String)] {
        &self.0
    }
}

/// The table's filter, from the query string (page) or hidden fields (forms).
#[derive(Debug, Clone, Default, Deserialize)]
struct Filter {
    state: Option<String>,
    q: Option<String>,
    offset: Option<i64>,
}

impl Filter {
    /// Unknown states and blank searches are dropped, so the filter is always a valid one.
    fn clean(self) -> Self {
        Self {
            state: self
                .state
                .map(|s| s.trim().to_ascii_lowercase())
                .filter(|s| BindingState::parse(s).is_some()),
            q: self
                .q
                .map(|q| q.trim().to_string())
                .filter(|q| !q.is_empty()),
            offset: self.offset.filter(|o| *o > 0),
        }
    }

    fn from_form(form: &FormFields) -> Self {
        Self {
            state: form.one("state"),
            q: form.one("q"),
            offset: form.one("offset").and_then(|o| o.parse().ok()),
        }
        .clean()
    }

    /// The query string for this filter at `offset` (empty parts left out).
    fn query(&self, offset: i64) -> String {
        let mut out = url::form_urlencoded::Serializer::new(String::new());
        if let Some(s) = &self.state {
            out.append_pair("state", s);
        }
        if let Some(q) = &self.q {
            out.append_pair("q", q);
        }
        if offset > 0 {
            out.append_pair("offset", &offset.to_string());
        }
        out.finish()
    }

    /// The page URL with this filter.
    fn page_url(&self) -> String {
        with_query("/admin/binding", &self.query(self.offset.unwrap_or(0)))
    }

    fn list_query(&self) -> BindingListQuery {
        BindingListQuery {
            state: self.state.clone(),
            search: self.q.clone(),
            limit: PAGE_SIZE,
            offset: self.offset.unwrap_or(0),
        }
    }
}

fn with_query(path: &str, query: &str) -> String {
    if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{query}")
    }
}

/// One user in the table.
struct Line {
    user_id: String,
    username: String,
    email: String,
    name: String,
    suspended: bool,
    state: BindingState,
    immutable_id: String,
    last_sync: String,
    /// Graph's message for a failed bind or change.
    last_error: Option<String>,
    queued_jobs: i64,
    failed_jobs: i64,
}

impl Line {
    fn from_row(row: BindingListRow) -> Self {
        Self {
            name: format!("{} {}", row.firstname, row.lastname)
                .trim()
                .to_string(),
            suspended: row.user_state == "suspended",
            immutable_id: row.immutable_id.unwrap_or_default(),
            last_sync: display_time(row.last_sync_at),
            last_error: row.last_error.filter(|e| !e.is_empty()),
            user_id: row.user_id,
            username: row.username,
            email: row.email,
            state: row.binding_state,
            queued_jobs: row.queued_jobs,
            failed_jobs: row.failed_jobs,
        }
    }

    /// Bound or being bound: the row offers Unbind, otherwise Bind.
    fn is_bound(&self) -> bool {
        self.state.receives_changes()
    }

    /// The bind failed: the row offers to bind again.
    fn failed(&self) -> bool {
        self.state == BindingState::Failed
    }

    /// Something is still on its way to Microsoft 365.
    fn moving(&self) -> bool {
        self.state == BindingState::Pending || self.queued_jobs > 0
    }
}

/// The table (the live region's content).
#[derive(Template)]
#[template(path = "admin/binding_rows.html")]
struct BindingRows {
    csrf: String,
    can_write: bool,
    lines: Vec<Line>,
    total: i64,
    first: i64,
    last: i64,
    prev: Option<String>,
    next: Option<String>,
    /// Binds or changes are on their way: keep refreshing.
    moving: bool,
    unbind_effect: &'static str,
    /// The filter, kept by the per-row forms.
    state: String,
    q: String,
    offset: i64,
}

/// A filter tab above the table.
struct Tab {
    label: &'static str,
    href: String,
    active: bool,
}

#[derive(Template)]
#[template(path = "admin/binding.html")]
struct BindingPage {
    chrome: Chrome,
    state: String,
    q: String,
    offset: i64,
    tabs: Vec<Tab>,
    /// The connection's state (connected, reconnect, deactivated, not_connected).
    connection: String,
    connection_error: Option<String>,
    rows_url: String,
    moving: bool,
    rows_html: String,
    failed_total: i64,
}

/// Users to confirm an unbind of several users.
struct Named {
    id: String,
    username: String,
    email: String,
    state: BindingState,
}

impl Named {
    fn unbound(&self) -> bool {
        self.state == BindingState::Unbound
    }
}

#[derive(Template)]
#[template(path = "admin/binding_unbind.html")]
struct UnbindConfirm {
    chrome: Chrome,
    users: Vec<Named>,
    unknown: Vec<String>,
    state: String,
    q: String,
    offset: i64,
    back: String,
    unbind_effect: &'static str,
}

async fn build_rows(
    state: &AppState,
    admin: &AdminPrincipal,
    filter: &Filter,
) -> Result<BindingRows, AppError> {
    let query = filter.list_query();
    let total = state.store.count_binding_list(&query).await?;
    let lines: Vec<Line> = state
        .store
        .binding_list(&query)
        .await?
        .into_iter()
        .map(Line::from_row)
        .collect();
    let offset = query.offset;
    let prev = (offset > 0)
        .then(|| with_query("/admin/binding", &filter.query((offset - PAGE_SIZE).max(0))));
    let next = (offset + PAGE_SIZE < total)
        .then(|| with_query("/admin/binding", &filter.query(offset + PAGE_SIZE)));
    Ok(BindingRows {
        csrf: admin.csrf.clone(),
        can_write: admin.can_write(),
        moving: lines.iter().any(Line::moving),
        first: if lines.is_empty() { 0 } else { offset + 1 },
        last: offset + lines.len() as i64,
        total,
        prev,
        next,
        lines,
        unbind_effect: UNBIND_EFFECT,
        state: filter.state.clone().unwrap_or_default(),
        q: filter.q.clone().unwrap_or_default(),
        offset,
    })
}

async fn build_page(
    state: &AppState,
    admin: &AdminPrincipal,
    filter: &Filter,
    chrome: Chrome,
) -> Result<BindingPage, AppError> {
    let rows = build_rows(state, admin, filter).await?;
    let rows_html = rows
        .render()
        .map_err(|e| AppError::Internal(format!("template: {e}")))?;
    let connection = state
        .m365
        .status()
        .await
        .map_err(|e| AppError::Internal(e.to_string()))?;
    let counts = state
        .sync
        .counts()
        .await
        .map_err(|e| AppError::Internal(e.to_string()))?;
    let tab = |label: &'static str, s: Option<&str>| {
        let f = Filter {
            state: s.map(str::to_string),
            q: filter.q.clone(),
            offset: None,
        };
        Tab {
            label,
            href: f.page_url(),
            active: filter.state.as_deref() == s,
        }
    };
    Ok(BindingPage {
        chrome,
        state: filter.state.clone().unwrap_or_default(),
        q: filter.q.clone().unwrap_or_default(),
        offset: filter.offset.unwrap_or(0),
        tabs: vec![
            tab("All", None),
            tab("Bound", Some("bound")),
            tab("Pending", Some("pending")),
            tab("Failed", Some("failed")),
            tab("Unbound", Some("unbound")),
        ],
        connection_error: connection.last_error.clone(),
        connection: connection.state,
        rows_url: with_query(
            "/admin/binding/rows",
            &filter.query(filter.offset.unwrap_or(0)),
        ),
        moving: rows.moving,
        rows_html,
        failed_total: counts.bind_failed + counts.failed,
    })
}

async fn page(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
    Notice(notice): Notice,
    Query(filter): Query<Filter>,
) -> Result<Response, AppError> {
    let filter = filter.clean();
    let chrome = Chrome::new(&admin, "binding").flash(notice);
    let page = build_page(&state, &admin, &filter, chrome).await?;
    Ok(render(StatusCode::OK, &page))
}

/// The table alone, for the live region.
async fn rows(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
    Query(filter): Query<Filter>,
) -> Result<Response, AppError> {
    let rows = build_rows(&state, &admin, &filter.clean()).await?;
    Ok(render(StatusCode::OK, &rows))
}

/// The page again with a refusal (the form's filter kept).
async fn refused(
    state: &AppState,
    admin: &AdminPrincipal,
    filter: &Filter,
    status: StatusCode,
    message: String,
) -> Result<Response, AppError> {
    let chrome = Chrome::new(admin, "binding").error(Some(message));
    let page = build_page(state, admin, filter, chrome).await?;
    Ok(render(status, &page))
}

/// Names for a notice: the first few, then how many more.
fn names(list: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut text = list
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if list.len() > SHOWN {
        text.push_str(&format!(" and {} more", list.len() - SHOWN));
    }
    text
}

fn skipped(report: &BindReport) -> String {
    if report.skipped.is_empty() {
        return String::new();
    }
    let list: Vec<String> = report
        .skipped
        .iter()
        .map(|(user, why)| format!("{user} ({why})"))
        .collect();
    format!(" Skipped: {}.", names(&list))
}

fn bind_notice(report: &BindReport) -> String {
    let mut text = if report.queued.is_empty() {
        "Nobody was bound.".to_string()
    } else {
        format!(
            "Binding {} user(s): {}. Their Microsoft 365 accounts are created or adopted within seconds.",
            report.queued.len(),
            names(&report.queued)
        )
    };
    text.push_str(&skipped(report));
    text
}

/// Refusals the admin can act on (not connected, …) go back to the page; the rest is internal.
async fn sync_refusal(
    state: &AppState,
    admin: &AdminPrincipal,
    filter: &Filter,
    err: SyncError,
) -> Result<Response, AppError> {
    match err {
        SyncError::Connection(e) => {
            refused(state, admin, filter, StatusCode::CONFLICT, e.to_string()).await
        }
        SyncError::Directory(DirectoryError::Store(e)) | SyncError::Store(e) => Err(e.into()),
        other => {
            refused(
                state,
                admin,
                filter,
                StatusCode::UNPROCESSABLE_ENTITY,
                other.to_string(),
            )
            .await
        }
    }
}

async fn bind(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
    body: Bytes,
) -> Result<Response, AppError> {
    let form = FormFields::parse(&body);
    let filter = Filter::from_form(&form);
    let users = form.all("user");
    if users.is_empty() {
        return refused(
            &state,
            &admin,
            &filter,
            StatusCode::UNPROCESSABLE_ENTITY,
            "Select the users to bind first.".into(),
        )
        .await;
    }
    match state.sync.bind(&admin.actor(), &users, Utc::now()).await {
        Ok(report) => Ok(redirect_with_notice(
            &filter.page_url(),
            &bind_notice(&report),
        )),
        Err(err) => sync_refusal(&state, &admin, &filter, err).await,
    }
}

async fn bind_all(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
    body: Bytes,
) -> Result<Response, AppError> {
    let filter = Filter::from_form(&FormFields::parse(&body));
    match state.sync.bind_all(&admin.actor(), Utc::now()).await {
        Ok(report) => Ok(redirect_with_notice(
            &filter.page_url(),
            &bind_notice(&report),
        )),
        Err(err) => sync_refusal(&state, &admin, &filter, err).await,
    }
}

/// Unbinds after confirmation: without `confirmed=yes` (several users chosen with the
/// checkboxes) it shows who would be unbound and what that does.
async fn unbind(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
    body: Bytes,
) -> Result<Response, AppError> {
    let form = FormFields::parse(&body);
    let filter = Filter::from_form(&form);
    let users = form.all("user");
    if users.is_empty() {
        return refused(
            &state,
            &admin,
            &filter,
            StatusCode::UNPROCESSABLE_ENTITY,
            "Select the users to unbind first.".into(),
        )
        .await;
    }
    if form.one("confirmed").as_deref() != Some("yes") {
        let mut named = Vec::new();
        let mut unknown = Vec::new();
        for key in &users {
            match state.directory.get_user(key).await {
                Ok(u) => named.push(Named {
                    state: u.m365.as_ref().map_or(BindingState::Unbound, |b| b.state),
                    id: u.id,
                    username: u.username,
                    email: u.email,
                }),
                Err(DirectoryError::NotFound(_)) => unknown.push(key.clone()),
                Err(e) => return Err(e.into()),
            }
        }
        let page = UnbindConfirm {
            chrome: Chrome::new(&admin, "binding"),
            users: named,
            unknown,
            state: filter.state.clone().unwrap_or_default(),
            q: filter.q.clone().unwrap_or_default(),
            offset: filter.offset.unwrap_or(0),
            back: filter.page_url(),
            unbind_effect: UNBIND_EFFECT,
        };
        return Ok(render(StatusCode::OK, &page));
    }
    match state.sync.unbind(&admin.actor(), &users, Utc::now()).await {
        Ok(report) => {
            let mut text = if report.queued.is_empty() {
                "Nobody was unbound.".to_string()
            } else {
                format!(
                    "Unbound {} user(s): {}. Sign-in through idbridge stopped; their Microsoft 365 accounts are being blocked (not deleted).",
                    report.queued.len(),
                    names(&report.queued)
                )
            };
            text.push_str(&skipped(&report));
            Ok(redirect_with_notice(&filter.page_url(), &text))
        }
        Err(err) => sync_refusal(&state, &admin, &filter, err).await,
    }
}

/// Queues failed changes again: one user's (`user`), or everybody's.
async fn retry(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
    body: Bytes,
) -> Result<Response, AppError> {
    let form = FormFields::parse(&body);
    let filter = Filter::from_form(&form);
    let user = match form.one("user") {
        Some(key) => match state.directory.get_user(&key).await {
            Ok(u) => Some(u),
            Err(DirectoryError::NotFound(_)) => {
                return refused(
                    &state,
                    &admin,
                    &filter,
                    StatusCode::NOT_FOUND,
                    format!("There is no user {key:?}."),
                )
                .await
            }
            Err(e) => return Err(e.into()),
        },
        None => None,
    };
    match state
        .sync
        .retry_failed(&admin.actor(), user.as_ref(), Utc::now())
        .await
    {
        Ok(n) => {
            let who = user
                .as_ref()
                .map(|u| format!(" for {}", u.username))
                .unwrap_or_default();
            let text = if n == 0 {
                format!("Nothing had failed{who}.")
            } else {
                format!("{n} failed change(s){who} queued again; they are sent within seconds.")
            };
            Ok(redirect_with_notice(&filter.page_url(), &text))
        }
        Err(err) => sync_refusal(&state, &admin, &filter, err).await,
    }
}
