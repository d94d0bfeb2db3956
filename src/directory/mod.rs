//! The user directory: users, passwords and the password policy. No HTTP here.

mod admins;
pub mod hasher;
mod password;
mod policy;
mod user;

pub use crate::attributes::{Attribute, AttributeSpec, AttributeValues, CATALOGUE};
pub use admins::{AdminAction, AdminReset, AdminRole, NewApiKey, API_KEY_PREFIX};
pub use password::{generate_password, hash_password, verify_password};
pub use policy::{PasswordPolicy, PolicyViolation, ENTRA_SYMBOLS};
pub use user::{
    millis_to_rfc3339, validate_email, validate_username, M365Binding, User, UserChanges, UserState,
};

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use std::sync::Arc;

use crate::binding::BindingState;
use crate::events::{kind, Actor, NewEvent};
use crate::secrets::SecretBox;
use crate::store::{LinkRow, OutboxJob, Store, StoreError, UserListQuery, UserWrite};

/// Why a directory operation was refused; each message tells the admin what to change.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("{field}: another user already has this {field}")]
    Duplicate { field: &'static str },
    #[error("manager: {0:?} is not a user in the directory")]
    UnknownManager(String),
    #[error("manager: a user cannot be their own manager")]
    SelfManager,
    #[error("no user {0:?} in the directory")]
    NotFound(String),
    #[error("password rejected: {0}")]
    Policy(#[from] PolicyViolation),
    #[error("user {0:?} is bound to Microsoft 365; unbind it before deleting it")]
    Bound(String),
    #[error("user {0:?} has changes still on their way to Microsoft 365; try again in a minute")]
    SyncPending(String),
    #[error("cannot seal the password for Microsoft 365: {0}")]
    Seal(String),
    #[error("nothing to change: name at least one attribute")]
    NoChanges,
    #[error("admin {0:?} already exists")]
    AdminExists(String),
    #[error("{0:?} is not a role; use admin or read_only")]
    UnknownRole(String),
    #[error("the API key name must be 1 to 64 characters")]
    ApiKeyName,
    #[error("no admin {0:?}")]
    NoAdmin(String),
    /// The change would leave no active admin with the role `admin`.
    #[error("{0:?} is the last active full admin; make another admin a full admin (or enable one) first, so someone can still change everything")]
    LastAdmin(String),
    /// Admins change other admins' accounts, not their own this way.
    #[error("you cannot {0} your own admin account; another full admin has to do it")]
    OwnAccount(&'static str),
    #[error("password hashing failed: {0}")]
    Hashing(String),
    /// Every password hashing worker is busy and the queue is full.
    #[error("too many sign-ins at once")]
    Busy,
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for DirectoryError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Conflict(field) => DirectoryError::Duplicate { field },
            other => DirectoryError::Store(other),
        }
    }
}

/// The directory service used by the CLI, the SSO login and (later) the console and API.
#[derive(Clone, Debug)]
pub struct Directory {
    store: Store,
    policy: PasswordPolicy,
    /// Seals passwords waiting in the outbox for Microsoft 365 (None: passwords are not pushed).
    sealer: Option<SecretBox>,
    /// Wakes the sync worker after a change to a bound user is committed.
    outbox_signal: Arc<tokio::sync::Notify>,
    /// Sign-in password checks made (tests prove a throttled attempt costs none).
    sign_in_checks: Arc<std::sync::atomic::AtomicU64>,
    /// Where argon2id runs: bounded threads and memory.
    hasher: hasher::HashPool,
}

/// Password checks that may wait for a hashing worker; more are refused as busy.
const HASH_QUEUE: usize = 64;

/// The sealing context of passwords in the outbox (authenticated data of the ciphertext).
pub const OUTBOX_PASSWORD_CONTEXT: &str = "m365_outbox.secret_enc";

/// A random identifier for new records: 32 hex characters.
pub fn new_record_id() -> String {
    crate::secrets::random_bytes::<16>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Who sets a password, which decides the idbridge sessions that end with the old one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordChange<'a> {
    /// An admin sets it (console, API, CLI): the user's idbridge sessions stay.
    AdminReset,
    /// The user, signed in at the portal, from the session with this hash (which stays; the
    /// user's other sessions end).
    SelfService { session_hash: &'a str },
    /// The user, through an emailed reset link: every idbridge session of the user ends.
    ResetLink,
    /// The user, during a sign-in, because the password expired or an admin asked for a change
    /// (the sign-in goes on and opens its session after it).
    AtSignIn,
}

impl<'a> PasswordChange<'a> {
    /// The `source` recorded in the event.
    pub fn source(self) -> &'static str {
        match self {
            PasswordChange::AdminReset => "admin",
            PasswordChange::SelfService { .. } => "portal",
            PasswordChange::ResetLink => "reset_link",
            PasswordChange::AtSignIn => "sign_in",
        }
    }

    fn sign_out(self) -> crate::store::SignOut<'a> {
        match self {
            PasswordChange::AdminReset | PasswordChange::AtSignIn => crate::store::SignOut::Nobody,
            PasswordChange::ResetLink => crate::store::SignOut::Everywhere,
            PasswordChange::SelfService { session_hash } => {
                crate::store::SignOut::ElsewhereThan(session_hash)
            }
        }
    }
}

