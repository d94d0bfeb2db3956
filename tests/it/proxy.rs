//! idbridge behind nginx with TLS, using the example in contrib/nginx/idbridge.conf as an
//! operator would (only its ports, certificate and upstream changed): requests pass, the
//! client address comes from nginx and never from the client's own X-Forwarded-For, and the
//! request id travels through.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::TestApp;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn the_nginx_example_proxies_with_tls_and_the_client_address_cannot_be_spoofed() {
    assert!(
        std::process::Command::new("nginx")
            .arg("-v")
            .output()
            .is_ok(),
        "nginx is missing: run ./scripts/test, which installs it (Debian package nginx-light)"
    );
    let app = TestApp::spawn_with("[server]\ntrusted_proxies = [\"127.0.0.1\"]\n").await;
    let upstream = app.base_url.trim_start_matches("http://").to_string();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, key, cert) = idbridge::saml::SigningCredential::generate(2048, "localhost", 1).unwrap();
    std::fs::write(d.join("tls.key"), key).unwrap();
    std::fs::write(d.join("tls.crt"), cert).unwrap();
    let tls_port = free_port();
    let plain_port = free_port();
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/nginx/idbridge.conf"),
    )
    .unwrap();
    let site = example
        .replace(
            "listen 443 ssl;",
            &format!("listen 127.0.0.1:{tls_port} ssl;"),
        )
        .replace("listen 80;", &format!("listen 127.0.0.1:{plain_port};"))
        .replace(
            "/etc/ssl/certs/idp.contoso.com.pem",
            d.join("tls.crt").to_str().unwrap(),
        )
        .replace(
            "/etc/ssl/private/idp.contoso.com.key",
            d.join("tls.key").to_str().unwrap(),
        )
        .replace("http://127.0.0.1:8080", &format!("http://{upstream}"));
    assert_ne!(site, example);
    std::fs::write(d.join("idbridge.conf"), site).unwrap();
    let p = d.display();
    std::fs::write(
        d.join("nginx.conf"),
        format!(
            "daemon off;\nmaster_process off;\npid {p}/nginx.pid;\nerror_log {p}/error.log;\n\
             events {{}}\nhttp {{\n access_log off;\n client_body_temp_path {p}/body;\n\
             proxy_temp_path {p}/proxy;\n fastcgi_temp_path {p}/fastcgi;\n uwsgi_temp_path {p}/uwsgi;\n\
             scgi_temp_path {p}/scgi;\n include {p}/idbridge.conf;\n}}\n"
        ),
    )
    .unwrap();
    let mut nginx = tokio::process::Command::new("nginx")
        .arg("-p")
        .arg(d)
        .arg("-c")
        .arg(d.join("nginx.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("nginx starts");
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let base = format!("https://127.0.0.1:{tls_port}");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match client.get(format!("{base}/healthz")).send().await {
            Ok(r) if r.status() == 200 => break,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            other => {
                let _ = nginx.start_kill();
                let log = std::fs::read_to_string(d.join("error.log")).unwrap_or_default();
                panic!("nginx never proxied /healthz: {other:?}\n{log}");
            }
        }
    }

    // Plain http is sent to https.
    let r = client
        .get(format!("http://127.0.0.1:{plain_port}/admin"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 301);
    assert!(r.headers()["location"]
        .to_str()
        .unwrap()
        .starts_with("https://"));

    // A client naming itself in X-Forwarded-For: nginx overwrites it, so the event has the
    // address nginx saw, and the request id nginx made reaches idbridge and comes back.
    let r = client
        .post(format!("{base}/saml/sso"))
        .header("X-Forwarded-For", "203.0.113.7")
        .form(&[("SAMLRequest", "not-base64!")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 32, "nginx's $request_id: {id}");
    let events = app.events("saml_request_rejected").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].client_ip.as_deref(), Some("127.0.0.1"));
    // The example keeps /metrics off the public side; idbridge itself still serves it.
    let r = client.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let _ = nginx.start_kill();
    let _ = nginx.wait().await;
}
