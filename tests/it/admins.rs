//! Admin accounts managed by other admins (console, API, CLI) under the last-admin rule, and
//! admins' own second factor at console sign-in.

use chrono::Utc;
use idbridge::directory::AdminRole;
use idbridge::events::Actor;
use idbridge::mfa::totp::Generator;
use secrecy::ExposeSecret;
use serde_json::{json, Value};

use crate::support::console::{admin_browser, api_client, api_key, AdminBrowser, ADMIN_PASSWORD};
use crate::support::{hidden_input, html_unescape, TestApp};

/// Submits the console sign-in form in a fresh browser; returns it with the answer.
async fn sign_in(
    app: &TestApp,
    username: &str,
    password: &str,
) -> (reqwest::Client, reqwest::Response) {
    let client = app.browser();
    let page = client
        .get(app.url("/admin/login"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let token = hidden_input(&page, "csrf").expect("login form token");
    let r = client
        .post(app.url("/admin/login"))
        .form(&[
            ("csrf", token.as_str()),
            ("username", username),
            ("password", password),
            ("next", "/admin"),
        ])
        .send()
        .await
        .unwrap();
    (client, r)
}

fn location(r: &reqwest::Response) -> String {
    r.headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

async fn status_of(client: &reqwest::Client, app: &TestApp, path: &str) -> (u16, String) {
    let r = client.get(app.url(path)).send().await.unwrap();
    let status = r.status().as_u16();
    let target = location(&r);
    (status, target)
}

/// The text of `<code id="ID">…</code>` on a page.
fn code_by_id(page: &str, id: &str) -> String {
    let start = format!("<code id=\"{id}\">");
    let rest = page
        .split(&start)
        .nth(1)
        .unwrap_or_else(|| panic!("no {id} on the page: {page}"));
    html_unescape(rest.split("</code>").next().unwrap())
}

fn generator(secret_base32: &str) -> Generator {
    let bytes = totp_rs::Secret::Encoded(secret_base32.to_string())
        .to_bytes()
        .expect("base32 secret");
    Generator::new(bytes, "test", "test").expect("generator")
}

fn now_seconds() -> u64 {
    u64::try_from(Utc::now().timestamp()).unwrap()
}

/// A form post with the CSRF token taken from `page`.
async fn post_with(
    client: &reqwest::Client,
    app: &TestApp,
    page: &str,
    path: &str,
    fields: &[(&str, &str)],
) -> reqwest::Response {
    let csrf = hidden_input(page, "csrf").expect("csrf on the page");
    let mut form: Vec<(&str, &str)> = fields.to_vec();
    form.push(("csrf", &csrf));
    client.post(app.url(path)).form(&form).send().await.unwrap()
}

async fn api(
    client: &reqwest::Client,
    app: &TestApp,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = client.request(method.parse().unwrap(), app.url(path));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let r = request.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Disable, enable, reset, delete from the console; own account and last full admin refused;
/// a disabled admin's sign-in refused as an event, their session and API key dead at once.
#[tokio::test]
async fn admins_disable_enable_reset_and_delete_other_admins_from_the_console() {
    let app = TestApp::spawn().await;
    let alice = admin_browser(&app, "alice", AdminRole::Admin).await;
    let bob = admin_browser(&app, "bob", AdminRole::Admin).await;
    let carol = admin_browser(&app, "carol", AdminRole::ReadOnly).await;
    let bob_key = app
        .state()
        .directory
        .create_api_key(
            &Actor::Admin("bob".into()),
            "bob's script",
            AdminRole::Admin,
            Utc::now(),
        )
        .await
        .unwrap()
        .key
        .expose_secret()
        .to_string();
    let bob_api = api_client(&bob_key);
    assert_eq!(api(&bob_api, &app, "GET", "/api/v1/me", None).await.0, 200);

    // The page: buttons for other admins only, none for read-only admins.
    let (status, page) = alice.get(&app, "/admin/settings").await;
    assert_eq!(status, 200);
    assert!(
        page.contains("/admin/settings/admins/bob/disable"),
        "{page}"
    );
    assert!(page.contains("/admin/settings/admins/bob/reset"));
    assert!(
        !page.contains("/admin/settings/admins/alice/"),
        "no buttons on one's own row"
    );
    let (_, read_only) = carol.get(&app, "/admin/settings").await;
    assert!(
        !read_only.contains("/admin/settings/admins/bob/"),
        "{read_only}"
    );
    let r = carol
        .post(&app, "/admin/settings/admins/bob/disable", &[])
        .await;
    assert_eq!(r.status(), 403, "read-only admins change nothing");

    // Disable bob: his session and his API key stop at once, sign-in is refused.
    let r = alice
        .post(&app, "/admin/settings/admins/bob/disable", &[])
        .await;
    assert_eq!(r.status(), 303);
    let (status, target) = status_of(&bob.client, &app, "/admin").await;
    assert_eq!(status, 303);
    assert!(target.starts_with("/admin/login"), "{target}");
    let (status, body) = api(&bob_api, &app, "GET", "/api/v1/me", None).await;
    assert_eq!(status, 401, "{body}");
    let (_, r) = sign_in(&app, "bob", ADMIN_PASSWORD).await;
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("disabled"));
    let failed = app.events("admin_login_failed").await;
    assert!(
        failed
            .iter()
            .any(|e| e.target.as_deref() == Some("bob") && e.details.contains("disabled")),
        "{failed:?}"
    );
    let disabled = app.events("admin_disable").await;
    assert_eq!(disabled.len(), 1);
    assert_eq!(disabled[0].actor, "admin:alice");
    let (_, page) = alice.get(&app, "/admin/settings").await;
    assert!(page.contains("/admin/settings/admins/bob/enable"), "{page}");

    // Own account: refused with the reason, as an event.
    let r = alice
        .post(&app, "/admin/settings/admins/alice/disable", &[])
        .await;
    assert_eq!(r.status(), 409);
    assert!(r.text().await.unwrap().contains("your own admin account"));
    let r = alice
        .post(&app, "/admin/settings/admins/alice/delete", &[])
        .await;
    assert_eq!(r.status(), 409);
    assert_eq!(app.events("admin_change_refused").await.len(), 2);
    assert!(app
        .state()
        .store
        .find_admin("alice")
        .await
        .unwrap()
        .is_some());

    // Enable bob: sign-in and the key work again.
    let r = alice
        .post(&app, "/admin/settings/admins/bob/enable", &[])
        .await;
    assert_eq!(r.status(), 303);
    assert_eq!(api(&bob_api, &app, "GET", "/api/v1/me", None).await.0, 200);
    let (_, r) = sign_in(&app, "bob", ADMIN_PASSWORD).await;
    assert_eq!(r.status(), 303);
    assert_eq!(app.events("admin_enable").await.len(), 1);

    // Reset carol: a one-time password shown once, her session ended.
    let r = alice
        .post(&app, "/admin/settings/admins/carol/reset", &[])
        .await;
    assert_eq!(r.status(), 200);
    let page = r.text().await.unwrap();
    let one_time = code_by_id(&page, "reset-admin-password");
    let (status, _) = status_of(&carol.client, &app, "/admin").await;
    assert_eq!(status, 303, "carol's session ended");
    let (_, r) = sign_in(&app, "carol", ADMIN_PASSWORD).await;
    assert_eq!(r.status(), 401, "the old password is gone");
    let (_, r) = sign_in(&app, "carol", &one_time).await;
    assert_eq!(r.status(), 303);
    assert_eq!(location(&r), "/admin/password", "to be changed at once");
    assert_eq!(app.events("admin_password_reset").await.len(), 1);

    // Demote and promote carol.
    let r = alice
        .post(
            &app,
            "/admin/settings/admins/carol/role",
            &[("role", "admin")],
        )
        .await;
    assert_eq!(r.status(), 303);
    let carol_row = app
        .state()
        .store
        .find_admin("carol")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(carol_row.role, "admin");
    assert_eq!(app.events("admin_role_change").await.len(), 1);

    // Delete bob: gone, his key revoked.
    let r = alice
        .post(&app, "/admin/settings/admins/bob/delete", &[])
        .await;
    assert_eq!(r.status(), 303);
    assert!(app.state().store.find_admin("bob").await.unwrap().is_none());
    assert_eq!(api(&bob_api, &app, "GET", "/api/v1/me", None).await.0, 401);
    assert_eq!(app.events("admin_delete").await.len(), 1);
}

/// The last active full admin cannot be disabled, deleted or made read-only: from the API
/// (409 `last_admin`), the console or the CLI.
#[tokio::test]
async fn the_last_active_full_admin_is_never_disabled_deleted_or_demoted() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let alice = admin_browser(&app, "alice", AdminRole::Admin).await;
    admin_browser(&app, "bob", AdminRole::Admin).await;
    admin_browser(&app, "reader", AdminRole::ReadOnly).await;
    // A key made by the CLI acts for no admin account.
    let key = api_key(&app, "ops", AdminRole::Admin).await;
    let ops = api_client(&key);

    let (status, list) = api(&ops, &app, "GET", "/api/v1/admins", None).await;
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 3, "{list}");

    let (status, bob) = api(&ops, &app, "POST", "/api/v1/admins/bob/disable", None).await;
    assert_eq!(status, 200, "{bob}");
    assert_eq!(bob["state"], "disabled");
    // Now alice is the only active full admin.
    for (method, path, body) in [
        ("POST", "/api/v1/admins/alice/disable", None),
        ("DELETE", "/api/v1/admins/alice", None),
        (
            "PUT",
            "/api/v1/admins/alice/role",
            Some(json!({"role": "read_only"})),
        ),
    ] {
        let (status, body) = api(&ops, &app, method, path, body).await;
        assert_eq!(status, 409, "{method} {path}: {body}");
        assert_eq!(body["error"]["code"], "last_admin", "{body}");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("last active full admin"));
    }
    let alice_row = app
        .state()
        .store
        .find_admin("alice")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(alice_row.role, "admin");
    assert!(alice_row.disabled_at.is_none());
    let refused = app.events("admin_change_refused").await;
    assert_eq!(refused.len(), 3);
    assert!(refused.iter().all(|e| e.details.contains("last_admin")));
    // A read-only admin does not count, and is not protected by the rule.
    let (status, _) = api(&ops, &app, "POST", "/api/v1/admins/reader/disable", None).await;
    assert_eq!(status, 200);

    // The CLI: the same rule, a clear message, nothing changed.
    let out = app
        .cli_output(dir.path(), &["admin", "disable", "alice"])
        .await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("last active full admin"), "{stderr}");
    let out = app
        .cli_output(dir.path(), &["admin", "delete", "alice"])
        .await;
    assert!(!out.status.success());
    assert!(app
        .state()
        .store
        .find_admin("alice")
        .await
        .unwrap()
        .is_some());
    // And what it may do.
    let out = app.cli(dir.path(), &["admin", "enable", "bob"]).await;
    assert!(out.contains("bob: enabled"), "{out}");
    let out = app
        .cli(dir.path(), &["admin", "reset-password", "bob"])
        .await;
    assert!(out.contains("One-time password"), "{out}");
    let out = app.cli(dir.path(), &["admin", "disable", "alice"]).await;
    assert!(out.contains("alice: disabled"), "{out}");
    let (status, _) = status_of(&alice.client, &app, "/admin").await;
    assert_eq!(status, 303, "alice's session ended");
    let (status, body) = api(&ops, &app, "DELETE", "/api/v1/admins/bob", None).await;
    assert_eq!(status, 409, "bob is the last active full admin now: {body}");
    let (status, _) = api(&ops, &app, "DELETE", "/api/v1/admins/nobody", None).await;
    assert_eq!(status, 404);

    // A key acts for its creator, who cannot disable themselves with it.
    let bobs = app
        .state()
        .directory
        .create_api_key(
            &Actor::Admin("bob".into()),
            "bob's",
            AdminRole::Admin,
            Utc::now(),
        )
        .await
        .unwrap();
    let bob_api = api_client(bobs.key.expose_secret());
    let (status, body) = api(&bob_api, &app, "POST", "/api/v1/admins/bob/disable", None).await;
    assert_eq!(status, 409);
    assert_eq!(body["error"]["code"], "own_account", "{body}");
    let (status, body) = api(
        &bob_api,
        &app,
        "POST",
        "/api/v1/admins/alice/reset-password",
        Some(json!({"removeMfa": true})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["oneTimePassword"].as_str().unwrap().len() >= 12);
}

