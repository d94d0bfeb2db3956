//! Password guessing against the SSO sign-in page, over real HTTP on loopback only.
//!
//! Phase 1 guesses one account's password from many loopback addresses (127.0.0.2, …);
//! phase 2 guesses many accounts from one address. Each guess is a fresh AuthnRequest, the
//! login form, and a wrong password. A guess is *accepted* when the password was checked
//! (401); a throttled guess gets 429. Prints accepted guesses per minute (goals: ≤10 per
//! account, ≤30 per address). Bounded by `--seconds` per phase (default 60) and
//! `--max-guesses` per phase (default 3000). Run: `scripts/guess-bench [--seconds 60]`.

// A benchmark driver: a failure should stop it loudly.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::{arg, authn_request, pending_of};

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use idbridge::config::Config;
use idbridge::directory::{Attribute, UserChanges};
use idbridge::events::Actor;
use idbridge::server::App;
use secrecy::SecretString;

/// One guess; returns the status of the login POST.
async fn guess(client: &reqwest::Client, base: &str, user: &str) -> Option<u16> {
    let page = client
        .post(format!("{base}/saml/sso"))
        .form(&[(
            "SAMLRequest",
            authn_request(&format!("_{}", idbridge::saml::new_id())),
        )])
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let pending = pending_of(&page)?;
    let r = client
        .post(format!("{base}/saml/login"))
        .form(&[
            ("pending", pending.as_str()),
            ("username", user),
            ("password", "Wrong guess 1!"),
        ])
        .send()
        .await
        .ok()?;
    Some(r.status().as_u16())
}

struct Tally {
    accepted: AtomicU64,
    throttled: AtomicU64,
    other: AtomicU64,
}

/// Runs four guessers until the time or count bound; guess `n` uses client and account
/// `n` modulo their counts.
async fn phase(
    base: &str,
    seconds: u64,
    max: u64,
    clients: Arc<Vec<reqwest::Client>>,
    accounts: Arc<Vec<String>>,
) -> (Tally, f64) {
    let tally = Arc::new(Tally {
        accepted: AtomicU64::new(0),
        throttled: AtomicU64::new(0),
        other: AtomicU64::new(0),
    });
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (tally, next, clients, accounts) = (
            tally.clone(),
            next.clone(),
            clients.clone(),
            accounts.clone(),
        );
        let base = base.to_string();
        workers.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= max {
                    break;
                }
                // Paced so the bounded count spreads over the whole phase: the rate is then
                // measured over the full time, as an attacker sustaining it would see.
                let due = start + Duration::from_secs(seconds).mul_f64(n as f64 / max as f64);
                tokio::time::sleep_until(due.into()).await;
                let client = &clients[(n as usize) % clients.len()];
                let account = &accounts[(n as usize) % accounts.len()];
                match guess(client, &base, account).await {
                    Some(401) => tally.accepted.fetch_add(1, Ordering::Relaxed),
                    Some(429) => tally.throttled.fetch_add(1, Ordering::Relaxed),
                    _ => tally.other.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let elapsed = start.elapsed().as_secs_f64().max(seconds as f64);
    let tally = Arc::try_unwrap(tally).unwrap_or_else(|_| panic!("workers done"));
    (tally, elapsed)
}

fn client_from(ip: IpAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .local_address(ip)
        .build()
        .expect("client")
}

fn report(name: &str, tally: &Tally, elapsed: f64, per: &str, goal: f64, keys: f64) {
    let accepted = tally.accepted.load(Ordering::Relaxed) as f64;
    let rate = accepted / (elapsed / 60.0) / keys;
    println!(
        "{name}: {accepted} guesses checked, {} throttled (429), {} other, in {elapsed:.1} s \
         → {rate:.1} accepted guesses/min {per} (goal ≤ {goal}) {}",
        tally.throttled.load(Ordering::Relaxed),
        tally.other.load(Ordering::Relaxed),
        if rate <= goal { "OK" } else { "OVER" },
    );
}

fn main() {
    let seconds = arg("--seconds", 60);
    let max = arg("--max-guesses", 3000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let toml = format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"{d}/data\"\n[certs]\nkey_file = \"{d}/k.pem\"\n\
             cert_file = \"{d}/c.pem\"\n[log]\nlevel = \"warn\"\n",
            d = dir.path().display()
        );
        let config = Config::from_toml(&toml).expect("config");
        let app = App::build(config).await.expect("app");
        let state = app.state.clone();
        let mut accounts = Vec::new();
        for n in 0..20 {
            let name = format!("victim{n}");
            let changes = UserChanges::new()
                .with(Attribute::Username, &name)
                .with(Attribute::Email, format!("{name}@contoso.com"))
                .with(Attribute::Firstname, "Vic")
                .with(Attribute::Lastname, "Tim");
            let password = SecretString::from("Right horse 1!".to_string());
            state
                .directory
                .create_user(&Actor::System, &changes, Some(&password), Utc::now())
                .await
                .expect("user");
            accounts.push(name);
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(idbridge::server::run(app, listener, async move {
            let _ = rx.await;
        }));

        println!(
            "guess-bench: {seconds} s per phase, at most {max} guesses per phase, loopback only"
        );
        // Phase 1: one account from 200 addresses (127.0.0.2 … 127.0.0.201).
        let many: Vec<reqwest::Client> = (2..=201u8)
            .map(|n| client_from(IpAddr::from([127, 0, 0, n])))
            .collect();
        let one_account = Arc::new(vec![accounts[0].clone()]);
        let (tally, elapsed) = phase(&base, seconds, max, Arc::new(many), one_account).await;
        report(
            "one account, 200 addresses",
            &tally,
            elapsed,
            "for the account",
            10.0,
            1.0,
        );

        // Phase 2: many accounts (existing and not) from one address.
        let single = vec![client_from(IpAddr::from([127, 0, 0, 250]))];
        let mut names: Vec<String> = accounts[1..].to_vec();
        names.extend((0..200).map(|n| format!("nobody{n}")));
        let (tally, elapsed) = phase(&base, seconds, max, Arc::new(single), Arc::new(names)).await;
        report(
            "one address, 219 accounts",
            &tally,
            elapsed,
            "from the address",
            30.0,
            1.0,
        );

        let _ = tx.send(());
        let _ = server.await;
    });
}
