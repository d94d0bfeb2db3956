//! Bind jobs as a pipeline: look every user up in Microsoft 365 (by the known object id, else
//! by UPN; from a listing of the tenant for large binds), plan each write from what was found
//! (adopt and overwrite, or create), send the writes in one phase of `$batch`es, then the
//! managers of the users written; each job's outcome is read off its answers.

use std::collections::HashMap;
use std::time::Instant;

use chrono::{DateTime, Utc};
use reqwest::Method;
use secrecy::ExposeSecret;
use serde_json::{json, Value};

use super::super::attributes::{full_patch, Directions};
use super::{
    get_user_request, mail_nickname, Answer, Outcome, Part, Plan, RoundLease, TenantListing, Work,
    BATCH_SIZE, LISTING_PAGE,
};
use crate::binding::BindingState;
use crate::directory::generate_password;
use crate::events::kind;
use crate::m365::graph::{BatchRequest, GraphDomain, GraphUser};
use crate::m365::permissions::GraphCall;
use crate::store::{BindOutcome, FollowUp, JobEffect, OutboxJob};

use super::super::M365Sync;

/// What a look-up in Microsoft 365 found for a bind.
#[derive(Debug, Clone)]
pub(super) enum Found {
    /// Not looked up yet (or the key used found nothing: try the next one).
    Unknown,
    /// The tenant has no such user: create it.
    Missing,
    /// The user to adopt.
    User(Box<GraphUser>),
}

/// A bind job on its way through the round.
type Stage<T> = Result<T, Outcome>;

impl M365Sync {
    /// Delivers the round's bind jobs: look up, plan, write, managers, outcomes.
    pub(super) async fn deliver_binds(
        &self,
        binds: Vec<Work>,
        directions: &Directions,
        lease: &RoundLease,
        now: DateTime<Utc>,
    ) -> Vec<(Work, Outcome)> {
        let (active, unbound): (Vec<Work>, Vec<Work>) = binds
            .into_iter()
            .partition(|w| w.binding.state != BindingState::Unbound);
        // Unbound while the bind waited: nothing to create.
        let mut results: Vec<(Work, Outcome)> = unbound
            .into_iter()
            .map(|w| (w, Outcome::done(JobEffect::Nothing)))
            .collect();
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

        // 1. Look up.
        let found = match self.look_up_binds(&active, lease).await {
            Ok(found) => found,
            Err(outcome) => {
                results.extend(active.into_iter().map(|w| (w, outcome.clone())));
                return results;
            }
        };

        // 2. Plan and send the writes.
        let plans: Vec<Plan<(BatchRequest, BindOutcome)>> = active
            .iter()
            .zip(found)
            .map(|(work, found)| match found {
                Ok(found) => self.plan_bind(work, &found, &domains, directions, now),
                Err(outcome) => Plan::Settled(outcome),
            })
            .collect();
        let written = self.write_binds(plans, lease).await;

        // 3. Managers of the users written, then the parts.
        let (parts, mut follow_ups) = if directions.exports("manager") {
            self.plan_managers(&active, &written, now).await
        } else {
            (
                active.iter().map(|_| Vec::new()).collect(),
                active.iter().map(|_| Vec::new()).collect(),
            )
        };
        let part_follow_ups = self.send_parts(&active, parts, lease, now).await;
        for (list, more) in follow_ups.iter_mut().zip(part_follow_ups) {
            list.extend(more);
        }

        // 4. Outcomes.
        for ((work, written), follow_ups) in active.into_iter().zip(written).zip(follow_ups) {
            let outcome = match written {
                Ok(plan) => Outcome::Done {
                    event: Some(if plan.created {
                        kind::M365_USER_CREATED
                    } else {
                        kind::M365_USER_ADOPTED
                    }),
                    effect: JobEffect::Bound(plan),
                    follow_ups,
                },
                Err(outcome) => outcome,
            };
            results.push((work, outcome));
        }
        results
    }

