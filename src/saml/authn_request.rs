//! Parsing of the `samlp:AuthnRequest` Entra ID sends to the IdP.
//!
//! Nothing in a request is trusted: callers should use only its ID (echoed as
//! InResponseTo) and flags like ForceAuthn, and post the Response to the configured ACS.

use chrono::{DateTime, Utc};

use super::bindings::{
    bool_attr, children, parse_document, protocol_root, single_child, text_content, RequestHeader,
};
use super::{SamlError, NS_ASSERTION, NS_DSIG, NS_PROTOCOL};

/// The fields of a received AuthnRequest that an IdP may act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthnRequest {
    /// Request ID, echoed as InResponseTo.
    pub id: String,
    /// Always "2.0" (other versions are refused).
    pub version: String,
    /// When the SP issued the request.
    pub issue_instant: DateTime<Utc>,
    /// The SP entity ID, trimmed (`urn:federation:MicrosoftOnline` for Entra).
    pub issuer: String,
    /// Where the SP says it sent the request.
    pub destination: Option<String>,
    /// Requested ACS URL (Entra sends none; never trust it blindly).
    pub acs_url: Option<String>,
    /// Requested ACS index.
    pub acs_index: Option<u32>,
    /// Requested response binding.
    pub protocol_binding: Option<String>,
    /// The user must authenticate afresh.
    pub force_authn: bool,
    /// The IdP must not interact with the user.
    pub is_passive: bool,
    /// NameIDPolicy Format, if given.
    pub name_id_policy_format: Option<String>,
    /// Subject NameID the SP asks about, if given.
    pub subject_name_id: Option<String>,
    /// Requested AuthnContextClassRef values.
    pub requested_authn_context: Vec<String>,
    /// A ds:Signature child is present (reported only; not verified here).
    pub signed: bool,
}

impl AuthnRequest {
    /// Parses a decoded AuthnRequest document.
    pub fn parse(xml: &str) -> Result<Self, SamlError> {
        Self::from_document(&parse_document(xml)?)
    }

