//! Admin sign-in, sessions, CSRF, roles and API keys.

use idbridge::directory::AdminRole;
use serde_json::Value;

use crate::support::console::{admin_browser, api_client, api_key, ADMIN_PASSWORD};
use crate::support::{hidden_input, lock_starts, TestApp};

async fn login_form(app: &TestApp, client: &reqwest::Client) -> String {
    let page = client
        .get(app.url("/admin/login"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    hidden_input(&page, "csrf").unwrap()
}

#[tokio::test]
async fn an_admin_signs_in_replaces_the_one_time_password_and_signs_out() {
    let app = TestApp::spawn().await;
    let admin = admin_browser(&app, "root", AdminRole::Admin).await;
    let (status, page) = admin.get(&app, "/admin").await;
    assert_eq!(status, 200);
    assert!(page.contains("Overview") && page.contains("root"), "{page}");
    assert_eq!(app.events("admin_login_success").await.len(), 1);
    assert_eq!(app.events("admin_password_change").await.len(), 1);

    let out = admin.post(&app, "/admin/logout", &[]).await;
    assert_eq!(out.status(), 303);
    assert_eq!(out.headers()["location"], "/admin/login");
    let (status, _) = admin.get(&app, "/admin").await;
    assert_eq!(status, 303, "the session is gone");
    assert_eq!(app.events("admin_logout").await.len(), 1);

    // The new password works; the one-time one is gone.
    let client = app.browser();
    let token = login_form(&app, &client).await;
    let ok = client
        .post(app.url("/admin/login"))
        .form(&[
            ("csrf", token.as_str()),
            ("username", "root"),
            ("password", ADMIN_PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 303);
    assert_eq!(ok.headers()["location"], "/admin");
}

#[tokio::test]
async fn session_cookies_are_httponly_samesite_and_secure_over_https() {
    let app = TestApp::spawn_with("base_url = \"https://idp.contoso.com\"\n").await;
    let client = app.browser();
    let r = client.get(app.url("/admin/login")).send().await.unwrap();
    let set_cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");
    assert!(set_cookie.contains("SameSite=Lax"), "{set_cookie}");
    assert!(set_cookie.contains("Secure"), "{set_cookie}");
    let csp = r.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
}

#[tokio::test]
async fn a_wrong_password_or_unknown_admin_gets_the_same_401_and_an_event() {
    let app = TestApp::spawn().await;
    admin_browser(&app, "root", AdminRole::Admin).await;
    for (user, password) in [("root", "wrong-Passw0rd!"), ("nobody", ADMIN_PASSWORD)] {
        let client = app.browser();
        let token = login_form(&app, &client).await;
        let r = client
            .post(app.url("/admin/login"))
            .form(&[
                ("csrf", token.as_str()),
                ("username", user),
                ("password", password),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let page = r.text().await.unwrap();
        assert!(page.contains("Wrong username or password."), "{page}");
    }
    let failed = app.events("admin_login_failed").await;
    assert_eq!(failed.len(), 2);
    assert!(failed.iter().all(|e| e.client_ip.is_some()));
}

#[tokio::test]
async fn the_sign_in_form_only_works_in_the_browser_that_loaded_it() {
    let app = TestApp::spawn().await;
    admin_browser(&app, "root", AdminRole::Admin).await;
    let attacker = app.browser();
    let token = login_form(&app, &attacker).await;
    let victim = app.browser();
    let r = victim
        .post(app.url("/admin/login"))
        .form(&[
            ("csrf", token.as_str()),
            ("username", "root"),
            ("password", ADMIN_PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let denied = app.events("admin_access_denied").await;
    assert!(denied[0].details.contains("csrf"));
}

#[tokio::test]
async fn pages_need_a_session_and_changes_need_the_csrf_token() {
    let app = TestApp::spawn().await;
    let anonymous = app.browser();
    let r = anonymous
        .get(app.url("/admin/settings"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(
        r.headers()["location"],
        "/admin/login?next=%2Fadmin%2Fsettings"
    );

    let admin = admin_browser(&app, "root", AdminRole::Admin).await;
    // A forged form (no token, or another token) changes nothing.
    for token in [None, Some("0".repeat(64))] {
        let mut form = vec![("name", "forged"), ("role", "admin")];
        if let Some(t) = &token {
            form.push(("csrf", t.as_str()));
        }
        let r = admin
            .client
            .post(app.url("/admin/settings/keys"))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
    }
    assert!(app.store.list_api_keys().await.unwrap().is_empty());
    // Repeated refusals in a minute are aggregated: count them, not the rows.
    assert_eq!(app.refusal_count("admin_access_denied").await.1, 2);
    let denied = app.events("admin_access_denied").await;
    assert!(denied
        .iter()
        .all(|e| e.actor == "admin:root" && e.details.contains("csrf")));
    // The header form of the token works too (for scripts).
    let r = admin
        .client
        .post(app.url("/admin/settings/keys"))
        .header("x-csrf-token", &admin.csrf)
        .form(&[("name", "via header"), ("role", "read_only")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_read_only_admin_sees_everything_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let viewer = admin_browser(&app, "auditor", AdminRole::ReadOnly).await;
    let (status, page) = viewer.get(&app, "/admin/settings").await;
    assert_eq!(status, 200);
    assert!(page.contains("(read-only)"));
    assert!(
        !page.contains("Create API key"),
        "no write forms for read-only admins"
    );
    let r = viewer
        .post(
            &app,
            "/admin/settings/keys",
            &[("name", "sneaky"), ("role", "admin")],
        )
        .await;
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("Read-only access"));
    assert!(app.store.list_api_keys().await.unwrap().is_empty());
    let denied = app.events("admin_access_denied").await;
    assert!(denied[0].details.contains("read_only") && denied[0].actor == "admin:auditor");
    // Their own password is theirs to change.
    let (status, _) = viewer.get(&app, "/admin/password").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn api_keys_are_shown_once_stored_hashed_and_revocable() {
    let app = TestApp::spawn().await;
    let admin = admin_browser(&app, "root", AdminRole::Admin).await;
    let r = admin
        .post(
            &app,
            "/admin/settings/keys",
            &[("name", "HR sync"), ("role", "admin")],
        )
        .await;
    assert_eq!(r.status(), 200);
    let page = r.text().await.unwrap();
    let start = page.find("id=\"new-api-key\">").unwrap() + "id=\"new-api-key\">".len();
    let key = page[start..start + 68].to_string();
    assert!(key.starts_with("idb_"), "{key}");
    let stored = app.store.list_api_keys().await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_ne!(stored[0].key_hash, key, "only a hash is stored");
    assert!(!stored[0].key_hash.contains(&key[4..]));
    let (_, again) = admin.get(&app, "/admin/settings").await;
    assert!(!again.contains(&key), "shown once");
    assert_eq!(app.events("api_key_create").await[0].actor, "admin:root");

    let me: Value = api_client(&key)
        .get(app.url("/api/v1/me"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["name"], "HR sync");
    assert_eq!(me["role"], "admin");

    let r = admin
        .post(
            &app,
            &format!("/admin/settings/keys/{}/revoke", stored[0].id),
            &[],
        )
        .await;
    assert_eq!(r.status(), 303);
    let r = api_client(&key)
        .get(app.url("/api/v1/me"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(app.events("api_key_revoke").await.len(), 1);
}

#[tokio::test]
async fn the_api_answers_401_without_saying_what_was_wrong() {
    let app = TestApp::spawn().await;
    let good = api_key(&app, "ok", AdminRole::ReadOnly).await;
    let anonymous = reqwest::Client::new();
    let missing = anonymous.get(app.url("/api/v1/me")).send().await.unwrap();
    let wrong = api_client("idb_0000000000000000000000000000000000000000000000000000000000000000")
        .get(app.url("/api/v1/me"))
        .send()
        .await
        .unwrap();
    let garbage = api_client("not-a-key")
        .get(app.url("/api/v1/me"))
        .send()
        .await
        .unwrap();
    let mut bodies = Vec::new();
    for r in [missing, wrong, garbage] {
        assert_eq!(r.status(), 401);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");
        bodies.push(body);
    }
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "no hint which part was wrong"
    );
    // Repeated refusals from one address are aggregated: fewer rows, the same count.
    let (rows, refusals) = app.refusal_count("admin_access_denied").await;
    assert_eq!(refusals, 3);
    assert!(rows <= 2, "{rows} rows");
    let ok = api_client(&good)
        .get(app.url("/api/v1/me"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

/// Sessions end after the idle timeout and after the absolute lifetime, whatever the activity.
#[tokio::test]
async fn console_sessions_expire_when_idle_and_after_their_lifetime() {
    let app = TestApp::spawn().await;
    admin_browser(&app, "root", AdminRole::Admin).await;
    let admin = app.store.find_admin("root").await.unwrap().unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let cases = [
        // (last activity, expiry, still valid?)
        (now - 60_000, now + 3_600_000, true),
        (now - 31 * 60_000, now + 3_600_000, false),
        (now - 60_000, now - 1, false),
    ];
    for (i, (last_seen, expires, valid)) in cases.into_iter().enumerate() {
        let token = format!("{i:064}");
        let hash = idbridge::web::token_hash(&token);
        app.store
            .insert_admin_session(
                &idbridge::store::NewAdminSession {
                    id_hash: &hash,
                    admin_id: &admin.id,
                    csrf_token: "csrf",
                    now_ms: last_seen,
                    expires_at: expires,
                    client_ip: None,
                    pending_step: None,
                },
                Some(&idbridge::events::NewEvent::new(
                    chrono::Utc::now(),
                    &idbridge::events::Actor::System,
                    "test_session",
                    None,
                )),
            )
            .await
            .unwrap();
        let r = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
            .get(app.url("/admin"))
            .header("cookie", format!("idbridge_admin={token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status() == 200, valid, "case {i}: {}", r.status());
        if !valid {
            assert!(
                app.store.find_admin_session(&hash).await.unwrap().is_none(),
                "ended"
            );
        }
    }
}

#[tokio::test]
async fn repeated_failed_sign_ins_lock_the_address_for_a_while_whatever_the_name() {
    let app =
        TestApp::spawn_with("[admin]\nlogin_max_failures = 3\nlogin_lockout_minutes = 15\n").await;
    admin_browser(&app, "root", AdminRole::Admin).await;
    let attempt = |user: &'static str, password: &'static str| {
        let app = &app;
        async move {
            let client = app.browser();
            let token = login_form(app, &client).await;
            let r = client
                .post(app.url("/admin/login"))
                .form(&[
                    ("csrf", token.as_str()),
                    ("username", user),
                    ("password", password),
                ])
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    for name in ["root", "ghost", "root"] {
        assert_eq!(attempt(name, "Wrong-Passw0rd!").await.0, 401);
    }
    // Now even the right password is refused from this address, without being checked.
    let (status, page) = attempt("root", ADMIN_PASSWORD).await;
    assert_eq!(status, 429);
    assert!(page.contains("Too many sign-in attempts"), "{page}");
    // A name that does not exist behaves the same (no hint which names exist).
    assert_eq!(attempt("ghost", "Wrong-Passw0rd!").await.0, 429);
    let throttled = lock_starts(&app, "admin_login_throttled").await;
    assert_eq!(throttled.len(), 1, "one event when the lock starts");
    assert!(throttled.iter().all(|e| e.client_ip.is_some()));
}
