//! Memory of the server under password sign-in load: the real `idbridge serve` binary, users
//! signing in with the right password (one argon2id check each) from many connections at once.
//!
//! All sign-ins come from one address, so beyond the address's limit of attempts in flight
//! (`[sign_in] address_max_failures`, 30) some are asked to retry (429) rather than queued.
//! For each concurrency level (8, 32, 128) it drives sign-ins for `--seconds`, sampling
//! the server's resident set every 100 ms, then lets it idle `--idle` seconds. Prints the peak
//! and the idle resident set beside the bound the design promises (100 MB + workers × the hash
//! memory cost) and the idle resident set measured before any load, in the same run.
//! Run: `cargo bench --bench login_memory` (options: `-- --seconds 20 --idle 10 --workers 2`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::{arg, authn_request, pending_of, resident_mb};

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use idbridge::config::Config;
use idbridge::directory::{Attribute, UserChanges};
use idbridge::events::Actor;
use idbridge::server::App;
use secrecy::SecretString;

const PASSWORD: &str = "Memory test 1!";
const USERS: usize = 64;
/// argon2id memory cost of the default parameters (m = 19 MiB).
const HASH_MIB: f64 = 19.0;

/// Outcomes of the sign-ins of one level.
#[derive(Default)]
struct Counts {
    signed_in: AtomicU64,
    busy: AtomicU64,
    /// Asked to retry in seconds: more sign-ins in flight from the address than its limit.
    crowded: AtomicU64,
    other: AtomicU64,
    /// The status of the last unexpected answer (0: no answer).
    last_other: AtomicU64,
}

/// One sign-in with the right password: AuthnRequest, login form, the password check.
async fn sign_in(base: &str, user: &str, counts: &Counts) {
    // A client per sign-in: its own cookies, as a new browser would have.
    let client = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .expect("client");
    let Ok(page) = client
        .post(format!("{base}/saml/sso"))
        .form(&[(
            "SAMLRequest",
            authn_request(&format!("_{}", idbridge::saml::new_id())),
        )])
        .send()
        .await
    else {
        counts.other.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let html = page.text().await.unwrap_or_default();
    let Some(pending) = pending_of(&html) else {
        counts.other.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let status = client
        .post(format!("{base}/saml/login"))
        .form(&[
            ("pending", pending.as_str()),
            ("username", user),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0);
    match status {
        // The refusal page (not bound to Microsoft 365) comes after a correct password check.
        200 | 403 => counts.signed_in.fetch_add(1, Ordering::Relaxed),
        503 => counts.busy.fetch_add(1, Ordering::Relaxed),
        429 => counts.crowded.fetch_add(1, Ordering::Relaxed),
        other => {
            counts.last_other.store(u64::from(other), Ordering::Relaxed);
            counts.other.fetch_add(1, Ordering::Relaxed)
        }
    };
}

fn main() {
    let seconds = arg("--seconds", 20);
    let idle = arg("--idle", 10);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = arg("--workers", cores as u64) as usize;
    let dir = tempfile::tempdir().expect("tempdir");
    let config_path = dir.path().join("idbridge.toml");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
        l.local_addr().expect("addr").port()
    };
    std::fs::write(
        &config_path,
        format!(
            "listen = \"127.0.0.1:{port}\"\nbase_url = \"http://127.0.0.1:{port}\"\n\
             data_dir = \"{d}/data\"\n[certs]\nkey_file = \"{d}/k.pem\"\ncert_file = \"{d}/c.pem\"\n\
             [log]\nlevel = \"warn\"\n[sign_in]\nhash_workers = {workers}\n\
             [server]\nmax_connections = 700\n",
            d = dir.path().display()
        ),
    )
    .expect("config");

    // Seed the users through the library, then serve with the real binary.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let config = Config::load(Some(&config_path)).expect("config");
        let app = App::build(config).await.expect("app");
        let password = SecretString::from(PASSWORD.to_string());
        for n in 0..USERS {
            let name = format!("mem{n}");
            let changes = UserChanges::new()
                .with(Attribute::Username, &name)
                .with(Attribute::Email, format!("{name}@contoso.com"))
                .with(Attribute::Firstname, "Mem")
                .with(Attribute::Lastname, "Ory");
            app.state
                .directory
                .create_user(&Actor::System, &changes, Some(&password), Utc::now())
                .await
                .expect("user");
        }
        app.state.store.close().await;
    });

    let mut server: Child = Command::new(env!("CARGO_BIN_EXE_idbridge"))
        .args(["--config", config_path.to_str().expect("path"), "serve"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("server starts");
    let pid = server.id();
    let base = format!("http://127.0.0.1:{port}");
    rt.block_on(async {
        for _ in 0..100 {
            if reqwest::get(format!("{base}/healthz")).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the server did not start");
    });
    std::thread::sleep(Duration::from_secs(1));
    let idle_before = resident_mb(&pid.to_string());
    let bound = 100.0 + workers as f64 * HASH_MIB;
    println!(
        "idbridge sign-in memory: {workers} hash workers, argon2id {HASH_MIB} MiB each; bound 100 MB + workers × hash = {bound:.0} MB"
    );
    println!("  idle before any load: {idle_before:.1} MB");
    println!("  concurrent   sign-ins/s   429 retry   503 busy   peak RSS MB   idle after MB   within bound");
    for concurrency in [8usize, 32, 128] {
        let counts = Arc::new(Counts::default());
        let peak = Arc::new(AtomicU64::new(0));
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sampler = {
            let peak = peak.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    let kb = (resident_mb(&pid.to_string()) * 1024.0) as u64;
                    peak.fetch_max(kb, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        let started = Instant::now();
        rt.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(seconds);
            let mut tasks = Vec::new();
            for w in 0..concurrency {
                let base = base.clone();
                let counts = counts.clone();
                tasks.push(tokio::spawn(async move {
                    let mut i = w;
                    while Instant::now() < deadline {
                        sign_in(&base, &format!("mem{}", i % USERS), &counts).await;
                        i += concurrency;
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        });
        let elapsed = started.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_secs(idle));
        done.store(true, Ordering::Relaxed);
        let _ = sampler.join();
        let peak_mb = peak.load(Ordering::Relaxed) as f64 / 1024.0;
        let idle_after = resident_mb(&pid.to_string());
        println!(
            "  {:>10}   {:>10.1}   {:>9}   {:>8}   {:>11.1}   {:>13.1}   {}",
            concurrency,
            counts.signed_in.load(Ordering::Relaxed) as f64 / elapsed,
            counts.crowded.load(Ordering::Relaxed),
            counts.busy.load(Ordering::Relaxed),
            peak_mb,
            idle_after,
            if peak_mb <= bound { "yes" } else { "NO" }
        );
        assert_eq!(
            counts.other.load(Ordering::Relaxed),
            0,
            "every sign-in is answered: signed in, asked to retry (429) or busy (503); last other status: {}",
            counts.last_other.load(Ordering::Relaxed)
        );
    }
    let _ = server.kill();
    let _ = server.wait();
}
