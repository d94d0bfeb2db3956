//! HTTP-POST / HTTP-Redirect payload encoding, and hardened XML parsing of received messages.
//!
//! Everything that arrives from a browser is bounded before work is spent on it: the
//! base64 text by length, the inflated Redirect payload by reading at most
//! [`MAX_MESSAGE_BYTES`] + 1 bytes, and DTDs (XXE, entity expansion) are refused outright.

use std::io::{Read as _, Write as _};

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use flate2::read::DeflateDecoder;
use flate2::write::DeflateEncoder;
use flate2::Compression;
use roxmltree::{Document, Node, ParsingOptions};

use super::{SamlError, MAX_MESSAGE_BYTES, NS_ASSERTION, NS_PROTOCOL};

/// Standard alphabet; padding optional because some SAML stacks strip it.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);
/// Longest base64 text (without whitespace) that can decode to at most the size limit.
const MAX_ENCODED: usize = MAX_MESSAGE_BYTES.div_ceil(3) * 4;
const TOO_LARGE: SamlError = SamlError::TooLarge {
    limit: MAX_MESSAGE_BYTES,
};

/// Decodes an HTTP-POST `SAMLRequest`/`SAMLResponse` value (base64, line breaks tolerated).
pub fn decode_post(encoded: &str) -> Result<String, SamlError> {
    utf8(decode_base64(encoded)?)
}

/// Decodes an HTTP-Redirect value: base64, then raw DEFLATE, refusing bombs early.
pub fn decode_redirect(encoded: &str) -> Result<String, SamlError> {
    let compressed = decode_base64(encoded)?;
    let mut xml = Vec::new();
    // Reading one byte past the limit is enough to know it is too large, so a bomb
    // costs us at most MAX_MESSAGE_BYTES of inflation.
    DeflateDecoder::new(compressed.as_slice())
        .take(MAX_MESSAGE_BYTES as u64 + 1)
        .read_to_end(&mut xml)
        .map_err(|_| SamlError::Inflate)?;
    if xml.len() > MAX_MESSAGE_BYTES {
        return Err(TOO_LARGE);
    }
    utf8(xml)
}

/// Encodes a message for the HTTP-POST binding (base64, not deflated).
pub fn encode_post(xml: &str) -> String {
    BASE64.encode(xml)
}

/// Encodes a message for the HTTP-Redirect binding (raw DEFLATE, then base64).
#[allow(clippy::expect_used)] // reason: writing into a Vec cannot fail
pub fn encode_redirect(xml: &str) -> String {
    let mut encoder = DeflateEncoder::new(Vec::new(), Compression::default());
    // Writing into a Vec cannot fail, so these io::Results are always Ok.
    encoder
        .write_all(xml.as_bytes())
        .expect("writing to a Vec cannot fail");
    BASE64.encode(encoder.finish().expect("writing to a Vec cannot fail"))
}

fn decode_base64(encoded: &str) -> Result<Vec<u8>, SamlError> {
    // Check the length before allocating or decoding anything; allow generous room
    // for the line breaks some encoders insert every 64 or 76 characters.
    if encoded.len() > MAX_ENCODED * 2 {
        return Err(TOO_LARGE);
    }
    let compact: Vec<u8> = encoded
        .bytes()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if compact.len() > MAX_ENCODED {
        return Err(TOO_LARGE);
    }
    let bytes = BASE64.decode(compact).map_err(|_| SamlError::Base64)?;
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(TOO_LARGE);
    }
    Ok(bytes)
}

fn utf8(bytes: Vec<u8>) -> Result<String, SamlError> {
    String::from_utf8(bytes).map_err(|_| SamlError::NotUtf8)
}

/// Parses a received SAML message, refusing any DTD or entity declaration.
pub fn parse_document(xml: &str) -> Result<Document<'_>, SamlError> {
    if xml.len() > MAX_MESSAGE_BYTES {
        return Err(TOO_LARGE);
    }
    let has = |needle: &[u8]| {
        xml.as_bytes()
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
    };
    if has(b"<!DOCTYPE") || has(b"<!ENTITY") {
        return Err(SamlError::DtdRefused);
    }
    // roxmltree refuses DTDs by default too: a second guard should the scan above miss one.
    let options = ParsingOptions {
        allow_dtd: false,
        ..ParsingOptions::default()
    };
    Document::parse_with_options(xml, options).map_err(|e| match e {
        roxmltree::Error::DtdDetected => SamlError::DtdRefused,
        e => SamlError::Xml(e.to_string()),
    })
}

// ---- helpers shared by the request parsers ----

/// Fields every SAML request carries (RequestAbstractType).
pub(crate) struct RequestHeader {
    pub id: String,
    pub version: String,
    pub issue_instant: DateTime<Utc>,
    pub issuer: String,
    pub destination: Option<String>,
}

