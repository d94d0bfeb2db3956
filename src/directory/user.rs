//! Users of the directory: attributes (seed 004 names), validation and changes.

use chrono::{DateTime, TimeZone, Utc};
use serde::Deserialize;
use serde_json::json;

use super::DirectoryError;
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
    pub state: String,
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
    pub alternate_email: Option<String>,
    pub job_title: Option<String>,
    pub department: Option<String>,
    pub location: Option<String>,
    pub manager_id: Option<String>,
    /// The manager's username.
    pub manager: Option<String>,
    pub work_street_address: Option<String>,
    pub work_locality: Option<String>,
    pub work_region: Option<String>,
    pub work_postal_code: Option<String>,
    pub work_country: Option<String>,
    pub phone_work: Option<String>,
    pub phone_mobile: Option<String>,
    pub state: UserState,
    pub(crate) password_hash: Option<String>,
    pub password_changed_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    pub m365: Option<M365Binding>,
}

/// Attribute names (seed 004) that service providers can receive and admins can set.
const ATTRIBUTE_NAMES: &[&str] = &[
    "username",
    "email",
    "firstname",
    "lastname",
    "displayName",
    "alternateEmail",
    "jobTitle",
    "department",
    "location",
    "manager",
    "addresses.work.streetAddress",
    "addresses.work.locality",
    "addresses.work.region",
    "addresses.work.postalCode",
    "addresses.work.country",
    "phoneNumbers.work",
    "phoneNumbers.mobile",
    "immutableId",
];

