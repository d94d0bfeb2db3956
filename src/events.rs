//! Directory Insights: the event log of every admin change and every security-relevant refusal.

use chrono::{DateTime, Utc};

/// Who caused an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// An admin account (console or API).
    Admin(String),
    /// The command line, with the operating-system user that ran it.
    Cli(String),
    /// An end user of the directory (SSO sign-in).
    User(String),
    /// An API key of the JSON API, by its name.
    ApiKey(String),
    /// idbridge itself (start-up, workers).
    System,
    /// Somebody not yet identified (a failed sign-in, a rejected SAML message).
    Anonymous,
}

impl Actor {
    /// The actor of CLI commands: `cli:<os account>`, the account the process runs as (not
    /// `$USER`, which anyone can set, and which sudo, cron and systemd leave unset or stale).
    pub fn cli() -> Self {
        Actor::Cli(os_account())
    }
}

/// The name of the account this process runs as: its real uid (the owner of `/proc/self`)
/// looked up in `/etc/passwd`; `uid:N` when the uid has no name there. Read from the files
/// rather than through libc's getpwuid, which would need unsafe code.
fn os_account() -> String {
    use std::os::unix::fs::MetadataExt;
    let Ok(uid) = std::fs::metadata("/proc/self").map(|m| m.uid()) else {
        return std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    };
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| {
            passwd.lines().find_map(|line| {
                let mut fields = line.split(':');
                let name = fields.next()?;
                let id = fields.nth(1)?;
                (id.parse::<u32>().ok()? == uid).then(|| name.to_string())
            })
        })
        .unwrap_or_else(|| format!("uid:{uid}"))
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Actor::Admin(name) => write!(f, "admin:{name}"),
            Actor::Cli(name) => write!(f, "cli:{name}"),
            Actor::User(name) => write!(f, "user:{name}"),
            Actor::ApiKey(name) => write!(f, "apikey:{name}"),
            Actor::System => f.write_str("system"),
            Actor::Anonymous => f.write_str("anonymous"),
        }
    }
}