const MAX_ID_CHARS: usize = 256;
const MAX_ISSUER_CHARS: usize = 1024;

/// Returns the root element if it is `samlp:<local>` (any prefix).
pub(crate) fn protocol_root<'a, 'i>(
    doc: &'a Document<'i>,
    local: &'static str,
) -> Result<Node<'a, 'i>, SamlError> {
    let root = doc.root_element();
    let tag = root.tag_name();
    if tag.name() == local && tag.namespace() == Some(NS_PROTOCOL) {
        return Ok(root);
    }
    let found = match tag.namespace() {
        Some(ns) => format!("{} in namespace {ns}", tag.name()),
        None => format!("{} without namespace", tag.name()),
    };
    Err(SamlError::UnexpectedRoot {
        expected: local,
        found,
    })
}

impl RequestHeader {
    /// Reads ID, Version, IssueInstant, Destination and the Issuer child of a request root.
    pub(crate) fn parse(root: Node<'_, '_>) -> Result<Self, SamlError> {
        let version = root
            .attribute("Version")
            .ok_or(SamlError::Missing("Version attribute"))?;
        if version != "2.0" {
            return Err(SamlError::UnsupportedVersion(version.into()));
        }
        let id = root
            .attribute("ID")
            .ok_or(SamlError::Missing("ID attribute"))?;
        check_len("ID", id, MAX_ID_CHARS)?;
        let instant = root
            .attribute("IssueInstant")
            .ok_or(SamlError::Missing("IssueInstant attribute"))?;
        let issuer = single_child(root, NS_ASSERTION, "Issuer")?
            .ok_or(SamlError::Missing("Issuer element"))?;
        let issuer = text_content(issuer)?.trim().to_string();
        check_len("Issuer", &issuer, MAX_ISSUER_CHARS)?;
        Ok(Self {
            id: id.into(),
            version: version.into(),
            issue_instant: parse_instant("IssueInstant", instant)?,
            issuer,
            destination: root.attribute("Destination").map(str::to_string),
        })
    }
}

fn check_len(field: &'static str, value: &str, max: usize) -> Result<(), SamlError> {
    let len = value.chars().count();
    if len == 0 || len > max {
        return Err(SamlError::Invalid {
            field,
            reason: format!("must be 1 to {max} characters, got {len}"),
        });
    }
    Ok(())
}

/// Parses xs:dateTime with 'Z' or an offset, with or without fractional seconds.
pub(crate) fn parse_instant(field: &'static str, value: &str) -> Result<DateTime<Utc>, SamlError> {
    DateTime::parse_from_rfc3339(value.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| SamlError::Invalid {
            field,
            reason: format!("{value:?} is not an xs:dateTime with time zone ({e})"),
        })
}

/// Parses an optional xs:boolean attribute (absent means false).
pub(crate) fn bool_attr(node: Node<'_, '_>, name: &'static str) -> Result<bool, SamlError> {
    match node.attribute(name) {
        None | Some("false" | "0") => Ok(false),
        Some("true" | "1") => Ok(true),
        Some(other) => Err(SamlError::Invalid {
            field: name,
            reason: format!("{other:?} is not a boolean"),
        }),
    }
}

/// Direct element children with the given namespace and local name.
pub(crate) fn children<'a, 'i: 'a>(
    node: Node<'a, 'i>,
    ns: &'static str,
    local: &'static str,
) -> impl Iterator<Item = Node<'a, 'i>> {
    node.children().filter(move |c| {
        c.is_element() && c.tag_name().namespace() == Some(ns) && c.tag_name().name() == local
    })
}

/// The direct child with that name, if any; two of them make the message ambiguous.
pub(crate) fn single_child<'a, 'i: 'a>(
    node: Node<'a, 'i>,
    ns: &'static str,
    local: &'static str,
) -> Result<Option<Node<'a, 'i>>, SamlError> {
    let mut found = children(node, ns, local);
    let first = found.next();
    if found.next().is_some() {
        return Err(SamlError::Invalid {
            field: local,
            reason: "element appears more than once".into(),
        });
    }
    Ok(first)
}