    /// Reads an AuthnRequest from a parsed document (whose signature the caller may check on
    /// the same root).
    pub fn from_document(doc: &roxmltree::Document<'_>) -> Result<Self, SamlError> {
        let root = protocol_root(doc, "AuthnRequest")?;
        let header = RequestHeader::parse(root)?;

        let acs_index = match root.attribute("AssertionConsumerServiceIndex") {
            None => None,
            Some(v) => Some(v.trim().parse::<u32>().map_err(|_| SamlError::Invalid {
                field: "AssertionConsumerServiceIndex",
                reason: format!("{v:?} is not a non-negative integer"),
            })?),
        };
        let name_id_policy_format = single_child(root, NS_PROTOCOL, "NameIDPolicy")?
            .and_then(|n| n.attribute("Format"))
            .map(str::to_string);
        let subject_name_id = match single_child(root, NS_ASSERTION, "Subject")? {
            None => None,
            Some(subject) => match single_child(subject, NS_ASSERTION, "NameID")? {
                None => None,
                Some(name_id) => Some(text_content(name_id)?.trim().to_string()),
            },
        };
        let signed = children(root, NS_DSIG, "Signature").next().is_some();
        let mut requested_authn_context = Vec::new();
        if let Some(rac) = single_child(root, NS_PROTOCOL, "RequestedAuthnContext")? {
            for class_ref in children(rac, NS_ASSERTION, "AuthnContextClassRef") {
                requested_authn_context.push(text_content(class_ref)?.trim().to_string());
            }
        }

        Ok(Self {
            id: header.id,
            version: header.version,
            issue_instant: header.issue_instant,
            issuer: header.issuer,
            destination: header.destination,
            acs_url: root
                .attribute("AssertionConsumerServiceURL")
                .map(str::to_string),
            acs_index,
            protocol_binding: root.attribute("ProtocolBinding").map(str::to_string),
            force_authn: bool_attr(root, "ForceAuthn")?,
            is_passive: bool_attr(root, "IsPassive")?,
            name_id_policy_format,
            subject_name_id,
            requested_authn_context,
            signed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::saml::{
        decode_post, decode_redirect, encode_post, encode_redirect, NAMEID_PERSISTENT,
    };

    const MS_SAMPLE: &str = r#"<samlp:AuthnRequest ID="_1e089e5c-a976-4881-af74-3b92c89e7e2c" Version="2.0" IssueInstant="2024-03-12T14:00:18.450Z" xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol"><Issuer xmlns="urn:oasis:names:tc:SAML:2.0:assertion">urn:federation:MicrosoftOnline</Issuer><samlp:NameIDPolicy Format="urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"/></samlp:AuthnRequest>"#;

    #[test]
    fn parses_microsoft_sample_via_post_binding() {
        let req = AuthnRequest::parse(&decode_post(&encode_post(MS_SAMPLE)).unwrap()).unwrap();
        assert_eq!(req.id, "_1e089e5c-a976-4881-af74-3b92c89e7e2c");
        assert_eq!(req.version, "2.0");
        assert_eq!(req.issue_instant.timestamp_millis(), 1_710_252_018_450);
        assert_eq!(req.issuer, "urn:federation:MicrosoftOnline");
        assert_eq!(
            req.name_id_policy_format.as_deref(),
            Some(NAMEID_PERSISTENT)
        );
        assert_eq!(
            (
                req.destination,
                req.acs_url,
                req.acs_index,
                req.protocol_binding
            ),
            (None, None, None, None)
        );
        assert!(!req.force_authn && !req.is_passive && !req.signed);
        assert!(req.subject_name_id.is_none() && req.requested_authn_context.is_empty());
    }

    #[test]
    fn parses_all_optional_fields_via_redirect_binding() {
        let xml = r#"<AuthnRequest xmlns="urn:oasis:names:tc:SAML:2.0:protocol" xmlns:a="urn:oasis:names:tc:SAML:2.0:assertion"
            ID="r1" Version="2.0" IssueInstant="2024-03-12T15:00:18+01:00" Destination="https://idp/sso"
            AssertionConsumerServiceURL="https://sp/acs" AssertionConsumerServiceIndex="3"
            ProtocolBinding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST" ForceAuthn="1" IsPassive="true">
          <a:Issuer>
             urn:federation:MicrosoftOnline
          </a:Issuer>
          <ds:Signature xmlns:ds="http://www.w3.org/2000/09/xmldsig#"/>
          <a:Subject><a:NameID>ABC<!-- c -->123</a:NameID></a:Subject>
          <RequestedAuthnContext Comparison="exact">
            <a:AuthnContextClassRef>http://schemas.microsoft.com/claims/multipleauthn</a:AuthnContextClassRef>
            <a:AuthnContextClassRef> urn:x </a:AuthnContextClassRef>
          </RequestedAuthnContext>
        </AuthnRequest>"#;
        let req = AuthnRequest::parse(&decode_redirect(&encode_redirect(xml)).unwrap()).unwrap();
        assert_eq!(req.issuer, "urn:federation:MicrosoftOnline");
        assert_eq!(req.issue_instant.to_rfc3339(), "2024-03-12T14:00:18+00:00");
        assert_eq!(req.destination.as_deref(), Some("https://idp/sso"));
        assert_eq!(req.acs_url.as_deref(), Some("https://sp/acs"));
        assert_eq!(req.acs_index, Some(3));
        assert!(req.force_authn && req.is_passive && req.signed);
        assert_eq!(req.subject_name_id.as_deref(), Some("ABC123"));
        assert_eq!(
            req.requested_authn_context,
            ["http://schemas.microsoft.com/claims/multipleauthn", "urn:x"]
        );
    }

    fn parse_err(xml: &str) -> SamlError {
        AuthnRequest::parse(xml).unwrap_err()
    }

    #[test]
    fn rejects_wrong_root_version_and_missing_fields() {
        let wrong_ns = MS_SAMPLE.replace("SAML:2.0:protocol\"", "SAML:2.0:assertion\"");
        assert!(matches!(
            parse_err(&wrong_ns),
            SamlError::UnexpectedRoot {
                expected: "AuthnRequest",
                ..
            }
        ));
        let wrong_name = MS_SAMPLE.replace("samlp:AuthnRequest", "samlp:LogoutRequest");
        assert!(matches!(
            parse_err(&wrong_name),
            SamlError::UnexpectedRoot { .. }
        ));
        assert!(
            matches!(parse_err(&MS_SAMPLE.replace("Version=\"2.0\"", "Version=\"1.1\"")), SamlError::UnsupportedVersion(v) if v == "1.1")
        );
        let no_id = MS_SAMPLE.replace("ID=\"_1e089e5c-a976-4881-af74-3b92c89e7e2c\"", "");
        assert!(matches!(
            parse_err(&no_id),
            SamlError::Missing("ID attribute")
        ));
        let no_issuer = MS_SAMPLE.replace(r#"<Issuer xmlns="urn:oasis:names:tc:SAML:2.0:assertion">urn:federation:MicrosoftOnline</Issuer>"#, "");
        assert!(matches!(
            parse_err(&no_issuer),
            SamlError::Missing("Issuer element")
        ));
        // An Issuer in the wrong namespace does not count.
        let bad_ns_issuer = MS_SAMPLE.replace(
            "<Issuer xmlns=\"urn:oasis:names:tc:SAML:2.0:assertion\">",
            "<Issuer>",
        );
        assert!(matches!(
            parse_err(&bad_ns_issuer),
            SamlError::Missing("Issuer element")
        ));
        let no_instant = MS_SAMPLE.replace("IssueInstant=\"2024-03-12T14:00:18.450Z\"", "");
        assert!(matches!(
            parse_err(&no_instant),
            SamlError::Missing("IssueInstant attribute")
        ));
        let bad_instant = MS_SAMPLE.replace("2024-03-12T14:00:18.450Z", "12/03/2024");
        assert!(matches!(
            parse_err(&bad_instant),
            SamlError::Invalid {
                field: "IssueInstant",
                ..
            }
        ));
    }

    #[test]
    fn rejects_ambiguous_or_oversized_values() {
        let issuer = r#"<Issuer xmlns="urn:oasis:names:tc:SAML:2.0:assertion">urn:federation:MicrosoftOnline</Issuer>"#;
        let two_issuers = MS_SAMPLE.replace(issuer, &issuer.repeat(2));
        assert!(matches!(
            parse_err(&two_issuers),
            SamlError::Invalid {
                field: "Issuer",
                ..
            }
        ));
        let long_id = MS_SAMPLE.replace("_1e089e5c-a976-4881-af74-3b92c89e7e2c", &"a".repeat(257));
        assert!(matches!(
            parse_err(&long_id),
            SamlError::Invalid { field: "ID", .. }
        ));
        let long_issuer = MS_SAMPLE.replace("urn:federation:MicrosoftOnline", &"u".repeat(1025));
        assert!(matches!(
            parse_err(&long_issuer),
            SamlError::Invalid {
                field: "Issuer",
                ..
            }
        ));
        let bad_bool = MS_SAMPLE.replace("Version=", "ForceAuthn=\"yes\" Version=");
        assert!(matches!(
            parse_err(&bad_bool),
            SamlError::Invalid {
                field: "ForceAuthn",
                ..
            }
        ));
        let doctype =
            format!("<!DOCTYPE x [<!ENTITY e SYSTEM \"file:///etc/passwd\">]>{MS_SAMPLE}");
        assert!(matches!(parse_err(&doctype), SamlError::DtdRefused));
        assert!(matches!(
            parse_err("<samlp:AuthnRequest"),
            SamlError::Xml(_)
        ));
    }
}