/// Event type names, in the product's words (seed 004 names the integration ones).
pub mod kind {
    pub const USER_CREATE: &str = "user_create";
    pub const USER_UPDATE: &str = "user_update";
    pub const USER_DELETE: &str = "user_delete";
    pub const USER_SUSPEND: &str = "user_suspend";
    pub const USER_ACTIVATE: &str = "user_activate";
    pub const USER_PASSWORD_SET: &str = "user_password_set";
    pub const USER_PASSWORD_REJECTED: &str = "user_password_rejected";
    pub const ADMIN_CREATE: &str = "admin_create";
    pub const ADMIN_LOGIN_SUCCESS: &str = "admin_login_success";
    pub const ADMIN_LOGIN_FAILED: &str = "admin_login_failed";
    /// Admin sign-in refused after too many failures (password guessing).
    pub const ADMIN_LOGIN_THROTTLED: &str = "admin_login_throttled";
    pub const ADMIN_LOGOUT: &str = "admin_logout";
    pub const ADMIN_PASSWORD_CHANGE: &str = "admin_password_change";
    /// An admin account was disabled: sign-in, its sessions and its API keys refused.
    pub const ADMIN_DISABLE: &str = "admin_disable";
    /// A disabled admin account was enabled again.
    pub const ADMIN_ENABLE: &str = "admin_enable";
    /// An admin account was deleted (the API keys it created revoked).
    pub const ADMIN_DELETE: &str = "admin_delete";
    /// An admin account was given another role.
    pub const ADMIN_ROLE_CHANGE: &str = "admin_role_change";
    /// Another admin (or the CLI) gave an admin a new one-time password.
    pub const ADMIN_PASSWORD_RESET: &str = "admin_password_reset";
    /// A change to an admin account refused: the last active full admin, or one's own account.
    pub const ADMIN_CHANGE_REFUSED: &str = "admin_change_refused";
    /// A console or API request refused: CSRF, read-only role, bad API key.
    pub const ADMIN_ACCESS_DENIED: &str = "admin_access_denied";
    pub const API_KEY_CREATE: &str = "api_key_create";
    pub const API_KEY_REVOKE: &str = "api_key_revoke";
    pub const SIGNING_CERT_CREATE: &str = "signing_certificate_create";
    /// A rollover's next signing certificate was made and published (not signing yet).
    pub const SIGNING_CERT_PREPARED: &str = "signing_certificate_prepared";
    /// The next signing certificate now signs; the one before is still trusted.
    pub const SIGNING_CERT_PROMOTED: &str = "signing_certificate_promoted";
    /// The previous signing certificate is no longer published nor trusted by Microsoft.
    pub const SIGNING_CERT_RETIRED: &str = "signing_certificate_retired";
    /// A prepared next signing certificate was given up before it signed anything.
    pub const SIGNING_CERT_DISCARDED: &str = "signing_certificate_discarded";
    pub const SSO_LOGIN_SUCCESS: &str = "sso_login_success";
    /// Every step of a sign-in passed (password, and a second factor where needed): a new
    /// idbridge session.
    pub const SSO_SESSION_START: &str = "sso_session_start";
    pub const SSO_LOGIN_FAILED: &str = "sso_login_failed";
    /// Too many failed SSO sign-ins: an account name or a client address is locked for a while.
    pub const SIGN_IN_THROTTLED: &str = "sign_in_throttled";
    pub const SSO_ASSERTION_ISSUED: &str = "sso_assertion_issued";
    pub const SSO_ACCESS_REFUSED: &str = "sso_access_refused";
    pub const SAML_REQUEST_REJECTED: &str = "saml_request_rejected";
    pub const SSO_LOGOUT: &str = "sso_logout";
    /// A LogoutRequest that did not name the browser's own session; nothing was ended.
    pub const SAML_LOGOUT_REFUSED: &str = "saml_logout_refused";
    /// A passkey (WebAuthn credential) was added to a user.
    pub const PASSKEY_REGISTER: &str = "passkey_register";
    /// A passkey was removed from a user.
    pub const PASSKEY_DELETE: &str = "passkey_delete";
    /// A passkey answered a sign-in (second factor or passwordless).
    pub const PASSKEY_AUTHENTICATED: &str = "passkey_authenticated";
    /// A passkey ceremony refused: replayed or expired ceremony, another user's credential,
    /// wrong origin or challenge (`details.reason`).
    pub const PASSKEY_REFUSED: &str = "passkey_refused";
    /// A passkey's signature counter went back: the credential may have been copied.
    pub const PASSKEY_CLONE_SUSPECTED: &str = "passkey_clone_suspected";
    /// A user-portal request refused (a form without the session's CSRF token).
    pub const PORTAL_ACCESS_DENIED: &str = "portal_access_denied";
    /// Someone asked for a password-reset link (for an account that exists or not).
    pub const PASSWORD_RESET_REQUESTED: &str = "password_reset_requested";
    /// A password-reset link was handed to the SMTP server.
    pub const PASSWORD_RESET_SENT: &str = "password_reset_sent";
    /// The SMTP server did not take a password-reset mail.
    pub const PASSWORD_RESET_SEND_FAILED: &str = "password_reset_send_failed";
    /// A password-reset link was used: the password was changed through it.
    pub const PASSWORD_RESET_USED: &str = "password_reset_used";
    /// A reset request or link refused: unknown, used, expired or superseded link, a
    /// suspended account, too many links for one account.
    pub const PASSWORD_RESET_REFUSED: &str = "password_reset_refused";
    /// Too many reset requests for one typed name or from one address: refused for a while.
    pub const PASSWORD_RESET_THROTTLED: &str = "password_reset_throttled";
    pub const M365_CONNECT: &str = "m365_connect";
    /// The app registration (tenant, client ID, credential) was changed in the console or API.
    pub const M365_APP_REGISTRATION_CHANGED: &str = "m365_app_registration_changed";
    /// The organisation's name, logo or accent colour on the employee pages was changed.
    pub const BRANDING_CHANGED: &str = "branding_changed";
    /// A SAML service provider was registered in the console or API.
    pub const SAML_SP_REGISTERED: &str = "saml_sp_registered";
    /// A registered SAML service provider was changed.
    pub const SAML_SP_CHANGED: &str = "saml_sp_changed";
    /// A registered SAML service provider was removed.
    pub const SAML_SP_REMOVED: &str = "saml_sp_removed";
    pub const M365_CONNECT_FAILED: &str = "m365_connect_failed";
    pub const M365_TOKEN_REFRESH_FAILED: &str = "m365_token_refresh_failed";
    pub const M365_DEACTIVATE: &str = "m365_deactivate";
    pub const M365_IMPORT: &str = "m365_import";
    pub const M365_IMPORT_USER_FAILED: &str = "m365_import_user_failed";
    pub const M365_BIND: &str = "m365_bind";
    pub const M365_UNBIND: &str = "m365_unbind";
    pub const M365_USER_CREATED: &str = "m365_user_created";
    pub const M365_USER_ADOPTED: &str = "m365_user_adopted";
    pub const M365_SYNC_FAILED: &str = "m365_sync_failed";
    pub const M365_SYNC_RETRY: &str = "m365_sync_retry";
    /// A domain was federated to idbridge through Graph.
    pub const M365_DOMAIN_FEDERATED: &str = "m365_domain_federated";
    /// A domain federated to idbridge was made managed again through Graph.
    pub const M365_DOMAIN_UNFEDERATED: &str = "m365_domain_unfederated";
    /// Seed 004: an attribute's direction was set to Import or Export.
    pub const INTEGRATION_ATTRIBUTE_INCLUDE: &str = "integrationattribute_include";
    /// Seed 004: an attribute's direction was set to Exclude.
    pub const INTEGRATION_ATTRIBUTE_EXCLUDE: &str = "integrationattribute_exclude";
    /// A TOTP authenticator was confirmed with its first code.
    pub const MFA_TOTP_ENROLLED: &str = "mfa_totp_enrolled";
    /// A TOTP authenticator was removed by its user.
    pub const MFA_TOTP_REMOVED: &str = "mfa_totp_removed";
    /// A new set of recovery codes replaced the old one.
    pub const MFA_RECOVERY_CODES_CREATED: &str = "mfa_recovery_codes_created";
    /// A recovery code was used to sign in (the user should make new ones).
    pub const MFA_RECOVERY_CODE_USED: &str = "mfa_recovery_code_used";
    /// A second factor passed during a sign-in.
    pub const MFA_PASSED: &str = "mfa_passed";
    /// A wrong, reused or malformed second-factor code, or an enrolment confirmed wrongly.
    pub const MFA_FAILED: &str = "mfa_failed";
    /// Too many wrong second-factor codes: the account's second factor is locked for a while.
    pub const MFA_THROTTLED: &str = "mfa_throttled";
    /// An admin removed every second factor of a user.
    pub const MFA_RESET: &str = "mfa_reset";
    /// An admin changed whether the `chosen` MFA policy requires a user's second factor.
    pub const MFA_REQUIREMENT_SET: &str = "mfa_requirement_set";
    /// An admin asked a user to change their password at the next sign-in.
    pub const USER_PASSWORD_CHANGE_REQUIRED: &str = "user_password_change_required";

