//! Single logout: parsing the LogoutRequest Entra ID sends (HTTP-Redirect) and a signed answer.

use chrono::{DateTime, Utc};
use roxmltree::Document;

use super::bindings::{
    children, parse_document, protocol_root, single_child, text_content, RequestHeader,
};
use super::signing::{sign_enveloped, SignatureAlgorithm, SigningCredential};
use super::xml::{xs_datetime, XmlWriter};
use super::{try_new_id, SamlError, NS_ASSERTION, NS_PROTOCOL, STATUS_SUCCESS};

/// The fields of a received LogoutRequest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutRequest {
    /// Request ID, echoed as InResponseTo.
    pub id: String,
    /// When the SP issued the request.
    pub issue_instant: DateTime<Utc>,
    /// The SP entity ID, trimmed.
    pub issuer: String,
    /// The NameID of the user being logged out.
    pub name_id: Option<String>,
    /// SessionIndex values (child elements in SAML core, not attributes).
    pub session_indexes: Vec<String>,
    /// Where the SP says it sent the request.
    pub destination: Option<String>,
}

impl LogoutRequest {
    /// Parses a decoded LogoutRequest document.
    pub fn parse(xml: &str) -> Result<Self, SamlError> {
        Self::from_document(&parse_document(xml)?)
    }

    /// Reads the LogoutRequest at the root of a parsed document: the same root whose signature
    /// [`super::verify::verify_enveloped`] checks, so what is verified is what is acted on.
    pub fn from_document(doc: &Document<'_>) -> Result<Self, SamlError> {
        let root = protocol_root(doc, "LogoutRequest")?;
        let header = RequestHeader::parse(root)?;
        let name_id = match single_child(root, NS_ASSERTION, "NameID")? {
            Some(n) => Some(text_content(n)?.trim().to_string()),
            None => None,
        };
        let session_indexes = children(root, NS_PROTOCOL, "SessionIndex")
            .map(|n| text_content(n).map(|s| s.trim().to_string()))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            id: header.id,
            issue_instant: header.issue_instant,
            issuer: header.issuer,
            name_id,
            session_indexes,
            destination: header.destination,
        })
    }
}

/// What goes into a LogoutResponse.
#[derive(Debug, Clone)]
pub struct LogoutResponseParams<'a> {
    /// Our entity ID (the domain's issuerUri).
    pub issuer: &'a str,
    /// The SP's logout endpoint the response is posted to.
    pub destination: &'a str,
    /// ID of the LogoutRequest being answered.
    pub in_response_to: &'a str,
    /// Issue instant.
    pub now: DateTime<Utc>,
}

