//! WebAuthn passkeys (W3C Web Authentication Level 3, through webauthn-rs): registration of
//! one or more authenticators per user, their use as a second factor of a parked sign-in, and
//! passwordless sign-in with a discoverable credential.
//!
//! Nothing here knows HTTP. Each ceremony's state (the challenge, the allowed credentials)
//! stays in the database under the hash of a random token the browser holds: any node can
//! finish a ceremony another node started, and a ceremony is deleted when it is finished, so it
//! is used once (webauthn-rs warns that state kept by the client lets an assertion be replayed).
//! Time is a parameter.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use serde_json::json;
use webauthn_rs::prelude::{
    DiscoverableAuthentication, DiscoverableKey, Passkey, PasskeyAuthentication,
    PasskeyRegistration, PublicKeyCredential, RegisterPublicKeyCredential, Url, Uuid, Webauthn,
    WebauthnBuilder, WebauthnError,
};

use crate::config::Config;
use crate::directory::{Directory, DirectoryError, User};
use crate::events::{kind, Actor, NewEvent};
use crate::secrets::{new_token, token_hash};
use crate::store::{CeremonyRow, PasskeyRow, Store, StoreError};

/// How long a ceremony may take: the browser's own prompt times out after 5 minutes
/// (webauthn-rs `DEFAULT_AUTHENTICATOR_TIMEOUT`, the spec's recommended range).
const CEREMONY_MINUTES: i64 = 5;

/// Longest passkey label, in characters.
pub const LABEL_MAX_CHARS: usize = 64;

/// What a ceremony was started for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CeremonyKind {
    /// Adding a passkey to a signed-in user.
    Register,
    /// A passkey as the second factor of a parked sign-in whose password was checked.
    SecondFactor,
    /// A discoverable passkey as the only factor of a parked sign-in (the user is not known
    /// until the authenticator names them).
    Passwordless,
}

impl CeremonyKind {
    /// Stable name, stored and recorded in events.
    pub fn as_str(self) -> &'static str {
        match self {
            CeremonyKind::Register => "register",
            CeremonyKind::SecondFactor => "second_factor",
            CeremonyKind::Passwordless => "passwordless",
        }
    }
}

/// Which sign-in an authentication ceremony belongs to.
#[derive(Debug, Clone, Copy)]
pub enum SignIn<'a> {
    /// The parked sign-in (its pending token) of a user who passed the password.
    SecondFactor { pending: &'a str, user_id: &'a str },
    /// A parked sign-in with no user yet.
    Passwordless { pending: &'a str },
}

impl<'a> SignIn<'a> {
    /// The ceremony of a parked sign-in: a second factor once a user passed the password,
    /// passwordless before.
    pub fn of(pending: &'a str, user_id: Option<&'a str>) -> Self {
        match user_id {
            Some(user_id) => SignIn::SecondFactor { pending, user_id },
            None => SignIn::Passwordless { pending },
        }
    }

    fn kind(&self) -> CeremonyKind {
        match self {
            SignIn::SecondFactor { .. } => CeremonyKind::SecondFactor,
            SignIn::Passwordless { .. } => CeremonyKind::Passwordless,
        }
    }

    fn pending(&self) -> &str {
        match self {
            SignIn::SecondFactor { pending, .. } | SignIn::Passwordless { pending } => pending,
        }
    }

    fn user_id(&self) -> Option<&str> {
        match self {
            SignIn::SecondFactor { user_id, .. } => Some(user_id),
            SignIn::Passwordless { .. } => None,
        }
    }
}

/// The browser's answer to a registration ceremony.
#[derive(Debug, Clone, Copy)]
pub struct RegistrationAnswer<'a> {
    /// The ceremony's token from [`Passkeys::start_registration`].
    pub ceremony: &'a str,
    /// The name the user gave the passkey.
    pub label: &'a str,
    /// What `navigator.credentials.create()` returned.
    pub response: &'a RegisterPublicKeyCredential,
}

/// Where a passkey is being added.
#[derive(Debug, Clone, Copy)]
pub enum AddedBy<'a> {
    /// A signed-in user's session; `passed_mfa` when the session passed a second factor.
    Session { passed_mfa: bool },
    /// The enrolment step of a parked sign-in (its pending token) whose password passed.
    SignIn { pending: &'a str },
}

