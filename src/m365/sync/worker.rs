//! Delivering the outbox: one round claims due jobs (the oldest of each user), sends them to
//! Graph in `$batch`es of 20, and records each job's outcome.
//!
//! A job can have several parts (a password change: the password, then signing the user out;
//! a bind: the account, then the manager). Each part has its own outcome: when the main part
//! reached Microsoft 365 and a later part did not, the job is recorded as delivered and the
//! part left is written as a job of its own, failed with Graph's refusal or queued to retry.
//!
//! Each kind of job is a pipeline (`binds`, `updates`): planned from the user as it is now,
//! sent in phases (one `$batch` exchange per phase for the whole round), and its outcome read
//! off the answers; [`M365Sync::record`] then stores every outcome under the round's lease.

mod binds;
mod updates;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::Method;
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::attributes::Directions;
use super::M365Sync;
use crate::directory::{DirectoryError, User, UserState};
use crate::events::{kind, Actor, NewEvent};
use crate::m365::graph::{BatchRequest, GraphDomain, GraphError, GraphUser, USER_SELECT};
use crate::m365::permissions::GraphCall;
use crate::m365::M365Error;
use crate::store::{BindingRow, Completion, FollowUp, JobEffect, JobKind, OutboxJob, OutboxRow};

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

/// Graph's answer to one sub-request: the 2xx body (`None` for 204), or why there is none.
type Answer = Result<Option<Value>, Refusal>;

/// Why a sub-request has no 2xx answer.
#[derive(Debug)]
enum Refusal {
    /// Graph refused it (or it failed alone).
    Graph(Box<GraphError>),
    /// Its `$batch` failed as a whole, or was not sent: the round stopped part way through the
    /// phase (the server is stopping, or the lease could not be renewed in time).
    Phase(Box<M365Error>),
}

impl Refusal {
    fn is_not_found(&self) -> bool {
        matches!(self, Refusal::Graph(e) if e.is_not_found())
    }

    fn is_conflict(&self) -> bool {
        matches!(self, Refusal::Graph(e) if e.is_conflict())
    }

    /// The job's outcome when `call` got this answer (an unsent request is given back).
    fn outcome(&self, call: GraphCall) -> Outcome {
        match self {
            Refusal::Graph(e) => Outcome::from_graph(call, e),
            Refusal::Phase(e) => Outcome::from_connection(call, err_clone(e)),
        }
    }

    /// What went wrong, naming `call`.
    fn explain(&self, call: GraphCall) -> String {
        match self {
            Refusal::Graph(e) => call.explain(e),
            Refusal::Phase(e) => e.to_string(),
        }
    }
}

/// What planning decided for a job.
enum Plan<P> {
    /// What to send.
    Send(P),
    /// Decided without Graph: nothing to send, or refused before sending.
    Settled(Outcome),
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
        work.binding.state.receives_changes()
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

    /// Sends `requests` as `$batch`es of 20; one answer per request, in order. Before each
    /// `$batch` the round checks it may still send (see [`RoundLease`]): the requests left
    /// when it may not are answered [`Refusal::Phase`] and given back unsent. `Err` when
    /// nothing was answered.
    async fn batch(
        &self,
        requests: Vec<BatchRequest>,
        lease: &RoundLease,
    ) -> Result<Vec<Answer>, M365Error> {
        let mut answers: Vec<Answer> = Vec::with_capacity(requests.len());
        let chunks: Vec<&[BatchRequest]> = requests.chunks(BATCH_SIZE as usize).collect();
        for (n, chunk) in chunks.iter().enumerate() {
            let sent = match lease.may_send() {
                Ok(()) => {
                    let graph = self.m365.graph();
                    self.m365
                        .call(|t| {
                            let chunk = chunk.to_vec();
                            async move { graph.batch(t.expose_secret(), chunk).await }
                        })
                        .await
                }
                Err(stop) => Err(stop),
            };
            match sent {
                Ok(responses) => answers.extend(
                    responses
                        .into_iter()
                        .map(|r| r.result.map_err(|e| Refusal::Graph(Box::new(e)))),
                ),
                Err(err) if answers.is_empty() => return Err(err),
                Err(err) => {
                    let left = chunks.iter().skip(n).map(|c| c.len()).sum::<usize>();
                    answers
                        .extend((0..left).map(|_| Err(Refusal::Phase(Box::new(err_clone(&err))))));
                    break;
                }
            }
        }
        Ok(answers)
    }

