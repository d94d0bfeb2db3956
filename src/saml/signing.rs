//! Enveloped XML signatures over XML this IdP generated itself, plus the signing key.
//!
//! # Why our own signer
//!
//! samael's response builder signs the Response rather than the Assertion Entra ID
//! checks, hard-codes an unspecified NameID, uses a SHA-1 digest, writes text values
//! unescaped, its IdP-side signed-request verification is open to signature wrapping,
//! and it needs libclang to build. An IdP only signs XML it generated itself from a
//! fixed template, so we emit the Assertion and SignedInfo already in exclusive XML
//! canonical form (exc-c14n, without comments) by construction with the small escaping
//! writer in [`super::xml`], digest with SHA-256 and sign with OpenSSL RSA. No general
//! canonicaliser is needed: the digest of "the element minus its Signature" is simply
//! the digest of the bytes we wrote before inserting the Signature. The tests prove the
//! bytes are canonical with independent implementations (xmlsec1, and libxml2 via lxml).
//! Verifying what service providers sign does need one: [`super::xml::exc_c14n`], built on the
//! same escaping, used by [`super::verify`].

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use openssl::asn1::{Asn1Time, Asn1TimeRef};
use openssl::bn::{BigNum, MsbOption};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::sign::Signer;
use openssl::x509::extension::{BasicConstraints, KeyUsage, SubjectKeyIdentifier};
use openssl::x509::{X509NameBuilder, X509};

use super::xml::XmlWriter;
use super::{SamlError, NS_DSIG};

const EXC_C14N: &str = "http://www.w3.org/2001/10/xml-exc-c14n#";
const ENVELOPED_SIGNATURE: &str = "http://www.w3.org/2000/09/xmldsig#enveloped-signature";

/// RSA signature algorithm (and matching digest) used for XML signatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SignatureAlgorithm {
    /// RSA PKCS#1 v1.5 with SHA-256; the default.
    #[default]
    RsaSha256,
    /// RSA with SHA-1; only a fallback because Microsoft's doc text still mentions it.
    RsaSha1,
}

impl SignatureAlgorithm {
    /// The `SignatureMethod` algorithm URI.
    pub fn signature_uri(self) -> &'static str {
        match self {
            Self::RsaSha256 => "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
            Self::RsaSha1 => "http://www.w3.org/2000/09/xmldsig#rsa-sha1",
        }
    }

    /// The `DigestMethod` algorithm URI.
    pub fn digest_uri(self) -> &'static str {
        match self {
            Self::RsaSha256 => "http://www.w3.org/2001/04/xmlenc#sha256",
            Self::RsaSha1 => "http://www.w3.org/2000/09/xmldsig#sha1",
        }
    }

    /// The configuration name ("rsa-sha256" / "rsa-sha1").
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RsaSha256 => "rsa-sha256",
            Self::RsaSha1 => "rsa-sha1",
        }
    }

    fn message_digest(self) -> MessageDigest {
        match self {
            Self::RsaSha256 => MessageDigest::sha256(),
            Self::RsaSha1 => MessageDigest::sha1(),
        }
    }
}

impl fmt::Display for SignatureAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SignatureAlgorithm {
    type Err = SamlError;

    fn from_str(s: &str) -> Result<Self, SamlError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "rsa-sha256" => Ok(Self::RsaSha256),
            "rsa-sha1" => Ok(Self::RsaSha1),
            _ => Err(SamlError::Invalid {
                field: "signature algorithm",
                reason: format!("{s:?} is not supported; allowed values: rsa-sha256, rsa-sha1"),
            }),
        }
    }
}

/// An RSA private key with its X.509 certificate, used to sign assertions.
pub struct SigningCredential {
    key: PKey<Private>,
    cert: X509,
    cert_der_base64: String,
    not_before: DateTime<Utc>,
    not_after: DateTime<Utc>,
}

// Written by hand so the private key can never end up in a log line.
impl fmt::Debug for SigningCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningCredential")
            .field("subject", &self.subject())
            .field("fingerprint_sha256", &self.fingerprint_sha256())
            .finish_non_exhaustive()
    }
}

