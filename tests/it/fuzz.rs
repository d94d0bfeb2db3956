//! Fuzzing on arbitrary bytes: the SAML decoders, the configuration parser (TOML loading with
//! its validation, including the service providers' certificate files) and the signature
//! verifier (certificate PEM, Redirect query signatures, enveloped XML signatures).
//! `scripts/fuzz` runs the ignored tests for millions of inputs; the corpus regression test
//! replays the kept inputs in the normal suite.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use idbridge::saml::{self, AuthnRequest};

/// The longest one input may take (a hang is a failure).
const PER_INPUT: Duration = Duration::from_secs(2);

/// A small xorshift generator: reproducible from its seed, no extra crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const AUTHN: &str = r#"<samlp:AuthnRequest xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" ID="_a1" Version="2.0" IssueInstant="2026-01-01T00:00:00Z" AssertionConsumerServiceURL="https://login.microsoftonline.com/login.srf"><saml:Issuer xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion">urn:federation:MicrosoftOnline</saml:Issuer><samlp:NameIDPolicy Format="urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"/></samlp:AuthnRequest>"#;
const LOGOUT: &str = r#"<samlp:LogoutRequest xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" ID="_l1" IssueInstant="2026-01-01T00:00:00Z" Version="2.0"><Issuer xmlns="urn:oasis:names:tc:SAML:2.0:assertion">urn:federation:MicrosoftOnline</Issuer><NameID xmlns="urn:oasis:names:tc:SAML:2.0:assertion">x</NameID><samlp:SessionIndex>_s</samlp:SessionIndex></samlp:LogoutRequest>"#;

/// Runs one input through every decoder; the kinds of outcome reached.
fn run_one(input: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(input);
    let mut kinds = Vec::new();
    for redirect in [true, false] {
        let decoded = if redirect {
            saml::decode_redirect(&text)
        } else {
            saml::decode_post(&text)
        };
        match decoded {
            Ok(xml) => {
                assert!(xml.len() <= saml::MAX_MESSAGE_BYTES, "inflate not bounded");
                kinds.push(outcome(AuthnRequest::parse(&xml).map(|_| ())));
                kinds.push(outcome(saml::LogoutRequest::parse(&xml).map(|_| ())));
            }
            Err(e) => kinds.push(format!("decode:{}", kind_of(&e.to_string()))),
        }
    }
    kinds.push(outcome(AuthnRequest::parse(&text).map(|_| ())));
    kinds.push(outcome(saml::LogoutRequest::parse(&text).map(|_| ())));
    kinds
}

fn outcome(r: Result<(), saml::SamlError>) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(e) => kind_of(&e.to_string()),
    }
}

/// An error's kind: its message up to the first quote or digit (values vary, kinds do not).
fn kind_of(message: &str) -> String {
    message
        .split(|c: char| c == '"' || c.is_ascii_digit())
        .next()
        .unwrap_or_default()
        .chars()
        .take(60)
        .collect()
}

fn deflate(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    let _ = enc.write_all(data);
    enc.finish().unwrap_or_default()
}

/// One generated input: random bytes, mutated valid messages in both bindings, truncated or
/// bomb-like deflate streams.
fn generate(rng: &mut Rng) -> Vec<u8> {
    let base = if rng.below(2) == 0 { AUTHN } else { LOGOUT };
    let mut xml = base.as_bytes().to_vec();
    for _ in 0..rng.below(4) {
        if xml.is_empty() {
            break;
        }
        let at = rng.below(xml.len());
        match rng.below(3) {
            0 => xml[at] = rng.next() as u8,
            1 => {
                xml.remove(at);
            }
            _ => xml.insert(at, b"<>&\"'=/:x"[rng.below(9)]),
        }
    }
    match rng.below(6) {
        0 => (0..rng.below(256)).map(|_| rng.next() as u8).collect(),
        1 => xml,
        2 => BASE64.encode(&xml).into_bytes(),
        3 => {
            let mut d = deflate(&xml);
            d.truncate(rng.below(d.len() + 1));
            BASE64.encode(&d).into_bytes()
        }
        4 => BASE64.encode(deflate(&xml)).into_bytes(),
        _ => {
            // Highly compressible: inflates far past the message limit.
            let bomb = vec![b'A'; 1 << (10 + rng.below(12))];
            BASE64.encode(deflate(&bomb)).into_bytes()
        }
    }
}

fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_corpus")
}

/// The long run: FUZZ_INPUTS inputs (default 10,000,000) within FUZZ_SECONDS.
#[test]
#[ignore = "run by scripts/fuzz"]
fn fuzz_decoders() {
    // The decoders' corpus is the top of tests/fuzz_corpus (kept there from the first runs).
    fuzz_loop("", 0x9E37_79B9_7F4A_7C15, 200, generate, run_one);
}

