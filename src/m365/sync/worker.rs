//! Delivering the outbox: one round claims due jobs (the oldest of each user), sends them to
//! Graph in `$batch`es of 20, and records each job's outcome.
//!
//! A job can have several parts (a password change: the password, then signing the user out;
//! a bind: the account, then the manager). Each part has its own outcome: when the main part
//! reached Microsoft 365 and a later part did not, the job is recorded as delivered and the
//! part left is written as a job of its own, failed with Graph's refusal or queued to retry.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::Method;
use secrecy::ExposeSecret;
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use super::attributes::{full_patch, patch_for, Directions};
use super::M365Sync;
use crate::directory::{
    generate_password, DirectoryError, User, UserState, OUTBOX_PASSWORD_CONTEXT,
};
use crate::events::{kind, Actor, NewEvent};
use crate::m365::graph::{
    BatchRequest, BatchResponse, GraphDomain, GraphError, GraphUser, USER_SELECT,
};
use crate::m365::permissions::GraphCall;
use crate::m365::M365Error;
use crate::store::{
    BindOutcome, BindingRow, Completion, FollowUp, JobEffect, JobKind, OutboxJob, OutboxRow,
    REVOKE_SESSIONS,
};

/// How long a stopping round may take to record what it sent.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long the tenant's domain list is reused.
const DOMAIN_CACHE: Duration = Duration::from_secs(300);
/// How long a listing of the tenant's users answers binds' look-ups.
const TENANT_LISTING_TTL: Duration = Duration::from_secs(60);
/// Users per page of the tenant listing (Graph's maximum `$top` for users).
const LISTING_PAGE: u32 = 999;
/// Sub-requests per `$batch` (Graph's limit), for comparing costs.
const BATCH_SIZE: i64 = 20;

/// What one delivery round did.
#[derive(Debug, Clone, Default)]
pub struct RoundReport {
    /// Jobs taken from the outbox.
    pub claimed: usize,
    /// Delivered (or with nothing left to do).
    pub done: usize,
    /// Waiting for another attempt.
    pub retried: usize,
    /// Failed for good.
    pub failed: usize,
    /// The connection needs an admin (reconnect): the worker waits.
    pub paused: bool,
}

/// How one job ended in this round.
#[derive(Debug, Clone)]
enum Outcome {
    /// Delivered: what it changes on the binding, its event, and the parts it leaves.
    Done {
        effect: JobEffect,
        event: Option<&'static str>,
        follow_ups: Vec<FollowUp>,
    },
    /// Transient: try again later.
    Retry(String),
    /// Permanent: Graph refused it (its message), or retries ran out.
    Fail(String),
    /// The connection is not usable (token refused, deactivated): not the job's fault.
    Pause(String),
    /// Not sent: the round stopped (server stopping, lease lost). The job is given back
    /// without counting an attempt.
    Abandon(String),
}

/// A claimed job with what is needed to deliver it.
struct Work {
    job: OutboxRow,
    user: User,
    binding: BindingRow,
}

/// The claim a delivery round works under. A renewal task extends it while the round runs;
/// before each phase of Graph requests the round checks it may still send: not once the
/// server is stopping, and not once the lease may have passed to another node.
pub(super) struct RoundLease {
    /// The claim's fencing token (every claimed job carries it).
    token: Option<i64>,
    /// Until when (this process's clock) the lease is surely held: the stored expiry less a
    /// margin, so a node never sends after another could have taken its jobs.
    held_until: std::sync::Mutex<Instant>,
    stop: CancellationToken,
}

impl RoundLease {
    fn new(token: Option<i64>, lease: Duration, stop: CancellationToken) -> Self {
        Self {
            token,
            held_until: std::sync::Mutex::new(Instant::now() + safe_part(lease)),
            stop,
        }
    }

    /// Whether requests may still be sent under this claim.
    fn may_send(&self) -> Result<(), M365Error> {
        if self.stop.is_cancelled() {
            return Err(M365Error::Interrupted("the server is stopping"));
        }
        let held_until = *self.held_until.lock().unwrap_or_else(|e| e.into_inner());
        if Instant::now() >= held_until {
            return Err(M365Error::Interrupted(
                "this node could not renew its lease on the changes in time, so another node may deliver them",
            ));
        }
        Ok(())
    }

    fn renewed(&self, at: Instant, lease: Duration) {
        *self.held_until.lock().unwrap_or_else(|e| e.into_inner()) = at + safe_part(lease);
    }

    fn lost(&self) {
        *self.held_until.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }
}

/// The part of a lease a holder relies on: five sixths, so clock drift between nodes and a
/// slow database write cannot let a request leave after the lease passed to another node.
fn safe_part(lease: Duration) -> Duration {
    lease * 5 / 6
}

/// A later part of a job: sent only once the main part reached Microsoft 365.
struct Part {
    call: GraphCall,
    request: BatchRequest,
    /// The job that delivers this part alone, if it has to be retried or fails.
    retry_as: OutboxJob,
}

/// The tenant's users as listed at one moment, answering binds' look-ups for a while (a
/// large bind reads 999 users per request instead of 20 per `$batch` of look-ups).
pub(super) struct TenantListing {
    taken: Instant,
    size: usize,
    by_id: HashMap<String, GraphUser>,
    by_upn: HashMap<String, GraphUser>,
    /// Ids and UPNs (lower case) already answered once: idbridge may have changed them
    /// since, so a second look-up goes to Graph.
    answered: HashSet<String>,
}

impl TenantListing {
    fn new(users: Vec<GraphUser>, taken: Instant) -> Self {
        let size = users.len();
        let mut by_id = HashMap::with_capacity(size);
        let mut by_upn = HashMap::with_capacity(size);
        for user in users {
            if let Some(upn) = &user.user_principal_name {
                by_upn.insert(upn.to_lowercase(), user.clone());
            }
            by_id.insert(user.id.to_lowercase(), user);
        }
        Self {
            taken,
            size,
            by_id,
            by_upn,
            answered: HashSet::new(),
        }
    }

    fn fresh(&self) -> bool {
        self.taken.elapsed() < TENANT_LISTING_TTL
    }

    /// The M365 user for a bind (by object id, else by UPN): `None` when the listing cannot
    /// answer (already answered once), `Some(None)` when the tenant has no such user.
    fn answer(&mut self, object_id: Option<&str>, upn: &str) -> Option<Option<GraphUser>> {
        let keys: Vec<String> = object_id
            .map(str::to_lowercase)
            .into_iter()
            .chain(std::iter::once(upn.to_lowercase()))
            .collect();
        if keys.iter().any(|k| self.answered.contains(k)) {
            return None;
        }
        let found = object_id
            .and_then(|id| self.by_id.get(&id.to_lowercase()))
            .or_else(|| self.by_upn.get(&upn.to_lowercase()))
            .cloned();
        self.answered.extend(keys);
        if let Some(user) = &found {
            self.answered.insert(user.id.to_lowercase());
            if let Some(current) = &user.user_principal_name {
                self.answered.insert(current.to_lowercase());
            }
        }
        Some(found)
    }
}

