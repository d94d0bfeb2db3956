//! Import direction: attributes set to Import follow Microsoft 365 through the users delta
//! query, polled. The deltaLink is kept between rounds; changing the imported set starts a new
//! full round (Graph fixes the tracked properties when a round starts).

use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde_json::{json, Value};

use super::attributes::{import_changes, import_select};
use super::{M365Sync, SyncError};
use crate::events::{kind, Actor, NewEvent};
use crate::m365::graph::DeltaPage;
use crate::m365::M365Error;

/// A round never follows more pages than this (a loop in links must end).
const MAX_PAGES: usize = 100_000;

impl M365Sync {
    /// Reads changes from Microsoft 365 for imported attributes and writes them to bound users.
    /// Returns how many users were updated.
    pub async fn import_round(&self, now: DateTime<Utc>) -> Result<usize, SyncError> {
        let directions = self.directions().await?;
        if directions.imported().is_empty() {
            return Ok(0);
        }
        let select = import_select(&directions);
        let select_text = select.join(",");
        let mut link = match self.store.delta_state().await? {
            Some((stored, link)) if stored == select_text => link,
            _ => None,
        };
        let mut restarted = false;
        let mut updated = 0;
        let mut pages = 0;
        loop {
            pages += 1;
            if pages > MAX_PAGES {
                return Err(
                    M365Error::Graph(Box::new(crate::m365::graph::GraphError::Decode(
                        "the delta round does not end".into(),
                    )))
                    .into(),
                );
            }
            let page = match self.delta_page(link.as_deref(), &select).await {
                Ok(page) => page,
                Err(M365Error::Graph(e)) if e.status() == Some(410) && !restarted => {
                    // The round expired at Microsoft: start a full one.
                    tracing::info!(
                        "the Microsoft 365 delta round expired; reading all users again"
                    );
                    restarted = true;
                    link = None;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            for item in &page.value {
                if item.contains_key("@removed") {
                    // Deleted in Microsoft 365: the user stays unchanged here (seed 003).
                    continue;
                }
                let Some(object_id) = item.get("id").and_then(Value::as_str) else {
                    continue;
                };
                let Some(binding) = self.store.binding_by_object_id(object_id).await? else {
                    continue;
                };
                if !binding.state.signs_in() {
                    continue;
                }
                let user = match self.directory.get_user(&binding.user_id).await {
                    Ok(u) => u,
                    Err(_) => continue,
                };
                let manager = self.manager_from_delta(item).await?;
                let changes = import_changes(&user, item, &directions, manager);
                if changes.is_empty() {
                    continue;
                }
                match self.directory.apply_imported(&user, &changes, now).await {
                    Ok(()) => updated += 1,
                    Err(err) => {
                        tracing::warn!(user = %user.username, %err, "an imported value was refused");
                        let event = NewEvent::new(
                            now,
                            &Actor::System,
                            kind::M365_IMPORT_USER_FAILED,
                            Some(&user.username),
                        )
                        .details(json!({"reason": err.to_string(), "m365ObjectId": object_id}));
                        self.store.record_event(&event).await?;
                    }
                }
            }
            if let Some(next) = page.next_link {
                link = Some(next);
                continue;
            }
            let delta = page.delta_link;
            self.store
                .save_delta_state(&select_text, delta.as_deref(), now.timestamp_millis())
                .await?;
            return Ok(updated);
        }
    }

    async fn delta_page(
        &self,
        link: Option<&str>,
        select: &[&str],
    ) -> Result<DeltaPage, M365Error> {
        let graph = self.m365.graph();
        self.m365
            .call(|t| async move {
                graph
                    .users_delta_page(t.expose_secret(), link, select)
                    .await
            })
            .await
            .map_err(|e| match e {
                // The 410 restart above needs the status: keep the Graph error as it is.
                M365Error::Graph(g) if g.status() == Some(410) => M365Error::Graph(g),
                other => other.during(crate::m365::permissions::GraphCall::ReadUsers),
            })
    }

    /// The manager a delta item reports, as an idbridge username: `None` when the item says
    /// nothing usable about the manager, `Some(None)` when it was removed.
    async fn manager_from_delta(
        &self,
        item: &serde_json::Map<String, Value>,
    ) -> Result<Option<Option<String>>, SyncError> {
        let Some(entries) = item.get("manager@delta").and_then(Value::as_array) else {
            return Ok(None);
        };
        let current = entries.iter().find(|e| e.get("@removed").is_none());
        let Some(id) = current.and_then(|e| e.get("id")).and_then(Value::as_str) else {
            return Ok(Some(None));
        };
        let Some(binding) = self.store.binding_by_object_id(id).await? else {
            // A manager who is not bound here cannot be named here: leave ours alone.
            return Ok(None);
        };
        Ok(Some(
            self.directory
                .get_user(&binding.user_id)
                .await
                .ok()
                .map(|u| u.username),
        ))
    }
}
