//! Users of the directory: attributes (seed 004 names), validation and changes.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{json, Map, Value};

use super::DirectoryError;
use crate::attributes::{self, Attribute, AttributeValues, Kind, Presence};
use crate::binding::BindingState;
use crate::store::{UserRow, UserWrite};

/// Whether a user may sign in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserState {
    Active,
    Suspended,
}

impl UserState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            UserState::Active => "active",
            UserState::Suspended => "suspended",
        }
    }
}

/// The Microsoft 365 binding of a user, as far as sign-in needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct M365Binding {
    /// The immutable ID stamped on the M365 account: the SAML NameID.
    pub immutable_id: String,
    pub user_principal_name: String,
    pub state: BindingState,
    /// The user's real password has reached Microsoft 365 (seed 000).
    pub password_pushed: bool,
}

/// A user of the directory.
#[derive(Debug, Clone)]
pub struct User {
    pub id: String,
    pub username: String,
    /// The company email (exported to Microsoft 365 as userPrincipalName).
    pub email: String,
    pub firstname: String,
    pub lastname: String,
    /// The optional attributes of the catalogue (the manager by username); read them with
    /// [`User::get`].
    pub attributes: AttributeValues,
    pub manager_id: Option<String>,
    pub state: UserState,
    pub(crate) password_hash: Option<String>,
    pub password_changed_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    pub m365: Option<M365Binding>,
    /// The user must change their password at the next sign-in (an admin asked for it).
    pub must_change_password: bool,
    /// The `chosen` MFA policy requires a second factor of this user.
    pub mfa_required: bool,
}

/// Names that service providers can receive besides the catalogue's attributes.
const DERIVED_NAMES: &[&str] = &["displayName", "immutableId"];

