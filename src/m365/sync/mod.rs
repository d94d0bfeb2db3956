//! Binding users to Microsoft 365 and keeping them in sync (seeds 000, 003, 004).
//!
//! Every change to a bound user is written with an outbox job in the same transaction
//! (`store::sync`); the worker here delivers jobs in order per user through Graph `$batch`,
//! retries transient failures with backoff, and marks a job failed only after bounded retries.
//! Attributes set to Import follow Microsoft 365 through a polled delta query.

pub mod attributes;
mod delta;
mod worker;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::binding::BindingState;
use crate::config::SyncConfig;
use crate::directory::{Directory, DirectoryError, User};
use crate::events::{kind, Actor, NewEvent};
use crate::m365::graph::GraphDomain;
use crate::m365::{M365Error, M365};
use crate::secrets::SecretBox;
use crate::store::{
    BindRequest, DirectionEffects, OutboxRow, Store, StoreError, SyncCounts, WORKER_IMPORT,
};

pub use attributes::{AttributeMapping, Direction, Directions, MAPPINGS};
pub use worker::RoundReport;

/// Why a binding or export-selection request was refused; messages say what to do.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{0:?} is not an optional attribute of the export table. Choose one of: {1}")]
    UnknownAttribute(String, String),
    #[error("{0:?} is not a direction; use export, import or exclude")]
    UnknownDirection(String),
    #[error(transparent)]
    Connection(#[from] M365Error),
    #[error(transparent)]
    Directory(#[from] DirectoryError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a bind or unbind request did, per user.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct BindReport {
    /// Users queued for binding (or unbinding).
    pub queued: Vec<String>,
    /// Users left as they were, with the reason.
    pub skipped: Vec<(String, String)>,
}

/// One user's sync state for the status views.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserSyncStatus {
    pub state: Option<BindingState>,
    pub immutable_id: Option<String>,
    pub m365_object_id: Option<String>,
    pub user_principal_name: Option<String>,
    pub last_sync_at: Option<String>,
    pub last_error: Option<String>,
    pub password_pushed: bool,
    pub queued_jobs: Vec<String>,
    pub failed_jobs: Vec<FailedJob>,
}

/// A job that failed for good.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FailedJob {
    pub id: i64,
    pub user_id: String,
    pub kind: String,
    pub attempts: i64,
    pub error: Option<String>,
    pub created_at: String,
}

impl From<OutboxRow> for FailedJob {
    fn from(row: OutboxRow) -> Self {
        Self {
            id: row.id,
            user_id: row.user_id,
            kind: row.kind,
            attempts: row.attempts,
            error: row.last_error,
            created_at: crate::directory::millis_to_rfc3339(row.created_at),
        }
    }
}

/// The binding and sync service.
pub struct M365Sync {
    store: Store,
    directory: Directory,
    m365: Arc<M365>,
    sealer: SecretBox,
    settings: SyncConfig,
    signal: Arc<Notify>,
    /// This node's name: the owner of the leases it takes.
    node: String,
    /// Whether this node does the cluster-wide chores (delta import, expiry scan).
    duty: crate::cluster::Duty,
    /// The tenant's domains, cached briefly (federated or not decides immutable ID rules).
    domains: tokio::sync::Mutex<Option<(Instant, Vec<GraphDomain>)>>,
    /// The tenant's users as last listed for a large bind.
    tenant_listing: tokio::sync::Mutex<Option<worker::TenantListing>>,
}

impl std::fmt::Debug for M365Sync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("M365Sync").finish_non_exhaustive()
    }
}

/// A fresh immutable ID: standard base64 of 16 random bytes (24 characters), as directory sync
/// tools make them from a GUID. Never URL-safe base64: Entra refuses `_` (and `$`).
pub fn new_immutable_id() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(crate::secrets::random_bytes::<16>())
}

impl M365Sync {
    /// The service; `signal` is the directory's outbox signal.
    pub fn new(
        store: Store,
        directory: Directory,
        m365: Arc<M365>,
        sealer: SecretBox,
        settings: SyncConfig,
    ) -> Self {
        let signal = directory.outbox_signal();
        Self {
            store,
            directory,
            m365,
            sealer,
            settings,
            signal,
            node: crate::config::default_node_name(),
            duty: crate::cluster::Duty::default(),
            domains: tokio::sync::Mutex::new(None),
            tenant_listing: tokio::sync::Mutex::new(None),
        }
    }

    /// The same service on the node named `node` (the owner of its leases), doing the
    /// cluster-wide chores while `duty` is held.
    pub fn on_node(mut self, node: &str, duty: crate::cluster::Duty) -> Self {
        self.node = node.to_string();
        self.duty = duty;
        self
    }

