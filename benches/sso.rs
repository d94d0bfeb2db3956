//! SSO throughput beside the machine's RSA sign rate, measured in the same run.
//!
//! Users with sessions send Microsoft-365-shaped AuthnRequests (HTTP-POST binding, a fresh
//! request ID each time, one session per connection) over real HTTP on loopback from a separate
//! load-generator process, and get signed Responses back. Phases:
//!
//! 1. baseline: `openssl speed -multi <cores> rsa<bits>`, the signatures per second of all the
//!    cores the server uses (what `openssl speed` reports, not a single-thread sample);
//! 2. capacity: closed loop at `--concurrency` (default 8) for `--seconds`;
//! 3. half load: a fixed rate of half that capacity, for p50/p99 latency;
//! 4. optional sustained run (`--sustained SECONDS --rate R`): a fixed rate, with the server's CPU
//!    per SSO, the replay IDs held and the resident set printed each `--window` seconds, to show
//!    that the cost per SSO stays flat as the replay state fills;
//! 5. the baseline again, so a machine that changed speed during the run shows.
//!
//! Two Responses are verified with xmlsec1 when it is installed. Run:
//! `cargo bench --bench sso` (options: `-- --seconds 10 --concurrency 8 --sustained 900 --rate 100`).
//!
//! With `--postgres postgres://user@host:port` the server runs on a fresh PostgreSQL database
//! there instead of SQLite, and with `--nodes 2` as two nodes on that database (shared signing
//! key, one process, the same cores), the load generator's connections split between them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::{arg, authn_request, percentile, process_cpu_seconds, resident_mb};

use std::time::{Duration, Instant};

use base64::Engine;
use chrono::Utc;
use idbridge::config::Config;
use idbridge::directory::{Attribute, UserChanges};
use idbridge::events::{Actor, NewEvent};
use idbridge::server::{App, AppState};
use idbridge::sso::LoginOutcome;
use secrecy::SecretString;

