//! Importing Microsoft 365 users (seeds 003 and 004): first name, last name and username come
//! from M365, the company email is the userPrincipalName; a user whose email already exists
//! here fails with that reason while the others import.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use tokio::sync::mpsc;

use super::connection::{M365Error, M365};
use super::graph::{GraphUser, Page};
use crate::attributes::Attribute;
use crate::directory::{Directory, DirectoryError, UserChanges};
use crate::events::{kind, Actor, NewEvent};
use crate::store::{ImportResultRow, ImportRunRow, LinkRow, StoreError};

/// Users per Graph page when listing: `$top` may be at most 999 for users
/// (<https://learn.microsoft.com/graph/api/user-list#optional-query-parameters>,
/// <https://learn.microsoft.com/graph/paging>).
const PAGE_SIZE: u32 = 999;
/// Pages listed ahead of the one being written, so fetching the next page overlaps writing
/// the previous one while memory stays bounded.
const PAGES_AHEAD: usize = 2;
/// How often a running import beats its heartbeat.
const IMPORT_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(10);
/// A run whose heartbeat stopped this long ago lost its node (several missed beats, so a slow
/// database write or a long Graph wait is not taken for a death).
const IMPORT_ABANDONED_MS: i64 = 90_000;

/// A tenant user with what idbridge already knows of it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantUser {
    #[serde(flatten)]
    pub user: GraphUser,
    /// The local username if this M365 user was imported (or matched) before.
    pub local_username: Option<String>,
    pub imported: bool,
    pub bound: bool,
}

/// Which tenant users to import.
#[derive(Debug, Clone)]
pub enum ImportSelection {
    /// Every tenant user not imported yet.
    All,
    /// These users, by object ID or userPrincipalName.
    Users(Vec<String>),
}

/// Progress of a running import.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ImportProgress {
    pub done: usize,
    /// The users to import: importing everyone, those of the pages listed so far (the tenant
    /// is written page by page as it is listed).
    pub total: usize,
    pub imported: usize,
    pub failed: usize,
}

/// The outcome of an import run.
#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    pub run_id: String,
    pub total: usize,
    pub imported: usize,
    pub failed: usize,
    /// Selected users that were imported before (not imported twice).
    pub already_imported: usize,
    pub results: Vec<ImportResultRow>,
}

