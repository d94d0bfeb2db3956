//! The attribute export tables of seed 004: which idbridge attribute goes to which Microsoft 365
//! property, and in which direction each optional one flows.

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::directory::{User, UserChanges};

/// Which way an optional attribute flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// idbridge's value overwrites Microsoft 365's.
    Export,
    /// Microsoft 365's value is taken into idbridge (delta query, polled).
    Import,
    /// Neither.
    Exclude,
}

impl Direction {
    /// The stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Export => "export",
            Direction::Import => "import",
            Direction::Exclude => "exclude",
        }
    }

    /// Parses `export`, `import` or `exclude` (any case).
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "export" => Some(Direction::Export),
            "import" => Some(Direction::Import),
            "exclude" => Some(Direction::Exclude),
            _ => None,
        }
    }
}

/// One row of the export tables.
#[derive(Debug, Clone, Copy, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AttributeMapping {
    /// idbridge's attribute name (seed 004 API name).
    pub attribute: &'static str,
    /// The Microsoft Graph property.
    pub graph_property: &'static str,
    /// The label admins see.
    pub label: &'static str,
    /// Always exported; cannot be deselected.
    pub always: bool,
}

const fn always(
    attribute: &'static str,
    graph: &'static str,
    label: &'static str,
) -> AttributeMapping {
    AttributeMapping {
        attribute,
        graph_property: graph,
        label,
        always: true,
    }
}

const fn optional(
    attribute: &'static str,
    graph: &'static str,
    label: &'static str,
) -> AttributeMapping {
    AttributeMapping {
        attribute,
        graph_property: graph,
        label,
        always: false,
    }
}

/// Seed 004's tables: five always-exported rows, then the twelve optional ones.
pub const MAPPINGS: &[AttributeMapping] = &[
    always("firstname", "givenName", "First Name"),
    always("lastname", "surname", "Last Name"),
    always("password", "passwordProfile", "Password"),
    always("email", "userPrincipalName", "Company Email"),
    always("displayName", "displayName", "First Name + Last Name"),
    optional("addresses.work.country", "country", "Work Country"),
    optional("addresses.work.locality", "city", "Work City"),
    optional(
        "addresses.work.postalCode",
        "postalCode",
        "Work Postal Code",
    ),
    optional("addresses.work.region", "state", "Work State"),
    optional(
        "addresses.work.streetAddress",
        "streetAddress",
        "Work Street Address",
    ),
    optional("alternateEmail", "otherMails", "Alternate Email"),
    optional("department", "department", "Department"),
    optional("jobTitle", "jobTitle", "Job Title"),
    optional("location", "officeLocation", "Location"),
    optional("manager", "manager", "Manager"),
    optional("phoneNumbers.mobile", "mobilePhone", "Personal Cell"),
    optional("phoneNumbers.work", "businessPhones", "Work Phone"),
];

/// The optional mapping for an attribute name; seed 004's longer names
/// (`phoneNumbers.work.number`) and the Graph property names are accepted too.
pub fn optional_mapping(name: &str) -> Option<&'static AttributeMapping> {
    let name = name.trim();
    let name = name.strip_suffix(".number").unwrap_or(name);
    MAPPINGS.iter().find(|m| {
        !m.always
            && (m.attribute.eq_ignore_ascii_case(name)
                || m.graph_property.eq_ignore_ascii_case(name))
    })
}

/// The direction of every optional attribute (absent ones are excluded).
#[derive(Debug, Clone, Default)]
pub struct Directions(HashMap<&'static str, Direction>);

impl Directions {
    /// From stored (attribute, direction) rows; unknown rows are ignored.
    pub fn from_rows(rows: &[(String, String)]) -> Self {
        let mut map = HashMap::new();
        for (attribute, direction) in rows {
            if let (Some(m), Some(d)) = (optional_mapping(attribute), Direction::parse(direction)) {
                map.insert(m.attribute, d);
            }
        }
        Directions(map)
    }

    /// The direction of an optional attribute; always-exported ones are Export.
    pub fn of(&self, attribute: &str) -> Direction {
        match MAPPINGS.iter().find(|m| m.attribute == attribute) {
            Some(m) if m.always => Direction::Export,
            Some(m) => self
                .0
                .get(m.attribute)
                .copied()
                .unwrap_or(Direction::Exclude),
            None => Direction::Exclude,
        }
    }

    /// Whether the attribute's value goes to Microsoft 365.
    pub fn exports(&self, attribute: &str) -> bool {
        self.of(attribute) == Direction::Export
    }

    /// The optional attributes set to Import.
    pub fn imported(&self) -> Vec<&'static AttributeMapping> {
        MAPPINGS
            .iter()
            .filter(|m| !m.always && self.of(m.attribute) == Direction::Import)
            .collect()
    }
}

/// A text value for Graph: empty clears (null).
fn text(value: Option<String>) -> Value {
    value
        .filter(|v| !v.is_empty())
        .map_or(Value::Null, Value::String)
}

