//! Throttling of sign-in forms against password guessing. No HTTP here.
//!
//! Failures are counted per typed account name (existing or not, so a lock says nothing about
//! which names exist) and per client address, in the database so a lock holds across nodes.
//! A locked key is refused before any password hash is computed.

pub mod refusals;

use chrono::{DateTime, Duration, Utc};
use serde_json::json;

use crate::config::Config;
use crate::events::{kind, Actor, NewEvent};
use crate::store::{Store, StoreError};
use crate::telemetry::metrics::names;

/// Failures of the throttle.
#[derive(Debug, thiserror::Error)]
pub enum ThrottleError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Which counter a lock is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// The typed account name.
    Account,
    /// The client address.
    Address,
}

impl KeyKind {
    /// The name used in keys and events.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Account => "account",
            KeyKind::Address => "address",
        }
    }
}

/// How many failures lock a key, over which window, for how long.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Failures for one account name that lock it (0: never).
    pub account_max_failures: u32,
    /// Failures from one address that lock it (0: never).
    pub address_max_failures: u32,
    /// How long failures count.
    pub window: Duration,
    /// How long a lock lasts.
    pub lock: Duration,
}

/// Sign-in is refused until `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Locked {
    /// When the lock ends.
    pub until: DateTime<Utc>,
    /// Why the attempt was refused.
    pub reason: LockReason,
}

/// Why a sign-in attempt was refused before its password was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockReason {
    /// Too many failed attempts: the name or the address is locked until `until`.
    Failures,
    /// As many attempts from the address (or for the name) are being checked right now as
    /// the limit has failures left, as when many users behind one office address sign in
    /// at once. Nothing is locked: the attempt may be made again in a moment.
    Crowded,
}

/// How long a crowded attempt is told to wait.
const CROWDED_RETRY_SECONDS: i64 = 5;

impl Locked {
    /// Whole minutes left, rounded up and at least one (for "try again in N minutes").
    pub fn minutes_left(&self, now: DateTime<Utc>) -> i64 {
        let seconds = (self.until - now).num_seconds().max(1);
        ((seconds + 59) / 60).max(1)
    }

    /// The message shown on the sign-in page, the same whichever key is locked.
    /// Stable code of the reason, recorded in refusal events.
    pub fn reason_code(&self) -> &'static str {
        match self.reason {
            LockReason::Failures => "locked",
            LockReason::Crowded => "crowded",
        }
    }

    pub fn message(&self, now: DateTime<Utc>) -> String {
        if self.reason == LockReason::Crowded {
            return "Many sign-ins are being checked at once from your network. Try again in a few seconds.".into();
        }
        let n = self.minutes_left(now);
        let unit = if n == 1 { "minute" } else { "minutes" };
        format!("Too many sign-in attempts. Try again in {n} {unit}.")
    }
}

/// Which sign-in form a throttle guards; its keys and events are its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// The SSO sign-in page of directory users.
    Sso,
    /// The admin console.
    Admin,
    /// "Forgot password" requests and reset links of the user portal.
    PasswordReset,
    /// The second-factor code of a sign-in (keyed by the user who passed the password).
    SecondFactor,
}

impl Form {
    fn prefix(self) -> &'static str {
        match self {
            Form::Sso => "sso",
            Form::Admin => "admin",
            Form::PasswordReset => "reset",
            Form::SecondFactor => "mfa",
        }
    }

    /// The form's label on metrics.
    pub fn metric_label(self) -> &'static str {
        match self {
            Form::Sso => "sso",
            Form::Admin => "admin",
            Form::PasswordReset => "password_reset",
            Form::SecondFactor => "mfa",
        }
    }

    fn event(self) -> &'static str {
        match self {
            Form::Sso => kind::SIGN_IN_THROTTLED,
            Form::Admin => kind::ADMIN_LOGIN_THROTTLED,
            Form::PasswordReset => kind::PASSWORD_RESET_THROTTLED,
            Form::SecondFactor => kind::MFA_THROTTLED,
        }
    }
}

/// The normalised form of a typed login name (what the account key counts).
pub fn normalise(name: &str) -> String {
    // Capped so a password typed into the name field is not kept whole as a key.
    name.trim().to_lowercase().chars().take(128).collect()
}

/// The key of an account name on a form.
pub fn account_key(form: Form, name: &str) -> String {
    format!("{}:account:{}", form.prefix(), normalise(name))
}

/// The key of a client address on a form.
pub fn address_key(form: Form, ip: &str) -> String {
    format!("{}:ip:{ip}", form.prefix())
}

/// Throttles one sign-in form per account name and per client address.
#[derive(Debug, Clone)]
pub struct SignInThrottle {
    store: Store,
    form: Form,
    limits: Limits,
}

