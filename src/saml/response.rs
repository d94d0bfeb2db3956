//! The `samlp:Response` with a signed Assertion that Entra ID consumes, and error responses.

use chrono::{DateTime, Duration, Utc};

use super::signing::{sign_enveloped, SignatureAlgorithm, SigningCredential};
use super::xml::{xs_datetime, XmlWriter};
use super::{try_new_id, SamlError, NS_ASSERTION, NS_PROTOCOL, STATUS_SUCCESS};

const CM_BEARER: &str = "urn:oasis:names:tc:SAML:2.0:cm:bearer";

/// Everything that varies in a successful sign-in Response.
#[derive(Debug, Clone)]
pub struct AssertionParams<'a> {
    /// Our entity ID; emitted byte for byte, never normalised (a mismatch is AADSTS50107).
    pub issuer: &'a str,
    /// The ACS URL: Response@Destination and SubjectConfirmationData@Recipient.
    pub destination: &'a str,
    /// The SP entity ID (`urn:federation:MicrosoftOnline`).
    pub audience: &'a str,
    /// ID of the AuthnRequest being answered (None for IdP-initiated).
    pub in_response_to: Option<&'a str>,
    /// The subject identifier (Entra: onPremisesImmutableId).
    pub name_id: &'a str,
    /// NameID Format URI (Entra: persistent).
    pub name_id_format: &'a str,
    /// Attribute name -> values (Entra: only `IDPEmail` = UPN).
    pub attributes: &'a [(String, Vec<String>)],
    /// When the user authenticated.
    pub authn_instant: DateTime<Utc>,
    /// IdP session identifier, for logout.
    pub session_index: &'a str,
    /// How the user authenticated (password or Microsoft's multipleauthn).
    pub authn_context_class_ref: &'a str,
    /// Issue instant; a parameter so tests control time.
    pub now: DateTime<Utc>,
    /// Conditions@NotBefore = now - skew, for relying parties with slow clocks.
    pub not_before_skew: Duration,
    /// SubjectConfirmationData@NotOnOrAfter = now + this (5 min typical).
    pub subject_lifetime: Duration,
    /// Conditions@NotOnOrAfter = now + this (1 h typical).
    pub conditions_lifetime: Duration,
}

/// Builds a Response whose Assertion (only) is signed, ready for the HTTP-POST binding.
pub fn build_signed_response(
    p: &AssertionParams<'_>,
    credential: &SigningCredential,
    alg: SignatureAlgorithm,
) -> Result<String, SamlError> {
    for (field, value) in [
        ("issuer", p.issuer),
        ("destination", p.destination),
        ("audience", p.audience),
        ("NameID", p.name_id),
    ] {
        if value.trim().is_empty() {
            return Err(SamlError::Invalid {
                field,
                reason: "must not be empty".into(),
            });
        }
    }
    let assertion_id = try_new_id()?;
    let (assertion, sig_at) = assertion_xml(p, &assertion_id)?;
    let signed = sign_enveloped(&assertion, &assertion_id, sig_at, credential, alg)?;
    response_xml(p.issuer, p.destination, p.in_response_to, p.now, |w| {
        w.element("samlp:Status", &[], |w| {
            w.leaf("samlp:StatusCode", &[("Value", STATUS_SUCCESS)], "")
        })?;
        w.raw(&signed);
        Ok(())
    })
}

/// Builds an unsigned Response without assertion, e.g. Responder/NoPassive or RequestDenied.
pub fn build_status_response(
    issuer: &str,
    destination: &str,
    in_response_to: Option<&str>,
    top_status: &str,
    sub_status: Option<&str>,
    message: Option<&str>,
    now: DateTime<Utc>,
) -> Result<String, SamlError> {
    response_xml(issuer, destination, in_response_to, now, |w| {
        w.element("samlp:Status", &[], |w| {
            w.element(
                "samlp:StatusCode",
                &[("Value", top_status)],
                |w| match sub_status {
                    Some(sub) => w.leaf("samlp:StatusCode", &[("Value", sub)], ""),
                    None => Ok(()),
                },
            )?;
            match message {
                Some(m) => w.leaf("samlp:StatusMessage", &[], m),
                None => Ok(()),
            }
        })
    })
}

