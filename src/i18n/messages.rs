//! Typed outcomes of domain code (refusals, locks, password rules) as catalogue messages:
//! the one place that says which message an employee reads for which outcome.

use chrono::{DateTime, Utc};

use super::{text, Arg, Lang, Ui};
use crate::directory::{PasswordPolicy, PolicyViolation};
use crate::portal::LinkRefusal;
use crate::sso::{Refusal, SsoError};
use crate::throttle::{LockReason, Locked};

/// A catalogue message with its arguments, rendered in the language of the page showing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    key: &'static str,
    args: Vec<(&'static str, Arg)>,
}

impl Msg {
    /// The message `key` without arguments.
    pub fn new(key: &'static str) -> Self {
        Self {
            key,
            args: Vec::new(),
        }
    }

    /// The message `key` with one argument.
    pub fn with(key: &'static str, name: &'static str, value: impl std::fmt::Display) -> Self {
        Self::new(key).arg(name, value)
    }

    /// Adds an argument.
    pub fn arg(mut self, name: &'static str, value: impl std::fmt::Display) -> Self {
        self.args.push((name, Arg::Text(value.to_string())));
        self
    }

    /// The message `key` with a count (which chooses the plural form).
    pub fn count(key: &'static str, name: &'static str, n: i64) -> Self {
        let mut msg = Self::new(key);
        msg.args.push((name, Arg::Number(n)));
        msg
    }

    /// The text in `lang`.
    pub fn in_lang(&self, lang: Lang) -> String {
        text(lang, self.key, &self.args)
    }

    /// The text in the language of the request being answered.
    pub fn text(&self) -> String {
        self.in_lang(Ui::current().lang)
    }

    /// A failed sign-in lock: when to try again.
    pub fn locked(locked: &Locked, now: DateTime<Utc>) -> Self {
        Self::lock(locked, now, "err-locked")
    }

    /// Too many invalid reset links from one network.
    pub fn links_locked(locked: &Locked, now: DateTime<Utc>) -> Self {
        Self::lock(locked, now, "err-links-locked")
    }

    /// Too many "forgot password" requests.
    pub fn reset_requests_locked(locked: &Locked, now: DateTime<Utc>) -> Self {
        Self::lock(locked, now, "reset-requests-locked")
    }

    /// Too many wrong current passwords at a password change.
    pub fn wrong_passwords_locked(locked: &Locked, now: DateTime<Utc>) -> Self {
        Self::lock(locked, now, "err-wrong-passwords-locked")
    }

    fn lock(locked: &Locked, now: DateTime<Utc>, key: &'static str) -> Self {
        match locked.reason {
            LockReason::Crowded => Msg::new("err-crowded"),
            LockReason::Failures => Msg::count(key, "minutes", locked.minutes_left(now)),
        }
    }

    /// A new password the policy refuses, with the rule it broke.
    pub fn password_refused(violation: &PolicyViolation) -> Self {
        let reason = match violation {
            PolicyViolation::TooShort(n) => Msg::with("policy-too-short", "count", n),
            PolicyViolation::TooLong(n) => Msg::with("policy-too-long", "count", n),
            PolicyViolation::TooFewClasses { required, found } => {
                Msg::with("policy-too-few-classes", "required", required).arg("found", found)
            }
            PolicyViolation::DisallowedCharacter => Msg::with(
                "policy-disallowed-character",
                "symbols",
                crate::directory::ENTRA_SYMBOLS,
            ),
            PolicyViolation::ContainsUsername => Msg::new("policy-contains-username"),
            PolicyViolation::Reused(n) => Msg::with("policy-reused", "count", n),
        };
        Msg::with("err-password-refused", "reason", reason.text())
    }

    /// Why a password-reset link cannot be used.
    pub fn link_refused(refusal: LinkRefusal) -> Self {
        Msg::new(match refusal {
            LinkRefusal::Unknown => "link-unknown",
            LinkRefusal::Expired => "link-expired",
            LinkRefusal::Used => "link-used",
            LinkRefusal::Superseded => "link-superseded",
            LinkRefusal::Suspended => "link-suspended",
        })
    }