impl User {
    /// Names accepted by [`User::attribute`]: the catalogue's, then `displayName` and
    /// `immutableId`.
    pub fn attribute_names() -> Vec<&'static str> {
        Attribute::all()
            .map(Attribute::name)
            .chain(DERIVED_NAMES.iter().copied())
            .collect()
    }

    /// Whether [`User::attribute`] knows the name.
    pub fn knows_attribute(name: &str) -> bool {
        DERIVED_NAMES.contains(&name) || Attribute::parse(name).is_some()
    }

    /// The value of a catalogue attribute, if not empty.
    pub fn get(&self, attribute: Attribute) -> Option<&str> {
        let value = match attribute {
            Attribute::Username => Some(self.username.as_str()),
            Attribute::Email => Some(self.email.as_str()),
            Attribute::Firstname => Some(self.firstname.as_str()),
            Attribute::Lastname => Some(self.lastname.as_str()),
            other => self.attributes.get(other),
        };
        value.filter(|v| !v.is_empty())
    }

    /// The value of an attribute by name (a catalogue name or older spelling, `displayName`,
    /// `immutableId`).
    pub fn attribute(&self, name: &str) -> Option<String> {
        let value = match name {
            "displayName" => Some(self.display_name()),
            "immutableId" => self.m365.as_ref().map(|b| b.immutable_id.clone()),
            _ => Attribute::parse(name).and_then(|a| self.get(a).map(str::to_string)),
        };
        value.filter(|v| !v.is_empty())
    }

    /// First and last name, as exported to Microsoft 365's displayName.
    pub fn display_name(&self) -> String {
        let name = format!("{} {}", self.firstname, self.lastname);
        let name = name.trim();
        if name.is_empty() {
            self.username.clone()
        } else {
            name.to_string()
        }
    }

    /// Whether the user has a password set.
    pub fn has_password(&self) -> bool {
        self.password_hash.is_some()
    }

    /// The catalogue's attributes as JSON, nested at the dots of their names.
    pub fn attributes_json(&self) -> Map<String, Value> {
        attributes::to_json(|a| self.get(a).map(str::to_string))
    }

    /// The user as JSON with the catalogue's names (never the password hash), as the API
    /// gives it.
    pub fn to_json(&self) -> Value {
        let mut out = Map::new();
        out.insert("id".into(), json!(self.id));
        out.extend(self.attributes_json());
        out.insert("displayName".into(), json!(self.display_name()));
        let rest = json!({
            "state": self.state.as_str(),
            "hasPassword": self.has_password(),
            "passwordChangedAt": self.password_changed_at.map(millis_to_rfc3339),
            "createdAt": millis_to_rfc3339(self.created_at),
            "updatedAt": millis_to_rfc3339(self.updated_at),
            "m365": self.m365.as_ref().map(|b| json!({
                "immutableId": b.immutable_id,
                "userPrincipalName": b.user_principal_name,
                "state": b.state,
            })),
        });
        if let Value::Object(rest) = rest {
            out.extend(rest);
        }
        Value::Object(out)
    }

    pub(crate) fn from_row(row: UserRow) -> Result<Self, DirectoryError> {
        let state = match row.state.as_str() {
            "active" => UserState::Active,
            "suspended" => UserState::Suspended,
            other => {
                return Err(DirectoryError::Store(crate::store::StoreError::Corrupt(
                    format!("user {} has unknown state {other:?}", row.id),
                )))
            }
        };
        let m365 = match (row.immutable_id, row.user_principal_name) {
            (Some(immutable_id), Some(user_principal_name)) => Some(M365Binding {
                immutable_id,
                user_principal_name,
                state: match row.binding_state.as_deref() {
                    None => BindingState::Bound,
                    Some(text) => BindingState::parse(text).ok_or_else(|| {
                        DirectoryError::Store(crate::store::StoreError::Corrupt(format!(
                            "user {} has unknown binding state {text:?}",
                            row.id
                        )))
                    })?,
                },
                password_pushed: row.password_pushed == Some(1),
            }),
            _ => None,
        };
        Ok(Self {
            id: row.id,
            username: row.username,
            email: row.email,
            firstname: row.firstname,
            lastname: row.lastname,
            attributes: row.attributes,
            manager_id: row.manager_id,
            state,
            password_hash: row.password_hash,
            password_changed_at: row.password_changed_at,
            created_at: row.created_at,
            updated_at: row.updated_at,
            m365,
            must_change_password: row.must_change_password != 0,
            mfa_required: row.mfa_required != 0,
        })
    }

    pub(crate) fn to_write(&self) -> UserWrite {
        let mut attributes = self.attributes.clone();
        // The manager is written as its id.
        attributes.set(Attribute::Manager, None);
        UserWrite {
            id: self.id.clone(),
            username: self.username.clone(),
            email: self.email.clone(),
            firstname: self.firstname.clone(),
            lastname: self.lastname.clone(),
            attributes,
            manager_id: self.manager_id.clone(),
            state: self.state.as_str().into(),
        }
    }
}