impl Outcome {
    fn done(effect: JobEffect) -> Outcome {
        Outcome::Done {
            effect,
            event: None,
            follow_ups: Vec::new(),
        }
    }

    /// A failed Graph call: transient failures are retried, refusals fail the job with a
    /// message naming the call and, for a 403, the permission to grant.
    fn from_graph(call: GraphCall, error: &GraphError) -> Outcome {
        let message = call.explain(error);
        match error {
            // Refused even after a fresh token: counted, so it ends as a visible failure.
            GraphError::Unauthorized { .. } => Outcome::Retry(message),
            GraphError::Api { status, .. }
                if *status == 429 || *status >= 500 || *status == 408 =>
            {
                Outcome::Retry(message)
            }
            GraphError::Api { .. } => Outcome::Fail(message),
            GraphError::Exhausted { .. } | GraphError::Network(_) | GraphError::Decode(_) => {
                Outcome::Retry(message)
            }
        }
    }

    fn from_connection(call: GraphCall, error: M365Error) -> Outcome {
        match error {
            M365Error::Graph(g) => Outcome::from_graph(call, &g),
            M365Error::Call { call, error } => Outcome::from_graph(call, &error),
            M365Error::NotConfigured(_)
            | M365Error::NotConnected
            | M365Error::Deactivated
            | M365Error::Reconnect(_) => Outcome::Pause(error.to_string()),
            M365Error::Interrupted(_) => Outcome::Abandon(error.to_string()),
            other => Outcome::Retry(other.to_string()),
        }
    }
}

/// Parses a sub-request id `"{job}"` or `"{job}:{part}"` into the job's position.
fn job_index(id: &str) -> Option<usize> {
    id.split(':').next()?.parse().ok()
}

impl M365Sync {
    /// Claims due jobs and delivers them; the worker calls this until nothing is due. Every
    /// line the round logs carries its `sync_round` span, so one round reads as one story.
    ///
    /// The claim is renewed while the round runs (every third of the lease), so a live node
    /// keeps its jobs however long Graph makes it wait, and a dead node's jobs are due again
    /// for the other nodes one lease after its last renewal. On `stop` the round sends
    /// nothing more, records what was sent, and gives the rest back.
    pub async fn deliver_round(&self, now: DateTime<Utc>, stop: &CancellationToken) -> RoundReport {
        let round: String = crate::secrets::random_bytes::<6>()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let span = tracing::info_span!("sync_round", id = %round);
        tracing::Instrument::instrument(self.claim_and_deliver(now, stop), span).await
    }

    async fn claim_and_deliver(&self, now: DateTime<Utc>, stop: &CancellationToken) -> RoundReport {
        let lease = self.lease();
        let claimed_at = Instant::now();
        let jobs = match self
            .store
            .claim_outbox_jobs(
                &self.node,
                now.timestamp_millis(),
                i64::try_from(lease.as_millis()).unwrap_or(i64::MAX),
                i64::from(self.settings.jobs_per_round.max(1)),
            )
            .await
        {
            Ok(jobs) => jobs,
            Err(err) => {
                tracing::warn!(%err, "cannot read the Microsoft 365 outbox");
                return RoundReport::default();
            }
        };
        let Some(token) = jobs.first().map(|j| j.lease_token) else {
            return RoundReport::default();
        };
        let round_lease = RoundLease::new(token, lease, stop.clone());
        round_lease.renewed(claimed_at, lease);
        let deliver = self.deliver_claimed(jobs, &round_lease, now);
        tokio::pin!(deliver);
        tokio::select! {
            report = &mut deliver => report,
            () = self.renew_while_running(&round_lease, lease) => {
                // The renewal loop only ends when the server stops: the round may take a
                // moment more to record what it sent (requests already on their way are not
                // cut off, but nothing new is sent), and is then dropped with its unrecorded
                // jobs given back, so another node delivers them at once. Only a request in
                // flight at that moment can be sent twice.
                match tokio::time::timeout(STOP_GRACE, &mut deliver).await {
                    Ok(report) => report,
                    Err(_) => {
                        let released = match token {
                            Some(token) => self.store.release_claim(token).await.unwrap_or_else(|err| {
                                tracing::warn!(%err, "could not give back the changes of a sync round at shutdown; they are due when the lease runs out");
                                0
                            }),
                            None => 0,
                        };
                        tracing::warn!(released, "a Microsoft 365 sync round did not end in time at shutdown; its changes were given back");
                        RoundReport::default()
                    }
                }
            }
        }
    }

    /// The claim's lease: short, since a live holder renews it.
    fn lease(&self) -> Duration {
        Duration::from_secs(self.settings.lease_seconds.max(3))
    }

    /// Renews the round's claim every third of the lease until the server stops. A renewal
    /// that finds no job held any more marks the lease lost, so nothing more is sent.
    async fn renew_while_running(&self, round: &RoundLease, lease: Duration) {
        let Some(token) = round.token else {
            return round.stop.cancelled().await;
        };
        loop {
            tokio::select! {
                () = round.stop.cancelled() => return,
                () = tokio::time::sleep(lease / 3) => {}
            }
            let started = Instant::now();
            // The stored expiry is wall-clock time shared by all nodes: read at the edge.
            let until = Utc::now().timestamp_millis()
                + i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
            match self.store.renew_outbox_lease(token, until).await {
                Ok(0) => round.lost(),
                Ok(_) => round.renewed(started, lease),
                Err(err) => {
                    tracing::warn!(%err, "could not renew the lease of a Microsoft 365 sync round")
                }
            }
        }
    }