impl SigningCredential {
    /// Loads a PEM private key (PKCS#1 or PKCS#8) and its PEM certificate, checking they match.
    pub fn from_pem(key_pem: &[u8], cert_pem: &[u8]) -> Result<Self, SamlError> {
        let key = PKey::private_key_from_pem(key_pem).map_err(|e| SamlError::Invalid {
            field: "signing key",
            reason: format!("not a readable PEM private key ({e})"),
        })?;
        if key.rsa().is_err() {
            return Err(SamlError::Invalid {
                field: "signing key",
                reason: "only RSA keys are supported".into(),
            });
        }
        let cert = X509::from_pem(cert_pem).map_err(|e| SamlError::Invalid {
            field: "signing certificate",
            reason: format!("not a readable PEM certificate ({e})"),
        })?;
        if !cert.public_key()?.public_eq(&key) {
            return Err(SamlError::Invalid {
                field: "signing certificate",
                reason: "the certificate's public key does not match the private key".into(),
            });
        }
        Ok(Self {
            cert_der_base64: BASE64.encode(cert.to_der()?),
            not_before: asn1_to_utc(cert.not_before())?,
            not_after: asn1_to_utc(cert.not_after())?,
            key,
            cert,
        })
    }

    /// Generates an RSA key and a self-signed certificate; returns them also as PEM for storage.
    pub fn generate(
        key_bits: u32,
        common_name: &str,
        validity_days: u32,
    ) -> Result<(Self, Vec<u8>, Vec<u8>), SamlError> {
        if !(2048..=8192).contains(&key_bits) {
            return Err(SamlError::Invalid {
                field: "key size",
                reason: format!("{key_bits} bits; use 2048 to 8192"),
            });
        }
        if common_name.trim().is_empty() || validity_days == 0 {
            return Err(SamlError::Invalid {
                field: "certificate",
                reason: "common name must not be empty and validity must be at least one day"
                    .into(),
            });
        }
        let key = PKey::from_rsa(Rsa::generate(key_bits)?)?;

        let mut name = X509NameBuilder::new()?;
        name.append_entry_by_nid(Nid::COMMONNAME, common_name)?;
        let name = name.build();
        let mut serial = BigNum::new()?;
        serial.rand(128, MsbOption::MAYBE_ZERO, false)?;

        let mut builder = X509::builder()?;
        builder.set_version(2)?; // 2 means X.509 v3
        builder.set_serial_number(serial.to_asn1_integer()?.as_ref())?;
        builder.set_subject_name(&name)?;
        builder.set_issuer_name(&name)?;
        builder.set_pubkey(&key)?;
        builder.set_not_before(Asn1Time::days_from_now(0)?.as_ref())?;
        builder.set_not_after(Asn1Time::days_from_now(validity_days)?.as_ref())?;
        builder.append_extension(BasicConstraints::new().critical().build()?)?;
        builder.append_extension(KeyUsage::new().critical().digital_signature().build()?)?;
        let ski = SubjectKeyIdentifier::new().build(&builder.x509v3_context(None, None))?;
        builder.append_extension(ski)?;
        builder.sign(&key, MessageDigest::sha256())?;
        let cert = builder.build();

        let key_pem = key.private_key_to_pem_pkcs8()?;
        let cert_pem = cert.to_pem()?;
        Ok((Self::from_pem(&key_pem, &cert_pem)?, key_pem, cert_pem))
    }

    /// Base64 of the certificate's DER, as Graph's `signingCertificate` and `X509Certificate` want it.
    pub fn certificate_der_base64(&self) -> &str {
        &self.cert_der_base64
    }

    /// SHA-256 fingerprint of the certificate, uppercase hex with colons.
    pub fn fingerprint_sha256(&self) -> String {
        fingerprint(&self.cert)
    }

    /// The certificate subject on one line, e.g. `CN=idbridge.example.com`.
    pub fn subject(&self) -> String {
        subject_line(&self.cert)
    }

    /// The certificate as PEM (what is stored beside the sealed key).
    pub fn certificate_pem(&self) -> Result<Vec<u8>, SamlError> {
        Ok(self.cert.to_pem()?)
    }

    /// The private key as PKCS#8 PEM, to be sealed before it is stored.
    pub fn private_key_pem(&self) -> Result<Vec<u8>, SamlError> {
        Ok(self.key.private_key_to_pem_pkcs8()?)
    }

    /// The certificate without the key.
    pub fn info(&self) -> CertificateInfo {
        CertificateInfo {
            subject: self.subject(),
            fingerprint_sha256: self.fingerprint_sha256(),
            not_before: self.not_before,
            not_after: self.not_after,
            der_base64: self.cert_der_base64.clone(),
        }
    }

    /// Start of the certificate's validity.
    pub fn not_before(&self) -> DateTime<Utc> {
        self.not_before
    }

    /// End of the certificate's validity.
    pub fn not_after(&self) -> DateTime<Utc> {
        self.not_after
    }

    /// RSA key size in bits.
    pub fn key_bits(&self) -> u32 {
        self.key.bits()
    }
}

