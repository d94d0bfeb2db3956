//! The attribute catalogue: every user attribute once, under its product name (seed 004's
//! tables), with what each surface needs: the store column, the label, the limits, the Microsoft
//! Graph property and whether it is always exported.
//!
//! The API (read and write), the CLI flags, the console forms, the validation, the store and the
//! Microsoft 365 export table are all derived from [`CATALOGUE`], so they use the same names.
//! Adding an attribute is one row in the `catalogue!` call below plus its column in the
//! migrations.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// How an attribute's values are checked and entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The sign-in name: a–z, 0–9, `.`, `_`, `-`, stored lower-case.
    Username,
    /// Free text without control characters.
    Text,
    /// An email address.
    Email,
    /// A phone number (free text; entered with a telephone keyboard).
    Phone,
    /// Another user of the directory, given by username, email or id.
    UserRef,
}

/// Whether an attribute may be empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// Never empty (and required when a user is created).
    Required,
    /// Always present, possibly empty text.
    Always,
    /// Absent unless set; an empty value clears it.
    Optional,
}

/// The Microsoft Graph property an attribute is exported to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GraphProperty {
    /// The property's name on Graph's user resource.
    pub name: &'static str,
    /// A collection (otherMails, businessPhones) that carries this one value, replaced whole.
    pub list: bool,
}

/// One row of the catalogue.
#[derive(Debug, Clone, Copy)]
pub struct AttributeSpec {
    /// The attribute this row describes.
    pub attribute: Attribute,
    /// The product name: API JSON path (nested at the dots), console field, CLI flag, export
    /// table row.
    pub name: &'static str,
    /// What admins read (seed 004's labels).
    pub label: &'static str,
    /// The console form's group (its legend).
    pub group: &'static str,
    /// How values are checked and entered.
    pub kind: Kind,
    /// Whether it may be empty.
    pub presence: Presence,
    /// The longest value accepted, in characters.
    pub max: usize,
    /// The column of the `users` table (for a user reference, the column of its id).
    pub column: &'static str,
    /// Where Microsoft 365 keeps it; `None` for what stays in idbridge (the username).
    pub graph: Option<GraphProperty>,
    /// Always exported to Microsoft 365 (cannot be set to import or exclude).
    pub always_exported: bool,
    /// Older spellings still accepted on input (API, CLI, stored export selections).
    pub aliases: &'static [&'static str],
    /// A hint for admins, shown in the CLI help, the API schema and the console.
    pub hint: &'static str,
}

impl AttributeSpec {
    const fn new(
        name: &'static str,
        label: &'static str,
        kind: Kind,
        presence: Presence,
        max: usize,
        column: &'static str,
    ) -> Self {
        Self {
            // Replaced by `catalogue!` with the row's own variant.
            attribute: Attribute::Username,
            name,
            label,
            group: "",
            kind,
            presence,
            max,
            column,
            graph: None,
            always_exported: false,
            aliases: &[],
            hint: "",
        }
    }

    const fn of(mut self, attribute: Attribute) -> Self {
        self.attribute = attribute;
        self
    }

    const fn group(mut self, group: &'static str) -> Self {
        self.group = group;
        self
    }

    const fn graph(mut self, name: &'static str) -> Self {
        self.graph = Some(GraphProperty { name, list: false });
        self
    }

    const fn graph_list(mut self, name: &'static str) -> Self {
        self.graph = Some(GraphProperty { name, list: true });
        self
    }

    const fn always_exported(mut self) -> Self {
        self.always_exported = true;
        self
    }

    const fn aliases(mut self, aliases: &'static [&'static str]) -> Self {
        self.aliases = aliases;
        self
    }

    const fn hint(mut self, hint: &'static str) -> Self {
        self.hint = hint;
        self
    }

    /// The CLI flag's name: the product name itself (`--jobTitle`,
    /// `--addresses.work.streetAddress`).
    pub fn flag(&self) -> &'static str {
        self.name
    }

    /// Earlier CLI flags, still accepted: the aliases without dots in kebab case
    /// (`--work-street-address`, `--phone-work`) and the name's own kebab form (`--job-title`).
    pub fn flag_aliases(&self) -> Vec<String> {
        let mut out: Vec<String> = std::iter::once(self.name)
            .chain(self.aliases.iter().copied())
            .filter(|n| !n.contains('.'))
            .map(kebab)
            .filter(|k| k != self.name)
            .collect();
        out.dedup();
        out
    }

    /// The property name of the Graph export, if any.
    pub fn graph_name(&self) -> Option<&'static str> {
        self.graph.map(|g| g.name)
    }

    /// Whether the value lives in [`AttributeValues`] (optional attributes) rather than in a
    /// plain field of the user (required and always-present ones, which most code reads).
    pub fn is_optional(&self) -> bool {
        self.presence == Presence::Optional
    }

    /// One line for help texts: label, hint, limit, Graph property.
    pub fn description(&self) -> String {
        let mut text = self.label.to_string();
        if !self.hint.is_empty() {
            text.push_str(&format!(" ({})", self.hint));
        }
        if self.kind != Kind::UserRef {
            text.push_str(&format!("; at most {} characters", self.max));
        }
        if let Some(graph) = self.graph {
            text.push_str(&format!("; Microsoft 365 {}", graph.name));
        }
        if self.presence == Presence::Optional {
            text.push_str("; empty clears");
        }
        text
    }
}

