//! The front door under attack: sign-in throttling per account and per address, aggregated
//! refusal events, and event retention.

use std::net::IpAddr;
use std::time::Duration;

use base64::Engine;
use chrono::Utc;
use idbridge::directory::AdminRole;
use idbridge::events::{Actor, NewEvent};

use crate::support::console::{admin_browser, ADMIN_PASSWORD};
use crate::support::{binary, hidden_input, lock_starts, TestApp};

const PASSWORD: &str = "Correct horse 1!";
const WRONG: &str = "Wrong horse 1!";

fn ip(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, n])
}

/// Opens the SSO sign-in page with a fresh AuthnRequest and submits one name and password
/// from `from`; returns the status and body.
async fn sso_attempt(app: &TestApp, from: IpAddr, username: &str, password: &str) -> (u16, String) {
    let client = app.browser_from(from);
    let id = format!("_{}", idbridge::saml::new_id());
    let xml = format!(
        r#"<samlp:AuthnRequest ID="{id}" Version="2.0" IssueInstant="{at}" xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol"><Issuer xmlns="urn:oasis:names:tc:SAML:2.0:assertion">urn:federation:MicrosoftOnline</Issuer></samlp:AuthnRequest>"#,
        at = Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ"),
    );
    let encoded = base64::engine::general_purpose::STANDARD.encode(xml);
    let page = client
        .post(app.url("/saml/sso"))
        .form(&[("SAMLRequest", encoded.as_str())])
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let pending = hidden_input(&page, "pending").unwrap_or_else(|| panic!("login form: {page}"));
    let r = client
        .post(app.url("/saml/login"))
        .form(&[
            ("pending", pending.as_str()),
            ("username", username),
            ("password", password),
        ])
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body = r.text().await.unwrap();
    // The pending token differs on every page; the rest must not.
    match hidden_input(&body, "pending").filter(|t| !t.is_empty()) {
        Some(token) => (status, body.replace(&token, "TOKEN")),
        None => (status, body),
    }
}

async fn app_with_user(extra: &str) -> TestApp {
    let app = TestApp::spawn_with(&format!(
        "[saml]\nissuer = \"https://idp.example.com/saml/contoso.com\"\n{extra}"
    ))
    .await;
    let user = app
        .create_user("alice", "alice@contoso.com", PASSWORD)
        .await;
    app.bind(&user, "yU+2g8ZoAE2X4a4AAfw+KQ==", "alice.smith@contoso.com")
        .await;
    app
}

#[tokio::test]
async fn the_eleventh_guess_at_one_account_from_rotating_addresses_is_refused_until_the_lock_expires(
) {
    let app = app_with_user("[sign_in]\nlock_seconds = 2\n").await;
    for n in 0..10 {
        let (status, body) = sso_attempt(&app, ip(10 + n), "alice", WRONG).await;
        assert_eq!(status, 401, "guess {n}: {body}");
    }
    let (status, body) = sso_attempt(&app, ip(40), "alice", WRONG).await;
    assert_eq!(status, 429, "{body}");
    assert!(
        body.contains("Too many sign-in attempts. Try again in 1 minute."),
        "{body}"
    );
    // The right password is refused too while locked, without being checked.
    let (status, _) = sso_attempt(&app, ip(41), "Alice", PASSWORD).await;
    assert_eq!(status, 429);
    let throttled = lock_starts(&app, "sign_in_throttled").await;
    assert_eq!(throttled.len(), 1, "one event when the lock starts");
    assert!(throttled[0].details.contains("\"account\""));
    assert!(!throttled[0].details.contains(WRONG) && !throttled[0].details.contains(PASSWORD));
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let (status, body) = sso_attempt(&app, ip(42), "alice", PASSWORD).await;
    assert_eq!(status, 200, "signed in after the lock: {body}");
    assert!(body.contains("SAMLResponse"), "{body}");
}

#[tokio::test]
async fn an_unknown_account_is_locked_and_answered_exactly_like_an_existing_one() {
    let app = app_with_user("").await;
    for name in ["alice", "nobody"] {
        for n in 0..10 {
            let (status, _) = sso_attempt(&app, ip(50 + n), name, WRONG).await;
            assert_eq!(status, 401);
        }
    }
    let (s1, existing) = sso_attempt(&app, ip(70), "alice", PASSWORD).await;
    let (s2, unknown) = sso_attempt(&app, ip(71), "nobody", PASSWORD).await;
    assert_eq!((s1, s2), (429, 429));
    assert_eq!(
        existing.replace("alice", "NAME"),
        unknown.replace("nobody", "NAME")
    );
    // Wrong guesses get the same answer too.
    let (s1, existing) = sso_attempt(&app, ip(72), "alice", WRONG).await;
    let (s2, unknown) = sso_attempt(&app, ip(72), "nobody", WRONG).await;
    assert_eq!((s1, s2), (429, 429));
    assert_eq!(
        existing.replace("alice", "NAME"),
        unknown.replace("nobody", "NAME")
    );
    assert_eq!(lock_starts(&app, "sign_in_throttled").await.len(), 2);
}