/// Formats Unix milliseconds as RFC 3339 UTC.
pub fn millis_to_rfc3339(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .map(|t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// Attribute changes by attribute: an attribute left out stays as it is; an empty value clears
/// an optional one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserChanges(BTreeMap<Attribute, String>);

impl UserChanges {
    /// No changes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets an attribute's new value (empty clears an optional one).
    pub fn set(&mut self, attribute: Attribute, value: impl Into<String>) -> &mut Self {
        self.0.insert(attribute, value.into());
        self
    }

    /// These changes and one more.
    pub fn with(mut self, attribute: Attribute, value: impl Into<String>) -> Self {
        self.set(attribute, value);
        self
    }

    /// The new value of an attribute, if it changes.
    pub fn get(&self, attribute: Attribute) -> Option<&str> {
        self.0.get(&attribute).map(String::as_str)
    }

    /// The changes, in catalogue order.
    pub fn iter(&self) -> impl Iterator<Item = (Attribute, &str)> {
        self.0.iter().map(|(a, v)| (*a, v.as_str()))
    }

    /// Whether nothing is changed at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The names of the attributes this change touches (for events and the outbox).
    pub fn changed_fields(&self) -> Vec<&'static str> {
        self.0.keys().map(|a| a.name()).collect()
    }

    /// Validates the changes and applies them to `base` (the manager is resolved by the caller).
    pub(crate) fn apply(&self, base: &mut UserWrite) -> Result<(), DirectoryError> {
        for (attribute, raw) in self.iter() {
            let spec = attribute.spec();
            let check = |v: &str| match spec.kind {
                Kind::Username => validate_username(v),
                Kind::Email => validate_email(spec.name, v),
                Kind::Text | Kind::Phone => validate_text(spec.name, v, spec.max),
                Kind::UserRef => Ok(v.trim().to_string()),
            };
            let value = match spec.presence {
                Presence::Optional => optional(raw, check)?,
                // Cleared, a required attribute says so rather than that "" is malformed.
                Presence::Required if raw.trim().is_empty() => {
                    return Err(invalid(spec.name, "is required and cannot be cleared"))
                }
                Presence::Required | Presence::Always => Some(check(raw)?),
            };
            match attribute {
                Attribute::Username => base.username = value.unwrap_or_default(),
                Attribute::Email => base.email = value.unwrap_or_default(),
                Attribute::Firstname => base.firstname = value.unwrap_or_default(),
                Attribute::Lastname => base.lastname = value.unwrap_or_default(),
                // Resolved to `manager_id` by the directory.
                Attribute::Manager => {}
                other => base.attributes.set(other, value),
            }
        }
        Ok(())
    }
}

fn optional(
    value: &str,
    check: impl Fn(&str) -> Result<String, DirectoryError>,
) -> Result<Option<String>, DirectoryError> {
    if value.trim().is_empty() {
        Ok(None)
    } else {
        check(value).map(Some)
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> DirectoryError {
    DirectoryError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// Usernames: 1–64 characters of a–z, 0–9, `.`, `_`, `-`, starting with a letter or digit;
/// stored lower-case.
pub fn validate_username(value: &str) -> Result<String, DirectoryError> {
    let v = value.trim().to_lowercase();
    if v.is_empty() || v.len() > 64 {
        return Err(invalid("username", "must be 1 to 64 characters"));
    }
    let first_ok = v.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok
        || !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(invalid(
            "username",
            "may contain only letters a-z, digits, '.', '_' and '-', and must start with a letter or digit",
        ));
    }
    Ok(v)
}

/// Email addresses: one `@`, a dot-atom local part and a domain of letters, digits and hyphens.
pub fn validate_email(field: &'static str, value: &str) -> Result<String, DirectoryError> {
    let v = value.trim();
    let bad = || invalid(field, format!("{v:?} is not a valid email address"));
    if v.len() > 254 {
        return Err(invalid(field, "must be at most 254 characters"));
    }
    let (local, domain) = v.split_once('@').ok_or_else(bad)?;
    if local.is_empty()
        || local.len() > 64
        || local.starts_with('.')
        || local.ends_with('.')
        || local.contains("..")
        || !local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~.-".contains(c))
    {
        return Err(bad());
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2
        || labels.iter().any(|l| {
            l.is_empty()
                || l.len() > 63
                || l.starts_with('-')
                || l.ends_with('-')
                || !l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
    {
        return Err(bad());
    }
    Ok(v.to_string())
}

/// Free text: trimmed, at most `max` characters, no control characters.
pub fn validate_text(
    field: &'static str,
    value: &str,
    max: usize,
) -> Result<String, DirectoryError> {
    let v = value.trim();
    if v.chars().count() > max {
        return Err(invalid(field, format!("must be at most {max} characters")));
    }
    if v.chars().any(char::is_control) {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        assert_eq!(validate_username(" Alice.B ").unwrap(), "alice.b");
        assert!(validate_username("").is_err());
        assert!(validate_username("-x").is_err());
        assert!(validate_username("a b").is_err());
        assert!(validate_username(&"a".repeat(65)).is_err());
    }

    #[test]
    fn emails() {
        assert!(validate_email("email", "o'brien@contoso.com").is_ok());
        for bad in [
            "a",
            "a@b",
            "a@@b.com",
            ".a@b.com",
            "a@-b.com",
            "a b@c.com",
            "a@b..com",
        ] {
            assert!(validate_email("email", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn text_limits() {
        assert!(validate_text("department", &"x".repeat(64), 64).is_ok());
        assert!(validate_text("department", &"x".repeat(65), 64).is_err());
        assert!(validate_text("department", "a\u{7}b", 64).is_err());
    }
}
