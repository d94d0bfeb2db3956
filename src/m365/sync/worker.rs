//! Delivering the outbox: one round claims due jobs (the oldest of each user), sends them to
//! Graph in `$batch`es of 20, and records each job's outcome.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::Method;
use secrecy::ExposeSecret;
use serde_json::{json, Map, Value};

use super::attributes::{full_patch, patch_for, Directions};
use super::M365Sync;
use crate::directory::{
    generate_password, DirectoryError, User, UserState, OUTBOX_PASSWORD_CONTEXT,
};
use crate::events::{kind, Actor, NewEvent};
use crate::m365::graph::{
    BatchRequest, BatchResponse, GraphDomain, GraphError, GraphUser, USER_SELECT,
};
use crate::m365::M365Error;
use crate::store::{BindOutcome, BindingRow, JobEffect, OutboxRow, REVOKE_SESSIONS};

/// How long a claimed job is reserved for this worker (a crashed node's jobs come back after).
const LEASE_MS: i64 = 5 * 60 * 1000;
/// How long the tenant's domain list is reused.
const DOMAIN_CACHE: Duration = Duration::from_secs(300);

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
    Done(JobEffect, Option<&'static str>),
    /// Transient: try again later.
    Retry(String),
    /// Permanent: Graph refused it (its message), or retries ran out.
    Fail(String),
    /// The connection is not usable (token refused, deactivated): not the job's fault.
    Pause(String),
}

/// A claimed job with what is needed to deliver it.
struct Work {
    job: OutboxRow,
    user: User,
    binding: BindingRow,
}

impl Outcome {
    fn from_graph(error: &GraphError) -> Outcome {
        match error {
            // Refused even after a fresh token: counted, so it ends as a visible failure.
            GraphError::Unauthorized { .. } => Outcome::Retry(error.to_string()),
            GraphError::Api { status, .. }
                if *status == 429 || *status >= 500 || *status == 408 =>
            {
                Outcome::Retry(error.to_string())
            }
            GraphError::Api { .. } => Outcome::Fail(error.to_string()),
            GraphError::Exhausted { .. } | GraphError::Network(_) | GraphError::Decode(_) => {
                Outcome::Retry(error.to_string())
            }
        }
    }

    fn from_connection(error: M365Error) -> Outcome {
        match error {
            M365Error::Graph(g) => Outcome::from_graph(&g),
            M365Error::NotConfigured(_)
            | M365Error::NotConnected
            | M365Error::Deactivated
            | M365Error::Reconnect(_) => Outcome::Pause(error.to_string()),
            other => Outcome::Retry(other.to_string()),
        }
    }
}

