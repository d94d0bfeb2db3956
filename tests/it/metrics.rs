//! `/metrics`: a sign-in and a wrong password move the counters, the scrape carries no user
//! names or addresses, and every metric named in contrib/ exists in a scrape.

use std::collections::BTreeSet;

use idbridge::telemetry::metrics::names;

use crate::sso::{
    app_with_bound_user, authn_request, auto_post, request_id, sign_in, sso_post, submit_login,
    EMAIL, USERNAME,
};
use crate::support::TestApp;

/// One sample of the text format: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

fn parse(scrape: &str) -> Vec<Sample> {
    scrape
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("sample has a value");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let inner = rest.strip_suffix('}').expect("labels end with }");
                    let labels = inner
                        .split(',')
                        .filter(|pair| !pair.is_empty())
                        .map(|pair| {
                            let (k, v) = pair.split_once('=').expect("label has =");
                            (k.to_string(), v.trim_matches('"').to_string())
                        })
                        .collect();
                    (name.to_string(), labels)
                }
                None => (series.to_string(), Vec::new()),
            };
            Sample {
                name,
                labels,
                value: value.parse().unwrap_or(f64::NAN),
            }
        })
        .collect()
}

/// The sum of the samples of `name` whose labels include `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        })
        .map(|s| s.value)
        .sum()
}