impl SignInThrottle {
    /// A throttle for `form` with these limits.
    pub fn new(store: Store, form: Form, limits: Limits) -> Self {
        Self {
            store,
            form,
            limits,
        }
    }

    /// The SSO sign-in throttle from `[sign_in]`.
    pub fn sso(store: Store, config: &Config) -> Self {
        let s = &config.sign_in;
        Self::new(
            store,
            Form::Sso,
            Limits {
                account_max_failures: s.account_max_failures,
                address_max_failures: s.address_max_failures,
                window: Duration::seconds(
                    i64::try_from(s.window_seconds).unwrap_or(i64::MAX / 2_000),
                ),
                lock: Duration::seconds(i64::try_from(s.lock_seconds).unwrap_or(i64::MAX / 2_000)),
            },
        )
    }

    /// The second-factor throttle: `[mfa] max_failures` wrong codes per user, the address
    /// limit and the lock of `[sign_in]`.
    pub fn second_factor(store: Store, config: &Config) -> Self {
        let s = &config.sign_in;
        Self::new(
            store,
            Form::SecondFactor,
            Limits {
                account_max_failures: config.mfa.max_failures,
                address_max_failures: s.address_max_failures,
                window: Duration::seconds(
                    i64::try_from(s.lock_seconds).unwrap_or(i64::MAX / 2_000),
                ),
                lock: Duration::seconds(i64::try_from(s.lock_seconds).unwrap_or(i64::MAX / 2_000)),
            },
        )
    }

    /// The admin console throttle from `[admin]`: the address locks first, the account only
    /// at a higher threshold, so guessing from one place cannot lock the real admin out.
    pub fn admin(store: Store, config: &Config) -> Self {
        let a = &config.admin;
        let minutes = i64::try_from(a.login_lockout_minutes.max(1)).unwrap_or(i64::MAX / 60_000);
        Self::new(
            store,
            Form::Admin,
            Limits {
                account_max_failures: a.login_account_max_failures,
                address_max_failures: a.login_max_failures,
                window: Duration::minutes(minutes),
                lock: Duration::minutes(minutes),
            },
        )
    }

    /// The "forgot password" throttle from `[password_reset]`: every request counts (a
    /// request is not a failure, but each sends mail), per typed name and per address.
    pub fn password_reset(store: Store, config: &Config) -> Self {
        let r = &config.password_reset;
        let window = Duration::minutes(i64::from(r.window_minutes.max(1)));
        Self::new(
            store,
            Form::PasswordReset,
            Limits {
                account_max_failures: r.account_max_requests,
                address_max_failures: r.address_max_requests,
                window,
                lock: window,
            },
        )
    }

    fn keys(&self, name: &str, ip: Option<&str>) -> Vec<(KeyKind, String)> {
        let mut keys = Vec::with_capacity(2);
        if self.limits.account_max_failures > 0 {
            keys.push((KeyKind::Account, account_key(self.form, name)));
        }
        if let Some(ip) = ip.filter(|_| self.limits.address_max_failures > 0) {
            keys.push((KeyKind::Address, address_key(self.form, ip)));
        }
        keys
    }