    /// Every event type, for checking a type filter (a unit test keeps it complete).
    pub const ALL: &[&str] = &[
        USER_CREATE,
        USER_UPDATE,
        USER_DELETE,
        USER_SUSPEND,
        USER_ACTIVATE,
        USER_PASSWORD_SET,
        USER_PASSWORD_REJECTED,
        ADMIN_CREATE,
        ADMIN_LOGIN_SUCCESS,
        ADMIN_LOGIN_FAILED,
        ADMIN_LOGIN_THROTTLED,
        ADMIN_LOGOUT,
        ADMIN_PASSWORD_CHANGE,
        ADMIN_DISABLE,
        ADMIN_ENABLE,
        ADMIN_DELETE,
        ADMIN_ROLE_CHANGE,
        ADMIN_PASSWORD_RESET,
        ADMIN_CHANGE_REFUSED,
        ADMIN_ACCESS_DENIED,
        API_KEY_CREATE,
        API_KEY_REVOKE,
        SIGNING_CERT_CREATE,
        SIGNING_CERT_PREPARED,
        SIGNING_CERT_PROMOTED,
        SIGNING_CERT_RETIRED,
        SIGNING_CERT_DISCARDED,
        SSO_LOGIN_SUCCESS,
        SSO_SESSION_START,
        SSO_LOGIN_FAILED,
        SIGN_IN_THROTTLED,
        SSO_ASSERTION_ISSUED,
        SSO_ACCESS_REFUSED,
        SAML_REQUEST_REJECTED,
        SSO_LOGOUT,
        SAML_LOGOUT_REFUSED,
        PASSKEY_REGISTER,
        PASSKEY_DELETE,
        PASSKEY_AUTHENTICATED,
        PASSKEY_REFUSED,
        PASSKEY_CLONE_SUSPECTED,
        PORTAL_ACCESS_DENIED,
        PASSWORD_RESET_REQUESTED,
        PASSWORD_RESET_SENT,
        PASSWORD_RESET_SEND_FAILED,
        PASSWORD_RESET_USED,
        PASSWORD_RESET_REFUSED,
        PASSWORD_RESET_THROTTLED,
        M365_CONNECT,
        M365_APP_REGISTRATION_CHANGED,
        BRANDING_CHANGED,
        SAML_SP_REGISTERED,
        SAML_SP_CHANGED,
        SAML_SP_REMOVED,
        M365_CONNECT_FAILED,
        M365_TOKEN_REFRESH_FAILED,
        M365_DEACTIVATE,
        M365_IMPORT,
        M365_IMPORT_USER_FAILED,
        M365_BIND,
        M365_UNBIND,
        M365_USER_CREATED,
        M365_USER_ADOPTED,
        M365_SYNC_FAILED,
        M365_SYNC_RETRY,
        M365_DOMAIN_FEDERATED,
        M365_DOMAIN_UNFEDERATED,
        INTEGRATION_ATTRIBUTE_INCLUDE,
        INTEGRATION_ATTRIBUTE_EXCLUDE,
        MFA_TOTP_ENROLLED,
        MFA_TOTP_REMOVED,
        MFA_RECOVERY_CODES_CREATED,
        MFA_RECOVERY_CODE_USED,
        MFA_PASSED,
        MFA_FAILED,
        MFA_THROTTLED,
        MFA_RESET,
        MFA_REQUIREMENT_SET,
        USER_PASSWORD_CHANGE_REQUIRED,
    ];
}