/// Enrols an admin's authenticator app on their own page; returns the base32 secret. The
/// confirming code is the previous step's, so the current one is still unused.
async fn enrol(app: &TestApp, admin: &AdminBrowser) -> String {
    let (status, page) = admin.get(app, "/admin/mfa").await;
    assert_eq!(status, 200);
    assert!(page.contains("/admin/mfa/setup"), "{page}");
    let r = admin.post(app, "/admin/mfa/setup", &[]).await;
    assert_eq!(r.status(), 200);
    let page = r.text().await.unwrap();
    assert!(page.contains("data:image/svg+xml;base64,"), "a QR code");
    let secret = code_by_id(&page, "totp-secret");
    let r = admin
        .post(app, "/admin/mfa/confirm", &[("code", "000000")])
        .await;
    assert_eq!(r.status(), 401, "a wrong confirming code is refused");
    let code = generator(&secret).code_at(now_seconds() - 30);
    let r = admin
        .post(app, "/admin/mfa/confirm", &[("code", &code)])
        .await;
    assert_eq!(r.status(), 200);
    let page = r.text().await.unwrap();
    assert!(page.contains("id=\"recovery-codes\""), "{page}");
    secret
}

/// The recovery codes shown after an enrolment.
fn recovery_codes(page: &str) -> Vec<String> {
    page.split("id=\"recovery-codes\"")
        .nth(1)
        .unwrap()
        .split("</ul>")
        .next()
        .unwrap()
        .split("<code>")
        .skip(1)
        .map(|c| c.split("</code>").next().unwrap().to_string())
        .collect()
}