/// Every saved interesting input still decodes without a panic (fast; normal suite).
#[test]
fn fuzz_corpus_regressions() {
    let Ok(entries) = std::fs::read_dir(corpus_dir()) else {
        return;
    };
    for entry in entries.flatten().filter(|e| e.path().is_file()) {
        let input = std::fs::read(entry.path()).unwrap();
        let began = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| run_one(&input)));
        assert!(result.is_ok(), "panic on {:?}", entry.path());
        assert!(began.elapsed() < PER_INPUT, "slow {:?}", entry.path());
    }
    let signatures = Signed::new();
    for (target, run) in [
        ("config", &run_config as &dyn Fn(&[u8]) -> Vec<String>),
        ("signature", &|input: &[u8]| signatures.run(input)),
    ] {
        let Ok(entries) = std::fs::read_dir(corpus_dir().join(target)) else {
            continue;
        };
        for entry in entries.flatten() {
            let input = std::fs::read(entry.path()).unwrap();
            let began = Instant::now();
            let result = catch_unwind(AssertUnwindSafe(|| run(&input)));
            assert!(result.is_ok(), "panic on {:?}", entry.path());
            assert!(began.elapsed() < PER_INPUT, "slow {:?}", entry.path());
        }
    }
}

// ---- the configuration parser ----

/// A config touching every table, including a service provider with a certificate file.
fn config_template() -> String {
    String::from(
        r#"base_url = "https://idp.example.com"
listen = "127.0.0.1:8080"
data_dir = "/nonexistent/idbridge-fuzz"
database_url = "sqlite:///nonexistent/idbridge-fuzz/x.db"
[certs]
key_bits = 2048
validity_days = 3650
[password_policy]
min_length = 12
[saml]
issuer = "https://idp.example.com/saml"
signature_algorithm = "rsa-sha256"
session_minutes = 480
relay_state_max_bytes = 1024
m365_certificate_file = "@CERT@"
[saml.domain_issuers]
"contoso.com" = "https://idp.example.com/contoso"
[[saml.service_providers]]
entity_id = "https://wiki.example.com/saml"
acs_urls = ["https://wiki.example.com/acs"]
slo_url = "https://wiki.example.com/slo"
name_id = "email"
attributes = { mail = "email" }
certificate_file = "@CERT@"
[m365]
login_base_url = "https://login.microsoftonline.com"
tenant = "organizations"
[server]
max_connections = 768
shutdown_timeout_seconds = 20
trusted_proxies = ["10.0.0.0/8", "::1"]
[sign_in]
window_seconds = 60
[events]
retention_days = 365
[log]
format = "json"
"#,
    )
}

/// The certificate file `@CERT@` stands for in config inputs (written once per run), so saved
/// inputs replay on any machine.
fn fuzz_cert_path() -> PathBuf {
    static PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("idbridge-fuzz-{}.crt", std::process::id()));
        let (_, _, cert) = saml::SigningCredential::generate(2048, "fuzz", 1).unwrap();
        std::fs::write(&path, cert).unwrap();
        path
    })
    .clone()
}

/// Loads one input as a config file: TOML parsing, typed extraction and validation.
fn run_config(input: &[u8]) -> Vec<String> {
    let text =
        String::from_utf8_lossy(input).replace("@CERT@", &fuzz_cert_path().display().to_string());
    vec![match idbridge::config::Config::from_toml(&text) {
        Ok(_) => "ok".into(),
        // The setting name is the stable part of a config error.
        Err(e) => kind_of(&e.to_string().replace("configuration error: ", "")),
    }]
}

const TOML_BYTES: &[u8] = b"[]{}=\"'#.,\n \\0123456789-+:_abcxyzeE";

fn generate_config(rng: &mut Rng) -> Vec<u8> {
    let mut text = config_template().into_bytes();
    if rng.below(8) == 0 {
        // Whole lines dropped, duplicated or swapped: missing, repeated and misplaced tables.
        let mut lines: Vec<Vec<u8>> = text.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
        for _ in 0..1 + rng.below(4) {
            let (a, b) = (rng.below(lines.len()), rng.below(lines.len()));
            match rng.below(3) {
                0 => {
                    lines.remove(a);
                }
                1 => {
                    let line = lines[a].clone();
                    lines.insert(b, line);
                }
                _ => lines.swap(a, b),
            }
        }
        text = lines.join(&b'\n');
    }
    for _ in 0..1 + rng.below(6) {
        if text.is_empty() {
            break;
        }
        let at = rng.below(text.len());
        match rng.below(4) {
            0 => text[at] = rng.next() as u8,
            1 => {
                text.remove(at);
            }
            2 => text.insert(at, TOML_BYTES[rng.below(TOML_BYTES.len())]),
            _ => text[at] = TOML_BYTES[rng.below(TOML_BYTES.len())],
        }
    }
    match rng.below(10) {
        0 => (0..rng.below(512)).map(|_| rng.next() as u8).collect(),
        1 => {
            text.truncate(rng.below(text.len() + 1));
            text
        }
        _ => text,
    }
}