/// An event about to be recorded.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub at: DateTime<Utc>,
    pub actor: String,
    pub event_type: &'static str,
    pub target: Option<String>,
    pub details: serde_json::Value,
    pub client_ip: Option<String>,
}

impl NewEvent {
    /// An event with empty details.
    pub fn new(
        at: DateTime<Utc>,
        actor: &Actor,
        event_type: &'static str,
        target: Option<&str>,
    ) -> Self {
        Self {
            at,
            actor: actor.to_string(),
            event_type,
            target: target.map(str::to_string),
            details: serde_json::Value::Object(Default::default()),
            client_ip: None,
        }
    }

    /// Sets the details (never put a secret here).
    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }

    /// Sets the client address of the request that caused the event.
    pub fn client_ip(mut self, ip: Option<String>) -> Self {
        self.client_ip = ip;
        self
    }
}

/// What an event type means, in the words the console shows beside its code.
pub fn label(event_type: &str) -> &'static str {
    match event_type {
        "user_create" => "User created",
        "user_update" => "User changed",
        "user_delete" => "User deleted",
        "user_suspend" => "User suspended",
        "user_activate" => "User activated",
        "user_password_set" => "Password set",
        "user_password_rejected" => "Password refused by the policy",
        "admin_create" => "Admin created",
        "admin_login_success" => "Admin signed in",
        "admin_login_failed" => "Admin sign-in failed",
        "admin_login_throttled" => "Admin sign-in locked",
        "admin_logout" => "Admin signed out",
        "admin_password_change" => "Admin password changed",
        "admin_disable" => "Admin disabled",
        "admin_enable" => "Admin enabled",
        "admin_delete" => "Admin deleted",
        "admin_role_change" => "Admin role changed",
        "admin_password_reset" => "Admin password reset",
        "admin_change_refused" => "Admin change refused",
        "admin_access_denied" => "Console or API request refused",
        "api_key_create" => "API key created",
        "api_key_revoke" => "API key revoked",
        "signing_certificate_create" => "Signing certificate created",
        "signing_certificate_prepared" => "Next signing certificate prepared",
        "signing_certificate_promoted" => "Signing certificate promoted",
        "signing_certificate_retired" => "Previous signing certificate retired",
        "signing_certificate_discarded" => "Next signing certificate discarded",
        "sso_login_success" => "Password accepted",
        "sso_session_start" => "Signed in",
        "sso_login_failed" => "Sign-in failed",
        "sign_in_throttled" => "Sign-in locked",
        "sso_assertion_issued" => "Signed in to an application",
        "sso_access_refused" => "Refused",
        "saml_request_rejected" => "SAML request rejected",
        "sso_logout" => "Signed out",
        "saml_logout_refused" => "Sign-out request refused",
        "passkey_register" => "Passkey added",
        "passkey_delete" => "Passkey removed",
        "passkey_authenticated" => "Signed in with a passkey",
        "passkey_refused" => "Passkey refused",
        "passkey_clone_suspected" => "Passkey may be cloned",
        "portal_access_denied" => "Portal request refused",
        "password_reset_requested" => "Password reset asked for",
        "password_reset_sent" => "Password reset link sent",
        "password_reset_send_failed" => "Password reset link not sent",
        "password_reset_used" => "Password reset by link",
        "password_reset_refused" => "Password reset link refused",
        "password_reset_throttled" => "Password reset requests limited",
        "m365_connect" => "Microsoft 365 connected",
        "m365_app_registration_changed" => "Microsoft 365 app registration changed",
        "branding_changed" => "Branding changed",
        "saml_sp_registered" => "Service provider registered",
        "saml_sp_changed" => "Service provider changed",
        "saml_sp_removed" => "Service provider removed",
        "m365_connect_failed" => "Microsoft 365 connection failed",
        "m365_token_refresh_failed" => "Microsoft 365 token refused",
        "m365_deactivate" => "Microsoft 365 connection deactivated",
        "m365_import" => "Users imported from Microsoft 365",
        "m365_import_user_failed" => "User not imported",
        "m365_bind" => "Bound to Microsoft 365",
        "m365_unbind" => "Unbound from Microsoft 365",
        "m365_user_created" => "Microsoft 365 account created",
        "m365_user_adopted" => "Microsoft 365 account adopted",
        "m365_sync_failed" => "Change refused by Microsoft 365",
        "m365_sync_retry" => "Change to Microsoft 365 retried",
        "m365_domain_federated" => "Domain federated to idbridge",
        "m365_domain_unfederated" => "Domain made managed",
        "integrationattribute_include" => "Attribute exported to Microsoft 365",
        "integrationattribute_exclude" => "Attribute no longer exported",
        "mfa_totp_enrolled" => "Authenticator app added",
        "mfa_totp_removed" => "Authenticator app removed",
        "mfa_recovery_codes_created" => "Recovery codes created",
        "mfa_recovery_code_used" => "Recovery code used",
        "mfa_passed" => "Second factor passed",
        "mfa_failed" => "Second factor failed",
        "mfa_throttled" => "Second factor locked",
        "mfa_reset" => "Second factors reset",
        "mfa_requirement_set" => "Second factor requirement changed",
        "user_password_change_required" => "Password change required",
        _ => "",
    }
}

