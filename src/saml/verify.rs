//! Checking the signatures service providers put on their messages, against certificates the
//! admin configured (never against a certificate the message itself carries in KeyInfo).
//!
//! Two bindings, two forms (SAML bindings, <https://docs.oasis-open.org/security/saml/v2.0/saml-bindings-2.0-os.pdf>):
//!
//! - HTTP-Redirect (§3.4.4.1): the signature covers the octets
//!   `SAMLRequest=…&RelayState=…&SigAlg=…` exactly as they appear in the URL, still
//!   URL-encoded, so [`RedirectQuery`] keeps the raw query string rather than decoded values;
//!   the XML then carries no signature.
//! - HTTP-POST (§3.5.4, SAML core §5): an enveloped XML signature, `ds:Signature` as a child
//!   of the message root, with one Reference to the root's ID.
//!
//! The same code serves LogoutRequests now and AuthnRequests later (Microsoft signs those with
//! the key in its federation metadata).
//!
//! # Signature wrapping
//!
//! XSW attacks move the signed element elsewhere in the document and put a forged one where
//! the receiver looks (Somorovsky et al., "On Breaking SAML", USENIX Security 2012). The
//! defence here is structural: we verify the document root, the caller parses that same root,
//! the document has exactly one `ds:Signature`, it is a direct child of the root, its single
//! Reference names the root's ID, and every ID in the document is unique.
//!
//! # Algorithms
//!
//! Only RSA with SHA-256 is accepted, for the signature and the digest. SHA-1 is refused: its
//! collisions are practical (SHAttered 2017, a chosen-prefix collision in 2020), XML Signature
//! 1.1 discourages it, and Microsoft Entra ID signs with SHA-256 by default.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Public};
use openssl::sign::Verifier;
use openssl::x509::X509;
use roxmltree::{Document, Node};

use super::xml::exc_c14n;
use super::{SamlError, NS_DSIG, NS_METADATA};

/// The only signature algorithm accepted (RSA PKCS#1 v1.5 with SHA-256).
pub const RSA_SHA256: &str = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256";
/// The only digest algorithm accepted.
pub const SHA256: &str = "http://www.w3.org/2001/04/xmlenc#sha256";
/// Exclusive canonicalisation without comments.
pub const EXC_C14N: &str = "http://www.w3.org/2001/10/xml-exc-c14n#";
/// The enveloped-signature transform.
pub const ENVELOPED: &str = "http://www.w3.org/2000/09/xmldsig#enveloped-signature";
const RSA_SHA1: &str = "http://www.w3.org/2000/09/xmldsig#rsa-sha1";
const SHA1: &str = "http://www.w3.org/2000/09/xmldsig#sha1";

/// Largest certificate file read; a real PEM bundle is a few kilobytes.
pub const MAX_CERTIFICATE_FILE_BYTES: usize = 1024 * 1024;

fn bad(reason: impl Into<String>) -> SamlError {
    SamlError::Signature(reason.into())
}

/// The public keys a service provider signs with (several during a certificate rollover).
#[derive(Clone)]
pub struct VerificationKeys {
    keys: Vec<PKey<Public>>,
    fingerprints: Vec<String>,
}

impl fmt::Debug for VerificationKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerificationKeys")
            .field("sha256", &self.fingerprints)
            .finish()
    }
}

impl VerificationKeys {
    /// Reads one or more PEM certificates; every one must hold an RSA public key.
    pub fn from_pem(pem: &[u8]) -> Result<Self, SamlError> {
        let invalid = |reason: String| SamlError::Invalid {
            field: "certificate",
            reason,
        };
        if pem.len() > MAX_CERTIFICATE_FILE_BYTES {
            return Err(invalid(format!(
                "{} bytes is more than a certificate file holds (at most {MAX_CERTIFICATE_FILE_BYTES})",
                pem.len()
            )));
        }
        if !pem
            .windows(b"-----BEGIN CERTIFICATE-----".len())
            .any(|w| w == b"-----BEGIN CERTIFICATE-----")
        {
            return Err(invalid(
                "no \"-----BEGIN CERTIFICATE-----\" block: not a PEM certificate".into(),
            ));
        }
        let certs = X509::stack_from_pem(pem)
            .map_err(|e| invalid(format!("not a readable PEM certificate ({e})")))?;
        Self::from_certificates(&certs)
    }