// ---- the signature verifier ----

/// Signed messages to mutate, and the keys that verify them.
struct Signed {
    keys: saml::VerificationKeys,
    cert_pem: Vec<u8>,
    post: String,
    query: String,
}

impl Signed {
    fn new() -> Self {
        use idbridge::saml::xml::XmlWriter;
        let (cred, key_pem, cert_pem) =
            saml::SigningCredential::generate(2048, "fuzz-sp", 1).unwrap();
        let mut w = XmlWriter::new();
        let mut at = 0;
        w.element(
            "samlp:LogoutRequest",
            &[
                ("xmlns:samlp", saml::NS_PROTOCOL),
                ("ID", "_l1"),
                ("IssueInstant", "2026-01-01T00:00:00Z"),
                ("Version", "2.0"),
            ],
            |w| {
                w.leaf("saml:Issuer", &[("xmlns:saml", saml::NS_ASSERTION)], "sp")?;
                at = w.offset();
                w.leaf("saml:NameID", &[("xmlns:saml", saml::NS_ASSERTION)], "x")?;
                w.leaf("samlp:SessionIndex", &[], "_s")
            },
        )
        .unwrap();
        let post = saml::signing::sign_enveloped(
            &w.into_string(),
            "_l1",
            at,
            &cred,
            saml::SignatureAlgorithm::RsaSha256,
        )
        .unwrap();
        let key = openssl::pkey::PKey::private_key_from_pem(&key_pem).unwrap();
        let enc = |v: &str| url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
        let signed = format!(
            "SAMLRequest={}&RelayState=rs&SigAlg={}",
            enc(&saml::encode_redirect(LOGOUT)),
            enc(saml::verify::RSA_SHA256)
        );
        let mut signer =
            openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &key).unwrap();
        signer.update(signed.as_bytes()).unwrap();
        let query = format!(
            "{signed}&Signature={}",
            enc(&BASE64.encode(signer.sign_to_vec().unwrap()))
        );
        let keys = saml::VerificationKeys::from_pem(&cert_pem).unwrap();
        let signed = Self {
            keys,
            cert_pem,
            post,
            query,
        };
        // The unmutated messages verify, so mutations start from the accepting path.
        assert_eq!(
            signed.run(signed.post.as_bytes()),
            ["cert:not", "post:ok", "query:not"]
        );
        signed
    }

    /// Runs one input as a certificate file, an enveloped-signed document and a raw query.
    fn run(&self, input: &[u8]) -> Vec<String> {
        let text = String::from_utf8_lossy(input);
        let cert = match saml::VerificationKeys::from_pem(input) {
            Ok(_) => "cert:ok".to_string(),
            Err(e) if e.to_string().contains("BEGIN CERTIFICATE") => "cert:not".into(),
            Err(e) => format!("cert:{}", kind_of(&e.to_string())),
        };
        let post = match saml::parse_document(&text) {
            Ok(doc) => match saml::verify::verify_enveloped(&doc, &self.keys) {
                Ok(()) => {
                    // Whatever verifies must also be the request that is read.
                    saml::LogoutRequest::from_document(&doc).expect("verified but unreadable");
                    "post:ok".to_string()
                }
                Err(e) => format!("post:{}", kind_of(&e.to_string())),
            },
            Err(e) => format!("post:xml:{}", kind_of(&e.to_string())),
        };
        let query = if text.contains("SAMLRequest") {
            match saml::RedirectQuery::parse(&text, "SAMLRequest").and_then(|q| {
                q.verify(&self.keys)?;
                saml::decode_redirect(q.message.as_deref().unwrap_or_default())
            }) {
                Ok(_) => "query:ok".to_string(),
                Err(e) => format!("query:{}", kind_of(&e.to_string())),
            }
        } else {
            "query:not".into()
        };
        vec![cert, post, query]
    }

    fn generate(&self, rng: &mut Rng) -> Vec<u8> {
        let mut bytes = match rng.below(3) {
            0 => self.post.clone().into_bytes(),
            1 => self.query.clone().into_bytes(),
            _ => self.cert_pem.clone(),
        };
        if rng.below(16) == 0 {
            // Structural moves: the signature duplicated or wrapped inside another element.
            let text = String::from_utf8_lossy(&bytes).into_owned();
            if let (Some(a), Some(b)) = (text.find("<ds:Signature"), text.find("</ds:Signature>")) {
                let sig = &text[a..b + "</ds:Signature>".len()];
                let moved = match rng.below(3) {
                    0 => text.replacen("</samlp:LogoutRequest>", &format!("{sig}</samlp:LogoutRequest>"), 1),
                    1 => format!("<samlp:LogoutRequest xmlns:samlp=\"{}\" ID=\"_w\" Version=\"2.0\" IssueInstant=\"2026-01-01T00:00:00Z\">{sig}<x>{}</x></samlp:LogoutRequest>", saml::NS_PROTOCOL, text.replace(sig, "")),
                    _ => text.replace("ID=\"_l1\"", "ID=\"_l2\""),
                };
                bytes = moved.into_bytes();
            }
        }
        for _ in 0..rng.below(5) {
            if bytes.is_empty() {
                break;
            }
            let at = rng.below(bytes.len());
            match rng.below(4) {
                0 => bytes[at] = rng.next() as u8,
                1 => {
                    bytes.remove(at);
                }
                2 => bytes.insert(at, b"<>&\"'=/:%+x\n"[rng.below(12)]),
                _ => bytes.truncate(at),
            }
        }
        if rng.below(20) == 0 {
            return (0..rng.below(512)).map(|_| rng.next() as u8).collect();
        }
        bytes
    }
}

