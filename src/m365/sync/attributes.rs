//! The attribute export tables of seed 004: which idbridge attribute goes to which Microsoft 365
//! property, and in which direction each optional one flows.

use std::collections::HashMap;
use std::sync::LazyLock;

use serde_json::{Map, Value};

use crate::attributes::{Attribute, AttributeSpec, Kind, CATALOGUE};
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

/// The rows of the export table that are not attributes of the catalogue: the password and
/// the display name made of first and last name.
const EXTRA_ROWS: &[AttributeMapping] = &[
    AttributeMapping {
        attribute: "password",
        graph_property: "passwordProfile",
        label: "Password",
        always: true,
    },
    AttributeMapping {
        attribute: "displayName",
        graph_property: "displayName",
        label: "First Name + Last Name",
        always: true,
    },
];

/// Seed 004's tables, derived from the catalogue: the always-exported rows (catalogue order,
/// then password and displayName), then the optional ones by name.
pub static MAPPINGS: LazyLock<Vec<AttributeMapping>> = LazyLock::new(|| {
    let row = |spec: &AttributeSpec| {
        spec.graph.map(|graph| AttributeMapping {
            attribute: spec.name,
            graph_property: graph.name,
            label: spec.label,
            always: spec.always_exported,
        })
    };
    let mut optional: Vec<AttributeMapping> = CATALOGUE
        .iter()
        .filter(|s| !s.always_exported)
        .filter_map(row)
        .collect();
    optional.sort_by_key(|m| m.attribute);
    CATALOGUE
        .iter()
        .filter(|s| s.always_exported)
        .filter_map(row)
        .chain(EXTRA_ROWS.iter().copied())
        .chain(optional)
        .collect()
});

/// The optional mapping for an attribute name; older spellings (`phoneNumbers.work`) and the
/// Graph property names are accepted too.
pub fn optional_mapping(name: &str) -> Option<&'static AttributeMapping> {
    let name = Attribute::parse(name).map_or(name.trim(), |a| a.name());
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
        // Rows stored under an older name first, so a row under today's name wins.
        let (current, older): (Vec<_>, Vec<_>) = rows
            .iter()
            .partition(|(a, _)| MAPPINGS.iter().any(|m| m.attribute == a.as_str()));
        for (attribute, direction) in older.into_iter().chain(current) {
            if let (Some(m), Some(d)) = (optional_mapping(attribute), Direction::parse(direction)) {
                map.insert(m.attribute, d);
            }
        }
        Directions(map)
    }

    /// The direction of an optional attribute; always-exported ones are Export.
    pub fn of(&self, attribute: &str) -> Direction {
        let attribute = Attribute::parse(attribute).map_or(attribute, |a| a.name());
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

/// The Graph value of one exported attribute (not password, not manager).
fn graph_value(user: &User, name: &str) -> Option<(&'static str, Value)> {
    if name == "displayName" {
        return Some(("displayName", Value::String(user.display_name())));
    }
    let spec = Attribute::parse(name)?.spec();
    let graph = spec.graph.filter(|_| spec.kind != Kind::UserRef)?;
    let value = user.get(spec.attribute).map(str::to_string);
    let value = if graph.list {
        // Collections are replaced whole and must never be null.
        Value::from(value.into_iter().collect::<Vec<_>>())
    } else {
        value.map_or(Value::Null, Value::String)
    };
    Some((graph.name, value))
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
        if matches!(
            Attribute::parse(attribute),
            Some(Attribute::Firstname | Attribute::Lastname)
        ) {
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
    let mut changes = UserChanges::new();
    for mapping in directions.imported() {
        if mapping.attribute == "manager" {
            if let Some(new) = &manager {
                if new.as_deref() != user.get(Attribute::Manager) {
                    changes.set(Attribute::Manager, new.clone().unwrap_or_default());
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
        let Some(attribute) = Attribute::parse(mapping.attribute) else {
            continue;
        };
        let current = user.get(attribute).unwrap_or_default();
        if incoming == current {
            continue;
        }
        changes.set(attribute, incoming);
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

    #[test]
    fn rows_under_older_names_are_read_and_todays_name_wins() {
        let d = Directions::from_rows(&[
            ("phoneNumbers.work.number".into(), "import".into()),
            ("phoneNumbers.work".into(), "export".into()),
            ("phoneNumbers.mobile".into(), "export".into()),
        ]);
        assert_eq!(d.of("phoneNumbers.work.number"), Direction::Import);
        assert_eq!(d.of("phoneNumbers.work"), Direction::Import);
        assert!(d.exports("phoneNumbers.mobile.number"));
        assert_eq!(
            MAPPINGS
                .iter()
                .map(|m| m.attribute)
                .take(5)
                .collect::<Vec<_>>(),
            ["firstname", "lastname", "email", "password", "displayName"]
        );
    }
}