/// The Response envelope: Issuer, then whatever `body` writes (Status, Assertion).
fn response_xml<F>(
    issuer: &str,
    destination: &str,
    in_response_to: Option<&str>,
    now: DateTime<Utc>,
    body: F,
) -> Result<String, SamlError>
where
    F: FnOnce(&mut XmlWriter) -> Result<(), SamlError>,
{
    let id = try_new_id()?;
    let now = xs_datetime(now);
    let mut attrs = vec![
        ("xmlns:samlp", NS_PROTOCOL),
        ("xmlns:saml", NS_ASSERTION),
        ("Destination", destination),
        ("ID", id.as_str()),
        ("IssueInstant", now.as_str()),
        ("Version", "2.0"),
    ];
    attrs.extend(in_response_to.map(|irt| ("InResponseTo", irt)));
    let mut w = XmlWriter::new();
    w.element("samlp:Response", &attrs, |w| {
        w.leaf("saml:Issuer", &[], issuer)?;
        body(w)
    })?;
    Ok(w.into_string())
}

/// The unsigned Assertion in exc-c14n form, and the offset right after its Issuer.
fn assertion_xml(p: &AssertionParams<'_>, id: &str) -> Result<(String, usize), SamlError> {
    let now = xs_datetime(p.now);
    let not_before = shifted(p.now, -p.not_before_skew, "not_before_skew")?;
    let subject_not_on_or_after = shifted(p.now, p.subject_lifetime, "subject_lifetime")?;
    let conditions_not_on_or_after = shifted(p.now, p.conditions_lifetime, "conditions_lifetime")?;
    let authn_instant = xs_datetime(p.authn_instant);

    let mut confirmation = vec![
        ("NotOnOrAfter", subject_not_on_or_after.as_str()),
        ("Recipient", p.destination),
    ];
    confirmation.extend(p.in_response_to.map(|irt| ("InResponseTo", irt)));

    let mut sig_at = 0;
    let mut w = XmlWriter::new();
    // The Assertion is the signed apex: it declares the one namespace it uses itself,
    // even though the enclosing Response already does.
    let attrs = [
        ("xmlns:saml", NS_ASSERTION),
        ("ID", id),
        ("IssueInstant", now.as_str()),
        ("Version", "2.0"),
    ];
    w.element("saml:Assertion", &attrs, |w| {
        w.leaf("saml:Issuer", &[], p.issuer)?;
        sig_at = w.offset();
        w.element("saml:Subject", &[], |w| {
            w.leaf("saml:NameID", &[("Format", p.name_id_format)], p.name_id)?;
            w.element("saml:SubjectConfirmation", &[("Method", CM_BEARER)], |w| {
                w.leaf("saml:SubjectConfirmationData", &confirmation, "")
            })
        })?;
        let window = [
            ("NotBefore", not_before.as_str()),
            ("NotOnOrAfter", conditions_not_on_or_after.as_str()),
        ];
        w.element("saml:Conditions", &window, |w| {
            w.element("saml:AudienceRestriction", &[], |w| {
                w.leaf("saml:Audience", &[], p.audience)
            })
        })?;
        let authn = [
            ("AuthnInstant", authn_instant.as_str()),
            ("SessionIndex", p.session_index),
        ];
        w.element("saml:AuthnStatement", &authn, |w| {
            w.element("saml:AuthnContext", &[], |w| {
                w.leaf("saml:AuthnContextClassRef", &[], p.authn_context_class_ref)
            })
        })?;
        if p.attributes.is_empty() {
            return Ok(());
        }
        // Entra wants just Name="IDPEmail" (no NameFormat).
        w.element("saml:AttributeStatement", &[], |w| {
            for (name, values) in p.attributes {
                w.element("saml:Attribute", &[("Name", name)], |w| {
                    values
                        .iter()
                        .try_for_each(|v| w.leaf("saml:AttributeValue", &[], v))
                })?;
            }
            Ok(())
        })
    })?;
    Ok((w.into_string(), sig_at))
}

