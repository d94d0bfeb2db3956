//! IdP metadata. Entra ID does not read it, but admins and other SPs find it handy.

use super::xml::XmlWriter;
use super::{
    SamlError, BINDING_HTTP_POST, BINDING_HTTP_REDIRECT, NAMEID_PERSISTENT, NS_DSIG, NS_METADATA,
    NS_PROTOCOL,
};

/// Builds unsigned IdP metadata listing every signing certificate (base64 DER) a service
/// provider should trust: the current one first, then those of a rollover (next, previous).
pub fn idp_metadata(
    entity_id: &str,
    sso_url: &str,
    slo_url: &str,
    signing_certs: &[&str],
) -> Result<String, SamlError> {
    if signing_certs.is_empty() {
        return Err(SamlError::Missing("signing certificate for the metadata"));
    }
    let mut w = XmlWriter::new();
    w.raw(r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    w.element(
        "md:EntityDescriptor",
        &[("xmlns:md", NS_METADATA), ("entityID", entity_id)],
        |w| {
            let descriptor = [
                ("WantAuthnRequestsSigned", "false"),
                ("protocolSupportEnumeration", NS_PROTOCOL),
            ];
            // Children in schema order: KeyDescriptor, SingleLogoutService, NameIDFormat, SingleSignOnService.
            w.element("md:IDPSSODescriptor", &descriptor, |w| {
                for cred in signing_certs {
                    w.element("md:KeyDescriptor", &[("use", "signing")], |w| {
                        w.element("ds:KeyInfo", &[("xmlns:ds", NS_DSIG)], |w| {
                            w.element("ds:X509Data", &[], |w| {
                                w.leaf("ds:X509Certificate", &[], cred)
                            })
                        })
                    })?;
                }
                for binding in [BINDING_HTTP_REDIRECT, BINDING_HTTP_POST] {
                    w.leaf(
                        "md:SingleLogoutService",
                        &[("Binding", binding), ("Location", slo_url)],
                        "",
                    )?;
                }
                w.leaf("md:NameIDFormat", &[], NAMEID_PERSISTENT)?;
                for binding in [BINDING_HTTP_REDIRECT, BINDING_HTTP_POST] {
                    w.leaf(
                        "md:SingleSignOnService",
                        &[("Binding", binding), ("Location", sso_url)],
                        "",
                    )?;
                }
                Ok(())
            })
        },
    )?;
    Ok(w.into_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::saml::test_support::credential;
    use crate::saml::SigningCredential;

    #[test]
    fn metadata_lists_certs_and_endpoints_in_schema_order() {
        let (cred, _, _) = credential();
        let (next, _, _) = SigningCredential::generate(2048, "next", 30).unwrap();
        let xml = idp_metadata(
            "https://idp/e?a=1&b=2",
            "https://idp/sso",
            "https://idp/slo",
            &[cred.certificate_der_base64(), next.certificate_der_base64()],
        )
        .unwrap();
        assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?><md:EntityDescriptor"));
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let root = doc.root_element();
        assert!(root.has_tag_name((NS_METADATA, "EntityDescriptor")));
        assert_eq!(root.attribute("entityID"), Some("https://idp/e?a=1&b=2"));
        let idp = root.first_element_child().unwrap();
        assert_eq!(idp.attribute("WantAuthnRequestsSigned"), Some("false"));
        assert_eq!(
            idp.attribute("protocolSupportEnumeration"),
            Some(NS_PROTOCOL)
        );
        let kids: Vec<_> = idp.children().map(|c| c.tag_name().name()).collect();
        let expected = [
            "KeyDescriptor",
            "KeyDescriptor",
            "SingleLogoutService",
            "SingleLogoutService",
            "NameIDFormat",
            "SingleSignOnService",
            "SingleSignOnService",
        ];
        assert_eq!(kids, expected);
        let certs: Vec<_> = idp
            .descendants()
            .filter(|n| n.has_tag_name((NS_DSIG, "X509Certificate")))
            .filter_map(|n| n.text())
            .collect();
        assert_eq!(
            certs,
            [cred.certificate_der_base64(), next.certificate_der_base64()]
        );
        let sso: Vec<_> = idp
            .children()
            .filter(|n| n.has_tag_name((NS_METADATA, "SingleSignOnService")))
            .map(|n| {
                (
                    n.attribute("Binding").unwrap(),
                    n.attribute("Location").unwrap(),
                )
            })
            .collect();
        assert_eq!(
            sso,
            [
                (BINDING_HTTP_REDIRECT, "https://idp/sso"),
                (BINDING_HTTP_POST, "https://idp/sso")
            ]
        );
        assert!(idp_metadata("e", "s", "l", &[]).is_err());
    }
}
