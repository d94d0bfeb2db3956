//! The Microsoft Graph permissions idbridge uses, the calls that need them, and what a
//! connection's token actually grants.
//!
//! The permission tables follow each API's page in the Microsoft Graph v1.0 reference
//! ("Permissions": least privileged, then higher privileged, per permission type).

use base64::engine::general_purpose::{STANDARD as BASE64, URL_SAFE_NO_PAD as B64URL};
use base64::Engine;
use serde::Serialize;

use super::graph::GraphError;

/// How the connection authenticates: the admin's consent (delegated) or the app's own
/// credentials (application permissions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantMode {
    /// Scopes consented by an admin (`scp` claim).
    Delegated,
    /// Application permissions granted with admin consent (`roles` claim).
    Application,
}

impl GrantMode {
    /// From the stored connection mode (`delegated` or `application`).
    pub fn from_mode(mode: &str) -> Self {
        if mode == "application" {
            GrantMode::Application
        } else {
            GrantMode::Delegated
        }
    }
}

/// One Graph permission idbridge asks for.
#[derive(Debug, Clone, Copy)]
pub struct Permission {
    /// The permission's name, e.g. `User.ReadWrite.All`.
    pub name: &'static str,
    /// What stops working without it, in the admin's words.
    pub needed_for: &'static str,
    /// Higher permissions Graph accepts instead, when delegated.
    pub delegated_alternatives: &'static [&'static str],
    /// Higher permissions Graph accepts instead, for application tokens.
    pub application_alternatives: &'static [&'static str],
}

impl Permission {
    /// Whether `granted` holds this permission or one Graph accepts instead.
    pub fn satisfied_by(&self, granted: &[String], mode: GrantMode) -> bool {
        let alternatives = match mode {
            GrantMode::Delegated => self.delegated_alternatives,
            GrantMode::Application => self.application_alternatives,
        };
        granted.iter().any(|g| {
            g.eq_ignore_ascii_case(self.name)
                || alternatives.iter().any(|a| g.eq_ignore_ascii_case(a))
        })
    }
}

/// Reading and writing users: import, create, adopt, attributes, manager, block sign-in.
pub const USER_READ_WRITE: Permission = Permission {
    name: "User.ReadWrite.All",
    needed_for: "importing users, binding (creating or adopting Microsoft 365 users), pushing attribute changes and managers, and blocking sign-in on unbind, suspension or password expiry",
    delegated_alternatives: &["Directory.ReadWrite.All"],
    application_alternatives: &["Directory.ReadWrite.All"],
};

/// Setting other users' passwords (`passwordProfile`).
pub const PASSWORD_PROFILE: Permission = Permission {
    name: "User-PasswordProfile.ReadWrite.All",
    needed_for: "pushing passwords to Microsoft 365 (users of managed domains); the consenting admin (delegated) or the app's service principal (application) also needs the User Administrator role",
    // Older versions of the user-update page named these; Graph still accepts them.
    delegated_alternatives: &["Directory.AccessAsUser.All"],
    application_alternatives: &["User.ReadWrite.All", "Directory.ReadWrite.All"],
};

/// Reading the tenant's domains (which are federated, the default domain).
pub const DOMAIN_READ: Permission = Permission {
    name: "Domain.Read.All",
    needed_for: "reading the tenant's domains: which are federated (passwords and immutable IDs are handled differently there) and the default domain",
    delegated_alternatives: &[
        "Domain.ReadWrite.All",
        "Directory.Read.All",
        "Directory.ReadWrite.All",
    ],
    application_alternatives: &[
        "Domain.ReadWrite.All",
        "Directory.Read.All",
        "Directory.ReadWrite.All",
    ],
};

/// Ending a user's Microsoft 365 sessions after a password change (`revokeSignInSessions`).
pub const REVOKE_SESSIONS: Permission = Permission {
    name: "User.RevokeSessions.All",
    needed_for: "signing users out of Microsoft 365 when their password is changed or reset here",
    // user-revokesigninsessions: delegated also accepts these; application accepts no other.
    delegated_alternatives: &["User.ReadWrite.All", "Directory.ReadWrite.All"],
    application_alternatives: &[],
};

/// Federating domains to idbridge (`idbridge m365 federate`). Not asked for at connection:
/// only an admin who lets idbridge federate grants it.
pub const DOMAIN_FEDERATION: Permission = Permission {
    name: "Domain-InternalFederation.ReadWrite.All",
    needed_for: "federating a domain to idbridge and making it managed again from idbridge (the consenting admin also needs the External Identity Provider Administrator, Hybrid Identity Administrator, Domain Name Administrator or Security Administrator role)",
    delegated_alternatives: &["Domain.ReadWrite.All"],
    application_alternatives: &["Domain.ReadWrite.All"],
};