    /// Finds each bind's M365 user: from a tenant listing where that is cheaper, else by the
    /// known object id, then (if gone) by UPN. `Err` when a whole phase failed.
    async fn look_up_binds(
        &self,
        active: &[Work],
        lease: &RoundLease,
    ) -> Result<Vec<Stage<Found>>, Outcome> {
        let mut found: Vec<Stage<Found>> = self.look_up_in_listing(active).await?;
        // By object id, for binds that know one, then by UPN for those still unknown.
        let by_id = |w: &Work, f: &Stage<Found>| match f {
            Ok(Found::Unknown) => w.binding.m365_object_id.as_deref().map(get_user_request),
            _ => None,
        };
        found = self.look_up_phase(active, found, by_id, lease).await?;
        let by_upn = |w: &Work, f: &Stage<Found>| match f {
            Ok(Found::Unknown) => Some(get_user_request(&w.user.email)),
            _ => None,
        };
        found = self.look_up_phase(active, found, by_upn, lease).await?;
        Ok(found
            .into_iter()
            .map(|f| match f {
                // Looked up by both keys and found by neither.
                Ok(Found::Unknown) => Ok(Found::Missing),
                other => other,
            })
            .collect())
    }

    /// One phase of look-ups: `request` says what each still unknown bind asks for.
    async fn look_up_phase(
        &self,
        active: &[Work],
        found: Vec<Stage<Found>>,
        request: impl Fn(&Work, &Stage<Found>) -> Option<BatchRequest>,
        lease: &RoundLease,
    ) -> Result<Vec<Stage<Found>>, Outcome> {
        let requests = active
            .iter()
            .zip(&found)
            .map(|(w, f)| request(w, f).into_iter().collect())
            .collect();
        let answers = self
            .exchange(requests, lease)
            .await
            .map_err(|e| Outcome::from_connection(GraphCall::ReadUsers, e))?;
        Ok(found
            .into_iter()
            .zip(answers)
            .map(|(f, answer)| match answer.into_iter().next() {
                Some(answer) => read_user(answer),
                None => f,
            })
            .collect())
    }