/// The fuzz loop shared by the targets: inputs from `generate` (seeded with `seed`) through
/// `run` until FUZZ_INPUTS or FUZZ_SECONDS; saves up to `keep` inputs reaching new outcomes
/// under `corpus` when FUZZ_SAVE is set.
fn fuzz_loop(
    corpus: &str,
    seed: u64,
    keep: usize,
    mut generate: impl FnMut(&mut Rng) -> Vec<u8>,
    run: impl Fn(&[u8]) -> Vec<String>,
) {
    let total: u64 = std::env::var("FUZZ_INPUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let limit = Duration::from_secs(
        std::env::var("FUZZ_SECONDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3600),
    );
    let save = std::env::var("FUZZ_SAVE").is_ok();
    let dir = corpus_dir().join(corpus);
    if save {
        std::fs::create_dir_all(&dir).unwrap();
    }
    let mut rng = Rng(seed);
    let mut seen = std::collections::HashSet::new();
    let (mut runs, mut errors, mut slowest) = (0u64, 0u64, Duration::ZERO);
    let start = Instant::now();
    while runs < total && start.elapsed() < limit {
        let input = generate(&mut rng);
        let began = Instant::now();
        let kinds = catch_unwind(AssertUnwindSafe(|| run(&input)))
            .unwrap_or_else(|_| panic!("panic on input {:?}", BASE64.encode(&input)));
        let took = began.elapsed();
        assert!(took < PER_INPUT, "slow input {:?}", BASE64.encode(&input));
        slowest = slowest.max(took);
        runs += 1;
        errors += kinds.iter().filter(|k| !k.ends_with("ok")).count() as u64;
        if seen.insert(kinds.join("|")) && save && seen.len() < keep && input.len() < 8192 {
            let _ = std::fs::write(dir.join(format!("{:04}", seen.len())), &input);
        }
    }
    println!(
        "{corpus}: executions {runs}, errors {errors}, outcome kinds {}, elapsed {:.1}s, slowest input {:?}, peak RSS {} kB",
        seen.len(),
        start.elapsed().as_secs_f64(),
        slowest,
        peak_rss_kb()
    );
}

/// The configuration parser: TOML loading and validation on mutated and random config files.
#[test]
#[ignore = "run by scripts/fuzz"]
fn fuzz_config() {
    // The unmutated template loads, so mutations start from the accepting path.
    assert_eq!(run_config(config_template().as_bytes()), ["ok"]);
    fuzz_loop(
        "config",
        0x2545_F491_4F6C_DD1D,
        100,
        generate_config,
        run_config,
    );
}

/// The signature verifier: certificate PEM, HTTP-Redirect and enveloped signatures.
#[test]
#[ignore = "run by scripts/fuzz"]
fn fuzz_signatures() {
    let signed = Signed::new();
    fuzz_loop(
        "signature",
        0x2545_F491_4F6C_DD1D,
        100,
        |rng| signed.generate(rng),
        |input| signed.run(input),
    );
}