/// A user created by an import from Microsoft 365.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedUser {
    pub id: String,
    pub username: String,
}

/// The `user_create` event of a new user.
fn creation_event(
    actor: &Actor,
    write: &UserWrite,
    password_set: bool,
    link: Option<&LinkRow>,
    now: DateTime<Utc>,
) -> NewEvent {
    NewEvent::new(now, actor, kind::USER_CREATE, Some(&write.username)).details(json!({
        "email": write.email,
        "passwordSet": password_set,
        "importedFrom": link.map(|l| l.m365_object_id.clone()),
    }))
}

impl Directory {
    pub fn new(store: Store, policy: PasswordPolicy) -> Self {
        Self {
            store,
            policy,
            sealer: None,
            outbox_signal: Arc::new(tokio::sync::Notify::new()),
            sign_in_checks: Arc::default(),
            hasher: hasher::HashPool::per_core(HASH_QUEUE),
        }
    }

    /// Replaces the password hashing pool (one thread per core by default) with `workers`
    /// threads (0: one per core) behind a queue of `queue` waiting checks.
    pub fn with_hash_pool(mut self, workers: usize, queue: usize) -> Self {
        self.hasher = if workers == 0 {
            hasher::HashPool::per_core(queue)
        } else {
            hasher::HashPool::start(workers, queue)
        };
        self
    }

    /// Enables password push to Microsoft 365: new passwords of bound users are sealed with
    /// `sealer` into the outbox.
    pub fn with_password_sealer(mut self, sealer: SecretBox) -> Self {
        self.sealer = Some(sealer);
        self
    }