impl AddedBy<'_> {
    fn pending(&self) -> Option<&str> {
        match self {
            AddedBy::Session { .. } => None,
            AddedBy::SignIn { pending } => Some(pending),
        }
    }
}

/// Why a passkey ceremony was refused; each is recorded as an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No such ceremony: never started, or already finished once (a replay).
    CeremonyUnknown,
    /// The ceremony took longer than its window.
    CeremonyExpired,
    /// The ceremony was started for another user, sign-in or purpose.
    CeremonyMismatch,
    /// The assertion was made with a credential of another user than the sign-in's.
    AnotherUser,
    /// The assertion names a credential idbridge does not know.
    UnknownCredential,
    /// webauthn-rs refused the response: wrong origin, wrong challenge, bad signature, no
    /// user verification (its error names which).
    Verification(String),
    /// The signature counter did not go up: the credential's key may have been copied
    /// (WebAuthn §7.2 step 21).
    ClonedAuthenticator,
    /// The authenticator's credential is registered already.
    AlreadyRegistered,
}

impl Refusal {
    /// Stable code recorded in events and answered to scripts.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::CeremonyUnknown => "ceremony_unknown_or_used",
            Refusal::CeremonyExpired => "ceremony_expired",
            Refusal::CeremonyMismatch => "ceremony_mismatch",
            Refusal::AnotherUser => "another_user",
            Refusal::UnknownCredential => "unknown_credential",
            Refusal::Verification(_) => "verification_failed",
            Refusal::ClonedAuthenticator => "cloned_authenticator",
            Refusal::AlreadyRegistered => "already_registered",
        }
    }

    /// What to tell the user.
    pub fn message(&self) -> &'static str {
        match self {
            Refusal::CeremonyUnknown => {
                "This passkey request was already used or is unknown. Start again."
            }
            Refusal::CeremonyExpired => "This passkey request has expired. Start again.",
            Refusal::CeremonyMismatch => {
                "This passkey request belongs to another sign-in. Start again."
            }
            Refusal::AnotherUser => "This passkey belongs to another account.",
            Refusal::UnknownCredential => "This passkey is not registered with idbridge.",
            Refusal::Verification(_) => {
                "The passkey's answer could not be verified for this site. Start again."
            }
            Refusal::ClonedAuthenticator => {
                "This passkey was refused: its signature counter went back, which may mean it was copied. Ask your IT administrator."
            }
            Refusal::AlreadyRegistered => "This passkey is registered already.",
        }
    }
}

/// Failures of the passkey service.
#[derive(Debug, thiserror::Error)]
pub enum PasskeyError {
    /// A ceremony refused for a security reason (already recorded as an event).
    #[error("passkey refused: {}", .0.code())]
    Refused(Refusal),
    /// The user has a second factor but the session did not pass one (or, during a sign-in,
    /// the user is past enrolment).
    #[error("sign out and sign in again with your second factor, then add the passkey")]
    SecondFactorFirst,
    /// The label is empty or too long.
    #[error("give the passkey a name of 1 to {LABEL_MAX_CHARS} characters")]
    BadLabel,
    /// Passwordless sign-in is switched off (`[mfa] passwordless`).
    #[error("sign-in with a passkey alone is not enabled")]
    PasswordlessDisabled,
    /// The base URL cannot be a WebAuthn relying party (see [`Passkeys::new`]).
    #[error("passkeys need idbridge's address (base_url) to be https with a host name, or http://localhost")]
    Unavailable,
    /// The user has no passkey to sign in with.
    #[error("no passkey is registered for this account")]
    NoPasskeys,
    /// webauthn-rs could not start a ceremony (a configuration or internal problem).
    #[error("webauthn: {0}")]
    Webauthn(WebauthnError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored passkey data is invalid: {0}")]
    Corrupt(String),
}

impl From<DirectoryError> for PasskeyError {
    fn from(err: DirectoryError) -> Self {
        match err {
            DirectoryError::Store(e) => PasskeyError::Store(e),
            other => PasskeyError::Corrupt(other.to_string()),
        }
    }
}

/// A ceremony's challenge for the browser: the token to send back with the answer, and the
/// options for `navigator.credentials.create()` / `.get()` (`{"publicKey": …}`).
#[derive(Debug, Clone)]
pub struct Challenge {
    pub ceremony: String,
    pub options: serde_json::Value,
}

/// A registered passkey as the user sees it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PasskeySummary {
    pub id: String,
    pub label: String,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms; `None` until first used to sign in.
    pub last_used_at: Option<i64>,
}