/// Reading a domain's federation settings.
pub const DOMAIN_FEDERATION_READ: Permission = Permission {
    name: "Domain-InternalFederation.Read.All",
    needed_for:
        "showing what Microsoft holds for a federated domain and how it differs from idbridge",
    delegated_alternatives: &[
        "Domain-InternalFederation.ReadWrite.All",
        "Domain.Read.All",
        "Domain.ReadWrite.All",
        "Directory.Read.All",
        "Directory.ReadWrite.All",
    ],
    application_alternatives: &[
        "Domain-InternalFederation.ReadWrite.All",
        "Domain.Read.All",
        "Domain.ReadWrite.All",
        "Directory.Read.All",
        "Directory.ReadWrite.All",
    ],
};

/// Every Graph permission idbridge uses, in the order README lists them.
pub const PERMISSIONS: &[Permission] = &[
    USER_READ_WRITE,
    PASSWORD_PROFILE,
    DOMAIN_READ,
    REVOKE_SESSIONS,
];

/// A Graph call idbridge makes, so a failure can name the call and the permission it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphCall {
    /// `GET /users/{id}` or `GET /users?$select=…` (find the user to bind, import).
    ReadUsers,
    /// `POST /users`.
    CreateUser,
    /// `PATCH /users/{id}` with attributes (bind's overwrite or a change).
    UpdateUser,
    /// `PATCH /users/{id}` with `passwordProfile`.
    SetPassword,
    /// `PATCH /users/{id}` with `accountEnabled`.
    SetAccountEnabled,
    /// `PUT` or `DELETE /users/{id}/manager/$ref`.
    SetManager,
    /// `POST /users/{id}/revokeSignInSessions`.
    RevokeSessions,
    /// `GET /domains`.
    ListDomains,
    /// `GET /domains/{id}/federationConfiguration`.
    ReadFederation,
    /// `POST` or `DELETE /domains/{id}/federationConfiguration`.
    FederateDomain,
}

impl GraphCall {
    /// The request as Graph's reference writes it.
    pub fn request(self) -> &'static str {
        match self {
            GraphCall::ReadUsers => "GET /users",
            GraphCall::CreateUser => "POST /users",
            GraphCall::UpdateUser | GraphCall::SetPassword | GraphCall::SetAccountEnabled => {
                "PATCH /users/{id}"
            }
            GraphCall::SetManager => "PUT /users/{id}/manager/$ref",
            GraphCall::RevokeSessions => "POST /users/{id}/revokeSignInSessions",
            GraphCall::ListDomains => "GET /domains",
            GraphCall::ReadFederation => "GET /domains/{id}/federationConfiguration",
            GraphCall::FederateDomain => "POST /domains/{id}/federationConfiguration",
        }
    }

    /// What the call does, in the admin's words.
    pub fn purpose(self) -> &'static str {
        match self {
            GraphCall::ReadUsers => "reading Microsoft 365 users",
            GraphCall::CreateUser => "creating the Microsoft 365 user",
            GraphCall::UpdateUser => "updating the Microsoft 365 user's attributes",
            GraphCall::SetPassword => "setting the password in Microsoft 365",
            GraphCall::SetAccountEnabled => "blocking or unblocking sign-in in Microsoft 365",
            GraphCall::SetManager => "setting the manager in Microsoft 365",
            GraphCall::RevokeSessions => "signing the user out of Microsoft 365",
            GraphCall::ListDomains => "reading the tenant's domains",
            GraphCall::ReadFederation => "reading the domain's federation settings",
            GraphCall::FederateDomain => "changing the domain's federation",
        }
    }

    /// The permission the call needs.
    pub fn permission(self) -> &'static Permission {
        match self {
            GraphCall::SetPassword => &PASSWORD_PROFILE,
            GraphCall::RevokeSessions => &REVOKE_SESSIONS,
            GraphCall::ListDomains => &DOMAIN_READ,
            GraphCall::ReadFederation => &DOMAIN_FEDERATION_READ,
            GraphCall::FederateDomain => &DOMAIN_FEDERATION,
            _ => &USER_READ_WRITE,
        }
    }

    /// A failure of this call, for people: which call, Graph's answer, and for a 403 the
    /// permission (and role) to grant.
    pub fn explain(self, error: &GraphError) -> String {
        let mut message = format!("{} ({}) failed: {error}", self.request(), self.purpose());
        if error.status() == Some(403) {
            let permission = self.permission();
            message.push_str(&format!(
                ". Fix: grant the Microsoft Graph permission {} (needed for {}) to the idbridge app \
                 registration in the Entra admin center (API permissions), then run \
                 `idbridge m365 connect` again so the token carries it",
                permission.name, permission.needed_for
            ));
            if matches!(self, GraphCall::SetPassword | GraphCall::SetAccountEnabled) {
                message.push_str(
                    "; changing another admin's password or sign-in also needs the Privileged \
                     Authentication Administrator role",
                );
            }
        }
        message
    }
}