/// The Graph value of one exported attribute (not password, not manager).
fn graph_value(user: &User, attribute: &str) -> Option<(&'static str, Value)> {
    let value = match attribute {
        "firstname" => ("givenName", text(Some(user.firstname.clone()))),
        "lastname" => ("surname", text(Some(user.lastname.clone()))),
        "displayName" => ("displayName", Value::String(user.display_name())),
        "email" => ("userPrincipalName", Value::String(user.email.clone())),
        "addresses.work.country" => ("country", text(user.work_country.clone())),
        "addresses.work.locality" => ("city", text(user.work_locality.clone())),
        "addresses.work.postalCode" => ("postalCode", text(user.work_postal_code.clone())),
        "addresses.work.region" => ("state", text(user.work_region.clone())),
        "addresses.work.streetAddress" => ("streetAddress", text(user.work_street_address.clone())),
        // Collections are replaced whole and must never be null.
        "alternateEmail" => (
            "otherMails",
            Value::from(user.alternate_email.iter().cloned().collect::<Vec<_>>()),
        ),
        "department" => ("department", text(user.department.clone())),
        "jobTitle" => ("jobTitle", text(user.job_title.clone())),
        "location" => ("officeLocation", text(user.location.clone())),
        "phoneNumbers.mobile" => ("mobilePhone", text(user.phone_mobile.clone())),
        "phoneNumbers.work" => (
            "businessPhones",
            Value::from(user.phone_work.iter().cloned().collect::<Vec<_>>()),
        ),
        _ => return None,
    };
    Some(value)
}

/// The Graph properties for `attributes` (changed attribute names), limited to what is
/// exported; first or last name also refresh displayName. Manager is handled separately.
pub fn patch_for(
    user: &User,
    attributes: &[String],
    directions: &Directions,
) -> Map<String, Value> {
    let mut patch = Map::new();
    for attribute in attributes {
        if !directions.exports(attribute) {
            continue;
        }
        if let Some((property, value)) = graph_value(user, attribute) {
            patch.insert(property.to_string(), value);
        }
        if matches!(attribute.as_str(), "firstname" | "lastname") {
            patch.insert("displayName".into(), Value::String(user.display_name()));
        }
    }
    patch
}

/// Every exported attribute (what a bind writes over the M365 user).
pub fn full_patch(user: &User, directions: &Directions) -> Map<String, Value> {
    let all: Vec<String> = MAPPINGS
        .iter()
        .filter(|m| !matches!(m.attribute, "password" | "manager"))
        .map(|m| m.attribute.to_string())
        .collect();
    patch_for(user, &all, directions)
}

/// The Graph properties to `$select` for imported attributes (the delta query).
pub fn import_select(directions: &Directions) -> Vec<&'static str> {
    let mut select = vec!["id"];
    select.extend(directions.imported().iter().map(|m| m.graph_property));
    select
}

/// The changes an M365 user object (a delta item) brings to imported attributes of `user`;
/// only properties present in the item and different from idbridge's value. The manager is
/// given as an idbridge username by `manager`.
pub fn import_changes(
    user: &User,
    item: &Map<String, Value>,
    directions: &Directions,
    manager: Option<Option<String>>,
) -> UserChanges {
    let mut changes = UserChanges::default();
    for mapping in directions.imported() {
        if mapping.attribute == "manager" {
            if let Some(new) = &manager {
                if new.as_deref() != user.manager.as_deref() {
                    changes.manager = Some(new.clone().unwrap_or_default());
                }
            }
            continue;
        }
        let Some(value) = item.get(mapping.graph_property) else {
            continue;
        };
        let incoming = match value {
            Value::String(s) => s.clone(),
            Value::Array(items) => items
                .first()
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            _ => String::new(),
        };
        let current = user.attribute(mapping.attribute).unwrap_or_default();
        if incoming == current {
            continue;
        }
        let slot = match mapping.attribute {
            "addresses.work.country" => &mut changes.work_country,
            "addresses.work.locality" => &mut changes.work_locality,
            "addresses.work.postalCode" => &mut changes.work_postal_code,
            "addresses.work.region" => &mut changes.work_region,
            "addresses.work.streetAddress" => &mut changes.work_street_address,
            "alternateEmail" => &mut changes.alternate_email,
            "department" => &mut changes.department,
            "jobTitle" => &mut changes.job_title,
            "location" => &mut changes.location,
            "phoneNumbers.mobile" => &mut changes.phone_mobile,
            "phoneNumbers.work" => &mut changes.phone_work,
            _ => continue,
        };
        *slot = Some(incoming);
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_004_tables_are_complete() {
        assert_eq!(MAPPINGS.iter().filter(|m| m.always).count(), 5);
        assert_eq!(MAPPINGS.iter().filter(|m| !m.always).count(), 12);
        assert_eq!(
            optional_mapping("phoneNumbers.work.number").map(|m| m.graph_property),
            Some("businessPhones")
        );
        assert_eq!(
            optional_mapping("officeLocation").map(|m| m.attribute),
            Some("location")
        );
        assert!(
            optional_mapping("firstname").is_none(),
            "always-exported rows are not optional"
        );
    }

    #[test]
    fn directions_default_to_exclude_and_always_rows_export() {
        let d = Directions::from_rows(&[
            ("department".into(), "export".into()),
            ("jobTitle".into(), "import".into()),
        ]);
        assert_eq!(d.of("department"), Direction::Export);
        assert_eq!(d.of("jobTitle"), Direction::Import);
        assert_eq!(d.of("location"), Direction::Exclude);
        assert_eq!(d.of("firstname"), Direction::Export);
        assert_eq!(import_select(&d), vec!["id", "jobTitle"]);
    }
}
