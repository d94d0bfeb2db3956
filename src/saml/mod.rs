//! SAML 2.0 protocol code for the Microsoft 365 / Entra ID identity provider.
//!
//! Pure functions only: no HTTP, no database, no clock reads in the builders (the
//! caller passes `now`), so every message can be reproduced in tests.

pub mod authn_request;
pub mod bindings;
pub mod error;
pub mod logout;
pub mod metadata;
pub mod response;
pub mod signing;
pub mod verify;
pub mod xml;

#[cfg(test)]
mod test_support;

pub use authn_request::AuthnRequest;
pub use bindings::{decode_post, decode_redirect, encode_post, encode_redirect, parse_document};
pub use error::SamlError;
pub use logout::{build_logout_response, LogoutRequest, LogoutResponseParams};
pub use metadata::idp_metadata;
pub use response::{build_signed_response, build_status_response, AssertionParams};
pub use signing::{CertificateInfo, SignatureAlgorithm, SigningCredential};
pub use verify::{RedirectQuery, VerificationKeys};

/// SAML 2.0 assertion namespace (`saml:`).
pub const NS_ASSERTION: &str = "urn:oasis:names:tc:SAML:2.0:assertion";
/// SAML 2.0 protocol namespace (`samlp:`).
pub const NS_PROTOCOL: &str = "urn:oasis:names:tc:SAML:2.0:protocol";
/// SAML 2.0 metadata namespace (`md:`).
pub const NS_METADATA: &str = "urn:oasis:names:tc:SAML:2.0:metadata";
/// W3C XML-Signature namespace (`ds:`).
pub const NS_DSIG: &str = "http://www.w3.org/2000/09/xmldsig#";

/// Persistent NameID format, the only one Entra ID accepts (value = onPremisesImmutableId).
pub const NAMEID_PERSISTENT: &str = "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent";
/// Email address NameID format.
pub const NAMEID_EMAIL: &str = "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress";
/// Unspecified NameID format.
pub const NAMEID_UNSPECIFIED: &str = "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified";

/// HTTP-POST binding URI.
pub const BINDING_HTTP_POST: &str = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST";
/// HTTP-Redirect binding URI.
pub const BINDING_HTTP_REDIRECT: &str = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect";

/// Top-level status: the request succeeded.
pub const STATUS_SUCCESS: &str = "urn:oasis:names:tc:SAML:2.0:status:Success";
/// Top-level status: the requester made an error.
pub const STATUS_REQUESTER: &str = "urn:oasis:names:tc:SAML:2.0:status:Requester";
/// Top-level status: the IdP failed.
pub const STATUS_RESPONDER: &str = "urn:oasis:names:tc:SAML:2.0:status:Responder";
/// Second-level status: IsPassive was set but the user must interact.
pub const STATUS_NO_PASSIVE: &str = "urn:oasis:names:tc:SAML:2.0:status:NoPassive";
/// Second-level status: the IdP refuses the request.
pub const STATUS_REQUEST_DENIED: &str = "urn:oasis:names:tc:SAML:2.0:status:RequestDenied";
/// Second-level status: the user could not be authenticated.
pub const STATUS_AUTHN_FAILED: &str = "urn:oasis:names:tc:SAML:2.0:status:AuthnFailed";

/// Authentication context for password sign-in over TLS.
pub const AC_PASSWORD_PROTECTED_TRANSPORT: &str =
    "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport";
/// Authentication context Entra ID reads as "the IdP performed MFA".
pub const AC_MS_MULTIPLE_AUTHN: &str = "http://schemas.microsoft.com/claims/multipleauthn";

/// Largest decoded (and inflated) SAML message we accept.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Returns a fresh unpredictable message ID ("_" + 32 hex chars, a valid NCName).
///
/// Panics only if OpenSSL's random generator fails; see [`try_new_id`].
#[allow(clippy::expect_used)] // reason: a broken OS entropy source must stop idbridge rather than issue predictable IDs
pub fn new_id() -> String {
    // RAND_bytes fails only when the OS entropy source is broken; issuing
    // predictable IDs would be worse than stopping, so panicking is deliberate.
    try_new_id().expect("OpenSSL random generator failed")
}

/// Like [`new_id`] but reports a random-generator failure instead of panicking.
pub fn try_new_id() -> Result<String, SamlError> {
    let mut bytes = [0u8; 16];
    openssl::rand::rand_bytes(&mut bytes)?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    // The leading underscore makes the ID an NCName even when the hex starts with a digit.
    Ok(format!("_{hex}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_ncnames_and_unique() {
        let a = new_id();
        let b = new_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 33);
        assert!(a.starts_with('_'));
        assert!(a[1..]
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }
}
