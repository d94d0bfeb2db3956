//! Sign-in and the SAML endpoints: login page, SSO, single logout and metadata.
//!
//! `idp` holds the flow (no HTTP types); `handlers` extract, call it and render.

mod handlers;
mod idp;
mod registration;
mod registry;
mod replay;
mod session_cache;

pub use handlers::{portal_steps, router, SESSION_COOKIE};
pub use idp::{
    Answer, CodeResult, IdentityProvider, IncomingRequest, LoginOutcome, LogoutMessage,
    LogoutOutcome, Refusal, RefusalNotice, SsoError, Step,
};
pub use registration::{SpField, SpRegistration, SpRegistrationError};
pub use registry::{NameIdSource, ServiceProvider, ServiceProviders, SpOrigin, M365_ENTITY_ID};
pub use replay::ReplayCache;