async fn scrape(client: &reqwest::Client, url: &str) -> (String, Vec<Sample>) {
    let response = client.get(url).send().await.expect("GET /metrics");
    assert_eq!(response.status(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    assert_eq!(
        response
            .headers()
            .get("x-content-type-options")
            .map(|v| v.as_bytes()),
        Some(&b"nosniff"[..]),
        "the usual headers"
    );
    let body = response.text().await.expect("body");
    let samples = parse(&body);
    (body, samples)
}

/// Every `idbridge_…` metric name a contrib file mentions.
fn contrib_names() -> BTreeSet<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib");
    let mut found = BTreeSet::new();
    for file in ["grafana/idbridge.json", "prometheus/alerts.yml"] {
        let text = std::fs::read_to_string(root.join(file)).expect("contrib file");
        let mut rest = text.as_str();
        while let Some(at) = rest.find("idbridge_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(tail.len());
            found.insert(tail[..end].to_string());
            rest = &tail[end..];
        }
    }
    found
}

#[tokio::test]
async fn a_sign_in_and_a_wrong_password_move_the_metrics() {
    let (app, _) = app_with_bound_user().await;
    let metrics = reqwest::Client::new();
    let url = app.url("/metrics");
    let (_, before) = scrape(&metrics, &url).await;

    let browser = app.browser();
    let page = sign_in(
        &browser,
        &app,
        &authn_request(&request_id(), ""),
        None,
        USERNAME,
    )
    .await;
    auto_post(&page);
    let other = app.browser();
    let page = sso_post(&other, &app, &authn_request(&request_id(), ""), None).await;
    let wrong = submit_login(&other, &app, &page, USERNAME, "Wrong horse 1!").await;
    assert_eq!(wrong.status, 401, "{}", wrong.body);

    let (body, after) = scrape(&metrics, &url).await;
    // Counters are process-wide and other tests run alongside: they only ever grow, so
    // "moved by at least this test's share" is what holds.
    let moved = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    assert!(
        moved(names::SSO_RESPONSES, &[("sp", "m365")]) >= 1.0,
        "{body}"
    );
    assert!(
        moved(names::SIGN_IN_FAILURES, &[("form", "sso")]) >= 1.0,
        "{body}"
    );
    let logins = format!("{}_count", names::SSO_DURATION);
    assert!(moved(&logins, &[("route", "/saml/login")]) >= 2.0, "{body}");
    assert!(moved(&logins, &[("route", "/saml/sso")]) >= 2.0, "{body}");
    // Gauges read at scrape time. The replay cache is in memory on SQLite only: on
    // PostgreSQL the answered IDs are the database's (shared by the nodes).
    if !crate::support::TestApp::on_postgres() {
        assert!(value(&after, names::REPLAY_IDS_HELD, &[]) >= 1.0, "{body}");
    }
    assert!(
        value(&after, names::CERT_EXPIRY, &[]) > 86_400.0 * 300.0,
        "a fresh certificate has years left: {body}"
    );
    assert!(
        value(&after, names::DB_POOL_CONNECTIONS, &[]) >= 1.0,
        "{body}"
    );
    assert!(after
        .iter()
        .any(|s| s.name == names::OUTBOX_OLDEST_AGE && s.value >= 0.0));
    for name in names::ALL {
        assert!(
            body.contains(&format!("# TYPE {name} ")),
            "{name} is exported: {body}"
        );
    }

    // Safe to expose: no user names, emails or client addresses.
    for secret in [USERNAME, EMAIL, "127.0.0.1"] {
        assert!(!body.contains(secret), "{secret} in the scrape: {body}");
    }

    // Every metric the dashboard and the alert rules use exists.
    let exported: BTreeSet<&str> = after.iter().map(|s| s.name.as_str()).collect();
    let names = contrib_names();
    assert!(names.len() >= 10, "{names:?}");
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !exported.contains(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "contrib/ names {missing:?}, not in: {body}"
    );
}

#[tokio::test]
async fn metrics_on_a_separate_address_or_off() {
    // A free port: bound, then released for the server to take.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let app = TestApp::spawn_with(&format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n")).await;
    let client = reqwest::Client::new();
    let main = client.get(app.url("/metrics")).send().await.expect("GET");
    assert_eq!(main.status(), 404, "not on the public listener");
    let (body, _) = scrape(&client, &format!("http://127.0.0.1:{port}/metrics")).await;
    assert!(body.contains(names::CERT_EXPIRY), "{body}");

    let off = TestApp::spawn_with("[metrics]\nenabled = false\n").await;
    let answer = client.get(off.url("/metrics")).send().await.expect("GET");
    assert_eq!(answer.status(), 404);
}

#[tokio::test]
async fn graph_throttling_token_and_import_show_in_the_metrics() {
    use idbridge::events::Actor;
    use idbridge::m365::ImportSelection;

    let (app, fake) = crate::support::m365::connected("", "").await;
    fake.add_users(3, "contoso.com");
    let client = reqwest::Client::new();
    let url = app.url("/metrics");
    let (_, before) = scrape(&client, &url).await;
    // A refused token (401) makes idbridge fetch a new one; a 429 makes it wait and retry.
    fake.expire_access_tokens();
    fake.throttle_next(1, "0.05");
    let report = app
        .state()
        .m365
        .import(
            &app.state().directory,
            &Actor::Admin("root".into()),
            &ImportSelection::All,
            chrono::Utc::now(),
            |_| {},
        )
        .await
        .expect("imported");
    assert_eq!(report.imported, 3);

    let (body, after) = scrape(&client, &url).await;
    let moved = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    assert!(
        moved(
            names::GRAPH_REQUESTS,
            &[("method", "GET"), ("status", "200")]
        ) >= 1.0,
        "{body}"
    );
    assert!(
        moved(
            names::GRAPH_REQUESTS,
            &[("method", "GET"), ("status", "429")]
        ) >= 1.0,
        "{body}"
    );
    assert!(
        moved(
            names::GRAPH_THROTTLED,
            &[("method", "GET"), ("retry_after", "true")]
        ) >= 1.0,
        "{body}"
    );
    assert!(
        moved(names::IMPORT_RUNS, &[("outcome", "finished")]) >= 1.0,
        "{body}"
    );
    assert!(moved(names::IMPORTED_USERS, &[]) >= 3.0, "{body}");
    assert!(
        moved(names::TOKEN_REFRESHES, &[("outcome", "ok")]) >= 1.0,
        "{body}"
    );
}

/// `promtool` (Debian's prometheus package, which `scripts/test` installs).
fn promtool() -> std::path::PathBuf {
    let found = std::process::Command::new("sh")
        .args(["-c", "command -v promtool"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|p| !p.is_empty());
    match found {
        Some(path) => path.into(),
        None => panic!(
            "promtool is missing: run ./scripts/test, which installs Debian's prometheus package"
        ),
    }
}

#[test]
fn the_alert_rules_are_valid_prometheus_and_fire_when_they_should() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/prometheus");
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
    ] {
        let out = std::process::Command::new(promtool())
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("promtool runs");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