    /// Binds users (by id, username or email): their M365 accounts are created or adopted by
    /// the worker within seconds. Users already bound or being bound are skipped.
    pub async fn bind(
        &self,
        actor: &Actor,
        keys: &[String],
        now: DateTime<Utc>,
    ) -> Result<BindReport, SyncError> {
        let tenant_id = self.connected_tenant().await?;
        let mut report = BindReport::default();
        let mut users = Vec::new();
        for key in keys {
            match self.directory.get_user(key).await {
                Ok(u) => users.push(u),
                Err(DirectoryError::NotFound(_)) => report
                    .skipped
                    .push((key.clone(), "no such user in the directory".into())),
                Err(e) => return Err(e.into()),
            }
        }
        self.bind_users(actor, &tenant_id, users, report, now).await
    }

    /// Binds every user not bound yet.
    pub async fn bind_all(
        &self,
        actor: &Actor,
        now: DateTime<Utc>,
    ) -> Result<BindReport, SyncError> {
        let tenant_id = self.connected_tenant().await?;
        let ids = self.store.unbound_user_ids().await?;
        let mut users = Vec::with_capacity(ids.len());
        for row in self.store.users_by_ids(&ids).await? {
            users.push(User::from_row(row)?);
        }
        users.sort_by(|a, b| a.username.cmp(&b.username));
        self.bind_users(actor, &tenant_id, users, BindReport::default(), now)
            .await
    }

    /// The tenant of a usable connection, or why there is none.
    async fn connected_tenant(&self) -> Result<String, SyncError> {
        let status = self.m365.status().await?;
        match status.state.as_str() {
            "connected" => {}
            "deactivated" => return Err(M365Error::Deactivated.into()),
            "reconnect" => {
                return Err(M365Error::Reconnect(status.last_error.unwrap_or_default()).into())
            }
            _ => return Err(M365Error::NotConnected.into()),
        }
        Ok(status.tenant_id.ok_or(M365Error::NotConnected)?)
    }

    async fn bind_users(
        &self,
        actor: &Actor,
        tenant_id: &str,
        users: Vec<User>,
        mut report: BindReport,
        now: DateTime<Utc>,
    ) -> Result<BindReport, SyncError> {
        let ids: Vec<String> = users.iter().map(|u| u.id.clone()).collect();
        let mut links: std::collections::HashMap<String, crate::store::LinkRow> = self
            .store
            .links_by_user_ids(&ids)
            .await?
            .into_iter()
            // A link to another tenant (reconnected elsewhere) is not this tenant's user.
            .filter(|l| l.tenant_id.eq_ignore_ascii_case(tenant_id))
            .map(|l| (l.user_id.clone(), l))
            .collect();
        let mut requests = Vec::new();
        let mut events = Vec::new();
        for user in users {
            if let Some(b) = &user.m365 {
                if b.state.receives_changes() {
                    report
                        .skipped
                        .push((user.username.clone(), format!("already {}", b.state)));
                    continue;
                }
            }
            let link = links.remove(&user.id);
            let candidate = link
                .as_ref()
                .and_then(|l| l.immutable_id.clone())
                .filter(|id| immutable_id_acceptable(id))
                .unwrap_or_else(new_immutable_id);
            requests.push(BindRequest {
                user_id: user.id.clone(),
                user_principal_name: user.email.clone(),
                immutable_id_candidate: candidate,
                m365_object_id: link.map(|l| l.m365_object_id),
            });
            events.push(
                NewEvent::new(now, actor, kind::M365_BIND, Some(&user.username)).details(json!({
                    "userPrincipalName": user.email,
                    "tenantId": tenant_id,
                })),
            );
            report.queued.push(user.username.clone());
        }
        if !requests.is_empty() {
            self.store
                .bind_users(&requests, now.timestamp_millis(), &events)
                .await?;
            self.signal.notify_one();
        }
        Ok(report)
    }

