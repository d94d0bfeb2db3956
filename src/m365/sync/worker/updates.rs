//! Attribute, password, account and sign-out jobs as a pipeline: each job is planned from
//! the user as it is now (what to send, what it changes on the binding), the main requests go
//! out in one phase of `$batch`es, and the later parts of the jobs whose main request got
//! through in a second phase; each job's outcome is read off its answers.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use reqwest::Method;
use secrecy::ExposeSecret;
use serde_json::{json, Map, Value};

use super::super::attributes::{patch_for, Directions};
use super::{revoke_request, Answer, Outcome, Part, Plan, RoundLease, Work};
use crate::binding::BindingState;
use crate::directory::OUTBOX_PASSWORD_CONTEXT;
use crate::m365::graph::{BatchRequest, GraphDomain};
use crate::m365::permissions::GraphCall;
use crate::store::{JobEffect, JobKind, OutboxJob, REVOKE_SESSIONS};

use super::super::M365Sync;

/// What an update job sends and what delivering it changes.
pub(super) struct UpdatePlan {
    /// The main request; `None` when there is nothing to change in the account itself (a
    /// federated user's new password while the account is already as it should be).
    main: Option<(GraphCall, BatchRequest)>,
    /// Sent once the main request got through.
    parts: Vec<Part>,
    /// Recorded on the binding once delivered.
    effect: JobEffect,
}

/// What the round reads once for all its update jobs, so planning a job needs no I/O.
#[derive(Default)]
pub(super) struct UpdateFacts {
    /// The tenant's domains, when a password job needs to know whether its domain is federated.
    domains: Option<Result<Vec<GraphDomain>, Outcome>>,
    /// The M365 object id of each manager an attribute job names (`None`: not bound).
    managers: HashMap<String, Option<String>>,
}

/// How a job's main request ended.
enum MainAnswer {
    /// Delivered (or nothing to send): on to the parts.
    Through(UpdatePlan),
    /// Graph answered 404: the M365 user was deleted there.
    Lost(String),
    Ended(Outcome),
}

impl M365Sync {
    /// Delivers the round's update jobs: plan, main requests, later parts, outcomes.
    pub(super) async fn deliver_updates(
        &self,
        updates: Vec<Work>,
        directions: &Directions,
        lease: &RoundLease,
        now: DateTime<Utc>,
    ) -> Vec<(Work, Outcome)> {
        let facts = self.update_facts(&updates, directions).await;
        let plans: Vec<Plan<UpdatePlan>> = updates
            .iter()
            .map(|work| self.plan_update(work, directions, &facts, now))
            .collect();

        // 1. The main requests, in one phase.
        let requests = plans
            .iter()
            .map(|plan| match plan {
                Plan::Send(p) => p.main.iter().map(|(_, r)| r.clone()).collect(),
                Plan::Settled(_) => Vec::new(),
            })
            .collect();
        let answers = self.exchange(requests, lease).await;
        let mains: Vec<MainAnswer> = match answers {
            Ok(answers) => plans
                .into_iter()
                .zip(answers)
                .map(|(plan, answer)| main_answer(plan, answer.into_iter().next()))
                .collect(),
            Err(err) => plans
                .into_iter()
                .map(|plan| match plan {
                    Plan::Send(p) => match &p.main {
                        Some((call, _)) => MainAnswer::Ended(Outcome::from_connection(
                            *call,
                            super::err_clone(&err),
                        )),
                        // Nothing of it was to be sent in this phase.
                        None => MainAnswer::Through(p),
                    },
                    Plan::Settled(outcome) => MainAnswer::Ended(outcome),
                })
                .collect(),
        };

        // 2. The later parts of the jobs whose main request got through.
        let mut mains = mains;
        let parts = mains
            .iter_mut()
            .map(|m| match m {
                MainAnswer::Through(plan) => std::mem::take(&mut plan.parts),
                _ => Vec::new(),
            })
            .collect();
        let follow_ups = self.send_parts(&updates, parts, lease, now).await;

        // 3. Outcomes.
        let mut results = Vec::with_capacity(updates.len());
        for ((work, main), follow_ups) in updates.into_iter().zip(mains).zip(follow_ups) {
            let outcome = match main {
                MainAnswer::Through(plan) => Outcome::Done {
                    effect: plan.effect,
                    event: None,
                    follow_ups,
                },
                MainAnswer::Lost(message) => self.binding_lost(&work, &message).await,
                MainAnswer::Ended(outcome) => outcome,
            };
            results.push((work, outcome));
        }
        results
    }

