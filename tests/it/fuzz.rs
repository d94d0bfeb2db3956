//! Fuzzing the SAML decoders on arbitrary bytes: `scripts/fuzz` runs the ignored
//! test for millions of inputs; the corpus regression test runs in the normal suite.

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
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut seen = std::collections::HashSet::new();
    let (mut runs, mut errors) = (0u64, 0u64);
    let start = Instant::now();
    while runs < total && start.elapsed() < limit {
        let input = generate(&mut rng);
        let began = Instant::now();
        let kinds = catch_unwind(AssertUnwindSafe(|| run_one(&input)))
            .unwrap_or_else(|_| panic!("panic on input {:?}", BASE64.encode(&input)));
        assert!(
            began.elapsed() < PER_INPUT,
            "slow input {:?}",
            BASE64.encode(&input)
        );
        runs += 1;
        errors += kinds.iter().filter(|k| *k != "ok").count() as u64;
        let key = kinds.join("|");
        if seen.insert(key) && save && seen.len() < 200 && input.len() < 8192 {
            let _ = std::fs::write(corpus_dir().join(format!("{:04}", seen.len())), &input);
        }
    }
    println!(
        "executions {runs}, errors {errors}, outcome kinds {}, elapsed {:.1}s, peak RSS {} kB",
        seen.len(),
        start.elapsed().as_secs_f64(),
        peak_rss_kb()
    );
}

/// Every saved interesting input still decodes without a panic (fast; normal suite).
#[test]
fn fuzz_corpus_regressions() {
    let Ok(entries) = std::fs::read_dir(corpus_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let input = std::fs::read(entry.path()).unwrap();
        let began = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| run_one(&input)));
        assert!(result.is_ok(), "panic on {:?}", entry.path());
        assert!(began.elapsed() < PER_INPUT, "slow {:?}", entry.path());
    }
}