    /// Admits one sign-in attempt, or refuses it (call before any hashing).
    ///
    /// Each admitted attempt is counted as in flight before its password is checked and is
    /// then decided by [`failed`](Self::failed), [`succeeded`](Self::succeeded) or
    /// [`abandoned`](Self::abandoned). The attempt after the limit's last failure starts the
    /// lock and writes its one event; attempts while locked write nothing here. An attempt
    /// that would put more in flight than the limit has failures left is refused as
    /// [`LockReason::Crowded`] without a lock: concurrent guesses cannot slip past the limit
    /// while earlier ones are still being hashed, yet many users signing in at once behind
    /// one address lock nothing.
    pub async fn admit(
        &self,
        name: &str,
        ip: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Option<Locked>, ThrottleError> {
        let now_ms = now.timestamp_millis();
        let keys = self.keys(name, ip);
        let refs: Vec<&str> = keys.iter().map(|(_, k)| k.as_str()).collect();
        let until = self.store.throttle_locked_until(&refs).await?;
        if until > now_ms {
            self.count_throttled("locked");
            return Ok(DateTime::from_timestamp_millis(until).map(|until| Locked {
                until,
                reason: LockReason::Failures,
            }));
        }
        let expired = (now - self.limits.window).timestamp_millis();
        let mut counted: Vec<&str> = Vec::with_capacity(keys.len());
        for (kind, key) in &keys {
            let max = i64::from(match kind {
                KeyKind::Account => self.limits.account_max_failures,
                KeyKind::Address => self.limits.address_max_failures,
            });
            let count = self
                .store
                .throttle_add_attempt(key, now_ms, expired)
                .await?;
            counted.push(key);
            if count.failures >= max {
                // The attempt after the limit's last failure starts the lock.
                let until = now + self.limits.lock;
                self.store
                    .throttle_lock(key, now_ms, until.timestamp_millis())
                    .await?;
                self.release(&counted).await?;
                let target = match kind {
                    KeyKind::Account => Some(normalise(name)),
                    KeyKind::Address => None,
                };
                let event =
                    NewEvent::new(now, &Actor::Anonymous, self.form.event(), target.as_deref())
                        .details(json!({
                            "key": kind.as_str(),
                            "failures": count.failures,
                            "lockedUntil": until.to_rfc3339(),
                        }))
                        .client_ip(ip.map(str::to_string));
                self.store.record_event(&event).await?;
                self.count_throttled("locked");
                return Ok(Some(Locked {
                    until,
                    reason: LockReason::Failures,
                }));
            }
            if count.failures + count.pending > max {
                // Checking this one too could exceed the limit if all those in flight
                // fail; refused unchecked, and nothing is locked.
                self.release(&counted).await?;
                self.count_throttled("crowded");
                return Ok(Some(Locked {
                    until: now + Duration::seconds(CROWDED_RETRY_SECONDS),
                    reason: LockReason::Crowded,
                }));
            }
        }
        Ok(None)
    }

    fn count_throttled(&self, reason: &'static str) {
        metrics::counter!(
            names::SIGN_IN_THROTTLED,
            "form" => self.form.metric_label(),
            "reason" => reason
        )
        .increment(1);
    }

    /// Takes back the attempts counted on `keys`.
    async fn release(&self, keys: &[&str]) -> Result<(), ThrottleError> {
        for key in keys {
            self.store.throttle_release(key).await?;
        }
        Ok(())
    }

    /// An admitted attempt that was not decided (the check could not run): taken back.
    pub async fn abandoned(&self, name: &str, ip: Option<&str>) -> Result<(), ThrottleError> {
        let keys = self.keys(name, ip);
        let refs: Vec<&str> = keys.iter().map(|(_, k)| k.as_str()).collect();
        self.release(&refs).await
    }

    /// A wrong password: the admitted attempt becomes a failure of the name and the address.
    pub async fn failed(&self, name: &str, ip: Option<&str>) -> Result<(), ThrottleError> {
        metrics::counter!(names::SIGN_IN_FAILURES, "form" => self.form.metric_label()).increment(1);
        for (_, key) in self.keys(name, ip) {
            self.store.throttle_add_failure(&key).await?;
        }
        Ok(())
    }

    /// A successful sign-in clears the account's counter and takes the address's attempt
    /// back (the address's failures stay: one right password must not reset guessing at
    /// other accounts from there).
    pub async fn succeeded(&self, name: &str, ip: Option<&str>) -> Result<(), ThrottleError> {
        self.store
            .throttle_clear(&account_key(self.form, name))
            .await?;
        if let Some(ip) = ip {
            self.store
                .throttle_release(&address_key(self.form, ip))
                .await?;
        }
        Ok(())
    }
}

/// Clears the locks and counters of an account name on every form; true when one existed.
pub async fn unlock_account(store: &Store, name: &str) -> Result<bool, ThrottleError> {
    let mut any = false;
    for form in [Form::Sso, Form::Admin, Form::PasswordReset] {
        any |= store.throttle_clear(&account_key(form, name)).await?;
    }
    Ok(any)
}

/// Clears the locks and counters of a client address on every form; true when one existed.
pub async fn unlock_address(store: &Store, ip: &str) -> Result<bool, ThrottleError> {
    let mut any = false;
    for form in [Form::Sso, Form::Admin, Form::PasswordReset] {
        any |= store.throttle_clear(&address_key(form, ip)).await?;
    }
    Ok(any)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minutes_round_up() {
        let now = Utc::now();
        let locked = Locked {
            until: now + Duration::seconds(61),
            reason: LockReason::Failures,
        };
        assert_eq!(locked.minutes_left(now), 2);
        assert_eq!(
            Locked {
                until: now,
                reason: LockReason::Failures
            }
            .message(now),
            "Too many sign-in attempts. Try again in 1 minute."
        );
    }

    #[test]
    fn keys_are_normalised() {
        assert_eq!(account_key(Form::Sso, " Alice "), "sso:account:alice");
        assert_eq!(address_key(Form::Admin, "127.0.0.2"), "admin:ip:127.0.0.2");
    }
}
