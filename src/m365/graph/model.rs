//! The Graph resources idbridge reads, limited to the properties it maps.

use serde::{Deserialize, Deserializer};

/// A Microsoft 365 user as idbridge reads it ($select of only the fields we map).
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GraphUser {
    /// The object id (a GUID), stable for the life of the account.
    pub id: String,
    /// The sign-in name, `alias@domain`.
    pub user_principal_name: Option<String>,
    /// The name shown in address lists.
    pub display_name: Option<String>,
    /// First name.
    pub given_name: Option<String>,
    /// Last name.
    pub surname: Option<String>,
    /// The primary SMTP address; null until a mailbox exists.
    pub mail: Option<String>,
    /// `false` means sign-in is blocked.
    pub account_enabled: Option<bool>,
    /// The federation source anchor (ImmutableID) stamped for SAML sign-in.
    pub on_premises_immutable_id: Option<String>,
    /// Job title.
    pub job_title: Option<String>,
    /// Department.
    pub department: Option<String>,
    /// Office location.
    pub office_location: Option<String>,
    /// Mobile phone number.
    pub mobile_phone: Option<String>,
    /// Business phone numbers (Graph allows at most one to be set).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub business_phones: Vec<String>,
    /// Street address.
    pub street_address: Option<String>,
    /// City.
    pub city: Option<String>,
    /// State or province.
    pub state: Option<String>,
    /// Postal code.
    pub postal_code: Option<String>,
    /// Country or region.
    pub country: Option<String>,
    /// Additional e-mail addresses.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub other_mails: Vec<String>,
}

/// The properties GraphUser maps, for `$select`.
///
/// Graph returns `accountEnabled`, `onPremisesImmutableId`, `department` and the address only
/// when selected, so every read asks for this list explicitly.
pub const USER_SELECT: &[&str] = &[
    "id",
    "userPrincipalName",
    "displayName",
    "givenName",
    "surname",
    "mail",
    "accountEnabled",
    "onPremisesImmutableId",
    "jobTitle",
    "department",
    "officeLocation",
    "mobilePhone",
    "businessPhones",
    "streetAddress",
    "city",
    "state",
    "postalCode",
    "country",
    "otherMails",
];

/// A domain of the tenant: UPNs may only use verified ones; federated ones need an ImmutableID.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GraphDomain {
    /// The domain name, e.g. `contoso.com`.
    pub id: String,
    /// `Managed` or `Federated`.
    pub authentication_type: String,
    /// The tenant's default domain for new users.
    pub is_default: bool,
    /// The `*.onmicrosoft.com` domain created with the tenant.
    pub is_initial: bool,
    /// Ownership of the domain has been proven.
    pub is_verified: bool,
}

/// One page of a collection.
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// The items of this page (possibly none: Graph may send empty pages mid-collection).
    pub items: Vec<T>,
    /// The URL of the next page, to pass back verbatim; `None` on the last page.
    pub next_link: Option<String>,
}

/// A collection answer as Graph sends it.
#[derive(Debug, Deserialize)]
pub(super) struct Collection<T> {
    pub(super) value: Vec<T>,
    #[serde(rename = "@odata.nextLink")]
    pub(super) next_link: Option<String>,
}

/// Graph documents collections as never null, but a null must not fail a whole page.
fn null_as_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

/// One page of a delta round: changed users as Graph sent them (only `id` and the tracked
/// properties; deleted ones carry `@removed`), then either a nextLink or the deltaLink.
#[derive(Debug, Clone, Deserialize)]
pub struct DeltaPage {
    /// The changed objects.
    pub value: Vec<serde_json::Map<String, serde_json::Value>>,
    /// More pages of this round.
    #[serde(rename = "@odata.nextLink")]
    pub next_link: Option<String>,
    /// The round is complete; call this later for the next changes.
    #[serde(rename = "@odata.deltaLink")]
    pub delta_link: Option<String>,
}
