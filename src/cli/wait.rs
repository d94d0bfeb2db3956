//! `m365 bind|unbind --wait`: follows the outbox jobs a command just queued until Microsoft 365
//! has the change, a job fails, or the timeout passes.
//!
//! The command line only writes the database; the running server's worker delivers the jobs.
//! So this reads the outbox and the binding (through the store's public reads) as the worker
//! moves them: a delivered job is deleted, a refused one stays `failed` with Graph's message.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use super::CliError;
use crate::binding::BindingState;
use crate::directory::{Directory, DirectoryError};
use crate::m365::sync::BindReport;
use crate::store::{BindingRow, OutboxRow, Store, StoreError};

/// Which change is awaited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Change {
    /// A `bind` job: done when the binding is `bound` and the job is gone.
    Bind,
    /// An `account` job (the M365 account blocked): done when the job is gone.
    Unbind,
}

impl Change {
    fn job_kind(self) -> &'static str {
        match self {
            Change::Bind => "bind",
            Change::Unbind => "account",
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Change::Bind => "bind",
            Change::Unbind => "unbind",
        }
    }

    fn done_word(self) -> &'static str {
        match self {
            Change::Bind => "bound",
            Change::Unbind => "blocked in Microsoft 365",
        }
    }
}

/// One user whose job is followed.
#[derive(Debug, Clone)]
pub(super) struct Watch {
    username: String,
    user_id: String,
    /// The followed job is the user's job of the change's kind created at or after this (ms):
    /// the one this command queued, or the one already pending before it.
    since_ms: i64,
}

/// What to follow, and what was settled before waiting (already bound, unknown user …).
#[derive(Debug, Default)]
pub(super) struct Plan {
    watches: Vec<Watch>,
    /// (user, note) of users that need nothing.
    already: Vec<(String, String)>,
    /// (user, why) of users that cannot get the change.
    refused: Vec<(String, String)>,
}

/// How to wait.
#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub timeout: Duration,
    /// The server worker's `m365.sync.poll_interval_ms`: how long it may take to notice a job.
    pub poll_interval_ms: u64,
    /// Print a progress line on stderr (a terminal).
    pub progress: bool,
}

/// Where one followed job is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Progress {
    /// Not delivered yet; `attempts` and `last_error` change when the worker tries it.
    Pending {
        attempts: i64,
        last_error: Option<String>,
    },
    Done,
    /// Refused for good, with the message (Graph's, when Graph refused).
    Failed(String),
}

/// Turns `report` (made at `queued_at`) into the jobs to follow.
pub(super) async fn plan(
    directory: &Directory,
    change: Change,
    report: &BindReport,
    queued_at: DateTime<Utc>,
) -> Result<Plan, DirectoryError> {
    let mut plan = Plan::default();
    let kind = change.job_kind();
    for username in &report.queued {
        let user = directory.get_user(username).await?;
        plan.watches.push(Watch {
            username: user.username,
            user_id: user.id,
            since_ms: queued_at.timestamp_millis(),
        });
    }
    for (key, why) in &report.skipped {
        let user = match directory.get_user(key).await {
            Ok(u) => u,
            Err(DirectoryError::NotFound(_)) => {
                plan.refused.push((key.clone(), why.clone()));
                continue;
            }
            Err(e) => return Err(e),
        };
        let state = user.m365.as_ref().map(|b| b.state);
        match (change, state) {
            (Change::Bind, Some(BindingState::Bound)) => {
                plan.already.push((user.username, why.clone()))
            }
            // Queued before this command: follow that job instead.
            (Change::Bind, Some(BindingState::Pending)) => {
                let queued = directory.store().queued_jobs(&user.id).await?;
                let since_ms = queued
                    .iter()
                    .find(|j| j.kind == kind)
                    .map_or(0, |j| j.created_at);
                plan.watches.push(Watch {
                    username: user.username,
                    user_id: user.id,
                    since_ms,
                });
            }
            (Change::Unbind, None | Some(BindingState::Unbound)) => {
                plan.already.push((user.username, why.clone()))
            }
            _ => plan.refused.push((user.username, why.clone())),
        }
    }
    Ok(plan)
}