    async fn deliver_claimed(
        &self,
        jobs: Vec<OutboxRow>,
        lease: &RoundLease,
        now: DateTime<Utc>,
    ) -> RoundReport {
        let mut report = RoundReport {
            claimed: jobs.len(),
            ..RoundReport::default()
        };
        if jobs.is_empty() {
            return report;
        }
        let started = Instant::now();
        let directions = match self.directions().await {
            Ok(d) => d,
            Err(err) => {
                tracing::warn!(%err, "cannot read the attribute export selection");
                Directions::default()
            }
        };
        let mut outcomes: Vec<(OutboxRow, Outcome, Option<String>)> = Vec::new();
        let mut binds = Vec::new();
        let mut updates = Vec::new();
        // The round's users and bindings in two queries, not two per job.
        let ids: Vec<String> = jobs.iter().map(|j| j.user_id.clone()).collect();
        let context = match self.round_context(&ids).await {
            Ok(c) => c,
            Err(err) => {
                tracing::warn!(%err, "cannot read the users of a sync round");
                for job in jobs {
                    outcomes.push((job, Outcome::Retry(err.to_string()), None));
                }
                self.record(outcomes, now, &mut report).await;
                return report;
            }
        };
        let (mut users, mut bindings) = context;
        for job in jobs {
            // A deleted user, or a binding cleared by deactivation: nothing left to send.
            let (Some(user), Some(binding)) =
                (users.remove(&job.user_id), bindings.remove(&job.user_id))
            else {
                outcomes.push((job, Outcome::done(JobEffect::Nothing), None));
                continue;
            };
            let work = Work { job, user, binding };
            if work.job.job_kind() == Some(JobKind::Bind) {
                binds.push(work);
            } else {
                updates.push(work);
            }
        }
        let mut delivered = Vec::new();
        if !binds.is_empty() {
            delivered.extend(self.deliver_binds(binds, &directions, lease, now).await);
        }
        if !updates.is_empty() {
            delivered.extend(self.deliver_updates(updates, &directions, lease, now).await);
        }
        for (work, outcome) in delivered {
            let username = Some(work.user.username.clone());
            outcomes.push((work.job, outcome, username));
        }
        self.record(outcomes, now, &mut report).await;
        tracing::debug!(
            claimed = report.claimed,
            done = report.done,
            retried = report.retried,
            failed = report.failed,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "Microsoft 365 sync round"
        );
        report
    }

    /// Users and bindings by user id for a round (one job per user per round).
    async fn round_context(
        &self,
        ids: &[String],
    ) -> Result<(HashMap<String, User>, HashMap<String, BindingRow>), DirectoryError> {
        let mut users = HashMap::new();
        for row in self.store.users_by_ids(ids).await? {
            let user = User::from_row(row)?;
            users.insert(user.id.clone(), user);
        }
        let bindings = self
            .store
            .bindings_by_user_ids(ids)
            .await?
            .into_iter()
            .map(|b| (b.user_id.clone(), b))
            .collect();
        Ok((users, bindings))
    }

    /// Stores the outcomes: delivered jobs in one transaction, the rest one by one.
    async fn record(
        &self,
        outcomes: Vec<(OutboxRow, Outcome, Option<String>)>,
        now: DateTime<Utc>,
        report: &mut RoundReport,
    ) {
        let now_ms = now.timestamp_millis();
        let mut done = Vec::new();
        for (job, outcome, username) in outcomes {
            match outcome {
                Outcome::Done {
                    effect,
                    event: event_type,
                    follow_ups,
                } => {
                    let event = event_type.map(|t| {
                        let details = match &effect {
                            JobEffect::Bound(b) => json!({
                                "m365ObjectId": b.m365_object_id,
                                "immutableId": b.immutable_id,
                                "userPrincipalName": b.user_principal_name,
                            }),
                            _ => json!({}),
                        };
                        NewEvent::new(now, &Actor::System, t, username.as_deref()).details(details)
                    });
                    for part in follow_ups.iter().filter(|f| f.failed) {
                        tracing::warn!(job = job.id, part = %part.job.kind,
                            user = username.as_deref().unwrap_or(&job.user_id),
                            error = part.error.as_deref().unwrap_or(""),
                            "part of a Microsoft 365 change failed; the rest was delivered");
                    }
                    done.push(Completion {
                        job_id: job.id,
                        lease_token: job.lease_token,
                        user_id: job.user_id.clone(),
                        effect,
                        event,
                        follow_ups,
                    });
                    report.done += 1;
                }
                Outcome::Abandon(message) => {
                    report.retried += 1;
                    tracing::info!(job = job.id, kind = %job.kind, reason = %message,
                        "Microsoft 365 change given back unsent");
                    if let Err(err) = self.store.release_job(job.id, job.lease_token).await {
                        tracing::warn!(%err, job = job.id, "could not give a sync job back; it is due again when its lease runs out");
                    }
                }
                Outcome::Pause(message) => {
                    report.paused = true;
                    report.retried += 1;
                    // Due again as soon as the worker resumes (when the connection is back).
                    self.postpone(&job, false, now_ms, &message, now_ms).await;
                }
                Outcome::Retry(message) => {
                    let attempts = job.attempts + 1;
                    if attempts >= i64::from(self.settings.max_attempts.max(1)) {
                        report.failed += 1;
                        let message = format!("{message} (gave up after {attempts} attempts)");
                        self.fail(&job, &message, username.as_deref(), now).await;
                    } else {
                        report.retried += 1;
                        let wait = self.backoff(attempts);
                        tracing::info!(job = job.id, kind = %job.kind, attempts, wait_ms = wait,
                            error = %message, "Microsoft 365 sync job will be retried");
                        self.postpone(&job, true, now_ms + wait, &message, now_ms)
                            .await;
                    }
                }
                Outcome::Fail(message) => {
                    report.failed += 1;
                    self.fail(&job, &message, username.as_deref(), now).await;
                }
            }
        }
        if done.is_empty() {
            return;
        }
        if let Err(err) = self.store.complete_jobs(&done, now_ms).await {
            tracing::warn!(%err, jobs = done.len(), "could not record delivered jobs together; recording them one by one");
            for item in done {
                match self
                    .store
                    .complete_jobs(std::slice::from_ref(&item), now_ms)
                    .await
                {
                    Ok(()) => {}
                    Err(crate::store::StoreError::Conflict(field)) => {
                        // E.g. the adopted M365 user's immutable ID is another binding's.
                        let message = match &item.effect {
                            JobEffect::Bound(b) => format!(
                                "the Microsoft 365 user {} has the {field} {:?}, which another idbridge user's binding already uses",
                                b.user_principal_name, b.immutable_id
                            ),
                            _ => format!("another binding already has this {field}"),
                        };
                        let kind = if matches!(item.effect, JobEffect::Bound(_)) {
                            JobKind::Bind
                        } else {
                            JobKind::Attributes
                        };
                        let row = OutboxRow {
                            id: item.job_id,
                            user_id: item.user_id,
                            kind: kind.as_str().into(),
                            fields: None,
                            secret_enc: None,
                            state: "queued".into(),
                            attempts: 0,
                            next_attempt_at: now_ms,
                            last_error: None,
                            created_at: now_ms,
                            lease_token: item.lease_token,
                        };
                        report.done -= 1;
                        report.failed += 1;
                        self.fail(&row, &message, None, now).await;
                    }
                    // The lease expires and the job is delivered again; every delivery is
                    // idempotent (a bind looks the user up before creating it).
                    Err(err) => tracing::warn!(%err, "could not record a delivered job"),
                }
            }
        }
    }

    async fn postpone(&self, job: &OutboxRow, count: bool, at: i64, message: &str, now_ms: i64) {
        if let Err(err) = self
            .store
            .postpone_job(job.id, job.lease_token, count, at, message, now_ms)
            .await
        {
            tracing::warn!(%err, job = job.id, "could not postpone a sync job");
        }
    }