    /// How many sign-in password checks (argon2 verifications) this directory has made.
    pub fn sign_in_checks(&self) -> u64 {
        self.sign_in_checks
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts one sign-in password check.
    fn count_sign_in_check(&self) {
        self.sign_in_checks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The signal the sync worker waits on.
    pub fn outbox_signal(&self) -> Arc<tokio::sync::Notify> {
        self.outbox_signal.clone()
    }

    fn wake_sync(&self) {
        self.outbox_signal.notify_one();
    }

    fn password_job(
        &self,
        password: &SecretString,
        end_sessions: bool,
    ) -> Result<Option<OutboxJob>, DirectoryError> {
        match &self.sealer {
            Some(sealer) => sealer
                .seal(password, OUTBOX_PASSWORD_CONTEXT)
                .map(|sealed| Some(OutboxJob::password(sealed, end_sessions)))
                .map_err(|e| DirectoryError::Seal(e.to_string())),
            None => Ok(None),
        }
    }

    /// Queues the user's password for Microsoft 365 if it has not reached it yet (seed 000:
    /// idbridge becomes the password authority at the user's next sign-in).
    pub async fn push_password_if_needed(
        &self,
        user: &User,
        password: &SecretString,
        now: DateTime<Utc>,
    ) -> Result<bool, DirectoryError> {
        // The binding comes with the user (one join), so most sign-ins cost no extra query.
        if user
            .m365
            .as_ref()
            .is_none_or(|b| !b.state.signs_in() || b.password_pushed)
        {
            return Ok(false);
        }
        if self.store.has_queued_password(&user.id).await? {
            return Ok(false);
        }
        let Some(job) = self.password_job(password, false)? else {
            return Ok(false);
        };
        self.store
            .queue_job_if_bound(&user.id, &job, now.timestamp_millis())
            .await?;
        self.wake_sync();
        Ok(true)
    }

    /// Writes attribute values read from Microsoft 365 (attributes whose direction is Import);
    /// nothing is queued back to Microsoft 365.
    pub async fn apply_imported(
        &self,
        user: &User,
        changes: &UserChanges,
        now: DateTime<Utc>,
    ) -> Result<(), DirectoryError> {
        let mut write = user.to_write();
        changes.apply(&mut write)?;
        if changes.get(Attribute::Manager).is_some() {
            write.manager_id = self.resolve_manager(changes, &write.id).await?;
        }
        let event = NewEvent::new(now, &Actor::System, kind::USER_UPDATE, Some(&user.username))
            .details(json!({"changed": changes.changed_fields(), "source": "m365"}));
        self.store
            .update_user(&write, now.timestamp_millis(), &event, &[])
            .await?;
        Ok(())
    }

    /// The password policy in force.
    pub fn policy(&self) -> &PasswordPolicy {
        &self.policy
    }

    /// The underlying store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Finds a user by id, username or email.
    pub async fn get_user(&self, key: &str) -> Result<User, DirectoryError> {
        match self.store.find_user(key).await? {
            Some(row) => User::from_row(row),
            None => Err(DirectoryError::NotFound(key.to_string())),
        }
    }

    /// Lists users, optionally filtered by a search text.
    pub async fn list_users(&self, query: &UserListQuery) -> Result<Vec<User>, DirectoryError> {
        self.store
            .list_users(query)
            .await?
            .into_iter()
            .map(User::from_row)
            .collect()
    }

    /// Creates a user; `username` and `email` are required. The password, if given, must pass
    /// the policy. Nothing is written when any check fails.
    pub async fn create_user(
        &self,
        actor: &Actor,
        changes: &UserChanges,
        password: Option<&SecretString>,
        now: DateTime<Utc>,
    ) -> Result<User, DirectoryError> {
        self.insert_user(actor, changes, password, now).await
    }

    /// Creates users imported from Microsoft 365, each linked to its M365 user, all in one
    /// transaction (so an interrupted import never leaves a user without its link). Returns one
    /// outcome per user, in order; a user failing a check, or whose username or email another
    /// user (stored before, or earlier in `users`) has, fails alone, as if they were created one
    /// by one. An `Err` is a store failure, and then nobody is created.
    pub async fn create_imported_users(
        &self,
        actor: &Actor,
        users: Vec<(UserChanges, LinkRow)>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Result<ImportedUser, DirectoryError>>, StoreError> {
        let mut outcomes: Vec<Option<Result<ImportedUser, DirectoryError>>> =
            Vec::with_capacity(users.len());
        let mut rows = Vec::with_capacity(users.len());
        for (changes, link) in users {
            match self.prepare_user(&changes).await {
                Ok(write) => {
                    let link = LinkRow {
                        user_id: write.id.clone(),
                        ..link
                    };
                    let event = creation_event(actor, &write, false, Some(&link), now);
                    rows.push((write, link, event));
                    outcomes.push(None);
                }
                Err(DirectoryError::Store(e)) => return Err(e),
                Err(e) => outcomes.push(Some(Err(e))),
            }
        }
        let stored = self
            .store
            .insert_imported_users(&rows, now.timestamp_millis())
            .await?;
        let mut stored = stored.into_iter().zip(rows);
        let mut out = Vec::with_capacity(outcomes.len());
        for outcome in outcomes {
            out.push(match outcome {
                Some(failed) => failed,
                None => match stored.next() {
                    Some((Ok(()), (write, _, _))) => Ok(ImportedUser {
                        id: write.id,
                        username: write.username,
                    }),
                    Some((Err(e), _)) => Err(e.into()),
                    None => {
                        return Err(StoreError::Corrupt(
                            "the store reported fewer outcomes than users inserted".into(),
                        ))
                    }
                },
            });
        }
        Ok(out)
    }

    async fn insert_user(
        &self,
        actor: &Actor,
        changes: &UserChanges,
        password: Option<&SecretString>,
        now: DateTime<Utc>,
    ) -> Result<User, DirectoryError> {
        let write = self.prepare_user(changes).await?;
        let hash = match password {
            Some(pw) => {
                self.policy.check(pw.expose_secret(), &write.username)?;
                Some(self.hash(pw).await?)
            }
            None => None,
        };
        let event = creation_event(actor, &write, hash.is_some(), None, now);
        self.store
            .insert_user(
                &write,
                hash.as_deref(),
                None,
                now.timestamp_millis(),
                &event,
            )
            .await?;
        self.get_user(&write.id).await
    }

    /// A new user's stored attributes from `changes`, checked; `username` and `email` are
    /// required.
    async fn prepare_user(&self, changes: &UserChanges) -> Result<UserWrite, DirectoryError> {
        let username = changes.get(Attribute::Username).unwrap_or_default();
        if username.trim().is_empty() {
            return Err(DirectoryError::Invalid {
                field: "username",
                reason: "is required".into(),
            });
        }
        if changes
            .get(Attribute::Email)
            .unwrap_or_default()
            .trim()
            .is_empty()
        {
            return Err(DirectoryError::Invalid {
                field: "email",
                reason:
                    "is required (the company email becomes the Microsoft 365 userPrincipalName)"
                        .into(),
            });
        }
        let mut write = UserWrite {
            id: new_record_id(),
            state: UserState::Active.as_str().into(),
            ..UserWrite::default()
        };
        changes.apply(&mut write)?;
        write.manager_id = self.resolve_manager(changes, &write.id).await?;
        Ok(write)
    }

    /// Changes attributes of a user.
    pub async fn update_user(
        &self,
        actor: &Actor,
        key: &str,
        changes: &UserChanges,
        now: DateTime<Utc>,
    ) -> Result<User, DirectoryError> {
        if changes.is_empty() {
            return Err(DirectoryError::NoChanges);
        }
        let user = self.get_user(key).await?;
        let mut write = user.to_write();
        changes.apply(&mut write)?;
        if changes.get(Attribute::Manager).is_some() {
            write.manager_id = self.resolve_manager(changes, &write.id).await?;
        }
        let changed = changes.changed_fields();
        let event = NewEvent::new(now, actor, kind::USER_UPDATE, Some(&user.username))
            .details(json!({"changed": changed}));
        // The username stays here; every other attribute may be exported (the worker checks
        // the export selection when it delivers).
        let synced: Vec<&str> = changed.into_iter().filter(|f| *f != "username").collect();
        let jobs: Vec<OutboxJob> = if synced.is_empty() {
            Vec::new()
        } else {
            vec![OutboxJob::attributes(&synced)]
        };
        self.store
            .update_user(&write, now.timestamp_millis(), &event, &jobs)
            .await?;
        if !jobs.is_empty() {
            self.wake_sync();
        }
        self.get_user(&user.id).await
    }

    /// Suspends or re-activates a user; suspension also ends their sign-in sessions.
    pub async fn set_state(
        &self,
        actor: &Actor,
        key: &str,
        state: UserState,
        now: DateTime<Utc>,
    ) -> Result<User, DirectoryError> {
        let user = self.get_user(key).await?;
        let mut write = user.to_write();
        write.state = state.as_str().into();
        let event_type = match state {
            UserState::Active => kind::USER_ACTIVATE,
            UserState::Suspended => kind::USER_SUSPEND,
        };
        let event = NewEvent::new(now, actor, event_type, Some(&user.username));
        self.store
            .update_user(
                &write,
                now.timestamp_millis(),
                &event,
                &[OutboxJob::account()],
            )
            .await?;
        self.wake_sync();
        self.get_user(&user.id).await
    }

    /// Sets a user's password after checking the policy and the history (an admin's reset:
    /// console, API or CLI).
    ///
    /// A refusal is recorded as an event (with the rule, never the password).
    pub async fn set_password(
        &self,
        actor: &Actor,
        key: &str,
        password: &SecretString,
        now: DateTime<Utc>,
    ) -> Result<(), DirectoryError> {
        self.set_password_by(actor, key, password, PasswordChange::AdminReset, now)
            .await
    }

    /// Sets a user's password for `how`: the same checks, the same push to Microsoft 365 (which
    /// ends the user's Microsoft 365 sessions, seed 003) and the same end of every reset link,
    /// whoever changes it; only which idbridge sessions end differs.
    pub async fn set_password_by(
        &self,
        actor: &Actor,
        key: &str,
        password: &SecretString,
        how: PasswordChange<'_>,
        now: DateTime<Utc>,
    ) -> Result<(), DirectoryError> {
        let user = self.get_user(key).await?;
        if let Err(violation) = self.check_new_password(&user, password).await {
            let event = NewEvent::new(
                now,
                actor,
                kind::USER_PASSWORD_REJECTED,
                Some(&user.username),
            )
            .details(json!({"reason": violation.to_string(), "source": how.source()}));
            self.store.record_event(&event).await?;
            return Err(violation);
        }
        let hash = self.hash(password).await?;
        let event = NewEvent::new(now, actor, kind::USER_PASSWORD_SET, Some(&user.username))
            .details(json!({"source": how.source()}));
        // Seed 003: a new password here signs the user out of Microsoft 365.
        let job = self.password_job(password, true)?;
        self.store
            .set_password(
                &user.id,
                &hash,
                i64::from(self.policy.history.max(1)),
                now.timestamp_millis(),
                &event,
                job.as_ref(),
                how.sign_out(),
            )
            .await?;
        self.wake_sync();
        Ok(())
    }

    /// Makes the user choose a new password at the next sign-in (before any assertion).
    pub async fn require_password_change(
        &self,
        actor: &Actor,
        key: &str,
        now: DateTime<Utc>,
    ) -> Result<User, DirectoryError> {
        let user = self.get_user(key).await?;
        let event = NewEvent::new(
            now,
            actor,
            kind::USER_PASSWORD_CHANGE_REQUIRED,
            Some(&user.username),
        );
        self.store
            .set_must_change_password(&user.id, true, Some(&event))
            .await?;
        self.get_user(&user.id).await
    }

    pub(crate) async fn check_new_password(
        &self,
        user: &User,
        password: &SecretString,
    ) -> Result<(), DirectoryError> {
        self.policy
            .check(password.expose_secret(), &user.username)?;
        if self.policy.history > 0 {
            let history = self
                .store
                .password_history(&user.id, i64::from(self.policy.history))
                .await?;
            let reused = self.hasher.verify_any(password, history).await?;
            if reused {
                return Err(PolicyViolation::Reused(self.policy.history).into());
            }
        }
        Ok(())
    }

    /// Deletes a user who is not bound to Microsoft 365.
    pub async fn delete_user(
        &self,
        actor: &Actor,
        key: &str,
        now: DateTime<Utc>,
    ) -> Result<(), DirectoryError> {
        let user = self.get_user(key).await?;
        if user
            .m365
            .as_ref()
            .is_some_and(|b| b.state != BindingState::Unbound)
        {
            return Err(DirectoryError::Bound(user.username));
        }
        if self.store.has_queued_jobs(&user.id).await? {
            return Err(DirectoryError::SyncPending(user.username));
        }
        let event = NewEvent::new(now, actor, kind::USER_DELETE, Some(&user.username))
            .details(json!({"email": user.email}));
        self.store.delete_user(&user.id, &event).await?;
        Ok(())
    }

    /// Checks a username-or-email and password; `None` when they do not match an account with
    /// a password (the caller must not reveal which part was wrong).
    pub async fn authenticate(
        &self,
        login: &str,
        password: &SecretString,
    ) -> Result<Option<User>, DirectoryError> {
        let user = match self.store.find_user(login.trim()).await? {
            Some(row) => Some(User::from_row(row)?),
            None => None,
        };
        let hash = user.as_ref().and_then(|u| u.password_hash.clone());
        self.count_sign_in_check();
        let matched = self.check_password(password, hash.as_deref()).await?;
        Ok(if matched { user } else { None })
    }

    /// Whether the user's password has expired under the policy at `now`.
    pub fn password_expired(&self, user: &User, now: DateTime<Utc>) -> bool {
        self.policy
            .is_expired(user.password_changed_at, now.timestamp_millis())
    }

    async fn resolve_manager(
        &self,
        changes: &UserChanges,
        own_id: &str,
    ) -> Result<Option<String>, DirectoryError> {
        let Some(name) = changes.get(Attribute::Manager).map(str::trim) else {
            return Ok(None);
        };
        if name.is_empty() {
            return Ok(None);
        }
        match self.store.find_user(name).await? {
            Some(m) if m.id == own_id => Err(DirectoryError::SelfManager),
            Some(m) => Ok(Some(m.id)),
            None => Err(DirectoryError::UnknownManager(name.to_string())),
        }
    }

    pub(crate) async fn hash(&self, password: &SecretString) -> Result<String, DirectoryError> {
        Ok(self.hasher.hash(password).await?)
    }

    /// Whether `password` matches `hash`; without a hash (no such account) a dummy hash is
    /// checked all the same, so timing does not reveal which names exist.
    pub(crate) async fn check_password(
        &self,
        password: &SecretString,
        hash: Option<&str>,
    ) -> Result<bool, DirectoryError> {
        match hash {
            Some(h) => Ok(self.hasher.verify(password, h).await?),
            None => {
                let _ = self.hasher.verify(password, dummy_hash()).await?;
                Ok(false)
            }
        }
    }
}

impl From<hasher::HashError> for DirectoryError {
    fn from(err: hasher::HashError) -> Self {
        match err {
            hasher::HashError::Busy => DirectoryError::Busy,
            other => DirectoryError::Hashing(other.to_string()),
        }
    }
}

/// A valid argon2id hash of a random string, computed once, for constant-time misses.
pub(crate) fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| hash_password(&generate_password()).unwrap_or_default())
}