/// Where `watch`'s job is, from the user's queued and failed jobs and binding.
fn progress(
    change: Change,
    watch: &Watch,
    queued: &[OutboxRow],
    failed: &[OutboxRow],
    binding: Option<&BindingRow>,
) -> Progress {
    let ours = |j: &&OutboxRow| j.kind == change.job_kind() && j.created_at >= watch.since_ms;
    if let Some(job) = queued.iter().find(ours) {
        return Progress::Pending {
            attempts: job.attempts,
            last_error: job.last_error.clone(),
        };
    }
    if let Some(job) = failed.iter().find(ours) {
        return Progress::Failed(
            job.last_error
                .clone()
                .unwrap_or_else(|| "failed (no message recorded)".into()),
        );
    }
    if change == Change::Unbind {
        return Progress::Done;
    }
    match binding {
        Some(b) if b.state == BindingState::Bound => Progress::Done,
        // Delivery and the binding change commit together, so this is a new bind by
        // somebody else; its job shows up on the next look.
        Some(b) if b.state == BindingState::Pending => Progress::Pending {
            attempts: 0,
            last_error: None,
        },
        Some(b) if b.state == BindingState::Failed => Progress::Failed(
            b.last_error
                .clone()
                .unwrap_or_else(|| "the binding failed (no message recorded)".into()),
        ),
        _ => Progress::Failed("unbound while waiting".into()),
    }
}

async fn look(store: &Store, change: Change, watch: &Watch) -> Result<Progress, StoreError> {
    let queued = store.queued_jobs(&watch.user_id).await?;
    let failed = store.failed_jobs(Some(&watch.user_id)).await?;
    let binding = match change {
        Change::Bind => store.binding(&watch.user_id).await?,
        Change::Unbind => None,
    };
    Ok(progress(change, watch, &queued, &failed, binding.as_ref()))
}

