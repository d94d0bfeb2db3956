//! Importing Microsoft 365 users (seeds 003 and 004): first name, last name and username come
//! from M365, the company email is the userPrincipalName; a user whose email already exists
//! here fails with that reason while the others import.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;

use super::connection::{M365Error, M365};
use super::graph::GraphUser;
use crate::attributes::Attribute;
use crate::directory::{Directory, DirectoryError, UserChanges};
use crate::events::{kind, Actor, NewEvent};
use crate::store::{ImportResultRow, ImportRunRow, LinkRow};

/// Users per Graph page when listing (the maximum Graph allows).
const PAGE_SIZE: u32 = 999;

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
            let link = next.clone();
            let page = self
                .call(|token| {
                    let link = link.clone();
                    async move {
                        use secrecy::ExposeSecret;
                        self.graph()
                            .list_users_page(token.expose_secret(), link.as_deref(), PAGE_SIZE)
                            .await
                    }
                })
                .await
                .map_err(|e| e.during(crate::m365::permissions::GraphCall::ReadUsers))?;
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

    /// Imports the selected tenant users, reporting progress after each user. Users already
    /// imported are skipped, so running an import twice imports nobody twice.
    pub async fn import(
        &self,
        directory: &Directory,
        actor: &Actor,
        selection: &ImportSelection,
        now: DateTime<Utc>,
        progress: impl FnMut(ImportProgress),
    ) -> Result<ImportReport, M365Error> {
        let tenant_id = self.tenant_id().await?;
        let (chosen, already_imported) = self.choose(selection).await?;
        let run = new_run(actor, now, chosen.len());
        self.store().insert_import_run(&run).await?;
        self.import_chosen(
            directory,
            actor,
            &run.id,
            &tenant_id,
            chosen,
            already_imported,
            progress,
        )
        .await
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
        let guess = match &selection {
            ImportSelection::All => 0,
            ImportSelection::Users(keys) => keys.len(),
        };
        let run = new_run(actor, now, guess);
        self.store().insert_import_run(&run).await?;
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
        let outcome = async {
            let tenant_id = self.tenant_id().await?;
            let (chosen, already_imported) = self.choose(selection).await?;
            self.store()
                .set_import_run_total(run_id, chosen.len() as i64)
                .await?;
            self.import_chosen(
                directory,
                actor,
                run_id,
                &tenant_id,
                chosen,
                already_imported,
                |_| {},
            )
            .await
        }
        .await;
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

    /// The tenant users the selection names (a key matching nobody stays as an error), minus
    /// those imported before, and how many of those there were.
    async fn choose(
        &self,
        selection: &ImportSelection,
    ) -> Result<(Vec<Result<TenantUser, String>>, usize), M365Error> {
        let tenant = self.tenant_users().await?;
        let mut chosen: Vec<Result<TenantUser, String>> = match selection {
            ImportSelection::All => tenant.into_iter().map(Ok).collect(),
            ImportSelection::Users(keys) => {
                let mut by_key: HashMap<String, TenantUser> = HashMap::new();
                for u in tenant {
                    if let Some(upn) = &u.user.user_principal_name {
                        by_key.insert(upn.to_lowercase(), u.clone());
                    }
                    by_key.insert(u.user.id.to_lowercase(), u);
                }
                keys.iter()
                    .map(|k| {
                        by_key
                            .get(&k.to_lowercase())
                            .cloned()
                            .ok_or_else(|| k.clone())
                    })
                    .collect()
            }
        };
        let already_imported = chosen
            .iter()
            .filter(|c| c.as_ref().is_ok_and(|u| u.imported))
            .count();
        chosen.retain(|c| !c.as_ref().is_ok_and(|u| u.imported));
        Ok((chosen, already_imported))
    }

    /// Imports the chosen users into the run `run_id` (already stored), one result and counter
    /// update per user, then finishes the run with its event.
    #[allow(clippy::too_many_arguments)]
    async fn import_chosen(
        &self,
        directory: &Directory,
        actor: &Actor,
        run_id: &str,
        tenant_id: &str,
        chosen: Vec<Result<TenantUser, String>>,
        already_imported: usize,
        mut progress: impl FnMut(ImportProgress),
    ) -> Result<ImportReport, M365Error> {
        let mut state = ImportProgress {
            done: 0,
            total: chosen.len(),
            imported: 0,
            failed: 0,
        };
        progress(state);
        for candidate in chosen {
            let result = match candidate {
                Err(key) => failure(
                    run_id,
                    &key,
                    None,
                    "no such user in the Microsoft 365 tenant",
                ),
                Ok(tenant_user) => {
                    self.import_one(directory, actor, run_id, tenant_id, &tenant_user.user)
                        .await?
                }
            };
            if result.outcome == "imported" {
                state.imported += 1;
            } else {
                state.failed += 1;
                let event = NewEvent::new(
                    Utc::now(),
                    actor,
                    kind::M365_IMPORT_USER_FAILED,
                    result.user_principal_name.as_deref(),
                )
                .details(json!({"runId": run_id, "reason": result.message}));
                self.store().record_event(&event).await?;
            }
            self.store().add_import_result(&result).await?;
            state.done += 1;
            progress(state);
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

    async fn import_one(
        &self,
        directory: &Directory,
        actor: &Actor,
        run_id: &str,
        tenant_id: &str,
        user: &GraphUser,
    ) -> Result<ImportResultRow, M365Error> {
        let Some(upn) = user.user_principal_name.clone() else {
            return Ok(failure(
                run_id,
                &user.id,
                None,
                "the Microsoft 365 user has no userPrincipalName",
            ));
        };
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
            user_principal_name: upn.clone(),
            immutable_id: user.on_premises_immutable_id.clone(),
            linked_at: Utc::now().timestamp_millis(),
        };
        match directory
            .create_imported_user(actor, &changes, link, Utc::now())
            .await
        {
            Ok(created) => Ok(ImportResultRow {
                run_id: run_id.into(),
                m365_object_id: user.id.clone(),
                user_principal_name: Some(upn),
                outcome: "imported".into(),
                message: Some(format!("imported as {}", created.username)),
                user_id: Some(created.id),
                at: Utc::now().timestamp_millis(),
            }),
            Err(DirectoryError::Duplicate { field: "email" }) => Ok(failure(
                run_id,
                &user.id,
                Some(upn),
                "a user with this email already exists in idbridge",
            )),
            Err(DirectoryError::Duplicate { field }) => Ok(failure(
                run_id,
                &user.id,
                Some(upn),
                &format!("a user with this {field} already exists in idbridge"),
            )),
            Err(DirectoryError::Store(e)) => Err(e.into()),
            Err(other) => Ok(failure(run_id, &user.id, Some(upn), &other.to_string())),
        }
    }
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

fn failure(run_id: &str, object_id: &str, upn: Option<String>, message: &str) -> ImportResultRow {
    ImportResultRow {
        run_id: run_id.into(),
        m365_object_id: object_id.into(),
        user_principal_name: upn,
        outcome: "failed".into(),
        message: Some(message.into()),
        user_id: None,
        at: Utc::now().timestamp_millis(),
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