/// The allocator the shipped binary uses (src/main.rs), so the figures are the product's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `openssl speed -multi N`'s RSA sign rate over all N processes, if the command is available.
fn openssl_speed(bits: u32, processes: usize, seconds: u32) -> Option<f64> {
    let out = std::process::Command::new("openssl")
        .args([
            "speed",
            "-seconds",
            &seconds.to_string(),
            "-multi",
            &processes.to_string(),
            &format!("rsa{bits}"),
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // OpenSSL 3 prints "rsa 2048 bits 0.000597s 0.000017s   1675.4  58823.5" (sign/s is the
    // second-last column); with -multi the line is the sum over the processes.
    text.lines()
        .find(|l| {
            l.starts_with(&format!("rsa {bits} bits")) || l.starts_with(&format!("rsa{bits}"))
        })
        .and_then(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.iter().rev().nth(1).and_then(|v| v.parse().ok())
        })
}

/// How the load generator paces its requests.
#[derive(Clone, Copy)]
enum Pace {
    /// Each connection sends the next request when the last is answered.
    Closed,
    /// This many requests a second in all, on a schedule; latency counts from the scheduled
    /// time, so a stall is not hidden by the requests it delays (no coordinated omission).
    Rate(f64),
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--client") {
        client_main(&args[i + 1..]);
        return;
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let seconds = arg("--seconds", 10);
    let concurrency = arg("--concurrency", 8) as usize;
    let key_bits = arg("--key-bits", 2048) as u32;
    let sustained = arg("--sustained", 0);
    let rate = arg("--rate", 100) as f64;
    let window = arg("--window", 60);

    let before = openssl_speed(key_bits, cores, 5);
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()
        .expect("server runtime");
    let postgres = std::env::args().skip_while(|a| a != "--postgres").nth(1);
    let nodes = arg("--nodes", 1).max(1) as usize;
    assert!(
        nodes == 1 || postgres.is_some(),
        "--nodes above 1 needs --postgres (several nodes share one PostgreSQL database)"
    );
    let server = server_rt.block_on(start_server(
        key_bits,
        concurrency,
        postgres.as_deref(),
        nodes,
    ));

    let capacity = run_client(&server, Pace::Closed, concurrency, seconds, None);
    let half = run_client(
        &server,
        Pace::Rate(capacity.rate() / 2.0),
        concurrency,
        seconds,
        None,
    );
    let windows = (sustained > 0).then(|| {
        let mut windows = Vec::new();
        let run = run_client(
            &server,
            Pace::Rate(rate),
            concurrency,
            sustained,
            Some((window, &mut windows)),
        );
        (run, windows)
    });
    let after = openssl_speed(key_bits, cores, 5);
    let verified = server.verify_samples();
    let db_bytes = server.database_bytes();
    let issued = server.issued();
    let Server {
        stop,
        handle,
        dir,
        others,
        ..
    } = server;
    for (tx, task, _) in others {
        let _ = tx.send(());
        let _ = server_rt.block_on(task);
    }
    let _ = stop.send(());
    let _ = server_rt.block_on(handle);
    drop(dir);

    println!(
        "idbridge SSO benchmark: RSA-{key_bits}, {cores} cores, load generator in a separate process on the same cores"
    );
    println!(
        "  database: {}, {nodes} node(s)",
        if postgres.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        }
    );
    let ratio = |rate: f64, base: Option<f64>| {
        base.map_or("n/a".to_string(), |b| format!("{:.2}", rate / b))
    };
    match (before, after) {
        (Some(b), Some(a)) => println!(
            "  baseline, openssl speed -multi {cores} rsa{key_bits}: {b:.0} signs/s before the run, {a:.0} after"
        ),
        _ => println!("  baseline: unavailable (no openssl command)"),
    }
    println!(
        "  capacity (closed loop, {concurrency} connections): {:.0} SSO/s, p50 {:.2} ms, p99 {:.2} ms, server CPU {:.0} µs per SSO",
        capacity.rate(),
        capacity.p(0.50),
        capacity.p(0.99),
        capacity.cpu_per_sso_us()
    );
    println!(
        "    ratio to the baseline: {} (before) / {} (after)  (goal ≥ 0.8)",
        ratio(capacity.rate(), before),
        ratio(capacity.rate(), after)
    );
    println!(
        "    responses per server CPU-second: {:.0} = {} of the baseline per core",
        capacity.per_cpu_second(),
        ratio(capacity.per_cpu_second(), before.map(|b| b / cores as f64))
    );
    println!(
        "  half load ({:.0} SSO/s offered): {:.0} SSO/s, p50 {:.2} ms, p99 {:.2} ms (goal p99 < 5 ms)",
        capacity.rate() / 2.0,
        half.rate(),
        half.p(0.50),
        half.p(0.99)
    );
    if let Some((run, windows)) = windows {
        println!("  sustained at {rate:.0} SSO/s for {sustained} s ({window} s windows):");
        println!("    window   SSO/s   CPU µs/SSO   replay IDs held   RSS MB");
        for (i, w) in windows.iter().enumerate() {
            println!(
                "    {:>6}   {:>5.0}   {:>10.0}   {:>15}   {:>6.1}",
                i + 1,
                w.rate,
                w.cpu_per_sso_us,
                w.replay_ids,
                w.rss_mb
            );
        }
        if let (Some(first), Some(last)) = (windows.first(), windows.last()) {
            println!(
                "    CPU per SSO, last window / first: {:.2}; p99 over the run {:.2} ms",
                last.cpu_per_sso_us / first.cpu_per_sso_us.max(1.0),
                run.p(0.99)
            );
        }
    }
    println!(
        "  database: {:.0} bytes per SSO ({} assertions, {:.1} MB on disk)",
        db_bytes as f64 / issued.max(1) as f64,
        issued,
        db_bytes as f64 / 1e6
    );
    println!("  responses verified with xmlsec1: {verified}");
}

/// A phase's results.
struct Run {
    latencies: Vec<Duration>,
    elapsed: f64,
    server_cpu: f64,
}