/// What an admin needs to know of a certificate, without its key: for the certificates of a
/// rollover that idbridge publishes but no longer (or not yet) signs with.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateInfo {
    pub subject: String,
    pub fingerprint_sha256: String,
    #[schema(value_type = String, format = DateTime)]
    pub not_before: DateTime<Utc>,
    #[schema(value_type = String, format = DateTime)]
    pub not_after: DateTime<Utc>,
    /// Base64 of the DER (Graph's `signingCertificate` form).
    pub der_base64: String,
}

impl CertificateInfo {
    /// Reads a PEM certificate.
    pub fn from_pem(cert_pem: &[u8]) -> Result<Self, SamlError> {
        let cert = X509::from_pem(cert_pem).map_err(|e| SamlError::Invalid {
            field: "certificate",
            reason: format!("not a readable PEM certificate ({e})"),
        })?;
        Ok(Self {
            subject: subject_line(&cert),
            fingerprint_sha256: fingerprint(&cert),
            not_before: asn1_to_utc(cert.not_before())?,
            not_after: asn1_to_utc(cert.not_after())?,
            der_base64: BASE64.encode(cert.to_der()?),
        })
    }
}

fn fingerprint(cert: &X509) -> String {
    match cert.digest(MessageDigest::sha256()) {
        Ok(d) => d
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":"),
        Err(_) => "(unavailable)".into(),
    }
}

fn subject_line(cert: &X509) -> String {
    let parts: Vec<String> = cert
        .subject_name()
        .entries()
        .map(|e| {
            let key = e.object().nid().short_name().unwrap_or("?");
            let value = e.data().to_string().unwrap_or_default();
            format!("{key}={value}")
        })
        .collect();
    parts.join(", ")
}

fn asn1_to_utc(t: &Asn1TimeRef) -> Result<DateTime<Utc>, SamlError> {
    let diff = Asn1Time::from_unix(0)?.diff(t)?;
    let secs = i64::from(diff.days) * 86_400 + i64::from(diff.secs);
    DateTime::from_timestamp(secs, 0)
        .ok_or_else(|| SamlError::Crypto(format!("certificate time {t} is out of range")))
}