    /// Reads SAML metadata (an IdP's or service provider's, or Microsoft's federation
    /// metadata): the certificates of its signing `KeyDescriptor`s, in any role descriptor
    /// (`IDPSSODescriptor`, `SPSSODescriptor`, WS-Federation's `RoleDescriptor`). The
    /// metadata's own signature is not checked: it is trusted as the https source it came
    /// from is (Microsoft publishes it at login.microsoftonline.com).
    pub fn from_metadata(xml: &[u8]) -> Result<Self, SamlError> {
        let invalid = |reason: String| SamlError::Invalid {
            field: "metadata",
            reason,
        };
        if xml.len() > MAX_CERTIFICATE_FILE_BYTES {
            return Err(invalid(format!(
                "{} bytes is more than metadata holds (at most {MAX_CERTIFICATE_FILE_BYTES})",
                xml.len()
            )));
        }
        let text = std::str::from_utf8(xml).map_err(|_| invalid("not UTF-8".into()))?;
        // roxmltree refuses DTDs by default: no entity expansion.
        let doc = Document::parse(text).map_err(|e| invalid(format!("not readable XML ({e})")))?;
        let mut seen = std::collections::HashSet::new();
        let mut certs = Vec::new();
        for descriptor in doc.descendants().filter(|n| {
            n.has_tag_name((NS_METADATA, "KeyDescriptor"))
                && n.attribute("use").is_none_or(|u| u == "signing")
        }) {
            for node in descriptor
                .descendants()
                .filter(|n| n.has_tag_name((NS_DSIG, "X509Certificate")))
            {
                let b64: String = node
                    .text()
                    .unwrap_or_default()
                    .chars()
                    .filter(|c| !c.is_whitespace())
                    .collect();
                if !seen.insert(b64.clone()) {
                    continue;
                }
                let der = BASE64
                    .decode(&b64)
                    .map_err(|_| invalid("an X509Certificate is not base64".into()))?;
                certs.push(
                    X509::from_der(&der).map_err(|e| {
                        invalid(format!("an X509Certificate is not readable ({e})"))
                    })?,
                );
            }
        }
        if certs.is_empty() {
            return Err(invalid(
                "no signing certificate (no <KeyDescriptor use=\"signing\"> with an X509Certificate)"
                    .into(),
            ));
        }
        Self::from_certificates(&certs)
    }

    /// Reads a certificate file that is either PEM or SAML metadata (XML).
    pub fn from_file_contents(contents: &[u8]) -> Result<Self, SamlError> {
        let start = contents
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(0);
        if contents.get(start) == Some(&b'<') {
            Self::from_metadata(contents)
        } else {
            Self::from_pem(contents)
        }
    }

    fn from_certificates(certs: &[X509]) -> Result<Self, SamlError> {
        let invalid = |reason: String| SamlError::Invalid {
            field: "certificate",
            reason,
        };
        if certs.is_empty() {
            return Err(invalid("no certificate in the file".into()));
        }
        let mut keys = Vec::with_capacity(certs.len());
        let mut fingerprints = Vec::with_capacity(certs.len());
        for cert in certs {
            let key = cert.public_key()?;
            if key.rsa().is_err() {
                return Err(invalid(
                    "only RSA certificates are supported (SAML signatures here are rsa-sha256)"
                        .into(),
                ));
            }
            // NIST SP 800-131A: RSA keys under 2048 bits are not acceptable for signatures.
            if key.bits() < 2048 {
                return Err(invalid(format!(
                    "the key has {} bits; at least 2048 are required",
                    key.bits()
                )));
            }
            keys.push(key);
            let digest = cert.digest(MessageDigest::sha256())?;
            fingerprints.push(
                digest
                    .iter()
                    .map(|b| format!("{b:02X}"))
                    .collect::<Vec<_>>()
                    .join(":"),
            );
        }
        Ok(Self { keys, fingerprints })
    }