#[tokio::test]
async fn thirty_guesses_across_accounts_from_one_address_lock_the_address() {
    let app = app_with_user("").await;
    for n in 0..30 {
        let (status, _) = sso_attempt(&app, ip(80), &format!("user{n}"), WRONG).await;
        assert_eq!(status, 401, "guess {n}");
    }
    let (status, body) = sso_attempt(&app, ip(80), "alice", PASSWORD).await;
    assert_eq!(status, 429, "{body}");
    // Another address is not affected, and the account is not locked.
    let (status, _) = sso_attempt(&app, ip(81), "alice", PASSWORD).await;
    assert_eq!(status, 200);
    let throttled = lock_starts(&app, "sign_in_throttled").await;
    assert_eq!(throttled.len(), 1);
    assert!(throttled[0].details.contains("\"address\""));
    assert_eq!(throttled[0].client_ip.as_deref(), Some("127.0.0.80"));
}

#[tokio::test]
async fn many_users_signing_in_at_once_behind_one_address_lock_nothing() {
    // An office behind one address at nine o'clock: more right passwords in flight at once
    // than the address's failure limit. Attempts beyond what the limit could absorb are
    // told to retry in seconds; nothing is locked, and the address signs in afterwards.
    let app = app_with_user("[sign_in]\naddress_max_failures = 3\n").await;
    let mut names = vec!["alice".to_string()];
    for n in 0..11 {
        let name = format!("staff{n}");
        app.create_user(&name, &format!("{name}@contoso.com"), PASSWORD)
            .await;
        names.push(name);
    }
    let attempts = names
        .iter()
        .map(|name| sso_attempt(&app, ip(90), name, PASSWORD));
    let outcomes = futures_util::future::join_all(attempts).await;
    let mut crowded = 0;
    for (status, body) in &outcomes {
        match status {
            200 | 403 => {}
            429 => {
                assert!(body.contains("Try again in a few seconds"), "{body}");
                crowded += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(crowded < outcomes.len(), "some sign-ins were checked");
    assert!(
        lock_starts(&app, "sign_in_throttled").await.is_empty(),
        "no lock"
    );
    let (status, body) = sso_attempt(&app, ip(90), "alice", PASSWORD).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn concurrent_guesses_never_check_more_passwords_than_the_limit() {
    // Twenty wrong guesses at one account at once, from twenty addresses: at most the
    // account's limit of them reach the password check, and then the account locks.
    let app = app_with_user("[sign_in]\naccount_max_failures = 5\n").await;
    let checks_before = app.state().directory.sign_in_checks();
    let guesses = (0..20u8).map(|n| sso_attempt(&app, ip(100 + n), "alice", WRONG));
    let outcomes = futures_util::future::join_all(guesses).await;
    let checked = outcomes.iter().filter(|(s, _)| *s == 401).count();
    assert!(checked <= 5, "{checked} guesses were checked");
    assert!(outcomes.iter().all(|(s, _)| *s == 401 || *s == 429));
    assert!(app.state().directory.sign_in_checks() - checks_before <= 5);
    // Once five have failed, the next attempt locks the account, right password or not.
    let mut locked = false;
    for n in 0..6u8 {
        let (status, body) = sso_attempt(&app, ip(200 + n), "alice", WRONG).await;
        if status == 429 && body.contains("minute") {
            locked = true;
            break;
        }
    }
    assert!(locked, "the account locks after its limit of failures");
    let (status, _) = sso_attempt(&app, ip(250), "alice", PASSWORD).await;
    assert_eq!(
        status, 429,
        "locked: the right password is refused unchecked"
    );
}

#[tokio::test]
async fn a_locked_check_is_cheap() {
    let app = app_with_user("[sign_in]\naccount_max_failures = 1\n").await;
    let (status, _) = sso_attempt(&app, ip(90), "alice", WRONG).await;
    assert_eq!(status, 401);
    let started = std::time::Instant::now();
    for _ in 0..5 {
        assert_eq!(sso_attempt(&app, ip(91), "alice", PASSWORD).await.0, 429);
    }
    let locked = started.elapsed();
    // Counted by the directory: the six attempts above checked exactly one password.
    assert_eq!(app.state().directory.sign_in_checks(), 1);
    let started = std::time::Instant::now();
    for n in 0..5 {
        let name = format!("bob{n}");
        assert_eq!(sso_attempt(&app, ip(92), &name, WRONG).await.0, 401);
    }
    let checked = started.elapsed();
    // No argon2 hash while locked: clearly faster than answers that verify a password.
    assert!(locked < checked, "locked {locked:?} vs checked {checked:?}");
}

async fn console_attempt(app: &TestApp, from: IpAddr, user: &str, password: &str) -> u16 {
    let client = app.browser_from(from);
    let page = client
        .get(app.url("/admin/login"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let token = hidden_input(&page, "csrf").unwrap();
    client
        .post(app.url("/admin/login"))
        .form(&[
            ("csrf", token.as_str()),
            ("username", user),
            ("password", password),
        ])
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn console_guesses_lock_the_guessers_address_not_the_admin_and_the_cli_unlocks() {
    let app = TestApp::spawn().await;
    admin_browser(&app, "root", AdminRole::Admin).await;
    for _ in 0..5 {
        assert_eq!(console_attempt(&app, ip(100), "root", WRONG).await, 401);
    }
    assert_eq!(
        console_attempt(&app, ip(100), "root", ADMIN_PASSWORD).await,
        429
    );
    // The real admin, elsewhere, still signs in.
    assert_eq!(
        console_attempt(&app, ip(101), "root", ADMIN_PASSWORD).await,
        303
    );
    let throttled = lock_starts(&app, "admin_login_throttled").await;
    assert_eq!(throttled.len(), 1);
    assert!(throttled[0].details.contains("\"address\""));

    // 20 failures for the name, from many addresses, lock the name itself.
    for n in 0..20 {
        assert_eq!(console_attempt(&app, ip(110 + n), "root", WRONG).await, 401);
    }
    assert_eq!(
        console_attempt(&app, ip(140), "root", ADMIN_PASSWORD).await,
        429
    );

    // `idbridge admin unlock` clears the name and the address.
    let config = app.dir.path().join("unlock.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\ndatabase_url = \"{}\"\n",
            app.dir.path().join("data").display(),
            app.config.database_url()
        ),
    )
    .unwrap();
    let out = tokio::process::Command::new(binary())
        .args(["--config"])
        .arg(&config)
        .args(["admin", "unlock", "root", "--address", "127.0.0.100"])
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{printed} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(printed.contains("root: unlocked"), "{printed}");
    assert!(printed.contains("127.0.0.100: unlocked"), "{printed}");
    assert_eq!(
        console_attempt(&app, ip(140), "root", ADMIN_PASSWORD).await,
        303
    );
    assert_eq!(
        console_attempt(&app, ip(100), "root", ADMIN_PASSWORD).await,
        303
    );
}

#[tokio::test]
async fn bad_api_key_guesses_are_aggregated_into_few_events() {
    let app = TestApp::spawn().await;
    let client = reqwest::Client::new();
    for n in 0..200 {
        let r = client
            .get(app.url("/api/v1/me"))
            .bearer_auth(format!("idb_guess{n}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    let immediate = app.events("admin_access_denied").await.len();
    assert!(immediate <= 2, "{immediate} rows before the flush");
    let (rows, total) = app.refusal_count("admin_access_denied").await;
    assert_eq!(total, 200);
    assert!(rows <= 4, "{rows} rows");
}

#[tokio::test]
async fn events_past_the_retention_are_purged() {
    let app = TestApp::spawn_with("[events]\nretention_days = 30\n").await;
    let now = Utc::now();
    for (days, target) in [(31, "old"), (1, "recent")] {
        let event = NewEvent::new(
            now - chrono::Duration::days(days),
            &Actor::System,
            "test_retention",
            Some(target),
        );
        app.store.record_event(&event).await.unwrap();
    }
    idbridge::server::purge_old(app.state(), now.timestamp_millis()).await;
    let left = app.events("test_retention").await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].target.as_deref(), Some("recent"));
}

#[test]
fn a_bad_throttle_setting_names_itself() {
    let err = idbridge::config::Config::from_toml("[sign_in]\nwindow_seconds = 0\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("sign_in.window_seconds"), "{err}");
}