impl M365Sync {
    /// Claims due jobs and delivers them; the worker calls this until nothing is due.
    pub async fn deliver_round(&self, now: DateTime<Utc>) -> RoundReport {
        let jobs = match self
            .store
            .claim_outbox_jobs(
                now.timestamp_millis(),
                LEASE_MS,
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
                outcomes.push((job, Outcome::Done(JobEffect::Nothing, None), None));
                continue;
            };
            let work = Work { job, user, binding };
            if work.job.kind == "bind" {
                binds.push(work);
            } else {
                updates.push(work);
            }
        }
        let mut delivered = Vec::new();
        if !binds.is_empty() {
            delivered.extend(self.deliver_binds(binds, &directions, now).await);
        }
        if !updates.is_empty() {
            delivered.extend(self.deliver_updates(updates, &directions, now).await);
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
                Outcome::Done(effect, event_type) => {
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
                    done.push((job.id, job.user_id.clone(), effect, event));
                    report.done += 1;
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
                        let (job_id, user_id, effect, _) = item;
                        let message = match &effect {
                            JobEffect::Bound(b) => format!(
                                "the Microsoft 365 user {} has the {field} {:?}, which another idbridge user's binding already uses",
                                b.user_principal_name, b.immutable_id
                            ),
                            _ => format!("another binding already has this {field}"),
                        };
                        let row = OutboxRow {
                            id: job_id,
                            user_id,
                            kind: if matches!(effect, JobEffect::Bound(_)) {
                                "bind".into()
                            } else {
                                "update".into()
                            },
                            fields: None,
                            secret_enc: None,
                            state: "queued".into(),
                            attempts: 0,
                            next_attempt_at: now_ms,
                            last_error: None,
                            created_at: now_ms,
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
            .postpone_job(job.id, count, at, message, now_ms)
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

    /// Sends `requests` as `$batch`es; one response per request, in order.
    async fn batch(&self, requests: Vec<BatchRequest>) -> Result<Vec<BatchResponse>, M365Error> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let graph = self.m365.graph();
        self.m365
            .call(|t| {
                let requests = requests.clone();
                async move { graph.batch(t.expose_secret(), requests).await }
            })
            .await
    }

    /// Binds: look every user up (object id first, else UPN), then create the missing ones and
    /// overwrite the found ones, then set managers: three `$batch` round trips for up to 20
    /// users each.
    async fn deliver_binds(
        &self,
        binds: Vec<Work>,
        directions: &Directions,
        now: DateTime<Utc>,
    ) -> Vec<(Work, Outcome)> {
        let mut results: Vec<(Work, Outcome)> = Vec::new();
        let mut active = Vec::new();
        for work in binds {
            // Unbound while the bind waited: nothing to create.
            if work.binding.state == "unbound" {
                results.push((work, Outcome::Done(JobEffect::Nothing, None)));
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
                let outcome = Outcome::from_connection(err);
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

        // 1. Look up: by the known object id, then (if gone) by UPN.
        let mut found: Vec<Option<GraphUser>> = vec![None; active.len()];
        let mut failed: Vec<Option<Outcome>> = vec![None; active.len()];
        let by_id: Vec<usize> = (0..active.len())
            .filter(|&i| active[i].binding.m365_object_id.is_some())
            .collect();
        let lookups: Vec<BatchRequest> = by_id
            .iter()
            .map(|&i| {
                get_user_request(i, active[i].binding.m365_object_id.as_deref().unwrap_or(""))
            })
            .collect();
        if let Err(outcome) = self.lookup(lookups, &mut found, &mut failed).await {
            results.extend(active.into_iter().map(|w| (w, outcome.clone())));
            return results;
        }
        let by_upn: Vec<BatchRequest> = (0..active.len())
            .filter(|&i| found[i].is_none() && failed[i].is_none())
            .map(|i| get_user_request(i, &active[i].user.email))
            .collect();
        if let Err(outcome) = self.lookup(by_upn, &mut found, &mut failed).await {
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
        match self.batch(writes).await {
            Ok(responses) => {
                for response in responses {
                    let Ok(i) = response.id.parse::<usize>() else {
                        continue;
                    };
                    match response.result {
                        Ok(body) => {
                            if let Some(plan) = plans[i].as_mut() {
                                if plan.created {
                                    match body
                                        .as_ref()
                                        .and_then(|b| b.get("id"))
                                        .and_then(Value::as_str)
                                    {
                                        Some(id) => plan.m365_object_id = id.to_string(),
                                        None => {
                                            failed[i] = Some(Outcome::Retry(
                                                "Graph created the user but sent no id".into(),
                                            ))
                                        }
                                    }
                                }
                            }
                        }
                        Err(error) => {
                            let created = plans[i].as_ref().is_some_and(|p| p.created);
                            failed[i] = Some(if created && error.is_conflict() {
                                // Nobody has the address (the lookup found none), so a deleted
                                // user still holds it: Microsoft releases it later (seed 003).
                                Outcome::Retry(format!(
                                    "{error}. Microsoft 365 may still hold this address for a recently deleted \
                                     user (it can take up to 24 hours); idbridge keeps retrying"
                                ))
                            } else if !created && error.is_not_found() {
                                Outcome::Retry(error.to_string())
                            } else {
                                Outcome::from_graph(&error)
                            });
                        }
                    }
                }
            }
            Err(err) => {
                let outcome = Outcome::from_connection(err);
                for (i, plan) in plans.iter().enumerate() {
                    if plan.is_some() && failed[i].is_none() {
                        failed[i] = Some(outcome.clone());
                    }
                }
            }
        }

        // 3. Managers, for those written.
        let mut manager_requests = Vec::new();
        if directions.exports("manager") {
            for (i, work) in active.iter().enumerate() {
                if failed[i].is_some() {
                    continue;
                }
                if let Some(plan) = &plans[i] {
                    if let Some(request) = self
                        .manager_request(i, &plan.m365_object_id, &work.user)
                        .await
                    {
                        manager_requests.push(request);
                    }
                }
            }
        }
        self.apply_secondary(manager_requests, &mut failed).await;

        for (i, work) in active.into_iter().enumerate() {
            let outcome = match (failed[i].take(), plans[i].take()) {
                (Some(outcome), _) => outcome,
                (None, Some(plan)) => {
                    let event = if plan.created {
                        kind::M365_USER_CREATED
                    } else {
                        kind::M365_USER_ADOPTED
                    };
                    Outcome::Done(JobEffect::Bound(plan), Some(event))
                }
                (None, None) => Outcome::Retry("nothing was sent".into()),
            };
            results.push((work, outcome));
        }
        results
    }

    /// Runs lookups; fills `found` (404 leaves it empty) or `failed`. `Err` when the whole
    /// batch failed.
    async fn lookup(
        &self,
        requests: Vec<BatchRequest>,
        found: &mut [Option<GraphUser>],
        failed: &mut [Option<Outcome>],
    ) -> Result<(), Outcome> {
        let responses = self
            .batch(requests)
            .await
            .map_err(Outcome::from_connection)?;
        for response in responses {
            let Ok(i) = response.id.parse::<usize>() else {
                continue;
            };
            match response.result {
                Ok(Some(body)) => match serde_json::from_value::<GraphUser>(body) {
                    Ok(user) => found[i] = Some(user),
                    Err(e) => {
                        failed[i] = Some(Outcome::Retry(format!("unreadable user from Graph: {e}")))
                    }
                },
                Ok(None) => failed[i] = Some(Outcome::Retry("Graph sent an empty user".into())),
                Err(e) if e.is_not_found() => {}
                Err(e) => failed[i] = Some(Outcome::from_graph(&e)),
            }
        }
        Ok(())
    }

    /// Sends secondary requests (manager references, session revocations) and marks their jobs' failures.
    async fn apply_secondary(&self, requests: Vec<BatchRequest>, failed: &mut [Option<Outcome>]) {
        if requests.is_empty() {
            return;
        }
        let ids: Vec<usize> = requests.iter().filter_map(|r| r.id.parse().ok()).collect();
        match self.batch(requests).await {
            Ok(responses) => {
                for response in responses {
                    let Ok(i) = response.id.parse::<usize>() else {
                        continue;
                    };
                    if let Err(e) = response.result {
                        // Removing a manager the user does not have is fine.
                        if !e.is_not_found() {
                            failed[i] = Some(Outcome::from_graph(&e));
                        }
                    }
                }
            }
            Err(err) => {
                let outcome = Outcome::from_connection(err);
                for i in ids {
                    failed[i] = Some(outcome.clone());
                }
            }
        }
    }

    /// The manager reference to write for `user` (set to the manager's M365 user, or removed);
    /// `None` when the manager is not bound (there is nothing in M365 to point at).
    async fn manager_request(
        &self,
        i: usize,
        object_id: &str,
        user: &User,
    ) -> Option<BatchRequest> {
        match &user.manager_id {
            Some(manager_id) => {
                let manager_object = self.store.object_id_of_user(manager_id).await.ok()??;
                Some(BatchRequest {
                    id: i.to_string(),
                    method: Method::PUT,
                    url: format!("/users/{object_id}/manager/$ref"),
                    body: Some(json!({
                        "@odata.id": format!("{}/directoryObjects/{manager_object}", self.m365.graph().base_url())
                    })),
                })
            }
            None => Some(BatchRequest {
                id: i.to_string(),
                method: Method::DELETE,
                url: format!("/users/{object_id}/manager/$ref"),
                body: None,
            }),
        }
    }

    /// Attribute, password and account jobs: one PATCH each (plus a manager reference), all in
    /// `$batch`es.
    async fn deliver_updates(
        &self,
        updates: Vec<Work>,
        directions: &Directions,
        now: DateTime<Utc>,
    ) -> Vec<(Work, Outcome)> {
        let mut patches = Vec::new();
        let mut managers = Vec::new();
        let mut revokes = Vec::new();
        let mut effects: Vec<Option<JobEffect>> = vec![None; updates.len()];
        let mut failed: Vec<Option<Outcome>> = vec![None; updates.len()];
        let mut federated_domains: Option<Vec<GraphDomain>> = None;
        for (i, work) in updates.iter().enumerate() {
            let Some(object_id) = work.binding.m365_object_id.clone() else {
                // Never reached M365: the next bind sends everything.
                effects[i] = Some(JobEffect::Nothing);
                continue;
            };
            let bound = work.binding.state == "bound";
            let enabled = self.desired_enabled(work, now);
            let patch: Map<String, Value> = match work.job.kind.as_str() {
                "account" => {
                    if !bound && work.binding.state != "unbound" {
                        effects[i] = Some(JobEffect::Nothing);
                        continue;
                    }
                    let mut p = Map::new();
                    p.insert("accountEnabled".into(), Value::Bool(enabled));
                    p
                }
                "attributes" if bound => {
                    let fields: Vec<String> = work
                        .job
                        .fields
                        .as_deref()
                        .and_then(|f| serde_json::from_str(f).ok())
                        .unwrap_or_default();
                    if fields.iter().any(|f| f == "manager") && directions.exports("manager") {
                        if let Some(r) = self.manager_request(i, &object_id, &work.user).await {
                            managers.push(r);
                        }
                    }
                    patch_for(&work.user, &fields, directions)
                }
                "password" if bound => {
                    if federated_domains.is_none() {
                        match self.domains().await {
                            Ok(d) => federated_domains = Some(d),
                            Err(err) => {
                                failed[i] = Some(Outcome::from_connection(err));
                                continue;
                            }
                        }
                    }
                    let upn = &work.binding.user_principal_name;
                    let in_federated = upn.rsplit_once('@').is_some_and(|(_, d)| {
                        federated_domains.iter().flatten().any(|x| {
                            x.id.eq_ignore_ascii_case(d) && x.authentication_type == "Federated"
                        })
                    });
                    if in_federated {
                        // Microsoft signs federated users in here, not with a password, and
                        // refuses passwordProfile for them.
                        effects[i] = Some(JobEffect::Nothing);
                        continue;
                    }
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
                    let mut p = Map::new();
                    p.insert(
                        "passwordProfile".into(),
                        json!({
                            "password": password.expose_secret(),
                            "forceChangePasswordNextSignIn": false,
                        }),
                    );
                    // A new password here lifts an expiry block (seed 003).
                    p.insert("accountEnabled".into(), Value::Bool(enabled));
                    if work
                        .job
                        .fields
                        .as_deref()
                        .is_some_and(|f| f.contains(REVOKE_SESSIONS))
                    {
                        // Seed 003: the change signs the user out of Microsoft 365.
                        revokes.push(BatchRequest {
                            id: i.to_string(),
                            method: Method::POST,
                            url: format!("/users/{object_id}/revokeSignInSessions"),
                            // Graph refuses write requests in a batch without a body.
                            body: Some(json!({})),
                        });
                    }
                    p
                }
                _ => {
                    effects[i] = Some(JobEffect::Nothing);
                    continue;
                }
            };
            let account_enabled = patch.get("accountEnabled").and_then(Value::as_bool);
            effects[i] = Some(JobEffect::Synced {
                account_enabled,
                password_pushed: work.job.kind == "password",
            });
            if !patch.is_empty() {
                patches.push(BatchRequest {
                    id: i.to_string(),
                    method: Method::PATCH,
                    url: format!("/users/{object_id}"),
                    body: Some(Value::Object(patch)),
                });
            }
        }
        let mut lost: HashMap<usize, String> = HashMap::new();
        match self.batch(patches).await {
            Ok(responses) => {
                for response in responses {
                    let Ok(i) = response.id.parse::<usize>() else {
                        continue;
                    };
                    if let Err(error) = response.result {
                        if error.is_not_found() {
                            lost.insert(i, error.to_string());
                        }
                        failed[i] = Some(Outcome::from_graph(&error));
                    }
                }
            }
            Err(err) => {
                let outcome = Outcome::from_connection(err);
                for (i, effect) in effects.iter().enumerate() {
                    if matches!(effect, Some(JobEffect::Synced { .. })) && failed[i].is_none() {
                        failed[i] = Some(outcome.clone());
                    }
                }
            }
        }
        managers.extend(
            revokes
                .into_iter()
                .filter(|r| r.id.parse::<usize>().is_ok_and(|i| failed[i].is_none())),
        );
        self.apply_secondary(managers, &mut failed).await;
        let mut results = Vec::new();
        for (i, work) in updates.into_iter().enumerate() {
            if let Some(message) = lost.remove(&i) {
                // Deleted in Microsoft 365: idbridge keeps the user unchanged (seed 003);
                // binding again creates the M365 user again.
                let message = format!(
                    "the Microsoft 365 user {} no longer exists (deleted in Microsoft 365?); bind the user again to \
                     create it. Graph said: {message}",
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
                (None, Some(effect)) => Outcome::Done(effect, None),
                (None, None) => Outcome::Done(JobEffect::Nothing, None),
            };
            results.push((work, outcome));
        }
        results
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