    /// Reads what planning needs: the tenant's domains if a password job is due, the M365
    /// object ids of the managers that attribute jobs name.
    async fn update_facts(&self, updates: &[Work], directions: &Directions) -> UpdateFacts {
        let mut facts = UpdateFacts::default();
        let bound = |w: &&Work| w.binding.state == BindingState::Bound;
        if updates
            .iter()
            .filter(bound)
            .any(|w| w.job.job_kind() == Some(JobKind::Password))
        {
            facts.domains = Some(
                self.domains()
                    .await
                    .map_err(|e| Outcome::from_connection(GraphCall::ListDomains, e)),
            );
        }
        if directions.exports("manager") {
            for work in updates.iter().filter(bound) {
                let Some(manager) = &work.user.manager_id else {
                    continue;
                };
                if work.job.job_kind() == Some(JobKind::Attributes)
                    && job_fields(work).iter().any(|f| f == "manager")
                    && !facts.managers.contains_key(manager)
                {
                    let object = self.store.object_id_of_user(manager).await.ok().flatten();
                    facts.managers.insert(manager.clone(), object);
                }
            }
        }
        facts
    }

    /// What one update job sends, from the user and binding as they are now (so a stale
    /// value is never sent: an enable queued before a disable sends the current state).
    fn plan_update(
        &self,
        work: &Work,
        directions: &Directions,
        facts: &UpdateFacts,
        now: DateTime<Utc>,
    ) -> Plan<UpdatePlan> {
        let nothing = || Plan::Settled(Outcome::done(JobEffect::Nothing));
        let Some(object_id) = work.binding.m365_object_id.as_deref() else {
            // Never reached M365: the next bind sends everything.
            return nothing();
        };
        let bound = work.binding.state == BindingState::Bound;
        let enabled = self.desired_enabled(work, now);
        let synced = |account_enabled: Option<bool>| JobEffect::Synced {
            account_enabled,
            // Federated users sign in here: nothing is left to push for them either.
            password_pushed: work.job.job_kind() == Some(JobKind::Password),
        };
        let patch = |call: GraphCall, body: Map<String, Value>, parts: Vec<Part>| {
            let account_enabled = body
                .get("accountEnabled")
                .and_then(Value::as_bool)
                .or_else(|| (call == GraphCall::SetAccountEnabled).then_some(enabled));
            let main = (!body.is_empty()).then(|| {
                (
                    call,
                    BatchRequest {
                        id: String::new(),
                        method: Method::PATCH,
                        url: format!("/users/{object_id}"),
                        body: Some(Value::Object(body)),
                    },
                )
            });
            Plan::Send(UpdatePlan {
                main,
                parts,
                effect: synced(account_enabled),
            })
        };
        match work.job.job_kind() {
            // Blocks an unbound user's account too.
            Some(JobKind::Account) if bound || work.binding.state == BindingState::Unbound => {
                let mut body = Map::new();
                body.insert("accountEnabled".into(), Value::Bool(enabled));
                patch(GraphCall::SetAccountEnabled, body, Vec::new())
            }
            Some(JobKind::Attributes) if bound => {
                let fields = job_fields(work);
                let mut parts = Vec::new();
                if fields.iter().any(|f| f == "manager") && directions.exports("manager") {
                    let manager_object = work
                        .user
                        .manager_id
                        .as_ref()
                        .and_then(|m| facts.managers.get(m).cloned().flatten());
                    if let Some(request) = self.manager_request(
                        object_id,
                        &work.user,
                        manager_object.as_deref(),
                        false,
                    ) {
                        parts.push(Part {
                            call: GraphCall::SetManager,
                            request,
                            retry_as: OutboxJob::attributes(&["manager"]),
                        });
                    }
                }
                let body = patch_for(&work.user, &fields, directions);
                patch(GraphCall::UpdateUser, body, parts)
            }
            // A retried sign-out: it is the main request.
            Some(JobKind::RevokeSessions) if bound => Plan::Send(UpdatePlan {
                main: Some((GraphCall::RevokeSessions, revoke_request(object_id))),
                parts: Vec::new(),
                effect: JobEffect::Synced {
                    account_enabled: None,
                    password_pushed: false,
                },
            }),
            Some(JobKind::Password) if bound => {
                let domains = match &facts.domains {
                    Some(Ok(domains)) => domains.as_slice(),
                    Some(Err(outcome)) => return Plan::Settled(outcome.clone()),
                    None => &[],
                };
                let upn = &work.binding.user_principal_name;
                let in_federated = upn.rsplit_once('@').is_some_and(|(_, d)| {
                    domains.iter().any(|x| {
                        x.id.eq_ignore_ascii_case(d) && x.authentication_type == "Federated"
                    })
                });
                // A password change signs the user out of Microsoft 365, federated users too
                // (their password is checked here, so ending their sessions there is all a
                // change can do).
                let mut parts = Vec::new();
                if work
                    .job
                    .fields
                    .as_deref()
                    .is_some_and(|f| f.contains(REVOKE_SESSIONS))
                {
                    parts.push(Part {
                        call: GraphCall::RevokeSessions,
                        request: revoke_request(object_id),
                        retry_as: OutboxJob::revoke_sessions(),
                    });
                }
                let mut body = Map::new();
                if in_federated {
                    // Graph refuses passwordProfile for federated users: only what else a new
                    // password means is sent, lifting an expiry block.
                    if work.binding.account_enabled != Some(i64::from(enabled)) {
                        body.insert("accountEnabled".into(), Value::Bool(enabled));
                    }
                    return patch(GraphCall::SetAccountEnabled, body, parts);
                }
                let Some(sealed) = work.job.secret_enc.as_deref() else {
                    // No password left to send (a failed change queued again has its sealed
                    // password erased): the sign-out it asked for still goes.
                    return if parts.is_empty() {
                        nothing()
                    } else {
                        Plan::Send(UpdatePlan {
                            main: None,
                            parts,
                            effect: JobEffect::Nothing,
                        })
                    };
                };
                let password = match self.sealer.open(sealed, OUTBOX_PASSWORD_CONTEXT) {
                    Ok(p) => p,
                    Err(e) => {
                        return Plan::Settled(Outcome::Fail(format!(
                            "the queued password cannot be decrypted ({e}); set the password again"
                        )))
                    }
                };
                body.insert(
                    "passwordProfile".into(),
                    json!({
                        "password": password.expose_secret(),
                        "forceChangePasswordNextSignIn": false,
                    }),
                );
                // A new password here lifts an expiry block.
                body.insert("accountEnabled".into(), Value::Bool(enabled));
                patch(GraphCall::SetPassword, body, parts)
            }
            // Not bound (any more): nothing to send.
            _ => nothing(),
        }
    }