/// `now + by` as xs:dateTime; chrono's `+` would panic on an absurd configured duration.
fn shifted(now: DateTime<Utc>, by: Duration, field: &'static str) -> Result<String, SamlError> {
    now.checked_add_signed(by)
        .map(xs_datetime)
        .ok_or_else(|| SamlError::Invalid {
            field,
            reason: format!("{by} is out of range"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::saml::test_support::{credential, lxml_c14n, xmlsec_verify};
    use crate::saml::{
        AC_MS_MULTIPLE_AUTHN, NAMEID_PERSISTENT, NS_DSIG, STATUS_NO_PASSIVE, STATUS_RESPONDER,
    };
    use roxmltree::{Document, Node};

    const ASSERTION_ID_ATTR: &str = "urn:oasis:names:tc:SAML:2.0:assertion:Assertion";
    const ACS: &str = "https://login.microsoftonline.com/login.srf";

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn params<'a>(attributes: &'a [(String, Vec<String>)]) -> AssertionParams<'a> {
        AssertionParams {
            issuer: "https://idp.example.com/saml/contoso.com/",
            destination: ACS,
            audience: "urn:federation:MicrosoftOnline",
            in_response_to: Some("_1e089e5c-a976-4881-af74-3b92c89e7e2c"),
            name_id: "ABCDEFG1234567890",
            name_id_format: NAMEID_PERSISTENT,
            attributes,
            authn_instant: t("2024-03-12T13:59:00.5Z"),
            session_index: "_session1",
            authn_context_class_ref: AC_MS_MULTIPLE_AUTHN,
            now: t("2024-03-12T14:00:20.123Z"),
            not_before_skew: Duration::minutes(2),
            subject_lifetime: Duration::minutes(5),
            conditions_lifetime: Duration::hours(1),
        }
    }

    fn idp_email() -> Vec<(String, Vec<String>)> {
        vec![(
            "IDPEmail".to_string(),
            vec!["alice@contoso.com".to_string()],
        )]
    }

    fn child<'a, 'i>(node: Node<'a, 'i>, ns: &str, name: &str) -> Node<'a, 'i> {
        node.children()
            .find(|c| c.has_tag_name((ns, name)))
            .unwrap_or_else(|| panic!("no {name}"))
    }

    fn assertion<'a, 'i>(doc: &'a Document<'i>) -> Node<'a, 'i> {
        child(doc.root_element(), NS_ASSERTION, "Assertion")
    }

    #[test]
    fn response_has_every_field_entra_checks() {
        let attrs = idp_email();
        let p = params(&attrs);
        let (cred, _, _) = credential();
        let xml = build_signed_response(&p, cred, SignatureAlgorithm::RsaSha256).unwrap();
        assert!(!xml.contains("<?xml") && !xml.contains("/>") && !xml.contains(">\n"));
        let doc = Document::parse(&xml).unwrap();
        let resp = doc.root_element();
        assert!(resp.has_tag_name((NS_PROTOCOL, "Response")));
        assert_eq!(resp.attribute("Destination"), Some(ACS));
        assert_eq!(resp.attribute("InResponseTo"), p.in_response_to);
        assert_eq!(
            resp.attribute("IssueInstant"),
            Some("2024-03-12T14:00:20.123Z")
        );
        assert_eq!(resp.attribute("Version"), Some("2.0"));
        assert_eq!(child(resp, NS_ASSERTION, "Issuer").text(), Some(p.issuer));
        let code = child(
            child(resp, NS_PROTOCOL, "Status"),
            NS_PROTOCOL,
            "StatusCode",
        );
        assert_eq!(code.attribute("Value"), Some(STATUS_SUCCESS));

        let a = assertion(&doc);
        let kids: Vec<_> = a.children().map(|c| c.tag_name().name()).collect();
        assert_eq!(
            kids,
            [
                "Issuer",
                "Signature",
                "Subject",
                "Conditions",
                "AuthnStatement",
                "AttributeStatement"
            ]
        );
        assert_eq!(
            a.children().nth(1).unwrap().tag_name().namespace(),
            Some(NS_DSIG)
        );
        assert_eq!(
            child(a, NS_ASSERTION, "Issuer").text(),
            Some("https://idp.example.com/saml/contoso.com/")
        );

        let subject = child(a, NS_ASSERTION, "Subject");
        let name_id = child(subject, NS_ASSERTION, "NameID");
        assert_eq!(name_id.attribute("Format"), Some(NAMEID_PERSISTENT));
        assert_eq!(name_id.text(), Some("ABCDEFG1234567890"));
        let sc = child(subject, NS_ASSERTION, "SubjectConfirmation");
        assert_eq!(sc.attribute("Method"), Some(CM_BEARER));
        let scd = child(sc, NS_ASSERTION, "SubjectConfirmationData");
        assert_eq!(scd.attribute("Recipient"), Some(ACS));
        assert_eq!(scd.attribute("InResponseTo"), p.in_response_to);
        assert_eq!(
            scd.attribute("NotOnOrAfter"),
            Some("2024-03-12T14:05:20.123Z")
        );
        assert_eq!(scd.attribute("NotBefore"), None);

        let cond = child(a, NS_ASSERTION, "Conditions");
        assert_eq!(
            cond.attribute("NotBefore"),
            Some("2024-03-12T13:58:20.123Z")
        );
        assert_eq!(
            cond.attribute("NotOnOrAfter"),
            Some("2024-03-12T15:00:20.123Z")
        );
        let audience = child(
            child(cond, NS_ASSERTION, "AudienceRestriction"),
            NS_ASSERTION,
            "Audience",
        );
        assert_eq!(audience.text(), Some("urn:federation:MicrosoftOnline"));

        let authn = child(a, NS_ASSERTION, "AuthnStatement");
        assert_eq!(
            authn.attribute("AuthnInstant"),
            Some("2024-03-12T13:59:00.500Z")
        );
        assert_eq!(authn.attribute("SessionIndex"), Some("_session1"));
        let class_ref = child(
            child(authn, NS_ASSERTION, "AuthnContext"),
            NS_ASSERTION,
            "AuthnContextClassRef",
        );
        assert_eq!(class_ref.text(), Some(AC_MS_MULTIPLE_AUTHN));

        let attr = child(
            child(a, NS_ASSERTION, "AttributeStatement"),
            NS_ASSERTION,
            "Attribute",
        );
        assert_eq!(attr.attribute("Name"), Some("IDPEmail"));
        assert_eq!(attr.attribute("NameFormat"), None);
        assert_eq!(
            child(attr, NS_ASSERTION, "AttributeValue").text(),
            Some("alice@contoso.com")
        );

        let sig = child(a, NS_DSIG, "Signature");
        let signed_info = child(sig, NS_DSIG, "SignedInfo");
        let method = child(signed_info, NS_DSIG, "SignatureMethod").attribute("Algorithm");
        assert_eq!(
            method,
            Some("http://www.w3.org/2001/04/xmldsig-more#rsa-sha256")
        );
        let reference = child(signed_info, NS_DSIG, "Reference");
        assert_eq!(
            reference.attribute("URI").unwrap(),
            format!("#{}", a.attribute("ID").unwrap())
        );
        let digest = child(reference, NS_DSIG, "DigestMethod").attribute("Algorithm");
        assert_eq!(digest, Some("http://www.w3.org/2001/04/xmlenc#sha256"));
        let cert = sig
            .descendants()
            .find(|n| n.has_tag_name((NS_DSIG, "X509Certificate")))
            .unwrap();
        assert_eq!(cert.text(), Some(cred.certificate_der_base64()));

        let ids = [resp.attribute("ID").unwrap(), a.attribute("ID").unwrap()];
        assert_ne!(ids[0], ids[1]);
        assert!(ids.iter().all(|id| id.len() == 33 && id.starts_with('_')));
    }

    #[test]
    fn xmlsec1_verifies_both_algorithms_and_rejects_tampering() {
        let attrs = idp_email();
        let (cred, _, cert_pem) = credential();
        for alg in [SignatureAlgorithm::RsaSha256, SignatureAlgorithm::RsaSha1] {
            let xml = build_signed_response(&params(&attrs), cred, alg).unwrap();
            assert!(xml.contains(alg.signature_uri()) && xml.contains(alg.digest_uri()));
            assert!(
                xmlsec_verify(&xml, cert_pem, ASSERTION_ID_ATTR),
                "{alg}: xmlsec1 rejected {xml}"
            );
            let tampered = xml.replace(">ABCDEFG1234567890<", ">ABCDEFG1234567891<");
            assert_ne!(tampered, xml);
            assert!(
                !xmlsec_verify(&tampered, cert_pem, ASSERTION_ID_ATTR),
                "{alg}: tampered NameID accepted"
            );
        }
        // A different key must not verify either.
        let (_, _, other_cert) = SigningCredential::generate(2048, "other", 1).unwrap();
        let xml =
            build_signed_response(&params(&attrs), cred, SignatureAlgorithm::RsaSha256).unwrap();
        assert!(!xmlsec_verify(&xml, &other_cert, ASSERTION_ID_ATTR));
    }

    /// Values full of characters that need escaping, including c14n's whitespace rules.
    const NASTY: &str = "a&b<c>d\"e'f]]>g\th\ni\rj é";

    #[test]
    fn assertion_and_signed_info_bytes_equal_libxml2_exc_c14n() {
        let attrs = vec![
            (
                "IDPEmail".to_string(),
                vec!["alice@contoso.com".to_string()],
            ),
            (
                format!("x{NASTY}"),
                vec![NASTY.to_string(), String::new(), "2".to_string()],
            ),
        ];
        let mut p = params(&attrs);
        p.issuer = NASTY;
        p.name_id = NASTY;
        p.audience = NASTY;
        p.destination = NASTY;
        p.in_response_to = Some(NASTY);
        p.session_index = NASTY;
        let (cred, _, cert_pem) = credential();
        let xml = build_signed_response(&p, cred, SignatureAlgorithm::RsaSha256).unwrap();
        assert!(
            xmlsec_verify(&xml, cert_pem, ASSERTION_ID_ATTR),
            "xmlsec1 rejected {xml}"
        );

        let doc = Document::parse(&xml).unwrap();
        let id = assertion(&doc).attribute("ID").unwrap();
        let (assertion_c14n, signed_info_c14n) = lxml_c14n(&xml, id);

        // The bytes we digested: the same Assertion rebuilt without signature.
        let (unsigned, _) = assertion_xml(&p, id).unwrap();
        assert_eq!(assertion_c14n, unsigned);

        // The bytes we signed: SignedInfo as apex, i.e. with the ds declaration added.
        let start = xml.find("<ds:SignedInfo>").unwrap();
        let end = xml.find("</ds:SignedInfo>").unwrap() + "</ds:SignedInfo>".len();
        let signed = xml[start..end].replacen(
            "<ds:SignedInfo>",
            &format!("<ds:SignedInfo xmlns:ds=\"{NS_DSIG}\">"),
            1,
        );
        assert_eq!(signed_info_c14n, signed);
        let sig_value = child(
            child(assertion(&doc), NS_DSIG, "Signature"),
            NS_DSIG,
            "SignatureValue",
        )
        .text()
        .unwrap();
        use base64::Engine as _;
        let sig_bytes = base64::engine::general_purpose::STANDARD
            .decode(sig_value)
            .unwrap();
        let public = openssl::x509::X509::from_pem(cert_pem)
            .unwrap()
            .public_key()
            .unwrap();
        let mut verifier =
            openssl::sign::Verifier::new(openssl::hash::MessageDigest::sha256(), &public).unwrap();
        verifier.update(signed.as_bytes()).unwrap();
        assert!(verifier.verify(&sig_bytes).unwrap());
    }

    /// What an attacker might put in RelayState or a request ID to break out of the markup.
    const RELAY_STATE_LIKE: &str = "https://x/?a=1&b=\"><script>alert('x')</script><!--";

    #[test]
    fn escaped_values_round_trip_through_a_parser() {
        let attrs = vec![(
            "IDPEmail".to_string(),
            vec![NASTY.to_string(), RELAY_STATE_LIKE.to_string()],
        )];
        let mut p = params(&attrs);
        p.issuer = NASTY;
        p.name_id = NASTY;
        p.audience = NASTY;
        p.destination = NASTY;
        p.in_response_to = Some(RELAY_STATE_LIKE);
        let (cred, _, _) = credential();
        let xml = build_signed_response(&p, cred, SignatureAlgorithm::RsaSha256).unwrap();
        // `]]>` may stay literal in attribute values (c14n leaves `>` there), never in text.
        assert!(xml.contains(">a&amp;b&lt;c&gt;d\"e'f]]&gt;g") && !xml.contains("a&b"));
        let doc = Document::parse(&xml).unwrap();
        let resp = doc.root_element();
        assert_eq!(resp.attribute("Destination"), Some(NASTY));
        assert_eq!(resp.attribute("InResponseTo"), Some(RELAY_STATE_LIKE));
        assert_eq!(child(resp, NS_ASSERTION, "Issuer").text(), Some(NASTY));
        let a = assertion(&doc);
        let texts = |name: &str| -> Vec<&str> {
            a.descendants()
                .filter(|n| n.has_tag_name((NS_ASSERTION, name)))
                .filter_map(|n| n.text())
                .collect()
        };
        assert_eq!(texts("Issuer"), [NASTY]);
        assert_eq!(texts("NameID"), [NASTY]);
        assert_eq!(texts("Audience"), [NASTY]);
        assert_eq!(texts("AttributeValue"), [NASTY, RELAY_STATE_LIKE]);
        let scd = a
            .descendants()
            .find(|n| n.has_tag_name((NS_ASSERTION, "SubjectConfirmationData")))
            .unwrap();
        assert_eq!(scd.attribute("Recipient"), Some(NASTY));

        // A control character can never reach the signed XML.
        let mut bad = params(&attrs);
        bad.name_id = "ABC\u{1}";
        let err = build_signed_response(&bad, cred, SignatureAlgorithm::RsaSha256).unwrap_err();
        assert!(err.to_string().contains("U+0001"), "{err}");
        bad.name_id = " ";
        assert!(build_signed_response(&bad, cred, SignatureAlgorithm::RsaSha256).is_err());
        let mut absurd = params(&attrs);
        absurd.conditions_lifetime = Duration::MAX;
        assert!(build_signed_response(&absurd, cred, SignatureAlgorithm::RsaSha256).is_err());
    }

    #[test]
    fn no_attribute_statement_without_attributes_and_optional_in_response_to() {
        let mut p = params(&[]);
        p.in_response_to = None;
        let (cred, _, cert_pem) = credential();
        let xml = build_signed_response(&p, cred, SignatureAlgorithm::RsaSha256).unwrap();
        assert!(!xml.contains("AttributeStatement") && !xml.contains("InResponseTo"));
        assert!(xmlsec_verify(&xml, cert_pem, ASSERTION_ID_ATTR));
    }

    #[test]
    fn status_response_carries_nested_codes_and_message() {
        let now = t("2024-03-12T14:00:20Z");
        let xml = build_status_response(
            "https://idp/x",
            ACS,
            Some("_r1"),
            STATUS_RESPONDER,
            Some(STATUS_NO_PASSIVE),
            Some("sign-in required <now>"),
            now,
        )
        .unwrap();
        let doc = Document::parse(&xml).unwrap();
        let resp = doc.root_element();
        assert_eq!(resp.attribute("InResponseTo"), Some("_r1"));
        assert!(!xml.contains("Assertion") && !xml.contains("Signature"));
        let status = child(resp, NS_PROTOCOL, "Status");
        let top = child(status, NS_PROTOCOL, "StatusCode");
        assert_eq!(top.attribute("Value"), Some(STATUS_RESPONDER));
        assert_eq!(
            child(top, NS_PROTOCOL, "StatusCode").attribute("Value"),
            Some(STATUS_NO_PASSIVE)
        );
        assert_eq!(
            child(status, NS_PROTOCOL, "StatusMessage").text(),
            Some("sign-in required <now>")
        );

        let plain =
            build_status_response("i", ACS, None, STATUS_RESPONDER, None, None, now).unwrap();
        let doc = Document::parse(&plain).unwrap();
        let top = child(
            child(doc.root_element(), NS_PROTOCOL, "Status"),
            NS_PROTOCOL,
            "StatusCode",
        );
        assert_eq!(top.children().count(), 0);
        assert!(!plain.contains("InResponseTo") && !plain.contains("StatusMessage"));
    }
}