    /// Unbinds users: SAML sign-in is refused at once and their M365 accounts are blocked from
    /// signing in (accountEnabled false), not deleted (seed 003).
    pub async fn unbind(
        &self,
        actor: &Actor,
        keys: &[String],
        now: DateTime<Utc>,
    ) -> Result<BindReport, SyncError> {
        let mut report = BindReport::default();
        let mut ids = Vec::new();
        let mut events = Vec::new();
        for key in keys {
            let user = match self.directory.get_user(key).await {
                Ok(u) => u,
                Err(DirectoryError::NotFound(_)) => {
                    report
                        .skipped
                        .push((key.clone(), "no such user in the directory".into()));
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            match &user.m365 {
                Some(b) if b.state != BindingState::Unbound => {
                    ids.push(user.id.clone());
                    events.push(
                        NewEvent::new(now, actor, kind::M365_UNBIND, Some(&user.username))
                            .details(json!({"userPrincipalName": b.user_principal_name})),
                    );
                    report.queued.push(user.username.clone());
                }
                _ => report
                    .skipped
                    .push((user.username.clone(), "not bound".into())),
            }
        }
        if !ids.is_empty() {
            self.store
                .unbind_users(&ids, now.timestamp_millis(), &events)
                .await?;
            self.signal.notify_one();
        }
        Ok(report)
    }

    /// The export table: every mapping with its direction.
    pub async fn attribute_table(&self) -> Result<Vec<(AttributeMapping, Direction)>, SyncError> {
        let directions = self.directions().await?;
        Ok(MAPPINGS
            .iter()
            .map(|m| (*m, directions.of(m.attribute)))
            .collect())
    }

    /// Changes the direction of an optional attribute and records `integrationattribute_include`
    /// (to Import or Export) or `integrationattribute_exclude`. Export overwrites the attribute
    /// in Microsoft 365 for every bound user at once. Returns the previous direction.
    pub async fn set_direction(
        &self,
        actor: &Actor,
        attribute: &str,
        direction: &str,
        now: DateTime<Utc>,
    ) -> Result<Direction, SyncError> {
        let mapping = attributes::optional_mapping(attribute).ok_or_else(|| {
            SyncError::UnknownAttribute(
                attribute.to_string(),
                MAPPINGS
                    .iter()
                    .filter(|m| !m.always)
                    .map(|m| m.attribute)
                    .collect::<Vec<_>>()
                    .join(", "),
            )
        })?;
        let to = Direction::parse(direction)
            .ok_or_else(|| SyncError::UnknownDirection(direction.to_string()))?;
        let from = self.directions().await?.of(mapping.attribute);
        if from == to {
            return Ok(from);
        }
        let event_type = match to {
            Direction::Exclude => kind::INTEGRATION_ATTRIBUTE_EXCLUDE,
            _ => kind::INTEGRATION_ATTRIBUTE_INCLUDE,
        };
        let tenant_id = self.m365.tenant_id().await.ok();
        let event = NewEvent::new(now, actor, event_type, Some(mapping.attribute)).details(json!({
            "attribute": mapping.attribute,
            "m365Attribute": mapping.graph_property,
            "from": from.as_str(),
            "to": to.as_str(),
            "integration": {"type": "microsoft365", "tenantId": tenant_id},
        }));
        self.store
            .set_attribute_direction(
                mapping.attribute,
                to.as_str(),
                &actor.to_string(),
                DirectionEffects {
                    export_to_bound: to == Direction::Export,
                    // Durable, so a server imports at once whichever process made the switch.
                    import_now: to == Direction::Import,
                },
                now.timestamp_millis(),
                &event,
            )
            .await?;
        self.signal.notify_one();
        Ok(from)
    }

    /// Counts of bindings and jobs by state.
    pub async fn counts(&self) -> Result<SyncCounts, SyncError> {
        Ok(self.store.sync_counts().await?)
    }

    /// Jobs that failed for good (all users, or one).
    pub async fn failed_jobs(&self, user_id: Option<&str>) -> Result<Vec<FailedJob>, SyncError> {
        Ok(self
            .store
            .failed_jobs(user_id)
            .await?
            .into_iter()
            .map(FailedJob::from)
            .collect())
    }

    /// Queues failed jobs again (all users, or one user's).
    pub async fn retry_failed(
        &self,
        actor: &Actor,
        user: Option<&User>,
        now: DateTime<Utc>,
    ) -> Result<u64, SyncError> {
        let event = NewEvent::new(
            now,
            actor,
            kind::M365_SYNC_RETRY,
            user.map(|u| u.username.as_str()),
        );
        let n = self
            .store
            .retry_failed_jobs(user.map(|u| u.id.as_str()), now.timestamp_millis(), &event)
            .await?;
        self.signal.notify_one();
        Ok(n)
    }

    /// One user's binding and sync state.
    pub async fn user_status(&self, user: &User) -> Result<UserSyncStatus, SyncError> {
        let binding = self.store.binding(&user.id).await?;
        let queued = self.store.queued_jobs(&user.id).await?;
        let failed = self.store.failed_jobs(Some(&user.id)).await?;
        Ok(UserSyncStatus {
            state: binding.as_ref().map(|b| b.state),
            immutable_id: binding.as_ref().map(|b| b.immutable_id.clone()),
            m365_object_id: binding.as_ref().and_then(|b| b.m365_object_id.clone()),
            user_principal_name: binding.as_ref().map(|b| b.user_principal_name.clone()),
            last_sync_at: binding
                .as_ref()
                .and_then(|b| b.last_sync_at)
                .map(crate::directory::millis_to_rfc3339),
            last_error: binding.as_ref().and_then(|b| b.last_error.clone()),
            password_pushed: binding.as_ref().is_some_and(|b| b.password_pushed == 1),
            queued_jobs: queued.into_iter().map(|j| j.kind).collect(),
            failed_jobs: failed.into_iter().map(FailedJob::from).collect(),
        })
    }

    async fn directions(&self) -> Result<Directions, StoreError> {
        Ok(Directions::from_rows(
            &self.store.attribute_directions().await?,
        ))
    }

    /// The background worker: delivers the outbox (woken by changes, and polled so changes
    /// made by other processes are seen), blocks M365 accounts whose password expired here,
    /// and runs the delta import. Returns when `shutdown` is cancelled.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let poll = Duration::from_millis(self.settings.poll_interval_ms.max(10));
        let import_every = Duration::from_secs(self.settings.import_interval_seconds.max(1));
        let mut last_import = Instant::now();
        // A fresh start imports at once (changes in Microsoft 365 while no server ran).
        let mut import_due = true;
        let mut last_expiry_scan = Instant::now() - Duration::from_secs(3600);
        let mut paused_until: Option<Instant> = None;
        loop {
            if let Some(until) = paused_until.take() {
                // Paused because the connection needs an admin: check again at each poll and
                // resume as soon as it is connected again (or after the pause).
                while Instant::now() < until {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(poll.max(Duration::from_millis(500))) => {}
                        _ = self.signal.notified() => {}
                    }
                    if self.connection_usable().await {
                        break;
                    }
                }
            }
            if self.duty.held() && last_expiry_scan.elapsed() >= Duration::from_secs(60) {
                last_expiry_scan = Instant::now();
                self.queue_expiry_blocks(Utc::now()).await;
            }
            loop {
                if shutdown.is_cancelled() {
                    return;
                }
                let report = self.deliver_round(Utc::now(), &shutdown).await;
                if report.paused {
                    tracing::warn!("Microsoft 365 changes wait: the connection needs an admin (see `idbridge m365 status`)");
                    paused_until = Some(Instant::now() + Duration::from_secs(30));
                    break;
                }
                if report.claimed == 0 {
                    break;
                }
            }
            if paused_until.is_some() {
                continue;
            }
            // The delta import is one node's chore: a request waits for the node holding it.
            let requested = self.duty.held()
                && match self.store.take_worker_request(WORKER_IMPORT).await {
                    Ok(taken) => taken,
                    Err(err) => {
                        tracing::warn!(%err, "cannot read the sync worker's requests");
                        false
                    }
                };
            if self.duty.held()
                && (std::mem::take(&mut import_due)
                    || requested
                    || last_import.elapsed() >= import_every)
            {
                last_import = Instant::now();
                if let Err(err) = self.import_round(Utc::now()).await {
                    tracing::warn!(%err, "importing attribute changes from Microsoft 365 failed");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.signal.notified() => {}
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// Whether the connection is connected with a token in hand or obtainable.
    async fn connection_usable(&self) -> bool {
        self.m365
            .status()
            .await
            .is_ok_and(|s| s.state == "connected")
    }

    async fn queue_expiry_blocks(&self, now: DateTime<Utc>) {
        let days = self.directory.policy().expiry_days;
        if days == 0 {
            return;
        }
        let threshold = now.timestamp_millis() - i64::from(days) * 86_400_000;
        match self
            .store
            .queue_expired_password_blocks(threshold, now.timestamp_millis())
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                users = n,
                "blocking M365 sign-in of users whose password expired"
            ),
            Err(err) => tracing::warn!(%err, "could not look for expired passwords"),
        }
    }

    /// Runs the expiry scan now (tests and the CLI).
    pub async fn scan_expired_passwords(&self, now: DateTime<Utc>) {
        self.queue_expiry_blocks(now).await;
    }

    /// Wakes the worker.
    pub fn wake(&self) {
        self.signal.notify_one();
    }
}

/// An immutable ID Entra accepts: 1..=64 characters, no `_`, `$` or `@`, no spaces.
pub fn immutable_id_acceptable(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '_' | '$' | '@'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn immutable_ids_are_standard_base64_of_16_bytes() {
        for _ in 0..200 {
            let id = new_immutable_id();
            assert_eq!(id.len(), 24);
            assert!(id.ends_with("=="));
            assert!(immutable_id_acceptable(&id), "{id}");
            assert!(!id.contains('_') && !id.contains('-'));
        }
        assert_ne!(new_immutable_id(), new_immutable_id());
        assert!(!immutable_id_acceptable("abc_def"));
        assert!(!immutable_id_acceptable(&"a".repeat(65)));
    }
}