/// All text of a simple-content element, joined across comments; child elements are refused.
pub(crate) fn text_content(node: Node<'_, '_>) -> Result<String, SamlError> {
    if node.children().any(|c| c.is_element()) {
        return Err(SamlError::Invalid {
            field: "element content",
            reason: format!("<{}> must contain only text", node.tag_name().name()),
        });
    }
    Ok(node
        .children()
        .filter(|c| c.is_text())
        .filter_map(|c| c.text())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn post_round_trip_tolerates_line_breaks() {
        let xml = "<a>é &amp; more</a>".repeat(20);
        let wrapped: String = encode_post(&xml)
            .as_bytes()
            .chunks(76)
            .map(|c| String::from_utf8_lossy(c).into_owned() + "\r\n")
            .collect();
        assert_eq!(decode_post(&wrapped).unwrap(), xml);
        // Unpadded input (padding stripped by some stacks) still decodes.
        assert_eq!(
            decode_post(BASE64.encode("<a/>").trim_end_matches('=')).unwrap(),
            "<a/>"
        );
    }

    #[test]
    fn redirect_round_trip() {
        let xml = r#"<samlp:LogoutRequest xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol"/>"#;
        assert_eq!(decode_redirect(&encode_redirect(xml)).unwrap(), xml);
    }

    #[test]
    fn malformed_input_is_rejected_with_specific_errors() {
        assert!(matches!(decode_post("not*base64!"), Err(SamlError::Base64)));
        assert!(matches!(
            decode_redirect("not*base64!"),
            Err(SamlError::Base64)
        ));
        assert!(matches!(
            decode_redirect(&encode_post("<not deflated>")),
            Err(SamlError::Inflate)
        ));
        assert!(matches!(
            decode_post(&BASE64.encode([0xff, 0xfe, 0x00])),
            Err(SamlError::NotUtf8)
        ));
    }

    #[test]
    fn oversized_post_is_refused_before_decoding() {
        let big = "A".repeat(MAX_ENCODED + 4);
        assert!(matches!(decode_post(&big), Err(SamlError::TooLarge { .. })));
        let huge = " ".repeat(10 * MAX_ENCODED);
        assert!(matches!(
            decode_post(&huge),
            Err(SamlError::TooLarge { .. })
        ));
        let just_over = encode_post(&"x".repeat(MAX_MESSAGE_BYTES + 1));
        assert!(matches!(
            decode_post(&just_over),
            Err(SamlError::TooLarge { .. })
        ));
        let at_limit = "x".repeat(MAX_MESSAGE_BYTES);
        assert_eq!(decode_post(&encode_post(&at_limit)).unwrap(), at_limit);
    }

    #[test]
    fn deflate_bomb_is_refused_quickly() {
        let mut encoder = DeflateEncoder::new(Vec::new(), Compression::best());
        let zeros = vec![0u8; 1024 * 1024];
        for _ in 0..10 {
            encoder.write_all(&zeros).unwrap();
        }
        let bomb = BASE64.encode(encoder.finish().unwrap());
        assert!(
            bomb.len() < MAX_ENCODED,
            "bomb should be small: {}",
            bomb.len()
        );
        let started = Instant::now();
        assert!(matches!(
            decode_redirect(&bomb),
            Err(SamlError::TooLarge {
                limit: MAX_MESSAGE_BYTES
            })
        ));
        assert!(
            started.elapsed().as_millis() < 500,
            "took {:?}",
            started.elapsed()
        );
        // Exactly at the limit is still fine.
        let ok = "y".repeat(MAX_MESSAGE_BYTES);
        assert_eq!(
            decode_redirect(&encode_redirect(&ok)).unwrap().len(),
            MAX_MESSAGE_BYTES
        );
    }

    #[test]
    fn dtds_and_entities_are_refused() {
        let laughs = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]><lolz>&lol2;</lolz>"#;
        let xxe = r#"<!doctype r [<!entity xxe SYSTEM "file:///etc/passwd">]><r>&xxe;</r>"#;
        let bare_entity = "<r><!ENTITY x 'y'></r>";
        for xml in [laughs, xxe, bare_entity] {
            assert!(
                matches!(parse_document(xml), Err(SamlError::DtdRefused)),
                "{xml}"
            );
        }
        assert!(matches!(
            parse_document("<a><b></a>"),
            Err(SamlError::Xml(_))
        ));
        assert!(parse_document("<a>ok</a>").is_ok());
    }

    #[test]
    fn roxmltree_refuses_dtds_by_itself() {
        // The second guard: even without our scan, the parser options refuse DTDs.
        let options = ParsingOptions {
            allow_dtd: false,
            ..ParsingOptions::default()
        };
        let err = Document::parse_with_options("<!DOCTYPE a><a/>", options).unwrap_err();
        assert!(matches!(err, roxmltree::Error::DtdDetected));
    }

    #[test]
    fn instants_accept_offsets_and_fractions() {
        let z = parse_instant("t", "2024-03-12T14:00:18Z").unwrap();
        assert_eq!(
            parse_instant("t", "2024-03-12T15:00:18.000+01:00").unwrap(),
            z
        );
        assert!(parse_instant("t", "2024-03-12T14:00:18").is_err());
        assert!(parse_instant("t", "yesterday").is_err());
    }
}
