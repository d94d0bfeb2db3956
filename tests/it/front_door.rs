//! The front door under attack: slow and idle connections, the connection cap, shutdown with a
//! request in flight, security headers, the client address behind a proxy, malformed tokens.

use std::time::{Duration, Instant};

use idbridge::directory::AdminRole;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::console::admin_browser;
use crate::support::TestApp;

fn addr(app: &TestApp) -> String {
    app.base_url.trim_start_matches("http://").to_string()
}

/// Reads until the peer closes (Ok with what was read) or `limit` passes (Err).
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Result<String, String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return Err(String::from_utf8_lossy(&out).into_owned()),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(String::from_utf8_lossy(&out).into_owned()),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn a_connection_sending_a_partial_header_is_closed_after_the_header_read_timeout() {
    let app = TestApp::spawn_with("[server]\nheader_read_timeout_seconds = 1\n").await;
    let mut slow = TcpStream::connect(addr(&app)).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let started = Instant::now();
    let closed = read_until_closed(&mut slow, Duration::from_secs(5)).await;
    assert!(closed.is_ok(), "a slow-header connection stays open");
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn over_the_connection_cap_extra_connections_get_503_and_health_recovers() {
    let app =
        TestApp::spawn_with("[server]\nmax_connections = 20\nheader_read_timeout_seconds = 1\n")
            .await;
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(addr(&app)).await.unwrap());
    }
    // Let the server accept them all before the extra ones arrive.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut shed = 0;
    for _ in 0..10 {
        let mut extra = TcpStream::connect(addr(&app)).await.unwrap();
        let answer = read_until_closed(&mut extra, Duration::from_secs(3))
            .await
            .unwrap_or_default();
        if answer.starts_with("HTTP/1.1 503") {
            shed += 1;
        }
    }
    assert_eq!(shed, 10, "connections over the cap are answered 503");
    // The silent ones are closed by the header-read timeout; health answers again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = reqwest::get(app.url("/healthz")).await.unwrap();
    assert_eq!(r.status(), 200);
    drop(idle);
}