/// An admin with an authenticator app is asked for its code (or a recovery code) after the
/// password; a half-signed-in session reaches nothing else; wrong codes are refused, as
/// events, and throttled; another admin's reset can remove the factor.
#[tokio::test]
async fn admin_sign_in_asks_for_the_authenticator_code_and_throttles_guessing() {
    let app = TestApp::spawn_with("[mfa]\nmax_failures = 3").await;
    let alice = admin_browser(&app, "alice", AdminRole::Admin).await;
    let bob = admin_browser(&app, "bob", AdminRole::Admin).await;
    let secret = enrol(&app, &alice).await;
    assert_eq!(app.events("mfa_totp_enrolled").await.len(), 1);
    let (_, page) = bob.get(&app, "/admin/settings").await;
    assert!(
        page.contains("authenticator app"),
        "the list shows alice's factor"
    );

    // Password, then the code.
    let (client, r) = sign_in(&app, "alice", ADMIN_PASSWORD).await;
    assert_eq!(r.status(), 303);
    assert_eq!(location(&r), "/admin/login/code");
    let (status, target) = status_of(&client, &app, "/admin/users").await;
    assert_eq!(
        (status, target.as_str()),
        (303, "/admin/login/code"),
        "nothing else yet"
    );
    let page = client
        .get(app.url("/admin/login/code"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let r = post_with(
        &client,
        &app,
        &page,
        "/admin/login/code",
        &[("code", "123456")],
    )
    .await;
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("wrong"));
    // The wrong confirming code at enrolment, and this one.
    assert_eq!(app.events("mfa_failed").await.len(), 2);
    let code = generator(&secret).code_at(now_seconds());
    let r = post_with(
        &client,
        &app,
        &page,
        "/admin/login/code",
        &[("code", &code)],
    )
    .await;
    assert_eq!(r.status(), 303);
    assert_eq!(location(&r), "/admin");
    let (status, _) = status_of(&client, &app, "/admin/users").await;
    assert_eq!(status, 200, "signed in");
    let success = app.events("admin_login_success").await;
    assert!(
        success.iter().any(|e| e.details.contains("totp")),
        "{success:?}"
    );
    // The same code does not sign in twice.
    let (again, _) = sign_in(&app, "alice", ADMIN_PASSWORD).await;
    let r = post_with(
        &again,
        &app,
        &page_of(&again, &app).await,
        "/admin/login/code",
        &[("code", &code)],
    )
    .await;
    assert_eq!(r.status(), 401, "a code is accepted once");

    // New recovery codes; one signs in once.
    let r = alice.post(&app, "/admin/mfa/recovery-codes", &[]).await;
    assert_eq!(r.status(), 200);
    let codes = recovery_codes(&r.text().await.unwrap());
    assert_eq!(codes.len(), 10);
    let (client, _) = sign_in(&app, "alice", ADMIN_PASSWORD).await;
    let page = page_of(&client, &app).await;
    let r = post_with(
        &client,
        &app,
        &page,
        "/admin/login/code",
        &[("code", &codes[0])],
    )
    .await;
    assert_eq!(r.status(), 303);
    assert_eq!(app.events("mfa_recovery_code_used").await.len(), 1);

    // Guessing: locked after max_failures, even the right code then.
    let (client, _) = sign_in(&app, "alice", ADMIN_PASSWORD).await;
    let page = page_of(&client, &app).await;
    let mut statuses = Vec::new();
    for guess in ["111111", "222222", "333333", "444444"] {
        let r = post_with(
            &client,
            &app,
            &page,
            "/admin/login/code",
            &[("code", guess)],
        )
        .await;
        statuses.push(r.status().as_u16());
    }
    assert_eq!(
        statuses,
        [401, 401, 401, 429],
        "locked after three wrong codes"
    );
    let r = post_with(
        &client,
        &app,
        &page,
        "/admin/login/code",
        &[("code", &codes[1])],
    )
    .await;
    assert_eq!(r.status(), 429, "refused while locked, right or wrong");
    assert!(!crate::support::lock_starts(&app, "mfa_throttled")
        .await
        .is_empty());

    // Bob resets alice and removes her factor: she signs in with the one-time password only.
    let r = bob
        .post(
            &app,
            "/admin/settings/admins/alice/reset",
            &[("remove_mfa", "1")],
        )
        .await;
    assert_eq!(r.status(), 200);
    let page = r.text().await.unwrap();
    assert!(page.contains("authenticator app and recovery codes were removed"));
    let one_time = code_by_id(&page, "reset-admin-password");
    let reset = app.events("mfa_reset").await;
    assert_eq!(reset.len(), 1);
    assert_eq!(reset[0].actor, "admin:bob");
    assert_eq!(reset[0].target.as_deref(), Some("alice"));
    let (_, r) = sign_in(&app, "alice", &one_time).await;
    assert_eq!(location(&r), "/admin/password", "no code asked any more");
}

async fn page_of(client: &reqwest::Client, app: &TestApp) -> String {
    client
        .get(app.url("/admin/login/code"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// `[admin] require_mfa = true`: an admin without a factor sets one up at the next sign-in,
/// before anything else, and cannot remove it.
#[tokio::test]
async fn require_mfa_makes_admins_enrol_at_next_sign_in() {
    let app = TestApp::spawn_with("[admin]\nrequire_mfa = true").await;
    let one_time = app
        .state()
        .directory
        .create_admin(&Actor::System, "alice", AdminRole::ReadOnly, Utc::now())
        .await
        .unwrap();
    let (client, r) = sign_in(&app, "alice", one_time.expose_secret()).await;
    assert_eq!(location(&r), "/admin/login/enrol");
    let (status, target) = status_of(&client, &app, "/admin/password").await;
    assert_eq!((status, target.as_str()), (303, "/admin/login/enrol"));
    let page = client
        .get(app.url("/admin/login/enrol"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let secret = code_by_id(&page, "totp-secret");
    let r = post_with(
        &client,
        &app,
        &page,
        "/admin/login/enrol",
        &[("code", "999999")],
    )
    .await;
    assert_eq!(r.status(), 401);
    let code = generator(&secret).code_at(now_seconds());
    let r = post_with(
        &client,
        &app,
        &page,
        "/admin/login/enrol",
        &[("code", &code)],
    )
    .await;
    assert_eq!(r.status(), 200);
    let done = r.text().await.unwrap();
    assert_eq!(recovery_codes(&done).len(), 10);
    // Then the one-time password is replaced, as always.
    let (status, target) = status_of(&client, &app, "/admin").await;
    assert_eq!((status, target.as_str()), (303, "/admin/password"));
    // And the factor stays.
    let csrf = hidden_input(&done, "csrf").unwrap();
    let r = client
        .post(app.url("/admin/mfa/remove"))
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let next_sign_in = sign_in(&app, "alice", one_time.expose_secret()).await.1;
    assert_eq!(location(&next_sign_in), "/admin/login/code");
}

/// `[admin] listen`: the console and the API answer only on their own address, the main
/// listener answers 404 for them and keeps everything else.
#[tokio::test]
async fn with_admin_listen_the_console_and_api_are_served_only_there() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let app = TestApp::spawn_with(&format!("[admin]\nlisten = \"127.0.0.1:{port}\"")).await;
    let console = format!("http://127.0.0.1:{port}");
    let key = api_key(&app, "ops", AdminRole::Admin).await;
    let api_caller = api_client(&key);
    let browser = app.browser();
    // The console listener is bound before the main one serves; wait for it all the same.
    let mut login = None;
    for _ in 0..50 {
        if let Ok(r) = browser.get(format!("{console}/admin/login")).send().await {
            login = Some(r);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(login.expect("the console address answers").status(), 200);

    for path in [
        "/admin",
        "/admin/login",
        "/api/v1/openapi.json",
        "/api/v1/me",
    ] {
        let r = api_caller.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path} on the main listener");
    }
    let r = browser.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200, "the rest stays on the main listener");
    let r = browser
        .get(format!("{console}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "and only there");
    let r = api_caller
        .get(format!("{console}/api/v1/me"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Signing in works on the console address.
    let one_time = app
        .state()
        .directory
        .create_admin(&Actor::System, "alice", AdminRole::Admin, Utc::now())
        .await
        .unwrap();
    let page = browser
        .get(format!("{console}/admin/login"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let token = hidden_input(&page, "csrf").unwrap();
    let r = browser
        .post(format!("{console}/admin/login"))
        .form(&[
            ("csrf", token.as_str()),
            ("username", "alice"),
            ("password", one_time.expose_secret()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(location(&r), "/admin/password");
}

/// The console address must differ from the main and the metrics ones, said with the fix.
#[test]
fn admin_listen_on_the_main_address_is_refused_with_the_fix() {
    let err = idbridge::config::Config::from_toml(
        "listen = \"127.0.0.1:8080\"\n[admin]\nlisten = \"127.0.0.1:8080\"\n",
    )
    .expect_err("refused");
    let text = err.to_string();
    assert!(text.contains("admin.listen"), "{text}");
    assert!(text.contains("choose another port"), "{text}");
}