/// `workStreetAddress` → `work-street-address`.
fn kebab(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            out.push('-');
            out.push(c.to_ascii_lowercase());
        } else if c == '_' {
            out.push('-');
        } else {
            out.push(c);
        }
    }
    out
}

const IDENTITY: &str = "Identity";
const WORK: &str = "Work";
const ADDRESS: &str = "Work address";
const PHONES: &str = "Phone numbers";

use Kind::{Email, Phone, Text, UserRef};
use Presence::{Always, Optional, Required};

/// Declares the [`Attribute`] enum and [`CATALOGUE`] from one list, so the two cannot disagree.
macro_rules! catalogue {
    ($($(#[$doc:meta])* $variant:ident = $spec:expr,)+) => {
        /// A user attribute; [`Attribute::spec`] says everything about it.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Attribute {
            $($(#[$doc])* $variant,)+
        }

        /// Every user attribute, in the order forms and listings show them.
        pub const CATALOGUE: &[AttributeSpec] = &[$($spec.of(Attribute::$variant),)+];

        impl Attribute {
            /// The attribute's catalogue row.
            pub fn spec(self) -> &'static AttributeSpec {
                match self {
                    $(Attribute::$variant => {
                        const SPEC: AttributeSpec = $spec.of(Attribute::$variant);
                        &SPEC
                    })+
                }
            }
        }
    };
}

catalogue! {
    /// The sign-in name; stays in idbridge.
    Username = AttributeSpec::new("username", "Username", Kind::Username, Required, 64, "username")
        .group(IDENTITY)
        .hint("a-z, 0-9, '.', '_', '-'; stored lower-case"),
    /// First name.
    Firstname = AttributeSpec::new("firstname", "First Name", Text, Always, 64, "firstname")
        .group(IDENTITY)
        .graph("givenName")
        .always_exported(),
    /// Last name.
    Lastname = AttributeSpec::new("lastname", "Last Name", Text, Always, 64, "lastname")
        .group(IDENTITY)
        .graph("surname")
        .always_exported(),
    /// The company email: unique (any case), Microsoft 365's userPrincipalName.
    Email = AttributeSpec::new("email", "Company Email", Email, Required, 254, "email")
        .group(IDENTITY)
        .graph("userPrincipalName")
        .always_exported(),
    /// A private email address.
    AlternateEmail = AttributeSpec::new(
        "alternateEmail", "Alternate Email", Email, Optional, 254, "alternate_email",
    )
    .group(IDENTITY)
    .graph_list("otherMails"),
    /// Job title.
    JobTitle = AttributeSpec::new("jobTitle", "Job Title", Text, Optional, 128, "job_title")
        .group(WORK)
        .graph("jobTitle"),
    /// Department.
    Department =
        AttributeSpec::new("department", "Department", Text, Optional, 64, "department")
            .group(WORK)
            .graph("department"),
    /// Office location.
    Location = AttributeSpec::new("location", "Location", Text, Optional, 128, "location")
        .group(WORK)
        .graph("officeLocation"),
    /// The manager: another user.
    Manager = AttributeSpec::new("manager", "Manager", UserRef, Optional, 254, "manager_id")
        .group(WORK)
        .graph("manager")
        .hint("another user's username, email or id"),
    /// Work street address.
    WorkStreetAddress = AttributeSpec::new(
        "addresses.work.streetAddress", "Work Street Address", Text, Optional, 1024,
        "work_street_address",
    )
    .group(ADDRESS)
    .graph("streetAddress")
    .aliases(&["workStreetAddress"]),
    /// Work city.
    WorkLocality = AttributeSpec::new(
        "addresses.work.locality", "Work City", Text, Optional, 128, "work_locality",
    )
    .group(ADDRESS)
    .graph("city")
    .aliases(&["workLocality"]),
    /// Work state or region.
    WorkRegion = AttributeSpec::new(
        "addresses.work.region", "Work State", Text, Optional, 128, "work_region",
    )
    .group(ADDRESS)
    .graph("state")
    .aliases(&["workRegion"]),
    /// Work postal code.
    WorkPostalCode = AttributeSpec::new(
        "addresses.work.postalCode", "Work Postal Code", Text, Optional, 40, "work_postal_code",
    )
    .group(ADDRESS)
    .graph("postalCode")
    .aliases(&["workPostalCode"]),
    /// Work country.
    WorkCountry = AttributeSpec::new(
        "addresses.work.country", "Work Country", Text, Optional, 128, "work_country",
    )
    .group(ADDRESS)
    .graph("country")
    .aliases(&["workCountry"]),
    /// Work phone (Graph keeps at most one business phone).
    WorkPhone = AttributeSpec::new(
        "phoneNumbers.work.number", "Work Phone", Phone, Optional, 64, "phone_work",
    )
    .group(PHONES)
    .graph_list("businessPhones")
    .aliases(&["phoneNumbers.work", "phoneWork"]),
    /// Mobile phone.
    MobilePhone = AttributeSpec::new(
        "phoneNumbers.mobile.number", "Mobile Phone", Phone, Optional, 64, "phone_mobile",
    )
    .group(PHONES)
    .graph("mobilePhone")
    .aliases(&["phoneNumbers.mobile", "phoneMobile"]),
}

impl Attribute {
    /// Every attribute, in catalogue order.
    pub fn all() -> impl Iterator<Item = Attribute> {
        CATALOGUE.iter().map(|s| s.attribute)
    }

    /// The product name.
    pub fn name(self) -> &'static str {
        self.spec().name
    }

    /// The attribute of a product name or an older spelling (any case).
    pub fn parse(name: &str) -> Option<Attribute> {
        let name = name.trim();
        CATALOGUE
            .iter()
            .find(|s| s.name.eq_ignore_ascii_case(name))
            .or_else(|| {
                CATALOGUE
                    .iter()
                    .find(|s| s.aliases.iter().any(|a| a.eq_ignore_ascii_case(name)))
            })
            .map(|s| s.attribute)
    }
}

impl std::fmt::Display for Attribute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Values of attributes; an attribute without an entry has no value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttributeValues(BTreeMap<Attribute, String>);

impl AttributeValues {
    /// The value, if set and not empty.
    pub fn get(&self, attribute: Attribute) -> Option<&str> {
        self.0
            .get(&attribute)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// Sets or (with `None`) removes a value.
    pub fn set(&mut self, attribute: Attribute, value: Option<String>) {
        match value {
            Some(v) => self.0.insert(attribute, v),
            None => self.0.remove(&attribute),
        };
    }

    /// The entries, in catalogue order.
    pub fn iter(&self) -> impl Iterator<Item = (Attribute, &str)> {
        self.0.iter().map(|(a, v)| (*a, v.as_str()))
    }

    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The attributes as JSON, nested at the dots of their names (`addresses.work.country` is
/// `{"addresses": {"work": {"country": …}}}`); optional ones without a value are null.
pub fn to_json(value: impl Fn(Attribute) -> Option<String>) -> Map<String, Value> {
    let mut out = Map::new();
    for spec in CATALOGUE {
        let v = match value(spec.attribute) {
            Some(v) if !v.is_empty() || !spec.is_optional() => Value::String(v),
            _ if spec.is_optional() => Value::Null,
            _ => Value::String(String::new()),
        };
        insert_path(&mut out, spec.name, v);
    }
    out
}

fn insert_path(map: &mut Map<String, Value>, path: &str, value: Value) {
    match path.split_once('.') {
        None => {
            map.insert(path.to_string(), value);
        }
        Some((head, rest)) => {
            let entry = map
                .entry(head.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if !entry.is_object() {
                *entry = Value::Object(Map::new());
            }
            if let Value::Object(inner) = entry {
                insert_path(inner, rest, value);
            }
        }
    }
}

/// Why a JSON body's attributes were refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonRefusal {
    /// No attribute has this name (the dotted path).
    Unknown(String),
    /// The value at this attribute is not a string or null.
    NotText(&'static str),
}

impl std::fmt::Display for JsonRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // The extractor recognises this wording and names the field from it.
            JsonRefusal::Unknown(path) => write!(
                f,
                "unknown field `{path}`: GET /api/v1/openapi.json lists the attributes"
            ),
            JsonRefusal::NotText(name) => write!(
                f,
                "invalid type for field `{name}`: expected a string or null"
            ),
        }
    }
}

/// Reads attribute values from a JSON object: nested (`{"addresses": {"work": {"country":
/// "NL"}}}`) or dotted keys (`{"addresses.work.country": "NL"}`), older spellings accepted
/// (`workCountry`, `phoneNumbers.work`). A null leaves the attribute alone.
pub fn from_json(map: &Map<String, Value>) -> Result<Vec<(Attribute, String)>, JsonRefusal> {
    let mut out = Vec::new();
    read_level(map, "", &mut out)?;
    Ok(out)
}

fn read_level(
    map: &Map<String, Value>,
    prefix: &str,
    out: &mut Vec<(Attribute, String)>,
) -> Result<(), JsonRefusal> {
    for (key, value) in map {
        let path = format!("{prefix}{key}");
        // An object is a level of names (`phoneNumbers.work` is also an older name of the work
        // phone, given as a string).
        if let Value::Object(inner) = value {
            read_level(inner, &format!("{path}."), out)?;
            continue;
        }
        match (Attribute::parse(&path), value) {
            (Some(a), Value::String(s)) => out.push((a, s.clone())),
            (Some(_), Value::Null) => {}
            (Some(a), _) => return Err(JsonRefusal::NotText(a.name())),
            (None, _) => return Err(JsonRefusal::Unknown(path)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_unique_and_in_order() {
        for (i, spec) in CATALOGUE.iter().enumerate() {
            assert_eq!(spec.attribute as usize, i, "{}", spec.name);
            assert_eq!(spec.attribute.spec().name, spec.name);
            assert_eq!(Attribute::parse(spec.name), Some(spec.attribute));
            for alias in spec.aliases {
                assert_eq!(Attribute::parse(alias), Some(spec.attribute), "{alias}");
            }
            assert!(!spec.group.is_empty() && !spec.column.is_empty());
        }
        let mut names: Vec<&str> = CATALOGUE
            .iter()
            .flat_map(|s| std::iter::once(s.name).chain(s.aliases.iter().copied()))
            .collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(names.len(), before, "names and aliases are unique");
    }

    #[test]
    fn flags_are_the_names_and_old_flags_stay() {
        let street = Attribute::WorkStreetAddress.spec();
        assert_eq!(street.flag(), "addresses.work.streetAddress");
        assert_eq!(street.flag_aliases(), vec!["work-street-address"]);
        assert_eq!(Attribute::JobTitle.spec().flag_aliases(), vec!["job-title"]);
        assert_eq!(
            Attribute::WorkPhone.spec().flag_aliases(),
            vec!["phone-work"]
        );
        assert!(Attribute::Department.spec().flag_aliases().is_empty());
    }

    #[test]
    fn json_nests_at_the_dots_and_reads_back() {
        let json = to_json(|a| match a {
            Attribute::Username => Some("ada".into()),
            Attribute::WorkPhone => Some("+1 555".into()),
            _ => None,
        });
        let json = Value::Object(json);
        assert_eq!(json["username"], "ada");
        assert_eq!(json["firstname"], "");
        assert_eq!(json["phoneNumbers"]["work"]["number"], "+1 555");
        assert!(json["addresses"]["work"]["country"].is_null());
        let Value::Object(map) = serde_json::json!({
            "addresses": {"work": {"country": "NL"}},
            "phoneNumbers.mobile.number": "+31",
            "phoneNumbers": {"work": "+1"},
            "jobTitle": null,
            "workRegion": "UT",
        }) else {
            unreachable!()
        };
        let mut got = from_json(&map).unwrap();
        got.sort();
        assert_eq!(
            got,
            vec![
                (Attribute::WorkRegion, "UT".into()),
                (Attribute::WorkCountry, "NL".into()),
                (Attribute::WorkPhone, "+1".into()),
                (Attribute::MobilePhone, "+31".into()),
            ]
        );
        let Value::Object(bad) = serde_json::json!({"addresses": {"home": {"city": "x"}}}) else {
            unreachable!()
        };
        assert_eq!(
            from_json(&bad),
            Err(JsonRefusal::Unknown("addresses.home.city".into()))
        );
    }
}
