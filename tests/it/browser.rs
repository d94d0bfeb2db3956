//! Browser tests of the admin console and the user portal: the real server, connected to the Graph fake, driven by
//! headless Chromium through the playwright scripts in `tests/browser/` (one browser per test).
//! `./scripts/test` installs Chromium and the scripts' npm packages; without them these tests
//! fail and say so, rather than skip.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use chrono::Utc;
use idbridge::directory::{AdminRole, Attribute, UserChanges};
use idbridge::events::Actor;
use secrecy::{ExposeSecret, SecretString};

use crate::support::graph_fake::{FakeUserSpec, GraphFake};
use crate::support::TestApp;

/// The password the scripts choose at the admin's first sign-in.
const NEW_PASSWORD: &str = "Browser-Passw0rd-2026";

/// A hung browser must not hang the suite.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chromium() -> PathBuf {
    std::env::var_os("IDBRIDGE_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// Where the screenshots go, for anyone to look at the pages.
fn screenshot_dir() -> PathBuf {
    repo().join("target/screenshots")
}

/// Fails (never skips) when the browser tooling is missing, naming the command that installs it.
fn require_browser_tooling() {
    let chromium = chromium();
    assert!(
        chromium.exists(),
        "Chromium is missing at {}: run ./scripts/test, which installs it (Debian package chromium)",
        chromium.display()
    );
    assert!(
        repo()
            .join("tests/browser/node_modules/playwright-core")
            .is_dir(),
        "tests/browser/node_modules is missing: run ./scripts/test, which runs \
         `npm ci --prefix tests/browser`"
    );
    let node = std::process::Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "node is missing: install Node.js 20 or newer (Debian/Ubuntu: apt-get install nodejs npm), \
         then run ./scripts/test"
    );
}

/// A server connected (client credentials) to a fake tenant whose default domain is
/// contoso.com; sync retries are quick so bindings settle within a second.
async fn connected() -> (TestApp, GraphFake) {
    crate::support::m365::connected("", "").await
}

async fn settled(app: &TestApp, key: &str, state: &str) {
    crate::support::m365::settled(app, key, state).await;
}

/// Creates the full admin `name` and returns its one-time password.
async fn one_time_admin(app: &TestApp, name: &str) -> SecretString {
    app.state()
        .directory
        .create_admin(&Actor::System, name, AdminRole::Admin, Utc::now())
        .await
        .expect("admin created")
}

/// Runs `node tests/browser/<script>` against `app` as admin `name` and asserts it passed,
/// printing its output (step by step, with timings) when it did not.
async fn run_script(app: &TestApp, script: &str, name: &str, one_time: &SecretString) {
    run_node(
        app,
        script,
        &[
            ("IDBRIDGE_ADMIN", name),
            ("IDBRIDGE_ADMIN_ONE_TIME_PASSWORD", one_time.expose_secret()),
            ("IDBRIDGE_ADMIN_NEW_PASSWORD", NEW_PASSWORD),
        ],
    )
    .await;
}