/// A permission idbridge uses that the connection's token does not carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MissingPermission {
    /// The permission to grant, e.g. `User.RevokeSessions.All`.
    pub name: String,
    /// What does not work without it.
    pub needed_for: String,
}

/// The permissions idbridge uses that `granted` lacks.
pub fn missing_permissions(granted: &[String], mode: GrantMode) -> Vec<MissingPermission> {
    PERMISSIONS
        .iter()
        .filter(|p| !p.satisfied_by(granted, mode))
        .map(|p| MissingPermission {
            name: p.name.to_string(),
            needed_for: p.needed_for.to_string(),
        })
        .collect()
}

/// What an access token grants: the `roles` claim (application) or the `scp` claim
/// (delegated) of a JWT access token, else the token response's `scope` list. `None` when
/// neither is readable (an opaque token).
///
/// The token came straight from Microsoft's token endpoint over TLS, and idbridge only reads
/// it to tell the admin what is missing, never to decide access, so the signature is not
/// checked here (Graph checks it on every call).
pub fn granted_permissions(
    access_token: &str,
    response_scope: Option<&str>,
) -> Option<Vec<String>> {
    if let Some(claims) = jwt_claims(access_token) {
        if let Some(roles) = claims.get("roles").and_then(|r| r.as_array()) {
            return Some(
                roles
                    .iter()
                    .filter_map(|r| r.as_str())
                    .map(short_name)
                    .collect(),
            );
        }
        if let Some(scp) = claims.get("scp").and_then(|s| s.as_str()) {
            return Some(scp.split_whitespace().map(short_name).collect());
        }
    }
    response_scope
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.split_whitespace().map(short_name).collect())
}

/// `https://graph.microsoft.com/User.ReadWrite.All` → `User.ReadWrite.All`.
fn short_name(scope: &str) -> String {
    scope.rsplit('/').next().unwrap_or(scope).to_string()
}

fn jwt_claims(token: &str) -> Option<serde_json::Value> {
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    let bytes = B64URL
        .decode(payload.trim_end_matches('='))
        .or_else(|_| BASE64.decode(payload))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        format!("e30.{}.sig", B64URL.encode(claims))
    }

    #[test]
    fn roles_and_scopes_are_read_from_the_token() {
        let app = jwt(r#"{"roles":["User.ReadWrite.All","Domain.Read.All"]}"#);
        assert_eq!(
            granted_permissions(&app, None),
            Some(vec![
                "User.ReadWrite.All".to_string(),
                "Domain.Read.All".into()
            ])
        );
        let delegated = jwt(r#"{"scp":"User.ReadWrite.All openid"}"#);
        assert_eq!(
            granted_permissions(&delegated, Some("ignored")),
            Some(vec!["User.ReadWrite.All".to_string(), "openid".into()])
        );
        assert_eq!(
            granted_permissions(
                "opaque",
                Some("https://graph.microsoft.com/Domain.Read.All offline_access")
            ),
            Some(vec!["Domain.Read.All".to_string(), "offline_access".into()])
        );
        assert_eq!(granted_permissions("opaque", None), None);
    }

    #[test]
    fn revocation_needs_its_own_permission_for_applications_only() {
        let granted = vec![
            "User.ReadWrite.All".to_string(),
            "User-PasswordProfile.ReadWrite.All".into(),
            "Domain.Read.All".into(),
        ];
        assert!(missing_permissions(&granted, GrantMode::Delegated).is_empty());
        let missing = missing_permissions(&granted, GrantMode::Application);
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].name, "User.RevokeSessions.All");
        assert!(missing[0].needed_for.contains("signing users out"));
    }

    #[test]
    fn a_refusal_names_the_call_and_the_permission() {
        let error = GraphError::Api {
            status: 403,
            code: "Authorization_RequestDenied".into(),
            message: "Insufficient privileges to complete the operation.".into(),
            target: None,
            detail_code: None,
            request_id: None,
        };
        let text = GraphCall::RevokeSessions.explain(&error);
        assert!(
            text.starts_with("POST /users/{id}/revokeSignInSessions"),
            "{text}"
        );
        assert!(text.contains("User.RevokeSessions.All"), "{text}");
        assert!(text.contains("Authorization_RequestDenied"), "{text}");
    }
}