#[tokio::test]
async fn shutdown_with_a_half_sent_request_finishes_within_the_deadline() {
    let app = TestApp::spawn_with("[server]\nshutdown_timeout_seconds = 1\n").await;
    let mut half = TcpStream::connect(addr(&app)).await.unwrap();
    half.write_all(
        b"POST /admin/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\nusername=",
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let stopped = tokio::time::timeout(Duration::from_secs(6), app.stop()).await;
    assert!(
        stopped.is_ok(),
        "run did not return after the shutdown deadline"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    drop(half);
}

#[tokio::test]
async fn every_page_has_a_csp_and_the_console_keeps_its_own() {
    let app = TestApp::spawn().await;
    for path in ["/", "/no/such/page", "/healthz"] {
        let r = reqwest::get(app.url(path)).await.unwrap();
        let csp = r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(csp.contains("default-src 'none'"), "{path}: {csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
        assert!(r.headers().get("referrer-policy").is_some());
        assert!(
            r.headers().get("strict-transport-security").is_none(),
            "no HSTS over http"
        );
    }
    let r = reqwest::get(app.url("/admin/login")).await.unwrap();
    let csp = r.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'"), "console CSP: {csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "console CSP: {csp}");
}

#[tokio::test]
async fn hsts_only_with_an_https_base_url() {
    let app = TestApp::spawn_with("base_url = \"https://idp.example.com\"\n").await;
    for path in ["/", "/admin/login", "/saml/metadata"] {
        let r = reqwest::get(app.url(path)).await.unwrap();
        assert_eq!(
            r.headers()["strict-transport-security"],
            "max-age=31536000; includeSubDomains",
            "{path}"
        );
    }
}

async fn failed_login_ip(app: &TestApp, forwarded_for: &str) -> Option<String> {
    let client = app.browser();
    let _ = client
        .post(app.url("/admin/login"))
        .header("x-forwarded-for", forwarded_for)
        .form(&[("username", "nobody"), ("password", "x"), ("csrf", "x")])
        .send()
        .await
        .unwrap();
    let mut events = app.events("admin_access_denied").await;
    events.extend(app.events("admin_login_failed").await);
    events.into_iter().next().and_then(|e| e.client_ip)
}

#[tokio::test]
async fn x_forwarded_for_is_honoured_only_from_a_trusted_proxy() {
    let trusted =
        TestApp::spawn_with("[server]\ntrusted_proxies = [\"127.0.0.0/8\", \"10.0.0.0/8\"]\n")
            .await;
    let ip = failed_login_ip(&trusted, "198.51.100.66, 203.0.113.7, 10.9.9.9").await;
    assert_eq!(ip.as_deref(), Some("203.0.113.7"));

    let untrusted = TestApp::spawn_with("[server]\ntrusted_proxies = [\"10.0.0.0/8\"]\n").await;
    let ip = failed_login_ip(&untrusted, "203.0.113.7").await;
    assert_eq!(
        ip.as_deref(),
        Some("127.0.0.1"),
        "the header is ignored from other peers"
    );
}

#[tokio::test]
async fn a_csrf_token_of_the_wrong_length_gets_403_not_a_panic() {
    let app = TestApp::spawn().await;
    let admin = admin_browser(&app, "root", AdminRole::Admin).await;
    for token in ["short", &"a".repeat(65), ""] {
        let r = admin
            .client
            .post(app.url("/admin/settings/keys"))
            .form(&[("name", "forged"), ("role", "admin"), ("csrf", token)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "token {token:?}");
    }
}

#[test]
fn bad_server_settings_stop_start_up_naming_the_setting() {
    for (toml, setting) in [
        ("[server]\nmax_connections = 0\n", "server.max_connections"),
        (
            "[server]\nheader_read_timeout_seconds = 0\n",
            "server.header_read_timeout_seconds",
        ),
        (
            "[server]\ntrusted_proxies = [\"10.0.0.0/33\"]\n",
            "server.trusted_proxies",
        ),
    ] {
        let err = idbridge::config::Config::from_toml(toml)
            .unwrap_err()
            .to_string();
        assert!(err.contains(setting) && err.contains("Fix:"), "{err}");
    }
}

#[tokio::test]
async fn a_silent_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let app = TestApp::spawn_with("[server]\nidle_timeout_seconds = 1\n").await;
    let r = reqwest::get(app.url("/healthz")).await.unwrap();
    assert_eq!(r.status(), 200);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // A fresh connection is not idle before it has had the chance to send anything.
    let mut conn = TcpStream::connect(addr(&app)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(2), conn.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Then, silent, it is closed after about a second.
    let started = Instant::now();
    let closed = read_until_closed(&mut conn, Duration::from_secs(4)).await;
    assert!(closed.is_ok(), "an idle keep-alive connection stays open");
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// SIGTERM with a half-sent request: the real binary exits within the shutdown deadline and
/// what it holds in memory for later writing is in the database afterwards.
///
/// Two kinds of state are pending at the signal: the answered request ID of an IsPassive
/// AuthnRequest (the write-behind queue of `store::write_behind`) and the counted repeats of a
/// refused API key (`throttle::refusals`, written when their minute ends or at shutdown). Both
/// are written by tasks that run only after the server has stopped serving. Without the
/// deadline, the half-sent body keeps the graceful shutdown waiting for the 600 s request
/// timeout: the process would not exit in time (the first assertion fails), and a supervisor's
/// SIGKILL would lose the counted refusals (the last assertion would fail).
#[tokio::test]
async fn sigterm_with_a_half_sent_request_exits_by_the_deadline_and_writes_pending_state() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let toml = format!(
        "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{d}/data\"\n\
         [certs]\nkey_file = \"{d}/certs/signing.key\"\ncert_file = \"{d}/certs/signing.crt\"\n\
         [server]\nshutdown_timeout_seconds = 1\nrequest_timeout_seconds = 600\n\
         header_read_timeout_seconds = 600\nidle_timeout_seconds = 600\n",
        d = dir.path().display()
    );
    let config_path = dir.path().join("idbridge.toml");
    std::fs::write(&config_path, &toml).unwrap();
    let mut child = Command::new(crate::support::binary())
        .arg("serve")
        .current_dir(dir.path())
        .env("IDBRIDGE_CONFIG", &config_path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("serve starts");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let started = Instant::now();
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "never healthy");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // An IsPassive AuthnRequest without a session: answered NoPassive, its ID queued.
    let request_id = "_shutdown-test-request";
    let xml = format!(
        r#"<samlp:AuthnRequest xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" ID="{request_id}" Version="2.0" IssueInstant="{}" IsPassive="true"><Issuer xmlns="urn:oasis:names:tc:SAML:2.0:assertion">urn:federation:MicrosoftOnline</Issuer></samlp:AuthnRequest>"#,
        chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ")
    );
    let r = client
        .get(format!("{base}/saml/sso"))
        .query(&[("SAMLRequest", idbridge::saml::encode_redirect(&xml))])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Twenty bad API keys: the first is written at once, the other 19 are counted in memory.
    const GUESSES: u64 = 20;
    for n in 0..GUESSES {
        let r = client
            .get(format!("{base}/api/v1/me"))
            .bearer_auth(format!("idb_guess{n}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    let mut half = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    half.write_all(
        b"POST /admin/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\nusername=",
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let signalled = Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if signalled.elapsed() > Duration::from_secs(8) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let Some(status) = status else {
        let _ = child.kill(); // the supervisor's SIGKILL
        let _ = child.wait();
        panic!("SIGTERM did not stop the server within 8 s of a 1 s shutdown deadline");
    };
    let took = signalled.elapsed();
    assert!(status.success(), "exit status {status}");
    assert!(took < Duration::from_secs(4), "exit took {took:?}");
    drop(half);

    let config = idbridge::config::Config::from_toml(&toml).unwrap();
    let store = idbridge::store::Store::connect(&config.database_url())
        .await
        .unwrap();
    let guards = store
        .live_request_ids(chrono::Utc::now().timestamp_millis())
        .await
        .unwrap();
    assert!(
        guards.iter().any(|g| g.request_id == request_id),
        "the answered request ID was written: {guards:?}"
    );
    let rows = store
        .list_events(&idbridge::store::EventFilter {
            event_type: Some("admin_access_denied".into()),
            limit: 100,
            ..idbridge::store::EventFilter::default()
        })
        .await
        .unwrap();
    let total: u64 = rows
        .iter()
        .map(|e| {
            serde_json::from_str::<serde_json::Value>(&e.details)
                .ok()
                .and_then(|d| d["count"].as_u64())
                .unwrap_or(1)
        })
        .sum();
    assert_eq!(
        total, GUESSES,
        "every refusal counted in memory was written"
    );
}
