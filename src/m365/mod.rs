//! The Microsoft 365 directory integration: the OAuth connection to a tenant, the Graph client
//! every Graph call goes through, and importing users.

pub mod connection;
pub mod federation;
pub mod graph;
pub mod import;
pub mod permissions;
pub mod registration;
pub mod sync;

pub use connection::{data_key, ConnectionStatus, M365Error, M365SetupError, M365};
pub use import::{ImportProgress, ImportReport, ImportSelection, TenantUser};
pub use registration::{
    AppRegistration, CredentialChange, CredentialKind, RegistrationChange, RegistrationError,
    ValueSource,
};
pub use sync::M365Sync;