impl M365 {
    /// Every tenant user (all pages), marked imported/bound.
    pub async fn tenant_users(&self) -> Result<Vec<TenantUser>, M365Error> {
        let mut users = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let page = self.users_page(next.as_deref()).await?;
            users.extend(page.items);
            match page.next_link {
                Some(link) => next = Some(link),
                None => break,
            }
        }
        let links: HashMap<String, (String, bool)> = self
            .store()
            .m365_link_summary()
            .await?
            .into_iter()
            .map(|(object_id, username, bound)| (object_id, (username, bound)))
            .collect();
        Ok(users
            .into_iter()
            .map(|user| {
                let link = links.get(&user.id);
                TenantUser {
                    local_username: link.map(|(name, _)| name.clone()),
                    imported: link.is_some(),
                    bound: link.is_some_and(|(_, bound)| *bound),
                    user,
                }
            })
            .collect())
    }

    /// One page of the tenant's users (`GET /users`, then the `@odata.nextLink`s Graph gives,
    /// followed verbatim: <https://learn.microsoft.com/graph/paging>).
    async fn users_page(&self, link: Option<&str>) -> Result<Page<GraphUser>, M365Error> {
        self.call(|token| async move {
            use secrecy::ExposeSecret;
            self.graph()
                .list_users_page(token.expose_secret(), link, PAGE_SIZE)
                .await
        })
        .await
        .map_err(|e| e.during(crate::m365::permissions::GraphCall::ReadUsers))
    }

    /// Lists the tenant's users into `pages`, one page at a time; stops early, without error,
    /// when nobody receives any more.
    async fn send_user_pages(&self, pages: mpsc::Sender<Vec<GraphUser>>) -> Result<(), M365Error> {
        let mut next: Option<String> = None;
        loop {
            let page = self.users_page(next.as_deref()).await?;
            if pages.send(page.items).await.is_err() {
                return Ok(());
            }
            match page.next_link {
                Some(link) => next = Some(link),
                None => return Ok(()),
            }
        }
    }

    /// Imports the selected tenant users, reporting progress after each batch written (a page
    /// of the tenant, or up to [`PAGE_SIZE`] named users). Users already imported are skipped,
    /// so running an import twice imports nobody twice.
    pub async fn import(
        &self,
        directory: &Directory,
        actor: &Actor,
        selection: &ImportSelection,
        now: DateTime<Utc>,
        progress: impl FnMut(ImportProgress),
    ) -> Result<ImportReport, M365Error> {
        let tenant_id = self.tenant_id().await?;
        let run = new_run(actor, now, 0);
        self.store().insert_import_run(&run, &self.node).await?;
        let report = self
            .beating(
                &run.id,
                self.run_import(directory, actor, &run.id, &tenant_id, selection, progress),
            )
            .await;
        count_run(&report);
        report
    }

    /// Starts an import in the background and returns its run id at once. The run's counters
    /// and per-user results are stored as it goes (`Store::import_run`, `import_results`), so
    /// a page can show live progress; a run that cannot go on ends `failed` with the reason.
    pub async fn start_import(
        self: &Arc<Self>,
        directory: &Directory,
        actor: &Actor,
        selection: ImportSelection,
        now: DateTime<Utc>,
    ) -> Result<String, M365Error> {
        // Refused at once (not in the background) when there is nothing to import from.
        let status = self.status().await?;
        match status.state.as_str() {
            "connected" => {}
            "deactivated" => return Err(M365Error::Deactivated),
            "reconnect" => return Err(M365Error::Reconnect(status.last_error.unwrap_or_default())),
            _ => return Err(M365Error::NotConnected),
        }
        let run = new_run(actor, now, 0);
        self.store().insert_import_run(&run, &self.node).await?;
        let this = Arc::clone(self);
        let directory = directory.clone();
        let actor = actor.clone();
        let run_id = run.id.clone();
        tokio::spawn(async move {
            this.run_in_background(&directory, &actor, &selection, &run_id)
                .await;
        });
        Ok(run.id)
    }

    async fn run_in_background(
        &self,
        directory: &Directory,
        actor: &Actor,
        selection: &ImportSelection,
        run_id: &str,
    ) {
        let outcome = self
            .beating(run_id, async {
                let tenant_id = self.tenant_id().await?;
                self.run_import(directory, actor, run_id, &tenant_id, selection, |_| {})
                    .await
            })
            .await;
        count_run(&outcome);
        if let Err(err) = outcome {
            tracing::warn!(%err, run_id, "import run failed");
            let reason = err.to_string();
            let event = NewEvent::new(Utc::now(), actor, kind::M365_IMPORT, None)
                .details(json!({"runId": run_id, "error": reason}));
            if let Err(err) = self
                .store()
                .finish_import_run(
                    run_id,
                    "failed",
                    Some(&reason),
                    Utc::now().timestamp_millis(),
                    &event,
                )
                .await
            {
                tracing::warn!(%err, run_id, "could not record the end of an import run");
            }
        }
    }

    /// Runs `work` (the import run `run_id`) while beating the run's heartbeat, so the other
    /// nodes can tell a long run from one whose node died.
    async fn beating<T>(&self, run_id: &str, work: impl std::future::Future<Output = T>) -> T {
        tokio::pin!(work);
        tokio::select! {
            out = &mut work => out,
            never = self.beat_while_running(run_id) => match never {},
        }
    }

    /// Beats the run's heartbeat every [`IMPORT_HEARTBEAT`] until dropped with the run.
    async fn beat_while_running(&self, run_id: &str) -> std::convert::Infallible {
        let mut tick = tokio::time::interval(IMPORT_HEARTBEAT);
        tick.tick().await;
        loop {
            tick.tick().await;
            // The heartbeat is wall-clock time shared by all nodes: read at the edge.
            if let Err(err) = self
                .store()
                .beat_import_run(run_id, Utc::now().timestamp_millis())
                .await
            {
                tracing::warn!(%err, run_id, "could not beat an import run's heartbeat");
            }
        }
    }

    /// Ends the import runs whose node died mid-run (their heartbeat stopped), each with an
    /// `m365_import` event saying so. The cluster-wide chores' holder calls this.
    pub async fn end_abandoned_imports(&self, now: DateTime<Utc>) {
        let now_ms = now.timestamp_millis();
        let ended = match self
            .store()
            .fail_abandoned_import_runs(now_ms - IMPORT_ABANDONED_MS, now_ms)
            .await
        {
            Ok(ended) => ended,
            Err(err) => {
                tracing::warn!(%err, "could not look for import runs of stopped nodes");
                return;
            }
        };
        for (run_id, node) in ended {
            let node = node.unwrap_or_else(|| "unknown".into());
            tracing::warn!(
                run_id,
                node,
                "an import run's node stopped mid-run; the run is ended as interrupted"
            );
            let event =
                NewEvent::new(now, &Actor::System, kind::M365_IMPORT, None).details(json!({
                    "runId": run_id,
                    "error": format!("interrupted: the node running it ({node}) stopped"),
                }));
            if let Err(err) = self.store().record_event(&event).await {
                tracing::warn!(%err, run_id, "could not record the end of an interrupted import run");
            }
        }
    }

    /// Imports the selection into the run `run_id` (already stored, its total 0), then finishes
    /// the run with its event.
    ///
    /// Importing everyone writes each page of the tenant as it arrives while the next page is
    /// being listed ([`PAGES_AHEAD`] pages at most wait in memory), so a large tenant takes
    /// about as long as listing it; the run's total grows page by page. Named users need the
    /// whole tenant listed first (a key may match any page), then they are written in batches.
    /// A listing that fails part way keeps the users already written (a new run skips them).
    async fn run_import(
        &self,
        directory: &Directory,
        actor: &Actor,
        run_id: &str,
        tenant_id: &str,
        selection: &ImportSelection,
        mut progress: impl FnMut(ImportProgress),
    ) -> Result<ImportReport, M365Error> {
        let mut state = ImportProgress {
            done: 0,
            total: 0,
            imported: 0,
            failed: 0,
        };
        let mut already_imported = 0;
        match selection {
            ImportSelection::All => {
                progress(state);
                // Known before the run: imported earlier, or created by binding.
                let known: HashSet<String> = self
                    .store()
                    .m365_link_summary()
                    .await?
                    .into_iter()
                    .map(|(object_id, _, _)| object_id)
                    .collect();
                let (sender, receiver) = mpsc::channel(PAGES_AHEAD);
                let listing = self.send_user_pages(sender);
                let writing = async {
                    // Owned here, so a failed write drops it and the listing stops.
                    let mut receiver = receiver;
                    while let Some(page) = receiver.recv().await {
                        let listed = page.len();
                        let chosen: Vec<Result<GraphUser, String>> = page
                            .into_iter()
                            .filter(|u| !known.contains(&u.id))
                            .map(Ok)
                            .collect();
                        already_imported += listed - chosen.len();
                        state.total += chosen.len();
                        let more_total = chosen.len();
                        self.write_batch(
                            directory, actor, run_id, tenant_id, chosen, more_total, &mut state,
                        )
                        .await?;
                        progress(state);
                    }
                    Ok::<(), M365Error>(())
                };
                let (listed, written) = tokio::join!(listing, writing);
                written?;
                listed?;
            }
            ImportSelection::Users(keys) => {
                let (chosen, already) = self.choose(keys).await?;
                already_imported = already;
                state.total = chosen.len();
                self.store()
                    .set_import_run_total(run_id, chosen.len() as i64)
                    .await?;
                progress(state);
                let mut chosen = chosen.into_iter().map(|c| c.map(|u| u.user)).peekable();
                while chosen.peek().is_some() {
                    let batch: Vec<_> = chosen.by_ref().take(PAGE_SIZE as usize).collect();
                    self.write_batch(directory, actor, run_id, tenant_id, batch, 0, &mut state)
                        .await?;
                    progress(state);
                }
            }
        }
        let event =
            NewEvent::new(Utc::now(), actor, kind::M365_IMPORT, Some(tenant_id)).details(json!({
                "runId": run_id,
                "selected": state.total + already_imported,
                "imported": state.imported,
                "failed": state.failed,
                "alreadyImported": already_imported,
            }));
        let message = (already_imported > 0).then(|| {
            format!("{already_imported} selected user(s) were imported before and were skipped")
        });
        self.store()
            .finish_import_run(
                run_id,
                "finished",
                message.as_deref(),
                Utc::now().timestamp_millis(),
                &event,
            )
            .await?;
        Ok(ImportReport {
            run_id: run_id.to_string(),
            total: state.total,
            imported: state.imported,
            failed: state.failed,
            already_imported,
            results: self.store().import_results(run_id).await?,
        })
    }

    /// The tenant users these keys name (object ID or userPrincipalName; a key matching nobody
    /// stays as an error), minus those imported before, and how many of those there were.
    async fn choose(
        &self,
        keys: &[String],
    ) -> Result<(Vec<Result<TenantUser, String>>, usize), M365Error> {
        let tenant = self.tenant_users().await?;
        let mut by_key: HashMap<String, TenantUser> = HashMap::new();
        for u in tenant {
            if let Some(upn) = &u.user.user_principal_name {
                by_key.insert(upn.to_lowercase(), u.clone());
            }
            by_key.insert(u.user.id.to_lowercase(), u);
        }
        let mut chosen: Vec<Result<TenantUser, String>> = keys
            .iter()
            .map(|k| {
                by_key
                    .get(&k.to_lowercase())
                    .cloned()
                    .ok_or_else(|| k.clone())
            })
            .collect();
        let already_imported = chosen
            .iter()
            .filter(|c| c.as_ref().is_ok_and(|u| u.imported))
            .count();
        chosen.retain(|c| !c.as_ref().is_ok_and(|u| u.imported));
        Ok((chosen, already_imported))
    }

    /// Imports one batch of chosen users (a key that matched nobody stays as an error): the
    /// users with their links and events in one transaction, then every user's result, the
    /// failures' events and the run's counters (its total grown by `more_total`) in another.
    /// Outcomes are those of importing the users one by one, in order.
    #[allow(clippy::too_many_arguments)]
    async fn write_batch(
        &self,
        directory: &Directory,
        actor: &Actor,
        run_id: &str,
        tenant_id: &str,
        chosen: Vec<Result<GraphUser, String>>,
        more_total: usize,
        state: &mut ImportProgress,
    ) -> Result<(), M365Error> {
        let now = Utc::now();
        let now_ms = now.timestamp_millis();
        // Each user's result, or (still unknown) the user to create.
        let mut results: Vec<Result<ImportResultRow, (String, String)>> =
            Vec::with_capacity(chosen.len());
        let mut creates = Vec::with_capacity(chosen.len());
        for candidate in chosen {
            match candidate {
                Err(key) => results.push(Ok(failure(
                    run_id,
                    &key,
                    None,
                    "no such user in the Microsoft 365 tenant",
                    now_ms,
                ))),
                Ok(user) => match import_request(tenant_id, &user, now_ms) {
                    Some((changes, link)) => {
                        results.push(Err((user.id, link.user_principal_name.clone())));
                        creates.push((changes, link));
                    }
                    None => results.push(Ok(failure(
                        run_id,
                        &user.id,
                        None,
                        "the Microsoft 365 user has no userPrincipalName",
                        now_ms,
                    ))),
                },
            }
        }
        let mut created = directory
            .create_imported_users(actor, creates, now)
            .await?
            .into_iter();
        let mut rows = Vec::with_capacity(results.len());
        for result in results {
            let row = match result {
                Ok(row) => row,
                Err((object_id, upn)) => match created.next() {
                    Some(Ok(user)) => ImportResultRow {
                        run_id: run_id.into(),
                        m365_object_id: object_id,
                        user_principal_name: Some(upn),
                        outcome: "imported".into(),
                        message: Some(format!("imported as {}", user.username)),
                        user_id: Some(user.id),
                        at: now_ms,
                    },
                    Some(Err(DirectoryError::Store(e))) => return Err(e.into()),
                    Some(Err(DirectoryError::Duplicate { field: "email" })) => failure(
                        run_id,
                        &object_id,
                        Some(upn),
                        "a user with this email already exists in idbridge",
                        now_ms,
                    ),
                    Some(Err(DirectoryError::Duplicate { field })) => failure(
                        run_id,
                        &object_id,
                        Some(upn),
                        &format!("a user with this {field} already exists in idbridge"),
                        now_ms,
                    ),
                    Some(Err(other)) => {
                        failure(run_id, &object_id, Some(upn), &other.to_string(), now_ms)
                    }
                    None => {
                        return Err(StoreError::Corrupt(
                            "the directory reported fewer outcomes than users imported".into(),
                        )
                        .into())
                    }
                },
            };
            rows.push(row);
        }
        let events: Vec<NewEvent> = rows
            .iter()
            .filter(|r| r.outcome != "imported")
            .map(|r| {
                NewEvent::new(
                    now,
                    actor,
                    kind::M365_IMPORT_USER_FAILED,
                    r.user_principal_name.as_deref(),
                )
                .details(json!({"runId": run_id, "reason": r.message}))
            })
            .collect();
        let events: Vec<&NewEvent> = events.iter().collect();
        self.store()
            .add_import_results(run_id, &rows, &events, more_total as i64)
            .await?;
        let imported = rows.iter().filter(|r| r.outcome == "imported").count();
        state.imported += imported;
        state.failed += rows.len() - imported;
        state.done += rows.len();
        Ok(())
    }
}

