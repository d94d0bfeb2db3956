//! Self-service passwords: a signed-in user's change, and "forgot password" by emailed link.
//! No HTTP here; the handlers pass in form values and render the outcomes. Time is a parameter.
//!
//! Every change goes through [`Directory::set_password_by`], the path of an admin's reset: the
//! same policy and history checks, the sealed password queued for Microsoft 365 with the
//! revocation of its sessions (seed 003), and the end of every outstanding reset link.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use crate::config::Config;
use crate::directory::{Directory, DirectoryError, PasswordChange, PolicyViolation, User};
use crate::events::{kind, Actor, NewEvent};
use crate::mail::{Mailer, OutgoingMail};
use crate::store::{ResetTokenRow, Store, StoreError, ENDED_PASSWORD_CHANGED};
use crate::throttle::{Locked, SignInThrottle, ThrottleError};
use crate::web::token_hash;

/// Failures of self-service (the user sees a generic error page with a reference).
#[derive(Debug, thiserror::Error)]
pub enum SelfServiceError {
    #[error(transparent)]
    Directory(#[from] DirectoryError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Throttle(#[from] ThrottleError),
}

/// The outcome of a password change at the portal.
#[derive(Debug)]
pub enum ChangeOutcome {
    /// Changed; queued for Microsoft 365; the user's other sessions ended.
    Changed,
    /// The two new passwords differ (nothing was checked).
    Mismatch,
    /// The current password is wrong (counted like a failed sign-in).
    WrongCurrent,
    /// Too many failed sign-ins or password checks for the account or the address.
    Throttled(Locked),
    /// The new password breaks the policy.
    Rejected(PolicyViolation),
}

/// The answer to "forgot password": the same whether or not the account exists.
#[derive(Debug)]
pub enum ResetRequest {
    /// Taken; a link is mailed if the name matches an account that may have one.
    Accepted,
    /// Too many requests for the typed name or from the address.
    Throttled(Locked),
    /// No SMTP server is configured: ask the support contact.
    Unavailable,
}

/// Why a reset link cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkRefusal {
    /// No such link (mistyped, or purged long after it expired).
    Unknown,
    /// Its time ran out.
    Expired,
    /// It was used already.
    Used,
    /// The password changed after it was sent (which ends every link).
    Superseded,
    /// The account is suspended.
    Suspended,
}

impl LinkRefusal {
    /// Stable code recorded in events.
    pub fn code(self) -> &'static str {
        match self {
            LinkRefusal::Unknown => "unknown_link",
            LinkRefusal::Expired => "expired",
            LinkRefusal::Used => "used",
            LinkRefusal::Superseded => "password_changed",
            LinkRefusal::Suspended => "suspended",
        }
    }
}

/// A reset link that may be used.
#[derive(Debug)]
pub struct ValidLink {
    pub user: User,
    /// When it stops working.
    pub expires_at: i64,
}

/// The outcome of setting a password through a reset link.
#[derive(Debug)]
pub enum ResetOutcome {
    /// The password was changed; every session and every other link of the user ended.
    Done(Box<User>),
    /// The link cannot be used.
    Refused(LinkRefusal),
    /// Too many bad links from the address.
    Throttled(Locked),
    /// The two new passwords differ (the link still works, for this user).
    Mismatch(Box<User>),
    /// The new password breaks the policy (the link still works, for this user).
    Rejected(Box<User>, PolicyViolation),
}

/// Self-service passwords of the user portal.
#[derive(Debug, Clone)]
pub struct SelfService {
    store: Store,
    directory: Directory,
    /// The SSO sign-in throttle: a wrong current password counts as a failed sign-in.
    sign_in: SignInThrottle,
    /// "Forgot password" requests and bad links, per typed name and per address.
    resets: SignInThrottle,
    mailer: Option<Mailer>,
    base_url: String,
    link_lifetime: Duration,
    /// Most links one account is sent per window (0: no limit).
    links_per_account: u32,
    window: Duration,
    support_contact: String,
    /// Reset deliveries under way (they run after the answer); awaited at shutdown.
    deliveries: tokio_util::task::TaskTracker,
}

