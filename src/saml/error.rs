//! The one error type of the SAML module; messages are meant for admins' logs and error pages.

/// Everything that can go wrong decoding, parsing, building or signing a SAML message.
#[derive(Debug, thiserror::Error)]
pub enum SamlError {
    /// The message is not valid base64.
    #[error("SAML message is not valid base64")]
    Base64,
    /// The message exceeds the size limit.
    #[error("SAML message is larger than {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The HTTP-Redirect payload does not inflate.
    #[error("SAML message is not a valid DEFLATE stream")]
    Inflate,
    /// The decoded message is not UTF-8.
    #[error("SAML message is not valid UTF-8")]
    NotUtf8,
    /// The message contains a DTD (XXE / entity-expansion attempt).
    #[error("SAML message contains a DTD or entity declaration; refused")]
    DtdRefused,
    /// The message is not well-formed XML.
    #[error("SAML message is not well-formed XML: {0}")]
    Xml(String),
    /// The root element is not the expected message.
    #[error("expected a SAML {expected} message but found <{found}>")]
    UnexpectedRoot {
        /// Local name of the expected root element.
        expected: &'static str,
        /// What was found instead.
        found: String,
    },
    /// A required attribute or element is absent.
    #[error("SAML message lacks the required {0}")]
    Missing(&'static str),
    /// A value is present but unusable.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// Which value.
        field: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// The message's Version is not 2.0.
    #[error("unsupported SAML version {0:?}; only 2.0 is supported")]
    UnsupportedVersion(String),
    /// A signature is required (the service provider's certificate is configured) but absent.
    #[error("the message is not signed, but a certificate is configured for its sender, so a signature is required")]
    Unsigned,
    /// The signature is present but wrong, unsupported or placed where it signs something else.
    #[error("the signature is not acceptable: {0}")]
    Signature(String),
    /// OpenSSL failed (key, certificate, signing or random generator).
    #[error("cryptographic operation failed: {0}")]
    Crypto(String),
}

impl From<openssl::error::ErrorStack> for SamlError {
    fn from(e: openssl::error::ErrorStack) -> Self {
        SamlError::Crypto(e.to_string())
    }
}