/// What to create for a tenant user: first name, last name and username from M365, the company
/// email is the userPrincipalName. `None` without a userPrincipalName.
fn import_request(
    tenant_id: &str,
    user: &GraphUser,
    now_ms: i64,
) -> Option<(UserChanges, LinkRow)> {
    let upn = user.user_principal_name.clone()?;
    let changes = UserChanges::new()
        .with(Attribute::Username, username_from_upn(&upn))
        .with(Attribute::Email, upn.clone())
        .with(
            Attribute::Firstname,
            user.given_name.clone().unwrap_or_default(),
        )
        .with(
            Attribute::Lastname,
            user.surname.clone().unwrap_or_default(),
        );
    let link = LinkRow {
        user_id: String::new(),
        tenant_id: tenant_id.to_string(),
        m365_object_id: user.id.clone(),
        user_principal_name: upn,
        immutable_id: user.on_premises_immutable_id.clone(),
        linked_at: now_ms,
    };
    Some((changes, link))
}

/// A new run record in state `running`.
fn new_run(actor: &Actor, now: DateTime<Utc>, total: usize) -> ImportRunRow {
    ImportRunRow {
        id: crate::directory::new_record_id(),
        started_by: actor.to_string(),
        started_at: now.timestamp_millis(),
        finished_at: None,
        state: "running".into(),
        total: total as i64,
        imported: 0,
        failed: 0,
        message: None,
    }
}