impl From<PasskeyRow> for PasskeySummary {
    fn from(row: PasskeyRow) -> Self {
        Self {
            id: row.id,
            label: row.label,
            created_at: row.created_at,
            last_used_at: row.last_used_at,
        }
    }
}

/// A finished sign-in ceremony: who signed in, with which passkey.
#[derive(Debug, Clone)]
pub struct Verified {
    pub user: User,
    pub passkey_id: String,
}

/// The passkey service.
#[derive(Debug)]
pub struct Passkeys {
    /// `None` when the base URL cannot be a WebAuthn relying party.
    webauthn: Option<Webauthn>,
    /// `base_url`'s origin (scheme, host, port), what browsers send as `Origin`.
    origin: String,
    store: Store,
    directory: Directory,
    passwordless: bool,
}

impl Passkeys {
    /// Builds the relying party from the configuration: its ID is the host of `base_url`, its
    /// origin `base_url` itself (WebAuthn §5.1.4.1: the RP ID is a registrable suffix of the
    /// origin's host). Browsers allow WebAuthn only in a secure context (https, or
    /// `http://localhost`) and refuse IP addresses as RP IDs, so with any other `base_url`
    /// (such as the default `http://127.0.0.1:8080`) idbridge starts without passkeys and says
    /// why.
    pub fn new(config: &Config, store: Store, directory: Directory) -> Self {
        let webauthn = relying_party(&config.base_url);
        if let Err(problem) = &webauthn {
            tracing::warn!(
                base_url = %config.base_url,
                %problem,
                "passkeys are off: set base_url to the https address (a host name) users reach idbridge at"
            );
        }
        let origin = Url::parse(&config.base_url)
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_default();
        Self {
            passwordless: config.mfa.passwordless && webauthn.is_ok(),
            origin,
            webauthn: webauthn.ok(),
            store,
            directory,
        }
    }

    /// The relying party, or why passkeys cannot work at this base URL.
    fn rp(&self) -> Result<&Webauthn, PasskeyError> {
        self.webauthn.as_ref().ok_or(PasskeyError::Unavailable)
    }

    /// The origin of idbridge's pages (`https://host[:port]`).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Whether passkeys can be used at all (see [`Passkeys::new`]).
    pub fn available(&self) -> bool {
        self.webauthn.is_some()
    }

    /// Whether a passkey alone may sign a user in (`[mfa] passwordless`).
    pub fn passwordless(&self) -> bool {
        self.passwordless
    }

    /// A user's passkeys, oldest first.
    pub async fn list(&self, user_id: &str) -> Result<Vec<PasskeySummary>, PasskeyError> {
        Ok(self
            .store
            .list_passkeys(user_id)
            .await?
            .into_iter()
            .map(PasskeySummary::from)
            .collect())
    }

    /// Whether the user has at least one passkey (the second-factor page offers it then).
    pub async fn has_passkey(&self, user_id: &str) -> Result<bool, PasskeyError> {
        Ok(!self.store.list_passkeys(user_id).await?.is_empty())
    }