    async fn fail(
        &self,
        job: &OutboxRow,
        message: &str,
        username: Option<&str>,
        now: DateTime<Utc>,
    ) {
        tracing::warn!(job = job.id, kind = %job.kind, user = username.unwrap_or(&job.user_id),
            error = %message, "Microsoft 365 sync job failed");
        let event = NewEvent::new(now, &Actor::System, kind::M365_SYNC_FAILED, username)
            .details(json!({"job": job.kind, "error": message, "attempts": job.attempts + 1}));
        if let Err(err) = self
            .store
            .fail_job(job, message, now.timestamp_millis(), &event)
            .await
        {
            tracing::warn!(%err, job = job.id, "could not record a failed sync job");
        }
    }

    /// The job left by a part that did not reach Microsoft 365: failed for good (with the
    /// `m365_sync_failed` event naming the part) or queued to retry.
    fn follow_up(
        &self,
        work: &Work,
        part: OutboxJob,
        outcome: Outcome,
        now: DateTime<Utc>,
    ) -> FollowUp {
        let now_ms = now.timestamp_millis();
        let (error, failed, attempts, at) = match outcome {
            Outcome::Fail(message) => (Some(message), true, 1, now_ms),
            Outcome::Retry(message) => (Some(message), false, 1, now_ms + self.backoff(1)),
            Outcome::Pause(message) | Outcome::Abandon(message) => {
                (Some(message), false, 0, now_ms)
            }
            Outcome::Done { .. } => (None, false, 0, now_ms),
        };
        let event = failed.then(|| {
            NewEvent::new(
                now,
                &Actor::System,
                kind::M365_SYNC_FAILED,
                Some(&work.user.username),
            )
            .details(json!({
                "job": part.kind.as_str(),
                "partOf": work.job.kind,
                "error": error,
                "attempts": 1,
                "delivered": "the rest of the change reached Microsoft 365",
            }))
        });
        FollowUp {
            user_id: work.user.id.clone(),
            job: part,
            error,
            failed,
            attempts,
            next_attempt_at: at,
            event,
        }
    }

    /// Exponential backoff with jitter: base · 2^(attempts-1), capped, scaled into [½, 1].
    fn backoff(&self, attempts: i64) -> i64 {
        let base = self.settings.retry_base_ms.max(1) as f64;
        let cap = (self.settings.retry_max_seconds.max(1) * 1000) as f64;
        let exp = base * 2f64.powi((attempts - 1).clamp(0, 30) as i32);
        let unit = f64::from(crate::secrets::random_bytes::<1>()[0]) / 255.0;
        (exp.min(cap) * (0.5 + unit / 2.0)) as i64
    }

    /// Whether the M365 account should be enabled: bound (or being bound), active here, and
    /// the password not expired under the policy (seed 003).
    fn desired_enabled(&self, work: &Work, now: DateTime<Utc>) -> bool {
        matches!(work.binding.state.as_str(), "bound" | "pending")
            && work.user.state == UserState::Active
            && !(work.user.password_changed_at.is_some()
                && self.directory.password_expired(&work.user, now))
    }

    /// The tenant's domains (cached for a few minutes).
    async fn domains(&self) -> Result<Vec<GraphDomain>, M365Error> {
        let mut cached = self.domains.lock().await;
        if let Some((at, domains)) = cached.as_ref() {
            if at.elapsed() < DOMAIN_CACHE {
                return Ok(domains.clone());
            }
        }
        let graph = self.m365.graph();
        let domains = self
            .m365
            .call(|t| async move { graph.list_domains(t.expose_secret()).await })
            .await?;
        *cached = Some((Instant::now(), domains.clone()));
        Ok(domains)
    }