/// Follows `plan` until every job is delivered (Ok), or fails with one line naming what failed
/// or is still pending. Each user's outcome is printed to stdout as it settles.
pub(super) async fn follow(
    store: &Store,
    change: Change,
    plan: Plan,
    settings: &Settings,
) -> Result<(), CliError> {
    let started = Instant::now();
    let deadline = started + settings.timeout;
    // Reading a little faster than the worker polls keeps the wait short without load.
    let every = Duration::from_millis((settings.poll_interval_ms / 2).clamp(50, 500));
    // Nothing tried for this long while the worker polls every `poll_interval_ms`: no worker.
    let stall_after = Duration::from_millis(settings.poll_interval_ms.saturating_mul(3))
        .max(Duration::from_secs(10));
    let total = plan.watches.len() + plan.already.len() + plan.refused.len();
    for (user, note) in &plan.already {
        println!("{user}\t{note}");
    }
    let mut failed: Vec<String> = Vec::new();
    for (user, why) in &plan.refused {
        println!("{user}\tfailed: {why}");
        failed.push(user.clone());
    }
    let mut done = plan.already.len();
    let mut pending: BTreeMap<String, (Watch, Progress)> = plan
        .watches
        .into_iter()
        .map(|w| {
            let p = Progress::Pending {
                attempts: 0,
                last_error: None,
            };
            (w.username.clone(), (w, p))
        })
        .collect();
    let mut any_tried = false;
    let mut warned = false;
    loop {
        let mut settled = Vec::new();
        for (name, (watch, last)) in pending.iter_mut() {
            let now = look(store, change, watch)
                .await
                .map_err(|e| CliError(e.to_string()))?;
            match &now {
                Progress::Done => {
                    println!("{name}\t{}", change.done_word());
                    done += 1;
                    settled.push(name.clone());
                }
                Progress::Failed(why) => {
                    println!("{name}\tfailed: {why}");
                    failed.push(name.clone());
                    settled.push(name.clone());
                }
                Progress::Pending {
                    attempts,
                    last_error,
                } => {
                    if *attempts > 0 || last_error.is_some() {
                        any_tried = true;
                    }
                    if let (Some(e), true) = (last_error, &now != last) {
                        clear_progress(settings);
                        eprintln!(
                            "{name}: not in Microsoft 365 yet (attempt {attempts}, will retry): {e}"
                        );
                    }
                }
            }
            *last = now;
        }
        if !settled.is_empty() {
            any_tried = true;
        }
        for name in settled {
            pending.remove(&name);
        }
        if pending.is_empty() {
            break;
        }
        let elapsed = started.elapsed();
        if settings.progress {
            eprint!(
                "\rwaiting for Microsoft 365: {done} of {total} done, {} failed, {} pending ({} s) ",
                failed.len(),
                pending.len(),
                elapsed.as_secs()
            );
            let _ = std::io::stderr().flush();
        }
        if !any_tried && !warned && elapsed >= stall_after {
            warned = true;
            clear_progress(settings);
            eprintln!(
                "nothing has been delivered for {} s: is `idbridge serve` running? Its worker sends the queued changes to Microsoft 365.",
                elapsed.as_secs()
            );
        }
        if Instant::now() >= deadline {
            clear_progress(settings);
            for name in pending.keys() {
                println!("{name}\tstill pending");
            }
            let names: Vec<&str> = pending.keys().map(String::as_str).collect();
            let mut message = format!(
                "timed out after {} s: {} of {total} not {} yet ({}); the server may still deliver them, check with `idbridge m365 sync USER`",
                settings.timeout.as_secs(),
                names.len(),
                change.done_word(),
                names.join(", ")
            );
            if !failed.is_empty() {
                message.push_str(&format!("; failed: {}", failed.join(", ")));
            }
            return Err(CliError(message));
        }
        tokio::time::sleep(every.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
    clear_progress(settings);
    if failed.is_empty() {
        println!("{}: {done} of {total} done", change.verb());
        Ok(())
    } else {
        Err(CliError(format!(
            "{} of {total} failed ({}); fix what the messages say, then run `idbridge m365 {} USER` again (details: `idbridge m365 sync USER`)",
            failed.len(),
            failed.join(", "),
            match change {
                Change::Bind => "bind",
                Change::Unbind => "sync --retry",
            }
        )))
    }
}

/// Clears the progress line so the next message starts at the left margin.
fn clear_progress(settings: &Settings) {
    if settings.progress {
        eprint!("\r\x1b[2K");
        let _ = std::io::stderr().flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(kind: &str, created_at: i64, attempts: i64, error: Option<&str>) -> OutboxRow {
        OutboxRow {
            id: created_at,
            user_id: "u1".into(),
            kind: kind.into(),
            fields: None,
            secret_enc: None,
            state: "queued".into(),
            attempts,
            next_attempt_at: 0,
            last_error: error.map(String::from),
            created_at,
            lease_token: None,
        }
    }

    fn binding(state: &str, error: Option<&str>) -> BindingRow {
        BindingRow {
            user_id: "u1".into(),
            immutable_id: "id".into(),
            user_principal_name: "alice@contoso.com".into(),
            m365_object_id: None,
            state: BindingState::parse(state).unwrap(),
            bound_at: 0,
            last_sync_at: None,
            last_error: error.map(String::from),
            password_pushed: 0,
            account_enabled: None,
        }
    }

    fn watch() -> Watch {
        Watch {
            username: "alice".into(),
            user_id: "u1".into(),
            since_ms: 100,
        }
    }

    #[test]
    fn a_bind_is_done_only_when_its_job_is_gone_and_the_binding_is_bound() {
        let w = watch();
        let bound = binding("bound", None);
        let queued = [job("bind", 100, 1, Some("503"))];
        assert_eq!(
            progress(Change::Bind, &w, &queued, &[], Some(&bound)),
            Progress::Pending {
                attempts: 1,
                last_error: Some("503".into())
            }
        );
        assert_eq!(
            progress(Change::Bind, &w, &[], &[], Some(&bound)),
            Progress::Done
        );
        // An older failed bind (from before this command) is not ours.
        let old = [job("bind", 50, 3, Some("old"))];
        assert_eq!(
            progress(Change::Bind, &w, &[], &old, Some(&bound)),
            Progress::Done
        );
        let refused = [job("bind", 100, 1, Some("Graph: not a verified domain"))];
        assert_eq!(
            progress(
                Change::Bind,
                &w,
                &[],
                &refused,
                Some(&binding("failed", None))
            ),
            Progress::Failed("Graph: not a verified domain".into())
        );
        assert_eq!(
            progress(Change::Bind, &w, &[], &[], Some(&binding("unbound", None))),
            Progress::Failed("unbound while waiting".into())
        );
    }

    #[test]
    fn an_unbind_is_done_when_its_account_job_is_delivered() {
        let w = watch();
        let other = [job("attributes", 100, 0, None)];
        assert_eq!(
            progress(Change::Unbind, &w, &other, &[], None),
            Progress::Done
        );
        let queued = [job("account", 120, 0, None)];
        assert!(matches!(
            progress(Change::Unbind, &w, &queued, &[], None),
            Progress::Pending { .. }
        ));
    }
}