impl SelfService {
    /// From config; `mailer` is the SMTP transport, if `[smtp]` is set.
    pub fn new(
        config: &Config,
        store: Store,
        directory: Directory,
        mailer: Option<Mailer>,
    ) -> Self {
        let reset = &config.password_reset;
        Self {
            sign_in: SignInThrottle::sso(store.clone(), config),
            resets: SignInThrottle::password_reset(store.clone(), config),
            store,
            directory,
            mailer,
            base_url: config.base_url.clone(),
            link_lifetime: Duration::minutes(i64::from(reset.link_minutes)),
            links_per_account: reset.account_max_requests,
            window: Duration::minutes(i64::from(reset.window_minutes)),
            support_contact: config.saml.support_contact.clone(),
            deliveries: tokio_util::task::TaskTracker::new(),
        }
    }

    /// Waits (at most `deadline`) for the reset mails under way, at shutdown: a link asked for
    /// just before a restart is still sent.
    pub async fn finish_deliveries(&self, deadline: std::time::Duration) {
        self.deliveries.close();
        if tokio::time::timeout(deadline, self.deliveries.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                deliveries = self.deliveries.len(),
                "shutdown deadline passed with password-reset mails still being sent"
            );
        }
    }

    /// Whether reset links can be mailed (`[smtp]` is configured).
    pub fn can_mail(&self) -> bool {
        self.mailer.is_some()
    }

    /// Whom users without a working reset are told to ask.
    pub fn support_contact(&self) -> &str {
        &self.support_contact
    }

    /// How long a reset link works, in minutes.
    pub fn link_minutes(&self) -> i64 {
        self.link_lifetime.num_minutes()
    }

    /// Changes the password of a signed-in user after checking the current one, from the
    /// session `session_hash` (which stays; the user's other sessions end).
    ///
    /// The current password is checked like a sign-in: behind the same throttle, a wrong one
    /// counted as a failure of the account and the address, so the form cannot be used to
    /// guess the password of a session left open.
    #[allow(clippy::too_many_arguments)] // reason: the form's three secrets, who, where and when
    pub async fn change_password(
        &self,
        user: &User,
        session_hash: &str,
        current: &SecretString,
        new: &SecretString,
        confirm: &SecretString,
        client_ip: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<ChangeOutcome, SelfServiceError> {
        if new.expose_secret() != confirm.expose_secret() {
            return Ok(ChangeOutcome::Mismatch);
        }
        let name = user.username.as_str();
        let ip = client_ip.as_deref();
        if let Some(locked) = self.sign_in.admit(name, ip, now).await? {
            return Ok(ChangeOutcome::Throttled(locked));
        }
        let checked = match self.directory.authenticate(name, current).await {
            Ok(checked) => checked,
            Err(err) => {
                self.sign_in.abandoned(name, ip).await?;
                return Err(err.into());
            }
        };
        if checked.is_none_or(|u| u.id != user.id) {
            self.sign_in.failed(name, ip).await?;
            let event = NewEvent::new(
                now,
                &Actor::User(user.username.clone()),
                kind::SSO_LOGIN_FAILED,
                Some(name),
            )
            .details(json!({"reason": "wrong current password at password change"}))
            .client_ip(client_ip);
            self.store.record_event(&event).await?;
            return Ok(ChangeOutcome::WrongCurrent);
        }
        self.sign_in.succeeded(name, ip).await?;
        match self
            .directory
            .set_password_by(
                &Actor::User(user.username.clone()),
                &user.id,
                new,
                PasswordChange::SelfService { session_hash },
                now,
            )
            .await
        {
            Ok(()) => Ok(ChangeOutcome::Changed),
            Err(DirectoryError::Policy(violation)) => Ok(ChangeOutcome::Rejected(violation)),
            Err(err) => Err(err.into()),
        }
    }

    /// Takes a "forgot password" request for `login` (a username or company email).
    ///
    /// The answer is the same, and as fast, whether or not the account exists: after the
    /// throttle, the lookup, the link and the mail happen in the background.
    pub async fn request_reset(
        self: &Arc<Self>,
        login: &str,
        client_ip: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<ResetRequest, SelfServiceError> {
        if self.mailer.is_none() {
            return Ok(ResetRequest::Unavailable);
        }
        let login: String = login.trim().chars().take(254).collect();
        if let Some(locked) = self.resets.admit(&login, client_ip.as_deref(), now).await? {
            return Ok(ResetRequest::Throttled(locked));
        }
        // Every request counts, found or not: the limit is on requests, not on failures.
        self.resets.failed(&login, client_ip.as_deref()).await?;
        let this = self.clone();
        self.deliveries.spawn(async move {
            if let Err(err) = this.deliver_reset(&login, client_ip, now).await {
                tracing::warn!(%err, "could not handle a password-reset request");
            }
        });
        Ok(ResetRequest::Accepted)
    }

    /// Looks the account up, stores a link and mails it (the background half of a request).
    async fn deliver_reset(
        &self,
        login: &str,
        client_ip: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<(), SelfServiceError> {
        let Some(mailer) = &self.mailer else {
            return Ok(());
        };
        let typed: String = login.chars().take(128).collect();
        let user = match self.store.find_user(login).await? {
            Some(row) => Some(User::from_row(row)?),
            None => None,
        };
        // The store also finds users by their internal id, which nobody types into this form.
        let Some(user) = user.filter(|u| !u.id.eq_ignore_ascii_case(login)) else {
            // Nobody to write to: recorded, nothing sent.
            let event = NewEvent::new(
                now,
                &Actor::Anonymous,
                kind::PASSWORD_RESET_REQUESTED,
                Some(&typed),
            )
            .details(json!({"account": "unknown"}))
            .client_ip(client_ip);
            self.store.record_event(&event).await?;
            return Ok(());
        };
        let refused = |reason: &str| {
            NewEvent::new(
                now,
                &Actor::Anonymous,
                kind::PASSWORD_RESET_REFUSED,
                Some(&user.username),
            )
            .details(json!({"reason": reason}))
            .client_ip(client_ip.clone())
        };
        if user.state != crate::directory::UserState::Active {
            self.store.record_event(&refused("suspended")).await?;
            return Ok(());
        }
        if self.links_per_account > 0 {
            let since = (now - self.window).timestamp_millis();
            let sent = self.store.count_reset_tokens_since(&user.id, since).await?;
            if sent >= i64::from(self.links_per_account) {
                // Silently: a flood of requests must not become a flood of mail.
                self.store.record_event(&refused("too_many_links")).await?;
                return Ok(());
            }
        }
        let token = crate::web::new_token();
        let expires = now + self.link_lifetime;
        let row = ResetTokenRow {
            id_hash: token_hash(&token),
            user_id: user.id.clone(),
            created_at: now.timestamp_millis(),
            expires_at: expires.timestamp_millis(),
            ended_at: None,
            ended: None,
        };
        let to = reset_recipient(&user).to_string();
        let event = NewEvent::new(
            now,
            &Actor::Anonymous,
            kind::PASSWORD_RESET_REQUESTED,
            Some(&user.username),
        )
        .details(json!({"account": "found", "expiresAt": expires.to_rfc3339()}))
        .client_ip(client_ip.clone());
        self.store.insert_reset_token(&row, &event).await?;
        let mail = OutgoingMail {
            to: to.clone(),
            subject: "Reset your password".into(),
            text: reset_mail_text(
                &user.display_name(),
                &format!("{}/password/reset?token={token}", self.base_url),
                self.link_minutes(),
                &self.support_contact,
            ),
        };
        let outcome = mailer.send(&mail).await;
        let event = match &outcome {
            Ok(()) => NewEvent::new(
                Utc::now(),
                &Actor::System,
                kind::PASSWORD_RESET_SENT,
                Some(&user.username),
            )
            .details(json!({"to": to, "server": mailer.server()})),
            Err(err) => {
                tracing::warn!(user = %user.username, server = mailer.server(), %err, "could not send a password-reset mail");
                NewEvent::new(
                    Utc::now(),
                    &Actor::System,
                    kind::PASSWORD_RESET_SEND_FAILED,
                    Some(&user.username),
                )
                .details(json!({"to": to, "server": mailer.server(), "error": err.to_string()}))
            }
        };
        self.store.record_event(&event).await?;
        Ok(())
    }

    /// Checks a reset link from its token (the page's GET): the user it is for, or why not.
    /// An unknown link counts against the address, like a failed sign-in.
    pub async fn check_link(
        &self,
        token: &str,
        client_ip: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<Result<ValidLink, (LinkRefusal, Option<Locked>)>, SelfServiceError> {
        let hash = token_hash(token.trim());
        // Each link is its own "account": only the address accumulates bad links.
        let name = format!("link:{}", hash.get(..16).unwrap_or_default());
        let ip = client_ip.as_deref();
        if let Some(locked) = self.resets.admit(&name, ip, now).await? {
            return Ok(Err((LinkRefusal::Unknown, Some(locked))));
        }
        let Some(row) = self.store.find_reset_token(&hash).await? else {
            self.resets.failed(&name, ip).await?;
            return Ok(Err((LinkRefusal::Unknown, None)));
        };
        self.resets.succeeded(&name, ip).await?;
        let refusal = match row.ended.as_deref() {
            Some(ENDED_PASSWORD_CHANGED) => Some(LinkRefusal::Superseded),
            Some(_) => Some(LinkRefusal::Used),
            None if row.expires_at <= now.timestamp_millis() => Some(LinkRefusal::Expired),
            None => None,
        };
        if let Some(refusal) = refusal {
            return Ok(Err((refusal, None)));
        }
        let user = self.directory.get_user(&row.user_id).await?;
        if user.state != crate::directory::UserState::Active {
            return Ok(Err((LinkRefusal::Suspended, None)));
        }
        Ok(Ok(ValidLink {
            user,
            expires_at: row.expires_at,
        }))
    }

    /// Sets a new password through a reset link: the link is used up, every other link and
    /// every session of the user end, and the password goes to Microsoft 365.
    pub async fn complete_reset(
        &self,
        token: &str,
        new: &SecretString,
        confirm: &SecretString,
        client_ip: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<ResetOutcome, SelfServiceError> {
        let link = match self.check_link(token, client_ip.clone(), now).await? {
            Ok(link) => link,
            Err((_, Some(locked))) => return Ok(ResetOutcome::Throttled(locked)),
            Err((refusal, None)) => return Ok(ResetOutcome::Refused(refusal)),
        };
        let user = link.user;
        if new.expose_secret() != confirm.expose_secret() {
            return Ok(ResetOutcome::Mismatch(Box::new(user)));
        }
        // Checked before the link is used up, so a refused password leaves it working.
        match self.directory.check_new_password(&user, new).await {
            Ok(()) => {}
            Err(DirectoryError::Policy(violation)) => {
                let event = NewEvent::new(
                    now,
                    &Actor::User(user.username.clone()),
                    kind::USER_PASSWORD_REJECTED,
                    Some(&user.username),
                )
                .details(json!({"reason": violation.to_string(), "source": "reset_link"}));
                self.store.record_event(&event).await?;
                return Ok(ResetOutcome::Rejected(Box::new(user), violation));
            }
            Err(err) => return Err(err.into()),
        }
        let hash = token_hash(token.trim());
        if !self
            .store
            .claim_reset_token(&hash, now.timestamp_millis())
            .await?
        {
            // Another request used it a moment ago.
            return Ok(ResetOutcome::Refused(LinkRefusal::Used));
        }
        match self
            .directory
            .set_password_by(
                &Actor::User(user.username.clone()),
                &user.id,
                new,
                PasswordChange::ResetLink,
                now,
            )
            .await
        {
            Ok(()) => {}
            Err(DirectoryError::Policy(violation)) => {
                return Ok(ResetOutcome::Rejected(Box::new(user), violation))
            }
            Err(err) => return Err(err.into()),
        }
        let event = NewEvent::new(
            now,
            &Actor::User(user.username.clone()),
            kind::PASSWORD_RESET_USED,
            Some(&user.username),
        )
        .client_ip(client_ip);
        self.store.record_event(&event).await?;
        Ok(ResetOutcome::Done(Box::new(user)))
    }
}

/// Where a reset link goes: the alternate email when set (the company mailbox is usually
/// behind the very password that was forgotten), else the company email.
pub fn reset_recipient(user: &User) -> &str {
    user.get(crate::attributes::Attribute::AlternateEmail)
        .unwrap_or(&user.email)
}

fn reset_mail_text(name: &str, link: &str, minutes: i64, contact: &str) -> String {
    format!(
        "Hello {name},\r\n\r\n\
         Someone, probably you, asked to reset the password of your account.\r\n\
         To choose a new password, open this link within {minutes} minutes:\r\n\r\n\
         {link}\r\n\r\n\
         The link works once. Your new password is also your Microsoft 365 password.\r\n\
         If you did not ask for this, ignore this mail: your password stays as it is.\r\n\
         Questions: {contact}.\r\n"
    )
}