    /// Sends `requests` as `$batch`es; one response per request, in order. Nothing is sent
    /// once the round may no longer send (see [`RoundLease`]).
    async fn batch(
        &self,
        requests: Vec<BatchRequest>,
        lease: &RoundLease,
    ) -> Result<Vec<BatchResponse>, M365Error> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        lease.may_send()?;
        let graph = self.m365.graph();
        self.m365
            .call(|t| {
                let requests = requests.clone();
                async move { graph.batch(t.expose_secret(), requests).await }
            })
            .await
    }

    /// Answers binds' look-ups from a listing of the tenant's users where that costs fewer
    /// Graph requests than looking the waiting binds up 20 per `$batch`. Fills `found` and
    /// returns which jobs it answered; retried jobs are always looked up (an earlier attempt
    /// may have created the user after the listing was taken).
    #[allow(clippy::indexing_slicing)] // reason: every index is a position in `active` (0..len); the parallel vectors are built with its length
    async fn lookup_in_listing(
        &self,
        active: &[Work],
        found: &mut [Option<GraphUser>],
    ) -> Result<Vec<bool>, Outcome> {
        let mut answered = vec![false; active.len()];
        let first_tries: Vec<usize> = (0..active.len())
            .filter(|&i| active[i].job.attempts == 0)
            .collect();
        if first_tries.is_empty() {
            return Ok(answered);
        }
        let mut listing = self.tenant_listing.lock().await;
        if !listing.as_ref().is_some_and(TenantListing::fresh) {
            let waiting = self
                .store
                .queued_bind_count()
                .await
                .unwrap_or(0)
                .max(first_tries.len() as i64);
            let tenant_size = match listing.as_ref() {
                Some(previous) => previous.size as i64,
                None => self.store.known_m365_user_count().await.unwrap_or(i64::MAX),
            };
            let listing_cost = tenant_size.saturating_add(1) / i64::from(LISTING_PAGE) + 1;
            let lookup_cost = (waiting + BATCH_SIZE - 1) / BATCH_SIZE;
            if listing_cost >= lookup_cost {
                return Ok(answered);
            }
            let graph = self.m365.graph();
            let users = self
                .m365
                .call(|t| async move {
                    let mut all = Vec::new();
                    graph
                        .list_all_users(t.expose_secret(), LISTING_PAGE, |page| all.extend(page))
                        .await?;
                    Ok(all)
                })
                .await
                .map_err(|e| Outcome::from_connection(GraphCall::ReadUsers, e))?;
            tracing::debug!(
                users = users.len(),
                binds = waiting,
                "listed the tenant's users to bind"
            );
            *listing = Some(TenantListing::new(users, Instant::now()));
        }
        if let Some(listing) = listing.as_mut() {
            for i in first_tries {
                let work = &active[i];
                if let Some(answer) =
                    listing.answer(work.binding.m365_object_id.as_deref(), &work.user.email)
                {
                    found[i] = answer;
                    answered[i] = true;
                }
            }
        }
        Ok(answered)
    }

    /// Binds: look every user up (object id first, else UPN; from a tenant listing for large
    /// binds), create the missing ones and overwrite the found ones, then set managers.
    #[allow(clippy::indexing_slicing)] // reason: every index is a position in `active` (0..len); the parallel vectors are built with its length
    async fn deliver_binds(
        &self,
        binds: Vec<Work>,
        directions: &Directions,
        lease: &RoundLease,
        now: DateTime<Utc>,
    ) -> Vec<(Work, Outcome)> {
        let mut results: Vec<(Work, Outcome)> = Vec::new();
        let mut active = Vec::new();
        for work in binds {
            // Unbound while the bind waited: nothing to create.
            if work.binding.state == "unbound" {
                results.push((work, Outcome::done(JobEffect::Nothing)));
            } else {
                active.push(work);
            }
        }
        if active.is_empty() {
            return results;
        }
        let domains = match self.domains().await {
            Ok(d) => d,
            Err(err) => {
                let outcome = Outcome::from_connection(GraphCall::ListDomains, err);
                results.extend(active.into_iter().map(|w| (w, outcome.clone())));
                return results;
            }
        };
        let federated = |upn: &str| -> bool {
            upn.rsplit_once('@').is_some_and(|(_, d)| {
                domains
                    .iter()
                    .any(|x| x.id.eq_ignore_ascii_case(d) && x.authentication_type == "Federated")
            })
        };

        // 1. Look up: from the tenant listing where cheaper, else by the known object id,
        //    then (if gone) by UPN.
        let mut found: Vec<Option<GraphUser>> = vec![None; active.len()];
        let mut failed: Vec<Option<Outcome>> = vec![None; active.len()];
        let answered = match self.lookup_in_listing(&active, &mut found).await {
            Ok(a) => a,
            Err(outcome) => {
                results.extend(active.into_iter().map(|w| (w, outcome.clone())));
                return results;
            }
        };
        let lookups: Vec<BatchRequest> = active
            .iter()
            .enumerate()
            .filter(|(i, _)| !answered[*i])
            .filter_map(|(i, w)| {
                w.binding
                    .m365_object_id
                    .as_deref()
                    .map(|id| get_user_request(i, id))
            })
            .collect();
        if let Err(outcome) = self.lookup(lookups, &mut found, &mut failed, lease).await {
            results.extend(active.into_iter().map(|w| (w, outcome.clone())));
            return results;
        }
        let by_upn: Vec<BatchRequest> = (0..active.len())
            .filter(|&i| !answered[i] && found[i].is_none() && failed[i].is_none())
            .map(|i| get_user_request(i, &active[i].user.email))
            .collect();
        if let Err(outcome) = self.lookup(by_upn, &mut found, &mut failed, lease).await {
            results.extend(active.into_iter().map(|w| (w, outcome.clone())));
            return results;
        }

        // 2. Create or overwrite.
        let mut writes = Vec::new();
        let mut plans: Vec<Option<BindOutcome>> = vec![None; active.len()];
        for (i, work) in active.iter().enumerate() {
            if failed[i].is_some() {
                continue;
            }
            let enabled = self.desired_enabled(work, now);
            let mut patch = full_patch(&work.user, directions);
            patch.insert("accountEnabled".into(), Value::Bool(enabled));
            let upn = work.user.email.clone();
            match &found[i] {
                Some(existing) => {
                    let current_upn = existing.user_principal_name.clone().unwrap_or_default();
                    let immutable = match existing.on_premises_immutable_id.as_deref() {
                        Some(id) if !id.is_empty() => id.to_string(),
                        _ => {
                            if federated(&current_upn) || federated(&upn) {
                                failed[i] = Some(Outcome::Fail(format!(
                                    "the Microsoft 365 user {current_upn} has no immutable ID and its domain is federated, \
                                     so Microsoft does not allow setting one. Fix: in Microsoft 365, change the user's \
                                     userPrincipalName to the tenant's .onmicrosoft.com domain, bind the user again, then \
                                     change the email back here (or bind before converting the domain to federated)"
                                )));
                                continue;
                            }
                            patch.insert(
                                "onPremisesImmutableId".into(),
                                Value::String(work.binding.immutable_id.clone()),
                            );
                            work.binding.immutable_id.clone()
                        }
                    };
                    if current_upn.eq_ignore_ascii_case(&upn) {
                        // Same sign-in name: do not send it (a no-op Graph still checks).
                        patch.remove("userPrincipalName");
                    }
                    writes.push(BatchRequest {
                        id: i.to_string(),
                        method: Method::PATCH,
                        url: format!("/users/{}", existing.id),
                        body: Some(Value::Object(patch)),
                    });
                    plans[i] = Some(BindOutcome {
                        m365_object_id: existing.id.clone(),
                        immutable_id: immutable,
                        user_principal_name: upn,
                        account_enabled: enabled,
                        created: false,
                    });
                }
                None => {
                    let mut body = patch;
                    // Empty values are not sent on create (collections must not be null).
                    body.retain(|_, v| match v {
                        Value::Null => false,
                        Value::Array(a) => !a.is_empty(),
                        _ => true,
                    });
                    body.insert("userPrincipalName".into(), Value::String(upn.clone()));
                    body.insert("mailNickname".into(), Value::String(mail_nickname(&upn)));
                    body.insert(
                        "onPremisesImmutableId".into(),
                        Value::String(work.binding.immutable_id.clone()),
                    );
                    // Graph needs a password to create a user; idbridge only keeps hashes, so a
                    // random one is set and the real one follows at the next sign-in (seed 000).
                    body.insert(
                        "passwordProfile".into(),
                        json!({
                            "password": generate_password().expose_secret(),
                            "forceChangePasswordNextSignIn": false,
                        }),
                    );
                    writes.push(BatchRequest {
                        id: i.to_string(),
                        method: Method::POST,
                        url: "/users".into(),
                        body: Some(Value::Object(body)),
                    });
                    plans[i] = Some(BindOutcome {
                        m365_object_id: String::new(),
                        immutable_id: work.binding.immutable_id.clone(),
                        user_principal_name: upn,
                        account_enabled: enabled,
                        created: true,
                    });
                }
            }
        }
        match self.batch(writes, lease).await {
            Ok(responses) => {
                for response in responses {
                    let Some(i) = job_index(&response.id) else {
                        continue;
                    };
                    let created = plans[i].as_ref().is_some_and(|p| p.created);
                    let call = if created {
                        GraphCall::CreateUser
                    } else {
                        GraphCall::UpdateUser
                    };
                    match response.result {
                        Ok(body) => {
                            if let Some(plan) = plans[i].as_mut().filter(|p| p.created) {
                                match body
                                    .as_ref()
                                    .and_then(|b| b.get("id"))
                                    .and_then(Value::as_str)
                                {
                                    Some(id) => plan.m365_object_id = id.to_string(),
                                    None => {
                                        failed[i] = Some(Outcome::Retry(
                                            "POST /users (creating the Microsoft 365 user): Graph created the user but sent no id".into(),
                                        ))
                                    }
                                }
                            }
                        }
                        Err(error) => {
                            failed[i] = Some(if created && error.is_conflict() {
                                // Nobody had the address when looked up, so a deleted user
                                // still holds it (Microsoft releases it later, seed 003), or
                                // it was created meanwhile: the retry looks the user up.
                                Outcome::Retry(format!(
                                    "{}. Microsoft 365 may still hold this address for a recently deleted \
                                     user (it can take up to 24 hours); idbridge keeps retrying",
                                    call.explain(&error)
                                ))
                            } else if !created && error.is_not_found() {
                                Outcome::Retry(call.explain(&error))
                            } else {
                                Outcome::from_graph(call, &error)
                            });
                        }
                    }
                }
            }
            Err(err) => {
                let outcome = Outcome::from_connection(GraphCall::CreateUser, err);
                for (i, plan) in plans.iter().enumerate() {
                    if plan.is_some() && failed[i].is_none() {
                        failed[i] = Some(outcome.clone());
                    }
                }
            }
        }

        // 3. Managers, for the users written. The round's own new accounts count: a manager
        //    bound in the same round is set at once.
        let mut parts: Vec<Vec<Part>> = (0..active.len()).map(|_| Vec::new()).collect();
        let mut follow_ups: Vec<Vec<FollowUp>> = (0..active.len()).map(|_| Vec::new()).collect();
        if directions.exports("manager") {
            let round_objects: HashMap<&str, &str> = active
                .iter()
                .zip(&plans)
                .enumerate()
                .filter(|(i, _)| failed[*i].is_none())
                .filter_map(|(_, (w, p))| {
                    p.as_ref()
                        .map(|p| (w.user.id.as_str(), p.m365_object_id.as_str()))
                })
                .collect();
            for (i, work) in active.iter().enumerate() {
                if failed[i].is_some() {
                    continue;
                }
                let Some(plan) = &plans[i] else {
                    continue;
                };
                let manager_object = match &work.user.manager_id {
                    Some(m) => match round_objects.get(m.as_str()) {
                        Some(object) => Some(object.to_string()),
                        None => self.store.object_id_of_user(m).await.ok().flatten(),
                    },
                    None => None,
                };
                if let Some(request) = self.manager_request(
                    i,
                    &plan.m365_object_id,
                    &work.user,
                    manager_object.as_deref(),
                    plan.created,
                ) {
                    parts[i].push(Part {
                        call: GraphCall::SetManager,
                        request,
                        retry_as: OutboxJob::attributes(&["manager"]),
                    });
                }
            }
            // Reports bound before their manager get their manager now.
            let new_managers: Vec<String> = active
                .iter()
                .enumerate()
                .filter(|(i, _)| failed[*i].is_none() && plans[*i].is_some())
                .map(|(_, w)| w.user.id.clone())
                .collect();
            match self.store.bound_reports_of(&new_managers).await {
                Ok(reports) => {
                    let position: HashMap<&str, usize> = active
                        .iter()
                        .enumerate()
                        .map(|(i, w)| (w.user.id.as_str(), i))
                        .collect();
                    for (report, manager) in reports {
                        if let Some(&i) = position.get(manager.as_str()) {
                            follow_ups[i].push(FollowUp {
                                user_id: report,
                                job: OutboxJob::attributes(&["manager"]),
                                error: None,
                                failed: false,
                                attempts: 0,
                                next_attempt_at: now.timestamp_millis(),
                                event: None,
                            });
                        }
                    }
                }
                Err(err) => tracing::warn!(%err, "cannot read the reports of newly bound managers"),
            }
        }
        self.send_parts(&active, parts, &failed, &mut follow_ups, lease, now)
            .await;

        for (i, work) in active.into_iter().enumerate() {
            let outcome = match (failed[i].take(), plans[i].take()) {
                (Some(outcome), _) => outcome,
                (None, Some(plan)) => {
                    let event = if plan.created {
                        kind::M365_USER_CREATED
                    } else {
                        kind::M365_USER_ADOPTED
                    };
                    Outcome::Done {
                        effect: JobEffect::Bound(plan),
                        event: Some(event),
                        follow_ups: std::mem::take(&mut follow_ups[i]),
                    }
                }
                (None, None) => Outcome::Retry("nothing was sent".into()),
            };
            results.push((work, outcome));
        }
        results
    }

    /// Runs lookups; fills `found` (404 leaves it empty) or `failed`. `Err` when the whole
    /// batch failed.
    #[allow(clippy::indexing_slicing)] // reason: every index is a position in `active` (0..len); the parallel vectors are built with its length
    async fn lookup(
        &self,
        requests: Vec<BatchRequest>,
        found: &mut [Option<GraphUser>],
        failed: &mut [Option<Outcome>],
        lease: &RoundLease,
    ) -> Result<(), Outcome> {
        let responses = self
            .batch(requests, lease)
            .await
            .map_err(|e| Outcome::from_connection(GraphCall::ReadUsers, e))?;
        for response in responses {
            let Some(i) = job_index(&response.id) else {
                continue;
            };
            match response.result {
                Ok(Some(body)) => match serde_json::from_value::<GraphUser>(body) {
                    Ok(user) => found[i] = Some(user),
                    Err(e) => {
                        failed[i] = Some(Outcome::Retry(format!(
                            "GET /users/{{id}} (reading the Microsoft 365 user): unreadable answer: {e}"
                        )))
                    }
                },
                Ok(None) => {
                    failed[i] = Some(Outcome::Retry(
                        "GET /users/{id} (reading the Microsoft 365 user): Graph sent an empty user"
                            .into(),
                    ))
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => failed[i] = Some(Outcome::from_graph(GraphCall::ReadUsers, &e)),
            }
        }
        Ok(())
    }

    /// Sends the later parts of jobs whose main part reached Microsoft 365 (`failed` is
    /// empty for them); a part that does not get through becomes a follow-up job of its own.
    #[allow(clippy::indexing_slicing)] // reason: every index is a position in `active` (0..len); the parallel vectors are built with its length
    async fn send_parts(
        &self,
        works: &[Work],
        parts: Vec<Vec<Part>>,
        failed: &[Option<Outcome>],
        follow_ups: &mut [Vec<FollowUp>],
        lease: &RoundLease,
        now: DateTime<Utc>,
    ) {
        let mut requests = Vec::new();
        let mut sent: HashMap<String, (usize, GraphCall, OutboxJob)> = HashMap::new();
        for (i, job_parts) in parts.into_iter().enumerate() {
            if failed[i].is_some() {
                continue;
            }
            for (k, part) in job_parts.into_iter().enumerate() {
                let id = format!("{i}:{k}");
                let mut request = part.request;
                request.id = id.clone();
                requests.push(request);
                sent.insert(id, (i, part.call, part.retry_as));
            }
        }
        if requests.is_empty() {
            return;
        }
        let outcomes: Vec<(String, Option<Outcome>)> = match self.batch(requests, lease).await {
            Ok(responses) => responses
                .into_iter()
                .map(|r| {
                    let outcome = match (&r.result, sent.get(&r.id)) {
                        (Ok(_), _) => None,
                        // Removing a manager the user does not have is fine.
                        (Err(e), Some((_, GraphCall::SetManager, _))) if e.is_not_found() => None,
                        (Err(e), Some((_, call, _))) => Some(Outcome::from_graph(*call, e)),
                        (Err(_), None) => None,
                    };
                    (r.id, outcome)
                })
                .collect(),
            Err(err) => {
                let ids: Vec<String> = sent.keys().cloned().collect();
                ids.into_iter()
                    .map(|id| {
                        let call = sent.get(&id).map_or(GraphCall::UpdateUser, |s| s.1);
                        (id, Some(Outcome::from_connection(call, err_clone(&err))))
                    })
                    .collect()
            }
        };
        for (id, outcome) in outcomes {
            let (Some(outcome), Some((i, _, job))) = (outcome, sent.remove(&id)) else {
                continue;
            };
            if let Some(work) = works.get(i) {
                let follow_up = self.follow_up(work, job, outcome, now);
                if let Some(list) = follow_ups.get_mut(i) {
                    list.push(follow_up);
                }
            }
        }
    }

    /// The manager reference to write for `user`: set to the manager's M365 user when the
    /// manager is bound (`manager_object`), else removed, except on a user just created
    /// (it has no manager, and a removal would spend a Graph write for nothing).
    fn manager_request(
        &self,
        i: usize,
        object_id: &str,
        user: &User,
        manager_object: Option<&str>,
        created: bool,
    ) -> Option<BatchRequest> {
        match (manager_object, &user.manager_id) {
            (Some(manager_object), Some(_)) => Some(BatchRequest {
                id: i.to_string(),
                method: Method::PUT,
                url: format!("/users/{object_id}/manager/$ref"),
                body: Some(json!({
                    "@odata.id": format!("{}/directoryObjects/{manager_object}", self.m365.graph().base_url())
                })),
            }),
            // The manager is not bound: there is nothing in M365 to point at yet; their bind
            // sets it.
            (None, Some(_)) => None,
            (_, None) if created => None,
            (_, None) => Some(BatchRequest {
                id: i.to_string(),
                method: Method::DELETE,
                url: format!("/users/{object_id}/manager/$ref"),
                body: None,
            }),
        }
    }

    /// Attribute, password, account and sign-out jobs: one main request each (a PATCH, or the
    /// sign-out), then their later parts (manager reference, sign-out after a password), all
    /// in `$batch`es.
    #[allow(clippy::indexing_slicing)] // reason: every index is a position in `active` (0..len); the parallel vectors are built with its length
    async fn deliver_updates(
        &self,
        updates: Vec<Work>,
        directions: &Directions,
        lease: &RoundLease,
        now: DateTime<Utc>,
    ) -> Vec<(Work, Outcome)> {
        let mut mains: Vec<BatchRequest> = Vec::new();
        let mut main_calls: HashMap<usize, GraphCall> = HashMap::new();
        let mut parts: Vec<Vec<Part>> = (0..updates.len()).map(|_| Vec::new()).collect();
        let mut effects: Vec<Option<JobEffect>> = vec![None; updates.len()];
        let mut failed: Vec<Option<Outcome>> = vec![None; updates.len()];
        let mut tenant_domains: Option<Vec<GraphDomain>> = None;
        for (i, work) in updates.iter().enumerate() {
            let Some(object_id) = work.binding.m365_object_id.clone() else {
                // Never reached M365: the next bind sends everything.
                effects[i] = Some(JobEffect::Nothing);
                continue;
            };
            let bound = work.binding.state == "bound";
            let enabled = self.desired_enabled(work, now);
            let revoke = || Part {
                call: GraphCall::RevokeSessions,
                request: revoke_request(i, &object_id),
                retry_as: OutboxJob::revoke_sessions(),
            };
            let (call, patch): (GraphCall, Map<String, Value>) = match work.job.job_kind() {
                Some(JobKind::Account) => {
                    if !bound && work.binding.state != "unbound" {
                        effects[i] = Some(JobEffect::Nothing);
                        continue;
                    }
                    let mut p = Map::new();
                    p.insert("accountEnabled".into(), Value::Bool(enabled));
                    (GraphCall::SetAccountEnabled, p)
                }
                Some(JobKind::Attributes) if bound => {
                    let fields: Vec<String> = work
                        .job
                        .fields
                        .as_deref()
                        .and_then(|f| serde_json::from_str(f).ok())
                        .unwrap_or_default();
                    if fields.iter().any(|f| f == "manager") && directions.exports("manager") {
                        let manager_object = match &work.user.manager_id {
                            Some(m) => self.store.object_id_of_user(m).await.ok().flatten(),
                            None => None,
                        };
                        if let Some(request) = self.manager_request(
                            i,
                            &object_id,
                            &work.user,
                            manager_object.as_deref(),
                            false,
                        ) {
                            parts[i].push(Part {
                                call: GraphCall::SetManager,
                                request,
                                retry_as: OutboxJob::attributes(&["manager"]),
                            });
                        }
                    }
                    (
                        GraphCall::UpdateUser,
                        patch_for(&work.user, &fields, directions),
                    )
                }
                Some(JobKind::RevokeSessions) if bound => {
                    // A retried sign-out: it is the main request.
                    main_calls.insert(i, GraphCall::RevokeSessions);
                    mains.push(revoke_request(i, &object_id));
                    effects[i] = Some(JobEffect::Synced {
                        account_enabled: None,
                        password_pushed: false,
                    });
                    continue;
                }
                Some(JobKind::Password) if bound => {
                    if tenant_domains.is_none() {
                        match self.domains().await {
                            Ok(d) => tenant_domains = Some(d),
                            Err(err) => {
                                failed[i] =
                                    Some(Outcome::from_connection(GraphCall::ListDomains, err));
                                continue;
                            }
                        }
                    }
                    let upn = &work.binding.user_principal_name;
                    let in_federated = upn.rsplit_once('@').is_some_and(|(_, d)| {
                        tenant_domains.iter().flatten().any(|x| {
                            x.id.eq_ignore_ascii_case(d) && x.authentication_type == "Federated"
                        })
                    });
                    // Seed 003: a password change signs the user out of Microsoft 365, for
                    // federated users too (their password is checked here, so ending their
                    // sessions is all a change can do there).
                    let ends_sessions = work
                        .job
                        .fields
                        .as_deref()
                        .is_some_and(|f| f.contains(REVOKE_SESSIONS));
                    if ends_sessions {
                        parts[i].push(revoke());
                    }
                    let mut p = Map::new();
                    let call = if in_federated {
                        // Graph refuses passwordProfile for federated users: only what else a
                        // new password means is sent, lifting an expiry block (seed 003).
                        if work.binding.account_enabled != Some(i64::from(enabled)) {
                            p.insert("accountEnabled".into(), Value::Bool(enabled));
                        }
                        GraphCall::SetAccountEnabled
                    } else {
                        let Some(sealed) = work.job.secret_enc.as_deref() else {
                            effects[i] = Some(JobEffect::Nothing);
                            continue;
                        };
                        let password = match self.sealer.open(sealed, OUTBOX_PASSWORD_CONTEXT) {
                            Ok(p) => p,
                            Err(e) => {
                                failed[i] = Some(Outcome::Fail(format!(
                                    "the queued password cannot be decrypted ({e}); set the password again"
                                )));
                                continue;
                            }
                        };
                        p.insert(
                            "passwordProfile".into(),
                            json!({
                                "password": password.expose_secret(),
                                "forceChangePasswordNextSignIn": false,
                            }),
                        );
                        // A new password here lifts an expiry block (seed 003).
                        p.insert("accountEnabled".into(), Value::Bool(enabled));
                        GraphCall::SetPassword
                    };
                    (call, p)
                }
                _ => {
                    effects[i] = Some(JobEffect::Nothing);
                    continue;
                }
            };
            let account_enabled = patch
                .get("accountEnabled")
                .and_then(Value::as_bool)
                .or_else(|| (call == GraphCall::SetAccountEnabled).then_some(enabled));
            effects[i] = Some(JobEffect::Synced {
                account_enabled,
                // Federated users sign in here: nothing is left to push for them either.
                password_pushed: work.job.job_kind() == Some(JobKind::Password),
            });
            if !patch.is_empty() {
                main_calls.insert(i, call);
                mains.push(BatchRequest {
                    id: i.to_string(),
                    method: Method::PATCH,
                    url: format!("/users/{object_id}"),
                    body: Some(Value::Object(patch)),
                });
            }
        }
        let mut lost: HashMap<usize, String> = HashMap::new();
        match self.batch(mains, lease).await {
            Ok(responses) => {
                for response in responses {
                    let Some(i) = job_index(&response.id) else {
                        continue;
                    };
                    if let Err(error) = response.result {
                        let call = main_calls.get(&i).copied().unwrap_or(GraphCall::UpdateUser);
                        if error.is_not_found() {
                            lost.insert(i, call.explain(&error));
                        }
                        failed[i] = Some(Outcome::from_graph(call, &error));
                    }
                }
            }
            Err(err) => {
                for (i, effect) in effects.iter().enumerate() {
                    if matches!(effect, Some(JobEffect::Synced { .. })) && failed[i].is_none() {
                        let call = main_calls.get(&i).copied().unwrap_or(GraphCall::UpdateUser);
                        failed[i] = Some(Outcome::from_connection(call, err_clone(&err)));
                    }
                }
            }
        }
        let mut follow_ups: Vec<Vec<FollowUp>> = (0..updates.len()).map(|_| Vec::new()).collect();
        self.send_parts(&updates, parts, &failed, &mut follow_ups, lease, now)
            .await;
        let mut results = Vec::new();
        for (i, work) in updates.into_iter().enumerate() {
            if let Some(message) = lost.remove(&i) {
                // Deleted in Microsoft 365: idbridge keeps the user unchanged (seed 003);
                // binding again creates the M365 user again.
                let message = format!(
                    "the Microsoft 365 user {} no longer exists (deleted in Microsoft 365?); bind the user again to \
                     create it. {message}",
                    work.binding.user_principal_name
                );
                if let Err(err) = self.store.mark_binding_lost(&work.user.id, &message).await {
                    tracing::warn!(%err, "could not mark a lost binding");
                }
                results.push((work, Outcome::Fail(message)));
                continue;
            }
            let outcome = match (failed[i].take(), effects[i].take()) {
                (Some(o), _) => o,
                (None, Some(effect)) => Outcome::Done {
                    effect,
                    event: None,
                    follow_ups: std::mem::take(&mut follow_ups[i]),
                },
                (None, None) => Outcome::done(JobEffect::Nothing),
            };
            results.push((work, outcome));
        }
        results
    }
}