/// Runs `node tests/browser/<script>` against `app` with `env` and asserts it passed.
async fn run_node(app: &TestApp, script: &str, env: &[(&str, &str)]) {
    let started = Instant::now();
    let child = tokio::process::Command::new("node")
        .arg(repo().join("tests/browser").join(script))
        .current_dir(repo().join("tests/browser"))
        .env("IDBRIDGE_URL", &app.base_url)
        .envs(env.iter().copied())
        .env("IDBRIDGE_SCREENSHOT_DIR", screenshot_dir())
        .env("IDBRIDGE_CHROMIUM", chromium())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node starts");
    let output = tokio::time::timeout(SCRIPT_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{script} did not finish within {SCRIPT_TIMEOUT:?}"))
        .expect("node ran");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!(
        "{script} ({:.1} s):\n{text}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        output.status.success(),
        "{script} failed ({}):\n{text}",
        output.status
    );
}

#[tokio::test]
async fn an_admin_signs_in_creates_and_binds_a_user_changes_the_export_and_signs_out() {
    require_browser_tooling();
    let (app, fake) = connected().await;
    let one_time = one_time_admin(&app, "root").await;
    // The bind's first Graph request is throttled (Retry-After 1.5 s), so the binding page shows
    // the user pending and must refresh its rows by itself to show them bound.
    fake.throttle_next(1, "1.5");

    run_script(&app, "console_flows.mjs", "root", &one_time).await;

    let dana = app.state().directory.get_user("dana").await.expect("dana");
    assert_eq!(
        (dana.email.as_str(), dana.firstname.as_str()),
        ("dana@contoso.com", "Dana")
    );
    assert_eq!(dana.m365.map(|b| b.state.as_str()), Some("bound"));
    let m365 = fake.user("dana@contoso.com").expect("created in M365");
    assert_eq!(m365["givenName"], "Dana");
    let table = app.state().sync.attribute_table().await.unwrap();
    let department = table
        .iter()
        .find(|(m, _)| m.attribute == "department")
        .map(|(_, d)| d.as_str());
    assert_eq!(department, Some("export"));

    let admin = app.store.find_admin("root").await.unwrap().expect("root");
    assert_eq!(
        admin.must_change_password, 0,
        "the one-time password was replaced"
    );
    let key = app
        .store
        .list_api_keys()
        .await
        .unwrap()
        .into_iter()
        .find(|k| k.name == "browser test")
        .expect("the key created in the browser");
    assert_eq!(key.role, "read_only");
    assert_eq!(key.created_by, "admin:root");
    assert_eq!(key.revoked_by.as_deref(), Some("admin:root"));
    for event_type in [
        "user_create",
        "m365_bind",
        "integrationattribute_include",
        "admin_login_success",
        "admin_password_change",
        "api_key_create",
        "api_key_revoke",
        "admin_logout",
    ] {
        let events = app.events(event_type).await;
        assert!(
            events.iter().any(|e| e.actor == "admin:root"),
            "{event_type} by admin:root: {events:?}"
        );
    }
}

/// The files a screenshot named `name` is saved as: 1280 and 390 px wide (`lib.mjs`'s WIDTHS).
fn at_both_widths(name: &str) -> [PathBuf; 2] {
    [
        screenshot_dir().join(format!("{name}.png")),
        screenshot_dir().join(format!("{name}-390.png")),
    ]
}

#[tokio::test]
async fn the_overview_checklist_advances_as_the_admin_connects_and_the_sign_in_chart_is_drawn() {
    require_browser_tooling();
    let (app, _fake) = crate::support::m365::configured("", "").await;
    // Two failed sign-ins for the chart (an unknown name: nothing on the checklist moves).
    let browser = app.browser();
    for _ in 0..2 {
        let xml = crate::sso::authn_request(&crate::sso::request_id(), "");
        let form = crate::sso::sso_post(&browser, &app, &xml, None).await;
        let page = crate::sso::submit_login(&browser, &app, &form, "mallory", "guess").await;
        assert!(page.has_login_form(), "asked again");
    }
    let one_time = one_time_admin(&app, "root").await;

    run_script(&app, "overview_flows.mjs", "root", &one_time).await;

    let status = app.state().m365.status().await.unwrap();
    assert_eq!(status.state, "connected");
    assert!(app
        .events("m365_connect")
        .await
        .iter()
        .any(|e| e.actor == "admin:root"));
}

#[tokio::test]
async fn an_admin_disables_enables_and_resets_another_admin_in_the_console() {
    require_browser_tooling();
    let app = TestApp::spawn().await;
    let one_time = one_time_admin(&app, "root").await;
    let bob = crate::support::console::admin_browser(&app, "bob", AdminRole::Admin).await;

    run_script(&app, "admins_flows.mjs", "root", &one_time).await;

    let (status, _) = bob.get(&app, "/admin").await;
    assert_eq!(status, 303, "bob's session ended when he was disabled");
    let row = app.store.find_admin("bob").await.unwrap().expect("bob");
    assert!(row.disabled_at.is_none(), "enabled again");
    assert_eq!(row.must_change_password, 1, "a one-time password");
    for event_type in ["admin_disable", "admin_enable", "admin_password_reset"] {
        let events = app.events(event_type).await;
        assert!(
            events
                .iter()
                .any(|e| e.actor == "admin:root" && e.target.as_deref() == Some("bob")),
            "{event_type} by admin:root: {events:?}"
        );
    }
}

/// The pages `screenshots.mjs` saves, by file name.
const SCREENSHOTS: [&str; 13] = [
    "login",
    "password",
    "overview",
    "users",
    "user",
    "binding",
    "m365",
    "saml",
    "events",
    "settings",
    "user-new",
    "branding",
    "admin-mfa",
];

#[tokio::test]
async fn screenshots_of_every_console_page() {
    require_browser_tooling();
    let (app, fake) = connected().await;
    // Something on every page: a bound user with every attribute, a failed binding (a federated
    // domain's account without an immutable ID), an unbound user, and tenant users to import.
    fake.add_domain("fed.example", true, false);
    fake.add_user(FakeUserSpec {
        upn: "erin@fed.example".into(),
        account_enabled: true,
        ..FakeUserSpec::default()
    });
    for (upn, given, surname) in [
        ("frank@contoso.com", "Frank", "Miller"),
        ("grace@contoso.com", "Grace", "Hopper"),
    ] {
        fake.add_user(FakeUserSpec {
            upn: upn.into(),
            given_name: Some(given.into()),
            surname: Some(surname.into()),
            account_enabled: true,
            ..FakeUserSpec::default()
        });
    }
    let alice = UserChanges::new()
        .with(Attribute::Username, "alice")
        .with(Attribute::Email, "alice@contoso.com")
        .with(Attribute::Firstname, "Alice")
        .with(Attribute::Lastname, "Andersson")
        .with(Attribute::AlternateEmail, "alice.a@example.org")
        .with(Attribute::JobTitle, "Head of Finance")
        .with(Attribute::Department, "Finance")
        .with(Attribute::Location, "Stockholm")
        .with(Attribute::WorkStreetAddress, "Kungsgatan 1")
        .with(Attribute::WorkLocality, "Stockholm")
        .with(Attribute::WorkPostalCode, "111 43")
        .with(Attribute::WorkCountry, "SE")
        .with(Attribute::WorkPhone, "+46 8 123 456")
        .with(Attribute::MobilePhone, "+46 70 123 4567");
    app.state()
        .directory
        .create_user(&Actor::System, &alice, None, Utc::now())
        .await
        .expect("alice");
    app.create_user("bob", "bob@contoso.com", "Corr3ct-Horse-Battery")
        .await;
    app.create_user("carol", "carol@contoso.com", "Corr3ct-Horse-Battery")
        .await;
    app.create_user("erin", "erin@fed.example", "Corr3ct-Horse-Battery")
        .await;
    let keys = ["alice", "bob", "erin"].map(String::from);
    app.state()
        .sync
        .bind(&Actor::Admin("root".into()), &keys, Utc::now())
        .await
        .expect("bind accepted");
    settled(&app, "alice", "bound").await;
    settled(&app, "bob", "bound").await;
    settled(&app, "erin", "failed").await;
    let one_time = one_time_admin(&app, "root").await;
    for path in SCREENSHOTS.iter().flat_map(|n| at_both_widths(n)) {
        let _ = std::fs::remove_file(path);
    }

    run_script(&app, "screenshots.mjs", "root", &one_time).await;

    for path in SCREENSHOTS.iter().flat_map(|n| at_both_widths(n)) {
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{} was not written: {e}", path.display()));
        assert!(
            bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
            "{} is not a PNG",
            path.display()
        );
        assert!(
            bytes.len() > 5_000,
            "{} is suspiciously small ({} bytes): a blank page?",
            path.display(),
            bytes.len()
        );
    }
}

/// The portal screens `portal_flows.mjs` saves, by file name (`portal-<name>.png`).
const PORTAL_SCREENSHOTS: [&str; 12] = [
    "login",
    "login-refused",
    "overview",
    "password",
    "password-refused",
    "password-changed",
    "signed-out",
    "forgot",
    "forgot-sent",
    "reset",
    "reset-done",
    "reset-used",
];

#[tokio::test]
async fn an_employee_signs_in_to_the_portal_changes_the_password_and_resets_another_by_mail() {
    require_browser_tooling();
    let sink = crate::support::smtp_sink::SmtpSink::start().await;
    let (app, fake) = crate::support::m365::connected("", &sink.settings()).await;
    let password = "Corr3ct-Horse-Battery";
    let new_password = "Portal-Passw0rd-2026";
    let pia = UserChanges::new()
        .with(Attribute::Username, "pia")
        .with(Attribute::Email, "pia@contoso.com")
        .with(Attribute::Firstname, "Pia")
        .with(Attribute::Lastname, "Persson")
        .with(Attribute::JobTitle, "Engineer")
        .with(Attribute::Department, "Platform")
        .with(Attribute::Location, "Malmö");
    app.state()
        .directory
        .create_user(
            &Actor::System,
            &pia,
            Some(&SecretString::from(password.to_string())),
            Utc::now(),
        )
        .await
        .expect("pia");
    app.state()
        .sync
        .set_direction(&Actor::System, "department", "export", Utc::now())
        .await
        .expect("department exported");
    app.create_user("rita", "rita@contoso.com", password).await;
    let keys = ["pia", "rita"].map(String::from);
    app.state()
        .sync
        .bind(&Actor::Admin("root".into()), &keys, Utc::now())
        .await
        .expect("bind accepted");
    settled(&app, "pia", "bound").await;
    settled(&app, "rita", "bound").await;

    // Rita forgot her password: the link arrives through the SMTP sink.
    let client = app.browser();
    let form = client
        .get(app.url("/password/forgot"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = crate::support::hidden_input(&form, "csrf").expect("form token");
    let r = client
        .post(app.url("/password/forgot"))
        .form(&[("csrf", csrf.as_str()), ("username", "rita")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mail = sink.wait_for(1).await.remove(0);
    let token = mail.link_param("token").expect("a reset link");
    let reset_url = app.url(&format!("/password/reset?token={token}"));
    for path in PORTAL_SCREENSHOTS
        .iter()
        .flat_map(|n| at_both_widths(&format!("portal-{n}")))
    {
        let _ = std::fs::remove_file(path);
    }

    run_node(
        &app,
        "portal_flows.mjs",
        &[
            ("IDBRIDGE_USER", "pia"),
            ("IDBRIDGE_USER_PASSWORD", password),
            ("IDBRIDGE_USER_NEW_PASSWORD", new_password),
            ("IDBRIDGE_RESET_URL", &reset_url),
        ],
    )
    .await;

    for path in PORTAL_SCREENSHOTS
        .iter()
        .flat_map(|n| at_both_widths(&format!("portal-{n}")))
    {
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{} was not written: {e}", path.display()));
        assert!(
            bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 5_000,
            "{}",
            path.display()
        );
    }
    // Both new passwords reached Microsoft 365, each change ending the M365 sessions.
    for upn in ["pia@contoso.com", "rita@contoso.com"] {
        crate::support::m365::eventually(&format!("{upn}'s new password in M365"), || async {
            let user = fake.user(upn)?;
            (user["passwordProfile"]["password"] == new_password
                && user["signInSessionsValidFromDateTime"].is_string())
            .then_some(())
        })
        .await;
    }
    assert!(app
        .events("password_reset_used")
        .await
        .iter()
        .any(|e| e.target.as_deref() == Some("rita")));
    // The unknown address typed in the browser got no mail.
    assert_eq!(sink.messages().len(), 1);
}

/// The screens `totp_flows.mjs` saves, by file name (`totp-<name>.png`).
const TOTP_SCREENSHOTS: [&str; 6] = [
    "setup",
    "setup-refused",
    "recovery-codes",
    "overview",
    "verify",
    "verify-refused",
];

#[tokio::test]
async fn an_employee_sets_up_an_authenticator_app_in_the_portal_and_signs_in_with_it() {
    require_browser_tooling();
    let app = TestApp::spawn().await;
    let password = "Corr3ct-Horse-Battery";
    app.create_user("tove", "tove@contoso.com", password).await;
    for name in TOTP_SCREENSHOTS {
        let _ = std::fs::remove_file(screenshot_dir().join(format!("totp-{name}.png")));
    }
    run_node(
        &app,
        "totp_flows.mjs",
        &[
            ("IDBRIDGE_USER", "tove"),
            ("IDBRIDGE_USER_PASSWORD", password),
        ],
    )
    .await;
    for name in TOTP_SCREENSHOTS {
        let path = screenshot_dir().join(format!("totp-{name}.png"));
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{} was not written: {e}", path.display()));
        assert!(
            bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 5_000,
            "{}",
            path.display()
        );
    }
    for kind in [
        "mfa_totp_enrolled",
        "mfa_recovery_codes_created",
        "mfa_recovery_code_used",
    ] {
        assert_eq!(app.events(kind).await.len(), 1, "{kind}");
    }
    assert_eq!(app.events("mfa_failed").await.len(), 2);
}

/// The end-to-end promise: a fresh install (only the Graph fake's URLs configured, as
/// Microsoft's are built in) reaches bound users and a registered SAML application through the
/// console alone.
#[tokio::test]
async fn from_a_fresh_install_to_bound_users_without_editing_a_file() {
    require_browser_tooling();
    let fake = GraphFake::start().await;
    fake.add_domain("contoso.com", false, true);
    fake.add_user(FakeUserSpec {
        upn: "frank@contoso.com".into(),
        given_name: Some("Frank".into()),
        surname: Some("Miller".into()),
        account_enabled: true,
        ..FakeUserSpec::default()
    });
    let app = TestApp::spawn_with(&format!(
        "[m365]\nlogin_base_url = \"{}\"\ngraph_base_url = \"{}\"\n",
        fake.login_base_url(),
        fake.graph_base_url()
    ))
    .await;
    let one_time = one_time_admin(&app, "root").await;
    run_node(
        &app,
        "setup_flows.mjs",
        &[
            ("IDBRIDGE_ADMIN", "root"),
            ("IDBRIDGE_ADMIN_ONE_TIME_PASSWORD", one_time.expose_secret()),
            ("IDBRIDGE_ADMIN_NEW_PASSWORD", NEW_PASSWORD),
            ("IDBRIDGE_TENANT", GraphFake::TENANT_ID),
            ("IDBRIDGE_CLIENT_ID", GraphFake::CLIENT_ID),
            ("IDBRIDGE_CLIENT_SECRET", GraphFake::CLIENT_SECRET),
        ],
    )
    .await;

    let stored = app.store.app_registration().await.unwrap().expect("stored");
    assert_eq!(stored.client_id.as_deref(), Some(GraphFake::CLIENT_ID));
    assert!(!stored
        .client_secret_sealed
        .unwrap()
        .contains(GraphFake::CLIENT_SECRET));
    let frank = app
        .state()
        .directory
        .get_user("frank")
        .await
        .expect("imported");
    let status = app.state().sync.user_status(&frank).await.unwrap();
    assert_eq!(
        status.state,
        Some(idbridge::binding::BindingState::Bound),
        "{status:?}"
    );
    assert!(fake
        .user("frank@contoso.com")
        .is_some_and(|u| u["onPremisesImmutableId"].is_string()));
    let sps = app.store.service_providers().await.unwrap();
    assert_eq!(sps.len(), 1);
    assert_eq!(sps[0].entity_id, "https://wiki.example.com/saml");
    assert_eq!(sps[0].name_id, "email");
    assert_eq!(
        sps[0].attributes,
        [
            ("mail".to_string(), "email".to_string()),
            ("givenName".to_string(), "firstname".to_string())
        ]
    );
    assert!(sps[0].updated_by.starts_with("admin:root"));
}
