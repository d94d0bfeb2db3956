//! Test helpers: one shared credential and the independent verifiers (xmlsec1, lxml).

use std::process::Command;
use std::sync::OnceLock;

use super::SigningCredential;

/// A 2048-bit credential generated once per test run: (credential, key PEM, cert PEM).
pub fn credential() -> &'static (SigningCredential, Vec<u8>, Vec<u8>) {
    static CRED: OnceLock<(SigningCredential, Vec<u8>, Vec<u8>)> = OnceLock::new();
    CRED.get_or_init(|| {
        SigningCredential::generate(2048, "idbridge.test", 30).expect("generate test credential")
    })
}

fn run(cmd: &mut Command, install_hint: &str) -> std::process::Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?} ({e}); install it: {install_hint}"))
}

/// True if `xmlsec1 --verify` accepts the document's signature for elements with that ID attribute.
pub fn xmlsec_verify(xml: &str, cert_pem: &[u8], id_attr: &str) -> bool {
    let dir = tempfile::tempdir().expect("tempdir");
    let (doc, cert) = (dir.path().join("doc.xml"), dir.path().join("cert.pem"));
    std::fs::write(&doc, xml).expect("write xml");
    std::fs::write(&cert, cert_pem).expect("write cert");
    let out = run(
        Command::new("xmlsec1")
            .arg("--verify")
            .arg("--pubkey-cert-pem")
            .arg(&cert)
            .arg("--id-attr:ID")
            .arg(id_attr)
            .arg(&doc),
        "apt-get install -y xmlsec1",
    );
    // xmlsec1 reports "OK"/"FAIL" plus a References summary once it got as far as
    // checking the signature; anything else is a setup problem, not a verdict.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let verdict = stderr.lines().any(|l| l == "OK" || l == "FAIL");
    assert!(
        verdict,
        "xmlsec1 did not reach a verdict (status {}): {stderr}",
        out.status
    );
    out.status.success()
}

const C14N_SCRIPT: &str = r#"
import sys
from lxml import etree
DS = "{http://www.w3.org/2000/09/xmldsig#}"
doc = etree.parse(sys.argv[1])
el = doc.xpath("//*[@ID=$id]", id=sys.argv[2])[0]
sig = el.find(DS + "Signature")
signed_info = etree.tostring(sig.find(DS + "SignedInfo"), method="c14n", exclusive=True, with_comments=False)
el.remove(sig)
element = etree.tostring(el, method="c14n", exclusive=True, with_comments=False)
sys.stdout.buffer.write(element + b"\0" + signed_info)
"#;

/// libxml2's exc-c14n (via python lxml) of the element with that ID minus its Signature,
/// and of its SignedInfo as an apex.
pub fn lxml_c14n(xml: &str, id: &str) -> (String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let doc = dir.path().join("doc.xml");
    std::fs::write(&doc, xml).expect("write xml");
    let out = run(
        Command::new("python3")
            .arg("-c")
            .arg(C14N_SCRIPT)
            .arg(&doc)
            .arg(id),
        "apt-get install -y python3 python3-lxml (or pip install lxml)",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python3/lxml failed ({stderr}); install: pip install lxml"
    );
    let text = String::from_utf8(out.stdout).expect("c14n output is UTF-8");
    let (element, signed_info) = text.split_once('\0').expect("two outputs");
    (element.to_string(), signed_info.to_string())
}