/// Inserts an enveloped `ds:Signature` at byte `insert_at` of `element` (canonical, unsigned).
///
/// `element` must be the exc-c14n bytes of the element identified by `id` exactly as it
/// will appear in the document, declaring its own namespaces; `insert_at` is the offset
/// right after its `<saml:Issuer>` child, where the schema puts the Signature.
pub fn sign_enveloped(
    element: &str,
    id: &str,
    insert_at: usize,
    credential: &SigningCredential,
    alg: SignatureAlgorithm,
) -> Result<String, SamlError> {
    if insert_at > element.len() || !element.is_char_boundary(insert_at) {
        return Err(SamlError::Invalid {
            field: "signature position",
            reason: format!("byte offset {insert_at} is not a position inside the element"),
        });
    }
    // The enveloped-signature transform removes the Signature again and our bytes are
    // already exc-c14n, so this is exactly the digest a verifier computes.
    let digest = BASE64.encode(openssl::hash::hash(
        alg.message_digest(),
        element.as_bytes(),
    )?);
    let reference = format!("#{id}");
    let signed_info = |w: &mut XmlWriter, ns: &[(&str, &str)]| {
        w.element("ds:SignedInfo", ns, |w| {
            w.leaf("ds:CanonicalizationMethod", &[("Algorithm", EXC_C14N)], "")?;
            w.leaf(
                "ds:SignatureMethod",
                &[("Algorithm", alg.signature_uri())],
                "",
            )?;
            w.element("ds:Reference", &[("URI", &reference)], |w| {
                w.element("ds:Transforms", &[], |w| {
                    w.leaf("ds:Transform", &[("Algorithm", ENVELOPED_SIGNATURE)], "")?;
                    w.leaf("ds:Transform", &[("Algorithm", EXC_C14N)], "")
                })?;
                w.leaf("ds:DigestMethod", &[("Algorithm", alg.digest_uri())], "")?;
                w.leaf("ds:DigestValue", &[], &digest)
            })
        })
    };

    // A verifier canonicalises SignedInfo as an apex element, so the signed bytes carry
    // the ds declaration that, inside the document, SignedInfo inherits from Signature.
    let mut apex = XmlWriter::new();
    signed_info(&mut apex, &[("xmlns:ds", NS_DSIG)])?;
    let mut signer = Signer::new(alg.message_digest(), &credential.key)?;
    signer.update(apex.into_string().as_bytes())?;
    let signature_value = BASE64.encode(signer.sign_to_vec()?);

    let mut w = XmlWriter::new();
    w.element("ds:Signature", &[("xmlns:ds", NS_DSIG)], |w| {
        signed_info(w, &[])?;
        w.leaf("ds:SignatureValue", &[], &signature_value)?;
        w.element("ds:KeyInfo", &[], |w| {
            w.element("ds:X509Data", &[], |w| {
                w.leaf(
                    "ds:X509Certificate",
                    &[],
                    credential.certificate_der_base64(),
                )
            })
        })
    })?;
    let signature = w.into_string();

    let (head, tail) = element.split_at(insert_at);
    Ok([head, &signature, tail].concat())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::saml::test_support::credential;

    #[test]
    fn algorithm_names_parse_and_display() {
        assert_eq!(
            "rsa-sha256".parse::<SignatureAlgorithm>().unwrap(),
            SignatureAlgorithm::RsaSha256
        );
        assert_eq!(
            "RSA-SHA1".parse::<SignatureAlgorithm>().unwrap(),
            SignatureAlgorithm::RsaSha1
        );
        let err = "sha512"
            .parse::<SignatureAlgorithm>()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("rsa-sha256") && err.contains("rsa-sha1"),
            "{err}"
        );
        assert_eq!(SignatureAlgorithm::default().to_string(), "rsa-sha256");
    }

    #[test]
    fn generated_credential_round_trips_through_pem() {
        let (cred, key_pem, cert_pem) =
            SigningCredential::generate(2048, "idbridge.example.com", 365).unwrap();
        assert!(String::from_utf8_lossy(&key_pem).contains("BEGIN PRIVATE KEY"));
        let loaded = SigningCredential::from_pem(&key_pem, &cert_pem).unwrap();
        assert_eq!(loaded.fingerprint_sha256(), cred.fingerprint_sha256());
        assert_eq!(
            loaded.certificate_der_base64(),
            cred.certificate_der_base64()
        );
        assert_eq!(loaded.subject(), "CN=idbridge.example.com");
        assert_eq!(loaded.key_bits(), 2048);
        let fp = loaded.fingerprint_sha256();
        assert_eq!(fp.len(), 32 * 3 - 1);
        assert!(fp
            .chars()
            .all(|c| c == ':' || c.is_ascii_digit() || c.is_ascii_uppercase()));

        let now = Utc::now();
        assert!((loaded.not_before() - now).num_seconds().abs() < 300);
        assert!(
            (loaded.not_after() - now - chrono::Duration::days(365))
                .num_seconds()
                .abs()
                < 300
        );

        let x509 = X509::from_pem(&cert_pem).unwrap();
        assert_eq!(x509.version(), 2);
        assert!(x509.serial_number().to_bn().unwrap().num_bits() > 64);
        assert_eq!(
            x509.issuer_name().to_der().unwrap(),
            x509.subject_name().to_der().unwrap()
        );
        assert!(x509.subject_key_id().is_some());
        assert!(x509.verify(&x509.public_key().unwrap()).unwrap());
    }

    #[test]
    fn rejects_weak_keys_and_mismatched_pairs() {
        assert!(SigningCredential::generate(1024, "x", 1).is_err());
        let (_, key_a, _) = credential();
        let (_, _, cert_b) = SigningCredential::generate(2048, "other", 1).unwrap();
        let err = SigningCredential::from_pem(key_a, &cert_b)
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not match"), "{err}");
        assert!(SigningCredential::from_pem(b"garbage", &cert_b).is_err());
    }

    #[test]
    fn debug_output_hides_the_key() {
        let (cred, key_pem, _) = credential();
        let debug = format!("{cred:?} {cred:#?}");
        assert!(debug.contains("CN=idbridge.test") && debug.contains("fingerprint"));
        assert!(!debug.contains("PRIVATE KEY") && !debug.contains("key:"));
        // No line of the PEM body (nor the raw modulus) may leak.
        let pem = String::from_utf8_lossy(key_pem);
        for line in pem.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!debug.contains(&line[..20]));
        }
        let modulus = cred
            .key
            .rsa()
            .unwrap()
            .n()
            .to_hex_str()
            .unwrap()
            .to_string();
        assert!(!debug.to_uppercase().contains(&modulus[..16]));
    }

    #[test]
    fn refuses_insert_offset_outside_element() {
        let (cred, _, _) = credential();
        assert!(sign_enveloped("<a></a>", "x", 99, cred, SignatureAlgorithm::RsaSha256).is_err());
        assert!(sign_enveloped("<a>é</a>", "x", 4, cred, SignatureAlgorithm::RsaSha256).is_err());
    }
}