/// What an end user's sign-in event amounts to on the console overview. The one place that
/// says which event types are sign-ins, refusals and failures; admins' own console sign-ins
/// are not counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignInOutcome {
    /// idbridge answered an application (Microsoft 365 or another) with a signed assertion.
    SignedIn,
    /// idbridge said no whatever the credentials: a suspended, unbound or expired account, a
    /// locked name, address or second factor, a rejected SAML request.
    Refused,
    /// The person did not prove who they are: a wrong password, second-factor code or passkey.
    Failed,
}

impl SignInOutcome {
    /// Every outcome, in the order the overview shows them.
    pub const ALL: [SignInOutcome; 3] = [Self::SignedIn, Self::Refused, Self::Failed];

    /// The event types counted as this outcome.
    pub fn event_types(self) -> &'static [&'static str] {
        match self {
            Self::SignedIn => &[kind::SSO_ASSERTION_ISSUED],
            Self::Refused => &[
                kind::SSO_ACCESS_REFUSED,
                kind::SIGN_IN_THROTTLED,
                kind::MFA_THROTTLED,
                kind::SAML_REQUEST_REJECTED,
            ],
            Self::Failed => &[
                kind::SSO_LOGIN_FAILED,
                kind::MFA_FAILED,
                kind::PASSKEY_REFUSED,
            ],
        }
    }

    /// The outcome an event type counts as, if any.
    pub fn of(event_type: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|o| o.event_types().contains(&event_type))
    }

    /// Every event type counted as some outcome.
    pub fn all_event_types() -> Vec<&'static str> {
        Self::ALL
            .into_iter()
            .flat_map(|o| o.event_types().iter().copied())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_cli_actor_is_the_os_account_whatever_user_says() {
        let super::Actor::Cli(name) = super::Actor::cli() else {
            panic!("a CLI actor");
        };
        assert!(!name.is_empty() && name != "unknown", "{name}");
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        assert!(
            name.starts_with("uid:") || passwd.lines().any(|l| l.starts_with(&format!("{name}:"))),
            "{name}"
        );
    }

    #[test]
    fn every_event_type_has_a_label() {
        for kind in super::kind::ALL {
            assert!(!super::label(kind).is_empty(), "{kind}");
        }
    }

    #[test]
    fn every_event_type_is_in_the_list_of_all() {
        let source = include_str!("events.rs");
        let declared = source
            .lines()
            .filter_map(|l| l.trim().strip_prefix("pub const "))
            .filter(|l| l.contains(": &str = \""))
            .count();
        assert_eq!(super::kind::ALL.len(), declared);
        let unique: std::collections::HashSet<_> = super::kind::ALL.iter().collect();
        assert_eq!(unique.len(), declared, "no type twice");
    }

    #[test]
    fn each_counted_sign_in_event_type_is_known_and_counts_once() {
        let all = super::SignInOutcome::all_event_types();
        for t in &all {
            assert!(super::kind::ALL.contains(t), "{t}");
            assert_eq!(
                all.iter().filter(|x| *x == t).count(),
                1,
                "{t} counted twice"
            );
        }
        assert_eq!(
            super::SignInOutcome::of(super::kind::SSO_LOGIN_FAILED),
            Some(super::SignInOutcome::Failed)
        );
        assert_eq!(
            super::SignInOutcome::of(super::kind::ADMIN_LOGIN_FAILED),
            None
        );
    }
}