impl Run {
    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.max(0.001)
    }
    fn p(&self, p: f64) -> f64 {
        percentile(&self.latencies, p).as_secs_f64() * 1e3
    }
    fn cpu_per_sso_us(&self) -> f64 {
        self.server_cpu / self.latencies.len().max(1) as f64 * 1e6
    }
    fn per_cpu_second(&self) -> f64 {
        self.latencies.len() as f64 / self.server_cpu.max(0.001)
    }
}

/// One window of the sustained run.
struct Window {
    rate: f64,
    cpu_per_sso_us: f64,
    replay_ids: usize,
    rss_mb: f64,
}

/// Runs the load generator as a child process for one phase and measures the server meanwhile.
fn run_client(
    server: &Server,
    pace: Pace,
    concurrency: usize,
    seconds: u64,
    mut sample: Option<(u64, &mut Vec<Window>)>,
) -> Run {
    let pace_arg = match pace {
        Pace::Closed => "closed".to_string(),
        Pace::Rate(r) => format!("{r}"),
    };
    let cpu_before = process_cpu_seconds();
    let child = std::process::Command::new(std::env::current_exe().expect("exe"))
        .args([
            "--client",
            &server.urls.join(","),
            &server.cookies.join(","),
            &pace_arg,
            &seconds.to_string(),
            &concurrency.to_string(),
            &server.samples.display().to_string(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("load generator starts");
    if let Some((window, windows)) = sample.as_mut() {
        let started = Instant::now();
        let mut last = (Instant::now(), process_cpu_seconds(), server.issued());
        while started.elapsed().as_secs() + *window <= seconds + 1 {
            std::thread::sleep(Duration::from_secs(*window));
            let now = (Instant::now(), process_cpu_seconds(), server.issued());
            let n = (now.2 - last.2).max(1) as f64;
            windows.push(Window {
                rate: n / now.0.duration_since(last.0).as_secs_f64(),
                cpu_per_sso_us: (now.1 - last.1) / n * 1e6,
                replay_ids: server.state.idp.replay_ids_held(),
                rss_mb: resident_mb("self"),
            });
            last = now;
        }
    }
    let out = child.wait_with_output().expect("load generator ends");
    let server_cpu = process_cpu_seconds() - cpu_before;
    assert!(
        out.status.success(),
        "load generator: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let (elapsed, micros) = text.trim().split_once(' ').expect("client output");
    let mut latencies: Vec<Duration> = micros
        .split(',')
        .filter_map(|m| m.parse().ok())
        .map(Duration::from_micros)
        .collect();
    latencies.sort();
    Run {
        latencies,
        elapsed: elapsed.parse().expect("elapsed"),
        server_cpu,
    }
}

/// The server under test, in this process.
struct Server {
    /// Each node's SSO URL.
    urls: Vec<String>,
    /// The nodes after the first (their stop signals and tasks).
    others: Vec<(
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<std::io::Result<()>>,
        AppState,
    )>,
    cookies: Vec<String>,
    state: AppState,
    stop: tokio::sync::oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<std::io::Result<()>>,
    cert: std::path::PathBuf,
    db: std::path::PathBuf,
    samples: std::path::PathBuf,
    dir: tempfile::TempDir,
}

impl Server {
    /// Assertions issued so far (sessions answered, from the session reads).
    fn issued(&self) -> u64 {
        std::iter::once(&self.state)
            .chain(self.others.iter().map(|(_, _, state)| state))
            .map(|state| {
                let (hits, misses) = state.idp.session_cache_stats();
                hits + misses
            })
            .sum()
    }

    /// Bytes of the database file and its write-ahead log.
    fn database_bytes(&self) -> u64 {
        let mut wal = self.db.clone().into_os_string();
        wal.push("-wal");
        [self.db.clone(), wal.into()]
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }

    /// Verifies the Responses the load generator saved with xmlsec1.
    fn verify_samples(&self) -> String {
        let Ok(entries) = std::fs::read_dir(&self.samples) else {
            return "none saved".into();
        };
        let mut ok = 0;
        let mut failed = 0;
        for entry in entries.flatten() {
            let out = std::process::Command::new("xmlsec1")
                .arg("--verify")
                .arg("--pubkey-cert-pem")
                .arg(&self.cert)
                .arg("--id-attr:ID")
                .arg("urn:oasis:names:tc:SAML:2.0:assertion:Assertion")
                .arg(entry.path())
                .output();
            match out {
                Ok(o) if o.status.success() => ok += 1,
                Ok(_) => failed += 1,
                Err(_) => return "xmlsec1 not installed".into(),
            }
        }
        assert_eq!(failed, 0, "a Response failed xmlsec1 verification");
        format!("{ok} of {ok}")
    }
}

async fn start_server(
    key_bits: u32,
    sessions: usize,
    postgres: Option<&str>,
    nodes: usize,
) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let database = match postgres {
        Some(server) => format!(
            "database_url = {:?}\n",
            common::postgres_database(server, "sso").await
        ),
        None => String::new(),
    };
    let node_config = |n: usize| {
        let toml = format!(
            "listen = \"127.0.0.1:0\"\nnode_name = \"bench-{n}\"\ndata_dir = \"{d}/data{n}\"\n{database}\
             [certs]\nkey_file = \"{d}/k.pem\"\ncert_file = \"{d}/c.pem\"\nkey_bits = {key_bits}\n\
             [m365]\ntoken_key_file = \"{d}/token.key\"\n[log]\nlevel = \"warn\"\n",
            d = dir.path().display()
        );
        Config::from_toml(&toml).expect("config")
    };
    let config = node_config(0);
    let db = dir.path().join("data0").join("idbridge.db");
    let app = App::build(config).await.expect("app");
    let state = app.state.clone();
    let password = SecretString::from("Load test 1!".to_string());
    let m365 = state
        .idp
        .service_providers()
        .get(idbridge::sso::M365_ENTITY_ID)
        .expect("M365 is built in");
    let mut cookies = Vec::new();
    for n in 0..sessions.max(1) {
        let username = format!("bench{n}");
        let changes = UserChanges::new()
            .with(Attribute::Username, &username)
            .with(Attribute::Email, format!("{username}@contoso.com"))
            .with(Attribute::Firstname, "Bench")
            .with(Attribute::Lastname, "Mark");
        let user = state
            .directory
            .create_user(&Actor::System, &changes, Some(&password), Utc::now())
            .await
            .expect("user");
        let event = NewEvent::new(Utc::now(), &Actor::System, "bench_bind", None);
        let immutable_id =
            base64::engine::general_purpose::STANDARD.encode(format!("bench-immutable-{n}"));
        state
            .store
            .upsert_binding(
                &user.id,
                &immutable_id,
                &format!("{username}@contoso.com"),
                0,
                &event,
            )
            .await
            .expect("bind");
        match state
            .idp
            .login(&username, &password, Some(&*m365), None, Utc::now())
            .await
            .expect("login")
        {
            LoginOutcome::PasswordPassed(user) => {
                let now = Utc::now();
                let (_, token) = state
                    .idp
                    .open_session(&user, now.timestamp_millis(), None, None, now)
                    .await
                    .expect("session");
                cookies.push(format!("idbridge_session={token}"))
            }
            other => panic!("login failed: {other:?}"),
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let mut urls = vec![format!(
        "http://{}/saml/sso",
        listener.local_addr().expect("addr")
    )];
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(idbridge::server::run(app, listener, async move {
        let _ = rx.await;
    }));
    // Further nodes on the same database and key: the sessions made above are theirs too.
    let mut others = Vec::new();
    for n in 1..nodes {
        let app = App::build(node_config(n)).await.expect("node");
        let state = app.state.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        urls.push(format!(
            "http://{}/saml/sso",
            listener.local_addr().expect("addr")
        ));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(idbridge::server::run(app, listener, async move {
            let _ = rx.await;
        }));
        others.push((tx, task, state));
    }
    let samples = dir.path().join("samples");
    std::fs::create_dir_all(&samples).expect("samples dir");
    Server {
        urls,
        others,
        cookies,
        state,
        stop,
        handle,
        cert: dir.path().join("c.pem"),
        db,
        samples,
        dir,
    }
}

/// Child mode: only generate load, so its CPU is not counted as the server's.
/// Arguments: URL, cookies (comma-separated), pace ("closed" or a rate), seconds, connections,
/// the folder for sample Responses.
fn client_main(args: &[String]) {
    let urls: Vec<String> = args[0].split(',').map(str::to_string).collect();
    let cookies: Vec<String> = args[1].split(',').map(str::to_string).collect();
    let pace = match args[2].as_str() {
        "closed" => Pace::Closed,
        r => Pace::Rate(r.parse().expect("rate")),
    };
    let seconds: u64 = args[3].parse().expect("seconds");
    let concurrency: usize = args[4].parse().expect("connections");
    let samples = std::path::PathBuf::from(&args[5]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("client runtime");
    let (latencies, elapsed) =
        rt.block_on(drive(urls, cookies, pace, concurrency, seconds, samples));
    let micros: Vec<String> = latencies
        .iter()
        .map(|d| d.as_micros().to_string())
        .collect();
    println!("{elapsed} {}", micros.join(","));
}

/// The SAMLResponse value of an auto-post page, decoded.
fn response_xml(page: &str) -> Option<String> {
    let start = page.find("name=\"SAMLResponse\" value=\"")? + 27;
    let end = start + page.get(start..)?.find('"')?;
    let value = page
        .get(start..end)?
        .replace("&#x2f;", "/")
        .replace("&#43;", "+")
        .replace("&#x3d;", "=");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value)
        .ok()?;
    String::from_utf8(bytes).ok()
}

async fn drive(
    urls: Vec<String>,
    cookies: Vec<String>,
    pace: Pace,
    concurrency: usize,
    seconds: u64,
    samples: std::path::PathBuf,
) -> (Vec<Duration>, f64) {
    let tag = std::process::id();
    // One client (connection pool) per worker: one connection and one session each. The
    // clients are built and their connections opened before the clock starts (building a
    // TLS-capable client reads the system's CA store, tens of milliseconds each).
    let mut clients = Vec::new();
    for w in 0..concurrency {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .build()
            .expect("client");
        let url = &urls[w % urls.len()];
        let warm = client
            .post(url)
            .header("cookie", &cookies[w % cookies.len()])
            .form(&[("SAMLRequest", authn_request(&format!("_w{tag}x{w}")))])
            .send()
            .await
            .expect("warm-up");
        assert!(warm.status().is_success(), "warm-up answered");
        let _ = warm.bytes().await;
        clients.push(client);
    }
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut workers = Vec::new();
    for (w, client) in clients.into_iter().enumerate() {
        let url = urls[w % urls.len()].clone();
        let cookie = cookies[w % cookies.len()].clone();
        let samples = samples.clone();
        workers.push(tokio::spawn(async move {
            let interval = match pace {
                Pace::Closed => None,
                Pace::Rate(r) => Some(Duration::from_secs_f64(concurrency as f64 / r.max(0.001))),
            };
            // Spread the workers' schedules over one interval.
            let mut due =
                started + interval.map_or(Duration::ZERO, |i| i * w as u32 / concurrency as u32);
            let mut latencies = Vec::new();
            let mut i = 0u64;
            while Instant::now() < deadline {
                if interval.is_some() {
                    tokio::time::sleep_until(due.into()).await;
                }
                let id = format!("_b{tag}x{w}x{i}");
                i += 1;
                let t = if interval.is_some() {
                    due
                } else {
                    Instant::now()
                };
                let r = client
                    .post(&url)
                    .header("cookie", &cookie)
                    .form(&[("SAMLRequest", authn_request(&id))])
                    .send()
                    .await
                    .expect("send");
                let ok = r.status().is_success();
                let body = r.text().await.unwrap_or_default();
                assert!(
                    ok && body.contains("SAMLResponse"),
                    "every request gets a signed response"
                );
                latencies.push(t.elapsed());
                if i == 1 && w < 2 {
                    if let Some(xml) = response_xml(&body) {
                        let _ = std::fs::write(samples.join(format!("{tag}-{w}.xml")), xml);
                    }
                }
                if let Some(interval) = interval {
                    due += interval;
                }
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
