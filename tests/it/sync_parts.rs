//! Each part of a change reaching Microsoft 365 on its own: federated users' password changes,
//! refused secondary calls, the permissions a connection lacks, durable Import switches, and
//! managers set without needless writes.

use std::time::{Duration, Instant};

use chrono::Utc;
use idbridge::directory::AdminRole;
use idbridge::events::Actor;
use secrecy::SecretString;
use serde_json::{json, Value};

use crate::support::console::{admin_browser, api_client, api_key};
use crate::support::graph_fake::{FakeUserSpec, GraphFake};
use crate::support::m365::{
    configured, connected as support_connected, eventually, m365_settings, settled,
};
use crate::support::{binary, TestApp};

const PASSWORD: &str = "Corr3ct-Horse-Battery";

fn admin() -> Actor {
    Actor::Admin("root".into())
}

/// Connected with the app's own credentials; contoso.com managed, fed.example federated.
async fn connected(sync_keys: &str, extra: &str) -> (TestApp, GraphFake) {
    let (app, fake) = support_connected(sync_keys, extra).await;
    fake.add_domain("fed.example", true, false);
    (app, fake)
}

async fn bind(app: &TestApp, keys: &[&str]) {
    let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    app.state()
        .sync
        .bind(&admin(), &keys, Utc::now())
        .await
        .expect("bind accepted");
}

async fn set_password(app: &TestApp, key: &str, password: &str) {
    app.state()
        .directory
        .set_password(
            &admin(),
            key,
            &SecretString::from(password.to_string()),
            Utc::now(),
        )
        .await
        .expect("password set");
}

fn prop(fake: &GraphFake, upn: &str, name: &str) -> Value {
    fake.user(upn)
        .unwrap_or_else(|| panic!("{upn} in M365"))
        .get(name)
        .cloned()
        .unwrap_or(Value::Null)
}

/// Graph requests (batch items included) whose path contains `needle`, with their method.
fn requests_to(fake: &GraphFake, method: &str, needle: &str) -> usize {
    fake.requests()
        .iter()
        .filter(|(m, path)| m == method && path.contains(needle))
        .count()
}

#[tokio::test]
async fn a_federated_users_password_change_signs_them_out_of_m365_without_writing_a_password() {
    let (app, fake) = connected("", "").await;
    app.create_user("dave", "dave@fed.example", PASSWORD).await;
    bind(&app, &["dave"]).await;
    let dave = settled(&app, "dave", "bound").await;
    let random = prop(&fake, "dave@fed.example", "passwordProfile");
    assert_eq!(
        prop(&fake, "dave@fed.example", "signInSessionsValidFromDateTime"),
        Value::Null
    );

    set_password(&app, "dave", "Fresh-Passw0rd-2026").await;
    eventually("signed out of Microsoft 365", || async {
        prop(&fake, "dave@fed.example", "signInSessionsValidFromDateTime")
            .is_string()
            .then_some(())
    })
    .await;
    settled(&app, "dave", "bound").await;
    // Graph refuses passwordProfile for federated users: none was sent.
    assert_eq!(prop(&fake, "dave@fed.example", "passwordProfile"), random);
    let status = app.state().sync.user_status(&dave).await.unwrap();
    assert!(status.failed_jobs.is_empty(), "{:?}", status.failed_jobs);
    assert!(status.last_error.is_none(), "{:?}", status.last_error);
}