/// `M365Error` is not `Clone` (it holds store errors); a failure shared by a whole batch is
/// given to each job as the same connection state or message.
fn err_clone(error: &M365Error) -> M365Error {
    match error {
        M365Error::Graph(g) => M365Error::Graph(g.clone()),
        M365Error::Call { call, error } => M365Error::Call {
            call: *call,
            error: error.clone(),
        },
        M365Error::NotConfigured(s) => M365Error::NotConfigured(s),
        M365Error::NotConnected => M365Error::NotConnected,
        M365Error::Deactivated => M365Error::Deactivated,
        M365Error::Reconnect(s) => M365Error::Reconnect(s.clone()),
        other => M365Error::Unreachable(other.to_string()),
    }
}

/// `POST /users/{id}/revokeSignInSessions` as a batch sub-request.
fn revoke_request(i: usize, object_id: &str) -> BatchRequest {
    BatchRequest {
        id: i.to_string(),
        method: Method::POST,
        url: format!("/users/{object_id}/revokeSignInSessions"),
        // Graph refuses write requests in a batch without a body.
        body: Some(json!({})),
    }
}

/// `GET /users/{key}` with the mapped properties, as a batch sub-request.
fn get_user_request(i: usize, key: &str) -> BatchRequest {
    BatchRequest {
        id: i.to_string(),
        method: Method::GET,
        url: format!(
            "/users/{}?$select={}",
            url_path_segment(key),
            USER_SELECT.join(",")
        ),
        body: None,
    }
}