    /// Starts adding a passkey to `user`; the user's existing credentials are excluded, so an
    /// authenticator is not registered twice.
    ///
    /// A user who has a second factor adds another only from a session that passed one:
    /// otherwise a stolen password, or a session left open, would be enough to plant a passkey
    /// and skip the second factor from then on. During a sign-in (`AddedBy::SignIn`) a passkey
    /// is the enrolment of a user who has no factor yet.
    pub async fn start_registration(
        &self,
        user: &User,
        by: AddedBy<'_>,
        now: DateTime<Utc>,
    ) -> Result<Challenge, PasskeyError> {
        let rp = self.rp()?;
        if !matches!(by, AddedBy::Session { passed_mfa: true }) {
            let factors = self.store.factor_counts(&user.id).await?;
            if factors.totp || factors.passkeys > 0 || factors.recovery_codes > 0 {
                return Err(PasskeyError::SecondFactorFirst);
            }
        }
        let handle = user_handle(&user.id)?;
        let existing = self.stored(&user.id).await?;
        let exclude = existing.iter().map(|(_, p)| p.cred_id().clone()).collect();
        let display = format!("{} {}", user.firstname, user.lastname);
        let display = if display.trim().is_empty() {
            user.username.clone()
        } else {
            display.trim().to_string()
        };
        let (options, state) = rp
            .start_passkey_registration(handle, &user.email, &display, Some(exclude))
            .map_err(PasskeyError::Webauthn)?;
        let mut options = to_json(&options)?;
        if self.passwordless {
            // A passwordless sign-in finds the user through a discoverable credential (a
            // "resident key", WebAuthn §6.2.2), which webauthn-rs does not ask for by default.
            if let Some(selection) = options
                .pointer_mut("/publicKey/authenticatorSelection")
                .and_then(|s| s.as_object_mut())
            {
                selection.insert("residentKey".into(), json!("required"));
                selection.insert("requireResidentKey".into(), json!(true));
            }
        }
        let pending_hash = by.pending().map(token_hash);
        let ceremony = self
            .begin(
                CeremonyKind::Register,
                Some(&user.id),
                pending_hash.as_deref(),
                &state,
                now,
            )
            .await?;
        Ok(Challenge { ceremony, options })
    }