fn failure(
    run_id: &str,
    object_id: &str,
    upn: Option<String>,
    message: &str,
    at: i64,
) -> ImportResultRow {
    ImportResultRow {
        run_id: run_id.into(),
        m365_object_id: object_id.into(),
        user_principal_name: upn,
        outcome: "failed".into(),
        message: Some(message.into()),
        user_id: None,
        at,
    }
}

/// The local username for an imported user: the UPN's part before `@`, lower-cased, with
/// characters usernames do not allow replaced by `-`.
pub fn username_from_upn(upn: &str) -> String {
    let local = upn.split('@').next().unwrap_or(upn).to_lowercase();
    let cleaned: String = local
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = cleaned.trim_start_matches(['.', '_', '-']);
    let name: String = trimmed.chars().take(64).collect();
    if name.is_empty() {
        "user".into()
    } else {
        name
    }
}

/// Counts an import run by how it ended, and the users it imported.
fn count_run(report: &Result<ImportReport, M365Error>) {
    use crate::telemetry::metrics::names;
    match report {
        Ok(report) => {
            metrics::counter!(names::IMPORT_RUNS, "outcome" => "finished").increment(1);
            metrics::counter!(names::IMPORTED_USERS).increment(report.imported as u64);
        }
        Err(_) => metrics::counter!(names::IMPORT_RUNS, "outcome" => "failed").increment(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_from_upns() {
        assert_eq!(username_from_upn("Adele.Vance@contoso.com"), "adele.vance");
        assert_eq!(username_from_upn("o'brien@contoso.com"), "o-brien");
        assert_eq!(username_from_upn("_x@contoso.com"), "x");
        assert!(crate::directory::validate_username(&username_from_upn("Ünïcode#1@c.com")).is_ok());
    }
}
