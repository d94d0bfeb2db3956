//! SSO throughput: a user with a session sends AuthnRequests (HTTP-POST binding, as Microsoft
//! does) over real HTTP on loopback and gets signed Responses back.
//!
//! Prints responses per second and p50/p99 latency, next to this machine's raw RSA sign rate for
//! the same key size measured in the same run (in-process with OpenSSL, and `openssl speed`), as
//! ratios. Run: `cargo bench --bench sso` (options: `-- --seconds 5 --concurrency 4`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use chrono::Utc;
use idbridge::config::Config;
use idbridge::directory::{Attribute, UserChanges};
use idbridge::events::{Actor, NewEvent};
use idbridge::server::App;
use idbridge::sso::LoginOutcome;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use openssl::sign::Signer;
use secrecy::SecretString;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Single-core RSA PKCS#1 v1.5 SHA-256 signatures per second with the given key size.
fn raw_sign_rate(bits: u32, seconds: f64) -> f64 {
    let key = PKey::from_rsa(Rsa::generate(bits).expect("rsa")).expect("pkey");
    let data = [7u8; 512];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        let mut signer = Signer::new(MessageDigest::sha256(), &key).expect("signer");
        signer.update(&data).expect("update");
        std::hint::black_box(signer.sign_to_vec().expect("sign"));
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// In-process rate of building and signing one M365 Response (no HTTP, no database).
fn build_response_rate(key_bits: u32, seconds: f64) -> f64 {
    use idbridge::saml::{self, AssertionParams, SignatureAlgorithm, SigningCredential};
    let (cred, _, _) = SigningCredential::generate(key_bits, "bench", 30).expect("credential");
    let attributes = vec![(
        "IDPEmail".to_string(),
        vec!["bench@contoso.com".to_string()],
    )];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        let now = Utc::now();
        let params = AssertionParams {
            issuer: "https://idp.contoso.com",
            destination: "https://login.microsoftonline.com/login.srf",
            audience: "urn:federation:MicrosoftOnline",
            in_response_to: Some("_0123456789abcdef"),
            name_id: "YmVuY2gxMjM0NTY3ODkwMQ==",
            name_id_format: saml::NAMEID_PERSISTENT,
            attributes: &attributes,
            authn_instant: now,
            session_index: "_session",
            authn_context_class_ref: saml::AC_PASSWORD_PROTECTED_TRANSPORT,
            now,
            not_before_skew: chrono::Duration::seconds(120),
            subject_lifetime: chrono::Duration::seconds(300),
            conditions_lifetime: chrono::Duration::seconds(3600),
        };
        let xml = saml::build_signed_response(&params, &cred, SignatureAlgorithm::RsaSha256)
            .expect("signed");
        std::hint::black_box(saml::encode_post(&xml));
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// `openssl speed`'s RSA sign rate for one core, if the command is available.
fn openssl_speed(bits: u32) -> Option<f64> {
    let out = std::process::Command::new("openssl")
        .args(["speed", "-seconds", "2", &format!("rsa{bits}")])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // Line: "rsa 2048 bits 0.000597s 0.000017s   1675.4  58823.5"
    text.lines()
        .find(|l| {
            l.starts_with(&format!("rsa {bits} bits")) || l.starts_with(&format!("rsa{bits}"))
        })
        .and_then(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.iter().rev().nth(1).and_then(|v| v.parse().ok())
        })
}

fn authn_request(id: &str) -> String {
    let xml = format!(
        "<samlp:AuthnRequest ID=\"{id}\" Version=\"2.0\" IssueInstant=\"{}\" \
         xmlns:samlp=\"urn:oasis:names:tc:SAML:2.0:protocol\"><Issuer \
         xmlns=\"urn:oasis:names:tc:SAML:2.0:assertion\">urn:federation:MicrosoftOnline</Issuer>\
         <samlp:NameIDPolicy Format=\"urn:oasis:names:tc:SAML:2.0:nameid-format:persistent\"/>\
         </samlp:AuthnRequest>",
        Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ")
    );
    base64::engine::general_purpose::STANDARD.encode(xml)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn main() {
    let seconds = arg("--seconds", 5);
    let concurrency = arg("--concurrency", 4) as usize;
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--client") {
        // Child mode: only generate load, so its CPU is not counted as the server's.
        let url = args[i + 1].clone();
        let cookie = Arc::new(args[i + 2].clone());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("client runtime");
        let (latencies, elapsed) = rt.block_on(drive(url, cookie, concurrency, seconds));
        let micros: Vec<String> = latencies
            .iter()
            .map(|d| d.as_micros().to_string())
            .collect();
        println!("{elapsed} {}", micros.join(","));
        return;
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let server_threads = arg("--server-threads", cores as u64) as usize;
    let key_bits = arg("--key-bits", 2048) as u32;
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(server_threads)
        .enable_all()
        .build()
        .expect("server runtime");
    let (url, cookie, stop, server, _dir) = server_rt.block_on(start_server(key_bits));
    let cpu_before = process_cpu_seconds();
    let out = std::process::Command::new(std::env::current_exe().expect("exe"))
        .args(["--client", &url, cookie.as_str()])
        .args([
            "--seconds",
            &seconds.to_string(),
            "--concurrency",
            &concurrency.to_string(),
        ])
        .output()
        .expect("load generator runs");
    let server_cpu = process_cpu_seconds() - cpu_before;
    assert!(
        out.status.success(),
        "load generator: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let (elapsed, micros) = text.trim().split_once(' ').expect("client output");
    let latencies: Vec<Duration> = micros
        .split(',')
        .filter_map(|m| m.parse().ok())
        .map(Duration::from_micros)
        .collect();
    let _ = stop.send(());
    let _ = server_rt.block_on(server);
    report(
        (latencies, elapsed.parse().expect("elapsed")),
        server_cpu,
        seconds,
        cores,
        concurrency,
        key_bits,
    );
}

/// CPU seconds (user + system) this process has used so far, from /proc/self/stat.
fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the ")" of the command name: utime is the 12th, stime the 13th (clock ticks).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0 // USER_HZ is 100 on Linux
}

type Started = (
    String,
    Arc<String>,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
    tempfile::TempDir,
);

async fn start_server(key_bits: u32) -> Started {
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = \"{d}/data\"\n[certs]\nkey_file = \"{d}/k.pem\"\n\
         cert_file = \"{d}/c.pem\"\nkey_bits = {key_bits}\n[log]\nlevel = \"warn\"\n",
        d = dir.path().display()
    );
    let config = Config::from_toml(&toml).expect("config");
    let app = App::build(config).await.expect("app");
    let state = app.state.clone();
    let changes = UserChanges::new()
        .with(Attribute::Username, "bench")
        .with(Attribute::Email, "bench@contoso.com")
        .with(Attribute::Firstname, "Bench")
        .with(Attribute::Lastname, "Mark");
    let password = SecretString::from("Load test 1!".to_string());
    let user = state
        .directory
        .create_user(&Actor::System, &changes, Some(&password), Utc::now())
        .await
        .expect("user");
    let event = NewEvent::new(Utc::now(), &Actor::System, "bench_bind", None);
    state
        .store
        .upsert_binding(
            &user.id,
            "YmVuY2gxMjM0NTY3ODkwMQ==",
            "bench@contoso.com",
            0,
            &event,
        )
        .await
        .expect("bind");
    let token = match state
        .idp
        .login(
            "bench",
            &password,
            &state
                .idp
                .service_providers()
                .get(idbridge::sso::M365_ENTITY_ID)
                .expect("M365 is built in"),
            None,
            Utc::now(),
        )
        .await
        .expect("login")
    {
        LoginOutcome::SignedIn { token, .. } => token,
        other => panic!("login failed: {other:?}"),
    };

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/saml/sso", listener.local_addr().expect("addr"));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(idbridge::server::run(app, listener, async move {
        let _ = rx.await;
    }));
    let cookie = Arc::new(format!("idbridge_session={token}"));
    (url, cookie, tx, server, dir)
}