    /// Answers binds' look-ups from a listing of the tenant's users where that costs fewer
    /// Graph requests than looking the waiting binds up 20 per `$batch` (a large bind reads
    /// 999 users per request). Retried binds are always looked up: an earlier attempt may
    /// have created the user after the listing was taken.
    async fn look_up_in_listing(&self, active: &[Work]) -> Result<Vec<Stage<Found>>, Outcome> {
        let mut found: Vec<Stage<Found>> = active.iter().map(|_| Ok(Found::Unknown)).collect();
        let first_tries = active.iter().filter(|w| w.job.attempts == 0).count();
        if first_tries == 0 {
            return Ok(found);
        }
        let mut listing = self.tenant_listing.lock().await;
        if !listing.as_ref().is_some_and(TenantListing::fresh) {
            let waiting = self
                .store
                .queued_bind_count()
                .await
                .unwrap_or(0)
                .max(first_tries as i64);
            let tenant_size = match listing.as_ref() {
                Some(previous) => previous.size as i64,
                None => self.store.known_m365_user_count().await.unwrap_or(i64::MAX),
            };
            let listing_cost = tenant_size.saturating_add(1) / i64::from(LISTING_PAGE) + 1;
            let lookup_cost = (waiting + BATCH_SIZE - 1) / BATCH_SIZE;
            if listing_cost >= lookup_cost {
                return Ok(found);
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
            for (work, found) in active.iter().zip(found.iter_mut()) {
                if work.job.attempts > 0 {
                    continue;
                }
                if let Some(answer) =
                    listing.answer(work.binding.m365_object_id.as_deref(), &work.user.email)
                {
                    *found = Ok(answer.map_or(Found::Missing, |u| Found::User(Box::new(u))));
                }
            }
        }
        Ok(found)
    }

    /// The write of one bind: overwrite the user found (stamping the immutable ID if it has
    /// none), or create it. The account is enabled as the user is now.
    fn plan_bind(
        &self,
        work: &Work,
        found: &Found,
        domains: &[GraphDomain],
        directions: &Directions,
        now: DateTime<Utc>,
    ) -> Plan<(BatchRequest, BindOutcome)> {
        let federated = |upn: &str| -> bool {
            upn.rsplit_once('@').is_some_and(|(_, d)| {
                domains
                    .iter()
                    .any(|x| x.id.eq_ignore_ascii_case(d) && x.authentication_type == "Federated")
            })
        };
        let enabled = self.desired_enabled(work, now);
        let mut patch = full_patch(&work.user, directions);
        patch.insert("accountEnabled".into(), Value::Bool(enabled));
        let upn = work.user.email.clone();
        match found {
            Found::User(existing) => {
                let current_upn = existing.user_principal_name.clone().unwrap_or_default();
                let immutable = match existing.on_premises_immutable_id.as_deref() {
                    Some(id) if !id.is_empty() => id.to_string(),
                    _ if federated(&current_upn) || federated(&upn) => {
                        return Plan::Settled(Outcome::Fail(format!(
                            "the Microsoft 365 user {current_upn} has no immutable ID and its domain is federated, \
                             so Microsoft does not allow setting one. Fix: in Microsoft 365, change the user's \
                             userPrincipalName to the tenant's .onmicrosoft.com domain, bind the user again, then \
                             change the email back here (or bind before converting the domain to federated)"
                        )));
                    }
                    _ => {
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
                Plan::Send((
                    BatchRequest {
                        id: String::new(),
                        method: Method::PATCH,
                        url: format!("/users/{}", existing.id),
                        body: Some(Value::Object(patch)),
                    },
                    BindOutcome {
                        m365_object_id: existing.id.clone(),
                        immutable_id: immutable,
                        user_principal_name: upn,
                        account_enabled: enabled,
                        created: false,
                    },
                ))
            }
            Found::Missing | Found::Unknown => {
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
                // random one is set and the real one follows at the next sign-in.
                body.insert(
                    "passwordProfile".into(),
                    json!({
                        "password": generate_password().expose_secret(),
                        "forceChangePasswordNextSignIn": false,
                    }),
                );
                Plan::Send((
                    BatchRequest {
                        id: String::new(),
                        method: Method::POST,
                        url: "/users".into(),
                        body: Some(Value::Object(body)),
                    },
                    BindOutcome {
                        m365_object_id: String::new(),
                        immutable_id: work.binding.immutable_id.clone(),
                        user_principal_name: upn,
                        account_enabled: enabled,
                        created: true,
                    },
                ))
            }
        }
    }

    /// Sends the planned writes in one phase; each bind ends with the binding to record or
    /// its outcome.
    async fn write_binds(
        &self,
        plans: Vec<Plan<(BatchRequest, BindOutcome)>>,
        lease: &RoundLease,
    ) -> Vec<Stage<BindOutcome>> {
        let requests = plans
            .iter()
            .map(|p| match p {
                Plan::Send((request, _)) => vec![request.clone()],
                Plan::Settled(_) => Vec::new(),
            })
            .collect();
        match self.exchange(requests, lease).await {
            Ok(answers) => plans
                .into_iter()
                .zip(answers)
                .map(|(plan, answer)| match (plan, answer.into_iter().next()) {
                    (Plan::Send((_, plan)), Some(answer)) => written(plan, answer),
                    (Plan::Send(_), None) => Err(Outcome::Retry("nothing was sent".into())),
                    (Plan::Settled(outcome), _) => Err(outcome),
                })
                .collect(),
            Err(err) => plans
                .into_iter()
                .map(|plan| match plan {
                    Plan::Send(_) => Err(Outcome::from_connection(
                        GraphCall::CreateUser,
                        super::err_clone(&err),
                    )),
                    Plan::Settled(outcome) => Err(outcome),
                })
                .collect(),
        }
    }

    /// The manager parts of the binds written (a manager bound in the same round counts, so
    /// it is set at once), and for each new manager the jobs that give their already bound
    /// reports their manager.
    async fn plan_managers(
        &self,
        active: &[Work],
        written: &[Stage<BindOutcome>],
        now: DateTime<Utc>,
    ) -> (Vec<Vec<Part>>, Vec<Vec<FollowUp>>) {
        let round_objects: HashMap<&str, &str> = active
            .iter()
            .zip(written)
            .filter_map(|(w, p)| {
                p.as_ref()
                    .ok()
                    .map(|p| (w.user.id.as_str(), p.m365_object_id.as_str()))
            })
            .collect();
        let mut parts = Vec::with_capacity(active.len());
        for (work, plan) in active.iter().zip(written) {
            let mut job_parts = Vec::new();
            if let Ok(plan) = plan {
                let manager_object = match &work.user.manager_id {
                    Some(m) => match round_objects.get(m.as_str()) {
                        Some(object) => Some(object.to_string()),
                        None => self.store.object_id_of_user(m).await.ok().flatten(),
                    },
                    None => None,
                };
                if let Some(request) = self.manager_request(
                    &plan.m365_object_id,
                    &work.user,
                    manager_object.as_deref(),
                    plan.created,
                ) {
                    job_parts.push(Part {
                        call: GraphCall::SetManager,
                        request,
                        retry_as: OutboxJob::attributes(&["manager"]),
                    });
                }
            }
            parts.push(job_parts);
        }
        // Reports bound before their manager get their manager now.
        let mut follow_ups: Vec<Vec<FollowUp>> = active.iter().map(|_| Vec::new()).collect();
        let new_managers: Vec<String> = round_objects.keys().map(|id| id.to_string()).collect();
        match self.store.bound_reports_of(&new_managers).await {
            Ok(reports) => {
                let position: HashMap<&str, usize> = active
                    .iter()
                    .enumerate()
                    .map(|(i, w)| (w.user.id.as_str(), i))
                    .collect();
                for (report, manager) in reports {
                    let list = position
                        .get(manager.as_str())
                        .and_then(|&i| follow_ups.get_mut(i));
                    if let Some(list) = list {
                        list.push(FollowUp {
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
        (parts, follow_ups)
    }
}

/// A look-up's answer: the user, `Unknown` for a 404 (the next key may find it), or the
/// job's outcome.
fn read_user(answer: Answer) -> Stage<Found> {
    match answer {
        Ok(Some(body)) => match serde_json::from_value::<GraphUser>(body) {
            Ok(user) => Ok(Found::User(Box::new(user))),
            Err(e) => Err(Outcome::Retry(format!(
                "GET /users/{{id}} (reading the Microsoft 365 user): unreadable answer: {e}"
            ))),
        },
        Ok(None) => Err(Outcome::Retry(
            "GET /users/{id} (reading the Microsoft 365 user): Graph sent an empty user".into(),
        )),
        Err(e) if e.is_not_found() => Ok(Found::Unknown),
        Err(e) => Err(e.outcome(GraphCall::ReadUsers)),
    }
}

/// What a bind's write answered: the binding to record (a created user's new object id), or
/// the job's outcome.
fn written(mut plan: BindOutcome, answer: Answer) -> Stage<BindOutcome> {
    let call = if plan.created {
        GraphCall::CreateUser
    } else {
        GraphCall::UpdateUser
    };
    match answer {
        Ok(body) if plan.created => {
            match body.as_ref().and_then(|b| b.get("id")).and_then(Value::as_str) {
                Some(id) => {
                    plan.m365_object_id = id.to_string();
                    Ok(plan)
                }
                None => Err(Outcome::Retry(
                    "POST /users (creating the Microsoft 365 user): Graph created the user but sent no id"
                        .into(),
                )),
            }
        }
        Ok(_) => Ok(plan),
        // Nobody had the address when looked up, so a deleted user still holds it (Microsoft
        // releases it later) or it was created meanwhile: the retry looks the user up.
        Err(error) if plan.created && error.is_conflict() => Err(Outcome::Retry(format!(
            "{}. Microsoft 365 may still hold this address for a recently deleted \
             user (it can take up to 24 hours); idbridge keeps retrying",
            error.explain(call)
        ))),
        // Deleted between the look-up and the write: the retry looks it up again.
        Err(error) if !plan.created && error.is_not_found() => {
            Err(Outcome::Retry(error.explain(call)))
        }
        Err(error) => Err(error.outcome(call)),
    }
}