    /// A job whose M365 user is gone (deleted in Microsoft 365): idbridge keeps the user as it
    /// is and marks the binding failed; binding again creates the M365 user again.
    async fn binding_lost(&self, work: &Work, graph_message: &str) -> Outcome {
        let message = format!(
            "the Microsoft 365 user {} no longer exists (deleted in Microsoft 365?); bind the user again to \
             create it. {graph_message}",
            work.binding.user_principal_name
        );
        if let Err(err) = self.store.mark_binding_lost(&work.user.id, &message).await {
            tracing::warn!(%err, "could not mark a lost binding");
        }
        Outcome::Fail(message)
    }
}

/// The attribute names an `attributes` job carries.
fn job_fields(work: &Work) -> Vec<String> {
    work.job
        .fields
        .as_deref()
        .and_then(|f| serde_json::from_str(f).ok())
        .unwrap_or_default()
}

/// How a planned job's main request ended, from Graph's answer (`None`: nothing was sent).
fn main_answer(plan: Plan<UpdatePlan>, answer: Option<Answer>) -> MainAnswer {
    let plan = match plan {
        Plan::Send(plan) => plan,
        Plan::Settled(outcome) => return MainAnswer::Ended(outcome),
    };
    let call = plan
        .main
        .as_ref()
        .map_or(GraphCall::UpdateUser, |(call, _)| *call);
    match answer {
        None | Some(Ok(_)) => MainAnswer::Through(plan),
        Some(Err(error)) if error.is_not_found() => MainAnswer::Lost(error.explain(call)),
        Some(Err(error)) => MainAnswer::Ended(error.outcome(call)),
    }
}