    /// The title and the explanation of a sign-in (or sign-out) request that cannot be used.
    pub fn sso_rejected(err: &SsoError, sign_out: bool) -> (Self, Self) {
        let title = Msg::new(if sign_out {
            "sso-rejected-sign-out-title"
        } else {
            "sso-rejected-title"
        });
        let message = match err {
            SsoError::PendingExpired => Msg::new("sso-rejected-expired"),
            SsoError::Replayed(_) => Msg::new("sso-rejected-replayed"),
            SsoError::Stale(_) | SsoError::FromFuture(_) => Msg::new("sso-rejected-clock"),
            SsoError::Busy => Msg::new("err-busy-message"),
            // Protocol faults of the application: nothing the employee can fix, so the detail
            // is for the administrator they tell (in English, as in idbridge's logs).
            other => Msg::with("sso-rejected-other", "detail", other),
        };
        (title, message)
    }
}

/// The title, message and hint of a refused sign-in. `can_reset`: the employee can choose a
/// new password with "Forgot your password?".
pub fn refusal_texts(
    refusal: Refusal,
    sp_name: &str,
    contact: &str,
    can_reset: bool,
) -> (Msg, Msg, Msg) {
    match refusal {
        Refusal::NotBound => (
            Msg::new("refusal-not-bound-title"),
            Msg::with("refusal-not-bound-message", "sp", sp_name),
            Msg::with("refusal-not-bound-hint", "contact", contact),
        ),
        Refusal::Suspended => (
            Msg::new("refusal-suspended-title"),
            Msg::new("refusal-suspended-message"),
            Msg::with("refusal-suspended-hint", "contact", contact),
        ),
        Refusal::PasswordExpired => (
            Msg::new("refusal-expired-title"),
            Msg::new("refusal-expired-message"),
            if can_reset {
                Msg::with("refusal-expired-hint-reset", "contact", contact)
            } else {
                Msg::with("refusal-expired-hint", "contact", contact)
            },
        ),
    }
}

/// The policy's rules, one line each, for the pages where a password is chosen.
pub fn policy_rules(policy: &PasswordPolicy) -> Vec<Msg> {
    let mut rules = vec![
        Msg::with("rule-length", "min", policy.min_length).arg("max", policy.max_length),
        Msg::with("rule-classes", "count", policy.min_character_classes),
        Msg::with(
            "rule-characters",
            "symbols",
            crate::directory::ENTRA_SYMBOLS,
        ),
    ];
    if policy.disallow_username {
        rules.push(Msg::new("rule-no-username"));
    }
    if policy.history > 0 {
        rules.push(Msg::with("rule-history", "count", policy.history));
    }
    if policy.expiry_days > 0 {
        rules.push(Msg::with("rule-expiry", "days", policy.expiry_days));
    }
    rules
}

/// The label of a user attribute on the employee's profile.
pub fn attribute_label(attribute: crate::attributes::Attribute) -> Msg {
    use crate::attributes::Attribute as A;
    Msg::new(match attribute {
        A::Username => "attr-username",
        A::Firstname => "attr-firstname",
        A::Lastname => "attr-lastname",
        A::Email => "attr-email",
        A::AlternateEmail => "attr-alternate-email",
        A::JobTitle => "attr-job-title",
        A::Department => "attr-department",
        A::Location => "attr-location",
        A::Manager => "attr-manager",
        A::WorkStreetAddress => "attr-work-street",
        A::WorkLocality => "attr-work-city",
        A::WorkRegion => "attr-work-state",
        A::WorkPostalCode => "attr-work-postal-code",
        A::WorkCountry => "attr-work-country",
        A::WorkPhone => "attr-work-phone",
        A::MobilePhone => "attr-mobile-phone",
    })
}

/// A Microsoft 365 binding's state as the employee reads it.
pub fn binding_state(state: crate::binding::BindingState) -> Msg {
    use crate::binding::BindingState as S;
    Msg::new(match state {
        S::Pending => "binding-pending",
        S::Bound => "binding-bound",
        S::Failed => "binding-failed",
        S::Unbound => "binding-unbound",
    })
}