#[tokio::test]
async fn a_federated_users_expired_account_is_re_enabled_by_a_reset() {
    let (app, fake) = connected("", "[password_policy]\nexpiry_days = 30\n").await;
    let fay = app.create_user("fay", "fay@fed.example", PASSWORD).await;
    bind(&app, &["fay"]).await;
    settled(&app, "fay", "bound").await;
    assert_eq!(prop(&fake, "fay@fed.example", "accountEnabled"), true);

    let long_ago = (Utc::now() - chrono::Duration::days(31)).timestamp_millis();
    app.store
        .set_password_changed_at(&fay.id, long_ago)
        .await
        .unwrap();
    app.state().sync.scan_expired_passwords(Utc::now()).await;
    app.state().sync.wake();
    eventually("blocked in M365", || async {
        (prop(&fake, "fay@fed.example", "accountEnabled") == false).then_some(())
    })
    .await;
    settled(&app, "fay", "bound").await;

    // Seed 003: resetting the password re-activates the account, federated or not.
    set_password(&app, "fay", "Fresh-Passw0rd-2026").await;
    eventually("unblocked in M365", || async {
        (prop(&fake, "fay@fed.example", "accountEnabled") == true).then_some(())
    })
    .await;
    eventually("signed out of Microsoft 365", || async {
        prop(&fake, "fay@fed.example", "signInSessionsValidFromDateTime")
            .is_string()
            .then_some(())
    })
    .await;
    settled(&app, "fay", "bound").await;
    assert!(app.store.failed_jobs(None).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_refused_sign_out_leaves_the_password_delivered_and_names_the_missing_permission() {
    let (app, fake) = configured("", "").await;
    // The app registration was granted everything but User.RevokeSessions.All (application
    // tokens get no other permission for revokeSignInSessions).
    fake.set_app_roles(&[
        "User.ReadWrite.All",
        "User-PasswordProfile.ReadWrite.All",
        "Domain.Read.All",
    ]);
    app.state()
        .m365
        .connect_application(&Actor::cli(), Utc::now())
        .await
        .expect("connected");

    // The connection says what is missing and what stops working without it.
    let status = app.state().m365.status().await.unwrap();
    assert_eq!(
        status.granted_permissions.as_deref().map(|g| g.len()),
        Some(3),
        "{status:?}"
    );
    let missing: Vec<&str> = status
        .missing_permissions
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    assert_eq!(missing, ["User.RevokeSessions.All"]);
    assert!(status.missing_permissions[0]
        .needed_for
        .contains("signing users out"));
    let console = admin_browser(&app, "auditor", AdminRole::ReadOnly).await;
    let (code, page) = console.get(&app, "/admin/m365").await;
    assert_eq!(code, 200);
    assert!(
        page.contains("<strong>User.RevokeSessions.All</strong> is missing"),
        "{page}"
    );
    assert!(
        page.contains("signing users out of Microsoft 365"),
        "{page}"
    );
    let key = api_key(&app, "reader", AdminRole::ReadOnly).await;
    let api: Value = api_client(&key)
        .get(app.url("/api/v1/m365"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        api["missingPermissions"][0]["name"], "User.RevokeSessions.All",
        "{api}"
    );
    assert!(api["grantedPermissions"]
        .as_array()
        .unwrap()
        .contains(&json!("Domain.Read.All")));

    let kim = app.create_user("kim", "kim@contoso.com", PASSWORD).await;
    bind(&app, &["kim"]).await;
    settled(&app, "kim", "bound").await;
    set_password(&app, "kim", "An0ther-Secret-Phrase").await;
    eventually("password delivered", || async {
        (prop(&fake, "kim@contoso.com", "passwordProfile")["password"] == "An0ther-Secret-Phrase")
            .then_some(())
    })
    .await;
    let failed = eventually("the sign-out part failed", || async {
        let failed = app.store.failed_jobs(Some(&kim.id)).await.unwrap();
        (!failed.is_empty()).then_some(failed)
    })
    .await;
    // Only the sign-out failed, with the call and the permission by name.
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].kind, "revoke_sessions");
    let error = failed[0].last_error.clone().unwrap();
    assert!(
        error.contains("POST /users/{id}/revokeSignInSessions"),
        "{error}"
    );
    assert!(error.contains("User.RevokeSessions.All"), "{error}");
    assert!(error.contains("Authorization_RequestDenied"), "{error}");
    let status = app.state().sync.user_status(&kim).await.unwrap();
    assert!(status.password_pushed, "the password reached Microsoft 365");
    assert!(status.queued_jobs.is_empty(), "{:?}", status.queued_jobs);
    assert_eq!(status.state.map(|s| s.as_str()), Some("bound"));
    let events = app.events("m365_sync_failed").await;
    assert_eq!(events.len(), 1);
    let details: Value = serde_json::from_str(&events[0].details).unwrap();
    assert_eq!(details["job"], "revoke_sessions");
    assert_eq!(details["partOf"], "password");
    assert_eq!(
        prop(&fake, "kim@contoso.com", "signInSessionsValidFromDateTime"),
        Value::Null
    );

    // Granting the permission and retrying delivers the sign-out alone.
    fake.set_app_roles(&[
        "User.ReadWrite.All",
        "User-PasswordProfile.ReadWrite.All",
        "Domain.Read.All",
        "User.RevokeSessions.All",
    ]);
    app.state()
        .m365
        .connect_application(&Actor::cli(), Utc::now())
        .await
        .expect("reconnected");
    assert!(app
        .state()
        .m365
        .status()
        .await
        .unwrap()
        .missing_permissions
        .is_empty());
    let patches_before = requests_to(&fake, "PATCH", "/users/");
    app.state()
        .sync
        .retry_failed(&admin(), None, Utc::now())
        .await
        .unwrap();
    eventually("signed out after the retry", || async {
        prop(&fake, "kim@contoso.com", "signInSessionsValidFromDateTime")
            .is_string()
            .then_some(())
    })
    .await;
    settled(&app, "kim", "bound").await;
    assert!(app.store.failed_jobs(None).await.unwrap().is_empty());
    assert_eq!(
        requests_to(&fake, "PATCH", "/users/"),
        patches_before,
        "the password is not sent again"
    );
}

#[tokio::test]
async fn a_delegated_connection_lists_the_scopes_the_admin_did_not_grant() {
    let (app, fake) = configured("", "").await;
    fake.withhold_delegated_scopes(&["User-PasswordProfile.ReadWrite.All"]);
    let (status, page) = crate::m365::consent(&app).await;
    assert_eq!(status, 200, "{page}");
    let status = app.state().m365.status().await.unwrap();
    assert_eq!(status.mode.as_deref(), Some("delegated"));
    let granted = status.granted_permissions.clone().unwrap();
    assert!(
        granted.iter().any(|g| g == "User.RevokeSessions.All"),
        "consent asks for every permission idbridge uses: {granted:?}"
    );
    let missing: Vec<&str> = status
        .missing_permissions
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    assert_eq!(missing, ["User-PasswordProfile.ReadWrite.All"]);
    assert!(status.missing_permissions[0]
        .needed_for
        .contains("pushing passwords"));
}

#[tokio::test]
async fn the_cli_reports_missing_permissions_in_m365_status() {
    let (app, fake) = configured("", "").await;
    fake.set_app_roles(&["User.ReadWrite.All"]);
    app.state()
        .m365
        .connect_application(&Actor::cli(), Utc::now())
        .await
        .expect("connected");
    let config = cli_config(&app, &fake);
    let out = run_cli(&app, &config, &["m365", "status"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("missing:        Domain.Read.All"), "{text}");
    assert!(
        text.contains("missing:        User.RevokeSessions.All"),
        "{text}"
    );
    assert!(text.contains("idbridge m365 connect"), "{text}");
    // Application tokens may set passwords with User.ReadWrite.All (and the User
    // Administrator role): not reported missing.
    assert!(
        !text.contains("missing:        User-PasswordProfile"),
        "{text}"
    );
}

/// A config file for the CLI pointing at the test server's database and the fake.
fn cli_config(app: &TestApp, fake: &GraphFake) -> std::path::PathBuf {
    let dir = app.dir.path();
    let database = app
        .config
        .database_url
        .as_deref()
        .map(|url| format!("database_url = \"{url}\"\n"))
        .unwrap_or_default();
    let toml = format!(
        "data_dir = \"{data}\"\n{database}{m365}\n[certs]\nkey_file = \"{dir}/certs/signing.key\"\n\
         cert_file = \"{dir}/certs/signing.crt\"\n",
        data = dir.join("data").display(),
        dir = dir.display(),
        m365 = m365_settings(fake, "", ""),
    );
    let path = dir.join("cli.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// Runs the CLI without blocking the runtime the in-process server shares.
async fn run_cli(app: &TestApp, config: &std::path::Path, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(binary())
        .arg("--config")
        .arg(config)
        .args(args)
        .current_dir(app.dir.path())
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("binary runs")
}

#[tokio::test]
async fn switching_an_attribute_to_import_from_the_cli_imports_within_seconds() {
    // The server imports on its own only once an hour here.
    let (app, fake) = connected("", "").await;
    app.create_user("ivy", "ivy@contoso.com", PASSWORD).await;
    bind(&app, &["ivy"]).await;
    settled(&app, "ivy", "bound").await;
    fake.set_user_property("ivy@contoso.com", "department", json!("Finance"));

    let config = cli_config(&app, &fake);
    let started = Instant::now();
    let out = run_cli(
        &app,
        &config,
        &["m365", "attributes", "set", "department", "import"],
    )
    .await;
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let key = api_key(&app, "reader", AdminRole::ReadOnly).await;
    let api = api_client(&key);
    eventually("the server imported the department", || async {
        let user: Value = api
            .get(app.url("/api/v1/users/ivy"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (user["department"] == "Finance").then_some(())
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "imported after {:?}",
        started.elapsed()
    );
    // The request was taken: nothing is left for another process.
    assert!(!app
        .store
        .take_worker_request(idbridge::store::WORKER_IMPORT)
        .await
        .unwrap());
}

#[tokio::test]
async fn creating_users_sends_no_manager_removal_and_a_manager_bound_later_is_set_on_reports() {
    let (app, fake) = connected("", "").await;
    app.state()
        .sync
        .set_direction(&admin(), "manager", "export", Utc::now())
        .await
        .unwrap();
    for name in ["boss", "rep1", "rep2", "solo"] {
        app.create_user(name, &format!("{name}@contoso.com"), PASSWORD)
            .await;
    }
    let key = api_key(&app, "writer", AdminRole::Admin).await;
    let api = api_client(&key);
    for report in ["rep1", "rep2"] {
        let r = api
            .patch(app.url(&format!("/api/v1/users/{report}")))
            .json(&json!({"manager": "boss"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }

    // Reports first: their manager is not in Microsoft 365 yet.
    bind(&app, &["rep1", "solo"]).await;
    settled(&app, "rep1", "bound").await;
    settled(&app, "solo", "bound").await;
    assert_eq!(fake.manager_of("rep1@contoso.com"), None);
    assert_eq!(
        requests_to(&fake, "DELETE", "/manager/$ref"),
        0,
        "a created user has no manager to remove"
    );

    // The manager binds (with another report in the same round): both reports get it.
    bind(&app, &["boss", "rep2"]).await;
    settled(&app, "boss", "bound").await;
    settled(&app, "rep2", "bound").await;
    let boss_id = prop(&fake, "boss@contoso.com", "id");
    let boss_id = boss_id.as_str().unwrap();
    eventually("rep1 has its manager", || async {
        (fake.manager_of("rep1@contoso.com").as_deref() == Some(boss_id)).then_some(())
    })
    .await;
    assert_eq!(
        fake.manager_of("rep2@contoso.com").as_deref(),
        Some(boss_id)
    );
    settled(&app, "rep1", "bound").await;
    assert_eq!(requests_to(&fake, "DELETE", "/manager/$ref"), 0);
    assert_eq!(
        requests_to(&fake, "PUT", "/manager/$ref"),
        2,
        "one manager write per report"
    );
    assert!(app.store.failed_jobs(None).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_large_bind_reads_the_tenant_listing_instead_of_looking_users_up_one_by_one() {
    let (app, fake) = connected("", "").await;
    // 120 users already in Microsoft 365 (adopted) and 120 to create.
    for i in 0..120 {
        fake.add_user(FakeUserSpec {
            upn: format!("old{i:03}@contoso.com"),
            account_enabled: true,
            ..FakeUserSpec::default()
        });
    }
    let mut names = Vec::new();
    for i in 0..120 {
        for prefix in ["old", "new"] {
            let name = format!("{prefix}{i:03}");
            app.create_user(&name, &format!("{name}@contoso.com"), PASSWORD)
                .await;
            names.push(name);
        }
    }
    let before = fake.request_count();
    app.state()
        .sync
        .bind_all(&admin(), Utc::now())
        .await
        .unwrap();
    for name in &names {
        settled(&app, name, "bound").await;
    }
    let requests = fake.request_count() - before;
    // Per-user look-ups alone would take 12 batches; creating and overwriting 240 users
    // takes 12. One listing page replaces the look-ups.
    assert!(
        requests <= 16,
        "{requests} Graph requests for 240 binds: {:?}",
        &fake.requests()[before..]
    );
    assert_eq!(requests_to(&fake, "GET", "/v1.0/$batch:/users/"), 0);
    assert_eq!(app.events("m365_user_adopted").await.len(), 120);
    assert_eq!(app.events("m365_user_created").await.len(), 120);
    assert_eq!(fake.users().len(), 240, "nobody created twice");
}

#[tokio::test]
async fn a_refused_tenant_listing_names_the_call_and_the_permission_to_grant() {
    let (app, fake) = configured("", "").await;
    fake.set_app_roles(&["Domain.Read.All"]);
    app.state()
        .m365
        .connect_application(&Actor::cli(), Utc::now())
        .await
        .expect("connected");
    let error = app
        .state()
        .m365
        .tenant_users()
        .await
        .expect_err("refused")
        .to_string();
    assert!(
        error.starts_with("GET /users (reading Microsoft 365 users) failed"),
        "{error}"
    );
    assert!(error.contains("403 Authorization_RequestDenied"), "{error}");
    assert!(
        error.contains("grant the Microsoft Graph permission User.ReadWrite.All"),
        "{error}"
    );
}