/// Percent-encodes a path segment (UPNs may hold `#`, `'` and other reserved characters);
/// `@` stays as Graph's own examples write it.
fn url_path_segment(key: &str) -> String {
    let mut out = String::new();
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'@') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A mail alias from the UPN's local part: Exchange allows letters, digits and
/// `! # $ % & ' * + - / = ? ^ _ ` { | } ~` and single inner dots.
fn mail_nickname(upn: &str) -> String {
    let local = upn.split('@').next().unwrap_or(upn);
    let mut out = String::new();
    for c in local.chars() {
        if c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) {
            out.push(c);
        } else if c == '.' && !out.is_empty() && !out.ends_with('.') {
            out.push('.');
        }
    }
    let out = out.trim_end_matches('.').to_string();
    let out: String = out.chars().take(64).collect();
    if out.is_empty() {
        "user".into()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mail_nicknames_are_valid_aliases() {
        assert_eq!(mail_nickname("ada.lovelace@contoso.com"), "ada.lovelace");
        assert_eq!(mail_nickname(".a..b.@x.com"), "a.b");
        assert_eq!(mail_nickname("é@x.com"), "user");
    }

    #[test]
    fn upn_path_segments_are_encoded() {
        assert_eq!(url_path_segment("o'neil#1@x.com"), "o%27neil%231@x.com");
    }
}