    /// Sends the later parts of jobs whose main part reached Microsoft 365 (the jobs that did
    /// not come with none), in one phase; a part that does not get through becomes a
    /// follow-up job of its own. One list of follow-ups per job, in order.
    async fn send_parts(
        &self,
        works: &[Work],
        parts: Vec<Vec<Part>>,
        lease: &RoundLease,
        now: DateTime<Utc>,
    ) -> Vec<Vec<FollowUp>> {
        let requests = parts
            .iter()
            .map(|job_parts| job_parts.iter().map(|p| p.request.clone()).collect())
            .collect();
        let answers: Vec<Vec<Option<Outcome>>> = match self.exchange(requests, lease).await {
            Ok(answers) => parts
                .iter()
                .zip(answers)
                .map(|(job_parts, answers)| {
                    job_parts
                        .iter()
                        .zip(answers)
                        .map(|(part, answer)| match answer {
                            Ok(_) => None,
                            // Removing a manager the user does not have is fine.
                            Err(e) if part.call == GraphCall::SetManager && e.is_not_found() => {
                                None
                            }
                            Err(e) => Some(e.outcome(part.call)),
                        })
                        .collect()
                })
                .collect(),
            Err(err) => parts
                .iter()
                .map(|job_parts| {
                    job_parts
                        .iter()
                        .map(|part| Some(Outcome::from_connection(part.call, err_clone(&err))))
                        .collect()
                })
                .collect(),
        };
        works
            .iter()
            .zip(parts.into_iter().zip(answers))
            .map(|(work, (job_parts, outcomes))| {
                job_parts
                    .into_iter()
                    .zip(outcomes)
                    .filter_map(|(part, outcome)| {
                        outcome.map(|o| self.follow_up(work, part.retry_as, o, now))
                    })
                    .collect()
            })
            .collect()
    }

    /// Sends one phase of a round: each job's requests (none, one or several) together in
    /// `$batch`es; each job gets Graph's answers in the same shape. `Err` when nothing was
    /// answered (the connection failed, or the round may no longer send).
    async fn exchange(
        &self,
        requests: Vec<Vec<BatchRequest>>,
        lease: &RoundLease,
    ) -> Result<Vec<Vec<Answer>>, M365Error> {
        let shape: Vec<usize> = requests.iter().map(Vec::len).collect();
        // The Graph client answers in request order (it numbers the sub-requests itself).
        let flat: Vec<BatchRequest> = requests.into_iter().flatten().collect();
        let mut answers = self.batch(flat, lease).await?.into_iter();
        Ok(shape
            .into_iter()
            .map(|n| answers.by_ref().take(n).collect())
            .collect())
    }

    /// The manager reference to write for `user`: set to the manager's M365 user when the
    /// manager is bound (`manager_object`), else removed, except on a user just created
    /// (it has no manager, and a removal would spend a Graph write for nothing).
    fn manager_request(
        &self,
        object_id: &str,
        user: &User,
        manager_object: Option<&str>,
        created: bool,
    ) -> Option<BatchRequest> {
        match (manager_object, &user.manager_id) {
            (Some(manager_object), Some(_)) => Some(BatchRequest {
                id: String::new(),
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
                id: String::new(),
                method: Method::DELETE,
                url: format!("/users/{object_id}/manager/$ref"),
                body: None,
            }),
        }
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
        M365Error::Interrupted(s) => M365Error::Interrupted(s),
        other => M365Error::Unreachable(other.to_string()),
    }
}

/// `POST /users/{id}/revokeSignInSessions` as a batch sub-request.
fn revoke_request(object_id: &str) -> BatchRequest {
    BatchRequest {
        id: String::new(),
        method: Method::POST,
        url: format!("/users/{object_id}/revokeSignInSessions"),
        // Graph refuses write requests in a batch without a body.
        body: Some(json!({})),
    }
}

/// `GET /users/{key}` with the mapped properties, as a batch sub-request.
fn get_user_request(key: &str) -> BatchRequest {
    BatchRequest {
        id: String::new(),
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