/// Builds a signed `samlp:LogoutResponse` with status Success.
pub fn build_logout_response(
    p: &LogoutResponseParams<'_>,
    credential: &SigningCredential,
    alg: SignatureAlgorithm,
) -> Result<String, SamlError> {
    let id = try_new_id()?;
    let now = xs_datetime(p.now);
    let mut sig_at = 0;
    let mut w = XmlWriter::new();
    // The signed element must be exc-c14n as an apex, where a namespace is rendered on the
    // first element that uses it: so xmlns:saml goes on Issuer, not on the root.
    let attrs = [
        ("xmlns:samlp", NS_PROTOCOL),
        ("Destination", p.destination),
        ("ID", &id),
        ("InResponseTo", p.in_response_to),
        ("IssueInstant", &now),
        ("Version", "2.0"),
    ];
    w.element("samlp:LogoutResponse", &attrs, |w| {
        w.leaf("saml:Issuer", &[("xmlns:saml", NS_ASSERTION)], p.issuer)?;
        sig_at = w.offset();
        w.element("samlp:Status", &[], |w| {
            w.leaf("samlp:StatusCode", &[("Value", STATUS_SUCCESS)], "")
        })
    })?;
    sign_enveloped(&w.into_string(), &id, sig_at, credential, alg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::saml::test_support::{credential, lxml_c14n, xmlsec_verify};
    use crate::saml::{decode_redirect, encode_redirect};

    const ENTRA_LOGOUT: &str = r#"<samlp:LogoutRequest xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" ID="_7171b0b2-19f2-4ba2-8f94-24b5e56b7f1e" IssueInstant="2024-03-12T14:10:00Z" Version="2.0" Destination="https://idp.example.com/saml/m365/contoso.com/logout"><Issuer xmlns="urn:oasis:names:tc:SAML:2.0:assertion">urn:federation:MicrosoftOnline</Issuer><NameID xmlns="urn:oasis:names:tc:SAML:2.0:assertion" Format="urn:oasis:names:tc:SAML:2.0:nameid-format:persistent">ABCDEFG1234567890</NameID><samlp:SessionIndex>_s1</samlp:SessionIndex><samlp:SessionIndex> _s2 </samlp:SessionIndex></samlp:LogoutRequest>"#;

    #[test]
    fn parses_redirect_logout_request_with_session_index_elements() {
        let req = LogoutRequest::parse(&decode_redirect(&encode_redirect(ENTRA_LOGOUT)).unwrap())
            .unwrap();
        assert_eq!(req.id, "_7171b0b2-19f2-4ba2-8f94-24b5e56b7f1e");
        assert_eq!(req.issuer, "urn:federation:MicrosoftOnline");
        assert_eq!(req.name_id.as_deref(), Some("ABCDEFG1234567890"));
        assert_eq!(req.session_indexes, ["_s1", "_s2"]);
        assert_eq!(
            req.destination.as_deref(),
            Some("https://idp.example.com/saml/m365/contoso.com/logout")
        );
        assert_eq!(req.issue_instant.timestamp(), 1_710_252_600);
    }

    #[test]
    fn logout_request_errors() {
        assert!(matches!(
            LogoutRequest::parse(&ENTRA_LOGOUT.replace("LogoutRequest", "AuthnRequest")),
            Err(SamlError::UnexpectedRoot {
                expected: "LogoutRequest",
                ..
            })
        ));
        let no_issuer = ENTRA_LOGOUT.replace("<Issuer xmlns=\"urn:oasis:names:tc:SAML:2.0:assertion\">urn:federation:MicrosoftOnline</Issuer>", "");
        assert!(matches!(
            LogoutRequest::parse(&no_issuer),
            Err(SamlError::Missing("Issuer element"))
        ));
        let no_name_id = LogoutRequest::parse(&ENTRA_LOGOUT.replace("NameID", "BaseID")).unwrap();
        assert_eq!(no_name_id.name_id, None);
    }

    fn params(in_response_to: &str) -> LogoutResponseParams<'_> {
        LogoutResponseParams {
            issuer: "https://idp.example.com/saml/contoso.com",
            destination: "https://login.microsoftonline.com/login.srf",
            in_response_to,
            now: Utc::now(),
        }
    }

    #[test]
    fn signed_logout_response_verifies_with_xmlsec1_and_is_canonical() {
        let (cred, _, cert_pem) = credential();
        let xml = build_logout_response(&params("_req&<\"1"), cred, SignatureAlgorithm::RsaSha256)
            .unwrap();
        let id_attr = "urn:oasis:names:tc:SAML:2.0:protocol:LogoutResponse";
        assert!(
            xmlsec_verify(&xml, cert_pem, id_attr),
            "xmlsec1 rejected: {xml}"
        );

        let doc = roxmltree::Document::parse(&xml).unwrap();
        let root = doc.root_element();
        assert_eq!(root.attribute("InResponseTo"), Some("_req&<\"1"));
        let kids: Vec<_> = root.children().map(|c| c.tag_name().name()).collect();
        assert_eq!(kids, ["Issuer", "Signature", "Status"]);
        let status = root
            .descendants()
            .find(|n| n.has_tag_name((NS_PROTOCOL, "StatusCode")))
            .unwrap();
        assert_eq!(status.attribute("Value"), Some(STATUS_SUCCESS));

        // Without its Signature, the document is exactly what libxml2's exc-c14n produces.
        let id = root.attribute("ID").unwrap();
        let (canonical, _) = lxml_c14n(&xml, id);
        let sig =
            &xml[xml.find("<ds:Signature").unwrap()..xml.find("</ds:Signature>").unwrap() + 15];
        assert_eq!(canonical, xml.replace(sig, ""));

        let tampered = xml.replace("login.srf", "login.srx");
        assert!(!xmlsec_verify(&tampered, cert_pem, id_attr));
    }
}