    /// Finishes adding a passkey: checks the authenticator's answer against the ceremony and
    /// stores the credential under its label.
    pub async fn finish_registration(
        &self,
        user: &User,
        by: AddedBy<'_>,
        answer: RegistrationAnswer<'_>,
        client_ip: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<PasskeySummary, PasskeyError> {
        let RegistrationAnswer {
            ceremony,
            label,
            response,
        } = answer;
        let label = label.trim();
        if label.is_empty() || label.chars().count() > LABEL_MAX_CHARS {
            return Err(PasskeyError::BadLabel);
        }
        let actor = Actor::User(user.username.clone());
        let who = Who {
            actor: &actor,
            target: Some(&user.username),
            client_ip: &client_ip,
            kind: CeremonyKind::Register,
        };
        let row = self.take(ceremony, &who, now).await?;
        if row.kind != CeremonyKind::Register.as_str()
            || row.user_id.as_deref() != Some(user.id.as_str())
            || row.pending_hash != by.pending().map(token_hash)
        {
            return Err(self.refuse(&who, Refusal::CeremonyMismatch, now).await);
        }
        let state: PasskeyRegistration = from_json(&row.state)?;
        let passkey = match self.rp()?.finish_passkey_registration(response, &state) {
            Ok(passkey) => passkey,
            Err(err) => {
                let refusal = Refusal::Verification(format!("{err:?}"));
                return Err(self.refuse(&who, refusal, now).await);
            }
        };
        let credential_id = URL_SAFE_NO_PAD.encode(passkey.cred_id().as_ref());
        let row = PasskeyRow {
            id: crate::directory::new_record_id(),
            user_id: user.id.clone(),
            credential_id,
            label: label.to_string(),
            credential: to_json(&passkey)?.to_string(),
            created_at: now.timestamp_millis(),
            last_used_at: None,
        };
        let event = NewEvent::new(now, &actor, kind::PASSKEY_REGISTER, Some(&user.username))
            .details(json!({"passkeyId": row.id, "label": row.label}))
            .client_ip(client_ip.clone());
        match self.store.insert_passkey(&row, &event).await {
            Ok(()) => Ok(row.into()),
            Err(StoreError::Conflict(_)) => {
                Err(self.refuse(&who, Refusal::AlreadyRegistered, now).await)
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Removes one of the user's passkeys; false when the user has none with that id.
    pub async fn remove(
        &self,
        user: &User,
        passkey_id: &str,
        client_ip: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<bool, PasskeyError> {
        let label = self
            .store
            .list_passkeys(&user.id)
            .await?
            .into_iter()
            .find(|p| p.id == passkey_id)
            .map(|p| p.label);
        let Some(label) = label else {
            return Ok(false);
        };
        let event = NewEvent::new(
            now,
            &Actor::User(user.username.clone()),
            kind::PASSKEY_DELETE,
            Some(&user.username),
        )
        .details(json!({"passkeyId": passkey_id, "label": label}))
        .client_ip(client_ip);
        Ok(self
            .store
            .delete_passkey(&user.id, passkey_id, &event)
            .await?)
    }

    /// Starts a sign-in ceremony bound to the parked sign-in (and, for a second factor, to its
    /// user: only that user's credentials are allowed).
    pub async fn start_sign_in(
        &self,
        sign_in: SignIn<'_>,
        now: DateTime<Utc>,
    ) -> Result<Challenge, PasskeyError> {
        let pending_hash = token_hash(sign_in.pending());
        let (options, ceremony) = match sign_in {
            SignIn::SecondFactor { user_id, .. } => {
                let passkeys: Vec<Passkey> = self
                    .stored(user_id)
                    .await?
                    .into_iter()
                    .map(|(_, p)| p)
                    .collect();
                if passkeys.is_empty() {
                    return Err(PasskeyError::NoPasskeys);
                }
                let (options, state) = self
                    .rp()?
                    .start_passkey_authentication(&passkeys)
                    .map_err(PasskeyError::Webauthn)?;
                let ceremony = self
                    .begin(
                        CeremonyKind::SecondFactor,
                        Some(user_id),
                        Some(&pending_hash),
                        &state,
                        now,
                    )
                    .await?;
                (to_json(&options)?, ceremony)
            }
            SignIn::Passwordless { .. } => {
                if !self.passwordless {
                    return Err(PasskeyError::PasswordlessDisabled);
                }
                let (options, state) = self
                    .rp()?
                    .start_discoverable_authentication()
                    .map_err(PasskeyError::Webauthn)?;
                let ceremony = self
                    .begin(
                        CeremonyKind::Passwordless,
                        None,
                        Some(&pending_hash),
                        &state,
                        now,
                    )
                    .await?;
                let mut options = to_json(&options)?;
                // webauthn-rs asks for conditional mediation (autofill); the button asks
                // with the ordinary modal prompt instead.
                if let Some(o) = options.as_object_mut() {
                    o.remove("mediation");
                }
                (options, ceremony)
            }
        };
        Ok(Challenge { ceremony, options })
    }

    /// Finishes a sign-in ceremony: the ceremony must be this sign-in's, the credential the
    /// expected user's, and webauthn-rs must accept the assertion (origin, challenge, user
    /// verification, signature, a counter that went up). Each refusal is recorded.
    pub async fn finish_sign_in(
        &self,
        sign_in: SignIn<'_>,
        ceremony: &str,
        response: &PublicKeyCredential,
        client_ip: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<Verified, PasskeyError> {
        let kind = sign_in.kind();
        // The expected user, for the events.
        let expected = match sign_in.user_id() {
            Some(id) => Some(self.directory.get_user(id).await?),
            None => None,
        };
        let actor = match &expected {
            Some(user) => Actor::User(user.username.clone()),
            None => Actor::Anonymous,
        };
        let target = expected.as_ref().map(|u| u.username.clone());
        let who = Who {
            actor: &actor,
            target: target.as_deref(),
            client_ip: &client_ip,
            kind,
        };
        let row = self.take(ceremony, &who, now).await?;
        let pending_hash = token_hash(sign_in.pending());
        let same_sign_in = row.pending_hash.as_deref().is_some_and(|h| {
            h.len() == pending_hash.len()
                && openssl::memcmp::eq(h.as_bytes(), pending_hash.as_bytes())
        });
        if row.kind != kind.as_str() || !same_sign_in || row.user_id.as_deref() != sign_in.user_id()
        {
            return Err(self.refuse(&who, Refusal::CeremonyMismatch, now).await);
        }
        // The credential the assertion names, and its owner.
        let credential_id = URL_SAFE_NO_PAD.encode(response.get_credential_id());
        let Some(stored) = self
            .store
            .find_passkey_by_credential(&credential_id)
            .await?
        else {
            return Err(self.refuse(&who, Refusal::UnknownCredential, now).await);
        };
        let handle = response.get_user_unique_id().map(<[u8]>::to_vec);
        let owner_handle = user_handle(&stored.user_id)?;
        let handle_names_owner = handle
            .as_deref()
            .is_none_or(|h| h == owner_handle.as_bytes().as_slice());
        let owner = self.directory.get_user(&stored.user_id).await?;
        let wrong_user = match sign_in.user_id() {
            Some(expected_id) => expected_id != stored.user_id || !handle_names_owner,
            // A discoverable credential must carry its user handle (WebAuthn §7.2 step 6).
            None => handle.is_none() || !handle_names_owner,
        };
        if wrong_user {
            let refusal = Refusal::AnotherUser;
            let event_target = target.clone().unwrap_or_else(|| owner.username.clone());
            let details = json!({
                "reason": refusal.code(),
                "ceremony": kind.as_str(),
                "credentialOwner": owner.username,
            });
            self.record(
                &who,
                kind::PASSKEY_REFUSED,
                Some(&event_target),
                details,
                now,
            )
            .await;
            return Err(PasskeyError::Refused(refusal));
        }
        // From here on the events name the credential's owner.
        let owner_actor = Actor::User(owner.username.clone());
        let who = Who {
            actor: &owner_actor,
            target: Some(&owner.username),
            ..who
        };
        let mut passkey: Passkey = from_json(&stored.credential)?;
        let result = match kind {
            CeremonyKind::Passwordless => {
                let state: DiscoverableAuthentication = from_json(&row.state)?;
                self.rp()?.finish_discoverable_authentication(
                    response,
                    state,
                    &[DiscoverableKey::from(&passkey)],
                )
            }
            _ => {
                let state: PasskeyAuthentication = from_json(&row.state)?;
                self.rp()?.finish_passkey_authentication(response, &state)
            }
        };
        let result = match result {
            Ok(result) => result,
            Err(WebauthnError::CredentialPossibleCompromise) => {
                let details = json!({
                    "reason": Refusal::ClonedAuthenticator.code(),
                    "ceremony": kind.as_str(),
                    "passkeyId": stored.id,
                    "label": stored.label,
                });
                self.record(
                    &who,
                    kind::PASSKEY_CLONE_SUSPECTED,
                    who.target,
                    details,
                    now,
                )
                .await;
                return Err(PasskeyError::Refused(Refusal::ClonedAuthenticator));
            }
            Err(err) => {
                let refusal = Refusal::Verification(format!("{err:?}"));
                return Err(self.refuse(&who, refusal, now).await);
            }
        };
        // The new signature counter (and backup state) is kept, so a copy that lags behind
        // is noticed at its next use.
        passkey.update_credential(&result);
        self.store
            .touch_passkey(
                &stored.id,
                &to_json(&passkey)?.to_string(),
                now.timestamp_millis(),
            )
            .await?;
        let details = json!({
            "ceremony": kind.as_str(),
            "passkeyId": stored.id,
            "label": stored.label,
        });
        self.record(&who, kind::PASSKEY_AUTHENTICATED, who.target, details, now)
            .await;
        Ok(Verified {
            user: owner,
            passkey_id: stored.id,
        })
    }

    /// The user's stored passkeys with their webauthn-rs form.
    async fn stored(&self, user_id: &str) -> Result<Vec<(PasskeyRow, Passkey)>, PasskeyError> {
        self.store
            .list_passkeys(user_id)
            .await?
            .into_iter()
            .map(|row| from_json(&row.credential).map(|p| (row, p)))
            .collect()
    }

    /// Stores a ceremony's state and returns the browser's token for it.
    async fn begin(
        &self,
        kind: CeremonyKind,
        user_id: Option<&str>,
        pending_hash: Option<&str>,
        state: &impl serde::Serialize,
        now: DateTime<Utc>,
    ) -> Result<String, PasskeyError> {
        let token = new_token();
        self.store
            .insert_ceremony(&CeremonyRow {
                id_hash: token_hash(&token),
                kind: kind.as_str().into(),
                user_id: user_id.map(str::to_string),
                pending_hash: pending_hash.map(str::to_string),
                state: to_json(state)?.to_string(),
                created_at: now.timestamp_millis(),
                expires_at: (now + Duration::minutes(CEREMONY_MINUTES)).timestamp_millis(),
            })
            .await?;
        Ok(token)
    }

    /// Takes (deletes) a ceremony; unknown, used and expired ones are refused.
    async fn take(
        &self,
        token: &str,
        who: &Who<'_>,
        now: DateTime<Utc>,
    ) -> Result<CeremonyRow, PasskeyError> {
        match self.store.take_ceremony(&token_hash(token)).await? {
            None => Err(self.refuse(who, Refusal::CeremonyUnknown, now).await),
            Some(row) if row.expires_at <= now.timestamp_millis() => {
                Err(self.refuse(who, Refusal::CeremonyExpired, now).await)
            }
            Some(row) => Ok(row),
        }
    }

    /// Records a refusal and returns it as the error.
    async fn refuse(&self, who: &Who<'_>, refusal: Refusal, now: DateTime<Utc>) -> PasskeyError {
        let mut details = json!({"reason": refusal.code(), "ceremony": who.kind.as_str()});
        if let (Refusal::Verification(detail), Some(map)) = (&refusal, details.as_object_mut()) {
            map.insert("detail".into(), json!(detail));
        }
        self.record(who, kind::PASSKEY_REFUSED, who.target, details, now)
            .await;
        PasskeyError::Refused(refusal)
    }

    async fn record(
        &self,
        who: &Who<'_>,
        event_type: &'static str,
        target: Option<&str>,
        details: serde_json::Value,
        now: DateTime<Utc>,
    ) {
        let event = NewEvent::new(now, who.actor, event_type, target)
            .details(details)
            .client_ip(who.client_ip.clone());
        if let Err(err) = self.store.record_event(&event).await {
            tracing::warn!(%err, event_type, "could not record a passkey event");
        }
    }

    /// Deletes expired ceremonies (the janitor).
    pub async fn purge_expired(&self, now: DateTime<Utc>) -> Result<u64, PasskeyError> {
        Ok(self
            .store
            .purge_expired_ceremonies(now.timestamp_millis())
            .await?)
    }
}

/// The WebAuthn relying party of a base URL.
fn relying_party(base_url: &str) -> Result<Webauthn, String> {
    let origin = Url::parse(base_url).map_err(|e| e.to_string())?;
    let rp_id = origin
        .host_str()
        .ok_or("the base URL has no host")?
        .to_string();
    WebauthnBuilder::new(&rp_id, &origin)
        .and_then(|b| b.rp_name("idbridge").build())
        .map_err(|e| format!("{rp_id:?} cannot be a WebAuthn relying party ID: {e}"))
}

/// Who a ceremony is about, for its events.
#[derive(Clone, Copy)]
struct Who<'a> {
    actor: &'a Actor,
    target: Option<&'a str>,
    client_ip: &'a Option<String>,
    kind: CeremonyKind,
}

/// The WebAuthn user handle of a user: the 128-bit record id itself (WebAuthn §14.6.1: an
/// opaque random value, no personal data), so a discoverable credential names its user.
fn user_handle(user_id: &str) -> Result<Uuid, PasskeyError> {
    Uuid::try_parse(user_id)
        .map_err(|_| PasskeyError::Corrupt(format!("user id {user_id:?} is not 128 bits of hex")))
}

fn to_json(value: &impl serde::Serialize) -> Result<serde_json::Value, PasskeyError> {
    serde_json::to_value(value).map_err(|e| PasskeyError::Corrupt(e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, PasskeyError> {
    serde_json::from_str(text).map_err(|e| PasskeyError::Corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_handles_are_the_record_ids() {
        let id = crate::directory::new_record_id();
        let handle = user_handle(&id).unwrap();
        assert_eq!(handle.simple().to_string(), id);
        assert!(user_handle("alice").is_err());
    }

    #[test]
    fn refusal_codes_are_stable() {
        assert_eq!(Refusal::CeremonyUnknown.code(), "ceremony_unknown_or_used");
        assert_eq!(Refusal::ClonedAuthenticator.code(), "cloned_authenticator");
        assert_eq!(
            Refusal::Verification("InvalidRPOrigin".into()).code(),
            "verification_failed"
        );
    }
}