    /// SHA-256 fingerprints of the certificates, uppercase hex with colons.
    pub fn fingerprints(&self) -> &[String] {
        &self.fingerprints
    }

    /// True when one of the keys made `signature` over `data` with RSA-SHA256.
    fn verifies(&self, data: &[u8], signature: &[u8]) -> Result<bool, SamlError> {
        for key in &self.keys {
            let mut verifier = Verifier::new(MessageDigest::sha256(), key)?;
            verifier.update(data)?;
            // A malformed signature is an error in OpenSSL's eyes; for us it is just "no".
            if verifier.verify(signature).unwrap_or(false) {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// The SAML parameters of an HTTP-Redirect query, decoded, plus the raw octets they were signed as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectQuery {
    /// The decoded `SAMLRequest` (or `SAMLResponse`) value, still base64 of DEFLATE.
    pub message: Option<String>,
    /// The decoded `RelayState`.
    pub relay_state: Option<String>,
    /// The decoded `SigAlg`.
    pub sig_alg: Option<String>,
    /// The decoded `Signature` (base64).
    pub signature: Option<String>,
    /// `SAMLRequest=…[&RelayState=…]&SigAlg=…` as it appeared in the URL (§3.4.4.1).
    signed_octets: Option<String>,
}

impl RedirectQuery {
    /// Splits a raw query string (without `?`); `message` is `SAMLRequest` or `SAMLResponse`.
    ///
    /// A parameter given twice is refused: which copy the signature covers and which one is
    /// acted on would otherwise be up to two different parsers.
    pub fn parse(raw: &str, message: &'static str) -> Result<Self, SamlError> {
        let mut raw_message = None;
        let mut raw_relay = None;
        let mut raw_alg = None;
        let mut raw_sig = None;
        for pair in raw.split('&').filter(|p| !p.is_empty()) {
            let name = pair.split_once('=').map_or(pair, |(n, _)| n);
            let slot = match decode_component(name).as_str() {
                n if n == message => &mut raw_message,
                "RelayState" => &mut raw_relay,
                "SigAlg" => &mut raw_alg,
                "Signature" => &mut raw_sig,
                _ => continue,
            };
            if slot.replace(pair).is_some() {
                return Err(SamlError::Invalid {
                    field: "query string",
                    reason: format!("the parameter {:?} appears more than once", name),
                });
            }
        }
        let value = |pair: Option<&str>| {
            pair.map(|p| decode_component(p.split_once('=').map_or("", |(_, v)| v)))
        };
        let signed_octets = match (raw_message, raw_alg) {
            (Some(m), Some(a)) => Some(match raw_relay {
                Some(r) => format!("{m}&{r}&{a}"),
                None => format!("{m}&{a}"),
            }),
            _ => None,
        };
        Ok(Self {
            message: value(raw_message),
            relay_state: value(raw_relay),
            sig_alg: value(raw_alg),
            signature: value(raw_sig),
            signed_octets,
        })
    }

    /// Whether the query carries a signature at all.
    pub fn is_signed(&self) -> bool {
        self.signature.is_some() || self.sig_alg.is_some()
    }

    /// Checks the query signature against `keys` (bindings §3.4.4.1).
    pub fn verify(&self, keys: &VerificationKeys) -> Result<(), SamlError> {
        let (Some(alg), Some(signature)) = (&self.sig_alg, &self.signature) else {
            return Err(SamlError::Unsigned);
        };
        check_signature_algorithm(alg)?;
        let octets = self
            .signed_octets
            .as_deref()
            .ok_or(SamlError::Missing("SAMLRequest parameter"))?;
        let signature = decode_base64(signature, "Signature parameter")?;
        if keys.verifies(octets.as_bytes(), &signature)? {
            Ok(())
        } else {
            Err(bad(
                "the Signature parameter does not match the query for any configured certificate",
            ))
        }
    }
}

/// Decodes one `application/x-www-form-urlencoded` component (`+` is a space).
fn decode_component(raw: &str) -> String {
    url::form_urlencoded::parse(format!("x={raw}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn check_signature_algorithm(alg: &str) -> Result<(), SamlError> {
    match alg {
        RSA_SHA256 => Ok(()),
        RSA_SHA1 => Err(bad(
            "rsa-sha1 is refused (SHA-1 collisions are practical); sign with rsa-sha256",
        )),
        other => Err(bad(format!(
            "the signature algorithm {other:?} is not supported; sign with rsa-sha256"
        ))),
    }
}

fn decode_base64(text: &str, what: &str) -> Result<Vec<u8>, SamlError> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    BASE64
        .decode(compact)
        .map_err(|_| bad(format!("the {what} is not base64")))
}

/// Verifies the enveloped signature of the document root (HTTP-POST binding).
///
/// Success means exactly the root element, as parsed in `doc`, was signed by one of `keys`;
/// callers must read the message from this same `doc.root_element()`.
pub fn verify_enveloped(doc: &Document<'_>, keys: &VerificationKeys) -> Result<(), SamlError> {
    let root = doc.root_element();
    let id = root
        .attribute("ID")
        .ok_or(SamlError::Missing("ID attribute"))?;
    check_unique_ids(doc)?;

    let mut signatures = doc
        .descendants()
        .filter(|n| n.has_tag_name((NS_DSIG, "Signature")));
    let signature = signatures.next().ok_or(SamlError::Unsigned)?;
    if signatures.next().is_some() {
        return Err(bad("the message has more than one ds:Signature"));
    }
    if signature.parent_element().map(|p| p.id()) != Some(root.id()) {
        return Err(bad(
            "the ds:Signature is not a child of the message root, so it does not sign the message",
        ));
    }

    let mut parts = signature.children().filter(Node::is_element);
    let signed_info = expect_element(parts.next(), "SignedInfo")?;
    let signature_value = expect_element(parts.next(), "SignatureValue")?;
    // KeyInfo and Object may follow; KeyInfo is ignored (keys come from configuration only).

    let mut info = signed_info.children().filter(Node::is_element);
    let c14n = expect_element(info.next(), "CanonicalizationMethod")?;
    if c14n.attribute("Algorithm") != Some(EXC_C14N) || c14n.has_children() {
        return Err(bad(format!(
            "the CanonicalizationMethod must be {EXC_C14N} without InclusiveNamespaces"
        )));
    }
    let method = expect_element(info.next(), "SignatureMethod")?;
    check_signature_algorithm(method.attribute("Algorithm").unwrap_or_default())?;
    let reference = expect_element(info.next(), "Reference")?;
    if info.next().is_some() {
        return Err(bad("the SignedInfo must hold exactly one Reference"));
    }
    if reference.attribute("URI") != Some(&format!("#{id}")) {
        return Err(bad(format!(
            "the Reference URI {:?} does not name the message root (#{id})",
            reference.attribute("URI").unwrap_or_default()
        )));
    }

    let mut ref_parts = reference.children().filter(Node::is_element);
    let transforms = expect_element(ref_parts.next(), "Transforms")?;
    let algorithms: Vec<&str> = transforms
        .children()
        .filter(Node::is_element)
        .map(|t| {
            if t.has_tag_name((NS_DSIG, "Transform")) && !t.has_children() {
                t.attribute("Algorithm").unwrap_or_default()
            } else {
                "(not a plain ds:Transform)"
            }
        })
        .collect();
    if algorithms != [ENVELOPED, EXC_C14N] {
        return Err(bad(format!(
            "the transforms must be enveloped-signature then exc-c14n, got {algorithms:?}"
        )));
    }
    let digest_method = expect_element(ref_parts.next(), "DigestMethod")?;
    match digest_method.attribute("Algorithm").unwrap_or_default() {
        SHA256 => {}
        SHA1 => return Err(bad("sha1 digests are refused; use sha256")),
        other => {
            return Err(bad(format!(
                "the digest algorithm {other:?} is not supported"
            )))
        }
    }
    let digest_value = expect_element(ref_parts.next(), "DigestValue")?;
    if ref_parts.next().is_some() {
        return Err(bad("unexpected element after DigestValue"));
    }

    let expected = decode_base64(&text_of(digest_value), "DigestValue")?;
    let canonical = exc_c14n(root, Some(signature.id()))?;
    let actual = openssl::hash::hash(MessageDigest::sha256(), canonical.as_bytes())?;
    if expected.len() != actual.len() || !openssl::memcmp::eq(&expected, &actual) {
        return Err(bad(
            "the digest does not match: the message was changed after it was signed",
        ));
    }
    let signed = exc_c14n(signed_info, None)?;
    let value = decode_base64(&text_of(signature_value), "SignatureValue")?;
    if keys.verifies(signed.as_bytes(), &value)? {
        Ok(())
    } else {
        Err(bad(
            "the SignatureValue does not verify with any configured certificate",
        ))
    }
}

fn expect_element<'a, 'i>(
    node: Option<Node<'a, 'i>>,
    local: &'static str,
) -> Result<Node<'a, 'i>, SamlError> {
    match node {
        Some(n) if n.has_tag_name((NS_DSIG, local)) => Ok(n),
        Some(n) => Err(bad(format!(
            "expected ds:{local} but found <{}>",
            n.tag_name().name()
        ))),
        None => Err(bad(format!("the signature lacks ds:{local}"))),
    }
}

fn text_of(node: Node<'_, '_>) -> String {
    node.children().filter_map(|c| c.text()).collect()
}

/// Refuses a document in which two elements carry the same ID (any of the usual spellings).
fn check_unique_ids(doc: &Document<'_>) -> Result<(), SamlError> {
    let mut seen = std::collections::HashSet::new();
    for node in doc.descendants().filter(Node::is_element) {
        for attr in node.attributes() {
            if matches!(attr.name(), "ID" | "Id" | "id") && !seen.insert(attr.value()) {
                return Err(bad(format!(
                    "the ID {:?} appears more than once in the message",
                    attr.value()
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::saml::bindings::parse_document;
    use crate::saml::signing::{sign_enveloped, SignatureAlgorithm};
    use crate::saml::test_support::credential;
    use crate::saml::xml::XmlWriter;
    use crate::saml::{NS_ASSERTION, NS_PROTOCOL};

    fn keys() -> VerificationKeys {
        VerificationKeys::from_pem(&credential().2).unwrap()
    }

    /// A LogoutRequest signed by our own signer, as an SP would send it over HTTP-POST.
    fn signed_logout(id: &str, name_id: &str) -> String {
        let mut w = XmlWriter::new();
        let mut at = 0;
        w.element(
            "samlp:LogoutRequest",
            &[
                ("xmlns:samlp", NS_PROTOCOL),
                ("ID", id),
                ("IssueInstant", "2026-01-01T00:00:00Z"),
                ("Version", "2.0"),
            ],
            |w| {
                w.leaf(
                    "saml:Issuer",
                    &[("xmlns:saml", NS_ASSERTION)],
                    "https://sp.example",
                )?;
                at = w.offset();
                w.leaf("saml:NameID", &[("xmlns:saml", NS_ASSERTION)], name_id)?;
                w.leaf("samlp:SessionIndex", &[], "_s1")
            },
        )
        .unwrap();
        sign_enveloped(
            &w.into_string(),
            id,
            at,
            &credential().0,
            SignatureAlgorithm::RsaSha256,
        )
        .unwrap()
    }

    fn verify(xml: &str) -> Result<(), SamlError> {
        verify_enveloped(&parse_document(xml).unwrap(), &keys())
    }

    #[test]
    fn our_signed_message_verifies() {
        verify(&signed_logout("_r1", "alice")).unwrap();
    }

    #[test]
    fn tampering_wrong_key_and_sha1_are_refused() {
        let xml = signed_logout("_r1", "alice");
        let err = verify(&xml.replace(">alice<", ">mallory<")).unwrap_err();
        assert!(err.to_string().contains("digest does not match"), "{err}");

        let (_, _, other) = SigningCredential::generate(2048, "other", 1).unwrap();
        let other = VerificationKeys::from_pem(&other).unwrap();
        let err = verify_enveloped(&parse_document(&xml).unwrap(), &other).unwrap_err();
        assert!(
            err.to_string().contains("any configured certificate"),
            "{err}"
        );

        let sha1 = xml.replace(RSA_SHA256, RSA_SHA1);
        assert!(verify(&sha1).unwrap_err().to_string().contains("rsa-sha1"));
        let unsigned = roxmltree::Document::parse(&xml).unwrap();
        let sig = unsigned
            .descendants()
            .find(|n| n.has_tag_name((NS_DSIG, "Signature")))
            .unwrap()
            .range();
        let stripped = format!("{}{}", &xml[..sig.start], &xml[sig.end..]);
        assert!(matches!(verify(&stripped), Err(SamlError::Unsigned)));
    }

    #[test]
    fn wrapping_variants_are_refused() {
        let xml = signed_logout("_r1", "alice");
        // The signed request moved inside a forged one (classic XSW): the Reference names an
        // inner element, not the root.
        let forged = format!(
            r#"<samlp:LogoutRequest xmlns:samlp="{NS_PROTOCOL}" ID="_evil" IssueInstant="2026-01-01T00:00:00Z" Version="2.0"><saml:Issuer xmlns:saml="{NS_ASSERTION}">https://sp.example</saml:Issuer><samlp:Extensions>{xml}</samlp:Extensions></samlp:LogoutRequest>"#
        );
        assert!(verify(&forged)
            .unwrap_err()
            .to_string()
            .contains("not a child"));
        // The signature lifted into a forged root that keeps the signed ID.
        let start = xml.find("<ds:Signature").unwrap();
        let end = xml.find("</ds:Signature>").unwrap() + "</ds:Signature>".len();
        let lifted = format!(
            r#"<samlp:LogoutRequest xmlns:samlp="{NS_PROTOCOL}" ID="_r1" IssueInstant="2026-01-01T00:00:00Z" Version="2.0">{}<samlp:Extensions>{}</samlp:Extensions></samlp:LogoutRequest>"#,
            &xml[start..end],
            xml.replace(&xml[start..end], "")
        );
        let err = verify(&lifted).unwrap_err().to_string();
        assert!(err.contains("more than once"), "{err}");
        // A second Signature anywhere.
        let twice = xml.replace(
            "</samlp:LogoutRequest>",
            &format!("<x>{}</x></samlp:LogoutRequest>", &xml[start..end]),
        );
        assert!(verify(&twice)
            .unwrap_err()
            .to_string()
            .contains("more than one"));
        // A Reference to another ID.
        let other_ref = xml.replace("URI=\"#_r1\"", "URI=\"#_r2\"");
        assert!(verify(&other_ref)
            .unwrap_err()
            .to_string()
            .contains("does not name"));
    }

    #[test]
    fn canonicalisation_matches_libxml2_on_reformatted_input() {
        // Whitespace, a default namespace, a redundant declaration, attribute order, comments,
        // an empty element and character references: the shapes other SAML stacks produce.
        let xml = "<samlp:LogoutRequest xmlns:samlp=\"urn:oasis:names:tc:SAML:2.0:protocol\" Version=\"2.0\"  ID=\"_x\" xmlns:unused=\"urn:u\">\n  <Issuer xmlns=\"urn:oasis:names:tc:SAML:2.0:assertion\" b='1' a=\"&lt;&#13;&quot;\">sp &amp; co</Issuer><!-- c -->\n  <saml:NameID xmlns:saml=\"urn:oasis:names:tc:SAML:2.0:assertion\" xmlns:samlp=\"urn:oasis:names:tc:SAML:2.0:protocol\"/><samlp:SessionIndex><![CDATA[a<b]]></samlp:SessionIndex><x:e xmlns:x=\"urn:x\" x:z=\"1\" y=\"2\"><plain xmlns=\"\"/></x:e>\r\n</samlp:LogoutRequest>";
        let doc = parse_document(xml).unwrap();
        let ours = exc_c14n(doc.root_element(), None).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.xml");
        std::fs::write(&path, xml).unwrap();
        let out = std::process::Command::new("python3")
            .arg("-c")
            .arg("import sys\nfrom lxml import etree\nsys.stdout.buffer.write(etree.tostring(etree.parse(sys.argv[1]).getroot(), method='c14n', exclusive=True, with_comments=False))")
            .arg(&path)
            .output()
            .expect("python3 with lxml");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(ours, String::from_utf8(out.stdout).unwrap());
    }

    #[test]
    fn redirect_query_keeps_the_raw_octets_and_refuses_duplicates() {
        let q = RedirectQuery::parse(
            "SAMLRequest=a%2Bb&RelayState=r+s&SigAlg=http%3A%2F%2Fx&Signature=c%3D&other=1",
            "SAMLRequest",
        )
        .unwrap();
        assert_eq!(q.message.as_deref(), Some("a+b"));
        assert_eq!(q.relay_state.as_deref(), Some("r s"));
        assert_eq!(q.sig_alg.as_deref(), Some("http://x"));
        assert_eq!(q.signature.as_deref(), Some("c="));
        assert_eq!(
            q.signed_octets.as_deref(),
            Some("SAMLRequest=a%2Bb&RelayState=r+s&SigAlg=http%3A%2F%2Fx")
        );
        assert!(RedirectQuery::parse("SAMLRequest=a&SAMLRequest=b", "SAMLRequest").is_err());
        let unsigned = RedirectQuery::parse("SAMLRequest=a", "SAMLRequest").unwrap();
        assert!(!unsigned.is_signed());
        assert!(matches!(unsigned.verify(&keys()), Err(SamlError::Unsigned)));
    }

    #[test]
    fn redirect_signature_verifies_over_the_raw_octets_only() {
        use openssl::sign::Signer;
        let (cred_key, key_pem) = (&credential().0, &credential().1);
        let _ = cred_key;
        let key = PKey::private_key_from_pem(key_pem).unwrap();
        let signed = "SAMLRequest=abc%2B&RelayState=x&SigAlg=http%3A%2F%2Fwww.w3.org%2F2001%2F04%2Fxmldsig-more%23rsa-sha256";
        let mut signer = Signer::new(MessageDigest::sha256(), &key).unwrap();
        signer.update(signed.as_bytes()).unwrap();
        let sig = BASE64.encode(signer.sign_to_vec().unwrap());
        let sig: String = url::form_urlencoded::byte_serialize(sig.as_bytes()).collect();
        let q = RedirectQuery::parse(&format!("{signed}&Signature={sig}"), "SAMLRequest").unwrap();
        q.verify(&keys()).unwrap();
        // The same values encoded differently are different octets: refused, per §3.4.4.1.
        let reencoded = signed.replace("%2B", "%2b");
        let q =
            RedirectQuery::parse(&format!("{reencoded}&Signature={sig}"), "SAMLRequest").unwrap();
        assert!(q.verify(&keys()).is_err());
        let swapped = signed
            .replace("rsa-sha256", "rsa-sha1")
            .replace("xmldsig-more", "xmldsig")
            .replace("2001%2F04", "2000%2F09");
        let q = RedirectQuery::parse(&format!("{swapped}&Signature={sig}"), "SAMLRequest").unwrap();
        assert!(q
            .verify(&keys())
            .unwrap_err()
            .to_string()
            .contains("rsa-sha1"));
    }

    #[test]
    fn certificate_files_are_checked() {
        let (_, _, a) = credential();
        let (_, _, b) = SigningCredential::generate(2048, "next", 1).unwrap();
        let both = [a.as_slice(), b.as_slice()].concat();
        assert_eq!(
            VerificationKeys::from_pem(&both)
                .unwrap()
                .fingerprints()
                .len(),
            2
        );
        assert!(VerificationKeys::from_pem(b"hello").is_err());
        assert!(VerificationKeys::from_pem(&credential().1).is_err());
        let broken = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(VerificationKeys::from_pem(broken).is_err());
    }

    use crate::saml::SigningCredential;
}