impl User {
    /// Names accepted by [`User::attribute`].
    pub fn attribute_names() -> &'static [&'static str] {
        ATTRIBUTE_NAMES
    }

    /// The value of an attribute by its seed-004 name.
    pub fn attribute(&self, name: &str) -> Option<String> {
        let value = match name {
            "username" => Some(self.username.clone()),
            "email" => Some(self.email.clone()),
            "firstname" => Some(self.firstname.clone()),
            "lastname" => Some(self.lastname.clone()),
            "displayName" => Some(self.display_name()),
            "alternateEmail" => self.alternate_email.clone(),
            "jobTitle" => self.job_title.clone(),
            "department" => self.department.clone(),
            "location" => self.location.clone(),
            "manager" => self.manager.clone(),
            "addresses.work.streetAddress" => self.work_street_address.clone(),
            "addresses.work.locality" => self.work_locality.clone(),
            "addresses.work.region" => self.work_region.clone(),
            "addresses.work.postalCode" => self.work_postal_code.clone(),
            "addresses.work.country" => self.work_country.clone(),
            "phoneNumbers.work" => self.phone_work.clone(),
            "phoneNumbers.mobile" => self.phone_mobile.clone(),
            "immutableId" => self.m365.as_ref().map(|b| b.immutable_id.clone()),
            _ => None,
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

    /// The user as JSON with the seed's attribute names (never the password hash).
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "id": self.id,
            "username": self.username,
            "email": self.email,
            "firstname": self.firstname,
            "lastname": self.lastname,
            "displayName": self.display_name(),
            "alternateEmail": self.alternate_email,
            "jobTitle": self.job_title,
            "department": self.department,
            "location": self.location,
            "manager": self.manager,
            "addresses": {"work": {
                "streetAddress": self.work_street_address,
                "locality": self.work_locality,
                "region": self.work_region,
                "postalCode": self.work_postal_code,
                "country": self.work_country,
            }},
            "phoneNumbers": {"work": self.phone_work, "mobile": self.phone_mobile},
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
        })
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
                state: row.binding_state.unwrap_or_else(|| "bound".into()),
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
            alternate_email: row.alternate_email,
            job_title: row.job_title,
            department: row.department,
            location: row.location,
            manager_id: row.manager_id,
            manager: row.manager_username,
            work_street_address: row.work_street_address,
            work_locality: row.work_locality,
            work_region: row.work_region,
            work_postal_code: row.work_postal_code,
            work_country: row.work_country,
            phone_work: row.phone_work,
            phone_mobile: row.phone_mobile,
            state,
            password_hash: row.password_hash,
            password_changed_at: row.password_changed_at,
            created_at: row.created_at,
            updated_at: row.updated_at,
            m365,
        })
    }

    pub(crate) fn to_write(&self) -> UserWrite {
        UserWrite {
            id: self.id.clone(),
            username: self.username.clone(),
            email: self.email.clone(),
            firstname: self.firstname.clone(),
            lastname: self.lastname.clone(),
            alternate_email: self.alternate_email.clone(),
            job_title: self.job_title.clone(),
            department: self.department.clone(),
            location: self.location.clone(),
            manager_id: self.manager_id.clone(),
            work_street_address: self.work_street_address.clone(),
            work_locality: self.work_locality.clone(),
            work_region: self.work_region.clone(),
            work_postal_code: self.work_postal_code.clone(),
            work_country: self.work_country.clone(),
            phone_work: self.phone_work.clone(),
            phone_mobile: self.phone_mobile.clone(),
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

/// Attribute changes: `None` leaves a field alone, `Some("")` clears an optional field.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UserChanges {
    pub username: Option<String>,
    pub email: Option<String>,
    pub firstname: Option<String>,
    pub lastname: Option<String>,
    pub alternate_email: Option<String>,
    pub job_title: Option<String>,
    pub department: Option<String>,
    pub location: Option<String>,
    /// The manager's username.
    pub manager: Option<String>,
    pub work_street_address: Option<String>,
    pub work_locality: Option<String>,
    pub work_region: Option<String>,
    pub work_postal_code: Option<String>,
    pub work_country: Option<String>,
    pub phone_work: Option<String>,
    pub phone_mobile: Option<String>,
}

impl UserChanges {
    /// Field names (for messages) and whether anything is changed at all.
    pub fn is_empty(&self) -> bool {
        self.changed_fields().is_empty()
    }

    /// The names of the fields this change touches (for events).
    pub fn changed_fields(&self) -> Vec<&'static str> {
        let fields: [(&'static str, bool); 16] = [
            ("username", self.username.is_some()),
            ("email", self.email.is_some()),
            ("firstname", self.firstname.is_some()),
            ("lastname", self.lastname.is_some()),
            ("alternateEmail", self.alternate_email.is_some()),
            ("jobTitle", self.job_title.is_some()),
            ("department", self.department.is_some()),
            ("location", self.location.is_some()),
            ("manager", self.manager.is_some()),
            (
                "addresses.work.streetAddress",
                self.work_street_address.is_some(),
            ),
            ("addresses.work.locality", self.work_locality.is_some()),
            ("addresses.work.region", self.work_region.is_some()),
            ("addresses.work.postalCode", self.work_postal_code.is_some()),
            ("addresses.work.country", self.work_country.is_some()),
            ("phoneNumbers.work", self.phone_work.is_some()),
            ("phoneNumbers.mobile", self.phone_mobile.is_some()),
        ];
        fields
            .iter()
            .filter(|(_, on)| *on)
            .map(|(n, _)| *n)
            .collect()
    }

    /// Validates the changes and applies them to `base` (the manager is resolved by the caller).
    pub(crate) fn apply(&self, base: &mut UserWrite) -> Result<(), DirectoryError> {
        if let Some(v) = &self.username {
            base.username = validate_username(v)?;
        }
        if let Some(v) = &self.email {
            base.email = validate_email("email", v)?;
        }
        if let Some(v) = &self.firstname {
            base.firstname = validate_text("firstname", v, 64)?;
        }
        if let Some(v) = &self.lastname {
            base.lastname = validate_text("lastname", v, 64)?;
        }
        if let Some(v) = &self.alternate_email {
            base.alternate_email = optional(v, |v| validate_email("alternateEmail", v))?;
        }
        let texts: [(&'static str, &Option<String>, &mut Option<String>, usize); 10] = [
            ("jobTitle", &self.job_title, &mut base.job_title, 128),
            ("department", &self.department, &mut base.department, 64),
            ("location", &self.location, &mut base.location, 128),
            (
                "addresses.work.streetAddress",
                &self.work_street_address,
                &mut base.work_street_address,
                1024,
            ),
            (
                "addresses.work.locality",
                &self.work_locality,
                &mut base.work_locality,
                128,
            ),
            (
                "addresses.work.region",
                &self.work_region,
                &mut base.work_region,
                128,
            ),
            (
                "addresses.work.postalCode",
                &self.work_postal_code,
                &mut base.work_postal_code,
                40,
            ),
            (
                "addresses.work.country",
                &self.work_country,
                &mut base.work_country,
                128,
            ),
            (
                "phoneNumbers.work",
                &self.phone_work,
                &mut base.phone_work,
                64,
            ),
            (
                "phoneNumbers.mobile",
                &self.phone_mobile,
                &mut base.phone_mobile,
                64,
            ),
        ];
        for (field, change, target, max) in texts {
            if let Some(v) = change {
                *target = optional(v, |v| validate_text(field, v, max))?;
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