async fn drive(
    url: String,
    cookie: Arc<String>,
    concurrency: usize,
    seconds: u64,
) -> (Vec<Duration>, f64) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .expect("client");
    // Warm up connections and caches.
    for i in 0..20 {
        let r = client
            .post(&url)
            .header("cookie", cookie.as_str())
            .form(&[("SAMLRequest", authn_request(&format!("_warm{i}")))])
            .send()
            .await
            .expect("send");
        assert!(
            r.text().await.expect("body").contains("SAMLResponse"),
            "warm-up answered"
        );
    }

    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let client = client.clone();
        let url = url.clone();
        let cookie = cookie.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = 0u64;
            while Instant::now() < deadline {
                let id = format!("_b{w}x{i}");
                i += 1;
                let t = Instant::now();
                let r = client
                    .post(&url)
                    .header("cookie", cookie.as_str())
                    .form(&[("SAMLRequest", authn_request(&id))])
                    .send()
                    .await
                    .expect("send");
                let ok = r.status().is_success()
                    && r.text()
                        .await
                        .map(|b| b.contains("SAMLResponse"))
                        .unwrap_or(false);
                assert!(ok, "every request gets a signed response");
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for w in workers {
        latencies.extend(w.await.expect("worker"));
    }
    (latencies, started.elapsed().as_secs_f64())
}

fn report(
    (mut latencies, elapsed): (Vec<Duration>, f64),
    server_cpu: f64,
    seconds: u64,
    cores: usize,
    concurrency: usize,
    key_bits: u32,
) {
    latencies.sort();
    let rps = latencies.len() as f64 / elapsed;
    let raw = raw_sign_rate(key_bits, 2.0);
    let built = build_response_rate(key_bits, 2.0);
    let speed = openssl_speed(key_bits);
    let per_cpu_second = latencies.len() as f64 / server_cpu.max(0.001);
    println!("idbridge SSO benchmark (RSA-{key_bits}, {cores} cores, {concurrency} concurrent clients in a separate process, {seconds} s)");
    println!(
        "  signed responses:        {:>9.1} /s   ({} in {:.1} s)",
        rps,
        latencies.len(),
        elapsed
    );
    println!(
        "  latency p50 / p99:       {:>9.2} ms / {:.2} ms",
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "  server CPU:              {:>9.2} s  = {:.1} cores busy, {:.0} µs per response",
        server_cpu,
        server_cpu / elapsed,
        server_cpu / latencies.len().max(1) as f64 * 1e6
    );
    println!("  responses per CPU-second:{:>9.1}", per_cpu_second);
    println!(
        "  baseline, raw RSA sign:  {:>9.1} /s per core (OpenSSL in-process, same run)",
        raw
    );
    println!(
        "  build+sign one Response: {:>9.1} /s per core (no HTTP, no database)",
        built
    );
    match speed {
        Some(s) => println!("  baseline, openssl speed: {:>9.1} /s per core", s),
        None => println!("  baseline, openssl speed: unavailable (no openssl command)"),
    }
    println!(
        "  ratio, responses per core used / raw sign rate:   {:.2}  (target 0.8)",
        per_cpu_second / raw
    );
    if let Some(s) = speed {
        println!(
            "  ratio, responses per core used / openssl speed:   {:.2}",
            per_cpu_second / s
        );
    }
    println!("  note: the load generator shares this machine's cores; the ratio counts only the server's CPU time");
}
